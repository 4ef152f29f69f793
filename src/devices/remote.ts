import createDebug from 'debug'
import { Dispatcher } from 'undici'
import { isObjectId, validName } from '../bsl'
import { checksum } from '../checksum'
import { FsError } from '../errors'
import { MAX_BLOCK_BYTES } from '../limits'
import { OP_OBJECT, OP_RANGE } from '../wire/frames'
import { CHECKSUM_HEADER, CONTENT_LENGTH_HEADER, CONTENT_RANGE_HEADER, COPY_FROM_HEADER, DURABLE_HEADER, ERROR_HEADER, NOT_DURABLE, RANGE_HEADER, rangeHeader } from '../wire/headers'
import { LIST_LINE_LIMIT } from '../wire/limits'
import { objectPath, objectsPath, spacePath, syncPath } from '../wire/routes'
import { CallLimits, Device, DeviceSpace, checkDeviceRequest, checkRange, rangeBuffer } from './device'
import {
  DEFAULT_RETRIES, Endpoint, ErrorAnswer, ErrorFields, MAX_RETRIES, answerFor, checkedTimeout, checkedToken, checkedUrl, contentLength,
  describeFailure, destroyBody, exchange, header, jsonObject, smallAnswer, statusAnswer
} from './http-call'
import { PoolEntry, acquirePool, releasePool } from './pool'
import type { ClientTls } from './tls'

const log = createDebug('bslfs:devices')

export interface RemoteDeviceOptions {
  /** The server's name in the server table ("s2"); used in labels and messages. */
  server: string
  /** The device's name on that server ("d1"). */
  device: string
  /** Base URL of the block server, e.g. "http://host2:7070". */
  url: string
  /** The shared bearer token. */
  token: string
  /** For an https: URL: the CA to check the server against and the client's certificate (none: the system's CAs). */
  tls?: ClientTls
  /** Bound on each attempt of a request: connect, headers and body together. Default 2000. */
  timeoutMs?: number
  /** Extra attempts after a connection error, timeout or retryable 5xx. Default 2. */
  retries?: number
  /** A dispatcher to use instead of the shared per-server pool; the device never closes it. */
  pool?: Dispatcher
  /** The largest object body a get accepts. Default MAX_BLOCK_BYTES (64 MiB). */
  maxObjectBytes?: number
}

