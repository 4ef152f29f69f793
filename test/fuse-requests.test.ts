// The FUSE request decoder (src/fs/fuse/requests.ts) on crafted bytes, and the session
// (src/fs/fuse/session.ts) fed those bytes through a fake connection instead of the kernel:
// short, malformed and unknown requests, FORGET, and INTERRUPT's answers.
import t from 'tap'
import fc from 'fast-check'
import { constants } from 'node:os'
import { BufferPool } from '../src/buffer-pool'
import { FsError } from '../src/errors'
import { Connection } from '../src/fs/fuse/connection'
import { GETATTR_FH, IN_HEADER_BYTES, Op, putU64, u64 } from '../src/fs/fuse/protocol'
import { Agreed, decodeRequest, InHeader, readHeader, REQUESTS, WRITE_HEADERS } from '../src/fs/fuse/requests'
import { DEFAULT_SESSION, FuseSession } from '../src/fs/fuse/session'
import { HUGE, MemoryFs } from './helpers/memory-fs'

const E = constants.errno

function u32s (...v: number[]): Buffer {
  const b = Buffer.alloc(4 * v.length)
  v.forEach((x, i) => b.writeUInt32LE(x >>> 0, 4 * i))
  return b
}

function u64s (...v: number[]): Buffer {
  const b = Buffer.alloc(8 * v.length)
  v.forEach((x, i) => putU64(b, 8 * i, x))
  return b
}

const z = (n: number): Buffer => Buffer.alloc(n)
const names = (...s: string[]): Buffer => Buffer.from(s.map(x => x + '\0').join(''))

/** A request: header (its len the whole request's unless `len` says otherwise) and body. */
function request (opcode: number, body: Buffer, o: { unique?: number, nodeid?: number, len?: number } = {}): Buffer {
  const h = Buffer.alloc(IN_HEADER_BYTES)
  h.writeUInt32LE(o.len ?? IN_HEADER_BYTES + body.length, 0)
  h.writeUInt32LE(opcode, 4)
  putU64(h, 8, o.unique ?? 2)
  putU64(h, 16, o.nodeid ?? 1)
  h.writeUInt32LE(1000, 24)
  h.writeUInt32LE(1001, 28)
  h.writeUInt32LE(4242, 32)
  return Buffer.concat([h, body])
}

function header (opcode: number, bodyBytes: number): InHeader {
  return { len: IN_HEADER_BYTES + bodyBytes, opcode, unique: 2, nodeid: 1, uid: 0, gid: 0, pid: 1 }
}

