import { randomUUID } from 'node:crypto'
import { existsSync, promises as fsp } from 'node:fs'
import { join, resolve } from 'node:path'
import { Device } from '../devices/device'
import { syncDir, writeWhole } from '../durable'
import { LocalDevice } from '../devices/local'
import { RemoteDevice } from '../devices/remote'
import { Directory, OpenInodes } from '../directory/directory'
import { LevelKv } from '../directory/leveldb'
import { FsError, UsageError } from '../errors'
import { LOCAL_SERVER, Place, placeText } from '../volumes/tables'
import { STATE_FORMAT_VERSION, formatTooNew } from '../format-version'
import { Volumes, VolumesOptions } from '../volumes/volumes'

/**
 * A STATE directory: what `bslfs init` makes and every command names.
 *
 *   STATE/bslfs.json       marker: format, version, uuid
 *   STATE/directory/       the LevelDB directory
 *   STATE/devices/d0/      the first local device
 *   STATE/control.sock     the running mount's control socket
 *   STATE/daemon.pid       the running mount's pid; daemon.log its log
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

/** Create a new filesystem in `state`: one local device d0 and volume 1 on it. */
export async function initState (state: string, opts: { blockSize?: number } = {}): Promise<void> {
  const p = statePaths(state)
  let entries: string[] = []
  try {
    entries = await fsp.readdir(p.root)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOTDIR') throw new UsageError(`${p.root} is not a directory`)
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  if (existsSync(p.marker)) throw new UsageError(`${p.root} already holds a bslfs filesystem; use it, or pick another directory`)
  if (entries.length > 0) throw new UsageError(`${p.root} is not empty and is not a bslfs filesystem; pick an empty or new directory`)
  const blockSize = opts.blockSize ?? DEFAULT_BLOCK_SIZE
  await fsp.mkdir(p.root, { recursive: true })
  try {
    await LocalDevice.create(join(p.devices, 'd0'), { server: LOCAL_SERVER, device: 'd0' })
    const kv = await LevelKv.open(p.directory, { createIfMissing: true })
    try {
      const dir = await Directory.create(kv, { blockSize, root: { uid: 0, gid: 0, mode: 0o755 } })
      await dir.putDevice({ name: 'd0', path: join(p.devices, 'd0') })
      await dir.setVolume(1, { server: LOCAL_SERVER, device: 'd0' })
      await dir.setDefaultVolume(1)
    } finally {
      await kv.close()
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

/** An opened STATE: the directory and the volumes, ready for a mount or an offline command. */
export class State {
  private constructor (readonly paths: ReturnType<typeof statePaths>, readonly dir: Directory, readonly volumes: Volumes) {}

  /** `openInodes`: the mount's open files, which the directory asks before it frees an unlinked inode (none offline). */
  static async open (state: string, opts: Pick<VolumesOptions, 'copyTimeoutMs'> & { openInodes?: OpenInodes } = {}): Promise<State> {
    const { openInodes, ...volumeOpts } = opts
    const p = statePaths(state)
    await readMarker(state)
    let kv: LevelKv
    try {
      kv = await LevelKv.open(p.directory)
    } catch (err) {
      const cause = (err as { cause?: Error }).cause
      const text = `${(err as Error).message} ${cause?.message ?? ''}`
      if (/lock/i.test(text)) throw new UsageError(`${p.root} is in use by another bslfs process (mounted? see \`bslfs status ${state}\`)`)
      throw new UsageError(`cannot open the directory database in ${p.directory}: ${cause?.message ?? (err as Error).message}`)
    }
    try {
      const dir = await Directory.open(kv, openInodes)
      const tables = await dir.tables()
      const volumes = new Volumes(tables, place => openDevice(dir, place), { ...volumeOpts, healQueue: { record: copies => dir.queueHeal(copies) } })
      return new State(p, dir, volumes)
    } catch (err) {
      await kv.close().catch(() => undefined)
      throw new UsageError(`the filesystem in ${p.root} cannot be opened: ${(err as Error).message}`)
    }
  }

  /** Re-read the tables after a change to them. */
  async reloadTables (): Promise<void> {
    this.volumes.update(await this.dir.tables())
  }

  async close (): Promise<void> {
    await this.volumes.close()
    await this.dir.close()
  }
}

async function openDevice (dir: Directory, place: Place): Promise<Device> {
  const tables = await dir.tables()
  if (place.server !== LOCAL_SERVER) {
    const server = tables.servers.get(place.server)
    if (!server) throw new FsError('ENODEV', `${placeText(place)}: no server "${place.server}"; add it with \`bslfs server add STATE ${place.server} URL\``)
    return new RemoteDevice({ server: server.name, device: place.device, url: server.url, token: await readTokenFile(server.tokenFile) })
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
  let text: string
  try {
    text = await fsp.readFile(file, 'utf8')
  } catch (err) {
    throw new UsageError(`cannot read the token file ${file}: ${(err as Error).message}`)
  }
  const token = text.trim()
  if (!token) throw new UsageError(`the token file ${file} is empty`)
  return token
}
