// The FUSE session and channel (src/fs/fuse/), checked through the kernel with a small
// in-memory filesystem (test/helpers/memory-fs.ts) mounted in this process. Everything that
// touches the mount runs asynchronously (child processes, fs.promises): this process's event
// loop answers the kernel. Needs root, /dev/fuse, fusermount, python3, coreutils, util-linux.
import t from 'tap'
import { execFile, spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import * as fsp from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { DEFAULT_SESSION, FuseSession } from '../src/fs/fuse/session'
import { HUGE, MemoryFs, STATFS } from './helpers/memory-fs'
import { INTERRUPTED_IO_PY, InterruptedIo } from './helpers/interrupt'

const exec = promisify(execFile)
const PY = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3'
const NOBODY = 65534
const canRun = process.getuid?.() === 0 && existsSync('/dev/fuse')

async function sh (cmd: string, args: string[], opts: { uid?: number, gid?: number } = {}): Promise<string> {
  const env = opts.uid !== undefined ? { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: '/', LANG: 'C', TZ: 'UTC' } : { ...process.env, TZ: 'UTC' }
  return (await exec(cmd, args, { encoding: 'utf8', timeout: 30_000, env, cwd: '/', ...opts })).stdout
}

async function py (code: string, ...args: string[]): Promise<any> {
  return JSON.parse((await sh(PY, ['-c', code, ...args])).trim())
}

function mounted (mnt: string): string | undefined {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find(l => l.split(' ')[4] === mnt)
}

t.test('FUSE session through the kernel', { skip: canRun ? false : 'needs root and /dev/fuse' }, async t => {
  const base = await fsp.mkdtemp('/tmp/bslfs-session-')
  await fsp.chmod(base, 0o755) // other users reach the mount
  const mnt = join(base, 'mnt')
  await fsp.mkdir(mnt)
  const mem = new MemoryFs()
  const session = await FuseSession.mount(mnt, mem, ['default_permissions', 'allow_other', 'fsname=memfs', 'subtype=memfs'], DEFAULT_SESSION)
  t.teardown(async () => {
    if (mounted(mnt)) await exec('fusermount', ['-uz', mnt]).catch(() => undefined)
    await fsp.rm(base, { recursive: true, force: true })
  })
  const p = (name: string): string => join(mnt, name)
  await fsp.stat(mnt) // the first request: INIT is answered by now

  t.test('the mount and what INIT agreed on', async t => {
    const line = mounted(mnt) ?? ''
    t.match(line, / - fuse\.memfs memfs /, 'type fuse.memfs, source memfs')
    t.match(line, /default_permissions/, 'default_permissions')
    t.match(line, /allow_other/, 'allow_other')
    t.ok(session.negotiated && session.negotiated.minor >= 28, `protocol 7.${session.negotiated?.minor}`)
    t.equal(session.negotiated?.maxWrite, 1 << 20, 'max_write 1 MiB')
  })

  t.test('times: nanoseconds both ways, before 1970, touch -a / -m, now', async t => {
    await fsp.writeFile(p('times'), 'x')
    await sh('touch', ['-d', '2001-02-03 04:05:06.123456789', p('times')])
    t.equal((await sh('stat', ['-c', '%x|%y', p('times')])).trim(),
      '2001-02-03 04:05:06.123456789 +0000|2001-02-03 04:05:06.123456789 +0000', 'nanoseconds in stat')
    t.equal((await fsp.stat(p('times'), { bigint: true })).mtimeNs, 981173106123456789n, 'mtimeNs exact')
    mem.clear()
    await sh('touch', ['-a', '-d', '2005-06-07 08:09:10.5', p('times')])
    await sh('touch', ['-m', '-d', '1960-07-08 09:10:11.25', p('times')])
    t.equal((await sh('stat', ['-c', '%x|%y', p('times')])).trim(),
      '2005-06-07 08:09:10.500000000 +0000|1960-07-08 09:10:11.250000000 +0000', 'touch -a and touch -m change one time each; 1960 survives')
    const sets = mem.of('setattr').map(c => c.args[1] as Record<string, unknown>)
    t.same(sets.map(s => Object.keys(s).sort()), [['atime'], ['mtime']], 'one time per setattr')
    t.same(sets[1].mtime, { sec: -299256589, nsec: 250000000 }, 'a negative second count')
    mem.clear()
    const before = Date.now()
    await sh('touch', [p('times')])
    const now = mem.of('setattr').map(c => c.args[1] as Record<string, unknown>)
    t.same(now, [{ atime: 'now', mtime: 'now' }], 'touch without a time asks for now')
    t.ok((await fsp.stat(p('times'))).mtimeMs >= before - 2000, 'the filesystem applied now')
  })

  t.test('numbers past 32 bits: inode, size, blocks, link count, statfs', async t => {
    const [ino, nlink, size, blocks] = (await sh('stat', ['-c', '%i %h %s %b', p('huge')])).trim().split(' ')
    t.equal(ino, String(HUGE.ino), 'st_ino')
    t.equal(nlink, String(HUGE.nlink), 'st_nlink (the protocol carries 32 bits)')
    t.equal(size, String(HUGE.size), 'st_size')
    t.equal(blocks, String(HUGE.blocks), 'st_blocks')
    t.ok((await fsp.stat(p('times'), { bigint: true })).ino > 2n ** 32n, 'new inode numbers above 2^32')
    const f = (await sh('stat', ['-f', '-c', '%b %f %a %c %d', mnt])).trim()
    t.equal(f, [STATFS.blocks, STATFS.bfree, STATFS.bavail, STATFS.files, STATFS.ffree].join(' '), 'statfs counts')
  })

  t.test('create gets the open flags and the caller; mkdir, mknod, symlink get the caller', async t => {
    mem.clear()
    const node = (code: string): Promise<string> => sh(process.execPath, ['-e', code], { uid: NOBODY, gid: NOBODY })
    await node(`require('fs').closeSync(require('fs').openSync(${JSON.stringify(p('nobody-file'))}, 'wx', 0o640))`)
    await node(`require('fs').mkdirSync(${JSON.stringify(p('nobody-dir'))}, 0o750)`)
    await node(`require('fs').symlinkSync('some/target', ${JSON.stringify(p('nobody-link'))})`)
    await sh('mkfifo', [p('nobody-fifo')], { uid: NOBODY, gid: NOBODY })
    const [c] = mem.of('create')
    t.ok(c, 'create called')
    const [, name, mode, flags, caller] = c.args as [number, string, number, number, { uid: number, gid: number, pid: number }]
    t.equal(name, 'nobody-file')
    t.equal(mode & 0o7777, 0o640, 'mode')
    t.equal(flags & 3, 1, 'O_WRONLY')
    t.ok(flags & 0o200, 'O_EXCL')
    t.same([caller.uid, caller.gid], [NOBODY, NOBODY], 'caller')
    t.ok(caller.pid > 0, 'caller pid')
    t.equal((mem.of('mkdir')[0].args[3] as { uid: number }).uid, NOBODY, 'mkdir caller')
    t.same(mem.of('symlink')[0].args.slice(1, 3), ['nobody-link', 'some/target'], 'symlink(name, target)')
    t.equal((mem.of('mknod')[0].args[4] as { gid: number }).gid, NOBODY, 'mknod caller')
    t.equal((await sh('stat', ['-c', '%u:%g', p('nobody-file')])).trim(), `${NOBODY}:${NOBODY}`, 'owner')
    t.equal(await fsp.readlink(p('nobody-link')), 'some/target', 'readlink')
  })

  t.test('writes of 1 MiB arrive whole', async t => {
    mem.clear()
    await sh('dd', ['if=/dev/zero', 'of=' + p('big'), 'bs=1M', 'count=4', 'status=none'])
    const sizes = mem.of('write').map(c => c.args[3] as number)
    t.same(sizes, [1 << 20, 1 << 20, 1 << 20, 1 << 20], 'four writes of 1 MiB')
    t.equal((await fsp.stat(p('big'))).size, 4 << 20, 'size')
    t.equal((await fsp.readFile(p('big'))).length, 4 << 20, 'read back')
  })

  t.test('the kernel caches attributes, names and absences', async t => {
    await fsp.writeFile(p('cached'), 'abc')
    await fsp.stat(p('cached'))
    mem.clear()
    for (let i = 0; i < 5; i++) await fsp.stat(p('cached'))
    for (let i = 0; i < 5; i++) await fsp.stat(p('missing')).catch(() => undefined)
    await fsp.stat(p('missing')).catch(() => undefined)
    t.equal(mem.of('getattr').length + mem.of('lookup').filter(c => c.args[1] === 'cached').length, 0, 'repeated stat: no request')
    t.ok(mem.of('lookup').filter(c => c.args[1] === 'missing').length <= 1, 'a missing name is looked up once')
  })

  t.test('ls -l after the caches are dropped: READDIRPLUS, no lookup per name', async t => {
    await fsp.mkdir(p('many'))
    for (let i = 0; i < 200; i++) await fsp.writeFile(p(`many/f${i}`), '')
    await fsp.writeFile('/proc/sys/vm/drop_caches', '2')
    mem.clear()
    const out = await sh('ls', ['-l', p('many')])
    t.equal(out.trim().split('\n').length, 201, 'ls -l lists 200 files')
    t.ok(mem.of('readdir').some(c => c.args[4] === true), 'readdir with attributes')
    t.equal(mem.of('lookup').filter(c => String(c.args[1]).startsWith('f')).length, 0, 'no lookups of the names')
  })

  t.test('xattrs: size queries are exact, a small buffer gets ERANGE', async t => {
    const value = 'v'.repeat(100)
    await sh('setfattr', ['-n', 'user.a', '-v', value, p('times')])
    await sh('setfattr', ['-n', 'user.bb', '-v', 'x', p('times')])
    const r = await py(`
import ctypes, ctypes.util, json, errno, sys
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
print(json.dumps({'q': get(0), 'small': get(10), 'exact': get(100), 'lq': lst(0), 'lsmall': lst(5), 'lexact': lst(15), 'ERANGE': errno.ERANGE}))
`, p('times'))
    t.same(r.q, [100, 0, ''], 'getxattr size query')
    t.same(r.small, [-1, r.ERANGE, ''], 'getxattr: ERANGE')
    t.same(r.exact, [100, 0, value], 'getxattr into an exact buffer')
    t.same(r.lq, [15, 0, []], 'listxattr size query')
    t.same(r.lsmall, [-1, r.ERANGE, []], 'listxattr: ERANGE')
    t.same(r.lexact, [15, 0, ['user.a', 'user.bb']], 'listxattr into an exact buffer')
  })

  t.test('an unlinked open file keeps working through its descriptor', async t => {
    const r = await py(`
import os, json, sys
p = sys.argv[1]
fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
os.write(fd, b'hello world')
os.unlink(p)
out = {'gone': not os.path.exists(p), 'names': sorted(os.listdir(os.path.dirname(p)))}
out['read'] = os.pread(fd, 100, 0).decode()
os.ftruncate(fd, 5)
out['fstat'] = os.fstat(fd).st_size
out['read2'] = os.pread(fd, 100, 0).decode()
os.close(fd)
print(json.dumps(out))
`, p('doomed'))
    t.equal(r.gone, true, 'unlinked')
    t.notOk(r.names.some((n: string) => n.startsWith('.fuse_hidden')), 'no hidden name')
    t.equal(r.read, 'hello world', 'read through the fd')
    t.equal(r.fstat, 5, 'fstat after ftruncate')
    t.equal(r.read2, 'hello', 'read after ftruncate')
  })

  t.test('errors pass through; what the session does not do, the kernel falls back on', async t => {
    await fsp.mkdir(p('d'))
    await t.rejects(fsp.mkdir(p('d')), { code: 'EEXIST' }, 'EEXIST from the filesystem')
    await t.rejects(fsp.rmdir(mnt + '/nonexistent'), { code: 'ENOENT' }, 'ENOENT')
    const fa = await exec('fallocate', ['-l', '1M', p('times')]).then(() => 'ok', (e: { stderr: string }) => e.stderr)
    t.match(fa, /not supported/i, 'fallocate: EOPNOTSUPP')
    await fsp.writeFile(p('mv-a'), 'a')
    await fsp.writeFile(p('mv-b'), 'b')
    mem.clear()
    await exec('mv', ['-n', p('mv-a'), p('mv-b')]).catch(() => undefined)
    t.equal(await fsp.readFile(p('mv-b'), 'utf8'), 'b', 'mv -n kept the target')
    const renames = mem.of('rename')
    t.ok(renames.length === 0 || renames.every(c => c.args[4] === 1), 'mv -n renames with RENAME_NOREPLACE, if at all')
  })

  t.test('a strict unmount of a busy mount fails and leaves it mounted; then it unmounts', async t => {
    const busy = spawn('sleep', ['60'], { cwd: mnt, stdio: 'ignore' })
    try {
      await new Promise(resolve => setTimeout(resolve, 200))
      await t.rejects(session.unmount(false), /busy/i, 'EBUSY')
      t.ok(mounted(mnt), 'still mounted')
      t.notOk(session.isEnded(), 'still serving')
    } finally {
      busy.kill('SIGKILL')
      await new Promise(resolve => busy.once('exit', resolve))
    }
    await session.unmount(false)
    await session.ended
    t.notOk(mounted(mnt), 'unmounted')
    t.ok(session.isEnded(), 'the connection ended')
  })
})

t.test('INTERRUPT through the kernel: a read or write of a hung filesystem returns EINTR at once', { skip: canRun ? false : 'needs root and /dev/fuse' }, async t => {
  const base = await fsp.mkdtemp('/tmp/bslfs-interrupt-')
  const mnt = join(base, 'mnt')
  await fsp.mkdir(mnt)
  const mem = new MemoryFs()
  // direct_io: a read is one request the reader waits on (a page-cache read waits on readahead,
  // which only a fatal signal interrupts); a write is one either way.
  await FuseSession.mount(mnt, mem, ['fsname=memfs', 'subtype=memfs'], { ...DEFAULT_SESSION, directIo: true })
  t.teardown(async () => {
    mem.resume()
    if (mounted(mnt)) await exec('fusermount', ['-uz', mnt]).catch(() => undefined)
    await fsp.rm(base, { recursive: true, force: true })
  })
  const file = join(mnt, 'slow')
  await fsp.writeFile(file, 'before')
  const interrupted = (op: 'read' | 'write'): Promise<InterruptedIo> => py(INTERRUPTED_IO_PY, file, op, '0')

  for (const op of ['read', 'write'] as const) {
    mem.hang(op)
    const r = await interrupted(op)
    t.same([r.n, r.errno], [-1, r.EINTR], `${op}: EINTR`)
    t.ok(r.seconds < 3, `${op}: at once (${r.seconds.toFixed(2)} s after the call, the signal at 0.3 s)`)
    t.equal(mem.signals.at(-1)?.aborted, true, `${op}: the filesystem's signal aborted`)
    t.equal(mem.waiting(), 1, `${op}: the filesystem's call still waits`)
    mem.resume() // its late answer is dropped
  }
  t.equal(await fsp.readFile(file, 'utf8'), 'after!', 'the mount keeps working (the interrupted write went on)')
  await fsp.writeFile(file, 'again')
  t.equal(await fsp.readFile(file, 'utf8'), 'again', 'writes and reads after it')
})

t.test('notifications: the kernel drops a cached inode or entry when told, despite long timeouts', { skip: canRun ? false : 'needs root and /dev/fuse' }, async t => {
  const base = await fsp.mkdtemp('/tmp/bslfs-notify-')
  const mnt = join(base, 'mnt')
  await fsp.mkdir(mnt)
  const mem = new MemoryFs()
  const session = await FuseSession.mount(mnt, mem, ['fsname=memfs', 'subtype=memfs'],
    { ...DEFAULT_SESSION, entryTimeout: 600, attrTimeout: 600, negativeTimeout: 600 })
  t.teardown(async () => {
    if (mounted(mnt)) await exec('fusermount', ['-uz', mnt]).catch(() => undefined)
    await fsp.rm(base, { recursive: true, force: true })
  })
  const statOf = async (name: string): Promise<string> => (await sh('stat', ['-c', '%s %a', join(mnt, name)]).catch(e => String(e.stderr))).trim()
  const written = async (): Promise<void> => {
    for (let i = 0; i < 200 && session.notificationsQueued > 0; i++) await new Promise(resolve => setTimeout(resolve, 5))
    t.equal(session.notificationsQueued, 0, 'the notification was written')
  }

  await fsp.writeFile(join(mnt, 'f'), 'hello')
  const ino = (await fsp.stat(join(mnt, 'f'))).ino
  t.equal(await statOf('f'), '5 644')
  // Changed behind the kernel's back (as another host would): the kernel still trusts its copy.
  await mem.setattr(ino, { size: 5000, mode: 0o600 }, { uid: 0, gid: 0, pid: 0 })
  await mem.write(ino, 0, 0, Buffer.from('HELLO'))
  t.equal(await statOf('f'), '5 644', 'without a notification the kernel serves its cached attributes')
  session.notifyInvalInode(ino)
  await written()
  t.equal(await statOf('f'), '5000 600', 'after INVAL_INODE stat sees the new size and mode at once')
  t.equal((await fsp.readFile(join(mnt, 'f'))).subarray(0, 5).toString(), 'HELLO', 'and a read the new bytes')

  await fsp.writeFile(join(mnt, 'g'), 'x')
  t.equal(await statOf('g'), '1 644')
  await mem.unlink(1, 'g')
  mem.clear()
  t.equal(await statOf('g'), '1 644', 'without a notification the kernel serves its cached entry')
  t.same(mem.of('lookup'), [], 'and asks nothing')
  session.notifyInvalEntry(1, 'g')
  await written()
  t.match(await statOf('g'), /No such file/, 'after INVAL_ENTRY the removed name is gone')
  t.same(mem.of('lookup').map(c => c.args[1]), ['g'], 'the lookup went to the filesystem again')

  // Changes missed (the feed's connection dropped): every inode the kernel holds is dropped.
  await fsp.writeFile(join(mnt, 'h'), 'y')
  const h = (await fsp.stat(join(mnt, 'h'))).ino
  t.equal(await statOf('h'), '1 644')
  await mem.setattr(ino, { mode: 0o640 }, { uid: 0, gid: 0, pid: 0 })
  await mem.setattr(h, { size: 7, mode: 0o604 }, { uid: 0, gid: 0, pid: 0 })
  t.same([await statOf('f'), await statOf('h')], ['5000 600', '1 644'], 'cached before')
  session.notifyInvalAll()
  await written()
  t.same([await statOf('f'), await statOf('h')], ['5000 640', '7 604'], 'after notifyInvalAll both show what changed')

  // A notification of something the kernel never cached is harmless (ENOENT from the kernel, ignored).
  session.notifyInvalEntry(1, 'never-seen')
  session.notifyInvalInode(123456789)
  await written()
  t.equal(await statOf('f'), '5000 640', 'the session goes on')
})
