import t, { Test } from 'tap'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { CHUNK_BYTES, checksum, chunkSums } from '../src/checksum'
import { BSL } from '../src/bsl'
import { Directory, OpenInodes } from '../src/directory/directory'
import { LevelKv } from '../src/directory/leveldb'
import { BlockRecord, keys } from '../src/directory/records'
import { FsError } from '../src/errors'
import { CacheUse } from '../src/data/block-cache'
import { BlockStore } from '../src/data/block-store'
import { OpenFile } from '../src/data/open-file'
import { OpenFiles } from '../src/data/open-files'
import { FileServices } from '../src/data/services'

// Open-file data against a real directory (LevelDB in a temp dir) and a block
// store (the layer below) whose writes can be made to fail late.

const bs = 65536
const now = { sec: 0, nsec: 0 }

/** A directory (LevelDB in the test's temp dir) closed when the test ends. */
async function testDirectory (t: Test, blockSize = bs, openInodes?: OpenInodes): Promise<Directory> {
  const kv = await LevelKv.open(join(t.testdir(), 'db'), { createIfMissing: true })
  const dir = await Directory.create(kv, { blockSize, root: { uid: 0, gid: 0 }, openInodes })
  t.teardown(() => dir.close())
  return dir
}

async function notUsed (): Promise<never> {
  throw new Error('readRange is not expected here')
}

/** A store in memory that counts whole-block reads and ranged reads (chunk-aligned, as the volumes layer answers). */
function countingStore (): { store: BlockStore, objects: Map<bigint, Buffer>, reads: string[] } {
  const objects = new Map<bigint, Buffer>()
  const reads: string[] = []
  const store: BlockStore = {
    newBlock: (fileId: bigint): BSL => ({ form: 'logical', volume: 1, fileId }),
    async sync () {},
    async write (rec: BlockRecord, data: Uint8Array) { objects.set(rec.bsl.fileId, Buffer.from(data)) },
    async read (rec: BlockRecord) {
      reads.push(`block ${rec.bsl.fileId}`)
      await new Promise(resolve => setTimeout(resolve, 5))
      return objects.get(rec.bsl.fileId) as Buffer
    },
    async readRange (rec: BlockRecord, offset: number, length: number) {
      const start = Math.floor(offset / CHUNK_BYTES) * CHUNK_BYTES
      const end = Math.min(rec.length, Math.ceil((offset + length) / CHUNK_BYTES) * CHUNK_BYTES)
      reads.push(`range ${rec.bsl.fileId} ${start / CHUNK_BYTES}-${Math.ceil(end / CHUNK_BYTES)}`)
      await new Promise(resolve => setTimeout(resolve, 5))
      return { start, data: (objects.get(rec.bsl.fileId) as Buffer).subarray(start, end) }
    }
  }
  return { store, objects, reads }
}

