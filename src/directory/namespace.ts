import { randomInt } from 'node:crypto'
import { FsError } from '../errors'
import { S_IFCHR, S_ISGID, isDir } from '../posix/modes'
import { Timespec, nowTimespec } from '../posix/time'
import { readBlocks } from './blocks'
import { Change } from './changes'
import { inheritAcls } from './acl'
import { IdReservations } from './ids'
import { checkCanAdd, checkCanRemove, checkMovable, checkNewFlags } from './inode-flags'
import { KvStore, KvTxn } from './kv'
import { Usage } from './meta'
import { NamespaceReader } from './reader'
import { BlockRecord, Inode, ROOT_INO, decodeEntry, decodeInode, keys } from './records'
import { UsageCounters } from './usage'
import { heldOpen, letGo } from './sessions'
import { Writer, WriterHost } from './writer'

export const NAME_MAX = 255

/** Entries and inodes each cache holds at most. */
const CACHE_LIMIT = 250_000

export interface DirEntry { name: string, ino: number, mode: number }

/** What to create: the caller (the FUSE layer) has applied umask and knows who asks. */
export interface NewNode {
  mode: number
  uid: number
  gid: number
  rdev?: number
  target?: string
  /** The creator's umask, where the kernel left it to the filesystem (FUSE_DONT_MASK): applied unless a default ACL rules. */
  umask?: number
  /** Inherit the directory's default ACL (POSIX ACLs on). */
  acl?: boolean
  /** O_TMPFILE: no name, no link; kept as an orphan (O key) until linked, or freed with its last close. */
  unnamed?: boolean
}

/** Attributes that change without the namespace changing: setAttrs, and a file's writes through an open handle. */
export type FilePatch = Partial<Pick<Inode, 'size' | 'mtime' | 'ctime' | 'atime' | 'mode' | 'uid' | 'gid'>>

function checkName (name: string): void {
  if (name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0')) {
    throw new FsError('EINVAL', `bad name ${JSON.stringify(name)}`)
  }
  if (Buffer.byteLength(name, 'utf8') > NAME_MAX) throw new FsError('ENAMETOOLONG', `name over ${NAME_MAX} bytes`)
}

/** A Map that forgets its oldest entries past a limit: the caches must not grow without bound. */
class BoundedMap<K, V> extends Map<K, V> {
  constructor (private readonly limit: number) { super() }
  override set (k: K, v: V): this {
    if (this.size >= this.limit && !this.has(k)) {
      const oldest = this.keys().next()
      if (!oldest.done) this.delete(oldest.value)
    }
    return super.set(k, v)
  }
}

/** rename(2) variants (renameat2): `noReplace` RENAME_NOREPLACE; `whiteout` RENAME_WHITEOUT, owned by the caller. */
export interface RenameOptions { noReplace?: boolean, whiteout?: { uid: number, gid: number } }

/** Which inodes a handle holds open (the data layer's open files): an open inode outlives its last link. */
export interface OpenInodes { isOpen (ino: number): boolean }

/** For the CLI's offline commands: no handle is open. */
export const NOTHING_OPEN: OpenInodes = { isOpen: () => false }

/**
 * The namespace: inodes and entries (I, E, O keys) and the rules of
 * creating, linking, unlinking and renaming. Every change is one transaction
 * (one atomic batch, through a Writer); the caches of inodes and entries in
 * front are updated only when a batch commits, so they never serve a stale
 * entry. The usage counters are published the same way.
 *
 * A transaction's body may run more than once (PostgreSQL runs it again after
 * a serialization failure): it changes nothing here except in onCommit hooks.
 * Inside a transaction the caches answer only when this process is the
 * store's one writer (`kv.singleWriter`, LevelDB); otherwise every read goes
 * through the transaction, as another host may have changed what is cached.
 */
export class Namespace implements WriterHost {
  private readonly inodes = new BoundedMap<number, Inode>(CACHE_LIMIT)
  /** `${parent}/${name}` → ino, or 0 when known absent. */
  private readonly dentries = new BoundedMap<string, number>(CACHE_LIMIT)
  /** Counts commits that changed cached state: a read that raced one must not cache what it read. */
  private commits = 0
  /** Whether a transaction may answer its reads from the caches (see above). */
  private readonly cacheExactInTxn: boolean

