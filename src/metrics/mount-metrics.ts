import { constants } from 'node:os'
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client'
import { Count, CounterFamily, HistogramFamily, HistogramSeries } from './tally'

/**
 * Every metric of a mount, defined here and nowhere else. One object per
 * process (`mountMetrics` below), with its own Registry (never prom-client's
 * global one, which a block server in the same process would share). The
 * layers below the daemon import it and add to its series; the series are
 * made once per label value (an opcode, a place, a volume) and kept, so a
 * request costs a few additions, never a string. Labels are fixed sets:
 * opcode, errno, op, place, volume, direction, outcome; never a file or inode.
 */

const ERRNO_NAMES = new Map<number, string>(Object.entries(constants.errno).map(([name, n]) => [n, name]))
/**
 * Errors that answer a question rather than report a failure (no such name, no such xattr, an
 * xattr buffer probe, an opcode the kernel tries): in the metrics by errno, but not in the
 * error total `bslfs stats` shows (every write asks for security.capability and gets ENODATA).
 */
const ANSWERS = new Set(['ENOENT', 'ENODATA', 'ERANGE', 'ENOSYS', 'EEXIST', 'ENOTEMPTY'].map(n => constants.errno[n as keyof typeof constants.errno]))

/** What one FUSE opcode counts. */
export class FuseOpMetrics {
  readonly requests: Count
  readonly latency: HistogramSeries
  private readonly errors = new Map<number, Count>()
  constructor (private readonly m: MountMetrics, readonly opcode: string) {
    this.requests = m.fuseRequests.series({ opcode })
    this.latency = m.fuseLatency.series({ opcode })
  }

  /** One request answered with `errno` (0: success) after `seconds`. */
  done (errno: number, seconds: number): void {
    this.requests.n++
    this.latency.observe(seconds)
    if (errno !== 0) {
      let e = this.errors.get(errno)
      if (!e) this.errors.set(errno, e = this.m.fuseErrors.series({ opcode: this.opcode, errno: ERRNO_NAMES.get(errno) ?? String(errno) }))
      e.n++
      if (!ANSWERS.has(errno)) this.m.totals.fuseErrors++
    }
  }
}

export type DeviceOp = 'read' | 'write' | 'sync' | 'stat'
const DEVICE_OPS: DeviceOp[] = ['read', 'write', 'sync', 'stat']

/** What the device calls to one place (server:device) count. */
export class PlaceMetrics {
  readonly calls: Record<DeviceOp, Count>
  readonly latency: Record<DeviceOp, HistogramSeries>
  readonly bytesRead: Count
  readonly bytesWritten: Count
  private readonly errors = new Map<string, Count>()
  constructor (private readonly m: MountMetrics, readonly place: string) {
    this.calls = Object.fromEntries(DEVICE_OPS.map(op => [op, m.deviceCalls.series({ place, op })])) as Record<DeviceOp, Count>
    this.latency = Object.fromEntries(DEVICE_OPS.map(op => [op, m.deviceLatency.series({ place, op })])) as Record<DeviceOp, HistogramSeries>
    this.bytesRead = m.deviceBytes.series({ place, direction: 'read' })
    this.bytesWritten = m.deviceBytes.series({ place, direction: 'write' })
  }

  done (op: DeviceOp, seconds: number, bytes: number): void {
    this.calls[op].n++
    this.latency[op].observe(seconds)
    this.m.totals.deviceCalls++
    this.m.totals.deviceSeconds += seconds
    if (op === 'read') { this.bytesRead.n += bytes; this.m.totals.deviceBytesRead += bytes } else if (op === 'write') { this.bytesWritten.n += bytes; this.m.totals.deviceBytesWritten += bytes }
  }

