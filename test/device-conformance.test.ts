/**
 * One suite of Device behaviour, run against every kind of device: a
 * LocalDevice, and a RemoteDevice talking to a real BlockServer on 127.0.0.1
 * (its reads over the server's read stream, and over plain HTTP). What a
 * device promises its callers (the volumes layer) must not depend on where
 * the bytes are. Then: a read of a hung server stops with EINTR as soon as
 * its caller's signal aborts, over HTTP and over the stream. The remote
 * kinds run over TLS too (certificates made with openssl at test time).
 */
import t from 'tap'
import { randomBytes } from 'node:crypto'
import * as fsp from 'node:fs/promises'
import * as net from 'node:net'
import { tmpdir } from 'node:os'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { Pool } from 'undici'
import { checksum } from '../src/checksum'
import type { CallLimits, Device } from '../src/devices/device'
import { LocalDevice } from '../src/devices/local'
import { RemoteDevice } from '../src/devices/remote'
import { FsError } from '../src/errors'
import { MAX_BLOCK_BYTES } from '../src/limits'
import { BlockServer } from '../src/server/server'
import { loadServerTls } from '../src/server/tls'
import { ClientTls, loadClientTls, tlsConnectOptions } from '../src/devices/tls'
import { TestCerts, makeTestCerts } from './helpers/certs'
import { makeTokenFile, sleep, startServer, tempDir } from './helpers/server'

const TOKEN = 'conformance-token-0123456789'
const id1 = '0000000000000a01'
const id2 = '0000000000000b02'
const id3 = '0000000000000c03'

/** A device under test, the directory its objects are stored in, and how many calls reached that storage. */
interface Subject {
  dev: Device
  /** The object's file on disk (to damage it behind the device's back). */
  objectFile: (id: string) => string
  /** Calls that reached the device that holds the bytes (a remote device's server side); undefined for a local one. */
  storageCalls?: () => number
}

/** A Device that counts the calls made to it and passes them on. */
function counted (inner: Device): { dev: Device, calls: () => number } {
  let n = 0
  const dev: Device = {
    label: inner.label,
    put: async (...a) => { n++; return await inner.put(...a) },
    store: async (...a) => { n++; return await inner.store(...a) },
    sync: async (...a) => { n++; return await inner.sync(...a) },
    get: async (...a) => { n++; return await inner.get(...a) },
    getRange: async (...a) => { n++; return await inner.getRange(...a) },
    delete: async (...a) => { n++; return await inner.delete(...a) },
    stat: async (...a) => { n++; return await inner.stat(...a) },
    list: () => { n++; return inner.list() },
    space: async (...a) => { n++; return await inner.space(...a) },
    close: async () => await inner.close()
  }
  return { dev, calls: () => n }
}

async function localSubject (t: tap.Test): Promise<Subject> {
  const dir = join(await tempDir(t), 'dev')
  const dev = await LocalDevice.create(dir, { server: 'local', device: 'd1' })
  t.teardown(() => dev.close())
  return { dev, objectFile: id => join(dir, 'objects', id.slice(-2), id) }
}

let certs: TestCerts | undefined
/** The test certificates, made once for the whole file. */
async function testCerts (): Promise<TestCerts> {
  if (certs === undefined) {
    const dir = await fsp.mkdtemp(join(tmpdir(), 'bslfs-conformance-certs-'))
    t.teardown(async () => await fsp.rm(dir, { recursive: true, force: true }))
    certs = makeTestCerts(dir)
  }
  return certs
}

/**
 * A BlockServer in this process serving one LocalDevice, and a RemoteDevice of it (over HTTP only when `http`;
 * over TLS, with the test CA and a client certificate for mutual TLS, when `secure`).
 */
