/**
 * One HTTP exchange of a device client with a block server: bounded as a
 * whole, retried when asking again may help, stopped by the caller's signal,
 * carried by the server's read stream when it can be; every failure comes
 * out as an FsError.
 */
import createDebug from 'debug'
import { Dispatcher } from 'undici'
import { FsError } from '../errors'
import { statusMeaning } from '../wire/errno-status'
import { StreamRequest } from '../wire/frames'
import { CONTENT_LENGTH_HEADER, CONTENT_RANGE_HEADER, contentRange } from '../wire/headers'
import { ERROR_BODY_LIMIT, JSON_BODY_LIMIT } from '../wire/limits'
import { CallLimits, interrupted } from './device'
import { AnswerSink, StreamPool, StreamUnsupported, UpgradeRefused } from './stream-client'
import { ClientTls, TlsFailure, tlsFailureReason, tlsRefusal } from './tls'

const log = createDebug('bslfs:devices')

/** Per-request bound, in milliseconds, unless the caller says otherwise. */
export const DEFAULT_TIMEOUT_MS = 2000
/** Extra attempts of an idempotent request after a connection error, timeout or 5xx. */
export const DEFAULT_RETRIES = 2
export const MAX_RETRIES = 10

// Pauses before the 2nd, 3rd, … attempt; later attempts reuse the last one.
const BACKOFF_MS = [50, 150, 400, 1000]

/** The attempt's own deadline passed (the whole request, not just one phase). */
class TimedOut extends Error {
  constructor (readonly ms: number) {
    super(`no complete answer within ${ms} ms`)
    this.name = 'TimedOut'
  }
}

/** A server answer that is an error: the FsError to report and whether asking again may help. */
export class ErrorAnswer extends Error {
  constructor (readonly fsError: FsError, readonly retry: boolean) {
    super(fsError.message)
    this.name = 'ErrorAnswer'
  }
}

/** Everything one endpoint (a device, or a probe of a server) needs to talk HTTP. */
export interface Endpoint {
  /** "s2:d1" for a device, the URL's host for a probe. */
  label: string
  /** The server's name, for the token message. */
  serverName: string
  origin: string
  basePath: string
  token: string
  timeoutMs: number
  retries: number
  dispatcher: Dispatcher
  /** The server's read streams, unless the device was given its own dispatcher. */
  streams?: StreamPool
  /** The TLS material of an https: origin (for asking why a connection was cut). */
  tls?: ClientTls
  closed: () => boolean
}

export type Headers = Record<string, string | string[] | undefined>

/** The fields of a server's error answer, `{ error, code }`, as far as they can be read. */
export interface ErrorFields { error?: string, code?: string }

/**
 * What a call does with its answer, piece by piece as it arrives (no stream in
 * between: a block's bytes go straight where they belong, checked on the way).
 * A new one for every attempt.
 */
export interface Receiver<T> {
  /** True: this is the answer wanted, its body goes to data() and end(). False: an error answer (refuse). May throw to stop. */
  accept (status: number, headers: Headers): boolean
  data (chunk: Buffer): void
  /** The result, once the whole body is in; may throw. */
  end (): T
  /** What an error answer means: the ErrorAnswer or FsError to throw. */
  refuse (status: number, info: ErrorFields): Error
}

export interface Call<T> {
  method: Dispatcher.HttpMethod
  path: string
  /** For messages: "get of object 0000000000000abc". */
  what: string
  headers?: Record<string, string>
  body?: Uint8Array
  /** The answer as it arrives (every call but a listing). */
  receive?: () => Receiver<T>
  /** The same read as a frame of the server's read stream, which carries it when the server has one. */
  stream?: Omit<StreamRequest, 'id'>
  /** Or the answer as a stream (a listing, read at the consumer's pace): the result, or throws ErrorAnswer / FsError, inside the attempt's deadline. */
  handle?: (res: Dispatcher.ResponseData) => Promise<T>
  /** Releases a result that arrived after its deadline (a stream nobody will read). */
  late?: (v: T) => void
}

