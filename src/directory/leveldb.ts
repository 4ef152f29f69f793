import { ClassicLevel } from 'classic-level'
import { FsError } from '../errors'
import { KvSnapshot, KvStore, KvTxn, prefixEnd } from './kv'

type Level = ClassicLevel<Buffer, Buffer>

/** A FIFO async lock: LevelDB has no transactions, so one in-process lock plus one batch stands in. */
class Mutex {
  private tail: Promise<void> = Promise.resolve()

  async run<T> (fn: () => Promise<T>): Promise<T> {
    const prev = this.tail
    let release!: () => void
    this.tail = new Promise<void>(resolve => { release = resolve })
    await prev
    try {
      return await fn()
    } finally {
      release()
    }
  }
}

const DELETED = Symbol('deleted')

class LevelTxn implements KvTxn {
  /** Pending writes by hex key; reads consult them first so a transaction sees its own writes. */
  readonly writes = new Map<string, { key: Buffer, value: Buffer | typeof DELETED }>()
  readonly commitHooks: Array<() => void> = []

  constructor (private readonly db: Level) {}

  async get (key: Buffer): Promise<Buffer | undefined> {
    const w = this.writes.get(key.toString('hex'))
    if (w) return w.value === DELETED ? undefined : w.value
    return getFrom(this.db, key)
  }

  async * scan (prefix: Buffer, opts: { after?: Buffer, limit?: number } = {}): AsyncIterable<[Buffer, Buffer]> {
    // Merge the stored range with this transaction's pending writes under the prefix.
    const pending = [...this.writes.values()]
      .filter(w => startsWith(w.key, prefix) && (!opts.after || Buffer.compare(w.key, opts.after) > 0))
      .sort((a, b) => Buffer.compare(a.key, b.key))
    let i = 0
    let count = 0
    const limit = opts.limit ?? Infinity
    if (limit <= 0) return
    for await (const [k, v] of scanFrom(this.db, prefix, opts.after)) {
      while (i < pending.length && Buffer.compare(pending[i].key, k) < 0) {
        const w = pending[i++]
        if (w.value !== DELETED) { yield [w.key, w.value]; if (++count >= limit) return }
      }
      if (i < pending.length && Buffer.compare(pending[i].key, k) === 0) {
        const w = pending[i++]
        if (w.value !== DELETED) { yield [w.key, w.value]; if (++count >= limit) return }
        continue
      }
      yield [k, v]
      if (++count >= limit) return
    }
    for (; i < pending.length; i++) {
      const w = pending[i]
      if (w.value !== DELETED) { yield [w.key, w.value]; if (++count >= limit) return }
    }
  }

  put (key: Buffer, value: Buffer): void {
    this.writes.set(key.toString('hex'), { key, value })
  }

  del (key: Buffer): void {
    this.writes.set(key.toString('hex'), { key, value: DELETED })
  }

  onCommit (fn: () => void): void {
    this.commitHooks.push(fn)
  }
}

function startsWith (key: Buffer, prefix: Buffer): boolean {
  return key.length >= prefix.length && key.compare(prefix, 0, prefix.length, 0, prefix.length) === 0
}

type Snapshot = ReturnType<Level['snapshot']>

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

async function * scanFrom (db: Level, prefix: Buffer, after?: Buffer, snapshot?: Snapshot): AsyncIterable<[Buffer, Buffer]> {
  const end = prefixEnd(prefix)
  const range: { gte?: Buffer, gt?: Buffer, lt?: Buffer, snapshot?: Snapshot } = {}
  if (after && Buffer.compare(after, prefix) >= 0) range.gt = after
  else range.gte = prefix
  if (end) range.lt = end
  if (snapshot) range.snapshot = snapshot
  for await (const entry of db.iterator(range)) yield entry
}

/** Bounded scan: at most `limit` entries. */
async function * scanLimited (db: Level, prefix: Buffer, opts: { after?: Buffer, limit?: number }, snapshot?: Snapshot): AsyncIterable<[Buffer, Buffer]> {
  let n = 0
  if (opts.limit !== undefined && opts.limit <= 0) return
  for await (const e of scanFrom(db, prefix, opts.after, snapshot)) {
    yield e
    if (opts.limit !== undefined && ++n >= opts.limit) return
  }
}

/** The LevelDB engine: the process that opens it owns it (LevelDB's own lock keeps others out). */
export class LevelKv implements KvStore {
  private readonly lock = new Mutex()

  private constructor (private readonly db: Level) {}

  static async open (location: string, opts: { createIfMissing?: boolean } = {}): Promise<LevelKv> {
    const db: Level = new ClassicLevel<Buffer, Buffer>(location, {
      keyEncoding: 'buffer',
      valueEncoding: 'buffer',
      createIfMissing: opts.createIfMissing ?? false,
      errorIfExists: false
    })
    await db.open()
    return new LevelKv(db)
  }

  get (key: Buffer): Promise<Buffer | undefined> {
    return getFrom(this.db, key)
  }

  scan (prefix: Buffer, opts: { after?: Buffer, limit?: number } = {}): AsyncIterable<[Buffer, Buffer]> {
    return scanLimited(this.db, prefix, opts)
  }

  snapshot (): KvSnapshot {
    const db = this.db
    const snap = db.snapshot()
    return {
      get: key => getFrom(db, key, snap),
      scan: (prefix, opts = {}) => scanLimited(db, prefix, opts, snap),
      close: () => snap.close()
    }
  }

  txn<T> (fn: (tx: KvTxn) => Promise<T> | T, opts: { sync?: boolean } = {}): Promise<T> {
    return this.lock.run(async () => {
      const tx = new LevelTxn(this.db)
      const result = await fn(tx)
      if (tx.writes.size > 0) {
        const ops = [...tx.writes.values()].map(w => w.value === DELETED
          ? { type: 'del' as const, key: w.key }
          : { type: 'put' as const, key: w.key, value: w.value })
        try {
          await this.write(ops, opts.sync ?? false)
        } catch (err) {
          throw new FsError('EIO', `directory write failed: ${(err as Error).message}`, { cause: err })
        }
      }
      for (const hook of tx.commitHooks) hook()
      return result
    })
  }

  /**
   * One atomic batch. classic-level's public batch validates and re-encodes
   * every operation first (28 us per batch here, about what LevelDB's own
   * write takes); the keys and values here are buffers already, checked by
   * the directory, so the engine's own write is called where it exists.
   */
  private write (ops: Array<{ type: 'put', key: Buffer, value: Buffer } | { type: 'del', key: Buffer }>, sync: boolean): Promise<void> {
    const engine = this.db as unknown as { _batch?: (ops: unknown[], opts: { sync: boolean }) => Promise<void> }
    if (typeof engine._batch !== 'function' || this.db.status !== 'open') return this.db.batch(ops, { sync })
    for (const op of ops) {
      if (!Buffer.isBuffer(op.key) || (op.type === 'put' && !Buffer.isBuffer(op.value))) {
        return Promise.reject(new TypeError(`a ${op.type} of a key or value that is not a buffer`))
      }
    }
    return engine._batch(ops, { sync })
  }

  async close (): Promise<void> {
    // Wait for transactions in flight, then close.
    await this.lock.run(async () => { await this.db.close() })
  }
}
