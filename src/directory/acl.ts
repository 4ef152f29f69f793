import { FsError } from '../errors'
import { isDir, S_IFMT, S_IFLNK, S_ISGID } from '../posix/modes'
import type { Timespec } from '../posix/time'
import type { Namespace } from './namespace'
import { Inode, keys } from './records'
import type { Writer } from './writer'

/**
 * POSIX ACLs, stored as the xattrs the kernel reads and writes
 * (system.posix_acl_access, system.posix_acl_default; linux/posix_acl_xattr.h:
 * a u32 version 2, then entries of u16 tag, u16 perm, u32 id, little-endian).
 * With FUSE_POSIX_ACL the kernel enforces them; what it leaves to the
 * filesystem is kept here, as ext4 does it (fs/posix_acl.c): the mode follows
 * an access ACL that is set, an ACL follows a chmod, and new inodes inherit
 * their directory's default ACL.
 */
export const ACL_ACCESS = 'system.posix_acl_access'
export const ACL_DEFAULT = 'system.posix_acl_default'

const VERSION = 2
const USER_OBJ = 0x01
const USER = 0x02
const GROUP_OBJ = 0x04
const GROUP = 0x08
const MASK = 0x10
const OTHER = 0x20

interface Entry { tag: number, perm: number, id: number }

export function isAclName (name: string): boolean {
  return name === ACL_ACCESS || name === ACL_DEFAULT
}

/** Parse and check an ACL xattr: EINVAL naming what is wrong. */
export function parseAcl (value: Buffer): Entry[] {
  if (value.length < 4 || (value.length - 4) % 8 !== 0) throw new FsError('EINVAL', `an ACL of ${value.length} bytes is not 4 + 8 per entry`)
  if (value.readUInt32LE(0) !== VERSION) throw new FsError('EINVAL', `ACL version ${value.readUInt32LE(0)}, only ${VERSION} exists`)
  const out: Entry[] = []
  for (let at = 4; at < value.length; at += 8) {
    const e = { tag: value.readUInt16LE(at), perm: value.readUInt16LE(at + 2), id: value.readUInt32LE(at + 4) }
    if (![USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER].includes(e.tag)) throw new FsError('EINVAL', `ACL entry tag 0x${e.tag.toString(16)} is unknown`)
    if (e.perm & ~7) throw new FsError('EINVAL', `ACL entry permissions 0${e.perm.toString(8)} are not rwx bits`)
    out.push(e)
  }
  const count = (tag: number): number => out.filter(e => e.tag === tag).length
  if (count(USER_OBJ) !== 1 || count(GROUP_OBJ) !== 1 || count(OTHER) !== 1 || count(MASK) > 1) {
    throw new FsError('EINVAL', 'an ACL needs one owner, one owning-group and one other entry, and at most one mask')
  }
  if ((count(USER) || count(GROUP)) && !count(MASK)) throw new FsError('EINVAL', 'an ACL with named users or groups needs a mask entry')
  return out
}

export function encodeAcl (entries: Entry[]): Buffer {
  const b = Buffer.alloc(4 + 8 * entries.length)
  b.writeUInt32LE(VERSION, 0)
  entries.forEach((e, i) => {
    b.writeUInt16LE(e.tag, 4 + 8 * i)
    b.writeUInt16LE(e.perm, 6 + 8 * i)
    b.writeUInt32LE(e.tag === USER || e.tag === GROUP ? e.id : 0xffffffff, 8 + 8 * i)
  })
  return b
}

/** The permission bits an access ACL stands for, and whether the mode alone says it all (posix_acl_equiv_mode). */
function aclMode (entries: Entry[]): { perms: number, equivalent: boolean } {
  let perms = 0
  let equivalent = true
  let group = 0
  let mask: number | undefined
  for (const e of entries) {
    if (e.tag === USER_OBJ) perms |= e.perm << 6
    else if (e.tag === GROUP_OBJ) group = e.perm
    else if (e.tag === OTHER) perms |= e.perm
    else if (e.tag === MASK) { mask = e.perm; equivalent = false } else equivalent = false
  }
  return { perms: perms | ((mask ?? group) << 3), equivalent }
}

/** The ACL after a chmod to `mode` (posix_acl_chmod): owner, mask (else owning group) and other take the mode's bits. */
function chmodAcl (entries: Entry[], mode: number): Entry[] {
  const hasMask = entries.some(e => e.tag === MASK)
  return entries.map(e => {
    if (e.tag === USER_OBJ) return { ...e, perm: (mode >> 6) & 7 }
    if (e.tag === OTHER) return { ...e, perm: mode & 7 }
    if (e.tag === (hasMask ? MASK : GROUP_OBJ)) return { ...e, perm: (mode >> 3) & 7 }
    return e
  })
}

/**
 * A new inode's access ACL from its directory's default ACL, and its mode
 * masked by it (posix_acl_create_masq); `acl` undefined when the mode says it all.
 */
