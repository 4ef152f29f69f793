import createDebug from 'debug'
import { BSL, objectIdOf } from '../bsl'
import { BufferPool } from '../buffer-pool'
import { CHUNK_BYTES, blockSums } from '../checksum'
import { BlockChange, Directory, FileCommit, FilePatch } from '../directory/directory'
import { BlockRecord, Inode, Timespec } from '../directory/records'
import { FsError } from '../errors'
import { BlockCache, CacheEntry, CacheUse } from './block-cache'

const log = createDebug('bslfs:files')

/** What file data needs from the volumes layer. */
export interface BlockStore {
  newBlock (fileId: bigint, index: number): BSL
  /** Store a block on its copies; not `durable`: durable after the next sync. */
  write (block: BlockRecord, data: Uint8Array, opts?: { durable?: boolean }): Promise<void>
  /** Make every block written without `durable` so far durable. */
  sync (): Promise<void>
  /** A block's verified bytes; into `into` when the device can (the answer is then a view of it). */
  read (block: BlockRecord, into?: Buffer): Promise<Buffer>
  /**
   * The verified bytes of the chunks covering [offset, offset + length) of a
   * block with chunk sums: `data` starts at `start` (offset rounded down to a
   * chunk) and ends at a chunk boundary or the block's end. Into `into` as for `read`.
   */
  readRange (block: BlockRecord, offset: number, length: number, into?: Buffer): Promise<{ start: number, data: Buffer }>
}

/** How many blocks a sequential reader gets fetched ahead (4 MiB with the default block size). */
const READ_AHEAD_BLOCKS = 8

/**
 * A read starting this close to where the last one ended continues a stream
 * (the kernel's read-ahead may send a couple of requests out of order): it gets
 * whole blocks and read-ahead. Any other read fetches only the chunks it needs.
 */
const STREAM_WINDOW = 256 * 1024

function noop (): void {}

/**
 * `into` when `data` is a view of it (the device read there), for the cache to
 * reuse later; else undefined (another copy answered, into a buffer of its own,
 * and the copy asked first may still be writing `into`: it is dropped).
 */
function backingOf (data: Buffer, into: Buffer): Buffer | undefined {
  return data.buffer === into.buffer && data.byteOffset === into.byteOffset ? into : undefined
}

const EMPTY = Buffer.alloc(0)
/** Holes read as views of this. */
const ZEROS = Buffer.alloc(1 << 20)

/** ext4's limit for 4 KiB blocks: 16 TiB. */
export const MAX_FILE_SIZE = 16 * 1024 ** 4

/** The pieces of the byte range [pos, end) that fall in each block: block index, offset in it, length, and file offset. */
function * spans (pos: number, end: number, bs: number): Generator<{ index: number, offset: number, length: number, at: number }> {
  for (let at = pos; at < end;) {
    const index = Math.floor(at / bs)
    const offset = at - index * bs
    const length = Math.min(end - at, bs - offset)
    yield { index, offset, length, at }
    at += length
  }
}


/** A counting semaphore: bounds the block writes in flight. */
class Semaphore {
  private waiting: Array<() => void> = []
  constructor (private free: number) {}
  async take (): Promise<void> {
    if (this.free > 0) { this.free--; return }
    await new Promise<void>(resolve => this.waiting.push(resolve))
  }

  give (): void {
    const next = this.waiting.shift()
    if (next) next()
    else this.free++
  }
}

/** How long the first record of a group waits for others (ms): ext4 waits 5 s, a sequential writer fills a group in a few ms. */
const GROUP_DELAY_MS = 5

interface Queued { file: OpenFile, change: BlockChange | null, resolve: () => void, reject: (err: unknown) => void }

/**
 * Records of blocks whose bytes are stored but not yet durable, committed
 * many at a time: one sync of every device written, then one directory
 * batch for every file. A record never reaches the directory before its bytes
 * are durable (DESIGN: blocks are written before they are referenced), and a
 * closed file costs neither a flush of the disk nor a batch of its own.
 */
class GroupCommit {
  private queue: Queued[] = []
  private timer: NodeJS.Timeout | undefined
  private running: Promise<void> | undefined

  constructor (private readonly shared: FileData) {}