/** A well-formed body for each opcode the session implements. */
const VALID: Array<[number, Buffer]> = [
  [Op.INIT, Buffer.concat([u32s(7, 38, 131072, 0xffffffff), z(48)])],
  [Op.DESTROY, z(0)],
  [Op.FORGET, u64s(3)],
  [Op.BATCH_FORGET, Buffer.concat([u32s(2, 0), u64s(5, 1, 6, 2)])],
  [Op.INTERRUPT, u64s(10)],
  [Op.NOTIFY_REPLY, z(0)],
  [Op.LOOKUP, names('name')],
  [Op.GETATTR, Buffer.concat([u32s(GETATTR_FH, 0), u64s(7)])],
  [Op.SETATTR, Buffer.concat([u32s(0x7f, 0), z(80)])],
  [Op.READLINK, z(0)],
  [Op.SYMLINK, names('link', 'some/target')],
  [Op.MKNOD, Buffer.concat([u32s(0o10644, 5, 0o22, 0), names('fifo')])],
  [Op.MKDIR, Buffer.concat([u32s(0o755, 0o22), names('dir')])],
  [Op.UNLINK, names('x')],
  [Op.RMDIR, names('x')],
  [Op.RENAME, Buffer.concat([u64s(9), names('a', 'b')])],
  [Op.RENAME2, Buffer.concat([u64s(9), u32s(1, 0), names('a', 'b')])],
  [Op.LINK, Buffer.concat([u64s(8), names('l')])],
  [Op.OPEN, u32s(2, 0)],
  [Op.CREATE, Buffer.concat([u32s(0o101, 0o640, 0o22, 0), names('f')])],
  [Op.READ, Buffer.concat([u64s(1, 4096), u32s(8192, 0), z(16)])],
  [Op.WRITE, Buffer.concat([u64s(1, 0), u32s(5, 0), z(16), Buffer.from('hello')])],
  [Op.FLUSH, z(24)],
  [Op.RELEASE, z(24)],
  [Op.FSYNC, Buffer.concat([u64s(1), u32s(1, 0)])],
  [Op.OPENDIR, u32s(0, 0)],
  [Op.READDIR, Buffer.concat([u64s(1, 2), u32s(4096, 0), z(16)])],
  [Op.READDIRPLUS, Buffer.concat([u64s(1, 2), u32s(4096, 0), z(16)])],
  [Op.RELEASEDIR, z(24)],
  [Op.FSYNCDIR, z(16)],
  [Op.STATFS, z(0)],
  [Op.SETXATTR, Buffer.concat([u32s(3, 1), names('user.a'), Buffer.from('abc')])],
  [Op.GETXATTR, Buffer.concat([u32s(100, 0), names('user.a')])],
  [Op.LISTXATTR, u32s(100, 0)],
  [Op.REMOVEXATTR, names('user.a')],
  [Op.FALLOCATE, Buffer.concat([u64s(1, 0, 4096), u32s(3, 0)])],
  [Op.LSEEK, Buffer.concat([u64s(1, 0), u32s(3, 0)])],
  [Op.COPY_FILE_RANGE, u64s(1, 0, 2, 3, 0, 4096, 0)],
  [Op.GETLK, Buffer.concat([u64s(3), Buffer.from('ffeeddccbbaa9988', 'hex'), u64s(100), Buffer.from('ffffffffffffff7f', 'hex'), u32s(1, 4242, 1, 0)])],
  [Op.SETLK, Buffer.concat([u64s(3), Buffer.from('ffeeddccbbaa9988', 'hex'), u64s(100), Buffer.from('ffffffffffffff7f', 'hex'), u32s(1, 4242, 1, 0)])],
  [Op.SETLKW, Buffer.concat([u64s(3), Buffer.from('ffeeddccbbaa9988', 'hex'), u64s(100), Buffer.from('ffffffffffffff7f', 'hex'), u32s(1, 4242, 1, 0)])]
]

/** What decoding gives: 'ok', or the code of the FsError it throws; anything else fails the test. */
function outcome (h: InHeader, body: Buffer, agreed: Agreed = {}): 'ok' | 'EINVAL' | 'ENOSYS' {
  try {
    decodeRequest(h, body, agreed)
    return 'ok'
  } catch (err) {
    if (err instanceof FsError && (err.code === 'EINVAL' || err.code === 'ENOSYS')) return err.code
    throw err
  }
}

