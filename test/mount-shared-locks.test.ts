// Locks across two mounts of one filesystem on PostgreSQL ("hosts" A and B, each its own daemon):
// flock and fcntl counters from both, F_GETLK across hosts, a blocked SETLKW woken by the unlock
// (and by SIGALRM), the same lock semantics as a native filesystem within one host, and sqlite3 on
// both mounts writing one database. Runs once, in the mount suite's first pass.
import t from 'tap'
import * as fs from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describeRun, py, run, type RunResult } from './helpers/mount'
import { sharedSkip as skip, twoMounts } from './helpers/shared-mounts'

/**
 * Increments per process, 4 processes (2 per mount); each increment is a lock, a read, a write
 * and an unlock, serialized across the four: about 5 directory transactions and a block written
 * (30-40 ms on a loaded 2-core test machine), so the 2,000 each would take minutes; set
 * BSLFS_LOCK_INCREMENTS=2000 to run them.
 */
const INCREMENTS = Number(process.env.BSLFS_LOCK_INCREMENTS ?? 50)
/** Rows each mount's sqlite3 inserts (each its own transaction). */
const ROWS = Number(process.env.BSLFS_LOCK_ROWS ?? 20)

const COUNTER = `
import fcntl, os, sys
path, n, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fd = os.open(path, os.O_RDWR)
for _ in range(n):
    if how == 'flock': fcntl.flock(fd, fcntl.LOCK_EX)
    else: fcntl.lockf(fd, fcntl.LOCK_EX, 64, 4096)
    v = int(os.pread(fd, 20, 0).decode().strip() or '0')
    os.pwrite(fd, str(v + 1).ljust(20).encode(), 0)
    if how == 'flock': fcntl.flock(fd, fcntl.LOCK_UN)
    else: fcntl.lockf(fd, fcntl.LOCK_UN, 64, 4096)
os.close(fd)
print('done OK')
`

/** Hold a lock on `path` until `stop` exists; `ready` once held. */
const HOLDER = `
import fcntl, os, sys, time, struct
path, kind, ready, stop = sys.argv[1:5]
fd = os.open(path, os.O_RDWR)
if kind == 'flock': fcntl.flock(fd, fcntl.LOCK_EX)
else: fcntl.fcntl(fd, fcntl.F_SETLKW, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 100, 50, 0))
open(ready, 'w').close()
while not os.path.exists(stop): time.sleep(0.005)
t = time.time()
if kind == 'flock': fcntl.flock(fd, fcntl.LOCK_UN)
else: fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack('hhqqi', fcntl.F_UNLCK, 0, 100, 50, 0))
print('unlocked %.6f' % t)
os.close(fd)
`

const wait = (path: string): string => `
import os, time
deadline = time.time() + 20
while not os.path.exists(${JSON.stringify(path)}) and time.time() < deadline: time.sleep(0.005)
`

async function must (r: Promise<{ results: Record<string, string>, run: RunResult }>): Promise<{ results: Record<string, string>, run: RunResult }> {
  const got = await r
  if (got.run.code !== 0) throw new Error(describeRun(got.run))
  return got
}

/**
 * Lock semantics within one host, run on a native directory and on a mount: the output must be
 * the same. A parent sets, splits and merges fcntl locks and takes a flock; a child probes them
 * with F_GETLK, F_SETLK, flock LOCK_NB and OFD locks; then a close of another descriptor drops
 * the parent's POSIX locks but neither its flock nor its OFD lock.
 */
