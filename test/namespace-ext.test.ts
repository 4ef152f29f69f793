// The directory's side of issue 26 on every engine (LevelDB, PostgreSQL, and LevelDB behind
// RerunKv, which runs every transaction body twice): RENAME_EXCHANGE, RENAME_WHITEOUT, inode
// flags, POSIX ACLs (set, chmod, inheritance), unnamed (O_TMPFILE) inodes, birth times, and open
// directories that outlive rmdir.
import t, { Test } from 'tap'
import { FsError } from '../src/errors'
import { Directory } from '../src/directory/directory'
import { ACL_ACCESS, ACL_DEFAULT } from '../src/directory/acl'
import { FS_APPEND_FL, FS_IMMUTABLE_FL } from '../src/directory/inode-flags'
import { ROOT_INO, keys } from '../src/directory/records'
import { S_IFCHR, S_IFDIR, S_IFREG } from '../src/posix/modes'
import { engines } from './helpers/engines'

const FILE = { mode: S_IFREG | 0o644, uid: 1000, gid: 1000 }
const DIR = { mode: S_IFDIR | 0o755, uid: 1000, gid: 1000 }

async function codeOf (p: Promise<unknown>): Promise<string> {
  try {
    await p
    return 'OK'
  } catch (err) {
    return err instanceof FsError ? err.code : String(err)
  }
}

/** An ACL xattr: [tag, perm, id] entries. */
function acl (...entries: Array<[number, number, number?]>): Buffer {
  const b = Buffer.alloc(4 + 8 * entries.length)
  b.writeUInt32LE(2, 0)
  entries.forEach(([tag, perm, id], i) => {
    b.writeUInt16LE(tag, 4 + 8 * i)
    b.writeUInt16LE(perm, 6 + 8 * i)
    b.writeUInt32LE(id ?? 0xffffffff, 8 + 8 * i)
  })
  return b
}
const [USER_OBJ, USER, GROUP_OBJ, MASK, OTHER] = [0x01, 0x02, 0x04, 0x10, 0x20]

