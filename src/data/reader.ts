import createDebug from 'debug'
import { objectIdOf } from '../bsl'
import { BlockRecord } from '../directory/records'
import { FsError } from '../errors'
import { CacheUse } from './block-cache'
import { CachedBlockStore, interrupted } from './block-store'
import { ReadPattern } from './read-ahead'

const log = createDebug('bslfs:data')

const EMPTY = Buffer.alloc(0)
/** Holes read as views of this. */
const ZEROS = Buffer.alloc(1 << 20)

/** The pieces of the byte range [pos, end) that fall in each block: block index, offset in it, length, and file offset. */
export function * spans (pos: number, end: number, bs: number): Generator<{ index: number, offset: number, length: number, at: number }> {
  for (let at = pos; at < end;) {
    const index = Math.floor(at / bs)
    const offset = at - index * bs
    const length = Math.min(end - at, bs - offset)
    yield { index, offset, length, at }
    at += length
  }
}

/** What a reader sees of an open file. */
export interface ReadableFile {
  /** The size now (a write or truncate may change it while a read waits). */
  readonly size: number
  /** Block `i`'s bytes when they are in memory (being written to, or being stored). */
  buffered (i: number): Buffer | undefined
  /** Block `i`'s record in the block map. */
  blockRecord (i: number): BlockRecord | undefined
}

/** Reads of one open file: bytes in memory first, then stored blocks through the cache, with read-ahead for a stream. */
export class FileReader {
  private readonly pattern: ReadPattern

  constructor (private readonly file: ReadableFile, private readonly blocks: CachedBlockStore, private readonly bs: number) {
    this.pattern = new ReadPattern(bs)
  }

  /** Read into `buf`: the pieces of readPieces, copied. */
  async read (buf: Buffer, len: number, pos: number): Promise<number> {
    const use = this.blocks.use()
    try {
      let n = 0
      for (const piece of await this.readPieces(len, pos, use)) n += piece.copy(buf, n)
      return n
    } finally {
      use.end()
    }
  }

  /**
   * Up to `len` bytes at `pos`, as pieces in order: views of stored blocks
   * and chunks (objects never change, so a view stays right), copies of bytes
   * still in memory (a later write would change those), and zeros for holes.
   * Fewer bytes only at the end of the file. `use` holds the views of cached
   * blocks: end it once they are dead (the reply made from them is out).
   * Once `signal` aborts (the kernel's INTERRUPT), rejects with EINTR at once.
   */
  async readPieces (len: number, pos: number, use: CacheUse, signal?: AbortSignal): Promise<Buffer[]> {
    if (signal?.aborted) throw interrupted()
    const file = this.file
    const size = file.size
    if (pos >= size) return []
    const end = Math.min(pos + len, size)
    const { streaming, ahead } = this.pattern.next(pos, end, size)
    for (const i of ahead) {
      const rec = file.blockRecord(i)
      if (rec && !file.buffered(i)) this.blocks.prefetch(rec)
    }
    const pieces: Buffer[] = []
    for (const { index, offset, length, at } of spans(pos, end, this.bs)) {
      // A truncate during this read dropped the blocks past the new size, dirty ones included:
      // reading on would find an older version of them in the block map.
      if (at >= file.size) break
      const piece = await this.readBlock(index, offset, length, streaming, use, signal)
      if (piece.length > 0) pieces.push(piece)
      for (let gap = length - piece.length; gap > 0; gap -= ZEROS.length) pieces.push(ZEROS.subarray(0, Math.min(gap, ZEROS.length)))
    }
    // Bytes past a size that shrank meanwhile are not the file's any more (a truncate zeroed them).
    let keep = Math.max(0, Math.min(end, file.size) - pos)
    for (let k = 0; k < pieces.length; k++) {
      if (keep < pieces[k].length) {
        pieces[k] = pieces[k].subarray(0, keep)
        pieces.length = k + 1
        break
      }
      keep -= pieces[k].length
    }
    return pieces
  }

  /**
   * Up to `length` bytes of block `i` from `offset`: as many as the block has
   * there (the rest is a hole or past its end). Bytes in memory come first,
   * then the stored record: whole for a streaming reader, only the chunks
   * needed for a random one.
   */
  private async readBlock (i: number, offset: number, length: number, streaming: boolean, use: CacheUse, signal?: AbortSignal): Promise<Buffer> {
    const mem = this.file.buffered(i)
    if (mem) return Buffer.from(mem.subarray(offset, offset + Math.max(0, Math.min(length, mem.length - offset))))
    const rec = this.file.blockRecord(i)
    if (!rec) return EMPTY
    const n = Math.max(0, Math.min(length, rec.length - offset))
    if (n === 0) return EMPTY
    if (!streaming && rec.chunks !== undefined) return await this.blocks.fetchRange(rec, offset, n, use, signal)
    try {
      return (await this.blocks.fetch(rec, use, signal)).subarray(offset, offset + n)
    } catch (err) {
      // No whole good copy (every copy has a bad chunk somewhere): the chunks this read needs may still be good.
      if (rec.chunks === undefined || (err as FsError).code !== 'EIO') throw err
      log('block %s unreadable whole, reading its chunks: %s', objectIdOf(rec.bsl), (err as Error).message)
      return await this.blocks.fetchRange(rec, offset, n, use, signal)
    }
  }
}
