// Coherence of one inode's bytes whichever path a write took (issue 26, point 9): buffered,
// O_DIRECT, Linux AIO (io_submit), io_uring (fio), and mmap with msync. After a write completes,
// a read on any open descriptor of the inode, buffered or direct, returns the new bytes. The
// property test runs random sequences of these through one python process holding every kind of
// descriptor at once, against a byte model; an AIO batch reads the range through the page cache
// while its writes are in flight (what once left old bytes cached after they completed).
import t from 'tap'
import fc from 'fast-check'
import * as fsp from 'node:fs/promises'
import { join } from 'node:path'
import { PYTHON, describeRun, run, target, withMount } from './helpers/mount'

const PAGE = 4096
const FILE_PAGES = 256 // 1 MiB: one bslfs block, and pages of it in every op
const FILE_BYTES = FILE_PAGES * PAGE

/** One step; offsets and lengths in pages (O_DIRECT wants page-aligned I/O). Writes fill with `v`. */
type Op =
  | { k: 'bw' | 'dw' | 'mw', at: number, n: number, v: number }
  | { k: 'aio', writes: Array<{ at: number, n: number, v: number }> }
  | { k: 'br' | 'br2' | 'dr' | 'mr', at: number, n: number }
  | { k: 'fsync' }

/**
 * The driver: fd A buffered read-write (also mmap'd shared), fd B buffered read-only, fd D
 * O_DIRECT read-write. Reads print their bytes as runs [value, count] (a stale page shows as a run
 * of its old value).
 */
const DRIVER = String.raw`
import os, sys, json, mmap, ctypes
path, ops = sys.argv[1], json.loads(sys.stdin.read())
P = 4096
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
class iocb(ctypes.Structure):
    _fields_ = [('data', ctypes.c_uint64), ('key', ctypes.c_uint32), ('rw_flags', ctypes.c_int32),
                ('opcode', ctypes.c_uint16), ('reqprio', ctypes.c_int16), ('fildes', ctypes.c_uint32),
                ('buf', ctypes.c_uint64), ('nbytes', ctypes.c_uint64), ('offset', ctypes.c_int64),
                ('reserved2', ctypes.c_uint64), ('flags', ctypes.c_uint32), ('resfd', ctypes.c_uint32)]
class io_event(ctypes.Structure):
    _fields_ = [('data', ctypes.c_uint64), ('obj', ctypes.c_uint64), ('res', ctypes.c_int64), ('res2', ctypes.c_int64)]
SYS_io_setup, SYS_io_getevents, SYS_io_submit = 206, 208, 209
ctx = ctypes.c_ulong(0)
if libc.syscall(ctypes.c_long(SYS_io_setup), ctypes.c_long(64), ctypes.byref(ctx)) != 0:
    raise OSError(ctypes.get_errno(), 'io_setup')
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
os.pwrite(fd, bytes(${FILE_BYTES}), 0)
os.fsync(fd)
A = fd
B = os.open(path, os.O_RDONLY)
D = os.open(path, os.O_RDWR | os.O_DIRECT)
m = mmap.mmap(A, ${FILE_BYTES}, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
def aligned(n, v=0):
    b = mmap.mmap(-1, n)
    if v:
        b.write(bytes([v]) * n)
    return b
def addr(b):
    return ctypes.addressof(ctypes.c_char.from_buffer(b))
def runs(data):
    out, i = [], 0
    while i < len(data):
        j = i
        while j < len(data) and data[j] == data[i]:
            j += 1
        out.append([data[i], j - i]); i = j
    return out
out = []
for op in ops:
    k = op['k']
    if k == 'bw':
        os.pwrite(A, bytes([op['v']]) * (op['n'] * P), op['at'] * P)
    elif k == 'dw':
        b = aligned(op['n'] * P, op['v'])
        assert os.pwrite(D, b, op['at'] * P) == op['n'] * P
        b.close()
    elif k == 'mw':
        m[op['at'] * P:(op['at'] + op['n']) * P] = bytes([op['v']]) * (op['n'] * P)
        m.flush(op['at'] * P, op['n'] * P)
    elif k == 'aio':
        bufs, cbs = [], []
        for w in op['writes']:
            b = aligned(w['n'] * P, w['v'])
            bufs.append(b)
            cbs.append(iocb(data=len(cbs), opcode=1, fildes=D, buf=addr(b), nbytes=w['n'] * P, offset=w['at'] * P))
        ptrs = (ctypes.POINTER(iocb) * len(cbs))(*[ctypes.pointer(c) for c in cbs])
        n = libc.syscall(ctypes.c_long(SYS_io_submit), ctx, ctypes.c_long(len(cbs)), ptrs)
        if n != len(cbs):
            raise OSError(ctypes.get_errno(), 'io_submit gave %d' % n)
        for w in op['writes']:
            os.pread(B, w['n'] * P, w['at'] * P)  # pages cached while the writes are in flight
        evs = (io_event * len(cbs))()
        got = 0
        while got < len(cbs):
            r = libc.syscall(ctypes.c_long(SYS_io_getevents), ctx, ctypes.c_long(1), ctypes.c_long(len(cbs) - got), ctypes.byref(evs, got * ctypes.sizeof(io_event)), None)
            if r < 0:
                raise OSError(ctypes.get_errno(), 'io_getevents')
            got += r
        for e in evs:
            if e.res != cbs[e.data].nbytes:
                raise OSError(-e.res if e.res < 0 else 0, 'aio write gave %d' % e.res)
        for b in bufs:
            b.close()
    elif k == 'fsync':
        os.fsync(A)  # stored blocks: a partial write must read the old block first
    elif k in ('br', 'br2'):
        out.append(runs(os.pread(A if k == 'br' else B, op['n'] * P, op['at'] * P)))
    elif k == 'dr':
        b = aligned(op['n'] * P)
        n = os.preadv(D, [b], op['at'] * P)
        out.append(runs(bytes(b[:n])))
        b.close()
    elif k == 'mr':
        out.append(runs(m[op['at'] * P:(op['at'] + op['n']) * P]))
print(json.dumps(out))
`

