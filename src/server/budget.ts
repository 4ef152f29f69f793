/**
 * A bound on the bytes the server holds in memory at once (request bodies
 * being received, objects being sent). A request that would exceed it waits
 * its turn (first come, first served) instead of failing; a request larger
 * than the whole budget runs alone.
 */
export class ByteBudget {
  private used = 0
  private readonly queue: Array<{ n: number, grant: () => void }> = []

  constructor (readonly capacity: number) {}

  get inUse (): number {
    return this.used
  }

  get waiting (): number {
    return this.queue.length
  }

  /**
   * Resolves with a release function once `n` bytes are available. Rejects
   * (and gives up its place) when `signal` aborts first, e.g. because the
   * client went away while waiting.
   */
  async reserve (n: number, signal?: AbortSignal): Promise<() => void> {
    const take = Math.min(Math.max(0, n), this.capacity)
    if (signal?.aborted) throw new Error('aborted')
    const now = this.tryReserve(n)
    if (now) return now
    await new Promise<void>((resolve, reject) => {
      const entry = {
        n: take,
        grant: () => {
          signal?.removeEventListener('abort', onAbort)
          resolve()
        }
      }
      const onAbort = (): void => {
        const i = this.queue.indexOf(entry)
        if (i >= 0) this.queue.splice(i, 1)
        this.pump()
        reject(new Error('aborted'))
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      this.queue.push(entry)
    })
    return this.releaser(take)
  }

  /** The release function when `n` bytes are available at once (nobody waits before), else undefined. */
  tryReserve (n: number): (() => void) | undefined {
    const take = Math.min(Math.max(0, n), this.capacity)
    if (this.queue.length > 0 || this.used + take > this.capacity) return undefined
    this.used += take
    return this.releaser(take)
  }

  private releaser (take: number): () => void {
    let done = false
    return () => {
      if (done) return
      done = true
      this.used -= take
      this.pump()
    }
  }

  private pump (): void {
    while (this.queue.length > 0 && this.used + this.queue[0].n <= this.capacity) {
      const next = this.queue.shift()!
      this.used += next.n
      next.grant()
    }
  }
}
