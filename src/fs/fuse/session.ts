import { logger } from '../../log'
import { constants } from 'node:os'
import { BufferPool } from '../../buffer-pool'
import { KERNEL_READ_AHEAD_BYTES } from '../../data/read-ahead'
import { errnoOf, FsError } from '../../errors'
import { Connection, KernelConnection } from './connection'
import { fusermount } from './native'
import {
  Attr, ATTR_BYTES, direntBytes, ENTRY_OUT_BYTES, Fopen, IN_HEADER_BYTES, Init, initOut, KERNEL_MINOR,
  MIN_KERNEL_MINOR, OUT_HEADER_BYTES, putDirent, putEntry, putU64, StatFs, statfsOut, u32Out, attrOut, entryOut, openOut,
  notifyInvalEntry, notifyInvalInode, Op, SETXATTR_ACL_KILL_SGID, u64Out, ioctlOut, statxOut, lkOut
} from './protocol'
import { FuseOpMetrics, mountMetrics } from '../../metrics/mount-metrics'
import { Agreed, decodeRequest, expectsReply, Forget, FuseRequest, InHeader, InitIn, LockRequest, opName, readHeader, SetAttr, WRITE_HEADERS } from './requests'

export type { LockRequest, SetAttr }

const events = logger('bslfs:fuse')
const log = events.debug
const E = constants.errno
/** open(2)'s O_DIRECT on Linux (x86_64, arm64 differs: 0o200000). */
const O_DIRECT = process.arch === 'arm64' ? 0o200000 : 0o40000
/** The most one COPY_FILE_RANGE may answer (fuse_write_out.size is 32 bits), page aligned. */
const MAX_COPY = 0xfffff000

/** Who asks: the calling process, as the kernel reports it. */
export interface Caller {
  uid: number
  gid: number
  pid: number
  /** mknod, mkdir, create: the creator's umask, which the filesystem applies (FUSE_DONT_MASK) unless a default ACL rules. */
  umask?: number
}

/** One entry of a directory listing; `attr` is there for READDIRPLUS (its absence: no attributes). */
export interface DirItem { name: string, ino: number, mode: number, attr?: Attr }

/**
 * What a filesystem implements for the session, by inode number (the
 * kernel's node id; the root is 1). Errors are thrown or rejected as FsError
 * with their POSIX code; the session turns them into the kernel's errno, and
 * anything else into EIO.
 *
 * `signal`, where given, aborts when the calling process is interrupted
 * (FUSE_INTERRUPT): the session has then answered EINTR already and drops
 * whatever the call answers later; the call should stop waiting.
 */
