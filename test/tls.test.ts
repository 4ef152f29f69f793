/**
 * The block server and its clients over TLS (certificates made with openssl
 * at test time): every failure of the server's identity is one line naming
 * the server and the reason, is not retried and writes nothing; mutual TLS
 * refuses clients without a certificate from its CA; tokens change without
 * a restart; SIGHUP reloads the certificate; hostile clients are bounded
 * and the server keeps answering others within a second.
 */
import t from 'tap'
import { X509Certificate, randomBytes } from 'node:crypto'
import * as fs from 'node:fs'
import * as fsp from 'node:fs/promises'
import * as net from 'node:net'
import * as tls from 'node:tls'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { checksum } from '../src/checksum'
import type { Device } from '../src/devices/device'
import { LocalDevice } from '../src/devices/local'
import { RemoteDevice } from '../src/devices/remote'
import { ClientTls, loadClientTls } from '../src/devices/tls'
import { FsError } from '../src/errors'
import { MAX_BLOCK_BYTES } from '../src/limits'
import { BlockServer } from '../src/server/server'
import { ServerTlsOptions, loadServerTls } from '../src/server/tls'
import { TestCerts, makeTestCerts } from './helpers/certs'
import { spawn } from 'node:child_process'
import { childEnv, makeTokenFile, runServerToFailure, serverMain, sleep, startServer, tempDir } from './helpers/server'

const TOKEN = 'tls-test-token-0123456789abcdef'
const id1 = '0000000000000a01'

let certs: TestCerts
t.before(async () => {
  const dir = await fsp.mkdtemp(join(tmpdir(), 'bslfs-tls-certs-'))
  t.teardown(async () => await fsp.rm(dir, { recursive: true, force: true }))
  certs = makeTestCerts(dir)
})

/** Server TLS options straight from a pair of files, unchecked (loadServerTls refuses an expired certificate). */
function rawTls (pair: { cert: string, key: string }, clientCa?: string): ServerTlsOptions {
  return {
    cert: fs.readFileSync(pair.cert),
    key: fs.readFileSync(pair.key),
    ...(clientCa ? { ca: fs.readFileSync(clientCa) } : {}),
    minVersion: 'TLSv1.2',
    requestCert: clientCa !== undefined,
    rejectUnauthorized: clientCa !== undefined
  }
}

interface Served { server: BlockServer, port: number, calls: () => number, local: LocalDevice }

/** A BlockServer in this process on 127.0.0.1 with one device; `calls` counts what reached that device. */
async function serve (t: tap.Test, o: { tls?: ServerTlsOptions, tokens?: string[], maxConnections?: number, handshakeTimeoutMs?: number } = {}): Promise<Served> {
  const local = await LocalDevice.create(join(await tempDir(t), 'd1'), { server: 's2', device: 'd1' })
  let n = 0
  const counting = new Proxy(local, {
    get (target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown
      if (typeof v !== 'function' || prop === 'close' || prop === 'label') return v
      return (...args: unknown[]) => { n++; return (v as (...a: unknown[]) => unknown).apply(target, args) }
    }
  }) as Device
  const server = new BlockServer({
    name: 's2',
    devices: new Map([['d1', counting]]),
    tokens: o.tokens ?? [TOKEN],
    ...(o.tls ? { tls: o.tls } : {}),
    maxObjectBytes: MAX_BLOCK_BYTES,
    maxBufferedBytes: 64 * 1024 * 1024,
    headersTimeoutMs: 2000,
    requestTimeoutMs: 5000,
    idleTimeoutMs: 10_000,
    keepAliveTimeoutMs: 5000,
    maxConnections: o.maxConnections ?? 100,
    handshakeTimeoutMs: o.handshakeTimeoutMs ?? 500
  })
  const { port } = await server.listen('127.0.0.1', 0)
  t.teardown(() => server.stop(1000))
  return { server, port, calls: () => n, local }
}

