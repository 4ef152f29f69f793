/**
 * The block server (`bslfs serve`, run as node dist/server/main.js) as a
 * child process on 127.0.0.1: the protocol's round trips with the token,
 * start-up refusals, the loopback token, and SIGTERM in the middle of a PUT.
 */
import t from 'tap'
import { randomBytes } from 'node:crypto'
import * as fsp from 'node:fs/promises'
import * as http from 'node:http'
import * as net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'
import { checksum } from '../src/checksum'
import { LocalDevice } from '../src/devices/local'
import { FsError } from '../src/errors'
import { httpErrorOf } from '../src/server/error-answer'
import { STATUS_TABLE, statusMeaning } from '../src/wire/errno-status'
import {
  HOST, Reply, bearer, eventually, makeTokenFile, request, runServerToFailure, sleep, startServer, tempDir
} from './helpers/server'

const objectPath = (dev: string, id: string): string => join(dev, 'objects', id.slice(-2), id)

t.test('round trips with the token: put, get, ranges, head, list, delete, space, health', async t => {
  const dir = await tempDir(t, { d2: null })
  const { file: tokenFile, token } = await makeTokenFile(dir)
  const d1 = join(dir, 'd1') // missing: created by the server
  const d2 = join(dir, 'd2') // empty: made a device by the server
  const srv = await startServer(['--listen', '127.0.0.1:0', '--device', `d1=${d1}`, '--device', `d2=${d2}`,
    '--token-file', tokenFile, '--name', 'test-srv'])
  t.teardown(() => srv.stop('SIGKILL'))
  t.match(srv.startLine, new RegExp(`^bslfs serve: listening on 127\\.0\\.0\\.1:\\d+, devices d1=${d1}, d2=${d2}, token from ${tokenFile}$`))
  t.equal(srv.token, token)
  const auth = bearer(token)
  const port = srv.port
  const obj = (dev: string, id: string): string => `/v1/devices/${dev}/objects/${id}`

  let r = await request(port, { path: '/v1/health', headers: auth })
  t.equal(r.status, 200)
  t.same(r.json, { ok: true, server: 'test-srv', devices: ['d1', 'd2'] })
  t.equal((await request(port, { method: 'HEAD', path: '/v1/health', headers: auth })).status, 200)

  r = await request(port, { path: '/v1/devices/d1/space', headers: auth })
  t.equal(r.status, 200)
  t.same(Object.keys(r.json).sort(), ['available', 'free', 'total'])
  t.ok(r.json.total > 0 && r.json.free <= r.json.total && r.json.available <= r.json.total, 'sane space numbers')

  // Put, put again (idempotent), an empty object, another device.
  const a = '00000000000000a1'
  const b = '00000000000000b2'
  const c = '00000000000000c3'
  const dataA = randomBytes(1024 * 1024 + 17)
  const sumA = checksum(dataA)
  const empty = Buffer.alloc(0)
  const put = async (dev: string, id: string, data: Buffer, sum = checksum(data)): Promise<Reply> =>
    await request(port, { method: 'PUT', path: obj(dev, id), headers: { ...auth, 'X-Bslfs-Checksum': String(sum) }, body: data })
  r = await put('d1', a, dataA)
  t.equal(r.status, 201, 'put')
  t.equal(r.body.length, 0)
  t.equal((await put('d1', a, dataA)).status, 201, 'the same put again')
  t.equal((await put('d1', b, empty)).status, 201, 'an empty object')
  const dataC = Buffer.from('on the second device')
  t.equal((await put('d2', c, dataC)).status, 201)
  t.same(await fsp.readFile(objectPath(d1, a)), dataA, 'stored under objects/<last two digits>/<id>')
  t.same(await fsp.readdir(join(d1, 'tmp')), [], 'no temp file left')

  // Get, whole and in ranges.
  const get = async (dev: string, id: string, sum: number, range?: string): Promise<Reply> =>
    await request(port, { path: obj(dev, id), headers: { ...auth, 'X-Bslfs-Checksum': String(sum), ...(range ? { Range: range } : {}) } })
  r = await get('d1', a, sumA)
  t.equal(r.status, 200)
  t.ok(r.body.equals(dataA), 'same bytes')
  t.equal(r.headers['x-bslfs-checksum'], String(sumA), 'checksum echoed')
  t.equal(r.headers['content-length'], String(dataA.length))
  t.equal(r.headers['content-type'], 'application/octet-stream')
  r = await get('d1', b, checksum(empty))
  t.equal(r.status, 200)
  t.equal(r.body.length, 0)
  r = await get('d2', c, checksum(dataC))
  t.equal(r.body.toString(), 'on the second device')
  t.equal((await get('d1', c, checksum(dataC))).status, 404, 'objects belong to their device')

  const size = dataA.length
  const ranges: Array<[string, number, number]> = [
    ['bytes=0-0', 0, 0],
    ['bytes=100-199', 100, 199],
    [`bytes=${size - 10}-`, size - 10, size - 1],
    ['bytes=-10', size - 10, size - 1],
    [`bytes=1000-${size * 4}`, 1000, size - 1],
    [`bytes=-${size * 2}`, 0, size - 1]
  ]
  for (const [h, start, end] of ranges) {
    r = await get('d1', a, sumA, h)
    t.equal(r.status, 206, h)
    t.equal(r.headers['content-range'], `bytes ${start}-${end}/${size}`, h)
    t.equal(r.headers['content-length'], String(end - start + 1), h)
    t.ok(r.body.equals(dataA.subarray(start, end + 1)), `${h}: the right bytes`)
  }
  r = await request(port, { path: obj('d1', a), headers: { ...auth, Range: 'bytes=5-9' } })
  t.equal(r.status, 206, 'a range needs no X-Bslfs-Checksum (the client checks chunk sums)')
  t.ok(r.body.equals(dataA.subarray(5, 10)))
  r = await request(port, { path: obj('d1', 'ffffffffffffffff'), headers: { ...auth, Range: 'bytes=0-9' } })
  t.equal(r.status, 404, 'a range of a missing object')
  t.equal(r.json.code, 'ENOENT')
  r = await get('d1', a, sumA, `bytes=${size}-`)
  t.equal(r.status, 416)
  t.equal(r.headers['content-range'], `bytes */${size}`)
  t.equal(r.json.code, 'ERANGE')

  // Head.
  r = await request(port, { method: 'HEAD', path: obj('d1', a), headers: auth })
  t.equal(r.status, 200)
  t.equal(r.headers['content-length'], String(size))
  t.equal(r.body.length, 0)
  r = await request(port, { method: 'HEAD', path: obj('d1', 'ffffffffffffffff'), headers: auth })
  t.equal(r.status, 404)
  t.equal(r.headers['x-bslfs-error'], 'ENOENT', 'a HEAD error carries its code in a header')
  r = await request(port, { method: 'HEAD', path: obj('nope', 'ffffffffffffffff'), headers: auth })
  t.equal(r.status, 404)
  t.equal(r.headers['x-bslfs-error'], 'ENODEV', 'an unknown device is told apart from a missing object')

  // Verified reads: the wrong checksum, or bytes rotted on disk, are EIO, never bytes.
  r = await get('d1', a, (sumA + 1) >>> 0)
  t.equal(r.status, 500)
  t.equal(r.json.code, 'EIO')
  const rotten = Buffer.from(dataC)
  rotten[3] ^= 0x20
  await fsp.writeFile(objectPath(d2, c), rotten)
  r = await get('d2', c, checksum(dataC))
  t.equal(r.status, 500, 'a corrupt object is refused whole')
  t.equal(r.json.code, 'EIO')
  t.match(r.json.error, /checksum mismatch/)
  // A range is read from disk alone, unverified: the client checks it against its chunk sums.
  r = await get('d2', c, checksum(dataC), 'bytes=0-5')
  t.equal(r.status, 206, 'a range of a corrupt object is sent as it is on disk')
  t.ok(r.body.equals(rotten.subarray(0, 6)), 'the rotted bytes, for the client to catch')
  r = await get('d1', 'ffffffffffffffff', 1)
  t.equal(r.status, 404)
  t.equal(r.json.code, 'ENOENT')

  // List (streamed), across more than one chunk of output.
  const many: string[] = []
  for (let i = 0; i < 1500; i++) {
    const id = (0x1000 + i).toString(16).padStart(16, '0')
    many.push(id)
    await fsp.mkdir(join(d2, 'objects', id.slice(-2)), { recursive: true })
    await fsp.writeFile(objectPath(d2, id), id)
  }
  r = await request(port, { path: '/v1/devices/d2/objects', headers: auth })
  t.equal(r.status, 200)
  t.match(r.headers['content-type'], /^text\/plain/)
  const listed = r.body.toString().split('\n')
  t.equal(listed.pop(), '', 'ends with a newline')
  t.same(listed.sort(), [...many, c].sort(), 'every object, once')
  r = await request(port, { path: '/v1/devices/d1/objects', headers: auth })
  t.same(r.body.toString().split('\n').filter(Boolean).sort(), [a, b])

  // Delete, idempotently.
  r = await request(port, { method: 'DELETE', path: obj('d1', a), headers: auth })
  t.equal(r.status, 204)
  t.equal((await request(port, { method: 'DELETE', path: obj('d1', a), headers: auth })).status, 204, 'again')
  t.equal((await request(port, { method: 'HEAD', path: obj('d1', a), headers: auth })).status, 404)
  r = await get('d1', a, sumA)
  t.equal(r.status, 404)
  t.equal(r.json.code, 'ENOENT')

  // Keep-alive: many requests, one connection.
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => agent.destroy())
  const ports = new Set<number>()
  for (let i = 0; i < 20; i++) {
    const rr = await new Promise<number>((resolve, reject) => {
      const req = http.request({ host: HOST, port, path: '/v1/health', headers: auth, agent }, (res) => {
        ports.add(res.socket.localPort!)
        res.resume()
        res.on('end', () => resolve(res.statusCode!))
      })
      req.on('error', reject)
      req.end()
    })
    t.equal(rr, 200)
  }
  t.equal(ports.size, 1, 'one connection for 20 requests')

  const st = await srv.stop()
  t.same(st, { code: 0, signal: null }, 'SIGTERM: exit 0')
  t.match(srv.stderr(), /SIGTERM/)
})

