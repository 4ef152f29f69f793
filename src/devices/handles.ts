import { fstatSync, readFileSync } from 'node:fs'
import type { FileHandle } from 'node:fs/promises'

interface Entry {
  fh: Promise<FileHandle>
  /** The handle once it is open. */
  open?: FileHandle
  /** Reads using the handle now: it is closed only once they are done. */
  users: number
  dropped: boolean
  lastUsed: number
  /** The file's size, from one fstat of the open handle. */
  size?: number
}

/** A handle nobody has read through for this long is closed (descriptors are not held for idle objects). */
const IDLE_MS = 2000

/**
 * How many handles a device keeps: enough for the objects of a 2 GiB file read at random
 * (fewer cost reopens, native-notes/object-io.md), but no more than an eighth of the process's descriptor limit (`limits`: /proc/self/limits;
 * Node raises the soft limit to the hard one at start), and at least 64.
 */
export function handleLimit (limits = readLimits()): number {
  const m = /^Max open files\s+(\d+|unlimited)/m.exec(limits)
  const soft = m === null ? 4096 : m[1] === 'unlimited' ? Infinity : Number(m[1])
  return Math.max(64, Math.min(2048, Math.floor(soft / 8)))
}

function readLimits (): string {
  try {
    return readFileSync('/proc/self/limits', 'utf8')
  } catch {
    return ''
  }
}

/**
 * Open handles of recently read objects, least recently used dropped first.
 * A small random read then costs one thread-pool round trip (the read)
 * instead of three (open, read, close). Objects are immutable, but a put can
 * replace a bad copy and a delete can remove one: both `forget` the handle,
 * so a read never sees the bytes of a file that is no longer the object.
 */
export class HandleCache {
  private readonly map = new Map<string, Entry>()
  private sweeper: NodeJS.Timeout | undefined

  constructor (private readonly max: number) {}

  async use<T> (key: string, open: () => Promise<FileHandle>, fn: (fh: FileHandle) => Promise<T>): Promise<T> {
    let e = this.map.get(key)
    if (e) {
      this.map.delete(key)
      this.map.set(key, e)
    } else {
      const entry: Entry = { fh: open(), users: 0, dropped: false, lastUsed: 0 }
      // A failed open is not kept: the next read tries again (the object may have been healed).
      entry.fh.then(fh => { entry.open = fh }, () => { if (this.map.get(key) === entry) this.map.delete(key) })
      this.map.set(key, entry)
      e = entry
      while (this.map.size > this.max) this.forget(this.map.keys().next().value as string)
      this.sweeper ??= setInterval(() => this.sweep(), IDLE_MS / 2).unref()
    }
    e.lastUsed = performance.now()
    e.users++
    try {
      return await fn(await e.fh)
    } finally {
      e.users--
      if (e.dropped && e.users === 0) close(e)
    }
  }

  /**
   * The size of `key`'s file when its handle is open, from one fstat (objects
   * never change while a handle is kept: put and delete `forget` it). Throws
   * when it is not a regular file.
   */
  sizeOf (key: string): number | undefined {
    const e = this.map.get(key)
    if (e?.open === undefined) return undefined
    if (e.size === undefined) {
      const st = fstatSync(e.open.fd)
      if (!st.isFile()) throw new Error('not a regular file')
      e.size = st.size
    }
    return e.size
  }

  /** Close the handle of `key` (once no read uses it); the next read opens the file again. */
  forget (key: string): void {
    const e = this.map.get(key)
    if (!e) return
    this.map.delete(key)
    e.dropped = true
    if (e.users === 0) close(e)
  }

  closeAll (): void {
    for (const key of [...this.map.keys()]) this.forget(key)
    this.sweep()
  }

  /** Close the handles idle for IDLE_MS (least recently used first, so stop at the first one still in use lately). */
  private sweep (): void {
    const now = performance.now()
    for (const [key, e] of this.map) {
      if (now - e.lastUsed < IDLE_MS) break
      this.forget(key)
    }
    if (this.map.size === 0) {
      clearInterval(this.sweeper)
      this.sweeper = undefined
    }
  }
}

function close (e: Entry): void {
  e.fh.then(fh => fh.close()).catch(() => undefined)
}
