import { BufferPool } from '../buffer-pool'
import { CHUNK_BYTES } from '../checksum'
import { mountMetrics } from '../metrics/mount-metrics'

/** A cached block or chunk. */
export interface CacheEntry {
  readonly data: Buffer
  /** The pool buffer `data` is a view of, when it came from `buffer()` (until given back). */
  backing?: Buffer
  /** Uses holding a view of it (see CacheUse), and the fetch that just brought it. */
  pins: number
  evicted: boolean
  /** Brought by the read-ahead and not read yet (a read of it is a read-ahead hit). */
  ahead?: boolean
}

/**
 * Views of cached blocks taken by one operation (a read until its reply is
 * out, a write until it has copied what it needed): their buffers are not
 * reused until `end`.
 */
export class CacheUse {
  private held: CacheEntry[] = []
  constructor (private readonly cache: BlockCache) {}

  /** Hold `e` until this use ends; its data, for views. */
  hold (e: CacheEntry): Buffer {
    e.pins++
    this.held.push(e)
    return e.data
  }

  end (): void {
    for (const e of this.held.splice(0)) this.cache.unpin(e)
  }
}

/**
 * Recently read blocks by object id, and chunks of blocks by `id:chunk`.
 * Objects never change, so a cached block or chunk is never stale.
 *
 * Whole blocks and single chunks are read into buffers of the cache's own
 * pools, which it takes back when it evicts them: a fresh 1 MiB buffer per
 * block read cost page faults and garbage collection, and a fresh 32 KiB one
 * per random read a collection every few hundred reads. An evicted block or
 * chunk may still be on its way into a reply (a view of it), so its buffer
 * goes back to its pool only once no use holds it (CacheUse).
 */
export class BlockCache {
  private readonly map = new Map<string, CacheEntry>()
  private bytes = 0
  private readonly pool: BufferPool
  /** Chunks (random reads) come and go at thousands a second: each evicted one's buffer serves the next. */
  private readonly chunkPool = new BufferPool(CHUNK_BYTES, 32)

  /** `spareBlocks`: more blocks than the cache holds that may be in use at once (reads in flight). */
  constructor (private readonly budget: number, blockSize: number, spareBlocks: number) {
    // Spares for every buffer the cache and its reads in flight can use at once: with fewer, a
    // sequential read drops buffers and allocates them again (native-notes/read-path.md).
    // Between workloads it keeps 8.
    this.pool = new BufferPool(blockSize, Math.ceil(budget / blockSize) + spareBlocks, 0, 8)
  }

  get (key: string): CacheEntry | undefined {
    const e = this.map.get(key)
    if (!e) {
      mountMetrics.cacheMisses.n++
      return undefined
    }
    mountMetrics.cacheHits.n++
    this.map.delete(key)
    this.map.set(key, e)
    return e
  }

  /**
   * Cache `data`, a view of `backing` (a buffer from `buffer()`, the cache's
   * from now on) when given. The entry stays pinned until the loop's next
   * turn, so whoever waited for it can hold it first.
   */
  set (key: string, data: Buffer, backing?: Buffer): CacheEntry {
    const had = this.map.get(key)
    if (had) return had
    const e: CacheEntry = { data, backing, pins: 1, evicted: false }
    setImmediate(() => this.unpin(e))
    this.map.set(key, e)
    this.bytes += data.length
    mountMetrics.cacheBytes += data.length
    for (const [k, old] of this.map) {
      if (this.bytes <= this.budget) break
      this.map.delete(k)
      this.bytes -= old.data.length
      mountMetrics.cacheBytes -= old.data.length
      mountMetrics.cacheEvictions.n++
      old.evicted = true
      this.release(old)
    }
    return e
  }

  /** Whether `key` is cached (not a lookup a reader made: not counted). */
  has (key: string): boolean {
    return this.map.has(key)
  }

  /** A block-sized buffer to read a block into, for `set` (else it is dropped: never given back another way). */
  buffer (): Buffer {
    return this.pool.take()
  }

  /** The same for one chunk (CHUNK_BYTES). */
  chunkBuffer (): Buffer {
    return this.chunkPool.take()
  }

  /** A use of cached bytes (see CacheUse). */
  use (): CacheUse {
    return new CacheUse(this)
  }

  unpin (e: CacheEntry): void {
    e.pins--
    this.release(e)
  }

  /** An evicted block's buffer back to the pool, once nothing holds it. */
  private release (e: CacheEntry): void {
    if (e.evicted && e.pins === 0 && e.backing) {
      (e.backing.length === this.chunkPool.size ? this.chunkPool : this.pool).give(e.backing)
      e.backing = undefined
    }
  }
}
