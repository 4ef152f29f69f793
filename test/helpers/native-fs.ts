// A tiny in-memory filesystem written directly against the (patched) fuse-native binding,
// run in a child process so the test process can use blocking fs calls and shell tools on
// the mount without deadlocking the FUSE dispatch (which needs the server's event loop).
//
//   const srv = await startServer(opts)   // forks this file, mounts under a temp dir
//   await srv.log()                      // the calls the filesystem saw
//   await srv.stop()                     // unmounts (fusermount -u, then -uz), kills the child
//
// BSLFS_FUSE_NATIVE=/path/to/fuse-native loads another copy of the module (used to run the
// test against the stock 2.2.6 binding, to check that it fails there).

import { fork, ChildProcess, execFileSync } from 'child_process'
import fs from 'fs'
import os from 'os'
import path from 'path'

export interface LogEntry {
  op: string
  args: any[]
}

export function loadFuse (): any {
  return require(process.env.BSLFS_FUSE_NATIVE || 'fuse-native')
}

export function isMounted (mnt: string): boolean {
  const lines = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')
  return lines.some(l => l.split(' ')[4] === mnt)
}

// fusermount -u, and when that fails (busy, dead server) fusermount -uz: never leave a mount.
export function forceUnmount (mnt: string): void {
  if (!isMounted(mnt)) return
  try {
    execFileSync('fusermount', ['-u', mnt], { stdio: 'ignore', timeout: 10000 })
  } catch {
    try {
      execFileSync('fusermount', ['-uz', mnt], { stdio: 'ignore', timeout: 10000 })
    } catch {}
  }
}

export interface Server {
  dir: string
  mnt: string
  child: ChildProcess
  log (): Promise<LogEntry[]>
  clear (): Promise<void>
  stop (): Promise<void>
}

function request (child: ChildProcess, msg: any): Promise<any> {
  return new Promise((resolve, reject) => {
    if (!child.connected) return reject(new Error(`native-fs server is gone (${msg.cmd})`))
    const done = (err: Error | null, m?: any) => {
      clearTimeout(timer)
      child.off('message', onmsg)
      child.off('disconnect', ongone)
      if (err) reject(err)
      else resolve(m)
    }
    const timer = setTimeout(() => done(new Error(`native-fs server did not answer ${msg.cmd}`)), 15000)
    function onmsg (m: any) {
      if (m && m.reply === msg.cmd) done(null, m)
    }
    function ongone () {
      done(new Error(`native-fs server exited before answering ${msg.cmd}`))
    }
    child.on('message', onmsg)
    child.on('disconnect', ongone)
    child.send(msg)
  })
}

export async function startServer (fuseOpts: any): Promise<Server> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bslfs-native-'))
  fs.chmodSync(dir, 0o755) // other uids must reach the mount point
  const mnt = path.join(dir, 'mnt')
  fs.mkdirSync(mnt)

  const child = fork(__filename, ['serve', mnt, JSON.stringify(fuseOpts)], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc']
  })

  const stop = async () => {
    if (child.connected) {
      try { await request(child, { cmd: 'unmount' }) } catch {}
    }
    forceUnmount(mnt)
    if (child.exitCode === null && child.signalCode === null && child.pid) {
      try { process.kill(child.pid, 'SIGKILL') } catch {}
    }
    forceUnmount(mnt)
    try { fs.rmSync(dir, { recursive: true, force: true }) } catch {}
  }

  const ready: any = await new Promise(resolve => {
    child.once('message', resolve)
    child.once('exit', code => resolve({ reply: 'mounted', error: `server exited with ${code}` }))
  })
  if (ready.error) {
    await stop()
    throw new Error('native-fs mount failed: ' + ready.error)
  }

  return {
    dir,
    mnt,
    child,
    log: async () => (await request(child, { cmd: 'log' })).log,
    clear: async () => { await request(child, { cmd: 'clear' }) },
    stop
  }
}

// ---------------------------------------------------------------------------------------
// The server side (this file run as a child process).

