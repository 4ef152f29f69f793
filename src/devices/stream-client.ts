import * as net from 'node:net'
import * as tls from 'node:tls'
import createDebug from 'debug'
import { ANSWER_BYTES, STREAM_PROTOCOL, StreamRequest, decodeAnswer, encodeRequest } from '../wire/frames'
import { CONTENT_LENGTH_HEADER } from '../wire/headers'
import { HANDSHAKE_LIMIT } from '../wire/limits'
import { STREAM_PATH } from '../wire/routes'
import { interrupted } from './device'
import { ClientTls, tlsConnectOptions } from './tls'

const log = createDebug('bslfs:devices')

/** Connections per server; each carries any number of reads at once. */
export const STREAM_CONNECTIONS = 2
/** A connection with nothing to do for this long is closed. */
const IDLE_MS = 4000
/** Request ids wrap here (u32). */
const MAX_ID = 0xffff_ffff
/** Each connection reads into one buffer of this size (no allocation per read). */
const READ_BUFFER = 256 * 1024

/** How one read's answer is handed over, as it arrives. */
export interface AnswerSink {
  /** The answer's status and length, and the object's size on a 206. */
  start (status: number, length: number, size: number): void
  /** The next piece of the answer's bytes: a view valid only during the call. */
  data (chunk: Buffer): void
  end (): void
  /** The connection failed before the answer was whole. */
  fail (err: Error): void
}

/** A read sent on a stream: what its sender can do with it once it no longer waits. */
export interface StreamTicket {
  /** It timed out or its answer was bad: the connection is cut (see StreamConnection.abandon). */
  abandon (why: Error): void
  /** Its caller stopped waiting: it is forgotten, and its answer thrown away when it comes. */
  drop (): void
}

/** The server answered the upgrade with an error: `status` and the body (JSON `{error, code}` from a bslfs server). */
export class UpgradeRefused extends Error {
  constructor (readonly status: number, readonly body: Buffer) {
    super(`the server refused the read stream (${status})`)
    this.name = 'UpgradeRefused'
  }
}

/** The peer does not speak the stream (not a bslfs server of this version): use HTTP. */
export class StreamUnsupported extends Error {
  constructor (why: string) {
    super(`no read stream: ${why}`)
    this.name = 'StreamUnsupported'
  }
}

/**
 * Statuses that refuse the upgrade for a reason of the moment (the token, a
 * busy or stopping server): the read fails or is retried as over HTTP. Any
 * other answer means the server has no read stream.
 */
function refusedForNow (status: number): boolean {
  return status === 401 || status === 403 || status === 408 || status === 429 || status >= 500
}

/** A network failure of the stream, with a code as a socket error has. */
function connectionError (message: string, code: string): Error {
  return Object.assign(new Error(message), { code })
}

/** One upgraded connection: read requests out, answers in (matched by id). */
class StreamConnection {
  readonly ready: Promise<void>
  private readonly socket: net.Socket
  private readonly waiting = new Map<number, AnswerSink>()
  private nextId = 1
  private handshake: Buffer | null = Buffer.alloc(0)
  private settleHandshake: ((err?: Error) => void) | undefined
  // The answer being read: its header so far, then its sink (null: nobody wants it) and what is left of it.
  private readonly head = Buffer.alloc(ANSWER_BYTES)
  private headGot = 0
  private sink: AnswerSink | null = null
  private sinkId = 0
  private left = 0
  /** Until the upgrade: its deadline; then: the idle close. */
  private idle: NodeJS.Timeout | undefined
  closed = false

  constructor (host: string, port: number, private readonly hostHeader: string, token: string, connectTimeoutMs: number,
    secure: ClientTls | undefined, private readonly onClose: (c: StreamConnection) => void) {
    this.ready = new Promise<void>((resolve, reject) => {
      this.settleHandshake = err => {
        this.settleHandshake = undefined
        if (err) reject(err)
        else resolve()
      }
    })
    this.ready.catch(() => undefined)
    // Connect and upgrade within the bound (a host that drops packets would take minutes).
    this.idle = setTimeout(() => this.close(connectionError(`connect and upgrade timed out after ${connectTimeoutMs} ms`, 'ETIMEDOUT')), connectTimeoutMs)
    const upgrade = (): void => {
      this.socket.write(`GET ${STREAM_PATH} HTTP/1.1\r\nHost: ${this.hostHeader}\r\nConnection: Upgrade\r\nUpgrade: ${STREAM_PROTOCOL}\r\n` +
        `Authorization: Bearer ${token}\r\n\r\n`)
    }
    if (secure !== undefined) {
      // The server's certificate is checked against the CA and the host name (an IP against its IP names;
      // SNI carries names only). TLS hands over its own buffers: no onread here.
      this.socket = tls.connect({ host, port, ...(net.isIP(host) === 0 ? { servername: host } : {}), ...tlsConnectOptions(secure) })
      this.socket.setNoDelay(true)
      this.socket.on('secureConnect', upgrade)
      this.socket.on('data', (chunk: Buffer) => this.received(chunk, chunk.length))
    } else {
      const buffer = Buffer.allocUnsafe(READ_BUFFER)
      this.socket = net.connect({
        host,
        port,
        noDelay: true,
        onread: { buffer, callback: (n: number, buf: Uint8Array) => { this.received(buf as Buffer, n); return true } }
      })
      this.socket.on('connect', upgrade)
    }
    this.socket.on('error', err => this.close(err))
    this.socket.on('close', () => this.close(connectionError('connection closed by the server', 'ECONNRESET')))
  }