  /** Commit `change` (null: only the file's attributes) with the next group; resolves once it is in the directory. */
  add (file: OpenFile, change: BlockChange | null): Promise<void> {
    file.queued++
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ file, change, resolve, reject })
      this.schedule(GROUP_DELAY_MS)
    }).finally(() => { file.queued-- })
  }

  /** Commit everything queued without waiting for more (fsync, truncate, unmount). */
  async now (): Promise<void> {
    while (this.running) await this.running
    clearTimeout(this.timer)
    this.timer = undefined
    if (this.queue.length > 0) await this.run()
  }

  private schedule (ms: number): void {
    if (this.timer || this.running) return
    this.timer = setTimeout(() => {
      this.timer = undefined
      void this.run()
    }, ms)
  }

  private run (): Promise<void> {
    const batch = this.queue.splice(0)
    const work = this.commit(batch)
    this.running = work
    return work.finally(() => {
      this.running = undefined
      // What came while this group ran goes with the next one, at once.
      if (this.queue.length > 0) this.schedule(0)
    })
  }

  private async commit (batch: Queued[]): Promise<void> {
    if (batch.length === 0) return
    const byFile = new Map<OpenFile, BlockChange[]>()
    for (const q of batch) {
      let changes = byFile.get(q.file)
      if (!changes) byFile.set(q.file, changes = [])
      if (q.change) changes.push(q.change)
    }
    try {
      await this.shared.store.sync()
    } catch (err) {
      for (const q of batch) q.reject(err)
      return
    }
    const files = [...byFile.keys()]
    const items = files.map(f => f.commitItem(byFile.get(f) as BlockChange[]))
    const failed = new Map<OpenFile, unknown>()
    try {
      const inodes = await this.shared.dir.commitFiles(items.map(it => it.commit))
      files.forEach((f, k) => f.committed(items[k], inodes[k]))
    } catch (err) {
      // One file's failure (a bad record of its own) must not become every other file's: each
      // then goes in a batch of its own, and only the ones that fail again report it.
      if (files.length === 1) failed.set(files[0], err)
      else {
        for (const [k, f] of files.entries()) {
          try {
            f.committed(items[k], (await this.shared.dir.commitFiles([items[k].commit]))[0])
          } catch (own) {
            failed.set(f, own)
          }
        }
      }
    }
    for (const q of batch) {
      if (failed.has(q.file)) q.reject(failed.get(q.file))
      else q.resolve()
    }
    // Once the writes waiting on this group have wound up (their promises run first).
    setImmediate(() => { for (const f of byFile.keys()) this.shared.settled(f) })
  }
}

/** Shared by every open file of a mount: the memory budgets. */
export class FileData {
  readonly cache: BlockCache
  readonly writers: Semaphore
  /** Bytes of blocks written to and not yet committed (dirty, or on their way). */
  dirtyBytes = 0
  private roomWaiters: Array<() => void> = []

  /** `n` more bytes held in block buffers. */
  hold (n: number): void {
    this.dirtyBytes += n
  }

  /** `n` bytes let go: writers waiting for room go on once there is. */
  release (n: number): void {
    this.dirtyBytes -= n
    if (this.dirtyBytes <= this.dirtyLimit && this.roomWaiters.length > 0) for (const w of this.roomWaiters.splice(0)) w()
  }

  /** Resolves once the bytes held are within the budget. */
  async room (): Promise<void> {
    while (this.dirtyBytes > this.dirtyLimit) await new Promise<void>(resolve => this.roomWaiters.push(resolve))
  }

  constructor (readonly dir: Directory, readonly store: BlockStore, opts: { cacheBytes?: number, dirtyBytes?: number, parallelWrites?: number } = {}) {
    // 24 MiB of cache and 8 spare write buffers: with the dirty budget and the read-ahead, the mount stays under 250 MiB RSS (native-notes/memory.md).
    this.cache = new BlockCache(opts.cacheBytes ?? 24 * 1024 * 1024, dir.blockSize, READ_AHEAD_BLOCKS)
    this.writers = new Semaphore(opts.parallelWrites ?? 8)
    this.dirtyLimit = opts.dirtyBytes ?? 32 * 1024 * 1024
    // 4 KiB before each buffer: the FUSE session reads a write request there (see FuseSession.take).
    this.buffers = new BufferPool(dir.blockSize, 8, 4096)
    this.group = new GroupCommit(this)
  }

