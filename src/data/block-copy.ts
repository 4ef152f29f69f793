import { blockSums } from '../checksum'
import { BlockRecord } from '../directory/records'
import type { FileServices } from './services'

/**
 * New objects made from stored blocks, for the block-map changes of
 * fallocate and copy_file_range. A block is never shared between files or
 * patched in place: each result is a new object, stored on every copy of
 * its BSL; the caller makes them durable (one store.sync for many, as the
 * group commit does) before it commits their records.
 */

/** Block `rec` copied to a new object, as block `index` of its file. */
export async function copyObject (services: FileServices, rec: BlockRecord, index: number): Promise<BlockRecord> {
  await services.writers.take()
  try {
    const fileId = await services.dir.allocateObjectId()
    // The same bytes: the same sums.
    const copy: BlockRecord = { ...rec, bsl: services.store.newBlock(fileId, index) }
    const store = services.store
    if (store.copyBlock) await store.copyBlock(rec, copy)
    else await store.write(copy, await store.read(rec), { durable: false })
    return copy
  } finally {
    services.writers.give()
  }
}

/** Block `rec` rewritten as a new object with its bytes [from, to) zeroed. */
export async function rewriteZeroed (services: FileServices, rec: BlockRecord, index: number, from: number, to: number): Promise<BlockRecord> {
  await services.writers.take()
  try {
    const bytes = Buffer.from(await services.store.read(rec))
    bytes.fill(0, from, Math.min(to, bytes.length))
    const fileId = await services.dir.allocateObjectId()
    const out: BlockRecord = { bsl: services.store.newBlock(fileId, index), length: bytes.length, ...blockSums(bytes) }
    await services.store.write(out, bytes, { durable: false })
    return out
  } finally {
    services.writers.give()
  }
}