t.test('decoding well-formed requests', async t => {
  for (const [opcode, body] of VALID) t.equal(outcome(header(opcode, body.length), body), 'ok', `${REQUESTS.get(opcode)?.name} decodes`)
  const dec = (opcode: number, body: Buffer, nodeid = 1): unknown => decodeRequest({ ...header(opcode, body.length), nodeid }, body)
  t.same(dec(Op.LOOKUP, names('café')), { op: 'lookup', name: 'café' }, 'a UTF-8 name')
  t.same(dec(Op.SYMLINK, names('link', 'some/target')), { op: 'symlink', name: 'link', target: 'some/target' }, 'symlink: name, then target')
  t.same(dec(Op.RENAME2, Buffer.concat([u64s(2 ** 40), u32s(1, 0), names('a', 'b')])),
    { op: 'rename', name: 'a', newParent: 2 ** 40, newName: 'b', flags: 1 }, 'rename2: its flags, a node id past 32 bits')
  t.same(dec(Op.RENAME, Buffer.concat([u64s(9), names('a', 'b')])), { op: 'rename', name: 'a', newParent: 9, newName: 'b', flags: 0 }, 'rename: no flags')
  t.same(dec(Op.GETATTR, Buffer.concat([u32s(0, 0), u64s(7)])), { op: 'getattr', fh: undefined }, 'getattr without GETATTR_FH: no handle')
  t.same(dec(Op.FORGET, u64s(3), 77), { op: 'forget', forgets: [{ ino: 77, nlookup: 3 }] }, 'forget: the node and its count')
  t.same(dec(Op.BATCH_FORGET, Buffer.concat([u32s(2, 0), u64s(5, 1, 6, 2)])),
    { op: 'forget', forgets: [{ ino: 5, nlookup: 1 }, { ino: 6, nlookup: 2 }] }, 'batch_forget: every entry')
  t.same(dec(Op.INTERRUPT, u64s(2 ** 41 + 4)), { op: 'interrupt', target: 2 ** 41 + 4 }, 'interrupt: the unique it names')
  const setattr = dec(Op.SETATTR, Buffer.concat([u32s(0x1 | 0x8 | 0x20, 0), u64s(0, 2 ** 33, 0, 0, 2 ** 31 + 3, 0), u32s(0, 7, 0, 0o640, 0, 0, 0, 0)]))
  t.same(setattr, { op: 'setattr', set: { size: 2 ** 33, mtime: { sec: 2 ** 31 + 3, nsec: 7 }, mode: 0o640 } }, 'setattr: only the valid fields')
  const w = Buffer.concat([u64s(1, 2 ** 35), u32s(5, 0), z(16), Buffer.from('hello')])
  const write = decodeRequest(header(Op.WRITE, w.length), w) as { op: 'write', data: Buffer, offset: number }
  t.equal(write.data.toString(), 'hello', 'write data')
  t.equal(write.offset, 2 ** 35, 'write offset past 32 bits')
  t.equal(write.data.buffer, w.buffer, 'write data is a view of the request, not a copy')
  t.equal(write.data.byteOffset, w.byteOffset + WRITE_HEADERS - IN_HEADER_BYTES, 'at WRITE_HEADERS from the request start')
  const wd = Buffer.concat([u64s(1, 0), u32s(5, 0), u64s(0), u32s(0o40002, 0), Buffer.from('hello')])
  t.equal((dec(Op.WRITE, wd) as { flags: number }).flags, 0o40002, 'write: the open flags (O_DIRECT)')
  t.same(dec(Op.FALLOCATE, Buffer.concat([u64s(7, 2 ** 40, 2 ** 33), u32s(0x3, 0)])),
    { op: 'fallocate', fh: 7, offset: 2 ** 40, length: 2 ** 33, mode: 3 }, 'fallocate: handle, range past 32 bits, mode')
  t.same(dec(Op.LSEEK, Buffer.concat([u64s(7, 2 ** 34), u32s(4, 0)])), { op: 'lseek', fh: 7, offset: 2 ** 34, whence: 4 }, 'lseek: handle, offset, whence')
  t.same(dec(Op.COPY_FILE_RANGE, u64s(1, 2 ** 33, 9, 2, 4096, 2 ** 32, 0)),
    { op: 'copy_file_range', fhIn: 1, offIn: 2 ** 33, nodeOut: 9, fhOut: 2, offOut: 4096, len: 2 ** 32, flags: 0 }, 'copy_file_range: both sides, length')
  const sx = Buffer.concat([u32s(3, 1), names('user.a'), Buffer.from('abc')])
  const setxattr = decodeRequest(header(Op.SETXATTR, sx.length), sx) as { value: Buffer }
  t.same(setxattr, { op: 'setxattr', name: 'user.a', value: Buffer.from('abc'), flags: 1, setxattrFlags: 0 })
  sx.fill(0)
  t.equal(setxattr.value.toString(), 'abc', 'a setxattr value is a copy: the request buffer may be reused')
  // Once FUSE_SETXATTR_EXT is agreed the fixed part is 16 bytes: size, flags, setxattr_flags, padding.
  const sxe = Buffer.concat([u32s(3, 2, 1, 0), names('system.posix_acl_access'), Buffer.from('xyz')])
  t.same(decodeRequest(header(Op.SETXATTR, sxe.length), sxe, { setxattrExt: true }),
    { op: 'setxattr', name: 'system.posix_acl_access', value: Buffer.from('xyz'), flags: 2, setxattrFlags: 1 }, 'setxattr, extended: the ACL kill-SGID flag')
  t.equal(outcome(header(Op.SETXATTR, 12), Buffer.alloc(12), { setxattrExt: true }), 'EINVAL', 'an extended setxattr shorter than its 16-byte struct')
})

