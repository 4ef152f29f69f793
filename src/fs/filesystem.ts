import { Directory, FilePatch } from '../directory/directory'
import { Inode, ROOT_INO, Timespec } from '../directory/records'
import { FsError } from '../errors'
import { OpenFile } from '../data/open-file'
import { OpenFiles, staleIfGone } from '../data/open-files'
import { Attr, RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT, StatFs } from './fuse/protocol'
import { Caller, DirItem, FuseFilesystem, LockRequest, SetAttr } from './fuse/session'
import { FileLocks } from './locks'
import { S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK, S_ISGID, S_ISUID, S_IXGRP, isDir } from '../posix/modes'
import { nowTimespec } from '../posix/time'
import type { AtimeMode } from './mount'
import { fallocateFile } from './file-ranges'
import { FALLOC_FL_KEEP_SIZE } from '../data/ranges'
import { isAclName } from '../directory/acl'
import { FS_APPEND_FL, FS_IMMUTABLE_FL, checkChangeable, checkMovable, isAppendOnly } from '../directory/inode-flags'

const PATH_MAX = 4096
const O_ACCMODE = 3
const O_RDONLY = 0
const O_WRONLY = 1
const O_TRUNC = 0o1000
const O_APPEND = 0o2000
/** chattr's ioctls (linux/fs.h: _IOR('f', 1, long), _IOW('f', 2, long), and their 32-bit forms). */
const FS_IOC_GETFLAGS = 0x80086601
const FS_IOC_SETFLAGS = 0x40086602
const FS_IOC32_GETFLAGS = 0x80046601
const FS_IOC32_SETFLAGS = 0x40046602
/** The same flags as struct fsxattr (xfs_io's lsattr; the kernel asks this way before a SETFLAGS too). */
const FS_IOC_FSGETXATTR = 0x801c581f
const FS_IOC_FSSETXATTR = 0x401c5820
const FSXATTR_BYTES = 28
/** FS_XFLAG_* ↔ FS_*_FL for the flags bslfs keeps. */
const XFLAGS: Array<[number, number]> = [[0x8, FS_IMMUTABLE_FL], [0x10, FS_APPEND_FL]]

const DAY = 86400

export interface SpaceSource {
  /** Total, free and available bytes of the devices that hold new data. */
  space (): Promise<{ total: number, free: number, available: number }>
}

/** Mount options that change what stat shows (libfuse's uid=, gid=, umask=). */
export interface AttrOverrides { uid?: number, gid?: number, umask?: number }

/**
 * Attributes bslfs does not keep, answered "not supported" so that ls -l and
 * cp -a stop asking after the first file instead of asking for every one:
 * POSIX ACLs when mounted with noacl (system.*, as ext4 mounted so), other
 * system.* names, and SELinux labels (a FUSE mount's files take their context
 * from the mount, never from an xattr). Not ENOSYS: that would make the kernel
 * stop asking for any xattr.
 */
function unsupportedXattr (name: string, acl: boolean): void {
  if (acl && isAclName(name)) return
  if (name.startsWith('system.')) throw new FsError('EOPNOTSUPP', `${name}: ${acl ? 'not a POSIX ACL' : 'ACLs are off (mounted with noacl)'}`)
  if (name === 'security.selinux') throw new FsError('EOPNOTSUPP', `${name}: SELinux labels are not stored`)
}

/** What ext4 refuses on a flagged inode (chattr): setattr of an immutable one, and of an append-only one but its times to now. */
function checkSetattr (inode: Inode, set: SetAttr): void {
  checkChangeable(inode)
  if (!isAppendOnly(inode)) return
  const explicitTime = (set.atime !== undefined && set.atime !== 'now') || (set.mtime !== undefined && set.mtime !== 'now')
  if (set.size !== undefined || set.mode !== undefined || set.uid !== undefined || set.gid !== undefined || explicitTime) {
    throw new FsError('EPERM', `inode ${inode.ino} is append-only (chattr -a to change it)`)
  }
}

