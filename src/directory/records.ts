import { BSL, decodeBSLPrefix, encodeBSL } from '../bsl'
import { chunkCount } from '../checksum'
import { FsError } from '../errors'
import { Timespec } from '../posix/time'
import type { BlockRecord } from '../volumes/block'

/**
 * Key layout and record codecs of the directory. Every record read back is
 * validated: a corrupt record is an EIO with the key that holds it, never a
 * guess.
 *
 *   I ino                 → inode (JSON)
 *   E parent name         → child ino (u64) + mode (u32)
 *   B ino index           → block record: length u32, checksum u32, BSL [, 'C', chunk sums u32…]
 *   X ino name            → xattr value
 *   O ino                 → (empty) inode with no links left, still open
 *   G objectId            → BSL of a block nothing references any more (to reclaim)
 *   H objectId volume     → block record whose copy on that mirror volume is missing or bad (to heal)
 *   M name                → metadata (JSON): config, counters, usage
 *   T kind key            → tables (JSON): volumes, mirrors, servers, devices
 */

export type { Timespec }

export interface Inode {
  ino: number
  mode: number
  uid: number
  gid: number
  nlink: number
  size: number
  rdev: number
  atime: Timespec
  mtime: Timespec
  ctime: Timespec
  /** Directories: the one directory that holds them (for '..' and cycle checks). */
  parent?: number
  /** Symlinks: the target text. */
  target?: string
  /** Regular files: bytes held in blocks (st_blocks; less than size for sparse files). */
  stored?: number
  /**
   * The generation a file handle carries with the inode number (random, set at creation, as ext4's
   * i_generation): a handle of a removed file never opens another that got its number (restored
   * from an older copy of the directory, say; the counter itself never hands a number out twice).
   * Records written before it have none: generation 0.
   */
  gen?: number
}

export type { BlockRecord }

export const ROOT_INO = 1

const u64 = (n: number): Buffer => {
  const b = Buffer.allocUnsafe(8)
  b.writeBigUInt64BE(BigInt(n))
  return b
}

export const keys = {
  inode: (ino: number) => Buffer.concat([Buffer.from('I'), u64(ino)]),
  inodePrefix: Buffer.from('I'),
  entry: (parent: number, name: string) => Buffer.concat([Buffer.from('E'), u64(parent), Buffer.from(name, 'utf8')]),
  entries: (parent: number) => Buffer.concat([Buffer.from('E'), u64(parent)]),
  entryPrefix: Buffer.from('E'),
  block: (ino: number, index: number) => Buffer.concat([Buffer.from('B'), u64(ino), u64(index)]),
  blocks: (ino: number) => Buffer.concat([Buffer.from('B'), u64(ino)]),
  blockPrefix: Buffer.from('B'),
  xattr: (ino: number, name: string) => Buffer.concat([Buffer.from('X'), u64(ino), Buffer.from(name, 'utf8')]),
  xattrs: (ino: number) => Buffer.concat([Buffer.from('X'), u64(ino)]),
  xattrPrefix: Buffer.from('X'),
  orphan: (ino: number) => Buffer.concat([Buffer.from('O'), u64(ino)]),
  orphanPrefix: Buffer.from('O'),
  reclaim: (objectId: string) => Buffer.concat([Buffer.from('G'), Buffer.from(objectId, 'ascii')]),
  reclaimPrefix: Buffer.from('G'),
  heal: (objectId: string, volume: number) => {
    const v = Buffer.allocUnsafe(4)
    v.writeUInt32BE(volume)
    return Buffer.concat([Buffer.from('H'), Buffer.from(objectId, 'ascii'), v])
  },
  healPrefix: Buffer.from('H'),
  meta: (name: string) => Buffer.from('M' + name),
  table: (kind: string, key: string) => Buffer.from(`T${kind}\0${key}`),
  tablePrefix: (kind: string) => Buffer.from(`T${kind}\0`)
}

/** The u64 that follows a one-byte tag (and optionally 8 more bytes) in a key. */
export function keyNumber (key: Buffer, at = 1): number {
  return Number(key.readBigUInt64BE(at))
}

export function corrupt (what: string, detail: string): FsError {
  return new FsError('EIO', `corrupt ${what} in the directory: ${detail}; run \`bslfs fsck\``)
}

const isUint = (v: unknown, max = Number.MAX_SAFE_INTEGER): v is number =>
  typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= max
const isTime = (v: unknown): v is Timespec => {
  const t = v as Timespec
  return t !== null && typeof t === 'object' && Number.isInteger(t.sec) && isUint(t.nsec, 999_999_999)
}