function noop (): void {}

export function destroyBody (body: Dispatcher.ResponseData['body']): void {
  body.on('error', noop)
  body.destroy()
}

/** Waits `ms` before the next attempt; rejects EINTR at once when `signal` aborts. */
function pause (ms: number, label: string, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted === true) return reject(interrupted(label))
    const onAbort = (): void => {
      clearTimeout(timer)
      reject(interrupted(label))
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}

/** The server closed or reset the connection under a request (not: refused it, timed out). */
function isConnectionCut (code: unknown): boolean {
  return code === 'UND_ERR_SOCKET' || code === 'ECONNRESET' || code === 'EPIPE'
}

/** A network-level failure in words: "connect ECONNREFUSED 127.0.0.1:7070", "connection closed by the server". */
export function describeFailure (err: unknown): string {
  if (err instanceof TimedOut) return err.message
  if (err instanceof AggregateError && err.errors.length > 0) {
    return [...new Set(err.errors.map(describeFailure))].join('; ')
  }
  const e = err as { code?: unknown, message?: unknown } | null | undefined
  const code = typeof e?.code === 'string' ? e.code : undefined
  const msg = typeof e?.message === 'string' && e.message !== '' ? e.message : (code ?? String(err))
  switch (code) {
    case 'UND_ERR_SOCKET': return `connection closed by the server (${msg})`
    case 'UND_ERR_CONNECT_TIMEOUT': return `connect timed out (${msg})`
    case 'UND_ERR_HEADERS_TIMEOUT': return 'no response headers in time'
    case 'UND_ERR_BODY_TIMEOUT': return 'the response body stalled'
    case 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH': return `the response body does not match its Content-Length (${msg})`
    default: return msg
  }
}

export function header (headers: Headers, name: string): string | undefined {
  const v = headers[name]
  return Array.isArray(v) ? v[0] : v
}

/** Content-Length as a number; undefined when absent; EIO when it is not a plain decimal. */
export function contentLength (ep: Endpoint, headers: Headers, what: string): number | undefined {
  const v = header(headers, CONTENT_LENGTH_HEADER)
  if (v === undefined) return undefined
  if (!/^[0-9]{1,16}$/.test(v)) throw new FsError('EIO', `${ep.label}: bad Content-Length ${JSON.stringify(v.slice(0, 40))} in the answer to ${what}`)
  return Number(v)
}

/** Reads a whole body, but never more than `limit` bytes; null when it is longer. */
async function readLimited (body: Dispatcher.ResponseData['body'], limit: number): Promise<Buffer | null> {
  const chunks: Buffer[] = []
  let n = 0
  for await (const chunk of body) {
    const b = chunk as Buffer
    n += b.length
    if (n > limit) {
      destroyBody(body)
      return null
    }
    chunks.push(b)
  }
  return Buffer.concat(chunks, n)
}

/** The server's `{ error, code }` from an error answer's body (null: too long to be one). */
function errorFields (body: Buffer | null): ErrorFields {
  if (body === null) return {}
  const text = body.toString('utf8')
  try {
    const j = JSON.parse(text) as unknown
    if (j !== null && typeof j === 'object') {
      const o = j as Record<string, unknown>
      return {
        error: typeof o.error === 'string' ? o.error.slice(0, 500) : undefined,
        code: typeof o.code === 'string' ? o.code.slice(0, 40) : undefined
      }
    }
  } catch {}
  const plain = text.trim().slice(0, 200)
  return plain === '' ? {} : { error: plain }
}

/**
 * Maps an error status to the FsError the caller sees (404 is the caller's to
 * interpret first): its errno, whether to ask again and its copy fault from
 * the wire's table, the words here.
 */
