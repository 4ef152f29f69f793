import createDebug from 'debug'
import { randomUUID } from 'node:crypto'
import { BSL } from '../bsl'
import { FsError } from '../errors'
import { S_IFDIR } from '../posix/modes'
import { nowTimespec } from '../posix/time'
import { DeviceRow, MirrorRow, Place, ServerRow, Tables, VolumeRow } from '../volumes/tables'
import { CopyToHeal } from '../volumes/volumes'
import { BlockChange, FileCommit, adoptBlocks, commitFile, readBlock, readBlocks } from './blocks'
import { Change, RemoteChanges, decodeChange } from './changes'
import { FsckFixes } from './fsck-fixes'
import { IdReservations } from './ids'
import { KvStore } from './kv'
import { LockTable } from './locks'
import { DirectoryConfig, Usage, configVersion, isConfig } from './meta'
import { DirEntry, FilePatch, NOTHING_OPEN, Namespace, NewNode, OpenInodes, RenameOptions } from './namespace'
import { forgetHealed, forgetReclaimed, isQueuedForReclaim, queueHeal, reclaimQueue } from './queues'
import { NamespaceReader } from './reader'
import { BlockRecord, Inode, ROOT_INO, decodeJSON, encodeInode, encodeJSON, keys } from './records'
import * as tables from './tables'
import { UsageCounters } from './usage'
import { Xattrs, inodesWithXattrs } from './xattrs'
import { chmodAcls, setAcl } from './acl'
import { Fence, fencedKv } from './fence'
import * as sessions from './sessions'
import { DIRECTORY_FORMAT_VERSION, formatTooNew } from '../format-version'

// The directory's parts, by job (each file says what it keeps):
//   namespace.ts  inodes, entries, the caches; create, link, unlink, rename
//   writer.ts     one transaction of namespace changes, published on commit
//   blocks.ts     block maps            xattrs.ts   extended attributes
//   queues.ts     reclaim and heal      tables.ts   volumes, mirrors, servers, devices
//   ids.ts        inode and object ids  meta.ts     config and usage counters
//   reader.ts     whole-namespace reads fsck-fixes.ts  what fsck --repair changes
// Directory below is the one face the layers above use.

const log = createDebug('bslfs:directory')

/** After another mount's change, the usage totals are read again this much later (once for a burst). */
const USAGE_REFRESH_MS = 1000

export type { BlockChange, Change, DirectoryConfig, DirEntry, FileCommit, FilePatch, NewNode, OpenInodes, RemoteChanges, Usage }
export { NOTHING_OPEN }
export { NAME_MAX } from './namespace'
export { NamespaceReader }

/**
 * The directory of one filesystem on a KvStore: the namespace, block maps,
 * xattrs, the work queues and the tables. Every change is one transaction
 * (one atomic batch).
 */
export class Directory {
  private readonly reader: NamespaceReader
  private readonly xattrs: Xattrs
  /** What fsck --repair changes (offline only: these bypass the namespace rules). */
  readonly fsckFixes: FsckFixes
  /** The store's change feed, while listening. */
  private feed?: { close (): Promise<void> }
  /** A usage refresh due after other mounts' changes. */
  private usageRefresh?: NodeJS.Timeout
  /** Refuses changes while this mount's session may have expired (shared stores; see fence.ts). */
  fence = new Fence()
  /** The store without the fence: the session's own renewals go through it. */
  private unfenced!: KvStore
  /** Advisory locks (fcntl, flock) that exclude across the mounts of a shared filesystem (locks.ts). */
  readonly locks: LockTable

  private constructor (
    readonly kv: KvStore,
    readonly config: DirectoryConfig,
    /** This mount of the filesystem (a new one each open): names its usage row. */
    readonly session: string,
    private readonly ids: IdReservations,
    private readonly counters: UsageCounters,
    private readonly ns: Namespace
  ) {
    this.reader = new NamespaceReader(kv)
    this.xattrs = new Xattrs(kv, ns)
    this.fsckFixes = new FsckFixes(kv, ns)
    this.locks = new LockTable(kv, session)
  }

