import { KvReader, KvStore, KvTxn } from './kv'
import { Usage, isUsage, readMeta } from './meta'
import { decodeJSON, encodeJSON, keys } from './records'

/** Each mount's own usage row: M usage/<session>. */
const DELTA_PREFIX = keys.meta('usage/')

const ZERO: Usage = { files: 0, bytes: 0 }

function add (a: Usage, b: Usage, sign = 1): Usage {
  return { files: a.files + sign * b.files, bytes: a.bytes + sign * b.bytes }
}

/** The base (M usage) plus every mount's delta row: the usage as stored. */
export async function readUsage (kv: KvReader): Promise<Usage> {
  let total = await readMeta<Usage>(kv, 'usage', isUsage)
  for await (const [k, v] of kv.scan(DELTA_PREFIX)) {
    total = add(total, decodeJSON<Usage>(`metadata "${k.subarray(1).toString('latin1')}"`, v, isUsage))
  }
  return total
}

/**
 * The file and byte totals without one key every transaction rewrites: a
 * key written by two hosts at once is a serialization failure on
 * PostgreSQL, so each mount session adds its changes to a row of its own
 * (M usage/<session>), written in the transaction that makes them, and a read
 * sums the base (M usage) and every row. A clean close folds the session's row
 * into the base; the row of a mount that crashed stays and still counts.
 * (JuiceFS keeps deltas in memory and flushes them each second, losing them
 * in a crash; here they commit with the change.)
 */
export class UsageCounters {
  /** What this session's committed transactions added (its row as stored). */
  private own: Usage = ZERO
  /** The base and every other row, when last read. */
  private others: Usage

  private constructor (private readonly kv: KvStore, readonly session: string, stored: Usage) {
    this.others = stored
  }

  static async load (kv: KvStore, session: string): Promise<UsageCounters> {
    return new UsageCounters(kv, session, await readUsage(kv))
  }

  /** The totals: others' as last read, this session's exact. */
  get total (): Usage { return add(this.others, this.own) }

  private get key (): Buffer { return keys.meta(`usage/${this.session}`) }

  /** Add `delta` in `tx`; counted here once it commits. (One transaction of this session at a time writes the row.) */
  record (tx: KvTxn, delta: Usage): void {
    if (delta.files === 0 && delta.bytes === 0) return
    const own = add(this.own, delta)
    tx.put(this.key, encodeJSON(own))
    tx.onCommit(() => { this.own = own })
  }

  /** Set the totals outright in `tx` (fsck --repair): the base becomes `usage`, every row goes. */
  async replace (tx: KvTxn, usage: Usage): Promise<void> {
    for await (const [k] of tx.scan(DELTA_PREFIX)) tx.del(k)
    tx.put(keys.meta('usage'), encodeJSON(usage))
    tx.onCommit(() => {
      this.own = ZERO
      this.others = { ...usage }
    })
  }

  /** Another mount folded this session's row into the base (it was reaped as dead): count it there. */
  folded (): void {
    this.others = add(this.others, this.own)
    this.own = ZERO
  }

  /** Read what the other mounts added since (statfs on a shared filesystem). */
  async refresh (): Promise<void> {
    // In a transaction: this session's row as read is `own` when it commits (none of ours runs in between).
    await this.kv.txn(async tx => {
      const stored = await readUsage(tx)
      tx.onCommit(() => { this.others = add(stored, this.own, -1) })
    })
  }

  /** Fold this session's row into the base (a clean close), in one transaction. */
  async fold (): Promise<void> {
    await this.kv.txn(async tx => {
      const mine = await tx.get(this.key)
      if (!mine) return
      const base = await readMeta<Usage>(tx, 'usage', isUsage)
      const delta = decodeJSON<Usage>('this mount\'s usage row', mine, isUsage)
      tx.put(keys.meta('usage'), encodeJSON(add(base, delta)))
      tx.del(this.key)
      tx.onCommit(() => {
        this.others = add(this.others, this.own)
        this.own = ZERO
      })
    }, { sync: true })
  }
}