export function statusAnswer (ep: Endpoint, status: number, info: { error?: string, code?: string }, what: string): ErrorAnswer {
  const meaning = statusMeaning(status, info.code)
  if (meaning === undefined) return new ErrorAnswer(new FsError('EIO', `${ep.label}: unexpected answer ${status} to ${what}`), false)
  const said = info.error !== undefined ? `: ${info.error}` : ''
  const named = info.code !== undefined ? ' ' + info.code : ''
  const fail = (message: string): ErrorAnswer =>
    new ErrorAnswer(new FsError(meaning.errno, message, meaning.fault !== undefined ? { fault: meaning.fault } : undefined), meaning.retry)
  if (status === 401) return fail(`token rejected by ${ep.serverName} — check --token-file`)
  if (status === 403) return fail(`server ${ep.serverName} at ${ep.origin} refused this host's client certificate${said}`)
  if (status === 404) return fail(`${ep.label}: not found on the server (404, ${what})${said}`)
  if (status === 422) return fail(`${ep.label} refused ${what}: the bytes it received do not match their checksum (422)${said}`)
  if (meaning.errno === 'ENOSPC') return fail(`${ep.label} is full (${what})${said}`)
  if (status >= 500) return fail(`${ep.label} failed ${what} (${status}${named})${said}`)
  if (meaning.retry) return fail(`${ep.label} is busy (${status}, ${what})${said}`)
  if (meaning.errno === 'EFBIG') return fail(`${ep.label} refused ${what}: too large (${status})${said}`)
  return fail(`${ep.label} refused ${what} (${status})${said}`)
}

/** Reads an error answer's body and maps it. */
export async function answerFor (ep: Endpoint, res: Dispatcher.ResponseData, what: string): Promise<ErrorAnswer> {
  return statusAnswer(ep, res.statusCode, errorFields(await readLimited(res.body, ERROR_BODY_LIMIT).catch(() => null)), what)
}

/** A receiver for an answer with a small body (JSON, or nothing): `ok` says which statuses are wanted, `result` makes the result from the body. */
export function smallAnswer<T> (ep: Endpoint, what: string, ok: (status: number, headers: Headers) => boolean, result: (body: Buffer) => T): Receiver<T> {
  const chunks: Buffer[] = []
  let n = 0
  return {
    accept: ok,
    data: chunk => {
      n += chunk.length
      if (n > JSON_BODY_LIMIT) throw new FsError('EIO', `${ep.label} answered the ${what} with too much data`)
      chunks.push(chunk)
    },
    end: () => result(Buffer.concat(chunks, n)),
    refuse: (status, info) => statusAnswer(ep, status, info, what)
  }
}

/**
 * One attempt's answer, handed to its receiver as it arrives and settled
 * once: by the answer, an error, the deadline or the caller's signal.
 * Whichever transport carries it sets `cut`, which stops a transfer nobody
 * waits for any more, and may set `drop`, which forgets an interrupted one
 * without cutting what carries it (a late answer is then thrown away).
 */
class Reception<T> {
  settled = false
  /** The caller's signal stopped it. */
  interrupted = false
  cut: ((err: Error) => void) | undefined
  drop: (() => void) | undefined
  private status = 0
  private wanted = false
  private readonly errorBody: Buffer[] = []
  private errorBytes = 0
  private readonly timer: NodeJS.Timeout
  private readonly onAbort: (() => void) | undefined

  constructor (private readonly receiver: Receiver<T>, readonly timeoutMs: number, private readonly label: string,
    private readonly signal: AbortSignal | undefined,
    private readonly resolve: (v: T) => void, private readonly reject: (err: unknown) => void) {
    this.timer = setTimeout(() => this.stop(new TimedOut(timeoutMs)), timeoutMs)
    if (signal !== undefined) {
      this.onAbort = () => this.interrupt()
      signal.addEventListener('abort', this.onAbort, { once: true })
    }
  }

