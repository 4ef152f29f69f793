import t from 'tap'
import * as fsp from 'node:fs/promises'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { execFileSync } from 'node:child_process'
import { LocalDevice, MARKER_FILE } from '../src/devices/local'
import { handleLimit } from '../src/devices/handles'
import { checksum } from '../src/checksum'
import { alignedBuffer, readCached } from '../src/devices/object-io'
import { FsError } from '../src/errors'
import { childEnv } from './helpers/server'

const names = { server: 'local', device: 'd0' }

async function fresh (t: tap.Test): Promise<{ dir: string, dev: LocalDevice }> {
  const dir = join(t.testdir(), 'dev')
  const dev = await LocalDevice.create(dir, names)
  t.teardown(() => dev.close())
  return { dir, dev }
}

async function walk (dir: string): Promise<string[]> {
  const out: string[] = []
  for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    if (e.isDirectory()) out.push(...await walk(p))
    else out.push(p)
  }
  return out.sort()
}

const id1 = '0000000000000abc'
const id2 = 'ffffffffffffffff'

t.test('create writes the marker and layout', async t => {
  const { dir, dev } = await fresh(t)
  const m = JSON.parse(await fsp.readFile(join(dir, MARKER_FILE), 'utf8'))
  t.equal(m.format, 'bslfs-device')
  t.equal(m.version, 1)
  t.equal(m.server, 'local')
  t.equal(m.device, 'd0')
  t.match(m.id, /^[0-9a-f-]{36}$/)
  t.ok(!Number.isNaN(Date.parse(m.created)))
  t.equal(dev.id, m.id)
  t.equal(dev.label, 'local:d0')
  t.same((await fsp.readdir(dir)).sort(), [MARKER_FILE, 'objects', 'tmp'])
  // Creating again with the same names opens it; different names are refused.
  const again = await LocalDevice.create(dir, names)
  t.equal(again.id, m.id)
  await t.rejects(LocalDevice.create(dir, { server: 'local', device: 'd1' }), /already bslfs device local:d0/)
  await t.rejects(LocalDevice.create(join(dir, 'x'), { server: 'local', device: '../d' }), /bad device name/)
})

t.test('put/get round trip, stat, delete, list', async t => {
  const { dev } = await fresh(t)
  const a = randomBytes(100_000)
  const b = Buffer.alloc(0)
  await dev.put(id1, a, checksum(a))
  await dev.put(id2, b, checksum(b))
  t.same(await dev.get(id1, checksum(a)), a)
  t.same(await dev.get(id2, checksum(b)), b)
  t.same(await dev.stat(id1), { size: 100_000 })
  t.same(await dev.stat(id2), { size: 0 })
  t.equal(await dev.stat('0000000000000001'), null)
  // Idempotent put of the same bytes.
  await dev.put(id1, a, checksum(a))
  t.same(await dev.get(id1, checksum(a)), a)

  const ids = ['0000000000000001', '0000000000000101', '00000000000000ff']
  for (const id of ids) await dev.put(id, Buffer.from(id), checksum(Buffer.from(id)))
  const listed: string[] = []
  for await (const id of dev.list()) listed.push(id)
  t.same(listed.sort(), [...ids, id1, id2].sort())

  await dev.delete(id1)
  await dev.delete(id1) // idempotent
  t.equal(await dev.stat(id1), null)
  const after: string[] = []
  for await (const id of dev.list()) after.push(id)
  t.notOk(after.includes(id1))
})

t.test('objects are stored under a fan-out dir', async t => {
  const { dir, dev } = await fresh(t)
  const d = Buffer.from('hello')
  await dev.put(id1, d, checksum(d))
  t.same(await fsp.readFile(join(dir, 'objects', 'bc', id1)), d)
  t.same(await fsp.readdir(join(dir, 'tmp')), [])
})

