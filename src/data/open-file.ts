import createDebug from 'debug'
import { objectIdOf } from '../bsl'
import { BlockChange, FileCommit, FilePatch } from '../directory/directory'
import { BlockRecord, Inode } from '../directory/records'
import { FsError } from '../errors'
import { Timespec } from '../posix/time'
import { CacheUse } from './block-cache'
import { GroupMember } from './group-commit'
import { contentStamp } from './kernel-pages'
import { FileReader, ReadableFile, spans } from './reader'
import type { FileServices } from './services'
import { FileWriter, WrittenFile } from './writer'

const log = createDebug('bslfs:data')

/** ext4's limit for 4 KiB blocks: 16 TiB. */
export const MAX_FILE_SIZE = 16 * 1024 ** 4

function noop (): void {}

/**
 * The data of one inode while it is open: the block map, the attributes
 * changed by writes, its reader and its writer (the dirty blocks). Every
 * handle on the inode shares it, so two descriptors see each other's writes
 * at once. A write's blocks are stored, then committed to the directory with
 * the file's size and times.
 */
export class OpenFile implements GroupMember, ReadableFile, WrittenFile {
  private pending: FilePatch = {}
  private pendingVersion = 0
  private committedVersion = 0
  /** The end of the last write or truncate queued (see serially). */
  private queue: Promise<void> = Promise.resolve()
  private readonly reader: FileReader
  private readonly writer: FileWriter

  constructor (readonly ino: number, private readonly services: FileServices, private blocks: Map<number, BlockRecord>, private committedSize: number) {
    this.reader = new FileReader(this, services.blocks, services.dir.blockSize)
    this.writer = new FileWriter(this, services)
  }

  private get bs (): number { return this.services.dir.blockSize }

  get size (): number { return this.pending.size ?? this.committedSize }

  /** The inode as the kernel should see it: committed attributes with this file's newer ones on top. */
  view (inode: Inode): Inode {
    return this.pendingVersion === this.committedVersion ? inode : { ...inode, ...this.pending }
  }

  private change (attrs: FilePatch): void {
    this.pending = { ...this.pending, ...attrs }
    this.pendingVersion++
  }

  markAccessed (atime: Timespec): void {
    this.change({ atime })
  }

  buffered (i: number): Buffer | undefined {
    return this.writer.buffered(i)
  }

  blockRecord (i: number): BlockRecord | undefined {
    return this.blocks.get(i)
  }

  async commitBlock (index: number, record: BlockRecord): Promise<void> {
    await this.services.group.add(this, { index, record })
    this.blocks.set(index, record)
  }

  /** Read into `buf` (see FileReader.read). */
  read (buf: Buffer, len: number, pos: number): Promise<number> {
    return this.reader.read(buf, len, pos)
  }

  /** Up to `len` bytes at `pos`, as pieces; EINTR once `signal` aborts (see FileReader.readPieces). */
  readPieces (len: number, pos: number, use: CacheUse, signal?: AbortSignal): Promise<Buffer[]> {
    return this.reader.readPieces(len, pos, use, signal)
  }