export interface FuseFilesystem {
  /** The attributes of `name` in `parent`, or null when it does not exist (a negative entry the kernel may cache). "." and "..": the node itself and its parent directory (file handles, FUSE_EXPORT_SUPPORT). */
  lookup (parent: number, name: string): Promise<Attr | null>
  /** The kernel dropped `nlookup` of its lookups of `ino` (it no longer caches the inode that often). No answer. */
  forget? (ino: number, nlookup: number): void
  getattr (ino: number, fh: number | undefined): Promise<Attr>
  setattr (ino: number, set: SetAttr, caller: Caller): Promise<Attr>
  readlink (ino: number): Promise<string>
  mknod (parent: number, name: string, mode: number, rdev: number, caller: Caller): Promise<Attr>
  mkdir (parent: number, name: string, mode: number, caller: Caller): Promise<Attr>
  symlink (parent: number, name: string, target: string, caller: Caller): Promise<Attr>
  unlink (parent: number, name: string): Promise<void>
  rmdir (parent: number, name: string): Promise<void>
  rename (parent: number, name: string, newParent: number, newName: string, flags: number, caller?: Caller): Promise<void>
  link (ino: number, newParent: number, newName: string): Promise<Attr>
  open (ino: number, flags: number): Promise<number>
  create (parent: number, name: string, mode: number, flags: number, caller: Caller): Promise<{ attr: Attr, fh: number }>
  /** open(parent, O_TMPFILE): a file without a name, open; it goes with its last close unless linked. */
  tmpfile? (parent: number, mode: number, flags: number, caller: Caller): Promise<{ attr: Attr, fh: number }>
  /**
   * Up to `size` bytes at `offset`, fewer only at the end of the file, as
   * pieces that are written to the kernel as they are (no copy): each must
   * hold its bytes until the promise's reply has gone, which is at once.
   */
  read (ino: number, fh: number, offset: number, size: number, signal?: AbortSignal): Promise<Buffer[]>
  /**
   * `data` is valid until the returned promise settles (or the call returns):
   * copy what must outlive it. `keepBuffer`, when given, hands `data` over whole:
   * it is then a buffer of the pool the session was mounted with, the
   * filesystem's to keep and to give back to that pool.
   */
  write (ino: number, fh: number, offset: number, data: Buffer, keepBuffer?: () => void, signal?: AbortSignal): number | Promise<number>
  /** `lockOwner`: the closing process's POSIX lock owner, whose locks of the file go (locks served). */
  flush (ino: number, fh: number, signal?: AbortSignal, lockOwner?: string): Promise<void>
  /** `flockOwner`: the file held flocks of this owner, which go with it. */
  release (ino: number, fh: number, flockOwner?: string): Promise<void>
  fsync (ino: number, fh: number, datasync: boolean, signal?: AbortSignal): Promise<void>
  opendir (ino: number): Promise<number>
  /** Entries from position `offset` (0 is the first, '.'), at most `count`; with `plus` each has its `attr`. */
  readdir (ino: number, fh: number, offset: number, count: number, plus: boolean): Promise<DirItem[]>
  releasedir (ino: number, fh: number): Promise<void>
  fsyncdir (ino: number, fh: number): Promise<void>
  statfs (): Promise<StatFs>
  /** killSgid: the caller may not keep set-group-ID (outside the file's group, no CAP_FSETID): an access ACL set clears it. */
  setxattr (ino: number, name: string, value: Buffer, flags: number, killSgid?: boolean): Promise<void>
  getxattr (ino: number, name: string): Promise<Buffer>
  listxattr (ino: number): Promise<string[]>
  removexattr (ino: number, name: string): Promise<void>
  /** fallocate(2) on an open file (mode: linux/falloc.h). */
  fallocate? (ino: number, fh: number, offset: number, length: number, mode: number): Promise<void>
  /** lseek SEEK_DATA / SEEK_HOLE: the offset found. */
  lseek? (ino: number, fh: number, offset: number, whence: number): Promise<number>
  /** copy_file_range(2) between two open files of this filesystem: the bytes copied. */
  copyFileRange? (ino: number, fhIn: number, offIn: number, inoOut: number, fhOut: number, offOut: number, len: number): Promise<number>
  /** An ioctl: its output (at most `outSize` bytes); ENOTTY for one the filesystem does not know. */
  ioctl? (ino: number, cmd: number, input: Buffer, outSize: number, caller: Caller): Promise<Buffer>
  /** F_GETLK (SessionOptions.locks): the first lock conflicting with `lock`, or type F_UNLCK when none. */
  getlk? (ino: number, lock: LockRequest): Promise<{ start: number, end: number, type: number, pid: number }>
  /** F_SETLK, F_SETLKW (`wait`), flock: EAGAIN when another owner holds a conflicting lock and `wait` is false. */
  setlk? (ino: number, lock: LockRequest, wait: boolean, signal?: AbortSignal): Promise<void>
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
  /** POSIX ACLs: the kernel enforces them (FUSE_POSIX_ACL) and leaves the umask to the filesystem (FUSE_DONT_MASK). */
  posixAcl: boolean
  /** fcntl and flock locks go to the filesystem (getlk, setlk), not the kernel's own table: locks across hosts. */
  locks?: boolean
}

export const DEFAULT_SESSION: SessionOptions = {
  entryTimeout: 1,
  attrTimeout: 1,
  negativeTimeout: 1,
  keepCache: true,
  directIo: false,
  maxWrite: 1 << 20,
  maxReadahead: KERNEL_READ_AHEAD_BYTES,
  readdirPlus: true,
  posixAcl: true
}

/** Requests handled per wake-up before the loop serves other callbacks (device completions). */
const BATCH = 64
const HOT_NS = BigInt(process.env.BSLFS_HOT_LOOP_US ?? '200') * 1000n
/** While a request waits for its answer (a device read on a block server), the loop stays awake this long after the last request or reply. */
const WAIT_NS = BigInt(process.env.BSLFS_WAIT_LOOP_US ?? '2000') * 1000n
/** Spare request buffers kept. */
const SPARE_BUFFERS = 8
/** INTERRUPTs held for a request not in flight, at most (see interrupt). */
const STRAY_INTERRUPTS = 16

