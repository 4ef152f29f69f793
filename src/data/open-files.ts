import createDebug from 'debug'
import { Directory, OpenInodes } from '../directory/directory'
import { BlockRecord } from '../directory/records'
import { FsError } from '../errors'
import { BlockStore } from './block-store'
import { KernelCache, KernelPages, contentStamp } from './kernel-pages'
import { OpenFile } from './open-file'
import { FileServices, FileServicesOptions } from './services'

const log = createDebug('bslfs:data')

interface OpenEntry { refs: number, file: Promise<OpenFile> }

/**
 * An inode another host removed while this kernel still had a name for it:
 * ESTALE, on which the kernel looks the name up again (LOOKUP_REVAL) and opens what it names now.
 */
export function staleIfGone (err: unknown, ino: number): unknown {
  return err instanceof FsError && err.code === 'ENOENT' ? new FsError('ESTALE', `inode ${ino} was removed by another host`) : err
}

/**
 * The open files of a mount, by inode; the first open loads the block map, the
 * last close flushes. References are counted when taken, not once the file has
 * loaded: an open racing the release of the same inode (the kernel does not wait
 * for a release) must find the file the release is about to keep, never one it
 * has just let go of.
 */
export class OpenFiles implements OpenInodes {
  private readonly entries = new Map<number, OpenEntry>()
  private retrying = false
  /** What the open files share: block cache, budgets, buffers, group commit. */
  readonly services: FileServices
  /** On a shared filesystem: which content the kernel may cache of each file (see open). */
  private readonly kernelPages: KernelPages | undefined

  /** `kernel`: the mount's kernel caches, which an open on a shared filesystem drops when another host changed the file. */
  constructor (dir: Directory, store: BlockStore, opts: FileServicesOptions & { kernel?: KernelCache } = {}) {
    const { kernel, ...services } = opts
    // A closed file is let go once its last changes are in the directory.
    this.services = new FileServices(dir, store, {
      ...services,
      settled: file => { this.forget(file).catch(err => log('inode %d: %s', file.ino, (err as Error).message)) }
    })
    this.kernelPages = dir.shared && kernel ? new KernelPages(kernel) : undefined
  }

  isOpen (ino: number): boolean {
    return this.entries.has(ino)
  }

  /** The inodes open now (a re-registered session records them again). */
  openInodes (): number[] { return [...this.entries.keys()] }

  get (ino: number): Promise<OpenFile> | undefined {
    return this.entries.get(ino)?.file
  }

  /** Open `ino`; `created` says it was just made, so it has no blocks to load (a scan of the directory saved). */
  acquire (ino: number, created = false): Promise<OpenFile> {
    let e = this.entries.get(ino)
    if (!e) {
      const { dir } = this.services
      const entry: OpenEntry = {
        refs: 0,
        file: (async () => {
          // Shared: recorded as held before anything is read, so an unlink on another host from now on keeps it.
          await dir.holdOpen(ino)
          if (dir.shared && !created) {
            // Another host may have changed the file since this mount cached its inode.
            const { inode, blocks } = await dir.readFresh(ino)
            return new OpenFile(ino, this.services, blocks, inode.size)
          }
          const inode = await dir.getInode(ino)
          return new OpenFile(ino, this.services, created ? new Map() : await dir.getBlocks(ino), inode.size)
        })()
      }
      entry.file.catch(() => { if (this.entries.get(ino) === entry) this.entries.delete(ino) })
      this.entries.set(ino, entry)
      e = entry
    }
    const taken = e
    taken.refs++
    return taken.file.catch(err => { taken.refs--; throw err })
  }

  /**
   * open(2) of `ino`: acquire. On a shared filesystem, close-to-open across
   * hosts: what another host's close committed before this open began is what
   * this open reads. The file's size and block map come from the store (an
   * open file here takes them unless it has writes of its own to commit), and
   * the kernel's pages and attributes are dropped before the open returns
   * when they may hold other content.
   */
  async open (ino: number): Promise<OpenFile> {
    if (!this.kernelPages) return await this.acquire(ino)
    const loaded = this.entries.has(ino)
    const file = await this.acquire(ino).catch(err => { throw staleIfGone(err, ino) })
    try {
      if (loaded) {
        const { inode, blocks } = await this.services.dir.readFresh(ino)
        if (contentStamp(inode.size, blocks) !== file.stamp && file.reload(inode.size, blocks)) log('inode %d changed elsewhere: reloaded', ino)
      }
      await this.kernelPages.show(ino, file.stamp)
    } catch (err) {
      await this.release(file).catch(() => undefined)
      throw staleIfGone(err, ino)
    }
    return file
  }

  /**
   * A lock was taken on `ino` (fs/locks.ts): on a shared filesystem, what other
   * hosts committed before it is what this mount serves from now on, as at an open.
   */
  async revalidate (ino: number): Promise<void> {
    const f = this.get(ino)
    if (!f || !this.kernelPages) return
    const file = await f
    const { inode, blocks } = await this.services.dir.readFresh(ino)
    if (contentStamp(inode.size, blocks) !== file.stamp && file.reload(inode.size, blocks)) log('inode %d changed elsewhere: reloaded under a lock', ino)
    await this.kernelPages.show(ino, file.stamp)
  }

  /**
   * Drop one reference; the last one flushes. The file stays here until its
   * changes are committed (a file whose data could not be written, until
   * retryUnwritten succeeds); then an inode that lost all its links is freed.
   */
  async release (file: OpenFile): Promise<void> {
    const e = this.entries.get(file.ino)
    if (!e || --e.refs > 0) return
    await file.flush()
    await this.forget(file)
  }

  private async forget (file: OpenFile): Promise<void> {
    const e = this.entries.get(file.ino)
    if (!e || await e.file !== file) return
    // Checked after that await: an open may have come meanwhile.
    if (this.entries.get(file.ino) !== e || e.refs !== 0 || !file.clean) return
    this.entries.delete(file.ino)
    // The kernel's pages hold what this mount served and wrote: the file as it leaves.
    this.kernelPages?.remember(file.ino, file.stamp)
    await this.services.dir.releaseIfUnlinked(file.ino)
  }

  /** Try again to write closed files whose blocks could not be written (a device was down). */
  async retryUnwritten (): Promise<number> {
    if (this.retrying) return 0
    this.retrying = true
    let left = 0
    try {
      for (const e of [...this.entries.values()]) {
        if (e.refs > 0) continue
        const file = await e.file
        try {
          await file.flush()
          await this.forget(file)
        } catch (err) {
          left++
          log('inode %d still not written: %s', file.ino, (err as Error).message)
        }
      }
    } finally {
      this.retrying = false
    }
    return left
  }

  /** The directory gave blocks of `ino` new BSLs for the same objects (adopt). */
  async adopted (ino: number, changes: Map<number, BlockRecord>): Promise<void> {
    const f = this.get(ino)
    if (f) (await f).adopt(changes)
  }

  /** Flush every open file (unmount, shutdown). */
  async flushAll (): Promise<void> {
    for (const e of [...this.entries.values()]) {
      const file = await e.file
      // A file another host removed reports its lost writes once, and is clean after (see OpenFile.flushNow).
      await file.flushNow().catch(err => { if (!file.clean) throw err })
    }
  }

  get count (): number { return this.entries.size }
}
