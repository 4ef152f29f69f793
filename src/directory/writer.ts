import createDebug from 'debug'
import { FsError } from '../errors'
import { Timespec } from '../posix/time'
import { encodeChange } from './changes'
import { KvTxn } from './kv'
import { Usage } from './meta'
import { queueReclaim } from './queues'
import { BlockRecord, Inode, decodeBlock, encodeEntry, encodeInode, keys } from './records'
import { UsageCounters } from './usage'

const log = createDebug('bslfs:directory')

/** Files of up to this many blocks are freed by point reads of their block records, not a scan. */
const POINT_READ_BLOCKS = 16

/** What a Writer reads through and publishes to: the namespace with its caches (namespace.ts). */
export interface WriterHost {
  readonly blockSize: number
  readonly usageCounters: UsageCounters
  /** Whether `ino` may have xattrs (the others need no xattr scan when freed). */
  mayHaveXattrs (ino: number): boolean
  /** `ino` has no xattrs any more (once the batch that freed it commits). */
  forgetXattrs (ino: number): void
  isOpen (ino: number): boolean
  /** Whether a mount (of a shared store) holds `ino` open, as the store says in `tx`. */
  heldOpen (tx: KvTxn, ino: number): Promise<boolean>
  getInode (ino: number, tx?: KvTxn): Promise<Inode>
  lookup (parent: number, name: string, tx?: KvTxn): Promise<number | undefined>
  /** Publish what a batch changed, once it has committed. */
  applyCommitted (inodes: Map<number, Inode | null>, dentries: Map<string, number>): void
}

/**
 * The work of one transaction: reads that see its own writes, and cache
 * updates published on commit. A Writer lives for one run of a transaction's
 * body (a run again after a conflict gets a new one), so nothing it holds
 * outlives a run that did not commit.
 */
export class Writer {
  private readonly inodes = new Map<number, Inode | null>()
  private readonly dentries = new Map<string, number>()
  private usageDelta: Usage = { files: 0, bytes: 0 }
  /** Set by fsck: the totals replaced outright. */
  private usageSet: Usage | null = null

  constructor (private readonly dir: WriterHost, readonly tx: KvTxn) {}

  async inode (ino: number): Promise<Inode> {
    const pending = this.inodes.get(ino)
    if (pending) return pending
    if (pending === null) throw new FsError('ENOENT', `inode ${ino}`)
    return this.dir.getInode(ino, this.tx)
  }

  async lookup (parent: number, name: string): Promise<number | undefined> {
    const pending = this.dentries.get(`${parent}/${name}`)
    if (pending !== undefined) return pending === 0 ? undefined : pending
    return this.dir.lookup(parent, name, this.tx)
  }

  /** Read these keys ahead in one round trip, where the engine has round trips (PostgreSQL). */
  async prefetch (...ks: Buffer[]): Promise<void> {
    await this.tx.prefetch?.(ks)
  }

  putInode (inode: Inode): void {
    this.inodes.set(inode.ino, inode)
    this.tx.put(keys.inode(inode.ino), encodeInode(inode))
  }

  putEntry (parent: number, name: string, inode: Inode): void {
    this.dentries.set(`${parent}/${name}`, inode.ino)
    this.tx.put(keys.entry(parent, name), encodeEntry(inode.ino, inode.mode))
  }

  delEntry (parent: number, name: string): void {
    this.dentries.set(`${parent}/${name}`, 0)
    this.tx.del(keys.entry(parent, name))
  }

  addUsage (files: number, bytes: number): void {
    this.usageDelta = { files: this.usageDelta.files + files, bytes: this.usageDelta.bytes + bytes }
  }

  /** Replace the counters outright (fsck sets what it counted). */
  setUsage (usage: Usage): void {
    this.usageSet = { ...usage }
    this.usageDelta = { files: 0, bytes: 0 }
  }

  /** Queue a block's object for reclaim; returns its length. */
  freeBlock (key: Buffer, rec: BlockRecord): number {
    this.tx.del(key)
    queueReclaim(this.tx, rec)
    return rec.length
  }

  /** One link fewer; with none left the inode goes, unless a handle still holds it open. */
  async dropLink (inode: Inode, now: Timespec): Promise<void> {
    const updated = { ...inode, nlink: Math.max(0, inode.nlink - 1), ctime: now }
    if (updated.nlink > 0) {
      this.putInode(updated)
    } else if (this.dir.isOpen(inode.ino) || await this.dir.heldOpen(this.tx, inode.ino)) {
      this.putInode(updated)
      this.tx.put(keys.orphan(inode.ino), Buffer.alloc(0))
    } else {
      await this.deleteInode(updated)
    }
  }

  async removeEmptyDir (parent: number, name: string, inode: Inode, now: Timespec): Promise<void> {
    for await (const _ of this.tx.scan(keys.entries(inode.ino), { limit: 1 })) throw new FsError('ENOTEMPTY', name)
    this.delEntry(parent, name)
    if (this.dir.isOpen(inode.ino) || await this.dir.heldOpen(this.tx, inode.ino)) {
      this.putInode({ ...inode, nlink: 0, ctime: now })
      this.tx.put(keys.orphan(inode.ino), Buffer.alloc(0))
    } else {
      await this.deleteInode(inode)
    }
  }

  async deleteInode (inode: Inode): Promise<void> {
    let bytes = 0
    // Block records lie below the size (truncate drops the rest in its batch), so an empty file
    // needs no scan and a small one a few point reads, cheaper than a scan's iterator.
    const blocks = Math.ceil(inode.size / this.dir.blockSize)
    if (blocks > 0 && blocks <= POINT_READ_BLOCKS) {
      await this.prefetch(...Array.from({ length: blocks }, (_, i) => keys.block(inode.ino, i)))
      for (let i = 0; i < blocks; i++) {
        const k = keys.block(inode.ino, i)
        const v = await this.tx.get(k)
        if (v) bytes -= this.freeBlock(k, decodeBlock(k, v))
      }
    } else if (blocks > 0 || (inode.stored ?? 0) > 0) {
      for await (const [k, v] of this.tx.scan(keys.blocks(inode.ino))) bytes -= this.freeBlock(k, decodeBlock(k, v))
    }
    if (this.dir.mayHaveXattrs(inode.ino)) {
      for await (const [k] of this.tx.scan(keys.xattrs(inode.ino))) this.tx.del(k)
      this.tx.onCommit(() => this.dir.forgetXattrs(inode.ino))
    }
    this.tx.del(keys.inode(inode.ino))
    this.tx.del(keys.orphan(inode.ino))
    this.inodes.set(inode.ino, null)
    this.addUsage(-1, bytes)
    log('freed inode %d (%d bytes)', inode.ino, -bytes)
  }

  async finish (): Promise<void> {
    if (this.usageSet) await this.dir.usageCounters.replace(this.tx, this.usageSet)
    this.dir.usageCounters.record(this.tx, this.usageDelta)
    const { inodes, dentries } = this
    if (this.tx.notify && (inodes.size > 0 || dentries.size > 0)) {
      const entries = [...dentries.keys()].map(k => {
        const cut = k.indexOf('/')
        return { parent: Number(k.slice(0, cut)), name: k.slice(cut + 1) }
      })
      for (const m of encodeChange({ inodes: [...inodes.keys()], entries })) this.tx.notify(m)
    }
    this.tx.onCommit(() => this.dir.applyCommitted(inodes, dentries))
  }
}