t.test('a loopback server without --token-file makes its own token, and keeps it', async t => {
  const dir = await tempDir(t)
  const d1 = join(dir, 'd1')
  let srv = await startServer(['--listen', '127.0.0.1:0', '--device', `d1=${d1}`, '--name', 'lo'])
  t.teardown(() => srv.stop('SIGKILL'))
  const tokenFile = join(d1, 'serve-token')
  t.match(srv.startLine, `token from ${tokenFile} (new; loopback only)`)
  const st = await fsp.stat(tokenFile)
  t.equal(st.mode & 0o777, 0o600, 'the token file is private')
  t.ok(srv.token.length >= 40, 'a long random token')
  t.equal((await request(srv.port, { path: '/v1/health', headers: bearer(srv.token) })).status, 200)
  t.equal((await request(srv.port, { path: '/v1/health' })).status, 401, 'still required')
  const first = srv.token
  t.same(await srv.stop(), { code: 0, signal: null })

  srv = await startServer(['--listen', '127.0.0.1:0', '--device', `d1=${d1}`, '--name', 'lo'])
  t.match(srv.startLine, `token from ${tokenFile} (loopback only)`)
  t.equal(srv.token, first, 'the same token after a restart')
  t.same(await srv.stop(), { code: 0, signal: null })

  const out = join(dir, 'elsewhere-token')
  srv = await startServer(['--listen', 'localhost:0', '--device', `d1=${d1}`, '--name', 'lo', '--token-out', out])
  t.match(srv.startLine, `token from ${out}`)
  t.equal((await fsp.stat(out)).mode & 0o777, 0o600)
  t.equal((await request(srv.port, { path: '/v1/health', headers: bearer(srv.token) })).json.server, 'lo')
  t.same(await srv.stop(), { code: 0, signal: null })
})

