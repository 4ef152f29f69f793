import { BSL } from '../bsl'

/**
 * A block as the directory records it and the volumes layer reads and writes
 * it: where its bytes are, how long it is, and its checksums.
 */
export interface BlockRecord {
  bsl: BSL
  /** Bytes stored in the object (a block may be shorter than the block size). */
  length: number
  checksum: number
  /**
   * The CRC-32 of each CHUNK_BYTES piece of the block (chunkSums), so a small
   * read can fetch and check only the pieces it needs. Absent in records
   * written before chunk sums existed: those blocks are read whole.
   */
  chunks?: number[]
}