  constructor (
    private readonly kv: KvStore,
    readonly blockSize: number,
    private readonly ids: IdReservations,
    readonly usageCounters: UsageCounters,
    /**
     * Inodes that may have extended attributes (loaded at open, added on each set): any other
     * inode has none, so reading or freeing it needs no xattr lookup (`ls -l` asks for one per file).
     * Trusted only on a store with one writer: another host may set an xattr on any inode.
     */
    private readonly withXattrs: Set<number>,
    /** The mount's open files: an open inode outlives its last link. */
    private readonly openInodes: OpenInodes = NOTHING_OPEN
  ) {
    this.cacheExactInTxn = kv.singleWriter === true
  }

  get usage (): Usage { return this.usageCounters.total }

  /** Whether `ino` may have extended attributes (false: it has none, no read needed). */
  mayHaveXattrs (ino: number): boolean {
    return !this.cacheExactInTxn || this.withXattrs.has(ino)
  }

  /** Note (on commit) that `ino` has xattrs now, or none any more. */
  noteXattrs (ino: number): void { this.withXattrs.add(ino) }
  forgetXattrs (ino: number): void { this.withXattrs.delete(ino) }

  /** Whether a handle holds `ino` open. */
  isOpen (ino: number): boolean { return this.openInodes.isOpen(ino) }
  /** Whether a mount of a shared store holds `ino` open (its hold record, sessions.ts); one host: none are kept. */
  async heldOpen (tx: KvTxn, ino: number): Promise<boolean> { return !this.cacheExactInTxn && await heldOpen(tx, ino) }

  // ---- reads -------------------------------------------------------------

  async getInode (ino: number, tx?: KvTxn): Promise<Inode> {
    const cached = tx && !this.cacheExactInTxn ? undefined : this.inodes.get(ino)
    if (cached) return cached
    const before = this.commits
    const raw = await (tx ?? this.kv).get(keys.inode(ino))
    if (!raw) throw new FsError('ENOENT', `no inode ${ino}`)
    const inode = decodeInode(ino, raw)
    if (!tx && this.commits === before) this.inodes.set(ino, inode)
    return inode
  }

  /**
   * The inode and block map of `ino` as the store holds them now, read in one
   * transaction, not from the caches (another host may have changed both since);
   * the inode cache takes the inode (an open on a shared filesystem: close-to-open).
   */
  async readFresh (ino: number): Promise<{ inode: Inode, blocks: Map<number, BlockRecord> }> {
    const before = this.commits
    const got = await this.kv.txn(async tx => ({ inode: await this.getInode(ino, tx), blocks: await readBlocks(tx, ino) })).catch(err => {
      if (err instanceof FsError && err.code === 'ENOENT') this.inodes.delete(ino) // removed elsewhere: no stale copy answers again
      throw err
    })
    if (this.commits === before) this.inodes.set(ino, got.inode)
    else this.inodes.delete(ino) // a commit raced the read: the next read asks the store
    return got
  }

  /** The inode if it is in the cache (no read): for callers that take many in a row. */
  cachedInode (ino: number): Inode | undefined {
    return this.inodes.get(ino)
  }

  /** The child `name` of directory `parent`, or undefined. */
  async lookup (parent: number, name: string, tx?: KvTxn): Promise<number | undefined> {
    const k = `${parent}/${name}`
    const cached = tx && !this.cacheExactInTxn ? undefined : this.dentries.get(k)
    if (cached !== undefined) return cached === 0 ? undefined : cached
    if (Buffer.byteLength(name, 'utf8') > NAME_MAX) throw new FsError('ENAMETOOLONG', `name over ${NAME_MAX} bytes`)
    const key = keys.entry(parent, name)
    const before = this.commits
    const raw = await (tx ?? this.kv).get(key)
    const ino = raw ? decodeEntry(key, raw).ino : undefined
    if (!tx && this.commits === before) this.dentries.set(k, ino ?? 0)
    return ino
  }

