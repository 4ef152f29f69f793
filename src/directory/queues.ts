import { BSL, objectIdOf } from '../bsl'
import { CopyToHeal } from '../volumes/volumes'
import { KvReader, KvStore, KvTxn } from './kv'
import { BlockRecord, corrupt, decodeBlock, encodeBlock, keys } from './records'

/**
 * The two work queues the directory keeps for the background jobs. Each
 * entry is one key, so a queue survives crashes and an entry is added in the
 * same batch as the change that makes it.
 *
 * - reclaim (G objectId → block record): objects nothing references any
 *   more, to delete from their devices;
 * - heal (H objectId volume → block record): copies on a mirror volume that
 *   are missing or bad, to write again from a good copy.
 */

// ---- reclaim --------------------------------------------------------------

/** Queue a block's object for reclaim, in the batch that drops the last reference to it. */
export function queueReclaim (tx: KvTxn, rec: BlockRecord): void {
  tx.put(keys.reclaim(objectIdOf(rec.bsl)), encodeBlock(rec))
}

/** Blocks nothing references any more, waiting to be deleted from their devices. */
export async function reclaimQueue (kv: KvReader, limit: number): Promise<Array<{ objectId: string, bsl: BSL }>> {
  const out: Array<{ objectId: string, bsl: BSL }> = []
  for await (const [k, v] of kv.scan(keys.reclaimPrefix, { limit })) {
    out.push({ objectId: k.subarray(1).toString('ascii'), bsl: decodeBlock(k, v).bsl })
  }
  return out
}

/** Object ids waiting in the reclaim queue. */
export async function * reclaimIds (kv: KvReader): AsyncIterable<string> {
  for await (const [k] of kv.scan(keys.reclaimPrefix)) yield k.subarray(1).toString('ascii')
}

/** True while a block's object waits in the reclaim queue (nothing references it). */
export async function isQueuedForReclaim (kv: KvReader, objectId: string): Promise<boolean> {
  return (await kv.get(keys.reclaim(objectId))) !== undefined
}

/** Take reclaimed objects off the queue. */
export function forgetReclaimed (kv: KvStore, objectIds: string[]): Promise<void> {
  return kv.txn(tx => { for (const id of objectIds) tx.del(keys.reclaim(id)) })
}

// ---- heal -----------------------------------------------------------------

/** Note copies that are missing or bad. */
export function queueHeal (kv: KvStore, copies: CopyToHeal[]): Promise<void> {
  return kv.txn(tx => {
    for (const r of copies) tx.put(keys.heal(objectIdOf(r.block.bsl), r.volume), encodeBlock(r.block))
  })
}

/** The heal queue, in key order from `after`. */
export async function healQueue (kv: KvReader, limit: number, after?: Buffer): Promise<Array<CopyToHeal & { key: Buffer }>> {
  const out: Array<CopyToHeal & { key: Buffer }> = []
  for await (const [k, v] of kv.scan(keys.healPrefix, { limit, after })) {
    if (k.length !== 21) throw corrupt('repair record', `key ${k.toString('hex')} has ${k.length} bytes`)
    out.push({ key: k, volume: k.readUInt32BE(17), block: decodeBlock(k, v) })
  }
  return out
}

/** Queued heals by mirror volume. */
export async function healBacklog (kv: KvReader): Promise<Map<number, number>> {
  const out = new Map<number, number>()
  for await (const [k] of kv.scan(keys.healPrefix)) {
    const v = k.readUInt32BE(17)
    out.set(v, (out.get(v) ?? 0) + 1)
  }
  return out
}

/** Take healed copies (their keys, as healQueue gave them) off the queue. */
export function forgetHealed (kv: KvStore, keyList: Buffer[]): Promise<void> {
  return kv.txn(tx => { for (const k of keyList) tx.del(k) })
}
