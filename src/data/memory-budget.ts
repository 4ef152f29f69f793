/** A counting semaphore: bounds the block writes in flight. */
export class Semaphore {
  private waiting: Array<() => void> = []
  constructor (private free: number) {}
  async take (): Promise<void> {
    if (this.free > 0) { this.free--; return }
    await new Promise<void>(resolve => this.waiting.push(resolve))
  }

  give (): void {
    const next = this.waiting.shift()
    if (next) next()
    else this.free++
  }
}

/**
 * The bytes of blocks written to and not yet committed (dirty, or on their
 * way), against a limit: a writer past it waits for room, so a slow device
 * throttles writers instead of the mount's memory growing.
 */
export class DirtyBudget {
  /** Bytes held now. */
  bytes = 0
  private roomWaiters: Array<() => void> = []

  constructor (readonly limit: number) {}

  get over (): boolean { return this.bytes > this.limit }

  /** `n` more bytes held in block buffers. */
  hold (n: number): void {
    this.bytes += n
  }

  /** `n` bytes let go: writers waiting for room go on once there is. */
  release (n: number): void {
    this.bytes -= n
    if (this.bytes <= this.limit && this.roomWaiters.length > 0) for (const w of this.roomWaiters.splice(0)) w()
  }

  /** Resolves once the bytes held are within the limit. */
  async room (): Promise<void> {
    while (this.bytes > this.limit) await new Promise<void>(resolve => this.roomWaiters.push(resolve))
  }
}
