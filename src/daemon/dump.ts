import createDebug from 'debug'
import { createHash, randomUUID, Hash } from 'node:crypto'
import { createReadStream, createWriteStream, existsSync, fstatSync, promises as fsp } from 'node:fs'
import { createServer, connect, Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable, Writable } from 'node:stream'
import { isObjectId, objectIdOf } from '../bsl'
import { syncDir, writeWhole } from '../durable'
import { FsError, UsageError } from '../errors'
import { STATE_FORMAT_VERSION } from '../format-version'
import { KvReader, KvStore } from '../directory/kv'
import { LevelKv } from '../directory/leveldb'
import { Usage, isConfig, isUsage } from '../directory/meta'
import { PgKv } from '../directory/postgres'
import { ROOT_INO, decodeBlock, decodeEntry, decodeInode, decodeJSON, encodeJSON, keyNumber, keys } from '../directory/records'
import { readUsage } from '../directory/usage'
import { LOCAL_SERVER, placeText } from '../volumes/tables'
import { packageVersion } from '../version'
import { askControl } from './control'
import { FsName, fsNameText, parseFsName, runtimePaths } from './location'
import { controlSocketOf, findFsMounts } from './mountpoint'
import { fsck as runFsck } from './fsck'
import { OnProgress } from './progress'
import { State, StateMarker, checkPasswordFile, statePaths } from './state'

const log = createDebug('bslfs:dump')

/**
 * `bslfs dump` / `bslfs load` / `bslfs migrate`: a filesystem's whole
 * directory as one stream, to move it between engines (LevelDB ⇄ PostgreSQL)
 * or keep a copy. The format (version 1):
 *
 *   "bslfs-dump 1\n"                       magic and version: `head -1` tells what it is
 *   header JSON "\n"                       DumpHeader: what was dumped, from where, when
 *   records, in key order, each:
 *     'R' u32 key length, u32 value length, key, value   (big-endian; the directory's own records)
 *   trailer:
 *     'E' u64 record count, sha256 of every byte before the hash
 *
 * Every record is checked on the way out and on the way in with the
 * directory's own decoders, so neither a corrupt source nor a damaged dump
 * reaches a target; a missing or wrong trailer (a truncated or changed dump)
 * is refused before anything is written.
 *
 * What is not copied as it is: each mount session's usage row
 * (M usage/<session>) is folded into the base (M usage), and a session's
 * fsync marker (M synced/<session>) is left out: they belong to mounts of the
 * source, not to the filesystem. So are the live mounts' session rows, the job
 * lease, their holds of open files and their locks: a loaded filesystem has no
 * mounts yet (an unlinked file a mount held open is freed by the first mount, as
 * after a crash). The id counters (M ino, M object) are copied
 * as stored: a mount reserves its range durably before it uses a number from
 * it, so the stored counter is past every number any mount handed out, and
 * the loaded filesystem hands out none of them again (load checks that every
 * inode number and object id in the dump is below its counter).
 */

export const DUMP_MAGIC = 'bslfs-dump'
export const DUMP_VERSION = 1

export interface DumpHeader {
  format: typeof DUMP_MAGIC
  version: typeof DUMP_VERSION
  /** The filesystem's uuid and block size (its M config record). */
  uuid: string
  blockSize: number
  /** Where it was dumped from (a STATE path or a URL: never a password) and its engine. */
  source: string
  engine: 'leveldb' | 'postgres'
  /** Taken from a running mount (one snapshot) or offline. */
  mounted: boolean
  created: string
  bslfs: string
}

export interface DumpSummary { records: number, bytes: number, sha256: string, usage: Usage }

const TAG_RECORD = 0x52 // 'R'
const TAG_END = 0x45 // 'E'
/** The longest header line, key and value load accepts (the directory's largest records are far below). */
const MAX_HEADER = 64 * 1024
const MAX_KEY = 64 * 1024
const MAX_VALUE = 64 * 1024 * 1024

/** Keys a mount session writes for itself: not part of the filesystem. */
const SESSION_USAGE = keys.meta('usage/')
const SESSION_SYNCED = keys.meta('synced/')
/** The live mounts' own state (sessions.ts, locks.ts): their session rows, the job lease, their holds of open files, their locks. */
const MOUNT_STATE = [keys.meta('session/'), keys.meta('lease'), keys.meta('open/'), Buffer.from('L')]
const startsWith = (k: Buffer, p: Buffer): boolean => k.length >= p.length && k.subarray(0, p.length).equals(p)