  settle (err: unknown, value?: T): void {
    if (this.settled) return
    this.settled = true
    clearTimeout(this.timer)
    if (this.onAbort !== undefined) this.signal?.removeEventListener('abort', this.onAbort)
    if (err === undefined) this.resolve(value as T)
    else this.reject(err)
  }

  stop (err: unknown): void {
    this.settle(err)
    this.cut?.(err as Error)
  }

  /** The caller no longer waits: EINTR now, and the transfer forgotten (or cut, where it cannot be forgotten). */
  interrupt (): void {
    if (this.settled) return
    const err = interrupted(this.label)
    this.interrupted = true
    this.settle(err)
    if (this.drop !== undefined) this.drop()
    else this.cut?.(err)
  }

  start (status: number, headers: Headers): void {
    if (this.settled) return
    this.status = status
    try {
      this.wanted = this.receiver.accept(status, headers)
    } catch (err) {
      this.stop(err)
    }
  }

  /** The next bytes of the answer; `chunk` may be a view of a buffer the transport reuses. */
  data (chunk: Buffer): void {
    if (this.settled) return
    if (!this.wanted) {
      this.errorBytes += chunk.length
      if (this.errorBytes <= ERROR_BODY_LIMIT) this.errorBody.push(Buffer.from(chunk))
      return
    }
    try {
      this.receiver.data(chunk)
    } catch (err) {
      this.stop(err)
    }
  }

  end (): void {
    if (this.settled) return
    if (!this.wanted) {
      return this.settle(this.receiver.refuse(this.status, errorFields(this.errorBytes <= ERROR_BODY_LIMIT ? Buffer.concat(this.errorBody) : null)))
    }
    let value: T
    try {
      value = this.receiver.end()
    } catch (err) {
      return this.settle(err)
    }
    this.settle(undefined, value)
  }
}

/** Runs one attempt's transport with a Reception that settles the result. */
function withReception<T> (ep: Endpoint, receiver: Receiver<T>, timeoutMs: number, signal: AbortSignal | undefined, run: (r: Reception<T>) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const r = new Reception(receiver, timeoutMs, ep.label, signal, resolve, reject)
    try {
      run(r)
    } catch (err) {
      r.settle(err)
    }
  })
}

/**
 * One attempt of a call with a receiver over HTTP, bounded as a whole by
 * `timeoutMs`. Once it settles (answered, failed, timed out) the receiver gets
 * no more bytes, and an answer still arriving is cut off with its connection.
 */
function overHttp<T> (ep: Endpoint, call: Call<T>, receiver: Receiver<T>, timeoutMs: number, signal?: AbortSignal): Promise<T> {
  return withReception(ep, receiver, timeoutMs, signal, r => {
    let controller: Dispatcher.DispatchController | undefined
    r.cut = err => controller?.abort(err)
    ep.dispatcher.dispatch({
      origin: ep.origin,
      path: ep.basePath + call.path,
      method: call.method,
      headers: { authorization: `Bearer ${ep.token}`, ...call.headers },
      body: call.body ?? null,
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs
    }, {
      onRequestStart: c => {
        controller = c
        if (r.settled) c.abort(r.interrupted ? interrupted(ep.label) : new TimedOut(timeoutMs))
      },
      onResponseStart: (_c, statusCode, h) => {
        if (statusCode >= 200) r.start(statusCode, h) // not 100 Continue
      },
      onResponseData: (_c, chunk) => r.data(chunk),
      onResponseEnd: () => r.end(),
      onResponseError: (_c, err) => r.settle(err)
    })
  })
}

/**
 * The same over the server's read stream: the answer's status, length and
 * size stand for the headers an HTTP answer would carry. An interrupted read
 * is dropped, not cut: the connection carries other reads.
 */
