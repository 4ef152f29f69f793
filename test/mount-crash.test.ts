// Crash tests (issue 7), bounded in time. A workload driver (python, DRIVER below) runs a mixed
// workload in the mount -- writes at random offsets, appends (O_APPEND and at the end), truncates,
// fsyncs, creates, renames (also over existing names), hard links, unlinks (also of open files),
// descriptors kept open across operations -- and journals, outside the mount, each operation
// before ('B') and after ('D') it, with the sha-256 of a file's content at every fsync that
// returned. Then:
//
// - the mount daemon is killed with SIGKILL at a random moment, again and again (default 24
//   rounds): fsck of the unmounted STATE may find only orphan objects (blocks written but never
//   committed), --repair fixes them and a second fsck is clean; after the remount every file
//   fsync'd and not touched since has exactly its bytes, every name change whose directory was
//   fsync'd holds, the one operation in flight is all-or-nothing, and every file reads without error;
// - the block server holding the data volume is killed with SIGKILL several times under the
//   workload and restarted: the mount recovers, a clean unmount lands every byte it acknowledged,
//   fsck is clean and every file holds exactly what the workload wrote; then the server and the
//   daemon are killed together (server first), with the checks of a daemon crash;
// - space: an rm -rf comes back as free space on the device within seconds (the reclaim queue,
//   no scan), and a kill -9 right after a big rm (before the reclaimer got to it) leaks nothing:
//   the queue survives and the next mount empties it.
//
// BSLFS_CRASH_SEED replays a run's operation sequence and kill delays (the kill still lands
// wherever the timing puts it); BSLFS_CRASH_ROUNDS sets the number of daemon kills.
import t from 'tap'
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import * as fs from 'node:fs'
import * as fsp from 'node:fs/promises'
import { basename, join } from 'node:path'
import {
  type BlockServer, type Mount, PYTHON, bslfs, childEnv, describeRun, isMounted, mountCount, pidAlive,
  run, sleep, startBlockServer, target, volumeKind, waitFor, withMount
} from './helpers/mount'
import { type FsckReport, fsck } from './helpers/fsck'

type Test = tap.Test

/**
 * The workload. argv: WORK JOURNAL SEED TAG STOPFILE ('-': none). It first adopts what is in
 * WORK/{a,b,c} (a crash left it: read it, fsync it, journal it), then loops over random operations
 * until the stop file appears or the mount dies (ENOTCONN, ECONNABORTED). An operation that fails
 * otherwise (EIO while a block server is down) is journaled ('E') and the loop goes on; a file a
 * failed write touched is uncertain until a read shows what it holds. A read that differs from
 * what the driver wrote is journaled as 'W'. With a stop file, the last record ('final') gives
 * the content every name must have once the mount has written everything.
 */
