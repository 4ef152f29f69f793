import t from 'tap'
import * as http from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { randomBytes } from 'node:crypto'
import { openPoolCount } from '../src/devices/pool'
import { probeServer } from '../src/devices/probe'
import { RemoteDevice, RemoteDeviceOptions } from '../src/devices/remote'
import { checksum } from '../src/checksum'
import { FsError } from '../src/errors'

// ---------------------------------------------------------------------------
// A fake block server: the protocol over an in-memory Map, plus switches for
// the ways a real server or network fails. This is the client's unit test;
// the real server has its own.

const TOKEN = 'test-token-0123456789'
const MAX_BODY = 8 * 1024 * 1024

type Fault =
  | { kind: 'hang' } // read the request, never answer
  | { kind: 'trickle', everyMs: number } // right headers, then the body one byte at a time
  | { kind: 'cut' } // headers and half the body, then the socket is destroyed
  | { kind: 'reset' } // the socket is destroyed at once, no answer
  | { kind: 'halfclose' } // the server ends its side without answering
  | { kind: 'status', status: number, code?: string, error?: string }
  | { kind: 'flip' } // 200 with one byte of the body flipped
  | { kind: 'length', delta: number } // 200 with a Content-Length off by delta
  | { kind: 'raw', status: number, type: string, body: string } // any answer at all

interface Rule {
  fault: Fault
  methods?: string[]
  /** How many requests it applies to; unbounded when absent. */
  times?: number
}

function noop (): void {}

class FakeServer {
  readonly devices = new Map<string, Map<string, Buffer>>([['d1', new Map()], ['d2', new Map()]])
  /** Objects stored with X-Bslfs-Durable: 0 and not synced since, by device. */
  readonly unsynced = new Map<string, Set<string>>([['d1', new Set()], ['d2', new Set()]])
  readonly rules: Rule[] = []
  full = false
  requests = 0
  /** Requests to upgrade to the read stream (refused). */
  upgrades = 0
  connections = 0
  readonly byMethod: Record<string, number> = {}
  port = 0
  private server: http.Server | undefined
  private readonly sockets = new Set<Socket>()
  private readonly timers = new Set<NodeJS.Timeout>()

  get url (): string {
    return `http://127.0.0.1:${this.port}`
  }

  fault (fault: Fault, opts: { methods?: string[], times?: number } = {}): void {
    this.rules.push({ fault, ...opts })
  }

  clear (): void {
    this.rules.length = 0
  }