const ALL_FLAGS = Init.ASYNC_READ | Init.ATOMIC_O_TRUNC | Init.BIG_WRITES | Init.ASYNC_DIO | Init.PARALLEL_DIROPS |
  Init.ABORT_ERROR | Init.MAX_PAGES | Init.CACHE_SYMLINKS | Init.EXPORT_SUPPORT

type Payload = Buffer | Buffer[] | undefined

/** A request the kernel waits on, until it is answered. */
interface Call {
  readonly unique: number
  readonly opcode: number
  /** For the calls that take a signal (read, write, flush, fsync, setlk): an INTERRUPT aborts it and answers EINTR. */
  readonly abort: AbortController | undefined
  answered: boolean
  /** performance.now() when it was read (its latency). */
  readonly started: number
}

/** Errors that are not FsError already logged (a shared failure reaches many calls). */
const untypedLogged = new WeakSet<object>()

/**
 * One mounted FUSE filesystem: requests are read from the connection on the
 * event loop, decoded, handed to the filesystem, and answered straight from
 * this thread (no hand-off to a FUSE thread and back). Handlers run
 * concurrently; replies go out as they complete.
 */
export class FuseSession {
  private readonly spare: Buffer[] = []
  private readonly header = Buffer.alloc(OUT_HEADER_BYTES)
  private bufferBytes = 8192 + 4096
  private done = false
  private endedResolve!: () => void
  /** Settles when the kernel connection has ended (unmounted, or the last user left a lazy unmount). */
  readonly ended: Promise<void>
  /** What INIT agreed on, for status and logs. */
  negotiated: { minor: number, flags: number, maxWrite: number, maxReadahead: number } | undefined
  /** What INIT agreed that changes how requests are laid out. */
  private agreed: Agreed = {}

  /** Requests are read into the filesystem's block buffers, when they fit (see take). */
  private readonly pool: BufferPool | undefined
  /** Requests read and not answered yet, by unique. */
  private readonly calls = new Map<number, Call>()
  /** INTERRUPTs whose request was not in flight: the interrupted request's unique → the INTERRUPT's own. */
  private readonly strayInterrupts = new Map<number, number>()

  /** Serve `fs` on `connection` (it starts with the kernel's INIT). */
  constructor (readonly mountpoint: string, private readonly connection: Connection, private readonly fs: FuseFilesystem,
    private readonly opts: SessionOptions, pool?: BufferPool) {
    this.ended = new Promise(resolve => { this.endedResolve = resolve })
    if (pool && pool.size === opts.maxWrite && pool.headroom >= WRITE_HEADERS) this.pool = pool
    connection.watch(status => this.onReadable(status))
  }

  /**
   * Mount `fs` at `mountpoint` with the kernel mount options `kernelOptions`
   * (allow_other, default_permissions, ro, fsname=…); resolves once the kernel
   * has initialised the connection (the first request, INIT, answered).
   */
  static async mount (mountpoint: string, fs: FuseFilesystem, kernelOptions: string[], opts: SessionOptions, pool?: BufferPool): Promise<FuseSession> {
    const connection = new KernelConnection(mountpoint, kernelOptions.join(','))
    const s = new FuseSession(mountpoint, connection, fs, opts, pool)
    log('mounted %s (fd %d) with -o %s', mountpoint, connection.fd, kernelOptions.join(','))
    return s
  }

  /** Lookups the kernel holds of each inode (entries answered, less FORGETs): what notifyInvalAll covers. */
  private readonly kernelLookups = new Map<number, number>([[1, 1]])
  /** Notifications waiting to be written, in order; one is written at a time (see Connection.notify). */
  private readonly notes: Array<{ parts: Buffer[], written: () => void }> = []
  private notifying = false

  /**
   * Tell the kernel to forget its entry `name` in directory `parent` (another
   * host removed, renamed or replaced it): the next lookup asks the
   * filesystem. Queued, never written from inside a request's handling
   * (libfuse's warning: the kernel may hold the write until that request is answered).
   */
  notifyInvalEntry (parent: number, name: string): void {
    this.queueNote(notifyInvalEntry(parent, Buffer.from(name)))
  }