function runsOf (b: Buffer): Array<[number, number]> {
  const out: Array<[number, number]> = []
  for (let i = 0; i < b.length;) {
    let j = i
    while (j < b.length && b[j] === b[i]) j++
    out.push([b[i]!, j - i])
    i = j
  }
  return out
}

const range = fc.integer({ min: 0, max: FILE_PAGES - 1 }).chain(at => fc.record({ at: fc.constant(at), n: fc.integer({ min: 1, max: Math.min(32, FILE_PAGES - at) }) }))
const value = fc.integer({ min: 1, max: 255 })
const write = (k: 'bw' | 'dw' | 'mw') => fc.tuple(range, value).map(([r, v]): Op => ({ k, ...r, v }))
const read = (k: 'br' | 'br2' | 'dr' | 'mr') => range.map((r): Op => ({ k, ...r }))
/** Up to 8 non-overlapping direct writes (their order within a batch is the kernel's), each range read through the cache meanwhile. */
const aio = fc.tuple(fc.uniqueArray(fc.integer({ min: 0, max: FILE_PAGES / 16 - 1 }), { minLength: 1, maxLength: 8 }), fc.array(value, { minLength: 8, maxLength: 8 }),
  fc.integer({ min: 1, max: 16 }))
  .map(([slots, vs, n]): Op => ({ k: 'aio', writes: slots.map((s, i) => ({ at: s * 16, n, v: vs[i]! })) }))
const op: fc.Arbitrary<Op> = fc.oneof(write('bw'), write('dw'), write('mw'), aio, aio, read('br'), read('br2'), read('dr'), read('mr'), fc.constant<Op>({ k: 'fsync' }))