  /** A failed call; `kind` is its fault (unreachable, missing, corrupt, timeout…) or POSIX code: a small set. */
  failed (op: DeviceOp, seconds: number, kind: string): void {
    this.calls[op].n++
    this.latency[op].observe(seconds)
    this.m.totals.deviceCalls++
    this.m.totals.deviceErrors++
    this.m.totals.deviceSeconds += seconds
    const key = `${op} ${kind}` // only on a failure
    let e = this.errors.get(key)
    if (!e) this.errors.set(key, e = this.m.deviceErrors.series({ place: this.place, op, kind }))
    e.n++
  }
}

/** What the running mount tells the metrics at a scrape (the daemon gives it once it is up). */
export interface MountView {
  places (): Array<{ place: string, up: boolean, failovers: number, downs: number, missing: number, corrupt: number }>
  healBacklog (): Promise<Map<number, number>>
  reclaimQueue (): Promise<number>
  dirtyBytes (): number
  /** Device space by place (an Error where a device did not answer). */
  space (): Promise<Map<string, { total: number, available: number } | Error>>
  /** The PostgreSQL directory's counts (commits, bodies run again), when it is one. */
  directory (): { commits: number, conflictRetries: number, outageRetries: number } | undefined
}

/** Running totals for `bslfs stats` (what a person watches; rates are the CLI's). */
export interface MountTotals {
  fuseOps: number
  fuseErrors: number
  fuseSeconds: number
  bytesRead: number
  bytesWritten: number
  cacheHits: number
  cacheMisses: number
  cacheEvictions: number
  readAheadHits: number
  deviceCalls: number
  deviceErrors: number
  deviceSeconds: number
  deviceBytesRead: number
  deviceBytesWritten: number
  failovers: number
  hedgedReads: number
  healedCopies: number
}

export class MountMetrics {
  readonly registry = new Registry()
  readonly totals: MountTotals = {
    fuseOps: 0, fuseErrors: 0, fuseSeconds: 0, bytesRead: 0, bytesWritten: 0, cacheHits: 0, cacheMisses: 0, cacheEvictions: 0,
    readAheadHits: 0, deviceCalls: 0, deviceErrors: 0, deviceSeconds: 0, deviceBytesRead: 0, deviceBytesWritten: 0,
    failovers: 0, hedgedReads: 0, healedCopies: 0
  }

  private view: MountView | undefined

  // FUSE
  readonly fuseRequests = new CounterFamily(this.registry, 'bslfs_fuse_requests_total', 'FUSE requests answered, by opcode', ['opcode'])
  readonly fuseErrors = new CounterFamily(this.registry, 'bslfs_fuse_errors_total', 'FUSE requests answered with an error, by opcode and errno', ['opcode', 'errno'])
  readonly fuseLatency = new HistogramFamily<'opcode'>(this.registry, 'bslfs_fuse_request_seconds', 'Time from a FUSE request read to its answer, by opcode')
  private readonly fuseBytes = new CounterFamily(this.registry, 'bslfs_fuse_bytes_total', 'File bytes read and written through the mount', ['direction'])
  readonly fuseBytesRead = this.fuseBytes.series({ direction: 'read' })
  readonly fuseBytesWritten = this.fuseBytes.series({ direction: 'write' })
  private readonly ops: Array<FuseOpMetrics | undefined> = []

  // Block cache and read-ahead
  readonly cacheHits = this.single('bslfs_cache_hits_total', 'Block cache lookups that found the block or chunk')
  readonly cacheMisses = this.single('bslfs_cache_misses_total', 'Block cache lookups that had to read a device')
  readonly cacheEvictions = this.single('bslfs_cache_evictions_total', 'Blocks and chunks evicted from the block cache')
  readonly readAheadHits = this.single('bslfs_readahead_hits_total', 'Reads served by a block the read-ahead fetched')
  /** Bytes the block caches hold now (added and taken away as they change). */
  cacheBytes = 0

