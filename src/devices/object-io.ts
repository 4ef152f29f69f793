import { addonLoader, releaseAddon } from '../native-addon'
import { getSystemErrorName } from 'node:util'

/** native/object_io.c: whole-object puts and reads, one thread-pool job each. */
interface ObjectIo {
  version: number
  put (path: string, dirFd: number, data: Uint8Array, flags: number, cb: (errno: number) => void): void
  syncfs (fd: number, cb: (errno: number) => void): void
  aligned (size: number): Buffer
  readCached (fd: number, into: Uint8Array, offset: number): number
  read (path: string, maxBytes: number, into: Buffer | null, directFrom: number, cb: (errno: number, data?: Buffer | null, crc?: number, length?: number) => void): void
  crc32 (data: Uint8Array, crc?: number): number
  folds: boolean
  mmapThreshold (bytes: number): boolean
  trim (): boolean
}

const VERSION = 9
const PUT_DURABLE = 1
const PUT_DIRECT = 2
const io = addonLoader<ObjectIo>({ what: 'the object I/O addon', file: releaseAddon('object_io'), version: VERSION })

/** An error shaped as Node's fs errors are (code, errno, syscall, path), so callers treat both alike. */
function systemError (errno: number, syscall: string, path: string): NodeJS.ErrnoException {
  const code = getSystemErrorName(-errno)
  return Object.assign(new Error(`${code}: ${syscall} of ${path} failed`), { code, errno: -errno, syscall, path })
}

/**
 * Create `path` (it must not exist) and write `data`; `durable`: also fsync it
 * and the directory open as `dirFd` (else the next syncFs makes it durable);
 * `direct`: past the page cache (O_DIRECT), where the file system allows. A
 * failure removes what was made; EEXIST touches nothing.
 */
export function putObject (path: string, dirFd: number, data: Uint8Array, opts: { durable: boolean, direct: boolean }): Promise<void> {
  const flags = (opts.durable ? PUT_DURABLE : 0) | (opts.direct ? PUT_DIRECT : 0)
  return new Promise((resolve, reject) => {
    io().put(path, dirFd, data, flags, errno => errno === 0 ? resolve() : reject(systemError(errno, 'put', path)))
  })
}

/** syncfs(2) on the file system that holds `fd`: everything written there so far becomes durable. */
export function syncFs (fd: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    io().syncfs(fd, errno => errno === 0 ? resolve() : reject(systemError(errno, 'syncfs', what)))
  })
}

/**
 * The whole file at `path` and its CRC-32 (computed on the thread pool);
 * EFBIG when it is longer than `maxBytes`. Into `into` when it fits there
 * (the data is then a view of it). A file of `directFrom` bytes or more is
 * read past the page cache when the buffer allows (aligned, with room for the
 * length rounded up to 4096).
 */
export function readObject (path: string, maxBytes: number, directFrom: number, into?: Buffer): Promise<{ data: Buffer, crc: number }> {
  return new Promise((resolve, reject) => {
    io().read(path, maxBytes, into ?? null, directFrom, (errno, data, crc, length) => {
      if (errno !== 0) return reject(systemError(errno, 'read', path))
      // No buffer of its own: the file was read into `into`, `length` bytes of it.
      resolve({ data: data ?? (into as Buffer).subarray(0, length), crc: crc as number })
    })
  })
}

/**
 * Fill `into` from `fd` at `offset` with what the page cache holds, on this
 * thread (no thread-pool trip, never waiting for the disk): the bytes read,
 * from 0 (nothing cached) to into.length.
 */
export function readCached (fd: number, into: Uint8Array, offset: number, path: string): number {
  const n = io().readCached(fd, into, offset)
  if (n < 0) throw systemError(-n, 'pread', path)
  return n
}

/** A buffer whose memory starts on a 4096-byte boundary (a put of it needs no staging copy for O_DIRECT). */
export function alignedBuffer (size: number): Buffer {
  return io().aligned(size)
}

/** The addon's CRC-32 of `data` (continuing `crc`), on this thread; and whether it folds with PCLMULQDQ. For tests. */
export function nativeCrc32 (data: Uint8Array, crc = 0): number {
  return io().crc32(data, crc)
}

export function nativeCrc32Folds (): boolean {
  return io().folds
}

/** How often a long-running process hands the free pages inside malloc's heap back (malloc_trim). */
const TRIM_INTERVAL_MS = 2000
let returning = false

/**
 * Have malloc serve allocations of 128 KiB and more with mmap, so that a freed
 * block buffer goes back to the system. glibc otherwise raises this threshold
 * to the size of the first large buffer freed, and 1 MiB buffers then come
 * from the heap, which fragments and never shrinks. Smaller allocations (a
 * socket's 64 KiB reads) still come from the heap, and glibc keeps the pages
 * freed inside it, so every TRIM_INTERVAL_MS they go back (the numbers:
 * native-notes/memory.md).
 * For the long-running processes (the mount daemon, a block server). False
 * where the addon or mallopt is missing: nothing else changes.
 */
export function returnFreedBuffers (): boolean {
  try {
    const ok = io().mmapThreshold(128 * 1024)
    if (!returning) {
      returning = true
      setInterval(() => io().trim(), TRIM_INTERVAL_MS).unref()
    }
    return ok
  } catch {
    return false
  }
}
