import createDebug from 'debug'
import { Directory, isDir, nowTimespec } from '../directory/directory'
import { Inode, Timespec } from '../directory/records'
import { FsError } from '../errors'
import { OpenFile, OpenFiles } from './files'
import { HIDDEN_NAME, HiddenNames, callerIsRenaming } from './hidden'

const log = createDebug('bslfs:fs')

const S_IFMT = 0o170000
const S_IFREG = 0o100000
const S_IFDIR = 0o040000
const S_IFLNK = 0o120000
const S_IFIFO = 0o010000
const S_IFCHR = 0o020000
const S_IFBLK = 0o060000
const S_IFSOCK = 0o140000
const S_ISUID = 0o4000
const S_ISGID = 0o2000
const S_IXGRP = 0o0010
const PATH_MAX = 4096

/** utimensat's special nanosecond values, as libfuse passes them through. */
export const UTIME_NOW = (1 << 30) - 1
export const UTIME_OMIT = (1 << 30) - 2

/** The caller of an operation, as the kernel reports it. */
export interface Caller { uid: number, gid: number, pid: number }

/** A stat(2) result with nanosecond times. */
export interface Stat {
  mode: number
  uid: number
  gid: number
  size: number
  dev: number
  nlink: number
  ino: number
  rdev: number
  blksize: number
  blocks: number
  atime: Timespec
  mtime: Timespec
  ctime: Timespec
}

export interface StatFs {
  bsize: number
  frsize: number
  blocks: number
  bfree: number
  bavail: number
  files: number
  ffree: number
  favail: number
  fsid: number
  flag: number
  namemax: number
}

export interface SpaceSource {
  /** Total, free and available bytes of the devices that hold new data. */
  space (): Promise<{ total: number, free: number, available: number }>
}

interface Handle { ino: number, file: OpenFile | null, writable: boolean }
const O_ACCMODE = 3
const O_RDONLY = 0


const DAY = 86400

/**
 * POSIX operations on the bslfs namespace and file data, by path or handle,
 * with ext4's semantics. Errors are FsError with their POSIX code; this class
 * knows nothing of FUSE's calling conventions (see fuse-ops.ts).
 */
export class BslFilesystem {
  private readonly handles = new Map<number, Handle>()
  private nextFh = 1
  /** libfuse's hidden names of unlinked open files. */
  private readonly hidden = new HiddenNames()

  constructor (readonly dir: Directory, readonly files: OpenFiles, private readonly spaceSource: SpaceSource, readonly readOnly = false) {
    // An inode outlives its last link while a handle or a hidden name (the kernel may still open it) holds it.
    dir.isOpen = ino => files.isOpen(ino) || this.hidden.holds(ino)
  }

  toStat (inode: Inode): Stat {
    const dir = isDir(inode.mode)
    return {
      mode: inode.mode,
      uid: inode.uid,
      gid: inode.gid,
      size: dir ? 4096 : inode.size,
      dev: 0,
      nlink: inode.nlink,
      ino: inode.ino,
      rdev: inode.rdev,
      blksize: 4096,
      blocks: dir ? 8 : Math.ceil((inode.stored ?? 0) / 512),
      atime: inode.atime,
      mtime: inode.mtime,
      ctime: inode.ctime
    }
  }

  /** The inode with the attributes an open file has changed but not yet committed. */
  private async current (ino: number): Promise<Inode> {
    const inode = await this.dir.getInode(ino)
    const open = this.files.get(ino)
    return open ? (await open).view(inode) : inode
  }

  /** The inode a path names, hidden names of unlinked open files included. */
  private resolve (path: string): Promise<number> {
    const ino = this.hidden.get(path)
    return ino !== undefined ? Promise.resolve(ino) : this.dir.resolve(path)
  }

  private handle (fh: number): Handle {
    const h = this.handles.get(fh)
    if (!h) throw new FsError('EBADF', `no handle ${fh}`)
    return h
  }

  /** The inode an operation is about: by handle when there is one (an unlinked open file has no path). */
  private async target (path: string | null, fh?: number): Promise<number> {
    if (fh && this.handles.has(fh)) return this.handle(fh).ino
    if (path === null) throw new FsError('EBADF', 'no path and no handle')
    return this.resolve(path)
  }

