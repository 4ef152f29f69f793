import t from 'tap'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { objectIdOf } from '../src/bsl'
import { deviceAdd, remapVolume } from '../src/daemon/admin'
import { initState, State } from '../src/daemon/state'
import { BlockStore } from '../src/data/block-store'
import { OpenFiles } from '../src/data/open-files'

// Remap against a real STATE (LevelDB directory, local devices) and the open
// files of a mount, without the kernel: the race with the group commit needs
// its timing held still, which a mount cannot do.

t.test('a block stored just before a remap, its record still waiting for the group commit, reaches the new place', async t => {
  const root = t.testdir()
  await initState(join(root, 'state'))
  const state = await State.open(join(root, 'state'))
  t.teardown(() => state.close())
  await deviceAdd(state, 'd1', join(root, 'd1'))

  // The group commit's device sync takes a while (a busy disk): the record reaches the directory late.
  const volumes = state.volumes
  const store: BlockStore = {
    newBlock: (fileId, index) => volumes.newBlock(fileId, index),
    write: (block, data, opts) => volumes.write(block, data, opts),
    sync: async () => {
      await new Promise(resolve => setTimeout(resolve, 300))
      await volumes.sync()
    },
    read: block => volumes.read(block),
    readRange: (block, offset, length) => volumes.readRange(block, offset, length)
  }
  const files = new OpenFiles(state.dir, store)

  const inode = await state.dir.createNode(1, 'f', { mode: 0o100644, uid: 0, gid: 0 })
  const data = randomBytes(54470)
  const file = await files.acquire(inode.ino, true)
  await file.write(data, 0, { sec: 0, nsec: 0 })
  await files.release(file) // close(2): stored on d0, the record goes with the next group
  t.same([...(await state.dir.getBlocks(inode.ino)).keys()], [], 'the record is not in the directory yet')

  const report = await remapVolume(state, '1', 'local:d1', { copy: true, deleteOld: true, verify: false, pendingRecords: files.services.group })
  t.equal(report.blocks, 1, 'the remap saw the block')
  const rec = (await state.dir.getBlocks(inode.ino)).get(0)
  t.ok(rec, 'the record is in the directory')
  const d1 = await volumes.deviceAt({ server: 'local', device: 'd1' })
  const d0 = await volumes.deviceAt({ server: 'local', device: 'd0' })
  t.same(await d1.stat(objectIdOf(rec!.bsl)), { size: data.length }, 'the new place holds the object')
  t.equal(await d0.stat(objectIdOf(rec!.bsl)), null, 'the old place no longer does')
  t.same(await volumes.read(rec!), data, 'the file reads back from the new place')
})