/** open(2) for writing: EPERM on an immutable inode, and on an append-only one without O_APPEND or with O_TRUNC. */
function checkOpenForWrite (inode: Inode, flags: number): void {
  checkChangeable(inode)
  if (isAppendOnly(inode) && (!(flags & O_APPEND) || (flags & O_TRUNC))) {
    throw new FsError('EPERM', `inode ${inode.ino} is append-only: open it with O_APPEND and without O_TRUNC`)
  }
}

interface FileHandle { ino: number, file: OpenFile | null, writable: boolean }
interface DirHandle { ino: number, listing: Array<{ name: string, ino: number, mode: number }> | null }

/**
 * POSIX operations on the bslfs namespace and file data, by inode number, with
 * ext4's semantics. Errors are FsError with their POSIX code; the FUSE session
 * (fuse/session.ts) turns them into the kernel's errno.
 */
export class BslFilesystem implements FuseFilesystem {
  private readonly handles = new Map<number, FileHandle>()
  private readonly dirs = new Map<number, DirHandle>()
  /** Directory handles open, by inode: an open directory outlives its rmdir (see isDirOpen). */
  private readonly openDirs = new Map<number, number>()
  private nextFh = 1

  constructor (readonly dir: Directory, readonly files: OpenFiles, private readonly spaceSource: SpaceSource,
    /** Set by a remount (read-only or read-write again). */
    public readOnly = false, private readonly overrides: AttrOverrides = {},
    private readonly atime: { mode: AtimeMode, dirs: boolean } = { mode: 'relatime', dirs: true }, opts: { posixAcl?: boolean } = {}) {
    this.acl = opts.posixAcl !== false
    this.locks = new FileLocks(dir.locks, files)
  }

  /** fcntl and flock locks across hosts (fs/locks.ts). */
  private readonly locks: FileLocks
  /** Whether the mount serves locks (the session negotiates them): on a shared filesystem; on one host the kernel's own are exact and faster. */
  get servesLocks (): boolean { return this.dir.shared }

  /** POSIX ACLs on (the session asks the kernel to enforce them): stored, inherited, kept in step with the mode. */
  private readonly acl: boolean

  toAttr (inode: Inode): Attr {
    const dir = isDir(inode.mode)
    const o = this.overrides
    return {
      ino: inode.ino,
      size: dir ? 4096 : inode.size,
      blocks: dir ? 8 : Math.ceil((inode.stored ?? 0) / 512),
      atime: inode.atime,
      mtime: inode.mtime,
      ctime: inode.ctime,
      mode: o.umask === undefined ? inode.mode : inode.mode & ~(o.umask & 0o777),
      nlink: inode.nlink,
      uid: o.uid ?? inode.uid,
      gid: o.gid ?? inode.gid,
      rdev: inode.rdev,
      blksize: 4096,
      generation: inode.gen ?? 0,
      btime: inode.btime
    }
  }

  /** The inode with the attributes an open file has changed but not yet committed. */
  private async current (ino: number): Promise<Inode> {
    const inode = await this.dir.getInode(ino)
    const open = this.files.get(ino)
    return open ? (await open).view(inode) : inode
  }

  private async attrOf (ino: number): Promise<Attr> {
    return this.toAttr(await this.current(ino))
  }

  /** attrOf without waiting, when it can be had so: the inode is cached and no open file changes it. */
  private cachedAttr (ino: number): Attr | undefined {
    const inode = this.files.get(ino) ? undefined : this.dir.cachedInode(ino)
    return inode && this.toAttr(inode)
  }

  private writable (): void {
    if (this.readOnly) throw new FsError('EROFS', 'mounted read-only')
  }

  private newFh (): number {
    while (this.handles.has(this.nextFh) || this.dirs.has(this.nextFh) || this.nextFh === 0) this.nextFh = (this.nextFh + 1) % 2 ** 48
    return this.nextFh++
  }