const u32 = (n: number): Buffer => { const b = Buffer.allocUnsafe(4); b.writeUInt32BE(n); return b }
const u64 = (n: number): Buffer => { const b = Buffer.allocUnsafe(8); b.writeBigUInt64BE(BigInt(n)); return b }

// ---- records ----------------------------------------------------------------

const META_CHECKS: Record<string, (v: any) => boolean> = {
  config: isConfig,
  ino: v => Number.isSafeInteger(v) && v > ROOT_INO,
  object: v => typeof v === 'string' && /^[0-9]{1,20}$/.test(v),
  usage: isUsage,
  defaultVolume: v => Number.isInteger(v) || (typeof v?.server === 'string' && typeof v.device === 'string')
}
const isPlace = (p: any): boolean => typeof p?.server === 'string' && typeof p.device === 'string'
/** The table rows' shapes, as readTables (directory/tables.ts) checks them when a mount opens the tables. */
const TABLE_CHECKS: Record<string, (v: any, key: string) => boolean> = {
  volume: (r, k) => Number.isInteger(r?.volume) && String(r.volume) === k && isPlace(r.place) && Array.isArray(r.history) && r.history.every((h: any) => isPlace(h?.place)),
  mirror: (r, k) => Number.isInteger(r?.volume) && String(r.volume) === k && Array.isArray(r.mirrors) && r.mirrors.length > 0 &&
    r.mirrors.every(Number.isInteger) && Number.isInteger(r.minCopies) && r.minCopies >= 1 && r.minCopies <= r.mirrors.length,
  device: (r, k) => typeof r?.name === 'string' && r.name === k && typeof r.path === 'string',
  server: (r, k) => typeof r?.name === 'string' && r.name === k && typeof r.url === 'string'
}

/** What a record says that load checks across records. */
interface RecordFacts { ino?: number, objectId?: bigint, blockBytes?: { ino: number, length: number } }

/**
 * Check one record with the directory's decoders; throws an Error naming the
 * key. Unknown kinds are refused: a record this version cannot check might be
 * one it would load wrong.
 */
export function checkRecord (key: Buffer, value: Buffer): RecordFacts {
  const hex = key.toString('hex')
  const bad = (why: string): Error => new Error(`record ${hex}: ${why}`)
  if (key.length === 0) throw bad('empty key')
  const tag = String.fromCharCode(key[0])
  const objectOf = (bslBytes: Buffer): bigint => {
    const rec = decodeBlock(key, bslBytes)
    objectIdOf(rec.bsl) // a file id a device can name
    return rec.bsl.fileId
  }
  try {
    switch (tag) {
      case 'I': {
        if (key.length !== 9) throw bad('inode key is not 9 bytes')
        const ino = keyNumber(key)
        decodeInode(ino, value)
        return { ino }
      }
      case 'E': {
        if (key.length < 10) throw bad('entry key without a name')
        const e = decodeEntry(key, value)
        return { ino: e.ino }
      }
      case 'B': {
        if (key.length !== 17) throw bad('block key is not 17 bytes')
        const rec = decodeBlock(key, value)
        return { objectId: objectOf(value), blockBytes: { ino: keyNumber(key), length: rec.length } }
      }
      case 'X':
        if (key.length < 10) throw bad('xattr key without a name')
        return {}
      case 'O':
        if (key.length !== 9 || value.length !== 0) throw bad('orphan record of the wrong size')
        return { ino: keyNumber(key) }
      case 'G': {
        const id = key.subarray(1).toString('ascii')
        if (!isObjectId(id)) throw bad('reclaim key without an object id')
        const oid = objectOf(value)
        if (oid !== BigInt(`0x${id}`)) throw bad(`reclaim record of object ${id} holds object ${oid}`)
        return { objectId: oid }
      }
      case 'H': {
        if (key.length !== 21) throw bad('heal key is not 21 bytes')
        return { objectId: objectOf(value) }
      }
      case 'M': {
        const name = key.subarray(1).toString('utf8')
        const check = META_CHECKS[name]
        if (!check) throw bad(`unknown metadata "${name}" (made by a newer bslfs?)`)
        decodeJSON(`metadata "${name}"`, value, check)
        return {}
      }
      case 'T': {
        const nul = key.indexOf(0)
        const kind = key.subarray(1, Math.max(1, nul)).toString()
        const check = TABLE_CHECKS[kind]
        if (nul < 0 || !check) throw bad(`unknown table "${kind}"`)
        const row = key.subarray(nul + 1).toString()
        decodeJSON(`${kind} row "${row}"`, value, v => check(v, row))
        return {}
      }
      default:
        throw bad(`unknown record kind "${tag}" (made by a newer bslfs?)`)
    }
  } catch (err) {
    if (err instanceof FsError) throw bad(err.message.replace(/^EIO: /, '').replace(/; run `bslfs fsck`$/, ''))
    throw err
  }
}