  /**
   * Run writes and truncates of this file one at a time, in arrival order: each
   * decides from the size the one before left (a write past the end zeroes the
   * old tail first). The kernel sends one file's writes together when it splits
   * a direct write into several requests.
   */
  private serially<T> (fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn)
    this.queue = run.then(noop, noop)
    return run
  }

  /**
   * `keepBuffer`, when given, lets the file keep `data` itself (a buffer of its
   * pool, whole): a write of exactly one whole block becomes the block without
   * a copy, and `keepBuffer` is called to say so (the caller must not reuse it).
   */
  write (data: Buffer, pos: number, now: Timespec, keepBuffer?: () => void): Promise<number> {
    return this.serially(() => this.writeNow(data, pos, now, keepBuffer))
  }

  private async writeNow (data: Buffer, pos: number, now: Timespec, keepBuffer?: () => void): Promise<number> {
    const writer = this.writer
    writer.throwPendingError()
    const end = pos + data.length
    if (end > MAX_FILE_SIZE) throw new FsError('EFBIG', `write past ${MAX_FILE_SIZE} bytes`)
    if (pos > this.size) await writer.zeroTail(this.size)
    if (keepBuffer && writer.canKeep(data, pos)) {
      keepBuffer()
      writer.keep(pos / this.bs, data)
    } else {
      for (const { index, offset, length, at } of spans(pos, end, this.bs)) {
        await writer.put(index, offset, data.subarray(at - pos, at - pos + length))
      }
    }
    this.change({ size: Math.max(this.size, end), mtime: now, ctime: now })
    writer.flushFilled(pos, end)
    if (this.services.dirty.over) {
      // Over the budget: this file's partly written blocks go too, and the writer waits for room.
      writer.flushAll()
      await this.services.dirty.room()
    }
    return data.length
  }

  /** What this file commits with `changes`: its attributes as they are now, and their version. */
  commitItem (changes: BlockChange[], dropFrom?: number): { commit: FileCommit, version: number } {
    return { commit: { ino: this.ino, changes, patch: { ...this.pending }, dropFrom }, version: this.pendingVersion }
  }

  /** `item` is in the directory, which now holds `inode`. */
  committed (item: { version: number }, inode: Inode): void {
    this.committedSize = inode.size
    if (item.version >= this.committedVersion) this.committedVersion = item.version
    if (this.committedVersion === this.pendingVersion) this.pending = {}
  }

  /** Commit block changes with the attributes pending now, in a batch of their own. */
  private async commit (changes: BlockChange[], dropFrom?: number, sync = false): Promise<void> {
    const item = this.commitItem(changes, dropFrom)
    this.committed(item, await this.services.dir.commitBlocks(this.ino, changes, item.commit.patch, { dropFrom, sync }))
  }

  /**
   * Nothing of this file waits to be written or committed. Until then the open
   * files keep it, so its inode outlives an unlink meanwhile (a group would fail
   * on a freed inode, and with it every other file in the batch).
   */
  get clean (): boolean {
    return this.writer.idle && !this.services.group.holds(this) && this.pendingVersion === this.committedVersion
  }

  /**
   * close(2): every dirty block is stored on its devices (a write error is
   * reported here), and the records and attributes go to the directory with
   * the next group commit, a few milliseconds later; until then the open files
   * keep this file, so every open sees its data. On a shared filesystem an
   * open on another host must see them too (close-to-open): there close waits
   * for the commit, which goes at once (with whatever else is queued).
   */
  async flush (): Promise<void> {
    if (this.services.dir.shared) return await this.flushNow()
    this.writer.flushAll()
    await this.writer.stored()
    this.writer.throwPendingError()
    if (!this.writer.flushingAny && this.pendingVersion !== this.committedVersion) {
      this.services.group.add(this, null).catch(err => log('attributes of inode %d not committed: %s', this.ino, (err as Error).message))
    }
  }

  /** Write and commit everything now (unmount): resolves once this file is clean, or fails with why not. */
  async flushNow (): Promise<void> {
    try {
      this.writer.flushAll()
      await this.writer.stored()
      this.writer.throwPendingError()
      await this.writer.settle()
      this.writer.throwPendingError()
      if (this.pendingVersion !== this.committedVersion) await this.commit([])
    } catch (err) {
      if (!this.goneElsewhere(err)) throw err
    }
  }

  /**
   * A commit failed because the inode is gone: another host removed it while
   * this mount had it open (cross-host open files are the next issue). Its
   * changes have nowhere to go: they are dropped, and the file is clean (it
   * must not hold up the unmount forever). A lost access time goes quietly;
   * lost writes are ESTALE, thrown. False when `err` is not that.
   */
  private goneElsewhere (err: unknown): boolean {
    if (!(err instanceof FsError && err.code === 'ENOENT') || !this.services.dir.shared) return false
    const lost = !this.writer.idle || Object.keys(this.pending).some(k => k !== 'atime')
    this.writer.truncate(0, 0)
    this.pending = {}
    this.committedVersion = this.pendingVersion
    log('inode %d was removed by another host: its changes here are dropped', this.ino)
    if (lost) throw new FsError('ESTALE', `inode ${this.ino} was removed by another host: its last writes here are lost`)
    return true
  }

  /** flush, then make it all durable: after this the bytes survive a crash. */
  async fsync (): Promise<void> {
    await this.flushNow()
    await this.services.dir.sync()
  }

  /** Attributes set through the kernel (chmod, chown, utimens) while the file is open: committed with its next commit. */
  setAttrs (patch: FilePatch): void {
    this.change(patch)
  }

  truncate (size: number, now: Timespec): Promise<void> {
    return this.serially(() => this.truncateNow(size, now))
  }

  private async truncateNow (size: number, now: Timespec): Promise<void> {
    if (size > MAX_FILE_SIZE) throw new FsError('EFBIG', `size over ${MAX_FILE_SIZE} bytes`)
    await this.writer.settle()
    this.writer.throwPendingError()
    if (size >= this.size) {
      await this.writer.zeroTail(this.size)
      this.change({ size, mtime: now, ctime: now })
      await this.commit([])
      return
    }
    const keep = Math.ceil(size / this.bs)
    this.writer.truncate(size, keep)
    this.change({ size, mtime: now, ctime: now })
    await this.commit([], keep)
    for (const i of [...this.blocks.keys()]) if (i >= keep) this.blocks.delete(i)
  }

  /** Which content the committed size and block map stand for (see contentStamp). */
  get stamp (): string { return contentStamp(this.committedSize, this.blocks) }

  /**
   * Another host changed the file: serve its size and block map from now on.
   * Only a clean file takes them (this mount's own writes waiting to commit
   * would be lost); false when it did not.
   */
  reload (size: number, blocks: Map<number, BlockRecord>): boolean {
    if (!this.clean) return false
    this.committedSize = size
    this.blocks = blocks
    return true
  }

  /** Blocks whose BSL changed in the directory but not their object (adopt): use the new BSLs. */
  adopt (changes: Map<number, BlockRecord>): void {
    for (const [i, rec] of changes) {
      const mine = this.blocks.get(i)
      if (mine && objectIdOf(mine.bsl) === objectIdOf(rec.bsl)) this.blocks.set(i, rec)
    }
  }
}
