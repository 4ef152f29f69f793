import createDebug from 'debug'
import { blockSums } from '../checksum'
import { BlockRecord } from '../directory/records'
import { CacheUse } from './block-cache'
import type { FileServices } from './services'

const log = createDebug('bslfs:data')

function noop (): void {}

/** What the writer of an open file needs of it. */
export interface WrittenFile {
  readonly ino: number
  /** The size now, with the writes so far. */
  readonly size: number
  /** Block `i`'s record in the block map. */
  blockRecord (i: number): BlockRecord | undefined
  /** Commit block `index`'s new record with the file's next group; resolves once it is in the directory and the block map. */
  commitBlock (index: number, record: BlockRecord): Promise<void>
}

interface Flush { done: Promise<void>, stored: Promise<unknown>, data: Buffer }

/**
 * The dirty blocks of one open file and their flushes. A dirty block is a
 * whole-block buffer; flushed, it is written as a new object, stored on every
 * copy, and only then committed to the directory (with the next group). Its
 * bytes count against the mount's dirty budget until their record is
 * committed, so a slow device throttles writers.
 */
export class FileWriter {
  private readonly dirty = new Map<number, Buffer>()
  /** Block writes in flight, and the bytes they carry (reads see them until they commit). */
  private readonly flushing = new Map<number, Flush>()
  /** The first error of a background write, reported by the next write, flush or fsync. */
  private error: unknown = null

  constructor (private readonly file: WrittenFile, private readonly services: FileServices) {}

  private get bs (): number { return this.services.dir.blockSize }

  /** Block `i`'s bytes when they are in memory (being written to, or being stored). */
  buffered (i: number): Buffer | undefined {
    return this.dirty.get(i) ?? this.flushing.get(i)?.data
  }

  /** Blocks with bytes in memory (dirty or on their way). */
  bufferedIndexes (): number[] {
    return [...this.dirty.keys(), ...this.flushing.keys()]
  }

  /** No block is dirty or on its way. */
  get idle (): boolean { return this.dirty.size === 0 && this.flushing.size === 0 }

  /** Some block write is on its way. */
  get flushingAny (): boolean { return this.flushing.size > 0 }

  throwPendingError (): void {
    if (this.error) {
      const err = this.error
      this.error = null
      throw err
    }
  }

  /** Whether `data` at `pos` can become block `pos / bs` as it is: exactly one whole block, not dirty already. */
  canKeep (data: Buffer, pos: number): boolean {
    const i = pos / this.bs
    return data.length === this.bs && Number.isInteger(i) && !this.dirty.has(i)
  }

  /** `data` (see canKeep) becomes dirty block `i` without a copy. */
  keep (i: number, data: Buffer): void {
    this.dirty.set(i, data)
    this.services.dirty.hold(this.bs)
  }

  /**
   * Put `bytes` into block `i` at `offset`. A new dirty buffer starts from the
   * block's current bytes (none when `bytes` covers it whole) and is published
   * only once it holds `bytes`: a read must never see it half made.
   */
  async put (i: number, offset: number, bytes: Buffer): Promise<void> {
    // A stored block copied from stays right until the copy is made.
    const use = this.services.blocks.use()
    try {
      await this.fill(i, offset, bytes, use)
    } finally {
      use.end()
    }
  }

  private async fill (i: number, offset: number, bytes: Buffer, use: CacheUse): Promise<void> {
    const whole = offset === 0 && bytes.length === this.bs
    let old: Buffer | undefined
    while (!whole && !this.dirty.has(i)) {
      old = this.buffered(i)
      const rec = this.file.blockRecord(i)
      if (old || !rec) break
      const fetched = await this.services.blocks.fetch(rec, use)
      // Unless a newer version came meanwhile, the stored bytes are the block's.
      if (!this.buffered(i) && this.file.blockRecord(i) === rec) { old = fetched; break }
    }
    let b = this.dirty.get(i) // another write may have made it while we read
    if (!b) {
      b = this.services.buffers.take()
      if (!whole) {
        const kept = old ? old.copy(b, 0, 0, Math.min(old.length, this.bs)) : 0
        if (kept < this.bs) b.fill(0, kept)
      }
      bytes.copy(b, offset)
      this.dirty.set(i, b)
      this.services.dirty.hold(this.bs)
      return
    }
    bytes.copy(b, offset)
  }