// ---- writing ----------------------------------------------------------------

/** Writes `buf` to `out`, waiting when it is full. */
async function put (out: Writable, buf: Buffer): Promise<void> {
  if (out.write(buf)) return
  await new Promise<void>((resolve, reject) => {
    const done = (err?: Error): void => { out.off('drain', done); out.off('error', done); out.off('close', closed); err ? reject(err) : resolve() }
    const closed = (): void => done(new Error('the output closed before the dump was written'))
    out.once('drain', done)
    out.once('error', done)
    out.once('close', closed)
  })
}

/**
 * Write the dump of the directory `read` sees (a snapshot: one consistent
 * state) to `out`. `out` is not ended here.
 */
export async function writeDump (read: KvReader, from: Pick<DumpHeader, 'source' | 'engine' | 'mounted'>, out: Writable, onProgress?: OnProgress): Promise<DumpSummary> {
  const rawConfig = await read.get(keys.meta('config'))
  if (!rawConfig) throw new UsageError(`${from.source} holds no bslfs filesystem to dump`)
  const config = decodeJSON<{ uuid: string, blockSize: number }>('configuration', rawConfig, isConfig)
  // The base plus every session's row, as statfs sums them: one row with the total.
  const usage = await readUsage(read)
  const header: DumpHeader = {
    format: DUMP_MAGIC, version: DUMP_VERSION, uuid: config.uuid, blockSize: config.blockSize, ...from,
    created: new Date().toISOString(), bslfs: packageVersion()
  }
  const hash = createHash('sha256')
  let bytes = 0
  const emit = async (buf: Buffer): Promise<void> => {
    hash.update(buf)
    bytes += buf.length
    await put(out, buf)
  }
  await emit(Buffer.from(`${DUMP_MAGIC} ${DUMP_VERSION}\n${JSON.stringify(header)}\n`))
  let records = 0
  for await (const [k, v0] of read.scan(Buffer.alloc(0))) {
    if (startsWith(k, SESSION_USAGE) || startsWith(k, SESSION_SYNCED) || MOUNT_STATE.some(p => startsWith(k, p))) continue
    const v = k.equals(keys.meta('usage')) ? encodeJSON(usage) : v0
    try {
      checkRecord(k, v)
    } catch (err) {
      throw new UsageError(`the filesystem in ${from.source} has a record that cannot be dumped (${(err as Error).message}); run \`bslfs fsck\` on it`)
    }
    await emit(Buffer.concat([Buffer.from([TAG_RECORD]), u32(k.length), u32(v.length), k, v]))
    records++
    if (records % 1000 === 0) onProgress?.({ done: records, total: 0, bytes, blocks: records })
  }
  const end = Buffer.concat([Buffer.from([TAG_END]), u64(records)])
  hash.update(end)
  const sum = hash.digest()
  await put(out, Buffer.concat([end, sum]))
  bytes += end.length + sum.length
  return { records, bytes, sha256: sum.toString('hex'), usage }
}

// ---- reading ----------------------------------------------------------------

/** A dump that cannot be loaded: one line, and nothing was written. */
function damaged (why: string): UsageError {
  return new UsageError(`the dump cannot be loaded: ${why}; nothing was loaded`)
}

/** Pulls exact byte counts out of a stream of chunks. */
class ByteReader {
  private buf: Buffer = Buffer.alloc(0)
  private readonly it: AsyncIterator<Buffer>
  private ended = false
  constructor (input: AsyncIterable<Buffer | string>, private readonly hash: Hash) {
    this.it = (async function * () { for await (const c of input) yield Buffer.isBuffer(c) ? c : Buffer.from(c) })()
  }