  static async create (kv: KvStore, opts: { blockSize: number, root: { uid: number, gid: number, mode?: number }, openInodes?: OpenInodes, remote?: RemoteChanges }): Promise<Directory> {
    const config: DirectoryConfig = {
      format: 'bslfs-directory', version: 1, uuid: randomUUID(), blockSize: opts.blockSize, created: new Date().toISOString()
    }
    const t = nowTimespec()
    const root: Inode = {
      ino: ROOT_INO, mode: S_IFDIR | (opts.root.mode ?? 0o755), uid: opts.root.uid, gid: opts.root.gid,
      nlink: 2, size: 0, rdev: 0, atime: t, mtime: t, ctime: t, btime: t, parent: ROOT_INO
    }
    await kv.txn(async tx => {
      // Read inside the transaction: two hosts creating at once, one wins.
      if (await tx.get(keys.meta('config'))) throw new FsError('EEXIST', 'the directory already holds a filesystem')
      tx.put(keys.meta('config'), encodeJSON(config))
      IdReservations.initialize(tx)
      tx.put(keys.meta('usage'), encodeJSON({ files: 1, bytes: 0 }))
      tx.put(keys.inode(ROOT_INO), encodeInode(root))
    }, { sync: true })
    return Directory.open(kv, opts.openInodes, opts.remote)
  }

  /**
   * `openInodes`: the mount's open files, which the namespace asks before it frees an unlinked inode.
   * On a store with a change feed (PgKv) the directory drops from its caches what other mounts
   * change as soon as they commit, and tells `remote` (the mount tells the kernel).
   */
  static async open (kv: KvStore, openInodes: OpenInodes = NOTHING_OPEN, remote?: RemoteChanges): Promise<Directory> {
    const raw = await kv.get(keys.meta('config'))
    if (!raw) throw new FsError('ENOENT', 'no bslfs filesystem in this directory database')
    const tooNew = formatTooNew('the directory database', configVersion(raw), DIRECTORY_FORMAT_VERSION)
    if (tooNew) throw new FsError('EINVAL', tooNew)
    const config = decodeJSON<DirectoryConfig>('configuration', raw, isConfig)
    const fence = new Fence()
    const unfenced = kv
    // On a store other hosts write too, every change passes the fence (one host: nothing to fence).
    if (!kv.singleWriter) kv = fencedKv(kv, fence)
    const ids = await IdReservations.load(kv)
    const session = randomUUID()
    const counters = await UsageCounters.load(kv, session)
    const ns = new Namespace(kv, config.blockSize, ids, counters, await inodesWithXattrs(kv), openInodes)
    const dir = new Directory(kv, config, session, ids, counters, ns)
    dir.fence = fence
    dir.unfenced = unfenced
    // Listen before the first read that caches: a change committed after it is heard.
    if (kv.changes) dir.feed = await kv.changes.listen(dir.remoteHandler(remote))
    try {
      await ns.getInode(ROOT_INO)
    } catch (err) {
      await dir.feed?.close()
      throw err
    }
    return dir
  }

  get blockSize (): number { return this.config.blockSize }
  get usage (): Usage { return this.ns.usage }

  /** Whether a handle holds `ino` open: an open inode outlives its last link. */
  isOpen (ino: number): boolean { return this.ns.isOpen(ino) }

  /** Read what other mounts of the filesystem added to the usage totals since open. */
  refreshUsage (): Promise<void> { return this.counters.refresh() }

  /** Forget every cached inode and entry (another host may have changed any of them). */
  dropCaches (): void { this.ns.dropCaches() }

  private remoteHandler (remote?: RemoteChanges): { message (m: string): void, missed (): void } {
    return {
      message: m => {
        const change = decodeChange(m)
        if (!change) {
          log('a change-feed message this version does not read: flushing the caches')
          this.ns.dropCaches()
          remote?.missed()
          return
        }
        for (const ino of change.locks ?? []) this.locks.waits.wake(ino)
        if (change.locks && change.inodes.length === 0 && change.entries.length === 0 && change.tables !== true) return
        this.ns.forget(change)
        this.refreshUsageSoon()
        remote?.changed(change)
      },
      missed: () => {
        this.locks.waits.wakeAll()
        this.ns.dropCaches()
        remote?.missed()
      }
    }
  }

  /** Other mounts changed things: their usage shows (statfs) after one read, once per burst. */
  private refreshUsageSoon (): void {
    if (this.usageRefresh) return
    this.usageRefresh = setTimeout(() => {
      this.counters.refresh().catch(err => log('usage refresh: %s', (err as Error).message)).finally(() => { this.usageRefresh = undefined })
    }, USAGE_REFRESH_MS)
    this.usageRefresh.unref()
  }