  /** Reads waiting for their answer. */
  get load (): number {
    return this.waiting.size
  }

  /** Sends a read; its answer goes to `sink`. Returns its id (for `abandon`). */
  send (req: Omit<StreamRequest, 'id'>, sink: AnswerSink): number {
    clearTimeout(this.idle)
    const id = this.nextId
    this.nextId = id === MAX_ID ? 1 : id + 1
    this.waiting.set(id, sink)
    this.socket.write(encodeRequest({ ...req, id }))
    return id
  }

  /**
   * A read nobody waits for any more (it timed out, or its answer was bad).
   * The connection is cut: a server that does not answer in time, or answers
   * wrongly, is not trusted with the next read.
   */
  abandon (id: number, why: Error): void {
    if (this.waiting.delete(id) || (this.sink !== null && this.sinkId === id)) this.close(why)
  }

  /**
   * A read whose caller stopped waiting: forgotten without cutting the
   * connection (other reads are on it). Its answer, when it comes, goes
   * nowhere; so does the rest of one arriving now.
   */
  drop (id: number): void {
    if (this.waiting.delete(id)) {
      if (this.waiting.size === 0 && this.sink === null) this.idleTimer()
    } else if (this.sink !== null && this.sinkId === id) {
      this.sink = null
    }
  }

  /** Closes the connection; reads still waiting fail with `err`. */
  close (err: Error): void {
    if (this.closed) return
    this.closed = true
    clearTimeout(this.idle)
    this.settleHandshake?.(err)
    this.socket.destroy()
    const sinks = [...this.waiting.values()]
    if (this.sink !== null && !sinks.includes(this.sink)) sinks.push(this.sink)
    this.waiting.clear()
    this.sink = null
    for (const s of sinks) s.fail(err)
    this.onClose(this)
  }

  private received (buf: Buffer, n: number): void {
    let at = 0
    if (this.handshake !== null) {
      at = this.readHandshake(buf, n)
      if (at < 0) return
    }
    try {
      this.frames(buf, at, n)
    } catch (err) {
      this.close(err as Error)
    }
  }

  /** Reads the upgrade answer; returns where frames start in `buf`, or -1 when it needs more (or failed). */
  private readHandshake (buf: Buffer, n: number): number {
    const before = (this.handshake as Buffer).length
    const text = Buffer.concat([this.handshake as Buffer, buf.subarray(0, n)])
    const end = text.indexOf('\r\n\r\n')
    if (end < 0) {
      if (text.length > HANDSHAKE_LIMIT) this.close(new StreamUnsupported('the answer to the upgrade is not HTTP'))
      else this.handshake = text
      return -1
    }
    const lines = text.toString('latin1', 0, end).split('\r\n')
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0])
    if (m === null) {
      this.close(new StreamUnsupported('the answer to the upgrade is not HTTP'))
      return -1
    }
    const status = Number(m[1])
    const headers = new Map<string, string>()
    for (const line of lines.slice(1)) {
      const i = line.indexOf(':')
      if (i > 0) headers.set(line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim())
    }
    if (status !== 101) {
      // The error's body, as far as it came with the headers (a bslfs server sends both at once).
      const length = Math.min(Number(headers.get(CONTENT_LENGTH_HEADER) ?? 0) || 0, HANDSHAKE_LIMIT)
      const body = text.subarray(end + 4, end + 4 + length)
      if (body.length < length && text.length <= HANDSHAKE_LIMIT) {
        this.handshake = text
        return -1
      }
      this.close(new UpgradeRefused(status, Buffer.from(body)))
      return -1
    }
    if ((headers.get('upgrade') ?? '').toLowerCase() !== STREAM_PROTOCOL) {
      this.close(new StreamUnsupported(`the server upgraded to ${JSON.stringify(headers.get('upgrade') ?? '')}`))
      return -1
    }
    this.handshake = null
    this.settleHandshake?.()
    this.idleTimer()
    return end + 4 - before
  }

  /** Answers out of `buf[at, n)`: headers, then their bytes to their sinks. */
  private frames (buf: Buffer, at: number, n: number): void {
    while (at < n) {
      if (this.headGot < ANSWER_BYTES) {
        const take = Math.min(ANSWER_BYTES - this.headGot, n - at)
        buf.copy(this.head, this.headGot, at, at + take)
        this.headGot += take
        at += take
        if (this.headGot < ANSWER_BYTES) return
        const a = decodeAnswer(this.head)
        if (this.head.readUInt16LE(6) !== 0 || a.status < 200 || a.status > 599 || a.status === 204) {
          throw connectionError(`bad answer header from the server (status ${a.status})`, 'EPROTO')
        }
        this.sink = this.waiting.get(a.id) ?? null
        this.sinkId = this.sink === null ? 0 : a.id
        this.waiting.delete(a.id)
        this.left = a.length
        this.sink?.start(a.status, a.length, a.size)
      }
      const take = Math.min(this.left, n - at)
      if (take > 0) {
        this.sink?.data(buf.subarray(at, at + take))
        this.left -= take
        at += take
      }
      if (this.left === 0) {
        const sink = this.sink
        this.sink = null
        this.headGot = 0
        sink?.end()
        if (this.waiting.size === 0) this.idleTimer()
      }
    }
  }

  private idleTimer (): void {
    clearTimeout(this.idle)
    this.idle = setTimeout(() => this.close(connectionError('idle', 'ECONNRESET')), IDLE_MS)
    this.idle.unref()
  }
}