  /** Bytes read so far are hashed as they are taken. */
  private async fill (n: number): Promise<boolean> {
    while (this.buf.length < n && !this.ended) {
      const r = await this.it.next()
      if (r.done) this.ended = true
      else this.buf = this.buf.length ? Buffer.concat([this.buf, r.value]) : r.value
    }
    return this.buf.length >= n
  }

  async take (n: number, what: string, hashed = true): Promise<Buffer> {
    if (!await this.fill(n)) throw damaged(`it ends in the middle of ${what} (truncated?)`)
    const out = this.buf.subarray(0, n)
    this.buf = this.buf.subarray(n)
    if (hashed) this.hash.update(out)
    return out
  }

  async line (what: string): Promise<string> {
    for (;;) {
      const nl = this.buf.indexOf(0x0a)
      if (nl >= 0) return (await this.take(nl + 1, what)).subarray(0, nl).toString('utf8')
      if (this.buf.length > MAX_HEADER) throw damaged(`${what} is longer than ${MAX_HEADER} bytes`)
      if (!await this.fill(this.buf.length + 1)) throw damaged(this.buf.length === 0 ? 'it is empty' : `it ends in ${what}`)
    }
  }

  async atEnd (): Promise<boolean> { return !await this.fill(1) }
}

export interface DumpRecord { key: Buffer, value: Buffer }

/**
 * The records of a dump, each checked; the header first (`onHeader`). Throws
 * (UsageError) on anything wrong, the checksum included: the caller must not
 * act on the records until the iteration finished.
 */
export async function * readDump (input: AsyncIterable<Buffer | string>, onHeader: (h: DumpHeader) => void): AsyncIterable<DumpRecord> {
  const hash = createHash('sha256')
  const r = new ByteReader(input, hash)
  const magic = await r.line('the first line')
  const m = /^bslfs-dump (\d+)$/.exec(magic)
  if (!m) throw damaged(`it does not start with "${DUMP_MAGIC} ${DUMP_VERSION}" (not a bslfs dump)`)
  if (Number(m[1]) !== DUMP_VERSION) {
    throw damaged(`it is format version ${m[1]}; this bslfs reads version ${DUMP_VERSION}${Number(m[1]) > DUMP_VERSION ? ' (made by a newer bslfs: load it with that)' : ''}`)
  }
  let header: DumpHeader
  try {
    header = JSON.parse(await r.line('the header'))
  } catch (err) {
    if (err instanceof UsageError) throw err
    throw damaged('its header is not JSON')
  }
  if (header?.format !== DUMP_MAGIC || header.version !== DUMP_VERSION || typeof header.uuid !== 'string' || !Number.isInteger(header.blockSize)) {
    throw damaged('its header is not a bslfs dump header')
  }
  onHeader(header)
  let count = 0
  let last: Buffer | undefined
  for (;;) {
    const tag = (await r.take(1, 'a record'))[0]
    if (tag === TAG_END) break
    if (tag !== TAG_RECORD) throw damaged(`record ${count + 1} starts with byte 0x${tag.toString(16)} (damaged)`)
    const lens = await r.take(8, `record ${count + 1}`)
    const klen = lens.readUInt32BE(0)
    const vlen = lens.readUInt32BE(4)
    if (klen === 0 || klen > MAX_KEY || vlen > MAX_VALUE) throw damaged(`record ${count + 1} has a key of ${klen} and a value of ${vlen} bytes (damaged)`)
    const kv = await r.take(klen + vlen, `record ${count + 1}`)
    const key = Buffer.from(kv.subarray(0, klen))
    const value = Buffer.from(kv.subarray(klen))
    if (last && Buffer.compare(last, key) >= 0) throw damaged(`record ${count + 1} is out of key order (damaged)`)
    last = key
    count++
    yield { key, value }
  }
  const n = Number((await r.take(8, 'the trailer')).readBigUInt64BE(0))
  const want = hash.digest()
  const got = await r.take(32, 'the checksum', false)
  if (n !== count) throw damaged(`its trailer counts ${n} records, it holds ${count} (damaged)`)
  if (!got.equals(want)) throw damaged('its sha256 does not match its content (damaged)')
  if (!await r.atEnd()) throw damaged('there are bytes after its end (two dumps concatenated?)')
}

/**
 * The first pass of a load: every record checked on its own and against the
 * others, the checksum at the end. Nothing is written.
 */
export interface DumpCheck { header: DumpHeader, records: number, usage: Usage, storedUsage: Usage, localVolumes: string[] }

