import { CopyToHeal } from '../volumes/volumes'
import { KvReader } from './kv'
import { Usage } from './meta'
import { readUsage } from './usage'
import { healBacklog, healQueue, reclaimIds } from './queues'
import { BlockRecord, Inode, decodeBlock, decodeEntry, decodeInode, keyNumber, keys } from './records'

/**
 * Whole-namespace reads (fsck, scrub, remap, heal) over any reader: the
 * live store, or a snapshot of it. Nothing here goes through the caches.
 */
export class NamespaceReader {
  constructor (private readonly kv: KvReader) {}

  /** The heal queue, in key order from `after`. */
  healQueue (limit: number, after?: Buffer): Promise<Array<CopyToHeal & { key: Buffer }>> {
    return healQueue(this.kv, limit, after)
  }

  /** Copies queued for heal, by mirror volume. */
  healBacklog (): Promise<Map<number, number>> {
    return healBacklog(this.kv)
  }

  /** Every block record of every file (scrub, fsck). */
  async * allBlocks (): AsyncIterable<{ ino: number, index: number, block: BlockRecord }> {
    for await (const [k, v] of this.kv.scan(keys.blockPrefix)) {
      yield { ino: keyNumber(k), index: keyNumber(k, 9), block: decodeBlock(k, v) }
    }
  }

  /** Every inode, entry and orphan record, raw (fsck reads the whole namespace). */
  async * allInodes (): AsyncIterable<Inode> {
    for await (const [k, v] of this.kv.scan(keys.inodePrefix)) yield decodeInode(keyNumber(k), v)
  }

  async * allEntries (): AsyncIterable<{ parent: number, name: string, ino: number, mode: number }> {
    for await (const [k, v] of this.kv.scan(keys.entryPrefix)) {
      const e = decodeEntry(k, v)
      yield { parent: keyNumber(k), name: k.subarray(9).toString('utf8'), ino: e.ino, mode: e.mode }
    }
  }

  async orphanInodes (): Promise<number[]> {
    const out: number[] = []
    for await (const [k] of this.kv.scan(keys.orphanPrefix)) out.push(keyNumber(k))
    return out
  }

  /** Object ids waiting in the reclaim queue. */
  reclaimQueueIds (): AsyncIterable<string> {
    return reclaimIds(this.kv)
  }

  /** The file and byte counters as stored. */
  usage (): Promise<Usage> {
    return readUsage(this.kv)
  }
}