/**
 * A device on a remote bslfs block server, spoken to over HTTP (the routes
 * of ../wire/routes.ts), its reads over the server's read stream when it has one.
 *
 * Every request is bounded as a whole by `timeoutMs` (connect, headers and
 * body), and retried `retries` times after a connection error, a timeout or a
 * transient 5xx; all requests are idempotent (objects are immutable). A call
 * therefore never takes longer than timeoutMs × (retries + 1) plus the short
 * backoff between attempts. A call's `limits.signal` ends it sooner: EINTR
 * once it aborts, no retry. Reads are checked end to end: the crc32 of the
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
  private entry: PoolEntry | undefined
  private readonly tls: ClientTls | undefined
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
    this.maxObjectBytes = opts.maxObjectBytes ?? MAX_BLOCK_BYTES
    this.tls = opts.tls
    this.entry = opts.pool === undefined ? acquirePool(origin, token, this.timeoutMs, opts.tls) : undefined
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
      ...(opts.tls !== undefined ? { tls: opts.tls } : {}),
      closed: () => this.closed
    }
  }

  /**
   * A new token (the server accepts it already): calls from now on carry it,
   * on connections of their own; calls in flight finish on the old ones,
   * which close once they are done (at most a call's longest time later).
   */
  setToken (token: string): void {
    if (this.closed) throw new FsError('EIO', `device ${this.label} is closed`)
    const t = checkedToken(token)
    const old = this.entry
    if (old !== undefined) {
      this.entry = acquirePool(this.ep.origin, t, this.timeoutMs, this.tls)
      this.ep.dispatcher = this.entry.pool
      this.ep.streams = this.entry.streams
    }
    this.ep.token = t
    if (old !== undefined) void releasePool(old, this.timeoutMs * (this.retries + 1) + 1000)
  }

  private check (objectId: string, sum?: number): void {
    checkDeviceRequest(this.label, this.closed, objectId, sum)
  }

  private objectPath (objectId: string): string {
    return objectPath(this.device, objectId)
  }

  put (objectId: string, data: Uint8Array, sum: number, limits?: CallLimits): Promise<void> {
    return this.write(objectId, data, sum, true, limits)
  }

  store (objectId: string, data: Uint8Array, sum: number, limits?: CallLimits): Promise<void> {
    return this.write(objectId, data, sum, false, limits)
  }

  /** POST …/sync: the server makes every object stored on the device durable (one syncfs). */
  async sync (limits?: CallLimits): Promise<void> {
    if (this.closed) throw new FsError('EIO', `device ${this.label} is closed`)
    const what = 'sync'
    await exchange(this.ep, {
      method: 'POST',
      path: syncPath(this.device),
      what,
      receive: () => smallAnswer(this.ep, what, status => status === 204 || status === 200, () => undefined)
    }, limits)
  }

  private async write (objectId: string, data: Uint8Array, sum: number, durable: boolean, limits?: CallLimits): Promise<void> {
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
        [CONTENT_LENGTH_HEADER]: String(data.byteLength),
        [CHECKSUM_HEADER]: String(sum),
        ...(durable ? {} : { [DURABLE_HEADER]: NOT_DURABLE })
      },
      body: data,
      receive: () => smallAnswer(this.ep, what, status => status === 201 || status === 200 || status === 204, () => undefined)
    }, limits)
    log('%s: put %s (%d bytes)', this.label, objectId, data.byteLength)
  }

  /** POST …/objects/TO with X-Bslfs-Copy-From: the server copies the object on its device. */
  async copy (fromId: string, toId: string, sum: number, limits?: CallLimits): Promise<void> {
    this.check(fromId, sum)
    this.check(toId)
    const what = `copy of object ${fromId} to ${toId}`
    await exchange(this.ep, {
      method: 'POST',
      path: this.objectPath(toId),
      what,
      headers: { [COPY_FROM_HEADER]: fromId, [CHECKSUM_HEADER]: String(sum), [DURABLE_HEADER]: NOT_DURABLE },
      receive: () => smallAnswer(this.ep, what, status => status === 201, () => undefined)
    }, limits)
    log('%s: copied %s to %s', this.label, fromId, toId)
  }

  /** Why a read got no bytes: the object is missing (404), the server found its copy bad (5xx EIO), or what the status says. */
  private readFailure (status: number, info: ErrorFields, objectId: string, what: string): ErrorAnswer {
    if (status === 404 && (info.code === undefined || info.code === 'ENOENT')) {
      // EIO for the reader, but a message that says "missing" rather than "corrupt" (as LocalDevice).
      return new ErrorAnswer(new FsError('EIO', `object ${objectId} is missing on ${this.label}`, { fault: 'missing' }), false)
    }
    const answer = statusAnswer(this.ep, status, info, what)
    // The server read its copy and found it bad (checksum, disk error): this copy is corrupt.
    if (status >= 500 && info.code === 'EIO') return new ErrorAnswer(new FsError('EIO', answer.fsError.message.slice('EIO: '.length), { fault: 'corrupt' }), false)
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
      headers: { [CHECKSUM_HEADER]: String(sum) },
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
      headers: { [RANGE_HEADER]: rangeHeader(offset, length) },
      // A frame's offset and length are u32 (objects are at most MAX_BLOCK_BYTES).
      stream: last <= 0xffff_ffff ? { op: OP_RANGE, device: this.device, objectId, offset, length, sum: 0 } : undefined,
      receive: () => {
        const data = rangeBuffer(length, into)
        let n = 0
        return {
          accept: (status, headers) => {
            if (status === 200) throw new FsError('EIO', `${this.label} answered ${what} with the whole object (200) instead of the range`)
            if (status !== 206) return false
            const range = header(headers, CONTENT_RANGE_HEADER)
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
              return new ErrorAnswer(new FsError('EIO', `object ${objectId} on ${this.label} ends before byte ${offset}: ${info.error ?? 'range not satisfiable'}`, { fault: 'corrupt' }), false)
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
      receive: () => smallAnswer(this.ep, what, (status, headers) => status === 204 || status === 200 ||
        (status === 404 && (headers[ERROR_HEADER] ?? 'ENOENT') === 'ENOENT'), () => undefined)
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
            const code = String(headers[ERROR_HEADER] ?? '')
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
      path: objectsPath(this.device),
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
      throw new FsError('EIO', `listing ${this.label} failed after ${n} ids: ${describeFailure(err)}`, { cause: err })
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
      path: spacePath(this.device),
      what,
      receive: () => smallAnswer(this.ep, what, status => status === 200, body => {
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
