import { createHash, timingSafeEqual } from 'node:crypto'
import * as http from 'node:http'
import * as https from 'node:https'
import type { AddressInfo } from 'node:net'
import type { Duplex } from 'node:stream'
import createDebug from 'debug'
import { isObjectId, isValidName } from '../bsl'
import { BufferPool } from '../buffer-pool'
import { checksum } from '../checksum'
import type { Device } from '../devices/device'
import { FsError } from '../errors'
import { STREAM_PROTOCOL } from '../wire/frames'
import {
  CHECKSUM_HEADER, CONTENT_LENGTH_HEADER, CONTENT_RANGE_HEADER, DURABLE_HEADER, ERROR_HEADER, RANGE_HEADER, RangeSpec, contentRange,
  parseChecksumHeader, parseContentLength, parseDurableHeader, parseRange, resolveRange
} from '../wire/headers'
import { HttpError, shown } from '../wire/http-error'
import { UNAUTHENTICATED_BODY_LIMIT } from '../wire/limits'
import { ALLOWED, METRICS_PATH, Route, STREAM_PATH, parseTarget } from '../wire/routes'
import { ServerMetrics } from '../metrics/server-metrics'
import { answerMetrics } from '../metrics/http'
import { ByteBudget } from './budget'
import { ClientGone, httpErrorOf } from './error-answer'
import { Deferrals, Held, StreamReads, StreamSession } from './stream'
import { ServerTlsOptions, clientCertificateProblem } from './tls'

const log = createDebug('bslfs:server')

export interface BlockServerOptions {
  /** This server's name (reported by /v1/health), or null. */
  name: string | null
  /** The devices served, by name. */
  devices: ReadonlyMap<string, Device>
  /** The bearer tokens a request may carry (any one of them: old and new while clients change over). */
  tokens: readonly string[]
  /** TLS (HTTPS and the read stream over it); none: plain HTTP. */
  tls?: ServerTlsOptions
  /** The largest object a PUT may carry (413 above it). */
  maxObjectBytes: number
  /** Bytes of request bodies and objects held in memory at once; requests beyond it wait. */
  maxBufferedBytes: number
  /** Time allowed for a request's headers to arrive (408 after it). */
  headersTimeoutMs: number
  /** Time allowed for a whole request (headers and body) to arrive. */
  requestTimeoutMs: number
  /** A connection with no traffic either way for this long is closed. */
  idleTimeoutMs: number
  /** How long an idle keep-alive connection is kept open between requests. */
  keepAliveTimeoutMs: number
  /** Connections beyond this are closed as they arrive. */
  maxConnections: number
  /** Time a client has to finish its TLS handshake (default: headersTimeoutMs). */
  handshakeTimeoutMs?: number
  /** GET /metrics is answered without the token (--metrics-open). */
  metricsOpen?: boolean
}

/**
 * One request and its response, carried through its handler. A class, not an object literal
 * with a getter: such literals kept each request's garbage alive through minor GCs
 * (native-notes/memory.md, "Block servers over the whole benchmark").
 */
class Exchange extends Deferrals implements Held {
  /** ... and we answered 100 Continue (we are going to read the body). */
  continued = false
  /** Made when something asks for the signal (a wait for memory or a drain): most requests never do. */
  private ac: AbortController | undefined
  /** The kind of route, and the device named, for the metrics (known once the target is parsed). */
  route = 'none'
  device: string | undefined

  constructor (readonly req: http.IncomingMessage, readonly res: http.ServerResponse,
    /** The client sent `Expect: 100-continue` ... */
    readonly expectContinue: boolean) {
    super()
  }

  /** Aborts when the response is cut off before it finished (the client went away); made on first use. */
  get signal (): AbortSignal {
    if (this.ac === undefined) {
      this.ac = new AbortController()
      if (this.closed && !this.res.writableFinished) this.ac.abort()
    }
    return this.ac.signal
  }

  /** The response closed (finished, or cut off): what was deferred runs now. */
  override close (): void {
    // Only a response cut off can have work still waiting on it (abort builds a DOMException: not for every request).
    if (!this.res.writableFinished) this.ac?.abort()
    super.close()
  }
}

const JSON_TYPE = 'application/json; charset=utf-8'
const CHALLENGE = 'Bearer realm="bslfs"'

/** The status line and JSON error body written straight to a socket when a request could not even be parsed. */
function rawErrorResponse (status: number, code: string, message: string): string {
  const body = JSON.stringify({ error: message, code })
  return `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? 'Error'}\r\n` +
    `Content-Type: ${JSON_TYPE}\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${ERROR_HEADER}: ${code}\r\n` +
    'Cache-Control: no-store\r\nConnection: close\r\n\r\n' + body
}

