import { BufferPool } from '../buffer-pool'
import { Directory } from '../directory/directory'
import { BlockStore, CachedBlockStore } from './block-store'
import { GroupCommit } from './group-commit'
import { DirtyBudget, Semaphore } from './memory-budget'
import type { OpenFile } from './open-file'

export interface FileServicesOptions {
  /** The block cache's budget (bytes). */
  cacheBytes?: number
  /** Bytes of dirty blocks past which writers wait. */
  dirtyBytes?: number
  /** Block writes in flight at most. */
  parallelWrites?: number
}

/**
 * What every open file of a mount shares: the directory, the block store and
 * its cache, the memory budgets, the buffers of dirty blocks, and the group commit.
 */
export class FileServices {
  readonly blocks: CachedBlockStore
  readonly dirty: DirtyBudget
  readonly writers: Semaphore
  /** Buffers for dirty blocks, reused once their write is stored. */
  readonly buffers: BufferPool
  /** Block records (and attributes) on their way to the directory. */
  readonly group: GroupCommit<OpenFile>

  /** `settled`: told when a file's changes reached the directory (the open files let go of a closed one then). */
  constructor (readonly dir: Directory, readonly store: BlockStore, opts: FileServicesOptions & { settled?: (file: OpenFile) => void } = {}) {
    // With the dirty budget and the read-ahead, the mount stays under 250 MiB RSS (native-notes/memory.md).
    this.blocks = new CachedBlockStore(store, dir.blockSize, opts.cacheBytes ?? 24 * 1024 * 1024)
    this.writers = new Semaphore(opts.parallelWrites ?? 8)
    this.dirty = new DirtyBudget(opts.dirtyBytes ?? 32 * 1024 * 1024)
    // 8 spares; 4 KiB before each buffer: the FUSE session reads a write request there (see FuseSession.take).
    this.buffers = new BufferPool(dir.blockSize, 8, 4096)
    this.group = new GroupCommit<OpenFile>(store, dir, opts.settled ?? (() => {}))
  }
}
