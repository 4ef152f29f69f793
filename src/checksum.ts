import { crc32 as zlibCrc32 } from 'node:zlib'

type Crc32 = (data: Buffer, running?: number) => number

/**
 * @node-rs/crc32 computes the same CRC-32 as zlib with carry-less multiply
 * (about 14 GB/s here, zlib's 5.8): a tenth of a write's CPU was zlib's CRC.
 * Where its prebuilt binary does not load, zlib's serves.
 */
function fastest (): Crc32 {
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const fast = (require('@node-rs/crc32') as { crc32: Crc32 }).crc32
    if (fast(Buffer.from('123456789')) >>> 0 === 0xcbf43926) return fast
  } catch {}
  return zlibCrc32
}

const crc32 = fastest()

/**
 * The checksum every block carries: CRC-32 (the polynomial of zlib and gzip),
 * as an unsigned 32-bit number. `running`: the checksum of the bytes before
 * `data`, to go on from (a body checked as it arrives, piece by piece).
 */
export function checksum (data: Uint8Array, running = 0): number {
  return crc32(Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength), running) >>> 0
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

// CRC-32 combination (zlib's crc32_combine, done here because node:zlib does not export it):
// the CRC of A followed by B from crc(A), crc(B) and B's length, by polynomial arithmetic mod
// the CRC polynomial, so a block's whole checksum comes from its chunk sums without a second pass.
const POLY = 0xedb88320

/** a * b modulo the CRC polynomial (bit-reflected, as zlib's multmodp). */
function multmodp (a: number, b: number): number {
  let m = 0x80000000
  let p = 0
  for (;;) {
    if (a & m) {
      p ^= b
      if ((a & (m - 1)) === 0) break
    }
    m >>>= 1
    b = b & 1 ? (b >>> 1) ^ POLY : b >>> 1
  }
  return p >>> 0
}

/** x^(2^k) modulo the polynomial, k = 0..31. */
const X2N: number[] = [0x40000000]
for (let k = 1; k < 32; k++) X2N.push(multmodp(X2N[k - 1], X2N[k - 1]))

/** x^(8 * bytes) modulo the polynomial: what appending `bytes` bytes does to a CRC. */
function shiftFor (bytes: number): number {
  let p = 0x80000000
  for (let n = bytes, k = 3; n > 0; n = Math.floor(n / 2), k++) {
    if (n % 2) p = multmodp(X2N[k & 31], p)
  }
  return p
}

const CHUNK_SHIFT = shiftFor(CHUNK_BYTES)

/** The whole CRC-32 and the chunk sums of a block, with one pass over its bytes. */
export function blockSums (data: Uint8Array): { checksum: number, chunks: number[] } {
  const chunks = chunkSums(data)
  let whole = 0
  for (let k = 0; k < chunks.length; k++) {
    const len = Math.min(CHUNK_BYTES, data.length - k * CHUNK_BYTES)
    whole = (multmodp(len === CHUNK_BYTES ? CHUNK_SHIFT : shiftFor(len), whole) ^ chunks[k]) >>> 0
  }
  return { checksum: whole, chunks }
}
