/**
 * Hostile input against a live block server: unauthenticated, malformed,
 * traversal, oversized, slow, truncated and pipelined requests, each answer
 * checked. Afterwards the server must still be healthy, hold no more file
 * descriptors than before, have created no file outside its devices, and
 * have nothing half-written inside them.
 */
import t from 'tap'
import { randomBytes } from 'node:crypto'
import * as fsp from 'node:fs/promises'
import * as http from 'node:http'
import * as net from 'node:net'
import { join } from 'node:path'
import { checksum } from '../src/checksum'
import {
  HOST, RawResponse, Reply, bearer, eventually, fdCount, listTree, makeTokenFile, parseResponses, raw, request, sleep,
  startServer, tempDir
} from './helpers/server'

const HEADERS_TIMEOUT_S = 1.5
const REQUEST_TIMEOUT_S = 4
const IDLE_TIMEOUT_S = 3

t.test('hostile requests', async t => {
  const parent = await tempDir(t)
  const { file: tokenFile, token } = await makeTokenFile(parent)
  const d1 = join(parent, 'd1')
  const d2 = join(parent, 'd2')
  const srv = await startServer(['--listen', '127.0.0.1:0', '--device', `d1=${d1}`, '--device', `d2=${d2}`,
    '--token-file', tokenFile, '--name', 'hostile',
    '--headers-timeout', String(HEADERS_TIMEOUT_S), '--request-timeout', String(REQUEST_TIMEOUT_S),
    '--idle-timeout', String(IDLE_TIMEOUT_S)])
  t.teardown(() => srv.stop('SIGKILL'))
  const port = srv.port
  const auth = bearer(token)
  const AUTH = `Authorization: Bearer ${token}\r\n`

  // Objects the server legitimately holds: id → checksum. Anything else found later is a leak.
  const known = new Map<string, { dev: string, sum: number }>()
  const goodId = '0123456789abcdef'
  const goodData = randomBytes(64 * 1024)
  const goodSum = checksum(goodData)
  const bigId = '00000000000b1900'
  const bigData = randomBytes(40 * 1024 * 1024)
  for (const [id, data] of [[goodId, goodData], [bigId, bigData]] as const) {
    const r = await request(port, { method: 'PUT', path: `/v1/devices/d1/objects/${id}`, headers: { ...auth, 'X-Bslfs-Checksum': String(checksum(data)) }, body: data })
    t.equal(r.status, 201, 'setup put')
    known.set(id, { dev: d1, sum: checksum(data) })
  }
  t.equal((await request(port, { path: '/v1/health', headers: auth })).status, 200)
  await sleep(300)
  const fdsBefore = fdCount(srv.pid)
  const treeBefore = await listTree(parent, [d1, d2])

  const kinds = new Set<string>()
  /** Checks an answer's status and JSON error code. */
  const expectError = (kind: string, r: Reply | RawResponse | undefined, status: number, code: string): void => {
    kinds.add(kind)
    if (!r) {
      t.fail(`${kind}: no answer`)
      return
    }
    t.equal(r.status, status, `${kind}: status ${status}`)
    t.equal(r.json?.code, code, `${kind}: code ${code}`)
    t.type(r.json?.error, 'string', `${kind}: an error message`)
    t.equal(r.headers['x-bslfs-error'], code, `${kind}: X-Bslfs-Error`)
  }
  const first = (data: Buffer): RawResponse | undefined => parseResponses(data)[0]
  const absent = async (dev: string, id: string): Promise<boolean> =>
    (await request(port, { method: 'HEAD', path: `/v1/devices/${dev}/objects/${id}`, headers: auth })).status === 404
  const get = async (path: string, headers: Record<string, string> = {}): Promise<Reply> =>
    await request(port, { path, headers: { ...auth, 'X-Bslfs-Checksum': String(goodSum), ...headers } })

  await t.test('authentication', async t => {
    expectError('no token', await request(port, { path: '/v1/health' }), 401, 'EACCES')
    const r = await request(port, { path: '/v1/health' })
    t.match(r.headers['www-authenticate'], /^Bearer/)
    expectError('wrong token', await request(port, { path: '/v1/health', headers: bearer('x' + token.slice(1)) }), 401, 'EACCES')
    expectError('token in the Basic scheme', await request(port, { path: '/v1/health', headers: { Authorization: `Basic ${Buffer.from(`bslfs:${token}`).toString('base64')}` } }), 401, 'EACCES')
    expectError('bare token, no scheme', await request(port, { path: '/v1/health', headers: { Authorization: token } }), 401, 'EACCES')
    expectError('Bearer without a token', await request(port, { path: '/v1/health', headers: { Authorization: 'Bearer' } }), 401, 'EACCES')
    expectError('token with a suffix', await request(port, { path: '/v1/health', headers: bearer(token + 'x') }), 401, 'EACCES')
    expectError('a prefix of the token', await request(port, { path: '/v1/health', headers: bearer(token.slice(0, 10)) }), 401, 'EACCES')
    expectError('token in the query string', await request(port, { path: `/v1/health?token=${token}` }), 401, 'EACCES')
    expectError('token in another header', await request(port, { path: '/v1/health', headers: { 'X-Token': token } }), 401, 'EACCES')
    const two = await raw(port, `GET /v1/health HTTP/1.1\r\nHost: x\r\n${AUTH}Authorization: Bearer wrong\r\nConnection: close\r\n\r\n`)
    expectError('two Authorization headers', first(two.data), 401, 'EACCES')
    const binary = await raw(port, Buffer.concat([Buffer.from('GET /v1/health HTTP/1.1\r\nAuthorization: Bearer '), Buffer.from([0xff, 0xfe, 0x80]), Buffer.from('\r\nConnection: close\r\n\r\n')]))
    expectError('non-ASCII token', first(binary.data), 401, 'EACCES')
    // Touches nothing: an unauthenticated PUT stores nothing, an unauthenticated DELETE deletes nothing.
    const id = '00000000000a0001'
    const data = Buffer.from('unauthenticated')
    expectError('PUT without the token', await request(port, { method: 'PUT', path: `/v1/devices/d1/objects/${id}`, headers: { 'X-Bslfs-Checksum': String(checksum(data)) }, body: data }), 401, 'EACCES')
    t.ok(await absent('d1', id), 'nothing stored')
    expectError('DELETE with a wrong token', await request(port, { method: 'DELETE', path: `/v1/devices/d1/objects/${goodId}`, headers: bearer('nope') }), 401, 'EACCES')
    t.equal((await get(`/v1/devices/d1/objects/${goodId}`)).status, 200, 'nothing deleted')
    const bigUnauth = await raw(port, `PUT /v1/devices/d1/objects/${id} HTTP/1.1\r\nAuthorization: Bearer wrong\r\nX-Bslfs-Checksum: 1\r\nContent-Length: ${1024 * 1024}\r\n\r\n${'z'.repeat(1000)}`, { timeoutMs: 5000 })
    expectError('an unauthenticated 1 MiB PUT', first(bigUnauth.data), 401, 'EACCES')
    t.ok(bigUnauth.closedByServer && bigUnauth.ms < 3000, 'closed at once: the body is not read for an unauthenticated client')
    t.ok(await absent('d1', id), 'nothing stored')
    expectError('no token on an unknown route', await request(port, { path: '/etc/passwd' }), 401, 'EACCES')
    // The scheme name is case-insensitive (RFC 9110).
    t.equal((await request(port, { path: '/v1/health', headers: { Authorization: `bearer ${token}` } })).status, 200, 'lower-case scheme accepted')
  })

  await t.test('object ids and device names', async t => {
    const badIds: Array<[string, string]> = [
      ['id ..', '..'],
      ['id ../x', '../x'],
      ['id ../../etc/passwd', '../../../../etc/passwd'],
      ['id %2e%2e', '%2e%2e'],
      ['id with %2F', '..%2F..%2Fetc%2Fpasswd'],
      ['id a/b', 'a/b'],
      ['id with %00', `${goodId}%00`],
      ['id with %00 inside', '0123456%0089abcdef'],
      ['upper-case hex id', goodId.toUpperCase()],
      ['15-digit id', goodId.slice(1)],
      ['17-digit id', goodId + '0'],
      ['empty id', ''],
      ['overlong id', 'a'.repeat(1000)],
      ['percent-encoded hex id', `%30${goodId.slice(1)}`],
      ['id with a query', `${goodId.slice(1)}?x=0`],
      ['non-hex id', 'ghijklmnopqrstuv'],
      ['id with a sign', '+123456789abcdef'],
      ['id ending in a slash', `${goodId}/`]
    ]
    for (const [kind, id] of badIds) {
      expectError(kind, await get(`/v1/devices/d1/objects/${id}`), 400, 'EINVAL')
    }
    // The same ids on PUT, DELETE and HEAD never touch the disk.
    const data = Buffer.from('traversal')
    for (const id of ['..', '../x', '%2e%2e%2fx', `${goodId}%00`, 'a/b']) {
      expectError(`PUT to id ${id}`, await request(port, { method: 'PUT', path: `/v1/devices/d1/objects/${id}`, headers: { ...auth, 'X-Bslfs-Checksum': String(checksum(data)) }, body: data }), 400, 'EINVAL')
      expectError(`DELETE of id ${id}`, await request(port, { method: 'DELETE', path: `/v1/devices/d1/objects/${id}`, headers: auth }), 400, 'EINVAL')
    }
    const head = await request(port, { method: 'HEAD', path: '/v1/devices/d1/objects/..', headers: auth })
    t.equal(head.status, 400, 'HEAD of a bad id: 400')
    const nul = await raw(port, `GET /v1/devices/d1/objects/${goodId}\0 HTTP/1.1\r\n${AUTH}\r\n`)
    expectError('a raw NUL byte in the target', first(nul.data), 400, 'EINVAL')
    t.ok(nul.closedByServer, 'and the connection is closed')
    const long = await get(`/v1/devices/d1/objects/${'0'.repeat(5000)}`)
    expectError('a target over 4096 characters', long, 414, 'ENAMETOOLONG')

    expectError('unknown device', await get(`/v1/devices/nope/objects/${goodId}`), 404, 'ENODEV')
    expectError('unknown device, space', await get('/v1/devices/nope/space'), 404, 'ENODEV')
    expectError('device ..', await get(`/v1/devices/../objects/${goodId}`), 400, 'EINVAL')
    expectError('device %2e%2e', await get(`/v1/devices/%2e%2e/objects/${goodId}`), 400, 'EINVAL')
    expectError('device .hidden', await get('/v1/devices/.hidden/objects'), 400, 'EINVAL')
    expectError('device -d1', await get('/v1/devices/-d1/space'), 400, 'EINVAL')
    expectError('device with %2F', await get('/v1/devices/d1%2F..%2Fd2/objects'), 400, 'EINVAL')
    expectError('overlong device name', await get(`/v1/devices/${'d'.repeat(65)}/space`), 400, 'EINVAL')
    expectError('empty device name', await get(`/v1/devices//objects/${goodId}`), 400, 'EINVAL')
  })

  await t.test('checksums', async t => {
    expectError('GET without X-Bslfs-Checksum', await request(port, { path: `/v1/devices/d1/objects/${goodId}`, headers: auth }), 400, 'EINVAL')
    for (const [kind, v] of [['non-numeric checksum', 'abc'], ['negative checksum', '-1'], ['checksum over 32 bits', '4294967296'],
      ['hex checksum', '0x1f'], ['checksum with leading zeros', '0012'], ['fractional checksum', '1.5'], ['empty checksum', ''],
      ['overlong checksum', '9'.repeat(200)]] as const) {
      expectError(kind, await get(`/v1/devices/d1/objects/${goodId}`, { 'X-Bslfs-Checksum': v }), 400, 'EINVAL')
    }
    const twice = await raw(port, `GET /v1/devices/d1/objects/${goodId} HTTP/1.1\r\n${AUTH}X-Bslfs-Checksum: ${goodSum}\r\nX-Bslfs-Checksum: ${goodSum}\r\nConnection: close\r\n\r\n`)
    expectError('two checksum headers', first(twice.data), 400, 'EINVAL')
    expectError('a wrong checksum on GET', await get(`/v1/devices/d1/objects/${goodId}`, { 'X-Bslfs-Checksum': String((goodSum + 1) >>> 0) }), 500, 'EIO')

    const id = '00000000000c0001'
    const data = randomBytes(10000)
    expectError('PUT without X-Bslfs-Checksum', await request(port, { method: 'PUT', path: `/v1/devices/d1/objects/${id}`, headers: auth, body: data }), 400, 'EINVAL')
    expectError('PUT with a bad checksum', await request(port, { method: 'PUT', path: `/v1/devices/d1/objects/${id}`, headers: { ...auth, 'X-Bslfs-Checksum': 'zzz' }, body: data }), 400, 'EINVAL')
    expectError('PUT checksum mismatch', await request(port, { method: 'PUT', path: `/v1/devices/d1/objects/${id}`, headers: { ...auth, 'X-Bslfs-Checksum': String((checksum(data) ^ 1) >>> 0) }, body: data }), 422, 'EBADMSG')
    t.ok(await absent('d1', id), 'nothing left behind')
    t.same(await fsp.readdir(join(d1, 'tmp')), [], 'no temp file')
    // A mismatched overwrite of an existing object leaves the old one intact.
    const other = randomBytes(100)
    expectError('mismatched overwrite', await request(port, { method: 'PUT', path: `/v1/devices/d1/objects/${goodId}`, headers: { ...auth, 'X-Bslfs-Checksum': String(goodSum) }, body: other }), 422, 'EBADMSG')
    const r = await get(`/v1/devices/d1/objects/${goodId}`)
    t.equal(r.status, 200)
    t.ok(r.body.equals(goodData), 'the old object is intact')

    // X-Bslfs-Durable: 0 stores without waiting for the disk; a sync makes it durable.
    const later = '00000000000c0002'
    const sum = String(checksum(data))
    for (const v of ['2', 'yes', '', '00']) {
      expectError(`X-Bslfs-Durable: ${JSON.stringify(v)}`, await request(port, { method: 'PUT', path: `/v1/devices/d1/objects/${later}`, headers: { ...auth, 'X-Bslfs-Checksum': sum, 'X-Bslfs-Durable': v }, body: data }), 400, 'EINVAL')
    }
    t.ok(await absent('d1', later), 'a refused durability header stores nothing')
    const stored = await request(port, { method: 'PUT', path: `/v1/devices/d1/objects/${later}`, headers: { ...auth, 'X-Bslfs-Checksum': sum, 'X-Bslfs-Durable': '0' }, body: data })
    t.equal(stored.status, 201, 'a store (durable later) is 201')
    known.set(later, { dev: d1, sum: checksum(data) })
    const back = await get(`/v1/devices/d1/objects/${later}`, { 'X-Bslfs-Checksum': sum })
    t.ok(back.status === 200 && back.body.equals(data), 'and reads back at once')
    const synced = await request(port, { method: 'POST', path: '/v1/devices/d1/sync', headers: auth })
    t.equal(synced.status, 204, 'POST …/sync: 204')
    expectError('sync of an unknown device', await request(port, { method: 'POST', path: '/v1/devices/nope/sync', headers: auth }), 404, 'ENODEV')
    const getSync = await request(port, { method: 'GET', path: '/v1/devices/d1/sync', headers: auth })
    expectError('GET on sync', getSync, 405, 'EOPNOTSUPP')
    t.equal(getSync.headers.allow, 'POST')
    expectError('sync without the token', await request(port, { method: 'POST', path: '/v1/devices/d1/sync' }), 401, 'EACCES')
  })

  await t.test('bodies', async t => {
    const id = '00000000000d0001'
    // Oversized: answered from the headers alone, without reading a byte of the body.
    const over = await raw(port, `PUT /v1/devices/d1/objects/${id} HTTP/1.1\r\n${AUTH}X-Bslfs-Checksum: 1\r\nContent-Length: ${64 * 1024 * 1024 + 1}\r\n\r\n`, { timeoutMs: 5000 })
    expectError('Content-Length over the limit', first(over.data), 413, 'EFBIG')
    t.ok(over.closedByServer, 'the connection is closed (the body is never read)')
    t.ok(over.ms < 3000, 'at once')
    const huge = await raw(port, `PUT /v1/devices/d1/objects/${id} HTTP/1.1\r\n${AUTH}X-Bslfs-Checksum: 1\r\nContent-Length: 999999999999999\r\n\r\n`, { timeoutMs: 5000 })
    expectError('an absurd Content-Length', first(huge.data), 413, 'EFBIG')
    const cont = await raw(port, `PUT /v1/devices/d1/objects/${id} HTTP/1.1\r\n${AUTH}X-Bslfs-Checksum: 1\r\nContent-Length: ${100 * 1024 * 1024}\r\nExpect: 100-continue\r\n\r\n`, { timeoutMs: 5000 })
    const contAnswers = parseResponses(cont.data)
    t.equal(contAnswers.length, 1, 'no 100 Continue for a body that will be refused')
    expectError('oversized with Expect: 100-continue', contAnswers[0], 413, 'EFBIG')
    const expectOther = await raw(port, `GET /v1/health HTTP/1.1\r\n${AUTH}Expect: teapot\r\nConnection: close\r\n\r\n`)
    expectError('an unknown Expect', first(expectOther.data), 417, 'EINVAL')
    // Expect: 100-continue for a good PUT: 100, then the body, then 201.
    const small = Buffer.from('continue me')
    const okCont = await new Promise<RawResponse[]>((resolve) => {
      const s = net.connect({ host: HOST, port })
      let got = Buffer.alloc(0)
      s.on('connect', () => s.write(`PUT /v1/devices/d2/objects/${id} HTTP/1.1\r\n${AUTH}X-Bslfs-Checksum: ${checksum(small)}\r\nContent-Length: ${small.length}\r\nExpect: 100-continue\r\n\r\n`))
      s.on('data', (c: Buffer) => {
        got = Buffer.concat([got, c])
        const rs = parseResponses(got)
        if (rs.length === 1 && rs[0].status === 100) s.write(small)
        if (rs.length >= 2) {
          s.destroy()
          resolve(rs)
        }
      })
      s.on('close', () => resolve(parseResponses(got)))
      setTimeout(() => s.destroy(), 5000)
    })
    t.same(okCont.map(r => r.status), [100, 201], 'Expect: 100-continue on a good PUT')
    known.set(id, { dev: d2, sum: checksum(small) })

    const chunked = await raw(port, `PUT /v1/devices/d1/objects/${id} HTTP/1.1\r\n${AUTH}X-Bslfs-Checksum: 1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n`, { timeoutMs: 5000 })
    expectError('chunked PUT, no Content-Length', first(chunked.data), 411, 'EINVAL')
    t.ok(chunked.closedByServer, 'closed: an unbounded body is not read')
    const none = await raw(port, `PUT /v1/devices/d1/objects/${id} HTTP/1.1\r\n${AUTH}X-Bslfs-Checksum: 1\r\nConnection: close\r\n\r\n`)
    expectError('PUT without Content-Length', first(none.data), 411, 'EINVAL')
    const badLength = await raw(port, `PUT /v1/devices/d1/objects/${id} HTTP/1.1\r\n${AUTH}X-Bslfs-Checksum: 1\r\nContent-Length: abc\r\n\r\n`)
    expectError('non-numeric Content-Length', first(badLength.data), 400, 'EINVAL')
    const negLength = await raw(port, `PUT /v1/devices/d1/objects/${id} HTTP/1.1\r\n${AUTH}X-Bslfs-Checksum: 1\r\nContent-Length: -5\r\n\r\n`)
    expectError('negative Content-Length', first(negLength.data), 400, 'EINVAL')
    const both = await raw(port, `PUT /v1/devices/d1/objects/${id} HTTP/1.1\r\n${AUTH}X-Bslfs-Checksum: 1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`)
    expectError('Content-Length and Transfer-Encoding', first(both.data), 400, 'EINVAL')
    const twoLengths = await raw(port, `PUT /v1/devices/d1/objects/${id} HTTP/1.1\r\n${AUTH}X-Bslfs-Checksum: 1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!`)
    expectError('two Content-Lengths', first(twoLengths.data), 400, 'EINVAL')

    // More bytes than Content-Length: the excess is the next request, and it is garbage.
    const exact = Buffer.from('exactly this')
    const longer = await raw(port, Buffer.concat([
      Buffer.from(`PUT /v1/devices/d2/objects/00000000000d0002 HTTP/1.1\r\n${AUTH}X-Bslfs-Checksum: ${checksum(exact)}\r\nContent-Length: ${exact.length}\r\n\r\n`),
      exact, Buffer.from('\0\0 and then some garbage\r\n\r\n')]))
    const longerAnswers = parseResponses(longer.data)
    t.equal(longerAnswers[0]?.status, 201, 'the declared body is stored')
    expectError('bytes past Content-Length', longerAnswers[1], 400, 'EINVAL')
    known.set('00000000000d0002', { dev: d2, sum: checksum(exact) })
    t.equal((await request(port, { method: 'HEAD', path: '/v1/devices/d2/objects/00000000000d0002', headers: auth })).headers['content-length'], String(exact.length))

    // Truncated: half the body, then the client vanishes.
    const whole = randomBytes(1024 * 1024)
    const truncId = '00000000000d0003'
    await new Promise<void>((resolve) => {
      const s = net.connect({ host: HOST, port })
      s.on('connect', () => {
        s.write(`PUT /v1/devices/d1/objects/${truncId} HTTP/1.1\r\n${AUTH}X-Bslfs-Checksum: ${checksum(whole)}\r\nContent-Length: ${whole.length}\r\n\r\n`)
        s.write(whole.subarray(0, whole.length / 2), () => setTimeout(() => {
          s.destroy()
          resolve()
        }, 200))
      })
      s.on('error', () => resolve())
    })
    kinds.add('truncated body')
    await sleep(200)
    t.ok(await absent('d1', truncId), 'truncated body: no object')
    t.same(await fsp.readdir(join(d1, 'tmp')), [], 'truncated body: no temp file')
    // Truncated by a half-close: the request can never complete.
    const halfBody = await raw(port, Buffer.concat([Buffer.from(`PUT /v1/devices/d1/objects/${truncId} HTTP/1.1\r\n${AUTH}X-Bslfs-Checksum: ${checksum(whole)}\r\nContent-Length: ${whole.length}\r\n\r\n`), whole.subarray(0, 1000)]), { end: true, timeoutMs: 8000 })
    kinds.add('body cut short by a half-close')
    t.ok(halfBody.closedByServer, 'half-closed mid-body: the server closes too')
    t.ok(parseResponses(halfBody.data).every(r => r.status !== 201), 'and stores nothing')
    t.ok(await absent('d1', truncId), 'no object')
    // Stalled: a body that stops arriving is cut off by the request timeout.
    const stalled = await raw(port, Buffer.concat([Buffer.from(`PUT /v1/devices/d1/objects/${truncId} HTTP/1.1\r\n${AUTH}X-Bslfs-Checksum: ${checksum(whole)}\r\nContent-Length: ${whole.length}\r\n\r\n`), whole.subarray(0, 1000)]), { timeoutMs: (REQUEST_TIMEOUT_S + IDLE_TIMEOUT_S + 4) * 1000 })
    kinds.add('stalled body')
    t.ok(stalled.closedByServer, `a stalled body is cut off (after ${stalled.ms} ms)`)
    const stalledAnswer = first(stalled.data)
    if (stalledAnswer) expectError('stalled body', stalledAnswer, 408, 'ETIMEDOUT')
    t.ok(await absent('d1', truncId), 'no object')
    t.same(await fsp.readdir(join(d1, 'tmp')), [], 'no temp file')
  })

  await t.test('ranges', async t => {
    const path = `/v1/devices/d1/objects/${goodId}`
    const size = goodData.length
    const bad: Array<[string, string, string]> = [
      ['range: not bytes', 'items=0-1', 'EINVAL'],
      ['range: not a number', 'bytes=abc', 'EINVAL'],
      ['range: end before start', 'bytes=5-2', 'EINVAL'],
      ['range: several ranges', 'bytes=0-1,3-4', 'EINVAL'],
      ['range: empty suffix', 'bytes=-0', 'EINVAL'],
      ['range: only a dash', 'bytes=-', 'EINVAL'],
      ['range: empty header', '', 'EINVAL'],
      ['range: huge numbers', 'bytes=99999999999999999999-', 'EINVAL'],
      ['range: negative', 'bytes=-5-10', 'EINVAL'],
      ['range: past the end', `bytes=${size}-`, 'ERANGE'],
      ['range: far past the end', `bytes=${size * 10}-${size * 11}`, 'ERANGE']
    ]
    for (const [kind, range, code] of bad) {
      const r = await get(path, { Range: range })
      expectError(kind, r, 416, code)
      if (code === 'ERANGE') t.equal(r.headers['content-range'], `bytes */${size}`, `${kind}: Content-Range`)
    }
    const r = await get(path, { Range: 'bytes=10-19' })
    t.equal(r.status, 206, 'a good range still works')
    t.ok(r.body.equals(goodData.subarray(10, 20)))
  })

  await t.test('routes and methods', async t => {
    expectError('unknown route /v2/health', await get('/v2/health'), 404, 'ENOENT')
    expectError('unknown route /', await get('/'), 404, 'ENOENT')
    expectError('unknown route /v1/devices/d1', await get('/v1/devices/d1'), 404, 'ENOENT')
    expectError('trailing slash /v1/health/', await get('/v1/health/'), 404, 'ENOENT')
    expectError('double slash //v1/health', await get('//v1/health'), 404, 'ENOENT')
    expectError('unknown route /v1/devices/d1/objects/<id>/x', await get(`/v1/devices/d1/space/${goodId}`), 404, 'ENOENT')
    // POST on an object is a copy on the server (X-Bslfs-Copy-From): without that header it is refused, and the method list says so.
    let r = await request(port, { method: 'POST', path: `/v1/devices/d1/objects/${goodId}`, headers: auth, body: 'x' })
    expectError('POST on an object without X-Bslfs-Copy-From', r, 400, 'EINVAL')
    r = await request(port, { method: 'PATCH', path: `/v1/devices/d1/objects/${goodId}`, headers: auth, body: 'x' })
    t.equal(r.headers.allow, 'GET, HEAD, PUT, POST, DELETE', 'an object\'s methods')
    r = await request(port, { method: 'DELETE', path: '/v1/health', headers: auth })
    expectError('DELETE on health', r, 405, 'EOPNOTSUPP')
    t.equal(r.headers.allow, 'GET, HEAD')
    r = await request(port, { method: 'PUT', path: '/v1/devices/d1/objects', headers: auth, body: 'x' })
    expectError('PUT on the list', r, 405, 'EOPNOTSUPP')
    t.equal(r.headers.allow, 'GET')
    expectError('PATCH', await request(port, { method: 'PATCH', path: `/v1/devices/d1/objects/${goodId}`, headers: auth, body: 'x' }), 405, 'EOPNOTSUPP')
    expectError('OPTIONS', await request(port, { method: 'OPTIONS', path: '/v1/health', headers: auth }), 405, 'EOPNOTSUPP')
    expectError('TRACE', await request(port, { method: 'TRACE', path: '/v1/health', headers: auth }), 405, 'EOPNOTSUPP')
    const unknown = await raw(port, `FOO /v1/health HTTP/1.1\r\n${AUTH}\r\n`)
    expectError('an unknown method', first(unknown.data), 501, 'ENOSYS')
    const absolute = await raw(port, `GET http://127.0.0.1:${port}/v1/health HTTP/1.1\r\n${AUTH}Connection: close\r\n\r\n`)
    expectError('absolute-form target', first(absolute.data), 400, 'EINVAL')
    const star = await raw(port, `OPTIONS * HTTP/1.1\r\n${AUTH}Connection: close\r\n\r\n`)
    expectError('asterisk target', first(star.data), 400, 'EINVAL')
    const garbage = await raw(port, '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n')
    expectError('not HTTP (a TLS hello)', first(garbage.data), 400, 'EINVAL')
    const version = await raw(port, `GET /v1/health HTTP/7.3\r\n${AUTH}\r\n`)
    expectError('a bad HTTP version', first(version.data), 400, 'EINVAL')
    const noColon = await raw(port, `GET /v1/health HTTP/1.1\r\n${AUTH}this header has no colon\r\n\r\n`)
    expectError('a header line without a colon', first(noColon.data), 400, 'EINVAL')
    const space = await raw(port, `GET /v1/health HTTP/1.1\r\n${AUTH}Bad Name: x\r\n\r\n`)
    expectError('a space in a header name', first(space.data), 400, 'EINVAL')
    const smuggle = await raw(port, `GET /v1/health HTTP/1.1\r\n${AUTH}Transfer-Encoding: chunked, identity\r\n\r\n`)
    expectError('Transfer-Encoding smuggling', first(smuggle.data), 400, 'EINVAL')
    const noHost = await raw(port, `GET /v1/health HTTP/1.1\r\n${AUTH}Connection: close\r\n\r\n`)
    t.equal(first(noHost.data)?.status, 200, 'no Host header: fine (it means nothing here)')
    // HTTP/1.0 still gets an answer (and a closed connection).
    const old = await raw(port, `GET /v1/health HTTP/1.0\r\n${AUTH}\r\n`)
    t.equal(first(old.data)?.status, 200, 'HTTP/1.0 works')
    t.ok(old.closedByServer)
  })

  await t.test('headers', async t => {
    const big = await raw(port, `GET /v1/health HTTP/1.1\r\n${AUTH}X-Big: ${'a'.repeat(20 * 1024)}\r\n\r\n`)
    expectError('one huge header', first(big.data), 431, 'EMSGSIZE')
    t.ok(big.closedByServer)
    const manyBig = await raw(port, `GET /v1/health HTTP/1.1\r\n${AUTH}${Array.from({ length: 400 }, (_, i) => `X-H${i}: ${'b'.repeat(60)}\r\n`).join('')}\r\n`)
    expectError('headers over 16 KiB in total', first(manyBig.data), 431, 'EMSGSIZE')
    const endless = await raw(port, `GET /v1/health HTTP/1.1\r\n${AUTH}X-Endless: ${'c'.repeat(200 * 1024)}`)
    expectError('a header that never ends', first(endless.data), 431, 'EMSGSIZE')
    // Many small headers within the size limit are fine.
    const many = await raw(port, `GET /v1/health HTTP/1.1\r\n${AUTH}${Array.from({ length: 2500 }, () => 'a:b\r\n').join('')}Connection: close\r\n\r\n`)
    t.equal(first(many.data)?.status, 200, '2500 tiny headers: answered')
    kinds.add('thousands of tiny headers')
  })

  await t.test('slow, silent and half-closed clients', async t => {
    // Slowloris: headers one byte at a time, for longer than the headers timeout.
    const line = `GET /v1/health HTTP/1.1\r\n${AUTH}X-Slow: ${'s'.repeat(100)}\r\n\r\n`
    const slow = await new Promise<{ closedAt: number, sent: number, data: Buffer }>((resolve) => {
      const s = net.connect({ host: HOST, port })
      const started = Date.now()
      let sent = 0
      let data = Buffer.alloc(0)
      let closed = false
      s.on('data', (c: Buffer) => { data = Buffer.concat([data, c]) })
      s.on('error', () => {})
      s.on('close', () => {
        closed = true
        resolve({ closedAt: Date.now() - started, sent, data })
      })
      s.on('connect', async () => {
        // At most 60 bytes, 200 ms apart: 12 s, well past the 1.5 s headers timeout.
        for (let i = 0; i < 60 && !closed && i < line.length; i++) {
          s.write(line[i])
          sent++
          await sleep(200)
        }
        if (!closed) {
          s.destroy()
        }
      })
    })
    kinds.add('slowloris headers')
    t.ok(slow.sent < 60, `the server closed a byte-by-byte client (after ${slow.closedAt} ms, ${slow.sent} bytes)`)
    t.ok(slow.closedAt < (HEADERS_TIMEOUT_S + 4) * 1000, 'soon after the headers timeout')
    const slowAnswer = first(slow.data)
    if (slowAnswer) expectError('slowloris headers', slowAnswer, 408, 'ETIMEDOUT')

    // A connection that never says anything.
    const silent = await raw(port, '', { timeoutMs: (IDLE_TIMEOUT_S + HEADERS_TIMEOUT_S + 5) * 1000 })
    kinds.add('silent connection')
    t.ok(silent.closedByServer, `a silent connection is closed (after ${silent.ms} ms)`)

    // An idle keep-alive connection after one request.
    const idle = await raw(port, `GET /v1/health HTTP/1.1\r\n${AUTH}\r\n`, { timeoutMs: 15000 })
    kinds.add('idle keep-alive connection')
    t.equal(first(idle.data)?.status, 200)
    t.ok(idle.closedByServer, `an idle keep-alive connection is closed (after ${idle.ms} ms)`)

    // Half-closed after a whole request: still answered.
    const half = await raw(port, `GET /v1/health HTTP/1.1\r\n${AUTH}\r\n`, { end: true, timeoutMs: 5000 })
    kinds.add('half-closed after a request')
    t.equal(first(half.data)?.status, 200, 'a half-closed client still gets its answer')
    t.ok(half.closedByServer)
    // Half-closed in the middle of the headers.
    const halfHead = await raw(port, `GET /v1/health HTTP/1.1\r\n${AUTH}X-Cut: `, { end: true, timeoutMs: 5000 })
    kinds.add('half-closed mid-headers')
    t.ok(halfHead.closedByServer, 'half-closed mid-headers: closed')
    const halfAnswer = first(halfHead.data)
    if (halfAnswer) expectError('half-closed mid-headers', halfAnswer, 400, 'EINVAL')
    // Reset in the middle of the headers.
    await new Promise<void>((resolve) => {
      const s = net.connect({ host: HOST, port })
      s.on('connect', () => {
        s.write(`GET /v1/health HTTP/1.1\r\n${AUTH}X-Cut`)
        setTimeout(() => {
          s.resetAndDestroy()
          resolve()
        }, 100)
      })
      s.on('error', () => resolve())
    })
    kinds.add('reset mid-headers')

    // A client that asks for a big object (more than the socket buffers hold) and stops reading:
    // the idle timeout drops it, so when it finally reads it gets less than the whole answer.
    const nonReader = await new Promise<{ got: number, ms: number }>((resolve) => {
      const s = net.connect({ host: HOST, port })
      const started = Date.now()
      let got = 0
      s.on('connect', () => {
        s.write(`GET /v1/devices/d1/objects/${bigId} HTTP/1.1\r\n${AUTH}X-Bslfs-Checksum: ${known.get(bigId)!.sum}\r\n\r\n`)
        s.pause()
        setTimeout(() => s.resume(), (IDLE_TIMEOUT_S + 4) * 1000)
      })
      s.on('data', (c: Buffer) => { got += c.length })
      s.on('error', () => {})
      s.on('close', () => resolve({ got, ms: Date.now() - started }))
      setTimeout(() => s.destroy(), 30000)
    })
    kinds.add('a reader that stops reading')
    t.ok(nonReader.got < bigData.length, `a client that stops reading is dropped (it got ${nonReader.got} of ${bigData.length} bytes)`)
    t.ok(nonReader.ms < 25000, 'and the connection is gone')
  })

  await t.test('concurrency and pipelining', async t => {
    // 200 bad requests at once, each on its own connection.
    const makers: Array<[number, string, () => Promise<Reply>]> = [
      [401, 'EACCES', async () => await request(port, { path: '/v1/health', headers: bearer('bad') })],
      [400, 'EINVAL', async () => await get('/v1/devices/d1/objects/..')],
      [404, 'ENODEV', async () => await get(`/v1/devices/zz/objects/${goodId}`)],
      [405, 'EOPNOTSUPP', async () => await request(port, { method: 'DELETE', path: '/v1/health', headers: auth })],
      [422, 'EBADMSG', async () => await request(port, { method: 'PUT', path: '/v1/devices/d2/objects/00000000000e0001', headers: { ...auth, 'X-Bslfs-Checksum': '1' }, body: randomBytes(1000) })]
    ]
    const all = await Promise.all(Array.from({ length: 200 }, async (_, i) => {
      const [status, code, make] = makers[i % makers.length]
      const r = await make().catch((err: Error) => ({ status: -1, json: { code: err.message } }) as unknown as Reply)
      return r.status === status && r.json?.code === code
    }))
    kinds.add('200 concurrent bad requests')
    t.equal(all.filter(Boolean).length, 200, '200 concurrent bad requests, each answered right')
    t.ok(await absent('d2', '00000000000e0001'))

    // Pipelined on one keep-alive connection, answered in order.
    const body = Buffer.from('pipelined body')
    const pipeId = '00000000000e0002'
    const requests = [
      `GET /v1/health HTTP/1.1\r\n${AUTH}\r\n`,
      `GET /v1/devices/d1/objects/.. HTTP/1.1\r\n${AUTH}X-Bslfs-Checksum: 1\r\n\r\n`,
      `GET /v1/devices/nope/space HTTP/1.1\r\n${AUTH}\r\n`,
      'GET /v1/health HTTP/1.1\r\nAuthorization: Bearer wrong\r\n\r\n',
      `PUT /v1/devices/d2/objects/${pipeId} HTTP/1.1\r\n${AUTH}X-Bslfs-Checksum: ${checksum(body)}\r\nContent-Length: ${body.length}\r\n\r\n${body.toString()}`,
      `PUT /v1/devices/d2/objects/${pipeId} HTTP/1.1\r\nAuthorization: Bearer wrong\r\nX-Bslfs-Checksum: 1\r\nContent-Length: 5\r\n\r\nxxxxx`,
      `DELETE /v1/health HTTP/1.1\r\n${AUTH}\r\n`,
      `GET /v1/devices/d2/objects/${pipeId} HTTP/1.1\r\n${AUTH}X-Bslfs-Checksum: ${checksum(body)}\r\n\r\n`,
      `GET /v1/devices/d2/objects HTTP/1.1\r\n${AUTH}\r\n`,
      `GET /v1/health HTTP/1.1\r\n${AUTH}Connection: close\r\n\r\n`
    ]
    const piped = await raw(port, requests.join(''), { timeoutMs: 10000 })
    const answers = parseResponses(piped.data)
    kinds.add('pipelined requests')
    t.same(answers.map(a => a.status), [200, 400, 404, 401, 201, 401, 405, 200, 200, 200], 'pipelined: every answer, in order')
    t.same(answers.map(a => a.json?.code ?? null), [null, 'EINVAL', 'ENODEV', 'EACCES', null, 'EACCES', 'EOPNOTSUPP', null, null, null])
    t.equal(answers[7]?.body.toString(), 'pipelined body')
    t.match(answers[8]?.body.toString(), pipeId)
    t.ok(piped.closedByServer, 'closed after Connection: close')
    known.set(pipeId, { dev: d2, sum: checksum(body) })

    // Pipelined requests followed by garbage: the good ones are answered, then 400 and close.
    const mixed = await raw(port, `GET /v1/health HTTP/1.1\r\n${AUTH}\r\nGET /v1/health HTTP/1.1\r\n${AUTH}\r\n\x00\x01 not http\r\n\r\n`, { timeoutMs: 5000 })
    kinds.add('pipelined garbage')
    t.same(parseResponses(mixed.data).map(a => a.status), [200, 200, 400])
    t.ok(mixed.closedByServer)

    // A keep-alive connection stays usable after error answers.
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
    const sockets = new Set<number>()
    for (let i = 0; i < 10; i++) {
      const r = await new Promise<number>((resolve, reject) => {
        const req = http.request({ host: HOST, port, agent, method: i % 2 ? 'PUT' : 'GET', path: i % 2 ? '/v1/devices/d1/objects/..' : '/v1/health', headers: i % 2 ? { ...auth, 'X-Bslfs-Checksum': '1' } : auth }, (res) => {
          sockets.add(res.socket.localPort!)
          res.resume()
          res.on('end', () => resolve(res.statusCode!))
        })
        req.on('error', reject)
        req.end(i % 2 ? 'some body' : undefined)
      })
      t.equal(r, i % 2 ? 400 : 200)
    }
    agent.destroy()
    kinds.add('keep-alive through error answers')
    t.equal(sockets.size, 1, 'one connection throughout')
  })

  await t.test('afterwards: healthy, no leaks, nothing half-written', async t => {
    t.ok(kinds.size >= 30, `${kinds.size} kinds of hostile request`)
    const r = await request(port, { path: '/v1/health', headers: auth })
    t.equal(r.status, 200, 'still healthy')
    t.equal(srv.proc.exitCode, null, 'still running')
    let fds = fdCount(srv.pid)
    const settled = await eventually(() => {
      fds = fdCount(srv.pid)
      return fds <= fdsBefore
    }, (IDLE_TIMEOUT_S + 10) * 1000)
    t.ok(settled, `open descriptors back to where they were (${fdsBefore} before, ${fds} now)`)
    t.same(await listTree(parent, [d1, d2]), treeBefore, 'no file created outside the devices')
    for (const dev of [d1, d2]) {
      t.same(await fsp.readdir(join(dev, 'tmp')), [], `${dev}: tmp/ is empty`)
      t.same((await fsp.readdir(dev)).sort(), ['bslfs-device.json', 'objects', 'tmp'], `${dev}: nothing else at the top`)
      for (const fan of await fsp.readdir(join(dev, 'objects'))) {
        for (const id of await fsp.readdir(join(dev, 'objects', fan))) {
          const k = known.get(id)
          t.ok(k && k.dev === dev, `${id} on ${dev} was put on purpose`)
          const data = await fsp.readFile(join(dev, 'objects', fan, id))
          t.equal(checksum(data), k?.sum, `${id} verifies`)
        }
      }
    }
    t.notMatch(srv.stderr(), /internal error/, 'no internal error was logged')
    t.same(await srv.stop(), { code: 0, signal: null }, 'SIGTERM: exit 0')
  })
})
