import createDebug from 'debug'
import { randomUUID } from 'node:crypto'
import { BSL, objectIdOf } from '../bsl'
import { FsError } from '../errors'
import { DeviceRow, MirrorRow, Place, ServerRow, Tables, VolumeRow } from '../volumes/tables'
import { Repair } from '../volumes/volumes'
import { KvReader, KvStore, KvTxn } from './kv'
import {
  BlockRecord, Inode, ROOT_INO, Timespec, corrupt, decodeBlock, decodeEntry, decodeInode, decodeJSON,
  encodeBlock, encodeEntry, encodeInode, encodeJSON, keyNumber, keys
} from './records'

const log = createDebug('bslfs:directory')

/** Files of up to this many blocks are freed by point reads of their block records, not a scan. */
const POINT_READ_BLOCKS = 16

export const S_IFMT = 0o170000
const S_IFDIR = 0o040000
const S_IFREG = 0o100000
const S_ISGID = 0o2000
export const isDir = (mode: number): boolean => (mode & S_IFMT) === S_IFDIR
export const isRegular = (mode: number): boolean => (mode & S_IFMT) === S_IFREG

export const NAME_MAX = 255

export interface DirectoryConfig {
  format: 'bslfs-directory'
  version: 1
  uuid: string
  blockSize: number
  created: string
}

export interface Usage {
  /** Inodes, the root included. */
  files: number
  /** Bytes stored in blocks (one copy). */
  bytes: number
}

export interface DirEntry { name: string, ino: number, mode: number }

/** What to create: the caller (the FUSE layer) has applied umask and knows who asks. */
export interface NewNode {
  mode: number
  uid: number
  gid: number
  rdev?: number
  target?: string
}

/** A change to one block of a file: a new record, or null to drop the block (a hole). */
export interface BlockChange { index: number, record: BlockRecord | null }

/** Attributes a file's writes and changes through an open handle set. */
export type FilePatch = Partial<Pick<Inode, 'size' | 'mtime' | 'ctime' | 'atime' | 'mode' | 'uid' | 'gid'>>

/** What one file commits: block changes (every block at or past `dropFrom` dropped first) and attributes. */
export interface FileCommit { ino: number, changes: BlockChange[], patch: FilePatch, dropFrom?: number }

const INO_RESERVE = 1024
const OBJECT_RESERVE = 65536
const CACHE_LIMIT = 250_000

export function nowTimespec (): Timespec {
  // performance.timeOrigin + now() has sub-millisecond precision; Date.now() would round to ms.
  const ms = performance.timeOrigin + performance.now()
  const sec = Math.floor(ms / 1000)
  return { sec, nsec: Math.min(999_999_999, Math.floor((ms - sec * 1000) * 1e6)) }
}

function checkName (name: string): void {
  if (name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0')) {
    throw new FsError('EINVAL', `bad name ${JSON.stringify(name)}`)
  }
  if (Buffer.byteLength(name, 'utf8') > NAME_MAX) throw new FsError('ENAMETOOLONG', `name over ${NAME_MAX} bytes`)
}

/** A Map that forgets its oldest entries past a limit: the caches must not grow without bound. */
class BoundedMap<K, V> extends Map<K, V> {
  constructor (private readonly limit: number) { super() }
  override set (k: K, v: V): this {
    if (this.size >= this.limit && !this.has(k)) {
      const oldest = this.keys().next()
      if (!oldest.done) this.delete(oldest.value)
    }
    return super.set(k, v)
  }
}

/** Which inodes a handle holds open (the data layer's open files): an open inode outlives its last link. */
export interface OpenInodes { isOpen (ino: number): boolean }

/** For the CLI's offline commands: no handle is open. */
export const NOTHING_OPEN: OpenInodes = { isOpen: () => false }

/**
 * The namespace: inodes, entries, block maps, xattrs and the tables, on a
 * KvStore. Every change is one transaction (one atomic batch); caches of
 * inodes and entries in front are updated only when a batch commits, so they
 * never serve a stale entry.
 */
export class Directory {
  private readonly inodes = new BoundedMap<number, Inode>(CACHE_LIMIT)
  /** `${parent}/${name}` → ino, or 0 when known absent. */
  private readonly dentries = new BoundedMap<string, number>(CACHE_LIMIT)
  private nextIno = 0
  private inoLimit = 0
  private nextObject = 0n
  private objectLimit = 0n
  private usageNow: Usage = { files: 0, bytes: 0 }
  /** Counts commits that changed cached state: a read that raced one must not cache what it read. */
  private commits = 0
  /**
   * Inodes that may have extended attributes (loaded at open, added on each set): any other
   * inode has none, so reading or freeing it needs no xattr lookup (`ls -l` asks for one per file).
   */
  readonly withXattrs = new Set<number>()
  private readonly reader: NamespaceReader

  private constructor (readonly kv: KvStore, readonly config: DirectoryConfig, private readonly openInodes: OpenInodes) {
    this.reader = new NamespaceReader(kv)
  }

  /** Whether a handle holds `ino` open. */
  isOpen (ino: number): boolean { return this.openInodes.isOpen(ino) }