t.test('random small reads fetch only the chunks they need; sequential reads fetch whole blocks', async t => {
  const big = 8 * CHUNK_BYTES
  const dir = await testDirectory(t, big)
  const inode = await dir.createNode(1, 'f', { mode: 0o100644, uid: 0, gid: 0 })
  const { store, reads } = countingStore()
  const source = randomBytes(8 * big - 1000)
  const w = new OpenFile(inode.ino, new FileServices(dir, store), new Map(), 0)
  await w.write(source, 0, now)
  await w.flushNow()
  const blocks = await dir.getBlocks(inode.ino)
  t.same(blocks.get(0)?.chunks, chunkSums(source.subarray(0, big)), 'written blocks carry their chunk sums')
  t.equal(blocks.get(7)?.chunks?.length, Math.ceil((big - 1000) / CHUNK_BYTES), 'the short last block too')

  const f = new OpenFile(inode.ino, new FileServices(dir, store), blocks, source.length)
  const read = async (pos: number, len = 4096): Promise<Buffer> => {
    const buf = Buffer.alloc(len)
    const n = await f.read(buf, len, pos)
    return buf.subarray(0, n)
  }
  const offsets = [1_900_000, 50_000, 1_200_000, 600_000, 5 * CHUNK_BYTES - 100, 3 * big - 2000, 1_700_000, source.length - 10]
  for (const pos of offsets) {
    t.same(await read(pos), source.subarray(pos, pos + 4096), `4 KiB at ${pos}`)
  }
  const fileIdOf = (i: number): bigint => blocks.get(i)!.bsl.fileId
  const expected: string[] = []
  for (const pos of offsets) {
    const end = Math.min(pos + 4096, source.length)
    for (let at = pos; at < end; at = (Math.floor(at / big) + 1) * big) {
      const i = Math.floor(at / big)
      const last = Math.min(end, (i + 1) * big) - 1
      expected.push(`range ${fileIdOf(i)} ${Math.floor((at - i * big) / CHUNK_BYTES)}-${Math.floor((last - i * big) / CHUNK_BYTES) + 1}`)
    }
  }
  t.same(reads, expected, 'only the chunks covering each read, never a whole block')

  reads.length = 0
  t.same(await read(50_000 + 8192, 100), source.subarray(58_192, 58_292), 'a read in a chunk fetched before')
  const both = await Promise.all([read(1_000_000), read(1_000_000 + 500_000), read(1_000_100)])
  t.same(both[0], source.subarray(1_000_000, 1_004_096))
  t.same(both[2], source.subarray(1_000_100, 1_004_196))
  t.same(reads, [`range ${fileIdOf(3)} 6-7`, `range ${fileIdOf(5)} 5-6`], 'cached chunks are not fetched again; concurrent reads share a fetch')

  // A sequential reader gets whole blocks (and read-ahead), as before.
  reads.length = 0
  for (let pos = 0; pos < 3 * big; pos += 128 * 1024) t.same(await read(pos, 128 * 1024), source.subarray(pos, pos + 128 * 1024))
  t.ok(reads.includes(`block ${fileIdOf(1)}`) && reads.includes(`block ${fileIdOf(2)}`), `whole blocks for a stream: ${reads.join(', ')}`)
  t.notOk(reads.some(r => r.startsWith(`range ${fileIdOf(1)} `)), 'no chunk reads in the stream past its start')
})

t.test('a block recorded without chunk sums is read whole', async t => {
  const dir = await testDirectory(t)
  const inode = await dir.createNode(1, 'f', { mode: 0o100644, uid: 0, gid: 0 })
  const { store, objects, reads } = countingStore()
  const bytes = randomBytes(bs)
  objects.set(5n, bytes)
  // As a bslfs without chunk sums wrote it.
  await dir.commitBlocks(inode.ino, [{ index: 1, record: { bsl: { form: 'logical', volume: 1, fileId: 5n }, length: bs, checksum: checksum(bytes) } }], { size: 2 * bs })
  const f = new OpenFile(inode.ino, new FileServices(dir, store), await dir.getBlocks(inode.ino), 2 * bs)
  const buf = Buffer.alloc(4096)
  t.equal(await f.read(buf, 4096, bs + 40_000), 4096)
  t.same(buf, bytes.subarray(40_000, 44_096))
  t.same(reads, ['block 5'], 'the whole verified block')
})

t.test('a block write that fails late does not undo a newer version of the block', async t => {
  const dir = await testDirectory(t)
  const inode = await dir.createNode(1, 'f', { mode: 0o100644, uid: 0, gid: 0 })
  const objects = new Map<bigint, Buffer>()
  let calls = 0
  const store: BlockStore = {
    newBlock: (fileId: bigint): BSL => ({ form: 'logical', volume: 1, fileId }),
    async sync () {},
    async write (rec: BlockRecord, data: Uint8Array) {
      // The first put fails after a while (a server killed under it); later ones succeed at once.
      if (++calls === 1) {
        await new Promise(resolve => setTimeout(resolve, 100))
        throw new FsError('EIO', 'server gone')
      }
      objects.set(rec.bsl.fileId, Buffer.from(data))
    },
    async read (rec: BlockRecord) {
      const o = objects.get(rec.bsl.fileId)
      if (!o) throw new FsError('EIO', 'missing')
      return o
    },
    readRange: notUsed
  }
  const f = new OpenFile(inode.ino, new FileServices(dir, store), new Map(), 0)
  await f.write(Buffer.alloc(bs, 'a'), 0, now) // fills block 0: its flush starts, and will fail
  await f.write(Buffer.alloc(100, 'b'), 1000, now) // block 0 again: a newer version, made from those bytes
  await t.rejects(f.flush(), /server gone/, 'the failed write is reported once')
  const buf = Buffer.alloc(4)
  await f.read(buf, 4, 1000)
  t.equal(buf.toString(), 'bbbb', 'reads see the newer bytes, not the failed version put back')
  await f.flushNow()
  const rec = (await dir.getBlocks(inode.ino)).get(0)
  t.ok(rec, 'block 0 is committed')
  t.equal(objects.get(rec!.bsl.fileId)?.subarray(998, 1002).toString(), 'aabb', 'and stored with the newer bytes')
})