t.test('list skips anything that is not an object in its place', async t => {
  const { dir, dev } = await fresh(t)
  const d = Buffer.from('x')
  await dev.put(id1, d, checksum(d))
  await fsp.writeFile(join(dir, 'objects', 'bc', 'junk'), 'x')
  await fsp.writeFile(join(dir, 'objects', 'bc', '0000000000000aaa'), 'x') // wrong fan-out dir
  await fsp.mkdir(join(dir, 'objects', 'zz'))
  await fsp.writeFile(join(dir, 'objects', 'zz', '00000000000000zz'), 'x')
  await fsp.writeFile(join(dir, 'objects', 'ab'), 'not a dir')
  const listed: string[] = []
  for await (const id of dev.list()) listed.push(id)
  t.same(listed, [id1])
})

t.test('a corrupt object fails with EIO and never returns bytes', async t => {
  const { dir, dev } = await fresh(t)
  const d = randomBytes(4096)
  const sum = checksum(d)
  await dev.put(id1, d, sum)
  const file = join(dir, 'objects', 'bc', id1)
  for (const at of [0, 2048, 4095]) {
    const c = Buffer.from(d)
    c[at] ^= 0x01
    await fsp.writeFile(file, c)
    await t.rejects(dev.get(id1, sum), { code: 'EIO', message: /checksum mismatch on local:d0 object 0000000000000abc/ })
  }
  // Truncated and extended copies too.
  await fsp.writeFile(file, d.subarray(0, 4000))
  await t.rejects(dev.get(id1, sum), { code: 'EIO', message: /checksum mismatch/ })
  await fsp.writeFile(file, Buffer.concat([d, Buffer.from([0])]))
  await t.rejects(dev.get(id1, sum), { code: 'EIO', message: /checksum mismatch/ })
  // A wrong expected checksum is the same failure.
  await fsp.writeFile(file, d)
  await t.rejects(dev.get(id1, (sum ^ 1) >>> 0), { code: 'EIO' })
  // A checksum that is not a uint32 is a caller bug, refused outright.
  for (const s of [-1, 1.5, NaN, 2 ** 32]) {
    await t.rejects(dev.get(id1, s), { code: 'EINVAL', message: /bad checksum/ })
    await t.rejects(dev.put(id1, d, s), { code: 'EINVAL', message: /bad checksum/ })
  }
  // A put of the right bytes heals the corrupt copy.
  const c = Buffer.from(d)
  c[7] ^= 0xff
  await fsp.writeFile(file, c)
  await dev.put(id1, d, sum)
  t.same(await dev.get(id1, sum), d)
})

t.test('large objects are read past the page cache: any size, into a buffer or not, with or without O_DIRECT', async t => {
  const dirs = [join(t.testdir(), 'disk')]
  // tmpfs refuses O_DIRECT: its reads go the ordinary way.
  const shm = await fsp.mkdtemp('/dev/shm/bslfs-test-').catch(() => null)
  if (shm !== null) {
    t.teardown(() => fsp.rm(shm, { recursive: true, force: true }))
    dirs.push(join(shm, 'dev'))
  }
  const MiB = 1 << 20
  for (const dir of dirs) {
    const dev = await LocalDevice.create(dir, names)
    t.teardown(() => dev.close())
    const sizes = [256 * 1024 - 1, 256 * 1024, 256 * 1024 + 1, MiB - 4095, MiB, 3 * MiB + 5]
    for (const [i, size] of sizes.entries()) {
      const data = randomBytes(size)
      const sum = checksum(data)
      const id = (0x100 + i).toString(16).padStart(16, '0')
      await dev.put(id, data, sum)
      const what = `${size} bytes on ${dir.startsWith('/dev/shm') ? 'tmpfs' : 'disk'}`
      t.ok((await dev.get(id, sum)).equals(data), `${what}: a buffer of its own`)
      const into = alignedBuffer(MiB)
      const got = await dev.get(id, sum, undefined, into)
      t.ok(got.equals(data), `${what}: into an aligned buffer`)
      t.equal(got.buffer === into.buffer, size <= MiB, `${what}: in that buffer only when it fits`)
      const odd = Buffer.alloc(MiB + 1).subarray(1)
      t.ok((await dev.get(id, sum, undefined, odd)).equals(data), `${what}: into a buffer off the alignment`)
    }
    // A copy rewritten through the page cache (still dirty there) is what a direct read sees.
    const id = '0000000000000105'
    const file = join(dir, 'objects', id.slice(-2), id)
    const good = await fsp.readFile(file)
    const bad = Buffer.from(good)
    bad[MiB] ^= 1
    await fsp.writeFile(file, bad)
    await t.rejects(dev.get(id, checksum(good)), { code: 'EIO', message: /checksum mismatch/ }, 'a byte flipped through the page cache is seen')
    t.ok((await dev.get(id, checksum(bad))).equals(bad), 'the new bytes, not the old ones')
  }
})