t.test('refuses to start, with a message that says what to do', async t => {
  const dir = await tempDir(t, { 'junk/file.txt': 'not a device' })
  const { file: tokenFile } = await makeTokenFile(dir)
  const d = join(dir, 'dev')
  const open = join(dir, 'open-token')
  await fsp.writeFile(open, 'x'.repeat(40), { mode: 0o644 })
  await fsp.chmod(open, 0o644)
  const empty = join(dir, 'empty-token')
  await fsp.writeFile(empty, '  \n', { mode: 0o600 })

  const cases: Array<[string, string[], RegExp]> = [
    ['0.0.0.0 without a token file', ['--listen', '0.0.0.0:0', '--device', `d1=${d}`], /refusing to listen on 0\.0\.0\.0:0 without --token-file.*--token-file/],
    ['[::] without a token file', ['--listen', '[::]:0', '--device', `d1=${d}`], /refusing to listen on \[::\]:0 without --token-file/],
    ['a LAN address without a token file', ['--listen', '192.0.2.1:7070', '--device', `d1=${d}`], /refusing to listen/],
    ['a token file open to others', ['--listen', '127.0.0.1:0', '--device', `d1=${d}`, '--token-file', open], /accessible by group or others \(mode 0644\).*chmod 600/],
    ['an empty token file', ['--listen', '127.0.0.1:0', '--device', `d1=${d}`, '--token-file', empty], /is empty/],
    ['a missing token file', ['--listen', '127.0.0.1:0', '--device', `d1=${d}`, '--token-file', join(dir, 'nope')], /does not exist/],
    ['no device', ['--listen', '127.0.0.1:0', '--token-file', tokenFile], /at least one --device/],
    ['a device without a path', ['--listen', '127.0.0.1:0', '--device', 'd1', '--token-file', tokenFile], /NAME=PATH/],
    ['a bad device name', ['--listen', '127.0.0.1:0', '--device', `../x=${d}`, '--token-file', tokenFile], /not a valid device name/],
    ['the same device twice', ['--listen', '127.0.0.1:0', '--device', `d1=${d}`, '--device', `d1=${d}2`, '--token-file', tokenFile], /given twice/],
    ['a directory that is not a device', ['--listen', '127.0.0.1:0', '--device', `d1=${join(dir, 'junk')}`, '--token-file', tokenFile], /not empty and is not a bslfs device/],
    ['a bad --listen', ['--listen', 'nonsense', '--device', `d1=${d}`, '--token-file', tokenFile], /HOST:PORT/],
    ['a port out of range', ['--listen', '127.0.0.1:70000', '--device', `d1=${d}`, '--token-file', tokenFile], /larger than 65535/],
    ['a bad --name', ['--listen', '127.0.0.1:0', '--device', `d1=${d}`, '--token-file', tokenFile, '--name', 'a/b'], /bad --name/],
    ['--token-out with --token-file', ['--listen', '127.0.0.1:0', '--device', `d1=${d}`, '--token-file', tokenFile, '--token-out', join(dir, 'x')], /--token-out/],
    ['a zero limit', ['--listen', '127.0.0.1:0', '--device', `d1=${d}`, '--token-file', tokenFile, '--max-object-bytes', '0'], /--max-object-bytes/]
  ]
  for (const [what, args, re] of cases) {
    const r = await runServerToFailure(args)
    t.equal(r.code, 1, `${what}: exit 1`)
    t.match(r.stderr, re, what)
    t.notMatch(r.stdout, /listening/, `${what}: never listened`)
  }
  t.notOk(await fsp.stat(join(dir, 'x')).catch(() => null), 'nothing written')

  // A device made for another server name is not taken over.
  const srv = await startServer(['--listen', '127.0.0.1:0', '--device', `d1=${d}`, '--token-file', tokenFile, '--name', 'one'])
  // ... nor can a second server take the port.
  const busy = await runServerToFailure(['--listen', `127.0.0.1:${srv.port}`, '--device', `d1=${d}`, '--token-file', tokenFile, '--name', 'one'])
  t.equal(busy.code, 1)
  t.match(busy.stderr, /cannot listen on 127\.0\.0\.1:\d+: the address is in use/)
  t.same(await srv.stop(), { code: 0, signal: null })
  const other = await runServerToFailure(['--listen', '127.0.0.1:0', '--device', `d1=${d}`, '--token-file', tokenFile, '--name', 'two'])
  t.equal(other.code, 1)
  t.match(other.stderr, /is bslfs device one:d1, expected two:d1/)
})

