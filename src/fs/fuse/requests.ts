/**
 * Decoding of the requests the kernel sends (linux/fuse.h), one table entry
 * per opcode: its name, the smallest body its struct allows at the protocol
 * minors bslfs accepts (7.28 and up), and how its fields become a typed
 * request. Every length is checked against the bytes actually read before a
 * field is touched; a malformed request throws FsError('EINVAL'), an opcode
 * bslfs does not implement FsError('ENOSYS'), and nothing else is thrown.
 */
import { FsError } from '../../errors'
import { Timespec } from '../../posix/time'
import { Fattr, FSYNC_FDATASYNC, GETATTR_FH, IN_HEADER_BYTES, LK_END, LK_FLOCK, Op, RELEASE_FLOCK_UNLOCK, s64, u64 } from './protocol'

/** A request's fixed header (fuse_in_header). */
export interface InHeader {
  len: number
  opcode: number
  unique: number
  nodeid: number
  uid: number
  gid: number
  pid: number
}

/** The header of a request of at least IN_HEADER_BYTES bytes. */
export function readHeader (b: Buffer): InHeader {
  return {
    len: b.readUInt32LE(0),
    opcode: b.readUInt32LE(4),
    unique: u64(b, 8),
    nodeid: u64(b, 16),
    uid: b.readUInt32LE(24),
    gid: b.readUInt32LE(28),
    pid: b.readUInt32LE(32)
  }
}

/** What the kernel offers in INIT (fuse_init_in). */
export interface InitIn { major: number, minor: number, maxReadahead: number, flags: number }

/** A setattr: only the fields present change. A time of 'now' is the filesystem's now. */
export interface SetAttr {
  mode?: number
  uid?: number
  gid?: number
  size?: number
  atime?: Timespec | 'now'
  mtime?: Timespec | 'now'
  /** The handle the change came through (ftruncate, futimens), when the kernel says. */
  fh?: number
}

/**
 * A lock request (fuse_lk_in): `owner` is the kernel's lock owner in hex (the
 * process's file table for POSIX locks, the open file for flock and OFD locks);
 * `end` inclusive, LK_END for "to the end of the file"; type F_RDLCK, F_WRLCK, F_UNLCK.
 */
export interface LockRequest { fh: number, owner: string, start: number, end: number, type: number, pid: number, flock: boolean }

/** One inode the kernel drops lookups of (FORGET, BATCH_FORGET). */
export interface Forget { ino: number, nlookup: number }

/** A request's body, decoded: `op` says which. */
export type FuseRequest =
  | { op: 'init', init: InitIn }
  | { op: 'destroy' }
  | { op: 'forget', forgets: Forget[] }
  | { op: 'interrupt', target: number }
  | { op: 'notify_reply' }
  | { op: 'lookup', name: string }
  | { op: 'getattr', fh: number | undefined }
  /** statx beyond stat (STATX_BTIME): answered from the same attributes. */
  | { op: 'statx', fh: number | undefined }
  | { op: 'setattr', set: SetAttr }
  | { op: 'readlink' }
  | { op: 'symlink', name: string, target: string }
  | { op: 'mknod', name: string, mode: number, rdev: number, umask: number }
  | { op: 'mkdir', name: string, mode: number, umask: number }
  | { op: 'unlink', name: string }
  | { op: 'rmdir', name: string }
  | { op: 'rename', name: string, newParent: number, newName: string, flags: number }
  | { op: 'link', ino: number, newName: string }
  | { op: 'open', flags: number }
  | { op: 'create', name: string, mode: number, flags: number, umask: number }
  /** O_TMPFILE: an unnamed file in the directory, open (the name the kernel sends is a placeholder). */
  | { op: 'tmpfile', mode: number, flags: number, umask: number }
  | { op: 'read', fh: number, offset: number, size: number }
  /** `data` is a view of the request buffer (a write's data is never copied). */
  | { op: 'write', fh: number, offset: number, data: Buffer, flags: number }
  /** `lockOwner`: whose POSIX locks this close releases (hex). */
  | { op: 'flush', fh: number, lockOwner: string }
  /** `flockOwner`: the file held flocks, of this owner (hex), which go with it. */
  | { op: 'release', fh: number, flockOwner?: string }
  | { op: 'fsync', fh: number, datasync: boolean }
  | { op: 'opendir' }
  | { op: 'readdir', fh: number, offset: number, size: number, plus: boolean }
  | { op: 'releasedir', fh: number }
  | { op: 'fsyncdir', fh: number }
  | { op: 'statfs' }
  /** `value` is a copy: the filesystem may keep it past the request buffer's reuse. */
  /** setxattrFlags: fuse_setxattr_in.setxattr_flags (0 unless FUSE_SETXATTR_EXT was agreed). */
  | { op: 'setxattr', name: string, value: Buffer, flags: number, setxattrFlags: number }
  | { op: 'getxattr', name: string, size: number }
  | { op: 'listxattr', size: number }
  | { op: 'removexattr', name: string }
  | { op: 'fallocate', fh: number, offset: number, length: number, mode: number }
  | { op: 'lseek', fh: number, offset: number, whence: number }
  | { op: 'copy_file_range', fhIn: number, offIn: number, nodeOut: number, fhOut: number, offOut: number, len: number, flags: number }
  /** An ioctl bslfs may answer (chattr's FS_IOC_GETFLAGS/SETFLAGS come this way); `input` is a copy. */
  | { op: 'ioctl', fh: number, flags: number, cmd: number, input: Buffer, outSize: number }
  | { op: 'getlk', lock: LockRequest }
  /** SETLK, and SETLKW (`wait`): blocks until the lock is had. */
  | { op: 'setlk', lock: LockRequest, wait: boolean }