t.test('getRange reads a byte range without verifying it', async t => {
  const { dir, dev } = await fresh(t)
  const d = randomBytes(100_000)
  await dev.put(id1, d, checksum(d))
  for (const [off, len] of [[0, 1], [0, d.length], [32768, 32768], [99_999, 1], [12_345, 4096]]) {
    t.same(await dev.getRange(id1, off, len), d.subarray(off, off + len), `bytes ${off}+${len}`)
  }
  // Unverified: a rotted byte comes back as it is (the caller checks chunk sums).
  const rotten = Buffer.from(d)
  rotten[40_000] ^= 0x10
  await fsp.writeFile(join(dir, 'objects', 'bc', id1), rotten)
  t.same(await dev.getRange(id1, 32768, 32768), rotten.subarray(32768, 65536), 'the bytes on disk, unchecked')
  await t.rejects(dev.getRange(id1, 99_000, 2000), { code: 'EIO', fault: 'corrupt', message: /ends before bytes 99000\.\.101000/ }, 'a range past the end is a short (corrupt) object')
  await t.rejects(dev.getRange(id1, 200_000, 10), { code: 'EIO', fault: 'corrupt' }, 'far past the end')
  const missing = await dev.getRange(id2, 0, 10).then(() => null, (e: unknown) => e)
  t.match(missing, { code: 'EIO', fault: 'missing', message: /object ffffffffffffffff is missing on local:d0/ }, 'a missing object')
  for (const [off, len] of [[-1, 10], [0, 0], [0, -5], [1.5, 10], [0, 2.5], [NaN, 1], [0, 2 ** 40]]) {
    await t.rejects(dev.getRange(id1, off, len), { code: 'EINVAL', message: /bad range/ }, `range ${off}+${len} refused`)
  }
  await t.rejects(dev.getRange('../etc/passwd', 0, 1), { code: 'EINVAL', message: /bad object id/ })

  // Handles are kept open between reads; a put that heals the copy (a new file renamed over it) and a delete are seen at once.
  const moved = Buffer.from(rotten)
  moved[10] ^= 0x01
  await fsp.writeFile(join(dir, 'objects', 'bc', id1), moved)
  t.equal((await dev.getRange(id1, 0, 20))[10], moved[10], 'a handle open on the rotted copy')
  await dev.put(id1, d, checksum(d))
  t.same(await dev.getRange(id1, 0, 65536), d.subarray(0, 65536), 'after a healing put: the new bytes, not the old file')
  await dev.delete(id1)
  await t.rejects(dev.getRange(id1, 0, 10), { code: 'EIO', fault: 'missing' }, 'after a delete: missing')
  const many = await Promise.all(Array.from({ length: 20 }, (_v, i) => dev.getRange(id2, 0, 1).catch(() => i)))
  t.same(many, Array.from({ length: 20 }, (_v, i) => i), 'concurrent reads of a missing object all fail')
})

t.test('a missing object is EIO with a message that says missing', async t => {
  const { dev } = await fresh(t)
  const err = await dev.get(id1, 0).then(() => null, (e: unknown) => e)
  t.ok(err instanceof FsError)
  t.equal((err as FsError).code, 'EIO')
  t.match((err as FsError).message, /object 0000000000000abc is missing on local:d0/)
  t.equal(((err as FsError).cause as NodeJS.ErrnoException).code, 'ENOENT')
})

