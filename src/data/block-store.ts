import createDebug from 'debug'
import { BSL, objectIdOf } from '../bsl'
import { CHUNK_BYTES } from '../checksum'
import { BlockRecord } from '../directory/records'
import { FsError } from '../errors'
import { BlockCache, CacheEntry, CacheUse } from './block-cache'
import { READ_AHEAD_BLOCKS } from './read-ahead'
import { mountMetrics } from '../metrics/mount-metrics'

const log = createDebug('bslfs:data')

/** What file data needs from the volumes layer. */
export interface BlockStore {
  newBlock (fileId: bigint, index: number): BSL
  /** Store a block on its copies; not `durable`: durable after the next sync. */
  write (block: BlockRecord, data: Uint8Array, opts?: { durable?: boolean }): Promise<void>
  /** Make every block written without `durable` so far durable. */
  sync (): Promise<void>
  /**
   * A block's verified bytes; into `into` when the device can (the answer is then a view of it).
   * `signal` aborts the device calls: the read rejects with EINTR.
   */
  read (block: BlockRecord, into?: Buffer, signal?: AbortSignal): Promise<Buffer>
  /**
   * The verified bytes of the chunks covering [offset, offset + length) of a
   * block with chunk sums: `data` starts at `start` (offset rounded down to a
   * chunk) and ends at a chunk boundary or the block's end. Into `into` and
   * aborted by `signal` as for `read`.
   */
  readRange (block: BlockRecord, offset: number, length: number, into?: Buffer, signal?: AbortSignal): Promise<{ start: number, data: Buffer }>
}

const EMPTY = Buffer.alloc(0)

function noop (): void {}

/** `e`, counted as a read-ahead hit the first time a reader finds it there. */
function aheadHit (e: CacheEntry): CacheEntry {
  if (e.ahead) {
    e.ahead = false
    mountMetrics.readAheadHits.n++
  }
  return e
}

export function interrupted (): FsError {
  return new FsError('EINTR', 'read interrupted')
}

/**
 * `into` when `data` is a view of it (the device read there), for the cache to
 * reuse later; else undefined (another copy answered, into a buffer of its own,
 * and the copy asked first may still be writing `into`: it is dropped).
 */
function backingOf (data: Buffer, into: Buffer): Buffer | undefined {
  return data.buffer === into.buffer && data.byteOffset === into.byteOffset ? into : undefined
}

/**
 * One device read that every reader asking for the same block or chunks meanwhile
 * waits for. A reader with a signal may leave early (EINTR); the device read is
 * aborted only once every reader has left and none without a signal (read-ahead,
 * a write filling a block) ever waited: it never fails for a reader still there.
 */
class SharedRead {
  private readonly controller = new AbortController()
  private waiting = 0
  private lasting = false

  /** `forget`: drop this read from the reads in flight, once it is aborted (the next reader starts another). */
  constructor (private readonly forget: () => void) {}

  get signal (): AbortSignal { return this.controller.signal }

  /** `result` for one more reader, who stops waiting when `signal` aborts. */
  join<T> (result: Promise<T>, signal?: AbortSignal): Promise<T> {
    if (!signal) {
      this.lasting = true
      return result
    }
    this.waiting++
    return new Promise<T>((resolve, reject) => {
      const leave = (): void => {
        this.waiting--
        reject(interrupted())
        if (this.waiting === 0 && !this.lasting) {
          this.forget()
          this.controller.abort()
        }
      }
      if (signal.aborted) return leave()
      signal.addEventListener('abort', leave, { once: true })
      result.then(resolve, reject).finally(() => signal.removeEventListener('abort', leave))
    })
  }
}

interface InFlight { entry: Promise<CacheEntry>, read: SharedRead }

/**
 * Blocks read through the cache: verified bytes (the volumes layer checks the
 * checksums), whole blocks or only the chunks a read needs, each device read
 * shared by everyone who asks for the same bytes meanwhile (a reader and the
 * read-ahead, say).
 */
export class CachedBlockStore {
  private readonly cache: BlockCache
  /** Reads of blocks (by object id) and chunks (by `id:chunk`) in flight. */
  private readonly fetching = new Map<string, InFlight>()

  constructor (readonly store: BlockStore, blockSize: number, cacheBytes: number) {
    // Spares for the cache's blocks and for those of a sequential reader's read-ahead.
    this.cache = new BlockCache(cacheBytes, blockSize, READ_AHEAD_BLOCKS)
  }

  /** A use of cached bytes (see CacheUse): what a read's pieces are views of. */
  use (): CacheUse {
    return this.cache.use()
  }

  /**
   * A block's bytes, through the cache. `use` holds them: views of them stay
   * right until it ends. `signal` stops the wait (EINTR).
   */
  fetch (rec: BlockRecord, use: CacheUse, signal?: AbortSignal): Promise<Buffer> {
    const hit = this.cache.get(objectIdOf(rec.bsl))
    // Held at once: a cached block may be evicted, and its buffer reused, before a continuation runs.
    if (hit) return Promise.resolve(use.hold(aheadHit(hit)))
    if (signal?.aborted) return Promise.reject(interrupted())
    // A new entry is pinned until the loop's next turn: this hold comes before.
    return this.fetched(rec, signal).then(e => use.hold(e))
  }

