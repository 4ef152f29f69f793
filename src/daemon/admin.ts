import { formatBSL, parsePlace, validName } from '../bsl'
import { LocalDevice } from '../devices/local'
import { probeServer } from '../devices/probe'
import { RemoteDevice } from '../devices/remote'
import { ClientTlsFiles, TlsFailure, loadClientTls, speaksTls } from '../devices/tls'
import { readTokenFile } from './state'
import { FsError, UsageError } from '../errors'
import { LOCAL_SERVER, MirrorRow, Place, Tables, placeText } from '../volumes/tables'
import { PlaceHealth } from '../volumes/health'
import { HealReport, ScrubReport, heal as healQueue, scrub as scrubAll } from './heal'
import { OnProgress } from './progress'
import { RemapOptions, RemapReport, remap } from './remap'
import { FsckReport, fsck } from './fsck'
import { BlockRecord } from '../directory/records'
import { State } from './state'
import { resolve } from 'node:path'
import { ServerRow } from '../volumes/tables'
import { RecentEvent, recentEvents } from '../log'
import { problemsOf } from './problems'
import { SessionRow, expired } from '../directory/sessions'
import { reapExpiredSessions } from './session-keeper'

/**
 * The management operations. The same code serves a running mount (through
 * its control socket) and an offline STATE (opened by the CLI), so a command
 * behaves the same either way.
 */

export interface MountInfo { mountpoint: string, pid: number, since: string, readOnly: boolean }

export interface StatusReport {
  state: string
  blockSize: number
  mounted: MountInfo | null
  files: number
  bytes: number
  defaultVolume: number
  /** Set when new blocks go straight to a place (physical BSLs) rather than to a volume. */
  defaultPlace?: string
  volumes: VolumeStatus[]
  /** Health of each place the volume table names: up or down, latency, reads served, failovers, bad copies. */
  places: PlaceHealth[]
  /** Copies waiting in the heal queue. */
  healBacklog: number
  devices: Array<{ place: string, path?: string, total?: number, free?: number, available?: number, error?: string }>
  servers: Array<{ name: string, url: string, reachable: boolean, error?: string, devices?: string[] }>
  /** What is wrong, one line each (./problems.ts); empty when nothing is. */
  problems: string[]
  /** The running mount's last ERROR and WARN events, with their times (none offline). */
  recentErrors: RecentEvent[]
  /** The mounts' sessions as the directory holds them (an expired one awaits cleanup); `jobs`: holds the job lease. */
  sessions: SessionStatus[]
}

/** A session row as `status` shows it: the renewal as an ISO time, whether it is live, whether it runs the jobs. */
export interface SessionStatus extends Pick<SessionRow, 'session' | 'host' | 'pid' | 'mountpoint' | 'version' | 'started' | 'expiryMs'> {
  renewed: string
  live: boolean
  jobs: boolean
}

export interface VolumeStatus {
  volume: number
  /** Where a plain volume lives ("s2:d1"); "mirror" for a mirrored one. */
  place: string
  /** healthy; degraded (a mirror down, or copies waiting to be healed); down (no copy reachable). */
  health: 'healthy' | 'degraded' | 'down'
  mirrors?: Array<{ volume: number, place: string, up: boolean }>
  minCopies?: number
  /** Copies of this volume's blocks waiting to be healed. */
  backlog: number
  /** Reads that were served by other than their first copy since the mount started. */
  failovers: number
}

function volumeStatus (state: State, tables: Tables, backlog: Map<number, number>): VolumeStatus[] {
  const up = (p: Place) => state.volumes.health.isUp(placeText(p))
  const plain: VolumeStatus[] = [...tables.volumes.values()].sort((a, b) => a.volume - b.volume).map(v => ({
    volume: v.volume,
    place: placeText(v.place),
    health: up(v.place) ? (backlog.get(v.volume) ? 'degraded' : 'healthy') : 'down',
    backlog: backlog.get(v.volume) ?? 0,
    failovers: state.volumes.failoversOf(v.volume)
  }))
  const mirrored: VolumeStatus[] = [...tables.mirrors.values()].sort((a, b) => a.volume - b.volume).map(m => {
    const mirrors = m.mirrors.map(v => {
      const row = tables.volumes.get(v)
      return { volume: v, place: row ? placeText(row.place) : '(not in the volume table)', up: row ? up(row.place) : false }
    })
    const waiting = m.mirrors.reduce((n, v) => n + (backlog.get(v) ?? 0), 0)
    const upCount = mirrors.filter(x => x.up).length
    return {
      volume: m.volume,
      place: 'mirror',
      health: upCount === 0 ? 'down' : upCount < mirrors.length || waiting > 0 ? 'degraded' : 'healthy',
      mirrors,
      minCopies: m.minCopies,
      backlog: waiting,
      failovers: state.volumes.failoversOf(m.volume)
    }
  })
  return [...plain, ...mirrored]
}

