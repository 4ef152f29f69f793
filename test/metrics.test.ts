// The metrics module without a mount: the exposition of a block server in this process (token
// guard, --metrics-open, what a PUT and a GET count), registries that stay apart (a mount's, a
// server's, prom-client's global one), the mount's -o metrics option, what `status` calls a problem
// and how `stats` turns two samples into rates.
import t from 'tap'
import { register } from 'prom-client'
import { checksum } from '../src/checksum'
import { LocalDevice } from '../src/devices/local'
import { MAX_BLOCK_BYTES } from '../src/limits'
import { parseMountOptions } from '../src/fs/mount'
import { parseListenAddress } from '../src/metrics/http'
import { MountMetrics, mountMetrics } from '../src/metrics/mount-metrics'
import { problemsOf } from '../src/daemon/problems'
import { rates } from '../src/cli/stats-command'
import { BlockServer } from '../src/server/server'
import { Exposition, scrape } from './helpers/prometheus'
import { tempDir } from './helpers/server'

const TOKEN = 'metrics-test-token-0123456789abcdef'

async function startServer (t: Tap.Test, metricsOpen: boolean): Promise<{ url: string, server: BlockServer }> {
  const dir = await tempDir(t)
  const dev = await LocalDevice.create(`${dir}/d1`, { server: 's1', device: 'd1' })
  const server = new BlockServer({
    name: 's1', devices: new Map([['d1', dev]]), tokens: [TOKEN], maxObjectBytes: MAX_BLOCK_BYTES, maxBufferedBytes: 64 << 20,
    headersTimeoutMs: 5000, requestTimeoutMs: 10_000, idleTimeoutMs: 10_000, keepAliveTimeoutMs: 5000, maxConnections: 100, metricsOpen
  })
  const { port } = await server.listen('127.0.0.1', 0)
  t.teardown(async () => { await server.stop(1000); await dev.close() })
  return { url: `http://127.0.0.1:${port}`, server }
}
declare namespace Tap { type Test = Parameters<Parameters<typeof t.test>[1]>[0] }

const auth = { Authorization: `Bearer ${TOKEN}` }

t.test('block server: /metrics needs the token, counts requests by route and status, and bytes', async t => {
  const { url } = await startServer(t, false)
  const bare = await scrape(`${url}/metrics`)
  t.equal(bare.status, 401, 'without the token: 401, like every other route')
  const before = (await scrape(`${url}/metrics`, auth)).exposition!
  t.equal(before.sum('bslfs_server_requests_total', { route: 'none', status: '401' }), 1, 'the refused scrape was counted')

  const data = Buffer.alloc(300_000, 7)
  const id = '00000000000000ab'
  const put = await fetch(`${url}/v1/devices/d1/objects/${id}`, {
    method: 'PUT', headers: { ...auth, 'X-Bslfs-Checksum': String(checksum(data)), 'Content-Length': String(data.length) }, body: data
  })
  t.equal(put.status, 201)
  const got = await fetch(`${url}/v1/devices/d1/objects/${id}`, { headers: { ...auth, 'X-Bslfs-Checksum': String(checksum(data)) } })
  t.equal(Buffer.from(await got.arrayBuffer()).length, data.length)
  const missing = await fetch(`${url}/v1/devices/d1/objects/00000000000000cd`, { headers: { ...auth, 'X-Bslfs-Checksum': '0' } })
  t.equal(missing.status, 404)
  await missing.arrayBuffer()

  const { status, type, exposition: after } = await scrape(`${url}/metrics`, auth)
  t.equal(status, 200)
  t.match(type, /^text\/plain; version=0\.0\.4/, 'Prometheus text format')
  t.equal(after!.value('bslfs_server_requests_total', { route: 'object', status: '201' }), 1, 'one PUT answered 201')
  t.equal(after!.value('bslfs_server_requests_total', { route: 'object', status: '200' }), 1, 'one GET answered 200')
  t.equal(after!.value('bslfs_server_requests_total', { route: 'object', status: '404' }), 1, 'one GET answered 404')
  t.equal(after!.value('bslfs_server_bytes_total', { direction: 'in' }), data.length, 'bytes in: the object put')
  t.equal(after!.value('bslfs_server_bytes_total', { direction: 'out' }), data.length, 'bytes out: the object read')
  t.equal(after!.sum('bslfs_server_device_errors_total'), 0, 'a missing object is not a device error')
  t.ok((after!.value('bslfs_server_device_space_bytes', { device: 'd1', kind: 'total' }) ?? 0) > 0, 'device space')
  t.equal(after!.value('bslfs_server_requests_in_flight'), 1, 'the scrape itself is in flight')
  t.ok(after!.has('process_resident_memory_bytes') && after!.has('nodejs_eventloop_lag_seconds'), 'process RSS and event-loop delay')
  t.equal(after!.samples('bslfs_server_request_seconds', { route: 'object' }).length, 1, 'latency histogram by route')
  t.notOk(after!.has('bslfs_fuse_requests_total') || after!.has('bslfs_device_calls_total'), "the mount's metrics are not in the server's registry")
})