  static async create (kv: KvStore, opts: { blockSize: number, root: { uid: number, gid: number, mode?: number }, openInodes?: OpenInodes }): Promise<Directory> {
    const existing = await kv.get(keys.meta('config'))
    if (existing) throw new FsError('EEXIST', 'the directory already holds a filesystem')
    const config: DirectoryConfig = {
      format: 'bslfs-directory', version: 1, uuid: randomUUID(), blockSize: opts.blockSize, created: new Date().toISOString()
    }
    const t = nowTimespec()
    const root: Inode = {
      ino: ROOT_INO, mode: S_IFDIR | (opts.root.mode ?? 0o755), uid: opts.root.uid, gid: opts.root.gid,
      nlink: 2, size: 0, rdev: 0, atime: t, mtime: t, ctime: t, parent: ROOT_INO
    }
    await kv.txn(tx => {
      tx.put(keys.meta('config'), encodeJSON(config))
      tx.put(keys.meta('ino'), encodeJSON(ROOT_INO + 1))
      tx.put(keys.meta('object'), encodeJSON('1'))
      tx.put(keys.meta('usage'), encodeJSON({ files: 1, bytes: 0 }))
      tx.put(keys.inode(ROOT_INO), encodeInode(root))
    }, { sync: true })
    return Directory.open(kv, opts.openInodes)
  }

  static async open (kv: KvStore, openInodes: OpenInodes = NOTHING_OPEN): Promise<Directory> {
    const raw = await kv.get(keys.meta('config'))
    if (!raw) throw new FsError('ENOENT', 'no bslfs filesystem in this directory database')
    const config = decodeJSON<DirectoryConfig>('configuration', raw, v =>
      v?.format === 'bslfs-directory' && v.version === 1 && typeof v.uuid === 'string' &&
      Number.isInteger(v.blockSize) && v.blockSize >= 4096 && v.blockSize <= 64 * 1024 * 1024)
    const dir = new Directory(kv, config, openInodes)
    dir.nextIno = dir.inoLimit = await dir.meta('ino', v => Number.isSafeInteger(v) && v > ROOT_INO)
    dir.nextObject = dir.objectLimit = BigInt(await dir.meta<string>('object', v => typeof v === 'string' && /^[0-9]{1,20}$/.test(v)))
    dir.usageNow = await dir.meta<Usage>('usage', v => Number.isSafeInteger(v?.files) && Number.isSafeInteger(v?.bytes))
    await dir.getInode(ROOT_INO)
    for await (const [k] of kv.scan(keys.xattrPrefix)) dir.withXattrs.add(keyNumber(k, 1))
    return dir
  }

  private async meta<T> (name: string, check: (v: any) => boolean): Promise<T> {
    const raw = await this.kv.get(keys.meta(name))
    if (!raw) throw corrupt(`metadata "${name}"`, 'missing')
    return decodeJSON<T>(`metadata "${name}"`, raw, check)
  }

  get blockSize (): number { return this.config.blockSize }
  get usage (): Usage { return { ...this.usageNow } }

  close (): Promise<void> { return this.kv.close() }

  // ---- reads -------------------------------------------------------------

  async getInode (ino: number, tx?: KvTxn): Promise<Inode> {
    const cached = this.inodes.get(ino)
    if (cached) return cached
    const before = this.commits
    const raw = await (tx ?? this.kv).get(keys.inode(ino))
    if (!raw) throw new FsError('ENOENT', `no inode ${ino}`)
    const inode = decodeInode(ino, raw)
    if (!tx && this.commits === before) this.inodes.set(ino, inode)
    return inode
  }

  /** The inode if it is in the cache (no read): for callers that take many in a row. */
  cachedInode (ino: number): Inode | undefined {
    return this.inodes.get(ino)
  }

  /** The child `name` of directory `parent`, or undefined. */
  async lookup (parent: number, name: string, tx?: KvTxn): Promise<number | undefined> {
    const k = `${parent}/${name}`
    const cached = this.dentries.get(k)
    if (cached !== undefined) return cached === 0 ? undefined : cached
    if (Buffer.byteLength(name, 'utf8') > NAME_MAX) throw new FsError('ENAMETOOLONG', `name over ${NAME_MAX} bytes`)
    const key = keys.entry(parent, name)
    const before = this.commits
    const raw = await (tx ?? this.kv).get(key)
    const ino = raw ? decodeEntry(key, raw).ino : undefined
    if (!tx && this.commits === before) this.dentries.set(k, ino ?? 0)
    return ino
  }

  /** The inode a path names ("/a/b"). ENOENT, ENOTDIR, ENAMETOOLONG as the kernel expects. */
  async resolve (path: string): Promise<number> {
    let ino = ROOT_INO
    if (path === '/') return ino
    const parts = path.split('/')
    for (let i = 1; i < parts.length; i++) {
      const name = parts[i]
      if (name === '') continue
      const next = await this.lookup(ino, name)
      if (next === undefined) throw new FsError('ENOENT', path)
      if (i < parts.length - 1 && !isDir((await this.getInode(next)).mode)) throw new FsError('ENOTDIR', path)
      ino = next
    }
    return ino
  }

