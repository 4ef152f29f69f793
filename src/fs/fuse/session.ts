import createDebug from 'debug'
import { writevSync } from 'node:fs'
import { constants } from 'node:os'
import { BufferPool } from '../../buffer-pool'
import { errnoOf } from '../../errors'
import { Channel, channel, fusermount } from './native'
import {
  Attr, ATTR_BYTES, cstring, direntBytes, ENTRY_OUT_BYTES, Fattr, Fopen, FSYNC_FDATASYNC, GETATTR_FH, IN_HEADER_BYTES, Init,
  initOut, KERNEL_MINOR, MIN_KERNEL_MINOR, Op, OP_NAMES, OUT_HEADER_BYTES, putDirent, putEntry, putU64, readHeader, readInit,
  s64, StatFs, statfsOut, Timespec, u32Out, u64, attrOut, entryOut, openOut, InHeader
} from './protocol'

const log = createDebug('bslfs:fuse')
const E = constants.errno

/** Who asks: the calling process, as the kernel reports it. */
export interface Caller { uid: number, gid: number, pid: number }

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

/** One entry of a directory listing; `attr` is there for READDIRPLUS (its absence: no attributes). */
export interface DirItem { name: string, ino: number, mode: number, attr?: Attr }

/**
 * What a filesystem implements for the session, by inode number (the
 * kernel's node id; the root is 1). Errors are thrown or rejected with their
 * POSIX code (FsError); the session only turns them into the kernel's errno.
 */
export interface FuseFilesystem {
  /** The attributes of `name` in `parent`, or null when it does not exist (a negative entry the kernel may cache). */
  lookup (parent: number, name: string): Promise<Attr | null>
  getattr (ino: number, fh: number | undefined): Promise<Attr>
  setattr (ino: number, set: SetAttr, caller: Caller): Promise<Attr>
  readlink (ino: number): Promise<string>
  mknod (parent: number, name: string, mode: number, rdev: number, caller: Caller): Promise<Attr>
  mkdir (parent: number, name: string, mode: number, caller: Caller): Promise<Attr>
  symlink (parent: number, name: string, target: string, caller: Caller): Promise<Attr>
  unlink (parent: number, name: string): Promise<void>
  rmdir (parent: number, name: string): Promise<void>
  rename (parent: number, name: string, newParent: number, newName: string, flags: number): Promise<void>
  link (ino: number, newParent: number, newName: string): Promise<Attr>
  open (ino: number, flags: number): Promise<number>
  create (parent: number, name: string, mode: number, flags: number, caller: Caller): Promise<{ attr: Attr, fh: number }>
  /**
   * Up to `size` bytes at `offset`, fewer only at the end of the file, as
   * pieces that are written to the kernel as they are (no copy): each must
   * hold its bytes until the promise's reply has gone, which is at once.
   */
  read (ino: number, fh: number, offset: number, size: number): Promise<Buffer[]>
  /**
   * `data` is valid until the returned promise settles (or the call returns):
   * copy what must outlive it. `adopt`, when given, hands `data` over whole:
   * it is then a buffer of the pool the session was mounted with, the
   * filesystem's to keep and to give back to that pool.
   */
  write (ino: number, fh: number, offset: number, data: Buffer, adopt?: () => void): number | Promise<number>
  flush (ino: number, fh: number): Promise<void>
  release (ino: number, fh: number): Promise<void>
  fsync (ino: number, fh: number, datasync: boolean): Promise<void>
  opendir (ino: number): Promise<number>
  /** Entries from position `offset` (0 is the first, '.'), at most `count`; with `plus` each has its `attr`. */
  readdir (ino: number, fh: number, offset: number, count: number, plus: boolean): Promise<DirItem[]>
  releasedir (ino: number, fh: number): Promise<void>
  fsyncdir (ino: number, fh: number): Promise<void>
  statfs (): Promise<StatFs>
  setxattr (ino: number, name: string, value: Buffer, flags: number): Promise<void>
  getxattr (ino: number, name: string): Promise<Buffer>
  listxattr (ino: number): Promise<string[]>
  removexattr (ino: number, name: string): Promise<void>
}