t.test('block server with --metrics-open: /metrics without the token, nothing else', async t => {
  const { url } = await startServer(t, true)
  const open = await scrape(`${url}/metrics`)
  t.equal(open.status, 200)
  t.ok(open.exposition!.has('bslfs_server_requests_total'))
  t.equal((await fetch(`${url}/metrics?x=1`)).status, 200, 'a query string changes nothing')
  t.equal((await fetch(`${url}/v1/health`)).status, 401, 'every other route still needs the token')
  t.equal((await fetch(`${url}/v1/devices/d1/space`)).status, 401)
  t.equal((await fetch(`${url}/metrics`, { method: 'POST' })).status, 405)
})

t.test('registries stay apart: a mount, servers, and prom-client\'s global one', async t => {
  const a = await startServer(t, true)
  const b = await startServer(t, true)
  await fetch(`${a.url}/v1/health`)
  const ea = (await scrape(`${a.url}/metrics`)).exposition!
  const eb = (await scrape(`${b.url}/metrics`)).exposition!
  t.equal(ea.value('bslfs_server_requests_total', { route: 'none', status: '401' }), 1, "server a counts its own request")
  t.equal(eb.sum('bslfs_server_requests_total', { route: 'none' }), 0, "server b does not count a's")
  const mount = new Exposition(await mountMetrics.registry.metrics())
  t.notOk(mount.has('bslfs_server_requests_total'), "no server metric in the mount's registry")
  t.ok(mount.has('bslfs_fuse_requests_total') && mount.has('bslfs_place_up') && mount.has('bslfs_heal_backlog'))
  t.equal(register.getMetricsAsArray().length, 0, "nothing in prom-client's global registry")
  // Two MountMetrics (as two processes would have) do not share series.
  const m1 = new MountMetrics()
  const m2 = new MountMetrics()
  m1.fuseOp(15, 'read').done(0, 0.001)
  m1.fuseOp(15, 'read').done(2, 0.003)
  m1.place('s2:d1').done('read', 0.002, 4096)
  m1.place('s2:d1').failed('read', 0.5, 'unreachable')
  m1.failover(10)
  const e1 = new Exposition(await m1.registry.metrics())
  const e2 = new Exposition(await m2.registry.metrics())
  t.equal(e1.value('bslfs_fuse_requests_total', { opcode: 'read' }), 2)
  t.equal(e1.value('bslfs_fuse_errors_total', { opcode: 'read', errno: 'ENOENT' }), 1, 'errno by name')
  const h = e1.samples('bslfs_fuse_request_seconds', { opcode: 'read' })[0]
  t.equal(Number(h.count), 2)
  t.equal(Number(h.buckets!['0.001']), 1, 'buckets are cumulative: 1 ms holds the first')
  t.equal(Number(h.buckets!['0.005']), 2, 'and 5 ms both')
  t.equal(e1.value('bslfs_device_calls_total', { place: 's2:d1', op: 'read' }), 2)
  t.equal(e1.value('bslfs_device_errors_total', { place: 's2:d1', op: 'read', kind: 'unreachable' }), 1)
  t.equal(e1.value('bslfs_device_bytes_total', { place: 's2:d1', direction: 'read' }), 4096)
  t.equal(e1.value('bslfs_read_failovers_total', { volume: '10' }), 1)
  t.equal(e2.sum('bslfs_fuse_requests_total'), 0, 'the other registry saw none of it')
})