  /**
   * Tell the kernel to drop `ino`'s cached attributes, and its cached pages from
   * `offset` for `length` bytes (length 0: to the end; offset -1: attributes only). Queued.
   */
  notifyInvalInode (ino: number, offset = 0, length = 0): Promise<void> {
    return this.queueNote(notifyInvalInode(ino, offset, length))
  }

  /**
   * Drop the cached attributes and pages of every inode the kernel holds (changes may
   * have been missed). Its cached names expire by their entry timeout: the kernel has
   * no notification that drops them all, and the session does not keep every name it answered.
   */
  notifyInvalAll (): void {
    for (const ino of this.kernelLookups.keys()) void this.notifyInvalInode(ino)
  }

  private looked (ino: number): void {
    this.kernelLookups.set(ino, (this.kernelLookups.get(ino) ?? 0) + 1)
  }

  /** Notifications sent and not yet written. */
  get notificationsQueued (): number { return this.notes.length + (this.notifying ? 1 : 0) }

  /** Resolves once the kernel has taken the notification (or it was dropped): what it invalidates is gone by then. */
  private queueNote (parts: Buffer[]): Promise<void> {
    if (this.done) return Promise.resolve()
    if (!this.connection.notify) { log('notification dropped: this connection cannot send one'); return Promise.resolve() }
    return new Promise(resolve => {
      this.notes.push({ parts, written: resolve })
      this.pumpNotes()
    })
  }

  private pumpNotes (): void {
    if (this.done) for (const n of this.notes.splice(0)) n.written()
    if (this.notifying || this.done) return
    const note = this.notes.shift()
    if (!note) return
    this.notifying = true
    this.connection.notify!(note.parts, err => {
      this.notifying = false
      note.written()
      // ENOENT: the kernel had nothing cached of it, which is no failure.
      if (err && err.code === 'ENODEV') this.end('unmounted')
      else if (err && err.code !== 'ENOENT') log('notification failed: %s', err.message)
      this.pumpNotes()
    })
  }

  /** Whether the kernel connection has ended. */
  isEnded (): boolean { return this.done }

  /** Milliseconds since the last request or reply. */
  quietMs (): number {
    return this.lastActivity === 0n ? Infinity : Number(process.hrtime.bigint() - this.lastActivity) / 1e6
  }

  /** fusermount -u (or -uz when lazy); rejects with fusermount's words (EBUSY: "Device or resource busy"). */
  async unmount (lazy: boolean, at = this.mountpoint): Promise<void> {
    const complaint = await fusermount(at, lazy)
    if (complaint) throw new Error(complaint)
  }

  private end (why: string): void {
    if (this.done) return
    this.done = true
    log('connection to %s ended: %s', this.mountpoint, why)
    this.connection.close()
    this.endedResolve()
  }

  /**
   * A buffer to read a request into. From the pool, it starts WRITE_HEADERS
   * bytes before a pool buffer, so a WRITE's data lands exactly on it: a
   * write of a whole block is kept as the block, without a copy.
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
  private polling = false
  private readonly poll = (): void => {
    const idle = process.hrtime.bigint() - this.lastActivity
    if (!this.done && (idle < HOT_NS || (this.calls.size > 0 && idle < WAIT_NS))) setImmediate(this.poll)
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
      const n = this.connection.read(buf)
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
  private send (unique: number, errno: number, payload?: Payload): void {
    this.active()
    const parts = payload === undefined ? [] : Array.isArray(payload) ? payload : [payload]
    let len = OUT_HEADER_BYTES
    for (const p of parts) len += p.length
    const h = this.header
    h.writeUInt32LE(len, 0)
    h.writeInt32LE(-errno, 4)
    putU64(h, 8, unique)
    try {
      this.connection.write(parts.length ? [h, ...parts] : [h])
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      // ENOENT: the request was interrupted and the kernel forgot it; ENODEV: the mount is gone.
      if (code === 'ENOENT') return
      if (code === 'ENODEV') return this.end('unmounted')
      log('reply to %d failed: %s', unique, (err as Error).message)
    }
  }

  /** Answer `call` once; a late answer (the call was interrupted and answered EINTR) is dropped. */
  private finish (call: Call, errno: number, payload?: Payload): void {
    if (call.answered) return this.late(call)
    call.answered = true
    if (this.calls.get(call.unique) === call) this.calls.delete(call.unique)
    this.send(call.unique, errno, payload)
    this.count(call, errno, payload)
  }

