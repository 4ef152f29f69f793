import { ClassicLevel } from 'classic-level'
import { FsError } from '../errors'
import { mountMetrics } from '../metrics/mount-metrics'
import { addonLoader } from '../native-addon'
import { KvSnapshot, KvStore, KvTxn, prefixEnd } from './kv'
import { Mutex } from './mutex'
import { BufferedTxn, DELETED, PendingWrite } from './write-buffer'

type Level = ClassicLevel<Buffer, Buffer>

/** LevelDB has no transactions: one in-process lock (Mutex) plus one atomic batch stands in. */
class LevelTxn extends BufferedTxn {
  constructor (private readonly db: Level) { super() }

  protected storedGet (key: Buffer): Promise<Buffer | undefined> {
    return getFrom(this.db, key)
  }

  protected storedScan (prefix: Buffer, opts: { after?: Buffer }): AsyncIterable<[Buffer, Buffer]> {
    return scanFrom(this.db, prefix, { after: opts.after })
  }
}

type Snapshot = ReturnType<Level['snapshot']>

/**
 * classic-level's binding with the two calls bslfs adds to it
 * (native/classic_level_sync.cc, built by scripts/build-native.js): a batch
 * and a scan on the calling thread. classic-level's own batch and iterator are
 * thread-pool jobs, each about 50 us of waking threads here against 7 us for
 * the work; an unlink made one, an rmdir or a directory listing three.
 */
interface SyncBinding {
  batch_do_sync (db: unknown, keys: Buffer[], values: Array<Buffer | null>, level0Limit: number): boolean
  scan_sync (db: unknown, from: Buffer, inclusive: boolean, to: Buffer | null, limit: number, snapshot: unknown): Buffer[]
}

const binding = addonLoader<SyncBinding>({
  what: 'classic-level\'s binding with bslfs\'s synchronous batch and scan (native/classic_level_sync.cc)',
  file: 'classic-level/binding',
  functions: ['batch_do_sync', 'scan_sync']
})

const contexts = new WeakMap<object, unknown>()

/** The binding's handle of a database or snapshot (classic-level keeps it under a private symbol). */
function contextOf (o: object): unknown {
  let context = contexts.get(o)
  if (context === undefined) {
    const key = Object.getOwnPropertySymbols(o).find(s => s.description === 'context')
    if (!key) throw new Error('classic-level changed: no binding context on its database or snapshot')
    context = (o as Record<symbol, unknown>)[key]
    contexts.set(o, context)
  }
  return context
}

function checkOpen (db: Level): void {
  if (db.status !== 'open') throw new FsError('EIO', `the directory database is ${db.status}`)
}

/**
 * Level-0 files at which a batch goes through the thread pool instead:
 * LevelDB's compaction starts at 4, slows writes by 1 ms each from 8 and
 * stops them from 12, waits that must not block the event loop.
 */
const LEVEL0_SYNC_LIMIT = 4

/**
 * One key's value. Synchronous inside: a point read of LevelDB's memtable or
 * block cache takes a few microseconds, while the async get's thread-pool round
 * trip costs about 75, and a file operation makes several of them.
 */
async function getFrom (db: Level, key: Buffer, snapshot?: Snapshot): Promise<Buffer | undefined> {
  try {
    const v = db.getSync(key, snapshot ? { snapshot } : {})
    return v ?? undefined
  } catch (err) {
    throw new FsError('EIO', `directory read failed: ${(err as Error).message}`, { cause: err })
  }
}

/** Entries read per synchronous call; a longer scan lets the event loop run between calls. */
const SCAN_CHUNK = 256

/**
 * Keys under `prefix` (after `after`) in order, at most `limit`. A scan of
 * more than one chunk reads through a snapshot, taken here when the caller
 * gave none, so it sees one state of the store as an iterator does.
 */
