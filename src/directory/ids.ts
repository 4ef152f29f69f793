import { KvStore, KvTxn } from './kv'
import { readMeta } from './meta'
import { ROOT_INO, encodeJSON, keys } from './records'

/** Inode numbers and object ids reserved per write of their counter. */
const INO_RESERVE = 1024
const OBJECT_RESERVE = 65536

/**
 * Inode numbers and object ids, handed out from ranges whose ends are stored
 * (M ino, M object) before any number in them is used, so a number is never
 * handed out twice, across crashes too.
 */
export class IdReservations {
  private nextIno: number
  private inoLimit: number
  private nextObject: bigint
  private objectLimit: bigint

  private constructor (private readonly kv: KvStore, ino: number, object: bigint) {
    this.nextIno = this.inoLimit = ino
    this.nextObject = this.objectLimit = object
  }

  /** The records a new filesystem starts with. */
  static initialize (tx: KvTxn): void {
    tx.put(keys.meta('ino'), encodeJSON(ROOT_INO + 1))
    tx.put(keys.meta('object'), encodeJSON('1'))
  }

  static async load (kv: KvStore): Promise<IdReservations> {
    const ino = await readMeta<number>(kv, 'ino', v => Number.isSafeInteger(v) && v > ROOT_INO)
    const object = BigInt(await readMeta<string>(kv, 'object', v => typeof v === 'string' && /^[0-9]{1,20}$/.test(v)))
    return new IdReservations(kv, ino, object)
  }

  /** A fresh inode number, inside the transaction that uses it. */
  reserveIno (tx: KvTxn): number {
    if (this.nextIno >= this.inoLimit) {
      // The new limit counts only once stored: a failed batch must not let later numbers run past it.
      const limit = this.nextIno + INO_RESERVE
      tx.put(keys.meta('ino'), encodeJSON(limit))
      tx.onCommit(() => { this.inoLimit = Math.max(this.inoLimit, limit) })
    }
    return this.nextIno++
  }

  /** Fresh object ids for new blocks; reserved durably before any is used, so an id is never handed out twice. */
  async allocateObjectId (): Promise<bigint> {
    if (this.nextObject >= this.objectLimit) {
      await this.kv.txn(tx => {
        if (this.nextObject < this.objectLimit) return
        const limit = this.nextObject + BigInt(OBJECT_RESERVE)
        tx.put(keys.meta('object'), encodeJSON(limit.toString()))
        tx.onCommit(() => { this.objectLimit = limit })
      }, { sync: true })
    }
    return this.nextObject++
  }
}
