/**
 * The block server's read stream (GET /v1/stream upgraded to binary frames):
 * its frames byte for byte against a real server process, and the client
 * (RemoteDevice) against the real server and against a fake one that fails
 * in the ways a server or network can.
 */
import t from 'tap'
import { randomBytes } from 'node:crypto'
import * as net from 'node:net'
import { join } from 'node:path'
import { checksum } from '../src/checksum'
import { RemoteDevice } from '../src/devices/remote'
import {
  ANSWER_BYTES, AnswerHeader, OP_OBJECT, OP_RANGE, REQUEST_BYTES, StreamRequest, decodeAnswer, decodeRequest, encodeAnswer, encodeRequest,
  requestFrameBytes
} from '../src/wire/frames'
import { FsError } from '../src/errors'
import { HOST, ServerProcess, bearer, makeTokenFile, raw, request, sleep, startServer, tempDir } from './helpers/server'

const UPGRADE = (token: string, path = '/v1/stream', proto = 'bslfs-blocks/1'): string =>
  `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: ${proto}\r\nAuthorization: Bearer ${token}\r\n\r\n`

const id1 = '00000000000000a1'
const id2 = '00000000000000b2'

/** A raw upgraded connection: frames out, answers (header and bytes) in. */
class RawStream {
  private buf = Buffer.alloc(0)
  private waiters: Array<() => void> = []
  closed = false

  private constructor (readonly sock: net.Socket) {
    sock.on('data', c => {
      this.buf = Buffer.concat([this.buf, c])
      for (const w of this.waiters.splice(0)) w()
    })
    sock.on('close', () => {
      this.closed = true
      for (const w of this.waiters.splice(0)) w()
    })
    sock.on('error', () => undefined)
  }

  static async open (port: number, token: string): Promise<RawStream> {
    const sock = net.connect({ host: HOST, port })
    await new Promise(resolve => sock.once('connect', resolve))
    const s = new RawStream(sock)
    sock.write(UPGRADE(token))
    const head = await s.until(b => b.indexOf('\r\n\r\n') >= 0 ? b.indexOf('\r\n\r\n') + 4 : -1)
    if (!/^HTTP\/1\.1 101 /.test(head.toString('latin1'))) throw new Error(`no upgrade: ${head.toString('latin1')}`)
    return s
  }

  send (...frames: Buffer[]): void {
    this.sock.write(Buffer.concat(frames))
  }

  /** The next answer. */
  async answer (): Promise<AnswerHeader & { body: Buffer }> {
    const head = decodeAnswer(await this.until(b => b.length >= ANSWER_BYTES ? ANSWER_BYTES : -1))
    const body = head.length === 0 ? Buffer.alloc(0) : await this.until(b => b.length >= head.length ? head.length : -1)
    return { ...head, body }
  }

  private async until (n: (b: Buffer) => number): Promise<Buffer> {
    for (;;) {
      const k = n(this.buf)
      if (k >= 0) {
        const out = this.buf.subarray(0, k)
        this.buf = this.buf.subarray(k)
        return out
      }
      if (this.closed) throw new Error('closed')
      await new Promise<void>(resolve => this.waiters.push(resolve))
    }
  }
}

const frame = (r: Partial<StreamRequest> & { id: number }): Buffer =>
  encodeRequest({ op: OP_RANGE, device: 'd1', objectId: id1, offset: 0, length: 0, sum: 0, ...r })

t.test('frames: encode and decode', async t => {
  const r: StreamRequest = { op: OP_RANGE, id: 0xfffffffe, device: 'disk-1.a', objectId: 'fedcba9876543210', offset: 123456, length: 32768, sum: 0 }
  const b = encodeRequest(r)
  t.equal(b.length, REQUEST_BYTES + 8)
  t.equal(requestFrameBytes(b), b.length)
  t.same(decodeRequest(b), r)
  const o: StreamRequest = { op: OP_OBJECT, id: 7, device: 'd', objectId: '0000000000000001', offset: 0, length: 0, sum: 0xffffffff }
  t.same(decodeRequest(encodeRequest(o)), o)
  const bad = (mutate: (b: Buffer) => void, re: RegExp): void => {
    const f = encodeRequest(r)
    mutate(f)
    const d = decodeRequest(f)
    t.ok('problem' in d && re.test(d.problem), `refused: ${'problem' in d ? d.problem : 'accepted'}`)
    t.equal(d.id, 0xfffffffe, 'with the id to answer on')
  }
  bad(f => { f[0] = 3 }, /unknown op 3/)
  bad(f => { f[2] = 1 }, /reserved/)
  bad(f => { f[20] = 1 }, /reserved/)
  bad(f => { f.writeUInt32LE(0, 12) }, /needs a length/)
  bad(f => { f.writeUInt32LE(5, 16) }, /no checksum/)
  bad(f => { f[0] = OP_OBJECT }, /no offset or length/)
  const zeroName = encodeRequest(r)
  zeroName[1] = 0
  t.match(decodeRequest(zeroName.subarray(0, REQUEST_BYTES)), { problem: /device name of 0 bytes/ })
  const a: AnswerHeader = { id: 9, status: 206, length: 4096, size: 1 << 20 }
  t.same(decodeAnswer(encodeAnswer(a)), a)
})