const DRIVER = String.raw`
import os, sys, json, hashlib, random, time, errno
work, journal, seed, tag, stopfile = sys.argv[1:6]
rng = random.Random(int(seed))
J = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
FATAL = (errno.ENOTCONN, errno.ECONNABORTED)
DIRS = ['a', 'b', 'c']
MAX_NAMES, MAX_BYTES = 36, 16 << 20

CUR = [None]

def rec(t, op, **extra):
    if t == 'B':
        CUR[0] = op
    d = {'t': t, 'op': op, 'time': time.time()}
    d.update(extra)
    os.write(J, (json.dumps(d) + '\n').encode())

def sha(b):
    return hashlib.sha256(b).hexdigest()

def P(rel):
    return os.path.join(work, rel)

def dsync(*rels):
    for d in sorted(set(os.path.dirname(r) for r in rels)):
        fd = os.open(P(d), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

def read_all(fd):
    out = bytearray()
    pos = 0
    while True:
        b = os.pread(fd, 1 << 20, pos)
        if not b:
            return out
        out += b
        pos += len(b)

def pwrite_all(fd, data, pos):
    view = memoryview(data)
    while len(view):
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n

objs = {}   # oid -> {'data': bytearray, 'uncertain': bool}
names = {}  # path -> oid
pool = []   # [oid, fd]: descriptors kept open across operations
held = []   # descriptors of kept files, open until the end
counter = [0]

def fresh(prefix):
    counter[0] += 1
    return '%s%s%d' % (tag, prefix, counter[0])

def total_bytes():
    live = set(names.values()) | set(oid for oid, _ in pool)
    return sum(len(objs[oid]['data']) for oid in live)

def some_data():
    r = rng.random()
    n = rng.randint(1, 4096) if r < 0.4 else rng.randint(4096, 70000) if r < 0.85 else rng.randint(70000, 300000)
    return bytearray(os.urandom(n))

def fd_for(oid):
    for o, fd in pool:
        if o == oid:
            return fd
    return None

# ---- adoption: whatever the last crash left becomes the starting point, made durable ----
def adopt():
    for d in DIRS + ['keep']:
        os.makedirs(P(d), exist_ok=True)
    dsync(*[d + '/x' for d in DIRS + ['keep']])
    dsync(*DIRS + ['keep'])
    byino = {}
    for d in DIRS:
        for n in sorted(os.listdir(P(d))):
            st = os.lstat(P(d + '/' + n))
            byino.setdefault(st.st_ino, []).append(d + '/' + n)
    for ino in sorted(byino):
        paths = byino[ino]
        fd = os.open(P(paths[0]), os.O_RDWR)
        try:
            data = read_all(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        oid = fresh('o')
        objs[oid] = {'data': data, 'uncertain': False}
        for p in paths:
            names[p] = oid
        rec('D', {'k': 'adopt', 'oid': oid, 'paths': paths, 'sha': sha(data), 'size': len(data)})

try:
    adopt()
except OSError as e:
    rec('E', {'k': 'adopt'}, err=errno.errorcode.get(e.errno, str(e.errno)))
    sys.exit(0 if e.errno in FATAL else 3)
rec('D', {'k': 'ready'})

# ---- operations ----
def op_create():
    path = rng.choice(DIRS) + '/' + fresh('n')
    oid = fresh('o')
    data = some_data()
    op = {'k': 'create', 'path': path, 'oid': oid, 'len': len(data)}
    rec('B', op)
    objs[oid] = {'data': bytearray(), 'uncertain': False}
    fd = os.open(P(path), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
    names[path] = oid
    op['opened'] = True
    keep = False
    try:
        try:
            pwrite_all(fd, data, 0)
        except OSError:
            objs[oid]['uncertain'] = True
            raise
        objs[oid]['data'] = data
        dsync(path)
        if len(pool) < 6 and rng.random() < 0.4:
            pool.append([oid, fd])
            keep = True
    finally:
        if not keep:
            os.close(fd)
    return op

def pick_obj():
    """An object to work on: through one of its names, or through a kept descriptor."""
    if pool and (not names or rng.random() < 0.5):
        oid, fd = rng.choice(pool)
        return oid, None, fd
    path = rng.choice(sorted(names))
    return names[path], path, None

def op_write(append=False):
    oid, path, fd = pick_obj()
    o = objs[oid]
    data = some_data()
    size = len(o['data'])
    pos = size if append else rng.randint(0, size + 70000)
    use_append_flag = append and path is not None and rng.random() < 0.5
    op = {'k': 'append' if append else 'write', 'oid': oid, 'path': path, 'pos': pos, 'len': len(data)}
    rec('B', op)
    own = fd is None
    if own:
        fd = os.open(P(path), os.O_RDWR | (os.O_APPEND if use_append_flag else 0))
    keep = False
    try:
        try:
            if use_append_flag:
                view = memoryview(data)
                while len(view):
                    view = view[os.write(fd, view):]
            else:
                pwrite_all(fd, data, pos)
        except OSError:
            o['uncertain'] = True
            raise
        d = o['data']
        if pos > len(d):
            d.extend(bytes(pos - len(d)))
        d[pos:pos + len(data)] = data
        if own and len(pool) < 6 and not use_append_flag and rng.random() < 0.4:
            pool.append([oid, fd])
            keep = True
    finally:
        if own and not keep:
            os.close(fd)
    return op

def op_truncate():
    oid, path, fd = pick_obj()
    o = objs[oid]
    size = len(o['data'])
    new = rng.randint(0, size) if rng.random() < 0.7 else size + rng.randint(1, 100000)
    op = {'k': 'truncate', 'oid': oid, 'path': path, 'size': new}
    rec('B', op)
    try:
        if fd is not None:
            os.ftruncate(fd, new)
        else:
            os.truncate(P(path), new)
    except OSError:
        o['uncertain'] = True
        raise
    d = o['data']
    if new < len(d):
        del d[new:]
    else:
        d.extend(bytes(new - len(d)))
    return op

def op_fsync():
    oid, path, fd = pick_obj()
    o = objs[oid]
    op = {'k': 'fsync', 'oid': oid, 'path': path}
    rec('B', op)
    if fd is not None:
        os.fsync(fd)
    else:
        fd = os.open(P(path), os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    op['sha'] = sha(o['data'])
    op['size'] = len(o['data'])
    op['uncertain'] = o['uncertain']
    return op

def op_unlink():
    path = rng.choice(sorted(names))
    op = {'k': 'unlink', 'path': path}
    rec('B', op)
    os.unlink(P(path))
    del names[path]
    dsync(path)
    return op

def op_link():
    src = rng.choice(sorted(names))
    dst = rng.choice(DIRS) + '/' + fresh('l')
    op = {'k': 'link', 'src': src, 'dst': dst}
    rec('B', op)
    os.link(P(src), P(dst))
    names[dst] = names[src]
    dsync(src, dst)
    return op

def op_rename():
    src = rng.choice(sorted(names))
    if rng.random() < 0.5 and len(names) > 1:
        dst = rng.choice(sorted(p for p in names if p != src))
    else:
        dst = rng.choice(DIRS) + '/' + fresh('m')
    op = {'k': 'rename', 'src': src, 'dst': dst}
    rec('B', op)
    os.rename(P(src), P(dst))
    if names.get(dst) != names[src]:  # two names of one inode: rename does nothing
        names[dst] = names.pop(src)
    dsync(src, dst)
    return op

def op_verify():
    # Through a fresh open of a name, not a kept descriptor: libfuse2 gives each name of a hard-linked
    # file its own kernel inode, so a descriptor opened through one name keeps reading the kernel's
    # cached pages after writes through another name (a known bug, outside the crash tests' scope);
    # an open drops that name's cache.
    path = rng.choice(sorted(names))
    oid = names[path]
    o = objs[oid]
    op = {'k': 'verify', 'oid': oid, 'path': path}
    CUR[0] = op
    fd = os.open(P(path), os.O_RDONLY)
    try:
        got = read_all(fd)
    finally:
        os.close(fd)
    if o['uncertain']:
        # what a read shows now is what the file holds (and what must land): adopt it
        o['data'] = got
        o['uncertain'] = False
        op['resync'] = True
    elif got != o['data']:
        want = o['data']
        diff = [i for i in range(min(len(got), len(want))) if got[i] != want[i]]
        rec('W', op, want=[sha(want), len(want)], got=[sha(got), len(got)],
            first=diff[0] if diff else None, last=diff[-1] if diff else None, ndiff=len(diff),
            gotzero=sum(1 for i in diff if got[i] == 0))
    return op

def op_pool():
    if pool and (rng.random() < 0.4 or len(pool) >= 6):
        i = rng.randrange(len(pool))
        oid, fd = pool.pop(i)
        op = {'k': 'close', 'oid': oid}
        CUR[0] = op
        os.close(fd)  # a failed close (flush) keeps the bytes for a retry: the data stands
        return op
    path = rng.choice(sorted(names))
    oid = names[path]
    if fd_for(oid) is not None:
        return None
    CUR[0] = {'k': 'open', 'oid': oid, 'path': path}
    pool.append([oid, os.open(P(path), os.O_RDWR)])
    return {'k': 'open', 'oid': oid, 'path': path}

def op_keep():
    path = 'keep/' + fresh('k')
    data = some_data()
    op = {'k': 'keep', 'path': path}
    rec('B', op)
    fd = os.open(P(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    hold = rng.random() < 0.5  # as a database does: fsync and keep the descriptor open
    try:
        pwrite_all(fd, data, 0)
        os.fsync(fd)
    finally:
        if hold:
            held.append(fd)
        else:
            os.close(fd)
    dsync(path)
    op['sha'] = sha(data)
    op['size'] = len(data)
    return op

OPS = [(op_create, 8), (lambda: op_write(False), 20), (lambda: op_write(True), 10), (op_truncate, 6), (op_fsync, 20),
       (op_unlink, 6), (op_link, 5), (op_rename, 9), (op_verify, 8), (op_pool, 5), (op_keep, 3)]

def choose():
    big = total_bytes() > MAX_BYTES
    while True:
        f, w = rng.choices(OPS, weights=[w for _, w in OPS])[0]
        if not names and f not in (op_create, op_keep):
            continue
        if f is op_create and len(names) >= MAX_NAMES:
            continue
        if big and names and f not in (op_unlink, op_truncate, op_fsync, op_rename, op_pool):
            continue
        return f

done = 0
while True:
    if stopfile != '-' and os.path.exists(stopfile):
        rec('D', {'k': 'stopping'})
        break
    f = choose()
    CUR[0] = None
    try:
        op = f()
        if op is not None:
            rec('D', op)
            done += 1
    except OSError as e:
        name = errno.errorcode.get(e.errno, str(e.errno))
        rec('E', CUR[0] or {'k': '?'}, err=name)
        if e.errno in FATAL:
            sys.exit(0)

# a stop was asked for: close everything, read back what is uncertain, and say what the files hold
for oid, fd in pool + [[None, fd] for fd in held]:
    try:
        os.close(fd)
    except OSError as e:
        rec('E', {'k': 'close', 'oid': oid}, err=errno.errorcode.get(e.errno, str(e.errno)))
pool.clear()
final = {}
for path, oid in sorted(names.items()):
    o = objs[oid]
    if o['uncertain']:
        try:
            fd = os.open(P(path), os.O_RDONLY)
            try:
                o['data'] = read_all(fd)
                o['uncertain'] = False
            finally:
                os.close(fd)
        except OSError as e:
            rec('E', {'k': 'final-read', 'path': path}, err=errno.errorcode.get(e.errno, str(e.errno)))
    final[path] = None if o['uncertain'] else [sha(o['data']), len(o['data'])]
rec('D', {'k': 'final', 'files': final, 'ops': done})
`

