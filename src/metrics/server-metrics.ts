import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import { LATENCY_BUCKETS } from './tally'

/** What the block server shows its metrics at a scrape. */
export interface ServerView {
  inFlight (): number
  bufferedBytes (): number
  bufferWaiting (): number
  /** Space of each device served, by name (an Error where it did not answer). */
  space (): Promise<Map<string, { total: number, available: number } | Error>>
}

/**
 * The block server's metrics, defined here and nowhere else: one Registry per
 * server (never prom-client's global one: a mount and servers may share a
 * process in tests). Labels are fixed sets: route (a kind of route, never a
 * path or object id), status, device, code, direction.
 */
export class ServerMetrics {
  readonly registry = new Registry()
  readonly requests = new Counter({ name: 'bslfs_server_requests_total', help: 'Requests answered, by route and status (stream: reads over the read stream)', labelNames: ['route', 'status'], registers: [this.registry] })
  readonly latency = new Histogram({ name: 'bslfs_server_request_seconds', help: 'Time from a request to its answer, by route', labelNames: ['route'], buckets: LATENCY_BUCKETS, registers: [this.registry] })
  readonly bytes = new Counter({ name: 'bslfs_server_bytes_total', help: 'Object bytes received (in) and sent (out)', labelNames: ['direction'], registers: [this.registry] })
  readonly budgetWaits = new Counter({ name: 'bslfs_server_budget_waits_total', help: 'Requests that waited for room in the memory budget (--max-buffered-bytes)', registers: [this.registry] })
  readonly deviceErrors = new Counter({ name: 'bslfs_server_device_errors_total', help: 'Device calls that failed, by device and POSIX code', labelNames: ['device', 'code'], registers: [this.registry] })

  constructor (view: ServerView) {
    const r = this.registry
    new Gauge({ name: 'bslfs_server_requests_in_flight', help: 'Requests being handled now', registers: [r], collect () { this.set(view.inFlight()) } }) // eslint-disable-line no-new
    new Gauge({ name: 'bslfs_server_buffered_bytes', help: 'Bytes of bodies and objects held in memory now', registers: [r], collect () { this.set(view.bufferedBytes()) } }) // eslint-disable-line no-new
    new Gauge({ name: 'bslfs_server_budget_waiting', help: 'Requests waiting for room in the memory budget now', registers: [r], collect () { this.set(view.bufferWaiting()) } }) // eslint-disable-line no-new
    // eslint-disable-next-line no-new
    new Gauge({
      name: 'bslfs_server_device_space_bytes',
      help: 'Space of each device served, by kind (total, available)',
      labelNames: ['device', 'kind'],
      registers: [r],
      async collect () {
        this.reset()
        for (const [device, s] of await view.space()) {
          if (s instanceof Error) continue
          this.set({ device, kind: 'total' }, s.total)
          this.set({ device, kind: 'available' }, s.available)
        }
      }
    })
  }

  private processMetrics = false
  /** The registry to scrape: with the process's own figures (RSS, heap, event-loop delay) from the first scrape on. */
  forScrape (): Registry {
    if (!this.processMetrics) {
      this.processMetrics = true
      collectDefaultMetrics({ register: this.registry })
    }
    return this.registry
  }

  /** One request answered. */
  answered (route: string, status: number, seconds: number, bytesIn: number, bytesOut: number): void {
    this.requests.inc({ route, status: String(status) })
    this.latency.observe({ route }, seconds)
    if (bytesIn > 0) this.bytes.inc({ direction: 'in' }, bytesIn)
    if (bytesOut > 0) this.bytes.inc({ direction: 'out' }, bytesOut)
  }
}