t.test('SIGTERM during a large PUT: the PUT completes, nothing new is accepted, exit 0', async t => {
  const dir = await tempDir(t)
  const { file: tokenFile, token } = await makeTokenFile(dir)
  const d1 = join(dir, 'd1')
  const srv = await startServer(['--listen', '127.0.0.1:0', '--device', `d1=${d1}`, '--token-file', tokenFile, '--name', 'term'])
  t.teardown(() => srv.stop('SIGKILL'))
  const port = srv.port

  // An idle keep-alive connection must not hold the exit up.
  const agent = new http.Agent({ keepAlive: true })
  t.teardown(() => agent.destroy())
  t.equal((await request(port, { path: '/v1/health', headers: bearer(token), agent })).status, 200)

  const id = '0000000000dead01'
  const data = randomBytes(48 * 1024 * 1024)
  const sum = checksum(data)
  const half = 8 * 1024 * 1024
  let sent = 0
  const answer = new Promise<{ status: number, headers: http.IncomingHttpHeaders }>((resolve, reject) => {
    const req = http.request({
      host: HOST,
      port,
      method: 'PUT',
      path: `/v1/devices/d1/objects/${id}`,
      headers: { ...bearer(token), 'X-Bslfs-Checksum': String(sum), 'Content-Length': data.length },
      agent: false
    }, (res) => {
      res.resume()
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers }))
    })
    req.on('error', reject)
    req.write(data.subarray(0, half))
    sent = half
    ;(async () => {
      // The request is in flight at the server: now the signal, then the rest of the body, slowly.
      await sleep(300)
      process.kill(srv.pid, 'SIGTERM')
      await sleep(300)
      for (let at = half; at < data.length; at += 4 * 1024 * 1024) {
        req.write(data.subarray(at, Math.min(at + 4 * 1024 * 1024, data.length)))
        sent = Math.min(at + 4 * 1024 * 1024, data.length)
        await sleep(50)
      }
      req.end()
    })().catch(reject)
  })

  await sleep(450)
  t.ok(sent < data.length, 'the signal came while the body was still arriving')
  // The listener is closed: new connections are refused.
  const refused = await new Promise<string>((resolve) => {
    const s = net.connect({ host: HOST, port })
    s.on('connect', () => {
      s.destroy()
      resolve('connected')
    })
    s.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'))
  })
  t.equal(refused, 'ECONNREFUSED', 'no new connections after SIGTERM')
  t.equal(srv.proc.exitCode, null, 'still running while the PUT is in flight')

  const res = await answer
  t.equal(res.status, 201, 'the PUT in flight completed')
  t.equal(res.headers.connection, 'close', 'and its connection is closed after it')
  const exitedIn = Date.now()
  const st = await srv.stop('SIGTERM', 15000)
  t.same(st, { code: 0, signal: null }, 'exit 0')
  t.ok(Date.now() - exitedIn < 3000, 'promptly, although an idle keep-alive connection was open')

  const dev = await LocalDevice.open(d1, { server: 'term', device: 'd1' })
  t.ok((await dev.get(id, sum)).equals(data), 'the object is whole and verifies')
  t.same(await fsp.readdir(join(d1, 'tmp')), [])
  await dev.close()
})

