import { alignedBuffer } from './devices/object-io'

/** What O_DIRECT asks of a buffer's address (every disk's block divides it). */
export const ALIGN = 4096

/** How long a pool goes without a take before it lets its extra spares go. */
const IDLE_TRIM_MS = 1000

/**
 * Spare buffers of one size, for reuse: a fresh 1 MiB buffer per block
 * (written by the mount, or received by a block server) kept the garbage
 * collector busy for about a second per GiB. A buffer goes back only once
 * nothing refers to it any more.
 *
 * Buffers start on a 4096-byte boundary, so a local device writes them past
 * the page cache as they are; with `headroom`, that many bytes of the same
 * memory come before each (`withHeadroom`): a FUSE request read there puts a
 * write's data exactly on the buffer (see FuseSession).
 */
export class BufferPool {
  private readonly spare: Buffer[] = []
  /** Checks, while more than `idleKeep` spares are kept, whether the pool went idle. */
  private trimmer: NodeJS.Timeout | undefined
  private takenLately = false

  /**
   * Keeps up to `keep` spares while buffers are taken; once none has been for
   * a second, no more than `idleKeep`: the memory a burst needed goes back
   * for the next workload instead of staying with the pool.
   */
  constructor (readonly size: number, private readonly keep = 8, readonly headroom = 0, private readonly idleKeep = keep) {
    if (headroom % ALIGN !== 0) throw new RangeError(`headroom ${headroom} is not a multiple of ${ALIGN}`)
  }

  /** A buffer of `size` bytes; its content is arbitrary. */
  take (): Buffer {
    this.takenLately = true
    return this.spare.pop() ?? allocate(this.headroom + this.size).subarray(this.headroom)
  }

  /** Give back a buffer from `take` that nothing refers to any more. */
  give (b: Buffer): void {
    if (b.length !== this.size || this.spare.length >= this.keep) return
    this.spare.push(b)
    if (this.spare.length > this.idleKeep && this.trimmer === undefined) {
      this.trimmer = setInterval(() => this.trimWhenIdle(), IDLE_TRIM_MS)
      this.trimmer.unref()
    }
  }

  /** Spares kept now. */
  get spares (): number {
    return this.spare.length
  }

  private trimWhenIdle (): void {
    if (this.takenLately) {
      this.takenLately = false
      return
    }
    if (this.spare.length > this.idleKeep) this.spare.length = this.idleKeep
    clearInterval(this.trimmer)
    this.trimmer = undefined
  }

  /** The `headroom` bytes before `b` (from take) and `b` itself, as one buffer. */
  withHeadroom (b: Buffer): Buffer {
    return Buffer.from(b.buffer, b.byteOffset - this.headroom, this.headroom + b.length)
  }
}

let aligned = true

function allocate (n: number): Buffer {
  if (aligned) {
    try {
      return alignedBuffer(n)
    } catch {
      aligned = false // no addon: plain buffers (a put then copies them to aligned memory itself)
    }
  }
  return Buffer.allocUnsafeSlow(n)
}
