import { Place } from '../volumes/tables'
import { KvReader, KvStore } from './kv'
import { FilePatch } from './namespace'
import { BlockRecord, Inode, decodeBlock, encodeBlock, keyNumber, keys } from './records'
import { Writer } from './writer'

/**
 * Block maps: which object holds each block of a file (B ino index → block
 * record). A block replaced or dropped goes to the reclaim queue in the
 * same batch; the file's stored bytes and the usage counters follow.
 */

/** A change to one block of a file: a new record, or null to drop the block (a hole). */
export interface BlockChange { index: number, record: BlockRecord | null }

/** What one file commits: block changes (every block at or past `dropFrom` dropped first) and attributes. */
export interface FileCommit { ino: number, changes: BlockChange[], patch: FilePatch, dropFrom?: number }

/** One block record of a file, or undefined when the file has none at that index. */
export async function readBlock (kv: KvReader, ino: number, index: number): Promise<BlockRecord | undefined> {
  const k = keys.block(ino, index)
  const v = await kv.get(k)
  return v === undefined ? undefined : decodeBlock(k, v)
}

export async function readBlocks (kv: KvReader, ino: number): Promise<Map<number, BlockRecord>> {
  const prefix = keys.blocks(ino)
  const out = new Map<number, BlockRecord>()
  for await (const [k, v] of kv.scan(prefix)) out.set(keyNumber(k, 9), decodeBlock(k, v))
  return out
}

/** Block changes and attributes of one file, in the Writer's transaction. */
export async function commitFile (w: Writer, f: FileCommit): Promise<Inode> {
  const { ino, changes, patch, dropFrom } = f
  await w.prefetch(keys.inode(ino), ...changes.map(c => keys.block(ino, c.index)))
  const inode = await w.inode(ino)
  let bytes = 0
  if (dropFrom !== undefined) {
    for await (const [k, v] of w.tx.scan(keys.blocks(ino), { after: keys.block(ino, dropFrom) })) {
      bytes -= w.freeBlock(k, decodeBlock(k, v))
    }
    const at = keys.block(ino, dropFrom)
    const raw = await w.tx.get(at)
    if (raw) bytes -= w.freeBlock(at, decodeBlock(at, raw))
  }
  for (const c of changes) {
    const key = keys.block(ino, c.index)
    const old = await w.tx.get(key)
    if (old) bytes -= w.freeBlock(key, decodeBlock(key, old))
    if (c.record) {
      w.tx.put(key, encodeBlock(c.record))
      bytes += c.record.length
    }
  }
  const updated = { ...inode, ...patch, stored: Math.max(0, (inode.stored ?? 0) + bytes) }
  w.putInode(updated)
  w.addUsage(0, bytes)
  return updated
}

/**
 * Turn the physical BSLs of a file's blocks that name `place` into logical
 * BSLs of `volume` (same object ids, so nothing moves), in one batch.
 * Returns the changed records by block index.
 */
export function adoptBlocks (kv: KvStore, ino: number, place: Place, volume: number): Promise<Map<number, BlockRecord>> {
  return kv.txn(async tx => {
    const changed = new Map<number, BlockRecord>()
    for await (const [k, v] of tx.scan(keys.blocks(ino))) {
      const rec = decodeBlock(k, v)
      const b = rec.bsl
      if (b.form !== 'physical' || b.server !== place.server || b.device !== place.device) continue
      const adopted: BlockRecord = { ...rec, bsl: { form: 'logical', volume, fileId: b.fileId } }
      tx.put(k, encodeBlock(adopted))
      changed.set(keyNumber(k, 9), adopted)
    }
    return changed
  }, { sync: true })
}
