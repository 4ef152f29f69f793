import { randomUUID } from 'node:crypto'
import createDebug from 'debug'
import { existsSync, promises as fsp } from 'node:fs'
import { join, resolve } from 'node:path'
import { Device } from '../devices/device'
import { syncDir, writeWhole } from '../durable'
import { LocalDevice } from '../devices/local'
import { RemoteDevice } from '../devices/remote'
import { loadClientTls } from '../devices/tls'
import { readSecretFile } from '../credentials'
import { Directory, OpenInodes, RemoteChanges } from '../directory/directory'
import { KvStore } from '../directory/kv'
import { LevelKv } from '../directory/leveldb'
import { PgKv, PgKvOptions } from '../directory/postgres'
import { FsError, UsageError } from '../errors'
import { LOCAL_SERVER, Place, placeText } from '../volumes/tables'
import { STATE_FORMAT_VERSION, formatTooNew } from '../format-version'
import { Volumes, VolumesOptions } from '../volumes/volumes'
import { FsName, fsNameText, parseFsName } from './location'

const log = createDebug('bslfs:state')

/**
 * A STATE directory: what `bslfs init` makes and every command names.
 *
 *   STATE/bslfs.json       marker: format, version, uuid
 *   STATE/directory/       the LevelDB directory
 *   STATE/devices/d0/      the first local device
 *   STATE/control.sock     the running mount's control socket
 *   STATE/daemon.pid       the running mount's pid; daemon.log its log
 *
 * A filesystem named by a postgres:// URL has no STATE: its directory is in
 * the database, its runtime files per mount point (location.ts).
 */
export interface StateMarker {
  format: 'bslfs-state'
  version: typeof STATE_FORMAT_VERSION
  uuid: string
  created: string
}

export const DEFAULT_BLOCK_SIZE = 1024 * 1024

export function statePaths (state: string) {
  const root = resolve(state)
  return {
    root,
    marker: join(root, 'bslfs.json'),
    directory: join(root, 'directory'),
    devices: join(root, 'devices'),
    socket: join(root, 'control.sock'),
    pid: join(root, 'daemon.pid'),
    log: join(root, 'daemon.log')
  }
}

/**
 * Create a new filesystem named `name`. A STATE directory gets one local
 * device d0 and volume 1 on it. A PostgreSQL database (several hosts) gets
 * the directory only: its data must live on block servers every host can
 * reach, so volumes come with `server add` + `volume add` + `volume default`.
 */
