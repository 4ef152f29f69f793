import { FsError } from '../errors'
import { KvStore, KvTxn } from './kv'
import { readMeta } from './meta'
import { ROOT_INO, encodeJSON, keys } from './records'

/** Inode numbers and object ids reserved per write of their counter. */
const INO_RESERVE = 1024
const OBJECT_RESERVE = 65536

const isIno = (v: any): boolean => Number.isSafeInteger(v) && v > ROOT_INO
const isObject = (v: any): boolean => typeof v === 'string' && /^[0-9]{1,20}$/.test(v)

/**
 * Inode numbers and object ids, handed out from ranges this mount took from
 * the stored counters (M ino, M object). Taking a range is a read-modify-write
 * through the transaction, so two hosts never take the same one (the second
 * conflicts and runs again), and the counter is stored before any number in
 * the range is used, so a number is never handed out twice, across crashes
 * too. A range is held in memory only once its transaction committed.
 */
export class IdReservations {
  // Empty ranges: the first use takes one from the store.
  private nextIno = 0
  private inoLimit = 0
  private nextObject = 0n
  private objectLimit = 0n
  /** Transactions that took an inode number (one each). */
  private readonly taking = new WeakSet<KvTxn>()

  private constructor (private readonly kv: KvStore) {}

  /** The records a new filesystem starts with. */
  static initialize (tx: KvTxn): void {
    tx.put(keys.meta('ino'), encodeJSON(ROOT_INO + 1))
    tx.put(keys.meta('object'), encodeJSON('1'))
  }

  static async load (kv: KvStore): Promise<IdReservations> {
    await readMeta<number>(kv, 'ino', isIno)
    await readMeta<string>(kv, 'object', isObject)
    return new IdReservations(kv)
  }

  /**
   * Take a range of inode numbers in a transaction of its own when this
   * mount has none left, so that the creates after it do not touch M ino
   * (two hosts creating would conflict on it every time).
   */
  async prepareIno (): Promise<void> {
    if (this.nextIno < this.inoLimit) return
    await this.kv.txn(async tx => {
      if (this.nextIno < this.inoLimit) return // another call took one meanwhile
      const from = await this.takeInoRange(tx)
      tx.onCommit(() => { this.nextIno = from; this.inoLimit = from + INO_RESERVE })
    })
  }

  private async takeInoRange (tx: KvTxn): Promise<number> {
    const from = await readMeta<number>(tx, 'ino', isIno)
    tx.put(keys.meta('ino'), encodeJSON(from + INO_RESERVE))
    return from
  }

  /** A fresh inode number for `tx` (one per transaction), used up only if `tx` commits. */
  async takeIno (tx: KvTxn): Promise<number> {
    if (this.taking.has(tx)) throw new FsError('EIO', 'one transaction took two inode numbers')
    this.taking.add(tx)
    if (this.nextIno < this.inoLimit) {
      const ino = this.nextIno
      tx.onCommit(() => { this.nextIno = ino + 1 })
      return ino
    }
    // The range prepared before the transaction ran out in the meantime: take one inside it.
    const from = await this.takeInoRange(tx)
    tx.onCommit(() => { this.nextIno = from + 1; this.inoLimit = from + INO_RESERVE })
    return from
  }

  /** Fresh object ids for new blocks; reserved durably before any is used, so an id is never handed out twice. */
  async allocateObjectId (): Promise<bigint> {
    while (this.nextObject >= this.objectLimit) {
      await this.kv.txn(async tx => {
        if (this.nextObject < this.objectLimit) return // another call took one meanwhile
        const from = BigInt(await readMeta<string>(tx, 'object', isObject))
        const limit = from + BigInt(OBJECT_RESERVE)
        tx.put(keys.meta('object'), encodeJSON(limit.toString()))
        tx.onCommit(() => { this.nextObject = from; this.objectLimit = limit })
      }, { sync: true })
    }
    return this.nextObject++
  }
}
