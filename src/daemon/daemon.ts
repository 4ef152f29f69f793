import { promises as fsp } from 'node:fs'
import { Server } from 'node:net'
import { returnFreedBuffers } from '../devices/object-io'
import { FsError, UsageError } from '../errors'
import { OpenFiles } from '../data/open-files'
import { BslFilesystem } from '../fs/filesystem'
import { MountedFuse, ParsedOptions, mountFuse } from '../fs/mount'
import * as admin from './admin'
import { dumpToSocket } from './dump'
import { ControlProgress, ControlRequest, serveControl } from './control'
import { parseFsName, runtimePaths } from './location'
import { checkFuseAvailable, devText, fusermount, mountsOfSuper, prepareMountpoint } from './mountpoint'
import { remountSuper } from '../fs/vfs'
import { reclaim, startReclaimer } from './reclaim'
import { startHealer } from './heal'
import { SessionKeeper } from './session-keeper'
import { startMountMetrics } from './metrics-endpoint'
import { mountMetrics } from '../metrics/mount-metrics'
import { State } from './state'
import { RemoteChanges } from '../directory/directory'
import { logger } from '../log'
import { boundLogFile, logMaxBytes } from './log-file'
import { packageVersion } from '../version'

const events = logger('bslfs:daemon')
const log = events.debug

/**
 * How often a mount of a shared filesystem re-reads the tables by itself: a
 * `volume add`/`volume default`/`remap`/`server add` run on another host
 * reaches this one within this bound (one on this host tells it at once,
 * through `reload-tables` on its control socket).
 */
const SHARED_TABLES_RELOAD_MS = 2000

/**
 * The mount daemon: owns the STATE's directory (or its share of a
 * PostgreSQL one) for as long as the mount lives, serves the kernel through
 * FUSE and the CLI through the control socket, and exits when unmounted.
 */