t.test('short, unterminated, mislabelled and unknown requests', async t => {
  for (const [opcode, body] of VALID) {
    const min = REQUESTS.get(opcode)!.minBody
    if (min === 0) continue
    const short = body.subarray(0, min - 1)
    t.equal(outcome(header(opcode, short.length), short), 'EINVAL', `${REQUESTS.get(opcode)?.name}: ${min - 1} bytes of ${min}`)
  }
  const lookup = Buffer.from('name')
  t.equal(outcome(header(Op.LOOKUP, 4), lookup), 'EINVAL', 'a name without its NUL')
  // The NUL past the body's end (the buffer goes on: the bytes read end before it) does not count.
  const longer = names('name')
  t.equal(outcome(header(Op.LOOKUP, 4), longer.subarray(0, 4)), 'EINVAL', 'a NUL just past the bytes read')
  t.equal(outcome(header(Op.SYMLINK, 5), names('link')), 'EINVAL', 'symlink without its target')
  t.equal(outcome(header(Op.RENAME, 10), Buffer.concat([u64s(9), names('a')])), 'EINVAL', 'rename without its new name')
  const w = Buffer.concat([u64s(1, 0), u32s(6, 0), z(16), Buffer.from('hello')])
  t.equal(outcome(header(Op.WRITE, w.length), w), 'EINVAL', 'a write that carries less than its size')
  const sx = Buffer.concat([u32s(4, 0), names('user.a'), Buffer.from('abc')])
  t.equal(outcome(header(Op.SETXATTR, sx.length), sx), 'EINVAL', 'a setxattr value shorter than its size')
  const bf = Buffer.concat([u32s(3, 0), u64s(5, 1, 6, 2)])
  t.equal(outcome(header(Op.BATCH_FORGET, bf.length), bf), 'EINVAL', 'a batch_forget with fewer entries than its count')
  const read = VALID.find(([op]) => op === Op.READ)![1]
  t.equal(outcome({ ...header(Op.READ, read.length), len: 200 }, read), 'EINVAL', 'a header length that is not what was read')
  t.equal(outcome(header(9999, 0), z(0)), 'ENOSYS', 'an unknown opcode')
  t.equal(outcome(header(Op.BMAP, 16), z(16)), 'ENOSYS', 'a known opcode bslfs does not implement')
  t.equal(outcome(header(Op.FALLOCATE, 24), z(24)), 'EINVAL', 'a fallocate short of its 32 bytes')
  t.equal(outcome(header(Op.COPY_FILE_RANGE, 48), z(48)), 'EINVAL', 'a copy_file_range short of its 56 bytes')
})