  private handle (fh: number): FileHandle {
    const h = this.handles.get(fh)
    if (!h) throw new FsError('EBADF', `no file handle ${fh}`)
    return h
  }

  private fileOf (fh: number): OpenFile {
    const h = this.handle(fh)
    if (!h.file) throw new FsError('EINVAL', 'not a regular file')
    return h.file
  }

  // ---- names ------------------------------------------------------------------

  async lookup (parent: number, name: string): Promise<Attr | null> {
    if (name === '.' || name === '..') return await this.lookupByNumber(parent, name)
    const ino = await this.dir.lookup(parent, name)
    if (ino === undefined) return null
    return await this.attrOf(ino).catch(async err => {
      // Shared: another host removed the inode after this mount cached the name (a file replaced by a
      // rename over it); the store says what the name is now.
      if (!this.dir.shared || !(err instanceof FsError && err.code === 'ENOENT')) throw err
      this.dir.forgetEntry(parent, name)
      const now = await this.dir.lookup(parent, name)
      return now === undefined ? null : await this.attrOf(now)
    })
  }

  /**
   * The kernel's export operations (a file handle whose inode it no longer holds) look up "." of
   * the handle's inode number, and ".." of a directory to connect it to the tree. A removed inode
   * is ENOENT, which the kernel answers ESTALE.
   */
  private async lookupByNumber (ino: number, name: '.' | '..'): Promise<Attr> {
    const inode = await this.current(ino)
    if (inode.nlink === 0) throw new FsError('ENOENT', `inode ${ino} was removed`)
    if (name === '.') return this.toAttr(inode)
    if (!isDir(inode.mode)) throw new FsError('ENOTDIR', `inode ${ino}`)
    return await this.attrOf(inode.parent ?? ROOT_INO)
  }

  async getattr (ino: number): Promise<Attr> {
    return await this.attrOf(ino)
  }

  async readlink (ino: number): Promise<string> {
    const inode = await this.dir.getInode(ino)
    if ((inode.mode & S_IFMT) !== S_IFLNK || inode.target === undefined) throw new FsError('EINVAL', `inode ${ino} is not a symlink`)
    return inode.target
  }

  async mknod (parent: number, name: string, mode: number, rdev: number, caller: Caller): Promise<Attr> {
    this.writable()
    const type = mode & S_IFMT
    if (![S_IFREG, S_IFIFO, S_IFCHR, S_IFBLK, S_IFSOCK].includes(type)) throw new FsError('EINVAL', `cannot mknod type ${type.toString(8)}`)
    return this.toAttr(await this.dir.createNode(parent, name, {
      mode: type | (mode & 0o7777), uid: caller.uid, gid: caller.gid, rdev: type === S_IFCHR || type === S_IFBLK ? rdev : 0, umask: caller.umask, acl: this.acl
    }))
  }

  async mkdir (parent: number, name: string, mode: number, caller: Caller): Promise<Attr> {
    this.writable()
    return this.toAttr(await this.dir.createNode(parent, name, { mode: S_IFDIR | (mode & 0o7777), uid: caller.uid, gid: caller.gid, umask: caller.umask, acl: this.acl }))
  }

  async symlink (parent: number, name: string, target: string, caller: Caller): Promise<Attr> {
    this.writable()
    if (Buffer.byteLength(target) >= PATH_MAX) throw new FsError('ENAMETOOLONG', 'symlink target too long')
    return this.toAttr(await this.dir.createNode(parent, name, { mode: S_IFLNK | 0o777, uid: caller.uid, gid: caller.gid, target }))
  }

  async link (ino: number, newParent: number, newName: string): Promise<Attr> {
    this.writable()
    await this.dir.link(ino, newParent, newName)
    // With what an open file's writes changed: the kernel takes these attributes as the newest.
    return await this.attrOf(ino)
  }

  async unlink (parent: number, name: string): Promise<void> {
    this.writable()
    await this.dir.unlink(parent, name)
  }