t.test('against a real server process', async t => {
  const dir = await tempDir(t)
  const { file: tokenFile, token } = await makeTokenFile(dir)
  const srv = await startServer(['--listen', '127.0.0.1:0', '--device', `d1=${join(dir, 'd1')}`, '--token-file', tokenFile])
  t.teardown(() => srv.stop('SIGKILL'))
  const port = srv.port
  const data = randomBytes(200_000)
  const sum = checksum(data)
  const put = await request(port, { method: 'PUT', path: `/v1/devices/d1/objects/${id1}`, headers: { ...bearer(token), 'X-Bslfs-Checksum': String(sum) }, body: data })
  t.equal(put.status, 201)

  t.test('the upgrade is authenticated and checked', async t => {
    const answer = async (req: string): Promise<string> => (await raw(port, req, { timeoutMs: 3000 })).data.toString('latin1')
    t.match(await answer(UPGRADE('wrong')), /^HTTP\/1\.1 401 [^]*"code":"EACCES"/, 'wrong token: 401')
    t.match(await answer(UPGRADE(token).replace(/Authorization: [^\r]*\r\n/, '')), /^HTTP\/1\.1 401 /, 'no token: 401')
    t.match(await answer(UPGRADE(token, '/v1/health')), /^HTTP\/1\.1 400 [^]*only \/v1\/stream can be upgraded/, 'another path')
    t.match(await answer(UPGRADE(token, '/v1/stream', 'websocket')), /^HTTP\/1\.1 400 [^]*unknown Upgrade \\"websocket\\"/, 'another protocol')
    const plain = await request(port, { path: '/v1/stream', headers: bearer(token) })
    t.equal(plain.status, 426, 'a plain GET: 426 Upgrade Required')
    t.equal(plain.json.code, 'EINVAL')
  })

  t.test('reads: whole objects verified, ranges, and the errors of the HTTP GETs', async t => {
    const s = await RawStream.open(port, token)
    t.teardown(() => s.sock.destroy())
    s.send(frame({ id: 1, op: OP_OBJECT, sum }))
    let a = await s.answer()
    t.match(a, { id: 1, status: 200, length: data.length, size: 0 })
    t.ok(a.body.equals(data), 'the whole object')

    s.send(frame({ id: 2, op: OP_OBJECT, sum: (sum ^ 1) >>> 0 }))
    a = await s.answer()
    t.match(a, { id: 2, status: 500 })
    t.match(JSON.parse(a.body.toString()), { code: 'EIO', error: /checksum mismatch/ }, 'a wrong checksum: the copy is not given out')

    s.send(frame({ id: 3, offset: 1000, length: 5000 }))
    a = await s.answer()
    t.match(a, { id: 3, status: 206, length: 5000, size: data.length })
    t.ok(a.body.equals(data.subarray(1000, 6000)), 'a range')

    s.send(frame({ id: 4, offset: data.length - 10, length: 100 }))
    a = await s.answer()
    t.match(a, { id: 4, status: 206, length: 10 }, 'a range past the end is cut at the end')
    t.ok(a.body.equals(data.subarray(data.length - 10)))

    const errors: Array<[Partial<StreamRequest>, number, string]> = [
      [{ offset: data.length, length: 1 }, 416, 'ERANGE'],
      [{ objectId: id2, length: 1 }, 404, 'ENOENT'],
      [{ device: 'nope', length: 1 }, 404, 'ENODEV'],
      [{ device: '..', length: 1 }, 400, 'EINVAL']
    ]
    let id = 10
    for (const [r, status, code] of errors) {
      s.send(frame({ id, ...r }))
      a = await s.answer()
      t.match(a, { id, status }, `${JSON.stringify(r)}: ${status}`)
      t.equal(JSON.parse(a.body.toString()).code, code)
      id++
    }
    const bad = frame({ id: 20, length: 1 })
    bad[0] = 9
    s.send(bad, frame({ id: 21, offset: 5, length: 5 }))
    a = await s.answer()
    t.match(a, { id: 20, status: 400 })
    t.match(JSON.parse(a.body.toString()), { code: 'EINVAL', error: /unknown op 9/ })
    a = await s.answer()
    t.match(a, { id: 21, status: 206 }, 'the connection goes on after a bad frame')
    t.ok(a.body.equals(data.subarray(5, 10)))
  })

  t.test('many reads at once, and frames split anywhere', async t => {
    const s = await RawStream.open(port, token)
    t.teardown(() => s.sock.destroy())
    const frames: Buffer[] = []
    for (let i = 0; i < 200; i++) frames.push(frame({ id: 1000 + i, offset: i * 997, length: 1 + (i * 131) % 4096 }))
    const all = Buffer.concat(frames)
    // Written in pieces of 7 bytes: frames arrive cut at every place.
    for (let at = 0; at < all.length; at += 7) s.send(all.subarray(at, at + 7))
    const seen = new Set<number>()
    const wrong: number[] = []
    for (let i = 0; i < 200; i++) {
      const a = await s.answer()
      const k = a.id - 1000
      if (k < 0 || k >= 200 || seen.has(k) || !a.body.equals(data.subarray(k * 997, k * 997 + 1 + (k * 131) % 4096))) wrong.push(a.id)
      seen.add(k)
    }
    t.same(wrong, [], 'each answer is one of ours, once, with its bytes')
    t.equal(seen.size, 200)
  })

  t.test('a client that goes away mid-read does not disturb the others', async t => {
    const s1 = await RawStream.open(port, token)
    for (let i = 0; i < 50; i++) s1.send(frame({ id: i, op: OP_OBJECT, sum }))
    s1.sock.destroy()
    const s2 = await RawStream.open(port, token)
    t.teardown(() => s2.sock.destroy())
    s2.send(frame({ id: 5, offset: 0, length: 10 }))
    const a = await s2.answer()
    t.match(a, { id: 5, status: 206 })
    t.ok(a.body.equals(data.subarray(0, 10)))
  })

  t.test('RemoteDevice reads over the stream; a killed server is unreachable, a restarted one used again', async t => {
    const dev = new RemoteDevice({ server: 's', device: 'd1', url: `http://127.0.0.1:${port}`, token, timeoutMs: 1000, retries: 1 })
    t.teardown(() => dev.close())
    t.ok((await dev.get(id1, sum)).equals(data))
    t.ok((await dev.getRange(id1, 32768, 32768)).equals(data.subarray(32768, 65536)))
    const reads = await Promise.all(Array.from({ length: 40 }, async (_, i) => await dev.getRange(id1, i * 4096, 4096)))
    t.ok(reads.every((b, i) => b.equals(data.subarray(i * 4096, (i + 1) * 4096))), '40 reads at once')
    const err = await dev.get(id2, 5).catch((e: unknown) => e)
    t.match(err, { code: 'EIO', message: /object 00000000000000b2 is missing on s:d1/ })

    await srv.stop('SIGKILL')
    const started = Date.now()
    const gone = await dev.getRange(id1, 0, 10).catch((e: unknown) => e)
    t.ok(gone instanceof FsError, 'an FsError')
    t.match(gone, { code: 'EIO', fault: 'unreachable' })
    t.ok(Date.now() - started < 3000, 'quickly')

    const again = await startServer(['--listen', `127.0.0.1:${port}`, '--device', `d1=${join(dir, 'd1')}`, '--token-file', tokenFile])
    t.teardown(() => again.stop('SIGKILL'))
    t.ok((await dev.getRange(id1, 0, 10)).equals(data.subarray(0, 10)), 'read again after the restart')
  })
})

