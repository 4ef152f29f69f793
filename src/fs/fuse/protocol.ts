/**
 * The FUSE kernel protocol, version 7.31, as far as bslfs speaks it: opcodes,
 * flags, and the layouts of the structs the kernel sends and expects
 * (linux/fuse.h). Integers are little-endian; 64-bit fields that hold inode
 * numbers, sizes and offsets are read and written as two 32-bit halves, exact
 * up to 2^53. Requests are decoded in requests.ts.
 */
import { Timespec } from '../../posix/time'

export type { Timespec }

export const KERNEL_MAJOR = 7
/** The minor version bslfs implements; the kernel's, when lower, wins. */
export const KERNEL_MINOR = 31
/** The oldest minor bslfs accepts: 64-byte init reply, 128-byte entries, max_pages. */
export const MIN_KERNEL_MINOR = 28

export const Op = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  READLINK: 5,
  SYMLINK: 6,
  MKNOD: 8,
  MKDIR: 9,
  UNLINK: 10,
  RMDIR: 11,
  RENAME: 12,
  LINK: 13,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  SETXATTR: 21,
  GETXATTR: 22,
  LISTXATTR: 23,
  REMOVEXATTR: 24,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  GETLK: 31,
  SETLK: 32,
  SETLKW: 33,
  ACCESS: 34,
  CREATE: 35,
  INTERRUPT: 36,
  BMAP: 37,
  DESTROY: 38,
  IOCTL: 39,
  POLL: 40,
  NOTIFY_REPLY: 41,
  BATCH_FORGET: 42,
  FALLOCATE: 43,
  READDIRPLUS: 44,
  RENAME2: 45,
  LSEEK: 46,
  COPY_FILE_RANGE: 47,
  /** 7.39; the kernel asks for it whenever statx wants more than stat gives (STATX_BTIME), whatever minor was agreed. */
  STATX: 52,
  /** 7.37: open(dir, O_TMPFILE); the kernel sends it whatever minor was agreed, and takes ENOSYS as "not supported". */
  TMPFILE: 51
} as const

/** INIT flags (fuse_init_in.flags / fuse_init_out.flags). */
export const Init = {
  ASYNC_READ: 1 << 0,
  ATOMIC_O_TRUNC: 1 << 3,
  DONT_MASK: 1 << 6,
  BIG_WRITES: 1 << 5,
  DO_READDIRPLUS: 1 << 13,
  ASYNC_DIO: 1 << 15,
  PARALLEL_DIROPS: 1 << 18,
  ABORT_ERROR: 1 << 21,
  MAX_PAGES: 1 << 22,
  POSIX_ACL: 1 << 20,
  CACHE_SYMLINKS: 1 << 23,
  /** Lookups of "." and ".." by node id: file handles outlive the kernel's inode cache (NFS export). */
  EXPORT_SUPPORT: 1 << 4,
  /** fuse_setxattr_in in its 16-byte form, whose setxattr_flags say when an ACL change must clear set-group-ID. */
  SETXATTR_EXT: 1 << 29,
  /** fcntl locks (and, with FLOCK_LOCKS, flock) go to the filesystem instead of staying in the kernel. */
  POSIX_LOCKS: 1 << 1,
  FLOCK_LOCKS: 1 << 10
} as const

/** fuse_lk_in.lk_flags: the lock is a flock(2) (whole file, owner the open file). */
export const LK_FLOCK = 1
/** fuse_release_in.release_flags: the file held flocks; release those of lock_owner. */
export const RELEASE_FLOCK_UNLOCK = 2
/** A lock's end "to the end of the file" (the kernel's OFFSET_MAX, 2^63 - 1), as a number: anything from here on. */
export const LK_END = Number.MAX_SAFE_INTEGER

/** fuse_lk_out: a lock GETLK found (type F_UNLCK: none); ends at or past LK_END go as OFFSET_MAX. */
export function lkOut (lk: { start: number, end: number, type: number, pid: number }): Buffer {
  const b = Buffer.alloc(24)
  const at = (v: number, o: number): void => { b.writeBigUInt64LE(v >= LK_END ? 0x7fffffffffffffffn : BigInt(v), o) }
  at(lk.start, 0)
  at(lk.end, 8)
  b.writeUInt32LE(lk.type, 16)
  b.writeUInt32LE(lk.pid, 20)
  return b
}

