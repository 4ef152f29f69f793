/**
 * Advisory locks in the directory, so that they exclude across every host of a
 * shared filesystem: fcntl byte-range locks (POSIX and OFD) and flock(2).
 *
 *   L ino session kind owner → {"p":pid,"r":[[start,end,type]…]}  one record per (inode, owner)
 *
 * An owner is this mount's session (Directory.session, a UUID) and the
 * kernel's lock_owner (a 64-bit id of the process's file table for POSIX locks,
 * of the open file for flock and OFD locks), in hex; kind 'p' (fcntl) or 'f'
 * (flock): the two kinds never conflict with each other, as on Linux. Every
 * change is one SERIALIZABLE transaction that reads the inode's records and
 * writes its owner's; a release notifies the change feed ({locks:[ino]}) so a
 * waiter on another host tries again at once.
 */
import createDebug from 'debug'
import { FsError } from '../errors'
import { encodeChange } from './changes'
import { KvReader, KvStore, KvTxn } from './kv'

const log = createDebug('bslfs:locks')

export const F_RDLCK = 0
export const F_WRLCK = 1
export const F_UNLCK = 2
/** The end of a lock "to the end of the file" (the kernel's OFFSET_MAX, past what a JS number holds exactly). */
export const LOCK_END = Number.MAX_SAFE_INTEGER

/** One locked range of an owner, ends inclusive. */
export interface LockRange { start: number, end: number, type: number }
/** Who holds a lock: this mount's session, the kernel's lock owner (hex), and whether it is a flock. */
export interface LockOwner { session: string, owner: string, flock: boolean }
/** A lock as GETLK reports it. */
export interface HeldLock extends LockRange { owner: LockOwner, pid: number }

const PREFIX = Buffer.from('L')
const SESSION_BYTES = 36

function inoBytes (ino: number): Buffer {
  const b = Buffer.allocUnsafe(8)
  b.writeBigUInt64BE(BigInt(ino))
  return b
}

const inodePrefix = (ino: number): Buffer => Buffer.concat([PREFIX, inoBytes(ino)])

function lockKey (ino: number, o: LockOwner): Buffer {
  if (o.session.length !== SESSION_BYTES) throw new FsError('EINVAL', `lock owner session "${o.session}" is not a UUID`)
  return Buffer.concat([inodePrefix(ino), Buffer.from(o.session + (o.flock ? 'f' : 'p') + o.owner, 'latin1')])
}

function parseKey (k: Buffer): { ino: number, owner: LockOwner } {
  const rest = k.toString('latin1', 9)
  return { ino: Number(k.readBigUInt64BE(1)), owner: { session: rest.slice(0, SESSION_BYTES), flock: rest[SESSION_BYTES] === 'f', owner: rest.slice(SESSION_BYTES + 1) } }
}

interface LockRecord { pid: number, ranges: LockRange[] }

function decodeRecord (k: Buffer, v: Buffer): LockRecord {
  try {
    const j = JSON.parse(v.toString())
    if (Number.isInteger(j?.p) && Array.isArray(j.r) && j.r.every((r: unknown) => Array.isArray(r) && r.length === 3 && r.every(Number.isSafeInteger))) {
      return { pid: j.p, ranges: j.r.map(([start, end, type]: number[]) => ({ start, end, type })) }
    }
  } catch {}
  throw new FsError('EIO', `lock record ${k.toString('hex')} is damaged`)
}

const encodeRecord = (r: LockRecord): Buffer => Buffer.from(JSON.stringify({ p: r.pid, r: r.ranges.map(x => [x.start, x.end, x.type]) }))

const sameOwner = (a: LockOwner, b: LockOwner): boolean => a.session === b.session && a.owner === b.owner && a.flock === b.flock
const overlaps = (a: LockRange, b: LockRange): boolean => a.start <= b.end && b.start <= a.end

/**
 * An owner's ranges after `req` (F_UNLCK: removed): what it covers is cut out of
 * the old ranges (splitting them), then the new range goes in and merges with
 * adjacent or overlapping ranges of its type, as Linux does for one owner.
 */
export function applyRange (ranges: LockRange[], req: LockRange): LockRange[] {
  const out: LockRange[] = []
  for (const r of ranges) {
    if (!overlaps(r, req)) { out.push(r); continue }
    if (r.start < req.start) out.push({ start: r.start, end: req.start - 1, type: r.type })
    if (r.end > req.end) out.push({ start: req.end + 1, end: r.end, type: r.type })
  }
  if (req.type !== F_UNLCK) {
    let merged = { ...req }
    for (let i = out.length - 1; i >= 0; i--) {
      const r = out[i]
      if (r.type === merged.type && r.start <= merged.end + 1 && merged.start <= r.end + 1) {
        merged = { start: Math.min(r.start, merged.start), end: Math.max(r.end, merged.end), type: merged.type }
        out.splice(i, 1)
      }
    }
    out.push(merged)
  }
  return out.sort((a, b) => a.start - b.start)
}