  /** The cache entry of a block, from the device (one read shared by everyone who asks meanwhile). */
  private fetched (rec: BlockRecord, signal?: AbortSignal): Promise<CacheEntry> {
    const id = objectIdOf(rec.bsl)
    let f = this.fetching.get(id)
    if (!f) {
      const into = this.cache.buffer()
      const read = new SharedRead(() => { if (this.fetching.get(id) === f) this.fetching.delete(id) })
      const entry = this.store.read(rec, into, read.signal).then(data => {
        if (data.length !== rec.length) throw new FsError('EIO', `block ${id} has ${data.length} bytes, the directory says ${rec.length}`)
        return this.cache.set(id, data, backingOf(data, into))
      }).finally(() => { if (this.fetching.get(id) === f) this.fetching.delete(id) })
      entry.catch(noop) // every reader may have left
      f = { entry, read }
      this.fetching.set(id, f)
    }
    return f.read.join(f.entry, signal)
  }

  /**
   * Bytes [offset, offset + length) of a block with chunk sums, fetching only
   * the chunks that cover them (verified below, in the volumes layer), through
   * the cache. A whole block cached or on its way serves the bytes instead.
   */
  async fetchRange (rec: BlockRecord, offset: number, length: number, use: CacheUse, signal?: AbortSignal): Promise<Buffer> {
    const id = objectIdOf(rec.bsl)
    const hit = this.cache.get(id)
    if (!hit && signal?.aborted) throw interrupted()
    const coming = this.fetching.get(id)
    // A failed whole fetch (a bad chunk on every copy, say) is no answer here: the chunks needed may be good.
    const whole = hit
      ? use.hold(aheadHit(hit))
      : coming && await coming.read.join(coming.entry, signal).then(e => use.hold(e), err => {
        if ((err as FsError).code === 'EINTR' && signal?.aborted) throw err
        return undefined
      })
    if (whole) return whole.subarray(offset, offset + length)
    const first = Math.floor(offset / CHUNK_BYTES)
    const last = Math.floor((offset + length - 1) / CHUNK_BYTES)
    const chunks: Array<Promise<Buffer>> = []
    const missing: number[] = []
    for (let k = first; k <= last; k++) {
      // Held as whole blocks are: a chunk's buffer is reused once it is evicted and nothing holds it.
      const hit = this.cache.get(`${id}:${k}`)
      const f = this.fetching.get(`${id}:${k}`)
      if (!hit && !f) missing.push(k)
      chunks.push(hit ? Promise.resolve(use.hold(hit)) : f ? f.read.join(f.entry, signal).then(e => use.hold(e)) : Promise.resolve(EMPTY)) // a placeholder, set below
    }
    if (missing.length > 0) {
      // One device read for the chunks nobody has or is fetching (and any between them).
      const lo = missing[0] * CHUNK_BYTES
      const hi = Math.min(rec.length, (missing[missing.length - 1] + 1) * CHUNK_BYTES)
      // A lone chunk (a random read) is read into a buffer of the cache's, which it reuses after eviction.
      const into = missing.length === 1 ? this.cache.chunkBuffer() : undefined
      const flights: InFlight[] = []
      const read = new SharedRead(() => {
        for (const [n, k] of missing.entries()) if (this.fetching.get(`${id}:${k}`) === flights[n]) this.fetching.delete(`${id}:${k}`)
      })
      const span = this.store.readRange(rec, lo, hi - lo, into, read.signal).then(({ start, data }) => {
        if (start !== lo || data.length !== hi - lo) throw new FsError('EIO', `block ${id}: asked for bytes ${lo}..${hi}, got ${data.length} at ${start}`)
        return data
      })
      for (const k of missing) {
        const key = `${id}:${k}`
        const entry = span.then(data => {
          if (into) return this.cache.set(key, data, backingOf(data, into))
          // A view would keep the whole span alive while the cache counts only the chunk.
          return this.cache.set(key, Buffer.from(data.subarray(k * CHUNK_BYTES - lo, (k + 1) * CHUNK_BYTES - lo)))
        }).finally(() => { if (this.fetching.get(key) === f) this.fetching.delete(key) })
        entry.catch(noop) // every reader may have left
        const f: InFlight = { entry, read }
        flights.push(f)
        this.fetching.set(key, f)
      }
      // This reader waits for the whole span once: it leaves it, if it does, once.
      const mine = read.join(Promise.all(flights.map(f => f.entry)), signal)
      for (const [n, k] of missing.entries()) chunks[k - first] = mine.then(entries => use.hold(entries[n]))
    }
    const got = await Promise.all(chunks)
    const from = offset - first * CHUNK_BYTES
    if (got.length === 1) return got[0].subarray(from, from + length)
    return Buffer.concat(got).subarray(from, from + length)
  }

  /** Start reading a block a reader will want soon; a failure here is left for the real read to report. */
  prefetch (rec: BlockRecord): void {
    const id = objectIdOf(rec.bsl)
    if (this.cache.has(id)) return
    // Marked only when the read-ahead itself asked the device (a reader was not already waiting).
    const own = !this.fetching.has(id)
    this.fetched(rec).then(e => { if (own) e.ahead = true }, err => log('read-ahead of %s failed: %s', objectIdOf(rec.bsl), (err as Error).message))
  }
}