export interface SessionOptions {
  /** How long the kernel may trust a name, an inode's attributes, a name's absence (seconds). */
  entryTimeout: number
  attrTimeout: number
  negativeTimeout: number
  /** Keep the kernel's page cache of a file across opens (nothing changes data behind the mount). */
  keepCache: boolean
  /** Bypass the page cache (every read and write reaches the daemon). */
  directIo: boolean
  /** The largest write request (bytes, a multiple of 4096, at most 1 MiB). */
  maxWrite: number
  /** The kernel's read-ahead for the mount (bytes; raised from the kernel's 128 KiB where root may). */
  maxReadahead: number
  /** Use READDIRPLUS: listings carry attributes, so `ls -l` needs no lookup per name. */
  readdirPlus: boolean
}

export const DEFAULT_SESSION: SessionOptions = {
  entryTimeout: 1,
  attrTimeout: 1,
  negativeTimeout: 1,
  keepCache: true,
  directIo: false,
  maxWrite: 1 << 20,
  maxReadahead: 4 << 20,
  readdirPlus: true
}

/** Requests handled per wake-up before the loop serves other callbacks (device completions). */
const BATCH = 64
const HOT_NS = BigInt(process.env.BSLFS_HOT_LOOP_US ?? '200') * 1000n
/** While a request waits for its answer (a device read on a block server), the loop stays awake this long after the last request or reply. */
const WAIT_NS = BigInt(process.env.BSLFS_WAIT_LOOP_US ?? '2000') * 1000n
/** A WRITE request's headers (fuse_in_header, fuse_write_in): its data starts here. */
const WRITE_HEADERS = IN_HEADER_BYTES + 40
/** Spare request buffers kept. */
const SPARE_BUFFERS = 8

const ALL_FLAGS = Init.ASYNC_READ | Init.ATOMIC_O_TRUNC | Init.BIG_WRITES | Init.ASYNC_DIO | Init.PARALLEL_DIROPS |
  Init.ABORT_ERROR | Init.MAX_PAGES | Init.CACHE_SYMLINKS

type Reply = (payload?: Buffer | Buffer[]) => void

/**
 * One mounted FUSE filesystem: requests are read from the channel on the event
 * loop, decoded, handed to the filesystem, and answered straight from this
 * thread (no hand-off to a FUSE thread and back). Handlers run concurrently;
 * replies go out as they complete.
 */
export class FuseSession {
  private readonly native: Channel
  private readonly spare: Buffer[] = []
  private readonly header = Buffer.alloc(OUT_HEADER_BYTES)
  private bufferBytes = 8192 + 4096
  private done = false
  private endedResolve!: () => void
  /** Settles when the kernel connection has ended (unmounted, or the last user left a lazy unmount). */
  readonly ended: Promise<void>
  /** What INIT agreed on, for status and logs. */
  negotiated: { minor: number, flags: number, maxWrite: number, maxReadahead: number } | undefined

  /** Requests are read into the filesystem's block buffers, when they fit (see take). */
  private readonly pool: BufferPool | undefined

  private constructor (readonly mountpoint: string, private readonly fd: number, private readonly fs: FuseFilesystem,
    private readonly opts: SessionOptions, pool?: BufferPool) {
    this.native = channel()
    this.ended = new Promise(resolve => { this.endedResolve = resolve })
    if (pool && pool.size === opts.maxWrite && pool.headroom >= WRITE_HEADERS) this.pool = pool
  }

  /**
   * Mount `fs` at `mountpoint` with the kernel mount options `kernelOptions`
   * (allow_other, default_permissions, ro, fsname=…); resolves once the kernel
   * has initialised the connection (the first request, INIT, answered).
   */
  static async mount (mountpoint: string, fs: FuseFilesystem, kernelOptions: string[], opts: SessionOptions, pool?: BufferPool): Promise<FuseSession> {
    const fd = channel().mount(mountpoint, kernelOptions.join(','))
    const s = new FuseSession(mountpoint, fd, fs, opts, pool)
    s.native.watch(fd, status => s.onReadable(status))
    log('mounted %s (fd %d) with -o %s', mountpoint, fd, kernelOptions.join(','))
    return s
  }

  /** Whether the kernel connection has ended. */
  isEnded (): boolean { return this.done }

