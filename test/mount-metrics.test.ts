// Metrics of a real mount and its real block servers while a workload runs: the mount's /metrics
// (-o metrics=HOST:PORT) and the servers' /metrics (behind their token) are scraped and parsed by a
// Prometheus text parser, and their values must move as the workload says: bytes written grow by
// the bytes written, FUSE requests by opcode grow, a killed mirror shows as down and counts
// failovers, a heal takes the backlog to 0. `bslfs stats` prints per-second lines from the mount,
// as JSON for scripts or as text until Ctrl-C; `bslfs status` leads with what is wrong.
import t from 'tap'
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import * as fsp from 'node:fs/promises'
import { join } from 'node:path'
import {
  type BlockServer, PYTHON, bslfsBin, childEnv, describeRun, freePort, isMounted, repoRoot, run, sh, sleep,
  startBlockServer, target, volumeKind, waitFor, withMount
} from './helpers/mount'
import { Exposition, scrape } from './helpers/prometheus'

const MiB = 1024 * 1024

/** Write argv[2] bytes of random data to argv[1] in 128 KiB writes, fsync, close. */
const WRITE = `
import os, sys
path, size = sys.argv[1], int(sys.argv[2])
data = os.urandom(size)
fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
off = 0
while off < size:
    off += os.write(fd, data[off:off + 131072])
os.fsync(fd)
os.close(fd)
`

