/**
 * The block server's wire protocol (HTTP/1.1, version 1), shared by the
 * server and anything that wants to speak it:
 *
 *   GET    /v1/health                          200 {"ok":true,"server":NAME,"devices":[...]}
 *   GET    /v1/devices/DEV/space               200 {"total","free","available"} (bytes)
 *   GET    /v1/devices/DEV/objects             200 text/plain, one object id per line
 *   PUT    /v1/devices/DEV/objects/ID          201 (Content-Length and X-Bslfs-Checksum required), once the
 *                                              object is durable; with X-Bslfs-Durable: 0 once it is whole
 *                                              and readable, durable after the next sync
 *   POST   /v1/devices/DEV/sync                204 once every object put before it is durable
 *   GET    /v1/devices/DEV/objects/ID          200 the bytes, verified (X-Bslfs-Checksum required), or with
 *                                              Range: bytes=A-B 206 those bytes read alone and NOT verified
 *                                              (the client checks them against its chunk sums)
 *   HEAD   /v1/devices/DEV/objects/ID          200 with Content-Length, or 404
 *   DELETE /v1/devices/DEV/objects/ID          204 (idempotent)
 *   GET    /v1/stream                          101 with Upgrade: bslfs-blocks/1: the connection then carries
 *                                              object reads as binary frames (devices/stream-frames.ts)
 *
 * Every request carries `Authorization: Bearer TOKEN` (401 otherwise, before
 * anything else is looked at). Every error answer is JSON
 * `{"error": MESSAGE, "code": POSIX_CODE}`, with the code also in the
 * `X-Bslfs-Error` header (a HEAD answer has no body):
 *
 *   400 EINVAL bad id, device name, checksum header, Content-Length; malformed request
 *   401 EACCES no or wrong token          404 ENOENT no such object or route
 *   404 ENODEV no such device             405 EOPNOTSUPP wrong method (Allow: ...)
 *   408 ETIMEDOUT request too slow        411 EINVAL PUT without Content-Length
 *   413 EFBIG body over the limit         414 ENAMETOOLONG target over 4096 characters
 *   416 EINVAL bad Range / ERANGE unsatisfiable (Content-Range: bytes *\/SIZE)
 *   417 EINVAL unknown Expect             422 EBADMSG body does not match its checksum
 *   426 EINVAL /v1/stream without the upgrade
 *   431 EMSGSIZE headers too large        500 EIO corrupt object or device failure
 *   501 ENOSYS unknown method             507 ENOSPC device full
 */
import { ErrnoCode, FsError } from '../errors'

export const PROTOCOL_PREFIX = '/v1'
export const CHECKSUM_HEADER = 'x-bslfs-checksum'
export const DURABLE_HEADER = 'x-bslfs-durable'
export const DEFAULT_MAX_OBJECT_BYTES = 64 * 1024 * 1024
/** A request target longer than this is refused with 414 before it is looked at. */
export const MAX_TARGET_LENGTH = 4096

/** An error answer: HTTP status, POSIX code name, message, and any extra headers. */
export class HttpError extends Error {
  readonly status: number
  readonly code: ErrnoCode
  readonly headers: Record<string, string>

  constructor (status: number, code: ErrnoCode, message: string, headers: Record<string, string> = {}) {
    super(message)
    this.name = 'HttpError'
    this.status = status
    this.code = code
    this.headers = headers
  }
}

/** The client closed its connection (or it timed out) before the request was whole: nothing to answer. */
export class ClientGone extends Error {}

function isMissing (err: FsError): boolean {
  if (err.code === 'ENOENT') return true
  const cause = (err as { cause?: unknown }).cause as NodeJS.ErrnoException | undefined
  return cause?.code === 'ENOENT'
}

/** The answer for an error a device raised. */
function fromFsError (err: FsError): HttpError {
  if (isMissing(err)) return new HttpError(404, 'ENOENT', err.message)
  switch (err.code) {
    case 'ENOSPC':
    case 'EDQUOT':
      return new HttpError(507, 'ENOSPC', err.message)
    case 'EINVAL':
      return new HttpError(400, 'EINVAL', err.message)
    case 'EACCES':
    case 'EPERM':
    case 'EROFS':
      return new HttpError(500, err.code, err.message)
    default:
      return new HttpError(500, 'EIO', err.message)
  }
}

/** The error answer for anything a request's handling threw: its own, a device's, or a bug's (500 EIO). */
export function httpErrorOf (err: unknown): HttpError {
  if (err instanceof HttpError) return err
  if (err instanceof FsError) return fromFsError(err)
  return new HttpError(500, 'EIO', `internal server error: ${(err as Error)?.message ?? String(err)}`)
}

/** A string from a request, quoted and cut short for an error message. */
export function shown (s: string, max = 40): string {
  return JSON.stringify(s.length > max ? s.slice(0, max) + '…' : s)
}

/**
 * The value of X-Bslfs-Checksum: a CRC-32 as a canonical decimal u32
 * (no sign, no leading zeros, no spaces). Throws 400 when missing or bad.
 */
export function parseChecksumHeader (value: string | string[] | undefined): number {
  if (value === undefined) {
    throw new HttpError(400, 'EINVAL', 'missing X-Bslfs-Checksum header (the CRC-32 of the object as a decimal number)')
  }
  if (Array.isArray(value) || !/^(?:0|[1-9][0-9]{0,9})$/.test(value)) {
    throw new HttpError(400, 'EINVAL', `bad X-Bslfs-Checksum ${shown(String(value))}: must be a decimal number from 0 to 4294967295`)
  }
  const n = Number(value)
  if (n > 0xffff_ffff) {
    throw new HttpError(400, 'EINVAL', `bad X-Bslfs-Checksum ${shown(value)}: larger than 4294967295`)
  }
  return n
}