t.test('bad object ids are rejected before touching the disk', async t => {
  const { dir, dev } = await fresh(t)
  // Remove the objects dir: any disk access would now fail with EIO, not EINVAL.
  await fsp.rm(join(dir, 'objects'), { recursive: true })
  const d = Buffer.from('x')
  const bad = ['../x', '', 'ABCDEF0123456789', '0000000000000abcd', '000000000000abc', '0000000000000ab\0',
    '../../../../etc/p', '00000000000000/x', '0000000000000abc\n', ' 000000000000abc']
  for (const id of bad) {
    const what = JSON.stringify(id)
    await t.rejects(dev.put(id, d, checksum(d)), { code: 'EINVAL', message: /bad object id/ }, `put ${what}`)
    await t.rejects(dev.get(id, checksum(d)), { code: 'EINVAL' }, `get ${what}`)
    await t.rejects(dev.delete(id), { code: 'EINVAL' }, `delete ${what}`)
    await t.rejects(dev.stat(id), { code: 'EINVAL' }, `stat ${what}`)
  }
  t.same(await fsp.readdir(join(dir, 'tmp')), [])
  t.same((await fsp.readdir(dir)).sort(), [MARKER_FILE, 'tmp'])
})

t.test('a put with a wrong checksum is caught by the read', async t => {
  const { dev } = await fresh(t)
  const d = Buffer.from('some data')
  const wrong = (checksum(d) ^ 0x10) >>> 0
  // The device records what its caller vouches for; the read's check is what keeps bad bytes out.
  await dev.put(id1, d, wrong)
  await t.rejects(dev.get(id1, wrong), { code: 'EIO', message: /checksum mismatch/ })
  t.same(await dev.get(id1, checksum(d)), d, 'the bytes themselves are stored whole')
})

t.test('a failed put removes its temp file and maps errors', async t => {
  const { dir, dev } = await fresh(t)
  const d = Buffer.from('data')
  // Make the fan-out name a file so mkdir/rename fails after the temp file is written.
  await fsp.writeFile(join(dir, 'objects', 'bc'), 'blocker')
  await t.rejects(dev.put(id1, d, checksum(d)), { code: 'EIO', message: /put of object 0000000000000abc on local:d0 failed/ })
  t.same(await fsp.readdir(join(dir, 'tmp')), [])
  // A directory where the object should be: the temp file is written, the rename fails, the temp goes.
  await fsp.mkdir(join(dir, 'objects', 'cd', '0000000000000bcd'), { recursive: true })
  await fsp.writeFile(join(dir, 'objects', 'cd', '0000000000000bcd', 'x'), 'x')
  await t.rejects(dev.put('0000000000000bcd', d, checksum(d)), { code: 'EIO' })
  t.same(await fsp.readdir(join(dir, 'tmp')), [])
})

t.test('open cleans leftover temp files and checks the marker', async t => {
  const { dir } = await fresh(t)
  await fsp.writeFile(join(dir, 'tmp', `${id1}.deadbeef0000`), 'half a block')
  await fsp.mkdir(join(dir, 'tmp', 'strange-dir'))
  const dev = await LocalDevice.open(dir, names)
  t.same(await fsp.readdir(join(dir, 'tmp')), [])
  t.equal(dev.label, 'local:d0')
  await dev.close()
  await t.rejects(dev.get(id1, 0), { code: 'EIO', message: /closed/ })
  await t.rejects(LocalDevice.open(dir, { server: 'local', device: 'd9' }), /is bslfs device local:d0, expected local:d9/)
})