/** Whether `after` holds less than `before` somewhere (a range released, or a write lock made a read lock): waiters may go on. */
function loosened (before: LockRange[], after: LockRange[]): boolean {
  for (const b of before) {
    let covered = b.start
    for (const a of after) {
      if (a.end < covered || a.start > covered) continue
      if (b.type === F_WRLCK && a.type !== F_WRLCK) return true
      covered = a.end + 1
      if (covered > b.end) break
    }
    if (covered <= b.end) return true
  }
  return false
}

/** The lowest lock of another owner that `req` (of `owner`) conflicts with: a write lock conflicts with any, a read lock with a write lock. */
async function conflict (tx: KvReader, ino: number, owner: LockOwner, req: LockRange): Promise<{ held?: HeldLock, mine?: LockRecord }> {
  let mine: LockRecord | undefined
  let held: HeldLock | undefined
  for await (const [k, v] of tx.scan(inodePrefix(ino))) {
    const { owner: o } = parseKey(k)
    const rec = decodeRecord(k, v)
    if (sameOwner(o, owner)) { mine = rec; continue }
    if (o.flock !== owner.flock || req.type === F_UNLCK) continue
    // The lowest conflicting range is the one reported (as Linux does for one holder's locks).
    const r = rec.ranges.find(r => overlaps(r, req) && (req.type === F_WRLCK || r.type === F_WRLCK))
    if (r && (!held || r.start < held.start)) held = { ...r, owner: o, pid: rec.pid }
  }
  return { held, mine }
}

/** Tell the local waiters (on commit) and the other mounts (the change feed) that locks of these inodes were released. */
function released (tx: KvTxn, inos: number[], waits?: LockWaits): void {
  if (inos.length === 0) return
  for (const m of encodeChange({ inodes: [], entries: [], locks: inos })) tx.notify?.(m)
  if (waits) tx.onCommit(() => { for (const ino of inos) waits.wake(ino) })
}

/**
 * Release every lock of `session` in `tx` (a dead session's, found by the
 * sessions' cleanup; this mount's own at unmount); the inodes whose locks went.
 * Scans every lock record: locks are few.
 */
export async function releaseLocksOf (tx: KvTxn, session: string): Promise<number[]> {
  const inos = new Set<number>()
  for await (const [k] of tx.scan(PREFIX)) {
    const { ino, owner } = parseKey(k)
    if (owner.session !== session) continue
    tx.del(k)
    inos.add(ino)
  }
  released(tx, [...inos])
  return [...inos]
}

/**
 * Who waits for a lock of an inode, by inode: a waiter enters before its first
 * try and takes the inode's generation before each, and waits only when no
 * release came since, so a release heard between its try and its wait is never missed.
 */
export class LockWaits {
  private readonly inodes = new Map<number, { gen: number, users: number, waiters: Set<() => void> }>()

  /** A waiter of `ino` starts (`leave` when it is done). */
  enter (ino: number): void {
    const e = this.inodes.get(ino)
    if (e) e.users++
    else this.inodes.set(ino, { gen: 0, users: 1, waiters: new Set() })
  }

  leave (ino: number): void {
    const e = this.inodes.get(ino)
    if (e && --e.users === 0) this.inodes.delete(ino)
  }

  generation (ino: number): number { return this.inodes.get(ino)?.gen ?? 0 }

  /** Locks of `ino` were released (here, or on another host: the change feed). */
  wake (ino: number): void {
    const e = this.inodes.get(ino)
    if (!e) return
    e.gen++
    for (const w of [...e.waiters]) w()
  }

  /** Changes may have been missed (the feed dropped): every waiter tries again. */
  wakeAll (): void { for (const ino of [...this.inodes.keys()]) this.wake(ino) }

  /** Between enter and leave: wait until a release of `ino` after generation `gen`, `ms` at most, or `signal` aborts (rejects with its reason). */
  async wait (ino: number, gen: number, ms: number, signal?: AbortSignal): Promise<void> {
    const e = this.inodes.get(ino)
    if (!e || e.gen !== gen) return
    signal?.throwIfAborted()
    await new Promise<void>((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer)
        signal?.removeEventListener('abort', abort)
        e.waiters.delete(done)
        resolve()
      }
      const abort = (): void => { done(); reject(signal!.reason) }
      const timer = setTimeout(done, ms)
      e.waiters.add(done)
      signal?.addEventListener('abort', abort, { once: true })
    })
  }
}

/** A blocked lock tries again at least this often, whatever the change feed says (a lost notification costs this much). */
const SAFETY_POLL_MS = 1000

/** The directory's lock table as one mount uses it (its session owns what it sets). */
export class LockTable {
  readonly waits = new LockWaits()
  /** (ino, kind+owner) pairs this mount holds locks of, as committed: a close without locks costs no transaction. */
  private readonly held = new Map<number, Set<string>>()

  constructor (private readonly kv: KvStore, readonly session: string) {}

  owner (owner: string, flock: boolean): LockOwner { return { session: this.session, owner, flock } }

