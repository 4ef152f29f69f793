import createDebug from 'debug'
import { mountMetrics } from '../metrics/mount-metrics'
import { objectIdOf } from '../bsl'
import { Directory } from '../directory/directory'
import { BlockRecord } from '../volumes/block'
import { CopyToHeal, Volumes } from '../volumes/volumes'
import { eachParallel } from './parallel'
import { OnProgress } from './progress'

const log = createDebug('bslfs:heal')

export interface HealReport {
  /** Copies that were queued when the run started. */
  queued: number
  /** Copies written from a good copy. */
  copied: number
  /** Copies that turned out to be whole already. */
  present: number
  /** Queued blocks that were freed or left the mirror meanwhile (nothing to do). */
  dropped: number
  /** Copies that could not be healed now (a copy down, no good source); they stay queued. */
  failed: number
  bytes: number
  /** The first few reasons for failures. */
  errors: string[]
}

const BATCH = 256
const PARALLEL = 8
const MAX_ERRORS = 5

/**
 * Work through the heal queue: every copy a write missed or a read found bad
 * is checked and, when needed, copied from a good copy (verified by checksum
 * on both sides). Healed copies leave the queue; the rest stay for next time.
 */
export async function heal (dir: Directory, volumes: Volumes, onProgress: OnProgress = () => {}): Promise<HealReport> {
  const backlog = await dir.healBacklog()
  const report: HealReport = { queued: [...backlog.values()].reduce((a, b) => a + b, 0), copied: 0, present: 0, dropped: 0, failed: 0, bytes: 0, errors: [] }
  let after: Buffer | undefined
  let done = 0
  onProgress({ done, total: report.queued, bytes: 0 })
  for (;;) {
    const items = await dir.healQueue(BATCH, after)
    if (items.length === 0) break
    after = items[items.length - 1].key
    const finished: Buffer[] = []
    await eachParallel(items, PARALLEL, async item => {
      try {
        const outcome = await dir.isQueuedForReclaim(objectIdOf(item.block.bsl)) ? 'gone' : await volumes.healCopy(item.block, item.volume)
        if (outcome === 'copied') { report.copied++; report.bytes += item.block.length; mountMetrics.healBytes.n += item.block.length } else if (outcome === 'present') report.present++
        else report.dropped++
        mountMetrics.healed[outcome === 'gone' ? 'dropped' : outcome].n++
        finished.push(item.key)
      } catch (err) {
        report.failed++
        mountMetrics.healed.failed.n++
        if (report.errors.length < MAX_ERRORS) report.errors.push((err as Error).message)
        log('cannot heal %s on volume %d yet: %s', objectIdOf(item.block.bsl), item.volume, (err as Error).message)
      }
      onProgress({ done: ++done, total: Math.max(report.queued, done), bytes: report.bytes })
    })
    await dir.forgetHealed(finished)
  }
  report.queued = Math.max(report.queued, done)
  return report
}

export interface ScrubReport {
  blocks: number
  /** Copies read and found good. */
  good: number
  missing: number
  corrupt: number
  /** Copies not checked because their place is down (or answered with an error). */
  unchecked: number
  bytes: number
  /** Bad copies queued for heal. */
  queued: number
}

/**
 * Read every copy of every block and check its checksum; missing and bad
 * copies go to the heal queue (heal, or the running mount, heals them).
 */
export async function scrub (dir: Directory, volumes: Volumes, onProgress: OnProgress = () => {}): Promise<ScrubReport> {
  const report: ScrubReport = { blocks: 0, good: 0, missing: 0, corrupt: 0, unchecked: 0, bytes: 0, queued: 0 }
  const total = dir.usage.bytes
  let batch: BlockRecord[] = []
  const check = async (): Promise<void> => {
    const bad: CopyToHeal[] = []
    await eachParallel(batch, PARALLEL, async block => {
      let vols: number[]
      try {
        vols = block.bsl.form === 'physical' ? [] : volumes.mirrorsOf(block.bsl.volume)
      } catch {
        vols = []
      }
      for (const volume of vols) {
        const verdict = (await volumes.checkCopy(block, volume))?.problem ?? null
        if (verdict === null) { report.good++; report.bytes += block.length } else if (verdict === 'missing' || verdict === 'corrupt') {
          report[verdict]++
          if (vols.length > 1) bad.push({ block, volume })
        } else report.unchecked++
      }
      report.blocks++
      onProgress({ done: report.bytes, total: Math.max(total, report.bytes), bytes: report.bytes })
    })
    if (bad.length) await dir.queueHeal(bad)
    report.queued += bad.length
    batch = []
  }
  for await (const { block } of dir.allBlocks()) {
    batch.push(block)
    if (batch.length >= BATCH) await check()
  }
  await check()
  return report
}

/**
 * Heal in the background while mounted: when a down place comes back, when
 * a read found a bad copy, and every `intervalMs` while the queue is not
 * empty.
 */
export function startHealer (dir: Directory, volumes: Volumes, intervalMs = 30_000, active: () => boolean = () => true): { stop (): Promise<void>, kick (): void } {
  let running: Promise<unknown> = Promise.resolve()
  let queued = false
  let stopped = false
  const kick = (): void => {
    if (queued || stopped || !active()) return // another mount holds the job lease
    queued = true
    running = running.then(async () => {
      queued = false
      if (stopped) return
      const r = await heal(dir, volumes)
      if (r.queued) log('healed: %d copied, %d already whole, %d dropped, %d left', r.copied, r.present, r.dropped, r.failed)
    }).catch(err => log('heal failed: %s', (err as Error).message))
  }
  volumes.on('up', kick)
  volumes.on('healQueued', kick)
  const timer = setInterval(kick, intervalMs)
  timer.unref()
  kick()
  return {
    kick,
    async stop () {
      stopped = true
      clearInterval(timer)
      volumes.off('up', kick)
      volumes.off('healQueued', kick)
      await running
    }
  }
}