  async listen (port = 0): Promise<void> {
    const server = http.createServer((req, res) => this.handle(req, res))
    server.keepAliveTimeout = 10_000
    server.on('connection', (s: Socket) => {
      this.connections++
      this.sockets.add(s)
      s.on('error', noop)
      s.on('close', () => this.sockets.delete(s))
    })
    server.on('clientError', (_err, s) => s.destroy())
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, '127.0.0.1', () => resolve())
    })
    this.server = server
    this.port = (server.address() as AddressInfo).port
  }

  /** Stops listening and cuts every connection (a killed server). */
  async close (): Promise<void> {
    for (const tm of this.timers) clearInterval(tm)
    this.timers.clear()
    const s = this.server
    this.server = undefined
    if (s === undefined) return
    const closed = new Promise<void>(resolve => s.close(() => resolve()))
    for (const sock of this.sockets) sock.destroy()
    await closed
  }

  private takeFault (method: string): Fault | undefined {
    for (const r of this.rules) {
      if (r.methods !== undefined && !r.methods.includes(method)) continue
      if (r.times !== undefined) {
        if (r.times <= 0) continue
        r.times--
      }
      return r.fault
    }
    return undefined
  }

  private json (res: http.ServerResponse, status: number, body: unknown): void {
    const text = JSON.stringify(body)
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
    res.end(text)
  }

  private error (res: http.ServerResponse, status: number, code: string, error: string): void {
    this.json(res, status, { error, code })
  }

  private async readBody (req: http.IncomingMessage, limit: number): Promise<Buffer | null> {
    const chunks: Buffer[] = []
    let n = 0
    for await (const c of req) {
      n += (c as Buffer).length
      if (n > limit) return null
      chunks.push(c as Buffer)
    }
    return Buffer.concat(chunks)
  }

  /** The body a normal answer would carry, for faults that mangle it. */
  private normalBody (req: http.IncomingMessage): Buffer {
    const m = /^\/v1\/devices\/([^/]+)\/objects\/([^/]+)$/.exec(req.url ?? '')
    const data = m !== null ? this.devices.get(m[1])?.get(m[2]) : undefined
    return data ?? Buffer.from(JSON.stringify({ ok: true, padding: 'x'.repeat(40) }))
  }

  private handle (req: http.IncomingMessage, res: http.ServerResponse): void {
    req.on('error', noop)
    res.on('error', noop)
    if (req.headers.upgrade !== undefined) {
      // A server without the read stream (as any plain HTTP server): reads go over HTTP.
      this.upgrades++
      this.error(res, 404, 'ENOENT', 'no such route')
      return
    }
    this.requests++
    const method = req.method ?? ''
    this.byMethod[method] = (this.byMethod[method] ?? 0) + 1
    const fault = this.takeFault(method)
    if (fault !== undefined) {
      this.misbehave(fault, req, res)
      return
    }
    this.serve(req, res).catch(err => {
      if (!res.headersSent) this.error(res, 500, 'EIO', `fake server bug: ${(err as Error).message}`)
      else res.destroy()
    })
  }

  private misbehave (fault: Fault, req: http.IncomingMessage, res: http.ServerResponse): void {
    const sock = req.socket
    switch (fault.kind) {
      case 'hang':
        return
      case 'reset':
        sock.destroy()
        return
      case 'halfclose':
        req.resume()
        sock.end()
        return
      case 'status':
        req.resume()
        this.error(res, fault.status, fault.code ?? `E${fault.status}`, fault.error ?? `fault ${fault.status}`)
        return
      case 'raw':
        req.resume()
        res.writeHead(fault.status, { 'content-type': fault.type, 'content-length': Buffer.byteLength(fault.body) })
        res.end(fault.body)
        return
      case 'flip': {
        req.resume()
        const body = Buffer.from(this.normalBody(req))
        body[body.length >> 1] ^= 0x10
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length })
        res.end(body)
        return
      }
      case 'cut': {
        req.resume()
        const body = this.normalBody(req)
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length })
        res.write(body.subarray(0, body.length >> 1), () => sock.destroy())
        return
      }
      case 'length': {
        // Written on the raw socket: node's own response object would refuse a lying length.
        req.resume()
        const body = this.normalBody(req)
        sock.write(`HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: ${body.length + fault.delta}\r\n\r\n`)
        sock.end(body)
        return
      }
      case 'trickle': {
        req.resume()
        const body = this.normalBody(req)
        res.writeHead(req.method === 'PUT' ? 201 : 200, { 'content-length': body.length })
        let i = 0
        const tm = setInterval(() => {
          if (i >= body.length || sock.destroyed) {
            clearInterval(tm)
            this.timers.delete(tm)
            if (i >= body.length) res.end()
            return
          }
          res.write(body.subarray(i, i + 1))
          i++
        }, fault.everyMs)
        this.timers.add(tm)
      }
    }
  }

  private async serve (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const method = req.method ?? ''
    const url = req.url ?? ''
    if (req.headers.authorization !== `Bearer ${TOKEN}`) {
      req.resume()
      return this.error(res, 401, 'EACCES', 'missing or wrong token')
    }
    if (url === '/v1/health' && method === 'GET') {
      return this.json(res, 200, { ok: true, server: 'fake', devices: [...this.devices.keys()] })
    }
    const sync = /^\/v1\/devices\/([^/]+)\/sync$/.exec(url)
    if (sync !== null && method === 'POST') {
      const pending = this.unsynced.get(decodeURIComponent(sync[1]))
      if (pending === undefined) return this.error(res, 404, 'ENODEV', `no device ${sync[1]}`)
      pending.clear()
      res.writeHead(204)
      res.end()
      return
    }
    const m = /^\/v1\/devices\/([^/]+)\/(space|objects)(?:\/([^/]+))?$/.exec(url)
    if (m === null) {
      req.resume()
      return this.error(res, 404, 'ENOENT', `no route ${method} ${url}`)
    }
    const store = this.devices.get(decodeURIComponent(m[1]))
    if (store === undefined) {
      req.resume()
      return this.error(res, 404, 'ENODEV', `no device ${m[1]}`)
    }
    if (m[2] === 'space') {
      return this.json(res, 200, { total: 1_000_000, free: 600_000, available: 500_000 })
    }
    const id = m[3]
    if (id === undefined) {
      if (method !== 'GET') return this.error(res, 405, 'EINVAL', 'method not allowed')
      res.writeHead(200, { 'content-type': 'text/plain' })
      // One write per id, so lines arrive split across chunks.
      for (const k of [...store.keys()].sort()) res.write(k + '\n')
      res.end()
      return
    }
    if (!/^[0-9a-f]{16}$/.test(id)) {
      req.resume()
      return this.error(res, 400, 'EINVAL', `bad object id ${id}`)
    }
    const sumHeader = req.headers['x-bslfs-checksum']
    switch (method) {
      case 'PUT': {
        const len = Number(req.headers['content-length'])
        if (!Number.isInteger(len)) return this.error(res, 400, 'EINVAL', 'Content-Length required')
        if (len > MAX_BODY) return this.error(res, 413, 'EFBIG', 'object too large')
        const body = await this.readBody(req, MAX_BODY)
        if (body === null) return this.error(res, 413, 'EFBIG', 'object too large')
        if (body.length !== len) return this.error(res, 400, 'EINVAL', 'short body')
        if (String(checksum(body)) !== sumHeader) return this.error(res, 422, 'EIO', 'checksum mismatch')
        if (this.full) return this.error(res, 507, 'ENOSPC', 'disk full')
        store.set(id, body)
        if (req.headers['x-bslfs-durable'] === '0') this.unsynced.get(decodeURIComponent(m[1]))?.add(id)
        res.writeHead(201, { 'content-length': 0 })
        res.end()
        return
      }
      case 'GET': {
        const range = req.headers.range
        if (range !== undefined) {
          // Ranges as the real server answers them: unverified bytes, 206 with Content-Range.
          const m = /^bytes=(\d+)-(\d+)$/.exec(range)
          if (!m) return this.error(res, 416, 'EINVAL', 'bad Range')
          const data = store.get(id)
          if (data === undefined) return this.error(res, 404, 'ENOENT', `no object ${id}`)
          const start = Number(m[1])
          const end = Math.min(Number(m[2]), data.length - 1)
          if (start >= data.length) return this.error(res, 416, 'ERANGE', 'range not satisfiable')
          res.writeHead(206, { 'content-length': end - start + 1, 'content-range': `bytes ${start}-${end}/${data.length}` })
          res.end(data.subarray(start, end + 1))
          return
        }
        if (typeof sumHeader !== 'string' || !/^[0-9]+$/.test(sumHeader)) return this.error(res, 400, 'EINVAL', 'X-Bslfs-Checksum required')
        const data = store.get(id)
        if (data === undefined) return this.error(res, 404, 'ENOENT', `no object ${id}`)
        if (String(checksum(data)) !== sumHeader) return this.error(res, 500, 'EIO', `object ${id} is corrupt`)
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': data.length })
        res.end(data)
        return
      }
      case 'HEAD': {
        const data = store.get(id)
        if (data === undefined) {
          res.writeHead(404)
          res.end()
          return
        }
        res.writeHead(200, { 'content-length': data.length })
        res.end()
        return
      }
      case 'DELETE':
        store.delete(id)
        res.writeHead(204)
        res.end()
        return
      default:
        return this.error(res, 405, 'EINVAL', 'method not allowed')
    }
  }
}