export async function initState (name: string | FsName, opts: { blockSize?: number, passwordFile?: string } = {}): Promise<void> {
  const fsName = typeof name === 'string' ? parseFsName(name) : name
  checkPasswordFile(fsName, opts.passwordFile)
  const blockSize = opts.blockSize ?? DEFAULT_BLOCK_SIZE
  if (fsName.kind === 'postgres') return await initShared(fsName, blockSize, opts.passwordFile)
  const p = statePaths(fsName.root)
  let entries: string[] = []
  try {
    entries = await fsp.readdir(p.root)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOTDIR') throw new UsageError(`${p.root} is not a directory`)
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  if (existsSync(p.marker)) throw new UsageError(`${p.root} already holds a bslfs filesystem; use it, or pick another directory`)
  if (entries.length > 0) throw new UsageError(`${p.root} is not empty and is not a bslfs filesystem; pick an empty or new directory`)
  await fsp.mkdir(p.root, { recursive: true })
  try {
    await LocalDevice.create(join(p.devices, 'd0'), { server: LOCAL_SERVER, device: 'd0' })
    const kv = await LevelKv.open(p.directory, { createIfMissing: true })
    let dir: Directory | undefined
    try {
      dir = await Directory.create(kv, { blockSize, root: { uid: 0, gid: 0, mode: 0o755 } })
      await dir.putDevice({ name: 'd0', path: join(p.devices, 'd0') })
      await dir.setVolume(1, { server: LOCAL_SERVER, device: 'd0' })
      await dir.setDefaultVolume(1)
    } finally {
      // The directory closes its store (and, on a shared engine, its change feed).
      await (dir ? dir.close() : kv.close())
    }
    // The marker comes last: a STATE without it is an init that did not finish.
    const marker: StateMarker = { format: 'bslfs-state', version: STATE_FORMAT_VERSION, uuid: randomUUID(), created: new Date().toISOString() }
    await writeWhole(`${p.marker}.tmp-${process.pid}`, p.marker, JSON.stringify(marker, null, 2) + '\n')
    await syncDir(p.root)
  } catch (err) {
    // Leave the directory as we found it: nothing half-made.
    await fsp.rm(p.devices, { recursive: true, force: true })
    await fsp.rm(p.directory, { recursive: true, force: true })
    throw err
  }
}

/** The directory in a database of its own; the config row is written last, in one transaction, so a failed init leaves no filesystem. */
async function initShared (name: FsName & { kind: 'postgres' }, blockSize: number, passwordFile: string | undefined): Promise<void> {
  const kv = await openPg(name, { passwordFile, createIfMissing: true, requireEmpty: true })
  let dir: Directory | undefined
  try {
    dir = await Directory.create(kv, { blockSize, root: { uid: 0, gid: 0, mode: 0o755 } }).catch((err: FsError) => {
      if (err.code === 'EEXIST') throw new UsageError(`${name.url} already holds a bslfs filesystem; mount it, or init another database`)
      throw err
    })
  } finally {
    // The directory closes its store and its change feed (a LISTEN connection left open keeps the CLI alive).
    await (dir ? dir.close() : kv.close())
  }
}

/** --password-file belongs to a URL; a STATE directory has no password to give. */
export function checkPasswordFile (name: FsName, passwordFile: string | undefined): void {
  if (passwordFile !== undefined && name.kind === 'state') {
    throw new UsageError(`--password-file is for a filesystem named by a postgres:// URL; ${name.root} is a STATE directory (LevelDB), which needs no password`)
  }
}

async function openPg (name: FsName & { kind: 'postgres' }, opts: PgKvOptions): Promise<PgKv> {
  try {
    return await PgKv.open(name.url, opts)
  } catch (err) {
    if (err instanceof FsError && err.code === 'ENOENT' && /holds no bslfs directory/.test(err.message)) {
      throw new UsageError(`${name.url} holds no bslfs filesystem; create one with \`bslfs init ${name.url}\``)
    }
    throw err
  }
}

export async function readMarker (state: string): Promise<StateMarker> {
  const p = statePaths(state)
  let text: string
  try {
    text = await fsp.readFile(p.marker, 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT' && !existsSync(p.root)) throw new UsageError(`${p.root} does not exist; create a filesystem with \`bslfs init ${state}\``)
    if (code === 'ENOENT') throw new UsageError(`${p.root} is not a bslfs filesystem (no bslfs.json); create one with \`bslfs init DIR\``)
    throw new UsageError(`cannot read ${p.marker}: ${(err as Error).message}`)
  }
  let m: StateMarker
  try {
    m = JSON.parse(text)
  } catch {
    throw new UsageError(`${p.marker} is corrupt (not JSON); restore it from a backup, it holds the filesystem's uuid`)
  }
  const tooNew = formatTooNew(p.marker, (m as { version?: unknown } | null)?.version, STATE_FORMAT_VERSION)
  if (tooNew) throw new UsageError(tooNew)
  if (m?.format !== 'bslfs-state' || m.version !== STATE_FORMAT_VERSION || typeof m.uuid !== 'string') {
    throw new UsageError(`${p.marker} is not a bslfs state marker of a known version`)
  }
  return m
}

export interface StateOpenOptions extends Pick<VolumesOptions, 'copyTimeoutMs'> {
  /** The mount's open files, which the directory asks before it frees an unlinked inode (none offline). */
  openInodes?: OpenInodes
  /** A URL-named filesystem's password, from this file (else ~/.pgpass or PGPASSFILE). */
  passwordFile?: string
  /** Who hears what other mounts of a shared filesystem changed (the mount: kernel invalidations). */
  remote?: RemoteChanges
}

/** An opened filesystem: the directory and the volumes, ready for a mount or an offline command. */
export class State {
  private constructor (readonly name: FsName, readonly dir: Directory, readonly volumes: Volumes) {}

  /** STATE directory or postgres:// URL. */
  static async open (nameArg: string | FsName, opts: StateOpenOptions = {}): Promise<State> {
    const { openInodes, passwordFile, remote, ...volumeOpts } = opts
    const name = typeof nameArg === 'string' ? parseFsName(nameArg) : nameArg
    checkPasswordFile(name, passwordFile)
    const kv: KvStore = name.kind === 'postgres' ? await openPg(name, { passwordFile }) : await openLevel(name.root)
    // Another mount's change to the tables (or changes that may have been missed) makes this one re-read them at once.
    let opened: State | undefined
    const reload = (): void => {
      opened?.reloadTables().catch(err => log('re-reading the tables: %s', (err as Error).message))
    }
    const heard: RemoteChanges = {
      changed: change => {
        if (change.tables === true) reload()
        remote?.changed(change)
      },
      missed: () => {
        reload()
        remote?.missed()
      }
    }
    try {
      const dir = await Directory.open(kv, openInodes, heard)
      const tables = await dir.tables()
      const volumes = new Volumes(tables, place => openDevice(dir, place), { ...volumeOpts, healQueue: { record: copies => dir.queueHeal(copies) } })
      opened = new State(name, dir, volumes)
      return opened
    } catch (err) {
      await kv.close().catch(() => undefined)
      throw new UsageError(`the filesystem in ${fsNameText(name)} cannot be opened: ${(err as Error).message}`)
    }
  }

  /** The name as messages and `status` show it. */
  get location (): string { return fsNameText(this.name) }

  /** Several hosts may mount it (the directory is on PostgreSQL): local devices are refused. */
  get shared (): boolean { return this.name.kind === 'postgres' }

  /** Re-read the tables after a change to them (here, or told by another mount or the CLI). */
  async reloadTables (): Promise<void> {
    this.volumes.update(await this.dir.tables())
  }

  async close (): Promise<void> {
    await this.volumes.close()
    await this.dir.close()
  }
}

async function openLevel (state: string): Promise<LevelKv> {
  const p = statePaths(state)
  await readMarker(state)
  try {
    return await LevelKv.open(p.directory)
  } catch (err) {
    const cause = (err as { cause?: Error }).cause
    const text = `${(err as Error).message} ${cause?.message ?? ''}`
    if (/lock/i.test(text)) throw new UsageError(`${p.root} is in use by another bslfs process (mounted? see \`bslfs status ${state}\`)`)
    throw new UsageError(`cannot open the directory database in ${p.directory}: ${cause?.message ?? (err as Error).message}`)
  }
}

async function openDevice (dir: Directory, place: Place): Promise<Device> {
  const tables = await dir.tables()
  if (place.server !== LOCAL_SERVER) {
    const server = tables.servers.get(place.server)
    if (!server) throw new FsError('ENODEV', `${placeText(place)}: no server "${place.server}"; add it with \`bslfs server add STATE ${place.server} URL\``)
    const tls = await loadClientTls(server)
    return new RemoteDevice({ server: server.name, device: place.device, url: server.url, token: await readTokenFile(server.tokenFile), ...(tls ? { tls } : {}) })
  }
  const row = tables.devices.get(place.device)
  if (!row) {
    throw new FsError('ENODEV', `no local device "${place.device}"; add it with \`bslfs device add STATE ${place.device} PATH\``)
  }
  return LocalDevice.open(row.path, { server: LOCAL_SERVER, device: place.device })
}

/**
 * The bearer token for a block server: the content of its token file, or,
 * for a server started without one on this host, the token it wrote.
 */
export async function readTokenFile (file: string | undefined): Promise<string> {
  if (!file) throw new UsageError('this server has no token file; give --token-file FILE (the server prints where its token is)')
  const token = (await readSecretFile(file, 'token file')).toString('utf8').trim()
  if (!token) throw new UsageError(`the token file ${file} is empty`)
  return token
}