  private newHandle (ino: number, file: OpenFile | null, writable = true): number {
    while (this.handles.has(this.nextFh) || this.nextFh === 0) this.nextFh = (this.nextFh + 1) >>> 0
    const fh = this.nextFh
    this.nextFh = (this.nextFh + 1) >>> 0
    this.handles.set(fh, { ino, file, writable })
    return fh
  }

  async getattr (path: string | null, fh?: number): Promise<Stat> {
    return this.toStat(await this.current(await this.target(path, fh)))
  }

  async access (path: string): Promise<void> {
    await this.resolve(path)
  }

  async readlink (path: string): Promise<string> {
    const inode = await this.dir.getInode(await this.resolve(path))
    if ((inode.mode & S_IFMT) !== S_IFLNK || inode.target === undefined) throw new FsError('EINVAL', `${path} is not a symlink`)
    return inode.target
  }

  async readdir (path: string): Promise<Array<{ name: string, ino: number, mode: number }>> {
    const ino = await this.resolve(path)
    const inode = await this.dir.getInode(ino)
    const entries = await this.dir.readdir(ino)
    await this.touchAtime(inode)
    return [
      { name: '.', ino, mode: inode.mode },
      { name: '..', ino: inode.parent ?? ino, mode: S_IFDIR },
      ...entries
    ]
  }

  /** relatime, as Linux mounts by default: atime moves when older than mtime/ctime or a day old. */
  private needsAtime (inode: Inode, now: Timespec): boolean {
    if (this.readOnly) return false
    const a = inode.atime
    const older = (t: Timespec) => a.sec < t.sec || (a.sec === t.sec && a.nsec <= t.nsec)
    return older(inode.mtime) || older(inode.ctime) || now.sec - a.sec >= DAY
  }

  private async touchAtime (inode: Inode): Promise<void> {
    const now = nowTimespec()
    if (this.needsAtime(inode, now)) await this.dir.setAttrs(inode.ino, { atime: now })
  }

  // ---- creating names ---------------------------------------------------

  async create (path: string, mode: number, caller: Caller): Promise<number> {
    const { parent, name } = await this.dir.resolveParent(path)
    const inode = await this.dir.createNode(parent, name, { mode: S_IFREG | (mode & 0o7777), uid: caller.uid, gid: caller.gid })
    return this.newHandle(inode.ino, await this.files.acquire(inode.ino, true))
  }

  async mkdir (path: string, mode: number, caller: Caller): Promise<void> {
    const { parent, name } = await this.dir.resolveParent(path)
    await this.dir.createNode(parent, name, { mode: S_IFDIR | (mode & 0o7777), uid: caller.uid, gid: caller.gid })
  }

  async mknod (path: string, mode: number, rdev: number, caller: Caller): Promise<void> {
    const type = mode & S_IFMT
    if (![S_IFREG, S_IFIFO, S_IFCHR, S_IFBLK, S_IFSOCK].includes(type)) throw new FsError('EINVAL', `cannot mknod type ${type.toString(8)}`)
    const { parent, name } = await this.dir.resolveParent(path)
    await this.dir.createNode(parent, name, { mode: type | (mode & 0o7777), uid: caller.uid, gid: caller.gid, rdev: type === S_IFCHR || type === S_IFBLK ? rdev : 0 })
  }

  async symlink (target: string, path: string, caller: Caller): Promise<void> {
    if (Buffer.byteLength(target) >= PATH_MAX) throw new FsError('ENAMETOOLONG', 'symlink target too long')
    const { parent, name } = await this.dir.resolveParent(path)
    await this.dir.createNode(parent, name, { mode: S_IFLNK | 0o777, uid: caller.uid, gid: caller.gid, target })
  }

  async link (existing: string, path: string): Promise<void> {
    const ino = await this.resolve(existing)
    const { parent, name } = await this.dir.resolveParent(path)
    await this.dir.link(ino, parent, name)
  }

  // ---- removing and moving names ------------------------------------------

  async unlink (path: string): Promise<void> {
    if (this.hidden.release(path)) return // libfuse lets go of a hidden file: sweepHidden frees it a little later
    const { parent, name } = await this.dir.resolveParent(path)
    await this.dir.unlink(parent, name)
  }

  async rmdir (path: string): Promise<void> {
    const { parent, name } = await this.dir.resolveParent(path)
    await this.dir.rmdir(parent, name)
  }