/** fuse_setxattr_in.setxattr_flags: the caller is outside the file's group and lacks CAP_FSETID (an ACL set clears S_ISGID). */
export const SETXATTR_ACL_KILL_SGID = 1 << 0

/** fuse_setattr_in.valid */
export const Fattr = {
  MODE: 1 << 0,
  UID: 1 << 1,
  GID: 1 << 2,
  SIZE: 1 << 3,
  ATIME: 1 << 4,
  MTIME: 1 << 5,
  FH: 1 << 6,
  ATIME_NOW: 1 << 7,
  MTIME_NOW: 1 << 8,
  CTIME: 1 << 10
} as const

/** fuse_open_out.open_flags */
export const Fopen = { DIRECT_IO: 1 << 0, KEEP_CACHE: 1 << 1 } as const

export const GETATTR_FH = 1
export const FSYNC_FDATASYNC = 1
export const RENAME_NOREPLACE = 1
export const RENAME_EXCHANGE = 2
export const RENAME_WHITEOUT = 4

export const IN_HEADER_BYTES = 40
export const OUT_HEADER_BYTES = 16
export const ATTR_BYTES = 88
export const ENTRY_OUT_BYTES = 40 + ATTR_BYTES
export const ATTR_OUT_BYTES = 16 + ATTR_BYTES
export const INIT_OUT_BYTES = 64
export const DIRENT_HEADER_BYTES = 24

const TWO_32 = 2 ** 32

/** What the kernel caches of an inode (fuse_attr). */
export interface Attr {
  ino: number
  size: number
  blocks: number
  atime: Timespec
  mtime: Timespec
  ctime: Timespec
  mode: number
  nlink: number
  uid: number
  gid: number
  rdev: number
  blksize: number
  /** What a file handle carries besides the node id (fuse_entry_out.generation); 0 when absent. */
  generation?: number
  /** Birth time, where known (statx's STATX_BTIME). */
  btime?: Timespec
}

export function u64 (b: Buffer, at: number): number {
  return b.readUInt32LE(at) + b.readUInt32LE(at + 4) * TWO_32
}

/** A signed 64-bit count of seconds (times before 1970 are negative). */
export function s64 (b: Buffer, at: number): number {
  return b.readUInt32LE(at) + b.readInt32LE(at + 4) * TWO_32
}

export function putU64 (b: Buffer, at: number, v: number): void {
  const hi = Math.floor(v / TWO_32)
  b.writeUInt32LE(v - hi * TWO_32, at)
  b.writeUInt32LE(hi >>> 0, at + 4)
}

export function putS64 (b: Buffer, at: number, v: number): void {
  const hi = Math.floor(v / TWO_32)
  b.writeUInt32LE(v - hi * TWO_32, at)
  b.writeInt32LE(hi, at + 4)
}

/** fuse_attr at `at` (88 bytes); times before 1970 go as negative seconds. */
export function putAttr (b: Buffer, at: number, a: Attr): void {
  putU64(b, at, a.ino)
  putU64(b, at + 8, a.size)
  putU64(b, at + 16, a.blocks)
  putS64(b, at + 24, a.atime.sec)
  putS64(b, at + 32, a.mtime.sec)
  putS64(b, at + 40, a.ctime.sec)
  b.writeUInt32LE(a.atime.nsec, at + 48)
  b.writeUInt32LE(a.mtime.nsec, at + 52)
  b.writeUInt32LE(a.ctime.nsec, at + 56)
  b.writeUInt32LE(a.mode >>> 0, at + 60)
  b.writeUInt32LE(Math.min(a.nlink, 0xffffffff), at + 64)
  b.writeUInt32LE(a.uid >>> 0, at + 68)
  b.writeUInt32LE(a.gid >>> 0, at + 72)
  b.writeUInt32LE(a.rdev >>> 0, at + 76)
  b.writeUInt32LE(a.blksize, at + 80)
  b.writeUInt32LE(0, at + 84)
}

