import t from 'tap'
import { join } from 'node:path'
import { BSL } from '../src/bsl'
import { Directory } from '../src/directory/directory'
import { LevelKv } from '../src/directory/leveldb'
import { BlockRecord } from '../src/directory/records'
import { FsError } from '../src/errors'
import { BlockStore, FileData, OpenFile } from '../src/fs/files'

// Open-file data against a real directory (LevelDB in a temp dir) and a block
// store (the layer below) whose writes can be made to fail late.

const bs = 65536
const now = { sec: 0, nsec: 0 }

t.test('a block write that fails late does not undo a newer version of the block', async t => {
  const kv = await LevelKv.open(join(t.testdir(), 'db'), { createIfMissing: true })
  const dir = await Directory.create(kv, { blockSize: bs, root: { uid: 0, gid: 0 } })
  t.teardown(() => dir.close())
  const inode = await dir.createNode(1, 'f', { mode: 0o100644, uid: 0, gid: 0 })
  const objects = new Map<bigint, Buffer>()
  let calls = 0
  const store: BlockStore = {
    newBlock: (fileId: bigint): BSL => ({ form: 'logical', volume: 1, fileId }),
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
    }
  }
  const f = new OpenFile(inode.ino, new FileData(dir, store), new Map(), 0)
  await f.write(Buffer.alloc(bs, 'a'), 0, now) // fills block 0: its flush starts, and will fail
  await f.write(Buffer.alloc(100, 'b'), 1000, now) // block 0 again: a newer version, made from those bytes
  await t.rejects(f.flush(), /server gone/, 'the failed write is reported once')
  const buf = Buffer.alloc(4)
  await f.read(buf, 4, 1000)
  t.equal(buf.toString(), 'bbbb', 'reads see the newer bytes, not the failed version put back')
  await f.flush()
  const rec = (await dir.getBlocks(inode.ino)).get(0)
  t.ok(rec, 'block 0 is committed')
  t.equal(objects.get(rec!.bsl.fileId)?.subarray(998, 1002).toString(), 'aabb', 'and stored with the newer bytes')
})

t.test('a read racing a truncate never returns an older version of a dropped block', async t => {
  const kv = await LevelKv.open(join(t.testdir(), 'db'), { createIfMissing: true })
  const dir = await Directory.create(kv, { blockSize: bs, root: { uid: 0, gid: 0 } })
  t.teardown(() => dir.close())
  const inode = await dir.createNode(1, 'f', { mode: 0o100644, uid: 0, gid: 0 })
  const objects = new Map<bigint, Buffer>()
  let slowReads = false
  const store: BlockStore = {
    newBlock: (fileId: bigint): BSL => ({ form: 'logical', volume: 1, fileId }),
    async write (rec: BlockRecord, data: Uint8Array) { objects.set(rec.bsl.fileId, Buffer.from(data)) },
    async read (rec: BlockRecord) {
      // A slow device: the read of block 0 is still waiting when the truncate runs.
      if (slowReads) await new Promise(resolve => setTimeout(resolve, 100))
      const o = objects.get(rec.bsl.fileId)
      if (!o) throw new FsError('EIO', 'missing')
      return o
    }
  }
  const data = new FileData(dir, store, { cacheBytes: 0 })
  const f = new OpenFile(inode.ino, data, new Map(), 0)
  await f.write(Buffer.alloc(2 * bs, 'o'), 0, now) // blocks 0 and 1, old bytes
  await f.flush()
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