  /** Block records (and attributes) on their way to the directory. */
  readonly group: GroupCommit

  /** Called when a file's changes reached the directory (the open files let go of a closed one then). */
  settled: (file: OpenFile) => void = () => {}

  readonly dirtyLimit: number

  /** Buffers for dirty blocks, reused once their write is stored. */
  readonly buffers: BufferPool

  /** Reads of blocks (by object id) and chunks (by `id:chunk`) in flight: a reader and the read-ahead share one device read. */
  private readonly fetching = new Map<string, Promise<CacheEntry>>()

  /**
   * A block's bytes, verified (the device checks the checksum), through the
   * cache. `use` holds them: views of them stay right until it ends.
   */
  fetch (rec: BlockRecord, use: CacheUse): Promise<Buffer> {
    const hit = this.cache.get(objectIdOf(rec.bsl))
    // Held at once: a cached block may be evicted, and its buffer reused, before a continuation runs.
    if (hit) return Promise.resolve(use.hold(hit))
    // A new entry is pinned until the loop's next turn: this hold comes before.
    return this.fetched(rec).then(e => use.hold(e))
  }

  /** The cache entry of a block, from the device (one read shared by everyone who asks meanwhile). */
  private fetched (rec: BlockRecord): Promise<CacheEntry> {
    const id = objectIdOf(rec.bsl)
    let f = this.fetching.get(id)
    if (!f) {
      const into = this.cache.buffer()
      f = this.store.read(rec, into).then(data => {
        if (data.length !== rec.length) throw new FsError('EIO', `block ${id} has ${data.length} bytes, the directory says ${rec.length}`)
        return this.cache.set(id, data, backingOf(data, into))
      }).finally(() => this.fetching.delete(id))
      this.fetching.set(id, f)
    }
    return f
  }

  /**
   * Bytes [offset, offset + length) of a block with chunk sums, fetching only
   * the chunks that cover them (verified below, in the volumes layer), through
   * the cache. A whole block cached or on its way serves the bytes instead.
   */
  async fetchRange (rec: BlockRecord, offset: number, length: number, use: CacheUse): Promise<Buffer> {
    const id = objectIdOf(rec.bsl)
    const hit = this.cache.get(id)
    // A failed whole fetch (a bad chunk on every copy, say) is no answer here: the chunks needed may be good.
    const whole = hit ? use.hold(hit) : await this.fetching.get(id)?.then(e => use.hold(e), () => undefined)
    if (whole) return whole.subarray(offset, offset + length)
    const first = Math.floor(offset / CHUNK_BYTES)
    const last = Math.floor((offset + length - 1) / CHUNK_BYTES)
    const chunks: Array<Promise<Buffer>> = []
    const missing: number[] = []
    for (let k = first; k <= last; k++) {
      // Held as whole blocks are: a chunk's buffer is reused once it is evicted and nothing holds it.
      const hit = this.cache.get(`${id}:${k}`)
      const f = hit ? Promise.resolve(use.hold(hit)) : this.fetching.get(`${id}:${k}`)?.then(e => use.hold(e))
      if (!f) missing.push(k)
      chunks.push(f ?? Promise.resolve(EMPTY)) // a placeholder, set below
    }
    if (missing.length > 0) {
      // One device read for the chunks nobody has or is fetching (and any between them).
      const lo = missing[0] * CHUNK_BYTES
      const hi = Math.min(rec.length, (missing[missing.length - 1] + 1) * CHUNK_BYTES)
      // A lone chunk (a random read) is read into a buffer of the cache's, which it reuses after eviction.
      const into = missing.length === 1 ? this.cache.chunkBuffer() : undefined
      const span = this.store.readRange(rec, lo, hi - lo, into).then(({ start, data }) => {
        if (start !== lo || data.length !== hi - lo) throw new FsError('EIO', `block ${id}: asked for bytes ${lo}..${hi}, got ${data.length} at ${start}`)
        return data
      })
      for (const k of missing) {
        const key = `${id}:${k}`
        const f = span.then(data => {
          if (into) return this.cache.set(key, data, backingOf(data, into))
          // A view would keep the whole span alive while the cache counts only the chunk.
          return this.cache.set(key, Buffer.from(data.subarray(k * CHUNK_BYTES - lo, (k + 1) * CHUNK_BYTES - lo)))
        }).finally(() => this.fetching.delete(key))
        this.fetching.set(key, f)
        chunks[k - first] = f.then(e => use.hold(e))
      }
    }
    const got = await Promise.all(chunks)
    const from = offset - first * CHUNK_BYTES
    if (got.length === 1) return got[0].subarray(from, from + length)
    return Buffer.concat(got).subarray(from, from + length)
  }

