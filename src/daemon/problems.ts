import type { StatusReport } from './admin'

/** A device with less than this share of its space available is nearly full. */
export const NEARLY_FULL = 0.1

/**
 * What is wrong, in a few lines a person reads first: places down, volumes
 * degraded or down, copies waiting to be healed, devices unavailable or
 * nearly full, servers that do not answer. Empty: nothing is.
 */
export function problemsOf (r: Omit<StatusReport, 'problems' | 'recentErrors'>): string[] {
  const out: string[] = []
  for (const p of r.places) {
    if (!p.up) out.push(`place ${p.place} is DOWN since ${p.downSince ?? '?'}${p.lastError ? `: ${p.lastError}` : ''}`)
  }
  for (const v of r.volumes) {
    if (v.health === 'down') out.push(`volume ${v.volume} is DOWN: no copy can be reached`)
    else if (v.health === 'degraded') {
      const down = v.mirrors?.filter(m => !m.up).map(m => `${m.volume} (${m.place})`) ?? []
      out.push(`volume ${v.volume} is degraded: ${[down.length ? `mirror ${down.join(', ')} down` : '', v.backlog ? `${v.backlog} copies to heal` : ''].filter(Boolean).join(', ')}`)
    }
  }
  if (r.healBacklog > 0) out.push(`heal backlog: ${r.healBacklog} copies wait to be healed (\`bslfs heal\` or the mount's healer)`)
  for (const d of r.devices) {
    if (d.error) out.push(`device ${d.place} is unavailable: ${d.error}`)
    else if (d.total && d.available !== undefined && d.available / d.total < NEARLY_FULL) {
      out.push(`device ${d.place} is nearly full: ${(100 * d.available / d.total).toFixed(1)}% available (${Math.floor(d.available / 1048576)} MiB of ${Math.floor(d.total / 1048576)} MiB)`)
    }
  }
  for (const s of r.servers) if (!s.reachable) out.push(`server ${s.name} (${s.url}) does not answer: ${s.error ?? ''}`)
  return out
}
