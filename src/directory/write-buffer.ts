/**
 * A transaction's pending writes, kept in memory until commit, and the view
 * of a read through them: a point read answers from the buffer first; a scan
 * merges the buffer's keys under the prefix into the stored ones in key order.
 * Written once for every engine whose store cannot hold uncommitted writes
 * itself (LevelDB's and PostgreSQL's).
 */
import { KvTxn } from './kv'

export const DELETED = Symbol('deleted')

export interface PendingWrite { key: Buffer, value: Buffer | typeof DELETED }

function startsWith (key: Buffer, prefix: Buffer): boolean {
  return key.length >= prefix.length && key.compare(prefix, 0, prefix.length, 0, prefix.length) === 0
}

export class WriteBuffer {
  /** By key as latin1 (one character per byte): one write per key, the last one. */
  private readonly writes = new Map<string, PendingWrite>()

  get size (): number { return this.writes.size }

  values (): IterableIterator<PendingWrite> { return this.writes.values() }

  put (key: Buffer, value: Buffer): void {
    this.writes.set(key.toString('latin1'), { key, value })
  }

  del (key: Buffer): void {
    this.writes.set(key.toString('latin1'), { key, value: DELETED })
  }

  /** The pending write of `key`, if any (its value DELETED for a delete). */
  lookup (key: Buffer): PendingWrite | undefined {
    return this.writes.get(key.toString('latin1'))
  }

  /** Pending writes under `prefix` after `after`, in key order. */
  private under (prefix: Buffer, after?: Buffer): PendingWrite[] {
    return [...this.writes.values()]
      .filter(w => startsWith(w.key, prefix) && (!after || Buffer.compare(w.key, after) > 0))
      .sort((a, b) => Buffer.compare(a.key, b.key))
  }

  /** How many pending deletes fall in the range (a stored scan must read that many more to fill `limit`). */
  deletesUnder (prefix: Buffer, after?: Buffer): number {
    return this.under(prefix, after).filter(w => w.value === DELETED).length
  }

  /**
   * The stored entries (`stored`: under `prefix`, after `after`, in key
   * order, unbounded) with the pending writes laid over them, at most `limit`.
   */
  async * merge (stored: AsyncIterable<[Buffer, Buffer]>, prefix: Buffer, opts: { after?: Buffer, limit?: number } = {}): AsyncIterable<[Buffer, Buffer]> {
    const limit = opts.limit ?? Infinity
    if (limit <= 0) return
    const pending = this.under(prefix, opts.after)
    let i = 0
    let count = 0
    for await (const [k, v] of stored) {
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
}

/**
 * A transaction over a store that cannot hold uncommitted writes: writes
 * wait in a WriteBuffer, reads see them over the store's own answers, and
 * the engine commits `writes` and runs `commitHooks` after.
 */
export abstract class BufferedTxn implements KvTxn {
  readonly writes = new WriteBuffer()
  readonly commitHooks: Array<() => void> = []

  /** A key as the store holds it, without this transaction's writes. */
  protected abstract storedGet (key: Buffer): Promise<Buffer | undefined>
  /** Stored entries under `prefix` after `after`, in key order, unbounded (the merge applies the limit). */
  protected abstract storedScan (prefix: Buffer, opts: { after?: Buffer, limit?: number }): AsyncIterable<[Buffer, Buffer]>

  async get (key: Buffer): Promise<Buffer | undefined> {
    const w = this.writes.lookup(key)
    if (w) return w.value === DELETED ? undefined : w.value
    return await this.storedGet(key)
  }

  scan (prefix: Buffer, opts: { after?: Buffer, limit?: number } = {}): AsyncIterable<[Buffer, Buffer]> {
    return this.writes.merge(this.storedScan(prefix, opts), prefix, opts)
  }

  put (key: Buffer, value: Buffer): void {
    this.writes.put(key, value)
  }

  del (key: Buffer): void {
    this.writes.del(key)
  }

  onCommit (fn: () => void): void {
    this.commitHooks.push(fn)
  }
}
