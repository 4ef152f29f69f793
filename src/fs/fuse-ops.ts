import createDebug from 'debug'
import { errnoOf } from '../errors'
import { BslFilesystem, Caller } from './filesystem'
import { Timespec } from '../directory/records'

const log = createDebug('bslfs:fs')

type Cb = (...args: any[]) => void

/** Operations that change the filesystem: on a read-only mount they answer EROFS. */
const MUTATING = new Set(['create', 'mkdir', 'mknod', 'symlink', 'link', 'unlink', 'rmdir', 'rename', 'chmod', 'chown',
  'utimens', 'truncate', 'ftruncate', 'write', 'setxattr', 'removexattr'])
const EROFS = 30
const DATA_OPS = new Set(['read', 'write'])

/**
 * Keeps the event loop polling (not sleeping) for a moment after each
 * operation. A sleeping loop takes a wake-up from the FUSE thread per request,
 * which on a virtual machine costs as much as the request itself; a process
 * issuing requests back to back finds the loop awake instead.
 */
class HotLoop {
  private last = 0n
  private polling = false
  constructor (private readonly windowNs: bigint) {}

  touch (): void {
    if (this.windowNs <= 0n) return
    this.last = process.hrtime.bigint()
    if (!this.polling) {
      this.polling = true
      setImmediate(this.poll)
    }
  }

  private readonly poll = (): void => {
    if (process.hrtime.bigint() - this.last < this.windowNs) setImmediate(this.poll)
    else this.polling = false
  }
}

/** BSLFS_HOT_LOOP_US: how long the loop stays awake after a metadata request (default 200; 0 turns it off). */
function hotLoopWindowNs (): bigint {
  const text = process.env.BSLFS_HOT_LOOP_US ?? '200'
  if (!/^[0-9]{1,7}$/.test(text)) throw new Error(`bad BSLFS_HOT_LOOP_US "${text}": give microseconds, 0 to 9999999`)
  return BigInt(text) * 1000n
}

/**
 * The FUSE boundary: fuse-native's callback conventions on one side, the
 * filesystem's promises on the other. Errors keep the POSIX code they were
 * raised with; here they only become the negative errno the kernel expects.
 */
export function fuseOperations (fs: BslFilesystem): Record<string, (...args: any[]) => void> {
  const hot = new HotLoop(hotLoopWindowNs())
  /** Run an operation, answer cb(0, ...result) or cb(-errno). */
  const op = (name: string, fn: (...args: any[]) => Promise<unknown>, answer: (cb: Cb, v: any) => void = (cb) => cb(0)) => {
    // Streams of reads and writes keep the loop busy anyway, and polling then takes CPU from the devices.
    const keepsLoopAwake = !DATA_OPS.has(name)
    const refused = fs.readOnly && MUTATING.has(name)
    return (...args: any[]) => {
      if (keepsLoopAwake) hot.touch()
      const cb: Cb = args.pop()
      if (refused) return cb(-EROFS)
      fn(...args).then(v => answer(cb, v), (err: unknown) => {
        const errno = errnoOf(err)
        log('%s %o: %s', name, args.filter(a => !Buffer.isBuffer(a)), (err as Error).message)
        if (errno === 5) console.error(`bslfs: ${name}: ${(err as Error).message}`)
        cb(-errno)
      })
    }
  }
  const value = (cb: Cb, v: unknown) => cb(0, v)
  /** read and write answer with the byte count in the error position. */
  const count = (cb: Cb, n: number) => cb(n)

  return {
    init: (cb: Cb) => cb(0),
    getattr: op('getattr', (path: string) => fs.getattr(path), value),
    fgetattr: op('fgetattr', (path: string | null, fd: number) => fs.getattr(path, fd), value),
    access: op('access', (path: string) => fs.access(path)),
    statfs: op('statfs', () => fs.statfs(), value),
    readlink: op('readlink', (path: string) => fs.readlink(path), value),
    opendir: op('opendir', (path: string) => fs.opendir(path), (cb) => cb(0, 0)),
    releasedir: (_path: string, _fd: number, cb: Cb) => cb(0),
    readdir: op('readdir', (path: string) => fs.readdir(path), (cb, entries: Array<{ name: string, ino: number, mode: number }>) =>
      cb(0, entries.map(e => e.name), entries.map(e => ({ ino: e.ino, mode: e.mode })))),
    create: op('create', (path: string, mode: number, _flags: number, caller: Caller) => fs.create(path, mode, caller), value),
    mkdir: op('mkdir', (path: string, mode: number, caller: Caller) => fs.mkdir(path, mode, caller)),
    mknod: op('mknod', (path: string, mode: number, dev: number, caller: Caller) => fs.mknod(path, mode, dev, caller)),
    symlink: op('symlink', (target: string, path: string, caller: Caller) => fs.symlink(target, path, caller)),
    link: op('link', (existing: string, path: string) => fs.link(existing, path)),
    unlink: op('unlink', (path: string) => fs.unlink(path)),
    rmdir: op('rmdir', (path: string) => fs.rmdir(path)),
    rename: op('rename', (from: string, to: string, caller: Caller) => fs.rename(from, to, caller)),
    chmod: op('chmod', (path: string, mode: number) => fs.chmod(path, mode)),
    chown: op('chown', (path: string, uid: number, gid: number) => fs.chown(path, uid, gid)),
    utimens: op('utimens', (path: string | null, atime: Timespec, mtime: Timespec) => fs.utimens(path, atime, mtime)),
    truncate: op('truncate', (path: string, size: number) => fs.truncate(path, size)),
    ftruncate: op('ftruncate', (path: string | null, fd: number, size: number) => fs.truncate(path, size, fd)),
    open: op('open', (path: string, flags: number) => fs.open(path, flags), value),
    read: op('read', (_path: string | null, fd: number, buf: Buffer, len: number, pos: number) => fs.read(fd, buf, len, pos), count),
    write: op('write', (_path: string | null, fd: number, buf: Buffer, len: number, pos: number) => fs.write(fd, buf.subarray(0, len), pos), count),
    flush: op('flush', (_path: string | null, fd: number) => fs.flush(fd)),
    fsync: op('fsync', (_path: string | null, _datasync: number, fd: number) => fs.fsync(fd)),
    fsyncdir: op('fsyncdir', () => fs.fsyncdir()),
    release: op('release', (_path: string | null, fd: number) => fs.release(fd)),
    setxattr: op('setxattr', (path: string, name: string, value: Buffer, _position: number, flags: number) => fs.setxattr(path, name, value, flags)),
    getxattr: op('getxattr', (path: string, name: string) => fs.getxattr(path, name), value),
    listxattr: op('listxattr', (path: string) => fs.listxattr(path), value),
    removexattr: op('removexattr', (path: string, name: string) => fs.removexattr(path, name))
  }
}