t.test('mount -o metrics: loopback by default, an explicit address as given, a bad one refused by name', async t => {
  t.same(parseMountOptions('metrics').metrics, { host: '127.0.0.1', port: 9567 })
  t.same(parseMountOptions('metrics=9100').metrics, { host: '127.0.0.1', port: 9100 })
  t.same(parseMountOptions('ro,metrics=0.0.0.0:9100').metrics, { host: '0.0.0.0', port: 9100 })
  t.same(parseMountOptions('metrics=::1:9100').metrics, { host: '::1', port: 9100 })
  t.same(parseMountOptions('metrics=localhost:9100').metrics, { host: 'localhost', port: 9100 })
  t.equal(parseMountOptions('ro').metrics, undefined, 'off unless asked')
  for (const bad of ['metrics=host:0', 'metrics=1.2.3.4:70000', 'metrics=a_b:80', 'metrics=:', 'metrics=x.:80']) {
    t.throws(() => parseMountOptions(bad), { message: new RegExp(`bad mount option "${bad}".*HOST:PORT`) }, bad)
  }
  t.same(parseListenAddress('[::1]:80', 'x'), { host: '::1', port: 80 })
})

t.test('status problems: what is wrong, in words', async t => {
  const base = {
    state: '/s', blockSize: 1 << 20, mounted: null, files: 1, bytes: 1, defaultVolume: 10,
    places: [
      { place: 's2:d1', up: true, latencyMs: 1, served: 1, failovers: 0, missing: 0, corrupt: 0, downs: 0 },
      { place: 's3:d1', up: false, downSince: '2026-01-01T00:00:00.000Z', lastError: 'connect ECONNREFUSED', latencyMs: 1, served: 1, failovers: 3, missing: 0, corrupt: 0, downs: 1 }
    ],
    volumes: [
      { volume: 2, place: 's2:d1', health: 'healthy' as const, backlog: 0, failovers: 0 },
      { volume: 10, place: 'mirror', health: 'degraded' as const, mirrors: [{ volume: 2, place: 's2:d1', up: true }, { volume: 3, place: 's3:d1', up: false }], minCopies: 1, backlog: 4, failovers: 3 }
    ],
    healBacklog: 4,
    devices: [
      { place: 'local:d0', path: '/x', total: 1000 * 1048576, free: 50 * 1048576, available: 50 * 1048576 },
      { place: 's2:d1', total: 1000, free: 500, available: 500 },
      { place: 's3:d1', error: 'connect ECONNREFUSED' }
    ],
    servers: [{ name: 's3', url: 'http://127.0.0.1:1', reachable: false, error: 'connect ECONNREFUSED' }]
  }
  const p = problemsOf(base)
  t.match(p, [
    /^place s3:d1 is DOWN since 2026-01-01T00:00:00\.000Z: connect ECONNREFUSED$/,
    /^volume 10 is degraded: mirror 3 \(s3:d1\) down, 4 copies to heal$/,
    /^heal backlog: 4 copies/,
    /^device local:d0 is nearly full: 5\.0% available \(50 MiB of 1000 MiB\)$/,
    /^device s3:d1 is unavailable: connect ECONNREFUSED$/,
    /^server s3 .* does not answer/
  ])
  t.equal(p.length, 6, 's2:d1 at 50% free is not a problem')
  t.same(problemsOf({ ...base, places: [base.places[0]], volumes: [base.volumes[0]], healBacklog: 0, devices: [base.devices[1]], servers: [] }), [], 'nothing wrong: no problems')
})

