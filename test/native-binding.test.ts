// The patched fuse-native binding, checked through the kernel (see
// native-notes/fuse-native-patch.md). A tiny in-memory filesystem (test/helpers/native-fs.ts)
// is mounted in a child process under /tmp; this process drives it with ordinary tools.
// Needs root, /dev/fuse, fusermount, python3, coreutils, dd.
//
// Each group fails on the stock fuse-native 2.2.6 binding; to see that, point
// BSLFS_FUSE_NATIVE at an unpatched copy of the module (with its prebuilds).

import t from 'tap'
import fs from 'fs'
import path from 'path'
import { execFileSync, spawn, spawnSync } from 'child_process'
import { startServer, loadFuse, isMounted, forceUnmount, Server, LogEntry, HUGE, STATFS } from './helpers/native-fs'

const PY = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3'
const NOBODY = 65534
const NOBODY_ENV = { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: '/', LANG: 'C' }
const EXTRA = ['use_ino', 'big_writes', 'max_write=131072', 'hard_remove', 'default_permissions', 'allow_other']

const canRun = process.getuid && process.getuid() === 0 && fs.existsSync('/dev/fuse')

function sh (cmd: string, args: string[], opts: any = {}): string {
  return execFileSync(cmd, args, { encoding: 'utf8', timeout: 30000, env: { ...process.env, TZ: 'UTC' }, ...opts })
}

function py (code: string, ...args: string[]): any {
  return JSON.parse(sh(PY, ['-c', code, ...args]).trim())
}

const UTIME_NOW = (1 << 30) - 1
const UTIME_OMIT = (1 << 30) - 2

const ops = (log: LogEntry[], op: string) => log.filter(e => e.op === op)