  async close (): Promise<void> {
    await this.locks.releaseAll().catch(err => log('locks of %s not released: %s', this.session, (err as Error).message))
    await this.feed?.close()
    clearTimeout(this.usageRefresh)
    // The usage row folds into the base; if that fails the row stays, and still counts.
    await this.counters.fold().catch(err => log('usage row of %s not folded: %s', this.session, (err as Error).message))
    if (this.synced) await this.kv.txn(tx => { tx.del(this.syncedKey) }).catch(() => {})
    await this.kv.close()
  }

  /** Make everything committed so far durable against power loss (fsync). */
  sync (): Promise<void> {
    // A key of this mount's own: one that every host's fsync wrote would conflict.
    return this.kv.txn(tx => {
      tx.put(this.syncedKey, encodeJSON(new Date().toISOString()))
      tx.onCommit(() => { this.synced = true })
    }, { sync: true })
  }

  private synced = false
  private get syncedKey (): Buffer { return keys.meta(`synced/${this.session}`) }

  /** A consistent view of the whole namespace as it is now; close it when done. */
  snapshot (): { read: NamespaceReader, close (): Promise<void> } {
    const snap = this.kv.snapshot()
    return { read: new NamespaceReader(snap), close: () => snap.close() }
  }

  // ---- namespace (namespace.ts) -------------------------------------------

  getInode (ino: number): Promise<Inode> { return this.ns.getInode(ino) }
  /** The inode if it is in the cache (no read): for callers that take many in a row. */
  cachedInode (ino: number): Inode | undefined { return this.ns.cachedInode(ino) }
  /** Whether other processes write the store too (PostgreSQL): what is cached may be stale. */
  get shared (): boolean { return this.kv.singleWriter !== true }
  /** Forget the cached entry `name` of `parent` (it named an inode another host has removed). */
  forgetEntry (parent: number, name: string): void { this.ns.forget({ inodes: [], entries: [{ parent, name }] }) }
  /** The inode and block map as the store holds them now (not the caches), in one transaction. */
  readFresh (ino: number): Promise<{ inode: Inode, blocks: Map<number, BlockRecord> }> { return this.ns.readFresh(ino) }
  /** The child `name` of directory `parent`, or undefined. */
  lookup (parent: number, name: string): Promise<number | undefined> { return this.ns.lookup(parent, name) }
  /** The inode a path names ("/a/b"). ENOENT, ENOTDIR, ENAMETOOLONG as the kernel expects. */
  resolve (path: string): Promise<number> { return this.ns.resolve(path) }
  /** The directory that would hold `path`, and the last name. */
  resolveParent (path: string): Promise<{ parent: number, name: string }> { return this.ns.resolveParent(path) }
  readdir (dir: number): Promise<DirEntry[]> { return this.ns.readdir(dir) }

  /** Create a file, directory, symlink or special node named `name` in `parent`. */
  createNode (parent: number, name: string, node: NewNode, now = nowTimespec()): Promise<Inode> {
    return this.ns.createNode(parent, name, node, now)
  }

  /** A new name for an existing non-directory inode. */
  link (ino: number, parent: number, name: string, now = nowTimespec()): Promise<Inode> {
    return this.ns.link(ino, parent, name, now)
  }

  unlink (parent: number, name: string, now = nowTimespec()): Promise<void> { return this.ns.unlink(parent, name, now) }
  rmdir (parent: number, name: string, now = nowTimespec()): Promise<void> { return this.ns.rmdir(parent, name, now) }

  /** rename(2); `noReplace` is renameat2's RENAME_NOREPLACE, `whiteout` its RENAME_WHITEOUT. */
  rename (srcParent: number, srcName: string, dstParent: number, dstName: string, opts: RenameOptions = {}, now = nowTimespec()): Promise<void> {
    return this.ns.rename(srcParent, srcName, dstParent, dstName, opts, now)
  }

  /** renameat2's RENAME_EXCHANGE: the two names swap inodes atomically. */
  exchange (aParent: number, aName: string, bParent: number, bName: string, now = nowTimespec()): Promise<void> {
    return this.ns.exchange(aParent, aName, bParent, bName, now)
  }

