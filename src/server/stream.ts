import type { Duplex } from 'node:stream'
import createDebug from 'debug'
import type { Device } from '../devices/device'
import { OP_OBJECT, REQUEST_BYTES, StreamRequest, decodeRequest, encodeAnswer, requestFrameBytes } from '../wire/frames'
import { HttpError } from '../wire/http-error'
import { ClientGone, httpErrorOf } from './error-answer'

const log = createDebug('bslfs:server')

/** What a read holds (memory of the budget, a pooled buffer) until its answer is written. */
export interface Held {
  /** Aborts when the client goes away: a read waiting for memory gives up. */
  readonly signal: AbortSignal
  /** Runs `fn` once the answer is written or can no longer be. */
  defer (fn: () => void): void
}

/** The reads a stream answers, as the HTTP GETs do. */
export interface StreamReads {
  /** The device by name; HttpError 400 or 404 otherwise. */
  device (name: string): Device
  /** The whole object, verified against `sum`. */
  object (held: Held, dev: Device, id: string, sum: number): Promise<Buffer>
  /** `length` bytes from `offset`, cut at the object's end; and the object's size. */
  range (held: Held, dev: Device, id: string, offset: number, length: number): Promise<{ data: Buffer, size: number }>
}

/** Requests read from one connection and not yet answered; beyond it the connection is not read. */
const MAX_IN_FLIGHT = 64

/** Work waiting for an answer to be done (written, or cut off): it runs once, when the answer closes. */
export class Deferrals {
  /** The answer is done. */
  closed = false
  private readonly deferred: Array<() => void> = []

  /** Runs `fn` when the answer closes (at once if it already has). */
  defer (fn: () => void): void {
    if (this.closed) fn()
    else this.deferred.push(fn)
  }

  /** The answer is done: what was deferred runs now (once). */
  close (): void {
    if (this.closed) return
    this.closed = true
    for (const fn of this.deferred.splice(0)) {
      try {
        fn()
      } catch (err) {
        log('cleanup failed: %s', (err as Error).message)
      }
    }
  }
}

/** One read of a stream: the session's signal (the connection), and what it holds until answered. */
class StreamCall extends Deferrals implements Held {
  constructor (readonly signal: AbortSignal) {
    super()
  }
}

/**
 * One upgraded connection: reads request frames, answers each when its read
 * is done (in any order). Reads run concurrently, up to MAX_IN_FLIGHT.
 */
export class StreamSession {
  private buffered: Buffer = Buffer.alloc(0)
  private readonly calls = new Set<StreamCall>()
  private readonly ac = new AbortController()
  private stopping = false
  private paused = false

  constructor (private readonly socket: Duplex & { setTimeout?: (ms: number) => void }, private readonly reads: StreamReads,
    idleTimeoutMs: number, private readonly onClose: () => void) {
    socket.on('error', err => log('stream: %s', err.message))
    socket.on('close', () => {
      this.ac.abort()
      for (const c of this.calls) c.close()
      this.calls.clear()
      this.onClose()
    })
    socket.setTimeout?.(idleTimeoutMs)
    socket.on('timeout', () => {
      if (this.calls.size === 0) socket.destroy()
    })
    socket.on('data', (chunk: Buffer) => this.take(chunk))
  }

  /** Requests being read now. */
  get inFlight (): number {
    return this.calls.size
  }

  /** Bytes from the client: every whole frame in them is started, the rest kept for the next. */
  take (chunk: Buffer): void {
    if (this.stopping) return
    this.buffered = this.buffered.length === 0 ? chunk : Buffer.concat([this.buffered, chunk])
    let at = 0
    while (this.buffered.length - at >= REQUEST_BYTES) {
      const n = requestFrameBytes(this.buffered, at)
      if (this.buffered.length - at < n) break
      this.start(decodeRequest(this.buffered.subarray(at, at + n)))
      at += n
    }
    // A partial frame is copied out: a view would pin the whole chunk.
    this.buffered = at === this.buffered.length ? Buffer.alloc(0) : Buffer.from(this.buffered.subarray(at))
    if (this.calls.size >= MAX_IN_FLIGHT && !this.paused) {
      this.paused = true
      this.socket.pause()
    }
  }

  /** No more requests are read; the connection ends once those in flight are answered. */
  stop (): void {
    this.stopping = true
    this.socket.pause()
    if (this.calls.size === 0) this.socket.end()
  }

  /** Cut off now. */
  destroy (): void {
    this.socket.destroy()
  }

  private start (r: StreamRequest | { id: number, problem: string }): void {
    const call = new StreamCall(this.ac.signal)
    this.calls.add(call)
    this.read(call, r).then(
      ({ status, data, size }) => this.answer(call, r.id, status, data, size),
      (err: unknown) => {
        if (err instanceof ClientGone || this.socket.destroyed) return this.finish(call)
        const e = httpErrorOf(err)
        if (e.status >= 500) log('stream read %d: %s', r.id, e.message)
        this.answer(call, r.id, e.status, Buffer.from(JSON.stringify({ error: e.message, code: e.code })), 0)
      })
  }

  private async read (call: StreamCall, r: StreamRequest | { id: number, problem: string }): Promise<{ status: number, data: Buffer, size: number }> {
    if ('problem' in r) throw new HttpError(400, 'EINVAL', `bad stream request: ${r.problem}`)
    const dev = this.reads.device(r.device)
    if (r.op === OP_OBJECT) return { status: 200, data: await this.reads.object(call, dev, r.objectId, r.sum), size: 0 }
    const { data, size } = await this.reads.range(call, dev, r.objectId, r.offset, r.length)
    return { status: 206, data, size }
  }

  private answer (call: StreamCall, id: number, status: number, data: Buffer, size: number): void {
    if (this.socket.destroyed) return this.finish(call)
    this.socket.cork()
    this.socket.write(encodeAnswer({ id, status, length: data.length, size }))
    // The data's buffer (maybe a pooled one) is given back once the socket is done with it.
    this.socket.write(data, () => this.finish(call))
    this.socket.uncork()
  }

  private finish (call: StreamCall): void {
    call.close()
    if (!this.calls.delete(call)) return
    if (this.stopping) {
      if (this.calls.size === 0) this.socket.end()
    } else if (this.paused && this.calls.size < MAX_IN_FLIGHT / 2) {
      this.paused = false
      this.socket.resume()
    }
  }
}
