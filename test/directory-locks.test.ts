/**
 * The directory's lock table (locks.ts) as two mounts of one store see it: ranges split and
 * merge per owner, owners conflict by type and kind, a release wakes a waiter, and a session's
 * locks all go with releaseLocksOf. On the shared LevelKv wrapper that runs every transaction
 * body twice (rerun-kv.ts), so the bodies must be safe to run again.
 */
import t from 'tap'
import { decodeChange, encodeChange } from '../src/directory/changes'
import { F_RDLCK, F_UNLCK, F_WRLCK, LOCK_END, applyRange, releaseLocksOf } from '../src/directory/locks'
import { levelHosts } from './helpers/directory-hosts'

const W = F_WRLCK
const R = F_RDLCK

t.test('an owner\'s ranges split and merge as Linux does', async t => {
  let r = applyRange([], { start: 0, end: 99, type: W })
  r = applyRange(r, { start: 50, end: 59, type: R })
  t.same(r, [{ start: 0, end: 49, type: W }, { start: 50, end: 59, type: R }, { start: 60, end: 99, type: W }], 'a read lock inside a write lock splits it')
  r = applyRange(r, { start: 70, end: 79, type: F_UNLCK })
  t.same(r.map(x => [x.start, x.end]), [[0, 49], [50, 59], [60, 69], [80, 99]], 'an unlock cuts a hole')
  r = applyRange(r, { start: 100, end: 119, type: W })
  t.same(r.at(-1), { start: 80, end: 119, type: W }, 'an adjacent range of the same type merges')
  r = applyRange(r, { start: 50, end: 59, type: W })
  t.same(r.map(x => [x.start, x.end, x.type]), [[0, 69, W], [80, 119, W]], 'an upgrade merges with its neighbours')
  t.same(applyRange(r, { start: 0, end: LOCK_END, type: F_UNLCK }), [], 'unlocking everything leaves nothing')
})

t.test('a change carries the inodes whose locks were released', async t => {
  const [m] = encodeChange({ inodes: [], entries: [], locks: [7, 9] })
  t.same(decodeChange(m!), { inodes: [], entries: [], locks: [7, 9] })
  t.same(encodeChange({ inodes: [3], entries: [] }), ['{"i":[3],"e":[]}'], 'a change without locks is as before')
})

t.test('two mounts of one store', async t => {
  const { a, b, kv } = await levelHosts(t)
  const pa = a.locks.owner('a1', false)
  const pb = b.locks.owner('b1', false)
  const fb = b.locks.owner('a1', true)

  t.equal(await a.locks.set(5, pa, { start: 100, end: 149, type: W }, 11), undefined, 'A takes a write lock')
  const held = await b.locks.set(5, pb, { start: 120, end: 120, type: R }, 22)
  t.match(held, { start: 100, end: 149, type: W, pid: 11, owner: { session: a.session, owner: 'a1', flock: false } }, 'B\'s read lock inside it conflicts')
  t.equal(await b.locks.test(5, pb, { start: 150, end: 200, type: W }), undefined, 'beyond it, nothing conflicts')
  t.equal(await b.locks.set(5, fb, { start: 0, end: LOCK_END, type: W }, 22), undefined, 'a flock does not conflict with an fcntl lock')
  t.equal(await a.locks.set(5, pa, { start: 0, end: 10, type: R }, 11), undefined, 'A\'s own locks never conflict with each other')

  // B waits; A's unlock of the range wakes it (here through the local waits, as the change feed would).
  const waiting = b.locks.setWait(5, pb, { start: 120, end: 120, type: W }, 22)
  let done = false
  void waiting.then(() => { done = true })
  await new Promise(resolve => setTimeout(resolve, 50))
  t.notOk(done, 'B waits while A holds')
  const started = Date.now()
  await a.locks.set(5, pa, { start: 110, end: 130, type: F_UNLCK }, 11)
  b.locks.waits.wake(5)
  await waiting
  t.ok(Date.now() - started < 500, 'B has it as soon as it is woken')

  const aborted = new AbortController()
  const blocked = b.locks.setWait(5, pb, { start: 100, end: 100, type: W }, 22, aborted.signal)
  setTimeout(() => aborted.abort(new Error('interrupted')), 30)
  await t.rejects(blocked, /interrupted/, 'an abort ends the wait')
  t.match(await b.locks.test(5, b.locks.owner('other', false), { start: 100, end: 100, type: W }), { owner: { session: a.session } }, 'and B took nothing')

  await kv.txn(async tx => { t.same(await releaseLocksOf(tx, a.session), [5]) })
  t.equal(await b.locks.set(5, pb, { start: 0, end: LOCK_END, type: W }, 22), undefined, 'A\'s locks are gone with its session')
  t.match(await a.locks.test(5, pa, { start: 0, end: 0, type: R }), { owner: { session: b.session, flock: false } }, 'B\'s are not')
})