async function remoteSubject (t: tap.Test, http: boolean, secure = false): Promise<Subject> {
  const dir = join(await tempDir(t), 'dev')
  const local = counted(await LocalDevice.create(dir, { server: 's2', device: 'd1' }))
  const c = secure ? await testCerts() : undefined
  const serverTls = c ? await loadServerTls({ certFile: c.server.cert, keyFile: c.server.key, clientCaFile: c.ca }) : undefined
  const clientTls: ClientTls | undefined = c ? await loadClientTls({ caFile: c.ca, clientCertFile: c.client.cert, clientKeyFile: c.client.key }) : undefined
  const server = new BlockServer({
    ...(serverTls ? { tls: serverTls } : {}),
    name: 's2',
    devices: new Map([['d1', local.dev]]),
    tokens: [TOKEN],
    maxObjectBytes: MAX_BLOCK_BYTES,
    maxBufferedBytes: 64 * 1024 * 1024,
    headersTimeoutMs: 5000,
    requestTimeoutMs: 10_000,
    idleTimeoutMs: 10_000,
    keepAliveTimeoutMs: 5000,
    maxConnections: 100
  })
  const { port } = await server.listen('127.0.0.1', 0)
  const url = `${secure ? 'https' : 'http'}://127.0.0.1:${port}`
  // A dispatcher of its own leaves the device without the server's read stream: every call is HTTP.
  const pool = http ? new Pool(url, clientTls ? { connect: tlsConnectOptions(clientTls) } : {}) : undefined
  const dev = new RemoteDevice({ server: 's2', device: 'd1', url, token: TOKEN, timeoutMs: 5000, pool, ...(clientTls ? { tls: clientTls } : {}) })
  t.teardown(async () => {
    await dev.close()
    await pool?.close()
    await server.stop(1000)
  })
  return { dev, objectFile: id => join(dir, 'objects', id.slice(-2), id), storageCalls: local.calls }
}

async function fsError (t: tap.Test, p: Promise<unknown>, code: string, message?: RegExp, fault?: string): Promise<FsError | undefined> {
  try {
    await p
  } catch (err) {
    t.type(err, FsError, `${code}: an FsError`)
    const e = err as FsError
    t.equal(e.code, code, `${code}: ${e.message}`)
    if (message !== undefined) t.match(e.message, message)
    if (fault !== undefined) t.equal(e.fault, fault, `fault ${fault}`)
    return e
  }
  t.fail(`expected ${code}, but it succeeded`)
  return undefined
}

async function collect (it: AsyncIterable<string>): Promise<string[]> {
  const out: string[] = []
  for await (const id of it) out.push(id)
  return out.sort()
}

const kinds: Array<[string, (t: tap.Test) => Promise<Subject>]> = [
  ['LocalDevice', localSubject],
  ['RemoteDevice over a BlockServer (read stream)', t => remoteSubject(t, false)],
  ['RemoteDevice over a BlockServer (HTTP only)', t => remoteSubject(t, true)],
  ['RemoteDevice over a BlockServer with mutual TLS (read stream)', t => remoteSubject(t, false, true)],
  ['RemoteDevice over a BlockServer with mutual TLS (HTTPS only)', t => remoteSubject(t, true, true)]
]