  private readonly opMetrics: Array<FuseOpMetrics | undefined> = []

  /** The call's figures (src/metrics): additions only, the opcode's series made once. */
  private count (call: Call, errno: number, payload: Payload): void {
    const m = this.opMetrics[call.opcode] ??= mountMetrics.fuseOp(call.opcode, opName(call.opcode))
    m.done(errno, (performance.now() - call.started) / 1000)
    if (errno !== 0) return
    if (call.opcode === Op.READ && Array.isArray(payload)) {
      let n = 0
      for (const p of payload) n += p.length
      mountMetrics.fuseBytesRead.n += n
    } else if (call.opcode === Op.WRITE && payload instanceof Buffer) mountMetrics.fuseBytesWritten.n += payload.readUInt32LE(0)
  }

  private late (call: Call): void {
    if (log.enabled) log('%s #%d: its answer came after its interrupt, dropped', opName(call.opcode), call.unique)
  }

  private fail (call: Call, err: unknown): void {
    if (call.answered) return this.late(call)
    const errno = errnoOf(err)
    const message = err instanceof Error ? err.message : String(err)
    if (!(err instanceof FsError)) this.untyped(call, err)
    if (errno === E.EIO) events.error('%s: %s', opName(call.opcode), message)
    else if (log.enabled) log('%s #%d: %s', opName(call.opcode), call.unique, message)
    this.finish(call, errno)
  }

  /** A failure without its POSIX code (a bug, or a system error not wrapped where it arose): its cause, once. */
  private untyped (call: Call, err: unknown): void {
    const object = typeof err === 'object' && err !== null
    if (object && untypedLogged.has(err)) return
    if (object) untypedLogged.add(err)
    log('%s #%d: not an FsError, answered EIO: %O', opName(call.opcode), call.unique, err)
  }

  /** Reply with what `encode` makes of `value`; an encoding that throws (a value out of range) fails the call. */
  private reply<T> (call: Call, value: T, encode: (v: T) => Payload): void {
    let payload: Payload
    try {
      payload = encode(value)
    } catch (err) {
      return this.fail(call, err)
    }
    this.finish(call, 0, payload)
  }

  /** Reply when `p` settles. */
  private answer<T> (call: Call, p: Promise<T>, encode: (v: T) => Payload): void {
    p.then(v => this.reply(call, v, encode), err => this.fail(call, err))
  }

  /**
   * Check and decode one request, then start its handler; nothing a request
   * holds (a short body, an unknown opcode, a name without its NUL) reaches a
   * handler or stops the session.
   */
  private dispatch (buf: Buffer, n: number): void {
    if (n < IN_HEADER_BYTES) {
      this.give(buf)
      return log('a %d-byte request (no whole header) dropped', n)
    }
    const h = readHeader(buf)
    let req: FuseRequest
    try {
      req = decodeRequest(h, buf.subarray(IN_HEADER_BYTES, n), this.agreed)
    } catch (err) {
      this.give(buf)
      log('%s #%d refused: %s', opName(h.opcode), h.unique, err instanceof Error ? err.message : String(err))
      if (expectsReply(h.opcode)) this.send(h.unique, errnoOf(err))
      return
    }
    if (log.enabled) log('%s #%d node %d (pid %d)', opName(h.opcode), h.unique, h.nodeid, h.pid)
    if (req.op === 'forget' || req.op === 'interrupt' || req.op === 'notify_reply') {
      this.give(buf)
      if (req.op === 'forget') this.forget(req.forgets)
      else if (req.op === 'interrupt') this.interrupt(h.unique, req.target)
      return
    }
    const takesSignal = req.op === 'read' || req.op === 'write' || req.op === 'flush' || req.op === 'fsync' || req.op === 'setlk'
    const call: Call = { unique: h.unique, opcode: h.opcode, abort: takesSignal ? new AbortController() : undefined, answered: false, started: performance.now() }
    this.calls.set(h.unique, call)
    const interrupted = this.strayInterrupts.size > 0 && this.claimInterrupt(h.unique)
    let keep = false
    try {
      keep = this.handle(h, req, buf, call)
    } catch (err) {
      // A handler that threw instead of rejecting.
      this.fail(call, err)
    } finally {
      if (!keep) this.give(buf)
    }
    if (interrupted && !call.answered) this.interruptCall(call)
  }