if (target !== 'bslfs' && target !== 'native') {
  t.comment(`coherence tests: not registered for ${target}`)
} else {
  t.test('coherence of buffered, direct, AIO and mmap I/O on one inode', async (t) => {
    const m = await withMount(t)
    let runNo = 0
    await fc.assert(fc.asyncProperty(fc.array(op, { minLength: 4, maxLength: 24 }), async (ops) => {
      // Every read is followed by reads of the same range through the other descriptors.
      const model = Buffer.alloc(FILE_BYTES)
      const expected: Array<Array<[number, number]>> = []
      for (const o of ops) {
        if (o.k === 'bw' || o.k === 'dw' || o.k === 'mw') model.fill(o.v, o.at * PAGE, (o.at + o.n) * PAGE)
        else if (o.k === 'aio') for (const w of o.writes) model.fill(w.v, w.at * PAGE, (w.at + w.n) * PAGE)
        else if (o.k !== 'fsync') expected.push(runsOf(model.subarray(o.at * PAGE, (o.at + o.n) * PAGE)))
      }
      const file = join(m.mnt, `c${++runNo}`)
      const r = await run(PYTHON, ['-c', DRIVER, file], { input: JSON.stringify(ops), timeout: 60_000 })
      if (r.code !== 0) throw new Error(`driver failed:\n${describeRun(r)}`)
      const got = JSON.parse(r.stdout) as Array<Array<[number, number]>>
      await fsp.rm(file)
      const bad = got.findIndex((g, i) => JSON.stringify(g) !== JSON.stringify(expected[i]))
      if (bad >= 0) throw new Error(`read ${bad} returned ${JSON.stringify(got[bad])}, the model has ${JSON.stringify(expected[bad])}`)
    }), { numRuns: 12 })
    t.pass('every read matched the model in 12 random sequences')
  })

  t.test('AIO O_DIRECT writes with buffered reads of their ranges in flight: no old page after completion', async (t) => {
    const m = await withMount(t)
    // The race the property test samples, 80 times over: 8 direct writes of 64 KiB into stored
    // blocks submitted at once, their ranges read through the page cache before they complete.
    const ops: Op[] = [{ k: 'fsync' }]
    const expected: Array<Array<[number, number]>> = []
    for (let it = 0; it < 80; it++) {
      const v = (it % 255) + 1
      const writes = Array.from({ length: 8 }, (_, k) => ({ at: k * 32 + 1, n: 16, v }))
      ops.push({ k: 'aio', writes })
      for (const w of writes) {
        ops.push({ k: 'br2', at: w.at, n: w.n })
        expected.push([[v, w.n * PAGE]])
      }
      if (it % 5 === 4) ops.push({ k: 'fsync' })
    }
    const r = await run(PYTHON, ['-c', DRIVER, join(m.mnt, 'race')], { input: JSON.stringify(ops), timeout: 120_000 })
    t.equal(r.code, 0, 'the driver ran', { run: describeRun(r) })
    const got = JSON.parse(r.stdout) as Array<Array<[number, number]>>
    const stale = got.filter((g, i) => JSON.stringify(g) !== JSON.stringify(expected[i])).length
    t.equal(stale, 0, `no buffered read after a completed AIO write returned old bytes (${got.length} reads)`)
  })

  t.test('fio: io_uring and libaio direct writes, then buffered reads see them', async (t) => {
    const m = await withMount(t)
    for (const [engine, pattern] of [['io_uring', '0xab'], ['libaio', '0xcd']] as const) {
      const f = join(m.mnt, `fio.${engine}`)
      await fsp.writeFile(f, Buffer.alloc(4 << 20, 0x11))
      // The old bytes in the page cache (kept across opens: keep_cache).
      const held = await fsp.open(f, 'r')
      const before = await held.read(Buffer.alloc(4 << 20), 0, 4 << 20, 0)
      t.equal(before.bytesRead, 4 << 20, `${engine}: the old bytes are cached`)
      const r = await run('fio', ['--name=w', `--filename=${f}`, `--ioengine=${engine}`, '--direct=1', '--rw=randwrite', '--bs=4k',
        '--size=4m', '--iodepth=32', `--buffer_pattern=${pattern}`, '--norandommap', '--randrepeat=0', '--io_size=8m'], { timeout: 60_000 })
      if (r.code !== 0 && /io_uring/.test(r.stderr) && engine === 'io_uring') {
        t.comment(`fio cannot use io_uring here: ${r.stderr.trim().split('\n').pop()}`)
        await held.close()
        continue
      }
      t.equal(r.code, 0, `fio ${engine} ran`, { run: describeRun(r) })
      // fio wrote random 4 KiB pages with the pattern; every page is old or new, never mixed, and
      // what a buffered read (the open descriptor, its pages cached before) sees is what O_DIRECT reads.
      const viaCache = Buffer.alloc(4 << 20)
      await held.read(viaCache, 0, 4 << 20, 0)
      await held.close()
      const d = await run(PYTHON, ['-c', `
import os, sys, mmap, hashlib
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
b = mmap.mmap(-1, 4 << 20)
n = os.preadv(fd, [b], 0)
print(hashlib.sha256(b[:n]).hexdigest())`, f])
      t.equal(d.code, 0, 'direct read', { run: describeRun(d) })
      const { createHash } = await import('node:crypto')
      t.equal(createHash('sha256').update(viaCache).digest('hex'), d.stdout.trim(), `${engine}: the buffered descriptor sees what fio wrote directly`)
      const newPages = Array.from({ length: 1024 }, (_, i) => viaCache[i * 4096]).filter(x => x === Number(pattern)).length
      t.ok(newPages > 0, `${engine}: ${newPages} pages hold fio's pattern`)
    }
  })
}