const FATAL = new Set(['ENOTCONN', 'ECONNABORTED'])
const NAMESPACE = new Set(['create', 'unlink', 'link', 'rename', 'keep'])
const DATA = new Set(['write', 'append', 'truncate'])
const KiB = 1024

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')

/** A small seeded PRNG (mulberry32): the kill delays and the drivers' seeds of one run. */
function prng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = a
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

const seed = Number(process.env.BSLFS_CRASH_SEED) || (Date.now() % 1_000_000_007)
const ROUNDS = Number(process.env.BSLFS_CRASH_ROUNDS) || 24

// ---------------------------------------------------------------------------
// Running things

interface Driver { pid: number, exited: Promise<{ code: number | null, signal: NodeJS.Signals | null, stderr: string }>, kill (): void }

/** Start the workload in `work`; without a stop file it runs until the mount dies. */
async function startDriver (t: Test, m: Mount, work: string, journal: string, driverSeed: number, tag: string, stopFile = '-'): Promise<Driver> {
  const script = join(m.base, 'driver.py')
  if (!fs.existsSync(script)) await fsp.writeFile(script, DRIVER)
  const child = spawn(PYTHON, [script, work, journal, String(driverSeed), tag, stopFile], { cwd: m.base, env: childEnv, stdio: ['ignore', 'ignore', 'pipe'] })
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  let stderr = ''
  child.stderr!.on('data', (c: Buffer) => { stderr += c.toString() })
  const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null, stderr: string }>((resolve) => {
    child.once('exit', (code, signal) => setTimeout(() => resolve({ code, signal, stderr }), 20))
  })
  return { pid: child.pid!, exited, kill: () => { try { child.kill('SIGKILL') } catch {} } }
}

/** Wait for the driver to exit by itself (it stops on ENOTCONN), else SIGKILL it. */
async function endDriver (d: Driver, ms = 3000): Promise<{ code: number | null, signal: NodeJS.Signals | null, stderr: string }> {
  const timer = setTimeout(() => d.kill(), ms)
  const r = await d.exited
  clearTimeout(timer)
  return r
}

async function killDaemon (t: Test, m: Mount): Promise<number> {
  const pid = await m.daemonPid()
  if (!pid) throw new Error('no mount daemon to kill')
  const at = Date.now()
  process.kill(pid, 'SIGKILL')
  if (!(await waitFor(() => !pidAlive(pid), 10_000, 10))) t.fail(`daemon ${pid} still alive 10 s after SIGKILL`)
  return at
}

/** `bslfs mount` over the dead mount point a killed daemon left. */
async function remount (t: Test, m: Mount): Promise<void> {
  const r = await bslfs(['mount', m.state, m.mnt], { timeout: 60_000 })
  if (r.code !== 0 || !(await waitFor(() => isMounted(m.mnt), 10_000))) throw new Error(`mount after the crash failed:\n${describeRun(r)}`)
  if (mountCount(m.mnt) !== 1) t.fail(`${mountCount(m.mnt)} mounts stacked on ${m.mnt}`)
}

/** Problem kinds other than orphan objects (which a kill between a block's write and its commit leaves). */
const notOrphans = (rep: FsckReport) => Object.keys(rep.problems).filter((k) => k !== 'orphan object')
const orphansOf = (rep: FsckReport) => rep.problems['orphan object'] ?? 0

/**
 * The checks of an offline fsck after a crash: only orphan objects; on `repair` rounds --repair
 * removes them (and frees unlinked open inodes) and a second fsck is clean.
 */
async function fsckAfterCrash (t: Test, m: Mount, what: string, repair: boolean): Promise<{ found: FsckReport, note: string }> {
  const found = await fsck(m)
  t.same(notOrphans(found), [], `${what}: fsck finds no problem but orphan objects`, { problems: found.problems, first: found.first })
  let note = `fsck: ${orphansOf(found)} orphan objects, ${found.openOrphans} unlinked open inodes, ${found.reclaimQueue} blocks queued for reclaim`
  if (repair) {
    const fixed = await fsck(m, '--repair')
    t.ok(fixed.clean, `${what}: fsck --repair leaves it clean`, { problems: fixed.problems, repaired: fixed.repaired, first: fixed.first })
    t.same(notOrphans(fixed), [], `${what}: --repair finds only orphans`, { problems: fixed.problems })
    const again = await fsck(m, '--no-checksums')
    t.ok(again.clean && Object.keys(again.problems).length === 0 && again.openOrphans === 0, `${what}: a second fsck is clean`, { report: again })
    note += `; repaired ${JSON.stringify(fixed.repaired)}`
  }
  return { found, note }
}