interface Node {
  mode: number
  ino: number
  nlink: number
  uid: number
  gid: number
  rdev: number
  size?: number // virtual size (sparse, never read)
  blocks?: number
  atime: { sec: number, nsec: number }
  mtime: { sec: number, nsec: number }
  ctime: { sec: number, nsec: number }
  data: Buffer
  target?: string
  xattr: Map<string, Buffer>
}

export const HUGE = {
  ino: 2 ** 40 + 123, // above 2^32: needs use_ino and a 64-bit st_ino
  nlink: 2 ** 32 - 1, // the FUSE protocol's fuse_attr.nlink is 32 bits: this is the maximum
  size: 2 ** 33 + 1,
  blocks: 2 ** 34 + 3
}

export const STATFS = {
  bsize: 4096,
  frsize: 4096,
  blocks: 2 ** 40 + 1,
  bfree: 2 ** 40,
  bavail: 2 ** 39 + 3,
  files: 2 ** 36 + 7,
  ffree: 2 ** 35 + 9,
  favail: 2 ** 35 + 9,
  namemax: 255
}

function serve (mnt: string, fuseOpts: any): void {
  const Fuse = loadFuse()
  const log: LogEntry[] = []
  const nodes = new Map<string, Node>()
  const fds = new Map<number, Node>()
  let nextIno = 2 ** 33 // every inode number is above 2^32
  let nextFd = 10

  const now = () => {
    const ms = Date.now()
    return { sec: Math.floor(ms / 1000), nsec: (ms % 1000) * 1e6 }
  }
  const mk = (mode: number, uid: number, gid: number, extra: Partial<Node> = {}): Node => ({
    mode, ino: nextIno++, nlink: 1, uid, gid, rdev: 0, atime: now(), mtime: now(), ctime: now(),
    data: Buffer.alloc(0), xattr: new Map(), ...extra
  })

  nodes.set('/', mk(0o41777, 0, 0, { ino: 1, nlink: 2 }))
  nodes.set('/huge', mk(0o100644, 0, 0, { ino: HUGE.ino, nlink: HUGE.nlink, size: HUGE.size, blocks: HUGE.blocks }))

  // The stock 2.2.6 binding only takes Dates / milliseconds (and has no UTIME_NOW).
  const stock = Fuse.UTIME_NOW === undefined
  const time = (t: { sec: number, nsec: number }) => stock ? t.sec * 1000 + Math.floor(t.nsec / 1e6) : t
  const stat = (n: Node) => ({
    mode: n.mode,
    uid: n.uid,
    gid: n.gid,
    size: n.size !== undefined ? n.size : (n.target !== undefined ? Buffer.byteLength(n.target) : n.data.length),
    nlink: n.nlink,
    ino: n.ino,
    rdev: n.rdev,
    blksize: 4096,
    blocks: n.blocks !== undefined ? n.blocks : Math.ceil(n.data.length / 512),
    atime: time(n.atime),
    mtime: time(n.mtime),
    ctime: time(n.ctime)
  })
  const rec = (op: string, ...args: any[]) => { log.push({ op, args }) }
  const parentOf = (p: string) => path.posix.dirname(p)
  const resize = (n: Node, size: number) => {
    const b = Buffer.alloc(size)
    n.data.copy(b, 0, 0, Math.min(size, n.data.length))
    n.data = b
  }
  const setTime = (t: { sec: number, nsec: number }, cur: { sec: number, nsec: number }) => {
    if (t.nsec === Fuse.UTIME_OMIT) return cur
    if (t.nsec === Fuse.UTIME_NOW) return now()
    return { sec: t.sec, nsec: t.nsec }
  }
  const addNode = (p: string, n: Node) => {
    if (nodes.has(p)) return Fuse.EEXIST
    if (!nodes.has(parentOf(p))) return Fuse.ENOENT
    nodes.set(p, n)
    return 0
  }

  const ops = {
    getattr (p: string, cb: Function) {
      rec('getattr', p)
      const n = nodes.get(p)
      if (!n) return cb(Fuse.ENOENT)
      cb(0, stat(n))
    },
    fgetattr (p: string | null, fd: number, cb: Function) {
      rec('fgetattr', p, fd)
      const n = fds.get(fd)
      if (!n) return cb(Fuse.EBADF)
      cb(0, stat(n))
    },
    readdir (p: string, cb: Function) {
      rec('readdir', p)
      const prefix = p === '/' ? '/' : p + '/'
      const names = [...nodes.keys()]
        .filter(k => k !== p && k.startsWith(prefix) && !k.slice(prefix.length).includes('/'))
        .map(k => k.slice(prefix.length))
      cb(0, ['.', '..', ...names])
    },
    statfs (p: string, cb: Function) {
      rec('statfs', p)
      cb(0, STATFS)
    },
    // The op signatures are the patched ones; the `...a` ops also accept the stock 2.2.6
    // shapes (no flags / ctx) so that a run against the stock binding fails on assertions,
    // not on a crashed server.
    create (p: string, mode: number, ...a: any[]) {
      const cb = a.pop()
      const [flags, ctx = { uid: 0, gid: 0, pid: 0 }] = a
      rec('create', p, mode, flags, ctx)
      const n = mk(mode, ctx.uid, ctx.gid)
      const err = addNode(p, n)
      if (err) return cb(err)
      const fd = nextFd++
      fds.set(fd, n)
      cb(0, fd)
    },
    open (p: string, flags: number, cb: Function) {
      rec('open', p, flags)
      const n = nodes.get(p)
      if (!n) return cb(Fuse.ENOENT)
      const fd = nextFd++
      fds.set(fd, n)
      cb(0, fd)
    },
    release (p: string | null, fd: number, cb: Function) {
      rec('release', p, fd)
      fds.delete(fd)
      cb(0)
    },
    flush (p: string | null, fd: number, cb: Function) {
      rec('flush', p, fd)
      cb(0)
    },
    fsync (p: string | null, datasync: number, fd: number, cb: Function) {
      rec('fsync', p, datasync, fd)
      cb(0)
    },
    read (p: string | null, fd: number, buf: Buffer, len: number, pos: number, cb: Function) {
      rec('read', p, fd, len, pos)
      const n = fds.get(fd)
      if (!n) return cb(Fuse.EBADF)
      cb(pos >= n.data.length ? 0 : n.data.copy(buf, 0, pos, Math.min(pos + len, n.data.length)))
    },
    write (p: string | null, fd: number, buf: Buffer, len: number, pos: number, cb: Function) {
      rec('write', p, fd, len, pos)
      const n = fds.get(fd)
      if (!n) return cb(Fuse.EBADF)
      if (n.data.length < pos + len) resize(n, pos + len)
      buf.copy(n.data, pos, 0, len)
      n.mtime = n.ctime = now()
      cb(len)
    },
    truncate (p: string, size: number, cb: Function) {
      rec('truncate', p, size)
      const n = nodes.get(p)
      if (!n) return cb(Fuse.ENOENT)
      resize(n, size)
      cb(0)
    },
    ftruncate (p: string | null, fd: number, size: number, cb: Function) {
      rec('ftruncate', p, fd, size)
      const n = fds.get(fd)
      if (!n) return cb(Fuse.EBADF)
      resize(n, size)
      cb(0)
    },
    utimens (p: string, atime: any, mtime: any, cb: Function) {
      rec('utimens', p, atime, mtime)
      if (typeof atime === 'number') atime = { sec: Math.floor(atime / 1000), nsec: (atime % 1000) * 1e6 }
      if (typeof mtime === 'number') mtime = { sec: Math.floor(mtime / 1000), nsec: (mtime % 1000) * 1e6 }
      const n = nodes.get(p)
      if (!n) return cb(Fuse.ENOENT)
      n.atime = setTime(atime, n.atime)
      n.mtime = setTime(mtime, n.mtime)
      n.ctime = now()
      cb(0)
    },
    chmod (p: string, mode: number, cb: Function) {
      const n = nodes.get(p)
      if (!n) return cb(Fuse.ENOENT)
      n.mode = (n.mode & ~0o7777) | (mode & 0o7777)
      cb(0)
    },
    chown (p: string, uid: number, gid: number, cb: Function) {
      const n = nodes.get(p)
      if (!n) return cb(Fuse.ENOENT)
      if (uid !== 0xffffffff) n.uid = uid
      if (gid !== 0xffffffff) n.gid = gid
      cb(0)
    },
    unlink (p: string, cb: Function) {
      rec('unlink', p)
      const n = nodes.get(p)
      if (!n) return cb(Fuse.ENOENT)
      nodes.delete(p)
      n.nlink = 0
      cb(0)
    },
    mkdir (p: string, mode: number, ...a: any[]) {
      const cb = a.pop()
      const [ctx = { uid: 0, gid: 0, pid: 0 }] = a
      rec('mkdir', p, mode, ctx)
      cb(addNode(p, mk(0o40000 | mode, ctx.uid, ctx.gid, { nlink: 2 })))
    },
    rmdir (p: string, cb: Function) {
      rec('rmdir', p)
      if (!nodes.has(p)) return cb(Fuse.ENOENT)
      nodes.delete(p)
      cb(0)
    },
    mknod (p: string, mode: number, dev: number, ...a: any[]) {
      const cb = a.pop()
      const [ctx = { uid: 0, gid: 0, pid: 0 }] = a
      rec('mknod', p, mode, dev, ctx)
      cb(addNode(p, mk(mode, ctx.uid, ctx.gid, { rdev: dev })))
    },
    symlink (target: string, linkPath: string, ...a: any[]) {
      const cb = a.pop()
      const [ctx = { uid: 0, gid: 0, pid: 0 }] = a
      rec('symlink', target, linkPath, ctx)
      cb(addNode(linkPath, mk(0o120777, ctx.uid, ctx.gid, { target })))
    },
    readlink (p: string, cb: Function) {
      const n = nodes.get(p)
      if (!n || n.target === undefined) return cb(Fuse.EINVAL)
      cb(0, n.target)
    },
    setxattr (p: string, name: string, value: Buffer, position: number, flags: number, cb: Function) {
      const n = nodes.get(p)
      if (!n) return cb(Fuse.ENOENT)
      n.xattr.set(name, Buffer.from(value))
      cb(0)
    },
    getxattr (p: string, name: string, position: number, cb: Function) {
      const n = nodes.get(p)
      if (!n) return cb(Fuse.ENOENT)
      cb(0, n.xattr.get(name) || null)
    },
    listxattr (p: string, cb: Function) {
      const n = nodes.get(p)
      if (!n) return cb(Fuse.ENOENT)
      cb(0, [...n.xattr.keys()])
    },
    removexattr (p: string, name: string, cb: Function) {
      const n = nodes.get(p)
      if (!n) return cb(Fuse.ENOENT)
      if (!n.xattr.delete(name)) return cb(Fuse.ENODATA)
      cb(0)
    }
  }

  const f = new Fuse(mnt, ops, fuseOpts)
  const send = (m: any) => { if (process.connected) process.send!(m) }
  f.mount((err: any) => send({ reply: 'mounted', error: err ? String(err.message || err) : null }))

  process.on('message', (m: any) => {
    if (m.cmd === 'log') send({ reply: 'log', log })
    else if (m.cmd === 'clear') { log.length = 0; send({ reply: 'clear' }) }
    else if (m.cmd === 'unmount') {
      f.unmount((err: any) => {
        send({ reply: 'unmount', error: err ? String(err.message || err) : null })
        setTimeout(() => process.exit(0), 50)
      })
    }
  })
  process.on('disconnect', () => {
    forceUnmount(mnt)
    process.exit(0)
  })
}

if (require.main === module && process.argv[2] === 'serve') {
  serve(process.argv[3], JSON.parse(process.argv[4]))
}
