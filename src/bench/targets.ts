/**
 * The filesystems the benchmark compares, each set up in the bench's temp dir:
 * a plain directory, bindfs with bslfs's FUSE options, bslfs on a local volume,
 * on one loopback block server, mirrored across two (in plain HTTP, and over
 * TLS with certificates of a private CA made by openssl), and GlusterFS replica 2
 * on this host. Each set-up adds its undo steps to a Teardown as it goes.
 */
import { randomBytes } from 'node:crypto'
import { constants } from 'node:fs'
import { access, chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { networkInterfaces } from 'node:os'
import { delimiter, join, resolve } from 'node:path'
import { defaultOptionList } from '../fs/mount'
import { parseFsName, runtimePaths } from '../daemon/location'
import { PgServer, pgUnavailable } from './postgres'
import {
  alive, type Background, describeExit, freePort, killRunning, mountLine, run, sleep, startBackground, type Teardown, unmount, waitExit
} from './proc'

export const TARGETS = ['native', 'bindfs', 'bslfs', 'bslfs-remote', 'bslfs-pg', 'bslfs-mirror', 'bslfs-mirror-tls', 'bslfs-base', 'bslfs-mirror-base', 'bslfs-metrics', 'glusterfs'] as const
/** The targets that run another checkout's bslfs (`--baseline DIR`): the same layouts, the code before a change. */
export const BASELINE_TARGETS: readonly TargetName[] = ['bslfs-base', 'bslfs-mirror-base']
export type TargetName = typeof TARGETS[number]

/** A process behind a target whose peak RSS is reported. */
export interface Watched { label: string, pid: number | undefined }

export interface Target {
  name: TargetName
  /** Where the workloads run. */
  dir: string
  /** One line: what this target is, with its options. */
  description: string
  /** The processes whose peak RSS is reported (looked up late: a daemon's pid is known once it is mounted). */
  processes: () => Promise<Watched[]>
  /** Why the target cannot work any more (a process it needs has exited), or undefined while it can. */
  broken: () => string | undefined
}

const intact = (): undefined => undefined

const repoRoot = resolve(__dirname, '..', '..')
/** Run as a user runs it: through its shebang, with the node flags it sets. */
const bslfsBin = join(repoRoot, 'bin', 'bslfs')

/** Run a bslfs CLI command; resolves with its trimmed stdout. */
export const bslfs = async (...args: string[]): Promise<string> => (await run(bslfsBin, args)).stdout.trim()

/** The bslfs program of a checkout (built, with its node_modules): `bin/bslfs` in it, checked. */
export async function checkoutBin (dir: string): Promise<string> {
  const bin = join(resolve(dir), 'bin', 'bslfs')
  for (const need of [bin, join(resolve(dir), 'dist', 'cli', 'main.js')]) {
    try {
      await access(need, constants.R_OK)
    } catch {
      throw new Error(`${dir} is not a built bslfs checkout: ${need} is missing (run \`npm ci\` there first)`)
    }
  }
  return bin
}

/** Block servers on loopback, each serving one device. */
const SERVER_HOST = '127.0.0.1'
const SERVER_DEVICE = 'd1'
/** How long a block server gets to say it is listening, and to exit after SIGTERM. */
const SERVER_START_MS = 30_000
const SERVER_STOP_GRACE_MS = 10_000
/** How long a mount daemon gets to finish (final flush, reclaim) after its unmount, before its servers stop. */
const DAEMON_EXIT_MS = 60_000

/**
 * Where a bslfs target keeps its data: the local device of `bslfs init`; volume 2 on
 * block server s1 ("remote"); or volumes 2 and 3 on servers s1 and s2, mirrored as
 * volume 10, so a write needs both copies ("mirror"); the same over TLS ("mirror-tls").
 */
export type Layout = 'local' | 'remote' | 'mirror' | 'mirror-tls'
const LAYOUTS: Record<Layout, { servers: string[], volumes: string[], mirror?: string, tls?: true }> = {
  local: { servers: [], volumes: [] },
  remote: { servers: ['s1'], volumes: ['2'] },
  mirror: { servers: ['s1', 's2'], volumes: ['2', '3'], mirror: '10' },
  'mirror-tls': { servers: ['s1', 's2'], volumes: ['2', '3'], mirror: '10', tls: true }
}

/** A server's certificate and key (for 127.0.0.1), signed by the CA. */
interface ServerCert { cert: string, key: string }

/**
 * A private CA and a certificate for 127.0.0.1 for each server, made with
 * openssl in `dir` as the README shows (P-256 keys, mode 0600).
 */
async function makeCertificates (dir: string, servers: readonly string[]): Promise<{ ca: string, certs: Map<string, ServerCert> }> {
  const ca = join(dir, 'ca.crt')
  const caKey = join(dir, 'ca.key')
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
  await run('openssl', ['req', '-x509', ...ec, '-keyout', caKey, '-out', ca, '-days', '30', '-subj', '/CN=bslfs bench CA'])
  const ext = join(dir, 'server.ext')
  await writeFile(ext, `subjectAltName=IP:${SERVER_HOST}\nextendedKeyUsage=serverAuth\n`)
  const certs = new Map<string, ServerCert>()
  for (const name of servers) {
    const key = join(dir, `${name}.key`)
    const csr = join(dir, `${name}.csr`)
    const cert = join(dir, `${name}.crt`)
    await run('openssl', ['req', '-new', ...ec, '-keyout', key, '-out', csr, '-subj', `/CN=${name}`])
    await run('openssl', ['x509', '-req', '-in', csr, '-CA', ca, '-CAkey', caKey, '-CAcreateserial', '-days', '30', '-extfile', ext, '-out', cert])
    await chmod(key, 0o600)
    certs.set(name, { cert, key })
  }
  await chmod(caKey, 0o600)
  return { ca, certs }
}

/** The options every bslfs mount gets, minus its name: what bindfs should get too where it accepts them. */
export function bslfsFuseOptions (): string[] {
  return defaultOptionList()
}

export async function nativeTarget (root: string): Promise<Target> {
  const dir = join(root, 'native')
  await mkdir(dir)
  return { name: 'native', dir, description: `plain directory ${dir}`, processes: async () => [], broken: intact }
}

/** Which of bslfs's FUSE options bindfs (with this libfuse) accepts: try a scratch mount with each. */
async function probeBindfsOptions (src: string, mnt: string): Promise<{ used: string[], refused: string[] }> {
  const used = ['allow_other']
  const refused: string[] = []
  for (const opt of bslfsFuseOptions().filter(o => o !== 'allow_other')) {
    try {
      await run('bindfs', ['-o', `allow_other,${opt}`, src, mnt])
      used.push(opt)
    } catch {
      refused.push(opt)
    }
    if (await mountLine(mnt)) await run('fusermount', ['-u', mnt])
  }
  return { used, refused }
}

export async function bindfsTarget (root: string, td: Teardown): Promise<Target> {
  const src = join(root, 'bindfs-src')
  const mnt = join(root, 'bindfs-mnt')
  for (const d of [src, mnt]) await mkdir(d)
  td.add(`unmount bindfs at ${mnt}`, async () => await unmount(mnt, ['fusermount', '-u', mnt], [['fusermount', '-uz', mnt]]))
  const { used, refused } = await probeBindfsOptions(src, mnt)
  await run('bindfs', ['-o', used.join(','), src, mnt])
  return {
    name: 'bindfs',
    dir: mnt,
    description: `bindfs -o ${used.join(',')}${refused.length ? ` (refused by bindfs: ${refused.join(',')})` : ''}`,
    processes: async () => [],
    broken: intact
  }
}

/** The pid in STATE/daemon.pid, or undefined when there is none (not mounted, or already stopped). */
export async function daemonPid (state: string): Promise<number | undefined> {
  return await pidIn(join(state, 'daemon.pid'))
}

async function pidIn (file: string): Promise<number | undefined> {
  try {
    const pid = Number((await readFile(file, 'utf8')).trim())
    return Number.isInteger(pid) && pid > 0 ? pid : undefined
  } catch {
    return undefined
  }
}

/** A random token in a new 0600 file. */
async function writeTokenFile (file: string): Promise<void> {
  await writeFile(file, randomBytes(32).toString('base64url') + '\n', { mode: 0o600, flag: 'wx' })
  await chmod(file, 0o600)
}

/**
 * `bslfs serve` on a free loopback port, in the foreground of its own process
 * group. The port is found by binding port 0 and releasing it; should another
 * process take it in between, a new one is tried.
 */
async function startBlockServer (bin: string, name: string, device: string, tokenFile: string, tls?: ServerCert): Promise<{ server: Background, url: string }> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort(SERVER_HOST)
    try {
      const server = await startBackground(bin, ['serve', '--listen', `${SERVER_HOST}:${port}`,
        '--device', `${SERVER_DEVICE}=${device}`, '--name', name, '--token-file', tokenFile,
        ...(tls ? ['--tls-cert', tls.cert, '--tls-key', tls.key] : [])], /listening on/, SERVER_START_MS)
      return { server, url: `${tls ? 'https' : 'http'}://${SERVER_HOST}:${port}` }
    } catch (err) {
      if (attempt >= 3 || !/EADDRINUSE|address already in use/i.test((err as Error).message)) throw err
    }
  }
}

