// The places' health (src/volumes/health.ts): an answer that was on its way when a place went down
// does not bring it back; one to a call made after it does.
import t from 'tap'
import { Health } from '../src/volumes/health'

const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

t.test('a call that started before the place went down does not bring it back up', async t => {
  const h = new Health()
  t.equal(h.succeeded('s2:d1', 5, true), false, 'an up place stays up')
  t.equal(h.markDown('s2:d1', 'connection reset'), true, 'down')
  await sleep(20)
  // A read that took 50 ms began before the place went down 20 ms ago: its bytes were already on their way.
  t.equal(h.succeeded('s2:d1', 50, true), false, 'a late answer of a call made before the failure')
  t.equal(h.isUp('s2:d1'), false, 'leaves it down')
  t.equal(h.markDown('s2:d1', 'connection refused'), false, 'a second failure is not a second down')
  t.equal(h.report('s2:d1').downs, 1, 'one down counted')
  // A call made after the failure (a probe, or a request once the place answers again) brings it back.
  t.equal(h.succeeded('s2:d1', 1, false), true, 'a call made after it')
  t.equal(h.isUp('s2:d1'), true, 'brings it up')
  t.equal(h.report('s2:d1').downs, 1)
  t.notOk('downAt' in h.report('s2:d1'), 'the report shows no internal clock')
})
