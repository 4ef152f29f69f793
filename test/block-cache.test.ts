import t from 'tap'
import { setImmediate as nextTurn } from 'node:timers/promises'
import { BlockCache } from '../src/data/block-cache'

// The block cache reuses the buffers it evicts, but never one a use still
// holds (a view of it may be on its way into a reply).

const BS = 4096

function filled (cache: BlockCache, byte: number): Buffer {
  const b = cache.buffer()
  b.fill(byte)
  return b
}

t.test('an evicted buffer is reused only once no use holds it', async t => {
  const cache = new BlockCache(BS, BS, 0) // room for one block
  const a = filled(cache, 0x61)
  cache.set('a', a, a)
  const reply = cache.use()
  const view = reply.hold(cache.get('a')!).subarray(0, 16)
  await nextTurn() // the pin of the fetch that brought it is gone

  const c = filled(cache, 0x63)
  t.not(c, a, 'a is cached: c is a buffer of its own')
  cache.set('c', c, c) // evicts a, which the reply holds
  t.equal(cache.get('a'), undefined, 'a is no longer cached')
  t.not(cache.buffer(), a, 'while the reply holds it, a is not handed out again')
  t.equal(view.toString(), 'a'.repeat(16), 'and the view still reads a')

  reply.end()
  t.equal(cache.buffer(), a, 'once the reply is out, a is reused')
})

t.test('a new entry stays pinned until the next turn: whoever waited for it holds it first', async t => {
  const cache = new BlockCache(BS, BS, 0)
  const a = filled(cache, 1)
  const e = cache.set('a', a, a)
  const b = filled(cache, 2)
  cache.set('b', b, b) // evicts a in the same turn
  t.not(cache.buffer(), a, 'a is not reused in the turn it arrived')
  const waiter = cache.use()
  waiter.hold(e)
  await nextTurn()
  t.not(cache.buffer(), a, 'the waiter holds it now')
  waiter.end()
  t.equal(cache.buffer(), a, 'then it is reused')
})

t.test('a buffer set without backing is never handed out', async t => {
  const cache = new BlockCache(BS, BS, 0)
  const own = Buffer.alloc(BS, 1)
  cache.set('x', own)
  const b = filled(cache, 2)
  cache.set('y', b, b) // evicts x: not the cache's to reuse
  await nextTurn()
  const c = filled(cache, 3)
  t.not(c, own, 'x is not reused')
})

t.test('spares for every buffer the cache and its reads in flight use: none is dropped to be allocated again', async t => {
  // Room for 4 blocks, and 12 more in flight (or held by replies) at once.
  const cache = new BlockCache(4 * BS, BS, 12)
  const replies = cache.use()
  const mine = new Set<Buffer>()
  for (let i = 0; i < 16; i++) {
    const b = filled(cache, i)
    mine.add(b)
    replies.hold(cache.set(`k${i}`, b, b)) // 12 of them evicted while the replies hold them
  }
  await nextTurn()
  t.equal(mine.size, 16, '16 buffers in use at once')
  cache.set('k0', Buffer.alloc(BS)) // already cached: nothing changes
  replies.end() // the 12 evicted come back at once
  const again = Array.from({ length: 12 }, () => cache.buffer())
  t.equal(again.filter(b => mine.has(b)).length, 12, 'all 12 are handed out again, none allocated anew')
})