  /**
   * Bytes between the end of the file (`size`) and the end of its last block may hold
   * old data (a truncate keeps the object): zero them before the file grows.
   */
  async zeroTail (size: number): Promise<void> {
    const off = size % this.bs
    if (off === 0) return
    const i = Math.floor(size / this.bs)
    const src = this.buffered(i) ?? this.file.blockRecord(i)
    if (!src || src.length <= off) return
    await this.put(i, off, Buffer.alloc(this.bs - off))
  }

  /** Flush the blocks [pos, end) fills to their end: a sequential writer streams. */
  flushFilled (pos: number, end: number): void {
    for (let i = Math.floor(pos / this.bs); (i + 1) * this.bs <= end; i++) this.flush(i)
  }

  /** Flush every dirty block. */
  flushAll (): void {
    for (const i of [...this.dirty.keys()]) this.flush(i)
  }

  /** Drop the dirty blocks from `keep` on and zero the dirty tail past `size` (truncate). */
  truncate (size: number, keep: number): void {
    const bs = this.bs
    for (const i of [...this.dirty.keys()]) {
      const b = this.dirty.get(i)
      if (b && i >= keep) { this.dirty.delete(i); this.services.dirty.release(bs); this.services.buffers.give(b) }
    }
    const tail = this.dirty.get(Math.floor(size / bs))
    if (tail && size % bs) tail.fill(0, size % bs)
  }

  private flush (i: number): void {
    const full = this.dirty.get(i)
    if (!full) return
    const { services, file } = this
    this.dirty.delete(i)
    const prev = this.flushing.get(i)?.done
    let held = this.bs
    const entry: Flush = { done: Promise.resolve(), stored: Promise.resolve(), data: full }
    // Stored on the devices, not yet durable: close waits for this much.
    const stored = (async (): Promise<BlockRecord | null> => {
      if (prev) await prev.catch(() => undefined)
      const length = Math.min(this.bs, file.size - i * this.bs)
      if (length <= 0) return null // truncated away meanwhile
      if (length <= this.bs / 4 && entry.data === full) {
        // A small last block waits for its commit in a buffer of its own size: the whole-block
        // buffer goes back to the pool at once (a tar of small files holds one per file).
        entry.data = Buffer.from(full.subarray(0, length))
        services.buffers.give(full)
        services.dirty.release(this.bs - length)
        held = length
      }
      await services.writers.take()
      try {
        const bytes = entry.data.subarray(0, length)
        const fileId = await services.dir.allocateObjectId()
        const rec: BlockRecord = { bsl: services.store.newBlock(fileId, i), length, ...blockSums(bytes) }
        await services.store.write(rec, bytes, { durable: false })
        return rec
      } finally {
        services.writers.give()
      }
    })()
    // Durable and in the directory, with the next group.
    const done = stored.then(async rec => {
      if (rec) await file.commitBlock(i, rec)
    })
    stored.catch(noop)
    entry.done = done
    entry.stored = stored
    this.flushing.set(i, entry)
    let kept = false
    let written = false
    done.then(() => { written = true }, err => {
      log('block %d of inode %d not written: %s', i, file.ino, (err as Error).message)
      this.error ??= err
      // Keep the bytes: the next flush tries again. A newer version of the block wins, whether it
      // is still being written to (dirty) or already flushing (made from these bytes, it waited
      // for this write to fail): putting these back would undo the writes it carries.
      if (!this.dirty.has(i) && this.flushing.get(i) === entry && i * this.bs < file.size) {
        this.dirty.set(i, this.wholeBlock(entry.data))
        services.dirty.hold(this.bs - held)
        kept = true
      }
    }).finally(() => {
      if (this.flushing.get(i) === entry) this.flushing.delete(i)
      if (!kept) services.dirty.release(held)
      // Committed: every copy has the bytes and no read can still be copying from them (reads copy at once).
      if (written && entry.data === full) services.buffers.give(full)
    })
  }

  /** `data` as a whole-block buffer (a dirty block is always one): itself, or its bytes in a pool buffer. */
  private wholeBlock (data: Buffer): Buffer {
    if (data.length === this.bs) return data
    const b = this.services.buffers.take()
    data.copy(b)
    b.fill(0, data.length)
    return b
  }

  /** Wait for every block write in flight to be stored. */
  async stored (): Promise<void> {
    await Promise.allSettled([...this.flushing.values()].map(f => f.stored))
  }

  /** Wait for every block write in flight to be committed (asking the group to go at once). */
  async settle (): Promise<void> {
    while (this.flushing.size > 0) {
      await this.stored()
      await this.services.group.commitNow()
      await Promise.allSettled([...this.flushing.values()].map(f => f.done))
    }
  }
}
