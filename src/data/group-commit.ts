import { BlockChange, FileCommit } from '../directory/directory'
import { Inode } from '../directory/records'
import { mountMetrics } from '../metrics/mount-metrics'

/** How long the first record of a group waits for others (ms): ext4 waits 5 s, a sequential writer fills a group in a few ms. */
const GROUP_DELAY_MS = 5

/** What a file in a group gives it and is told. */
export interface GroupMember {
  /** What the file commits with `changes`: its attributes as they are now, and their version. */
  commitItem (changes: BlockChange[]): { commit: FileCommit, version: number }
  /** `item` is in the directory, which now holds `inode`. */
  committed (item: { version: number }, inode: Inode): void
}

/** What is asked of the group commit from outside the data layer (remap, before it scans the block maps). */
export interface PendingRecords {
  /** Commit every block record (and attributes) queued now, without waiting for more. */
  commitNow (): Promise<void>
}

interface Queued<M> { file: M, change: BlockChange | null, resolve: () => void, reject: (err: unknown) => void }

/**
 * Records of blocks whose bytes are stored but not yet durable, committed
 * many at a time: one sync of every device written, then one directory
 * batch for every file. A record never reaches the directory before its bytes
 * are durable (DESIGN: blocks are written before they are referenced), and a
 * closed file costs neither a flush of the disk nor a batch of its own.
 */
export class GroupCommit<M extends GroupMember> implements PendingRecords {
  private queue: Array<Queued<M>> = []
  private timer: NodeJS.Timeout | undefined
  private running: Promise<void> | undefined
  /** Changes of each file waiting in a group, or in one under way. */
  private readonly queued = new Map<M, number>()

  /**
   * `settled` is told of each file of a group once the group's writes have
   * wound up (the open files let go of a closed one then).
   */
  constructor (
    private readonly devices: { sync (): Promise<void> },
    private readonly dir: { commitFiles (files: FileCommit[]): Promise<Inode[]> },
    private readonly settled: (file: M) => void
  ) {}

  /** Whether changes of `file` wait in a group, or in one under way. */
  holds (file: M): boolean {
    return this.queued.has(file)
  }

  /** Commit `change` (null: only the file's attributes) with the next group; resolves once it is in the directory. */
  add (file: M, change: BlockChange | null): Promise<void> {
    this.queued.set(file, (this.queued.get(file) ?? 0) + 1)
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ file, change, resolve, reject })
      this.schedule(GROUP_DELAY_MS)
    }).finally(() => {
      const n = (this.queued.get(file) ?? 1) - 1
      if (n > 0) this.queued.set(file, n)
      else this.queued.delete(file)
    })
  }

  /** Commit everything queued without waiting for more (fsync, truncate, unmount, remap). */
  async commitNow (): Promise<void> {
    while (this.running) await this.running
    clearTimeout(this.timer)
    this.timer = undefined
    if (this.queue.length > 0) await this.run()
  }

  private schedule (ms: number): void {
    if (this.timer || this.running) return
    this.timer = setTimeout(() => {
      this.timer = undefined
      void this.run()
    }, ms)
  }

  private run (): Promise<void> {
    const batch = this.queue.splice(0)
    const work = this.commit(batch)
    this.running = work
    return work.finally(() => {
      this.running = undefined
      // What came while this group ran goes with the next one, at once.
      if (this.queue.length > 0) this.schedule(0)
    })
  }

  private async commit (batch: Array<Queued<M>>): Promise<void> {
    if (batch.length === 0) return
    const byFile = new Map<M, BlockChange[]>()
    for (const q of batch) {
      let changes = byFile.get(q.file)
      if (!changes) byFile.set(q.file, changes = [])
      if (q.change) changes.push(q.change)
    }
    const started = performance.now()
    try {
      await this.devices.sync()
    } catch (err) {
      for (const q of batch) q.reject(err)
      return
    }
    const files = [...byFile.keys()]
    const items = files.map(f => f.commitItem(byFile.get(f) as BlockChange[]))
    const failed = new Map<M, unknown>()
    try {
      const inodes = await this.dir.commitFiles(items.map(it => it.commit))
      files.forEach((f, k) => f.committed(items[k], inodes[k]))
      mountMetrics.groupSize.observe(batch.length)
      mountMetrics.groupLatency.observe((performance.now() - started) / 1000)
    } catch (err) {
      // One file's failure (a bad record of its own) must not become every other file's: each
      // then goes in a batch of its own, and only the ones that fail again report it.
      if (files.length === 1) failed.set(files[0], err)
      else {
        for (const [k, f] of files.entries()) {
          try {
            f.committed(items[k], (await this.dir.commitFiles([items[k].commit]))[0])
          } catch (own) {
            failed.set(f, own)
          }
        }
      }
    }
    for (const q of batch) {
      if (failed.has(q.file)) q.reject(failed.get(q.file))
      else q.resolve()
    }
    // Once the writes waiting on this group have wound up (their promises run first).
    setImmediate(() => { for (const f of byFile.keys()) this.settled(f) })
  }
}
