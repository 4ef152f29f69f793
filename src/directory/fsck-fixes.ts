import { isDir } from '../posix/modes'
import { KvStore } from './kv'
import { Usage } from './meta'
import { Namespace } from './namespace'
import { Inode, decodeBlock, keys } from './records'
import { queueReclaim } from './queues'

/**
 * What `bslfs fsck --repair` changes in the directory. Offline only: these
 * bypass the namespace rules on purpose (they mend what the rules were
 * broken by), and each is made durable before it returns.
 */
export class FsckFixes {
  constructor (private readonly kv: KvStore, private readonly ns: Namespace) {}

  /** Set fields fsck found wrong (link count, a directory's parent, stored bytes). */
  fixInode (ino: number, patch: Partial<Pick<Inode, 'nlink' | 'parent' | 'stored'>>): Promise<Inode> {
    return this.ns.write(async w => {
      const updated = { ...(await w.inode(ino)), ...patch }
      w.putInode(updated)
      return updated
    }, true)
  }

  /** Remove an entry whose inode is gone. */
  dropEntry (parent: number, name: string): Promise<void> {
    return this.ns.write(async w => { w.delEntry(parent, name) }, true)
  }

  /** Give an inode nothing names a name in `dir` (lost+found); a directory also gets `dir` as its parent. */
  relink (ino: number, dir: number, name: string): Promise<void> {
    return this.ns.write(async w => {
      const inode = await w.inode(ino)
      const d = await w.inode(dir)
      w.putEntry(dir, name, inode)
      if (isDir(inode.mode)) {
        w.putInode({ ...inode, parent: dir })
        w.putInode({ ...d, nlink: d.nlink + 1 })
      }
    }, true)
  }

  /** Queue for reclaim the blocks recorded for an inode that does not exist. */
  freeBlocksOf (ino: number): Promise<number> {
    return this.kv.txn(async tx => {
      let n = 0
      for await (const [k, v] of tx.scan(keys.blocks(ino))) {
        tx.del(k)
        queueReclaim(tx, decodeBlock(k, v))
        n++
      }
      return n
    }, { sync: true })
  }

  /** Set the file and byte counters (statfs) to what fsck counted. */
  fixUsage (usage: Usage): Promise<void> {
    return this.ns.write(async w => { w.setUsage(usage) }, true)
  }
}