t.test('SIGTERM with nothing in flight exits at once', async t => {
  const dir = await tempDir(t)
  const { file: tokenFile } = await makeTokenFile(dir)
  const srv = await startServer(['--listen', '127.0.0.1:0', '--device', `d1=${join(dir, 'd1')}`, '--token-file', tokenFile, '--name', 'quick'])
  t.teardown(() => srv.stop('SIGKILL'))
  const started = Date.now()
  t.same(await srv.stop(), { code: 0, signal: null })
  t.ok(Date.now() - started < 3000)
  t.ok(await eventually(() => srv.proc.exitCode === 0, 1000))
})

t.test('concurrent puts and gets beyond the memory budget wait their turn, and all succeed', async t => {
  const dir = await tempDir(t)
  const { file: tokenFile, token } = await makeTokenFile(dir)
  const srv = await startServer(['--listen', '127.0.0.1:0', '--device', `d1=${join(dir, 'd1')}`, '--token-file', tokenFile,
    '--name', 'budget', '--max-buffered-bytes', String(8 * 1024 * 1024)])
  t.teardown(() => srv.stop('SIGKILL'))
  const objects = Array.from({ length: 16 }, (_, i) => ({ id: (0xb000 + i).toString(16).padStart(16, '0'), data: randomBytes(4 * 1024 * 1024) }))
  const puts = await Promise.all(objects.map(async o => (await request(srv.port, {
    method: 'PUT', path: `/v1/devices/d1/objects/${o.id}`, headers: { ...bearer(token), 'X-Bslfs-Checksum': String(checksum(o.data)) }, body: o.data, timeoutMs: 60000
  })).status))
  t.same(puts, objects.map(() => 201), 'every put')
  const gets = await Promise.all(objects.map(async o => {
    const r = await request(srv.port, { path: `/v1/devices/d1/objects/${o.id}`, headers: { ...bearer(token), 'X-Bslfs-Checksum': String(checksum(o.data)) }, timeoutMs: 60000 })
    return r.status === 200 && r.body.equals(o.data)
  }))
  t.same(gets, objects.map(() => true), 'every get, right bytes')
  const status = await fsp.readFile(`/proc/${srv.pid}/status`, 'utf8')
  const peak = Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1]) * 1024
  t.ok(peak < 250 * 1024 * 1024, `peak RSS ${(peak / 1048576).toFixed(0)} MiB after 64 MiB of objects in and out at once`)
  t.same(await srv.stop(), { code: 0, signal: null })
})