// ---------------------------------------------------------------------------
// A fake stream server: serves one object, with switches for failures.

type Mode = 'ok' | 'hang' | 'cut' | 'flip' | 'badheader' | 'long' | 'refuse401' | 'refuse503' | 'refuse404'

class FakeStream {
  mode: Mode = 'ok'
  upgrades = 0
  port = 0
  private readonly server: net.Server
  private readonly sockets = new Set<net.Socket>()

  constructor (readonly data: Buffer) {
    this.server = net.createServer(s => this.serve(s))
  }

  async listen (): Promise<void> {
    await new Promise<void>(resolve => this.server.listen(0, HOST, resolve))
    this.port = (this.server.address() as net.AddressInfo).port
  }

  async close (): Promise<void> {
    for (const s of this.sockets) s.destroy()
    await new Promise(resolve => this.server.close(resolve))
  }

  private serve (s: net.Socket): void {
    this.sockets.add(s)
    s.on('close', () => this.sockets.delete(s))
    s.on('error', () => undefined)
    let buf = Buffer.alloc(0)
    let upgraded = false
    s.on('data', c => {
      buf = Buffer.concat([buf, c])
      if (!upgraded) {
        const end = buf.indexOf('\r\n\r\n')
        if (end < 0) return
        buf = buf.subarray(end + 4)
        this.upgrades++
        const refuse = /^refuse(\d+)$/.exec(this.mode)
        if (refuse !== null) {
          const body = JSON.stringify({ error: 'refused', code: refuse[1] === '401' ? 'EACCES' : 'EAGAIN' })
          s.end(`HTTP/1.1 ${refuse[1]} X\r\nContent-Length: ${body.length}\r\n\r\n${body}`)
          return
        }
        upgraded = true
        s.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: bslfs-blocks/1\r\nConnection: Upgrade\r\n\r\n')
      }
      while (buf.length >= REQUEST_BYTES && buf.length >= requestFrameBytes(buf)) {
        const n = requestFrameBytes(buf)
        const r = decodeRequest(buf.subarray(0, n))
        buf = buf.subarray(n)
        if ('problem' in r) throw new Error(r.problem)
        this.answer(s, r)
      }
    })
  }