/**
 * A bslfs mount named NAME in ROOT with its data laid out as LAYOUT: its block
 * servers started (each with its own device dir and token file), STATE made with
 * `bslfs init`, the servers, volumes and mirror added, then mounted. On teardown
 * the mount goes first and its daemon gets to exit; only then do its servers stop
 * (left running, with a note, if the mount could not be removed).
 */
export async function bslfsTarget (root: string, td: Teardown, name: TargetName, layout: Layout, bin = bslfsBin, directoryUrl?: string, metrics = false): Promise<Target & { state: string }> {
  const { servers: names, volumes, mirror, tls } = LAYOUTS[layout]
  const bslfs = async (...args: string[]): Promise<string> => (await run(bin, args)).stdout.trim()
  // A STATE directory, or a postgres:// URL (its daemon's pid file is per mount point).
  const state = directoryUrl ?? join(root, `${name}-state`)
  const mnt = join(root, `${name}-mnt`)
  const daemonPid = async (): Promise<number | undefined> => await pidIn(runtimePaths(parseFsName(state), mnt).pid)
  const servers: Array<{ name: string, device: string, tokenFile: string, url: string, proc: Background }> = []
  let leftMounted = false
  await mkdir(mnt)
  let pki: { ca: string, certs: Map<string, ServerCert> } | undefined
  if (tls) {
    const dir = join(root, `${name}-pki`)
    await mkdir(dir, { mode: 0o700 })
    pki = await makeCertificates(dir, names)
  }
  for (const server of names) {
    const device = join(root, `${name}-${server}-${SERVER_DEVICE}`)
    const tokenFile = join(root, `${name}-${server}-token`)
    await mkdir(device)
    await writeTokenFile(tokenFile)
    const { server: proc, url } = await startBlockServer(bin, server, device, tokenFile, pki?.certs.get(server))
    servers.push({ name: server, device, tokenFile, url, proc })
    td.add(`stop ${name}'s block server ${server} (pid ${proc.pid})`, async () => {
      const what = `${name}'s block server ${server} (pid ${proc.pid})`
      if (leftMounted && proc.exit() === null) {
        // The mount still needs it; leave it for the user.
        proc.disown()
        console.error(`bench: ${mnt} is still mounted, so ${what} is left running; unmount it, then \`kill ${proc.pid}\``)
        return false
      }
      const early = proc.exit()
      const exit = early ?? await proc.stop(SERVER_STOP_GRACE_MS)
      if (early !== null || exit.code !== 0) {
        const stderr = proc.stderr().trim()
        console.error(`bench: ${what} ${early ? 'had exited by itself' : 'exited'} with ${describeExit(exit)}` +
          `${stderr ? `; its stderr:\n${stderr}` : ''}`)
        return false
      }
    })
  }
  await bslfs('init', state)
  for (const b of servers) await bslfs('server', 'add', state, b.name, b.url, '--token-file', b.tokenFile, ...(pki ? ['--ca', pki.ca] : []))
  for (const [i, vol] of volumes.entries()) await bslfs('volume', 'add', state, vol, `${names[i]}:${SERVER_DEVICE}`)
  let where = 'the local device d0 of `bslfs init`'
  if (mirror !== undefined) {
    where = (await bslfs('mirror', state, mirror, ...volumes)).replace(/^bslfs: /, '')
    await bslfs('volume', 'default', state, mirror)
  } else if (volumes.length) {
    where = `volume ${volumes[0]}`
    await bslfs('volume', 'default', state, volumes[0])
  }
  if (volumes.length) {
    where += `, volumes ${volumes.map((v, i) => `${v} = ${names[i]}:${SERVER_DEVICE}`).join(', ')}, \`bslfs serve\`${pki ? ' over TLS (private CA, P-256)' : ''} ` +
      servers.map(b => `${b.name} at ${b.url} (pid ${b.proc.pid}, device ${SERVER_DEVICE}=${b.device})`).join('; ')
  }

  td.add(`unmount ${name} at ${mnt}`, async () => {
    const pid = await daemonPid() // before the unmount: the daemon removes daemon.pid as it finishes
    const cli = [bin, 'unmount']
    // `bslfs unmount --lazy` still refuses while the daemon holds data it cannot write (a server is
    // gone); this filesystem is scratch, so the kernel's lazy unmount is the last resort.
    if (!await unmount(mnt, [...cli, mnt], [[...cli, '--lazy', mnt], ['fusermount', '-uz', mnt]])) {
      leftMounted = true
      return false
    }
    // After an unmount (a lazy one above all) the daemon still flushes and reclaims, through its servers.
    return pid === undefined || await waitExit(pid, DAEMON_EXIT_MS, `the ${name} mount daemon`, 'its unmount')
  })
  // bslfs-metrics: /metrics served, and scraped every second (Prometheus does every 15 s), to show its cost.
  const metricsPort = metrics ? await freePort('127.0.0.1') : undefined
  await bslfs('mount', state, mnt, ...(metricsPort ? ['-o', `metrics=127.0.0.1:${metricsPort}`] : []))
  if (metricsPort) {
    const scraper = setInterval(() => { fetch(`http://127.0.0.1:${metricsPort}/metrics`).then(r => r.text(), () => '').catch(() => '') }, 1000)
    scraper.unref()
    td.add(`stop scraping ${name}`, async () => { clearInterval(scraper); return true })
    where += `, -o metrics=127.0.0.1:${metricsPort} scraped every second`
  }
  const daemon = await daemonPid()
  return {
    name,
    dir: mnt,
    state,
    description: `${bin === bslfsBin ? '' : `${bin}: `}bslfs mount (its defaults: ${bslfsFuseOptions().join(',')}), data on ${where}`,
    processes: async () => [
      { label: `${name} mount daemon`, pid: await daemonPid() },
      ...servers.map(b => ({ label: `${name} block server ${b.name}`, pid: b.proc.pid }))
    ],
    broken: () => {
      const dead = servers.find(b => b.proc.exit() !== null)
      if (dead) {
        const stderr = dead.proc.stderr().trim()
        return `${name}'s block server ${dead.name} (pid ${dead.proc.pid}) exited with ${describeExit(dead.proc.exit()!)}` +
          `${stderr ? `; its stderr:\n${stderr}` : ''}`
      }
      if (daemon !== undefined && !alive(daemon)) return `${name}'s mount daemon (pid ${daemon}) has exited; see ${runtimePaths(parseFsName(state), mnt).log}`
    }
  }
}