t.test('a full disk is 507 ENOSPC, and leaves nothing behind', async t => {
  const dir = await tempDir(t)
  // The small disk lives outside the test dir, so that tap's clean-up never meets a mount point.
  const mnt = await fsp.mkdtemp(join(tmpdir(), 'bslfs-full-'))
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', mnt], { encoding: 'utf8' })
  // Root can mount here (the FUSE tests need that too), so a failure to mount is a failure, not a skip.
  if (!t.equal(m.status, 0, `mount a 2 MiB tmpfs (${(m.stderr || m.error?.message || '').trim()})`)) {
    await fsp.rmdir(mnt)
    return
  }
  const { file: tokenFile, token } = await makeTokenFile(dir)
  const dev = join(mnt, 'd1')
  const srv = await startServer(['--listen', '127.0.0.1:0', '--device', `d1=${dev}`, '--token-file', tokenFile, '--name', 'full'])
  try {
    const put = async (id: string, data: Buffer): Promise<Reply> => await request(srv.port, {
      method: 'PUT', path: `/v1/devices/d1/objects/${id}`, headers: { ...bearer(token), 'X-Bslfs-Checksum': String(checksum(data)) }, body: data
    })
    const first = randomBytes(1024 * 1024)
    t.equal((await put('0000000000000f01', first)).status, 201)
    const r = await put('0000000000000f02', randomBytes(1536 * 1024))
    t.equal(r.status, 507, 'disk full: 507')
    t.equal(r.json.code, 'ENOSPC')
    t.same(await fsp.readdir(join(dev, 'tmp')), [], 'no temp file left')
    t.equal((await request(srv.port, { method: 'HEAD', path: '/v1/devices/d1/objects/0000000000000f02', headers: bearer(token) })).status, 404)
    const back = await request(srv.port, { path: '/v1/devices/d1/objects/0000000000000f01', headers: { ...bearer(token), 'X-Bslfs-Checksum': String(checksum(first)) } })
    t.ok(back.body.equals(first), 'what was there is intact')
    const space = await request(srv.port, { path: '/v1/devices/d1/space', headers: bearer(token) })
    t.equal(space.json.total, 2 * 1024 * 1024, 'space reports the small disk')
    t.same(await srv.stop(), { code: 0, signal: null })
  } finally {
    await srv.stop('SIGKILL')
    spawnSync('umount', [mnt])
    await fsp.rmdir(mnt).catch(() => {})
  }
})

t.test('the status table: what a device error is answered with, and what a client makes of it', async t => {
  const answer = (err: unknown): [number, string] => {
    const e = httpErrorOf(err)
    return [e.status, e.code]
  }
  t.same(answer(new FsError('ENOENT', 'x')), [404, 'ENOENT'])
  t.same(answer(new FsError('EIO', 'missing', { cause: Object.assign(new Error('x'), { code: 'ENOENT' }), fault: 'missing' })), [404, 'ENOENT'], 'a missing copy')
  t.same(answer(new FsError('ENOSPC', 'x')), [507, 'ENOSPC'])
  t.same(answer(new FsError('EDQUOT', 'x')), [507, 'ENOSPC'])
  t.same(answer(new FsError('EINVAL', 'x')), [400, 'EINVAL'])
  for (const code of ['EACCES', 'EPERM', 'EROFS'] as const) t.same(answer(new FsError(code, 'x')), [500, code])
  t.same(answer(new FsError('EIO', 'x', { fault: 'corrupt' })), [500, 'EIO'], 'a corrupt copy')
  t.same(answer(new FsError('EBUSY', 'x')), [500, 'EIO'], 'a code the table does not name')
  t.same(answer(new FsError('EIO', 'x', { fault: 'transient' })), [503, 'EAGAIN'], 'a transient failure: the client may ask again')
  t.same(answer(new Error('bug')), [500, 'EIO'])

  t.same(statusMeaning(503, 'EAGAIN'), { errno: 'EIO', retry: true, fault: 'transient' })
  t.same(statusMeaning(500, 'EIO'), { errno: 'EIO', retry: false, fault: undefined }, 'a 5xx EIO is final (the server found its copy bad)')
  t.same(statusMeaning(502, undefined), { errno: 'EIO', retry: true, fault: undefined }, 'an unlisted 5xx reads as 500')
  t.same(statusMeaning(418, undefined), { errno: 'EINVAL', retry: false, fault: undefined }, 'an unlisted 4xx reads as 400')
  t.same(statusMeaning(404, 'ENODEV'), { errno: 'ENODEV', retry: false, fault: undefined })
  t.same(statusMeaning(507, 'ENOSPC'), { errno: 'ENOSPC', retry: false, fault: undefined })
  t.equal(statusMeaning(302, undefined), undefined, 'not an error status')
  // Every device error the server answers with comes back to a client as the same kind of failure.
  for (const row of STATUS_TABLE) {
    for (const code of row.fromDevice ?? []) {
      const e = httpErrorOf(new FsError(code, 'x'))
      t.equal(e.status, row.status, `${code} is answered ${row.status}`)
      t.ok(row.codes.includes(e.code), `${code}: the answer names a code of its row (${e.code})`)
    }
  }
})

