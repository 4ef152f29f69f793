import { readFileSync, readlinkSync } from 'node:fs'
import { hostname } from 'node:os'
import { performance } from 'node:perf_hooks'
import { Directory } from '../directory/directory'
import { SessionRow, expired } from '../directory/sessions'
import { logger } from '../log'
import { packageVersion } from '../version'

const events = logger('bslfs:session')
const log = events.debug

/**
 * This kernel's boot and this process's pid namespace: a session row that names them names a
 * process this mount can look for. Undefined where /proc does not say (then only the expiry tells).
 */
function localIdentity (): string | undefined {
  try {
    return `${readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()} ${readlinkSync('/proc/self/ns/pid')}`
  } catch {
    return undefined
  }
}
const LOCAL = localIdentity()

/**
 * A session whose mount ran on this host (same boot, same pid namespace) and whose process is gone:
 * dead now, whatever its expiry says (a pid reused since reads as alive: the expiry then decides).
 */
export function deadHere (row: SessionRow): boolean {
  if (LOCAL === undefined || row.local !== LOCAL || row.pid === process.pid) return false
  // A killed daemon nobody has reaped yet (a zombie) is dead too.
  try {
    const stat = readFileSync(`/proc/${row.pid}/stat`, 'utf8')
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
    return state === 'Z' || state === 'X'
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT'
  }
}

export const DEFAULT_HEARTBEAT_MS = 12_000
export const DEFAULT_EXPIRY_MS = 60_000

export interface KeeperOptions {
  mountpoint: string
  heartbeatMs?: number
  expiryMs?: number
  /** The mount's open inodes (recorded again after the session was declared dead). */
  openInodes: () => number[]
  /** This mount took the job lease (kick the jobs). */
  onLeader?: () => void
}

/**
 * A mount's session: registered at start, renewed every heartbeat, ended at
 * unmount. Each heartbeat also takes or keeps the job lease; the holder runs
 * the once-per-filesystem jobs (reclaim, heal, and reaping dead sessions
 * here). A mount that finds its own session expired is fenced (fence.ts) and
 * registers again on the next heartbeat, not the same one: a change that
 * was waiting while the host was frozen meets the fence, never a session that
 * came back to life under it.
 */
export class SessionKeeper {
  private readonly heartbeatMs: number
  private readonly expiryMs: number
  private readonly row: SessionRow
  private timer?: NodeJS.Timeout
  private running: Promise<void> = Promise.resolve()
  private leaseHeld = false
  private stopped = false
  /** Set when the session was found expired: the next heartbeat registers it again. */
  private lapsed?: { reaped: boolean }

  private constructor (private readonly dir: Directory, private readonly opts: KeeperOptions) {
    this.heartbeatMs = opts.heartbeatMs ?? DEFAULT_HEARTBEAT_MS
    this.expiryMs = opts.expiryMs ?? DEFAULT_EXPIRY_MS
    this.row = {
      session: dir.session, host: hostname(), pid: process.pid, mountpoint: opts.mountpoint, version: packageVersion(), local: LOCAL,
      started: new Date().toISOString(), renewed: 0, heartbeatMs: this.heartbeatMs, expiryMs: this.expiryMs
    }
  }

  /** Register, take the lease if free, reap the sessions that are dead (as lease holder), and keep renewing. */
  static async start (dir: Directory, opts: KeeperOptions): Promise<SessionKeeper> {
    const k = new SessionKeeper(dir, opts)
    await k.renew(true)
    // A mount of this host that crashed is cleaned up now, not after its expiry (its lease goes with it).
    await k.reapDeadHere()
    await k.beat()
    k.timer = setInterval(() => { k.running = k.running.then(() => k.beat()) }, k.heartbeatMs)
    k.timer.unref()
    return k
  }

  /** Whether this mount runs the once-per-filesystem jobs now. */
  get leader (): boolean { return this.leaseHeld && !this.dir.fence.refusal() && !this.stopped }

  get session (): string { return this.dir.session }

  private async renew (create = false): Promise<'renewed' | 'gone'> {
    const mono = performance.now()
    const wall = Date.now()
    const r = await this.dir.renewSession(this.row, create)
    if (r === 'renewed') this.dir.fence.confirm(this.expiryMs, mono, wall)
    return r
  }