async function fake (t: tap.Test): Promise<FakeServer> {
  const f = new FakeServer()
  await f.listen()
  t.teardown(() => f.close())
  return f
}

function device (t: tap.Test, f: FakeServer, opts: Partial<RemoteDeviceOptions> = {}): RemoteDevice {
  const d = new RemoteDevice({ server: 's2', device: 'd1', url: f.url, token: TOKEN, ...opts })
  t.teardown(() => d.close())
  return d
}

/** Awaits a rejection and checks it is an FsError with `code` (and a message matching `re`). */
async function fsError (t: tap.Test, p: Promise<unknown>, code: string, re?: RegExp): Promise<FsError | undefined> {
  try {
    await p
  } catch (err) {
    t.ok(err instanceof FsError, `an FsError (${(err as Error).message})`)
    t.equal((err as FsError).code, code, `code ${code}`)
    if (re !== undefined) t.match((err as Error).message, re)
    return err as FsError
  }
  t.fail(`expected ${code}, but it succeeded`)
  return undefined
}

async function elapsed (p: () => Promise<unknown>): Promise<number> {
  const start = performance.now()
  await p().catch(noop)
  return performance.now() - start
}

const id1 = '0000000000000abc'
const id2 = '00000000000002fd'
const idMissing = '0000000000000001'

// ---------------------------------------------------------------------------

t.test('round trips: put, get, stat, list, space, delete', async t => {
  const f = await fake(t)
  const dev = device(t, f)
  t.equal(dev.label, 's2:d1')
  const a = randomBytes(200_000)
  const b = Buffer.alloc(0)
  await dev.put(id1, a, checksum(a))
  await dev.put(id2, b, checksum(b))
  t.same(f.devices.get('d1')?.get(id1), a, 'the server holds the bytes')
  t.same(await dev.get(id1, checksum(a)), a)
  t.same(await dev.get(id2, checksum(b)), b)
  t.equal(f.upgrades, 1, 'the first read asked for the read stream once; refused, reads go over HTTP')
  t.same(await dev.stat(id1), { size: 200_000 })
  t.same(await dev.stat(id2), { size: 0 })
  t.equal(await dev.stat(idMissing), null)
  const ids: string[] = []
  for await (const id of dev.list()) ids.push(id)
  t.same(ids.sort(), [id2, id1].sort())
  t.same(await dev.space(), { total: 1_000_000, free: 600_000, available: 500_000 })
  // A put again of the same object is fine (idempotent).
  await dev.put(id1, a, checksum(a))
  await dev.delete(id1)
  await dev.delete(id1)
  await dev.delete(idMissing)
  t.equal(await dev.stat(id1), null)
  t.equal(f.devices.get('d1')?.has(id1), false)
  // A Uint8Array that is a view into a larger buffer sends only its own bytes.
  const big = randomBytes(1000)
  const view = new Uint8Array(big.buffer, big.byteOffset + 100, 500)
  await dev.put(id1, view, checksum(view))
  t.same(await dev.get(id1, checksum(view)), Buffer.from(view))
  // Another device of the same server is separate on the server.
  const d2 = device(t, f, { device: 'd2' })
  t.equal(await d2.stat(id1), null)
})

