/** How the block server answers what went wrong: the error answer for anything a request's handling threw. */
import { FsError } from '../errors'
import { deviceErrorAnswer } from '../wire/errno-status'
import { HttpError } from '../wire/http-error'

/** The client closed its connection (or it timed out) before the request was whole: nothing to answer. */
export class ClientGone extends Error {}

function isMissing (err: FsError): boolean {
  if (err.code === 'ENOENT') return true
  const cause = (err as { cause?: unknown }).cause as NodeJS.ErrnoException | undefined
  return cause?.code === 'ENOENT'
}

/** The error answer for anything a request's handling threw: its own, a device's (by the wire's table), or a bug's (500 EIO). */
export function httpErrorOf (err: unknown): HttpError {
  if (err instanceof HttpError) return err
  if (err instanceof FsError) {
    const { status, code } = deviceErrorAnswer(isMissing(err) ? 'ENOENT' : err.code, err.fault)
    return new HttpError(status, code, err.message)
  }
  return new HttpError(500, 'EIO', `internal server error: ${(err as Error)?.message ?? String(err)}`)
}
