// Inode records across versions: records written before inode flags and birth times decode
// (as no flags, no birth time); the new fields are checked like the old ones.
import t from 'tap'
import { decodeInode, encodeInode } from '../src/directory/records'
import { statxOut, STATX_OUT_BYTES } from '../src/fs/fuse/protocol'

const t0 = { sec: 1700000000, nsec: 5 }
// As bslfs wrote an inode before flags and btime existed.
const OLD = '{"ino":7,"mode":33188,"uid":0,"gid":0,"nlink":1,"size":3,"rdev":0,"atime":{"sec":1700000000,"nsec":5},"mtime":{"sec":1700000000,"nsec":5},"ctime":{"sec":1700000000,"nsec":5},"stored":3}'

t.test('an old record decodes, with no flags and no birth time', async (t) => {
  const inode = decodeInode(7, Buffer.from(OLD))
  t.equal(inode.flags, undefined)
  t.equal(inode.btime, undefined)
  t.equal(inode.size, 3)
})

t.test('flags and btime round-trip, and bad ones are corrupt records', async (t) => {
  const inode = { ...decodeInode(7, Buffer.from(OLD)), flags: 0x30, btime: t0 }
  t.same(decodeInode(7, encodeInode(inode)), inode)
  t.throws(() => decodeInode(7, Buffer.from(JSON.stringify({ ...inode, flags: -1 }))), { code: 'EIO', message: /bad flags/ })
  t.throws(() => decodeInode(7, Buffer.from(JSON.stringify({ ...inode, btime: { sec: 1 } }))), { code: 'EIO', message: /bad btime/ })
})

t.test('statx reports a birth time only where the inode has one', async (t) => {
  const attr = { ino: 7, size: 3, blocks: 1, atime: t0, mtime: t0, ctime: t0, mode: 0o100644, nlink: 1, uid: 1, gid: 2, rdev: 0, blksize: 4096 }
  const without = statxOut(attr, 1)
  t.equal(without.length, STATX_OUT_BYTES)
  t.equal(without.readUInt32LE(32), 0x7ff, 'basic stats only')
  const withBtime = statxOut({ ...attr, btime: { sec: 1600000000, nsec: 9 } }, 1)
  t.equal(withBtime.readUInt32LE(32), 0xfff, 'basic stats and STATX_BTIME')
  t.equal(Number(withBtime.readBigInt64LE(32 + 80)), 1600000000)
  t.equal(withBtime.readUInt32LE(32 + 88), 9)
  t.equal(withBtime.readUInt16LE(32 + 28), 0o100644)
})