  /** FORGET, BATCH_FORGET: handed to the filesystem, if it counts lookups; the kernel wants no answer. */
  private forget (forgets: Forget[]): void {
    for (const f of forgets) {
      const left = (this.kernelLookups.get(f.ino) ?? 0) - f.nlookup
      if (left > 0 || f.ino === 1) this.kernelLookups.set(f.ino, Math.max(1, left))
      else this.kernelLookups.delete(f.ino)
    }
    if (!this.fs.forget) return
    for (const f of forgets) {
      try {
        this.fs.forget(f.ino, f.nlookup)
      } catch (err) {
        log('forget of %d failed: %O', f.ino, err)
      }
    }
  }

  /**
   * FUSE_INTERRUPT of the request `target` (Documentation/filesystems/fuse.rst,
   * "Interrupting filesystem operations"). A read, write, flush or fsync in
   * flight is aborted and answered EINTR at once; the others run to their end
   * (the kernel keeps waiting for them). An INTERRUPT may name a request not in
   * flight: answered already, or not read yet. As libfuse does, it is held
   * until the next request arrives: that one is it (and starts interrupted), or
   * the INTERRUPT gets EAGAIN, which the kernel ignores for an answered
   * request and requeues for one still waiting.
   */
  private interrupt (unique: number, target: number): void {
    const call = this.calls.get(target)
    if (call) return this.interruptCall(call)
    if (this.strayInterrupts.size >= STRAY_INTERRUPTS) this.againInterrupt()
    this.strayInterrupts.set(target, unique)
  }

  private interruptCall (call: Call): void {
    const what = opName(call.opcode)
    if (!call.abort) return log('interrupt of %s #%d: it runs to its end', what, call.unique)
    log('interrupt of %s #%d: answered EINTR', what, call.unique)
    this.finish(call, E.EINTR)
    call.abort.abort(new FsError('EINTR', `${what} #${call.unique}: interrupted`))
  }

  /** Whether an INTERRUPT came for `unique` before it; else one held INTERRUPT gets its EAGAIN now. */
  private claimInterrupt (unique: number): boolean {
    if (this.strayInterrupts.delete(unique)) return true
    this.againInterrupt()
    return false
  }

  private againInterrupt (): void {
    const [target, unique] = this.strayInterrupts.entries().next().value as [number, number]
    this.strayInterrupts.delete(target)
    this.send(unique, E.EAGAIN)
  }