t.test('stats: two samples make per-second rates', async t => {
  const a = { time: 1_000_000, fuseOps: 100, fuseErrors: 0, fuseSeconds: 0.1, bytesRead: 0, bytesWritten: 0, cacheHits: 10, cacheMisses: 10, cacheEvictions: 0, readAheadHits: 0, deviceCalls: 5, deviceErrors: 0, deviceSeconds: 0.01, deviceBytesRead: 0, deviceBytesWritten: 0, failovers: 0, hedgedReads: 0, healedCopies: 0, cacheBytes: 0, dirtyBytes: 0, healBacklog: 0, placesDown: 0, rss: 1 << 20 }
  const b = { ...a, time: 1_002_000, fuseOps: 300, fuseSeconds: 0.3, bytesWritten: 4e6, cacheHits: 40, cacheMisses: 20, deviceCalls: 9, deviceSeconds: 0.05, failovers: 2, healBacklog: 7, dirtyBytes: 2 * 1048576 }
  t.match(rates(a, b), { opsPerSec: 100, opLatencyMs: 1, writeMBps: 2, readMBps: 0, cacheHitPercent: 75, deviceOpsPerSec: 2, deviceLatencyMs: 10, failoversPerSec: 1, healBacklog: 7, dirtyMiB: 2 })
})

t.test('the Grafana dashboard is built on metric names the mount and the server export', async t => {
  const { readFileSync } = await import('node:fs')
  const dash = JSON.parse(readFileSync(`${__dirname}/../contrib/grafana/bslfs.json`, 'utf8')) as { panels: Array<{ targets?: Array<{ expr: string }> }> }
  const { url } = await startServer(t, true)
  const server = (await scrape(`${url}/metrics`)).exposition!
  mountMetrics.withProcessMetrics()
  const mount = new Exposition(await mountMetrics.registry.metrics())
  const exprs = dash.panels.flatMap(p => p.targets ?? []).map(x => x.expr)
  t.ok(exprs.length >= 20, `${exprs.length} queries`)
  const names = new Set(exprs.flatMap(e => e.match(/\b(bslfs|process|nodejs)_[a-z0-9_]+/g) ?? []))
  for (const name of names) {
    const base = name.replace(/_(bucket|sum|count)$/, '')
    t.ok(mount.has(base) || server.has(base), `${name} is exported`)
  }
})

t.test('the test parser refuses a malformed exposition', async t => {
  t.throws(() => new Exposition('# HELP x a counter\n# TYPE x counter\nx{a="1" 1\n'), 'an unclosed label set')
  t.throws(() => new Exposition('# TYPE x counter gauge\nx 1\n'), 'a TYPE line with two types')
  const good = new Exposition(await mountMetrics.registry.metrics())
  t.ok(good.families.size > 20, 'the mount exposition parses')
})

t.test('status keeps the last errors and warnings with their times (bounded)', async t => {
  const { logger, recentEvents } = await import('../src/log')
  const events = logger('bslfs:test')
  for (let i = 0; i < 25; i++) events.warn('warning %d', i)
  events.info('not kept')
  events.error('device %s failed', 's2:d1')
  const kept = recentEvents()
  t.equal(kept.length, 20, 'the last 20')
  t.match(kept[kept.length - 1], { level: 'ERROR', namespace: 'bslfs:test', message: 'device s2:d1 failed', time: /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/ })
  t.equal(kept[0].message, 'warning 6', 'the oldest dropped first')
  t.notOk(kept.some(e => e.message === 'not kept'), 'INFO is not an error')
})