t.test('store and sync: a put that is durable later, and the sync that makes it so', async t => {
  const f = await fake(t)
  const dev = device(t, f)
  const a = randomBytes(50_000)
  await dev.store(id1, a, checksum(a))
  t.same(f.devices.get('d1')?.get(id1), a, 'the server holds the bytes')
  t.same([...f.unsynced.get('d1') ?? []], [id1], 'asked to store without waiting for the disk')
  t.same(await dev.get(id1, checksum(a)), a, 'and they read back at once')
  await dev.put(id2, a, checksum(a))
  t.same([...f.unsynced.get('d1') ?? []], [id1], 'a plain put is durable when it answers')
  await dev.sync()
  t.same([...f.unsynced.get('d1') ?? []], [], 'sync: durable')
  await fsError(t, device(t, f, { device: 'nope' }).sync(), 'ENODEV', /not found/)
})

t.test('a long listing streams, split across chunks', async t => {
  const f = await fake(t)
  const dev = device(t, f)
  const store = f.devices.get('d1') as Map<string, Buffer>
  const want: string[] = []
  for (let i = 0; i < 3000; i++) {
    const id = (0x1000_0000_0000 + i * 7919).toString(16).padStart(16, '0')
    store.set(id, Buffer.alloc(0))
    want.push(id)
  }
  const got: string[] = []
  for await (const id of dev.list()) got.push(id)
  t.same(got.sort(), want.sort())
  // Stopping early releases the connection; the device keeps working.
  let n = 0
  for await (const _ of dev.list()) if (++n === 5) break
  t.equal(n, 5)
  t.same(await dev.stat(want[0]), { size: 0 })
})