export async function checkDump (input: AsyncIterable<Buffer | string>): Promise<DumpCheck> {
  let header!: DumpHeader
  let records = 0
  let maxIno = ROOT_INO
  let maxObject = -1n
  let inodes = 0
  const inodeSet = new Set<number>()
  const stored = new Map<number, number>()
  const meta = new Map<string, Buffer>()
  const tableRecords = new Map<string, Buffer>()
  for await (const { key, value } of readDump(input, h => { header = h })) {
    let facts: RecordFacts
    try {
      facts = checkRecord(key, value)
    } catch (err) {
      throw damaged((err as Error).message)
    }
    records++
    if (key[0] === 0x49) { inodes++; inodeSet.add(facts.ino!) } // 'I'
    if (key[0] === 0x4d) meta.set(key.subarray(1).toString('utf8'), value) // 'M'
    if (key[0] === 0x54) tableRecords.set(key.toString('latin1'), value) // 'T'
    if (facts.ino !== undefined && facts.ino > maxIno) maxIno = facts.ino
    if (facts.objectId !== undefined && facts.objectId > maxObject) maxObject = facts.objectId
    if (facts.blockBytes) stored.set(facts.blockBytes.ino, (stored.get(facts.blockBytes.ino) ?? 0) + facts.blockBytes.length)
  }
  for (const name of ['config', 'ino', 'object', 'usage']) if (!meta.has(name)) throw damaged(`it has no "${name}" record (not a whole filesystem)`)
  if (!inodeSet.has(ROOT_INO)) throw damaged('it has no root inode')
  const config = JSON.parse(meta.get('config')!.toString()) as { uuid: string }
  if (config.uuid !== header.uuid) throw damaged(`its header names filesystem ${header.uuid}, its config record ${config.uuid}`)
  const inoCounter = JSON.parse(meta.get('ino')!.toString()) as number
  const objectCounter = BigInt(JSON.parse(meta.get('object')!.toString()) as string)
  if (maxIno >= inoCounter) throw damaged(`inode ${maxIno} is at or past the inode counter ${inoCounter}: a new file would reuse a number`)
  if (maxObject >= objectCounter) throw damaged(`object ${maxObject} is at or past the object counter ${objectCounter}: a new block would reuse an id`)
  // The totals from the records themselves, as fsck counts them.
  let bytes = 0
  for (const [ino, n] of stored) if (inodeSet.has(ino)) bytes += n
  const usage: Usage = { files: inodes, bytes }
  const storedUsage = JSON.parse(meta.get('usage')!.toString()) as Usage
  // Volumes on devices of the source's host (a shared filesystem needs them served: see the README).
  const localVolumes: string[] = []
  for (const [k, v] of tableRecords) {
    if (!k.startsWith('Tvolume\0')) continue
    const row = JSON.parse(v.toString()) as { volume: number, place: { server: string, device: string } }
    if (row.place?.server === LOCAL_SERVER) localVolumes.push(`volume ${row.volume} on ${placeText(row.place)}`)
  }
  return { header, records, usage, storedUsage, localVolumes }
}

// ---- load targets ---------------------------------------------------------------

/** An empty target opened for writing, and how to take back a failed load. */
interface Target { kv: KvStore, finish (): Promise<void>, undo (): Promise<void> }