/**
 * bslfs with its directory on a PostgreSQL on loopback that the bench starts
 * (initdb and pg_ctl as the postgres user in a temp dir, its settings left at
 * their defaults: fsync on), and its data on one loopback block server: a
 * shared filesystem refuses local devices, so it compares with bslfs-remote,
 * which has the same data path.
 */
export async function bslfsPgTarget (root: string, td: Teardown): Promise<Target & { state: string }> {
  const why = pgUnavailable()
  if (why) throw new Error(`bslfs-pg cannot run: ${why}`)
  const pg = await PgServer.create({ database: 'bslfsbench' })
  // Added first, so it runs last: after the unmount and the block server.
  td.add(`stop the bench's PostgreSQL (pid ${pg.pid}, ${pg.dir})`, async () => { await pg.destroy() })
  const t = await bslfsTarget(root, td, 'bslfs-pg', 'remote', bslfsBin, pg.url())
  const processes = t.processes
  return {
    ...t,
    description: `${t.description}; directory on PostgreSQL ${(await pg.sql('SHOW server_version'))[0].server_version as string} at ${pg.url()} (pid ${pg.pid}, data ${pg.dataDir}, default settings)`,
    processes,
    broken: () => t.broken() ?? (alive(pg.pid) ? undefined : `bslfs-pg's PostgreSQL (pid ${pg.pid}) has exited; see ${pg.logFile}`)
  }
}

