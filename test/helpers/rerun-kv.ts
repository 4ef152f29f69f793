/**
 * KvStore wrappers for the directory's tests:
 * - RerunKv runs every transaction's body twice: the first run's writes and
 *   onCommit hooks are thrown away, as when PostgreSQL fails its COMMIT with a
 *   serialization error (40001) and PgKv runs the body again. A body that
 *   changes in-memory state outside onCommit, or decides on something the
 *   first run left behind, shows up as a wrong result.
 * - `shared: true` says the store is not this process's alone
 *   (`singleWriter` false, as PgKv), so the directory reads through the
 *   transaction instead of its caches; two Directory instances on one such
 *   store stand for two hosts, their transactions serialized by the engine.
 */
import { KvSnapshot, KvStore, KvTxn } from '../../src/directory/kv'
import { BufferedTxn } from '../../src/directory/write-buffer'

/** A run of a body whose writes and hooks are never committed; its reads go through the real transaction. */
class DiscardedRun extends BufferedTxn {
  constructor (private readonly tx: KvTxn) { super() }
  protected storedGet (key: Buffer): Promise<Buffer | undefined> { return this.tx.get(key) }
  protected storedScan (prefix: Buffer, opts: { after?: Buffer }): AsyncIterable<[Buffer, Buffer]> {
    return this.tx.scan(prefix, { after: opts.after })
  }
}

export class RerunKv implements KvStore {
  /** Bodies run a second time. */
  reruns = 0
  readonly singleWriter: boolean
  private opens = 1

  constructor (private readonly inner: KvStore, opts: { rerun?: boolean, shared?: boolean } = {}) {
    this.rerun = opts.rerun ?? true
    this.singleWriter = opts.shared === true ? false : inner.singleWriter === true
  }

  private readonly rerun: boolean

  /** The same store for one more user (another Directory): the inner store closes when the last one closes. */
  share (): this {
    this.opens++
    return this
  }

  get (key: Buffer): Promise<Buffer | undefined> { return this.inner.get(key) }
  scan (prefix: Buffer, opts?: { after?: Buffer, limit?: number }): AsyncIterable<[Buffer, Buffer]> { return this.inner.scan(prefix, opts) }
  snapshot (): KvSnapshot { return this.inner.snapshot() }

  txn<T> (fn: (tx: KvTxn) => Promise<T> | T, opts?: { sync?: boolean }): Promise<T> {
    if (!this.rerun) return this.inner.txn(fn, opts)
    return this.inner.txn(async tx => {
      try {
        await fn(new DiscardedRun(tx))
      } catch {
        // The first run's outcome is discarded whatever it was: the second decides.
      }
      this.reruns++
      return await fn(tx)
    }, opts)
  }

  async close (): Promise<void> {
    if (--this.opens === 0) await this.inner.close()
  }
}