  // Devices, failover, health
  readonly deviceCalls = new CounterFamily(this.registry, 'bslfs_device_calls_total', 'Device calls (block reads, writes, syncs), by place and op', ['place', 'op'])
  readonly deviceErrors = new CounterFamily(this.registry, 'bslfs_device_errors_total', 'Device calls that failed, by place, op and kind', ['place', 'op', 'kind'])
  readonly deviceLatency = new HistogramFamily<'place' | 'op'>(this.registry, 'bslfs_device_call_seconds', 'Time of a device call, by place and op')
  readonly deviceBytes = new CounterFamily(this.registry, 'bslfs_device_bytes_total', 'Block bytes read from and written to each place', ['place', 'direction'])
  private readonly placeMetrics = new Map<string, PlaceMetrics>()
  private readonly failovers = new CounterFamily(this.registry, 'bslfs_read_failovers_total', 'Reads of a mirrored volume served by other than their first copy', ['volume'])
  private readonly hedges = new CounterFamily(this.registry, 'bslfs_hedged_reads_total', 'Reads that asked a second copy because the first was slow', ['volume'])
  private readonly failoversBy = new Map<number, Count>()
  private readonly hedgesBy = new Map<number, Count>()

  // Heal, reclaim, group commit, directory
  private readonly healCopies = new CounterFamily(this.registry, 'bslfs_heal_copies_total', 'Copies the healer dealt with, by outcome', ['outcome'])
  readonly healed = { copied: this.healCopies.series({ outcome: 'copied' }), present: this.healCopies.series({ outcome: 'present' }), dropped: this.healCopies.series({ outcome: 'dropped' }), failed: this.healCopies.series({ outcome: 'failed' }) }
  readonly healBytes = this.single('bslfs_heal_bytes_total', 'Bytes copied by the healer')
  readonly reclaimed = this.single('bslfs_reclaimed_objects_total', 'Objects of freed blocks deleted from their devices')
  readonly groupSize = new HistogramFamily<never>(this.registry, 'bslfs_group_commit_records', 'Block records committed together in one group', [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]).series({})
  readonly groupLatency = new HistogramFamily<never>(this.registry, 'bslfs_group_commit_seconds', 'Time of a group commit: device syncs and the directory batch').series({})
  readonly directoryTxn = new HistogramFamily<never>(this.registry, 'bslfs_directory_transaction_seconds', 'Time of a directory transaction, retries included').series({})

  constructor () {
    const m = this
    const gauge = (name: string, help: string, labelNames: string[], collect: (g: Gauge) => void | Promise<void>) =>
      new Gauge({ name, help, labelNames, registers: [this.registry], collect () { return collect(this) } })
    const counter = (name: string, help: string, labelNames: string[], collect: (c: Counter) => void) =>
      new Counter({ name, help, labelNames, registers: [this.registry], collect () { this.reset(); collect(this) } })
    gauge('bslfs_cache_bytes', 'Bytes held by the block cache', [], g => g.set(m.cacheBytes))
    gauge('bslfs_place_up', 'Whether a place (server:device) answers: 1 up, 0 down', ['place'], g => {
      g.reset()
      for (const p of m.view?.places() ?? []) g.set({ place: p.place }, p.up ? 1 : 0)
    })
    counter('bslfs_place_failovers_total', 'Reads that moved past a place (it failed or was slow)', ['place'], c => {
      for (const p of m.view?.places() ?? []) c.inc({ place: p.place }, p.failovers)
    })
    counter('bslfs_place_downs_total', 'Times a place went down', ['place'], c => {
      for (const p of m.view?.places() ?? []) c.inc({ place: p.place }, p.downs)
    })
    counter('bslfs_place_bad_copies_total', 'Copies a place held that were missing or corrupt, by fault', ['place', 'fault'], c => {
      for (const p of m.view?.places() ?? []) { c.inc({ place: p.place, fault: 'missing' }, p.missing); c.inc({ place: p.place, fault: 'corrupt' }, p.corrupt) }
    })
    gauge('bslfs_heal_backlog', 'Copies waiting in the heal queue, by mirror volume', ['volume'], async g => {
      g.reset()
      if (!m.view) return
      for (const [v, n] of await m.view.healBacklog()) g.set({ volume: String(v) }, n)
    })
    gauge('bslfs_reclaim_queue', 'Objects of freed blocks waiting to be deleted', [], async g => { g.set(m.view ? await m.view.reclaimQueue() : 0) })
    gauge('bslfs_dirty_bytes', 'Bytes written and not yet committed (held in memory)', [], g => g.set(m.view?.dirtyBytes() ?? 0))
    gauge('bslfs_device_space_bytes', 'Space of each device, by place and kind (total, available)', ['place', 'kind'], async g => {
      g.reset()
      if (!m.view) return
      for (const [place, s] of await m.view.space()) {
        if (s instanceof Error) continue
        g.set({ place, kind: 'total' }, s.total)
        g.set({ place, kind: 'available' }, s.available)
      }
    })
    counter('bslfs_directory_commits_total', 'Directory transactions committed (PostgreSQL)', [], c => c.inc(m.view?.directory()?.commits ?? 0))
    counter('bslfs_directory_retries_total', 'Directory transaction bodies run again, by cause (PostgreSQL)', ['cause'], c => {
      const d = m.view?.directory()
      c.inc({ cause: 'conflict' }, d?.conflictRetries ?? 0)
      c.inc({ cause: 'outage' }, d?.outageRetries ?? 0)
    })
  }