// ---------------------------------------------------------------------------
// The journal and what it promises

interface Op { k: string, oid?: string, path?: string | null, src?: string, dst?: string, sha?: string, size?: number, uncertain?: boolean, paths?: string[], opened?: boolean, files?: Record<string, [string, number] | null>, ops?: number }
interface Rec { t: 'B' | 'D' | 'E' | 'W', op: Op, time: number, err?: string, want?: unknown, got?: unknown }

async function readJournal (path: string): Promise<Rec[]> {
  const text = await fsp.readFile(path, 'utf8').catch(() => '')
  const out: Rec[] = []
  for (const line of text.split('\n')) {
    if (!line) continue
    try { out.push(JSON.parse(line) as Rec) } catch { /* the last line of a killed driver */ }
  }
  return out
}

interface Obj { sha?: string, size?: number, dirty: boolean }
interface Model {
  names: Map<string, string>
  objs: Map<string, Obj>
  /** Every name the journal mentions (absent now unless in names). */
  known: Set<string>
  /** Names a failed operation left in doubt. */
  unknown: Set<string>
  /** The adoption finished: every name in the work directories is the model's. */
  ready: boolean
  /** The operation the crash interrupted (begun, not done). */
  inflight?: Op
  keeps: Map<string, [string, number]>
  final?: Record<string, [string, number] | null>
  problems: string[]
  counts: { done: number, fsyncs: number, errors: Record<string, number> }
}

/**
 * Replay a journal. `killedAt`: when the daemon was killed (ms; errors from ENOTCONN before it are
 * bugs); `dataErrors`: a block server was down, so data operations may fail (EIO).
 */
function replay (recs: Rec[], opts: { killedAt?: number, dataErrors: boolean }): Model {
  const md: Model = { names: new Map(), objs: new Map(), known: new Set(), unknown: new Set(), ready: false, keeps: new Map(), problems: [], counts: { done: 0, fsyncs: 0, errors: {} } }
  let open: Op | undefined
  for (const r of recs) {
    const op = r.op
    if (r.t === 'W') { md.problems.push(`a read returned wrong bytes: ${JSON.stringify(r)}`); continue }
    if (r.t === 'B') {
      if (open) md.problems.push(`journal: ${open.k} begun but neither done nor failed`)
      open = op
      if (DATA.has(op.k)) { const o = md.objs.get(op.oid!); if (o) o.dirty = true }
      continue
    }
    if (r.t === 'E') {
      md.counts.errors[`${op.k} ${r.err}`] = (md.counts.errors[`${op.k} ${r.err}`] ?? 0) + 1
      const fatal = FATAL.has(r.err ?? '')
      if (fatal) {
        if (opts.killedAt === undefined || r.time * 1000 < opts.killedAt) md.problems.push(`${op.k} failed with ${r.err} while the daemon was alive`)
        if (open) md.inflight = open
        open = undefined
        continue
      }
      if (!opts.dataErrors || !(DATA.has(op.k) || ['fsync', 'verify', 'open', 'close', 'create', 'keep', 'final-read'].includes(op.k))) {
        md.problems.push(`${op.k} failed with ${r.err}: ${JSON.stringify(op)}`)
      }
      if (op.k === 'create' && op.opened) { md.names.set(op.path!, op.oid!); md.objs.set(op.oid!, { dirty: true }); md.known.add(op.path!) }
      if (op.k === 'create' && !op.opened) md.unknown.add(op.path!)
      if (['unlink', 'link', 'rename'].includes(op.k)) for (const p of [op.path, op.src, op.dst]) if (p) { md.unknown.add(p); md.names.delete(p) }
      open = undefined
      continue
    }
    // 'D'
    open = undefined
    md.counts.done++
    switch (op.k) {
      case 'adopt':
        md.objs.set(op.oid!, { sha: op.sha, size: op.size, dirty: false })
        for (const p of op.paths!) { md.names.set(p, op.oid!); md.known.add(p) }
        break
      case 'ready': md.ready = true; break
      case 'create':
        md.names.set(op.path!, op.oid!); md.objs.set(op.oid!, { dirty: true }); md.known.add(op.path!)
        break
      case 'fsync':
        md.counts.fsyncs++
        if (!op.uncertain) md.objs.set(op.oid!, { sha: op.sha, size: op.size, dirty: false })
        break
      case 'unlink': md.names.delete(op.path!); md.known.add(op.path!); break
      case 'link': md.names.set(op.dst!, md.names.get(op.src!)!); md.known.add(op.dst!); break
      case 'rename':
        if (md.names.get(op.dst!) !== md.names.get(op.src!)) { md.names.set(op.dst!, md.names.get(op.src!)!); md.names.delete(op.src!) }
        md.known.add(op.src!); md.known.add(op.dst!)
        break
      case 'keep': md.keeps.set(op.path!, [op.sha!, op.size!]); break
      case 'final': md.final = op.files; break
    }
  }
  if (open) md.inflight = open // killed before its 'D' (or its 'E') was written
  return md
}

interface Actual { exists: boolean, ino?: number, sha?: string, size?: number, err?: string, type?: string }

function look (root: string, rel: string): Actual {
  const p = join(root, rel)
  let st: fs.Stats
  try { st = fs.lstatSync(p) } catch (e) {
    const code = (e as NodeJS.ErrnoException).code
    return code === 'ENOENT' ? { exists: false } : { exists: true, err: `lstat: ${code}` }
  }
  if (!st.isFile()) return { exists: true, ino: st.ino, type: st.isDirectory() ? 'dir' : 'other' }
  try {
    const b = fs.readFileSync(p)
    if (b.length !== st.size) return { exists: true, ino: st.ino, err: `read ${b.length} bytes of ${st.size}` }
    return { exists: true, ino: st.ino, sha: sha256(b), size: b.length }
  } catch (e) {
    return { exists: true, ino: st.ino, err: `read: ${(e as NodeJS.ErrnoException).code}` }
  }
}