// Body sizes of the kernel's structs (linux/fuse.h). Those that grew did so before 7.28
// (fuse_read_in and fuse_write_in at 7.9, fuse_mknod_in at 7.12), so at the minors bslfs
// accepts each has one size; fuse_setxattr_in is 8 bytes, or 16 once FUSE_SETXATTR_EXT
// is agreed (the session says so); fuse_init_in is 16 bytes from older
// kernels, 64 from 7.36 kernels on.
const FORGET_IN = 8
const FORGET_ONE = 16
const BATCH_FORGET_IN = 8
const GETATTR_IN = 16
const SETATTR_IN = 88
const MKNOD_IN = 16
const MKDIR_IN = 8
const RENAME_IN = 8
const RENAME2_IN = 16
const LINK_IN = 8
const OPEN_IN = 8
const CREATE_IN = 16
const READ_IN = 40
const WRITE_IN = 40
const RELEASE_IN = 24
const FLUSH_IN = 24
const FSYNC_IN = 16
const SETXATTR_IN = 8
const SETXATTR_EXT_IN = 16
const GETXATTR_IN = 8
const INIT_IN = 16
const INTERRUPT_IN = 8
const FALLOCATE_IN = 32
const LSEEK_IN = 24
const COPY_FILE_RANGE_IN = 56
const IOCTL_IN = 32
const STATX_IN = 24
const LK_IN = 48
/** A name: at least its NUL. */
const NAME = 1

/** Where a WRITE's data starts in the request buffer (fuse_in_header, fuse_write_in). */
export const WRITE_HEADERS = IN_HEADER_BYTES + WRITE_IN

interface RequestKind {
  name: string
  /** The smallest body this opcode's struct allows. */
  minBody: number
  /** Whether the kernel waits for a reply (FORGET, INTERRUPT and NOTIFY_REPLY get none). */
  replies: boolean
  /** Absent: bslfs answers ENOSYS and the kernel falls back (or stops asking). */
  decode?: (body: Buffer, h: InHeader, agreed: Agreed) => FuseRequest
}

/** The NUL-terminated name at `at` of `body`, and where the next field starts. */
function nameAt (body: Buffer, at: number, what: string): { text: string, next: number } {
  const nul = at < body.length ? body.indexOf(0, at) : -1
  if (nul < 0) throw new FsError('EINVAL', `${what}: a name without its NUL`)
  return { text: body.toString('utf8', at, nul), next: nul + 1 }
}

const name = (body: Buffer, at: number, what: string): string => nameAt(body, at, what).text

function setattr (b: Buffer): SetAttr {
  const valid = b.readUInt32LE(0)
  const set: SetAttr = {}
  if (valid & Fattr.FH) set.fh = u64(b, 8)
  if (valid & Fattr.SIZE) set.size = u64(b, 16)
  if (valid & Fattr.ATIME) set.atime = valid & Fattr.ATIME_NOW ? 'now' : { sec: s64(b, 32), nsec: b.readUInt32LE(56) }
  if (valid & Fattr.MTIME) set.mtime = valid & Fattr.MTIME_NOW ? 'now' : { sec: s64(b, 40), nsec: b.readUInt32LE(60) }
  if (valid & Fattr.MODE) set.mode = b.readUInt32LE(68)
  if (valid & Fattr.UID) set.uid = b.readUInt32LE(76)
  if (valid & Fattr.GID) set.gid = b.readUInt32LE(80)
  return set
}