  /** The directory that would hold `path`, and the last name. */
  async resolveParent (path: string): Promise<{ parent: number, name: string }> {
    const cut = path.lastIndexOf('/')
    const name = path.slice(cut + 1)
    checkName(name)
    const parent = await this.resolve(cut <= 0 ? '/' : path.slice(0, cut))
    if (!isDir((await this.getInode(parent)).mode)) throw new FsError('ENOTDIR', path)
    return { parent, name }
  }

  async readdir (dir: number): Promise<DirEntry[]> {
    const inode = await this.getInode(dir)
    if (!isDir(inode.mode)) throw new FsError('ENOTDIR', `inode ${dir}`)
    const prefix = keys.entries(dir)
    const out: DirEntry[] = []
    for await (const [k, v] of this.kv.scan(prefix)) {
      const e = decodeEntry(k, v)
      out.push({ name: k.subarray(prefix.length).toString('utf8'), ino: e.ino, mode: e.mode })
    }
    return out
  }

  /** One block record of a file, or undefined when the file has none at that index. */
  async getBlock (ino: number, index: number): Promise<BlockRecord | undefined> {
    const k = keys.block(ino, index)
    const v = await this.kv.get(k)
    return v === undefined ? undefined : decodeBlock(k, v)
  }

  async getBlocks (ino: number): Promise<Map<number, BlockRecord>> {
    const prefix = keys.blocks(ino)
    const out = new Map<number, BlockRecord>()
    for await (const [k, v] of this.kv.scan(prefix)) out.set(keyNumber(k, 9), decodeBlock(k, v))
    return out
  }

  // ---- namespace changes ---------------------------------------------------

  /** One transaction with cache-consistent writes. */
  private write<T> (fn: (w: Writer) => Promise<T>, sync = false): Promise<T> {
    return this.kv.txn(async tx => {
      const w = new Writer(this, tx)
      const result = await fn(w)
      w.finish()
      return result
    }, { sync })
  }

  /** @internal used by Writer to publish committed state. */
  applyCommitted (inodes: Map<number, Inode | null>, dentries: Map<string, number>, usage: Usage | null): void {
    this.commits++
    for (const [ino, inode] of inodes) {
      if (inode) this.inodes.set(ino, inode)
      else this.inodes.delete(ino)
    }
    for (const [k, v] of dentries) this.dentries.set(k, v)
    if (usage) this.usageNow = usage
  }

  /** @internal */
  reserveIno (tx: KvTxn): number {
    if (this.nextIno >= this.inoLimit) {
      // The new limit counts only once stored: a failed batch must not let later numbers run past it.
      const limit = this.nextIno + INO_RESERVE
      tx.put(keys.meta('ino'), encodeJSON(limit))
      tx.onCommit(() => { this.inoLimit = Math.max(this.inoLimit, limit) })
    }
    return this.nextIno++
  }

  /** Fresh object ids for new blocks; reserved durably before any is used, so an id is never handed out twice. */
  async allocateObjectId (): Promise<bigint> {
    if (this.nextObject >= this.objectLimit) {
      await this.kv.txn(tx => {
        if (this.nextObject < this.objectLimit) return
        const limit = this.nextObject + BigInt(OBJECT_RESERVE)
        tx.put(keys.meta('object'), encodeJSON(limit.toString()))
        tx.onCommit(() => { this.objectLimit = limit })
      }, { sync: true })
    }
    return this.nextObject++
  }

  /** Create a file, directory, symlink or special node named `name` in `parent`. */
  async createNode (parent: number, name: string, node: NewNode, now = nowTimespec()): Promise<Inode> {
    checkName(name)
    return this.write(async w => {
      const dir = await w.inode(parent)
      if (!isDir(dir.mode)) throw new FsError('ENOTDIR', `inode ${parent}`)
      if (dir.nlink === 0) throw new FsError('ENOENT', 'the directory was removed')
      if (await w.lookup(parent, name) !== undefined) throw new FsError('EEXIST', name)
      const ino = this.reserveIno(w.tx)
      let { mode, gid } = node
      // A setgid directory hands its group to what is made in it, and its setgid bit to subdirectories.
      if (dir.mode & S_ISGID) {
        gid = dir.gid
        if (isDir(mode)) mode |= S_ISGID
      }
      const inode: Inode = {
        ino, mode, uid: node.uid, gid, nlink: isDir(mode) ? 2 : 1,
        size: node.target !== undefined ? Buffer.byteLength(node.target) : 0,
        rdev: node.rdev ?? 0, atime: now, mtime: now, ctime: now
      }
      if (isDir(mode)) inode.parent = parent
      if (node.target !== undefined) inode.target = node.target
      w.putInode(inode)
      w.putEntry(parent, name, inode)
      w.putInode({ ...dir, nlink: dir.nlink + (isDir(mode) ? 1 : 0), mtime: now, ctime: now })
      w.addUsage(1, 0)
      return inode
    })
  }