/** What name `p` must be in `md` (after a crash): absent, a file with exact bytes, or a file with any bytes. */
type Want = { absent: true } | { absent: false, oid: string, sha?: string, size?: number }
function wantOf (md: Model, names: Map<string, string>, p: string): Want {
  const oid = names.get(p)
  if (oid === undefined) return { absent: true }
  const o = md.objs.get(oid)
  return o && !o.dirty ? { absent: false, oid, sha: o.sha, size: o.size } : { absent: false, oid }
}
function mismatch (w: Want, a: Actual): string | null {
  if (w.absent) return a.exists ? 'exists' : null
  if (!a.exists) return 'is missing'
  if (a.err) return a.err
  if (a.type) return `is a ${a.type}`
  if (w.sha !== undefined && (a.sha !== w.sha || a.size !== w.size)) return `has ${a.size} bytes ${a.sha?.slice(0, 12)}, fsync'd ${w.size} bytes ${w.sha.slice(0, 12)}`
  return null
}

interface Checked { exact: number, loose: number, absent: number, keeps: number, files: number, inflight: string }

/**
 * After a crash and a remount: every name the journal is sure of is as it says (fsync'd and
 * untouched since: exactly its bytes; written since: present and readable; removed: absent), the
 * names of one inode are one inode, nothing unexpected appeared, the operation in flight happened
 * wholly or not at all, every kept file is intact, and every file reads without an error.
 */
function checkAfterCrash (md: Model, work: string, keeps: Map<string, [string, number]>): { problems: string[], checked: Checked } {
  const problems = [...md.problems]
  const checked: Checked = { exact: 0, loose: 0, absent: 0, keeps: 0, files: 0, inflight: 'none' }
  const touched = new Set<string>()
  const op = md.inflight
  if (op && NAMESPACE.has(op.k)) for (const p of [op.path, op.src, op.dst]) if (p) touched.add(p)
  const actual = new Map<string, Actual>()
  const get = (p: string) => { let a = actual.get(p); if (!a) { a = look(work, p); actual.set(p, a) } return a }

  for (const p of new Set([...md.known, ...md.names.keys()])) {
    if (touched.has(p) || md.unknown.has(p)) continue
    const w = wantOf(md, md.names, p)
    const bad = mismatch(w, get(p))
    if (bad) problems.push(`${p} ${bad} (${w.absent ? 'removed, directory fsync\'d' : w.sha ? 'fsync\'d, untouched since' : 'written since its last fsync'})`)
    else if (w.absent) checked.absent++
    else if (w.sha) checked.exact++
    else checked.loose++
  }
  // One inode per object, and one object per inode.
  const inoOf = new Map<string, number>()
  const oidOf = new Map<number, string>()
  for (const [p, oid] of md.names) {
    if (touched.has(p) || md.unknown.has(p)) continue
    const a = get(p)
    if (!a.exists || a.ino === undefined) continue
    if (inoOf.has(oid) && inoOf.get(oid) !== a.ino) problems.push(`${p} should be a hard link of inode ${inoOf.get(oid)}, it is inode ${a.ino}`)
    if (oidOf.has(a.ino) && oidOf.get(a.ino) !== oid) problems.push(`${p} (inode ${a.ino}) is a name of another file's inode`)
    inoOf.set(oid, a.ino)
    oidOf.set(a.ino, oid)
  }
  // The operation the crash interrupted: all of it or none of it.
  if (op && NAMESPACE.has(op.k) && op.k !== 'keep') {
    const pre = new Map(md.names)
    const post = new Map(md.names)
    if (op.k === 'create') post.set(op.path!, op.oid!)
    if (op.k === 'unlink') post.delete(op.path!)
    if (op.k === 'link') post.set(op.dst!, md.names.get(op.src!)!)
    if (op.k === 'rename' && md.names.get(op.dst!) !== md.names.get(op.src!)) { post.set(op.dst!, md.names.get(op.src!)!); post.delete(op.src!) }
    if (op.k === 'create') md.objs.set(op.oid!, { dirty: true })
    const paths = [...touched].filter((p) => !md.unknown.has(p))
    const fails = (names: Map<string, string>) => paths.map((p) => { const b = mismatch(wantOf(md, names, p), get(p)); return b ? `${p} ${b}` : null }).filter((x): x is string => !!x)
    const before = fails(pre)
    const after = fails(post)
    if (before.length === 0) checked.inflight = `${op.k} (had not happened)`
    else if (after.length === 0) checked.inflight = `${op.k} (had happened)`
    else problems.push(`the ${op.k} in flight is half done: ${JSON.stringify(op)}: before: ${before.join('; ')}; after: ${after.join('; ')}`)
  } else if (op) {
    checked.inflight = op.k
  }
  // Nothing the workload did not make (once the adoption was complete).
  for (const d of ['a', 'b', 'c']) {
    let names: string[] = []
    try { names = fs.readdirSync(join(work, d)) } catch (e) { problems.push(`readdir ${d}: ${(e as NodeJS.ErrnoException).code}`) }
    for (const n of names) {
      const p = `${d}/${n}`
      if (md.ready && !md.names.has(p) && !touched.has(p) && !md.unknown.has(p) && !md.known.has(p)) problems.push(`${p} appeared from nowhere`)
    }
  }
  for (const [p, [s, size]] of keeps) {
    const bad = mismatch({ absent: false, oid: p, sha: s, size }, get(p))
    if (bad) problems.push(`kept file ${p} ${bad}`)
    else checked.keeps++
  }
  // Every file there is reads without an error.
  for (const d of ['a', 'b', 'c', 'keep']) {
    let names: string[] = []
    try { names = fs.readdirSync(join(work, d)) } catch {}
    for (const n of names) {
      const a = get(`${d}/${n}`)
      if (a.err) problems.push(`${d}/${n}: ${a.err}`)
      else checked.files++
    }
  }
  return { problems: [...new Set(problems)], checked }
}