function device (t: tap.Test, url: string, clientTls?: ClientTls, token = TOKEN): RemoteDevice {
  const dev = new RemoteDevice({ server: 's2', device: 'd1', url, token, timeoutMs: 3000, retries: 2, ...(clientTls ? { tls: clientTls } : {}) })
  t.teardown(() => dev.close())
  return dev
}

async function failure (p: Promise<unknown>): Promise<FsError> {
  try {
    await p
  } catch (err) {
    return err as FsError
  }
  throw new Error('expected a failure, but it succeeded')
}

const data = randomBytes(200_000)
const sum = checksum(data)

t.test('every object call and the read stream round-trip over mutual TLS', async t => {
  const s = await serve(t, { tls: await loadServerTls({ certFile: certs.server.cert, keyFile: certs.server.key, clientCaFile: certs.ca }) })
  const ct = await loadClientTls({ caFile: certs.ca, clientCertFile: certs.client.cert, clientKeyFile: certs.client.key })
  for (const host of ['127.0.0.1', 'localhost']) {
    const dev = device(t, `https://${host}:${s.port}`, ct)
    await dev.put(id1, data, sum)
    await dev.store('0000000000000a02', data.subarray(0, 1000), checksum(data.subarray(0, 1000)))
    await dev.sync()
    t.same(await dev.get(id1, sum), data, `${host}: get (read stream)`)
    t.same(await dev.getRange(id1, 1000, 5000), data.subarray(1000, 6000), `${host}: getRange (read stream)`)
    t.same(await dev.stat(id1), { size: data.length }, `${host}: stat`)
    const ids: string[] = []
    for await (const id of dev.list()) ids.push(id)
    t.same(ids.sort(), [id1, '0000000000000a02'], `${host}: list`)
    t.ok((await dev.space()).total > 0, `${host}: space`)
    await dev.delete('0000000000000a02')
    t.equal(await dev.stat('0000000000000a02'), null, `${host}: delete`)
    await dev.delete(id1)
  }
})

t.test("each failure of the server's identity: one line naming the server and why, no retry, nothing written", async t => {
  const ca = await loadClientTls({ caFile: certs.ca })
  const cases: Array<[string, () => Promise<{ url: string, served: Served, clientTls?: ClientTls }>, RegExp]> = [
    ['a certificate for another host name', async () => {
      const served = await serve(t, { tls: rawTls(certs.otherHost) })
      return { url: `https://127.0.0.1:${served.port}`, served, clientTls: ca }
    }, /not for this host name/],
    ['an expired certificate', async () => {
      const served = await serve(t, { tls: rawTls(certs.expired) })
      return { url: `https://127.0.0.1:${served.port}`, served, clientTls: ca }
    }, /certificate has expired/],
    ['a certificate not valid yet', async () => {
      const served = await serve(t, { tls: rawTls(certs.notYetValid) })
      return { url: `https://127.0.0.1:${served.port}`, served, clientTls: ca }
    }, /not valid yet/],
    ['a certificate of an unknown CA', async () => {
      const served = await serve(t, { tls: rawTls(certs.server) })
      return { url: `https://localhost:${served.port}`, served, clientTls: await loadClientTls({ caFile: certs.otherCa }) }
    }, /not signed by a trusted CA/],
    ['plain HTTP where https was configured', async () => {
      const served = await serve(t)
      return { url: `https://127.0.0.1:${served.port}`, served, clientTls: ca }
    }, /does not speak TLS/]
  ]
  for (const [name, make, reason] of cases) {
    const { url, served, clientTls } = await make()
    const dev = device(t, url, clientTls)
    const started = Date.now()
    for (const [what, call] of [['put', () => dev.put(id1, data, sum)], ['get', () => dev.get(id1, sum)]] as const) {
      const err = await failure(call())
      t.type(err, FsError, `${name}: ${what} fails with an FsError`)
      t.match(err.message, reason, `${name}: ${what}: ${err.message}`)
      t.match(err.message, `server s2 at ${url}`, `${name}: the message names the server`)
      t.notMatch(err.message, /\n/, `${name}: one line`)
      t.notMatch(err.message, TOKEN, `${name}: no token in the message`)
    }
    // Two calls, each with two retries allowed: a retried failure would pause 50 + 150 ms per call.
    t.ok(Date.now() - started < 1000, `${name}: not retried (${Date.now() - started} ms)`)
    t.equal(served.calls(), 0, `${name}: nothing reached the device`)
    t.same(await served.local.stat(id1), null, `${name}: nothing written`)
  }
})

