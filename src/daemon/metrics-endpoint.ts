import { Server } from 'node:http'
import { OpenFiles } from '../data/open-files'
import { ListenAddress, serveMetrics } from '../metrics/http'
import { MountView, mountMetrics } from '../metrics/mount-metrics'
import { logger } from '../log'
import { State } from './state'

const events = logger('bslfs:metrics')

/** The reclaim queue is counted up to this many (a scrape must stay cheap). */
const RECLAIM_COUNT_LIMIT = 100_000
/** The heal backlog is a scan of its queue: at most once per this long (stats asks every second). */
const BACKLOG_MAX_AGE_MS = 1000

/** What the running mount shows the metrics: its places, queues and budgets, read at a scrape. */
function mountView (state: State, files: OpenFiles): MountView {
  let backlog: { at: number, value: Promise<Map<number, number>> } | undefined
  return {
    places: () => state.volumes.placeHealth(),
    healBacklog: () => {
      if (!backlog || Date.now() - backlog.at > BACKLOG_MAX_AGE_MS) {
        const value = state.dir.healBacklog()
        value.catch(() => { backlog = undefined })
        backlog = { at: Date.now(), value }
      }
      return backlog.value
    },
    reclaimQueue: async () => (await state.dir.reclaimQueue(RECLAIM_COUNT_LIMIT)).length,
    dirtyBytes: () => files.services.dirty.bytes,
    space: () => state.volumes.space(),
    directory: () => (state.dir.kv as { stats?: { commits: number, conflictRetries: number, outageRetries: number } }).stats
  }
}

/**
 * Show the mount's state to its metrics, and serve them at `addr`/metrics
 * when given (-o metrics). Returns what undoes it.
 */
export async function startMountMetrics (state: State, files: OpenFiles, addr: ListenAddress | undefined): Promise<() => Promise<void>> {
  mountMetrics.watch(mountView(state, files))
  let server: Server | undefined
  if (addr) {
    mountMetrics.withProcessMetrics()
    server = await serveMetrics(mountMetrics.registry, addr)
    events.info('metrics on http://%s:%d/metrics', addr.host.includes(':') ? `[${addr.host}]` : addr.host, addr.port)
  }
  return async () => {
    mountMetrics.watch(undefined)
    if (server) await new Promise<void>(resolve => { server?.close(() => resolve()); server?.closeAllConnections() })
  }
}