/** Seconds as the kernel's (u64 seconds, u32 nanoseconds) validity pair. */
function putValid (b: Buffer, secAt: number, nsecAt: number, seconds: number): void {
  const whole = Math.floor(seconds)
  putU64(b, secAt, whole)
  b.writeUInt32LE(Math.floor((seconds - whole) * 1e9), nsecAt)
}

/** fuse_entry_out; ino 0 with a timeout is a negative entry (the name is known not to exist). */
export function putEntry (b: Buffer, at: number, ino: number, attr: Attr | null, entryTimeout: number, attrTimeout: number): void {
  putU64(b, at, ino)
  putU64(b, at + 8, attr?.generation ?? 0)
  putValid(b, at + 16, at + 32, entryTimeout)
  putValid(b, at + 24, at + 36, attrTimeout)
  if (attr) putAttr(b, at + 40, attr)
  else b.fill(0, at + 40, at + ENTRY_OUT_BYTES)
}

export function entryOut (ino: number, attr: Attr | null, entryTimeout: number, attrTimeout: number): Buffer {
  const b = Buffer.allocUnsafe(ENTRY_OUT_BYTES)
  putEntry(b, 0, ino, attr, entryTimeout, attrTimeout)
  return b
}

export function attrOut (attr: Attr, attrTimeout: number): Buffer {
  const b = Buffer.allocUnsafe(ATTR_OUT_BYTES)
  putValid(b, 0, 8, attrTimeout)
  b.writeUInt32LE(0, 12)
  putAttr(b, 16, attr)
  return b
}

const STATX_BASIC_STATS = 0x7ff
const STATX_BTIME = 0x800
export const STATX_OUT_BYTES = 32 + 256

/** fuse_statx_out: validity, then struct fuse_statx (the basic stats, and the birth time when `a` has one). */
export function statxOut (a: Attr, attrTimeout: number): Buffer {
  const b = Buffer.alloc(STATX_OUT_BYTES)
  putValid(b, 0, 8, attrTimeout)
  const s = 32
  b.writeUInt32LE(STATX_BASIC_STATS | (a.btime ? STATX_BTIME : 0), s)
  b.writeUInt32LE(a.blksize, s + 4)
  b.writeUInt32LE(Math.min(a.nlink, 0xffffffff), s + 16)
  b.writeUInt32LE(a.uid >>> 0, s + 20)
  b.writeUInt32LE(a.gid >>> 0, s + 24)
  b.writeUInt16LE(a.mode & 0xffff, s + 28)
  putU64(b, s + 32, a.ino)
  putU64(b, s + 40, a.size)
  putU64(b, s + 48, a.blocks)
  const time = (at: number, t: Timespec) => { putS64(b, s + at, t.sec); b.writeUInt32LE(t.nsec, s + at + 8) }
  time(64, a.atime)
  if (a.btime) time(80, a.btime)
  time(96, a.ctime)
  time(112, a.mtime)
  // The kernel's dev_t encoding (new_encode_dev) split into major and minor.
  b.writeUInt32LE((a.rdev >>> 8) & 0xfff, s + 128)
  b.writeUInt32LE((a.rdev & 0xff) | ((a.rdev >>> 12) & 0xfff00), s + 132)
  return b
}

export function openOut (fh: number, flags: number): Buffer {
  const b = Buffer.alloc(16)
  putU64(b, 0, fh)
  b.writeUInt32LE(flags, 8)
  return b
}

/** fuse_lseek_out: an offset. */
export function u64Out (v: number): Buffer {
  const b = Buffer.alloc(8)
  putU64(b, 0, v)
  return b
}

export function u32Out (v: number): Buffer {
  const b = Buffer.alloc(8)
  b.writeUInt32LE(v, 0)
  return b
}

/** fuse_ioctl_out (result 0, no retry) and the ioctl's output. */
export function ioctlOut (data: Buffer): Buffer[] {
  return [Buffer.alloc(16), data]
}

export interface StatFs {
  blocks: number
  bfree: number
  bavail: number
  files: number
  ffree: number
  bsize: number
  namelen: number
  frsize: number
}