/**
 * The read streams to one server (for one token): up to STREAM_CONNECTIONS,
 * opened as needed, reads going to the least loaded. When the server refuses
 * the upgrade as something it does not know, `supported` turns false and the
 * caller uses HTTP from then on.
 */
export class StreamPool {
  supported: boolean | undefined
  private readonly connections: StreamConnection[] = []
  private readonly host: string
  private readonly port: number
  /** The Host header of the upgrade request. */
  private readonly hostHeader: string
  private closed = false

  constructor (readonly origin: string, private readonly token: string, private readonly connectTimeoutMs: number,
    /** TLS material for an https: origin. */
    private readonly secure?: ClientTls) {
    const u = new URL(origin)
    this.host = u.hostname.replace(/^\[|\]$/g, '')
    const https = u.protocol === 'https:'
    if (https) this.secure ??= { identity: 'system CAs' }
    this.port = Number(u.port === '' ? (https ? 443 : 80) : u.port)
    this.hostHeader = u.host
  }

  /**
   * Sends a read on a connection (opening one when needed) once it is ready;
   * the answer goes to `sink`. Resolves with the read's ticket. Rejects with
   * StreamUnsupported, UpgradeRefused or a connection error; with EINTR,
   * sending nothing, when `signal` aborted while the connection was opened.
   */
  async send (req: Omit<StreamRequest, 'id'>, sink: AnswerSink, signal?: AbortSignal): Promise<StreamTicket> {
    if (this.closed) throw connectionError('the read stream is closed', 'UND_ERR_CLOSED')
    const c = this.pick()
    try {
      await c.ready
    } catch (err) {
      if (err instanceof StreamUnsupported || (err instanceof UpgradeRefused && !refusedForNow(err.status))) {
        if (this.supported !== false) log('%s: %s; reads go over HTTP', this.origin, err.message)
        this.supported = false
        throw err instanceof StreamUnsupported ? err : new StreamUnsupported(err.message)
      }
      throw err
    }
    this.supported = true
    if (c.closed) throw connectionError('connection closed by the server', 'ECONNRESET')
    if (signal?.aborted === true) throw interrupted(this.origin)
    const id = c.send(req, sink)
    return { abandon: why => c.abandon(id, why), drop: () => c.drop(id) }
  }

  /** No more reads; connections still carrying some get `graceMs` to finish them, idle ones close now. */
  close (graceMs = 0): void {
    this.closed = true
    const closeAll = (): void => {
      for (const c of [...this.connections]) c.close(connectionError('the read stream is closed', 'UND_ERR_CLOSED'))
    }
    for (const c of [...this.connections]) if (c.load === 0) c.close(connectionError('the read stream is closed', 'UND_ERR_CLOSED'))
    if (this.connections.length === 0 || graceMs === 0) return closeAll()
    setTimeout(closeAll, graceMs).unref()
  }

  private pick (): StreamConnection {
    let best: StreamConnection | undefined
    for (const c of this.connections) if (best === undefined || c.load < best.load) best = c
    if (best !== undefined && (best.load === 0 || this.connections.length >= STREAM_CONNECTIONS)) return best
    const c = new StreamConnection(this.host, this.port, this.hostHeader, this.token, this.connectTimeoutMs, this.secure, gone => {
      const i = this.connections.indexOf(gone)
      if (i >= 0) this.connections.splice(i, 1)
    })
    this.connections.push(c)
    return c
  }
}