  /** Start reading a block the reader will want soon; a failure here is left for the real read to report. */
  prefetch (rec: BlockRecord): void {
    if (this.cache.get(objectIdOf(rec.bsl))) return
    this.fetched(rec).catch(err => log('read-ahead of %s failed: %s', objectIdOf(rec.bsl), (err as Error).message))
  }
}

/**
 * The data of one inode while it is open: the block map, whole-block write
 * buffers and the attributes changed by writes. Every handle on the inode
 * shares it, so two descriptors see each other's writes at once.
 *
 * A dirty block is written as a new object, flushed on every copy, and only
 * then committed to the directory with the file's size and times.
 */
export class OpenFile {
  private readonly dirty = new Map<number, Buffer>()
  /** Block writes in flight, and the bytes they carry (reads see them until they commit). */
  private readonly flushing = new Map<number, { done: Promise<void>, stored: Promise<unknown>, data: Buffer }>()
  private pending: FilePatch = {}
  private pendingVersion = 0
  private committedVersion = 0
  /** The first error of a background write, reported by the next write, flush or fsync. */
  private error: unknown = null
  /** The block the last read ended in: a read that starts there or just after is sequential. */
  private lastReadBlock = -2
  /** Where the last read ended: a read near it continues a stream (STREAM_WINDOW). */
  private lastReadEnd = 0
  /** The end of the last write or truncate queued (see serially). */
  private queue: Promise<void> = Promise.resolve()
  /**
   * Changes of this file waiting in a group commit, or in one under way. Until they are in,
   * the file is not clean: the open files keep it, so its inode outlives an unlink meanwhile
   * (the group would fail on a freed inode, and with it every other file in the batch).
   */
  queued = 0

  constructor (readonly ino: number, private readonly shared: FileData, private blocks: Map<number, BlockRecord>, private committedSize: number) {}

  private get bs (): number { return this.shared.dir.blockSize }

  get size (): number { return this.pending.size ?? this.committedSize }

  /** The inode as the kernel should see it: committed attributes with this file's newer ones on top. */
  view (inode: Inode): Inode {
    return this.pendingVersion === this.committedVersion ? inode : { ...inode, ...this.pending }
  }

  private change (attrs: FilePatch): void {
    this.pending = { ...this.pending, ...attrs }
    this.pendingVersion++
  }

  markAccessed (atime: Timespec): void {
    this.change({ atime })
  }

  private throwPendingError (): void {
    if (this.error) {
      const err = this.error
      this.error = null
      throw err
    }
  }

  /** Block `i`'s bytes when they are in memory (being written to, or being stored). */
  private buffered (i: number): Buffer | undefined {
    return this.dirty.get(i) ?? this.flushing.get(i)?.data
  }

