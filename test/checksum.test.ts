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