export async function status (state: State, mounted: MountInfo | null): Promise<StatusReport> {
  const tables = await state.dir.tables()
  const space = await state.volumes.space()
  const usage = state.dir.usage
  const backlog = await state.dir.healBacklog()
  const sessionRows = await state.dir.sessions()
  const devices: StatusReport['devices'] = []
  for (const row of tables.devices.values()) {
    const place = placeText({ server: LOCAL_SERVER, device: row.name })
    const s = space.get(place) ?? await LocalDevice.open(row.path, { server: LOCAL_SERVER, device: row.name })
      .then(async d => { try { return await d.space() } finally { await d.close() } }, (err: Error) => err)
    devices.push(s instanceof Error
      ? { place, path: row.path, error: s.message }
      : { place, path: row.path, total: s.total, free: s.free, available: s.available })
  }
  // Remote devices named by a volume are in `space` already; the servers themselves are probed here.
  for (const [place, sp] of space) {
    if (place.startsWith(`${LOCAL_SERVER}:`)) continue
    devices.push(sp instanceof Error ? { place, error: sp.message } : { place, total: sp.total, free: sp.free, available: sp.available })
  }
  const servers = await Promise.all([...tables.servers.values()].map(async row => {
    try {
      const tls = await loadClientTls(row)
      const health = await probeServer(row.url, await readTokenFile(row.tokenFile), 2000, { retries: 0, name: row.name, ...(tls ? { tls } : {}) })
      return { name: row.name, url: row.url, reachable: true, devices: health.devices }
    } catch (err) {
      return { name: row.name, url: row.url, reachable: false, error: (err as Error).message }
    }
  }))
  const report = {
    state: state.location,
    blockSize: state.dir.blockSize,
    mounted,
    files: usage.files,
    bytes: usage.bytes,
    defaultVolume: tables.defaultVolume,
    ...(tables.defaultPlace ? { defaultPlace: placeText(tables.defaultPlace) } : {}),
    volumes: volumeStatus(state, tables, backlog),
    places: state.volumes.placeHealth(),
    healBacklog: [...backlog.values()].reduce((a, b) => a + b, 0),
    devices,
    servers,
    sessions: sessionStatus(sessionRows)
  }
  return { ...report, problems: problemsOf(report), recentErrors: mounted ? recentEvents() : [] }
}

function sessionStatus (rows: Awaited<ReturnType<State['dir']['sessions']>>, now = Date.now()): SessionStatus[] {
  return rows.sessions.map(s => ({
    session: s.session, host: s.host, pid: s.pid, mountpoint: s.mountpoint, version: s.version, started: s.started,
    renewed: new Date(s.renewed).toISOString(), expiryMs: s.expiryMs, live: !expired(s, now),
    jobs: rows.lease?.holder === s.session && rows.lease.expires >= now
  }))
}

export function parseVolume (text: string): number {
  if (!/^(0|[1-9][0-9]{0,9})$/.test(text) || Number(text) > 0xffffffff) {
    throw new UsageError(`bad volume "${text}": a volume is a decimal number 0..4294967295`)
  }
  return Number(text)
}

/**
 * A filesystem on PostgreSQL is mounted by several hosts, and a local device
 * is a directory on one of them: the others could not read the blocks it holds.
 */
function refuseLocalInShared (state: State, what: string): void {
  if (state.shared) refuseLocalDevice(state.location, what)
}

/** The refusal itself, also given by the CLI before it connects anywhere. */
export function refuseLocalDevice (location: string, what: string): never {
  throw new UsageError(`${what}: ${location} is shared by every host that mounts it, and a local device is a directory on one host that the others cannot read; ` +
    'keep the data on a block server (`bslfs serve` on the host with the disk, then `bslfs server add` and `bslfs volume add VOL SERVER:DEVICE`)')
}

