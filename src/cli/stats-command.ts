import type { Command } from 'commander'
import { existsSync } from 'node:fs'
import { resolve } from 'node:path'
import { UsageError } from '../errors'
import { askControl } from '../daemon/control'
import { parseFsName, runtimePaths } from '../daemon/location'
import { controlSocketOf, findFsMounts, findMount } from '../daemon/mountpoint'
import type { MountMetrics } from '../metrics/mount-metrics'

type Snapshot = Awaited<ReturnType<MountMetrics['snapshot']>>

/** The control socket of the running mount that MOUNTPOINT or STATE (or URL) names. */
async function socketOf (target: string): Promise<string> {
  const abs = resolve(target)
  const m = existsSync(abs) ? await findMount(abs) : undefined
  if (m) {
    if (m.fstype !== 'fuse.bslfs') throw new UsageError(`${abs} is not a bslfs mount (${m.fstype})`)
    return controlSocketOf(m)
  }
  const name = parseFsName(target)
  if (name.kind === 'state') return runtimePaths(name, '').socket
  const mounts = await findFsMounts(name)
  if (mounts.length === 0) throw new UsageError(`${target} is not mounted on this host: stats come from a running mount`)
  return controlSocketOf(mounts[0])
}

async function sample (socket: string, target: string): Promise<Snapshot> {
  const answer = await askControl(socket, { cmd: 'stats', args: [] }, 10_000)
  if (!answer) throw new UsageError(`${target} is not mounted (no mount answers on ${socket}): stats come from a running mount`)
  if (!answer.ok) throw new UsageError(answer.error)
  return answer.result as Snapshot
}

/** The figures a person watches over one interval: rates per second, and the state at its end. */
export function rates (a: Snapshot, b: Snapshot): Record<string, number | string> {
  const s = Math.max(0.001, (b.time - a.time) / 1000)
  const d = (k: keyof Snapshot) => ((b[k] as number) - (a[k] as number))
  const per = (k: keyof Snapshot) => round(d(k) / s, 1)
  const lookups = d('cacheHits') + d('cacheMisses')
  return {
    time: new Date(b.time).toISOString(),
    opsPerSec: per('fuseOps'),
    errorsPerSec: per('fuseErrors'),
    opLatencyMs: d('fuseOps') > 0 ? round(d('fuseSeconds') * 1000 / d('fuseOps'), 3) : 0,
    readMBps: round(d('bytesRead') / s / 1e6, 2),
    writeMBps: round(d('bytesWritten') / s / 1e6, 2),
    cacheHitPercent: lookups > 0 ? round(100 * d('cacheHits') / lookups, 1) : 0,
    readAheadHitsPerSec: per('readAheadHits'),
    deviceOpsPerSec: per('deviceCalls'),
    deviceErrorsPerSec: per('deviceErrors'),
    deviceLatencyMs: d('deviceCalls') > 0 ? round(d('deviceSeconds') * 1000 / d('deviceCalls'), 3) : 0,
    deviceReadMBps: round(d('deviceBytesRead') / s / 1e6, 2),
    deviceWriteMBps: round(d('deviceBytesWritten') / s / 1e6, 2),
    failoversPerSec: per('failovers'),
    hedgedPerSec: per('hedgedReads'),
    healedPerSec: per('healedCopies'),
    healBacklog: b.healBacklog,
    placesDown: b.placesDown,
    dirtyMiB: round(b.dirtyBytes / 1048576, 1),
    cacheMiB: round(b.cacheBytes / 1048576, 1),
    rssMiB: round(b.rss / 1048576, 1)
  }
}

function round (n: number, digits: number): number {
  const f = 10 ** digits
  return Math.round(n * f) / f
}

const COLUMNS: Array<[string, string, number]> = [
  ['time', 'time', 8], ['opsPerSec', 'ops/s', 8], ['errorsPerSec', 'err/s', 6], ['opLatencyMs', 'op ms', 7],
  ['readMBps', 'rd MB/s', 8], ['writeMBps', 'wr MB/s', 8], ['cacheHitPercent', 'hit %', 6], ['deviceOpsPerSec', 'dev/s', 7],
  ['deviceLatencyMs', 'dev ms', 7], ['deviceErrorsPerSec', 'deverr/s', 8], ['failoversPerSec', 'failov/s', 8],
  ['healBacklog', 'backlog', 8], ['placesDown', 'down', 5], ['dirtyMiB', 'dirty MiB', 9], ['rssMiB', 'rss MiB', 8]
]

function line (r: Record<string, number | string>): string {
  return COLUMNS.map(([k, , w]) => (k === 'time' ? String(r.time).slice(11, 19) : String(r[k])).padStart(w)).join(' ')
}

/** `bslfs stats MOUNTPOINT|STATE`: one line per interval, read from the running mount's control socket. */
export function registerStats (program: Command): Command {
  return program.command('stats').argument('<MOUNTPOINT|STATE>')
    .description('a live view of a running mount: one line per second (ops, MB/s, cache hits, device latency, failovers, backlog)')
    .option('--json', 'one JSON object per line')
    .option('--count <N>', 'stop after N lines')
    .option('--interval <SECONDS>', 'seconds between lines', '1')
    .action(async (target: string, o: { json?: boolean, count?: string, interval: string }) => {
      const count = o.count === undefined ? Infinity : Number(o.count)
      if (!(Number.isInteger(count) && count >= 1) && count !== Infinity) throw new UsageError(`bad --count "${o.count}": a whole number from 1`)
      const interval = Number(o.interval)
      if (!(interval >= 0.1 && interval <= 3600)) throw new UsageError(`bad --interval "${o.interval}": seconds from 0.1 to 3600`)
      const socket = await socketOf(target)
      // Ctrl-C ends the view between two lines: a clean exit, not a stack.
      let stop!: () => void
      const stopped = new Promise<void>(resolve => { stop = resolve })
      let interrupted = false
      const onSignal = (): void => { interrupted = true; stop() }
      process.once('SIGINT', onSignal)
      process.once('SIGTERM', onSignal)
      try {
        let before = await sample(socket, target)
        for (let n = 0; n < count && !interrupted; n++) {
          let timer: NodeJS.Timeout | undefined
          await Promise.race([stopped, new Promise<void>(resolve => { timer = setTimeout(resolve, interval * 1000) })])
          clearTimeout(timer)
          if (interrupted) break
          const now = await sample(socket, target)
          const r = rates(before, now)
          before = now
          if (o.json) console.log(JSON.stringify({ ...r, totals: now }))
          else {
            if (n % 20 === 0) console.log(COLUMNS.map(([, h, w]) => h.padStart(w)).join(' '))
            console.log(line(r))
          }
        }
      } finally {
        process.off('SIGINT', onSignal)
        process.off('SIGTERM', onSignal)
      }
    })
}