t.test('lock requests, and the lock owners of flush and release', async t => {
  const lk = VALID.find(([op]) => op === Op.SETLKW)![1]
  t.same(decodeRequest(header(Op.SETLKW, lk.length), lk), {
    op: 'setlk', wait: true, lock: { fh: 3, owner: '8899aabbccddeeff', start: 100, end: Number.MAX_SAFE_INTEGER, type: 1, pid: 4242, flock: true }
  }, 'SETLKW: owner in hex, OFFSET_MAX as the end of the file, FUSE_LK_FLOCK')
  const fl = Buffer.concat([u64s(3), u32s(0, 0), Buffer.from('0100000000000080', 'hex')])
  t.same(decodeRequest(header(Op.FLUSH, fl.length), fl), { op: 'flush', fh: 3, lockOwner: '8000000000000001' })
  const rel = (flags: number): Buffer => Buffer.concat([u64s(3), u32s(0, flags), Buffer.from('0200000000000000', 'hex')])
  t.same(decodeRequest(header(Op.RELEASE, 24), rel(2)), { op: 'release', fh: 3, flockOwner: '2' }, 'FUSE_RELEASE_FLOCK_UNLOCK names the flock owner')
  t.same(decodeRequest(header(Op.RELEASE, 24), rel(0)), { op: 'release', fh: 3 }, 'without it, no owner')
})

t.test('random bytes and truncations never throw anything but EINVAL or ENOSYS', async t => {
  const opcodes = [...REQUESTS.keys()]
  fc.assert(fc.property(
    fc.oneof(fc.constantFrom(...opcodes), fc.integer({ min: 0, max: 2 ** 32 - 1 })),
    fc.uint8Array({ maxLength: 400 }),
    fc.option(fc.integer({ min: 0, max: 2 ** 32 - 1 })),
    (opcode, bytes, len) => {
      const body = Buffer.from(bytes)
      const h = header(opcode, body.length)
      outcome(len === null ? h : { ...h, len }, body)
    }), { numRuns: 20000 })
  fc.assert(fc.property(fc.constantFrom(...VALID), fc.nat(), ([opcode, body], cut) => {
    const short = body.subarray(0, body.length === 0 ? 0 : cut % body.length)
    const got = outcome(header(opcode, short.length), short)
    if (short.length < REQUESTS.get(opcode)!.minBody) return got === 'EINVAL'
    return got === 'ok' || got === 'EINVAL'
  }), { numRuns: 5000 })
  // A whole request read from random bytes: the header is there or the session drops it.
  fc.assert(fc.property(fc.uint8Array({ minLength: IN_HEADER_BYTES, maxLength: 300 }), bytes => {
    const b = Buffer.from(bytes)
    outcome(readHeader(b), b.subarray(IN_HEADER_BYTES))
  }), { numRuns: 5000 })
  t.pass('no other error')
})

interface Reply { unique: number, error: number, payload: Buffer }

/** A connection fed by the test: requests pushed in, replies recorded. */
class FakeConnection implements Connection {
  readonly replies: Reply[] = []
  private readonly queue: Buffer[] = []
  private onReadable: ((status: number) => void) | undefined
  closed = false

  watch (onReadable: (status: number) => void): void { this.onReadable = onReadable }

  read (buffer: Buffer): number {
    const next = this.queue.shift()
    if (!next) return -E.EAGAIN
    return next.copy(buffer)
  }

  write (parts: Buffer[]): void {
    const b = Buffer.concat(parts)
    const len = b.readUInt32LE(0)
    if (len !== b.length) throw new Error(`reply says ${len} bytes, has ${b.length}`)
    this.replies.push({ unique: u64(b, 8), error: -b.readInt32LE(4), payload: b.subarray(16) })
  }

  close (): void { this.closed = true }

  push (...requests: Buffer[]): void {
    this.queue.push(...requests)
    this.onReadable?.(0)
  }

  /** The replies to `unique` so far. */
  to (unique: number): Reply[] { return this.replies.filter(r => r.unique === unique) }
}

const turn = (): Promise<void> => new Promise(resolve => setImmediate(resolve))

function serve (mem: MemoryFs, pool?: BufferPool): FakeConnection {
  const conn = new FakeConnection()
  // eslint-disable-next-line no-new
  new FuseSession('/fake', conn, mem, { ...DEFAULT_SESSION, maxWrite: 8192 }, pool)
  conn.push(request(Op.INIT, VALID[0][1], { unique: 1 }))
  return conn
}