  /** Read into `buf`: the pieces of readPieces, copied. */
  async read (buf: Buffer, len: number, pos: number): Promise<number> {
    const use = this.shared.cache.use()
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
   */
  async readPieces (len: number, pos: number, use: CacheUse, _signal?: AbortSignal): Promise<Buffer[]> {
    const size = this.size
    if (pos >= size) return []
    const end = Math.min(pos + len, size)
    const streaming = this.readAhead(pos, end)
    const pieces: Buffer[] = []
    for (const { index, offset, length, at } of spans(pos, end, this.bs)) {
      // A truncate during this read dropped the blocks past the new size, dirty ones included:
      // reading on would find an older version of them in the block map.
      if (at >= this.size) break
      const piece = await this.readBlock(index, offset, length, streaming, use)
      if (piece.length > 0) pieces.push(piece)
      for (let gap = length - piece.length; gap > 0; gap -= ZEROS.length) pieces.push(ZEROS.subarray(0, Math.min(gap, ZEROS.length)))
    }
    // Bytes past a size that shrank meanwhile are not the file's any more (a truncate zeroed them).
    let keep = Math.max(0, Math.min(end, this.size) - pos)
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
  private async readBlock (i: number, offset: number, length: number, streaming: boolean, use: CacheUse): Promise<Buffer> {
    const mem = this.buffered(i)
    if (mem) return Buffer.from(mem.subarray(offset, offset + Math.max(0, Math.min(length, mem.length - offset))))
    const rec = this.blocks.get(i)
    if (!rec) return EMPTY
    const n = Math.max(0, Math.min(length, rec.length - offset))
    if (n === 0) return EMPTY
    if (!streaming && rec.chunks !== undefined) return await this.shared.fetchRange(rec, offset, n, use)
    try {
      return (await this.shared.fetch(rec, use)).subarray(offset, offset + n)
    } catch (err) {
      // No whole good copy (every copy has a bad chunk somewhere): the chunks this read needs may still be good.
      if (rec.chunks === undefined || (err as FsError).code !== 'EIO') throw err
      log('block %s unreadable whole, reading its chunks: %s', objectIdOf(rec.bsl), (err as Error).message)
      return await this.shared.fetchRange(rec, offset, n, use)
    }
  }

  /**
   * A sequential reader gets the next blocks fetched ahead of its requests, so
   * device latency overlaps the kernel's reads instead of adding to each.
   * Says whether [pos, end) continues a stream.
   */
  private readAhead (pos: number, end: number): boolean {
    const first = Math.floor(pos / this.bs)
    const last = Math.floor((end - 1) / this.bs)
    const streaming = Math.abs(pos - this.lastReadEnd) <= STREAM_WINDOW
    const sequential = streaming && (first === this.lastReadBlock || first === this.lastReadBlock + 1)
    const before = this.lastReadBlock
    this.lastReadBlock = last
    this.lastReadEnd = end
    if (!sequential || last === before) return streaming // a new block is entered: look further ahead once per block
    const lastBlock = Math.floor((this.size - 1) / this.bs)
    for (let i = last + 1; i <= Math.min(last + READ_AHEAD_BLOCKS, lastBlock); i++) {
      const rec = this.blocks.get(i)
      if (rec && !this.buffered(i)) this.shared.prefetch(rec)
    }
    return streaming
  }

  /**
   * Put `bytes` into block `i` at `offset`. A new dirty buffer starts from the
   * block's current bytes (none when `bytes` covers it whole) and is published
   * only once it holds `bytes`: a read must never see it half made.
   */
  private async writeBlock (i: number, offset: number, bytes: Buffer): Promise<void> {
    // A stored block copied from stays right until the copy is made.
    const use = this.shared.cache.use()
    try {
      await this.fillBlock(i, offset, bytes, use)
    } finally {
      use.end()
    }
  }

  private async fillBlock (i: number, offset: number, bytes: Buffer, use: CacheUse): Promise<void> {
    const whole = offset === 0 && bytes.length === this.bs
    let old: Buffer | undefined
    while (!whole && !this.dirty.has(i)) {
      old = this.buffered(i)
      const rec = this.blocks.get(i)
      if (old || !rec) break
      const fetched = await this.shared.fetch(rec, use)
      // Unless a newer version came meanwhile, the stored bytes are the block's.
      if (!this.buffered(i) && this.blocks.get(i) === rec) { old = fetched; break }
    }
    let b = this.dirty.get(i) // another write may have made it while we read
    if (!b) {
      b = this.shared.buffers.take()
      if (!whole) {
        const kept = old ? old.copy(b, 0, 0, Math.min(old.length, this.bs)) : 0
        if (kept < this.bs) b.fill(0, kept)
      }
      bytes.copy(b, offset)
      this.dirty.set(i, b)
      this.shared.hold(this.bs)
      return
    }
    bytes.copy(b, offset)
  }

  /**
   * Bytes between the end of the file and the end of its last block may hold
   * old data (a truncate keeps the object): zero them before the file grows.
   */
  private async zeroTail (): Promise<void> {
    const size = this.size
    const off = size % this.bs
    if (off === 0) return
    const i = Math.floor(size / this.bs)
    const src = this.buffered(i) ?? this.blocks.get(i)
    if (!src || src.length <= off) return
    await this.writeBlock(i, off, Buffer.alloc(this.bs - off))
  }

  /**
   * Run writes and truncates of this file one at a time, in arrival order: each
   * decides from the size the one before left (a write past the end zeroes the
   * old tail first). The kernel sends one file's writes together when it splits
   * a direct write into several requests.
   */
  private serially<T> (fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn)
    this.queue = run.then(noop, noop)
    return run
  }

  /**
   * `adopt`, when given, lets the file keep `data` itself (a buffer of its
   * pool, whole): a write of exactly one whole block becomes the block
   * without a copy.
   */
  write (data: Buffer, pos: number, now: Timespec, adopt?: () => void): Promise<number> {
    return this.serially(() => this.writeNow(data, pos, now, adopt))
  }

  private async writeNow (data: Buffer, pos: number, now: Timespec, adopt?: () => void): Promise<number> {
    this.throwPendingError()
    const end = pos + data.length
    if (end > MAX_FILE_SIZE) throw new FsError('EFBIG', `write past ${MAX_FILE_SIZE} bytes`)
    if (pos > this.size) await this.zeroTail()
    const bs = this.bs
    const i = pos / bs
    if (adopt && data.length === bs && Number.isInteger(i) && !this.dirty.has(i)) {
      adopt()
      this.dirty.set(i, data)
      this.shared.hold(bs)
    } else {
      for (const { index, offset, length, at } of spans(pos, end, bs)) {
        await this.writeBlock(index, offset, data.subarray(at - pos, at - pos + length))
      }
    }
    this.change({ size: Math.max(this.size, end), mtime: now, ctime: now })
    // Blocks the write has filled to their end are flushed now: a sequential writer streams.
    for (let i = Math.floor(pos / bs); (i + 1) * bs <= end; i++) this.flushBlock(i)
    if (this.shared.dirtyBytes > this.shared.dirtyLimit) {
      // Over the budget: this file's partly written blocks go too, and the writer waits for room.
      for (const i of [...this.dirty.keys()]) this.flushBlock(i)
      await this.shared.room()
    }
    return data.length
  }

  private flushBlock (i: number): void {
    const full = this.dirty.get(i)
    if (!full) return
    // The bytes count against the memory budget until their record is committed, so a slow device throttles writers.
    this.dirty.delete(i)
    const prev = this.flushing.get(i)?.done
    let held = this.bs
    const entry: { done: Promise<void>, stored: Promise<unknown>, data: Buffer } = { done: Promise.resolve(), stored: Promise.resolve(), data: full }
    // Stored on the devices, not yet durable: close waits for this much.
    const stored = (async (): Promise<BlockRecord | null> => {
      if (prev) await prev.catch(() => undefined)
      const length = Math.min(this.bs, this.size - i * this.bs)
      if (length <= 0) return null // truncated away meanwhile
      if (length <= this.bs / 4 && entry.data === full) {
        // A small last block waits for its commit in a buffer of its own size: the whole-block
        // buffer goes back to the pool at once (a tar of small files holds one per file).
        entry.data = Buffer.from(full.subarray(0, length))
        this.shared.buffers.give(full)
        this.shared.release(this.bs - length)
        held = length
      }
      await this.shared.writers.take()
      try {
        const bytes = entry.data.subarray(0, length)
        const fileId = await this.shared.dir.allocateObjectId()
        const rec: BlockRecord = { bsl: this.shared.store.newBlock(fileId, i), length, ...blockSums(bytes) }
        await this.shared.store.write(rec, bytes, { durable: false })
        return rec
      } finally {
        this.shared.writers.give()
      }
    })()
    // Durable and in the directory, with the next group.
    const done = stored.then(async rec => {
      if (!rec) return
      await this.shared.group.add(this, { index: i, record: rec })
      this.blocks.set(i, rec)
    })
    stored.catch(noop)
    entry.done = done
    entry.stored = stored
    this.flushing.set(i, entry)
    let kept = false
    let written = false
    done.then(() => { written = true }, err => {
      log('block %d of inode %d not written: %s', i, this.ino, (err as Error).message)
      this.error ??= err
      // Keep the bytes: the next flush tries again. A newer version of the block wins, whether it
      // is still being written to (dirty) or already flushing (made from these bytes, it waited
      // for this write to fail): putting these back would undo the writes it carries.
      if (!this.dirty.has(i) && this.flushing.get(i) === entry && i * this.bs < this.size) {
        this.dirty.set(i, this.wholeBlock(entry.data))
        this.shared.hold(this.bs - held)
        kept = true
      }
    }).finally(() => {
      if (this.flushing.get(i) === entry) this.flushing.delete(i)
      if (!kept) this.shared.release(held)
      // Committed: every copy has the bytes and no read can still be copying from them (reads copy at once).
      if (written && entry.data === full) this.shared.buffers.give(full)
    })
  }

  /** `data` as a whole-block buffer (a dirty block is always one): itself, or its bytes in a pool buffer. */
  private wholeBlock (data: Buffer): Buffer {
    if (data.length === this.bs) return data
    const b = this.shared.buffers.take()
    data.copy(b)
    b.fill(0, data.length)
    return b
  }

  /** What this file commits with `changes`: its attributes as they are now, and their version. */
  commitItem (changes: BlockChange[], dropFrom?: number): { commit: FileCommit, version: number } {
    return { commit: { ino: this.ino, changes, patch: { ...this.pending }, dropFrom }, version: this.pendingVersion }
  }

  /** `item` is in the directory, which now holds `inode`. */
  committed (item: { version: number }, inode: Inode): void {
    this.committedSize = inode.size
    if (item.version >= this.committedVersion) this.committedVersion = item.version
    if (this.committedVersion === this.pendingVersion) this.pending = {}
  }

  /** Commit block changes with the attributes pending now, in a batch of their own. */
  private async commit (changes: BlockChange[], dropFrom?: number, sync = false): Promise<void> {
    const item = this.commitItem(changes, dropFrom)
    this.committed(item, await this.shared.dir.commitBlocks(this.ino, changes, item.commit.patch, { dropFrom, sync }))
  }

  /** Nothing of this file waits to be written or committed. */
  get clean (): boolean {
    return this.dirty.size === 0 && this.flushing.size === 0 && this.queued === 0 && this.pendingVersion === this.committedVersion
  }

  /** Wait for every block write in flight to be stored. */
  private async stored (): Promise<void> {
    await Promise.allSettled([...this.flushing.values()].map(f => f.stored))
  }

  /** Wait for every block write in flight to be committed (asking the group to go at once). */
  private async settle (): Promise<void> {
    while (this.flushing.size > 0) {
      await this.stored()
      await this.shared.group.now()
      await Promise.allSettled([...this.flushing.values()].map(f => f.done))
    }
  }

  /**
   * close(2): every dirty block is stored on its devices (a write error is
   * reported here), and the records and attributes go to the directory with
   * the next group commit, a few milliseconds later; until then the open files
   * keep this file, so every open sees its data.
   */
  async flush (): Promise<void> {
    for (const i of [...this.dirty.keys()]) this.flushBlock(i)
    await this.stored()
    this.throwPendingError()
    if (this.flushing.size === 0 && this.pendingVersion !== this.committedVersion) {
      this.shared.group.add(this, null).catch(err => log('attributes of inode %d not committed: %s', this.ino, (err as Error).message))
    }
  }

  /** Write and commit everything now (unmount): resolves once this file is clean, or fails with why not. */
  async flushNow (): Promise<void> {
    await this.flush()
    await this.settle()
    this.throwPendingError()
    if (this.pendingVersion !== this.committedVersion) await this.commit([])
  }

  /** flush, then make it all durable: after this the bytes survive a crash. */
  async fsync (): Promise<void> {
    await this.flushNow()
    await this.shared.dir.sync()
  }

  /** Attributes set through the kernel (chmod, chown, utimens) while the file is open: committed with its next commit. */
  setAttrs (patch: FilePatch): void {
    this.change(patch)
  }

  truncate (size: number, now: Timespec): Promise<void> {
    return this.serially(() => this.truncateNow(size, now))
  }

  private async truncateNow (size: number, now: Timespec): Promise<void> {
    if (size > MAX_FILE_SIZE) throw new FsError('EFBIG', `size over ${MAX_FILE_SIZE} bytes`)
    await this.settle()
    this.throwPendingError()
    const bs = this.bs
    if (size >= this.size) {
      await this.zeroTail()
      this.change({ size, mtime: now, ctime: now })
      await this.commit([])
      return
    }
    const keep = Math.ceil(size / bs)
    for (const i of [...this.dirty.keys()]) {
      const b = this.dirty.get(i)
      if (b && i >= keep) { this.dirty.delete(i); this.shared.release(bs); this.shared.buffers.give(b) }
    }
    const tail = this.dirty.get(Math.floor(size / bs))
    if (tail && size % bs) tail.fill(0, size % bs)
    this.change({ size, mtime: now, ctime: now })
    await this.commit([], keep)
    for (const i of [...this.blocks.keys()]) if (i >= keep) this.blocks.delete(i)
  }

  /** Blocks whose BSL changed in the directory but not their object (adopt): use the new BSLs. */
  adopt (changes: Map<number, BlockRecord>): void {
    for (const [i, rec] of changes) {
      const mine = this.blocks.get(i)
      if (mine && objectIdOf(mine.bsl) === objectIdOf(rec.bsl)) this.blocks.set(i, rec)
    }
  }

}

interface OpenEntry { refs: number, file: Promise<OpenFile> }

/**
 * The open files of a mount, by inode; the first open loads the block map, the
 * last close flushes. References are counted when taken, not once the file has
 * loaded: an open racing the release of the same inode (the kernel does not wait
 * for a release) must find the file the release is about to keep, never one it
 * has just let go of.
 */
export class OpenFiles {
  private readonly entries = new Map<number, OpenEntry>()
  private retrying = false