/**
 * True when a request Node refused for its method starts with a word that
 * could be a method (`FOO /x HTTP/1.1`: 501), rather than with bytes that
 * are not HTTP at all (a TLS hello: 400).
 */
function looksLikeMethod (err: Error & { rawPacket?: unknown, bytesParsed?: unknown }): boolean {
  const packet = err.rawPacket
  const at = err.bytesParsed
  if (!Buffer.isBuffer(packet) || typeof at !== 'number') return false
  const lineStart = packet.lastIndexOf('\n', Math.max(0, at - 1)) + 1
  const text = packet.subarray(lineStart, Math.min(packet.length, lineStart + 40)).toString('latin1')
  return /^[A-Z][A-Z_-]{0,31} /.test(text)
}

/** Spare body buffers kept while reads and writes come (BufferPool's keep), and after a second without. */
const BUSY_SPARE_BODIES = 24
const IDLE_SPARE_BODIES = 8

/**
 * The block server: exposes devices over HTTP/1.1 (see ../wire/routes.ts for the
 * routes). Every request is authenticated first, every name and id is
 * validated before it reaches a device, bodies are bounded, and every
 * failure is answered (or the connection closed) without touching the rest
 * of the server.
 */
export class BlockServer {
  private readonly server: http.Server | https.Server
  /** Digests of the tokens accepted, compared in constant time. */
  private tokenHashes: Buffer[] = []
  private readonly budget: ByteBudget
  /**
   * Bodies of up to a default block (1 MiB) are received, and whole objects
   * read, into reused buffers: as many spares as a mount's sequential read
   * keeps in flight here, fewer once idle (native-notes/memory.md).
   */
  private readonly bodies = new BufferPool(1024 * 1024, BUSY_SPARE_BODIES, 0, IDLE_SPARE_BODIES)
  private stopping: Promise<boolean> | null = null
  private forceClose: (() => void) | null = null
  private active = 0
  /** Per connection: settles when the last request dispatched on it has been answered. */
  private readonly turns = new WeakMap<Duplex, Promise<void>>()
  /** Per connection: the Authorization header its last request proved right (forgotten when the tokens change). */
  private authenticated = new WeakMap<Duplex, { value: string, hash: Buffer }>()
  /** Connections already answered for a parse error (Node may report one several times). */
  private readonly failedSockets = new WeakSet<Duplex>()
  /** Connections upgraded to the read stream, and the digest of the token each proved. */
  private readonly sessions = new Map<StreamSession, Buffer>()
  /** TLS handshakes that failed or timed out (a client without a valid certificate, a stalled one). */
  tlsFailures = 0
  /** Connections closed as they arrived because --max-connections were open. */
  dropped = 0
  /** What the read stream answers, the same way the GETs do. */
  private readonly reads: StreamReads = {
    device: name => this.device(name),
    object: (held, dev, id, sum) => this.streamRead(this.object(held, dev, id, sum), 200, dev),
    range: async (held, dev, id, offset, length) => await this.streamRead(this.range(held, dev, id, { kind: 'from', start: offset, end: offset + length - 1 }), 206, dev)
  }

  /** Requests, bytes, budget and devices (src/metrics/server-metrics.ts). */
  readonly metrics: ServerMetrics = new ServerMetrics({
    inFlight: () => this.active,
    bufferedBytes: () => this.budget.inUse,
    bufferWaiting: () => this.budget.waiting,
    space: async () => {
      const out = new Map<string, { total: number, available: number } | Error>()
      await Promise.all([...this.opts.devices].map(async ([name, d]) => { out.set(name, await d.space().catch((err: Error) => err)) }))
      return out
    }
  })

  /** Each device's name, for a stream read's device errors. */
  private readonly deviceNames = new Map<Device, string>()

  /** A read of the stream, counted as the HTTP requests are (route "stream"). */
  private async streamRead<T extends Buffer | { data: Buffer }> (read: Promise<T>, status: number, dev: Device): Promise<T> {
    const started = performance.now()
    try {
      const r = await read
      this.metrics.answered('stream', status, (performance.now() - started) / 1000, 0, Buffer.isBuffer(r) ? r.length : r.data.length)
      return r
    } catch (err) {
      this.metrics.answered('stream', httpErrorOf(err).status, (performance.now() - started) / 1000, 0, 0)
      const name = this.deviceNames.get(dev)
      if (err instanceof FsError && err.code !== 'ENOENT' && name !== undefined) this.metrics.deviceErrors.inc({ device: name, code: err.code })
      throw err
    }
  }