async function openTarget (name: FsName, passwordFile: string | undefined): Promise<Target> {
  if (name.kind === 'postgres') {
    const kv = await PgKv.open(name.url, { passwordFile, createIfMissing: true, requireEmpty: true })
    try {
      for await (const _ of kv.scan(Buffer.alloc(0), { limit: 1 })) {
        throw new UsageError(`${name.url} is not empty (it holds a bslfs filesystem, or part of one): load needs an empty database (\`CREATE DATABASE …\`); nothing was changed`)
      }
    } catch (err) {
      await kv.close().catch(() => {})
      throw err
    }
    return {
      kv,
      finish: async () => {},
      undo: async () => {
        // Take back every record written (the database was empty), a batch at a time.
        for (;;) {
          const ks: Buffer[] = []
          for await (const [k] of kv.scan(Buffer.alloc(0), { limit: 2000 })) ks.push(k)
          if (ks.length === 0) break
          await kv.txn(tx => { for (const k of ks) tx.del(k) })
        }
      }
    }
  }
  const p = statePaths(name.root)
  let entries: string[] | undefined
  try {
    entries = await fsp.readdir(p.root)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOTDIR') throw new UsageError(`${p.root} is not a directory`)
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  if (existsSync(p.marker)) throw new UsageError(`${p.root} already holds a bslfs filesystem: load needs an empty or new directory; nothing was changed`)
  if (entries && entries.length > 0) throw new UsageError(`${p.root} is not empty: load needs an empty or new directory; nothing was changed`)
  const made = entries === undefined
  await fsp.mkdir(p.root, { recursive: true })
  let kv: LevelKv
  try {
    kv = await LevelKv.open(p.directory, { createIfMissing: true })
  } catch (err) {
    if (made) await fsp.rm(p.root, { recursive: true, force: true })
    throw err
  }
  return {
    kv,
    // The marker last, as init writes it: a STATE without it is a load that did not finish.
    finish: async () => {
      const marker: StateMarker = { format: 'bslfs-state', version: STATE_FORMAT_VERSION, uuid: randomUUID(), created: new Date().toISOString() }
      await writeWhole(`${p.marker}.tmp-${process.pid}`, p.marker, JSON.stringify(marker, null, 2) + '\n')
      await syncDir(p.root)
    },
    undo: async () => {
      await kv.close().catch(() => {})
      if (made) await fsp.rm(p.root, { recursive: true, force: true })
      else for (const e of await fsp.readdir(p.root)) await fsp.rm(join(p.root, e), { recursive: true, force: true })
    }
  }
}

/** Records per load transaction. */
const LOAD_BATCH = 2000
const LOAD_BATCH_BYTES = 8 * 1024 * 1024

/** A source of the dump's bytes that can be read twice (a check, then the load). */
export type DumpSource = () => AsyncIterable<Buffer | string>

export interface LoadReport {
  target: string
  source: string
  uuid: string
  records: number
  sha256?: string
  usage: Usage
  /** Set when the dump's usage totals were not what its records add up to (they are corrected). */
  usageCorrected?: Usage
  localVolumes: string[]
  verified: { records: number, blocks: number, fsck: { clean: boolean, problems: Record<string, number>, first: string[] } }
}

/**
 * Load the dump `source` gives into the empty filesystem `targetArg`: check
 * it whole first (nothing written), then write it in batches with the
 * config record last (until it is there the target holds no filesystem), and
 * on any failure take everything back. Then verify: the records read back are
 * the ones written, and fsck (without reading every copy) is clean.
 */
export async function loadDump (targetArg: string, source: DumpSource, opts: { passwordFile?: string, onProgress?: OnProgress, checksums?: boolean } = {}): Promise<LoadReport> {
  const name = parseFsName(targetArg)
  checkPasswordFile(name, opts.passwordFile)
  if (name.kind === 'state' && (await findFsMounts(name)).length > 0) throw new UsageError(`${name.root} is mounted; load needs an empty target`)
  const check = await checkDump(source())
  log('dump checked: %d records of %s', check.records, check.header.uuid)
  const target = await openTarget(name, opts.passwordFile)
  const configKey = keys.meta('config')
  const usageKey = keys.meta('usage')
  const written = createHash('sha256')
  let config: Buffer | undefined
  let records = 0
  let backRecords = 0
  let blocks = 0
  try {
    let batch: Array<[Buffer, Buffer]> = []
    let batchBytes = 0
    const flush = async (): Promise<void> => {
      if (batch.length === 0) return
      const b = batch
      batch = []
      batchBytes = 0
      await target.kv.txn(tx => { for (const [k, v] of b) tx.put(k, v) })
      opts.onProgress?.({ done: records, total: check.records, bytes: 0 })
    }
    // The second read of the same bytes: checked again (the file might have changed in between).
    let header2: DumpHeader | undefined
    for await (const { key, value } of readDump(source(), h => { header2 = h })) {
      if (header2?.uuid !== check.header.uuid) throw damaged('it changed while it was being loaded')
      checkRecord(key, value)
      const v = key.equals(usageKey) ? encodeJSON(check.usage) : value
      written.update(u32(key.length)).update(key).update(u32(v.length)).update(v)
      records++
      if (key.equals(configKey)) { config = v; continue }
      batch.push([key, v])
      batchBytes += key.length + v.length
      if (batch.length >= LOAD_BATCH || batchBytes >= LOAD_BATCH_BYTES) await flush()
    }
    if (records !== check.records) throw damaged('it changed while it was being loaded')
    await flush()
    // The config makes it a filesystem: written last, durably.
    await target.kv.txn(tx => { tx.put(configKey, config!) }, { sync: true })
    // Verify: every record read back from the target as written (else it is taken back too).
    const back = createHash('sha256')
    for await (const [k, v] of target.kv.scan(Buffer.alloc(0))) {
      back.update(u32(k.length)).update(k).update(u32(v.length)).update(v)
      backRecords++
      if (k[0] === 0x42) blocks++ // 'B'
    }
    if (backRecords !== records || !back.digest().equals(written.digest())) {
      throw new UsageError(`the records read back from ${fsNameText(name)} (${backRecords}) are not the ${records} written: the target lost or changed some; the load was taken back`)
    }
    await target.finish()
  } catch (err) {
    log('load failed, taking it back: %s', (err as Error).message)
    await target.undo().catch(e => log('taking back the load failed: %s', (e as Error).message))
    await target.kv.close().catch(() => {})
    throw err
  }
  await target.kv.close()
  const state = await State.open(name, { passwordFile: opts.passwordFile })
  let fsck
  try {
    await state.volumes.space()
    fsck = await runFsck(state.dir, state.volumes, { repair: false, checksums: opts.checksums ?? false })
  } finally {
    await state.close()
  }
  const report: LoadReport = {
    target: fsNameText(name),
    source: check.header.source,
    uuid: check.header.uuid,
    records,
    usage: check.usage,
    localVolumes: check.localVolumes,
    verified: { records: backRecords, blocks, fsck: { clean: fsck.clean, problems: fsck.problems, first: fsck.first } }
  }
  if (check.usage.files !== check.storedUsage.files || check.usage.bytes !== check.storedUsage.bytes) report.usageCorrected = check.storedUsage
  return report
}

// ---- dump: offline, or through the mount ---------------------------------------------

/** Dump `read` (its own snapshot of a State) to `out`. */
export async function dumpState (state: State, mounted: boolean, out: Writable, onProgress?: OnProgress): Promise<DumpSummary> {
  const snap = state.dir.kv.snapshot()
  try {
    return await writeDump(snap, { source: state.location, engine: state.name.kind === 'postgres' ? 'postgres' : 'leveldb', mounted }, out, onProgress)
  } finally {
    await snap.close()
  }
}

/**
 * The control command `dump SOCKET` of a running mount: the mount owns the
 * LevelDB (and holds data not yet committed), so it takes the snapshot
 * itself, after committing what it holds, and streams the dump to the unix
 * socket the CLI listens on; the answer is the summary.
 */
export async function dumpToSocket (state: State, socketPath: string, onProgress?: OnProgress): Promise<DumpSummary> {
  const sock: Socket = connect({ path: socketPath })
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', resolve)
    sock.once('error', err => reject(new UsageError(`cannot reach the dump socket ${socketPath}: ${err.message}`)))
  })
  try {
    const summary = await dumpState(state, true, sock, onProgress)
    await new Promise<void>(resolve => sock.end(resolve))
    return summary
  } catch (err) {
    sock.destroy()
    throw err
  }
}

