import { createHash } from 'node:crypto'
import createDebug from 'debug'
import { Dispatcher, Pool } from 'undici'
import { isObjectId, validName } from '../bsl'
import { checksum } from '../checksum'
import { ErrnoCode, FsError } from '../errors'
import { CallLimits, Device, DeviceSpace, checkDeviceRequest, checkRange, rangeBuffer } from './device'
import { AnswerSink, StreamPool, StreamUnsupported, UpgradeRefused } from './stream-client'
import { OP_OBJECT, OP_RANGE, StreamRequest } from './stream-frames'

const log = createDebug('bslfs:devices')

/** Per-request bound, in milliseconds, unless the caller says otherwise. */
export const DEFAULT_TIMEOUT_MS = 2000
/** Extra attempts of an idempotent request after a connection error, timeout or 5xx. */
export const DEFAULT_RETRIES = 2
/** The largest object a get accepts (the largest block size bslfs allows). */
export const DEFAULT_MAX_OBJECT_BYTES = 64 * 1024 * 1024
/** Connections per server in the shared pool. */
export const POOL_CONNECTIONS = 8

// Pauses before the 2nd, 3rd, … attempt; later attempts reuse the last one.
const BACKOFF_MS = [50, 150, 400, 1000]
// How much of an error answer is read for its message; the rest is dropped.
const ERROR_BODY_LIMIT = 16 * 1024
// The longest line a listing may hold (an id is 16 characters).
const LIST_LINE_LIMIT = 1024
// The largest small answer (JSON) taken.
const JSON_BODY_LIMIT = 64 * 1024
const MAX_RETRIES = 10

export interface RemoteDeviceOptions {
  /** The server's name in the server table ("s2"); used in labels and messages. */
  server: string
  /** The device's name on that server ("d1"). */
  device: string
  /** Base URL of the block server, e.g. "http://host2:7070". */
  url: string
  /** The shared bearer token. */
  token: string
  /** Bound on each attempt of a request: connect, headers and body together. Default 2000. */
  timeoutMs?: number
  /** Extra attempts after a connection error, timeout or retryable 5xx. Default 2. */
  retries?: number
  /** A dispatcher to use instead of the shared per-server pool; the device never closes it. */
  pool?: Dispatcher
  /** The largest object body a get accepts. Default 64 MiB. */
  maxObjectBytes?: number
}

/** What `GET /v1/health` answers. */
export interface ServerHealth {
  ok: true
  /** The server's own name for itself. */
  server: string
  /** Names of the devices it serves. */
  devices: string[]
}

// ---------------------------------------------------------------------------
// The pool registry: one keep-alive pool per (server URL, token), shared by
// every device of that server and closed when the last of them closes.

interface PoolEntry {
  key: string
  pool: Pool
  /** The server's read streams (http: only; https goes through the pool). */
  streams: StreamPool | undefined
  refs: number
}

const pools = new Map<string, PoolEntry>()

function poolKey (origin: string, token: string): string {
  // The token is part of the key (two tokens are two sets of connections) but is not kept in clear.
  return `${origin} ${createHash('sha256').update(token).digest('hex').slice(0, 16)}`
}

function acquirePool (origin: string, token: string, connectTimeoutMs: number): PoolEntry {
  const key = poolKey(origin, token)
  let e = pools.get(key)
  if (e === undefined) {
    const pool = new Pool(origin, {
      connections: POOL_CONNECTIONS,
      pipelining: 1,
      keepAliveTimeout: 4000,
      keepAliveMaxTimeout: 30_000,
      connect: { timeout: connectTimeoutMs }
    })
    const streams = origin.startsWith('http:') ? new StreamPool(origin, token, connectTimeoutMs) : undefined
    e = { key, pool, streams, refs: 0 }
    pools.set(key, e)
    log('new connection pool for %s', origin)
  }
  e.refs++
  return e
}

