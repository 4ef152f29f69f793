import { constants } from 'node:os'

/** POSIX error names bslfs raises; each maps to the kernel's errno. */
export type ErrnoCode = keyof typeof constants.errno

/** Codes a healthy filesystem answers every day: their errors carry no stack trace. */
const ANSWERS = new Set<ErrnoCode>(['ENOENT', 'ENODATA', 'EEXIST', 'ENOTEMPTY', 'ENOTDIR', 'EISDIR', 'ENAMETOOLONG',
  'EACCES', 'EPERM', 'ERANGE', 'EXDEV', 'EMLINK', 'EOPNOTSUPP'])

/**
 * An error that carries its POSIX code from where it arises (ENOENT in the
 * directory, EIO in a device). Layers above pass it through unchanged; the
 * FUSE boundary hands `errno` to the kernel.
 */
export class FsError extends Error {
  readonly code: ErrnoCode
  readonly errno: number
  /** For a device error: what it says about that copy of a block (the volumes layer's failover reads it). */
  readonly fault?: CopyFault

  constructor (code: ErrnoCode, message?: string, options?: { cause?: unknown, fault?: CopyFault }) {
    // A routine answer (no such attribute, name exists) is not a fault to trace back: capturing
    // its stack is several µs of each such request (`ls -l` gets an ENODATA per file).
    const limit = Error.stackTraceLimit
    if (ANSWERS.has(code)) Error.stackTraceLimit = 0
    try {
      super(message ? `${code}: ${message}` : code, options)
    } finally {
      Error.stackTraceLimit = limit
    }
    this.name = 'FsError'
    this.code = code
    this.errno = constants.errno[code]
    if (options?.fault) this.fault = options.fault
  }
}

/**
 * What a failed device call says about the copy: `missing` (the device
 * answered, the object is not there), `corrupt` (it is there with the wrong
 * bytes, or could not be read back), `transient` (the device ran short of
 * something for the moment, descriptors or memory: the copy may well be
 * fine, and another copy is asked, but there is nothing to heal),
 * `unreachable` (no answer at all: the whole device is down, not just this block).
 */
export type CopyFault = 'missing' | 'corrupt' | 'transient' | 'unreachable'

/** The copy fault an error carries, if any. */
export function faultOf (err: unknown): CopyFault | undefined {
  return err instanceof FsError ? err.fault : undefined
}

/**
 * The positive errno the kernel gets for any thrown value: an FsError's own;
 * anything else is EIO. A Node error's `code` is not trusted: a stray EEXIST or
 * ENOENT from deep inside a device would reach write(2) or open(2) as a
 * meaning it does not have. Where a system error does mean something to the
 * caller (a full disk: ENOSPC), it is wrapped in an FsError where it arises.
 */
export function errnoOf (err: unknown): number {
  return err instanceof FsError ? err.errno : constants.errno.EIO
}

/** A user-facing error from the CLI or configuration: one line that says what to do. */
export class UsageError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'UsageError'
  }
}