  /** chattr: set the inode flags (immutable, append-only); `uid` is who asks. */
  setFlags (ino: number, flags: number, uid: number, now = nowTimespec()): Promise<Inode> {
    return this.ns.setFlags(ino, flags, uid, now)
  }

  /** Change attributes of an inode (chmod, chown, utimens, size). The caller sets ctime as POSIX says. */
  setAttrs (ino: number, patch: FilePatch, opts: { sync?: boolean } = {}): Promise<Inode> {
    return this.ns.setAttrs(ino, patch, opts)
  }

  /** The last handle of an inode closed: if it has no links left and nothing holds it, free it. */
  releaseIfUnlinked (ino: number): Promise<void> { return this.ns.releaseIfUnlinked(ino) }
  /** Free inodes left with no links by a crash while they were open. */
  purgeOrphans (): Promise<number> { return this.ns.purgeOrphans() }

  // ---- sessions, the job lease, open files across hosts (sessions.ts) ----

  /** Register this mount's session (`row.session` is this.session), or renew it: 'gone' once reaped as dead. */
  renewSession (row: sessions.SessionRow, create = false): Promise<'renewed' | 'gone'> {
    return sessions.renewSession(this.unfenced, row, { create })
  }

  /** Take or keep the lease of the once-per-filesystem jobs; true while this session holds it. */
  takeLease (expiryMs: number): Promise<boolean> { return sessions.takeLease(this.unfenced, this.session, expiryMs) }
  /** A clean unmount: the session row (and the lease, if held) goes. */
  endSession (): Promise<void> { return sessions.endSession(this.unfenced, this.session) }
  /** The session rows and the lease as stored. */
  async sessions (): Promise<{ sessions: sessions.SessionRow[], lease?: sessions.LeaseRow }> {
    return await this.kv.txn(async tx => ({ sessions: await sessions.readSessions(tx), lease: await sessions.readLease(tx) }))
  }

  /** On a shared store, note that this session holds `ino` open: an unlink on another host keeps it (ENOENT: gone). */
  async holdOpen (ino: number): Promise<void> {
    if (this.shared) await this.kv.txn(tx => sessions.holdOpen(tx, ino, this.session))
  }

  /**
   * Clean up after dead session `id` (sessions.ts reapSession): the number of
   * inodes freed; undefined when it is not there or (shared) renewed meanwhile.
   * `dead`: what else proves a session dead before its expiry (its process gone, on this host).
   */
  async reapSession (id: string, dead?: (row: sessions.SessionRow) => boolean): Promise<number | undefined> {
    const onlyIfExpired = this.shared
    const r = await this.ns.write(async w => await sessions.reapSession(w, id, { onlyIfExpired, dead }, async (tx, gone) => await this.locks.releaseLocksOf(tx, gone)))
    return r?.freed
  }

  /**
   * After this session was reaped (declared dead) and registered again: what it
   * holds open is recorded again (the inodes of `open` freed meanwhile are
   * returned), and its usage row, folded by the reaper, starts from zero.
   */
  async rejoin (open: number[], reaped: boolean): Promise<number[]> {
    if (reaped) this.counters.folded()
    return await this.unfenced.txn(async tx => {
      // The reaper released this session's locks: this mount no longer counts them as held.
      if (reaped) await this.locks.releaseLocksOf(tx, this.session)
      return await sessions.recheckHolds(tx, this.session, open)
    })
  }

  // ---- block maps (blocks.ts) ---------------------------------------------

  /** One block record of a file, or undefined when the file has none at that index. */
  getBlock (ino: number, index: number): Promise<BlockRecord | undefined> { return readBlock(this.kv, ino, index) }
  getBlocks (ino: number): Promise<Map<number, BlockRecord>> { return readBlocks(this.kv, ino) }

  /** Fresh object ids for new blocks; reserved durably before any is used, so an id is never handed out twice. */
  allocateObjectId (): Promise<bigint> { return this.ids.allocateObjectId() }

  /**
   * Point blocks of a file at new objects (already written and flushed) and
   * update its attributes, in one batch. Replaced blocks, and every block
   * at or past `dropFrom`, are queued for reclaim.
   */
  commitBlocks (ino: number, changes: BlockChange[], patch: FilePatch, opts: { dropFrom?: number, sync?: boolean } = {}): Promise<Inode> {
    return this.ns.write(async w => await commitFile(w, { ino, changes, patch, dropFrom: opts.dropFrom }), opts.sync)
  }

