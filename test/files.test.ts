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