// The test brings its own block servers (as mount-mirror does): the remote and PostgreSQL passes
// would only run it again.
if (target === 'bslfs' && volumeKind === 'local') {
  t.test('metrics of a mount and its block servers under a workload', async t => {
    const m = await withMount(t, { noMount: true })
    const s2 = await startBlockServer(join(m.base, 's2'))
    const s3 = await startBlockServer(join(m.base, 's3'))
    t.teardown(async () => {
      if (m.mounted()) await m.unmount().catch((e: Error) => t.comment(`teardown: ${e.message}`))
      await Promise.all([s2.stop(), s3.stop()])
    })
    const must = async (args: string[]) => {
      const r = await m.bslfs(args)
      if (r.code !== 0) throw new Error(`bslfs ${args.slice(0, 2).join(' ')} failed:\n${describeRun(r)}`)
      return r
    }
    for (const [name, s] of [['s2', s2], ['s3', s3]] as const) {
      await must(['server', 'add', m.state, name, s.url, '--token-file', s.tokenFile])
      await must(['volume', 'add', m.state, name.slice(1), `${name}:d1`])
    }
    // One copy is enough for a write: with s2 down, writes go on and leave copies to heal.
    await must(['mirror', m.state, '10', '2', '3', '--min-copies', '1'])
    await must(['volume', 'default', m.state, '10'])

    const port = await freePort()
    const refused = await m.bslfs(['mount', m.state, m.mnt, '-o', 'metrics=nowhere:99999'])
    t.not(refused.code, 0, 'a bad metrics address is refused')
    t.match(refused.stderr, /bad mount option "metrics=nowhere:99999".*HOST:PORT/, 'naming the option and the form it takes')
    t.notOk(isMounted(m.mnt), 'and nothing is mounted')
    await m.mount([`metrics=127.0.0.1:${port}`, 'copy_timeout=1500'])

    const url = `http://127.0.0.1:${port}/metrics`
    const mountMetrics = async (): Promise<Exposition> => {
      const r = await scrape(url)
      if (r.status !== 200 || !r.exposition) throw new Error(`GET ${url}: ${r.status}`)
      return r.exposition
    }
    const tokenOf = async (s: BlockServer) => (await fsp.readFile(s.tokenFile, 'utf8')).trim()
    const serverMetrics = async (s: BlockServer): Promise<Exposition> => {
      const r = await scrape(`${s.url}/metrics`, { Authorization: `Bearer ${await tokenOf(s)}` })
      if (r.status !== 200 || !r.exposition) throw new Error(`GET ${s.url}/metrics: ${r.status}`)
      return r.exposition
    }
    const write = async (name: string, size: number) => {
      const r = await run(PYTHON, ['-c', WRITE, join(m.mnt, name), String(size)], { timeout: 120_000 })
      if (r.code !== 0) throw new Error(`write ${name} failed:\n${describeRun(r)}`)
    }
    const readAll = async (name: string) => {
      const r = await sh(`sync; echo 3 > /proc/sys/vm/drop_caches; cat ${JSON.stringify(join(m.mnt, name))} | wc -c`)
      if (r.code !== 0) throw new Error(`read ${name} failed:\n${describeRun(r)}`)
      return Number(r.stdout.trim())
    }
    const fuseBytes = (e: Exposition, direction: string) => e.value('bslfs_fuse_bytes_total', { direction }) ?? 0
    const ops = (e: Exposition, opcode: string) => e.value('bslfs_fuse_requests_total', { opcode }) ?? 0

    await t.test('bytes written grow by the bytes written; FUSE requests by opcode grow; scrapes during the workload parse', async t => {
      const before = await mountMetrics()
      const srvBefore = await serverMetrics(s3)
      const size = 6 * MiB + 12345
      const writing = write('a', size)
      let done = false
      void writing.finally(() => { done = true })
      const during: number[] = []
      while (!done) {
        during.push(fuseBytes(await mountMetrics(), 'write'))
        await sleep(30)
      }
      await writing
      const after = await mountMetrics()
      t.ok(during.length >= 1, `${during.length} scrapes while writing`)
      t.ok(during.every((v, i) => i === 0 || v >= during[i - 1]), 'bytes written never go back')
      t.equal(fuseBytes(after, 'write') - fuseBytes(before, 'write'), size, 'bslfs_fuse_bytes_total{direction="write"} grew by the bytes written')
      t.ok(ops(after, 'write') - ops(before, 'write') >= Math.ceil(size / MiB), 'write requests grew')
      t.equal(ops(after, 'create') - ops(before, 'create'), 1, 'one create')
      t.ok(ops(after, 'fsync') - ops(before, 'fsync') >= 1, 'fsync counted')
      t.ok(after.sum('bslfs_fuse_request_seconds', { opcode: 'write' }) > before.sum('bslfs_fuse_request_seconds', { opcode: 'write' }), 'write latency observed')
      for (const place of ['s2:d1', 's3:d1']) {
        const grew = (after.value('bslfs_device_bytes_total', { place, direction: 'write' }) ?? 0) - (before.value('bslfs_device_bytes_total', { place, direction: 'write' }) ?? 0)
        t.equal(grew, size, `${place} got every byte (a mirror copy)`)
        t.equal(after.value('bslfs_place_up', { place }), 1, `${place} up`)
      }
      t.ok(after.sum('bslfs_group_commit_records') > before.sum('bslfs_group_commit_records'), 'group commits observed')
      t.ok((after.value('process_resident_memory_bytes') ?? 0) > 0, 'process RSS')
      const srvAfter = await serverMetrics(s3)
      t.equal((srvAfter.value('bslfs_server_bytes_total', { direction: 'in' }) ?? 0) - (srvBefore.value('bslfs_server_bytes_total', { direction: 'in' }) ?? 0), size, 'the block server received the bytes')
      t.ok((srvAfter.value('bslfs_server_requests_total', { route: 'object', status: '201' }) ?? 0) >= Math.ceil(size / MiB), 'its object PUTs answered 201')
      t.equal((await scrape(`${s3.url}/metrics`)).status, 401, "the server's /metrics needs its token")
    })

    await t.test('bytes read grow by the bytes read, from the devices and the cache', async t => {
      const before = await mountMetrics()
      t.equal(await readAll('a'), 6 * MiB + 12345)
      const after = await mountMetrics()
      t.equal(fuseBytes(after, 'read') - fuseBytes(before, 'read'), 6 * MiB + 12345, 'bslfs_fuse_bytes_total{direction="read"} grew by the bytes read')
      t.ok(ops(after, 'read') > ops(before, 'read'), 'read requests grew')
      t.ok(after.sum('bslfs_device_bytes_total', { direction: 'read' }) > before.sum('bslfs_device_bytes_total', { direction: 'read' }), 'blocks came from a device')
      t.ok((after.value('bslfs_cache_misses_total') ?? 0) > (before.value('bslfs_cache_misses_total') ?? 0), 'cache misses counted')
      t.ok((after.value('bslfs_cache_bytes') ?? 0) > 0, 'the cache holds blocks')
    })

    await t.test('a killed mirror shows as down and counts failovers; writes leave a backlog; status says so', async t => {
      await write('b', 3 * MiB)
      const before = await mountMetrics()
      await s2.stop('SIGKILL')
      t.equal(await readAll('b'), 3 * MiB, 'the file reads whole from the other copy')
      const after = await mountMetrics()
      t.equal(after.value('bslfs_place_up', { place: 's2:d1' }), 0, 's2:d1 is down')
      t.equal(after.value('bslfs_place_up', { place: 's3:d1' }), 1, 's3:d1 is up')
      t.ok((after.value('bslfs_read_failovers_total', { volume: '10' }) ?? 0) > (before.value('bslfs_read_failovers_total', { volume: '10' }) ?? 0), 'failovers on volume 10 grew')
      t.ok((after.value('bslfs_place_failovers_total', { place: 's2:d1' }) ?? 0) > 0, 'reads moved past s2:d1')
      t.ok(after.sum('bslfs_device_errors_total', { place: 's2:d1' }) > 0, "s2:d1's failed calls counted")
      t.equal(after.value('bslfs_place_downs_total', { place: 's2:d1' }), 1)

      await write('c', 2 * MiB)
      // The backlog is a scan of the heal queue, done at most once a second.
      let degraded: Exposition | undefined
      t.ok(await waitFor(async () => ((degraded = await mountMetrics()).value('bslfs_heal_backlog', { volume: '2' }) ?? 0) >= 2, 5000, 200),
        `the copies s2 missed wait in the heal backlog (${degraded?.text.split('\n').filter(l => l.startsWith('bslfs_heal_backlog')).join('; ')})`)

      const text = await must(['status', m.state])
      t.match(text.stdout, /^health {6}\d+ PROBLEMS\n {2}! place s2:d1 is DOWN since \S+: /, 'status leads with what is wrong')
      t.match(text.stdout, /! volume 10 is degraded: mirror 2 \(s2:d1\) down/)
      t.match(text.stdout, /! heal backlog: \d+ copies wait to be healed/)
      const st = JSON.parse((await must(['status', m.state, '--json'])).stdout) as { problems: string[], recentErrors: Array<{ time: string }>, places: Array<{ place: string, lastErrorAt?: string }> }
      t.ok(st.problems.length >= 3)
      t.match(st.places.find(p => p.place === 's2:d1')?.lastErrorAt, /^\d{4}-\d\d-\d\dT/, "the place's last error has its time")
    })

    await t.test('a heal moves the backlog to 0', async t => {
      const before = await mountMetrics()
      await s2.start()
      // The mount probes a down place and heals once it is back (its healer), without being asked.
      let last: Exposition | undefined
      const healed = await waitFor(async () => {
        last = await mountMetrics()
        return last.value('bslfs_place_up', { place: 's2:d1' }) === 1 && last.sum('bslfs_heal_backlog') === 0
      }, 30_000, 250)
      t.ok(healed, `s2:d1 back up and the backlog 0 (${last?.text.split('\n').filter(l => l.startsWith('bslfs_heal_backlog') || l.startsWith('bslfs_place_up')).join('; ')})`)
      t.ok((last!.value('bslfs_heal_copies_total', { outcome: 'copied' }) ?? 0) - (before.value('bslfs_heal_copies_total', { outcome: 'copied' }) ?? 0) >= 2, 'the copies were healed')
      t.ok((last!.value('bslfs_heal_bytes_total') ?? 0) >= 2 * MiB)
      const st = JSON.parse((await must(['status', m.state, '--json'])).stdout) as { problems: string[] }
      t.same(st.problems, [], 'status: nothing wrong any more')
    })

    await t.test('bslfs stats --json --count 3 while a workload runs', async t => {
      let stop = false
      const workload = (async () => {
        for (let i = 0; !stop; i++) { await write(`w${i % 4}`, MiB); await sleep(50) }
      })()
      const r = await m.bslfs(['stats', m.mnt, '--json', '--count', '3'], { timeout: 30_000 })
      stop = true
      await workload
      t.equal(r.code, 0, describeRun(r))
      const lines = r.stdout.trim().split('\n').map(l => JSON.parse(l) as Record<string, number> & { totals: Record<string, number> })
      t.equal(lines.length, 3, 'three lines, one per second')
      for (const l of lines) t.match(l, { time: String, opsPerSec: Number, writeMBps: Number, cacheHitPercent: Number, deviceLatencyMs: Number, failoversPerSec: Number, healBacklog: Number })
      t.ok(lines.some(l => l.writeMBps > 0 && l.opsPerSec > 0), 'the workload shows: ops/s and MB/s written')
      t.ok(lines.every((l, i) => i === 0 || l.totals.bytesWritten >= lines[i - 1].totals.bytesWritten), 'totals only grow')
      t.ok(lines[2].totals.time - lines[0].totals.time >= 1500, 'about a second apart')
      const byState = await m.bslfs(['stats', m.state, '--json', '--count', '1'], { timeout: 30_000 })
      t.equal(byState.code, 0, 'the STATE names the mount too')
    })

    await t.test('bslfs stats ends cleanly on Ctrl-C', async t => {
      const child = spawn(process.execPath, [bslfsBin, 'stats', m.mnt], { cwd: repoRoot, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] })
      let out = ''
      let err = ''
      child.stdout.on('data', c => { out += c })
      child.stderr.on('data', c => { err += c })
      const exited = new Promise<number | null>(resolve => child.once('exit', code => resolve(code)))
      t.ok(await waitFor(() => out.trim().split('\n').length >= 2, 10_000), 'a header and a line')
      child.kill('SIGINT')
      t.equal(await exited, 0, 'exit status 0')
      t.equal(err, '', 'nothing on stderr (no stack trace)')
      t.match(out, /ops\/s.*rd MB\/s.*hit %.*dev ms.*backlog/, 'the header names the columns')
    })

    await t.test('stats of something not mounted says so', async t => {
      const r = await m.bslfs(['stats', join(m.base, 'nothing-here'), '--count', '1'])
      t.equal(r.code, 1)
      t.match(r.stderr, /not mounted/)
    })

    await t.test('after unmount the metrics port is closed', async t => {
      await m.unmount()
      await t.rejects(fetch(url), 'nothing listens there any more')
    })
  })
}