  /** Milliseconds since the last request or reply. */
  quietMs (): number {
    return this.lastActivity === 0n ? Infinity : Number(process.hrtime.bigint() - this.lastActivity) / 1e6
  }

  /** fusermount -u (or -uz when lazy); rejects with fusermount's words (EBUSY: "Device or resource busy"). */
  async unmount (lazy: boolean): Promise<void> {
    const complaint = await fusermount(this.mountpoint, lazy)
    if (complaint) throw new Error(complaint)
  }

  private end (why: string): void {
    if (this.done) return
    this.done = true
    log('connection to %s ended: %s', this.mountpoint, why)
    this.native.close(this.fd)
    this.endedResolve()
  }

  /**
   * A buffer to read a request into. From the pool, it starts WRITE_HEADERS
   * bytes before a pool buffer, so a WRITE's data lands exactly on it: a
   * write of a whole block is adopted as the block, without a copy.
   */
  private take (): Buffer {
    if (!this.pool) return this.spare.pop() ?? Buffer.allocUnsafeSlow(this.bufferBytes)
    const b = this.pool.take()
    return Buffer.from(b.buffer, b.byteOffset - WRITE_HEADERS, WRITE_HEADERS + b.length)
  }

  private give (b: Buffer): void {
    if (this.pool) this.pool.give(Buffer.from(b.buffer, b.byteOffset + WRITE_HEADERS, b.length - WRITE_HEADERS))
    else if (b.length === this.bufferBytes && this.spare.length < SPARE_BUFFERS) this.spare.push(b)
  }

  /**
   * Keep the loop polling (setImmediate, not asleep in epoll) for a moment
   * after a request or reply (HOT_NS), and while requests wait for their
   * answers (WAIT_NS): the next request, and the block server's or thread
   * pool's answer, then find it awake. A wake-up from epoll costs ~50 us on
   * a VM, several times per request that waits on a block server.
   */
  private lastActivity = 0n
  /** Requests read that have not been answered yet. */
  private unanswered = 0
  private polling = false
  private readonly poll = (): void => {
    const idle = process.hrtime.bigint() - this.lastActivity
    if (!this.done && (idle < HOT_NS || (this.unanswered > 0 && idle < WAIT_NS))) setImmediate(this.poll)
    else this.polling = false
  }

  private active (): void {
    this.lastActivity = process.hrtime.bigint()
    if (HOT_NS === 0n) return
    if (!this.polling) { this.polling = true; setImmediate(this.poll) }
  }

  private onReadable (status: number): void {
    if (status < 0) return this.end(`poll error ${status}`)
    this.active()
    for (let i = 0; i < BATCH && !this.done; i++) {
      const buf = this.take()
      const n = this.native.read(this.fd, buf)
      if (n < 0) {
        this.give(buf)
        if (n === -E.EAGAIN) return
        if (n === -E.EINTR || n === -E.ENOENT) continue
        return this.end(n === -E.ENODEV ? 'unmounted' : `read failed: errno ${-n}`)
      }
      this.dispatch(buf, n)
    }
  }

  /** Send a reply: the header and `payload` in one write, as the kernel wants. */
  private send (unique: number, errno: number, payload?: Buffer | Buffer[]): void {
    this.unanswered--
    this.active()
    const parts = payload === undefined ? [] : Array.isArray(payload) ? payload : [payload]
    let len = OUT_HEADER_BYTES
    for (const p of parts) len += p.length
    const h = this.header
    h.writeUInt32LE(len, 0)
    h.writeInt32LE(-errno, 4)
    putU64(h, 8, unique)
    try {
      writevSync(this.fd, parts.length ? [h, ...parts] : [h])
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      // ENOENT: the request was interrupted and the kernel forgot it; ENODEV: the mount is gone.
      if (code === 'ENOENT') return
      if (code === 'ENODEV') return this.end('unmounted')
      log('reply to %d failed: %s', unique, (err as Error).message)
    }
  }