  constructor (readonly shared: FileData) {
    // A closed file is let go once its last changes are in the directory.
    shared.settled = file => { this.forget(file).catch(err => log('inode %d: %s', file.ino, (err as Error).message)) }
  }

  isOpen (ino: number): boolean {
    return this.entries.has(ino)
  }

  get (ino: number): Promise<OpenFile> | undefined {
    return this.entries.get(ino)?.file
  }

  /** Open `ino`; `created` says it was just made, so it has no blocks to load (a scan of the directory saved). */
  acquire (ino: number, created = false): Promise<OpenFile> {
    let e = this.entries.get(ino)
    if (!e) {
      const entry: OpenEntry = {
        refs: 0,
        file: (async () => {
          const inode = await this.shared.dir.getInode(ino)
          return new OpenFile(ino, this.shared, created ? new Map() : await this.shared.dir.getBlocks(ino), inode.size)
        })()
      }
      entry.file.catch(() => { if (this.entries.get(ino) === entry) this.entries.delete(ino) })
      this.entries.set(ino, entry)
      e = entry
    }
    const taken = e
    taken.refs++
    return taken.file.catch(err => { taken.refs--; throw err })
  }

  /**
   * Drop one reference; the last one flushes. The file stays here until its
   * changes are committed (a file whose data could not be written, until
   * retryUnwritten succeeds); then an inode that lost all its links is freed.
   */
  async release (file: OpenFile): Promise<void> {
    const e = this.entries.get(file.ino)
    if (!e || --e.refs > 0) return
    await file.flush()
    await this.forget(file)
  }