t.test('the session answers malformed requests without calling the filesystem', async t => {
  const mem = new MemoryFs()
  const conn = serve(mem)
  t.equal(conn.to(1)[0]?.error, 0, 'INIT answered')
  mem.clear()
  conn.push(Buffer.alloc(20, 0xff))
  t.equal(conn.replies.length, 1, 'a request shorter than its header: dropped, no reply (it has no unique to answer)')
  conn.push(request(Op.LOOKUP, Buffer.from('huge'), { unique: 10 }))
  t.same(conn.to(10).map(r => r.error), [E.EINVAL], 'a name without its NUL: EINVAL')
  conn.push(request(Op.MKDIR, u32s(0o755), { unique: 12 }))
  t.same(conn.to(12).map(r => r.error), [E.EINVAL], 'a short mkdir: EINVAL')
  conn.push(request(Op.LOOKUP, names('huge'), { unique: 14, len: 100 }))
  t.same(conn.to(14).map(r => r.error), [E.EINVAL], 'a header length that is not what was read: EINVAL')
  conn.push(request(4000, z(8), { unique: 16 }))
  t.same(conn.to(16).map(r => r.error), [E.ENOSYS], 'an unknown opcode: ENOSYS')
  conn.push(request(Op.FORGET, z(4), { unique: 18 }))
  t.same(conn.to(18), [], 'a short FORGET: no reply (the kernel waits for none)')
  t.same(mem.calls, [], 'the filesystem saw none of them')
  conn.push(request(Op.LOOKUP, names('huge'), { unique: 20 }))
  await turn()
  t.same(conn.to(20).map(r => r.error), [0], 'a good request after them is answered')
  t.equal(u64(conn.to(20)[0].payload, 0), HUGE.ino, 'with its inode')

  // Garbage of every kind, with a sane header length: answered or dropped, never a crash.
  fc.assert(fc.property(fc.integer({ min: 0, max: 60 }), fc.uint8Array({ maxLength: 200 }), (opcode, bytes) => {
    if (opcode === Op.INIT || opcode === Op.DESTROY) return
    conn.push(request(opcode, Buffer.from(bytes), { unique: 1000, nodeid: 2 ** 50 }))
  }), { numRuns: 2000 })
  await new Promise(resolve => setTimeout(resolve, 50))
  t.notOk(conn.closed, 'the session still serves')
  conn.push(request(Op.LOOKUP, names('huge'), { unique: 22 }))
  await turn()
  t.same(conn.to(22).map(r => r.error), [0], 'and answers')
})

t.test('FORGET and BATCH_FORGET reach the filesystem, unanswered', async t => {
  const mem = new MemoryFs()
  const conn = serve(mem)
  mem.clear()
  conn.push(request(Op.FORGET, u64s(3), { unique: 10, nodeid: 77 }))
  conn.push(request(Op.BATCH_FORGET, Buffer.concat([u32s(2, 0), u64s(5, 1, 2 ** 40, 2)]), { unique: 12 }))
  t.same(mem.of('forget').map(c => c.args), [[77, 3], [5, 1], [2 ** 40, 2]], 'each inode with its count')
  t.same(conn.replies.filter(r => r.unique !== 1), [], 'no replies')
})