for (const [kind, make] of kinds) {
  t.test(kind, async t => {
    t.test('put, store and sync; get and getRange with and without `into`', async t => {
      const { dev } = await make(t)
      const small = randomBytes(10_000)
      const big = randomBytes(300_000)
      const empty = Buffer.alloc(0)
      await dev.put(id1, small, checksum(small))
      await dev.store(id2, big, checksum(big))
      await dev.sync()
      await dev.put(id3, empty, checksum(empty))
      t.ok((await dev.get(id1, checksum(small))).equals(small), 'a put reads back')
      t.ok((await dev.get(id2, checksum(big))).equals(big), 'a stored object reads back')
      t.equal((await dev.get(id3, checksum(empty))).length, 0, 'an empty object reads back empty')

      const into = Buffer.alloc(64 * 1024)
      const got = await dev.get(id1, checksum(small), {}, into)
      t.ok(got.equals(small), 'a get into a buffer gives the bytes')
      t.equal(got.buffer, into.buffer, 'a small object lands in the buffer given')
      const tiny = Buffer.alloc(100)
      t.ok((await dev.get(id2, checksum(big), {}, tiny)).equals(big), 'a buffer too small is not used, the bytes are still right')

      t.ok((await dev.getRange(id2, 1000, 5000)).equals(big.subarray(1000, 6000)), 'a range')
      const r = await dev.getRange(id2, 299_000, 1000, {}, into)
      t.ok(r.equals(big.subarray(299_000)), 'the last bytes, into a buffer')
      t.equal(r.buffer, into.buffer, 'a range lands in the buffer given')
      t.ok((await dev.getRange(id1, 0, 10_000, {}, tiny)).equals(small), 'a range longer than the buffer given')

      // A put of the same bytes again is harmless.
      await dev.put(id1, small, checksum(small))
      t.ok((await dev.get(id1, checksum(small))).equals(small), 'a repeated put keeps the object')
    })

    t.test('a checksum mismatch is EIO, fault corrupt, never wrong bytes', async t => {
      const s = await make(t)
      const data = randomBytes(20_000)
      await s.dev.put(id1, data, checksum(data))
      await fsError(t, s.dev.get(id1, (checksum(data) ^ 1) >>> 0), 'EIO', /checksum mismatch/, 'corrupt')
      // The copy on disk damaged behind the device's back.
      const bad = Buffer.from(data)
      bad[12_345] ^= 0x40
      await fsp.writeFile(s.objectFile(id1), bad)
      await fsError(t, s.dev.get(id1, checksum(data)), 'EIO', /checksum mismatch/, 'corrupt')
      // A range past the object's end: the object is shorter than the caller says.
      await fsError(t, s.dev.getRange(id1, 19_000, 2000), 'EIO', undefined, 'corrupt')
    })

    t.test('a missing object', async t => {
      const { dev } = await make(t)
      await fsError(t, dev.get(id1, 0), 'EIO', /missing/, 'missing')
      await fsError(t, dev.getRange(id1, 0, 10), 'EIO', /missing/, 'missing')
      t.equal(await dev.stat(id1), null, 'stat of a missing object is null')
    })

    t.test('bad ids, checksums and ranges are EINVAL', async t => {
      const { dev } = await make(t)
      const data = Buffer.from('x')
      for (const id of ['', 'xyz', '../../etc/passwd', '0000000000000ABC', '0000000000000abc0', '00000000/0000abc']) {
        await fsError(t, dev.put(id, data, checksum(data)), 'EINVAL', /bad object id/)
        await fsError(t, dev.store(id, data, checksum(data)), 'EINVAL', /bad object id/)
        await fsError(t, dev.get(id, checksum(data)), 'EINVAL', /bad object id/)
        await fsError(t, dev.getRange(id, 0, 1), 'EINVAL', /bad object id/)
        await fsError(t, dev.delete(id), 'EINVAL', /bad object id/)
        await fsError(t, dev.stat(id), 'EINVAL', /bad object id/)
      }
      for (const sum of [-1, 2 ** 32, 1.5, Number.NaN]) {
        await fsError(t, dev.put(id1, data, sum), 'EINVAL', /bad checksum/)
        await fsError(t, dev.get(id1, sum), 'EINVAL', /bad checksum/)
      }
      for (const [offset, length] of [[-1, 1], [0, 0], [0, -5], [1.5, 1], [0, MAX_BLOCK_BYTES + 1]]) {
        await fsError(t, dev.getRange(id1, offset, length), 'EINVAL', /bad range/)
      }
      t.equal(await dev.stat(id1), null, 'nothing was stored')
    })

    t.test('delete is idempotent; stat and list', async t => {
      const { dev } = await make(t)
      const a = randomBytes(1234)
      const b = randomBytes(10)
      await dev.put(id1, a, checksum(a))
      await dev.put(id2, b, checksum(b))
      t.same(await dev.stat(id1), { size: 1234 })
      t.same(await collect(dev.list()), [id1, id2])
      await dev.delete(id1)
      await dev.delete(id1)
      await dev.delete(id3)
      t.equal(await dev.stat(id1), null, 'gone')
      t.same(await collect(dev.list()), [id2])
      await fsError(t, dev.get(id1, checksum(a)), 'EIO', /missing/, 'missing')
    })

    t.test('space', async t => {
      const { dev } = await make(t)
      const s = await dev.space()
      for (const k of ['total', 'free', 'available'] as const) t.ok(Number.isSafeInteger(s[k]) && s[k] >= 0, `${k} is a byte count`)
      t.ok(s.total > 0 && s.free <= s.total && s.available <= s.free, 'total >= free >= available')
    })

    t.test('an already-aborted signal rejects EINTR at once and does nothing', async t => {
      const s = await make(t)
      const { dev } = s
      const data = randomBytes(5000)
      await dev.put(id1, data, checksum(data))
      const ac = new AbortController()
      ac.abort()
      const limits: CallLimits = { signal: ac.signal }
      const before = s.storageCalls?.()
      await fsError(t, dev.put(id2, data, checksum(data), limits), 'EINTR', /interrupted/)
      await fsError(t, dev.store(id3, data, checksum(data), limits), 'EINTR', /interrupted/)
      await fsError(t, dev.sync(limits), 'EINTR', /interrupted/)
      await fsError(t, dev.get(id1, checksum(data), limits), 'EINTR', /interrupted/)
      await fsError(t, dev.getRange(id1, 0, 100, limits), 'EINTR', /interrupted/)
      await fsError(t, dev.space(limits), 'EINTR', /interrupted/)
      if (before !== undefined) t.equal(s.storageCalls?.(), before, 'no request reached the server')
      t.equal(await dev.stat(id2), null, 'the interrupted put stored nothing')
      t.equal(await dev.stat(id3), null, 'the interrupted store stored nothing')
      t.ok((await dev.get(id1, checksum(data), { signal: new AbortController().signal })).equals(data), 'a signal that does not abort changes nothing')
    })

    t.test('a closed device refuses every call', async t => {
      const { dev } = await make(t)
      const data = randomBytes(100)
      await dev.put(id1, data, checksum(data))
      await dev.close()
      await dev.close()
      await fsError(t, dev.put(id2, data, checksum(data)), 'EIO', /closed/)
      await fsError(t, dev.store(id2, data, checksum(data)), 'EIO', /closed/)
      await fsError(t, dev.sync(), 'EIO', /closed/)
      await fsError(t, dev.get(id1, checksum(data)), 'EIO', /closed/)
      await fsError(t, dev.getRange(id1, 0, 10), 'EIO', /closed/)
      await fsError(t, dev.delete(id1), 'EIO', /closed/)
      await fsError(t, dev.stat(id1), 'EIO', /closed/)
      await fsError(t, collect(dev.list()), 'EIO', /closed/)
    })
  })
}