const SEMANTICS = `
import fcntl, os, sys, struct, errno
path = sys.argv[1]
F_OFD_GETLK, F_OFD_SETLK = 36, 37
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
def lk(fd, cmd, typ, start, ln):
    return fcntl.fcntl(fd, cmd, struct.pack('hhqqi', typ, 0, start, ln, 0))
def probe(fd, cmd, typ, start, ln):
    t, w, s, l, p = struct.unpack('hhqqi', lk(fd, cmd, typ, start, ln))
    return '%s:%d+%d:%s' % ({0: 'R', 1: 'W', 2: 'U'}[t], s, l, 'parent' if p in (os.getppid(), -1) else p) if t != 2 else 'U'
def tryset(fd, cmd, typ, start, ln):
    try:
        lk(fd, cmd, typ, start, ln); return 'ok'
    except OSError as e: return errno.errorcode[e.errno]
lk(fd, fcntl.F_SETLK, fcntl.F_WRLCK, 0, 100)
lk(fd, fcntl.F_SETLK, fcntl.F_RDLCK, 50, 10)
lk(fd, fcntl.F_SETLK, fcntl.F_UNLCK, 70, 10)
lk(fd, fcntl.F_SETLK, fcntl.F_WRLCK, 100, 20)
fcntl.flock(fd, fcntl.LOCK_SH)
ofd = os.open(path, os.O_RDWR)
lk(ofd, F_OFD_SETLK, fcntl.F_WRLCK, 500, 10)
def child(tag):
    pid = os.fork()
    if pid == 0:
        c = os.open(path, os.O_RDWR)
        out = []
        for off in (0, 49, 55, 65, 75, 85, 119, 120, 505):
            out.append('%d:W=%s,R=%s' % (off, probe(c, fcntl.F_GETLK, fcntl.F_WRLCK, off, 1), probe(c, fcntl.F_GETLK, fcntl.F_RDLCK, off, 1)))
        out.append('whole=' + probe(c, fcntl.F_GETLK, fcntl.F_WRLCK, 0, 0))
        out.append('ofd55=' + probe(c, F_OFD_GETLK, fcntl.F_WRLCK, 55, 1))
        out.append('setlk75=' + tryset(c, fcntl.F_SETLK, fcntl.F_WRLCK, 75, 1))
        out.append('setlk85=' + tryset(c, fcntl.F_SETLK, fcntl.F_WRLCK, 85, 1))
        out.append('setlkR55=' + tryset(c, fcntl.F_SETLK, fcntl.F_RDLCK, 55, 1))
        try: fcntl.flock(c, fcntl.LOCK_EX | fcntl.LOCK_NB); out.append('flockEX=ok')
        except OSError as e: out.append('flockEX=' + errno.errorcode[e.errno])
        try: fcntl.flock(c, fcntl.LOCK_SH | fcntl.LOCK_NB); out.append('flockSH=ok')
        except OSError as e: out.append('flockSH=' + errno.errorcode[e.errno])
        print(tag, ' '.join(out))
        sys.stdout.flush()
        os._exit(0)
    os.waitpid(pid, 0)
child('held')
other = os.open(path, os.O_RDONLY)
os.close(other)
child('closed')
os.close(ofd)
fcntl.flock(fd, fcntl.LOCK_UN)
child('all-gone')
# A flock conversion lets go first: a failed upgrade leaves no shared lock behind.
a, b = os.open(path, os.O_RDWR), os.open(path, os.O_RDWR)
fcntl.flock(a, fcntl.LOCK_SH); fcntl.flock(b, fcntl.LOCK_SH)
up = []
for f in (b, a):
    try: fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); up.append('ok')
    except OSError as e: up.append(errno.errorcode[e.errno])
print('upgrade', ' '.join(up))
`

