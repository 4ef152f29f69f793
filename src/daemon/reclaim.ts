import createDebug from 'debug'
import { mountMetrics } from '../metrics/mount-metrics'
import { Directory } from '../directory/directory'
import { Volumes } from '../volumes/volumes'
import { eachParallel } from './parallel'

const log = createDebug('bslfs:reclaim')
/** Object deletes in flight at once. */
const DELETES_IN_FLIGHT = 4

/**
 * Delete the objects of blocks nothing references any more (queued in the
 * directory by unlink, truncate and overwrite, in the same batch as the
 * change). A crash between the change and the delete leaves them queued for
 * the next run, so space never leaks for good.
 */
export async function reclaim (dir: Directory, volumes: Volumes, batch = 256): Promise<number> {
  let total = 0
  for (let round = 0; ; round++) {
    const items = await dir.reclaimQueue(batch)
    if (items.length === 0) return total
    // The changes that queued these were committed without fsync: make them durable first, or a
    // power loss could bring back a block map that points at objects deleted here.
    if (round === 0) await dir.sync()
    const done: string[] = []
    // A few deletes at a time: all of a batch at once would fill the thread pool, and the
    // mount's own directory writes and reads would queue behind them (an rm -rf slowed down).
    await eachParallel(items, DELETES_IN_FLIGHT, async g => {
      try {
        await volumes.delete(g.bsl)
        done.push(g.objectId)
      } catch (err) {
        log('cannot delete %s yet: %s', g.objectId, (err as Error).message)
      }
    })
    await dir.forgetReclaimed(done)
    total += done.length
    mountMetrics.reclaimed.n += done.length
    if (done.length < items.length) return total // some copies are unreachable: retry on the next round
  }
}

export interface ReclaimerOptions {
  /** How often to look for garbage (ms). */
  intervalMs?: number
  /** Milliseconds since the mount last served a request: reclaim waits for a quiet moment. */
  quietMs?: () => number
  /** How long quiet must last (ms), and how long reclaim may wait for it at most (ms). */
  quietForMs?: number
  maxWaitMs?: number
  /** Whether this mount runs the filesystem's jobs now (it holds the job lease; default: always). */
  active?: () => boolean
}

/**
 * Reclaim in the background until stopped: every `intervalMs`, once the
 * mount has been quiet for `quietForMs`, or after `maxWaitMs` at the latest.
 * Deleting objects while an `rm -rf` runs took thread-pool turns its directory
 * writes waited behind (15% of its speed); space comes back a moment later.
 */
export function startReclaimer (dir: Directory, volumes: Volumes, opts: ReclaimerOptions = {}): { stop (): Promise<void> } {
  const { intervalMs = 1000, quietMs = () => Infinity, quietForMs = 300, maxWaitMs = 5000, active = () => true } = opts
  let running: Promise<unknown> = Promise.resolve()
  let last = Date.now()
  const timer = setInterval(() => {
    const waited = Date.now() - last
    if (waited < intervalMs || (quietMs() < quietForMs && waited < maxWaitMs) || !active()) return
    last = Date.now()
    running = running.then(() => reclaim(dir, volumes)).then(
      n => { if (n) log('reclaimed %d objects', n) },
      err => log('reclaim failed: %s', (err as Error).message))
  }, Math.min(intervalMs, quietForMs) / 2)
  timer.unref()
  return {
    async stop () {
      clearInterval(timer)
      await running
    }
  }
}