t.test('ids are checked before any request is made', async t => {
  const f = await fake(t)
  const dev = device(t, f)
  const before = f.requests
  for (const bad of ['../../etc/passwd', '0000000000000ABC', '000000000000abc', '0000000000000abc/x', '%2e%2e', '', 42 as unknown as string]) {
    await fsError(t, dev.get(bad, 0), 'EINVAL', /bad object id/)
    await fsError(t, dev.put(bad, Buffer.alloc(0), checksum(Buffer.alloc(0))), 'EINVAL', /bad object id/)
    await fsError(t, dev.stat(bad), 'EINVAL', /bad object id/)
    await fsError(t, dev.delete(bad), 'EINVAL', /bad object id/)
  }
  await fsError(t, dev.get(id1, -1), 'EINVAL', /bad checksum/)
  await fsError(t, dev.get(id1, 2 ** 32), 'EINVAL', /bad checksum/)
  t.equal(f.requests, before, 'nothing reached the server')
  t.throws(() => new RemoteDevice({ server: 's2', device: '../d', url: f.url, token: TOKEN }), /bad device name/)
  t.throws(() => new RemoteDevice({ server: 's2', device: 'd1', url: 'ftp://x', token: TOKEN }), /http:\/\/ or https:\/\//)
  t.throws(() => new RemoteDevice({ server: 's2', device: 'd1', url: 'not a url', token: TOKEN }), /bad server URL/)
  t.throws(() => new RemoteDevice({ server: 's2', device: 'd1', url: f.url, token: 'two words' }), /bad token/)
  t.throws(() => new RemoteDevice({ server: 's2', device: 'd1', url: f.url, token: TOKEN, retries: -1 }), /bad retries/)
})

t.test('server answers map to POSIX codes', async t => {
  const f = await fake(t)
  const dev = device(t, f)
  const data = randomBytes(1000)
  const sum = checksum(data)
  await dev.put(id1, data, sum)

  t.test('401: EACCES naming the server and --token-file, not retried', async t => {
    const bad = device(t, f, { token: 'wrong-token' })
    const before = f.requests
    await fsError(t, bad.get(id1, sum), 'EACCES', /token rejected by s2 — check --token-file/)
    await fsError(t, bad.put(id2, data, sum), 'EACCES')
    await fsError(t, bad.space(), 'EACCES')
    t.equal(f.requests - before, 3, 'one request each')
  })

  t.test('404 on get: EIO "missing"', async t => {
    const before = f.requests
    await fsError(t, dev.get(idMissing, sum), 'EIO', /object 0000000000000001 is missing on s2:d1/)
    t.equal(f.requests - before, 1, 'not retried')
  })

  t.test('unknown device: ENODEV', async t => {
    const other = device(t, f, { device: 'nope' })
    await fsError(t, other.space(), 'ENODEV', /no device nope/)
    await fsError(t, other.put(id1, data, sum), 'ENODEV')
  })

  t.test('422 on put: EIO, not retried', async t => {
    f.fault({ kind: 'status', status: 422, code: 'EIO', error: 'checksum mismatch' })
    t.teardown(() => f.clear())
    const before = f.requests
    await fsError(t, dev.put(id2, data, sum), 'EIO', /do not match their checksum \(422\)/)
    t.equal(f.requests - before, 1)
  })

  t.test('507: ENOSPC, not retried', async t => {
    f.full = true
    t.teardown(() => { f.full = false })
    const before = f.requests
    await fsError(t, dev.put(id2, data, sum), 'ENOSPC', /s2:d1 is full/)
    t.equal(f.requests - before, 1)
  })

  t.test('413: EFBIG', async t => {
    f.fault({ kind: 'status', status: 413, error: 'object too large' })
    t.teardown(() => f.clear())
    await fsError(t, dev.put(id2, data, sum), 'EFBIG', /too large/)
  })

  t.test('400 and other 4xx: EINVAL with the server message', async t => {
    f.fault({ kind: 'status', status: 400, error: 'X-Bslfs-Checksum required' }, { times: 1 })
    f.fault({ kind: 'status', status: 409, error: 'something else' }, { times: 1 })
    t.teardown(() => f.clear())
    const before = f.requests
    await fsError(t, dev.get(id1, sum), 'EINVAL', /\(400\): X-Bslfs-Checksum required/)
    await fsError(t, dev.delete(id1), 'EINVAL', /\(409\): something else/)
    t.equal(f.requests - before, 2, 'not retried')
  })

  t.test('500 EIO (a corrupt copy): EIO, not retried', async t => {
    const store = f.devices.get('d1') as Map<string, Buffer>
    const good = store.get(id1) as Buffer
    const rotten = Buffer.from(good)
    rotten[3] ^= 1
    store.set(id1, rotten)
    t.teardown(() => { store.set(id1, good) })
    const before = f.requests
    await fsError(t, dev.get(id1, sum), 'EIO', /500 EIO.*corrupt/)
    t.equal(f.requests - before, 1, 'a corrupt copy is asked for once')
  })

  t.test('other 5xx: EIO after retries; a transient one is retried away', async t => {
    t.teardown(() => f.clear())
    f.fault({ kind: 'status', status: 503, code: 'EBUSY', error: 'overloaded' })
    let before = f.requests
    await fsError(t, dev.get(id1, sum), 'EIO', /503.*overloaded/)
    t.equal(f.requests - before, 3, 'three attempts (retries: 2)')
    f.clear()
    f.fault({ kind: 'status', status: 502 }, { times: 1 })
    before = f.requests
    t.same(await dev.get(id1, sum), data)
    t.equal(f.requests - before, 2)
  })

  t.test('a server short of descriptors or memory (503 EAGAIN): retried, then EIO with fault transient, not corrupt', async t => {
    t.teardown(() => f.clear())
    f.fault({ kind: 'status', status: 503, code: 'EAGAIN', error: 'read of object failed for now: EMFILE' })
    const before = f.requests
    const err = await fsError(t, dev.get(id1, sum), 'EIO', /503 EAGAIN.*EMFILE/)
    t.equal(err?.fault, 'transient', 'the copy is not called corrupt')
    t.equal(f.requests - before, 3, 'asked again (retries: 2)')
  })

  t.test('a bad space or list answer is EIO', async t => {
    t.teardown(() => f.clear())
    f.fault({ kind: 'raw', status: 200, type: 'application/json', body: '{"total": 1, "free": -1, "available": 0}' }, { times: 1 })
    await fsError(t, dev.space(), 'EIO', /bad "free"/)
    f.fault({ kind: 'raw', status: 200, type: 'application/json', body: 'not json' }, { times: 1 })
    await fsError(t, dev.space(), 'EIO', /not JSON/)
    f.fault({ kind: 'raw', status: 200, type: 'text/plain', body: `${id1}\n../../etc/passwd\n` }, { times: 1 })
    const got: string[] = []
    await fsError(t, (async () => { for await (const id of dev.list()) got.push(id) })(), 'EIO', /bad object id "..\/..\/etc\/passwd" \(after 1 good ones\)/)
    t.same(got, [id1])
    f.fault({ kind: 'raw', status: 200, type: 'text/plain', body: 'x'.repeat(5000) }, { times: 1 })
    await fsError(t, (async () => { for await (const _ of dev.list()) {} })(), 'EIO', /longer than/)
    f.fault({ kind: 'raw', status: 200, type: 'text/plain', body: '' }, { times: 1, methods: ['HEAD'] })
    t.same(await dev.stat(id1), { size: 0 }, 'HEAD takes its size from Content-Length (0 here)')
  })
})

t.test('end to end checks on get', async t => {
  const f = await fake(t)
  const dev = device(t, f)
  const data = randomBytes(10_000)
  const sum = checksum(data)
  await dev.put(id1, data, sum)
  t.teardown(() => f.clear())

  let before = f.requests
  f.fault({ kind: 'flip' }, { methods: ['GET'] })
  await fsError(t, dev.get(id1, sum), 'EIO', /checksum mismatch on s2:d1 object 0000000000000abc \(as received\)/)
  t.equal(f.requests - before, 1, 'a flipped byte is reported, and the caller fails over')
  f.clear()

  f.fault({ kind: 'length', delta: -10 }, { methods: ['GET'] })
  await fsError(t, dev.get(id1, sum), 'EIO', /checksum mismatch/)
  f.clear()

  before = f.requests
  f.fault({ kind: 'length', delta: +10 }, { methods: ['GET'] })
  await fsError(t, dev.get(id1, sum), 'EIO', /s2:d1 unreachable: .*\(get of object 0000000000000abc, 3 attempts\)/)
  t.equal(f.requests - before, 3, 'a body cut short by a closed connection is retried')
  f.clear()

  const small = device(t, f, { device: 'd1', maxObjectBytes: 1000 })
  await fsError(t, small.get(id1, sum), 'EIO', /at most 1000/)

  t.same(await dev.get(id1, sum), data, 'and the device still works')
})

t.test('getRange: a ranged GET, checked for shape but not checksummed', async t => {
  const f = await fake(t)
  const dev = device(t, f)
  const data = randomBytes(100_000)
  await dev.put(id1, data, checksum(data))
  t.teardown(() => f.clear())
  for (const [off, len] of [[0, 1], [32768, 32768], [99_999, 1], [0, 100_000]]) {
    t.same(await dev.getRange(id1, off, len), data.subarray(off, off + len), `bytes ${off}+${len}`)
  }
  const missing = await fsError(t, dev.getRange(idMissing, 0, 10), 'EIO', /object 0000000000000001 is missing on s2:d1/)
  t.equal(missing?.fault, 'missing', 'a missing object is fault missing')
  const short = await fsError(t, dev.getRange(id1, 99_000, 2000), 'EIO', /ends before bytes 99000\.\.101000 \(got 1000\)/)
  t.equal(short?.fault, 'corrupt', 'an object shorter than the range is corrupt')
  const past = await fsError(t, dev.getRange(id1, 200_000, 10), 'EIO', /ends before byte 200000/)
  t.equal(past?.fault, 'corrupt', 'a range past the end (416) too')
  for (const [off, len] of [[-1, 10], [0, 0], [1.5, 10], [0, 2 ** 40]]) {
    await fsError(t, dev.getRange(id1, off, len), 'EINVAL', /bad range/)
  }
  let before = f.requests
  f.fault({ kind: 'reset' }, { methods: ['GET'], times: 1 })
  t.same(await dev.getRange(id1, 10, 10), data.subarray(10, 20), 'a reset connection is retried')
  t.equal(f.requests - before, 2)
  f.clear()
  before = f.requests
  f.fault({ kind: 'status', status: 500, code: 'EIO', error: 'disk error' }, { methods: ['GET'] })
  const eio = await fsError(t, dev.getRange(id1, 0, 10), 'EIO', /disk error/)
  t.equal(eio?.fault, 'corrupt', 'a definite EIO from the server is a bad copy, not retried')
  t.equal(f.requests - before, 1)
  f.clear()
  f.fault({ kind: 'hang' }, { methods: ['GET'] })
  const ms = await elapsed(() => dev.getRange(id1, 0, 10, { timeoutMs: 200, retries: 0 }).catch(() => undefined))
  t.ok(ms < 1500, `a hung server fails within the caller's bound (${ms} ms)`)
  f.clear()
  f.fault({ kind: 'raw', status: 200, type: 'application/octet-stream', body: 'whole object' }, { methods: ['GET'] })
  await fsError(t, dev.getRange(id1, 0, 5), 'EIO', /whole object \(200\) instead of the range/)
  f.clear()
})

t.test('connection errors are retried, then EIO', async t => {
  const f = await fake(t)
  const dev = device(t, f, { timeoutMs: 1000, retries: 2 })
  const data = randomBytes(5000)
  const sum = checksum(data)
  await dev.put(id1, data, sum)
  t.teardown(() => f.clear())

  for (const kind of ['reset', 'cut', 'halfclose'] as const) {
    f.clear()
    f.fault({ kind }, { times: 1 })
    let before = f.requests
    t.same(await dev.get(id1, sum), data, `one ${kind} is retried away`)
    t.equal(f.requests - before, 2, `${kind}: two requests`)

    f.clear()
    f.fault({ kind })
    before = f.requests
    const err = await fsError(t, dev.get(id1, sum), 'EIO', /^EIO: s2:d1 unreachable: /)
    t.match(err?.message, /3 attempts/)
    t.equal(f.requests - before, 3, `${kind}: retries + 1 requests`)
  }

  f.clear()
  f.fault({ kind: 'reset' }, { methods: ['PUT'], times: 2 })
  const before = f.requests
  await dev.put(id2, data, sum)
  t.equal(f.requests - before, 3, 'put is retried too (an immutable id makes it idempotent)')
  t.same(f.devices.get('d1')?.get(id2), data)

  f.clear()
  const none = device(t, f, { retries: 0 })
  f.fault({ kind: 'reset' }, { times: 1 })
  await fsError(t, none.get(id1, sum), 'EIO', /unreachable/)
})

t.test('a hung or trickling server fails within the bound', async t => {
  const f = await fake(t)
  const timeoutMs = 400
  const retries = 1
  const bound = timeoutMs * (retries + 1) + 500
  const dev = device(t, f, { timeoutMs, retries })
  const data = randomBytes(2000)
  const sum = checksum(data)
  await dev.put(id1, data, sum)
  t.teardown(() => f.clear())

  const cases: Array<[string, Fault, string[], () => Promise<unknown>]> = [
    ['hung get', { kind: 'hang' }, ['GET'], () => dev.get(id1, sum)],
    ['hung put', { kind: 'hang' }, ['PUT'], () => dev.put(id2, data, sum)],
    ['hung put of 4 MiB the server never reads', { kind: 'hang' }, ['PUT'], () => {
      const big = randomBytes(4 * 1024 * 1024)
      return dev.put(id2, big, checksum(big))
    }],
    ['hung stat', { kind: 'hang' }, ['HEAD'], () => dev.stat(id1)],
    ['hung delete', { kind: 'hang' }, ['DELETE'], () => dev.delete(id1)],
    ['hung space', { kind: 'hang' }, ['GET'], () => dev.space()],
    ['trickling get', { kind: 'trickle', everyMs: 20 }, ['GET'], () => dev.get(id1, sum)],
    ['trickling put answer', { kind: 'trickle', everyMs: 20 }, ['PUT'], () => dev.put(id2, data, sum)]
  ]
  for (const [name, fault, methods, op] of cases) {
    f.clear()
    f.fault(fault, { methods })
    const before = f.requests
    let err: unknown
    const ms = await elapsed(() => op().catch(e => { err = e; throw e }))
    t.ok(err instanceof FsError && err.code === 'EIO', `${name}: EIO (${(err as Error)?.message})`)
    t.match((err as Error)?.message, /unreachable: no complete answer within 400 ms/)
    t.ok(ms < bound, `${name}: failed in ${Math.round(ms)} ms < ${bound} ms`)
    t.ok(ms >= timeoutMs * (retries + 1) - 50, `${name}: waited for every attempt (${Math.round(ms)} ms)`)
    t.equal(f.requests - before, retries + 1, `${name}: ${retries + 1} attempts`)
  }
  f.clear()
  t.same(await dev.get(id1, sum), data, 'works again once the server behaves')
})

t.test('more calls than connections against a hung server: each one still bounded', async t => {
  const f = await fake(t)
  const dev = device(t, f, { timeoutMs: 300, retries: 1 })
  const data = randomBytes(100)
  await dev.put(id1, data, checksum(data))
  f.fault({ kind: 'hang' }, { methods: ['GET'] })
  t.teardown(() => f.clear())
  const start = performance.now()
  // 20 calls on 8 connections: most wait in the pool's queue, and the bound covers that wait too.
  const results = await Promise.allSettled(Array.from({ length: 20 }, () => dev.get(id1, checksum(data))))
  const ms = performance.now() - start
  t.ok(results.every(r => r.status === 'rejected' && (r.reason as FsError).code === 'EIO'), 'all EIO')
  t.ok(ms < 300 * 2 + 500, `all failed in ${Math.round(ms)} ms`)
})

t.test('keep-alive: sequential requests reuse a connection', async t => {
  const f = await fake(t)
  const dev = device(t, f)
  const data = randomBytes(64 * 1024)
  const sum = checksum(data)
  await dev.put(id1, data, sum)
  const before = f.connections
  for (let i = 0; i < 50; i++) t.equal((await dev.get(id1, sum)).length, data.length)
  t.ok(f.connections - before <= 2, `50 gets used ${f.connections - before} new connection(s)`)
  t.ok(f.connections <= 3, `${f.connections} connections in all`)
})

t.test('one pool per server and token, shared and closed with the last device', async t => {
  const f = await fake(t)
  const base = openPoolCount()
  const a = new RemoteDevice({ server: 's2', device: 'd1', url: f.url, token: TOKEN })
  const b = new RemoteDevice({ server: 's2', device: 'd2', url: f.url + '/', token: TOKEN })
  t.equal(openPoolCount(), base + 1, 'two devices of one server share a pool')
  const c = new RemoteDevice({ server: 's2', device: 'd1', url: f.url, token: 'other-token' })
  t.equal(openPoolCount(), base + 2, 'another token is another pool')
  const data = randomBytes(100)
  await a.put(id1, data, checksum(data))
  await b.put(id1, data, checksum(data))
  // The first read also asks (in vain: the fake has no read stream) to upgrade, on a connection of its own.
  await a.get(id1, checksum(data))
  const conns = f.connections
  await b.get(id1, checksum(data))
  t.equal(f.connections, conns, 'the second device reuses the first one\'s connection')
  await a.close()
  t.equal(openPoolCount(), base + 2, 'still used by b')
  await fsError(t, a.get(id1, checksum(data)), 'EIO', /device s2:d1 is closed/)
  t.same(await b.get(id1, checksum(data)), data, 'b still works')
  await b.close()
  await c.close()
  await c.close()
  t.equal(openPoolCount(), base, 'all closed')
})

t.test('a killed server, restarted on the same port, is used again', async t => {
  const f = await fake(t)
  const dev = device(t, f, { timeoutMs: 1000, retries: 2 })
  const data = randomBytes(3000)
  const sum = checksum(data)
  await dev.put(id1, data, sum)
  t.same(await dev.get(id1, sum), data)
  const port = f.port
  const saved = f.devices
  await f.close()

  const start = performance.now()
  await fsError(t, dev.get(id1, sum), 'EIO', /^EIO: s2:d1 unreachable: connect ECONNREFUSED 127\.0\.0\.1:\d+ \(get of object 0000000000000abc, 3 attempts\)$/)
  t.ok(performance.now() - start < 1000 * 3 + 500, 'refused quickly')
  await fsError(t, dev.put(id2, data, sum), 'EIO', /unreachable: connect ECONNREFUSED/)

  const g = new FakeServer()
  for (const [k, v] of saved) g.devices.set(k, v)
  await g.listen(port)
  t.teardown(() => g.close())
  t.same(await dev.get(id1, sum), data, 'reads work again')
  await dev.put(id2, data, sum)
  t.same(g.devices.get('d1')?.get(id2), data, 'writes work again')

  // A restart while the pool holds idle keep-alive connections: the stale socket is retried away.
  await g.close()
  const h = new FakeServer()
  for (const [k, v] of saved) h.devices.set(k, v)
  await h.listen(port)
  t.teardown(() => h.close())
  t.same(await dev.get(id1, sum), data, 'after a second restart too')
})

t.test('probeServer', async t => {
  const f = await fake(t)
  t.same(await probeServer(f.url, TOKEN, 1000), { ok: true, server: 'fake', devices: ['d1', 'd2'] })
  await fsError(t, probeServer(f.url, 'wrong', 1000, { name: 's2' }), 'EACCES', /token rejected by s2 — check --token-file/)
  await fsError(t, probeServer(f.url, 'wrong', 1000), 'EACCES', /token rejected by 127\.0\.0\.1:\d+/)
  t.teardown(() => f.clear())
  f.fault({ kind: 'raw', status: 200, type: 'application/json', body: '{"ok": true, "server": "x"}' }, { times: 1 })
  await fsError(t, probeServer(f.url, TOKEN, 1000), 'EIO', /without a device list/)
  f.fault({ kind: 'raw', status: 200, type: 'application/json', body: '{"ok": true, "server": "x", "devices": [{"name": "d9", "free": 1}]}' }, { times: 1 })
  t.same(await probeServer(f.url, TOKEN, 1000), { ok: true, server: 'x', devices: ['d9'] }, 'device objects with a name are accepted')
  f.fault({ kind: 'raw', status: 200, type: 'text/html', body: '<html>' }, { times: 1 })
  await fsError(t, probeServer(f.url, TOKEN, 1000), 'EIO', /not JSON/)
  f.fault({ kind: 'hang' }, { times: 1 })
  const ms = await elapsed(() => fsError(t, probeServer(f.url, TOKEN, 300), 'EIO', /unreachable: no complete answer within 300 ms/))
  t.ok(ms < 300 + 500, `a hung server: ${Math.round(ms)} ms`)
  const port = f.port
  await f.close()
  await fsError(t, probeServer(`http://127.0.0.1:${port}`, TOKEN, 1000), 'EIO', /127\.0\.0\.1:\d+ unreachable: connect ECONNREFUSED/)
  await fsError(t, probeServer('http://bslfs-no-such-host.invalid:7070', TOKEN, 1000), 'EIO', /^EIO: bslfs-no-such-host\.invalid:7070 unreachable: /)
})
