import { crc32 } from 'node:zlib'

/** The checksum every block carries: CRC-32 (zlib's native implementation), as an unsigned 32-bit number. */
export function checksum (data: Uint8Array): number {
  return crc32(data) >>> 0
}

/**
 * A block is also checksummed in pieces of this size, so a small read can
 * fetch and verify the pieces it needs instead of the whole block.
 */
export const CHUNK_BYTES = 32 * 1024

/** How many chunk sums a block of `length` bytes has (the last chunk may be shorter). */
export function chunkCount (length: number): number {
  return Math.ceil(length / CHUNK_BYTES)
}

/** The CRC-32 of each consecutive CHUNK_BYTES piece of `data`. */
export function chunkSums (data: Uint8Array): number[] {
  const out = new Array<number>(chunkCount(data.length))
  for (let i = 0; i < out.length; i++) out[i] = checksum(data.subarray(i * CHUNK_BYTES, (i + 1) * CHUNK_BYTES))
  return out
}
