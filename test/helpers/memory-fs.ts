// A small in-memory filesystem on the FUSE session (src/fs/fuse/session.ts), for testing the
// session and the channel through the kernel without the rest of bslfs. Every call is logged
// with its arguments. It runs in the test's own process: drive it only with asynchronous calls
// (fs.promises, child processes), since a synchronous call on the mount would block the event
// loop that must answer it.
import { FsError } from '../../src/errors'
import { Attr, StatFs } from '../../src/fs/fuse/protocol'
import { Caller, DirItem, FuseFilesystem, SetAttr } from '../../src/fs/fuse/session'
import { S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from '../../src/posix/modes'
import { Timespec } from '../../src/posix/time'

const O_TRUNC = 0o1000

export interface Call { op: string, args: unknown[] }

interface Node {
  attr: Attr
  data?: Buffer
  children?: Map<string, number>
  target?: string
  xattrs: Map<string, Buffer>
}

/** A file with numbers past 32 bits everywhere the kernel carries them. */
export const HUGE = { ino: 2 ** 40 + 123, size: 2 ** 40 + 5, blocks: 2 ** 35 + 7, nlink: 2 ** 32 - 1 }
export const STATFS: StatFs = { blocks: 2 ** 40 + 1, bfree: 2 ** 39 + 2, bavail: 2 ** 39 + 3, files: 2 ** 36 + 4, ffree: 2 ** 35 + 5, bsize: 4096, namelen: 255, frsize: 4096 }

function now (): Timespec {
  const ms = Date.now()
  return { sec: Math.floor(ms / 1000), nsec: (ms % 1000) * 1e6 }
}

export class MemoryFs implements FuseFilesystem {
  readonly calls: Call[] = []
  private readonly nodes = new Map<number, Node>()
  private nextIno = 2 ** 33 // every new inode number is above 2^32
  private nextFh = 1
  /** Ops whose calls wait (a hung server) until `release`. */
  private readonly hung = new Set<string>()
  private readonly held: Array<() => void> = []
  /** The signal each held call got. */
  readonly signals: Array<AbortSignal | undefined> = []

  constructor () {
    this.nodes.set(1, this.node(1, S_IFDIR | 0o777, 0, 0))
    this.nodes.get(1)!.children = new Map([['huge', HUGE.ino]])
    const huge = this.node(HUGE.ino, S_IFREG | 0o644, 0, 0)
    Object.assign(huge.attr, { size: HUGE.size, blocks: HUGE.blocks, nlink: HUGE.nlink })
    this.nodes.set(HUGE.ino, huge)
  }

  clear (): void { this.calls.length = 0 }
  of (op: string): Call[] { return this.calls.filter(c => c.op === op) }

  private log (op: string, ...args: unknown[]): void { this.calls.push({ op, args }) }

  /** From now on, calls of `op` wait until `resume()` (they never answer before). */
  hang (op: string): void { this.hung.add(op) }

  /** Let the held calls go on (and answer, late), and stop holding. */
  resume (): void {
    this.hung.clear()
    for (const go of this.held.splice(0)) go()
  }

  /** How many calls wait in `hang`. */
  waiting (): number { return this.held.length }

  private async hold (op: string, signal: AbortSignal | undefined): Promise<void> {
    if (!this.hung.has(op)) return
    this.signals.push(signal)
    await new Promise<void>(resolve => this.held.push(resolve))
  }

  private node (ino: number, mode: number, uid: number, gid: number): Node {
    const t = now()
    const n: Node = { attr: { ino, size: 0, blocks: 0, atime: t, mtime: t, ctime: t, mode, nlink: 1, uid, gid, rdev: 0, blksize: 4096 }, xattrs: new Map() }
    if ((mode & S_IFMT) === S_IFDIR) { n.children = new Map(); n.attr.nlink = 2 }
    if ((mode & S_IFMT) === S_IFREG) n.data = Buffer.alloc(0)
    return n
  }

  private get (ino: number): Node {
    const n = this.nodes.get(ino)
    if (!n) throw new FsError('ENOENT', `inode ${ino}`)
    return n
  }

  private dirOf (ino: number): Map<string, number> {
    const d = this.get(ino).children
    if (!d) throw new FsError('ENOTDIR', `inode ${ino}`)
    return d
  }

  private make (parent: number, name: string, mode: number, caller: Caller): Node {
    const d = this.dirOf(parent)
    if (d.has(name)) throw new FsError('EEXIST', name)
    // The session asks the kernel to leave the umask to the filesystem (FUSE_DONT_MASK, for POSIX ACLs).
    const n = this.node(this.nextIno++, caller.umask === undefined ? mode : mode & ~(caller.umask & 0o777), caller.uid, caller.gid)
    this.nodes.set(n.attr.ino, n)
    d.set(name, n.attr.ino)
    return n
  }

  async lookup (parent: number, name: string): Promise<Attr | null> {
    this.log('lookup', parent, name)
    const ino = this.dirOf(parent).get(name)
    return ino === undefined ? null : { ...this.get(ino).attr }
  }

  async getattr (ino: number, fh: number | undefined): Promise<Attr> {
    this.log('getattr', ino, fh)
    return { ...this.get(ino).attr }
  }

  async setattr (ino: number, set: SetAttr, caller: Caller): Promise<Attr> {
    this.log('setattr', ino, set, caller)
    const n = this.get(ino)
    const t = now()
    if (set.mode !== undefined) n.attr.mode = (n.attr.mode & S_IFMT) | (set.mode & 0o7777)
    if (set.uid !== undefined) n.attr.uid = set.uid
    if (set.gid !== undefined) n.attr.gid = set.gid
    if (set.size !== undefined && n.data) {
      const d = Buffer.alloc(set.size)
      n.data.copy(d, 0, 0, Math.min(set.size, n.data.length))
      n.data = d
      n.attr.size = set.size
    }
    if (set.atime !== undefined) n.attr.atime = set.atime === 'now' ? t : set.atime
    if (set.mtime !== undefined) n.attr.mtime = set.mtime === 'now' ? t : set.mtime
    n.attr.ctime = t
    return { ...n.attr }
  }

  async readlink (ino: number): Promise<string> {
    this.log('readlink', ino)
    const n = this.get(ino)
    if (n.target === undefined) throw new FsError('EINVAL', 'not a symlink')
    return n.target
  }

  async mknod (parent: number, name: string, mode: number, rdev: number, caller: Caller): Promise<Attr> {
    this.log('mknod', parent, name, mode, rdev, caller)
    const n = this.make(parent, name, mode, caller)
    n.attr.rdev = rdev
    return { ...n.attr }
  }

  async mkdir (parent: number, name: string, mode: number, caller: Caller): Promise<Attr> {
    this.log('mkdir', parent, name, mode, caller)
    return { ...this.make(parent, name, S_IFDIR | (mode & 0o7777), caller).attr }
  }

  async symlink (parent: number, name: string, target: string, caller: Caller): Promise<Attr> {
    this.log('symlink', parent, name, target, caller)
    const n = this.make(parent, name, S_IFLNK | 0o777, caller)
    n.target = target
    n.attr.size = Buffer.byteLength(target)
    return { ...n.attr }
  }

  async unlink (parent: number, name: string): Promise<void> {
    this.log('unlink', parent, name)
    const d = this.dirOf(parent)
    const ino = d.get(name)
    if (ino === undefined) throw new FsError('ENOENT', name)
    d.delete(name)
    this.get(ino).attr.nlink--
  }

  async rmdir (parent: number, name: string): Promise<void> {
    this.log('rmdir', parent, name)
    const d = this.dirOf(parent)
    const ino = d.get(name)
    if (ino === undefined) throw new FsError('ENOENT', name)
    if (this.dirOf(ino).size > 0) throw new FsError('ENOTEMPTY', name)
    d.delete(name)
    this.nodes.delete(ino)
  }

  async rename (parent: number, name: string, newParent: number, newName: string, flags: number): Promise<void> {
    this.log('rename', parent, name, newParent, newName, flags)
    const ino = this.dirOf(parent).get(name)
    if (ino === undefined) throw new FsError('ENOENT', name)
    if (flags & 1 && this.dirOf(newParent).has(newName)) throw new FsError('EEXIST', newName)
    this.dirOf(parent).delete(name)
    this.dirOf(newParent).set(newName, ino)
  }

  async link (ino: number, newParent: number, newName: string): Promise<Attr> {
    this.log('link', ino, newParent, newName)
    const n = this.get(ino)
    this.dirOf(newParent).set(newName, ino)
    n.attr.nlink++
    return { ...n.attr }
  }

  async open (ino: number, flags: number): Promise<number> {
    this.log('open', ino, flags)
    const n = this.get(ino)
    // The session asks for atomic_o_trunc: O_TRUNC comes with the open, not as a setattr.
    if (flags & O_TRUNC && n.data) { n.data = Buffer.alloc(0); n.attr.size = 0 }
    return this.nextFh++
  }

  async create (parent: number, name: string, mode: number, flags: number, caller: Caller): Promise<{ attr: Attr, fh: number }> {
    this.log('create', parent, name, mode, flags, caller)
    return { attr: { ...this.make(parent, name, S_IFREG | (mode & 0o7777), caller).attr }, fh: this.nextFh++ }
  }

  forget (ino: number, nlookup: number): void { this.log('forget', ino, nlookup) }

  async read (ino: number, fh: number, offset: number, size: number, signal?: AbortSignal): Promise<Buffer[]> {
    this.log('read', ino, fh, offset, size)
    await this.hold('read', signal)
    const d = this.get(ino).data ?? Buffer.alloc(0)
    return [Buffer.from(d.subarray(Math.min(offset, d.length), Math.min(offset + size, d.length)))]
  }

  write (ino: number, fh: number, offset: number, data: Buffer, _keepBuffer?: () => void, signal?: AbortSignal): number | Promise<number> {
    this.log('write', ino, fh, offset, data.length)
    if (this.hung.has('write')) {
      // The data is valid until the promise settles: copied before it does.
      return this.hold('write', signal).then(() => this.store(ino, offset, data))
    }
    return this.store(ino, offset, data)
  }

  private store (ino: number, offset: number, data: Buffer): number {
    const n = this.get(ino)
    const end = offset + data.length
    if (!n.data || end > n.data.length) {
      const d = Buffer.alloc(Math.max(end, n.data?.length ?? 0))
      n.data?.copy(d)
      n.data = d
    }
    data.copy(n.data, offset)
    n.attr.size = n.data.length
    n.attr.mtime = n.attr.ctime = now()
    return data.length
  }

  async flush (ino: number, fh: number): Promise<void> { this.log('flush', ino, fh) }
  async release (ino: number, fh: number): Promise<void> { this.log('release', ino, fh) }
  async fsync (ino: number, fh: number, datasync: boolean): Promise<void> { this.log('fsync', ino, fh, datasync) }

  async opendir (ino: number): Promise<number> {
    this.log('opendir', ino)
    this.dirOf(ino)
    return this.nextFh++
  }

  async readdir (ino: number, fh: number, offset: number, count: number, plus: boolean): Promise<DirItem[]> {
    this.log('readdir', ino, fh, offset, count, plus)
    const items: DirItem[] = [{ name: '.', ino, mode: S_IFDIR }, { name: '..', ino: 1, mode: S_IFDIR }]
    for (const [name, child] of this.dirOf(ino)) {
      const a = this.get(child).attr
      items.push({ name, ino: child, mode: a.mode, attr: plus ? { ...a } : undefined })
    }
    return items.slice(offset, offset + count)
  }

  async releasedir (ino: number, fh: number): Promise<void> { this.log('releasedir', ino, fh) }
  async fsyncdir (ino: number, fh: number): Promise<void> { this.log('fsyncdir', ino, fh) }
  async statfs (): Promise<StatFs> { this.log('statfs'); return STATFS }

  async setxattr (ino: number, name: string, value: Buffer, flags: number): Promise<void> {
    this.log('setxattr', ino, name, value.length, flags)
    this.get(ino).xattrs.set(name, value)
  }

  async getxattr (ino: number, name: string): Promise<Buffer> {
    this.log('getxattr', ino, name)
    const v = this.get(ino).xattrs.get(name)
    if (!v) throw new FsError('ENODATA', name)
    return v
  }

  async listxattr (ino: number): Promise<string[]> {
    this.log('listxattr', ino)
    return [...this.get(ino).xattrs.keys()]
  }

  async removexattr (ino: number, name: string): Promise<void> {
    this.log('removexattr', ino, name)
    if (!this.get(ino).xattrs.delete(name)) throw new FsError('ENODATA', name)
  }
}