  private dispatch (buf: Buffer, n: number): void {
    let h: InHeader
    try {
      h = readHeader(buf)
    } catch (err) {
      this.give(buf)
      return log('short request (%d bytes) dropped', n)
    }
    if (log.enabled) log('%s #%d node %d (pid %d)', OP_NAMES[h.opcode] ?? h.opcode, h.unique, h.nodeid, h.pid)
    const ok: Reply = payload => this.send(h.unique, 0, payload)
    const fail = (err: unknown): void => {
      const errno = errnoOf(err)
      if (errno === E.EIO) console.error(`bslfs: ${OP_NAMES[h.opcode] ?? h.opcode}: ${(err as Error).message}`)
      else if (log.enabled) log('%s #%d: %s', OP_NAMES[h.opcode], h.unique, (err as Error).message)
      this.send(h.unique, errno)
    }
    let keep = false
    this.unanswered++
    try {
      keep = this.handle(h, buf, n, ok, fail)
    } catch (err) {
      // A malformed request (a name without its NUL), or a handler that threw instead of rejecting.
      fail(err)
    } finally {
      if (!keep) this.give(buf)
    }
  }

  /** The filesystem's `then`: replies when `p` settles. */
  private answer<T> (p: Promise<T>, ok: (v: T) => void, fail: (err: unknown) => void): void {
    p.then(ok, fail)
  }