  private answer (s: net.Socket, r: StreamRequest): void {
    const want = r.op === OP_OBJECT ? this.data : this.data.subarray(r.offset, r.offset + r.length)
    const body = this.mode === 'long' ? Buffer.concat([want, Buffer.alloc(10)]) : Buffer.from(want)
    const head = encodeAnswer({ id: r.id, status: r.op === OP_OBJECT ? 200 : 206, length: body.length, size: this.data.length })
    switch (this.mode) {
      case 'hang':
        return
      case 'cut':
        s.write(head)
        s.end(body.subarray(0, body.length >> 1))
        return
      case 'flip':
        body[body.length >> 1] ^= 1
        break
      case 'badheader':
        head.writeUInt16LE(77, 4)
        break
    }
    s.write(Buffer.concat([head, body]))
  }
}

t.test('the client against a failing stream server', async t => {
  const data = randomBytes(100_000)
  const sum = checksum(data)
  const f = new FakeStream(data)
  await f.listen()
  t.teardown(() => f.close())
  const dev = new RemoteDevice({ server: 's', device: 'd1', url: `http://127.0.0.1:${f.port}`, token: 'tok', timeoutMs: 300, retries: 1 })
  t.teardown(() => dev.close())
  const fails = async (p: Promise<unknown>, code: string, re: RegExp, what: string): Promise<void> => {
    const err = await p.then(() => null, (e: unknown) => e)
    t.ok(err instanceof FsError, `${what}: an FsError`)
    t.match(err, { code, message: re }, what)
  }

  t.ok((await dev.get(id1, sum)).equals(data), 'a whole object')
  t.ok((await dev.getRange(id1, 10, 20)).equals(data.subarray(10, 30)), 'a range')

  f.mode = 'flip'
  await fails(dev.get(id1, sum), 'EIO', /checksum mismatch on s:d1 object 00000000000000a1 \(as received\)/, 'a flipped byte')

  for (const [mode, re] of [
    ['hang', /unreachable: no complete answer within 300 ms/],
    ['cut', /unreachable: connection closed by the server/],
    ['badheader', /unreachable: bad answer header from the server \(status 77\)/],
    ['long', /s:d1 answered get of bytes 0-99 of object 00000000000000a1 with more than 100 bytes/]
  ] as Array<[Mode, RegExp]>) {
    f.mode = mode
    const started = Date.now()
    await fails(dev.getRange(id1, 0, 100), 'EIO', re, mode)
    t.ok(Date.now() - started < 1500, `${mode}: within the bound (${Date.now() - started} ms)`)
    f.mode = 'ok'
    t.ok((await dev.getRange(id1, 0, 100)).equals(data.subarray(0, 100)), `after ${mode}: reads work again`)
  }

  await sleep(10)
  // Only new connections see the upgrade answer: close the ones open now.
  const refusal = async (mode: Mode): Promise<void> => {
    await f.close().catch(() => undefined)
    const fresh = new FakeStream(data)
    fresh.mode = mode
    await fresh.listen()
    t.teardown(() => fresh.close())
    const d = new RemoteDevice({ server: 's', device: 'd1', url: `http://127.0.0.1:${fresh.port}`, token: 'tok', timeoutMs: 300, retries: 1 })
    t.teardown(() => d.close())
    if (mode === 'refuse401') await fails(d.getRange(id1, 0, 1), 'EACCES', /token rejected by s/, '401')
    if (mode === 'refuse503') {
      await fails(d.getRange(id1, 0, 1), 'EIO', /s:d1 failed get of bytes 0-0 of object 00000000000000a1 \(503 EAGAIN\)/, '503')
      t.equal(fresh.upgrades, 2, '503 is retried')
    }
  }
  await refusal('refuse401')
  await refusal('refuse503')
})