  /** The inode a path names ("/a/b"). ENOENT, ENOTDIR, ENAMETOOLONG as the kernel expects. */
  async resolve (path: string): Promise<number> {
    let ino = ROOT_INO
    if (path === '/') return ino
    const parts = path.split('/')
    for (let i = 1; i < parts.length; i++) {
      const name = parts[i]
      if (name === '') continue
      const next = await this.lookup(ino, name)
      if (next === undefined) throw new FsError('ENOENT', path)
      if (i < parts.length - 1 && !isDir((await this.getInode(next)).mode)) throw new FsError('ENOTDIR', path)
      ino = next
    }
    return ino
  }

  /** The directory that would hold `path`, and the last name. */
  async resolveParent (path: string): Promise<{ parent: number, name: string }> {
    const cut = path.lastIndexOf('/')
    const name = path.slice(cut + 1)
    checkName(name)
    const parent = await this.resolve(cut <= 0 ? '/' : path.slice(0, cut))
    if (!isDir((await this.getInode(parent)).mode)) throw new FsError('ENOTDIR', path)
    return { parent, name }
  }

  async readdir (dir: number): Promise<DirEntry[]> {
    const inode = await this.getInode(dir)
    if (!isDir(inode.mode)) throw new FsError('ENOTDIR', `inode ${dir}`)
    const prefix = keys.entries(dir)
    const out: DirEntry[] = []
    for await (const [k, v] of this.kv.scan(prefix)) {
      const e = decodeEntry(k, v)
      out.push({ name: k.subarray(prefix.length).toString('utf8'), ino: e.ino, mode: e.mode })
    }
    return out
  }

  // ---- transactions --------------------------------------------------------

  /** One transaction with cache-consistent writes. */
  write<T> (fn: (w: Writer) => Promise<T>, sync = false): Promise<T> {
    return this.kv.txn(async tx => {
      const w = new Writer(this, tx)
      const result = await fn(w)
      await w.finish()
      return result
    }, { sync })
  }

  applyCommitted (inodes: Map<number, Inode | null>, dentries: Map<string, number>): void {
    this.commits++
    for (const [ino, inode] of inodes) {
      if (inode) this.inodes.set(ino, inode)
      else this.inodes.delete(ino)
    }
    for (const [k, v] of dentries) this.dentries.set(k, v)
  }

  /** Forget what another writer changed (a read in flight that raced this does not cache what it read). */
  forget (change: Change): void {
    this.commits++
    for (const ino of change.inodes) this.inodes.delete(ino)
    for (const { parent, name } of change.entries) this.dentries.delete(`${parent}/${name}`)
  }

  /** Forget everything cached (another writer may have changed any of it). */
  dropCaches (): void {
    this.commits++
    this.inodes.clear()
    this.dentries.clear()
  }

  // ---- changes -------------------------------------------------------------