/** The objects a local device (or a block server's device) holds. */
function objectCount (device: string): number {
  let n = 0
  const root = join(device, 'objects')
  for (const fan of fs.readdirSync(root)) n += fs.readdirSync(join(root, fan)).length
  return n
}

/** A fresh STATE with small blocks (64 KiB: files of a few blocks, many objects). */
async function reinit (m: Mount, blockSize = 64 * KiB): Promise<void> {
  for (const e of await fsp.readdir(m.state)) await fsp.rm(join(m.state, e), { recursive: true, force: true })
  const r = await bslfs(['init', m.state, '--block-size', String(blockSize)])
  if (r.code !== 0) throw new Error(`init failed:\n${describeRun(r)}`)
}

/** On a failure, keep the journal and the daemon's log (the test's temp dir goes at teardown). */
async function keepEvidence (t: Test, m: Mount, what: string, journal: string): Promise<void> {
  const dir = `/tmp/bslfs-crash-${seed}`
  await fsp.mkdir(dir, { recursive: true })
  const tag = what.replace(/\W+/g, '-')
  for (const f of [journal, join(m.state, 'daemon.log')]) await fsp.copyFile(f, join(dir, `${tag}-${basename(f)}`)).catch(() => {})
  t.comment(`${what}: the journal and the daemon's log are kept in ${dir}`)
}

const fmtErrors = (e: Record<string, number>) => Object.entries(e).map(([k, n]) => `${k} ×${n}`).join(', ') || 'none'

// Each subtest makes its own STATE (64 KiB blocks) and its own block server: under
// BSLFS_TEST_VOLUME=remote the file would only run again.
/**
 * After a kill: fsck the unmounted STATE (only orphans allowed; `repair` fixes them), remount, replay the
 * journal and check every name against it; what an earlier round kept is checked too.
 */
async function afterKill (t: Test, m: Mount, c: { what: string, journal: string, killedAt: number, repair: boolean, dataErrors: boolean,
  work: string, keeps: Map<string, [string, number]>, seed: number, round: number }) {
  const { found, note } = await fsckAfterCrash(t, m, c.what, c.repair)
  await remount(t, m)
  const md = replay(await readJournal(c.journal), { killedAt: c.killedAt, dataErrors: c.dataErrors })
  for (const [p, v] of md.keeps) c.keeps.set(p, v)
  const { problems, checked } = checkAfterCrash(md, c.work, c.keeps)
  t.same(problems, [], `${c.what}: what was fsync'd before the kill is intact`, { seed: c.seed, round: c.round })
  if (problems.length) await keepEvidence(t, m, c.what, c.journal)
  return { found, note, md, checked }
}

/** The end of a run: a clean unmount; fsck repairs only orphans, then is clean; nothing leaks (every object is a block). */
async function finalCheck (t: Test, m: Mount, when: string): Promise<void> {
  await m.unmount()
  const end = await fsck(m, '--repair')
  t.same(notOrphans(end), [], `${when}: fsck --repair finds only orphans`, { problems: end.problems })
  const last = await fsck(m)
  t.ok(last.clean && Object.keys(last.problems).length === 0, `${when}: fsck is clean`, { report: last })
  t.equal(last.reclaimQueue, 0, `${when}: nothing left to reclaim`)
  t.equal(last.objectsListed, last.blocks, `${when}: no space leaked: ${last.objectsListed} objects on the devices, ${last.blocks} blocks in files`)
}