export async function runDaemon (nameArg: string, mountpointArg: string, options: ParsedOptions, opts: { passwordFile?: string } = {}): Promise<{ done: Promise<void> }> {
  checkFuseAvailable()
  returnFreedBuffers()
  const name = parseFsName(nameArg)
  const mountpoint = await prepareMountpoint(mountpointArg)
  const paths = runtimePaths(name, mountpoint)
  if (name.kind === 'postgres') await fsp.mkdir(paths.dir, { recursive: true, mode: 0o700 })
  const stopBoundingLog = boundLogFile(paths.log, logMaxBytes())
  // The open files (and the filesystem's open directories) are made from the directory, which asks them whether an inode is open (it then
  // outlives its last link): it asks only once they exist, below.
  let files!: OpenFiles
  // What other mounts of a shared filesystem change reaches the kernel at once, not after its
  // entry and attribute timeouts (the directory has dropped it from its own caches already).
  let kernel: MountedFuse | undefined
  const remote: RemoteChanges = {
    changed: change => {
      for (const e of change.entries) kernel?.notifyInvalEntry(e.parent, e.name)
      for (const ino of change.inodes) void kernel?.notifyInvalInode(ino)
    },
    missed: () => kernel?.notifyInvalAll()
  }
  const state = await State.open(name, { copyTimeoutMs: options.copyTimeoutMs, passwordFile: opts.passwordFile, openInodes: { isOpen: ino => files.isOpen(ino) || fs.isDirOpen(ino) }, remote })
  const cleanup: Array<() => Promise<unknown>> = [() => state.close(), async () => stopBoundingLog()]
  const undo = async () => { for (const f of cleanup.reverse()) await f().catch(() => undefined) }
  let mounted: MountedFuse
  /** The mount's superblock (major:minor): bind mounts of it at other mount points share it. */
  let superDev = ''
  let server: Server
  let reclaimer: ReturnType<typeof startReclaimer>
  let healer: ReturnType<typeof startHealer>
  let stopMetrics: () => Promise<void>
  let keeper: SessionKeeper
  // An open on a shared filesystem drops the kernel's pages of a file another host changed (close-to-open).
  files = new OpenFiles(state.dir, state.volumes, { kernel: { drop: async ino => await kernel?.notifyInvalInode(ino) } })
  const fs = new BslFilesystem(state.dir, files, {
    space: async () => {
      // Space is what the devices holding new data have; a device that cannot answer counts as empty.
      const all = [...(await state.volumes.space()).values()].filter((s): s is { total: number, free: number, available: number } => !(s instanceof Error))
      return all.reduce((a, s) => ({ total: a.total + s.total, free: a.free + s.free, available: a.available + s.available }), { total: 0, free: 0, available: 0 })
    }
  }, options.readOnly, options.overrides, { mode: options.atime, dirs: options.dirAtime }, { posixAcl: options.session.posixAcl })
  try {
    // The mount's session (sessions.ts): the job lease, hold records, the fence; dead sessions are reaped by the lease holder.
    keeper = await SessionKeeper.start(state.dir, {
      mountpoint, heartbeatMs: options.sessionHeartbeatMs, expiryMs: options.sessionExpiryMs, openInodes: () => files.openInodes(), onLeader: () => healer?.kick()
    })
    cleanup.push(() => keeper.stop())
    // What a crash left: inodes unlinked while open, blocks queued for reclaim.
    const orphans = await state.dir.purgeOrphans()
    if (orphans) log('freed %d inodes left open and unlinked by a crash', orphans)
    if (keeper.leader) await reclaim(state.dir, state.volumes)
    await fsp.rm(paths.socket, { force: true })

    // The fsname /proc/mounts shows: the STATE path, or the URL (which holds no password).
    mounted = await mountFuse(mountpoint, fs, state.location, options).catch((err: Error) => {
      throw new UsageError(`cannot mount ${mountpoint}: ${err.message} (see ${paths.log})`)
    })
    cleanup.push(() => mounted.unmount(true))
    kernel = mounted
    // The mount must answer before we say it is up.
    const st = await fsp.stat(mountpoint)
    if (st.ino !== 1) throw new UsageError(`${mountpoint} did not come up as a bslfs mount`)
    superDev = devText(st.dev)
    reclaimer = startReclaimer(state.dir, state.volumes, { quietMs: () => mounted.quietMs(), active: () => keeper.leader })
    cleanup.push(() => reclaimer.stop())
    healer = startHealer(state.dir, state.volumes, undefined, () => keeper.leader)
    cleanup.push(() => healer.stop())
    stopMetrics = await startMountMetrics(state, files, options.metrics)
    cleanup.push(() => stopMetrics())
  } catch (err) {
    await undo()
    events.error('mounting %s on %s failed: %s', state.location, mountpoint, (err as Error).message)
    throw err
  }
  events.info('bslfs %s mounted %s on %s (pid %d, node %s%s)', packageVersion(), state.location, mountpoint, process.pid,
    process.version, options.readOnly ? ', read-only' : '')

  const info: admin.MountInfo = { mountpoint, pid: process.pid, since: new Date().toISOString(), readOnly: options.readOnly }
  let finish!: () => void
  const done = new Promise<void>(resolve => { finish = resolve })
  let stopping = false

  /**
   * Unmount: 'strict' fails with EBUSY on a busy mount and changes nothing;
   * 'lazy' detaches the mount at once and keeps serving whoever still uses
   * it; 'gone' means the kernel mount was removed from outside. The daemon
   * closes the directory and exits once the kernel connection has ended.
   */
  const stop = async (how: 'strict' | 'lazy' | 'gone', at?: string): Promise<void> => {
    if (stopping) throw new UsageError('the mount is already stopping')
    stopping = true
    try {
      await fs.flushAll()
      await state.dir.sync()
      // Every mount point of this filesystem goes (a signal), or the last one (an unmount of it).
      if (how !== 'gone') {
        const all = at ? [at] : await mountsOfSuper(superDev)
        for (const m of all.length ? all : [info.mountpoint]) await mounted.unmount(how === 'lazy', m)
      }
    } catch (err) {
      stopping = false
      const text = (err as Error).message
      if (/busy/i.test(text)) throw new FsError('EBUSY', `${mountpoint} is busy (a process has a file open or its working directory there); close it, or use --lazy`)
      throw err
    }
    void finalize()
  }

  const finalize = async (): Promise<void> => {
    // Serve until the kernel lets go: at once after a plain unmount, when the last user leaves after a lazy one.
    await mounted.end
    clearInterval(retry)
    clearInterval(tablesReload)
    await fs.flushAll().catch(err => events.error('final flush failed: %s', (err as Error).message))
    await reclaimer.stop()
    await healer.stop()
    await stopMetrics()
    if (keeper.leader) await reclaim(state.dir, state.volumes).catch(() => 0)
    await keeper.stop()
    await state.close()
    await fsp.rm(paths.pid, { force: true })
    events.info('unmounted %s', mountpoint)
    stopBoundingLog()
    // Done once the control connections have their answers (the unmount request is one of them).
    // The log stays (a URL-named mount's runtime dir too): it says how the mount ended.
    server.close(() => { void fsp.rm(paths.socket, { force: true }).finally(finish) })
  }

  /** The mount point status names: still mounted (the first may have gone by `umount` while a bind of it stays). */
  const currentInfo = async (): Promise<admin.MountInfo> => {
    const all = await mountsOfSuper(superDev).catch((): string[] => [])
    if (all.length && !all.includes(info.mountpoint)) info.mountpoint = all[0]!
    return info
  }

  /**
   * One mount point of several (bind mounts, see second-mount.ts) goes alone and the daemon
   * serves the others; the last one stops it.
   */
  const unmountAt = async (at: string, lazy: boolean): Promise<{ unmounted: string }> => {
    const all = await mountsOfSuper(superDev)
    if (all.length > 1 && all.includes(at)) {
      const complaint = await fusermount(at, lazy)
      if (complaint && /busy/i.test(complaint)) throw new FsError('EBUSY', `${at} is busy (a process has a file open or its working directory there); close it, or use --lazy`)
      if (complaint) throw new UsageError(complaint)
      if (info.mountpoint === at) info.mountpoint = all.find(m => m !== at) ?? at
      events.info('unmounted %s; still mounted at %s', at, all.filter(m => m !== at).join(', '))
      return { unmounted: at }
    }
    await stop(lazy ? 'lazy' : 'strict', at)
    return { unmounted: at }
  }

  /**
   * mount -o remount,ro|rw (mount.fuse.bslfs asks): the kernel's superblock flag makes every
   * writer get EROFS (going read-only it first writes back what it holds, and refuses while a
   * file is open for writing); the daemon stops changing anything itself (atime) and has
   * everything written; read-write again, the other way round.
   */
  const remount = async (at: string, readOnly: boolean): Promise<{ remounted: string, readOnly: boolean }> => {
    if (stopping) throw new UsageError('the mount is stopping')
    const busy = (err: unknown): never => {
      if (err instanceof FsError && err.code === 'EBUSY') throw new FsError('EBUSY', `${at} has files open for writing; close them, then remount read-only`)
      throw err
    }
    if (readOnly) {
      await remountSuper(at, true).catch(busy)
      fs.readOnly = true
      await fs.flushAll()
      await state.dir.sync()
    } else {
      const was = fs.readOnly
      fs.readOnly = false
      await remountSuper(at, false).catch(err => { fs.readOnly = was; throw err })
    }
    info.readOnly = readOnly
    events.info('%s remounted %s', at, readOnly ? 'read-only' : 'read-write')
    return { remounted: at, readOnly }
  }

  const handle = async (req: ControlRequest, progress: ControlProgress, signal: AbortSignal): Promise<unknown> => {
    const [a, b] = req.args
    // Another host's table change may have committed a moment ago, its feed message not heard yet.
    if (state.shared && req.cmd !== 'unmount' && req.cmd !== 'status' && req.cmd !== 'stats') await state.reloadTables()
    switch (req.cmd) {
      case 'status': return admin.status(state, await currentInfo())
      case 'stats': return mountMetrics.snapshot()
      case 'unmount': return await unmountAt(a || info.mountpoint, req.options?.lazy === true)
      case 'remount': return await remount(a || info.mountpoint, req.options?.readOnly === true)
      case 'device-add': return admin.deviceAdd(state, a, b)
      case 'volume-add': return admin.volumeAdd(state, a, b)
      case 'volume-list': return admin.volumeList(state)
      case 'volume-default': return admin.volumeDefault(state, a)
      case 'server-add': return admin.serverAdd(state, a, b, req.args[2] || undefined, admin.tlsFilesOption(req.options))
      case 'server-set-token': return admin.serverSetToken(state, a, b)
      case 'server-list': return admin.serverList(state)
      case 'bsl': return admin.bslOf(state, a)
      case 'mirror': return admin.mirrorSet(state, a, req.args.slice(1), typeof req.options?.minCopies === 'string' ? req.options.minCopies : undefined)
      case 'heal': return admin.heal(state, progress)
      case 'scrub': return admin.scrub(state, progress)
      case 'remap': return admin.remapVolume(state, a, b, { ...admin.remapOptions(req.options), pendingRecords: files.services.group }, progress, signal)
      case 'adopt': return admin.adopt(state, a, b, (ino, changes) => files.adopted(ino, changes))
      case 'blocks': return admin.blockDump(state)
      // Commit what the mount holds (a device that is down must not stop a dump of the directory),
      // then stream one snapshot to the CLI's socket (dump.ts).
      case 'dump': return fs.flushAll().catch(err => events.warn('dump: open files not flushed first (%s); the dump holds what is committed', (err as Error).message))
        .then(async () => await dumpToSocket(state, a, progress))
      case 'reload-tables': return state.reloadTables().then(() => ({ reloaded: mountpoint }))
      case 'fsck': return admin.fsckState(state, { repair: req.options?.repair === true, checksums: req.options?.checksums !== false }, true, progress)
      default: throw new UsageError(`unknown control command "${req.cmd}"`)
    }
  }
  // Unmounted from outside (umount, fusermount -u): there is nothing left to serve.
  void mounted.end.then(() => {
    if (stopping) return
    events.warn('%s was unmounted from outside (umount or fusermount -u); stopping', mountpoint)
    stop('gone').catch(err => events.error('stopping after an outside unmount failed: %s', (err as Error).message))
  })
  // Closed files whose blocks a device refused are written once it answers again.
  const retry = setInterval(() => {
    files.retryUnwritten().catch(err => log('retry: %s', (err as Error).message))
  }, 1000)
  retry.unref()
  const tablesReload = state.shared
    ? setInterval(() => { state.reloadTables().catch(err => log('reloading the tables: %s', (err as Error).message)) }, SHARED_TABLES_RELOAD_MS)
    : undefined
  tablesReload?.unref()
  server = await serveControl(paths.socket, handle)
  await fsp.chmod(paths.socket, 0o600)
  await fsp.writeFile(paths.pid, `${process.pid}\n`)

  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    process.on(sig, () => {
      events.info('%s: unmounting %s', sig, mountpoint)
      stop('strict').catch(() => stop('lazy')).catch(err => {
        events.error('cannot unmount on %s: %s', sig, (err as Error).message)
      })
    })
  }
  return { done }
}