  /** Create a file, directory, symlink or special node named `name` in `parent`. */
  async createNode (parent: number, name: string, node: NewNode, now = nowTimespec()): Promise<Inode> {
    if (!node.unnamed) checkName(name)
    await this.ids.prepareIno()
    return this.write(async w => {
      if (!this.cacheExactInTxn) await w.prefetch(keys.inode(parent), ...(node.unnamed ? [] : [keys.entry(parent, name)]))
      const dir = await w.inode(parent)
      if (!isDir(dir.mode)) throw new FsError('ENOTDIR', `inode ${parent}`)
      if (dir.nlink === 0) throw new FsError('ENOENT', 'the directory was removed')
      checkCanAdd(dir)
      if (!node.unnamed && await w.lookup(parent, name) !== undefined) throw new FsError('EEXIST', name)
      const ino = await this.ids.takeIno(w.tx)
      let { mode, gid } = node
      // A setgid directory hands its group to what is made in it, and its setgid bit to subdirectories.
      if (dir.mode & S_ISGID) {
        gid = dir.gid
        if (isDir(mode)) mode |= S_ISGID
      }
      const inode: Inode = {
        ino, mode, uid: node.uid, gid, nlink: isDir(mode) ? 2 : 1,
        size: node.target !== undefined ? Buffer.byteLength(node.target) : 0,
        rdev: node.rdev ?? 0, atime: now, mtime: now, ctime: now, btime: now, gen: randomInt(1, 2 ** 32)
      }
      if (isDir(mode)) inode.parent = parent
      if (node.target !== undefined) inode.target = node.target
      if (node.acl) inode.mode = await inheritAcls(w, this, dir, inode, node.umask)
      else if (node.umask !== undefined && !node.target) inode.mode &= ~(node.umask & 0o777)
      if (node.unnamed) {
        inode.nlink = 0
        w.putInode(inode)
        w.tx.put(keys.orphan(ino), Buffer.alloc(0))
        w.addUsage(1, 0)
        return inode
      }
      w.putInode(inode)
      w.putEntry(parent, name, inode)
      w.putInode({ ...dir, nlink: dir.nlink + (isDir(mode) ? 1 : 0), mtime: now, ctime: now })
      w.addUsage(1, 0)
      return inode
    })
  }

  /** A new name for an existing non-directory inode. */
  async link (ino: number, parent: number, name: string, now = nowTimespec()): Promise<Inode> {
    checkName(name)
    return this.write(async w => {
      const inode = await w.inode(ino)
      if (isDir(inode.mode)) throw new FsError('EPERM', 'hard links to directories are not allowed')
      checkMovable(inode)
      const dir = await w.inode(parent)
      if (!isDir(dir.mode)) throw new FsError('ENOTDIR', `inode ${parent}`)
      checkCanAdd(dir)
      if (await w.lookup(parent, name) !== undefined) throw new FsError('EEXIST', name)
      if (inode.nlink >= 65000) throw new FsError('EMLINK', `inode ${ino}`)
      const updated = { ...inode, nlink: inode.nlink + 1, ctime: now }
      w.putInode(updated)
      if (inode.nlink === 0) w.tx.del(keys.orphan(ino))
      w.putEntry(parent, name, updated)
      w.putInode({ ...dir, mtime: now, ctime: now })
      return updated
    })
  }

  /**
   * What an unlink or rmdir reads first, in one statement: the entry, the directory's inode, and
   * the inode the cached entry names (a guess of what to read, never what decides: the entry read
   * in the transaction says which inode it is, and a wrong guess is one read more).
   */
  private unlinkKeys (parent: number, name: string): Buffer[] {
    const guess = this.dentries.get(`${parent}/${name}`)
    return [keys.entry(parent, name), keys.inode(parent), ...(guess ? [keys.inode(guess)] : [])]
  }

  unlink (parent: number, name: string, now = nowTimespec()): Promise<void> {
    return this.write(async w => {
      if (!this.cacheExactInTxn && Buffer.byteLength(name, 'utf8') <= NAME_MAX) await w.prefetch(...this.unlinkKeys(parent, name))
      const ino = await w.lookup(parent, name)
      if (ino === undefined) throw new FsError('ENOENT', name)
      const inode = await w.inode(ino)
      if (isDir(inode.mode)) throw new FsError('EISDIR', name)
      checkMovable(inode)
      checkCanRemove(await w.inode(parent))
      w.delEntry(parent, name)
      await w.dropLink(inode, now)
      const dir = await w.inode(parent)
      w.putInode({ ...dir, mtime: now, ctime: now })
    })
  }

  rmdir (parent: number, name: string, now = nowTimespec()): Promise<void> {
    return this.write(async w => {
      if (!this.cacheExactInTxn && Buffer.byteLength(name, 'utf8') <= NAME_MAX) await w.prefetch(...this.unlinkKeys(parent, name))
      const ino = await w.lookup(parent, name)
      if (ino === undefined) throw new FsError('ENOENT', name)
      const inode = await w.inode(ino)
      if (!isDir(inode.mode)) throw new FsError('ENOTDIR', name)
      checkMovable(inode)
      checkCanRemove(await w.inode(parent))
      await w.removeEmptyDir(parent, name, inode, now)
      const dir = await w.inode(parent)
      w.putInode({ ...dir, nlink: dir.nlink - 1, mtime: now, ctime: now })
    })
  }

