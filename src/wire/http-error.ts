import type { ErrnoCode } from '../errors'

/** An error answer of the block server: HTTP status, POSIX code name, message, and any extra headers. */
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

/** A string from a request, quoted and cut short for an error message. */
export function shown (s: string, max = 40): string {
  return JSON.stringify(s.length > max ? s.slice(0, max) + '…' : s)
}