  async rename (from: string, to: string, caller?: Caller): Promise<void> {
    if (HIDDEN_NAME.test(to) && !this.hidden.has(from)) {
      const ino = await this.dir.resolve(from)
      if (this.files.get(ino)) {
        // For a rename over an open file, the real rename follows and replaces the target atomically.
        const renaming = !!caller && callerIsRenaming(caller.pid)
        log('hiding %s as %s (caller %o, renaming: %s)', from, to, caller, renaming)
        this.hidden.add(to, ino)
        if (!renaming) await this.unlink(from)
        return
      }
    }
    const src = await this.dir.resolveParent(from)
    const dst = await this.dir.resolveParent(to)
    await this.dir.rename(src.parent, src.name, dst.parent, dst.name)
  }

  /**
   * Free the inodes of hidden names libfuse let go of more than `graceMs` ago
   * and that lost their last link. A name whose inode is still linked (a
   * rename over it failed) is simply forgotten after a minute.
   */
  async sweepHidden (graceMs = 1000): Promise<void> {
    for (const e of this.hidden.due(graceMs)) {
      const inode = await this.dir.getInode(e.ino).catch(() => null)
      if (inode && inode.nlink > 0 && Date.now() - e.releasedAt < 60_000 && graceMs > 0) continue
      this.hidden.forget(e.path)
      if (inode && inode.nlink === 0) await this.dir.releaseIfUnlinked(e.ino)
    }
  }

  // ---- attributes -----------------------------------------------------------

  /** Before changing an open inode directly, commit what its writes changed, so nothing newer is overlaid on top. */
  private async settleAttrs (ino: number): Promise<void> {
    const open = this.files.get(ino)
    if (open) await (await open).commitAttrs()
  }

  async chmod (path: string | null, mode: number, fh?: number): Promise<void> {
    const ino = await this.target(path, fh)
    await this.settleAttrs(ino)
    const inode = await this.dir.getInode(ino)
    await this.dir.setAttrs(ino, { mode: (inode.mode & S_IFMT) | (mode & 0o7777), ctime: nowTimespec() })
  }

  async chown (path: string | null, uid: number, gid: number, fh?: number): Promise<void> {
    const ino = await this.target(path, fh)
    await this.settleAttrs(ino)
    const inode = await this.dir.getInode(ino)
    const unchanged = 0xffffffff
    let mode = inode.mode
    // As chown(2) on Linux: a non-directory loses set-user-ID, and set-group-ID when group-executable.
    if (!isDir(mode)) {
      mode &= ~S_ISUID
      if (mode & S_IXGRP) mode &= ~S_ISGID
    }
    await this.dir.setAttrs(ino, {
      uid: uid === unchanged || uid === -1 ? inode.uid : uid,
      gid: gid === unchanged || gid === -1 ? inode.gid : gid,
      mode,
      ctime: nowTimespec()
    })
  }

  async utimens (path: string | null, atime: Timespec, mtime: Timespec, fh?: number): Promise<void> {
    const ino = await this.target(path, fh)
    await this.settleAttrs(ino)
    const now = nowTimespec()
    const pick = (t: Timespec): Timespec | undefined =>
      t.nsec === UTIME_OMIT ? undefined : t.nsec === UTIME_NOW ? now : t
    const patch: { atime?: Timespec, mtime?: Timespec, ctime?: Timespec } = {}
    const a = pick(atime)
    const m = pick(mtime)
    if (a) patch.atime = a
    if (m) patch.mtime = m
    if (!a && !m) return
    patch.ctime = now
    await this.dir.setAttrs(ino, patch)
  }

  async truncate (path: string | null, size: number, fh?: number): Promise<void> {
    const ino = await this.target(path, fh)
    const inode = await this.dir.getInode(ino)
    if (isDir(inode.mode)) throw new FsError('EISDIR', path ?? `inode ${ino}`)
    if ((inode.mode & S_IFMT) !== S_IFREG) throw new FsError('EINVAL', 'not a regular file')
    const h = fh ? this.handles.get(fh) : undefined
    if (h?.file) return h.file.truncate(size, nowTimespec())
    const file = await this.files.acquire(ino)
    try {
      await file.truncate(size, nowTimespec())
    } finally {
      await this.files.release(file)
    }
  }

  // ---- file data ------------------------------------------------------------