  /**
   * rename(2): atomic, over an existing file or empty directory, across
   * directories; with `noReplace` (renameat2's RENAME_NOREPLACE) an existing
   * target is EEXIST instead.
   */
  async rename (srcParent: number, srcName: string, dstParent: number, dstName: string, opts: RenameOptions = {}, now = nowTimespec()): Promise<void> {
    checkName(dstName)
    if (opts.whiteout) await this.ids.prepareIno()
    return this.write(async w => {
      const ino = await w.lookup(srcParent, srcName)
      if (ino === undefined) throw new FsError('ENOENT', srcName)
      const inode = await w.inode(ino)
      const dstDir = await w.inode(dstParent)
      if (!isDir(dstDir.mode)) throw new FsError('ENOTDIR', `inode ${dstParent}`)
      const existing = await w.lookup(dstParent, dstName)
      if (existing !== undefined && opts.noReplace) throw new FsError('EEXIST', dstName)
      if (existing === ino) return // both names are links to one inode: POSIX says do nothing
      checkMovable(inode)
      checkCanRemove(await w.inode(srcParent))
      checkCanAdd(dstDir)
      const moving = isDir(inode.mode)
      if (moving && dstParent !== srcParent) {
        // A directory may not move into itself or below itself.
        for (let p = dstParent; ; p = (await w.inode(p)).parent ?? ROOT_INO) {
          if (p === ino) throw new FsError('EINVAL', 'cannot move a directory into itself')
          if (p === ROOT_INO) break
        }
      }
      let dstNlinkDelta = 0
      if (existing !== undefined) {
        const target = await w.inode(existing)
        checkMovable(target)
        checkCanRemove(dstDir)
        if (isDir(target.mode)) {
          if (!moving) throw new FsError('EISDIR', dstName)
          await w.removeEmptyDir(dstParent, dstName, target, now)
          dstNlinkDelta -= 1
        } else {
          if (moving) throw new FsError('ENOTDIR', dstName)
          w.delEntry(dstParent, dstName)
          await w.dropLink(target, now)
        }
      }
      w.delEntry(srcParent, srcName)
      const moved: Inode = { ...inode, ctime: now }
      if (moving) {
        moved.parent = dstParent
        if (srcParent !== dstParent) dstNlinkDelta += 1
      }
      w.putInode(moved)
      w.putEntry(dstParent, dstName, moved)
      const src = await w.inode(srcParent)
      w.putInode({ ...src, nlink: src.nlink - (moving && srcParent !== dstParent ? 1 : 0), mtime: now, ctime: now })
      const dst = await w.inode(dstParent)
      w.putInode({ ...dst, nlink: dst.nlink + dstNlinkDelta, mtime: now, ctime: now })
      if (opts.whiteout) await this.putWhiteout(w, srcParent, srcName, opts.whiteout, now)
    })
  }

  /** RENAME_WHITEOUT: the name left behind becomes a whiteout (a character device 0:0, as overlayfs reads it). */
  private async putWhiteout (w: Writer, parent: number, name: string, owner: { uid: number, gid: number }, now: Timespec): Promise<void> {
    const ino = await this.ids.takeIno(w.tx)
    const inode: Inode = { ino, mode: S_IFCHR, uid: owner.uid, gid: owner.gid, nlink: 1, size: 0, rdev: 0, atime: now, mtime: now, ctime: now }
    w.putInode(inode)
    w.putEntry(parent, name, inode)
    w.addUsage(1, 0)
  }

