import { FsError } from '../errors'
import { KvReader, KvStore, KvTxn } from './kv'
import { Usage, isUsage, readMeta } from './meta'
import { decodeJSON, encodeJSON, keys } from './records'
import { Writer } from './writer'

/**
 * Mount sessions, the background-job lease and who holds an inode open, as
 * rows of the directory (M keys), so that every host of a shared filesystem
 * sees them:
 *   M session/<id>          one per live mount (host, pid, mount point, renewed)
 *   M lease                 which session runs the once-per-filesystem jobs
 *   M open/<ino>/<id>       session <id> holds inode <ino> open (shared stores only)
 * A session that misses its renewals for its expiry is dead: the lease holder
 * reaps it (reapSession). Every body here may run again (PostgreSQL retries).
 */

export interface SessionRow {
  session: string
  host: string
  pid: number
  mountpoint: string
  version: string
  /** ISO time the mount started. */
  started: string
  /** Wall-clock ms of the last renewal (Date.now() of the host that renewed). */
  renewed: number
  heartbeatMs: number
  expiryMs: number
  /**
   * The kernel boot and pid namespace the mount ran in (absent in older rows): a mount in the same
   * one can tell at once whether `pid` still runs, so a crashed mount is cleaned up by the next
   * mount on its host without waiting out the expiry.
   */
  local?: string
}

export interface LeaseRow {
  holder: string
  /** Wall-clock ms after which another session may take it. */
  expires: number
  /** Wall-clock ms the holder took it. */
  since: number
}

const SESSION_PREFIX = keys.meta('session/')
const LEASE_KEY = keys.meta('lease')
const OPEN_PREFIX = keys.meta('open/')

const sessionKey = (id: string): Buffer => keys.meta(`session/${id}`)
const holdKey = (ino: number, id: string): Buffer => keys.meta(`open/${ino}/${id}`)
const holdersPrefix = (ino: number): Buffer => keys.meta(`open/${ino}/`)

function isSessionRow (r: any): r is SessionRow {
  return typeof r?.session === 'string' && typeof r.host === 'string' && Number.isInteger(r.pid) && typeof r.renewed === 'number' && typeof r.expiryMs === 'number' &&
    (r.local === undefined || typeof r.local === 'string')
}

function isLeaseRow (r: any): r is LeaseRow {
  return typeof r?.holder === 'string' && typeof r.expires === 'number'
}

/** Dead: it missed its renewals for its own expiry (clocks of the hosts are assumed to agree within a small part of it). */
export function expired (row: SessionRow, now = Date.now()): boolean {
  return now > row.renewed + row.expiryMs
}

/** Every session row, in key order. */
export async function readSessions (kv: KvReader): Promise<SessionRow[]> {
  const out: SessionRow[] = []
  for await (const [k, v] of kv.scan(SESSION_PREFIX)) out.push(decodeJSON<SessionRow>(`session row ${k.subarray(1).toString('latin1')}`, v, isSessionRow))
  return out
}

export async function readLease (kv: KvReader): Promise<LeaseRow | undefined> {
  const raw = await kv.get(LEASE_KEY)
  return raw ? decodeJSON<LeaseRow>('the job lease', raw, isLeaseRow) : undefined
}

/** Register `row`, or renew it: 'renewed', or 'gone' when the row is not there (reaped: the session was declared dead). */
export function renewSession (kv: KvStore, row: SessionRow, opts: { create?: boolean } = {}): Promise<'renewed' | 'gone'> {
  return kv.txn(async tx => {
    if (!opts.create && !await tx.get(sessionKey(row.session))) return 'gone'
    tx.put(sessionKey(row.session), encodeJSON({ ...row, renewed: Date.now() }))
    return 'renewed'
  })
}

/**
 * Take or renew the lease for `id`, in one SERIALIZABLE transaction (two
 * sessions trying at once: one wins, the other retries and sees it): held
 * when free, expired, or already ours. True while `id` holds it.
 */
export function takeLease (kv: KvStore, id: string, expiryMs: number): Promise<boolean> {
  return kv.txn(async tx => {
    const now = Date.now()
    const lease = await readLease(tx)
    if (lease && lease.holder !== id && lease.expires >= now) return false
    const since = lease?.holder === id ? lease.since : now
    tx.put(LEASE_KEY, encodeJSON({ holder: id, expires: now + expiryMs, since }))
    return true
  })
}

/** A clean unmount: the row goes, and the lease if it was this session's (the next mount takes it at once). */
export function endSession (kv: KvStore, id: string): Promise<void> {
  return kv.txn(async tx => {
    tx.del(sessionKey(id))
    if ((await readLease(tx))?.holder === id) tx.del(LEASE_KEY)
  })
}