function batchForget (b: Buffer): FuseRequest {
  const count = b.readUInt32LE(0)
  if (b.length < BATCH_FORGET_IN + count * FORGET_ONE) throw new FsError('EINVAL', `batch_forget: ${count} entries in ${b.length} bytes`)
  const forgets: Forget[] = []
  for (let i = 0, at = BATCH_FORGET_IN; i < count; i++, at += FORGET_ONE) forgets.push({ ino: u64(b, at), nlookup: u64(b, at + 8) })
  return { op: 'forget', forgets }
}

function write (b: Buffer): FuseRequest {
  const size = b.readUInt32LE(16)
  if (b.length < WRITE_IN + size) throw new FsError('EINVAL', `write of ${size} bytes carries ${b.length - WRITE_IN}`)
  // flags: the file's open flags (O_DIRECT says the kernel's page cache was bypassed).
  return { op: 'write', fh: u64(b, 0), offset: u64(b, 8), data: b.subarray(WRITE_IN, WRITE_IN + size), flags: b.readUInt32LE(32) }
}

function setxattr (b: Buffer, _h: InHeader, agreed: Agreed): FuseRequest {
  const fixed = agreed.setxattrExt ? SETXATTR_EXT_IN : SETXATTR_IN
  if (b.length < fixed + 1) throw new FsError('EINVAL', `setxattr: ${b.length}-byte body, at least ${fixed + 1} expected`)
  const size = b.readUInt32LE(0)
  const key = nameAt(b, fixed, 'setxattr')
  if (b.length < key.next + size) throw new FsError('EINVAL', `setxattr of a ${size}-byte value carries ${b.length - key.next}`)
  const setxattrFlags = agreed.setxattrExt ? b.readUInt32LE(8) : 0
  return { op: 'setxattr', name: key.text, value: Buffer.from(b.subarray(key.next, key.next + size)), flags: b.readUInt32LE(4), setxattrFlags }
}

function rename (b: Buffer, fixed: number, flags: number): FuseRequest {
  const from = nameAt(b, fixed, 'rename')
  return { op: 'rename', name: from.text, newParent: u64(b, 0), newName: name(b, from.next, 'rename'), flags }
}

function ioctl (b: Buffer): FuseRequest {
  const inSize = b.readUInt32LE(24)
  if (b.length < IOCTL_IN + inSize) throw new FsError('EINVAL', `ioctl with ${inSize} bytes of input carries ${b.length - IOCTL_IN}`)
  return { op: 'ioctl', fh: u64(b, 0), flags: b.readUInt32LE(8), cmd: b.readUInt32LE(12), input: Buffer.from(b.subarray(IOCTL_IN, IOCTL_IN + inSize)), outSize: b.readUInt32LE(28) }
}

const hex64 = (b: Buffer, at: number): string => b.readBigUInt64LE(at).toString(16)

function lock (b: Buffer): LockRequest {
  const end = u64(b, 24)
  return {
    fh: u64(b, 0), owner: hex64(b, 8), start: Math.min(u64(b, 16), LK_END), end: Math.min(end, LK_END),
    type: b.readUInt32LE(32), pid: b.readUInt32LE(36), flock: (b.readUInt32LE(40) & LK_FLOCK) !== 0
  }
}

function kind (name: string, minBody: number, decode?: RequestKind['decode'], replies = true): RequestKind {
  return { name, minBody, replies, decode }
}