async function * scanFrom (db: Level, prefix: Buffer, opts: { after?: Buffer, limit?: number }, snapshot?: Snapshot): AsyncIterable<[Buffer, Buffer]> {
  let limit = opts.limit ?? Infinity
  if (limit <= 0) return
  const to = prefixEnd(prefix) ?? null
  let from = prefix
  let inclusive = true
  if (opts.after && Buffer.compare(opts.after, prefix) >= 0) {
    from = opts.after
    inclusive = false
  }
  checkOpen(db)
  const own = snapshot === undefined && limit > SCAN_CHUNK ? db.snapshot() : undefined
  const snap = snapshot ?? own
  try {
    for (let first = true; ; first = false) {
      if (!first) {
        await new Promise(resolve => setImmediate(resolve))
        checkOpen(db)
      }
      const want = Math.min(limit, SCAN_CHUNK)
      let flat: Buffer[]
      try {
        flat = binding().scan_sync(contextOf(db), from, inclusive, to, want, snap ? contextOf(snap) : undefined)
      } catch (err) {
        throw new FsError('EIO', `directory read failed: ${(err as Error).message}`, { cause: err })
      }
      for (let i = 0; i < flat.length; i += 2) yield [flat[i], flat[i + 1]]
      limit -= flat.length / 2
      if (flat.length < 2 * want || limit <= 0) return
      from = flat[flat.length - 2]
      inclusive = false
    }
  } finally {
    // Closing fails only when the database closed first, which released the snapshot already.
    if (own) own.close().catch(() => {})
  }
}

/** The LevelDB engine: the process that opens it owns it (LevelDB's own lock keeps others out). */
export class LevelKv implements KvStore {
  readonly singleWriter = true
  private readonly lock = new Mutex()

  private constructor (private readonly db: Level, private readonly level0SyncLimit: number) {}

  /** `level0SyncLimit` (default LEVEL0_SYNC_LIMIT): 0 sends every batch through the thread pool. */
  static async open (location: string, opts: { createIfMissing?: boolean, level0SyncLimit?: number } = {}): Promise<LevelKv> {
    const db: Level = new ClassicLevel<Buffer, Buffer>(location, {
      keyEncoding: 'buffer',
      valueEncoding: 'buffer',
      createIfMissing: opts.createIfMissing ?? false,
      errorIfExists: false
    })
    binding() // before opening: a binding without bslfs's calls is an install problem, said plainly
    await db.open()
    return new LevelKv(db, opts.level0SyncLimit ?? LEVEL0_SYNC_LIMIT)
  }

  get (key: Buffer): Promise<Buffer | undefined> {
    return getFrom(this.db, key)
  }

  scan (prefix: Buffer, opts: { after?: Buffer, limit?: number } = {}): AsyncIterable<[Buffer, Buffer]> {
    return scanFrom(this.db, prefix, opts)
  }

  snapshot (): KvSnapshot {
    const db = this.db
    const snap = db.snapshot()
    return {
      get: key => getFrom(db, key, snap),
      scan: (prefix, opts = {}) => scanFrom(db, prefix, opts, snap),
      close: () => snap.close()
    }
  }

  txn<T> (fn: (tx: KvTxn) => Promise<T> | T, opts: { sync?: boolean } = {}): Promise<T> {
    return this.lock.run(async () => {
      const started = performance.now()
      const tx = new LevelTxn(this.db)
      const result = await fn(tx)
      if (tx.writes.size > 0) {
        try {
          await this.write([...tx.writes.values()], opts.sync ?? false)
        } catch (err) {
          throw new FsError('EIO', `directory write failed: ${(err as Error).message}`, { cause: err })
        }
      }
      for (const hook of tx.commitHooks) hook()
      mountMetrics.directoryTxn.observe((performance.now() - started) / 1000)
      return result
    })
  }

  /**
   * One atomic batch: on this thread when it needs no fsync and LevelDB will
   * not make it wait (LEVEL0_SYNC_LIMIT), else through classic-level's batch
   * on the thread pool.
   */
  private async write (writes: PendingWrite[], sync: boolean): Promise<void> {
    const keys: Buffer[] = []
    const values: Array<Buffer | null> = []
    for (const { key, value } of writes) {
      const put = value === DELETED ? null : value
      if (!Buffer.isBuffer(key) || (put !== null && !Buffer.isBuffer(put))) {
        throw new TypeError(`a ${put === null ? 'del' : 'put'} of a key or value that is not a buffer`)
      }
      keys.push(key)
      values.push(put)
    }
    checkOpen(this.db)
    if (!sync && binding().batch_do_sync(contextOf(this.db), keys, values, this.level0SyncLimit)) return
    await this.db.batch(keys.map((key, i) => {
      const value = values[i]
      return value === null ? { type: 'del' as const, key } : { type: 'put' as const, key, value }
    }), { sync })
  }

  async close (): Promise<void> {
    // Wait for transactions in flight, then close.
    await this.lock.run(async () => { await this.db.close() })
  }
}
