// Reading a /metrics exposition the way Prometheus would: parsed by a Prometheus text parser (a
// malformed exposition throws), then looked up by metric name and labels.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const parsePrometheusTextFormat = require('parse-prometheus-text-format') as (text: string) => Family[]

export interface Sample { value?: string, labels?: Record<string, string>, buckets?: Record<string, string>, count?: string, sum?: string }
export interface Family { name: string, help: string, type: string, metrics: Sample[] }

export class Exposition {
  readonly families: Map<string, Family>
  constructor (readonly text: string) {
    const parsed = parsePrometheusTextFormat(text)
    this.families = new Map(parsed.map(f => [f.name, f]))
    // The parser merges a histogram's series into one (prom2json's shape keeps `le` only): parse the
    // text again with histograms read as untyped, so _bucket, _sum and _count come with their
    // labels, and put each labelled series back together.
    const histograms = parsed.filter(f => f.type === 'HISTOGRAM')
    if (histograms.length === 0) return
    // (Each series' _bucket, _sum and _count lines come as families of their own, one after the other.)
    const untyped = new Map<string, Sample[]>()
    for (const f of parsePrometheusTextFormat(text.replace(/^# TYPE (\S+) histogram$/gm, '# TYPE $1 untyped'))) {
      untyped.set(f.name, [...(untyped.get(f.name) ?? []), ...f.metrics])
    }
    const key = (labels: Record<string, string> = {}) => JSON.stringify(Object.entries(labels).filter(([k]) => k !== 'le').sort())
    for (const h of histograms) {
      const series = new Map<string, Sample>()
      const of = (labels?: Record<string, string>): Sample => {
        const k = key(labels)
        let s = series.get(k)
        if (!s) {
          const { le: _le, ...rest } = labels ?? {}
          series.set(k, s = { labels: rest, buckets: {} })
        }
        return s
      }
      for (const b of untyped.get(`${h.name}_bucket`) ?? []) of(b.labels).buckets![b.labels?.le ?? '?'] = b.value ?? ''
      for (const c of untyped.get(`${h.name}_count`) ?? []) of(c.labels).count = c.value
      for (const c of untyped.get(`${h.name}_sum`) ?? []) of(c.labels).sum = c.value
      h.metrics = [...series.values()]
    }
  }

  has (name: string): boolean {
    return this.families.has(name)
  }

  /** The samples of `name` whose labels include `labels`. */
  samples (name: string, labels: Record<string, string> = {}): Sample[] {
    const f = this.families.get(name)
    if (!f) throw new Error(`no metric ${name} in the exposition (${[...this.families.keys()].filter(n => n.startsWith('bslfs_')).join(', ')})`)
    return f.metrics.filter(s => Object.entries(labels).every(([k, v]) => s.labels?.[k] === v))
  }

  /** The sum of the values (a histogram: of the counts) of `name`'s samples with `labels`; 0 when none. */
  sum (name: string, labels: Record<string, string> = {}): number {
    return this.samples(name, labels).reduce((a, s) => a + Number(s.value ?? s.count ?? 0), 0)
  }

  /** The one sample of `name` with exactly these labels (undefined when there is none). */
  value (name: string, labels: Record<string, string> = {}): number | undefined {
    const s = this.samples(name, labels).filter(s => Object.keys(s.labels ?? {}).length === Object.keys(labels).length)
    if (s.length > 1) throw new Error(`${name} ${JSON.stringify(labels)}: ${s.length} samples`)
    return s.length ? Number(s[0].value ?? s[0].count) : undefined
  }
}

/** GET `url` (a /metrics) with `headers`: the status, and the parsed exposition when 200. */
export async function scrape (url: string, headers: Record<string, string> = {}): Promise<{ status: number, exposition?: Exposition, type?: string | null }> {
  const res = await fetch(url, { headers })
  const text = await res.text()
  return { status: res.status, type: res.headers.get('content-type'), ...(res.status === 200 ? { exposition: new Exposition(text) } : {}) }
}