/** Every opcode of the protocol bslfs knows, by number. */
export const REQUESTS: ReadonlyMap<number, RequestKind> = new Map<number, RequestKind>([
  [Op.INIT, kind('init', INIT_IN, b => ({ op: 'init', init: { major: b.readUInt32LE(0), minor: b.readUInt32LE(4), maxReadahead: b.readUInt32LE(8), flags: b.readUInt32LE(12) } }))],
  [Op.DESTROY, kind('destroy', 0, () => ({ op: 'destroy' }))],
  [Op.FORGET, kind('forget', FORGET_IN, (b, h) => ({ op: 'forget', forgets: [{ ino: h.nodeid, nlookup: u64(b, 0) }] }), false)],
  [Op.BATCH_FORGET, kind('batch_forget', BATCH_FORGET_IN, batchForget, false)],
  [Op.INTERRUPT, kind('interrupt', INTERRUPT_IN, b => ({ op: 'interrupt', target: u64(b, 0) }), false)],
  [Op.NOTIFY_REPLY, kind('notify_reply', 0, () => ({ op: 'notify_reply' }), false)],
  [Op.LOOKUP, kind('lookup', NAME, b => ({ op: 'lookup', name: name(b, 0, 'lookup') }))],
  [Op.GETATTR, kind('getattr', GETATTR_IN, b => ({ op: 'getattr', fh: b.readUInt32LE(0) & GETATTR_FH ? u64(b, 8) : undefined }))],
  [Op.SETATTR, kind('setattr', SETATTR_IN, b => ({ op: 'setattr', set: setattr(b) }))],
  [Op.READLINK, kind('readlink', 0, () => ({ op: 'readlink' }))],
  [Op.SYMLINK, kind('symlink', 2 * NAME, b => {
    const link = nameAt(b, 0, 'symlink')
    return { op: 'symlink', name: link.text, target: name(b, link.next, 'symlink') }
  })],
  [Op.MKNOD, kind('mknod', MKNOD_IN + NAME, b => ({ op: 'mknod', name: name(b, MKNOD_IN, 'mknod'), mode: b.readUInt32LE(0), rdev: b.readUInt32LE(4), umask: b.readUInt32LE(8) }))],
  [Op.MKDIR, kind('mkdir', MKDIR_IN + NAME, b => ({ op: 'mkdir', name: name(b, MKDIR_IN, 'mkdir'), mode: b.readUInt32LE(0), umask: b.readUInt32LE(4) }))],
  [Op.UNLINK, kind('unlink', NAME, b => ({ op: 'unlink', name: name(b, 0, 'unlink') }))],
  [Op.RMDIR, kind('rmdir', NAME, b => ({ op: 'rmdir', name: name(b, 0, 'rmdir') }))],
  [Op.RENAME, kind('rename', RENAME_IN + 2 * NAME, b => rename(b, RENAME_IN, 0))],
  [Op.RENAME2, kind('rename2', RENAME2_IN + 2 * NAME, b => rename(b, RENAME2_IN, b.readUInt32LE(8)))],
  [Op.LINK, kind('link', LINK_IN + NAME, b => ({ op: 'link', ino: u64(b, 0), newName: name(b, LINK_IN, 'link') }))],
  [Op.OPEN, kind('open', OPEN_IN, b => ({ op: 'open', flags: b.readUInt32LE(0) }))],
  [Op.CREATE, kind('create', CREATE_IN + NAME, b => ({ op: 'create', name: name(b, CREATE_IN, 'create'), mode: b.readUInt32LE(4), flags: b.readUInt32LE(0), umask: b.readUInt32LE(8) }))],
  [Op.READ, kind('read', READ_IN, b => ({ op: 'read', fh: u64(b, 0), offset: u64(b, 8), size: b.readUInt32LE(16) }))],
  [Op.WRITE, kind('write', WRITE_IN, write)],
  [Op.FLUSH, kind('flush', FLUSH_IN, b => ({ op: 'flush', fh: u64(b, 0), lockOwner: hex64(b, 16) }))],
  [Op.RELEASE, kind('release', RELEASE_IN, b => ({ op: 'release', fh: u64(b, 0), ...(b.readUInt32LE(12) & RELEASE_FLOCK_UNLOCK ? { flockOwner: hex64(b, 16) } : {}) }))],
  [Op.FSYNC, kind('fsync', FSYNC_IN, b => ({ op: 'fsync', fh: u64(b, 0), datasync: (b.readUInt32LE(8) & FSYNC_FDATASYNC) !== 0 }))],
  [Op.OPENDIR, kind('opendir', OPEN_IN, () => ({ op: 'opendir' }))],
  [Op.READDIR, kind('readdir', READ_IN, b => ({ op: 'readdir', fh: u64(b, 0), offset: u64(b, 8), size: b.readUInt32LE(16), plus: false }))],
  [Op.READDIRPLUS, kind('readdirplus', READ_IN, b => ({ op: 'readdir', fh: u64(b, 0), offset: u64(b, 8), size: b.readUInt32LE(16), plus: true }))],
  [Op.RELEASEDIR, kind('releasedir', RELEASE_IN, b => ({ op: 'releasedir', fh: u64(b, 0) }))],
  [Op.FSYNCDIR, kind('fsyncdir', FSYNC_IN, b => ({ op: 'fsyncdir', fh: u64(b, 0) }))],
  [Op.STATFS, kind('statfs', 0, () => ({ op: 'statfs' }))],
  [Op.SETXATTR, kind('setxattr', SETXATTR_IN + NAME, setxattr)],
  [Op.GETXATTR, kind('getxattr', GETXATTR_IN + NAME, b => ({ op: 'getxattr', name: name(b, GETXATTR_IN, 'getxattr'), size: b.readUInt32LE(0) }))],
  [Op.LISTXATTR, kind('listxattr', GETXATTR_IN, b => ({ op: 'listxattr', size: b.readUInt32LE(0) }))],
  [Op.REMOVEXATTR, kind('removexattr', NAME, b => ({ op: 'removexattr', name: name(b, 0, 'removexattr') }))],
  [Op.IOCTL, kind('ioctl', IOCTL_IN, ioctl)],
  [Op.TMPFILE, kind('tmpfile', CREATE_IN, b => ({ op: 'tmpfile', mode: b.readUInt32LE(4), flags: b.readUInt32LE(0), umask: b.readUInt32LE(8) }))],
  [Op.STATX, kind('statx', STATX_IN, b => ({ op: 'statx', fh: b.readUInt32LE(0) & GETATTR_FH ? u64(b, 8) : undefined }))],
  // Sent only when INIT agreed on POSIX_LOCKS (a shared filesystem); else the kernel keeps locks locally.
  [Op.GETLK, kind('getlk', LK_IN, b => ({ op: 'getlk', lock: lock(b) }))],
  [Op.SETLK, kind('setlk', LK_IN, b => ({ op: 'setlk', lock: lock(b), wait: false }))],
  [Op.SETLKW, kind('setlkw', LK_IN, b => ({ op: 'setlk', lock: lock(b), wait: true }))],
  // Not implemented, and the kernel copes: ACCESS (default_permissions: the kernel checks), BMAP, POLL.
  [Op.ACCESS, kind('access', 0)],
  [Op.BMAP, kind('bmap', 0)],
  [Op.POLL, kind('poll', 0)],
  [Op.FALLOCATE, kind('fallocate', FALLOCATE_IN, b => ({ op: 'fallocate', fh: u64(b, 0), offset: u64(b, 8), length: u64(b, 16), mode: b.readUInt32LE(24) }))],
  [Op.LSEEK, kind('lseek', LSEEK_IN, b => ({ op: 'lseek', fh: u64(b, 0), offset: u64(b, 8), whence: b.readUInt32LE(16) }))],
  [Op.COPY_FILE_RANGE, kind('copy_file_range', COPY_FILE_RANGE_IN, b => ({
    op: 'copy_file_range', fhIn: u64(b, 0), offIn: u64(b, 8), nodeOut: u64(b, 16), fhOut: u64(b, 24), offOut: u64(b, 32), len: u64(b, 40), flags: u64(b, 48)
  }))]
])

