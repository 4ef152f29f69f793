/**
 * Read-ahead, decided here for every layer that does some: the data layer's
 * fetches ahead of a sequential reader, the cache's spare buffers for them,
 * and what the kernel is asked to read ahead of its reader.
 */

/** How many blocks a sequential reader gets fetched ahead of its requests (8 MiB with the default block size). */
export const READ_AHEAD_BLOCKS = 8

/**
 * What the kernel reads ahead (bytes): its requests then come as whole 1 MiB
 * blocks, a few at a time (measured against 128 KiB and 16 MiB in
 * native-notes/read-path.md). The default of the mount's max_readahead=.
 */
export const KERNEL_READ_AHEAD_BYTES = 4 << 20

/**
 * A read starting this close to where the last one ended continues a stream
 * (the kernel's read-ahead may send a couple of requests out of order): it gets
 * whole blocks and read-ahead. Any other read fetches only the chunks it needs.
 */
const STREAM_WINDOW = 256 * 1024

/**
 * Tells one file's streams from its random reads. A sequential reader gets
 * the next blocks fetched ahead of its requests, so device latency overlaps the
 * kernel's reads instead of adding to each.
 */
export class ReadPattern {
  /** The block the last read ended in: a read that starts there or just after is sequential. */
  private lastBlock = -2
  /** Where the last read ended: a read near it continues a stream (STREAM_WINDOW). */
  private lastEnd = 0

  constructor (private readonly blockSize: number) {}

  /**
   * Note a read of [pos, end) of a file of `size` bytes: whether it continues a
   * stream, and the blocks to fetch ahead for it (none but once per block entered).
   */
  next (pos: number, end: number, size: number): { streaming: boolean, ahead: number[] } {
    const bs = this.blockSize
    const first = Math.floor(pos / bs)
    const last = Math.floor((end - 1) / bs)
    const streaming = Math.abs(pos - this.lastEnd) <= STREAM_WINDOW
    const sequential = streaming && (first === this.lastBlock || first === this.lastBlock + 1)
    const before = this.lastBlock
    this.lastBlock = last
    this.lastEnd = end
    const ahead: number[] = []
    if (!sequential || last === before) return { streaming, ahead } // a new block is entered: look further ahead once per block
    const lastOfFile = Math.floor((size - 1) / bs)
    for (let i = last + 1; i <= Math.min(last + READ_AHEAD_BLOCKS, lastOfFile); i++) ahead.push(i)
    return { streaming, ahead }
  }
}