  /** A new name for an existing non-directory inode. */
  async link (ino: number, parent: number, name: string, now = nowTimespec()): Promise<Inode> {
    checkName(name)
    return this.write(async w => {
      const inode = await w.inode(ino)
      if (isDir(inode.mode)) throw new FsError('EPERM', 'hard links to directories are not allowed')
      const dir = await w.inode(parent)
      if (!isDir(dir.mode)) throw new FsError('ENOTDIR', `inode ${parent}`)
      if (await w.lookup(parent, name) !== undefined) throw new FsError('EEXIST', name)
      if (inode.nlink >= 65000) throw new FsError('EMLINK', `inode ${ino}`)
      const updated = { ...inode, nlink: inode.nlink + 1, ctime: now }
      w.putInode(updated)
      if (inode.nlink === 0) w.tx.del(keys.orphan(ino))
      w.putEntry(parent, name, updated)
      w.putInode({ ...dir, mtime: now, ctime: now })
      return updated
    })
  }

  unlink (parent: number, name: string, now = nowTimespec()): Promise<void> {
    return this.write(async w => {
      const ino = await w.lookup(parent, name)
      if (ino === undefined) throw new FsError('ENOENT', name)
      const inode = await w.inode(ino)
      if (isDir(inode.mode)) throw new FsError('EISDIR', name)
      w.delEntry(parent, name)
      await w.dropLink(inode, now)
      const dir = await w.inode(parent)
      w.putInode({ ...dir, mtime: now, ctime: now })
    })
  }

  rmdir (parent: number, name: string, now = nowTimespec()): Promise<void> {
    return this.write(async w => {
      const ino = await w.lookup(parent, name)
      if (ino === undefined) throw new FsError('ENOENT', name)
      const inode = await w.inode(ino)
      if (!isDir(inode.mode)) throw new FsError('ENOTDIR', name)
      await w.removeEmptyDir(parent, name, inode, now)
      const dir = await w.inode(parent)
      w.putInode({ ...dir, nlink: dir.nlink - 1, mtime: now, ctime: now })
    })
  }

  /**
   * rename(2): atomic, over an existing file or empty directory, across
   * directories; with `noReplace` (renameat2's RENAME_NOREPLACE) an existing
   * target is EEXIST instead.
   */
  async rename (srcParent: number, srcName: string, dstParent: number, dstName: string, opts: { noReplace?: boolean } = {}, now = nowTimespec()): Promise<void> {
    checkName(dstName)
    return this.write(async w => {
      const ino = await w.lookup(srcParent, srcName)
      if (ino === undefined) throw new FsError('ENOENT', srcName)
      const inode = await w.inode(ino)
      const dstDir = await w.inode(dstParent)
      if (!isDir(dstDir.mode)) throw new FsError('ENOTDIR', `inode ${dstParent}`)
      const existing = await w.lookup(dstParent, dstName)
      if (existing !== undefined && opts.noReplace) throw new FsError('EEXIST', dstName)
      if (existing === ino) return // both names are links to one inode: POSIX says do nothing
      const moving = isDir(inode.mode)
      if (moving && dstParent !== srcParent) {
        // A directory may not move into itself or below itself.
        for (let p = dstParent; ; p = (await w.inode(p)).parent ?? ROOT_INO) {
          if (p === ino) throw new FsError('EINVAL', 'cannot move a directory into itself')
          if (p === ROOT_INO) break
        }
      }
      let dstNlinkDelta = 0
      if (existing !== undefined) {
        const target = await w.inode(existing)
        if (isDir(target.mode)) {
          if (!moving) throw new FsError('EISDIR', dstName)
          await w.removeEmptyDir(dstParent, dstName, target, now)
          dstNlinkDelta -= 1
        } else {
          if (moving) throw new FsError('ENOTDIR', dstName)
          w.delEntry(dstParent, dstName)
          await w.dropLink(target, now)
        }
      }
      w.delEntry(srcParent, srcName)
      const moved: Inode = { ...inode, ctime: now }
      if (moving) {
        moved.parent = dstParent
        if (srcParent !== dstParent) dstNlinkDelta += 1
      }
      w.putInode(moved)
      w.putEntry(dstParent, dstName, moved)
      const src = await w.inode(srcParent)
      w.putInode({ ...src, nlink: src.nlink - (moving && srcParent !== dstParent ? 1 : 0), mtime: now, ctime: now })
      const dst = await w.inode(dstParent)
      w.putInode({ ...dst, nlink: dst.nlink + dstNlinkDelta, mtime: now, ctime: now })
    })
  }

  /** Change attributes of an inode (chmod, chown, utimens, size). The caller sets ctime as POSIX says. */
  setAttrs (ino: number, patch: Partial<Pick<Inode, 'mode' | 'uid' | 'gid' | 'atime' | 'mtime' | 'ctime' | 'size'>>, opts: { sync?: boolean } = {}): Promise<Inode> {
    return this.write(async w => {
      const inode = await w.inode(ino)
      const updated = { ...inode, ...patch }
      w.putInode(updated)
      return updated
    }, opts.sync)
  }

  /**
   * Point blocks of a file at new objects (already written and flushed) and
   * update its attributes, in one batch. Replaced blocks, and every block
   * at or past `dropFrom`, are queued for reclaim.
   */
  commitBlocks (ino: number, changes: BlockChange[], patch: FilePatch, opts: { dropFrom?: number, sync?: boolean } = {}): Promise<Inode> {
    return this.write(async w => await w.commitFile({ ino, changes, patch, dropFrom: opts.dropFrom }), opts.sync)
  }