t.test('a plain client of a TLS server fails at once and writes nothing', async t => {
  const served = await serve(t, { tls: rawTls(certs.server) })
  const dev = device(t, `http://127.0.0.1:${served.port}`)
  const err = await failure(dev.put(id1, data, sum))
  t.type(err, FsError)
  t.match(err.message, /s2:d1/, `names the device: ${err.message}`)
  t.equal(served.calls(), 0, 'nothing reached the device')
})

t.test('mutual TLS refuses a client without a certificate, or with one of another CA; the token is needed as well', async t => {
  const served = await serve(t, { tls: await loadServerTls({ certFile: certs.server.cert, keyFile: certs.server.key, clientCaFile: certs.ca }) })
  const url = `https://127.0.0.1:${served.port}`
  const none = device(t, url, await loadClientTls({ caFile: certs.ca }))
  const e1 = await failure(none.put(id1, data, sum))
  t.match(e1.message, /requires a client certificate|refused this host's client certificate/, `no certificate: ${e1.message}`)
  const foreign = device(t, url, await loadClientTls({ caFile: certs.ca, clientCertFile: certs.foreignClient.cert, clientKeyFile: certs.foreignClient.key }))
  const e2 = await failure(foreign.put(id1, data, sum))
  t.match(e2.message, /refused this host's client certificate|client certificate/, `a certificate of another CA: ${e2.message}`)
  const good = await loadClientTls({ caFile: certs.ca, clientCertFile: certs.client.cert, clientKeyFile: certs.client.key })
  const wrongToken = device(t, url, good, 'not-the-token-0123456789')
  const e3 = await failure(wrongToken.put(id1, data, sum))
  t.equal(e3.code, 'EACCES', `a good certificate with a wrong token: ${e3.message}`)
  t.equal(served.calls(), 0, 'no unauthenticated request reached the device')
  await device(t, url, good).put(id1, data, sum)
  t.equal(served.calls(), 1, 'certificate and token: the put reaches the device')
})

t.test('tokens change over without a restart: old and new accepted, then only the new', async t => {
  const served = await serve(t, { tls: rawTls(certs.server), tokens: [TOKEN] })
  const ca = await loadClientTls({ caFile: certs.ca })
  const dev = device(t, `https://127.0.0.1:${served.port}`, ca)
  await dev.put(id1, data, sum)
  t.same(await dev.get(id1, sum), data, 'the old token, over the read stream')
  const next = 'the-new-token-abcdefghijklmnop'
  served.server.setTokens([TOKEN, next])
  t.same(await dev.get(id1, sum), data, 'the old token still works during the change-over')
  dev.setToken(next)
  t.same(await dev.get(id1, sum), data, 'the new token')
  t.same(await dev.stat(id1), { size: data.length })
  served.server.setTokens([next])
  t.same(await dev.getRange(id1, 0, 100), data.subarray(0, 100), 'only the new token accepted: the device goes on')
  const stale = device(t, `https://127.0.0.1:${served.port}`, ca)
  const err = await failure(stale.stat(id1))
  t.equal(err.code, 'EACCES', `the old token is refused now: ${err.message}`)
})

/** The serial of the certificate a new connection to PORT is shown. */
async function servedSerial (port: number): Promise<string> {
  return await new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
      resolve(s.getPeerCertificate().serialNumber)
      s.destroy()
    })
    s.on('error', reject)
  })
}

