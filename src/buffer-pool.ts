/**
 * Spare buffers of one size, for reuse: a fresh 1 MiB buffer per block
 * (written by the mount, or received by a block server) kept the garbage
 * collector busy for about a second per GiB. A buffer goes back only once
 * nothing refers to it any more.
 */
export class BufferPool {
  private readonly spare: Buffer[] = []

  constructor (readonly size: number, private readonly keep = 8) {}

  /** A buffer of `size` bytes; its content is arbitrary. */
  take (): Buffer {
    return this.spare.pop() ?? Buffer.allocUnsafeSlow(this.size)
  }

  /** Give back a buffer from `take` that nothing refers to any more. */
  give (b: Buffer): void {
    if (b.length === this.size && this.spare.length < this.keep) this.spare.push(b)
  }
}