function overStream<T> (ep: Endpoint, streams: StreamPool, req: Omit<StreamRequest, 'id'>, what: string, receiver: Receiver<T>,
  timeoutMs: number, signal?: AbortSignal): Promise<T> {
  return withReception(ep, receiver, timeoutMs, signal, r => {
    const sink: AnswerSink = {
      start: (status, length, size) => {
        const headers: Headers = { [CONTENT_LENGTH_HEADER]: String(length) }
        if (status === 206) headers[CONTENT_RANGE_HEADER] = contentRange(req.offset, length, size)
        r.start(status, headers)
      },
      data: chunk => r.data(chunk),
      end: () => r.end(),
      fail: err => r.settle(err)
    }
    streams.send(req, sink, signal).then(ticket => {
      r.cut = ticket.abandon
      r.drop = ticket.drop
      // Interrupted, or the deadline passed, while the connection was being opened.
      if (r.interrupted) ticket.drop()
      else if (r.settled) ticket.abandon(new TimedOut(timeoutMs))
    }, (err: unknown) => {
      r.settle(err instanceof UpgradeRefused ? statusAnswer(ep, err.status, errorFields(err.body), what) : err)
    })
  })
}

/** One attempt, bounded as a whole by `timeoutMs` (connect, send, headers and the answer) and stopped by `signal`. */
async function attempt<T> (ep: Endpoint, call: Call<T>, timeoutMs: number, signal?: AbortSignal): Promise<T> {
  if (call.receive) {
    if (call.stream !== undefined && ep.streams !== undefined && ep.streams.supported !== false) {
      try {
        return await overStream(ep, ep.streams, call.stream, call.what, call.receive(), timeoutMs, signal)
      } catch (err) {
        // A server without the stream: this attempt and the ones after go over HTTP.
        if (!(err instanceof StreamUnsupported)) throw err
      }
    }
    return await overHttp(ep, call, call.receive(), timeoutMs, signal)
  }
  const handle = call.handle as NonNullable<Call<T>['handle']>
  const ac = new AbortController()
  let timer: NodeJS.Timeout | undefined
  let onAbort: (() => void) | undefined
  const deadline = new Promise<never>((_resolve, reject) => {
    const stop = (err: Error): void => {
      ac.abort(err)
      reject(err)
    }
    timer = setTimeout(() => stop(new TimedOut(timeoutMs)), timeoutMs)
    onAbort = () => stop(interrupted(ep.label))
    signal?.addEventListener('abort', onAbort, { once: true })
  })
  deadline.catch(noop)
  const work = (async () => {
    const res = await ep.dispatcher.request({
      origin: ep.origin,
      path: ep.basePath + call.path,
      method: call.method,
      headers: { authorization: `Bearer ${ep.token}`, ...call.headers },
      body: call.body,
      signal: ac.signal,
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs
    })
    try {
      return await handle(res)
    } catch (err) {
      destroyBody(res.body)
      throw err
    }
  })()
  try {
    // The race keeps the bound even where the dispatcher would notice the abort late (a queued request).
    return await Promise.race([work, deadline])
  } catch (err) {
    work.then(v => call.late?.(v), noop)
    throw err
  } finally {
    clearTimeout(timer)
    if (onAbort !== undefined) signal?.removeEventListener('abort', onAbort)
  }
}

/**
 * A request with bounded retries; every failure comes out as an FsError.
 * No answer at all after the last attempt is fault `unreachable`. Once
 * `limits.signal` aborts the call rejects EINTR at once and is not retried
 * (already aborted: no request is sent).
 */
