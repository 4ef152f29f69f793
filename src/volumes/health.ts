import { performance } from 'node:perf_hooks'
import { CopyFault } from '../errors'

/** What bslfs knows about one place (server:device) that holds copies. */
export interface PlaceHealth {
  place: string
  up: boolean
  /** ISO time the place went down (while down). */
  downSince?: string
  /** Why it went down, or the last error it gave. */
  lastError?: string
  /** ISO time of lastError. */
  lastErrorAt?: string
  /** Smoothed time of a successful block read or write, in ms. */
  latencyMs: number
  /** Reads this place answered. */
  served: number
  /** Reads that moved on to another copy because this one failed or was too slow. */
  failovers: number
  missing: number
  corrupt: number
  /** Times it went down. */
  downs: number
}

/** The faults that say a copy itself is bad, so it is queued for heal; any other fault is not. */
export type BadCopyFault = 'missing' | 'corrupt'

export function isBadCopy (fault: CopyFault | undefined): fault is BadCopyFault {
  return fault === 'missing' || fault === 'corrupt'
}

const FIRST_PROBE_MS = 250
const MAX_PROBE_MS = 5000
/** A copy this much slower than the fastest (and slower by at least SLOW_MARGIN_MS) is tried after it. */
const SLOW_FACTOR = 3
const SLOW_MARGIN_MS = 20

interface Entry extends PlaceHealth {
  probeMs: number
  /** Latency is unknown until the first answer. */
  measured: boolean
  /** performance.now() when it last went down. */
  downAt?: number
}

/**
 * The health of places, in memory: which are down, how fast the others
 * answer, and what they did wrong. The volumes layer orders copies with it
 * and decides when to hedge; a down place comes back only when a background
 * probe succeeds, with a backoff from 250 ms to 5 s between probes.
 */
export class Health {
  private readonly places = new Map<string, Entry>()

  private entry (place: string): Entry {
    let e = this.places.get(place)
    if (!e) {
      e = { place, up: true, latencyMs: 0, served: 0, failovers: 0, missing: 0, corrupt: 0, downs: 0, probeMs: FIRST_PROBE_MS, measured: false }
      this.places.set(place, e)
    }
    return e
  }

  isUp (place: string): boolean {
    return this.places.get(place)?.up ?? true
  }

  /**
   * The places to try, best first: up places in the given (table) order,
   * except that one clearly slower than the fastest goes after the others.
   * Down places are left out.
   */
  order<T> (items: T[], placeOf: (item: T) => string): T[] {
    const up = items.filter(i => this.isUp(placeOf(i)))
    const lat = (i: T) => {
      const e = this.places.get(placeOf(i))
      return e?.measured ? e.latencyMs : 0
    }
    const best = Math.min(...up.map(lat))
    const slow = (i: T) => lat(i) > best * SLOW_FACTOR + SLOW_MARGIN_MS ? 1 : 0
    return up.map((item, at) => ({ item, at, slow: slow(item) }))
      .sort((a, b) => a.slow - b.slow || a.at - b.at)
      .map(x => x.item)
  }

  /** How long to wait for `place` before asking the next copy too: a few times its usual time, within bounds. */
  hedgeDelay (place: string, timeoutMs: number): number {
    const e = this.places.get(place)
    const usual = e?.measured ? e.latencyMs * 4 : 0
    return Math.min(Math.max(usual, 100), timeoutMs / 2)
  }

  /**
   * A call to `place` that took `ms` (ending now) succeeded. It brings a down place back only if it
   * started after the place went down: an answer already on its way when the place failed (bytes
   * in the socket's buffers) says nothing of the place now.
   */
  succeeded (place: string, ms: number, read: boolean): boolean {
    const e = this.entry(place)
    e.latencyMs = e.measured ? e.latencyMs * 0.8 + ms * 0.2 : ms
    e.measured = true
    if (read) e.served++
    if (!e.up && e.downAt !== undefined && performance.now() - ms < e.downAt) return false
    return this.markUp(e)
  }

  /** A read moved past this place (error, fault or too slow). */
  failedOver (place: string): void {
    this.entry(place).failovers++
  }

  /** A copy on this place is missing or bad (the place itself answered). */
  badCopy (place: string, fault: BadCopyFault, message: string): void {
    const e = this.entry(place)
    e[fault]++
    e.lastError = message
    e.lastErrorAt = new Date().toISOString()
  }

  /** The place did not answer: down until a probe says otherwise. Returns true when it was up until now. */
  markDown (place: string, message: string): boolean {
    const e = this.entry(place)
    e.lastError = message
    e.lastErrorAt = new Date().toISOString()
    if (!e.up) return false
    e.up = false
    e.downs++
    e.downSince = new Date().toISOString()
    e.downAt = performance.now()
    e.probeMs = FIRST_PROBE_MS
    return true
  }

  /** Wait before the next probe of a down place; each failed probe doubles it. */
  nextProbeDelay (place: string): number {
    const e = this.entry(place)
    const ms = e.probeMs
    e.probeMs = Math.min(e.probeMs * 2, MAX_PROBE_MS)
    return ms
  }

  /** Back up (a probe or a request succeeded). Returns true when it was down until now. */
  markUp (e: Entry | string): boolean {
    const entry = typeof e === 'string' ? this.entry(e) : e
    if (entry.up) return false
    entry.up = true
    delete entry.downSince
    delete entry.downAt
    return true
  }

  report (place: string): PlaceHealth {
    const { probeMs: _p, measured: _m, downAt: _d, ...out } = this.entry(place)
    return { ...out, latencyMs: Math.round(out.latencyMs * 10) / 10 }
  }
}