if (target !== 'bslfs' || volumeKind !== 'local') {
  t.comment(`crash tests run once, for BSLFS_TEST_TARGET=bslfs with local volumes: not registered for ${target}/${volumeKind}`)
} else {
  t.comment(`seed ${seed} (replay with BSLFS_CRASH_SEED=${seed}), ${ROUNDS} daemon kills`)

  t.test(`kill -9 of the mount daemon at random moments of a mixed workload, ${ROUNDS} times`, async (t) => {
    const started = Date.now()
    const rnd = prng(seed)
    const m = await withMount(t, { noMount: true })
    await reinit(m)
    await m.mount()
    const work = m.mnt
    const keeps = new Map<string, [string, number]>()
    const totals = { ops: 0, fsyncs: 0, orphans: 0, openOrphans: 0, queued: 0, exact: 0 }
    for (let round = 0; round < ROUNDS; round++) {
      const what = `round ${round + 1}`
      const journal = join(m.base, `journal-${round}.jsonl`)
      const delay = Math.round(300 + rnd() * 1700)
      const driver = await startDriver(t, m, work, journal, Math.floor(rnd() * 1e9), `r${round}`)
      await sleep(delay)
      const killedAt = await killDaemon(t, m)
      const ended = await endDriver(driver)
      t.ok(ended.signal === 'SIGKILL' || ended.code === 0, `${what}: the driver stopped without a traceback`, { stderr: ended.stderr })

      const repair = round % 2 === 0 || round === ROUNDS - 1
      const { found, note, md, checked } = await afterKill(t, m, { what, journal, killedAt, repair, dataErrors: false, work, keeps, seed, round })
      let mountedNote = ''
      if (!repair) {
        // The mount freed what the crash left queued: unlinked open inodes and blocks to reclaim.
        const live = await fsck(m, '--no-checksums')
        t.same(notOrphans(live), [], `${what}: fsck of the new mount finds nothing but orphans`, { problems: live.problems, first: live.first })
        t.equal(live.reclaimQueue, 0, `${what}: the mount emptied the reclaim queue (${found.reclaimQueue} left by the crash)`)
        t.equal(live.openOrphans, 0, `${what}: the mount freed the unlinked open inodes (${found.openOrphans} left by the crash)`)
        mountedNote = '; mounted fsck: queues empty'
      }
      totals.ops += md.counts.done; totals.fsyncs += md.counts.fsyncs; totals.orphans += orphansOf(found)
      totals.openOrphans += found.openOrphans; totals.queued += found.reclaimQueue; totals.exact += checked.exact
      t.comment(`${what}: killed after ${delay} ms, ${md.counts.done} ops (${md.counts.fsyncs} fsyncs), in flight: ${checked.inflight}; ` +
        `${note}${mountedNote}; checked ${checked.exact} fsync'd names exactly, ${checked.loose} written since present, ${checked.absent} removed absent, ` +
        `${checked.keeps} kept files, ${checked.files} files read`)
    }
    await finalCheck(t, m, 'after the last round')
    t.comment(`${ROUNDS} kills: ${totals.ops} operations, ${totals.fsyncs} fsyncs; fsck found ${totals.orphans} orphan objects, ` +
      `${totals.openOrphans} unlinked open inodes, ${totals.queued} blocks queued for reclaim; ${totals.exact} fsync'd names checked exactly; ` +
      `${((Date.now() - started) / 1000).toFixed(1)} s`)
  })

  t.test('kill -9 of the block server under the workload; then of the server and the daemon together', async (t) => {
    const started = Date.now()
    const rnd = prng(seed ^ 0x5eed)
    const m = await withMount(t, { noMount: true })
    await reinit(m)
    const server: BlockServer = await startBlockServer(join(m.base, 'server'))
    t.teardown(() => server.stop('SIGKILL'))
    for (const args of [['server', 'add', m.state, 's1', server.url, '--token-file', server.tokenFile],
      ['volume', 'add', m.state, '2', 's1:d1'], ['volume', 'default', m.state, '2']]) {
      const r = await bslfs(args)
      if (r.code !== 0) throw new Error(`bslfs ${args.slice(0, 2).join(' ')} failed:\n${describeRun(r)}`)
    }
    // The daemon logs its failures (daemon.log, kept with the journal when a check fails).
    const mounted = await bslfs(['mount', m.state, m.mnt], { env: { ...childEnv, DEBUG: 'bslfs:fs,bslfs:data,bslfs:volumes,bslfs:daemon' } })
    if (mounted.code !== 0) throw new Error(`mount failed:\n${describeRun(mounted)}`)
    const work = m.mnt
    const keeps = new Map<string, [string, number]>()

    // Phase 1: the server dies (SIGKILL) and comes back several times under a running workload.
    const journal = join(m.base, 'journal-server.jsonl')
    const stop = join(m.base, 'stop')
    const driver = await startDriver(t, m, work, journal, Math.floor(rnd() * 1e9), 's', stop)
    const KILLS = 4
    await sleep(1000)
    for (let i = 0; i < KILLS; i++) {
      await sleep(Math.round(300 + rnd() * 1200))
      await server.stop('SIGKILL')
      await sleep(Math.round(300 + rnd() * 1700))
      await server.start()
    }
    // Let the mount see the server back (a down place is probed with a growing delay) and retry.
    t.ok(await waitFor(async () => {
      const st = await bslfs(['status', m.state, '--json'])
      try { return (JSON.parse(st.stdout) as { places: Array<{ up: boolean }> }).places.every((p) => p.up) } catch { return false }
    }, 20_000, 250), 'the mount sees the server up again')
    await sleep(1000)
    await fsp.writeFile(stop, '')
    if (!(await waitFor(() => !pidAlive(driver.pid), 30_000, 100))) {
      // Stuck: say where (its last records, and where the kernel holds it), then stop it.
      const records = (await fsp.readFile(journal, 'utf8').catch(() => '')).trim().split('\n').slice(-3)
      const kernel = await fsp.readFile(`/proc/${driver.pid}/stack`, 'utf8').catch(() => '?')
      const syscall = await fsp.readFile(`/proc/${driver.pid}/syscall`, 'utf8').catch(() => '?')
      t.fail('the workload stops within 30 s of being asked to', { records, kernel, syscall })
      await keepEvidence(t, m, 'stuck workload', journal)
    }
    const ended = await endDriver(driver, 0)
    t.equal(ended.code, 0, 'the workload stopped by itself', { stderr: ended.stderr })
    const md = replay(await readJournal(journal), { dataErrors: true })
    for (const [p, v] of md.keeps) keeps.set(p, v)
    t.same(md.problems, [], 'no read returned wrong bytes and no name change failed')
    if (md.problems.length) await keepEvidence(t, m, 'server kills', journal)
    t.ok(md.final, 'the workload said what every file holds')
    t.comment(`server killed ${KILLS} times: ${md.counts.done} ops (${md.counts.fsyncs} fsyncs), errors: ${fmtErrors(md.counts.errors)}`)

    // A clean unmount writes what was kept in memory; then fsck is clean and every byte is there.
    await m.unmount()
    const rep = await fsck(m)
    t.same(notOrphans(rep), [], 'after the server kills: fsck finds nothing but orphans', { problems: rep.problems, first: rep.first })
    t.equal(rep.reclaimQueue, 0, 'the reclaim queue was emptied at the unmount')
    if (!rep.clean) {
      const fixed = await fsck(m, '--repair')
      t.ok(fixed.clean, 'fsck --repair removes the orphans', { report: fixed })
    }
    const clean = await fsck(m)
    t.ok(clean.clean && Object.keys(clean.problems).length === 0, 'fsck is clean', { report: clean })
    t.equal(clean.objectsListed, clean.blocks, `no space leaked: ${clean.objectsListed} objects on the server, ${clean.blocks} blocks`)
    t.comment(`fsck after the server kills: ${orphansOf(rep)} orphan objects, ${rep.healQueue} copies to heal`)
    await m.mount()
    const problems: string[] = []
    const final = md.final ?? {}
    let exact = 0
    for (const [p, want] of Object.entries(final)) {
      const a = look(work, p)
      const bad = mismatch(want ? { absent: false, oid: p, sha: want[0], size: want[1] } : { absent: false, oid: p }, a)
      if (bad) problems.push(`${p} ${bad}`)
      else if (want) exact++
    }
    for (const p of md.known) if (!(p in final) && look(work, p).exists) problems.push(`${p} was removed but exists`)
    for (const d of ['a', 'b', 'c']) for (const n of fs.readdirSync(join(work, d))) if (!(`${d}/${n}` in final)) problems.push(`${d}/${n} appeared from nowhere`)
    for (const [p, [s, size]] of keeps) { const bad = mismatch({ absent: false, oid: p, sha: s, size }, look(work, p)); if (bad) problems.push(`kept file ${p} ${bad}`) }
    t.same(problems, [], `every file holds exactly what the workload wrote (${exact} of ${Object.keys(final).length} exactly, ${keeps.size} kept files)`)
    if (problems.length) await keepEvidence(t, m, 'after the server kills', journal)

    // Phase 2: the server dies, then the daemon, while the workload runs.
    for (let round = 0; round < 3; round++) {
      const what = `server+daemon round ${round + 1}`
      const journal = join(m.base, `journal-both-${round}.jsonl`)
      const driver = await startDriver(t, m, work, journal, Math.floor(rnd() * 1e9), `b${round}`)
      const d1 = Math.round(400 + rnd() * 1200)
      const d2 = Math.round(100 + rnd() * 900)
      await sleep(d1)
      await server.stop('SIGKILL')
      await sleep(d2)
      const killedAt = await killDaemon(t, m)
      const ended = await endDriver(driver)
      t.ok(ended.signal === 'SIGKILL' || ended.code === 0, `${what}: the driver stopped without a traceback`, { stderr: ended.stderr })
      await server.start()
      const { found, note, md, checked } = await afterKill(t, m, { what, journal, killedAt, repair: round !== 1, dataErrors: true, work, keeps, seed, round })
      t.comment(`${what}: server killed after ${d1} ms, daemon ${d2} ms later; ${md.counts.done} ops (${md.counts.fsyncs} fsyncs), ` +
        `errors: ${fmtErrors(md.counts.errors)}, in flight: ${checked.inflight}; ${note}; checked ${checked.exact} exactly, ` +
        `${checked.loose} present, ${checked.absent} absent, ${checked.keeps} kept, ${checked.files} read; orphans ${orphansOf(found)}`)
    }
    await finalCheck(t, m, 'at the end')
    t.comment(`block server subtest: ${((Date.now() - started) / 1000).toFixed(1)} s`)
  })

  t.test('space: rm -rf comes back from the reclaim queue, and a crash before the reclaim leaks nothing', async (t) => {
    const m = await withMount(t, { noMount: true })
    await reinit(m)
    await m.mount()
    const device = join(m.state, 'devices', 'd0')
    const make = async (dir: string, files: number, maxBytes: number) => {
      const r = await run(PYTHON, ['-c', `
import os, sys, random
d, n, top = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
random.seed(n)
for i in range(n):
    sub = os.path.join(d, 's%d' % (i % 5))
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, 'f%d' % i), 'wb') as f:
        f.write(os.urandom(random.randint(1, top)))
`, join(m.mnt, dir), String(files), String(maxBytes)], { timeout: 120_000 })
      if (r.code !== 0) throw new Error(`writing files failed:\n${describeRun(r)}`)
    }
    await make('tree', 150, 200 * KiB)
    const full = await fsck(m, '--no-checksums')
    t.ok(full.blocks > 150, `${full.blocks} blocks written`)
    t.equal(objectCount(device), full.blocks, 'one object per block on the device')
    const rm = await run('rm', ['-rf', join(m.mnt, 'tree')], { timeout: 120_000 })
    t.equal(rm.code, 0, 'rm -rf', { run: describeRun(rm) })
    const t0 = Date.now()
    t.ok(await waitFor(() => objectCount(device) === 0, 10_000, 100), `the device is empty again ${Date.now() - t0} ms after the rm (${objectCount(device)} objects left)`)
    const after = await fsck(m, '--no-checksums')
    t.equal(after.reclaimQueue, 0, 'the reclaim queue is empty')
    t.equal(after.blocks, 0, 'no blocks left')
    await m.remount()
    const remounted = await fsck(m)
    t.ok(remounted.clean && remounted.objectsListed === 0, 'after a clean remount: fsck clean, no objects', { report: remounted })

    // Unlink (and truncate) many files and kill the daemon at once: the reclaimer has not run yet.
    let queued = 0
    for (let attempt = 0; attempt < 3 && queued === 0; attempt++) {
      await make('many', 600, 3 * KiB)
      await make('big', 10, 600 * KiB)
      const before = objectCount(device)
      const pid = await m.daemonPid()
      const r = await run(PYTHON, ['-c', `
import os, sys
root, pid = sys.argv[1], int(sys.argv[2])
for dp, dn, fn in os.walk(os.path.join(root, 'many')):
    for f in fn:
        os.unlink(os.path.join(dp, f))
for dp, dn, fn in os.walk(os.path.join(root, 'big')):
    for f in fn:
        os.truncate(os.path.join(dp, f), 1000)
os.kill(pid, 9)
`, m.mnt, String(pid)], { timeout: 120_000 })
      t.equal(r.code, 0, 'unlinked 600 files, truncated 10, killed the daemon', { run: describeRun(r) })
      await waitFor(() => !pidAlive(pid!), 10_000)
      const crashed = await fsck(m)
      t.same(notOrphans(crashed), [], 'after the kill: fsck finds nothing but orphans', { problems: crashed.problems, first: crashed.first })
      queued = crashed.reclaimQueue
      t.comment(`attempt ${attempt + 1}: ${before} objects before, ${objectCount(device)} after the kill, ${crashed.reclaimQueue} blocks in the reclaim queue, ${crashed.blocks} blocks in files`)
      t.equal(crashed.objectsListed, crashed.blocks + crashed.reclaimQueue + orphansOf(crashed), 'every object is a block, queued for reclaim, or an orphan')
      await remount(t, m)
      const t1 = Date.now()
      const gone = await waitFor(async () => objectCount(device) === crashed.blocks, 5_000, 100)
      t.ok(gone, `within ${Date.now() - t1} ms of the mount the ${crashed.reclaimQueue} queued objects are gone (${objectCount(device)} objects for ${crashed.blocks} blocks)`)
      const live = await fsck(m, '--no-checksums')
      t.equal(live.reclaimQueue, 0, 'the reclaim queue is empty after the remount')
      await run('rm', ['-rf', join(m.mnt, 'many'), join(m.mnt, 'big')], { timeout: 120_000 })
      await waitFor(() => objectCount(device) === 0, 10_000, 100)
    }
    t.ok(queued > 0, `the kill came before the reclaimer: ${queued} blocks were queued`)
    await m.unmount()
    const end = await fsck(m, '--repair')
    t.same(notOrphans(end), [], 'at the end: only orphans', { problems: end.problems })
    const last = await fsck(m)
    t.ok(last.clean && last.objectsListed === 0 && last.reclaimQueue === 0, 'at the end: fsck clean, nothing on the device, nothing queued', { report: last })
  })
}