/**
 * `bslfs dump NAME`: to `out`, from the running mount of NAME on this host
 * (through its control socket) or, when none answers, from NAME opened here.
 */
export async function dumpCommand (nameArg: string, out: Writable, opts: { passwordFile?: string, onProgress?: OnProgress } = {}): Promise<DumpSummary> {
  const name = parseFsName(nameArg)
  checkPasswordFile(name, opts.passwordFile)
  const sockets = name.kind === 'state' ? [runtimePaths(name, '').socket] : (await findFsMounts(name)).map(controlSocketOf)
  for (const control of sockets) {
    if (!existsSync(control)) continue
    const summary = await dumpThroughMount(control, out, opts.onProgress)
    if (summary) return summary
  }
  const state = await State.open(name, { passwordFile: opts.passwordFile })
  try {
    return await dumpState(state, false, out, opts.onProgress)
  } finally {
    await state.close()
  }
}

/** Ask the mount behind `control` to stream its dump to a socket of ours; null when no mount answers. */
async function dumpThroughMount (control: string, out: Writable, onProgress?: OnProgress): Promise<DumpSummary | null> {
  const dir = await fsp.mkdtemp(join(tmpdir(), 'bslfs-dump-'))
  const path = join(dir, 'dump.sock')
  let received: Promise<void> | undefined
  const server = createServer(sock => {
    if (received) { sock.destroy(); return }
    received = new Promise<void>((resolve, reject) => {
      sock.on('error', reject)
      sock.on('end', resolve)
      sock.pipe(out, { end: false })
    })
  })
  try {
    await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(path, resolve) })
    await fsp.chmod(path, 0o600)
    const answer = await askControl(control, { cmd: 'dump', args: [path] }, 600_000, p => onProgress?.(p as never))
    if (!answer) return null
    if (!answer.ok) throw new UsageError(answer.error)
    if (!received) throw new UsageError('the mount answered without sending the dump')
    await received
    return answer.result as DumpSummary
  } finally {
    server.close()
    await fsp.rm(dir, { recursive: true, force: true })
  }
}