  /** Start the handler of `req`. Returns true when `buf` is still in use (a write's data until its handler settles). */
  private handle (h: InHeader, req: FuseRequest, buf: Buffer, call: Call): boolean {
    const fs = this.fs
    const node = h.nodeid
    const caller: Caller = { uid: h.uid, gid: h.gid, pid: h.pid }
    const signal = call.abort?.signal
    const entry = (a: Attr): Buffer => {
      this.looked(a.ino)
      return entryOut(a.ino, a, this.opts.entryTimeout, this.opts.attrTimeout)
    }
    const attr = (a: Attr): Buffer => attrOut(a, this.opts.attrTimeout)
    const empty = (): undefined => undefined
    switch (req.op) {
      case 'init': this.init(call, req.init); break
      case 'destroy': this.finish(call, 0); break
      case 'lookup':
        this.answer(call, fs.lookup(node, req.name), a => a ? entry(a) : entryOut(0, null, this.opts.negativeTimeout, 0))
        break
      case 'getattr': this.answer(call, fs.getattr(node, req.fh), attr); break
      case 'statx': this.answer(call, fs.getattr(node, req.fh), a => statxOut(a, this.opts.attrTimeout)); break
      case 'setattr': this.answer(call, fs.setattr(node, req.set, caller), attr); break
      case 'readlink': this.answer(call, fs.readlink(node), t => Buffer.from(t)); break
      case 'symlink': this.answer(call, fs.symlink(node, req.name, req.target, caller), entry); break
      case 'mknod': this.answer(call, fs.mknod(node, req.name, req.mode, req.rdev, { ...caller, umask: req.umask }), entry); break
      case 'mkdir': this.answer(call, fs.mkdir(node, req.name, req.mode, { ...caller, umask: req.umask }), entry); break
      case 'unlink': this.answer(call, fs.unlink(node, req.name), empty); break
      case 'rmdir': this.answer(call, fs.rmdir(node, req.name), empty); break
      case 'rename': this.answer(call, fs.rename(node, req.name, req.newParent, req.newName, req.flags, caller), empty); break
      case 'link': this.answer(call, fs.link(req.ino, node, req.newName), entry); break
      case 'open': this.answer(call, fs.open(node, req.flags), fh => openOut(fh, this.openFlags())); break
      case 'create':
        this.answer(call, fs.create(node, req.name, req.mode, req.flags, { ...caller, umask: req.umask }), r => [entry(r.attr), openOut(r.fh, this.openFlags())])
        break
      case 'tmpfile':
        if (!fs.tmpfile) this.finish(call, E.ENOSYS)
        else this.answer(call, fs.tmpfile(node, req.mode, req.flags, { ...caller, umask: req.umask }), r => [entry(r.attr), openOut(r.fh, this.openFlags())])
        break
      case 'read': this.answer(call, fs.read(node, req.fh, req.offset, req.size, signal), pieces => pieces); break
      case 'write': {
        let kept = false
        const keepBuffer = this.pool && req.data.length === this.pool.size ? () => { kept = true } : undefined
        const r = fs.write(node, req.fh, req.offset, req.data, keepBuffer, signal)
        if (typeof r === 'number') {
          if (req.flags & O_DIRECT) this.invalidated(node, req.offset, r, () => this.reply(call, r, u32Out))
          else this.reply(call, r, u32Out)
          return kept
        }
        // The data stays in `buf` until the handler is done with it, even when its interrupt answered first.
        const direct = (req.flags & O_DIRECT) !== 0
        r.then(count => direct ? this.invalidated(node, req.offset, count, () => this.reply(call, count, u32Out)) : this.reply(call, count, u32Out),
          err => this.fail(call, err)).finally(() => { if (!kept) this.give(buf) })
        return true
      }
      case 'flush': this.answer(call, fs.flush(node, req.fh, signal, req.lockOwner), empty); break
      case 'release': this.answer(call, fs.release(node, req.fh, req.flockOwner), empty); break
      case 'fsync': this.answer(call, fs.fsync(node, req.fh, req.datasync, signal), empty); break
      case 'opendir': this.answer(call, fs.opendir(node), fh => openOut(fh, 0)); break
      case 'readdir': this.readdir(call, node, req.fh, req.offset, req.size, req.plus); break
      case 'releasedir': this.answer(call, fs.releasedir(node, req.fh), empty); break
      case 'fsyncdir': this.answer(call, fs.fsyncdir(node, req.fh), empty); break
      case 'statfs': this.answer(call, fs.statfs(), statfsOut); break
      case 'setxattr': this.answer(call, fs.setxattr(node, req.name, req.value, req.flags, (req.setxattrFlags & SETXATTR_ACL_KILL_SGID) !== 0), empty); break
      case 'getxattr': {
        const size = req.size
        this.answer(call, fs.getxattr(node, req.name), v => sized(v, size))
        break
      }
      case 'listxattr': {
        const size = req.size
        this.answer(call, fs.listxattr(node), names => sized(Buffer.from(names.map(x => x + '\0').join('')), size))
        break
      }
      case 'removexattr': this.answer(call, fs.removexattr(node, req.name), empty); break
      case 'fallocate':
        if (!fs.fallocate) { this.finish(call, E.ENOSYS); break }
        this.answer(call, fs.fallocate(node, req.fh, req.offset, req.length, req.mode), empty)
        break
      case 'lseek':
        if (!fs.lseek) { this.finish(call, E.ENOSYS); break }
        this.answer(call, fs.lseek(node, req.fh, req.offset, req.whence), u64Out)
        break
      case 'copy_file_range':
        if (!fs.copyFileRange) { this.finish(call, E.ENOSYS); break }
        // The reply's count is 32 bits: the kernel asks again for the rest.
        this.answer(call, fs.copyFileRange(node, req.fhIn, req.offIn, req.nodeOut, req.fhOut, req.offOut, Math.min(req.len, MAX_COPY)), u32Out)
        break
      case 'ioctl':
        if (!fs.ioctl) this.finish(call, E.ENOTTY)
        else this.answer(call, fs.ioctl(node, req.cmd, req.input, req.outSize, caller), ioctlOut)
        break
      case 'getlk':
        if (!fs.getlk) { this.finish(call, E.ENOSYS); break }
        this.answer(call, fs.getlk(node, req.lock), lkOut)
        break
      case 'setlk':
        if (!fs.setlk) { this.finish(call, E.ENOSYS); break }
        this.answer(call, fs.setlk(node, req.lock, req.wait, signal), empty)
        break
      default:
        // forget, interrupt and notify_reply are handled before (they get no answer).
        this.finish(call, E.ENOSYS)
    }
    return false
  }