  /** commitBlocks for several files in one batch (a group commit); the inodes as updated, in order. */
  commitFiles (files: FileCommit[], opts: { sync?: boolean } = {}): Promise<Inode[]> {
    return this.write(async w => {
      const out: Inode[] = []
      for (const f of files) out.push(await w.commitFile(f))
      return out
    }, opts.sync)
  }

  /** Make everything committed so far durable against power loss (fsync). */
  sync (): Promise<void> {
    return this.kv.txn(tx => { tx.put(keys.meta('synced'), encodeJSON(new Date().toISOString())) }, { sync: true })
  }

  /** The last handle of an inode closed: if it has no links left and nothing holds it, free it. */
  releaseIfUnlinked (ino: number): Promise<void> {
    return this.write(async w => {
      if (this.isOpen(ino)) return
      const node = await w.inode(ino).catch(() => undefined)
      if (node && node.nlink === 0) await w.deleteInode(node)
    })
  }

  /** Free inodes left with no links by a crash while they were open. */
  async purgeOrphans (): Promise<number> {
    const orphans: number[] = []
    for await (const [k] of this.kv.scan(keys.orphanPrefix)) orphans.push(keyNumber(k))
    for (const ino of orphans) await this.releaseIfUnlinked(ino).catch(() => undefined)
    return orphans.length
  }

  // ---- reclaim ------------------------------------------------------------

  /** Blocks nothing references any more, waiting to be deleted from their devices. */
  async garbage (limit = Infinity): Promise<Array<{ objectId: string, bsl: BSL }>> {
    const out: Array<{ objectId: string, bsl: BSL }> = []
    for await (const [k, v] of this.kv.scan(keys.garbagePrefix, { limit })) {
      out.push({ objectId: k.subarray(1).toString('ascii'), bsl: decodeBlock(k, v).bsl })
    }
    return out
  }

  forgetGarbage (objectIds: string[]): Promise<void> {
    return this.kv.txn(tx => { for (const id of objectIds) tx.del(keys.garbage(id)) })
  }

  /** True while a block's object waits in the reclaim queue (nothing references it). */
  async isGarbage (objectId: string): Promise<boolean> {
    return (await this.kv.get(keys.garbage(objectId))) !== undefined
  }

  // ---- repairs (copies of mirrored blocks to heal) --------------------------

  /** Note copies that are missing or bad; the heal queue survives crashes. */
  recordRepairs (repairs: Repair[]): Promise<void> {
    return this.kv.txn(tx => {
      for (const r of repairs) tx.put(keys.repair(objectIdOf(r.block.bsl), r.volume), encodeBlock(r.block))
    })
  }

  /** The heal queue, in key order from `after`. */
  repairs (limit: number, after?: Buffer): Promise<Array<Repair & { key: Buffer }>> { return this.reader.repairs(limit, after) }

  /** Queued repairs by mirror volume. */
  repairBacklog (): Promise<Map<number, number>> { return this.reader.repairBacklog() }

  /** Every block record of every file (scrub, remap, fsck). */
  allBlocks (): AsyncIterable<{ ino: number, index: number, block: BlockRecord }> { return this.reader.allBlocks() }

  /** A consistent view of the whole namespace as it is now; close it when done. */
  snapshot (): { read: NamespaceReader, close (): Promise<void> } {
    const snap = this.kv.snapshot()
    return { read: new NamespaceReader(snap), close: () => snap.close() }
  }

  forgetRepairs (keyList: Buffer[]): Promise<void> {
    return this.kv.txn(tx => { for (const k of keyList) tx.del(k) })
  }

  /**
   * Turn the physical BSLs of a file's blocks that name `place` into logical
   * BSLs of `volume` (same object ids, so nothing moves), in one batch.
   * Returns the changed records by block index.
   */
  adoptBlocks (ino: number, place: Place, volume: number): Promise<Map<number, BlockRecord>> {
    return this.kv.txn(async tx => {
      const changed = new Map<number, BlockRecord>()
      for await (const [k, v] of tx.scan(keys.blocks(ino))) {
        const rec = decodeBlock(k, v)
        const b = rec.bsl
        if (b.form !== 'physical' || b.server !== place.server || b.device !== place.device) continue
        const adopted: BlockRecord = { ...rec, bsl: { form: 'logical', volume, fileId: b.fileId } }
        tx.put(k, encodeBlock(adopted))
        changed.set(keyNumber(k, 9), adopted)
      }
      return changed
    }, { sync: true })
  }

  // ---- fsck repairs (offline only: they bypass the namespace rules on purpose) --

  /** Set fields fsck found wrong (link count, a directory's parent, stored bytes). */
  fixInode (ino: number, patch: Partial<Pick<Inode, 'nlink' | 'parent' | 'stored'>>): Promise<Inode> {
    return this.write(async w => {
      const updated = { ...(await w.inode(ino)), ...patch }
      w.putInode(updated)
      return updated
    }, true)
  }

  /** Remove an entry whose inode is gone. */
  dropEntry (parent: number, name: string): Promise<void> {
    return this.write(async w => { w.delEntry(parent, name) }, true)
  }