export async function exchange<T> (ep: Endpoint, call: Call<T>, limits: CallLimits = {}): Promise<T> {
  const attempts = (limits.retries ?? ep.retries) + 1
  const timeoutMs = limits.timeoutMs ?? ep.timeoutMs
  const signal = limits.signal
  let last: unknown
  let askedWhy = false
  for (let i = 0; i < attempts; i++) {
    if (i > 0) await pause(BACKOFF_MS[Math.min(i - 1, BACKOFF_MS.length - 1)], ep.label, signal)
    if (ep.closed()) throw new FsError('EIO', `device ${ep.label} is closed`)
    if (signal?.aborted === true) throw interrupted(ep.label)
    try {
      return await attempt(ep, call, timeoutMs, signal)
    } catch (err) {
      if (err instanceof ErrorAnswer) {
        log('%s: %s %s → %s%s', ep.label, call.method, call.path, err.fsError.message, err.retry ? ' (will retry)' : '')
        if (!err.retry) throw err.fsError
        last = err
        continue
      }
      if (err instanceof FsError) throw err
      const code = (err as { code?: unknown } | null)?.code
      if (code === 'UND_ERR_INVALID_ARG') {
        throw new FsError('EINVAL', `${ep.label}: bad request for ${call.what}: ${describeFailure(err)}`, { cause: err })
      }
      if (code === 'UND_ERR_DESTROYED' || code === 'UND_ERR_CLOSED') {
        throw new FsError('EIO', `device ${ep.label} is closed`, { cause: err })
      }
      // A certificate that does not check out will not check out a moment later: no retry, and never plain HTTP instead.
      let tlsReason = tlsFailureReason(err)
      if (tlsReason === undefined && !askedWhy && ep.origin.startsWith('https:') && isConnectionCut(code)) {
        askedWhy = true
        tlsReason = await tlsRefusal(ep.origin, ep.tls, Math.min(timeoutMs, 2000))
      }
      if (tlsReason !== undefined) throw new TlsFailure(`server ${ep.serverName} at ${ep.origin}`, tlsReason, err)
      log('%s: %s %s attempt %d/%d failed: %s', ep.label, call.method, call.path, i + 1, attempts, describeFailure(err))
      last = err
    }
  }
  if (last instanceof ErrorAnswer) throw last.fsError
  const tries = attempts > 1 ? `, ${attempts} attempts` : ''
  throw new FsError('EIO', `${ep.label} unreachable: ${describeFailure(last)} (${call.what}${tries})`, { cause: last, fault: 'unreachable' })
}

// ---------------------------------------------------------------------------

export function checkedUrl (url: string): { origin: string, basePath: string } {
  let u: URL
  try {
    u = new URL(url)
  } catch {
    throw new FsError('EINVAL', `bad server URL ${JSON.stringify(String(url).slice(0, 200))}: expected e.g. http://host2:7070`)
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    throw new FsError('EINVAL', `bad server URL ${url}: must start with http:// or https://`)
  }
  if (u.username !== '' || u.password !== '' || u.search !== '' || u.hash !== '') {
    throw new FsError('EINVAL', `bad server URL ${url}: no user, password, query or fragment allowed (the token goes in --token-file)`)
  }
  return { origin: u.origin, basePath: u.pathname.replace(/\/+$/, '') }
}

export function checkedToken (token: string): string {
  if (typeof token !== 'string' || !/^[\x21-\x7e]+$/.test(token)) {
    throw new FsError('EINVAL', 'bad token: must be non-empty printable ASCII without spaces (check --token-file)')
  }
  return token
}

export function checkedTimeout (ms: number | undefined): number {
  const v = ms ?? DEFAULT_TIMEOUT_MS
  if (!Number.isFinite(v) || v <= 0) throw new FsError('EINVAL', `bad timeout ${String(ms)}: must be a positive number of milliseconds`)
  return v
}

/** A small answer's body as a JSON object, or EIO saying what it is instead. */
export function jsonObject (ep: Endpoint, body: Buffer, what: string): Record<string, unknown> {
  let j: unknown
  try {
    j = JSON.parse(body.toString('utf8'))
  } catch (err) {
    throw new FsError('EIO', `${ep.label} answered the ${what} with something that is not JSON: ${(err as Error).message}`)
  }
  if (j === null || typeof j !== 'object' || Array.isArray(j)) throw new FsError('EIO', `${ep.label} answered the ${what} with JSON that is not an object`)
  return j as Record<string, unknown>
}