t.test('POST with X-Bslfs-Copy-From: the server copies an object on its device (copy_file_range of whole blocks)', async t => {
  const dir = await tempDir(t, {})
  const { file: tokenFile, token } = await makeTokenFile(dir)
  const d1 = join(dir, 'd1')
  const srv = await startServer(['--listen', '127.0.0.1:0', '--device', `d1=${d1}`, '--token-file', tokenFile])
  t.teardown(() => srv.stop('SIGKILL'))
  const auth = bearer(token)
  const obj = (id: string): string => `/v1/devices/d1/objects/${id}`
  const from = '00000000000000f1'
  const to = '00000000000000f2'
  const data = randomBytes(1024 * 1024)
  const sum = checksum(data)
  t.equal((await request(srv.port, { method: 'PUT', path: obj(from), headers: { ...auth, 'X-Bslfs-Checksum': String(sum) }, body: data })).status, 201, 'the source put')
  const copy = async (headers: Record<string, string>, id = to): Promise<Reply> => await request(srv.port, { method: 'POST', path: obj(id), headers: { ...auth, ...headers } })
  const r = await copy({ 'X-Bslfs-Copy-From': from, 'X-Bslfs-Checksum': String(sum) })
  t.equal(r.status, 201, 'copied')
  t.same(await fsp.readFile(objectPath(d1, to)), data, 'the new object holds the bytes')
  t.same(await fsp.readFile(objectPath(d1, from)), data, 'the source is untouched')
  const bad = await copy({ 'X-Bslfs-Copy-From': from, 'X-Bslfs-Checksum': String((sum + 1) >>> 0) }, '00000000000000f3')
  t.ok(bad.status >= 400, `a wrong checksum is refused (${bad.status} ${bad.json?.code})`)
  await t.rejects(fsp.stat(objectPath(d1, '00000000000000f3')), { code: 'ENOENT' }, '... and stores nothing')
  const missing = await copy({ 'X-Bslfs-Copy-From': '0000000000000099', 'X-Bslfs-Checksum': '1' }, '00000000000000f4')
  t.equal(missing.status, 404, 'a missing source: 404')
  const noFrom = await copy({ 'X-Bslfs-Checksum': '1' })
  t.equal(noFrom.status, 400, 'no X-Bslfs-Copy-From: 400')
  t.match(noFrom.json.error, /X-Bslfs-Copy-From/, '... saying what is missing')
  const badFrom = await copy({ 'X-Bslfs-Copy-From': '../../etc/passwd', 'X-Bslfs-Checksum': '1' })
  t.equal(badFrom.status, 400, 'a source that is not an object id: 400')

  // The client side: RemoteDevice.copy against this server.
  const { RemoteDevice } = await import('../src/devices/remote')
  const dev = new RemoteDevice({ server: 's', device: 'd1', url: `http://127.0.0.1:${srv.port}`, token })
  t.teardown(() => dev.close())
  await dev.copy('00000000000000f1', '00000000000000f5', sum)
  await dev.sync()
  t.same(await dev.get('00000000000000f5', sum), data, 'RemoteDevice.copy: the copy reads back verified')
  await t.rejects(dev.copy('0000000000000098', '00000000000000f6', 1), FsError, 'RemoteDevice.copy of a missing object: an FsError')
})