  /** Give an inode nothing names a name in `dir` (lost+found); a directory also gets `dir` as its parent. */
  relink (ino: number, dir: number, name: string): Promise<void> {
    return this.write(async w => {
      const inode = await w.inode(ino)
      const d = await w.inode(dir)
      w.putEntry(dir, name, inode)
      if (isDir(inode.mode)) {
        w.putInode({ ...inode, parent: dir })
        w.putInode({ ...d, nlink: d.nlink + 1 })
      }
    }, true)
  }

  /** Queue for reclaim the blocks recorded for an inode that does not exist. */
  freeBlocksOf (ino: number): Promise<number> {
    return this.kv.txn(async tx => {
      let n = 0
      for await (const [k, v] of tx.scan(keys.blocks(ino))) {
        const rec = decodeBlock(k, v)
        tx.del(k)
        tx.put(keys.garbage(objectIdOf(rec.bsl)), encodeBlock(rec))
        n++
      }
      return n
    }, { sync: true })
  }

  /** Set the file and byte counters (statfs) to what fsck counted. */
  fixUsage (usage: Usage): Promise<void> {
    return this.kv.txn(tx => {
      tx.put(keys.meta('usage'), encodeJSON(usage))
      tx.onCommit(() => { this.usageNow = { ...usage } })
    }, { sync: true })
  }

  // ---- xattrs -------------------------------------------------------------

  async getXattr (ino: number, name: string): Promise<Buffer> {
    await this.getInode(ino)
    const v = this.withXattrs.has(ino) ? await this.kv.get(keys.xattr(ino, name)) : undefined
    if (!v) throw new FsError('ENODATA', name)
    return v
  }

  async listXattrs (ino: number): Promise<string[]> {
    await this.getInode(ino)
    const names: string[] = []
    if (!this.withXattrs.has(ino)) return names
    const prefix = keys.xattrs(ino)
    for await (const [k] of this.kv.scan(prefix)) names.push(k.subarray(prefix.length).toString('utf8'))
    return names
  }

  /** flags: XATTR_CREATE (1) fails if present, XATTR_REPLACE (2) fails if absent. */
  setXattr (ino: number, name: string, value: Buffer, flags: number, now = nowTimespec()): Promise<void> {
    return this.write(async w => {
      const inode = await w.inode(ino)
      const key = keys.xattr(ino, name)
      const exists = (await w.tx.get(key)) !== undefined
      if ((flags & 1) && exists) throw new FsError('EEXIST', name)
      if ((flags & 2) && !exists) throw new FsError('ENODATA', name)
      w.tx.put(key, Buffer.from(value))
      w.putInode({ ...inode, ctime: now })
      w.tx.onCommit(() => this.withXattrs.add(ino))
    })
  }

  removeXattr (ino: number, name: string, now = nowTimespec()): Promise<void> {
    return this.write(async w => {
      const inode = await w.inode(ino)
      const key = keys.xattr(ino, name)
      if ((await w.tx.get(key)) === undefined) throw new FsError('ENODATA', name)
      w.tx.del(key)
      w.putInode({ ...inode, ctime: now })
    })
  }

  // ---- tables -------------------------------------------------------------

  async tables (): Promise<Tables> {
    const t: Tables = { volumes: new Map(), mirrors: new Map(), devices: new Map(), servers: new Map(), defaultVolume: 0 }
    for await (const [k, v] of this.kv.scan(keys.tablePrefix('volume'))) {
      const row = decodeJSON<VolumeRow>(`volume row ${k.toString()}`, v, r => Number.isInteger(r?.volume) && typeof r.place?.server === 'string' && typeof r.place?.device === 'string' && Array.isArray(r.history))
      t.volumes.set(row.volume, row)
    }
    for await (const [k, v] of this.kv.scan(keys.tablePrefix('mirror'))) {
      const vol = Number(k.subarray(keys.tablePrefix('mirror').length).toString())
      const row = decodeJSON<MirrorRow>(`mirror row ${vol}`, v, r => r?.volume === vol && Array.isArray(r.mirrors) &&
        r.mirrors.length > 0 && r.mirrors.every(Number.isInteger) && Number.isInteger(r.minCopies) && r.minCopies >= 1 && r.minCopies <= r.mirrors.length)
      t.mirrors.set(vol, row)
    }
    for await (const [, v] of this.kv.scan(keys.tablePrefix('device'))) {
      const row = decodeJSON<DeviceRow>('device row', v, r => typeof r?.name === 'string' && typeof r.path === 'string')
      t.devices.set(row.name, row)
    }
    for await (const [, v] of this.kv.scan(keys.tablePrefix('server'))) {
      const row = decodeJSON<ServerRow>('server row', v, r => typeof r?.name === 'string' && typeof r.url === 'string')
      t.servers.set(row.name, row)
    }
    const def = await this.kv.get(keys.meta('defaultVolume'))
    const d = def ? decodeJSON<number | Place>('default volume', def, v => Number.isInteger(v) || (typeof v?.server === 'string' && typeof v.device === 'string')) : 0
    if (typeof d === 'number') t.defaultVolume = d
    else t.defaultPlace = { server: d.server, device: d.device }
    return t
  }