for (const engine of engines) {
  t.test(engine.name, { skip: engine.skip ?? false }, async t => {
    const open = new Set<number>()
    const kv = await engine.place(t).open()
    const dir = await Directory.create(kv, { blockSize: 4096, root: { uid: 0, gid: 0 }, openInodes: { isOpen: ino => open.has(ino) } })
    t.teardown(() => dir.close())

    await t.test('RENAME_EXCHANGE swaps two names, across directories, with link counts and parents', async (t: Test) => {
      const p1 = await dir.createNode(ROOT_INO, 'p1', DIR)
      const p2 = await dir.createNode(ROOT_INO, 'p2', DIR)
      const x = await dir.createNode(p1.ino, 'x', DIR)
      const y = await dir.createNode(p2.ino, 'y', FILE)
      await dir.exchange(p1.ino, 'x', p2.ino, 'y')
      t.equal(await dir.lookup(p1.ino, 'x'), y.ino)
      t.equal(await dir.lookup(p2.ino, 'y'), x.ino)
      t.equal((await dir.getInode(x.ino)).parent, p2.ino, 'the directory\'s parent follows')
      t.equal((await dir.getInode(p1.ino)).nlink, 2)
      t.equal((await dir.getInode(p2.ino)).nlink, 3)
      t.equal(await codeOf(dir.exchange(p1.ino, 'x', p2.ino, 'none')), 'ENOENT')
      const inner = await dir.createNode(x.ino, 'inner', DIR)
      t.equal(await codeOf(dir.exchange(p2.ino, 'y', inner.ino, '.none')), 'ENOENT')
      await dir.createNode(inner.ino, 'f', FILE)
      t.equal(await codeOf(dir.exchange(p2.ino, 'y', inner.ino, 'f')), 'EINVAL', 'a directory cannot go below itself')
    })

    await t.test('RENAME_WHITEOUT leaves a character device 0:0 owned by the caller', async (t: Test) => {
      await dir.createNode(ROOT_INO, 'w', FILE)
      const before = dir.usage.files
      await dir.rename(ROOT_INO, 'w', ROOT_INO, 'w2', { whiteout: { uid: 5, gid: 6 } })
      const wo = await dir.getInode((await dir.lookup(ROOT_INO, 'w'))!)
      t.same([wo.mode, wo.rdev, wo.uid, wo.gid, wo.nlink], [S_IFCHR, 0, 5, 6, 1])
      t.equal(dir.usage.files, before + 1, 'the whiteout counts as a file')
    })

    await t.test('inode flags: only root sets them; immutable and append-only hold in the namespace', async (t: Test) => {
      const f = await dir.createNode(ROOT_INO, 'flagged', FILE)
      t.equal(await codeOf(dir.setFlags(f.ino, FS_IMMUTABLE_FL, 1000)), 'EPERM', 'not by the owner')
      t.equal(await codeOf(dir.setFlags(f.ino, 0x80000, 0)), 'EOPNOTSUPP', 'not a flag bslfs keeps')
      await dir.setFlags(f.ino, FS_IMMUTABLE_FL, 0)
      t.equal((await dir.getInode(f.ino)).flags, FS_IMMUTABLE_FL)
      t.equal(await codeOf(dir.unlink(ROOT_INO, 'flagged')), 'EPERM')
      t.equal(await codeOf(dir.rename(ROOT_INO, 'flagged', ROOT_INO, 'other')), 'EPERM')
      t.equal(await codeOf(dir.link(f.ino, ROOT_INO, 'again')), 'EPERM')
      const d = await dir.createNode(ROOT_INO, 'adir', DIR)
      await dir.createNode(d.ino, 'in', FILE)
      await dir.setFlags(d.ino, FS_APPEND_FL, 0)
      t.equal(await codeOf(dir.createNode(d.ino, 'new', FILE)), 'OK', 'an append-only directory takes new names')
      t.equal(await codeOf(dir.unlink(d.ino, 'in')), 'EPERM', 'and loses none')
      await dir.setFlags(d.ino, 0, 0)
      await dir.setFlags(f.ino, 0, 0)
      t.equal((await dir.getInode(f.ino)).flags, undefined, 'cleared flags leave no field')
      t.equal(await codeOf(dir.unlink(ROOT_INO, 'flagged')), 'OK')
    })

    await t.test('ACLs: the mode follows an access ACL, chmod sets the mask, default ACLs are inherited', async (t: Test) => {
      const f = await dir.createNode(ROOT_INO, 'acl-file', { ...FILE, mode: S_IFREG | 0o600 })
      await dir.setAcl(f.ino, ACL_ACCESS, acl([USER_OBJ, 6], [USER, 4, 65534], [GROUP_OBJ, 0], [MASK, 4], [OTHER, 0]))
      t.equal((await dir.getInode(f.ino)).mode & 0o777, 0o640, 'the group bits are the mask')
      await dir.chmodAcls(f.ino, 0o600)
      const after = await dir.getXattr(f.ino, ACL_ACCESS)
      t.equal(after.readUInt16LE(4 + 8 * 3 + 2), 0, 'chmod g-r empties the mask')
      await dir.setAcl(f.ino, ACL_ACCESS, acl([USER_OBJ, 7], [GROUP_OBJ, 5], [OTHER, 1]))
      t.equal((await dir.getInode(f.ino)).mode & 0o777, 0o751, 'an ACL the mode says all of sets the mode')
      t.equal(await codeOf(dir.getXattr(f.ino, ACL_ACCESS)), 'ENODATA', 'and is not stored')
      t.equal(await codeOf(dir.setAcl(f.ino, ACL_DEFAULT, acl([USER_OBJ, 7], [GROUP_OBJ, 5], [OTHER, 5]))), 'EACCES', 'a file has no default ACL')
      t.equal(await codeOf(dir.setAcl(f.ino, ACL_ACCESS, Buffer.from([1, 0, 0, 0]))), 'EINVAL', 'a malformed ACL is refused')

      const team = await dir.createNode(ROOT_INO, 'team', DIR)
      await dir.setAcl(team.ino, ACL_DEFAULT, acl([USER_OBJ, 7], [USER, 7, 65534], [GROUP_OBJ, 5], [MASK, 7], [OTHER, 5]))
      const made = await dir.createNode(team.ino, 'f', { ...FILE, mode: S_IFREG | 0o666, umask: 0o077, acl: true })
      t.equal(made.mode & 0o777, 0o664, 'masked by the default ACL, the umask not applied')
      t.equal((await dir.getXattr(made.ino, ACL_ACCESS)).length, 4 + 8 * 5, 'the file has the inherited access ACL')
      const sub = await dir.createNode(team.ino, 'sub', { ...DIR, mode: S_IFDIR | 0o777, umask: 0o077, acl: true })
      t.ok((await dir.getXattr(sub.ino, ACL_DEFAULT)).equals(await dir.getXattr(team.ino, ACL_DEFAULT)), 'a subdirectory inherits the default ACL')
      const plain = await dir.createNode(ROOT_INO, 'plain', { ...FILE, mode: S_IFREG | 0o666, umask: 0o022, acl: true })
      t.equal(plain.mode & 0o777, 0o644, 'without a default ACL the umask applies')
    })

    await t.test('an unnamed inode (O_TMPFILE) waits as an orphan, is linked, or freed', async (t: Test) => {
      const before = dir.usage.files
      const tmp = await dir.createNode(ROOT_INO, '', { ...FILE, unnamed: true })
      t.equal(tmp.nlink, 0)
      t.ok(await kv.get(keys.orphan(tmp.ino)), 'kept as an orphan')
      t.equal(dir.usage.files, before + 1)
      await dir.link(tmp.ino, ROOT_INO, 'named')
      t.equal(await kv.get(keys.orphan(tmp.ino)), undefined, 'linked: no orphan any more')
      t.equal((await dir.getInode(tmp.ino)).nlink, 1)
      const gone = await dir.createNode(ROOT_INO, '', { ...FILE, unnamed: true })
      await dir.releaseIfUnlinked(gone.ino)
      t.equal(await codeOf(dir.getInode(gone.ino)), 'ENOENT', 'closed unlinked: freed')
      t.equal(dir.usage.files, before + 1)
    })

    await t.test('birth time at creation, kept by renames', async (t: Test) => {
      const f = await dir.createNode(ROOT_INO, 'born', FILE, { sec: 1000, nsec: 7 })
      t.same(f.btime, { sec: 1000, nsec: 7 })
      await dir.rename(ROOT_INO, 'born', ROOT_INO, 'moved')
      t.same((await dir.getInode(f.ino)).btime, { sec: 1000, nsec: 7 })
    })

    await t.test('an open directory outlives rmdir until released', async (t: Test) => {
      const d = await dir.createNode(ROOT_INO, 'held', DIR)
      open.add(d.ino)
      await dir.rmdir(ROOT_INO, 'held')
      t.equal((await dir.getInode(d.ino)).nlink, 0, 'still there, with no links')
      t.same(await dir.readdir(d.ino), [], 'and empty')
      t.equal(await codeOf(dir.createNode(d.ino, 'x', FILE)), 'ENOENT', 'nothing is made in it')
      open.delete(d.ino)
      await dir.releaseIfUnlinked(d.ino)
      t.equal(await codeOf(dir.getInode(d.ino)), 'ENOENT', 'released: gone')
      t.equal(await kv.get(keys.orphan(d.ino)), undefined, 'with its orphan row')
    })
  })
}