/** Note in `tx` that session `id` holds `ino` open (ENOENT when the inode is gone). */
export async function holdOpen (tx: KvTxn, ino: number, id: string): Promise<void> {
  if (!await tx.get(keys.inode(ino))) throw new FsError('ENOENT', `no inode ${ino}`)
  tx.put(holdKey(ino, id), Buffer.alloc(0))
}

/** Session `id` closed `ino` for good: its record goes; true when another session still holds it. */
export async function letGo (tx: KvTxn, ino: number, id: string): Promise<boolean> {
  tx.del(holdKey(ino, id))
  for await (const [k] of tx.scan(holdersPrefix(ino))) {
    if (!k.equals(holdKey(ino, id))) return true
  }
  return false
}

/** Whether any session holds `ino` open. */
export async function heldOpen (tx: KvReader, ino: number): Promise<boolean> {
  for await (const _ of tx.scan(holdersPrefix(ino), { limit: 1 })) return true
  return false
}

/** Every hold record: ino → the sessions holding it. */
async function allHolds (tx: KvReader): Promise<Map<number, Set<string>>> {
  const out = new Map<number, Set<string>>()
  for await (const [k] of tx.scan(OPEN_PREFIX)) {
    const [ino, id] = k.subarray(OPEN_PREFIX.length).toString('latin1').split('/')
    const set = out.get(Number(ino)) ?? new Set<string>()
    set.add(id)
    out.set(Number(ino), set)
  }
  return out
}

/** The inodes session `id` holds open, as recorded. */
export async function holdsOf (tx: KvReader, id: string): Promise<number[]> {
  return [...(await allHolds(tx))].filter(([, s]) => s.has(id)).map(([ino]) => ino)
}

/**
 * A re-registered session (it had expired) records again what it still holds
 * (`open`, the mount's open inodes) and drops records of what it does not; the
 * inodes of `open` that are gone (freed while it was dead) are returned.
 */
export async function recheckHolds (tx: KvTxn, id: string, open: number[]): Promise<number[]> {
  const lost: number[] = []
  for (const ino of await holdsOf(tx, id)) if (!open.includes(ino)) tx.del(holdKey(ino, id))
  for (const ino of open) {
    if (await tx.get(keys.inode(ino))) tx.put(holdKey(ino, id), Buffer.alloc(0))
    else lost.push(ino)
  }
  return lost
}

/**
 * Clean up after dead session `id` in the transaction of `w`: its hold
 * records go, and the inodes it alone held open after their last unlink are
 * freed (blocks to the reclaim queue); its usage row folds into the base; its
 * row goes. `releaseLocks` frees its byte-range and flock locks (locks.ts).
 * The reclaim and heal queues belong to the filesystem, not to a session:
 * whoever holds the lease works through them.
 */
export async function reapSession (w: Writer, id: string, opts: { onlyIfExpired: boolean, dead?: (row: SessionRow) => boolean }, releaseLocks?: (tx: KvTxn, id: string) => Promise<unknown>): Promise<{ freed: number } | undefined> {
  const { tx } = w
  // Read again here: a session renewed since it was seen expired is alive (the renewal and this conflict; one retries).
  const raw = await tx.get(sessionKey(id))
  if (!raw) return undefined
  const seen = decodeJSON<SessionRow>(`session row ${id}`, raw, isSessionRow)
  if (opts.onlyIfExpired && !expired(seen) && opts.dead?.(seen) !== true) return undefined
  // A dead holder's lease goes with it: the next mount takes it at once.
  const lease = await readLease(tx)
  if (lease?.holder === id) tx.del(LEASE_KEY)
  let freed = 0
  for (const [ino, holders] of await allHolds(tx)) {
    if (!holders.has(id)) continue
    tx.del(holdKey(ino, id))
    if (holders.size > 1) continue
    const inode = await w.inode(ino).catch(() => undefined)
    if (inode && inode.nlink === 0) {
      await w.deleteInode(inode)
      freed++
    }
  }
  const rowKey = keys.meta(`usage/${id}`)
  const row = await tx.get(rowKey)
  if (row) {
    const base = await readMeta<Usage>(tx, 'usage', isUsage)
    const delta = decodeJSON<Usage>(`the usage row of session ${id}`, row, isUsage)
    tx.put(keys.meta('usage'), encodeJSON({ files: base.files + delta.files, bytes: base.bytes + delta.bytes }))
    tx.del(rowKey)
  }
  tx.del(keys.meta(`synced/${id}`))
  // ---- locks (issue 22, the locks part): release what the dead session held here. ----
  if (releaseLocks) await releaseLocks(tx, id)
  tx.del(sessionKey(id))
  return { freed }
}