  /**
   * Decode one request and start its handler. Returns true when `buf` is still
   * in use (a write's data until its handler settles) and is given back later.
   */
  private handle (h: InHeader, buf: Buffer, n: number, ok: Reply, fail: (err: unknown) => void): boolean {
    const fs = this.fs
    const B = IN_HEADER_BYTES
    const caller: Caller = { uid: h.uid, gid: h.gid, pid: h.pid }
    const name = (at: number): string => cstring(buf, at, n).text
    const entry = (attr: Attr): void => ok(entryOut(attr.ino, attr, this.opts.entryTimeout, this.opts.attrTimeout))
    const attr = (a: Attr): void => ok(attrOut(a, this.opts.attrTimeout))
    const empty = (): void => ok()
    switch (h.opcode) {
      case Op.INIT: this.init(buf, ok); break
      case Op.DESTROY: ok(); break
      case Op.FORGET: case Op.BATCH_FORGET: case Op.INTERRUPT: case Op.NOTIFY_REPLY:
        this.unanswered-- // no reply: inode numbers are never reused, so the kernel's lookup counts need no bookkeeping
        break
      case Op.LOOKUP:
        this.answer(fs.lookup(h.nodeid, name(B)), a => ok(a
          ? entryOut(a.ino, a, this.opts.entryTimeout, this.opts.attrTimeout)
          : entryOut(0, null, this.opts.negativeTimeout, 0)), fail)
        break
      case Op.GETATTR: {
        const flags = buf.readUInt32LE(B)
        this.answer(fs.getattr(h.nodeid, flags & GETATTR_FH ? u64(buf, B + 8) : undefined), attr, fail)
        break
      }
      case Op.SETATTR: this.answer(fs.setattr(h.nodeid, readSetattr(buf), caller), attr, fail); break
      case Op.READLINK: this.answer(fs.readlink(h.nodeid), t => ok(Buffer.from(t)), fail); break
      case Op.SYMLINK: {
        const link = cstring(buf, B, n)
        this.answer(fs.symlink(h.nodeid, link.text, name(link.next), caller), entry, fail)
        break
      }
      case Op.MKNOD:
        this.answer(fs.mknod(h.nodeid, name(B + 16), buf.readUInt32LE(B), buf.readUInt32LE(B + 4), caller), entry, fail)
        break
      case Op.MKDIR: this.answer(fs.mkdir(h.nodeid, name(B + 8), buf.readUInt32LE(B), caller), entry, fail); break
      case Op.UNLINK: this.answer(fs.unlink(h.nodeid, name(B)), empty, fail); break
      case Op.RMDIR: this.answer(fs.rmdir(h.nodeid, name(B)), empty, fail); break
      case Op.RENAME: case Op.RENAME2: {
        const two = h.opcode === Op.RENAME2
        const from = cstring(buf, B + (two ? 16 : 8), n)
        this.answer(fs.rename(h.nodeid, from.text, u64(buf, B), name(from.next), two ? buf.readUInt32LE(B + 8) : 0), empty, fail)
        break
      }
      case Op.LINK: this.answer(fs.link(u64(buf, B), h.nodeid, name(B + 8)), entry, fail); break
      case Op.OPEN: this.answer(fs.open(h.nodeid, buf.readUInt32LE(B)), fh => ok(openOut(fh, this.openFlags())), fail); break
      case Op.CREATE:
        this.answer(fs.create(h.nodeid, name(B + 16), buf.readUInt32LE(B + 4), buf.readUInt32LE(B), caller), r => ok([
          entryOut(r.attr.ino, r.attr, this.opts.entryTimeout, this.opts.attrTimeout), openOut(r.fh, this.openFlags())
        ]), fail)
        break
      case Op.READ: this.answer(fs.read(h.nodeid, u64(buf, B), u64(buf, B + 8), buf.readUInt32LE(B + 16)), ok, fail); break
      case Op.WRITE: {
        const size = buf.readUInt32LE(B + 16)
        const data = buf.subarray(WRITE_HEADERS, WRITE_HEADERS + size)
        if (data.length !== size) throw new RangeError(`write of ${size} bytes carries ${data.length}`)
        let adopted = false
        const adopt = this.pool && size === this.pool.size ? () => { adopted = true } : undefined
        const r = fs.write(h.nodeid, u64(buf, B), u64(buf, B + 8), data, adopt)
        if (typeof r === 'number') {
          ok(u32Out(r))
          return adopted
        }
        r.then(count => ok(u32Out(count)), fail).finally(() => { if (!adopted) this.give(buf) })
        return true
      }
      case Op.FLUSH: this.answer(fs.flush(h.nodeid, u64(buf, B)), empty, fail); break
      case Op.RELEASE: this.answer(fs.release(h.nodeid, u64(buf, B)), empty, fail); break
      case Op.FSYNC:
        this.answer(fs.fsync(h.nodeid, u64(buf, B), (buf.readUInt32LE(B + 8) & FSYNC_FDATASYNC) !== 0), empty, fail)
        break
      case Op.OPENDIR: this.answer(fs.opendir(h.nodeid), fh => ok(openOut(fh, 0)), fail); break
      case Op.READDIR: case Op.READDIRPLUS: this.readdir(h, buf, ok, fail); break
      case Op.RELEASEDIR: this.answer(fs.releasedir(h.nodeid, u64(buf, B)), empty, fail); break
      case Op.FSYNCDIR: this.answer(fs.fsyncdir(h.nodeid, u64(buf, B)), empty, fail); break
      case Op.STATFS: this.answer(fs.statfs(), s => ok(statfsOut(s)), fail); break
      case Op.SETXATTR: {
        const size = buf.readUInt32LE(B)
        const key = cstring(buf, B + 8, n)
        // The value is copied: the handler may keep it past this buffer's reuse.
        const value = Buffer.from(buf.subarray(key.next, key.next + size))
        this.answer(fs.setxattr(h.nodeid, key.text, value, buf.readUInt32LE(B + 4)), empty, fail)
        break
      }
      case Op.GETXATTR: {
        const size = buf.readUInt32LE(B)
        this.answer(fs.getxattr(h.nodeid, name(B + 8)), v => this.sized(v, size, ok, fail), fail)
        break
      }
      case Op.LISTXATTR: {
        const size = buf.readUInt32LE(B)
        this.answer(fs.listxattr(h.nodeid), names => this.sized(Buffer.from(names.map(x => x + '\0').join('')), size, ok, fail), fail)
        break
      }
      case Op.REMOVEXATTR: this.answer(fs.removexattr(h.nodeid, name(B)), empty, fail); break
      default:
        // ACCESS (default_permissions: the kernel checks), locks (the kernel keeps them locally),
        // FALLOCATE, LSEEK, COPY_FILE_RANGE, IOCTL, POLL, BMAP: ENOSYS, and the kernel falls back.
        this.send(h.unique, E.ENOSYS)
    }
    return false
  }

  private openFlags (): number {
    return (this.opts.keepCache ? Fopen.KEEP_CACHE : 0) | (this.opts.directIo ? Fopen.DIRECT_IO : 0)
  }

  /** An xattr value or list: its size when asked with size 0, ERANGE when it does not fit. */
  private sized (v: Buffer, size: number, ok: Reply, fail: (err: unknown) => void): void {
    if (size === 0) ok(u32Out(v.length))
    else if (v.length > size) fail(Object.assign(new Error('xattr buffer too small'), { code: 'ERANGE' }))
    else ok(v)
  }

