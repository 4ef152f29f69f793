/** A time as the kernel passes it: seconds and nanoseconds since the epoch. */
export interface Timespec { sec: number, nsec: number }

export function nowTimespec (): Timespec {
  // performance.timeOrigin + now() has sub-millisecond precision; Date.now() would round to ms.
  const ms = performance.timeOrigin + performance.now()
  const sec = Math.floor(ms / 1000)
  return { sec, nsec: Math.min(999_999_999, Math.floor((ms - sec * 1000) * 1e6)) }
}
