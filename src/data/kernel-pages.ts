import { createHash } from 'node:crypto'
import { objectIdOf } from '../bsl'
import { BlockRecord } from '../directory/records'

/** The kernel's caches of one mount: what is dropped there when another host changed a file. */
export interface KernelCache {
  /** Drop `ino`'s cached attributes and pages; resolves once the kernel has (FUSE_NOTIFY_INVAL_INODE). */
  drop (ino: number): Promise<void>
}

/** Files whose stamp is remembered, at most (a forgotten one is dropped from the kernel at its next open). */
const REMEMBERED = 65_536

/**
 * Which content a file's size and block map stand for: blocks are never
 * rewritten in place (a new write is a new object id), so two block maps
 * with the same object ids and lengths, and the same size, hold the same bytes.
 */
export function contentStamp (size: number, blocks: Map<number, BlockRecord>): string {
  const h = createHash('sha1')
  h.update(`${size}`)
  for (const i of [...blocks.keys()].sort((a, b) => a - b)) {
    const rec = blocks.get(i)!
    h.update(`|${i}:${objectIdOf(rec.bsl)}:${rec.length}`)
  }
  return h.digest('base64')
}

/**
 * On a shared filesystem, which content the kernel's page cache (and its
 * attributes) of each file may hold: what this mount served or wrote
 * through it. An open whose file holds other content drops the kernel's
 * pages and attributes before it returns (close-to-open across hosts: the
 * kernel keeps pages across opens, FOPEN_KEEP_CACHE, and would serve
 * another host's old bytes; its attributes, the old size). Unchanged files
 * keep their pages.
 */
export class KernelPages {
  private readonly stamps = new Map<number, string>()

  constructor (private readonly kernel: KernelCache) {}

  /** The kernel may hold `ino`'s content `stamp` from now on: drop what it holds first when that may be other. */
  async show (ino: number, stamp: string): Promise<void> {
    if (this.stamps.get(ino) === stamp) return
    this.stamps.delete(ino)
    await this.kernel.drop(ino)
    this.remember(ino, stamp)
  }

  /** The kernel's pages of `ino` hold `stamp` (this mount's own writes went through them). */
  remember (ino: number, stamp: string): void {
    this.stamps.delete(ino)
    if (this.stamps.size >= REMEMBERED) this.stamps.delete(this.stamps.keys().next().value!)
    this.stamps.set(ino, stamp)
  }
}