function serialOf (file: string): string {
  return new X509Certificate(fs.readFileSync(file)).serialNumber
}

t.test('bslfs serve: SIGHUP reloads the certificate; a bad one is refused and the old kept; plain beyond loopback needs --insecure-plaintext', async t => {
  const dir = await tempDir(t)
  const { file: tokenFile, token } = await makeTokenFile(dir)
  const cert = join(dir, 'cert.pem')
  const key = join(dir, 'key.pem')
  await fsp.copyFile(certs.otherHost.cert, cert)
  await fsp.copyFile(certs.otherHost.key, key)
  await fsp.chmod(key, 0o600)
  const srv = await startServer(['--listen', '127.0.0.1:0', '--device', `d1=${join(dir, 'd1')}`, '--token-file', tokenFile,
    '--tls-cert', cert, '--tls-key', key])
  t.teardown(() => srv.stop())
  t.ok(await waitUntil(() => /TLS with certificate/.test(srv.stdout())), 'the start says TLS')
  t.equal(await servedSerial(srv.port), serialOf(certs.otherHost.cert), 'the first certificate')
  // A connection opened before the reload keeps its certificate; a device reads through it all along.
  const dev = device(t, `https://127.0.0.1:${srv.port}`, await loadClientTls({ caFile: certs.ca }), token)
  t.match((await failure(dev.stat(id1))).message, /not for this host name/, 'the first certificate is not for 127.0.0.1')

  await fsp.copyFile(certs.server.cert, cert)
  await fsp.copyFile(certs.server.key, key)
  process.kill(srv.pid, 'SIGHUP')
  t.ok(await waitUntil(async () => await servedSerial(srv.port) === serialOf(certs.server.cert)), 'SIGHUP: new connections get the new certificate')
  t.match(srv.stderr(), /SIGHUP: new connections use the certificate/)
  await dev.put(id1, data, sum)
  t.same(await dev.get(id1, sum), data, 'the device works with the renewed certificate')

  // A certificate that does not match the key: refused, the old one kept.
  await fsp.copyFile(certs.client.cert, cert)
  process.kill(srv.pid, 'SIGHUP')
  t.ok(await waitUntil(() => /keeping the certificate in use/.test(srv.stderr())), 'a bad certificate is refused with a line')
  t.equal(await servedSerial(srv.port), serialOf(certs.server.cert), 'the old certificate is still served')
  t.same(await dev.get(id1, sum), data, 'and the device still reads')

  const open = await runServerToFailure(['--listen', '0.0.0.0:0', '--device', `d1=${join(dir, 'd2')}`, '--token-file', tokenFile])
  t.not(open.code, 0)
  t.match(open.stderr, /refusing to listen on 0\.0\.0\.0:0 in plain HTTP.*--tls-cert.*--insecure-plaintext/)
  const loose = join(dir, 'loose.key')
  await fsp.copyFile(certs.server.key, loose)
  await fsp.chmod(loose, 0o644)
  const leaky = await runServerToFailure(['--listen', '127.0.0.1:0', '--device', `d1=${join(dir, 'd3')}`, '--token-file', tokenFile,
    '--tls-cert', certs.server.cert, '--tls-key', loose])
  t.match(leaky.stderr, /TLS key file .* is accessible by group or others/, 'a key file others can read is refused')
  t.notMatch(leaky.stderr + leaky.stdout, fs.readFileSync(loose, 'utf8').split('\n')[1], 'no key bytes in the output')
  // Allowed with --insecure-plaintext, with a warning at every start.
  const proc = spawn(process.execPath, [serverMain, '--listen', '0.0.0.0:0', '--device', `d1=${join(dir, 'd4')}`, '--token-file', tokenFile,
    '--insecure-plaintext'], { env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  proc.stdout.setEncoding('utf8').on('data', (d: string) => { out += d })
  proc.stderr.setEncoding('utf8').on('data', (d: string) => { out += d })
  t.teardown(() => { proc.kill('SIGKILL') })
  t.ok(await waitUntil(() => /listening on 0\.0\.0\.0:\d+/.test(out), 10_000), '--insecure-plaintext: it listens on 0.0.0.0')
  t.match(out, /warning: plain HTTP on 0\.0\.0\.0:0 \(--insecure-plaintext\)/, 'with a warning')
  t.notMatch(out, token, 'the token is not printed')
})

async function waitUntil (fn: () => boolean | Promise<boolean>, ms = 5000): Promise<boolean> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await fn()) return true
    await sleep(50)
  }
  return false
}