  async open (path: string | null, flags = O_RDONLY): Promise<number> {
    const ino = await this.target(path)
    const inode = await this.dir.getInode(ino)
    if (isDir(inode.mode)) throw new FsError('EISDIR', path ?? '')
    const file = (inode.mode & S_IFMT) === S_IFREG ? await this.files.acquire(ino) : null
    return this.newHandle(ino, file, (flags & O_ACCMODE) !== O_RDONLY)
  }

  private fileOf (fh: number): OpenFile {
    const h = this.handle(fh)
    if (!h.file) throw new FsError('EINVAL', 'not a regular file')
    return h.file
  }

  async read (fh: number, buf: Buffer, len: number, pos: number): Promise<number> {
    const file = this.fileOf(fh)
    const n = await file.read(buf, len, pos)
    const now = nowTimespec()
    if (this.needsAtime(file.view(await this.dir.getInode(file.ino)), now)) file.markAccessed(now)
    return n
  }

  async write (fh: number, buf: Buffer, pos: number): Promise<number> {
    // async: an unknown handle must come back as a rejected promise (an answer to the kernel), not a throw.
    return await this.fileOf(fh).write(buf, pos, nowTimespec())
  }

  /**
   * close(2) of one descriptor: the data goes to the devices (close-to-open
   * consistency). A read-only descriptor wrote nothing: its close neither
   * waits for the writers' data nor reports their errors (theirs do).
   */
  async flush (fh: number): Promise<void> {
    const h = this.handle(fh)
    if (h.file && h.writable) await h.file.flush()
  }

  async fsync (fh: number): Promise<void> {
    const h = this.handles.get(fh)
    if (h?.file) await h.file.fsync()
    else await this.dir.sync()
  }

  async fsyncdir (): Promise<void> {
    await this.dir.sync()
  }

  async release (fh: number): Promise<void> {
    const h = this.handle(fh)
    this.handles.delete(fh)
    if (h.file) await this.files.release(h.file)
  }

  async opendir (path: string): Promise<void> {
    const inode = await this.dir.getInode(await this.resolve(path))
    if (!isDir(inode.mode)) throw new FsError('ENOTDIR', path)
  }

  // ---- extended attributes ---------------------------------------------------

  private checkXattrName (name: string): void {
    // POSIX ACLs live in system.*; bslfs does not enforce ACLs, so it does not pretend to store them.
    if (name.startsWith('system.')) throw new FsError('EOPNOTSUPP', `${name}: ACLs are not supported`)
    // As on ext4, only the user, trusted and security namespaces exist.
    if (!/^(user|trusted|security)\./.test(name)) throw new FsError('EOPNOTSUPP', `${name}: unknown xattr namespace`)
    if (name.length === 0 || Buffer.byteLength(name) > 255) throw new FsError('ERANGE', 'bad xattr name length')
  }

  async setxattr (path: string | null, name: string, value: Buffer, flags: number): Promise<void> {
    this.checkXattrName(name)
    await this.dir.setXattr(await this.target(path), name, Buffer.from(value), flags)
  }

  async getxattr (path: string | null, name: string): Promise<Buffer> {
    if (name.startsWith('system.')) throw new FsError('ENODATA', name)
    return this.dir.getXattr(await this.target(path), name)
  }

  async listxattr (path: string | null): Promise<string[]> {
    return this.dir.listXattrs(await this.target(path))
  }

  async removexattr (path: string | null, name: string): Promise<void> {
    this.checkXattrName(name)
    await this.dir.removeXattr(await this.target(path), name)
  }

  // ---- the whole filesystem -----------------------------------------------------

  async statfs (): Promise<StatFs> {
    const space = await this.spaceSource.space()
    const bsize = 4096
    const usage = this.dir.usage
    const freeInodes = 1 << 30 // inodes are keys in the directory: there is no fixed table to run out of
    return {
      bsize,
      frsize: bsize,
      blocks: Math.floor(space.total / bsize),
      bfree: Math.floor(space.free / bsize),
      bavail: Math.floor(space.available / bsize),
      files: usage.files + freeInodes,
      ffree: freeInodes,
      favail: freeInodes,
      fsid: 0,
      flag: this.readOnly ? 1 : 0,
      namemax: 255
    }
  }

  /** Flush every open file (before unmount). */
  flushAll (): Promise<void> {
    return this.files.flushAll()
  }
}