  private single (name: string, help: string): Count {
    return new CounterFamily<never>(this.registry, name, help, []).series({})
  }

  /** The counts of FUSE opcode `opcode`, named `name` (made on its first request). */
  fuseOp (opcode: number, name: string): FuseOpMetrics {
    let o = this.ops[opcode]
    if (!o) this.ops[opcode] = o = new FuseOpMetrics(this, name)
    return o
  }

  place (key: string): PlaceMetrics {
    let p = this.placeMetrics.get(key)
    if (!p) this.placeMetrics.set(key, p = new PlaceMetrics(this, key))
    return p
  }

  failover (volume: number): void {
    let c = this.failoversBy.get(volume)
    if (!c) this.failoversBy.set(volume, c = this.failovers.series({ volume: String(volume) }))
    c.n++
    this.totals.failovers++
  }

  hedged (volume: number): void {
    let c = this.hedgesBy.get(volume)
    if (!c) this.hedgesBy.set(volume, c = this.hedges.series({ volume: String(volume) }))
    c.n++
    this.totals.hedgedReads++
  }

  /** The running mount's state, for the gauges (given by the daemon once the mount is up). */
  watch (view: MountView | undefined): void {
    this.view = view
  }

  /** The process's own figures (RSS, heap, event-loop delay): only while /metrics is served. */
  private processMetrics = false
  withProcessMetrics (): void {
    if (this.processMetrics) return
    this.processMetrics = true
    collectDefaultMetrics({ register: this.registry })
  }

  /** The totals now, and the state a person watches. */
  async snapshot (): Promise<MountTotals & { time: number, cacheBytes: number, dirtyBytes: number, healBacklog: number, placesDown: number, rss: number }> {
    const t = this.totals
    t.cacheHits = this.cacheHits.n
    t.cacheMisses = this.cacheMisses.n
    t.cacheEvictions = this.cacheEvictions.n
    t.readAheadHits = this.readAheadHits.n
    t.bytesRead = this.fuseBytesRead.n
    t.bytesWritten = this.fuseBytesWritten.n
    t.healedCopies = this.healed.copied.n
    let ops = 0
    let seconds = 0
    for (const o of this.ops) if (o) { ops += o.requests.n; seconds += o.latency.sum }
    t.fuseOps = ops
    t.fuseSeconds = seconds
    const backlog = this.view ? [...(await this.view.healBacklog()).values()].reduce((a, b) => a + b, 0) : 0
    return {
      ...t,
      time: Date.now(),
      cacheBytes: this.cacheBytes,
      dirtyBytes: this.view?.dirtyBytes() ?? 0,
      healBacklog: backlog,
      placesDown: (this.view?.places() ?? []).filter(p => !p.up).length,
      rss: process.memoryUsage.rss()
    }
  }
}

/** The mount's metrics: one per process. */
export const mountMetrics = new MountMetrics()