/** X-Bslfs-Durable: absent or "1", the PUT answers once the object is durable; "0", once it is stored. */
export function parseDurableHeader (value: string | string[] | undefined): boolean {
  if (value === undefined || value === '1') return true
  if (value === '0') return false
  throw new HttpError(400, 'EINVAL', `bad X-Bslfs-Durable ${shown(String(value))}: must be 0 or 1`)
}

/** The value of Content-Length as a number; undefined when absent. Throws 400 when malformed. */
export function parseContentLength (value: string | undefined): number | undefined {
  if (value === undefined) return undefined
  if (!/^[0-9]{1,15}$/.test(value)) {
    throw new HttpError(400, 'EINVAL', `bad Content-Length ${shown(value)}`)
  }
  return Number(value)
}

/** A byte range as written in a Range header, before the object's size is known. */
export type RangeSpec =
  | { kind: 'from', start: number, end: number | null } // bytes=START-[END]
  | { kind: 'suffix', length: number } // bytes=-LENGTH

const MAX_RANGE_DIGITS = 15

/**
 * Parses `Range: bytes=START-END`, `bytes=START-` or `bytes=-SUFFIX`. Only
 * one range is supported; anything else is answered 416 (rather than
 * silently ignored, so a client never mistakes a whole object for a slice).
 */
export function parseRange (value: string): RangeSpec {
  const bad = (why: string): HttpError => new HttpError(416, 'EINVAL', `bad Range ${shown(value)}: ${why}`)
  const m = /^bytes=(.*)$/.exec(value.trim())
  if (!m) throw bad('only "bytes=START-END" ranges are supported')
  const spec = m[1].trim()
  if (spec.includes(',')) throw bad('only a single range is supported')
  const r = /^([0-9]*)-([0-9]*)$/.exec(spec)
  if (!r || (r[1] === '' && r[2] === '')) throw bad('expected START-END, START- or -LENGTH')
  if (r[1].length > MAX_RANGE_DIGITS || r[2].length > MAX_RANGE_DIGITS) throw bad('number too large')
  if (r[1] === '') {
    const length = Number(r[2])
    if (length === 0) throw bad('a suffix range must not be empty')
    return { kind: 'suffix', length }
  }
  const start = Number(r[1])
  const end = r[2] === '' ? null : Number(r[2])
  if (end !== null && end < start) throw bad('the end is before the start')
  return { kind: 'from', start, end }
}

/**
 * The inclusive byte span a range selects in an object of `size` bytes; an
 * end past the object is cut to its last byte. Throws 416 (with
 * `Content-Range: bytes *\/SIZE`) when nothing of the object is selected.
 */
export function resolveRange (spec: RangeSpec, size: number): { start: number, end: number } {
  const unsatisfiable = (): HttpError => new HttpError(416, 'ERANGE',
    `range not satisfiable: the object is ${size} bytes`, { 'Content-Range': `bytes */${size}` })
  if (size === 0) throw unsatisfiable()
  if (spec.kind === 'suffix') {
    return { start: Math.max(0, size - spec.length), end: size - 1 }
  }
  if (spec.start >= size) throw unsatisfiable()
  return { start: spec.start, end: spec.end === null ? size - 1 : Math.min(spec.end, size - 1) }
}

/** What a request target names. */
export type Route =
  | { kind: 'health' }
  | { kind: 'space', device: string }
  | { kind: 'list', device: string }
  | { kind: 'sync', device: string }
  | { kind: 'object', device: string, id: string }
  | { kind: 'stream' }

/** The methods each kind of route answers (the Allow header of a 405). */
export const ALLOWED: Record<Route['kind'], readonly string[]> = {
  health: ['GET', 'HEAD'],
  space: ['GET', 'HEAD'],
  list: ['GET'],
  sync: ['POST'],
  object: ['GET', 'HEAD', 'PUT', 'DELETE'],
  stream: ['GET']
}

/**
 * Maps a raw request target to a route. Nothing is percent-decoded: an
 * encoded byte in a device name or object id simply fails validation later,
 * so `%2F`, `%2e%2e` or `%00` can never turn into a path separator or a
 * parent directory. An object id that spans several segments (`a/b`,
 * `../x`) is returned as one string, to be refused as a bad id (400).
 */
export function parseTarget (target: string | undefined): Route {
  const url = target ?? ''
  if (url.length > MAX_TARGET_LENGTH) {
    throw new HttpError(414, 'ENAMETOOLONG', `request target is ${url.length} characters long; at most ${MAX_TARGET_LENGTH} are allowed`)
  }
  if (!url.startsWith('/')) throw new HttpError(400, 'EINVAL', `bad request target ${shown(url)}: must be an absolute path`)
  const q = url.indexOf('?')
  const path = q < 0 ? url : url.slice(0, q)
  if (path.includes('#')) throw new HttpError(400, 'EINVAL', `bad request target ${shown(url)}`)
  const segs = path.split('/').slice(1)
  const noRoute = (): HttpError => new HttpError(404, 'ENOENT', `no such route: ${shown(path, 80)}`)
  if (segs[0] !== 'v1') throw noRoute()
  if (segs.length === 2 && segs[1] === 'health') return { kind: 'health' }
  if (segs.length === 2 && segs[1] === 'stream') return { kind: 'stream' }
  if (segs[1] === 'devices' && segs.length >= 4) {
    const device = segs[2]
    if (segs[3] === 'space' && segs.length === 4) return { kind: 'space', device }
    if (segs[3] === 'sync' && segs.length === 4) return { kind: 'sync', device }
    if (segs[3] === 'objects') {
      if (segs.length === 4) return { kind: 'list', device }
      return { kind: 'object', device, id: segs.slice(4).join('/') }
    }
  }
  throw noRoute()
}
