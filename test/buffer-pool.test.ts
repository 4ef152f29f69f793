import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { BufferPool } from '../src/buffer-pool'

t.test('a pool keeps its spares while used, and lets the extra ones go once idle', async t => {
  const pool = new BufferPool(4096, 6, 0, 2)
  const bufs = Array.from({ length: 8 }, () => pool.take())
  for (const b of bufs) pool.give(b)
  t.equal(pool.spares, 6, 'up to keep while in use')
  // Taken from and given back every 300 ms for 2.5 s: busy, never trimmed.
  for (let i = 0; i < 8; i++) {
    await sleep(300)
    const b = pool.take()
    t.ok(bufs.includes(b), 'a spare is handed out')
    pool.give(b)
  }
  t.equal(pool.spares, 6, 'still 6 while busy')
  await sleep(2300)
  t.equal(pool.spares, 2, 'idle for a second or two: down to idleKeep')
  pool.give(Buffer.alloc(100))
  t.equal(pool.spares, 2, 'a buffer of another size is not kept')
})
