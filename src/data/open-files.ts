import createDebug from 'debug'
import { Directory, OpenInodes } from '../directory/directory'
import { BlockRecord } from '../directory/records'
import { BlockStore } from './block-store'
import { OpenFile } from './open-file'
import { FileServices, FileServicesOptions } from './services'

const log = createDebug('bslfs:data')

interface OpenEntry { refs: number, file: Promise<OpenFile> }

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

  constructor (dir: Directory, store: BlockStore, opts: FileServicesOptions = {}) {
    // A closed file is let go once its last changes are in the directory.
    this.services = new FileServices(dir, store, {
      ...opts,
      settled: file => { this.forget(file).catch(err => log('inode %d: %s', file.ino, (err as Error).message)) }
    })
  }

  isOpen (ino: number): boolean {
    return this.entries.has(ino)
  }

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
    for (const e of [...this.entries.values()]) await (await e.file).flushNow()
  }

  get count (): number { return this.entries.size }
}