  /** One heartbeat; errors are logged (a missed renewal is what the expiry is for). */
  private async beat (): Promise<void> {
    if (this.stopped) return
    try {
      if (this.lapsed) {
        await this.rejoin(this.lapsed.reaped)
        this.lapsed = undefined
      } else if (this.dir.fence.refusal()) {
        // Past the expiry already: others may treat this session as dead. Fenced until the next beat.
        this.dir.fence.trip(this.dir.fence.refusal() ?? 'session expired')
        this.lapsed = { reaped: false }
        this.leaseHeld = false
        return
      } else if (await this.renew() === 'gone') {
        this.dir.fence.trip('another mount found this mount\'s session dead and cleaned up after it')
        this.lapsed = { reaped: true }
        this.leaseHeld = false
        return
      }
      const had = this.leaseHeld
      // One host (LevelDB's lock keeps others out): the lease is this mount's, whatever an old row says.
      this.leaseHeld = this.dir.shared ? await this.dir.takeLease(this.expiryMs) : true
      if (this.leaseHeld && !had) {
        events.info('this mount (session %s) runs the filesystem\'s background jobs', this.session)
        this.opts.onLeader?.()
      }
      if (this.leader) await this.reapDead()
    } catch (err) {
      log('heartbeat: %s', (err as Error).message)
    }
  }

  /** Registered again after the session expired: the row comes back, what is still open is recorded again. */
  private async rejoin (reaped: boolean): Promise<void> {
    const mono = performance.now()
    const wall = Date.now()
    const r = await this.dir.renewSession(this.row, false)
    const wasReaped = reaped || r === 'gone'
    if (r === 'gone') await this.dir.renewSession(this.row, true)
    const lost = await this.dir.rejoin(this.opts.openInodes(), wasReaped)
    this.dir.fence.confirm(this.expiryMs, mono, wall)
    events.warn('session %s registered again%s%s', this.session, wasReaped ? ' (it had been cleaned up as dead)' : '',
      lost.length ? `; ${lost.length} open inodes were freed meanwhile and read as gone` : '')
  }

  /** As lease holder: clean up after every session past its expiry. */
  private async reapDead (): Promise<void> {
    const { sessions } = await this.dir.sessions()
    for (const s of sessions) {
      if (s.session === this.session) continue
      // One host: another row is a mount that ended without unregistering (a crash).
      if (this.dir.shared && !expired(s) && !deadHere(s)) continue
      if (!this.leader) return
      const freed = await this.dir.reapSession(s.session, deadHere)
      if (freed === undefined) continue // renewed meanwhile
      events.warn('session %s (%s pid %d, %s) expired: cleaned up after it (%d unlinked open inodes freed)', s.session, s.host, s.pid, s.mountpoint, freed)
    }
  }

  /** At start: clean up after the sessions of mounts of this host whose process is gone (a crash). */
  private async reapDeadHere (): Promise<void> {
    try {
      for (const s of (await this.dir.sessions()).sessions) {
        if (s.session === this.session || !deadHere(s)) continue
        const freed = await this.dir.reapSession(s.session, deadHere)
        if (freed !== undefined) events.warn('session %s (pid %d, %s) ended in a crash on this host: cleaned up after it (%d unlinked open inodes freed)', s.session, s.pid, s.mountpoint, freed)
      }
    } catch (err) {
      log('cleaning up after this host\'s crashed mounts: %s', (err as Error).message)
    }
  }

  /** Unmount: stop renewing and unregister (the lease goes with it). */
  async stop (): Promise<void> {
    this.stopped = true
    clearInterval(this.timer)
    await this.running
    await this.dir.endSession().catch(err => log('ending the session: %s', (err as Error).message))
  }
}

/** fsck --repair and offline tools: clean up after every dead session (all of them on one host). */
export async function reapExpiredSessions (dir: Directory): Promise<number> {
  const { sessions } = await dir.sessions()
  let n = 0
  for (const s of sessions) {
    if (dir.shared && !expired(s) && !deadHere(s)) continue
    if (await dir.reapSession(s.session, deadHere) !== undefined) n++
  }
  return n
}