/** A plain request over TLS to the health route; resolves with its status, or rejects. */
async function health (port: number, token = TOKEN): Promise<number> {
  const dev = new RemoteDevice({ server: 's2', device: 'd1', url: `https://127.0.0.1:${port}`, token, timeoutMs: 1000, retries: 0, tls: await loadClientTls({ caFile: certs.ca }) })
  try {
    await dev.stat(id1)
    return 200
  } finally {
    await dev.close()
  }
}

t.test('hostile clients over TLS are bounded; the server answers others within 1 s', async t => {
  const served = await serve(t, { tls: rawTls(certs.server), maxConnections: 60, handshakeTimeoutMs: 500 })
  // A client already connected before the flood.
  const dev = device(t, `https://127.0.0.1:${served.port}`, await loadClientTls({ caFile: certs.ca }))
  await dev.put(id1, data, sum)
  t.same(await dev.get(id1, sum), data, 'its read stream is open too')

  // Handshakes that never finish: connections that say nothing, and one that sends half a hello.
  const stalled: net.Socket[] = []
  const closed: Array<Promise<number>> = []
  for (let i = 0; i < 80; i++) {
    const s = net.connect(served.port, '127.0.0.1')
    s.on('error', () => {})
    const opened = Date.now()
    closed.push(new Promise(resolve => s.once('close', () => resolve(Date.now() - opened))))
    if (i === 0) s.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]))
    stalled.push(s)
  }
  t.teardown(() => { for (const s of stalled) s.destroy() })
  let started = Date.now()
  t.same(await dev.get(id1, sum), data, 'the connected client is served during the flood')
  t.ok(Date.now() - started < 1000, `within 1 s (${Date.now() - started} ms)`)
  const times = await Promise.all(closed)
  t.ok(Math.max(...times) < 3000, `every stalled handshake was closed (the slowest after ${Math.max(...times)} ms)`)
  t.ok(served.server.tlsFailures >= 1, `handshake failures counted (${served.server.tlsFailures})`)
  t.ok(served.server.dropped >= 80 - 60, `connections over the limit closed and counted (${served.server.dropped})`)
  started = Date.now()
  t.equal(await health(served.port), 200, 'a new client is served after the flood')
  t.ok(Date.now() - started < 1000, `within 1 s (${Date.now() - started} ms)`)

  // A huge header over TLS: 431, the connection closed; others go on.
  const answer = await new Promise<string>((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port: served.port, ca: fs.readFileSync(certs.ca), servername: 'localhost' }, () => {
      s.write(`GET /v1/health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\nX-Big: ${'a'.repeat(20 * 1024)}\r\n\r\n`)
    })
    let got = ''
    s.setEncoding('utf8')
    s.on('data', (d: string) => { got += d })
    s.on('error', () => resolve(got))
    s.on('close', () => resolve(got))
    setTimeout(() => reject(new Error('no answer to the huge header')), 5000).unref()
  })
  t.match(answer, /^HTTP\/1\.1 431/, 'a huge header is refused with 431')
  started = Date.now()
  t.equal(await health(served.port), 200, 'the server answers others after the huge header')
  t.ok(Date.now() - started < 1000, `within 1 s (${Date.now() - started} ms)`)
})
