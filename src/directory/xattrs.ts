import { FsError } from '../errors'
import { nowTimespec } from '../posix/time'
import { KvReader, KvStore } from './kv'
import { Namespace } from './namespace'
import { keyNumber, keys } from './records'

/** XATTR_CREATE: setXattr fails if the attribute exists. */
const XATTR_CREATE = 1
/** XATTR_REPLACE: setXattr fails if the attribute does not exist. */
const XATTR_REPLACE = 2

/** The inodes that hold any xattr (X keys), read once at open. */
export async function inodesWithXattrs (kv: KvReader): Promise<Set<number>> {
  const out = new Set<number>()
  for await (const [k] of kv.scan(keys.xattrPrefix)) out.add(keyNumber(k, 1))
  return out
}

/**
 * Extended attributes (X ino name → value). A change also sets the inode's
 * ctime, in the same batch; the namespace frees them with their inode.
 */
export class Xattrs {
  constructor (private readonly kv: KvStore, private readonly ns: Namespace) {}

  async get (ino: number, name: string): Promise<Buffer> {
    await this.ns.getInode(ino)
    const v = this.ns.mayHaveXattrs(ino) ? await this.kv.get(keys.xattr(ino, name)) : undefined
    if (!v) throw new FsError('ENODATA', name)
    return v
  }

  async list (ino: number): Promise<string[]> {
    await this.ns.getInode(ino)
    const names: string[] = []
    if (!this.ns.mayHaveXattrs(ino)) return names
    const prefix = keys.xattrs(ino)
    for await (const [k] of this.kv.scan(prefix)) names.push(k.subarray(prefix.length).toString('utf8'))
    return names
  }

  /** flags: XATTR_CREATE (1) fails if present, XATTR_REPLACE (2) fails if absent. */
  set (ino: number, name: string, value: Buffer, flags: number, now = nowTimespec()): Promise<void> {
    return this.ns.write(async w => {
      const inode = await w.inode(ino)
      const key = keys.xattr(ino, name)
      const exists = (await w.tx.get(key)) !== undefined
      if ((flags & XATTR_CREATE) && exists) throw new FsError('EEXIST', name)
      if ((flags & XATTR_REPLACE) && !exists) throw new FsError('ENODATA', name)
      w.tx.put(key, Buffer.from(value))
      w.putInode({ ...inode, ctime: now })
      w.tx.onCommit(() => this.ns.noteXattrs(ino))
    })
  }

  remove (ino: number, name: string, now = nowTimespec()): Promise<void> {
    return this.ns.write(async w => {
      const inode = await w.inode(ino)
      const key = keys.xattr(ino, name)
      if ((await w.tx.get(key)) === undefined) throw new FsError('ENODATA', name)
      w.tx.del(key)
      w.putInode({ ...inode, ctime: now })
    })
  }
}
