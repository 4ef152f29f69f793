import t from 'tap'
import * as fsp from 'node:fs/promises'
import { join } from 'node:path'
import { objectIdOf } from '../src/bsl'
import { checksum } from '../src/checksum'
import { keys, encodeEntry, encodeBlock, encodeJSON, BlockRecord } from '../src/directory/records'
import * as admin from '../src/daemon/admin'
import { State, initState } from '../src/daemon/state'
import { fsck, FsckReport } from '../src/daemon/fsck'
import { S_IFDIR, S_IFREG } from '../src/posix/modes'

// fsck against a real STATE (LevelDB directory, local devices), damaged by
// hand the ways a crash or a bug could leave it.

async function makeFile (s: State, parent: number, name: string, blocks: Buffer[]): Promise<{ ino: number, recs: BlockRecord[] }> {
  const inode = await s.dir.createNode(parent, name, { mode: S_IFREG | 0o644, uid: 0, gid: 0 })
  const recs: BlockRecord[] = []
  for (const [i, data] of blocks.entries()) {
    const rec: BlockRecord = { bsl: s.volumes.newBlock(await s.dir.allocateObjectId(), i), length: data.length, checksum: checksum(data) }
    await s.volumes.write(rec, data)
    recs.push(rec)
  }
  await s.dir.commitBlocks(inode.ino, recs.map((record, index) => ({ index, record })), { size: blocks.reduce((n, b) => n + b.length, 0) })
  return { ino: inode.ino, recs }
}

const problems = (r: FsckReport): Record<string, number> => r.problems

t.test('fsck finds and repairs what a crash or a bug leaves behind', async t => {
  const root = t.testdir()
  const stateDir = join(root, 'state')
  await initState(stateDir, { blockSize: 65536 })
  let s = await State.open(stateDir)
  t.teardown(() => s.close())
  // A second device, mirrored with d0: volume 1 (d0) + volume 2 (d1) → volume 10.
  await admin.deviceAdd(s, 'd1', join(root, 'd1'))
  await admin.volumeAdd(s, '2', 'local:d1')
  await admin.mirrorSet(s, '10', ['1', '2'])
  await admin.volumeDefault(s, '10')

  const dirA = await s.dir.createNode(1, 'a', { mode: S_IFDIR | 0o755, uid: 0, gid: 0 })
  const f1 = await makeFile(s, dirA.ino, 'one', [Buffer.alloc(65536, 1), Buffer.from('tail')])
  const f2 = await makeFile(s, 1, 'two', [Buffer.from('two bytes')])
  const f3 = await makeFile(s, 1, 'three', [Buffer.from('three')])
  await s.dir.link(f2.ino, dirA.ino, 'two-again')

  const clean = await fsck(s.dir, s.volumes, { repair: false, checksums: true })
  t.same(problems(clean), {}, 'a healthy filesystem: no problems')
  t.ok(clean.clean)
  t.equal(clean.inodes, 5)
  t.equal(clean.blocks, 4)
  t.equal(clean.copiesChecked, 8, 'two copies of each block')
  t.equal(clean.objectsListed, 8)

  // Damage, the kinds fsck knows.
  const strayData = Buffer.from('a block of a file that is gone')
  const stray: BlockRecord = { bsl: s.volumes.newBlock(await s.dir.allocateObjectId(), 0), length: strayData.length, checksum: checksum(strayData) }
  await s.volumes.write(stray, strayData)
  const kv = s.dir.kv
  await kv.txn(tx => {
    tx.put(keys.entry(1, 'ghost'), encodeEntry(4242, S_IFREG | 0o644)) // an entry naming nothing
    tx.del(keys.entry(1, 'three')) // an inode nothing names
    tx.put(keys.block(7777, 0), encodeBlock(stray)) // blocks of an inode that does not exist
    tx.put(keys.meta('usage'), encodeJSON({ files: 99, bytes: 1 }))
  })
  await s.dir.fsckFixes.fixInode(f2.ino, { nlink: 5 })
  const d0 = await s.volumes.deviceAt({ server: 'local', device: 'd0' })
  const d1 = await s.volumes.deviceAt({ server: 'local', device: 'd1' })
  await d0.put('00000000deadbeef', Buffer.from('orphan'), checksum(Buffer.from('orphan'))) // a write whose commit never came
  await d1.delete(objectIdOf(f1.recs[1].bsl)) // one mirror lost a copy
  // Both copies of f3's block rot: nothing can bring it back.
  const rot = async (dev: string): Promise<void> => {
    const id = objectIdOf(f3.recs[0].bsl)
    await fsp.writeFile(join(dev === 'd0' ? join(stateDir, 'devices', 'd0') : join(root, 'd1'), 'objects', id.slice(-2), id), 'rotten')
  }
  await rot('d0')
  await rot('d1')

  // Reopen: the directory's caches must not hide the damage.
  await s.close()
  s = await State.open(stateDir)
  const found = await fsck(s.dir, s.volumes, { repair: false, checksums: true })
  t.notOk(found.clean, 'not clean')
  t.match(problems(found), {
    'dangling entry': 1,
    'unreachable inode': 1,
    'blocks of a missing inode': 1,
    'usage counters': 1,
    'link count': 1,
    'orphan object': 1,
    'bad copy': 1,
    'block with no good copy': 1
  }, `each problem counted: ${JSON.stringify(found.problems)}`)
  t.match(found.first.join('\n'), /ghost|4242/, 'the dangling entry is listed')
  t.match(found.first.join('\n'), /\/a\/one/, 'a block problem names the file by path')
  t.same(found.repaired, {}, 'nothing repaired without --repair')

  const fixed = await fsck(s.dir, s.volumes, { repair: true, checksums: true })
  t.match(fixed.repaired, {
    'dangling entry': 1, 'moved to lost+found': 1, 'blocks of a missing inode': 1, 'usage counters': 1,
    'link count': 1, 'orphan object': 1, 'bad copy (queued for heal)': 1
  }, `repaired: ${JSON.stringify(fixed.repaired)}`)
  t.notOk(fixed.clean, 'a block with no good copy cannot be repaired: still not clean')
  t.equal(await (await s.volumes.deviceAt({ server: 'local', device: 'd0' })).stat('00000000deadbeef'), null, 'the orphan object is gone')
  const lf = await s.dir.lookup(1, 'lost+found')
  t.ok(lf, '/lost+found exists')
  t.equal(await s.dir.lookup(lf!, `#${f3.ino}`), f3.ino, 'the nameless inode is in lost+found, not deleted')
  t.equal((await s.dir.getInode(f2.ino)).nlink, 2, 'the link count is what the entries say')
  t.same((await s.dir.healQueue(10)).map(r => r.volume), [2], 'the lost mirror copy is in the heal queue')

  const after = await fsck(s.dir, s.volumes, { repair: false, checksums: true })
  t.same(Object.keys(after.problems), ['block with no good copy'], `only the unrepairable block is left: ${JSON.stringify(after.problems)}`)
  t.equal(after.healQueue, 1)
  t.equal(after.reclaimQueue, 1, 'the missing inode\'s block waits in the reclaim queue')
  t.match(after.first[0], /lost\+found\/#\d+/, 'its file is found under lost+found')
})