  /**
   * A direct write bypassed the kernel's page cache, which may still hold the
   * range's old bytes (an asynchronous O_DIRECT write invalidates only before
   * it starts: a buffered read meanwhile caches the old data). Drop them, and
   * answer (`then`) once the kernel has: a read after the write's completion
   * must see it.
   */
  private invalidated (ino: number, offset: number, length: number, then: () => void): void {
    if (length <= 0) return then()
    void this.queueNote(notifyInvalInode(ino, offset, length)).then(then)
  }

  private openFlags (): number {
    return (this.opts.keepCache ? Fopen.KEEP_CACHE : 0) | (this.opts.directIo ? Fopen.DIRECT_IO : 0)
  }

  private init (call: Call, k: InitIn): void {
    if (k.major !== 7 || k.minor < MIN_KERNEL_MINOR) {
      events.error('the kernel speaks FUSE %d.%d; bslfs needs 7.%d or newer', k.major, k.minor, MIN_KERNEL_MINOR)
      return this.finish(call, E.EPROTO)
    }
    const wanted = ALL_FLAGS | (this.opts.readdirPlus ? Init.DO_READDIRPLUS : 0) | (this.opts.posixAcl ? Init.POSIX_ACL | Init.DONT_MASK | Init.SETXATTR_EXT : 0) |
      (this.opts.locks === true ? Init.POSIX_LOCKS | Init.FLOCK_LOCKS : 0)
    const flags = k.flags & wanted
    const maxWrite = this.opts.maxWrite
    this.bufferBytes = maxWrite + 4096
    this.spare.length = 0
    const o = { minor: Math.min(k.minor, KERNEL_MINOR), maxReadahead: Math.min(k.maxReadahead, this.opts.maxReadahead), flags, maxWrite }
    this.negotiated = o
    this.agreed = { setxattrExt: (flags & Init.SETXATTR_EXT) !== 0 }
    log('INIT: kernel %d.%d (flags %s, readahead %d); agreed 7.%d, flags %s, max_write %d', k.major, k.minor,
      k.flags.toString(16), k.maxReadahead, o.minor, flags.toString(16), maxWrite)
    this.finish(call, 0, initOut({ ...o, maxBackground: 64, congestionThreshold: 48, maxPages: Math.ceil(maxWrite / 4096) }))
  }

  /** READDIR / READDIRPLUS: as many entries from `offset` as fit in the kernel's buffer. */
  private readdir (call: Call, ino: number, fh: number, offset: number, size: number, plus: boolean): void {
    // Entries are at least 32 bytes (plus: 160): ask for no more than could fit.
    const count = Math.max(1, Math.floor(size / (plus ? ENTRY_OUT_BYTES + 32 : 32)))
    this.answer(call, this.fs.readdir(ino, fh, offset, count, plus), items => {
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
          if (a) this.looked(it.ino)
          at += ENTRY_OUT_BYTES
        }
        at += putDirent(out, at, it.ino, offset + i + 1, it.mode, nameBytes)
      }
      return out.subarray(0, at)
    })
  }
}

/** An xattr value or list: its size when asked with size 0, ERANGE when it does not fit. */
function sized (v: Buffer, size: number): Buffer {
  if (size === 0) return u32Out(v.length)
  if (v.length > size) throw new FsError('ERANGE', 'xattr buffer too small')
  return v
}

export { ATTR_BYTES }