/** An opcode's name for logs. */
export function opName (opcode: number): string {
  return REQUESTS.get(opcode)?.name ?? `opcode ${opcode}`
}

/** Whether the kernel waits for an answer to this opcode (an unknown one: it may, so it gets ENOSYS). */
export function expectsReply (opcode: number): boolean {
  return REQUESTS.get(opcode)?.replies ?? true
}

/**
 * The body of the request `h` heads (the bytes read after its header),
 * decoded. Throws FsError('EINVAL') when the header's length is not what was
 * read or the body is short of its opcode's struct, or a name lacks its NUL;
 * FsError('ENOSYS') for an opcode bslfs does not implement.
 */
/** What INIT agreed that changes a request's layout. */
export interface Agreed {
  /** FUSE_SETXATTR_EXT: fuse_setxattr_in is 16 bytes. */
  setxattrExt?: boolean
}

export function decodeRequest (h: InHeader, body: Buffer, agreed: Agreed = {}): FuseRequest {
  const k = REQUESTS.get(h.opcode)
  if (!k) throw new FsError('ENOSYS', `opcode ${h.opcode} is unknown`)
  if (h.len !== IN_HEADER_BYTES + body.length) {
    throw new FsError('EINVAL', `${k.name}: the header says ${h.len} bytes, ${IN_HEADER_BYTES + body.length} came`)
  }
  if (!k.decode) throw new FsError('ENOSYS', `${k.name} is not implemented`)
  if (body.length < k.minBody) throw new FsError('EINVAL', `${k.name}: ${body.length}-byte body, at least ${k.minBody} expected`)
  return k.decode(body, h, agreed)
}