  /** commitBlocks for several files in one batch (a group commit); the inodes as updated, in order. */
  commitFiles (files: FileCommit[], opts: { sync?: boolean } = {}): Promise<Inode[]> {
    return this.ns.write(async w => {
      const out: Inode[] = []
      for (const f of files) out.push(await commitFile(w, f))
      return out
    }, opts.sync)
  }

  /** Physical BSLs of a file's blocks on `place` become logical BSLs of `volume`; the changed records by index. */
  adoptBlocks (ino: number, place: Place, volume: number): Promise<Map<number, BlockRecord>> {
    return adoptBlocks(this.kv, ino, place, volume)
  }

  /** Every block record of every file (scrub, remap, fsck). */
  allBlocks (): AsyncIterable<{ ino: number, index: number, block: BlockRecord }> { return this.reader.allBlocks() }

  // ---- xattrs (xattrs.ts) --------------------------------------------------

  getXattr (ino: number, name: string): Promise<Buffer> { return this.xattrs.get(ino, name) }
  listXattrs (ino: number): Promise<string[]> { return this.xattrs.list(ino) }
  /** flags: XATTR_CREATE (1) fails if present, XATTR_REPLACE (2) fails if absent. */
  setXattr (ino: number, name: string, value: Buffer, flags: number, now = nowTimespec()): Promise<void> {
    return this.xattrs.set(ino, name, value, flags, now)
  }

  removeXattr (ino: number, name: string, now = nowTimespec()): Promise<void> { return this.xattrs.remove(ino, name, now) }
  /** Set (value null: remove) a POSIX ACL xattr; an access ACL sets the mode in the same transaction (acl.ts). */
  setAcl (ino: number, name: string, value: Buffer | null, flags = 0, now = nowTimespec(), opts: { killSgid?: boolean } = {}): Promise<void> { return setAcl(this.ns, ino, name, value, flags, now, opts) }
  /** After a chmod: the access ACL follows the mode. */
  chmodAcls (ino: number, mode: number): Promise<void> { return chmodAcls(this.ns, ino, mode) }

  // ---- the reclaim queue (queues.ts) ---------------------------------------

  /** Blocks nothing references any more, waiting to be deleted from their devices. */
  reclaimQueue (limit = Infinity): Promise<Array<{ objectId: string, bsl: BSL }>> { return reclaimQueue(this.kv, limit) }
  forgetReclaimed (objectIds: string[]): Promise<void> { return forgetReclaimed(this.kv, objectIds) }
  /** True while a block's object waits in the reclaim queue (nothing references it). */
  isQueuedForReclaim (objectId: string): Promise<boolean> { return isQueuedForReclaim(this.kv, objectId) }

  // ---- the heal queue (queues.ts) ------------------------------------------

  /** Note copies that are missing or bad; the heal queue survives crashes. */
  queueHeal (copies: CopyToHeal[]): Promise<void> { return queueHeal(this.kv, copies) }
  /** The heal queue, in key order from `after`. */
  healQueue (limit: number, after?: Buffer): Promise<Array<CopyToHeal & { key: Buffer }>> { return this.reader.healQueue(limit, after) }
  /** Copies queued for heal, by mirror volume. */
  healBacklog (): Promise<Map<number, number>> { return this.reader.healBacklog() }
  forgetHealed (keyList: Buffer[]): Promise<void> { return forgetHealed(this.kv, keyList) }

  // ---- tables (tables.ts) --------------------------------------------------

  tables (): Promise<Tables> { return tables.readTables(this.kv) }
  putDevice (row: DeviceRow): Promise<void> { return tables.putDevice(this.kv, row) }
  putServer (row: ServerRow): Promise<void> { return tables.putServer(this.kv, row) }
  /** Point a volume at a place; a move keeps the old place in the history. */
  setVolume (volume: number, place: Place): Promise<VolumeRow> { return tables.setVolume(this.kv, volume, place) }
  setMirror (row: MirrorRow): Promise<void> { return tables.setMirror(this.kv, row) }
  /** Where new blocks go: a volume, or a place (physical BSLs). */
  setDefaultVolume (volume: number | Place): Promise<void> { return tables.setDefaultVolume(this.kv, volume) }
}