  putDevice (row: DeviceRow): Promise<void> {
    return this.kv.txn(tx => { tx.put(keys.table('device', row.name), encodeJSON(row)) }, { sync: true })
  }

  putServer (row: ServerRow): Promise<void> {
    return this.kv.txn(tx => { tx.put(keys.table('server', row.name), encodeJSON(row)) }, { sync: true })
  }

  /** Point a volume at a place; a move keeps the old place in the history. */
  setVolume (volume: number, place: Place): Promise<VolumeRow> {
    return this.kv.txn(async tx => {
      const key = keys.table('volume', String(volume))
      const raw = await tx.get(key)
      const now = new Date().toISOString()
      const old = raw ? decodeJSON<VolumeRow>(`volume row ${volume}`, raw, r => typeof r === 'object') : undefined
      const row: VolumeRow = old
        ? { volume, place, since: now, history: [...old.history, { place: old.place, from: old.since, to: now }] }
        : { volume, place, since: now, history: [] }
      tx.put(key, encodeJSON(row))
      return row
    }, { sync: true })
  }

  setMirror (row: MirrorRow): Promise<void> {
    return this.kv.txn(tx => { tx.put(keys.table('mirror', String(row.volume)), encodeJSON(row)) }, { sync: true })
  }

  /** Where new blocks go: a volume, or a place (physical BSLs). */
  setDefaultVolume (volume: number | Place): Promise<void> {
    return this.kv.txn(tx => { tx.put(keys.meta('defaultVolume'), encodeJSON(volume)) }, { sync: true })
  }
}

/** The work of one transaction: reads that see its own writes, and cache updates published on commit. */
class Writer {
  private readonly inodes = new Map<number, Inode | null>()
  private readonly dentries = new Map<string, number>()
  private usage: Usage | null = null

  constructor (private readonly dir: Directory, readonly tx: KvTxn) {}

  async inode (ino: number): Promise<Inode> {
    const pending = this.inodes.get(ino)
    if (pending) return pending
    if (pending === null) throw new FsError('ENOENT', `inode ${ino}`)
    return this.dir.getInode(ino, this.tx)
  }

  async lookup (parent: number, name: string): Promise<number | undefined> {
    const pending = this.dentries.get(`${parent}/${name}`)
    if (pending !== undefined) return pending === 0 ? undefined : pending
    return this.dir.lookup(parent, name)
  }

  putInode (inode: Inode): void {
    this.inodes.set(inode.ino, inode)
    this.tx.put(keys.inode(inode.ino), encodeInode(inode))
  }

  putEntry (parent: number, name: string, inode: Inode): void {
    this.dentries.set(`${parent}/${name}`, inode.ino)
    this.tx.put(keys.entry(parent, name), encodeEntry(inode.ino, inode.mode))
  }

  delEntry (parent: number, name: string): void {
    this.dentries.set(`${parent}/${name}`, 0)
    this.tx.del(keys.entry(parent, name))
  }

  addUsage (files: number, bytes: number): void {
    const u = this.usage ?? this.dir.usage
    this.usage = { files: u.files + files, bytes: u.bytes + bytes }
  }

  /** Block changes and attributes of one file (Directory.commitBlocks). */
  async commitFile (f: FileCommit): Promise<Inode> {
    const { ino, changes, patch, dropFrom } = f
    const inode = await this.inode(ino)
    let bytes = 0
    if (dropFrom !== undefined) {
      for await (const [k, v] of this.tx.scan(keys.blocks(ino), { after: keys.block(ino, dropFrom) })) {
        bytes -= this.freeBlock(k, decodeBlock(k, v))
      }
      const at = keys.block(ino, dropFrom)
      const raw = await this.tx.get(at)
      if (raw) bytes -= this.freeBlock(at, decodeBlock(at, raw))
    }
    for (const c of changes) {
      const key = keys.block(ino, c.index)
      const old = await this.tx.get(key)
      if (old) bytes -= this.freeBlock(key, decodeBlock(key, old))
      if (c.record) {
        this.tx.put(key, encodeBlock(c.record))
        bytes += c.record.length
      }
    }
    const updated = { ...inode, ...patch, stored: Math.max(0, (inode.stored ?? 0) + bytes) }
    this.putInode(updated)
    this.addUsage(0, bytes)
    return updated
  }

  /** Queue a block's object for reclaim; returns its length. */
  freeBlock (key: Buffer, rec: BlockRecord): number {
    this.tx.del(key)
    this.tx.put(keys.garbage(objectIdOf(rec.bsl)), encodeBlock(rec))
    return rec.length
  }

  /** One link fewer; with none left the inode goes, unless a handle still holds it open. */
  async dropLink (inode: Inode, now: Timespec): Promise<void> {
    const updated = { ...inode, nlink: Math.max(0, inode.nlink - 1), ctime: now }
    if (updated.nlink > 0) {
      this.putInode(updated)
    } else if (this.dir.isOpen(inode.ino)) {
      this.putInode(updated)
      this.tx.put(keys.orphan(inode.ino), Buffer.alloc(0))
    } else {
      await this.deleteInode(updated)
    }
  }

