import { Counter, Registry } from 'prom-client'

/**
 * One labelled series of a counter, bumped in place on a hot path: prom-client's
 * own `inc(labels)` hashes the labels into a string on every call, this is an add.
 */
export interface Count { n: number }

/**
 * A counter family whose series are plain numbers the hot paths add to; a
 * scrape copies them into the prom-client Counter that carries the name, help
 * and exposition. Series are made once per label set and kept by the caller.
 */
export class CounterFamily<L extends string> {
  private readonly all: Array<{ labels: Record<L, string>, count: Count }> = []

  constructor (registry: Registry, name: string, help: string, labelNames: readonly L[]) {
    const all = this.all
    // eslint-disable-next-line no-new
    new Counter<L>({
      name,
      help,
      labelNames,
      registers: [registry],
      collect () {
        this.reset()
        for (const s of all) this.inc(s.labels, s.count.n)
      }
    })
  }

  series (labels: Record<L, string>): Count {
    const count = { n: 0 }
    this.all.push({ labels, count })
    return count
  }
}

/** Bucket bounds (seconds) of the latency histograms: 50 us to 10 s. */
export const LATENCY_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10]

/** One labelled series of a histogram: counts per bucket, bumped in place. */
export class HistogramSeries {
  readonly buckets: Float64Array
  sum = 0
  count = 0
  constructor (private readonly bounds: readonly number[]) {
    this.buckets = new Float64Array(bounds.length)
  }

  observe (v: number): void {
    const b = this.bounds
    let i = 0
    while (i < b.length && v > b[i]) i++
    if (i < b.length) this.buckets[i]++
    this.sum += v
    this.count++
  }
}

interface MetricValue { metricName: string, labels: Record<string, string | number>, value: number }

/**
 * A histogram family of HistogramSeries, registered with a prom-client
 * Registry as a metric of its own (prom-client's Histogram cannot take counts
 * made elsewhere): the registry writes the exposition, as for any histogram.
 */
export class HistogramFamily<L extends string> {
  readonly type = 'histogram'
  readonly aggregator = 'sum'
  private readonly all: Array<{ labels: Record<L, string>, s: HistogramSeries }> = []

  constructor (registry: Registry, readonly name: string, readonly help: string, private readonly bounds: readonly number[] = LATENCY_BUCKETS) {
    registry.registerMetric(this as never)
  }

  series (labels: Record<L, string>): HistogramSeries {
    const s = new HistogramSeries(this.bounds)
    this.all.push({ labels, s })
    return s
  }

  async get (): Promise<{ name: string, help: string, type: string, aggregator: string, values: MetricValue[] }> {
    const values: MetricValue[] = []
    for (const { labels, s } of this.all) {
      let acc = 0
      for (let i = 0; i < this.bounds.length; i++) {
        acc += s.buckets[i]
        values.push({ metricName: `${this.name}_bucket`, labels: { ...labels, le: this.bounds[i] }, value: acc })
      }
      values.push({ metricName: `${this.name}_bucket`, labels: { ...labels, le: '+Inf' }, value: s.count })
      values.push({ metricName: `${this.name}_sum`, labels, value: s.sum })
      values.push({ metricName: `${this.name}_count`, labels, value: s.count })
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values }
  }

  // What a Registry may call on a metric.
  reset (): void {
    for (const { s } of this.all) { s.buckets.fill(0); s.sum = 0; s.count = 0 }
  }
}
