/**
 * fcntl (POSIX and OFD) and flock locks as the kernel forwards them (FUSE
 * GETLK, SETLK, SETLKW), kept in the directory's lock table so they exclude
 * across the hosts of a shared filesystem. Served only there (the session
 * negotiates FUSE_POSIX_LOCKS and FUSE_FLOCK_LOCKS then): on one host the
 * kernel's own table is faster and exact.
 *
 * Data under a lock is coherent as on NFS: taking a lock reads the file's
 * size and block map afresh (and drops the kernel's pages when another host
 * changed it); releasing one first commits what this mount wrote.
 */
import { FsError } from '../errors'
import { OpenFiles } from '../data/open-files'
import { F_UNLCK, F_WRLCK, F_RDLCK, LockOwner, LockTable } from '../directory/locks'
import type { LockRequest } from './fuse/session'

const TYPES = new Set([F_RDLCK, F_WRLCK, F_UNLCK])

export class FileLocks {
  /** The owners that locked through each handle (kind and owner): flock and OFD locks go with the handle's release. */
  private readonly byFh = new Map<number, Map<string, LockOwner>>()

  constructor (private readonly table: LockTable, private readonly files: OpenFiles) {}

  private owner (lock: LockRequest): LockOwner { return this.table.owner(lock.owner, lock.flock) }

  private range (lock: LockRequest): { start: number, end: number, type: number } {
    if (!TYPES.has(lock.type)) throw new FsError('EINVAL', `lock type ${lock.type}: F_RDLCK (0), F_WRLCK (1) or F_UNLCK (2) expected`)
    if (lock.end < lock.start) throw new FsError('EINVAL', `lock range ${lock.start}..${lock.end} ends before it starts`)
    return { start: lock.start, end: lock.end, type: lock.type }
  }

  /** F_GETLK: the first conflicting lock; its pid where it is meaningful (a holder on this host), else 0. */
  async getlk (ino: number, lock: LockRequest): Promise<{ start: number, end: number, type: number, pid: number }> {
    const req = this.range(lock)
    const held = await this.table.test(ino, this.owner(lock), req)
    if (!held) return { ...req, type: F_UNLCK, pid: 0 }
    return { start: held.start, end: held.end, type: held.type, pid: held.owner.session === this.table.session ? held.pid : 0 }
  }

  async setlk (ino: number, fh: number, lock: LockRequest, wait: boolean, signal?: AbortSignal): Promise<void> {
    const req = this.range(lock)
    const owner = this.owner(lock)
    const open = this.files.get(ino)
    // What this mount wrote under the lock is committed before another host can take it.
    if (req.type !== F_WRLCK && open) await (await open).flush()
    // flock converts by letting go first, as Linux does (two holders of a shared lock that both
    // ask for an exclusive one would otherwise wait for each other): even a conversion that then fails.
    if (owner.flock && req.type !== F_UNLCK && this.table.holds(ino, owner)) {
      if (open) await (await open).flush()
      await this.table.set(ino, owner, { ...req, type: F_UNLCK }, lock.pid)
    }
    if (wait && req.type !== F_UNLCK) await this.table.setWait(ino, owner, req, lock.pid, signal)
    else {
      const held = await this.table.set(ino, owner, req, lock.pid)
      if (held) throw new FsError('EAGAIN', `inode ${ino}: ${held.type === F_WRLCK ? 'write' : 'read'}-locked at ${held.start}..${held.end} by another owner`)
    }
    if (req.type === F_UNLCK) return
    let owners = this.byFh.get(fh)
    if (!owners) this.byFh.set(fh, owners = new Map())
    owners.set((owner.flock ? 'f' : 'p') + owner.owner, owner)
    // What other hosts committed before the lock was had is what this mount reads under it.
    await this.files.revalidate(ino)
  }

  /** close(2) of a descriptor: the closing process's POSIX locks of the file go (POSIX). */
  async closed (ino: number, lockOwner: string): Promise<void> {
    await this.table.releaseOwner(ino, this.table.owner(lockOwner, false))
  }

  /** The last close of an open file: its flocks and OFD locks go. */
  async released (ino: number, fh: number, flockOwner?: string): Promise<void> {
    const owners = this.byFh.get(fh)
    this.byFh.delete(fh)
    if (flockOwner !== undefined) await this.table.releaseOwner(ino, this.table.owner(flockOwner, true))
    for (const o of owners?.values() ?? []) await this.table.releaseOwner(ino, o)
  }
}