export function statfsOut (s: StatFs): Buffer {
  const b = Buffer.alloc(80)
  putU64(b, 0, s.blocks)
  putU64(b, 8, s.bfree)
  putU64(b, 16, s.bavail)
  putU64(b, 24, s.files)
  putU64(b, 32, s.ffree)
  b.writeUInt32LE(s.bsize, 40)
  b.writeUInt32LE(s.namelen, 44)
  b.writeUInt32LE(s.frsize, 48)
  return b
}

/** Bytes a directory entry takes in a READDIR (plus: READDIRPLUS) reply. */
export function direntBytes (nameBytes: number, plus: boolean): number {
  return (plus ? ENTRY_OUT_BYTES : 0) + ((DIRENT_HEADER_BYTES + nameBytes + 7) & ~7)
}

/** Write one fuse_dirent at `at`: `off` is the cookie of the entry after it. Returns the bytes used. */
export function putDirent (b: Buffer, at: number, ino: number, off: number, mode: number, name: Buffer): number {
  putU64(b, at, ino)
  putU64(b, at + 8, off)
  b.writeUInt32LE(name.length, at + 16)
  b.writeUInt32LE((mode >>> 12) & 0o17, at + 20)
  name.copy(b, at + DIRENT_HEADER_BYTES)
  const end = at + DIRENT_HEADER_BYTES + name.length
  const padded = (end - at + 7) & ~7
  b.fill(0, end, at + padded)
  return padded
}

export interface InitOut {
  minor: number
  maxReadahead: number
  flags: number
  maxBackground: number
  congestionThreshold: number
  maxWrite: number
  maxPages: number
}

export function initOut (o: InitOut): Buffer {
  const b = Buffer.alloc(INIT_OUT_BYTES)
  b.writeUInt32LE(KERNEL_MAJOR, 0)
  b.writeUInt32LE(o.minor, 4)
  b.writeUInt32LE(o.maxReadahead, 8)
  b.writeUInt32LE(o.flags >>> 0, 12)
  b.writeUInt16LE(o.maxBackground, 16)
  b.writeUInt16LE(o.congestionThreshold, 18)
  b.writeUInt32LE(o.maxWrite, 20)
  b.writeUInt32LE(1, 24) // time_gran: nanoseconds
  b.writeUInt16LE(o.maxPages, 28)
  return b
}

/**
 * Notifications the filesystem sends unasked (linux/fuse.h, enum fuse_notify_code): a
 * fuse_out_header with unique 0 and `error` = the code, then the code's body.
 */
export const Notify = {
  INVAL_INODE: 2,
  INVAL_ENTRY: 3
} as const

/** A notification: its header and body, for one write to /dev/fuse. */
function notification (code: number, body: Buffer[]): Buffer[] {
  const h = Buffer.alloc(OUT_HEADER_BYTES)
  let len = OUT_HEADER_BYTES
  for (const b of body) len += b.length
  h.writeUInt32LE(len, 0)
  h.writeInt32LE(code, 4) // unique stays 0
  return [h, ...body]
}

/** fuse_notify_inval_inode_out: drop `ino`'s attributes, and its cached pages from `offset` for `length` bytes (0: to the end; offset < 0: none). */
export function notifyInvalInode (ino: number, offset: number, length: number): Buffer[] {
  const b = Buffer.alloc(24)
  putU64(b, 0, ino)
  putS64(b, 8, offset)
  putS64(b, 16, length)
  return notification(Notify.INVAL_INODE, [b])
}

/** fuse_notify_inval_entry_out: drop the kernel's entry `name` in directory `parent` (the name follows, NUL-ended). */
export function notifyInvalEntry (parent: number, name: Buffer): Buffer[] {
  const b = Buffer.alloc(16)
  putU64(b, 0, parent)
  b.writeUInt32LE(name.length, 8)
  b.writeUInt32LE(0, 12) // flags (7.38's FUSE_EXPIRE_ONLY not asked): padding before
  return notification(Notify.INVAL_ENTRY, [b, name, Buffer.from([0])])
}