t.test('a read racing a truncate never returns an older version of a dropped block', async t => {
  const dir = await testDirectory(t)
  const inode = await dir.createNode(1, 'f', { mode: 0o100644, uid: 0, gid: 0 })
  const objects = new Map<bigint, Buffer>()
  let slowReads = false
  const store: BlockStore = {
    newBlock: (fileId: bigint): BSL => ({ form: 'logical', volume: 1, fileId }),
    async sync () {},
    async write (rec: BlockRecord, data: Uint8Array) { objects.set(rec.bsl.fileId, Buffer.from(data)) },
    async read (rec: BlockRecord) {
      // A slow device: the read of block 0 is still waiting when the truncate runs.
      if (slowReads) await new Promise(resolve => setTimeout(resolve, 100))
      const o = objects.get(rec.bsl.fileId)
      if (!o) throw new FsError('EIO', 'missing')
      return o
    },
    async readRange (rec: BlockRecord, offset: number, length: number) {
      if (slowReads) await new Promise(resolve => setTimeout(resolve, 100))
      const o = objects.get(rec.bsl.fileId)
      if (!o) throw new FsError('EIO', 'missing')
      return { start: offset, data: o.subarray(offset, offset + length) }
    }
  }
  const data = new FileServices(dir, store, { cacheBytes: 0 })
  const f = new OpenFile(inode.ino, data, new Map(), 0)
  await f.write(Buffer.alloc(2 * bs, 'o'), 0, now) // blocks 0 and 1, old bytes
  await f.flushNow()
  await f.write(Buffer.alloc(100, 'n'), bs + 10, now) // block 1 again, newer bytes, still dirty
  slowReads = true
  const buf = Buffer.alloc(2 * bs)
  const reading = f.read(buf, 2 * bs, 0)
  await new Promise(resolve => setTimeout(resolve, 20))
  await f.truncate(bs / 2, now) // drops dirty block 1 while the read waits for block 0
  const n = await reading
  t.ok(n <= bs + 10 || buf.subarray(bs + 10, bs + 110).toString() === 'n'.repeat(100),
    `the read (${n} bytes) holds the newer bytes of block 1 or stops before them`)
  t.ok(n <= bs / 2 || n === 2 * bs, `it ends at the old size or the new one (${n})`)
})

t.test('an open racing the release of the same inode gets the file the release keeps', async t => {
  const dir = await testDirectory(t)
  const inode = await dir.createNode(1, 'f', { mode: 0o100644, uid: 0, gid: 0 })
  const { store } = countingStore()
  const files = new OpenFiles(dir, store)
  const first = await files.acquire(inode.ino)
  await first.write(Buffer.from('hello'), 0, now)
  await first.flushNow() // nothing left to write: the release below finishes within a few microtasks
  // The kernel does not wait for a release: the next open arrives while the last close is handled.
  const released = files.release(first)
  const second = await files.acquire(inode.ino)
  await released
  t.equal(second, first, 'the same open file')
  t.equal(await files.get(inode.ino), second, 'still the one the directory overlays')
  await second.write(Buffer.from('!'), 5, now)
  t.equal((await files.get(inode.ino))?.size, 6, 'a write through the new handle shows in the size')
  await files.release(second)
  // The last release stores the data; the file is let go once its group commit is in the directory.
  for (let i = 0; i < 100 && files.isOpen(inode.ino); i++) await new Promise(resolve => setTimeout(resolve, 10))
  t.notOk(files.isOpen(inode.ino), 'the last release lets go, after the commit')
  t.equal((await dir.getInode(inode.ino)).size, 6, 'and the size is committed')
})