t.test('create refuses a non-empty directory that is not a device', async t => {
  const dir = t.testdir({ 'notes.txt': 'precious' })
  await t.rejects(LocalDevice.create(dir, names), /not empty and is not a bslfs device \(found "notes.txt"\)/)
  t.same(await fsp.readdir(dir), ['notes.txt'])
  // What an interrupted create leaves behind is fine.
  const half = t.testdir({ objects: {}, tmp: {}, [`${MARKER_FILE}.0123456789ab.tmp`]: '{' })
  const dev = await LocalDevice.create(half, names)
  t.same((await fsp.readdir(half)).sort(), [MARKER_FILE, 'objects', 'tmp'])
  await dev.close()
  // ...but not an objects/ with content in it.
  const full = t.testdir({ objects: { bc: { [id1]: 'x' } } })
  await t.rejects(LocalDevice.create(full, names), /found "objects"/)
  // A regular file where the directory should be.
  const file = join(t.testdir({ f: 'x' }), 'f')
  await t.rejects(LocalDevice.create(file, names), /exists and is not a directory/)
})

t.test('open refuses a directory without a valid marker', async t => {
  const empty = t.testdir({})
  await t.rejects(LocalDevice.open(empty, names), new RegExp(`${empty} is not a bslfs device \\(no ${MARKER_FILE}\\); create one with`))
  await t.rejects(LocalDevice.open(join(empty, 'nope'), names), /is not a bslfs device \(the directory does not exist\)/)
  const file = join(t.testdir({ f: 'x' }), 'f')
  await t.rejects(LocalDevice.open(file, names), /is not a bslfs device \(it is not a directory\)/)
  await t.rejects(LocalDevice.open(t.testdir({ [MARKER_FILE]: 'not json', objects: {} }), names), /not valid JSON/)
  await t.rejects(LocalDevice.open(t.testdir({ [MARKER_FILE]: '{"format":"other"}', objects: {} }), names), /does not have format "bslfs-device"/)
  await t.rejects(LocalDevice.open(t.testdir({ [MARKER_FILE]: '{"format":"bslfs-device","version":2}', objects: {} }), names), /version 2.*newer bslfs/)
  const { dir } = await fresh(t)
  await fsp.rm(join(dir, 'objects'), { recursive: true })
  await t.rejects(LocalDevice.open(dir, names), /damaged: .*objects is missing/)
})

t.test('space() returns sane numbers', async t => {
  const { dev } = await fresh(t)
  const s = await dev.space()
  t.ok(Number.isSafeInteger(s.total) && s.total > 0, `total ${s.total}`)
  t.ok(s.free >= 0 && s.free <= s.total, `free ${s.free}`)
  t.ok(s.available >= 0 && s.available <= s.free, `available ${s.available}`)
})

t.test('concurrent puts of many objects', async t => {
  const { dev } = await fresh(t)
  const blobs = Array.from({ length: 200 }, (_, i) => ({ id: i.toString(16).padStart(16, '0'), data: randomBytes(i * 37) }))
  await Promise.all(blobs.map(b => dev.put(b.id, b.data, checksum(b.data))))
  for (const b of blobs) t.same(await dev.get(b.id, checksum(b.data)), b.data)
  let n = 0
  for await (const _ of dev.list()) n++
  t.equal(n, 200)
})

t.test('open handles kept for random reads: sized from the descriptor limit', async t => {
  const limits = (soft: string): string => `Limit                     Soft Limit           Hard Limit           Units\nMax open files            ${soft}                 1048576              files\n`
  t.equal(handleLimit(limits('1048576')), 2048, 'a large limit: enough for a 2 GiB file, no more')
  t.equal(handleLimit(limits('unlimited')), 2048)
  t.equal(handleLimit(limits('4096')), 512, 'an eighth of the limit')
  t.equal(handleLimit(limits('256')), 64, 'never fewer than 64')
  t.equal(handleLimit(''), 512, 'no /proc: as for a limit of 4096')
  t.ok(handleLimit() >= 64 && handleLimit() <= 2048, `this process: ${handleLimit()}`)
})