function createMasq (entries: Entry[], mode: number): { acl?: Entry[], mode: number } {
  let m = mode
  let notEquiv = false
  const out = entries.map(e => ({ ...e }))
  let groupObj: Entry | undefined
  let maskObj: Entry | undefined
  for (const e of out) {
    if (e.tag === USER_OBJ) { e.perm &= (m >> 6) & 7; m &= (e.perm << 6) | ~0o700 } else if (e.tag === OTHER) { e.perm &= m & 7; m &= e.perm | ~0o007 } else if (e.tag === GROUP_OBJ) groupObj = e
    else if (e.tag === MASK) { maskObj = e; notEquiv = true } else notEquiv = true
  }
  const g = maskObj ?? groupObj!
  g.perm &= (m >> 3) & 7
  m &= (g.perm << 3) | ~0o070
  return { acl: notEquiv ? out : undefined, mode: m }
}

async function readAcl (w: Writer, ns: Namespace, ino: number, name: string): Promise<Entry[] | undefined> {
  if (!ns.mayHaveXattrs(ino)) return undefined
  const v = await w.tx.get(keys.xattr(ino, name))
  return v ? parseAcl(v) : undefined
}

function putXattr (w: Writer, ns: Namespace, ino: number, name: string, value: Buffer): void {
  w.tx.put(keys.xattr(ino, name), value)
  w.tx.onCommit(() => ns.noteXattrs(ino))
}

/**
 * In createNode's transaction: the mode of a new inode in `dir`, with the
 * ACLs it inherits written. Without a default ACL the umask applies; with one
 * it does not (the default ACL masks the mode instead), as on ext4.
 */
export async function inheritAcls (w: Writer, ns: Namespace, dir: Inode, inode: Inode, umask: number | undefined): Promise<number> {
  const type = inode.mode & S_IFMT
  const def = type === S_IFLNK ? undefined : await readAcl(w, ns, dir.ino, ACL_DEFAULT)
  if (!def) return type === S_IFLNK || umask === undefined ? inode.mode : inode.mode & ~(umask & 0o777)
  const { acl, mode } = createMasq(def, inode.mode & 0o777)
  if (acl) putXattr(w, ns, inode.ino, ACL_ACCESS, encodeAcl(acl))
  if (isDir(inode.mode)) putXattr(w, ns, inode.ino, ACL_DEFAULT, encodeAcl(def))
  return (inode.mode & ~0o777) | mode
}

/**
 * setxattr/removexattr of an ACL (value null: remove), with the mode an access
 * ACL stands for, in one transaction. An access ACL the mode says all of is
 * not stored (the mode is). A default ACL only on directories.
 */
/**
 * Set or remove an ACL. `killSgid`: the caller is outside the file's group and may not keep
 * set-group-ID (the kernel says so), so an access ACL clears it, as posix_acl_update_mode does on ext4.
 */
export async function setAcl (ns: Namespace, ino: number, name: string, value: Buffer | null, flags: number, now: Timespec, opts: { killSgid?: boolean } = {}): Promise<void> {
  const entries = value ? parseAcl(value) : null
  return await ns.write(async w => {
    const inode = await w.inode(ino)
    const key = keys.xattr(ino, name)
    const exists = ns.mayHaveXattrs(ino) && (await w.tx.get(key)) !== undefined
    // XATTR_CREATE, XATTR_REPLACE (the kernel's own ACL calls pass neither); removing an absent ACL is no error, as on ext4.
    if ((flags & 1) && exists) throw new FsError('EEXIST', name)
    if ((flags & 2) && !exists) throw new FsError('ENODATA', name)
    if (name === ACL_DEFAULT && !isDir(inode.mode)) throw new FsError('EACCES', 'only a directory has a default ACL')
    const updated: Inode = { ...inode, ctime: now }
    if (entries && name === ACL_ACCESS) {
      const { perms, equivalent } = aclMode(entries)
      updated.mode = (inode.mode & ~0o777) | perms
      if (opts.killSgid === true) updated.mode &= ~S_ISGID
      if (equivalent) {
        if (exists) w.tx.del(key)
      } else putXattr(w, ns, ino, name, encodeAcl(entries))
    } else if (entries) {
      putXattr(w, ns, ino, name, encodeAcl(entries))
    } else {
      w.tx.del(key)
    }
    w.putInode(updated)
  })
}

/** After a chmod: the access ACL's owner, mask and other entries take the new mode (posix_acl_chmod). */
export function chmodAcls (ns: Namespace, ino: number, mode: number): Promise<void> {
  return ns.write(async w => {
    const acl = await readAcl(w, ns, ino, ACL_ACCESS)
    if (acl) putXattr(w, ns, ino, ACL_ACCESS, encodeAcl(chmodAcl(acl, mode)))
  })
}