// ---------------------------------------------------------------------------
// A hung server: the caller's signal, not the device's timeout, ends the wait.

const LONG_MS = 8000

/** Awaits `p`, expected to stay pending until `ac` aborts (after `afterMs`) and then to reject EINTR promptly. */
async function interruptedPromptly (t: tap.Test, what: string, p: Promise<unknown>, ac: AbortController, afterMs = 300): Promise<void> {
  let settledEarly = false
  p.then(() => { settledEarly = true }, () => { settledEarly = true })
  await sleep(afterMs)
  t.notOk(settledEarly, `${what}: still waiting for the hung server`)
  const at = Date.now()
  ac.abort()
  await fsError(t, p, 'EINTR', /interrupted/)
  const ms = Date.now() - at
  t.ok(ms < 500, `${what}: EINTR ${ms} ms after the abort (the device's bound is ${LONG_MS} ms)`)
}

t.test('an in-flight call to a stopped (SIGSTOP) server rejects EINTR promptly when its signal aborts', async t => {
  const dir = await tempDir(t)
  const { file: tokenFile, token } = await makeTokenFile(dir)
  const srv = await startServer(['--listen', '127.0.0.1:0', '--device', `d1=${join(dir, 'd1')}`, '--token-file', tokenFile])
  t.teardown(async () => {
    try { process.kill(srv.pid, 'SIGCONT') } catch {}
    await srv.stop('SIGKILL')
  })
  const url = `http://127.0.0.1:${srv.port}`
  const pool = new Pool(url)
  const streamDev = new RemoteDevice({ server: 's2', device: 'd1', url, token, timeoutMs: LONG_MS })
  const httpDev = new RemoteDevice({ server: 's2', device: 'd1', url, token, timeoutMs: LONG_MS, pool })
  t.teardown(async () => {
    await streamDev.close()
    await httpDev.close()
    await pool.destroy()
  })
  const data = randomBytes(50_000)
  const sum = checksum(data)
  await httpDev.put(id1, data, sum)
  // Connections open before the server stops: the reads below wait on the server, not on a connect.
  t.ok((await streamDev.get(id1, sum)).equals(data), 'a read over the stream before the stop')
  t.ok((await httpDev.get(id1, sum)).equals(data), 'a read over HTTP before the stop')

  process.kill(srv.pid, 'SIGSTOP')
  let ac = new AbortController()
  await interruptedPromptly(t, 'get over the stream', streamDev.get(id1, sum, { signal: ac.signal }), ac)
  ac = new AbortController()
  await interruptedPromptly(t, 'getRange over the stream', streamDev.getRange(id1, 100, 1000, { signal: ac.signal }), ac)
  ac = new AbortController()
  await interruptedPromptly(t, 'get over HTTP', httpDev.get(id1, sum, { signal: ac.signal }), ac)
  ac = new AbortController()
  await interruptedPromptly(t, 'put over HTTP', httpDev.put(id2, data, sum, { signal: ac.signal }), ac)
  ac = new AbortController()
  await interruptedPromptly(t, 'space over HTTP', httpDev.space({ signal: ac.signal }), ac)

  // Going on: the answers to the dropped reads arrive late and go nowhere; the next reads get their own bytes.
  process.kill(srv.pid, 'SIGCONT')
  t.ok((await streamDev.getRange(id1, 0, 20_000)).equals(data.subarray(0, 20_000)), 'the stream reads again, its late answers discarded')
  t.ok((await streamDev.get(id1, sum)).equals(data), 'and whole objects')
  t.ok((await httpDev.get(id1, sum)).equals(data), 'HTTP reads again')
})

