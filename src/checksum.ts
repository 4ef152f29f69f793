import { crc32 } from 'node:zlib'

/** The checksum every block carries: CRC-32 (zlib's native implementation), as an unsigned 32-bit number. */
export function checksum (data: Uint8Array): number {
  return crc32(data) >>> 0
}