t.test('two writes of one file at once (a direct write the kernel split) land in order', async t => {
  const dir = await testDirectory(t)
  const inode = await dir.createNode(1, 'f', { mode: 0o100644, uid: 0, gid: 0 })
  const { store } = countingStore()
  const shared = new FileServices(dir, store)
  const w = new OpenFile(inode.ino, shared, new Map(), 0)
  await w.write(Buffer.alloc(2000, 1), 0, now)
  await w.flushNow()
  await w.truncate(1000, now) // the stored block keeps its old bytes past the new end
  // The end of the file is in a stored block: both writes must read it back first (the store
  // takes a few milliseconds), and the second starts past the end, so it zeroes the old tail.
  const f = new OpenFile(inode.ino, shared, await dir.getBlocks(inode.ino), 1000)
  const first = f.write(Buffer.alloc(10, 2), 1000, now)
  const second = f.write(Buffer.alloc(10, 3), 1100, now)
  await Promise.all([first, second])
  const buf = Buffer.alloc(1110)
  t.equal(await f.read(buf, 1110, 0), 1110, 'size')
  const want = Buffer.concat([Buffer.alloc(1000, 1), Buffer.alloc(10, 2), Buffer.alloc(90), Buffer.alloc(10, 3)])
  t.ok(buf.equals(want), 'the first write survives the second one zeroing the tail')
})

/** A store that logs what it is asked, and can fail its next syncs. */
function loggingStore (): { store: BlockStore, log: string[], objects: Map<bigint, Buffer>, failSyncs: (n: number) => void } {
  const objects = new Map<bigint, Buffer>()
  const log: string[] = []
  let failing = 0
  const store: BlockStore = {
    newBlock: (fileId: bigint): BSL => ({ form: 'logical', volume: 1, fileId }),
    async write (rec: BlockRecord, data: Uint8Array, opts?: { durable?: boolean }) {
      log.push(`${opts?.durable === false ? 'store' : 'put'} ${rec.bsl.fileId}`)
      objects.set(rec.bsl.fileId, Buffer.from(data))
    },
    async sync () {
      log.push('sync')
      if (failing > 0) { failing--; throw new FsError('EIO', 'the disk did not flush') }
    },
    async read (rec: BlockRecord) { return objects.get(rec.bsl.fileId) as Buffer },
    readRange: notUsed
  }
  return { store, log, objects, failSyncs: n => { failing = n } }
}

async function until (what: () => Promise<boolean>, ms = 2000): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end;) {
    if (await what()) return true
    await new Promise(resolve => setTimeout(resolve, 5))
  }
  return await what()
}

t.test('closed files: blocks stored at close, committed together after one sync of the devices', async t => {
  const dir = await testDirectory(t)
  const { store, log } = loggingStore()
  const files = new OpenFiles(dir, store)
  const inos: number[] = []
  // What the directory held when the devices were synced: no record may be there before.
  const committedAtSync: number[] = []
  const sync = store.sync.bind(store)
  store.sync = async () => {
    for (const ino of inos) committedAtSync.push((await dir.getBlocks(ino)).size)
    await sync()
  }
  const written: OpenFile[] = []
  for (let k = 0; k < 3; k++) {
    const inode = await dir.createNode(1, `f${k}`, { mode: 0o100644, uid: 0, gid: 0 })
    inos.push(inode.ino)
    const f = await files.acquire(inode.ino, true)
    await f.write(Buffer.alloc(1000 + k, 'x'), 0, now)
    written.push(f)
  }
  // Closed together (close(2) of each): a loaded host may take longer than the group's window between creates.
  await Promise.all(written.map(f => files.release(f)))
  t.same(log, ['store 1', 'store 2', 'store 3'], 'each close stored its block, not durably, and nothing synced yet')
  t.ok(await until(async () => !inos.some(ino => files.isOpen(ino))), 'the files are let go once committed')
  t.same(log, ['store 1', 'store 2', 'store 3', 'sync'], 'then one sync for all three')
  t.same(committedAtSync, [0, 0, 0], 'and no record was in the directory before it')
  for (const [k, ino] of inos.entries()) {
    t.equal((await dir.getBlocks(ino)).size, 1, `f${k}: its block is committed`)
    t.equal((await dir.getInode(ino)).size, 1000 + k, `f${k}: with its size`)
  }
})