t.test('locks on two mounts of one URL', { skip }, async t => {
  const s = await twoMounts(t)

  t.test('within one host, locks behave as on a native filesystem', async t => {
    const native = fs.mkdtempSync(join(tmpdir(), 'bslfs-locks-'))
    t.teardown(() => fs.rmSync(native, { recursive: true, force: true }))
    const want = await run('python3', ['-c', SEMANTICS, join(native, 'f')])
    t.equal(want.code, 0, describeRun(want))
    const got = await run('python3', ['-c', SEMANTICS, join(s.a, 'semantics')])
    t.equal(got.code, 0, describeRun(got))
    t.equal(got.stdout, want.stdout, 'the same answers as the native filesystem')
    t.match(want.stdout, /held 0:W=W:0\+50:parent/, 'the script probes what it set')
  })

  for (const how of ['flock', 'fcntl']) {
    t.test(`two processes on each mount count to ${4 * INCREMENTS} under ${how}`, async t => {
      const file = `counter-${how}`
      fs.writeFileSync(join(s.a, file), '0'.padEnd(20))
      const started = Date.now()
      const runs = await Promise.all([s.a, s.a, s.b, s.b].map(async m => await py(COUNTER, [join(m, file), String(INCREMENTS), how])))
      for (const r of runs) t.equal(r.results.done, 'OK', describeRun(r.run))
      t.comment(`${4 * INCREMENTS} increments under ${how}: ${Date.now() - started} ms`)
      // Read on B after every writer closed: close-to-open.
      t.equal(Number(fs.readFileSync(join(s.b, file), 'utf8').trim()), 4 * INCREMENTS, 'no increment lost')
    })
  }

  t.test('F_GETLK on B reports the lock A holds', async t => {
    fs.writeFileSync(join(s.a, 'getlk'), Buffer.alloc(4096))
    const dir = fs.mkdtempSync(join(tmpdir(), 'bslfs-getlk-'))
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
    const holder = must(py(HOLDER, [join(s.a, 'getlk'), 'fcntl', join(dir, 'ready'), join(dir, 'stop')]))
    const probe = await py(wait(join(dir, 'ready')) + `
import fcntl, os, struct, sys, errno
fd = os.open(sys.argv[1], os.O_RDWR)
t, w, s, l, p = struct.unpack('hhqqi', fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack('hhqqi', fcntl.F_RDLCK, 0, 0, 0, 0)))
print('type', {0: 'R', 1: 'W', 2: 'U'}[t]); print('range %d+%d' % (s, l)); print('pid', p)
t, w, s, l, p = struct.unpack('hhqqi', fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 150, 10, 0)))
print('beyond', {0: 'R', 1: 'W', 2: 'U'}[t])
try:
    fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack('hhqqi', fcntl.F_RDLCK, 0, 120, 1, 0)); print('setlk OK')
except OSError as e: print('setlk', errno.errorcode[e.errno])
`, [join(s.b, 'getlk')])
    fs.writeFileSync(join(dir, 'stop'), '')
    await holder
    t.same(probe.results, { type: 'W', range: '100+50', pid: '0', beyond: 'U', setlk: 'EAGAIN' }, describeRun(probe.run))
    // What an uncontended flock lock+unlock pair costs (two directory transactions).
    const pairs = await py(`
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
t0 = time.perf_counter()
for _ in range(100):
    fcntl.flock(fd, fcntl.LOCK_EX); fcntl.flock(fd, fcntl.LOCK_UN)
print('pair %.3f' % ((time.perf_counter() - t0) * 10))
`, [join(s.a, 'getlk')])
    t.ok(Number(pairs.results.pair) > 0, describeRun(pairs.run))
    t.comment(`uncontended flock lock+unlock pair: ${pairs.results.pair} ms`)
  })

  t.test('SETLKW and flock on B wait while A holds and go on promptly after A unlocks', async t => {
    fs.writeFileSync(join(s.a, 'handoff'), Buffer.alloc(4096))
    const delays: number[] = []
    for (let i = 0; i < 8; i++) {
      const kind = i % 2 === 0 ? 'fcntl' : 'flock'
      const dir = fs.mkdtempSync(join(tmpdir(), 'bslfs-handoff-'))
      const holder = must(py(HOLDER, [join(s.a, 'handoff'), kind, join(dir, 'ready'), join(dir, 'stop')]))
      const waiter = must(py(wait(join(dir, 'ready')) + `
import fcntl, os, struct, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
t0 = time.time()
open(sys.argv[3], 'w').close()
if sys.argv[2] == 'flock': fcntl.flock(fd, fcntl.LOCK_EX)
else: fcntl.fcntl(fd, fcntl.F_SETLKW, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 120, 100, 0))
print('locked %.6f' % time.time())
print('waited %.6f' % (time.time() - t0))
`, [join(s.b, 'handoff'), kind, join(dir, 'stop.soon')]))
      // A lets go 300 ms after B started waiting.
      await run('python3', ['-c', wait(join(dir, 'stop.soon')) + `\ntime.sleep(0.3)\nopen(${JSON.stringify(join(dir, 'stop'))}, 'w').close()`])
      const [h, w] = await Promise.all([holder, waiter])
      fs.rmSync(dir, { recursive: true, force: true })
      const unlocked = Number(h.results.unlocked)
      const locked = Number(w.results.locked)
      t.ok(Number(w.results.waited) >= 0.25, `${kind}: B waited while A held (${w.results.waited} s)`)
      delays.push((locked - unlocked) * 1000)
    }
    delays.sort((a, b) => a - b)
    const median = (delays[3]! + delays[4]!) / 2
    t.comment(`B's lock after A's unlock: median ${median.toFixed(1)} ms, all ${delays.map(d => d.toFixed(1)).join(' ')}`)
    t.ok(delays.every(d => d >= 0), 'B never had the lock before A let go')
    // Woken by the change feed, not by the 1 s safety poll.
    t.ok(median < 500, `woken by A's release (median ${median.toFixed(1)} ms)`)
  })

  t.test('a SIGALRM interrupts a blocked SETLKW on B (EINTR), which then holds nothing', async t => {
    fs.writeFileSync(join(s.a, 'alarm'), Buffer.alloc(4096))
    const dir = fs.mkdtempSync(join(tmpdir(), 'bslfs-alarm-'))
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
    const holder = must(py(HOLDER, [join(s.a, 'alarm'), 'fcntl', join(dir, 'ready'), join(dir, 'stop')]))
    const waiter = await py(wait(join(dir, 'ready')) + `
import fcntl, os, signal, struct, sys, time, errno
class Alarm(Exception): pass
def ring(*_): raise Alarm()
signal.signal(signal.SIGALRM, ring)
signal.siginterrupt(signal.SIGALRM, True)
fd = os.open(sys.argv[1], os.O_RDWR)
t0 = time.time()
signal.alarm(1)
try:
    fcntl.fcntl(fd, fcntl.F_SETLKW, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0, 0, 0)); print('setlkw locked')
except Alarm: print('setlkw interrupted')
except OSError as e: print('setlkw', errno.errorcode[e.errno])
print('after %.1f' % (time.time() - t0))
fcntl.flock(fd, fcntl.LOCK_EX)
signal.alarm(1)
try:
    fcntl.flock(os.open(sys.argv[1], os.O_RDWR), fcntl.LOCK_EX); print('flock locked')
except Alarm: print('flock interrupted')
`, [join(s.b, 'alarm')])
    fs.writeFileSync(join(dir, 'stop'), '')
    await holder
    t.equal(waiter.results.setlkw, 'interrupted', describeRun(waiter.run))
    t.equal(waiter.results.flock, 'interrupted', 'a blocked flock too')
    t.ok(Number(waiter.results.after) >= 0.9 && Number(waiter.results.after) < 5, `interrupted by the alarm (${waiter.results.after} s)`)
    // The interrupted SETLKW left no lock behind: A's whole-file write lock is free.
    const free = await py(`
import fcntl, os, struct, sys, errno
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0, 0, 0)); print('setlk OK')
except OSError as e: print('setlk', errno.errorcode[e.errno])
`, [join(s.a, 'alarm')])
    t.equal(free.results.setlk, 'OK', describeRun(free.run))
  })

  t.test(`sqlite3 on both mounts inserts ${ROWS} rows each into one database (rollback journal)`, async t => {
    const SQL = `
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
db.execute('pragma journal_mode=delete')
if sys.argv[3] == 'create': db.execute('create table if not exists t (host text, i integer)')
for i in range(int(sys.argv[2])):
    db.execute('insert into t values (?, ?)', (sys.argv[3], i))
db.close()
print('done OK')
`
    const create = await py(SQL, [join(s.a, 'db.sqlite'), '0', 'create'])
    t.equal(create.results.done, 'OK', describeRun(create.run))
    const started = Date.now()
    const [a, b] = await Promise.all([py(SQL, [join(s.a, 'db.sqlite'), String(ROWS), 'a']), py(SQL, [join(s.b, 'db.sqlite'), String(ROWS), 'b'])])
    t.comment(`2 × ${ROWS} inserts: ${Date.now() - started} ms`)
    t.equal(a.results.done, 'OK', describeRun(a.run))
    t.equal(b.results.done, 'OK', describeRun(b.run))
    const check = await run('sqlite3', [join(s.b, 'db.sqlite'), 'pragma integrity_check; select host, count(*), count(distinct i) from t group by host order by host;'])
    t.equal(check.stdout, `ok\na|${ROWS}|${ROWS}\nb|${ROWS}|${ROWS}\n`, describeRun(check))
  })
})