async function releasePool (e: PoolEntry): Promise<void> {
  e.refs--
  if (e.refs > 0) return
  if (pools.get(e.key) === e) pools.delete(e.key)
  e.streams?.close()
  // Let finished requests hand back their sockets; anything still hanging is cut off.
  let timer: NodeJS.Timeout | undefined
  const closed = await Promise.race([
    e.pool.close().then(() => true, () => true),
    new Promise<boolean>(resolve => { timer = setTimeout(() => resolve(false), 500) })
  ])
  clearTimeout(timer)
  if (!closed) await e.pool.destroy().catch(() => undefined)
}

/** How many shared server pools are open (for status output and tests). */
export function openPoolCount (): number {
  return pools.size
}

// ---------------------------------------------------------------------------
// One HTTP exchange with bounds and retries.

/** The attempt's own deadline passed (the whole request, not just one phase). */
class TimedOut extends Error {
  constructor (readonly ms: number) {
    super(`no complete answer within ${ms} ms`)
    this.name = 'TimedOut'
  }
}

/** A server answer that is an error: the FsError to report and whether asking again may help. */
class Answer extends Error {
  constructor (readonly fsError: FsError, readonly retry: boolean) {
    super(fsError.message)
    this.name = 'Answer'
  }
}

/** Everything one endpoint (a device, or a probe of a server) needs to talk HTTP. */
interface Endpoint {
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
  closed: () => boolean
}

type Headers = Record<string, string | string[] | undefined>

/** The fields of a server's error answer, `{ error, code }`, as far as they can be read. */
interface ErrorFields { error?: string, code?: string }

/**
 * What a call does with its answer, piece by piece as it arrives (no stream in
 * between: a block's bytes go straight where they belong, checked on the way).
 * A new one for every attempt.
 */
interface Receiver<T> {
  /** True: this is the answer wanted, its body goes to data() and end(). False: an error answer (refuse). May throw to stop. */
  accept (status: number, headers: Headers): boolean
  data (chunk: Buffer): void
  /** The result, once the whole body is in; may throw. */
  end (): T
  /** What an error answer means: the Answer or FsError to throw. */
  refuse (status: number, info: ErrorFields): Error
}

interface Call<T> {
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
  /** Or the answer as a stream (a listing, read at the consumer's pace): the result, or throws Answer / FsError, inside the attempt's deadline. */
  handle?: (res: Dispatcher.ResponseData) => Promise<T>
  /** Releases a result that arrived after its deadline (a stream nobody will read). */
  late?: (v: T) => void
}

function noop (): void {}

function destroyBody (body: Dispatcher.ResponseData['body']): void {
  body.on('error', noop)
  body.destroy()
}

function sleep (ms: number): Promise<void> {
  return new Promise(resolve => setTimeout(resolve, ms))
}