/** Whether an executable of this name is on PATH. */
export async function onPath (cmd: string): Promise<boolean> {
  for (const dir of (process.env.PATH ?? '').split(delimiter).filter(d => d !== '')) {
    try {
      await access(join(dir, cmd), constants.X_OK)
      return true
    } catch {}
  }
  return false
}

/** The gluster CLI without its questions (replica 2 asks to confirm). */
const gluster = async (...args: string[]): Promise<string> => (await run('gluster', ['--mode=script', ...args])).stdout

/** Whether glusterd answers the CLI. */
const glusterdAnswers = async (): Promise<boolean> => await gluster('pool', 'list').then(() => true, () => false)

/** "Started", "Stopped", "Created", or undefined when there is no such volume. */
async function glusterVolumeStatus (vol: string): Promise<string | undefined> {
  try {
    return /^Status:\s*(\S+)/m.exec(await gluster('volume', 'info', vol))?.[1] ?? 'unknown'
  } catch {
    return undefined
  }
}

/**
 * This host's first IPv4 address that is not loopback: the gluster CLI refuses
 * bricks on localhost or 127.0.0.1, but traffic to a local address stays on
 * this host just the same.
 */
function brickHost (): string {
  for (const addrs of Object.values(networkInterfaces())) {
    for (const a of addrs ?? []) if (a.family === 'IPv4' && !a.internal) return a.address
  }
  throw new Error('GlusterFS refuses bricks on a loopback address, and this host has no other IPv4 address')
}