  private async forget (file: OpenFile): Promise<void> {
    const e = this.entries.get(file.ino)
    if (!e || await e.file !== file) return
    // Checked after that await: an open may have come meanwhile.
    if (this.entries.get(file.ino) !== e || e.refs !== 0 || !file.clean) return
    this.entries.delete(file.ino)
    await this.shared.dir.releaseIfUnlinked(file.ino)
  }

  /** Try again to write closed files whose blocks could not be written (a device was down). */
  async retryUnwritten (): Promise<number> {
    if (this.retrying) return 0
    this.retrying = true
    let left = 0
    try {
      for (const e of [...this.entries.values()]) {
        if (e.refs > 0) continue
        const file = await e.file
        try {
          await file.flush()
          await this.forget(file)
        } catch (err) {
          left++
          log('inode %d still not written: %s', file.ino, (err as Error).message)
        }
      }
    } finally {
      this.retrying = false
    }
    return left
  }

  /** The directory gave blocks of `ino` new BSLs for the same objects (adopt). */
  async adopted (ino: number, changes: Map<number, BlockRecord>): Promise<void> {
    const f = this.get(ino)
    if (f) (await f).adopt(changes)
  }

  /** Flush every open file (unmount, shutdown). */
  async flushAll (): Promise<void> {
    for (const e of [...this.entries.values()]) await (await e.file).flushNow()
  }

  get count (): number { return this.entries.size }
}