  async removeEmptyDir (parent: number, name: string, inode: Inode, now: Timespec): Promise<void> {
    for await (const _ of this.tx.scan(keys.entries(inode.ino), { limit: 1 })) throw new FsError('ENOTEMPTY', name)
    this.delEntry(parent, name)
    if (this.dir.isOpen(inode.ino)) {
      this.putInode({ ...inode, nlink: 0, ctime: now })
      this.tx.put(keys.orphan(inode.ino), Buffer.alloc(0))
    } else {
      await this.deleteInode(inode)
    }
  }

  async deleteInode (inode: Inode): Promise<void> {
    let bytes = 0
    // Block records lie below the size (truncate drops the rest in its batch), so an empty file
    // needs no scan and a small one a few point reads, cheaper than a scan's iterator.
    const blocks = Math.ceil(inode.size / this.dir.blockSize)
    if (blocks > 0 && blocks <= POINT_READ_BLOCKS) {
      for (let i = 0; i < blocks; i++) {
        const k = keys.block(inode.ino, i)
        const v = await this.tx.get(k)
        if (v) bytes -= this.freeBlock(k, decodeBlock(k, v))
      }
    } else if (blocks > 0 || (inode.stored ?? 0) > 0) {
      for await (const [k, v] of this.tx.scan(keys.blocks(inode.ino))) bytes -= this.freeBlock(k, decodeBlock(k, v))
    }
    if (this.dir.withXattrs.has(inode.ino)) {
      for await (const [k] of this.tx.scan(keys.xattrs(inode.ino))) this.tx.del(k)
      this.tx.onCommit(() => this.dir.withXattrs.delete(inode.ino))
    }
    this.tx.del(keys.inode(inode.ino))
    this.tx.del(keys.orphan(inode.ino))
    this.inodes.set(inode.ino, null)
    this.addUsage(-1, bytes)
    log('freed inode %d (%d bytes)', inode.ino, -bytes)
  }

  finish (): void {
    if (this.usage) this.tx.put(keys.meta('usage'), encodeJSON(this.usage))
    const { inodes, dentries, usage } = this
    this.tx.onCommit(() => this.dir.applyCommitted(inodes, dentries, usage))
  }
}

/**
 * Whole-namespace reads (fsck, scrub, remap, heal) over any reader: the
 * live store, or a snapshot of it.
 */
export class NamespaceReader {
  constructor (private readonly kv: KvReader) {}

  /** The heal queue, in key order from `after`. */
  async repairs (limit: number, after?: Buffer): Promise<Array<Repair & { key: Buffer }>> {
    const out: Array<Repair & { key: Buffer }> = []
    for await (const [k, v] of this.kv.scan(keys.repairPrefix, { limit, after })) {
      if (k.length !== 21) throw corrupt('repair record', `key ${k.toString('hex')} has ${k.length} bytes`)
      out.push({ key: k, volume: k.readUInt32BE(17), block: decodeBlock(k, v) })
    }
    return out
  }

  /** Queued repairs by mirror volume. */
  async repairBacklog (): Promise<Map<number, number>> {
    const out = new Map<number, number>()
    for await (const [k] of this.kv.scan(keys.repairPrefix)) {
      const v = k.readUInt32BE(17)
      out.set(v, (out.get(v) ?? 0) + 1)
    }
    return out
  }

  /** Every block record of every file (scrub, fsck). */
  async * allBlocks (): AsyncIterable<{ ino: number, index: number, block: BlockRecord }> {
    for await (const [k, v] of this.kv.scan(keys.blockPrefix)) {
      yield { ino: keyNumber(k), index: keyNumber(k, 9), block: decodeBlock(k, v) }
    }
  }

  /** Every inode, entry and orphan record, raw (fsck reads the whole namespace). */
  async * allInodes (): AsyncIterable<Inode> {
    for await (const [k, v] of this.kv.scan(keys.inodePrefix)) yield decodeInode(keyNumber(k), v)
  }

  async * allEntries (): AsyncIterable<{ parent: number, name: string, ino: number, mode: number }> {
    for await (const [k, v] of this.kv.scan(keys.entryPrefix)) {
      const e = decodeEntry(k, v)
      yield { parent: keyNumber(k), name: k.subarray(9).toString('utf8'), ino: e.ino, mode: e.mode }
    }
  }

  async orphanInodes (): Promise<number[]> {
    const out: number[] = []
    for await (const [k] of this.kv.scan(keys.orphanPrefix)) out.push(keyNumber(k))
    return out
  }

  /** Object ids waiting in the reclaim queue. */
  async * garbageIds (): AsyncIterable<string> {
    for await (const [k] of this.kv.scan(keys.garbagePrefix)) yield k.subarray(1).toString('ascii')
  }

  /** The file and byte counters as stored. */
  async usage (): Promise<Usage> {
    const raw = await this.kv.get(keys.meta('usage'))
    if (!raw) throw corrupt('metadata "usage"', 'missing')
    return decodeJSON<Usage>('metadata "usage"', raw, v => Number.isSafeInteger(v?.files) && Number.isSafeInteger(v?.bytes))
  }
}
