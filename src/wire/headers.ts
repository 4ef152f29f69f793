/**
 * The headers of the block server's protocol (names in lower case, as Node
 * and undici hand them over) and how their values are written and read.
 */
import { HttpError, shown } from './http-error'

/** The CRC-32 of an object as a decimal u32: on a PUT (checked by the server) and a whole GET (checked by the device). */
export const CHECKSUM_HEADER = 'x-bslfs-checksum'
/** "0" on a PUT: answer once the object is whole and readable; durable after the next sync. */
export const DURABLE_HEADER = 'x-bslfs-durable'
/** The POSIX code of an error answer, also in its JSON body (a HEAD answer has no body to carry it). */
export const ERROR_HEADER = 'x-bslfs-error'
/** On a POST to an object: the id of the object on the same device whose bytes it gets (a copy made by the server). */
export const COPY_FROM_HEADER = 'x-bslfs-copy-from'
export const CONTENT_LENGTH_HEADER = 'content-length'
export const CONTENT_RANGE_HEADER = 'content-range'
export const RANGE_HEADER = 'range'

/** The value of X-Bslfs-Durable for a PUT that need not be durable yet. */
export const NOT_DURABLE = '0'

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
  if (value === NOT_DURABLE) return false
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

/** The Range header of a read of bytes [offset, offset + length). */
export function rangeHeader (offset: number, length: number): string {
  return `bytes=${offset}-${offset + length - 1}`
}

/** The Content-Range of a 206 answer: `length` bytes from `start` of an object of `size` bytes. */
export function contentRange (start: number, length: number, size: number): string {
  return `bytes ${start}-${start + length - 1}/${size}`
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