export function encodeInode (inode: Inode): Buffer {
  return Buffer.from(JSON.stringify(inode))
}

export function decodeInode (ino: number, value: Buffer): Inode {
  let r: Inode
  try {
    r = JSON.parse(value.toString('utf8'))
  } catch {
    throw corrupt(`inode ${ino}`, 'not JSON')
  }
  const bad = (field: string) => corrupt(`inode ${ino}`, `bad ${field}`)
  if (r === null || typeof r !== 'object') throw corrupt(`inode ${ino}`, 'not an object')
  if (r.ino !== ino) throw bad('ino')
  if (!isUint(r.mode, 0o177777)) throw bad('mode')
  if (!isUint(r.uid, 0xffffffff) || !isUint(r.gid, 0xffffffff)) throw bad('owner')
  if (!isUint(r.nlink) || !isUint(r.size) || !isUint(r.rdev, 0xffffffff)) throw bad('counts')
  if (!isTime(r.atime) || !isTime(r.mtime) || !isTime(r.ctime)) throw bad('times')
  if (r.parent !== undefined && !isUint(r.parent)) throw bad('parent')
  if (r.target !== undefined && typeof r.target !== 'string') throw bad('target')
  if (r.stored !== undefined && !isUint(r.stored)) throw bad('stored')
  if (r.gen !== undefined && !isUint(r.gen, 0xffffffff)) throw bad('gen')
  return r
}

export function encodeEntry (ino: number, mode: number): Buffer {
  const b = Buffer.allocUnsafe(12)
  b.writeBigUInt64BE(BigInt(ino), 0)
  b.writeUInt32BE(mode, 8)
  return b
}

export function decodeEntry (key: Buffer, value: Buffer): { ino: number, mode: number } {
  if (value.length !== 12) throw corrupt('directory entry', `key ${key.toString('hex')} has ${value.length} bytes`)
  return { ino: Number(value.readBigUInt64BE(0)), mode: value.readUInt32BE(8) }
}

/** Marks the chunk sums after a block record's BSL (older records end with the BSL). */
const CHUNKS_TAG = 0x43 // 'C'

export function encodeBlock (rec: BlockRecord): Buffer {
  const head = Buffer.allocUnsafe(8)
  head.writeUInt32BE(rec.length, 0)
  head.writeUInt32BE(rec.checksum >>> 0, 4)
  const bsl = encodeBSL(rec.bsl)
  if (rec.chunks === undefined) return Buffer.concat([head, bsl])
  if (rec.chunks.length !== chunkCount(rec.length)) {
    throw new Error(`block record of ${rec.length} bytes needs ${chunkCount(rec.length)} chunk sums, got ${rec.chunks.length}`)
  }
  const sums = Buffer.allocUnsafe(1 + 4 * rec.chunks.length)
  sums[0] = CHUNKS_TAG
  rec.chunks.forEach((c, i) => sums.writeUInt32BE(c >>> 0, 1 + 4 * i))
  return Buffer.concat([head, bsl, sums])
}

export function decodeBlock (key: Buffer, value: Buffer): BlockRecord {
  const bad = (detail: string): FsError => corrupt('block record', `key ${key.toString('hex')}${detail}`)
  if (value.length < 9) throw bad(' is too short')
  const length = value.readUInt32BE(0)
  let decoded
  try {
    decoded = decodeBSLPrefix(value.subarray(8))
  } catch (err) {
    throw bad(`: ${(err as Error).message}`)
  }
  const rec: BlockRecord = { length, checksum: value.readUInt32BE(4), bsl: decoded.bsl }
  const rest = value.subarray(8 + decoded.bytes)
  if (rest.length === 0) return rec
  if (rest[0] !== CHUNKS_TAG) throw bad(`: ${rest.length} unexpected bytes after the BSL`)
  const want = chunkCount(length)
  if (rest.length !== 1 + 4 * want) {
    throw bad(`: ${(rest.length - 1) / 4} chunk sums for ${length} bytes, expected ${want}`)
  }
  rec.chunks = new Array<number>(want)
  for (let i = 0; i < want; i++) rec.chunks[i] = rest.readUInt32BE(1 + 4 * i)
  return rec
}

export function encodeJSON (v: unknown): Buffer {
  return Buffer.from(JSON.stringify(v))
}

export function decodeJSON<T> (what: string, value: Buffer, check: (v: any) => boolean): T {
  let v: unknown
  try {
    v = JSON.parse(value.toString('utf8'))
  } catch {
    throw corrupt(what, 'not JSON')
  }
  if (!check(v)) throw corrupt(what, 'unexpected shape')
  return v as T
}
