import { FsError } from '../errors'
import type { Inode } from './records'

/**
 * Inode flags (chattr/lsattr: FS_IOC_GETFLAGS and SETFLAGS), with the rules
 * ext4 applies to them. The kernel leaves these to a FUSE filesystem (its own
 * IS_IMMUTABLE/IS_APPEND checks read flags FUSE never sets), so the namespace
 * and the filesystem enforce them for every writer.
 */
export const FS_IMMUTABLE_FL = 0x10
export const FS_APPEND_FL = 0x20
/** The flags bslfs keeps; setting any other is EOPNOTSUPP. */
export const SUPPORTED_FLAGS = FS_IMMUTABLE_FL | FS_APPEND_FL

export const isImmutable = (i: Inode): boolean => ((i.flags ?? 0) & FS_IMMUTABLE_FL) !== 0
export const isAppendOnly = (i: Inode): boolean => ((i.flags ?? 0) & FS_APPEND_FL) !== 0

/** Unlink, rename, link of `inode`: EPERM when immutable or append-only. */
export function checkMovable (inode: Inode): void {
  if (isImmutable(inode)) throw new FsError('EPERM', `inode ${inode.ino} is immutable (chattr -i to change it)`)
  if (isAppendOnly(inode)) throw new FsError('EPERM', `inode ${inode.ino} is append-only (chattr -a to move or remove it)`)
}

/** A change to `inode` itself (data, size, mode, owner, times, xattrs): EPERM when immutable. */
export function checkChangeable (inode: Inode): void {
  if (isImmutable(inode)) throw new FsError('EPERM', `inode ${inode.ino} is immutable (chattr -i to change it)`)
}

/** A new name in directory `dir`: EPERM when it is immutable. */
export function checkCanAdd (dir: Inode): void {
  checkChangeable(dir)
}

/** A name removed from directory `dir`: EPERM when it is immutable or append-only. */
export function checkCanRemove (dir: Inode): void {
  checkMovable(dir)
}

/** FS_IOC_SETFLAGS: EOPNOTSUPP for a flag bslfs does not keep, EPERM unless root changes immutable or append-only. */
export function checkNewFlags (inode: Inode, flags: number, uid: number): void {
  const unknown = flags & ~SUPPORTED_FLAGS
  if (unknown) throw new FsError('EOPNOTSUPP', `inode flags 0x${unknown.toString(16)} are not supported (bslfs keeps immutable and append-only)`)
  // CAP_LINUX_IMMUTABLE: the kernel checks the capability before asking; the request's uid stands for it here.
  if (((inode.flags ?? 0) ^ flags) & SUPPORTED_FLAGS && uid !== 0) throw new FsError('EPERM', 'only root may change the immutable and append-only flags')
}