t.test('patched fuse-native through the kernel', { skip: canRun ? false : 'needs root and /dev/fuse' }, async t => {
  const Fuse = loadFuse()
  const srv: Server = await startServer({ extraOptions: EXTRA, timeout: false, strictUnmount: true })
  t.teardown(() => srv.stop())
  const mnt = srv.mnt
  const p = (name: string) => path.join(mnt, name)

  t.ok(isMounted(mnt), 'mounted')

  t.test('mount options: extraOptions reach the kernel mount', async t => {
    const line = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find(l => l.split(' ')[4] === mnt) || ''
    t.match(line, /default_permissions/, 'default_permissions')
    t.match(line, /allow_other/, 'allow_other')
  })

  t.test('utimens: atime and mtime, nanoseconds, UTIME_OMIT, UTIME_NOW', async t => {
    fs.writeFileSync(p('times'), 'x')

    // distinct atime and mtime (the stock binding passed atime twice)
    fs.utimesSync(p('times'), 1000000000.5, 1200000000.25)
    let st = fs.statSync(p('times'))
    t.equal(st.atimeMs, 1000000000500, 'atime set')
    t.equal(st.mtimeMs, 1200000000250, 'mtime set, not a copy of atime')

    // nanoseconds both ways (the stock binding carried milliseconds)
    sh('touch', ['-d', '2001-02-03 04:05:06.123456789', p('times')])
    t.equal(sh('stat', ['-c', '%x|%y', p('times')]).trim(),
      '2001-02-03 04:05:06.123456789 +0000|2001-02-03 04:05:06.123456789 +0000', 'ns precision in stat')
    const bst = fs.statSync(p('times'), { bigint: true })
    t.equal(bst.atimeNs, 981173106123456789n, 'atimeNs exact')

    // touch -a / touch -m: only one time changes; the other arrives as UTIME_OMIT
    await srv.clear()
    sh('touch', ['-a', '-d', '2005-06-07 08:09:10.5', p('times')])
    t.equal(sh('stat', ['-c', '%x|%y', p('times')]).trim(),
      '2005-06-07 08:09:10.500000000 +0000|2001-02-03 04:05:06.123456789 +0000', 'touch -a changes only atime')
    sh('touch', ['-m', '-d', '2006-07-08 09:10:11.25', p('times')])
    t.equal(sh('stat', ['-c', '%x|%y', p('times')]).trim(),
      '2005-06-07 08:09:10.500000000 +0000|2006-07-08 09:10:11.250000000 +0000', 'touch -m changes only mtime')
    const u = ops(await srv.log(), 'utimens')
    t.equal(u.length, 2, 'two utimens calls reached the filesystem')
    t.same(u[0] && u[0].args, ['/times', { sec: 1118131750, nsec: 500000000 }, { sec: 0, nsec: UTIME_OMIT }], 'touch -a: mtime is UTIME_OMIT')
    t.same(u[1] && u[1].args, ['/times', { sec: 0, nsec: UTIME_OMIT }, { sec: 1152349811, nsec: 250000000 }], 'touch -m: atime is UTIME_OMIT')

    // touch with no time: UTIME_NOW arrives as the special value
    await srv.clear()
    const before = Date.now()
    sh('touch', [p('times')])
    const now = ops(await srv.log(), 'utimens')
    t.equal(now.length, 1, 'one utimens call')
    t.equal(now[0] && now[0].args[1] && now[0].args[1].nsec, UTIME_NOW, 'atime nsec is UTIME_NOW')
    t.equal(now[0] && now[0].args[2] && now[0].args[2].nsec, UTIME_NOW, 'mtime nsec is UTIME_NOW')
    t.equal(Fuse.UTIME_NOW, UTIME_NOW, 'Fuse.UTIME_NOW')
    t.equal(Fuse.UTIME_OMIT, UTIME_OMIT, 'Fuse.UTIME_OMIT')
    st = fs.statSync(p('times'))
    t.ok(st.mtimeMs >= before - 2000, 'the filesystem applied "now"')
  })

  t.test('64-bit inode numbers, link counts, sizes, blocks and statfs counts', async t => {
    const [ino, nlink, size, blocks] = sh('stat', ['-c', '%i %h %s %b', p('huge')]).trim().split(' ')
    t.equal(ino, String(HUGE.ino), 'st_ino above 2^32 (use_ino)')
    // The FUSE protocol's fuse_attr.nlink is 32 bits, so 2^32-1 is the most the kernel can
    // carry; the binding now passes st_nlink as 64 bits up to libfuse.
    t.equal(nlink, String(HUGE.nlink), 'st_nlink 2^32-1')
    t.equal(size, String(HUGE.size), 'st_size above 2^32')
    t.equal(blocks, String(HUGE.blocks), 'st_blocks above 2^32')
    const ist = fs.statSync(p('huge'), { bigint: true })
    t.equal(ist.ino, BigInt(HUGE.ino), 'fs.stat ino')

    const created = fs.openSync(p('newino'), 'w')
    fs.closeSync(created)
    t.ok(fs.statSync(p('newino'), { bigint: true }).ino > 2n ** 32n, 'fresh inode numbers above 2^32 survive too')

    const f = sh('stat', ['-f', '-c', '%b %f %a %c %d', mnt]).trim()
    t.equal(f, [STATFS.blocks, STATFS.bfree, STATFS.bavail, STATFS.files, STATFS.ffree].join(' '), 'statfs counts above 2^32')
  })

  t.test('create gets the open flags and the caller; mkdir, mknod, symlink get the caller', async t => {
    await srv.clear()
    // as nobody (the mount root is world-writable; allow_other + default_permissions)
    const asNobody = (code: string) => {
      // a clean env: tap's NODE_OPTIONS loaders would try to write its .tap/ as nobody
      const r = spawnSync(process.execPath, ['-e', code], { uid: NOBODY, gid: NOBODY, encoding: 'utf8', timeout: 30000, cwd: '/', env: NOBODY_ENV })
      t.equal(r.status, 0, 'ran as nobody: ' + code + (r.status ? ' ' + r.stderr : ''))
    }
    asNobody(`require('fs').closeSync(require('fs').openSync(${JSON.stringify(p('nobody-file'))}, 'wx', 0o640))`)
    asNobody(`require('fs').mkdirSync(${JSON.stringify(p('nobody-dir'))}, 0o750)`)
    asNobody(`require('fs').symlinkSync('some/target', ${JSON.stringify(p('nobody-link'))})`)
    const fifo = spawnSync('mkfifo', [p('nobody-fifo')], { uid: NOBODY, gid: NOBODY, timeout: 30000, cwd: '/', env: NOBODY_ENV })
    t.equal(fifo.status, 0, 'mkfifo as nobody')

    const log = await srv.log()
    const c = ops(log, 'create')[0]
    t.ok(c, 'create called')
    if (c) {
      const [cpath, mode, flags, ctx] = c.args
      t.equal(cpath, '/nobody-file')
      t.equal(mode & 0o7777, 0o640, 'mode')
      t.equal(typeof flags, 'number', 'flags passed')
      t.equal(flags & 3 /* O_ACCMODE */, fs.constants.O_WRONLY, 'O_WRONLY')
      t.ok(flags & fs.constants.O_EXCL, 'O_EXCL')
      t.ok(flags & fs.constants.O_CREAT, 'O_CREAT')
      t.equal(ctx && ctx.uid, NOBODY, 'ctx.uid')
      t.equal(ctx && ctx.gid, NOBODY, 'ctx.gid')
      t.ok(ctx && ctx.pid > 0, 'ctx.pid')
    }
    const m = ops(log, 'mkdir')[0]
    t.same(m && m.args.slice(0, 1), ['/nobody-dir'], 'mkdir called')
    t.equal(m && m.args[2] && m.args[2].uid, NOBODY, 'mkdir ctx.uid')
    const s = ops(log, 'symlink')[0]
    t.same(s && s.args.slice(0, 2), ['some/target', '/nobody-link'], 'symlink(target, linkPath)')
    t.equal(s && s.args[2] && s.args[2].gid, NOBODY, 'symlink ctx.gid')
    const n = ops(log, 'mknod')[0]
    t.equal(n && n.args[0], '/nobody-fifo', 'mknod called')
    t.equal(n && n.args[3] && n.args[3].uid, NOBODY, 'mknod ctx.uid')

    t.equal(sh('stat', ['-c', '%u:%g', p('nobody-file')]).trim(), `${NOBODY}:${NOBODY}`, 'owner from ctx')
    t.equal(fs.readlinkSync(p('nobody-link')), 'some/target', 'readlink')
  })

  t.test('big_writes / max_write: 128 KiB writes', async t => {
    await srv.clear()
    sh('dd', ['if=/dev/zero', 'of=' + p('big'), 'bs=1M', 'count=1', 'status=none'])
    const writes = ops(await srv.log(), 'write')
    const max = Math.max(0, ...writes.map(w => w.args[2]))
    t.equal(max, 131072, 'largest write is 128 KiB')
    t.equal(fs.statSync(p('big')).size, 1 << 20, 'size 1 MiB')
  })

  t.test('xattrs: exact size queries and ERANGE', async t => {
    const value = 'v'.repeat(100)
    sh('setfattr', ['-n', 'user.a', '-v', value, p('times')])
    sh('setfattr', ['-n', 'user.bb', '-v', 'x', p('times')])
    const r = py(`
import ctypes, ctypes.util, json, os, sys
libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
p = sys.argv[1].encode()
def get(size):
    buf = ctypes.create_string_buffer(max(size, 1))
    n = libc.getxattr(p, b'user.a', buf if size else None, ctypes.c_size_t(size))
    return [n, ctypes.get_errno() if n < 0 else 0, buf.raw[:max(n, 0)].decode() if size else '']
def lst(size):
    buf = ctypes.create_string_buffer(max(size, 1))
    n = libc.listxattr(p, buf if size else None, ctypes.c_size_t(size))
    return [n, ctypes.get_errno() if n < 0 else 0, sorted(x for x in buf.raw[:max(n, 0)].decode().split('\\0') if x) if size else []]
print(json.dumps({ 'q': get(0), 'small': get(10), 'exact': get(100), 'lq': lst(0), 'lsmall': lst(5), 'lexact': lst(15), 'ERANGE': __import__('errno').ERANGE }))
`, p('times'))
    t.same(r.q, [100, 0, ''], 'getxattr size query returns the exact length')
    t.same(r.small, [-1, r.ERANGE, ''], 'getxattr into a too-small buffer: ERANGE')
    t.same(r.exact, [100, 0, value], 'getxattr into an exact buffer')
    t.same(r.lq, [15, 0, []], 'listxattr size query is exact ("user.a\\0user.bb\\0")')
    t.same(r.lsmall, [-1, r.ERANGE, []], 'listxattr into a too-small buffer: ERANGE')
    t.same(r.lexact, [15, 0, ['user.a', 'user.bb']], 'listxattr into an exact buffer')
    t.equal(sh('getfattr', ['--only-values', '-n', 'user.a', p('times')]), value, 'getfattr')
  })

  t.test('an unlinked open file keeps working through its fd (hard_remove, NULL path)', async t => {
    await srv.clear()
    // Note: fstat() itself is sent by the kernel as a getattr *without* the file handle, so
    // libfuse2 needs a path for it; an unlinked file has none and fstat gives ENOENT unless the
    // kernel's attribute cache is fresh (as it is right after ftruncate, whose reply carries
    // the attributes). See native-notes/libfuse.md.
    const r = py(`
import os, json, sys
p = sys.argv[1]
fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
os.write(fd, b'hello world')
os.unlink(p)
out = { 'gone': not os.path.exists(p), 'names': sorted(os.listdir(os.path.dirname(p))) }
out['read'] = os.pread(fd, 100, 0).decode()
out['pwrite'] = os.pwrite(fd, b'XYZ', 20)
out['read1'] = os.pread(fd, 100, 0).decode()
os.ftruncate(fd, 5)
out['fstat'] = os.fstat(fd).st_size
out['read2'] = os.pread(fd, 100, 0).decode()
os.close(fd)
print(json.dumps(out))
`, p('doomed'))
    t.equal(r.gone, true, 'unlinked')
    t.notOk(r.names.some((n: string) => n.startsWith('.fuse_hidden')), 'no .fuse_hidden file (hard_remove)')
    t.equal(r.read, 'hello world', 'read through the fd')
    t.equal(r.pwrite, 3, 'write through the fd')
    t.equal(r.read1, 'hello world\0\0\0\0\0\0\0\0\0XYZ', 'read back the write')
    t.equal(r.fstat, 5, 'fstat size after ftruncate')
    t.equal(r.read2, 'hello', 'read after ftruncate')

    const log = await srv.log()
    const unlinkAt = log.findIndex(e => e.op === 'unlink')
    t.ok(unlinkAt >= 0, 'unlink reached the filesystem')
    const after = log.slice(unlinkAt + 1)
    for (const op of ['read', 'write', 'ftruncate', 'fgetattr', 'flush', 'release']) {
      const calls = ops(after, op)
      t.ok(calls.length > 0, `${op} called after unlink`)
      t.ok(calls.length > 0 && calls.every(e => e.args[0] === null), `${op} got a null path`)
    }
  })

  t.test('timeout: 0 and false disable the per-operation timeout', async t => {
    t.equal(new Fuse('/nonexistent-a', {}, { timeout: false }).timeout, 0, 'timeout: false')
    t.equal(new Fuse('/nonexistent-b', {}, { timeout: 0 }).timeout, 0, 'timeout: 0')
  })

  t.test('mount refuses what it cannot honour, and leaves no mount behind', async t => {
    const dir = fs.mkdtempSync(path.join(srv.dir, 'opt-'))
    const mount = (opts: any) => new Promise<any>(resolve => {
      const f = new Fuse(dir, {}, opts)
      f.mount((err: any) => {
        if (!err) return f.unmount(() => resolve(null)) // should not happen: clean up anyway
        resolve(err)
      })
    })
    try {
      const long = await mount({ extraOptions: ['fsname=' + 'x'.repeat(1100)] })
      t.match(long && long.message, /longer than 1023 bytes/, 'an option string over 1023 bytes is an error, not truncated')
      t.notOk(isMounted(dir), 'not mounted')
      const wb = await mount({ extraOptions: ['writeback_cache'] })
      t.ok(wb, 'libfuse2 rejects writeback_cache')
      t.notOk(isMounted(dir), 'the half-made mount was undone')
    } finally {
      forceUnmount(dir)
    }
  })

  t.test('strict unmount reports EBUSY instead of detaching a busy mount', async t => {
    t.equal(typeof Fuse.unmountStrict, 'function', 'Fuse.unmountStrict exists')
    if (typeof Fuse.unmountStrict !== 'function') return
    const busy = spawn('sleep', ['60'], { cwd: mnt, stdio: 'ignore' })
    try {
      await new Promise(resolve => setTimeout(resolve, 200))
      const err: any = await new Promise(resolve => Fuse.unmountStrict(mnt, resolve))
      t.ok(err, 'fusermount -u fails while busy')
      t.equal(err && err.code, 'EBUSY', 'err.code EBUSY')
      t.equal(err && err.errno, Fuse.EBUSY, 'err.errno Fuse.EBUSY')
      t.ok(isMounted(mnt), 'still mounted (not lazily hidden)')
    } finally {
      if (busy.pid) process.kill(busy.pid, 'SIGKILL')
      await new Promise(resolve => busy.once('exit', resolve))
    }
  })
})