  /** F_GETLK: the first lock of another owner `req` conflicts with, or undefined. */
  async test (ino: number, owner: LockOwner, req: LockRange): Promise<HeldLock | undefined> {
    return await this.kv.txn(async tx => (await conflict(tx, ino, owner, req)).held)
  }

  /** F_SETLK: set (or release, F_UNLCK) `req` for `owner`; the conflicting lock when it cannot (nothing changed then). */
  async set (ino: number, owner: LockOwner, req: LockRange, pid: number): Promise<HeldLock | undefined> {
    return (await this.change(ino, owner, req, pid)).held
  }

  /** `set`, and what the owner held before (its record then) when it was set. */
  private async change (ino: number, owner: LockOwner, req: LockRange, pid: number, signal?: AbortSignal): Promise<{ held?: HeldLock, before?: LockRecord }> {
    const key = lockKey(ino, owner)
    return await this.kv.txn(async tx => {
      const { held, mine } = await conflict(tx, ino, owner, req)
      if (held) return { held }
      // An interrupted waiter was answered EINTR already: it must not end up holding the lock.
      signal?.throwIfAborted()
      const before = mine?.ranges ?? []
      const after = applyRange(before, req)
      this.write(tx, ino, owner, mine, after.length > 0 ? { pid: req.type === F_UNLCK ? (mine?.pid ?? pid) : pid, ranges: after } : undefined, key)
      return { before: mine ?? { pid, ranges: [] } }
    })
  }

  /** Put the owner's record `next` (undefined: none) in place of `mine`, telling waiters when that held less. */
  private write (tx: KvTxn, ino: number, owner: LockOwner, mine: LockRecord | undefined, next: LockRecord | undefined, key = lockKey(ino, owner)): void {
    if (next) tx.put(key, encodeRecord(next))
    else if (mine) tx.del(key)
    if (loosened(mine?.ranges ?? [], next?.ranges ?? [])) released(tx, [ino], this.waits)
    tx.onCommit(() => this.note(ino, owner, next !== undefined))
  }

  /** F_SETLKW: `set`, waiting while another owner holds a conflicting lock, until it is set or `signal` aborts. */
  async setWait (ino: number, owner: LockOwner, req: LockRange, pid: number, signal?: AbortSignal): Promise<void> {
    this.waits.enter(ino)
    try {
      for (let tries = 1; ; tries++) {
        signal?.throwIfAborted()
        const gen = this.waits.generation(ino)
        const { held, before } = await this.change(ino, owner, req, pid, signal)
        if (!held) {
          // Interrupted while the lock's commit was under way: the caller has EINTR, so the owner holds what it held before.
          if (signal?.aborted === true) await this.restore(ino, owner, before!)
          return
        }
        if (tries === 1) log('inode %d: %o waits for %o', ino, req, held)
        await this.waits.wait(ino, gen, SAFETY_POLL_MS, signal)
      }
    } finally {
      this.waits.leave(ino)
    }
  }

  private async restore (ino: number, owner: LockOwner, before: LockRecord): Promise<void> {
    await this.kv.txn(async tx => {
      const raw = await tx.get(lockKey(ino, owner))
      this.write(tx, ino, owner, raw ? decodeRecord(lockKey(ino, owner), raw) : undefined, before.ranges.length > 0 ? before : undefined)
    })
  }

  /**
   * Release every lock of `session` in `tx` (a dead session's: the sessions' cleanup calls
   * this); this mount's waiters try again once it commits, other mounts' through the feed.
   */
  async releaseLocksOf (tx: KvTxn, session: string): Promise<number[]> {
    const inos = await releaseLocksOf(tx, session)
    tx.onCommit(() => { for (const ino of inos) this.waits.wake(ino) })
    if (session === this.session) tx.onCommit(() => this.held.clear())
    return inos
  }

  /** Whether this mount may hold locks of `owner` on `ino`. */
  holds (ino: number, owner: LockOwner): boolean {
    return this.held.get(ino)?.has((owner.flock ? 'f' : 'p') + owner.owner) === true
  }

  /** Release every lock `owner` holds on `ino` (close). */
  async releaseOwner (ino: number, owner: LockOwner): Promise<void> {
    if (!this.holds(ino, owner)) return
    await this.set(ino, owner, { start: 0, end: LOCK_END, type: F_UNLCK }, 0)
  }

  /** Release every lock of this mount (unmount). */
  async releaseAll (): Promise<void> {
    if (this.held.size === 0) return
    await this.kv.txn(async tx => { await this.releaseLocksOf(tx, this.session) })
  }

  private note (ino: number, owner: LockOwner, holds: boolean): void {
    const k = (owner.flock ? 'f' : 'p') + owner.owner
    let set = this.held.get(ino)
    if (holds) {
      if (!set) this.held.set(ino, set = new Set())
      set.add(k)
    } else if (set) {
      set.delete(k)
      if (set.size === 0) this.held.delete(ino)
    }
  }
}