  constructor (private readonly opts: BlockServerOptions) {
    for (const [name, d] of opts.devices) this.deviceNames.set(d, name)
    this.setTokens(opts.tokens)
    this.budget = new ByteBudget(opts.maxBufferedBytes)
    const httpOptions: http.ServerOptions = {
      headersTimeout: opts.headersTimeoutMs,
      requestTimeout: opts.requestTimeoutMs,
      keepAliveTimeout: opts.keepAliveTimeoutMs,
      // How often the timeouts above are checked (Node's default is 30 s).
      connectionsCheckingInterval: Math.max(100, Math.min(1000, Math.floor(opts.headersTimeoutMs / 4))),
      // The Host header means nothing here; do not answer its absence with a non-JSON 400.
      requireHostHeader: false
    }
    const onRequest = (req: http.IncomingMessage, res: http.ServerResponse): void => this.dispatch(req, res, false)
    if (opts.tls !== undefined) {
      this.server = https.createServer({
        ...httpOptions,
        ...opts.tls,
        // A client that opens a connection and never finishes its hello holds a descriptor; not for long.
        handshakeTimeout: opts.handshakeTimeoutMs ?? opts.headersTimeoutMs
      }, onRequest)
      this.server.on('tlsClientError', (err: Error & { code?: string }, socket: Duplex & { remoteAddress?: string }) => {
        this.tlsFailures++
        log('TLS handshake with %s failed: %s', socket.remoteAddress, err.code ?? err.message)
        socket.destroy()
      })
    } else {
      this.server = http.createServer(httpOptions, onRequest)
    }
    this.server.on('checkContinue', (req: http.IncomingMessage, res: http.ServerResponse) => this.dispatch(req, res, true))
    this.server.on('checkExpectation', (req: http.IncomingMessage, res: http.ServerResponse) => {
      res.on('error', () => {})
      this.sendError(res, new HttpError(417, 'EINVAL', `unsupported Expect: ${shown(String(req.headers.expect))}`), true)
    })
    this.server.on('clientError', (err: Error, socket: Duplex) => this.onClientError(err, socket))
    this.server.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => this.upgrade(req, socket, head))
    // With no 'timeout' listener, Node destroys a socket idle this long.
    this.server.setTimeout(opts.idleTimeoutMs)
    this.server.maxConnections = opts.maxConnections
    // A flood of connections is cut at the limit; say so (once a second at most) rather than in silence.
    let lastDropLog = 0
    this.server.on('drop', (d?: { remoteAddress?: string }) => {
      this.dropped++
      if (Date.now() - lastDropLog < 1000) return
      lastDropLog = Date.now()
      log('connection limit (%d) reached: closed a connection from %s (%d so far)', opts.maxConnections, d?.remoteAddress, this.dropped)
    })
  }

  /** Whether this server speaks TLS. */
  get secure (): boolean {
    return this.opts.tls !== undefined
  }

  /**
   * The tokens accepted from now on. Connections that proved a token no
   * longer in the list must prove one again on their next request; read
   * streams opened with one finish their reads in flight and are closed.
   */
  setTokens (tokens: readonly string[]): void {
    if (tokens.length === 0 || tokens.some(t => t.length === 0)) throw new Error('the block server needs a token')
    this.tokenHashes = tokens.map(t => createHash('sha256').update(t).digest())
    this.authenticated = new WeakMap()
    for (const [session, hash] of this.sessions) {
      if (!this.tokenHashes.some(h => h.equals(hash))) session.stop()
    }
  }

  /** A renewed certificate and key (already checked): new connections use them, those open keep theirs. */
  setTls (options: ServerTlsOptions): void {
    if (!(this.server instanceof https.Server)) throw new Error('this server was started without TLS')
    this.server.setSecureContext(options)
  }

  /** Starts listening; resolves with the bound address (port 0 picks a free port). */
  async listen (host: string, port: number): Promise<AddressInfo> {
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => {
        const what = err.code === 'EADDRINUSE'
          ? 'the address is in use (is another server running?)'
          : err.code === 'EADDRNOTAVAIL' ? 'no interface of this host has that address' : err.message
        reject(new Error(`cannot listen on ${host}:${port}: ${what}`, { cause: err }))
      }
      this.server.once('error', onError)
      this.server.listen({ host, port }, () => {
        this.server.off('error', onError)
        resolve()
      })
    })
    this.server.on('error', (err) => log('server error: %s', err.message))
    return this.server.address() as AddressInfo
  }

  /** Requests being handled now. */
  get inFlight (): number {
    let n = this.active
    for (const s of this.sessions.keys()) n += s.inFlight
    return n
  }

  /**
   * Stops accepting connections, lets requests in flight finish (new
   * requests on open connections are still answered, with
   * `Connection: close`), closes the devices. After `graceMs` whatever is
   * left is cut off. Resolves true when nothing had to be cut off.
   */
  async stop (graceMs: number): Promise<boolean> {
    if (this.stopping) return this.stopping
    this.stopping = (async () => {
      let forced = false
      const closed = new Promise<void>(resolve => this.server.close(() => resolve()))
      this.server.closeIdleConnections()
      for (const s of this.sessions.keys()) s.stop()
      // Connections whose last response started before the stop become idle later.
      const sweep = setInterval(() => this.server.closeIdleConnections(), 100)
      sweep.unref()
      const force = (): void => {
        if (forced) return
        forced = true
        log('stop: cutting off %d request(s) still in flight', this.active)
        this.server.closeAllConnections()
        for (const s of this.sessions.keys()) s.destroy()
      }
      this.forceClose = force
      const deadline = setTimeout(force, graceMs)
      deadline.unref()
      try {
        await closed
      } finally {
        clearInterval(sweep)
        clearTimeout(deadline)
      }
      for (const dev of this.opts.devices.values()) {
        await dev.close().catch((err: Error) => log('closing %s: %s', dev.label, err.message))
      }
      log('stopped%s', forced ? ' (some requests were cut off)' : '')
      return !forced
    })()
    return this.stopping
  }

  /** During a stop: cut off what is still running now instead of waiting for the grace period. */
  forceStop (): void {
    this.forceClose?.()
  }

  // ---------------------------------------------------------------------------
  // One request

  private dispatch (req: http.IncomingMessage, res: http.ServerResponse, expectContinue: boolean): void {
    this.active++
    const started = Date.now()
    const startedAt = performance.now()
    const ex = new Exchange(req, res, expectContinue)
    res.once('close', () => {
      ex.close()
      this.active--
      const bytesIn = req.method === 'PUT' && res.statusCode < 300 ? Number(req.headers['content-length']) || 0 : 0
      const bytesOut = req.method === 'GET' && res.statusCode < 300 && ex.route === 'object' ? Number(res.getHeader('content-length')) || 0 : 0
      this.metrics.answered(ex.route, res.statusCode, (performance.now() - startedAt) / 1000, bytesIn, bytesOut)
      if (log.enabled) {
        log('%s %s → %d%s (%d ms)', req.method, String(req.url).slice(0, 100), res.statusCode,
          res.writableFinished ? '' : ' (not finished)', Date.now() - started)
      }
    })
    req.on('error', (err) => log('request %s %s: %s', req.method, String(req.url).slice(0, 100), err.message))
    res.on('error', (err) => log('response %s %s: %s', req.method, String(req.url).slice(0, 100), err.message))
    const done = new Promise<void>(resolve => {
      res.once('finish', resolve)
      res.once('close', resolve)
    })
    const start = (): Promise<void> => {
      if (ex.closed) return done
      try {
        res.setHeader('Server', 'bslfs')
        if (this.stopping) res.setHeader('Connection', 'close')
      } catch {}
      this.handle(ex).catch((err: unknown) => this.fail(ex, err))
      return done
    }
    // Requests pipelined on one connection are handled one after the other, in
    // order (Node parses ahead and would otherwise run them all at once: a GET
    // could overtake the PUT before it).
    const socket = req.socket
    const before = this.turns.get(socket)
    const turn = before ? before.then(start) : start()
    this.turns.set(socket, turn)
    void turn.then(() => {
      if (this.turns.get(socket) === turn) this.turns.delete(socket)
    })
  }

  private async handle (ex: Exchange): Promise<void> {
    const { req } = ex
    // Authentication comes before anything else looks at the request (open metrics aside, when the operator said so).
    const openMetrics = this.opts.metricsOpen === true && req.url?.split('?')[0] === METRICS_PATH
    if (!openMetrics) this.authenticate(req)
    const route = parseTarget(req.url)
    ex.route = route.kind
    if ('device' in route && this.opts.devices.has(route.device)) ex.device = route.device
    const method = req.method ?? ''
    const allowed = ALLOWED[route.kind]
    if (!allowed.includes(method)) {
      throw new HttpError(405, 'EOPNOTSUPP', `method ${method} is not allowed here; allowed: ${allowed.join(', ')}`,
        { Allow: allowed.join(', ') })
    }
    switch (route.kind) {
      case 'health':
        return this.health(ex)
      case 'space':
        return this.space(ex, this.device(route.device))
      case 'list':
        return this.list(ex, this.device(route.device))
      case 'sync':
        await this.device(route.device).sync()
        ex.res.writeHead(204, { 'Cache-Control': 'no-store' })
        ex.res.end()
        return
      case 'object':
        return this.objectRequest(ex, route)
      case 'metrics':
        return answerMetrics(this.metrics.forScrape(), ex.res, method === 'HEAD')
      case 'stream':
        throw new HttpError(426, 'EINVAL', `${STREAM_PATH} is reached by an upgrade: send Connection: Upgrade and Upgrade: ${STREAM_PROTOCOL}`,
          { Upgrade: STREAM_PROTOCOL, Connection: 'Upgrade' })
    }
  }

  /**
   * An upgrade to the read stream: authenticated like any request, then the
   * connection carries binary read frames (see wire/frames.ts).
   * Anything else asking to upgrade gets an error answer and is closed.
   */
  private upgrade (req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', (err) => log('upgrade: %s', err.message))
    let tokenHash: Buffer
    try {
      if (this.stopping) throw new HttpError(503, 'EAGAIN', 'the server is stopping')
      tokenHash = this.authenticate(req)
      const route = parseTarget(req.url)
      if (route.kind !== 'stream') throw new HttpError(400, 'EINVAL', `only ${STREAM_PATH} can be upgraded (to ${STREAM_PROTOCOL})`)
      if (req.method !== 'GET') throw new HttpError(405, 'EOPNOTSUPP', `method ${req.method ?? ''} is not allowed here; allowed: GET`)
      const wanted = String(req.headers.upgrade ?? '')
      if (wanted.toLowerCase() !== STREAM_PROTOCOL) throw new HttpError(400, 'EINVAL', `unknown Upgrade ${shown(wanted)}: this server speaks ${STREAM_PROTOCOL}`)
    } catch (err) {
      const e = httpErrorOf(err)
      log('upgrade %s: %d %s', String(req.url).slice(0, 100), e.status, e.message)
      socket.end(rawErrorResponse(e.status, e.code, e.message))
      setTimeout(() => socket.destroy(), 1000).unref()
      return
    }
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: ${STREAM_PROTOCOL}\r\nConnection: Upgrade\r\n\r\n`)
    ;(socket as Duplex & { setNoDelay?: (on: boolean) => void }).setNoDelay?.(true)
    const session = new StreamSession(socket, this.reads, this.opts.idleTimeoutMs, () => this.sessions.delete(session))
    this.sessions.set(session, tokenHash)
    if (head.length > 0) session.take(head)
  }

  /** Throws 401 unless the request carries an accepted token; returns that token's digest. */
  private authenticate (req: http.IncomingMessage): Buffer {
    // Mutual TLS: the certificate first, then the token as well.
    const refused = clientCertificateProblem(req.socket, this.opts.tls?.requestCert === true)
    if (refused !== undefined) throw new HttpError(403, 'EACCES', refused)
    let count = 0
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      if (req.rawHeaders[i].toLowerCase() === 'authorization') count++
    }
    const challenge = { 'WWW-Authenticate': CHALLENGE }
    if (count === 0) throw new HttpError(401, 'EACCES', 'missing Authorization: Bearer TOKEN header', challenge)
    if (count > 1) throw new HttpError(401, 'EACCES', 'more than one Authorization header', challenge)
    const value = req.headers.authorization ?? ''
    // The header this connection already proved right needs no second hash (a plain compare leaks
    // nothing: the connection knows that value already).
    const known = this.authenticated.get(req.socket)
    if (known?.value === value) return known.hash
    const m = /^Bearer +([^ ]+) *$/i.exec(value)
    if (!m) throw new HttpError(401, 'EACCES', 'the Authorization header must be "Bearer TOKEN"', challenge)
    const given = createHash('sha256').update(m[1]).digest()
    // Digests of equal length compared in constant time, against every token (no early exit).
    let match = false
    for (const h of this.tokenHashes) match = timingSafeEqual(given, h) || match
    if (!match) {
      throw new HttpError(401, 'EACCES', 'wrong token', { 'WWW-Authenticate': `${CHALLENGE}, error="invalid_token"` })
    }
    this.authenticated.set(req.socket, { value, hash: given })
    return given
  }

  private device (name: string): Device {
    if (!isValidName(name)) {
      throw new HttpError(400, 'EINVAL', `bad device name ${shown(name)}: 1-64 characters of A-Z a-z 0-9 _ . -, not starting with "." or "-"`)
    }
    const dev = this.opts.devices.get(name)
    if (!dev) throw new HttpError(404, 'ENODEV', `no device ${shown(name)} on this server`)
    return dev
  }

  private health (ex: Exchange): void {
    this.sendJson(ex.res, 200, { ok: true, server: this.opts.name, devices: [...this.opts.devices.keys()] })
  }

  private async space (ex: Exchange, dev: Device): Promise<void> {
    const s = await dev.space()
    this.sendJson(ex.res, 200, { total: s.total, free: s.free, available: s.available })
  }

  /** One id per line, streamed with back-pressure; an error halfway cuts the connection (never a clean short list). */
  private async list (ex: Exchange, dev: Device): Promise<void> {
    const { res } = ex
    const ids = dev.list()[Symbol.asyncIterator]()
    // The first id before the headers, so that a device that cannot be listed gets a proper error answer.
    let r = await ids.next()
    res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-store' })
    let chunk = ''
    try {
      for (; r.done !== true; r = await ids.next()) {
        if (ex.signal.aborted) return
        chunk += r.value + '\n'
        if (chunk.length >= 16384) {
          const ok = res.write(chunk)
          chunk = ''
          if (!ok) await this.drained(ex)
        }
      }
      res.end(chunk)
    } finally {
      // Stops the walk (and closes its directory handle) when it ended early.
      if (r.done !== true) await ids.return?.()
    }
  }

  private async drained (ex: Exchange): Promise<void> {
    if (ex.signal.aborted) return
    await new Promise<void>(resolve => {
      const done = (): void => {
        ex.res.off('drain', done)
        ex.signal.removeEventListener('abort', done)
        resolve()
      }
      ex.res.on('drain', done)
      ex.signal.addEventListener('abort', done)
    })
  }

  private async objectRequest (ex: Exchange, route: Extract<Route, { kind: 'object' }>): Promise<void> {
    const dev = this.device(route.device)
    if (!isObjectId(route.id)) {
      throw new HttpError(400, 'EINVAL', `bad object id ${shown(route.id)}: must be exactly 16 lowercase hex digits`)
    }
    switch (ex.req.method) {
      case 'GET':
        return this.getObject(ex, dev, route.id)
      case 'HEAD':
        return this.headObject(ex, dev, route.id)
      case 'PUT':
        return this.putObject(ex, dev, route.id)
      case 'DELETE':
        await dev.delete(route.id)
        ex.res.writeHead(204, { 'Cache-Control': 'no-store' })
        ex.res.end()
    }
  }

  private async getObject (ex: Exchange, dev: Device, id: string): Promise<void> {
    const { req, res } = ex
    const rangeHeader = req.headers[RANGE_HEADER]
    if (rangeHeader !== undefined) return this.getObjectRange(ex, dev, id, parseRange(rangeHeader))
    const sum = parseChecksumHeader(req.headers[CHECKSUM_HEADER])
    const data = await this.object(ex, dev, id, sum)
    res.writeHead(200, {
      'Content-Type': 'application/octet-stream',
      'Accept-Ranges': 'bytes',
      'Cache-Control': 'no-store',
      [CHECKSUM_HEADER]: String(sum),
      'Content-Length': data.length
    })
    res.end(data)
  }

  /**
   * The whole object, read and verified before any byte of it is sent (over
   * HTTP or a stream), into a buffer of the pool when it fits (a block). Its
   * memory is reserved before the read, all at once: holding part while
   * waiting for more deadlocks.
   */
  private async object (held: Held, dev: Device, id: string, sum: number): Promise<Buffer> {
    const st = await dev.stat(id)
    if (!st) throw new HttpError(404, 'ENOENT', `object ${id} is not on device ${dev.label}`)
    const fits = st.size <= this.bodies.size
    await this.reserve(held, fits ? this.bodies.size : st.size)
    const into = fits ? this.bodies.take() : undefined
    try {
      return await dev.get(id, sum, undefined, into)
    } finally {
      // Back to the pool once the read is done and the answer sent; not before the read is
      // done, even when the client goes away (the pool thread is still writing into it).
      if (into) held.defer(() => this.bodies.give(into))
    }
  }

  /**
   * A ranged GET reads only the range from disk and sends it unverified: the
   * client checks it against the chunk sums the directory holds (end to end),
   * so a small read costs a small read here too. X-Bslfs-Checksum is not needed.
   */
  private async getObjectRange (ex: Exchange, dev: Device, id: string, spec: RangeSpec): Promise<void> {
    const { data, start, size } = await this.range(ex, dev, id, spec)
    ex.res.writeHead(206, {
      'Content-Type': 'application/octet-stream',
      'Accept-Ranges': 'bytes',
      'Cache-Control': 'no-store',
      'Content-Length': data.length,
      [CONTENT_RANGE_HEADER]: contentRange(start, data.length, size)
    })
    ex.res.end(data)
  }

  /** The bytes a range selects (416 when none), read alone; and where they start in an object of `size` bytes. */
  private async range (held: Held, dev: Device, id: string, spec: RangeSpec): Promise<{ data: Buffer, start: number, size: number }> {
    const st = await dev.stat(id)
    if (!st) throw new HttpError(404, 'ENOENT', `object ${id} is not on device ${dev.label}`)
    const { start, end } = resolveRange(spec, st.size)
    const length = end - start + 1
    await this.reserve(held, length)
    return { data: await dev.getRange(id, start, length), start, size: st.size }
  }

  private async headObject (ex: Exchange, dev: Device, id: string): Promise<void> {
    const st = await dev.stat(id)
    if (!st) throw new HttpError(404, 'ENOENT', `object ${id} is not on device ${dev.label}`)
    ex.res.writeHead(200, {
      'Content-Type': 'application/octet-stream',
      'Content-Length': st.size,
      'Accept-Ranges': 'bytes',
      'Cache-Control': 'no-store'
    })
    ex.res.end()
  }

  private async putObject (ex: Exchange, dev: Device, id: string): Promise<void> {
    const { req, res } = ex
    const sum = parseChecksumHeader(req.headers[CHECKSUM_HEADER])
    const durable = parseDurableHeader(req.headers[DURABLE_HEADER])
    const length = parseContentLength(req.headers[CONTENT_LENGTH_HEADER])
    if (length === undefined) {
      throw new HttpError(411, 'EINVAL', 'a PUT needs a Content-Length header (chunked bodies are not accepted)')
    }
    if (length > this.opts.maxObjectBytes) {
      throw new HttpError(413, 'EFBIG', `object of ${length} bytes is larger than this server's limit of ${this.opts.maxObjectBytes} bytes`)
    }
    await this.reserve(ex, length)
    if (ex.expectContinue) {
      ex.continued = true
      res.writeContinue()
    }
    // A block-sized body goes into a buffer of the pool; a small one (a small file's only block) into
    // one of its own size: a tar of small files would otherwise hold a megabyte per body in flight.
    const pooled = length <= this.bodies.size && length >= this.bodies.size / 4 ? this.bodies.take() : undefined
    try {
      const body = await this.readBody(ex, pooled ? pooled.subarray(0, length) : Buffer.allocUnsafe(length))
      const actual = checksum(body)
      if (actual !== sum) {
        throw new HttpError(422, 'EBADMSG', `the body's CRC-32 is ${actual}, not the ${sum} given in X-Bslfs-Checksum; nothing was stored`)
      }
      // Checked here, where the bytes crossed the network; the device stores them whole or not at all.
      await (durable ? dev.put(id, body, sum) : dev.store(id, body, sum))
    } finally {
      // Settled: the body's listeners are gone and the device is done with the bytes.
      if (pooled) this.bodies.give(pooled)
    }
    res.writeHead(201, { 'Content-Length': 0, 'Cache-Control': 'no-store', [CHECKSUM_HEADER]: String(sum) })
    res.end()
  }

  /** Holds `n` bytes of the memory budget until the answer is written (or cut off). */
  private async reserve (held: Held, n: number): Promise<void> {
    // The signal only when this has to wait.
    let release = this.budget.tryReserve(n)
    if (!release) this.metrics.budgetWaits.inc()
    try {
      release ??= await this.budget.reserve(n, held.signal)
    } catch {
      throw new ClientGone('client went away while waiting for memory')
    }
    held.defer(release)
  }

  /** The whole body into `buf`, exactly its length; rejects when the client stops short. */
  private async readBody (ex: Exchange, buf: Buffer): Promise<Buffer> {
    const { req } = ex
    const length = buf.length
    return await new Promise<Buffer>((resolve, reject) => {
      let got = 0
      let settled = false
      const settle = (err: Error | null): void => {
        if (settled) return
        settled = true
        req.off('data', onData)
        req.off('end', onEnd)
        req.off('error', onGone)
        req.off('close', onGone)
        if (err) {
          // Let whatever still arrives drain away instead of stalling the socket.
          req.resume()
          reject(err)
        } else {
          resolve(buf)
        }
      }
      const onData = (chunk: Buffer): void => {
        if (got + chunk.length > length) {
          settle(new HttpError(400, 'EINVAL', `the body is longer than its Content-Length of ${length}`))
          return
        }
        chunk.copy(buf, got)
        got += chunk.length
      }
      const onEnd = (): void => {
        settle(got === length ? null : new ClientGone(`body ended after ${got} of ${length} bytes`))
      }
      const onGone = (): void => settle(new ClientGone(`client went away after ${got} of ${length} bytes of the body`))
      req.on('data', onData)
      req.once('end', onEnd)
      req.once('error', onGone)
      req.once('close', onGone)
    })
  }

  // ---------------------------------------------------------------------------
  // Answers

  private fail (ex: Exchange, err: unknown): void {
    const { req, res } = ex
    if (err instanceof ClientGone) {
      log('%s %s: %s', req.method, String(req.url).slice(0, 100), err.message)
      res.destroy()
      return
    }
    const e = httpErrorOf(err)
    // A missing object is an answer, not a device's failure.
    if (err instanceof FsError && ex.device !== undefined && e.code !== 'ENOENT') this.metrics.deviceErrors.inc({ device: ex.device, code: e.code })
    if (e.status >= 500) log('%s %s: %s', req.method, String(req.url).slice(0, 100), err instanceof FsError ? e.message : (err as Error)?.stack ?? e.message)
    if (res.headersSent || res.writableEnded || res.destroyed) {
      // Too late for an error answer: cut the connection so the client cannot take a partial answer as whole.
      if (!res.writableEnded) res.destroy()
      return
    }
    this.sendError(res, e, this.bodyLeftUnread(ex, e.status))
  }

  /**
   * True when the request's body will not be read and must not be
   * discarded either: an unauthenticated client's (unless small), an unbounded (chunked)
   * one, one over the limit, or one not sent because we did not answer
   * 100 Continue. The connection is then closed after the answer. Any other
   * (bounded) body is discarded by Node and the connection stays usable.
   */
  private bodyLeftUnread (ex: Exchange, status: number): boolean {
    const { req } = ex
    if (req.complete) return false
    if (ex.expectContinue && !ex.continued) return true
    const cl = req.headers[CONTENT_LENGTH_HEADER]
    if (cl === undefined) return req.headers['transfer-encoding'] !== undefined
    const n = Number(cl)
    // An unauthenticated client gets no more than a small body read (and discarded) for it.
    if (status === 401) return n > UNAUTHENTICATED_BODY_LIMIT
    return !(Number.isSafeInteger(n) && n <= this.opts.maxObjectBytes)
  }

  private sendError (res: http.ServerResponse, e: HttpError, close: boolean): void {
    try {
      if (close) res.setHeader('Connection', 'close')
      // The code also as a header: a HEAD answer has no body to carry it.
      this.sendJson(res, e.status, { error: e.message, code: e.code }, { ...e.headers, [ERROR_HEADER]: e.code })
    } catch (err) {
      log('could not answer %d: %s', e.status, (err as Error).message)
      res.destroy()
    }
  }

  private sendJson (res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
    const text = JSON.stringify(body)
    res.writeHead(status, {
      ...headers,
      'Content-Type': JSON_TYPE,
      'Content-Length': Buffer.byteLength(text),
      'Cache-Control': 'no-store'
    })
    res.end(text)
  }

  /**
   * A request Node could not parse, or one that timed out: a JSON error
   * answer (after the answers to requests before it on the connection), then
   * the connection is closed.
   */
  private onClientError (err: Error & { code?: string }, socket: Duplex): void {
    log('client error %s: %s', err.code, err.message)
    try {
      if (this.failedSockets.has(socket)) return
      this.failedSockets.add(socket)
      if (err.code === 'ECONNRESET' || !socket.writable) {
        socket.destroy()
        return
      }
      let answer: string
      switch (err.code) {
        case 'HPE_HEADER_OVERFLOW':
          answer = rawErrorResponse(431, 'EMSGSIZE', 'request headers too large')
          break
        case 'ERR_HTTP_REQUEST_TIMEOUT':
          answer = rawErrorResponse(408, 'ETIMEDOUT', 'the request did not arrive in time')
          break
        case 'HPE_INVALID_METHOD':
          answer = looksLikeMethod(err)
            ? rawErrorResponse(501, 'ENOSYS', 'unknown request method')
            : rawErrorResponse(400, 'EINVAL', 'malformed request (not HTTP/1.1)')
          break
        case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
          answer = rawErrorResponse(413, 'EFBIG', 'chunk extensions too large')
          break
        default:
          answer = rawErrorResponse(400, 'EINVAL', `malformed request (${String(err.code ?? 'parse error')})`)
      }
      const send = (): void => {
        const current = (socket as Duplex & { _httpMessage?: http.ServerResponse | null })._httpMessage
        if (!socket.writable || (current && current.headersSent && !current.writableFinished)) {
          // Another answer is being written: an error now would corrupt it.
          socket.destroy()
          return
        }
        socket.end(answer)
        // The peer may never close its side; do not keep the descriptor for it.
        setTimeout(() => socket.destroy(), 1000).unref()
      }
      const pending = this.turns.get(socket)
      if (pending === undefined || err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
        // A timeout cuts off whatever is in flight on the connection.
        send()
        return
      }
      // Answer the complete requests before the bad one first, but not for ever.
      const cap = setTimeout(() => socket.destroy(), Math.min(this.opts.requestTimeoutMs, 10_000))
      cap.unref()
      void pending.then(() => {
        clearTimeout(cap)
        if (!socket.destroyed) send()
      })
    } catch (e) {
      log('answering a client error failed: %s', (e as Error).message)
      socket.destroy()
    }
  }
}
