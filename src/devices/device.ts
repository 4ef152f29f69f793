import { isObjectId } from '../bsl'
import { FsError } from '../errors'
import { MAX_BLOCK_BYTES } from '../limits'

/** Space on a device, in bytes, as statvfs reports it for the disk that holds it. */
export interface DeviceSpace {
  total: number
  free: number
  available: number
}

/**
 * Bounds for one call, overriding the device's own (a mirrored read asks
 * one copy briefly and moves on to the next rather than retrying). Local
 * devices have no network to bound and ignore the time and retries.
 */
export interface CallLimits {
  timeoutMs?: number
  retries?: number
  /**
   * The caller stopped waiting (a FUSE INTERRUPT): the call rejects
   * FsError('EINTR') promptly, is not retried, and an aborted signal at the
   * start means nothing is done at all.
   */
  signal?: AbortSignal
}

/** The error of a call whose caller's signal aborted. */
export function interrupted (label: string): FsError {
  return new FsError('EINTR', `${label}: interrupted`)
}

/** EINTR before a call starts when its signal has already aborted. */
export function checkNotInterrupted (label: string, limits?: CallLimits): void {
  if (limits?.signal?.aborted === true) throw interrupted(label)
}

/**
 * A place that stores block objects: a directory on a local disk, or a
 * device on a remote block server. Objects are immutable: a rewrite of a
 * block is a new object id, so `put` never replaces live bytes in place.
 *
 * Errors are FsError with the POSIX code of what went wrong: EIO for a failed,
 * corrupt or missing object's read, ENOSPC when the disk is full, EINVAL for a
 * bad id or range, EINTR when the call's signal aborted. A failed read also
 * carries its `fault` (missing, corrupt, transient, unreachable): what it says
 * about this copy. test/device-conformance.test.ts holds every device to this.
 */
export interface Device {
  /** "server:device", for messages and logs. */
  readonly label: string
  /**
   * Store `data` whole as `objectId`; resolves only after the bytes are flushed and visible
   * under their final name. `checksum` is the caller's CRC-32 of `data`, recorded, not
   * recomputed in process: bytes are checked where they cross the network (the block server
   * checks what it received) and on every read.
   */
  put (objectId: string, data: Uint8Array, checksum: number, limits?: CallLimits): Promise<void>
  /**
   * As put, but resolves once the object is whole and readable, before it is durable: the
   * next `sync` makes it so. Many stores and one sync cost one flush of the disk, not one each.
   */
  store (objectId: string, data: Uint8Array, checksum: number, limits?: CallLimits): Promise<void>
  /** Make every object stored (with `store`) before this call durable. */
  sync (limits?: CallLimits): Promise<void>
  /**
   * The whole object, verified against `checksum`; a mismatch is EIO, never wrong bytes.
   * `into`: a buffer the device may read into when the object fits (the answer is then a
   * view of it); the caller keeps it until it is done with the answer.
   */
  get (objectId: string, checksum: number, limits?: CallLimits, into?: Buffer): Promise<Buffer>
  /**
   * Bytes [offset, offset + length) of the object, NOT verified: the caller
   * checks them against the chunk sums it holds. A range past the object's
   * end is EIO (the object is shorter than the directory says: corrupt).
   * `into`: a buffer of at least `length` bytes the device may read into (the
   * answer is then a view of it), kept by the caller until it is done with the answer.
   */
  getRange (objectId: string, offset: number, length: number, limits?: CallLimits, into?: Buffer): Promise<Buffer>
  /**
   * Where the device can do it without the bytes coming to the caller (a block
   * server): store `toId` with the bytes of `fromId`, verified against
   * `checksum`, as `store` does (durable after the next sync). EIO when
   * `fromId` is missing or bad. Absent: the caller reads and writes.
   */
  copy? (fromId: string, toId: string, checksum: number, limits?: CallLimits): Promise<void>
  /** Remove an object; removing one that is not there is not an error. */
  delete (objectId: string): Promise<void>
  /** The stored size of an object, or null when it is absent. */
  stat (objectId: string): Promise<{ size: number } | null>
  /** Every object id on the device (for fsck and heal). */
  list (): AsyncIterable<string>
  space (limits?: CallLimits): Promise<DeviceSpace>
  close (): Promise<void>
}

/**
 * What every device checks before it acts on a request: an open device, an
 * object id that can name nothing but an object, and a 32-bit checksum.
 */
export function checkDeviceRequest (label: string, closed: boolean, objectId: string, sum?: number): void {
  if (sum !== undefined && !(Number.isInteger(sum) && sum >= 0 && sum <= 0xffff_ffff)) {
    throw new FsError('EINVAL', `bad checksum ${String(sum)} for ${label}: must be an unsigned 32-bit integer`)
  }
  if (closed) throw new FsError('EIO', `device ${label} is closed`)
  if (!isObjectId(objectId)) {
    const id: unknown = objectId
    const shown = typeof id === 'string' ? JSON.stringify(id.slice(0, 40)) : String(id)
    throw new FsError('EINVAL', `bad object id ${shown} for ${label}: must be 16 lowercase hex digits`)
  }
}

/** A range of a getRange: non-negative integers, not empty, not over the largest block. */
export function checkRange (label: string, objectId: string, offset: number, length: number): void {
  const ok = Number.isSafeInteger(offset) && offset >= 0 && Number.isSafeInteger(length) && length > 0 && length <= MAX_BLOCK_BYTES
  if (!ok) {
    throw new FsError('EINVAL', `bad range offset ${String(offset)} length ${String(length)} of object ${objectId} on ${label}: ` +
      `must be integers, offset >= 0, 1 <= length <= ${MAX_BLOCK_BYTES}`)
  }
}

/** Where a getRange of `length` bytes reads to: `into` when it is long enough, else a buffer of its own. */
export function rangeBuffer (length: number, into?: Buffer): Buffer {
  return into !== undefined && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafe(length)
}