// ---- migrate --------------------------------------------------------------------

/**
 * `bslfs migrate FROM TO`: dump FROM (unmounted: this is a move, and a
 * mount of FROM writing after the copy would be lost, its reclaimer deleting
 * blocks TO still names) into a spool file, then load it into TO.
 */
export async function migrate (fromArg: string, toArg: string, opts: { passwordFile?: string, onProgress?: OnProgress } = {}): Promise<LoadReport & { dump: DumpSummary }> {
  const from = parseFsName(fromArg)
  const to = parseFsName(toArg)
  if (fsNameText(from) === fsNameText(to)) throw new UsageError('migrate needs two different filesystems: FROM and TO name the same one')
  const mounts = await findFsMounts(from)
  if (mounts.length > 0) {
    throw new UsageError(`${fsNameText(from)} is mounted on ${mounts.map(m => m.mountpoint).join(', ')}: unmount it first (migrate moves the filesystem; writes after the copy would be lost)`)
  }
  const dir = await fsp.mkdtemp(join(tmpdir(), 'bslfs-migrate-'))
  try {
    const file = join(dir, 'fs.dump')
    const out = createWriteStream(file, { mode: 0o600 })
    let dump: DumpSummary
    try {
      dump = await dumpCommand(fromArg, out, { passwordFile: from.kind === 'postgres' ? opts.passwordFile : undefined })
    } finally {
      await new Promise<void>(resolve => out.end(resolve))
    }
    const report = await loadDump(toArg, () => createReadStream(file), { passwordFile: to.kind === 'postgres' ? opts.passwordFile : undefined, onProgress: opts.onProgress })
    return { ...report, dump }
  } finally {
    await fsp.rm(dir, { recursive: true, force: true })
  }
}

/**
 * The dump to load from: a file (read twice), or stdin (a regular file is
 * read twice through /proc/self/fd/0; a pipe is copied to a private spool
 * file while it is checked). `cleanup` removes the spool.
 */
export async function dumpInput (file: string | undefined): Promise<{ source: DumpSource, cleanup (): Promise<void> }> {
  if (file !== undefined && file !== '-') {
    await fsp.access(file).catch(() => { throw new UsageError(`cannot read the dump ${file}: no such file`) })
    return { source: () => createReadStream(file), cleanup: async () => {} }
  }
  if (process.stdin.isTTY) throw new UsageError('load reads the dump from stdin: `bslfs load TARGET < fs.dump` (or give the file: `bslfs load TARGET fs.dump`)')
  if (fstatSync(0).isFile()) return { source: () => createReadStream('/proc/self/fd/0'), cleanup: async () => {} }
  const dir = await fsp.mkdtemp(join(tmpdir(), 'bslfs-load-'))
  const spool = join(dir, 'spool')
  let spooled = false
  const source: DumpSource = () => {
    if (spooled) return createReadStream(spool)
    spooled = true
    const out = createWriteStream(spool, { mode: 0o600 })
    return (async function * () {
      try {
        for await (const chunk of process.stdin as Readable) {
          await put(out, chunk as Buffer)
          yield chunk as Buffer
        }
      } finally {
        await new Promise<void>(resolve => out.end(resolve))
      }
    })()
  }
  return { source, cleanup: async () => { await fsp.rm(dir, { recursive: true, force: true }) } }
}

/** `bslfs dump` writes binary: refuse a terminal on stdout. */
export function checkDumpOutput (): void {
  if (process.stdout.isTTY) throw new UsageError('bslfs dump writes a binary dump to stdout: redirect it, `bslfs dump STATE > fs.dump`')
}