  /**
   * renameat2's RENAME_EXCHANGE: the two names swap their inodes in one
   * transaction. Both must exist; a directory that changes parent takes its
   * '..' (and its link in the parents' counts) along.
   */
  exchange (aParent: number, aName: string, bParent: number, bName: string, now = nowTimespec()): Promise<void> {
    checkName(aName)
    checkName(bName)
    return this.write(async w => {
      const aIno = await w.lookup(aParent, aName)
      if (aIno === undefined) throw new FsError('ENOENT', aName)
      const bIno = await w.lookup(bParent, bName)
      if (bIno === undefined) throw new FsError('ENOENT', bName)
      if (aIno === bIno) return
      const a = await w.inode(aIno)
      const b = await w.inode(bIno)
      checkMovable(a)
      checkMovable(b)
      checkCanRemove(await w.inode(aParent))
      checkCanRemove(await w.inode(bParent))
      if (aParent !== bParent) {
        // Neither directory may end up inside itself.
        for (const [moving, into] of [[a, bParent], [b, aParent]] as const) {
          if (!isDir(moving.mode)) continue
          for (let p = into; ; p = (await w.inode(p)).parent ?? ROOT_INO) {
            if (p === moving.ino) throw new FsError('EINVAL', 'cannot move a directory into itself')
            if (p === ROOT_INO) break
          }
        }
      }
      const movedA: Inode = { ...a, ctime: now }
      const movedB: Inode = { ...b, ctime: now }
      if (isDir(a.mode)) movedA.parent = bParent
      if (isDir(b.mode)) movedB.parent = aParent
      w.putInode(movedA)
      w.putInode(movedB)
      w.putEntry(aParent, aName, movedB)
      w.putEntry(bParent, bName, movedA)
      // A directory that changes parent moves one link (its '..') from the old parent to the new.
      const shift = aParent === bParent ? 0 : (isDir(a.mode) ? 1 : 0) - (isDir(b.mode) ? 1 : 0)
      const ap = await w.inode(aParent)
      w.putInode({ ...ap, nlink: ap.nlink - shift, mtime: now, ctime: now })
      if (aParent !== bParent) {
        const bp = await w.inode(bParent)
        w.putInode({ ...bp, nlink: bp.nlink + shift, mtime: now, ctime: now })
      }
    })
  }

  /** Change attributes of an inode (chmod, chown, utimens, size). The caller sets ctime as POSIX says. */
  setAttrs (ino: number, patch: FilePatch, opts: { sync?: boolean } = {}): Promise<Inode> {
    return this.write(async w => {
      const inode = await w.inode(ino)
      const updated = { ...inode, ...patch }
      w.putInode(updated)
      return updated
    }, opts.sync)
  }

  /** FS_IOC_SETFLAGS (chattr) by `uid`: the flags as stored. */
  setFlags (ino: number, flags: number, uid: number, now = nowTimespec()): Promise<Inode> {
    return this.write(async w => {
      const inode = await w.inode(ino)
      checkNewFlags(inode, flags, uid)
      const updated: Inode = { ...inode, ctime: now }
      if (flags) updated.flags = flags
      else delete updated.flags
      w.putInode(updated)
      return updated
    })
  }

  /** The last handle of an inode closed: if it has no links left and nothing holds it, free it. */
  releaseIfUnlinked (ino: number): Promise<void> {
    // Every close comes here. On one host an inode the cache knows to have links needs no transaction
    // (this mount's own unlinks reach the cache on commit). A shared filesystem always lets go of its
    // hold record: one left behind would keep the file after another host's unlink, as if still open here.
    if (this.cacheExactInTxn && (this.inodes.get(ino)?.nlink ?? 0) > 0) return Promise.resolve()
    return this.write(async w => {
      if (this.isOpen(ino)) return
      // Shared: this mount's hold record goes; another mount that holds the inode keeps it.
      if (!this.cacheExactInTxn && await letGo(w.tx, ino, this.usageCounters.session)) return
      const node = await w.inode(ino).catch(() => undefined)
      if (node && node.nlink === 0) await w.deleteInode(node)
    })
  }

  /** Free inodes left with no links by a crash while they were open. */
  async purgeOrphans (): Promise<number> {
    const orphans = await new NamespaceReader(this.kv).orphanInodes()
    for (const ino of orphans) await this.releaseIfUnlinked(ino).catch(() => undefined)
    return orphans.length
  }
}