t.test('a sync that fails keeps the bytes: fsync reports EIO, and the next fsync commits them', async t => {
  const dir = await testDirectory(t)
  const { store, objects, failSyncs } = loggingStore()
  const files = new OpenFiles(dir, store)
  const inode = await dir.createNode(1, 'f', { mode: 0o100644, uid: 0, gid: 0 })
  const f = await files.acquire(inode.ino, true)
  await f.write(Buffer.from('precious'), 0, now)
  failSyncs(1)
  await t.rejects(f.fsync(), /did not flush/, 'fsync: EIO')
  t.equal((await dir.getBlocks(inode.ino)).size, 0, 'nothing was committed')
  const buf = Buffer.alloc(8)
  await f.read(buf, 8, 0)
  t.equal(buf.toString(), 'precious', 'the bytes are still there to read')
  await f.fsync()
  const rec = (await dir.getBlocks(inode.ino)).get(0)
  t.ok(rec, 'the second fsync committed the block')
  t.equal(objects.get(rec!.bsl.fileId)?.toString(), 'precious', 'with its bytes')
  await files.release(f)
})

t.test('a file stays open while it waits in a group commit: its unlink cannot fail the group for other files', async t => {
  let files!: OpenFiles
  const dir = await testDirectory(t, bs, { isOpen: ino => files.isOpen(ino) }) // as the daemon wires them
  const { store } = loggingStore()
  // The devices take their time to flush: a group is under way for a while before its batch.
  const sync = store.sync.bind(store)
  store.sync = async () => { await new Promise(resolve => setTimeout(resolve, 50)); await sync() }
  files = new OpenFiles(dir, store)
  const gone = await dir.createNode(1, 'gone', { mode: 0o100644, uid: 0, gid: 0 })
  const other = await dir.createNode(1, 'other', { mode: 0o100644, uid: 0, gid: 0 })
  // close(2) after a chmod (or a read, for atime): the attributes wait for the next group ...
  const f = await files.acquire(gone.ino)
  f.setAttrs({ mode: 0o100600, ctime: now })
  await files.release(f)
  // ... with the block another file stored at its close.
  const g = await files.acquire(other.ino)
  await g.write(Buffer.from('unrelated'), 0, now)
  await g.flush()
  await new Promise(resolve => setTimeout(resolve, 15)) // the group has begun: it syncs the devices
  // truncate(2) by path commits the attributes at once, in a batch of its own, and the last
  // name goes while the group still holds the file.
  const again = await files.acquire(gone.ino)
  await again.truncate(0, now)
  await files.release(again)
  await dir.unlink(1, 'gone')
  await t.resolves(g.fsync(), 'fsync of the other file succeeds')
  t.equal((await dir.getBlocks(other.ino)).size, 1, 'and its block is committed')
  await files.release(g)
  t.ok(await until(async () => !files.isOpen(gone.ino)), 'the unlinked file is let go once its group is in')
  t.equal(await dir.getInode(gone.ino).catch((err: FsError) => err.code), 'ENOENT', 'and its inode is freed then')
})

t.test('a file whose commit fails does not fail the other files of its group', async t => {
  const dir = await testDirectory(t)
  const { store } = loggingStore()
  const files = new OpenFiles(dir, store)
  const bad = await dir.createNode(1, 'bad', { mode: 0o100644, uid: 0, gid: 0 })
  const good = await dir.createNode(1, 'good', { mode: 0o100644, uid: 0, gid: 0 })
  const fb = await files.acquire(bad.ino, true)
  await fb.write(Buffer.from('first'), 0, now)
  await fb.fsync()
  // A damaged record of its block (a disk fault): the file's next commit reads it, and fails.
  await dir.kv.txn(tx => { tx.put(keys.block(bad.ino, 0), Buffer.from('not a block record')) })
  await fb.write(Buffer.from('second'), 0, now)
  const fg = await files.acquire(good.ino, true)
  await fg.write(Buffer.from('other'), 0, now)
  await Promise.all([fb.flush(), fg.flush()]) // both stored: one group commits them
  const [b, g] = await Promise.allSettled([fb.fsync(), fg.fsync()])
  t.match(b, { status: 'rejected', reason: { code: 'EIO' } }, 'the file with the damaged record reports EIO')
  t.match(g, { status: 'fulfilled' }, 'the other file of the group commits')
  t.equal((await dir.getBlocks(good.ino)).size, 1, 'its block is in the directory')
})

/**
 * Four readers over a cache of `cacheBytes` (nearly every fetch evicts what
 * another read may still be replying from), against a store that
 * reads into the buffer it is lent, as the devices do, and takes its time.
 * `read` makes one read at a random place with `f`; how many reads were wrong,
 * and how many distinct buffers the store was lent for how many fetches.
 */