export async function deviceAdd (state: State, name: string, path: string): Promise<{ device: string, path: string }> {
  refuseLocalInShared(state, `cannot add local device "${name}"`)
  try {
    validName('device', name)
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
  const tables = await state.dir.tables()
  if (tables.devices.has(name)) throw new UsageError(`device "${name}" already exists (at ${tables.devices.get(name)!.path})`)
  const abs = resolve(path)
  await LocalDevice.create(abs, { server: LOCAL_SERVER, device: name }).catch((err: Error) => {
    throw new UsageError(`cannot use ${abs} as a device: ${err.message}`)
  })
  await state.dir.putDevice({ name, path: abs })
  await state.reloadTables()
  return { device: name, path: abs }
}

export async function volumeAdd (state: State, volumeText: string, placeArg: string): Promise<{ volume: number, place: string }> {
  const volume = parseVolume(volumeText)
  const place = parsePlaceArg(placeArg)
  const tables = await state.dir.tables()
  if (tables.volumes.has(volume) || tables.mirrors.has(volume)) {
    throw new UsageError(`volume ${volume} already exists; to move it use \`bslfs remap\``)
  }
  await checkPlaceKnown(state, tables, place)
  await state.dir.setVolume(volume, place)
  await state.reloadTables()
  return { volume, place: placeText(place) }
}

function parsePlaceArg (text: string): Place {
  try {
    return parsePlace(text)
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
}

/** A place must name a local device (not in a shared filesystem) or a server this filesystem knows. */
async function checkPlaceKnown (state: State, tables: Tables, place: Place): Promise<void> {
  if (place.server === LOCAL_SERVER) {
    refuseLocalInShared(state, `cannot use ${placeText(place)}`)
    if (!tables.devices.has(place.device)) {
      throw new UsageError(`there is no local device "${place.device}"; add it first with \`bslfs device add STATE ${place.device} PATH\``)
    }
  } else if (!tables.servers.has(place.server)) {
    throw new UsageError(`there is no server "${place.server}"; add it first with \`bslfs server add STATE ${place.server} URL\``)
  }
}

export async function volumeList (state: State): Promise<Array<{ volume: number, place: string, since: string, history: Array<{ place: string, from: string, to: string }> }>> {
  const tables = await state.dir.tables()
  return [...tables.volumes.values()].sort((a, b) => a.volume - b.volume).map(v => ({
    volume: v.volume,
    place: placeText(v.place),
    since: v.since,
    history: v.history.map(h => ({ place: placeText(h.place), from: h.from, to: h.to }))
  }))
}

export interface BlockReport { index: number, bsl: string, length: number, checksum: string, places: string[] }

/** The BSLs of a file's blocks and where each resolves. `path` is inside the filesystem ("/a/b"). */
export async function bslOf (state: State, path: string): Promise<BlockReport[]> {
  if (!path.startsWith('/')) path = '/' + path
  const ino = await state.dir.resolve(path.replace(/\/+$/, '') || '/').catch((err: FsError) => {
    throw new UsageError(`${path}: ${err.code === 'ENOENT' ? 'no such file in the filesystem' : err.message}`)
  })
  const blocks = await state.dir.getBlocks(ino)
  return [...blocks].sort((a, b) => a[0] - b[0]).map(([index, rec]) => {
    let places: string[]
    try {
      places = state.volumes.resolve(rec.bsl).map(placeText)
    } catch (err) {
      places = [`unresolved: ${(err as Error).message}`]
    }
    return { index, bsl: formatBSL(rec.bsl), length: rec.length, checksum: rec.checksum.toString(16).padStart(8, '0'), places }
  })
}

/** The TLS files of a control request's options (paths, made absolute by the CLI). */
export function tlsFilesOption (options: Record<string, unknown> | undefined): ClientTlsFiles {
  const out: ClientTlsFiles = {}
  for (const k of ['caFile', 'clientCertFile', 'clientKeyFile'] as const) {
    const v = options?.[k]
    if (typeof v === 'string' && v !== '') out[k] = v
  }
  return out
}

/** Asks the server with these credentials; a refusal is one line naming the server and why. */
async function checkServerAnswers (row: ServerRow, token: string): Promise<void> {
  const tls = await loadClientTls(row)
  await probeServer(row.url, token, 2000, { name: row.name, ...(tls ? { tls } : {}) }).catch(async (err: Error) => {
    if (err instanceof TlsFailure) throw new UsageError(`server ${row.name} at ${row.url}: ${err.reason}`)
    if (err instanceof FsError && err.code === 'EACCES') throw new UsageError(err.message.replace(/^EACCES: /, ''))
    const u = new URL(row.url)
    if (u.protocol === 'http:' && (err as FsError).fault === 'unreachable' &&
      await speaksTls(u.hostname.replace(/^\[|\]$/g, ''), Number(u.port || 80), 2000)) {
      throw new UsageError(`server ${row.name} at ${row.url}: the server speaks TLS: use https://${u.host} (with --ca FILE for a private CA)`)
    }
    throw new UsageError(`server ${row.name} at ${row.url} does not answer: ${err.message}`)
  })
}

/**
 * Add a remote block server; it must answer with the token (and, for
 * https, prove itself with a certificate the CA signed for its host name)
 * before it is recorded. Only the files' paths are recorded.
 */
export async function serverAdd (state: State, name: string, url: string, tokenFile: string | undefined, tlsFiles: ClientTlsFiles = {}): Promise<ServerRow> {
  try {
    validName('server', name)
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
  if (name === LOCAL_SERVER) throw new UsageError(`"${LOCAL_SERVER}" is this host; pick another server name`)
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    throw new UsageError(`bad URL "${url}": use https://HOST:PORT (or http://HOST:PORT)`)
  }
  if ((parsed.protocol !== 'http:' && parsed.protocol !== 'https:') || parsed.pathname !== '/' || parsed.search || parsed.username || parsed.password || parsed.hash) {
    throw new UsageError(`bad URL "${url}": use https://HOST:PORT or http://HOST:PORT (no path, query or credentials)`)
  }
  const given = Object.keys(tlsFiles).length > 0
  if (given && parsed.protocol !== 'https:') {
    throw new UsageError(`--ca, --client-cert and --client-key are for an https:// URL, not ${parsed.origin}`)
  }
  const tables = await state.dir.tables()
  if (tables.servers.has(name)) throw new UsageError(`server "${name}" already exists (${tables.servers.get(name)!.url})`)
  const row: ServerRow = { name, url: parsed.origin }
  if (tokenFile) row.tokenFile = resolve(tokenFile)
  for (const k of ['caFile', 'clientCertFile', 'clientKeyFile'] as const) {
    const f = tlsFiles[k]
    if (f !== undefined) row[k] = resolve(f)
  }
  await checkServerAnswers(row, await readTokenFile(row.tokenFile))
  await state.dir.putServer(row)
  await state.reloadTables()
  return row
}

/**
 * The server's token is now in `tokenFile` (the server must accept it
 * already: list both tokens in its token files during the change-over). The
 * row is changed, and a running mount's devices of that server send the new
 * token from their next call on, without a remount.
 */
export async function serverSetToken (state: State, name: string, tokenFile: string): Promise<ServerRow & { devices: number }> {
  const tables = await state.dir.tables()
  const old = tables.servers.get(name)
  if (!old) throw new UsageError(`no server "${name}"; see \`bslfs server list STATE\``)
  const row: ServerRow = { ...old, tokenFile: resolve(tokenFile) }
  const token = await readTokenFile(row.tokenFile)
  await checkServerAnswers(row, token)
  await state.dir.putServer(row)
  await state.reloadTables()
  // The places of this server the tables name; their devices are opened (cheap: no connection) and given the token.
  const places = new Map<string, Place>()
  for (const v of tables.volumes.values()) if (v.place.server === name) places.set(placeText(v.place), v.place)
  if (tables.defaultPlace?.server === name) places.set(placeText(tables.defaultPlace), tables.defaultPlace)
  let devices = 0
  for (const place of places.values()) {
    const d = await state.volumes.deviceAt(place).catch(() => null)
    if (d instanceof RemoteDevice) {
      d.setToken(token)
      devices++
    }
  }
  return { ...row, devices }
}

export async function serverList (state: State): Promise<ServerRow[]> {
  return [...(await state.dir.tables()).servers.values()].sort((a, b) => a.name.localeCompare(b.name))
}

/**
 * Send new blocks to `volume` (a volume of the volume table or of the mirror
 * table), or straight to a place SERVER:DEVICE as physical BSLs.
 */
export async function volumeDefault (state: State, volumeText: string): Promise<{ volume: number } | { place: string }> {
  const tables = await state.dir.tables()
  if (volumeText.includes(':')) {
    const place = parsePlaceArg(volumeText)
    await checkPlaceKnown(state, tables, place)
    await state.dir.setDefaultVolume(place)
    await state.reloadTables()
    return { place: placeText(place) }
  }
  const volume = parseVolume(volumeText)
  if (!tables.volumes.has(volume) && !tables.mirrors.has(volume)) {
    throw new UsageError(`there is no volume ${volume}; add it first with \`bslfs volume add STATE ${volume} SERVER:DEVICE\``)
  }
  await state.dir.setDefaultVolume(volume)
  await state.reloadTables()
  return { volume }
}

/**
 * Serve logical volume `volume` from the mirror volumes `mirrorTexts` (each
 * in the volume table, each on its own place). On an existing mirror only
 * `minCopies` may change: blocks already written live on the old set.
 */
export async function mirrorSet (state: State, volumeText: string, mirrorTexts: string[], minCopiesText?: string): Promise<MirrorRow> {
  const volume = parseVolume(volumeText)
  const mirrors = mirrorTexts.map(parseVolume)
  const tables = await state.dir.tables()
  if (tables.volumes.has(volume)) {
    throw new UsageError(`volume ${volume} is a plain volume (on ${placeText(tables.volumes.get(volume)!.place)}); a mirrored volume needs a number of its own`)
  }
  if (mirrors.length < 2) throw new UsageError('a mirror needs at least two volumes: `bslfs mirror STATE VOL VOL1 VOL2 [...]`')
  const places = new Map<string, number>()
  for (const m of mirrors) {
    if (m === volume) throw new UsageError(`volume ${volume} cannot mirror itself`)
    if (tables.mirrors.has(m)) throw new UsageError(`volume ${m} is itself mirrored; mirror plain volumes only`)
    const row = tables.volumes.get(m)
    if (!row) throw new UsageError(`there is no volume ${m}; add it first with \`bslfs volume add STATE ${m} SERVER:DEVICE\``)
    const key = placeText(row.place)
    if (places.has(key)) {
      throw new UsageError(places.get(key) === m ? `volume ${m} is named twice` : `volumes ${places.get(key)} and ${m} are both on ${key}: their copies would share one device`)
    }
    places.set(key, m)
  }
  let minCopies = mirrors.length
  if (minCopiesText !== undefined) {
    if (!/^[1-9][0-9]*$/.test(minCopiesText) || Number(minCopiesText) > mirrors.length) {
      throw new UsageError(`bad --min-copies "${minCopiesText}": a number from 1 to ${mirrors.length} (the mirror's copies)`)
    }
    minCopies = Number(minCopiesText)
  }
  const old = tables.mirrors.get(volume)
  if (old && old.mirrors.join(',') !== mirrors.join(',')) {
    throw new UsageError(`volume ${volume} is already mirrored on ${old.mirrors.join(', ')}; its blocks live there (move a copy with \`bslfs remap\`)`)
  }
  const row: MirrorRow = { volume, mirrors, minCopies }
  await state.dir.setMirror(row)
  await state.reloadTables()
  return row
}

export async function heal (state: State, onProgress?: OnProgress): Promise<HealReport> {
  await state.volumes.space() // find out which places are up before trying them
  return await healQueue(state.dir, state.volumes, onProgress)
}

export async function scrub (state: State, onProgress?: OnProgress): Promise<ScrubReport> {
  await state.volumes.space()
  return await scrubAll(state.dir, state.volumes, onProgress)
}

/** Every block record of every file, in key order: the block maps as stored (remap must leave them as they were). */
export async function blockDump (state: State): Promise<Array<{ ino: number, index: number, bsl: string, length: number, checksum: string }>> {
  const out = []
  for await (const { ino, index, block } of state.dir.allBlocks()) {
    out.push({ ino, index, bsl: formatBSL(block.bsl), length: block.length, checksum: block.checksum.toString(16).padStart(8, '0') })
  }
  return out
}

/**
 * Move volume VOL to SERVER:DEVICE (see remap.ts). A place given instead of
 * a volume names physical BSLs, which only `adopt` can turn into a volume.
 */
export async function remapVolume (state: State, volumeText: string, placeText_: string, opts: Omit<RemapOptions, 'onProgress' | 'signal'>,
  onProgress?: OnProgress, signal?: AbortSignal): Promise<RemapReport> {
  if (volumeText.includes(':')) {
    throw new UsageError(`${volumeText} is a place, not a volume: blocks with physical BSLs name their server and device directly, so there is no row to change. ` +
      `Make them a volume first: \`bslfs adopt STATE ${volumeText} --as VOL\`, then remap VOL`)
  }
  const volume = parseVolume(volumeText)
  const target = parsePlaceArg(placeText_)
  const tables = await state.dir.tables()
  if (tables.mirrors.has(volume)) {
    throw new UsageError(`volume ${volume} is mirrored on ${tables.mirrors.get(volume)!.mirrors.join(', ')}; remap those volumes one at a time`)
  }
  const row = tables.volumes.get(volume)
  if (!row) throw new UsageError(`there is no volume ${volume} (see \`bslfs volume list STATE\`)`)
  await checkPlaceKnown(state, tables, target)
  if (placeText(row.place) === placeText(target)) throw new UsageError(`volume ${volume} is on ${placeText(target)} already`)
  return await remap(state.dir, state.volumes, state, volume, target, { ...opts, onProgress, signal })
}

/**
 * Turn every physical BSL naming SERVER:DEVICE into a logical BSL of volume
 * VOL (created on that place if new), one atomic batch per file. The
 * objects stay where they are; afterwards the device can be remapped.
 */
export async function adopt (state: State, placeArg: string, volumeText: string,
  onAdopted: (ino: number, changes: Map<number, BlockRecord>) => Promise<void> = async () => {}): Promise<{ volume: number, place: string, files: number, blocks: number }> {
  const place = parsePlaceArg(placeArg)
  const volume = parseVolume(volumeText)
  const tables = await state.dir.tables()
  await checkPlaceKnown(state, tables, place)
  if (tables.mirrors.has(volume)) throw new UsageError(`volume ${volume} is mirrored; adopt into a plain volume`)
  const row = tables.volumes.get(volume)
  if (row && placeText(row.place) !== placeText(place)) {
    throw new UsageError(`volume ${volume} is on ${placeText(row.place)}, not ${placeText(place)}; pick a new volume number`)
  }
  for (const other of tables.volumes.values()) {
    if (other.volume !== volume && placeText(other.place) === placeText(place)) {
      throw new UsageError(`${placeText(place)} is volume ${other.volume} already; adopt into it: --as ${other.volume}`)
    }
  }
  if (!row) {
    await state.dir.setVolume(volume, place)
    await state.reloadTables()
  }
  const inos = new Set<number>()
  for await (const { ino, block: { bsl } } of state.dir.allBlocks()) {
    if (bsl.form === 'physical' && bsl.server === place.server && bsl.device === place.device) inos.add(ino)
  }
  if (tables.defaultPlace && placeText(tables.defaultPlace) === placeText(place)) {
    // New blocks would keep naming the device directly: send them to the volume instead.
    await state.dir.setDefaultVolume(volume)
    await state.reloadTables()
  }
  let blocks = 0
  for (const ino of inos) {
    const changes = await state.dir.adoptBlocks(ino, place, volume)
    blocks += changes.size
    await onAdopted(ino, changes)
  }
  return { volume, place: placeText(place), files: inos.size, blocks }
}

/** The remap flags as the control socket carries them. */
export function remapOptions (o: Record<string, unknown> | undefined): Omit<RemapOptions, 'onProgress' | 'signal'> {
  return { copy: o?.copy === true, deleteOld: o?.deleteOld === true, verify: o?.verify === true }
}

/** fsck: offline it may repair; on a mounted filesystem (through the control socket) it only reads. */
export async function fsckState (state: State, opts: { repair: boolean, checksums: boolean }, mounted: boolean, onProgress?: OnProgress): Promise<FsckReport> {
  if (mounted && opts.repair) throw new UsageError('fsck --repair needs the filesystem unmounted (run `bslfs unmount MOUNTPOINT` first); without --repair it checks a mounted one read-only')
  await state.volumes.space()
  // What dead mounts left (their hold records, the inodes only they held open, their usage rows) goes first.
  if (opts.repair) await reapExpiredSessions(state.dir)
  return await fsck(state.dir, state.volumes, { ...opts, onProgress })
}