t.test('INTERRUPT: a waiting read or write answers EINTR at once; its late answer is dropped', async t => {
  const mem = new MemoryFs()
  const pool = new BufferPool(8192, 8, 4096)
  let outstanding = 0
  const take = pool.take.bind(pool)
  const give = pool.give.bind(pool)
  pool.take = () => { outstanding++; return take() }
  pool.give = b => { outstanding--; give(b) }
  const conn = serve(mem, pool)
  const read = (unique: number): Buffer => request(Op.READ, Buffer.concat([u64s(1, 0), u32s(4096, 0), z(16)]), { unique, nodeid: HUGE.ino })
  const interrupt = (target: number): Buffer => request(Op.INTERRUPT, u64s(target), { unique: target | 1 })

  mem.hang('read')
  conn.push(read(10))
  await turn()
  t.same(conn.to(10), [], 'the read waits')
  t.equal(mem.signals[0]?.aborted, false, 'with a signal not aborted')
  conn.push(interrupt(10))
  t.same(conn.to(10).map(r => r.error), [E.EINTR], 'EINTR at once')
  t.equal(mem.signals[0]?.aborted, true, 'the signal aborted')
  t.same(conn.to(11), [], 'the INTERRUPT itself gets no answer')
  mem.resume()
  await turn()
  t.same(conn.to(10).map(r => r.error), [E.EINTR], 'the late answer is dropped')

  t.equal(outstanding, 0, 'every request buffer given back')
  mem.hang('write')
  const data = Buffer.alloc(8192, 7)
  conn.push(request(Op.WRITE, Buffer.concat([u64s(1, 0), u32s(data.length, 0), z(16), data]), { unique: 20, nodeid: HUGE.ino }))
  await turn()
  t.equal(mem.waiting(), 1, 'the write waits')
  conn.push(interrupt(20))
  t.same(conn.to(20).map(r => r.error), [E.EINTR], 'EINTR at once')
  t.equal(outstanding, 1, 'its buffer still held: the write may still read its data')
  mem.resume()
  await turn()
  await turn()
  t.same(conn.to(20).map(r => r.error), [E.EINTR], 'the late answer is dropped')
  t.equal(outstanding, 0, 'the buffer given back once the write is done')

  mem.clear()
  mem.hang('read')
  conn.push(request(Op.LOOKUP, names('huge'), { unique: 30 }))
  conn.push(interrupt(30))
  await turn()
  t.same(conn.to(30).map(r => r.error), [0], 'a lookup is not cut short: it answers')
  t.same(conn.to(31), [], 'its INTERRUPT gets no answer')

  conn.push(interrupt(40))
  t.same(conn.to(41), [], 'an INTERRUPT for a request not in flight waits')
  conn.push(read(42))
  t.same(conn.to(41).map(r => r.error), [E.EAGAIN], 'the next request lets it have EAGAIN (the kernel drops it, or sends it again)')
  conn.push(interrupt(42))
  t.same(conn.to(42).map(r => r.error), [E.EINTR], 'the read interrupted')

  conn.push(interrupt(50))
  conn.push(read(50))
  t.same(conn.to(50).map(r => r.error), [E.EINTR], 'an INTERRUPT before its request: the request starts interrupted')
  t.same(conn.to(51), [], 'and the INTERRUPT gets no answer')
  mem.resume()
  await turn()
  t.same(conn.to(42).length + conn.to(50).length, 2, 'late answers dropped')
})

t.test('a thrown value that is not an FsError is EIO at the boundary', async t => {
  const mem = new MemoryFs()
  const conn = serve(mem)
  const errors: string[] = []
  // The session logs events as lines on stderr (src/log.ts).
  const write = process.stderr.write
  process.stderr.write = ((chunk: string | Uint8Array) => { errors.push(String(chunk)); return true }) as typeof process.stderr.write
  t.teardown(() => { process.stderr.write = write })
  mem.lookup = async () => { throw Object.assign(new Error('EEXIST: open of a temp file'), { code: 'EEXIST' }) }
  conn.push(request(Op.LOOKUP, names('x'), { unique: 10 }))
  mem.getattr = () => { throw new TypeError('a handler that throws') }
  conn.push(request(Op.GETATTR, z(16), { unique: 12 }))
  await turn()
  t.same(conn.to(10).map(r => r.error), [E.EIO], 'a Node error code does not reach the kernel')
  t.same(conn.to(12).map(r => r.error), [E.EIO], 'a synchronous throw: EIO')
  t.match(errors.join('\n'), /lookup: EEXIST: open of a temp file/, 'logged')
})