/** A network-level failure in words: "connect ECONNREFUSED 127.0.0.1:7070", "connection closed by the server". */
function describe (err: unknown): string {
  if (err instanceof TimedOut) return err.message
  if (err instanceof AggregateError && err.errors.length > 0) {
    return [...new Set(err.errors.map(describe))].join('; ')
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

function header (headers: Headers, name: string): string | undefined {
  const v = headers[name]
  return Array.isArray(v) ? v[0] : v
}

/** Content-Length as a number; undefined when absent; EIO when it is not a plain decimal. */
function contentLength (ep: Endpoint, headers: Headers, what: string): number | undefined {
  const v = header(headers, 'content-length')
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

/** Maps an error status to the FsError the caller sees (404 is the caller's to interpret first). */
function statusAnswer (ep: Endpoint, status: number, info: { error?: string, code?: string }, what: string): Answer {
  const said = info.error !== undefined ? `: ${info.error}` : ''
  const fail = (code: ErrnoCode, message: string, retry = false): Answer => new Answer(new FsError(code, message), retry)
  if (status === 401) return fail('EACCES', `token rejected by ${ep.serverName} — check --token-file`)
  if (status === 403) return fail('EACCES', `${ep.label} refused ${what} (403)${said}`)
  if (status === 404) return fail('ENODEV', `${ep.label}: not found on the server (404, ${what})${said}`)
  if (status === 408 || status === 429) return fail('EIO', `${ep.label} is busy (${status}, ${what})${said}`, true)
  if (status === 413) return fail('EFBIG', `${ep.label} refused ${what}: too large (413)${said}`)
  if (status === 422) return fail('EIO', `${ep.label} refused ${what}: the bytes it received do not match their checksum (422)${said}`)
  if (status === 507) return fail('ENOSPC', `${ep.label} is full (${what})${said}`)
  if (status >= 400 && status < 500) return fail('EINVAL', `${ep.label} refused ${what} (${status})${said}`)
  if (status >= 500) {
    // A definite EIO answer (a corrupt or unreadable copy) will not get better by asking again.
    const definite = info.code === 'EIO'
    return fail('EIO', `${ep.label} failed ${what} (${status}${info.code !== undefined ? ' ' + info.code : ''})${said}`, !definite)
  }
  return fail('EIO', `${ep.label}: unexpected answer ${status} to ${what}`)
}

/** Reads an error answer's body and maps it. */
async function answerFor (ep: Endpoint, res: Dispatcher.ResponseData, what: string): Promise<Answer> {
  return statusAnswer(ep, res.statusCode, errorFields(await readLimited(res.body, ERROR_BODY_LIMIT).catch(() => null)), what)
}

/** A receiver for an answer with a small body (JSON, or nothing): `ok` says which statuses are wanted, `result` makes the result from the body. */
function small<T> (ep: Endpoint, what: string, ok: (status: number, headers: Headers) => boolean, result: (body: Buffer) => T): Receiver<T> {
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
 * once: by the answer, an error, or the deadline. Whichever transport carries
 * it sets `cut`, which stops a transfer nobody waits for any more.
 */
class Reception<T> {
  settled = false
  cut: ((err: Error) => void) | undefined
  private status = 0
  private wanted = false
  private readonly errorBody: Buffer[] = []
  private errorBytes = 0
  private readonly timer: NodeJS.Timeout

  constructor (private readonly receiver: Receiver<T>, readonly timeoutMs: number,
    private readonly resolve: (v: T) => void, private readonly reject: (err: unknown) => void) {
    this.timer = setTimeout(() => this.stop(new TimedOut(timeoutMs)), timeoutMs)
  }

  settle (err: unknown, value?: T): void {
    if (this.settled) return
    this.settled = true
    clearTimeout(this.timer)
    if (err === undefined) this.resolve(value as T)
    else this.reject(err)
  }

  stop (err: unknown): void {
    this.settle(err)
    this.cut?.(err as Error)
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
function received<T> (receiver: Receiver<T>, timeoutMs: number, run: (r: Reception<T>) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const r = new Reception(receiver, timeoutMs, resolve, reject)
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
function dispatched<T> (ep: Endpoint, call: Call<T>, receiver: Receiver<T>, timeoutMs: number): Promise<T> {
  return received(receiver, timeoutMs, r => {
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
        if (r.settled) c.abort(new TimedOut(timeoutMs))
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
 * size stand for the headers an HTTP answer would carry.
 */
function streamed<T> (ep: Endpoint, streams: StreamPool, req: Omit<StreamRequest, 'id'>, what: string, receiver: Receiver<T>, timeoutMs: number): Promise<T> {
  return received(receiver, timeoutMs, r => {
    const sink: AnswerSink = {
      start: (status, length, size) => {
        const headers: Headers = { 'content-length': String(length) }
        if (status === 206) headers['content-range'] = `bytes ${req.offset}-${req.offset + length - 1}/${size}`
        r.start(status, headers)
      },
      data: chunk => r.data(chunk),
      end: () => r.end(),
      fail: err => r.settle(err)
    }
    streams.send(req, sink).then(abandon => {
      r.cut = abandon
      // The deadline passed while the connection was being opened.
      if (r.settled) abandon(new TimedOut(timeoutMs))
    }, (err: unknown) => {
      r.settle(err instanceof UpgradeRefused ? statusAnswer(ep, err.status, errorFields(err.body), what) : err)
    })
  })
}

/** One attempt, bounded as a whole by `timeoutMs`: connect, send, headers and the answer. */
async function attempt<T> (ep: Endpoint, call: Call<T>, timeoutMs: number): Promise<T> {
  if (call.receive) {
    if (call.stream !== undefined && ep.streams !== undefined && ep.streams.supported !== false) {
      try {
        return await streamed(ep, ep.streams, call.stream, call.what, call.receive(), timeoutMs)
      } catch (err) {
        // A server without the stream: this attempt and the ones after go over HTTP.
        if (!(err instanceof StreamUnsupported)) throw err
      }
    }
    return await dispatched(ep, call, call.receive(), timeoutMs)
  }
  const handle = call.handle as NonNullable<Call<T>['handle']>
  const ac = new AbortController()
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => {
      const err = new TimedOut(timeoutMs)
      ac.abort(err)
      reject(err)
    }, timeoutMs)
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
  }
}

/**
 * A request with bounded retries; every failure comes out as an FsError.
 * No answer at all after the last attempt is fault `unreachable`.
 */
async function exchange<T> (ep: Endpoint, call: Call<T>, limits: CallLimits = {}): Promise<T> {
  const attempts = (limits.retries ?? ep.retries) + 1
  const timeoutMs = limits.timeoutMs ?? ep.timeoutMs
  let last: unknown
  for (let i = 0; i < attempts; i++) {
    if (i > 0) await sleep(BACKOFF_MS[Math.min(i - 1, BACKOFF_MS.length - 1)])
    if (ep.closed()) throw new FsError('EIO', `device ${ep.label} is closed`)
    try {
      return await attempt(ep, call, timeoutMs)
    } catch (err) {
      if (err instanceof Answer) {
        log('%s: %s %s → %s%s', ep.label, call.method, call.path, err.fsError.message, err.retry ? ' (will retry)' : '')
        if (!err.retry) throw err.fsError
        last = err
        continue
      }
      if (err instanceof FsError) throw err
      const code = (err as { code?: unknown } | null)?.code
      if (code === 'UND_ERR_INVALID_ARG') {
        throw new FsError('EINVAL', `${ep.label}: bad request for ${call.what}: ${describe(err)}`, { cause: err })
      }
      if (code === 'UND_ERR_DESTROYED' || code === 'UND_ERR_CLOSED') {
        throw new FsError('EIO', `device ${ep.label} is closed`, { cause: err })
      }
      log('%s: %s %s attempt %d/%d failed: %s', ep.label, call.method, call.path, i + 1, attempts, describe(err))
      last = err
    }
  }
  if (last instanceof Answer) throw last.fsError
  const tries = attempts > 1 ? `, ${attempts} attempts` : ''
  throw new FsError('EIO', `${ep.label} unreachable: ${describe(last)} (${call.what}${tries})`, { cause: last, fault: 'unreachable' })
}

// ---------------------------------------------------------------------------

function checkedUrl (url: string): { origin: string, basePath: string } {
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

function checkedToken (token: string): string {
  if (typeof token !== 'string' || !/^[\x21-\x7e]+$/.test(token)) {
    throw new FsError('EINVAL', 'bad token: must be non-empty printable ASCII without spaces (check --token-file)')
  }
  return token
}

function checkedTimeout (ms: number | undefined): number {
  const v = ms ?? DEFAULT_TIMEOUT_MS
  if (!Number.isFinite(v) || v <= 0) throw new FsError('EINVAL', `bad timeout ${String(ms)}: must be a positive number of milliseconds`)
  return v
}

/**
 * A device on a remote bslfs block server, spoken to over HTTP:
 *
 *     PUT/GET/HEAD/DELETE  /v1/devices/:device/objects/:id
 *     GET                  /v1/devices/:device/objects     (ids, one a line)
 *     GET                  /v1/devices/:device/space
 *
 * Every request is bounded as a whole by `timeoutMs` (connect, headers and
 * body), and retried `retries` times after a connection error, a timeout or a
 * transient 5xx; all requests are idempotent (objects are immutable). A call
 * therefore never takes longer than timeoutMs × (retries + 1) plus the short
 * backoff between attempts. Reads are checked end to end: the crc32 of the
 * bytes that arrived must match, or the read is EIO — never wrong bytes.
 */
export class RemoteDevice implements Device {
  readonly label: string
  readonly server: string
  readonly device: string
  readonly url: string
  readonly timeoutMs: number
  readonly retries: number
  private readonly maxObjectBytes: number
  private readonly ep: Endpoint
  private readonly entry: PoolEntry | undefined
  private readonly devicePath: string
  private closed = false

  constructor (opts: RemoteDeviceOptions) {
    validName('server', opts.server)
    validName('device', opts.device)
    this.server = opts.server
    this.device = opts.device
    this.label = `${opts.server}:${opts.device}`
    this.url = opts.url
    const { origin, basePath } = checkedUrl(opts.url)
    const token = checkedToken(opts.token)
    this.timeoutMs = checkedTimeout(opts.timeoutMs)
    const retries = opts.retries ?? DEFAULT_RETRIES
    if (!Number.isInteger(retries) || retries < 0 || retries > MAX_RETRIES) {
      throw new FsError('EINVAL', `bad retries ${String(opts.retries)}: must be an integer 0..${MAX_RETRIES}`)
    }
    this.retries = retries
    this.maxObjectBytes = opts.maxObjectBytes ?? DEFAULT_MAX_OBJECT_BYTES
    this.entry = opts.pool === undefined ? acquirePool(origin, token, this.timeoutMs) : undefined
    this.devicePath = `/v1/devices/${encodeURIComponent(opts.device)}`
    this.ep = {
      label: this.label,
      serverName: opts.server,
      origin,
      basePath,
      token,
      timeoutMs: this.timeoutMs,
      retries,
      dispatcher: opts.pool ?? (this.entry as PoolEntry).pool,
      streams: this.entry?.streams,
      closed: () => this.closed
    }
  }

  private check (objectId: string, sum?: number): void {
    checkDeviceRequest(this.label, this.closed, objectId, sum)
  }

  private objectPath (objectId: string): string {
    // The id is 16 lowercase hex digits (checked), so encoding is only belt and braces.
    return `${this.devicePath}/objects/${encodeURIComponent(objectId)}`
  }

  put (objectId: string, data: Uint8Array, sum: number, limits?: CallLimits): Promise<void> {
    return this.send(objectId, data, sum, true, limits)
  }

  store (objectId: string, data: Uint8Array, sum: number, limits?: CallLimits): Promise<void> {
    return this.send(objectId, data, sum, false, limits)
  }

  /** POST …/sync: the server makes every object stored on the device durable (one syncfs). */
  async sync (limits?: CallLimits): Promise<void> {
    if (this.closed) throw new FsError('EIO', `device ${this.label} is closed`)
    const what = 'sync'
    await exchange(this.ep, {
      method: 'POST',
      path: `${this.devicePath}/sync`,
      what,
      receive: () => small(this.ep, what, status => status === 204 || status === 200, () => undefined)
    }, limits)
  }

  private async send (objectId: string, data: Uint8Array, sum: number, durable: boolean, limits?: CallLimits): Promise<void> {
    this.check(objectId, sum)
    // No checksum here: the server checks the bytes it received against `sum` (422 otherwise),
    // which covers a wrong `sum` from the caller as well as damage on the way.
    const what = `put of object ${objectId}`
    await exchange(this.ep, {
      method: 'PUT',
      path: this.objectPath(objectId),
      what,
      headers: {
        'content-type': 'application/octet-stream',
        'content-length': String(data.byteLength),
        'x-bslfs-checksum': String(sum),
        ...(durable ? {} : { 'x-bslfs-durable': '0' })
      },
      body: data,
      receive: () => small(this.ep, what, status => status === 201 || status === 200 || status === 204, () => undefined)
    }, limits)
    log('%s: put %s (%d bytes)', this.label, objectId, data.byteLength)
  }

  /** Why a read got no bytes: the object is missing (404), the server found its copy bad (5xx EIO), or what the status says. */
  private readFailure (status: number, info: ErrorFields, objectId: string, what: string): Answer {
    if (status === 404 && (info.code === undefined || info.code === 'ENOENT')) {
      // EIO for the reader, but a message that says "missing" rather than "corrupt" (as LocalDevice).
      return new Answer(new FsError('EIO', `object ${objectId} is missing on ${this.label}`, { fault: 'missing' }), false)
    }
    const answer = statusAnswer(this.ep, status, info, what)
    // The server read its copy and found it bad (checksum, disk error): this copy is corrupt.
    if (status >= 500 && info.code === 'EIO') return new Answer(new FsError('EIO', answer.fsError.message.slice('EIO: '.length), { fault: 'corrupt' }), false)
    return answer
  }

  /**
   * The whole object, its CRC-32 checked as it arrives (the bytes are copied
   * once, from the connection to where they stay). Into `into` when it fits
   * there (the result is then a view of it), else into a buffer of its own.
   */
  async get (objectId: string, sum: number, limits?: CallLimits, into?: Buffer): Promise<Buffer> {
    this.check(objectId, sum)
    const what = `get of object ${objectId}`
    const max = this.maxObjectBytes
    return await exchange(this.ep, {
      method: 'GET',
      path: this.objectPath(objectId),
      what,
      headers: { 'x-bslfs-checksum': String(sum) },
      stream: { op: OP_OBJECT, device: this.device, objectId, offset: 0, length: 0, sum },
      receive: () => {
        let data: Buffer
        let declared: number | undefined
        let n = 0
        let crc = 0
        return {
          accept: (status, headers) => {
            if (status !== 200) return false
            declared = contentLength(this.ep, headers, what)
            if (declared !== undefined && declared > max) {
              throw new FsError('EIO', `${this.label} answered ${what} with ${declared} bytes; at most ${max} are accepted`)
            }
            // Without a Content-Length the body grows as it comes.
            const size = declared ?? 64 * 1024
            data = into !== undefined && size <= into.length ? into : Buffer.allocUnsafe(size)
            return true
          },
          data: chunk => {
            if (n + chunk.length > data.length) {
              if (declared !== undefined) throw new FsError('EIO', `${this.label} answered ${what} with more than the ${declared} bytes of its Content-Length`)
              if (n + chunk.length > max) throw new FsError('EIO', `${this.label} answered ${what} with more than ${max} bytes`)
              const bigger = Buffer.allocUnsafe(Math.min(max, Math.max(2 * data.length, n + chunk.length)))
              data.copy(bigger, 0, 0, n)
              data = bigger
            }
            chunk.copy(data, n)
            crc = checksum(chunk, crc)
            n += chunk.length
          },
          end: () => {
            if (declared !== undefined && n !== declared) {
              throw new FsError('EIO', `${this.label} answered ${what} with ${n} bytes but a Content-Length of ${declared}`)
            }
            if (crc !== sum) {
              log('%s: checksum mismatch on %s after transfer', this.label, objectId)
              throw new FsError('EIO', `checksum mismatch on ${this.label} object ${objectId} (as received): expected 0x${sum.toString(16)}, got 0x${crc.toString(16)} (${n} bytes)`, { fault: 'corrupt' })
            }
            return data.subarray(0, n)
          },
          refuse: (status, info) => this.readFailure(status, info, objectId, what)
        }
      }
    }, limits)
  }

  /** A ranged GET (206): the server reads only those bytes, and the caller checks them against its chunk sums. */
  async getRange (objectId: string, offset: number, length: number, limits?: CallLimits, into?: Buffer): Promise<Buffer> {
    this.check(objectId)
    checkRange(this.label, objectId, offset, length)
    const last = offset + length - 1
    const what = `get of bytes ${offset}-${last} of object ${objectId}`
    return await exchange(this.ep, {
      method: 'GET',
      path: this.objectPath(objectId),
      what,
      headers: { range: `bytes=${offset}-${last}` },
      // A frame's offset and length are u32 (objects are at most 64 MiB).
      stream: last <= 0xffff_ffff ? { op: OP_RANGE, device: this.device, objectId, offset, length, sum: 0 } : undefined,
      receive: () => {
        const data = rangeBuffer(length, into)
        let n = 0
        return {
          accept: (status, headers) => {
            if (status === 200) throw new FsError('EIO', `${this.label} answered ${what} with the whole object (200) instead of the range`)
            if (status !== 206) return false
            const range = header(headers, 'content-range')
            if (range === undefined || !range.startsWith(`bytes ${offset}-`)) {
              throw new FsError('EIO', `${this.label} answered ${what} with Content-Range ${JSON.stringify(String(range).slice(0, 60))}`)
            }
            return true
          },
          data: chunk => {
            if (n + chunk.length > length) throw new FsError('EIO', `${this.label} answered ${what} with more than ${length} bytes`)
            chunk.copy(data, n)
            n += chunk.length
          },
          end: () => {
            if (n < length) {
              throw new FsError('EIO', `object ${objectId} on ${this.label} ends before bytes ${offset}..${offset + length} (got ${n})`, { fault: 'corrupt' })
            }
            return data
          },
          refuse: (status, info) => {
            // The object is shorter than the range: not the block the directory describes.
            if (status === 416 && info.code === 'ERANGE') {
              return new Answer(new FsError('EIO', `object ${objectId} on ${this.label} ends before byte ${offset}: ${info.error ?? 'range not satisfiable'}`, { fault: 'corrupt' }), false)
            }
            return this.readFailure(status, info, objectId, what)
          }
        }
      }
    }, limits)
  }

  async delete (objectId: string): Promise<void> {
    this.check(objectId)
    const what = `delete of object ${objectId}`
    await exchange(this.ep, {
      method: 'DELETE',
      path: this.objectPath(objectId),
      what,
      // Removing what is not there is not an error (an unknown device is: the server names the error in a header).
      receive: () => small(this.ep, what, (status, headers) => status === 204 || status === 200 ||
        (status === 404 && (headers['x-bslfs-error'] ?? 'ENOENT') === 'ENOENT'), () => undefined)
    })
    log('%s: deleted %s', this.label, objectId)
  }

  async stat (objectId: string): Promise<{ size: number } | null> {
    this.check(objectId)
    const what = `stat of object ${objectId}`
    return await exchange(this.ep, {
      method: 'HEAD',
      path: this.objectPath(objectId),
      what,
      receive: () => {
        let size: number | null = null
        return {
          accept: (status, headers) => {
            // A HEAD answer has no body: the server names the error in a header (an unknown device is not a missing object).
            const code = String(headers['x-bslfs-error'] ?? '')
            if (status === 404 && code !== 'ENODEV') return true
            if (status !== 200) throw statusAnswer(this.ep, status, code ? { code } : {}, what)
            size = contentLength(this.ep, headers, what) ?? null
            if (size === null) throw new FsError('EIO', `${this.label} answered ${what} without a Content-Length`)
            return true
          },
          data: () => {},
          end: () => size === null ? null : { size },
          refuse: status => statusAnswer(this.ep, status, {}, what)
        }
      }
    })
  }

  /**
   * Every object id on the device, streamed line by line. Getting the
   * answer started is bounded and retried like any request; after that each
   * chunk must arrive within timeoutMs (a long listing may take long as a
   * whole), and a failure part-way is EIO rather than a silent short list.
   */
  async * list (): AsyncIterable<string> {
    if (this.closed) throw new FsError('EIO', `device ${this.label} is closed`)
    const what = 'listing'
    const body = await exchange(this.ep, {
      method: 'GET',
      path: `${this.devicePath}/objects`,
      what,
      handle: async res => {
        if (res.statusCode !== 200) throw await answerFor(this.ep, res, what)
        return res.body
      },
      late: b => destroyBody(b)
    })
    let rest = ''
    let n = 0
    const line = (s: string): string | undefined => {
      const id = s.endsWith('\r') ? s.slice(0, -1) : s
      if (id === '') return undefined
      if (!isObjectId(id)) {
        const shown: string = s
        throw new FsError('EIO', `${this.label} listed a bad object id ${JSON.stringify(shown.slice(0, 40))} (after ${n} good ones)`)
      }
      n++
      return id
    }
    try {
      body.setEncoding('utf8')
      for await (const chunk of body) {
        rest += chunk as string
        const lines = rest.split('\n')
        rest = lines.pop() as string
        if (rest.length > LIST_LINE_LIMIT) throw new FsError('EIO', `${this.label} listed a line longer than ${LIST_LINE_LIMIT} characters`)
        for (const l of lines) {
          const id = line(l)
          if (id !== undefined) yield id
        }
      }
      const id = line(rest)
      if (id !== undefined) yield id
    } catch (err) {
      if (err instanceof FsError) throw err
      throw new FsError('EIO', `listing ${this.label} failed after ${n} ids: ${describe(err)}`, { cause: err })
    } finally {
      // Also when the consumer stops early: the connection must not stay half-read.
      if (!body.readableEnded) destroyBody(body)
    }
  }

  async space (limits?: CallLimits): Promise<DeviceSpace> {
    if (this.closed) throw new FsError('EIO', `device ${this.label} is closed`)
    const what = 'space query'
    return await exchange(this.ep, {
      method: 'GET',
      path: `${this.devicePath}/space`,
      what,
      receive: () => small(this.ep, what, status => status === 200, body => {
        const j = jsonObject(this.ep, body, what)
        const out: Partial<DeviceSpace> = {}
        for (const k of ['total', 'free', 'available'] as const) {
          const v = j[k]
          if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
            throw new FsError('EIO', `${this.label} answered the ${what} with a bad "${k}": ${String(JSON.stringify(v)).slice(0, 40)}`)
          }
          out[k] = v
        }
        return out as DeviceSpace
      })
    }, limits)
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    if (this.entry !== undefined) await releasePool(this.entry)
  }
}

/** A small answer's body as a JSON object, or EIO saying what it is instead. */
function jsonObject (ep: Endpoint, body: Buffer, what: string): Record<string, unknown> {
  let j: unknown
  try {
    j = JSON.parse(body.toString('utf8'))
  } catch (err) {
    throw new FsError('EIO', `${ep.label} answered the ${what} with something that is not JSON: ${(err as Error).message}`)
  }
  if (j === null || typeof j !== 'object' || Array.isArray(j)) throw new FsError('EIO', `${ep.label} answered the ${what} with JSON that is not an object`)
  return j as Record<string, unknown>
}

/**
 * Asks a block server whether it is up and which devices it serves (for
 * `bslfs status` and `bslfs server add`). One attempt unless `retries` says
 * otherwise; every failure is an FsError (EACCES for a rejected token, EIO
 * for an unreachable server or a malformed answer).
 */
export async function probeServer (url: string, token: string, timeoutMs: number = DEFAULT_TIMEOUT_MS, opts: { retries?: number, name?: string } = {}): Promise<ServerHealth> {
  const { origin, basePath } = checkedUrl(url)
  const host = new URL(origin).host
  const ms = checkedTimeout(timeoutMs)
  const pool = new Pool(origin, { connections: 1, pipelining: 1, connect: { timeout: ms } })
  const ep: Endpoint = {
    label: host,
    serverName: opts.name ?? host,
    origin,
    basePath,
    token: checkedToken(token),
    timeoutMs: ms,
    retries: opts.retries ?? 0,
    dispatcher: pool,
    closed: () => false
  }
  const what = 'health check'
  try {
    return await exchange(ep, {
      method: 'GET',
      path: '/v1/health',
      what,
      receive: () => small(ep, what, status => status === 200, body => {
        const j = jsonObject(ep, body, what)
        if (j.ok !== true) throw new FsError('EIO', `${host} says it is not healthy: ${JSON.stringify(j).slice(0, 200)}`)
        if (typeof j.server !== 'string') throw new FsError('EIO', `${host} answered the ${what} without a server name`)
        if (!Array.isArray(j.devices)) throw new FsError('EIO', `${host} answered the ${what} without a device list`)
        const devices = j.devices.map((d: unknown) => {
          // A device is a name, or an object with one; the protocol leaves the rest open.
          const name = typeof d === 'string' ? d : (d !== null && typeof d === 'object' ? (d as Record<string, unknown>).name : undefined)
          if (typeof name !== 'string') throw new FsError('EIO', `${host} listed a device without a name: ${String(JSON.stringify(d)).slice(0, 80)}`)
          return name
        })
        return { ok: true as const, server: j.server, devices }
      })
    })
  } finally {
    await pool.destroy().catch(() => undefined)
  }
}