t.test('a call to a listener that accepts and never answers rejects EINTR promptly when its signal aborts', async t => {
  const sockets = new Set<net.Socket>()
  const silent = net.createServer(s => {
    sockets.add(s)
    s.on('error', () => undefined)
    s.on('close', () => sockets.delete(s))
  })
  await new Promise<void>(resolve => silent.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const s of sockets) s.destroy()
    await new Promise(resolve => silent.close(resolve))
  })
  const url = `http://127.0.0.1:${(silent.address() as AddressInfo).port}`
  const pool = new Pool(url)
  const streamDev = new RemoteDevice({ server: 's9', device: 'd1', url, token: TOKEN, timeoutMs: LONG_MS })
  const httpDev = new RemoteDevice({ server: 's9', device: 'd1', url, token: TOKEN, timeoutMs: LONG_MS, pool })
  t.teardown(async () => {
    await streamDev.close()
    await httpDev.close()
    await pool.destroy()
  })
  let ac = new AbortController()
  await interruptedPromptly(t, 'get waiting for the stream upgrade', streamDev.get(id1, 0, { signal: ac.signal }), ac)
  ac = new AbortController()
  await interruptedPromptly(t, 'get over HTTP', httpDev.get(id1, 0, { signal: ac.signal }), ac)
  ac = new AbortController()
  await interruptedPromptly(t, 'sync over HTTP', httpDev.sync({ signal: ac.signal }), ac)
})