async function readersOverASmallCache (t: Test, cacheBytes: number, read: (f: OpenFile, use: CacheUse) => Promise<boolean>): Promise<{ wrong: number, lent: number, fetches: number }> {
  const dir = await testDirectory(t)
  const inode = await dir.createNode(1, 'f', { mode: 0o100644, uid: 0, gid: 0 })
  const objects = new Map<bigint, Buffer>()
  const lent = new Set<Buffer>()
  let fetches = 0
  const lend = (src: Buffer, into?: Buffer): Buffer => {
    fetches++
    if (!into || into.length < src.length) return Buffer.from(src)
    lent.add(into)
    src.copy(into)
    return into.subarray(0, src.length)
  }
  const store: BlockStore = {
    newBlock: (fileId: bigint): BSL => ({ form: 'logical', volume: 1, fileId }),
    async sync () {},
    async write (rec: BlockRecord, data: Uint8Array) { objects.set(rec.bsl.fileId, Buffer.from(data)) },
    async read (rec: BlockRecord, into?: Buffer) {
      await pause()
      return lend(objects.get(rec.bsl.fileId) as Buffer, into)
    },
    async readRange (rec: BlockRecord, offset: number, length: number, into?: Buffer) {
      await pause()
      const start = Math.floor(offset / CHUNK_BYTES) * CHUNK_BYTES
      const end = Math.min(rec.length, Math.ceil((offset + length) / CHUNK_BYTES) * CHUNK_BYTES)
      return { start, data: lend((objects.get(rec.bsl.fileId) as Buffer).subarray(start, end), into) }
    }
  }
  const w = new OpenFile(inode.ino, new FileServices(dir, store), new Map(), 0)
  await w.write(source, 0, now)
  await w.flushNow()
  const shared = new FileServices(dir, store, { cacheBytes })
  const f = new OpenFile(inode.ino, shared, await dir.getBlocks(inode.ino), source.length)
  let wrong = 0
  const reader = async (): Promise<void> => {
    for (let k = 0; k < 160; k++) {
      const use = shared.blocks.use()
      if (!await read(f, use)) wrong++
      use.end()
    }
  }
  await Promise.all([reader(), reader(), reader(), reader()])
  return { wrong, lent: lent.size, fetches }
}

const source = randomBytes(16 * bs)
const pause = (): Promise<unknown> => new Promise(resolve => setTimeout(resolve, Math.random() * 3))

/** Read `len` bytes at `pos` with `use`, wait (the reply is made later), then compare with what was written. */
async function readChecked (f: OpenFile, use: CacheUse, pos: number, len: number): Promise<boolean> {
  const pieces = await f.readPieces(len, pos, use)
  await pause()
  return Buffer.concat(pieces).equals(source.subarray(pos, pos + len))
}

t.test('block buffers are reused, never while a read still holds a view of one', async t => {
  // Streaming reads (whole blocks, read-ahead) from random places.
  let at = 0
  const r = await readersOverASmallCache(t, 2 * bs, async (f, use) => {
    if (at % (2 * bs) === 0) at = Math.floor(Math.random() * 14) * bs
    const pos = at
    at += bs / 2
    return await readChecked(f, use, pos, bs / 2 + 100)
  })
  t.equal(r.wrong, 0, 'every read saw its own bytes until it was done with them')
  t.ok(r.lent < r.fetches / 4, `block buffers were reused (${r.lent} buffers for ${r.fetches} block reads)`)
})

t.test('chunk buffers are reused, never while a random read still holds a view of one', async t => {
  // Small reads far apart: each fetches one chunk, and the cache holds one.
  const r = await readersOverASmallCache(t, CHUNK_BYTES, async (f, use) =>
    await readChecked(f, use, Math.floor(Math.random() * (source.length - 4096)), 1 + Math.floor(Math.random() * 4096)))
  t.equal(r.wrong, 0, 'every read saw its own bytes until it was done with them')
  t.ok(r.lent < r.fetches / 4, `chunk buffers were reused (${r.lent} buffers for ${r.fetches} chunk reads)`)
})

