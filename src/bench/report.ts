/** Formatting for the benchmark's output: medians, numbers, sizes and aligned tables. */

export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

export const fmt = (x: number): string => x >= 100 ? x.toFixed(0) : x.toPrecision(3)

/** "median (min–max)" of some runs. */
export const cell = (xs: number[]): string => xs.length
  ? `${fmt(median(xs))} (${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))})`
  : '–'

export const fmtSize = (mib: number): string => mib % 1024 === 0 ? `${mib / 1024} GiB` : `${mib} MiB`

export const fmtRss = (kib: number | undefined): string => kib !== undefined ? `${(kib / 1024).toFixed(1)} MiB` : 'unknown'

export const fmtBytes = (n: number): string => n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / 1e6).toFixed(1)} MB`

/** Rows of cells as aligned columns: the first (and those in LEFT) left-aligned, the others right-aligned. */
export function table (rows: string[][], indent = '', left: number[] = [0]): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map(r => r[c].length)))
  const pad = (cell: string, c: number): string => left.includes(c) ? cell.padEnd(widths[c]) : cell.padStart(widths[c])
  return rows.map(r => indent + r.map(pad).join('   ').trimEnd()).join('\n')
}

/** A target to meet, printed beside a figure: "PASS (target ≤ 1.25)" or "MISS (…)". */
export function verdict (value: number | undefined, target: number, direction: '<' | '≤', what = ''): string {
  const goal = `target ${direction} ${target}${what}`
  if (value === undefined || !Number.isFinite(value)) return `?    (${goal})`
  const ok = direction === '<' ? value < target : value <= target
  return `${ok ? 'PASS' : 'MISS'} (${goal})`
}