t.test('readCached answers from the page cache only, and getRange reads the rest', async t => {
  const { dir, dev } = await fresh(t)
  const file = join(dir, '..', 'cached')
  const d = randomBytes(256 * 1024)
  await fsp.writeFile(file, d)
  const fh = await fsp.open(file, 'r')
  t.teardown(() => fh.close())
  const into = Buffer.alloc(8192)
  t.equal(readCached(fh.fd, into, 4096, file), 8192, 'a file just written is in the page cache')
  t.same(into, d.subarray(4096, 4096 + 8192), 'its bytes')
  t.equal(readCached(fh.fd, into, d.length - 100, file), 100, 'at the end: what is there')
  t.equal(readCached(fh.fd, into, d.length + 10, file), 0, 'past the end: nothing')

  // Out of the page cache (dd's nocache drops a file's clean pages): never waits for the disk.
  await fh.sync()
  execFileSync('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none'])
  const big = Buffer.alloc(d.length)
  t.ok(readCached(fh.fd, big, 0, file) < d.length, 'an evicted file is not answered whole from the cache')

  // The device reads an evicted object through the thread pool: the same bytes either way.
  await dev.put(id1, d, checksum(d))
  const obj = join(dir, 'objects', 'bc', id1)
  execFileSync('dd', [`if=${obj}`, 'iflag=nocache', 'count=0', 'status=none'])
  t.same(await dev.getRange(id1, 65536, 131072), d.subarray(65536, 65536 + 131072), 'an evicted range')
  t.same(await dev.getRange(id1, 65536, 131072), d.subarray(65536, 65536 + 131072), 'the same range, now cached')
  t.same(await dev.stat(id1), { size: d.length }, 'stat through the kept handle')

  const closed = await fsp.open(file, 'r')
  const fd = closed.fd
  await closed.close()
  t.throws(() => readCached(fd, into, 0, file), { code: 'EBADF', message: /pread/ }, 'a real error is thrown with its code')
})

t.test('a read the process has no descriptor for (EMFILE) is a transient fault, not a corrupt copy', async t => {
  const { dir, dev } = await fresh(t)
  const data = randomBytes(5000)
  await dev.put(id1, data, checksum(data))
  await dev.close()
  // A process of its own, its descriptors used up under a low limit (this one's is too high to fill).
  const dist = join(__dirname, '..', 'dist')
  const script = `
    const fs = require('node:fs')
    const { LocalDevice } = require(${JSON.stringify(join(dist, 'devices', 'local.js'))})
    const shown = e => ({ code: e.code, fault: e.fault, message: e.message })
    ;(async () => {
      const dev = await LocalDevice.open(${JSON.stringify(dir)}, ${JSON.stringify(names)})
      // A first read loads the object I/O addon, which needs a descriptor of its own.
      await dev.get(${JSON.stringify(id1)}, ${checksum(data)})
      const fds = []
      try { for (;;) fds.push(fs.openSync('/dev/null', 'r')) } catch (e) { if (e.code !== 'EMFILE') throw e }
      const out = {}
      await dev.get(${JSON.stringify(id1)}, ${checksum(data)}).then(() => { out.get = 'read' }, e => { out.get = shown(e) })
      await dev.getRange(${JSON.stringify(id1)}, 0, 10).then(() => { out.range = 'read' }, e => { out.range = shown(e) })
      for (const fd of fds) fs.closeSync(fd)
      out.after = (await dev.get(${JSON.stringify(id1)}, ${checksum(data)})).length
      console.log(JSON.stringify(out))
    })().catch(e => { console.error(e); process.exit(1) })`
  const out = JSON.parse(execFileSync('prlimit', ['--nofile=256', process.execPath, '-e', script], { encoding: 'utf8', env: childEnv() }))
  for (const what of ['get', 'range']) {
    t.equal(out[what].code, 'EIO', `${what}: EIO for the reader`)
    t.equal(out[what].fault, 'transient', `${what}: fault transient (${out[what].message})`)
    t.match(out[what].message, /EMFILE/, `${what}: says why`)
  }
  t.equal(out.after, data.length, 'once descriptors are free again the copy reads whole')
})