  private init (buf: Buffer, ok: Reply): void {
    const k = readInit(buf, IN_HEADER_BYTES)
    if (k.major !== 7 || k.minor < MIN_KERNEL_MINOR) {
      console.error(`bslfs: the kernel speaks FUSE ${k.major}.${k.minor}; bslfs needs 7.${MIN_KERNEL_MINOR} or newer`)
      return this.send(readHeader(buf).unique, E.EPROTO)
    }
    const wanted = ALL_FLAGS | (this.opts.readdirPlus ? Init.DO_READDIRPLUS : 0)
    const flags = k.flags & wanted
    const maxWrite = this.opts.maxWrite
    this.bufferBytes = maxWrite + 4096
    this.spare.length = 0
    const o = { minor: Math.min(k.minor, KERNEL_MINOR), maxReadahead: Math.min(k.maxReadahead, this.opts.maxReadahead), flags, maxWrite }
    this.negotiated = o
    log('INIT: kernel %d.%d (flags %s, readahead %d); agreed 7.%d, flags %s, max_write %d', k.major, k.minor,
      k.flags.toString(16), k.maxReadahead, o.minor, flags.toString(16), maxWrite)
    ok(initOut({ ...o, maxBackground: 64, congestionThreshold: 48, maxPages: Math.ceil(maxWrite / 4096) }))
  }

  /** READDIR / READDIRPLUS: as many entries from `offset` as fit in the kernel's buffer. */
  private readdir (h: InHeader, buf: Buffer, ok: Reply, fail: (err: unknown) => void): void {
    const B = IN_HEADER_BYTES
    const fh = u64(buf, B)
    const offset = u64(buf, B + 8)
    const size = buf.readUInt32LE(B + 16)
    const plus = h.opcode === Op.READDIRPLUS
    // Entries are at least 32 bytes (plus: 160): ask for no more than could fit.
    const count = Math.max(1, Math.floor(size / (plus ? ENTRY_OUT_BYTES + 32 : 32)))
    this.answer(this.fs.readdir(h.nodeid, fh, offset, count, plus), items => {
      const out = Buffer.allocUnsafe(size)
      let at = 0
      for (let i = 0; i < items.length; i++) {
        const it = items[i]
        const nameBytes = Buffer.from(it.name)
        const need = direntBytes(nameBytes.length, plus)
        if (at + need > size) break
        if (plus) {
          // '.' and '..' (and entries without attributes) go as node id 0: the kernel makes no inode for them.
          const a = it.attr && it.name !== '.' && it.name !== '..' ? it.attr : null
          putEntry(out, at, a ? it.ino : 0, a, a ? this.opts.entryTimeout : 0, a ? this.opts.attrTimeout : 0)
          at += ENTRY_OUT_BYTES
        }
        at += putDirent(out, at, it.ino, offset + i + 1, it.mode, nameBytes)
      }
      ok(out.subarray(0, at))
    }, fail)
  }
}

/** fuse_setattr_in → SetAttr. */
function readSetattr (buf: Buffer): SetAttr {
  const B = IN_HEADER_BYTES
  const valid = buf.readUInt32LE(B)
  const set: SetAttr = {}
  if (valid & Fattr.FH) set.fh = u64(buf, B + 8)
  if (valid & Fattr.SIZE) set.size = u64(buf, B + 16)
  if (valid & Fattr.ATIME) set.atime = valid & Fattr.ATIME_NOW ? 'now' : { sec: s64(buf, B + 32), nsec: buf.readUInt32LE(B + 56) }
  if (valid & Fattr.MTIME) set.mtime = valid & Fattr.MTIME_NOW ? 'now' : { sec: s64(buf, B + 40), nsec: buf.readUInt32LE(B + 60) }
  if (valid & Fattr.MODE) set.mode = buf.readUInt32LE(B + 68)
  if (valid & Fattr.UID) set.uid = buf.readUInt32LE(B + 76)
  if (valid & Fattr.GID) set.gid = buf.readUInt32LE(B + 80)
  return set
}

export { ATTR_BYTES }