t.test('an interrupted read rejects with EINTR at once while the store hangs; a reader sharing its fetch still gets the bytes', async t => {
  const big = 8 * CHUNK_BYTES
  const dir = await testDirectory(t, big)
  const inode = await dir.createNode(1, 'f', { mode: 0o100644, uid: 0, gid: 0 })
  const objects = new Map<bigint, Buffer>()
  let hang = false
  /** Device reads left hanging: the signal each was given, and how to answer it. */
  const hung: Array<{ signal?: AbortSignal, answer: () => void }> = []
  const answer = <T>(signal: AbortSignal | undefined, value: () => T): Promise<T> => {
    if (!hang) return Promise.resolve(value())
    return new Promise<T>((resolve, reject) => {
      hung.push({ signal, answer: () => resolve(value()) })
      signal?.addEventListener('abort', () => reject(new FsError('EINTR', 'device call aborted')))
    })
  }
  const store: BlockStore = {
    newBlock: (fileId: bigint): BSL => ({ form: 'logical', volume: 1, fileId }),
    async sync () {},
    async write (rec: BlockRecord, data: Uint8Array) { objects.set(rec.bsl.fileId, Buffer.from(data)) },
    read: (rec, _into, signal) => answer(signal, () => objects.get(rec.bsl.fileId) as Buffer),
    readRange: (rec, offset, length, _into, signal) => answer(signal, () => {
      const start = Math.floor(offset / CHUNK_BYTES) * CHUNK_BYTES
      const end = Math.min(rec.length, Math.ceil((offset + length) / CHUNK_BYTES) * CHUNK_BYTES)
      return { start, data: (objects.get(rec.bsl.fileId) as Buffer).subarray(start, end) }
    })
  }
  const bytes = randomBytes(2 * big)
  const services = new FileServices(dir, store)
  const w = new OpenFile(inode.ino, services, new Map(), 0)
  await w.write(bytes, 0, now)
  await w.flushNow()
  const blocks = await dir.getBlocks(inode.ino)
  const opened = (): OpenFile => new OpenFile(inode.ino, services, blocks, bytes.length)
  const within = <T>(p: Promise<T>, ms: number): Promise<T | 'still waiting'> =>
    Promise.race([p, new Promise<'still waiting'>(resolve => setTimeout(() => resolve('still waiting'), ms))])
  hang = true

  // Alone: a whole block (a stream's first read), and the chunks of a random read.
  for (const [what, pos] of [['a whole block', 0], ['the chunks of a random read', big + 40_000]] as const) {
    hung.length = 0
    const ctl = new AbortController()
    const use = services.blocks.use()
    const reading = opened().readPieces(4096, pos, use, ctl.signal)
    await new Promise(resolve => setTimeout(resolve, 20))
    t.equal(hung.length, 1, `${what}: the device read is under way`)
    ctl.abort()
    const got = await within(reading.catch((err: FsError) => err.code), 100)
    use.end()
    t.equal(got, 'EINTR', `${what}: the interrupted read rejects with EINTR at once`)
    t.equal(hung[0].signal?.aborted, true, `${what}: its device read, its own alone, is aborted`)
  }

  // Shared: the reader that stays still gets the bytes.
  hung.length = 0
  const f = opened()
  const ctl = new AbortController()
  const leaving = f.readPieces(4096, 0, services.blocks.use(), ctl.signal)
  const staying = f.read(Buffer.alloc(4096), 4096, 100)
  await new Promise(resolve => setTimeout(resolve, 20))
  t.equal(hung.length, 1, 'the two readers share one device read')
  ctl.abort()
  t.equal(await within(leaving.catch((err: FsError) => err.code), 100), 'EINTR', 'the interrupted one rejects with EINTR at once')
  t.equal(hung[0].signal?.aborted, false, 'the shared device read goes on')
  hung[0].answer()
  t.equal(await within(staying, 1000), 4096, 'the other reader gets its bytes')

  // An interrupted fetch is not left behind for the next reader.
  hang = false
  const buf = Buffer.alloc(4096)
  await opened().read(buf, 4096, big + 40_000)
  t.same(buf, bytes.subarray(big + 40_000, big + 44_096), 'a later read of the chunks fetches them again')
  const already = new AbortController()
  already.abort()
  await t.rejects(opened().readPieces(10, 0, services.blocks.use(), already.signal), { code: 'EINTR' }, 'an aborted signal: EINTR before any read')
})