  async rmdir (parent: number, name: string): Promise<void> {
    this.writable()
    await this.dir.rmdir(parent, name)
  }

  async rename (parent: number, name: string, newParent: number, newName: string, flags: number, caller?: Caller): Promise<void> {
    this.writable()
    if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT)) throw new FsError('EINVAL', `rename flags 0x${flags.toString(16)} are not supported`)
    // The kernel refuses EXCHANGE with either of the others before asking; checked again here for any caller.
    if ((flags & RENAME_EXCHANGE) && (flags & (RENAME_NOREPLACE | RENAME_WHITEOUT))) throw new FsError('EINVAL', 'RENAME_EXCHANGE goes with no other rename flag')
    if (flags & RENAME_EXCHANGE) return await this.dir.exchange(parent, name, newParent, newName)
    const whiteout = flags & RENAME_WHITEOUT ? { uid: caller?.uid ?? 0, gid: caller?.gid ?? 0 } : undefined
    await this.dir.rename(parent, name, newParent, newName, { noReplace: (flags & RENAME_NOREPLACE) !== 0, whiteout })
  }

  // ---- attributes ---------------------------------------------------------------

  /**
   * relatime, as Linux mounts by default: atime moves when older than mtime/ctime or a day old;
   * strictatime: on every access; noatime (nodiratime for directories): never.
   */
  private needsAtime (inode: Inode, now: Timespec): boolean {
    if (this.readOnly || this.atime.mode === 'noatime' || (!this.atime.dirs && isDir(inode.mode))) return false
    if (this.atime.mode === 'strictatime') return true
    const a = inode.atime
    const older = (t: Timespec) => a.sec < t.sec || (a.sec === t.sec && a.nsec <= t.nsec)
    return older(inode.mtime) || older(inode.ctime) || now.sec - a.sec >= DAY
  }

  /** chmod, chown, truncate and utimens, as the kernel sends them: one request, any of them. */
  async setattr (ino: number, set: SetAttr): Promise<Attr> {
    this.writable()
    checkSetattr(await this.dir.getInode(ino), set)
    const h = set.fh !== undefined ? this.handles.get(set.fh) : undefined
    if (set.size !== undefined) await this.truncate(ino, set.size, h)
    if (set.mode !== undefined || set.uid !== undefined || set.gid !== undefined || set.atime !== undefined || set.mtime !== undefined) {
      // An open file takes the change with its own (committed with its next commit, as its size
      // and times are); the reference keeps it until then.
      const file = this.files.isOpen(ino) ? await this.files.acquire(ino) : null
      try {
        await this.changeAttrs(ino, set, file)
      } finally {
        if (file) await this.files.release(file)
      }
    }
    return await this.attrOf(ino)
  }

  /** Mode, owner and times: into the open file (`file`), or straight into the directory. */
  private async changeAttrs (ino: number, set: SetAttr, file: OpenFile | null): Promise<void> {
    const inode = file ? file.view(await this.dir.getInode(ino)) : await this.dir.getInode(ino)
    const now = nowTimespec()
    const patch: FilePatch = { ctime: now }
    let mode = set.mode !== undefined ? (inode.mode & S_IFMT) | (set.mode & 0o7777) : inode.mode
    if (set.uid !== undefined || set.gid !== undefined) {
      // As chown(2) on Linux: a non-directory loses set-user-ID, and set-group-ID when group-executable.
      if (!isDir(mode)) {
        mode &= ~S_ISUID
        if (mode & S_IXGRP) mode &= ~S_ISGID
      }
      if (set.uid !== undefined) patch.uid = set.uid
      if (set.gid !== undefined) patch.gid = set.gid
    }
    if (mode !== inode.mode) patch.mode = mode
    if (set.atime !== undefined) patch.atime = set.atime === 'now' ? now : set.atime
    if (set.mtime !== undefined) patch.mtime = set.mtime === 'now' ? now : set.mtime
    if (file) file.setAttrs(patch)
    else await this.dir.setAttrs(ino, patch)
    if (this.acl && set.mode !== undefined) await this.dir.chmodAcls(ino, mode)
  }

  private async truncate (ino: number, size: number, h: FileHandle | undefined): Promise<void> {
    const inode = await this.dir.getInode(ino)
    if (isDir(inode.mode)) throw new FsError('EISDIR', `inode ${ino}`)
    if ((inode.mode & S_IFMT) !== S_IFREG) throw new FsError('EINVAL', 'not a regular file')
    if (h?.file) return await h.file.truncate(size, nowTimespec())
    const file = await this.files.acquire(ino)
    try {
      await file.truncate(size, nowTimespec())
    } finally {
      await this.files.release(file)
    }
  }

  // ---- file data ------------------------------------------------------------------

  async create (parent: number, name: string, mode: number, flags: number, caller: Caller): Promise<{ attr: Attr, fh: number }> {
    this.writable()
    const inode = await this.dir.createNode(parent, name, { mode: S_IFREG | (mode & 0o7777), uid: caller.uid, gid: caller.gid, umask: caller.umask, acl: this.acl })
    const fh = this.newFh()
    this.handles.set(fh, { ino: inode.ino, file: await this.files.acquire(inode.ino, true), writable: (flags & O_ACCMODE) !== O_RDONLY })
    return { attr: this.toAttr(inode), fh }
  }

  async tmpfile (parent: number, mode: number, flags: number, caller: Caller): Promise<{ attr: Attr, fh: number }> {
    this.writable()
    const inode = await this.dir.createNode(parent, '', { mode: S_IFREG | (mode & 0o7777), uid: caller.uid, gid: caller.gid, umask: caller.umask, acl: this.acl, unnamed: true })
    const fh = this.newFh()
    this.handles.set(fh, { ino: inode.ino, file: await this.files.acquire(inode.ino, true), writable: (flags & O_ACCMODE) !== O_RDONLY })
    return { attr: this.toAttr(inode), fh }
  }

  async open (ino: number, flags: number): Promise<number> {
    const inode = await this.dir.getInode(ino).catch(err => { throw this.dir.shared ? staleIfGone(err, ino) : err })
    if (isDir(inode.mode)) throw new FsError('EISDIR', `inode ${ino}`)
    const writable = (flags & O_ACCMODE) !== O_RDONLY
    if (writable) this.writable()
    if (writable || (flags & O_TRUNC)) checkOpenForWrite(inode, flags)
    // On a shared filesystem this read is fresh, and the kernel's pages dropped when another host changed the file.
    const file = (inode.mode & S_IFMT) === S_IFREG ? await this.files.open(ino) : null
    const fh = this.newFh()
    this.handles.set(fh, { ino, file, writable })
    // The kernel hands O_TRUNC to open (atomic_o_trunc) instead of a separate truncate.
    if (file && writable && (flags & O_TRUNC) && file.size > 0) await file.truncate(0, nowTimespec())
    // strictatime: reads the page cache answers never reach bslfs; an open for reading stands for them.
    if (file && (flags & O_ACCMODE) !== O_WRONLY && this.atime.mode === 'strictatime' && !this.readOnly) file.markAccessed(nowTimespec())
    return fh
  }

  async read (_ino: number, fh: number, offset: number, size: number, signal?: AbortSignal): Promise<Buffer[]> {
    const file = this.fileOf(fh)
    // The pieces are views of cached blocks: they stay valid until the reply made from them is out (the
    // session sends it as this promise settles, before the loop's next turn).
    const use = this.files.services.blocks.use()
    try {
      const pieces = await file.readPieces(size, offset, use, signal)
      const now = nowTimespec()
      if (this.needsAtime(file.view(await this.dir.getInode(file.ino)), now)) file.markAccessed(now)
      return pieces
    } finally {
      setImmediate(() => use.end())
    }
  }

  write (_ino: number, fh: number, offset: number, data: Buffer, keepBuffer?: () => void): Promise<number> {
    const file = this.fileOf(fh)
    // Inode flags (chattr) hold for handles opened before they were set; an uncached inode is read first.
    const inode = this.dir.cachedInode(file.ino)
    if (inode === undefined || inode.flags) return this.flaggedWrite(file, offset, data, keepBuffer)
    return this.writeTo(file, offset, data, keepBuffer)
  }

  private writeTo (file: OpenFile, offset: number, data: Buffer, keepBuffer?: () => void): Promise<number> {
    // Only a buffer of the files' own pool can become a block.
    return file.write(data, offset, nowTimespec(), data.length === this.files.services.buffers.size ? keepBuffer : undefined)
  }

  async fallocate (_ino: number, fh: number, offset: number, length: number, mode: number): Promise<void> {
    this.writable()
    if (!this.handle(fh).writable) throw new FsError('EBADF', `file handle ${fh} is not open for writing`)
    const inode = await this.dir.getInode(this.fileOf(fh).ino)
    checkChangeable(inode)
    // As ext4: an append-only file may grow by preallocation, never lose or zero what it holds.
    if (isAppendOnly(inode) && (mode & ~FALLOC_FL_KEEP_SIZE) !== 0) throw new FsError('EPERM', `inode ${inode.ino} is append-only: no hole punched or range zeroed in it`)
    await fallocateFile(this.fileOf(fh), offset, length, mode, async () => (await this.spaceSource.space()).available, this.dir.blockSize)
  }

  async lseek (_ino: number, fh: number, offset: number, whence: number): Promise<number> {
    return this.fileOf(fh).seek(whence, offset)
  }

  async copyFileRange (_ino: number, fhIn: number, offIn: number, _inoOut: number, fhOut: number, offOut: number, len: number): Promise<number> {
    this.writable()
    if (!this.handle(fhOut).writable) throw new FsError('EBADF', `file handle ${fhOut} is not open for writing`)
    const out = this.fileOf(fhOut)
    const inode = await this.dir.getInode(out.ino)
    checkChangeable(inode)
    if (isAppendOnly(inode) && offOut !== out.size) throw new FsError('EPERM', `inode ${out.ino} is append-only: copies go at its end (${out.size}), not at ${offOut}`)
    return await this.fileOf(fhOut).copyFrom(this.fileOf(fhIn), offIn, offOut, len, nowTimespec())
  }

  private async flaggedWrite (file: OpenFile, offset: number, data: Buffer, keepBuffer?: () => void): Promise<number> {
    const inode = await this.dir.getInode(file.ino)
    checkChangeable(inode)
    if (isAppendOnly(inode) && offset !== file.size) throw new FsError('EPERM', `inode ${file.ino} is append-only: writes go at its end (${file.size}), not at ${offset}`)
    return await this.writeTo(file, offset, data, keepBuffer)
  }

  /**
   * close(2) of one descriptor: the data goes to the devices (close-to-open
   * consistency). A read-only descriptor wrote nothing: its close neither
   * waits for the writers' data nor reports their errors (theirs do).
   */
  async flush (ino: number, fh: number, _signal?: AbortSignal, lockOwner?: string): Promise<void> {
    const h = this.handle(fh)
    try {
      if (h.file && h.writable) await h.file.flush()
    } finally {
      // The data first: a host that takes the lock next reads it. The locks go even when it failed (close always releases).
      if (lockOwner !== undefined && this.servesLocks) await this.locks.closed(ino, lockOwner)
    }
  }

  async getlk (ino: number, lock: LockRequest): Promise<{ start: number, end: number, type: number, pid: number }> {
    return await this.locks.getlk(ino, lock)
  }

  async setlk (ino: number, lock: LockRequest, wait: boolean, signal?: AbortSignal): Promise<void> {
    this.handle(lock.fh)
    await this.locks.setlk(ino, lock.fh, lock, wait, signal)
  }

  async fsync (_ino: number, fh: number): Promise<void> {
    const h = this.handles.get(fh)
    if (h?.file) await h.file.fsync()
    else await this.dir.sync()
  }

  async release (ino: number, fh: number, flockOwner?: string): Promise<void> {
    const h = this.handle(fh)
    this.handles.delete(fh)
    try {
      if (this.servesLocks) await this.locks.released(ino, fh, flockOwner)
    } finally {
      if (h.file) await this.files.release(h.file)
      else await this.dir.releaseIfUnlinked(h.ino)
    }
  }

  // ---- directories -------------------------------------------------------------------

  async opendir (ino: number): Promise<number> {
    const inode = await this.dir.getInode(ino)
    if (!isDir(inode.mode)) throw new FsError('ENOTDIR', `inode ${ino}`)
    const fh = this.newFh()
    this.dirs.set(fh, { ino, listing: null })
    this.openDirs.set(ino, (this.openDirs.get(ino) ?? 0) + 1)
    return fh
  }

  /** Whether a directory handle holds `ino`: its inode then outlives rmdir and rename-over, as an open file's does. */
  isDirOpen (ino: number): boolean {
    return this.openDirs.has(ino)
  }

  /** The listing is read at position 0 (opendir, rewinddir) and served from memory after that. */
  async readdir (ino: number, fh: number, offset: number, count: number, plus: boolean): Promise<DirItem[]> {
    const h = this.dirs.get(fh)
    if (!h) throw new FsError('EBADF', `no directory handle ${fh}`)
    if (offset === 0 || h.listing === null) {
      const inode = await this.dir.getInode(ino)
      h.listing = [
        { name: '.', ino, mode: inode.mode },
        { name: '..', ino: inode.parent ?? ROOT_INO, mode: S_IFDIR },
        ...await this.dir.readdir(ino)
      ]
      const now = nowTimespec()
      if (this.needsAtime(inode, now)) await this.dir.setAttrs(ino, { atime: now })
    }
    const items: DirItem[] = h.listing.slice(offset, offset + count)
    if (plus) {
      for (const it of items) {
        if (it.name === '.' || it.name === '..') continue
        // Most inodes are cached and closed: no await for those (a listing has thousands). A name
        // removed since the listing was read goes without attributes (the kernel looks it up).
        it.attr = this.cachedAttr(it.ino) ?? await this.attrOf(it.ino).catch(() => undefined)
      }
    }
    return items
  }

  async releasedir (_ino: number, fh: number): Promise<void> {
    const h = this.dirs.get(fh)
    if (!h) return
    this.dirs.delete(fh)
    const left = (this.openDirs.get(h.ino) ?? 1) - 1
    if (left > 0) return void this.openDirs.set(h.ino, left)
    this.openDirs.delete(h.ino)
    // The last handle of a removed directory: its rows go now (a read first, so that closing a live one costs no transaction).
    const inode = await this.dir.getInode(h.ino).catch(() => undefined)
    if (inode && inode.nlink === 0) await this.dir.releaseIfUnlinked(h.ino)
  }

  async fsyncdir (): Promise<void> {
    await this.dir.sync()
  }

  // ---- extended attributes ---------------------------------------------------

  private checkXattrName (name: string): void {
    unsupportedXattr(name, this.acl)
    if (isAclName(name)) return
    // As on ext4, only the user, trusted and security namespaces exist.
    if (!/^(user|trusted|security)\./.test(name)) throw new FsError('EOPNOTSUPP', `${name}: unknown xattr namespace`)
    if (name.length === 0 || Buffer.byteLength(name) > 255) throw new FsError('ERANGE', 'bad xattr name length')
  }

  async setxattr (ino: number, name: string, value: Buffer, flags: number, killSgid = false): Promise<void> {
    this.writable()
    this.checkXattrName(name)
    checkMovable(await this.dir.getInode(ino))
    if (isAclName(name)) await this.dir.setAcl(ino, name, value, flags, nowTimespec(), { killSgid })
    else await this.dir.setXattr(ino, name, value, flags)
  }

  async getxattr (ino: number, name: string): Promise<Buffer> {
    unsupportedXattr(name, this.acl)
    return await this.dir.getXattr(ino, name)
  }

  async listxattr (ino: number): Promise<string[]> {
    return await this.dir.listXattrs(ino)
  }

  async removexattr (ino: number, name: string): Promise<void> {
    this.writable()
    this.checkXattrName(name)
    checkMovable(await this.dir.getInode(ino))
    if (isAclName(name)) await this.dir.setAcl(ino, name, null)
    else await this.dir.removeXattr(ino, name)
  }

  // ---- ioctl ------------------------------------------------------------------

  /** chattr and lsattr (FS_IOC_GETFLAGS/SETFLAGS); any other ioctl is ENOTTY, as on a filesystem without it. */
  async ioctl (ino: number, cmd: number, input: Buffer, outSize: number, caller: Caller): Promise<Buffer> {
    if (cmd === FS_IOC_GETFLAGS || cmd === FS_IOC32_GETFLAGS) {
      if (outSize < 4) throw new FsError('EINVAL', `FS_IOC_GETFLAGS with a ${outSize}-byte buffer`)
      const out = Buffer.alloc(4)
      out.writeUInt32LE((await this.dir.getInode(ino)).flags ?? 0)
      return out
    }
    if (cmd === FS_IOC_SETFLAGS || cmd === FS_IOC32_SETFLAGS) {
      this.writable()
      if (input.length < 4) throw new FsError('EINVAL', `FS_IOC_SETFLAGS with ${input.length} bytes`)
      await this.dir.setFlags(ino, input.readUInt32LE(0), caller.uid)
      return Buffer.alloc(0)
    }
    if (cmd === FS_IOC_FSGETXATTR) {
      if (outSize < FSXATTR_BYTES) throw new FsError('EINVAL', `FS_IOC_FSGETXATTR with a ${outSize}-byte buffer`)
      const flags = (await this.dir.getInode(ino)).flags ?? 0
      const out = Buffer.alloc(FSXATTR_BYTES)
      out.writeUInt32LE(XFLAGS.reduce((x, [xf, f]) => flags & f ? x | xf : x, 0))
      return out
    }
    if (cmd === FS_IOC_FSSETXATTR) {
      this.writable()
      if (input.length < FSXATTR_BYTES) throw new FsError('EINVAL', `FS_IOC_FSSETXATTR with ${input.length} bytes`)
      let xflags = input.readUInt32LE(0)
      let flags = 0
      for (const [xf, f] of XFLAGS) if (xflags & xf) { flags |= f; xflags &= ~xf }
      if (xflags || input.readUInt32LE(4) || input.readUInt32LE(12) || input.readUInt32LE(16)) {
        throw new FsError('EOPNOTSUPP', 'of the fsxattr fields bslfs keeps only the immutable and append-only flags')
      }
      await this.dir.setFlags(ino, flags, caller.uid)
      return Buffer.alloc(0)
    }
    throw new FsError('ENOTTY', `ioctl 0x${(cmd >>> 0).toString(16)} is not supported`)
  }

  // ---- the whole filesystem -----------------------------------------------------

  async statfs (): Promise<StatFs> {
    const space = await this.spaceSource.space()
    const bsize = 4096
    const freeInodes = 1 << 30 // inodes are keys in the directory: there is no fixed table to run out of
    return {
      bsize,
      frsize: bsize,
      blocks: Math.floor(space.total / bsize),
      bfree: Math.floor(space.free / bsize),
      bavail: Math.floor(space.available / bsize),
      files: this.dir.usage.files + freeInodes,
      ffree: freeInodes,
      namelen: 255
    }
  }

  /** Flush every open file (before unmount). */
  flushAll (): Promise<void> {
    return this.files.flushAll()
  }
}