/**
 * A GlusterFS replica-2 volume of two bricks in ROOT on this host, mounted
 * with the native client. glusterd is started (and stopped at the end) when it
 * is not running already. Teardown unmounts, stops and deletes the volume.
 */
export async function glusterTarget (root: string, td: Teardown): Promise<Target> {
  const host = brickHost()
  if (!await glusterdAnswers()) {
    const pidFile = join(root, 'glusterd.pid')
    td.add('stop the glusterd the benchmark started', async () => {
      const pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim())
      if (!Number.isInteger(pid) || pid <= 0) return
      try { process.kill(pid, 'SIGTERM') } catch { return }
      return await waitExit(pid, SERVER_STOP_GRACE_MS, 'glusterd', 'SIGTERM')
    })
    await run('glusterd', ['-p', pidFile]) // it daemonizes
    for (let i = 0; !await glusterdAnswers(); i++) {
      if (i >= 60) throw new Error('glusterd was started but does not answer `gluster pool list` after 30 s')
      await sleep(500)
    }
  }
  const vol = `bslfsbench${process.pid}`
  const bricks = ['gluster-b1', 'gluster-b2'].map(b => join(root, b))
  const mnt = join(root, 'glusterfs-mnt')
  for (const d of [...bricks, mnt]) await mkdir(d)
  td.add(`stop and delete gluster volume ${vol}`, async () => {
    const status = await glusterVolumeStatus(vol)
    if (status === undefined) return
    if (status === 'Started') await gluster('volume', 'stop', vol, 'force')
    await gluster('volume', 'delete', vol)
    // Bricks keep xattrs and a .glusterfs dir; the temp dir's removal takes them.
  })
  // force: both bricks on one host, and on the root filesystem.
  await gluster('volume', 'create', vol, 'replica', '2', ...bricks.map(b => `${host}:${b}`), 'force')
  await gluster('volume', 'start', vol)
  td.add(`unmount glusterfs at ${mnt}`, async () => await unmount(mnt, ['umount', mnt], [['umount', '-l', mnt]]))
  await run('mount', ['-t', 'glusterfs', `${host}:/${vol}`, mnt])
  if (!await mountLine(mnt)) throw new Error(`mount -t glusterfs ${host}:/${vol} ${mnt} exited 0 but nothing is mounted there`)
  return {
    name: 'glusterfs',
    dir: mnt,
    description: `GlusterFS volume ${vol}, replica 2, bricks ${bricks.map(b => `${host}:${b}`).join(' ')}, native client`,
    processes: async () => [],
    broken: intact
  }
}

/** Remove DIR unless something is still mounted in it. Resolves with false when it was left. */
export async function removeUnlessMounted (dir: string): Promise<boolean> {
  const left = (await readFile('/proc/mounts', 'utf8')).split('\n').filter(l => (l.split(' ')[1] ?? '').startsWith(dir + '/'))
  if (left.length) {
    console.error(`bench: still mounted, leaving ${dir} in place:\n${left.join('\n')}`)
    return false
  }
  await rm(dir, { recursive: true, force: true })
  return true
}

/**
 * Run FN on target T, checking every second that T still works; when it breaks
 * (a block server died, say: every write would then wait out its retries), the
 * running commands are stopped and FN fails with the reason.
 */
export async function watched<R> (t: Target, fn: () => Promise<R>): Promise<R> {
  let reason: string | undefined
  const timer = setInterval(() => {
    reason ??= t.broken()
    if (reason !== undefined) killRunning()
  }, 1000)
  try {
    const result = await fn()
    reason ??= t.broken()
    if (reason !== undefined) throw new Error(reason)
    return result
  } catch (err) {
    throw reason !== undefined && (err as Error).message !== reason ? new Error(`${reason}\n(${t.name}'s workload stopped: ${(err as Error).message})`) : err
  } finally {
    clearInterval(timer)
  }
}
