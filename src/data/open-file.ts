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
import { copyObject, rewriteZeroed } from './block-copy'
import { cover, seek } from './ranges'

const log = createDebug('bslfs:data')

/** ext4's limit for 4 KiB blocks: 16 TiB. */
export const MAX_FILE_SIZE = 16 * 1024 ** 4

/** Block records a copy_file_range commits per directory batch (their objects copied in parallel). */
const COPY_BATCH = 64

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
    if (this.pendingVersion === this.committedVersion) return inode
    // Blocks in memory that the block map does not hold yet count in st_blocks already (as ext4's delayed allocation).
    let unmapped = 0
    for (const i of this.writer.bufferedIndexes()) if (!this.blocks.has(i) && i * this.bs < this.size) unmapped++
    const stored = unmapped > 0 ? { stored: (inode.stored ?? 0) + unmapped * this.bs } : {}
    return { ...inode, ...this.pending, ...stored }
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

  /**
   * Every byte of this file stored and committed (dirty blocks flushed), so
   * that the block map in memory is the directory's: what a change of the
   * map itself (punch, copy of records) starts from.
   */
  private async settleAll (): Promise<void> {
    this.writer.flushAll()
    await this.writer.settle()
    this.writer.throwPendingError()
  }

  /** Block indexes that hold data (a record or bytes in memory), ascending. */
  dataIndexes (): number[] {
    const set = new Set(this.blocks.keys())
    for (const i of this.writer.bufferedIndexes()) set.add(i)
    return [...set].sort((a, b) => a - b)
  }

  /** lseek SEEK_DATA / SEEK_HOLE (see ranges.ts). */
  seek (whence: number, pos: number): number {
    return seek(whence, pos, this.size, this.bs, this.dataIndexes())
  }

  /** Bytes of [pos, pos + len) that lie in blocks without data: what a preallocation would need. */
  holeBytes (pos: number, len: number): number {
    const first = Math.floor(pos / this.bs)
    const last = Math.ceil((pos + len) / this.bs)
    let have = 0
    for (const i of this.dataIndexes()) if (i >= first && i < last) have++
    return Math.max(0, (last - first - have) * this.bs)
  }

  /**
   * fallocate without KEEP_SIZE: the size grows to `end` (the new bytes read
   * as zeros; no block is made, space is checked by the caller, not reserved).
   */
  extend (end: number, now: Timespec): Promise<void> {
    return this.serially(async () => {
      if (end > MAX_FILE_SIZE) throw new FsError('EFBIG', `size over ${MAX_FILE_SIZE} bytes`)
      if (end <= this.size) return
      await this.writer.zeroTail(this.size)
      this.change({ size: end, mtime: now, ctime: now })
      await this.flushNow()
    })
  }

  /**
   * Zero [pos, pos + len) (PUNCH_HOLE, ZERO_RANGE): blocks inside it whole
   * leave the block map (their objects go to the reclaim queue in the same
   * batch), the partly covered ones are rewritten as new objects with the
   * range zeroed. One directory batch: a crash leaves the old map or the new.
   */
  punch (pos: number, len: number, now: Timespec): Promise<void> {
    return this.serially(async () => {
      await this.settleAll()
      const stop = Math.min(pos + len, this.size)
      const changes: BlockChange[] = []
      if (stop > pos) {
        const { first, end, partial } = cover(pos, stop - pos, this.bs)
        for (const i of this.blocks.keys()) if (i >= first && i < end) changes.push({ index: i, record: null })
        for (const p of partial) {
          const rec = this.blocks.get(p.index)
          if (!rec || p.from >= rec.length) continue
          // The block's bytes past the range end lie past the file's end: nothing of it stays.
          if (p.from === 0 && (p.to >= rec.length || p.index * this.bs + p.to >= this.size)) changes.push({ index: p.index, record: null })
          else changes.push({ index: p.index, record: await rewriteZeroed(this.services, rec, p.index, p.from, p.to) })
        }
      }
      if (changes.some(c => c.record)) await this.services.store.sync()
      this.change({ mtime: now, ctime: now })
      await this.commit(changes, undefined, true)
      this.applyChanges(changes)
    })
  }

  /**
   * copy_file_range from `src` into this file, inside the daemon: blocks both
   * sides hold whole at the same place in a block are copied as objects (a
   * new object each, never shared); holes stay holes; the rest goes as bytes.
   * Returns the bytes copied (fewer at the end of `src`).
   */
  copyFrom (src: OpenFile, srcPos: number, dstPos: number, len: number, now: Timespec): Promise<number> {
    return this.serially(async () => {
      // Not through src's queue: two copies crossing would wait on each other. A write to src
      // meanwhile leaves bytes in memory, which the loop copies as bytes.
      if (src !== this) await src.settleAll()
      len = Math.max(0, Math.min(len, src.size - srcPos))
      if (len === 0) return 0
      if (dstPos + len > MAX_FILE_SIZE) throw new FsError('EFBIG', `copy past ${MAX_FILE_SIZE} bytes`)
      if (dstPos > this.size) await this.writer.zeroTail(this.size)
      await this.settleAll()
      const bs = this.bs
      let done = 0
      if (srcPos % bs === dstPos % bs) {
        const head = Math.min(len, (bs - (srcPos % bs)) % bs)
        if (head > 0) done += await this.copyBytes(src, srcPos, dstPos, head, now)
        // src's short last block may go as a record when it ends this file too.
        const tailOk = srcPos + len === src.size && dstPos + len >= this.size
        let changes: BlockChange[] = []
        let jobs: Array<Promise<void>> = []
        let upTo = done
        const commitBatch = async (): Promise<void> => {
          await Promise.all(jobs)
          // The copies durable before their records are committed (DESIGN: written before referenced).
          if (jobs.length > 0) await this.services.store.sync()
          this.change({ size: Math.max(this.size, dstPos + upTo), mtime: now, ctime: now })
          await this.commit(changes, undefined, true)
          this.applyChanges(changes)
          changes = []
          jobs = []
        }
        while (done < len && (len - done >= bs || tailOk)) {
          const n = Math.min(bs, len - done)
          const i = (srcPos + done) / bs
          const j = (dstPos + done) / bs
          if (src.buffered(i)) {
            await commitBatch()
            done += await this.copyBytes(src, srcPos + done, dstPos + done, n, now)
            upTo = done
            continue
          }
          const rec = src.blocks.get(i)
          const change: BlockChange = { index: j, record: null }
          if (rec) jobs.push(copyObject(this.services, rec, j).then(r => { change.record = r }))
          if (rec || this.blocks.has(j)) changes.push(change)
          done += n
          upTo = done
          if (changes.length >= COPY_BATCH) await commitBatch()
        }
        await commitBatch()
      }
      if (done < len) done += await this.copyBytes(src, srcPos + done, dstPos + done, len - done, now)
      return done
    })
  }

  /** Copy through memory, block by block (inside the write queue: calls writeNow). */
  private async copyBytes (src: OpenFile, srcPos: number, dstPos: number, len: number, now: Timespec): Promise<number> {
    const buf = Buffer.alloc(Math.min(len, this.bs))
    let done = 0
    while (done < len) {
      const want = Math.min(buf.length, len - done)
      const n = await src.read(buf, want, srcPos + done)
      if (n <= 0) break
      await this.writeNow(buf.subarray(0, n), dstPos + done, now)
      done += n
    }
    return done
  }

  /** Committed block changes into the map in memory. */
  private applyChanges (changes: BlockChange[]): void {
    for (const c of changes) {
      if (c.record) this.blocks.set(c.index, c.record)
      else this.blocks.delete(c.index)
    }
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
