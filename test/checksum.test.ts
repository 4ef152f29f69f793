import t from 'tap'
import { randomBytes } from 'node:crypto'
import { CHUNK_BYTES, blockSums, checksum, chunkSums } from '../src/checksum'

t.test('blockSums: the whole CRC-32 combined from the chunk sums equals a CRC of the whole', async t => {
  const sizes = [0, 1, 7, CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1, 3 * CHUNK_BYTES + 12345, 1024 * 1024, 1024 * 1024 - 1]
  for (let i = 0; i < 20; i++) sizes.push(Math.floor(Math.random() * 2 * 1024 * 1024))
  for (const n of sizes) {
    const data = randomBytes(n)
    const s = blockSums(data)
    t.equal(s.checksum, checksum(data), `${n} bytes: whole checksum`)
    t.same(s.chunks, chunkSums(data), `${n} bytes: chunk sums`)
  }
})

t.test('the object I/O addon computes the same CRC-32 as zlib, at every length and alignment, folded or not', async t => {
  const { crc32 } = await import('node:zlib')
  const { nativeCrc32, nativeCrc32Folds } = await import('../src/devices/object-io')
  t.comment(`folding with PCLMULQDQ: ${nativeCrc32Folds()}`)
  const data = randomBytes(3 * CHUNK_BYTES + 100)
  const lengths = [0, 1, 15, 16, 17, 63, 64, 65, 79, 80, 127, 128, 129, 1000, CHUNK_BYTES, CHUNK_BYTES + 3, 2 * CHUNK_BYTES + 77]
  let wrong = 0
  for (const n of lengths) {
    for (const at of [0, 1, 3, 8, 13]) {
      const piece = data.subarray(at, at + n)
      if (nativeCrc32(piece) !== crc32(piece)) wrong++
      // Continuing a running value, split anywhere.
      const cut = Math.floor(n / 3)
      if (nativeCrc32(piece.subarray(cut), nativeCrc32(piece.subarray(0, cut))) !== crc32(piece)) wrong++
    }
  }
  t.equal(wrong, 0, 'every length, offset and split agrees with zlib')
  t.equal(nativeCrc32(Buffer.from('123456789')), 0xcbf43926, 'the CRC-32 check value')
})
