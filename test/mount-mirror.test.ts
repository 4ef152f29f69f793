// Mirrored volumes through the kernel: three block servers (child processes on loopback), volume
// 10 mirrored on two of them (a write needs both copies) and volume 11 on all three (a write needs
// two). Servers are killed (SIGKILL), hung (SIGSTOP), have objects corrupted or deleted on their
// device directories, and come back; reads must return the right bytes without long stalls,
// writes must succeed or fail as the mirror's min copies say, and heal/scrub must put every copy
// back. One mount serves every subtest; each subtest starts with every server up and leaves
// every server running.
import t from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import * as fsp from 'node:fs/promises'
import { join } from 'node:path'
import {
  type BlockServer, type Mount, type RunResult, PYTHON, bslfs, describeRun, pidAlive, run, sh,
  startBlockServer, target, volumeKind, waitFor, withMount
} from './helpers/mount'

interface PlaceHealth { place: string, up: boolean, lastError?: string, latencyMs: number, served: number, failovers: number, missing: number, corrupt: number, downs: number }
interface VolumeStatus { volume: number, place: string, health: 'healthy' | 'degraded' | 'down', mirrors?: Array<{ volume: number, place: string, up: boolean }>, minCopies?: number, backlog: number, failovers: number }
interface Status { mounted: unknown, volumes: VolumeStatus[], places: PlaceHealth[], healBacklog: number }
interface Block { index: number, bsl: string, length: number, checksum: string, places: string[] }
interface HealReport { queued: number, copied: number, present: number, dropped: number, failed: number, bytes: number, errors: string[] }
interface ScrubReport { blocks: number, good: number, missing: number, corrupt: number, unchecked: number, bytes: number, queued: number }
/** What the timed reader (READER below) prints. */
interface ReadReport { sha256: string, bytes: number, reads: number, max: number, median: number, maxAfter: number | null, signalAt: number | null }

const MiB = 1024 * 1024
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')

/**
 * Read a file sequentially with os.read of 128 KiB, timing every call; after `at` bytes send
 * `signal` to `pid` (pid 0: none), so the server goes away in the middle of the read.
 */
const READER = `
import os, sys, time, hashlib, json, signal, statistics
path, pid, sig, at = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
fd = os.open(path, os.O_RDONLY)
h = hashlib.sha256()
times, after = [], []
total, signal_at = 0, None
while True:
    t0 = time.monotonic()
    b = os.read(fd, 131072)
    dt = time.monotonic() - t0
    if not b:
        break
    times.append(dt)
    h.update(b)
    total += len(b)
    if signal_at is not None:
        after.append(dt)
    elif pid > 0 and total >= at:
        os.kill(pid, getattr(signal, sig))
        signal_at = total
os.close(fd)
print(json.dumps({'sha256': h.hexdigest(), 'bytes': total, 'reads': len(times), 'max': max(times),
                  'median': statistics.median(times), 'maxAfter': max(after) if after else None, 'signalAt': signal_at}))
`

/**
 * Copy a file into the mount with write, fsync and close, reporting each step's errno. A write
 * may report the failed background store of an earlier block (EIO); the chunk is then written
 * again (the failed block's bytes stay in the daemon), so every byte ends up written.
 */
const COPY_IN = `
import os, sys, json, errno
src, dst = sys.argv[1], sys.argv[2]
data = open(src, 'rb').read()
fd = os.open(dst, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
view = memoryview(data)
write_errors, off = [], 0
while off < len(data) and len(write_errors) < 100:
    try:
        off += os.write(fd, view[off:off + 1048576])
    except OSError as e:
        write_errors.append(errno.errorcode.get(e.errno, str(e.errno)))
def step(f, *a):
    try:
        f(*a)
        return 'OK'
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
fsync = step(os.fsync, fd)
close = step(os.close, fd)
print(json.dumps({'written': off, 'writeErrors': write_errors, 'fsync': fsync, 'close': close}))
`

/**
 * Open and read a whole file: its sha256, or the errno of the open or read, and how long that
 * took; then close, whose result is reported apart.
 */
const TIMED_CAT = `
import os, sys, time, json, errno, hashlib
name = lambda e: errno.errorcode.get(e.errno, str(e.errno))
t0 = time.monotonic()
fd = None
try:
    fd = os.open(sys.argv[1], os.O_RDONLY)
    h, n = hashlib.sha256(), 0
    while True:
        b = os.read(fd, 1048576)
        if not b:
            break
        h.update(b)
        n += len(b)
    out = {'ok': True, 'sha256': h.hexdigest(), 'bytes': n}
except OSError as e:
    out = {'ok': False, 'errno': name(e)}
out['seconds'] = time.monotonic() - t0
if fd is not None:
    try:
        os.close(fd)
        out['close'] = 'OK'
    except OSError as e:
        out['close'] = name(e)
print(json.dumps(out))
`

function parseJson<T> (r: RunResult): T {
  try {
    return JSON.parse(r.stdout) as T
  } catch {
    throw new Error(`not JSON:\n${describeRun(r)}`)
  }
}

if (target === 'bslfs' && volumeKind === 'local') {
  // (The file makes its own servers: under BSLFS_TEST_VOLUME=remote it would only run again.)
  t.test('mirrored volumes on three block servers', async (t) => {
    const m: Mount = await withMount(t, { noMount: true })
    const src = join(m.base, 'src')
    await fsp.mkdir(src)
    const servers: Record<'s2' | 's3' | 's4', BlockServer> = {
      s2: await startBlockServer(join(m.base, 's2')),
      s3: await startBlockServer(join(m.base, 's3')),
      s4: await startBlockServer(join(m.base, 's4'))
    }
    const all = Object.values(servers)
    t.teardown(async () => {
      for (const s of all) {
        try { process.kill(s.pid, 'SIGCONT') } catch {}
      }
      // Teardowns run last-registered first: unmount here, while the servers still run (the
      // mount's own teardown, registered before, then finds it unmounted and removes m.base).
      if (m.mounted()) await m.unmount().catch((e: Error) => t.comment(`teardown: ${e.message}`))
      await Promise.all(all.map((s) => s.stop()))
    })

    const cli = async (args: string[], timeout = 60_000) => await bslfs(args, { timeout })
    const must = async (args: string[], timeout = 60_000) => {
      const r = await cli(args, timeout)
      if (r.code !== 0) throw new Error(`bslfs ${args.slice(0, 2).join(' ')} failed:\n${describeRun(r)}`)
      return r
    }
    const status = async (): Promise<Status> => parseJson<Status>(await must(['status', m.state, '--json']))
    const place = (st: Status, key: string): PlaceHealth => {
      const p = st.places.find((x) => x.place === key)
      if (!p) throw new Error(`no place ${key} in status: ${JSON.stringify(st.places)}`)
      return p
    }
    const vol = (st: Status, n: number): VolumeStatus => {
      const v = st.volumes.find((x) => x.volume === n)
      if (!v) throw new Error(`no volume ${n} in status: ${JSON.stringify(st.volumes)}`)
      return v
    }
    const blocksOf = async (name: string): Promise<Block[]> => parseJson<Block[]>(await must(['bsl', m.state, join(m.mnt, name), '--json']))
    /** Where a block's object lives on a server's device: objects/<last 2 hex digits>/<id>. */
    const objectPath = (s: BlockServer, b: Block) => {
      const id = b.bsl.slice(-16)
      if (!/^[0-9a-f]{16}$/.test(id)) throw new Error(`unexpected BSL ${b.bsl}`)
      return join(s.device, 'objects', id.slice(-2), id)
    }
    const readObject = (s: BlockServer, b: Block) => fsp.readFile(objectPath(s, b)).catch(() => null)
    const dropCaches = async () => {
      const r = await sh('sync; echo 3 > /proc/sys/vm/drop_caches')
      if (r.code !== 0) throw new Error(`cannot drop the page cache:\n${describeRun(r)}`)
    }
    /** Random file content in src/ (outside the mount). */
    const source = async (name: string, size: number) => {
      const data = randomBytes(size)
      const path = join(src, name)
      await fsp.writeFile(path, data)
      return { path, data, sha: sha(data) }
    }
    const copyIn = async (from: string, name: string) => {
      const r = await run(PYTHON, ['-c', COPY_IN, from, join(m.mnt, name)], { timeout: 120_000 })
      return { ...parseJson<{ written: number, writeErrors: string[], fsync: string, close: string }>(r), run: r }
    }
    const timedCat = async (name: string) =>
      parseJson<{ ok: boolean, sha256?: string, errno?: string, seconds: number, close?: string }>(await run(PYTHON, ['-c', TIMED_CAT, join(m.mnt, name)], { timeout: 60_000 }))
    const timedRead = async (name: string, pid: number, signal: string, at: number): Promise<ReadReport> => {
      const r = await run(PYTHON, ['-c', READER, join(m.mnt, name), String(pid), signal, String(at)], { timeout: 120_000 })
      if (r.code !== 0) throw new Error(`reader failed:\n${describeRun(r)}`)
      return parseJson<ReadReport>(r)
    }
    /** Every server running and not stopped (no status call: a hung server would slow it). */
    const reviveServers = async () => {
      for (const s of all) {
        try { process.kill(s.pid, 'SIGCONT') } catch {}
        if (!pidAlive(s.pid)) await s.start()
      }
    }
    /** Every server running, and the mount sees every place up (status asks each place, which marks it up). */
    const allUp = async () => {
      await reviveServers()
      let last: Status | undefined
      const ok = await waitFor(async () => {
        last = await status()
        return last.places.every((p) => p.up)
      }, 20_000, 250)
      if (!ok) throw new Error(`places still down: ${JSON.stringify(last?.places)}`)
      return last!
    }

    // s2, s3, s4 hold volumes 2, 3, 4; volume 10 = mirrors 2, 3 (min copies: all),
    // volume 11 = mirrors 2, 3, 4 with --min-copies 2.
    for (const [name, s] of Object.entries(servers)) {
      await must(['server', 'add', m.state, name, s.url, '--token-file', s.tokenFile])
      await must(['volume', 'add', m.state, name.slice(1), `${name}:d1`])
    }
    await must(['mirror', m.state, '10', '2', '3'])
    await must(['mirror', m.state, '11', '2', '3', '4', '--min-copies', '2'])
    await must(['volume', 'default', m.state, '10'])
    await m.mount(['copy_timeout=1500'])
    {
      const st = await status()
      t.match(vol(st, 10), { place: 'mirror', health: 'healthy', minCopies: 2, backlog: 0, mirrors: [{ volume: 2, place: 's2:d1', up: true }, { volume: 3, place: 's3:d1', up: true }] }, 'volume 10 is mirrored on 2 and 3')
      t.match(vol(st, 11), { place: 'mirror', health: 'healthy', minCopies: 2, mirrors: [{ volume: 2 }, { volume: 3 }, { volume: 4, place: 's4:d1' }] }, 'volume 11 is mirrored on 2, 3 and 4')
    }

    await t.test('bslfs mirror refuses bad mirror tables', async (t) => {
      await must(['volume', 'add', m.state, '5', 's2:d1']) // a second volume on s2's device
      const cases: Array<[string[], RegExp, string]> = [
        [['12', '2'], /at least two/, 'one mirror'],
        [['12', '2', '99'], /no volume 99/, 'an unknown mirror volume'],
        [['2', '3', '4'], /plain volume/, 'the number of a plain volume'],
        [['12', '2', '2'], /named twice/, 'the same volume twice'],
        [['12', '2', '5'], /both on s2:d1/, 'two mirrors on one place'],
        [['12', '2', '3', '--min-copies', '3'], /min-copies/, '--min-copies above the mirrors'],
        [['12', '2', '3', '--min-copies', '0'], /min-copies/, '--min-copies 0'],
        [['10', '2', '4'], /already mirrored on 2, 3/, 'a new mirror list for an existing mirror'],
        [['12', '10', '3'], /itself mirrored/, 'a mirrored volume as a mirror']
      ]
      for (const [args, re, what] of cases) {
        const r = await cli(['mirror', m.state, ...args])
        const lines = r.stderr.trim().split('\n')
        t.equal(r.code, 1, `${what}: exit 1`, { run: describeRun(r) })
        t.ok(lines.length === 1 && lines[0]!.startsWith('bslfs: ') && re.test(lines[0]!), `${what}: one line matching ${re}`, { stderr: r.stderr })
      }
      const same = await cli(['mirror', m.state, '10', '2', '3'])
      t.equal(same.code, 0, 'the same mirror list again is accepted', { run: describeRun(same) })
      const st = await status()
      t.notOk(st.volumes.some((v) => v.volume === 12), 'no volume 12 was made')
      t.match(vol(st, 10), { minCopies: 2, mirrors: [{ volume: 2 }, { volume: 3 }] }, 'volume 10 is unchanged')
      t.equal(st.volumes.filter((v) => v.place === 'mirror').length, 2, 'still two mirrored volumes')
    })

    await t.test('scrub finds a deleted copy, heal puts it back (mounted and offline)', async (t) => {
      t.teardown(reviveServers)
      await allUp()
      const f = await source('scrub.bin', 3 * MiB + 12345)
      const w = await copyIn(f.path, 'scrub.bin')
      t.match(w, { written: f.data.length, writeErrors: [], fsync: 'OK', close: 'OK' }, 'written', { run: describeRun(w.run) })
      const blocks = await blocksOf('scrub.bin')
      t.equal(blocks.length, 4, 'four blocks')
      t.ok(blocks.every((b) => b.bsl.startsWith('idx:10.') && b.places.join(',') === 's2:d1,s3:d1'), 'on volume 10, resolved to s2 and s3', { blocks })

      const clean = await cli(['scrub', m.state, '--json'])
      t.equal(clean.code, 0, 'scrub of healthy mirrors exits 0', { run: describeRun(clean) })
      t.match(parseJson<ScrubReport>(clean), { missing: 0, corrupt: 0, unchecked: 0, queued: 0 }, 'and reports no problem')
      t.ok(parseJson<ScrubReport>(clean).good >= 8, 'every copy read good')

      // Mounted: delete block 1 on s3.
      const b1 = blocks[1]!
      const want1 = f.data.subarray(MiB, 2 * MiB)
      await fsp.rm(objectPath(servers.s3, b1))
      const found = await cli(['scrub', m.state, '--json'])
      t.equal(found.code, 1, 'scrub exits 1 when a copy is missing', { run: describeRun(found) })
      t.match(parseJson<ScrubReport>(found), { missing: 1, corrupt: 0, unchecked: 0, queued: 1 }, 'one copy missing, queued for heal')
      const healed = await cli(['heal', m.state, '--json'])
      t.equal(healed.code, 0, 'heal exits 0', { run: describeRun(healed) })
      const hr = parseJson<HealReport>(healed)
      t.equal(hr.failed, 0, 'nothing left for later', { hr })
      t.comment(`heal (mounted): ${JSON.stringify(hr)}`)
      t.ok((await readObject(servers.s3, b1))?.equals(want1), 'the object is back on s3 with the right bytes')

      // Offline: delete block 2 on s2; the same commands work on the unmounted STATE.
      const b2 = blocks[2]!
      await fsp.rm(objectPath(servers.s2, b2))
      await m.unmount()
      const off = await cli(['scrub', m.state, '--json'])
      t.equal(off.code, 1, 'offline scrub exits 1', { run: describeRun(off) })
      t.match(parseJson<ScrubReport>(off), { missing: 1, corrupt: 0, queued: 1 }, 'offline scrub finds the missing copy')
      const st = parseJson<Status>(await must(['status', m.state, '--json']))
      t.equal(st.mounted, null, 'status works offline')
      t.equal(st.healBacklog, 1, 'offline status shows the backlog')
      t.match(vol(st, 10), { health: 'degraded', backlog: 1 }, 'volume 10 degraded while a copy waits for heal')
      const offHeal = await cli(['heal', m.state, '--json'])
      t.equal(offHeal.code, 0, 'offline heal exits 0', { run: describeRun(offHeal) })
      t.match(parseJson<HealReport>(offHeal), { queued: 1, copied: 1, failed: 0, bytes: MiB }, 'offline heal copied the block')
      t.ok((await readObject(servers.s2, b2))?.equals(f.data.subarray(2 * MiB, 3 * MiB)), 'the object is back on s2 with the right bytes')
      await m.mount(['copy_timeout=1500'])
      const again = await cli(['scrub', m.state, '--json'])
      t.equal(again.code, 0, 'scrub is clean again', { run: describeRun(again) })
      t.match(parseJson<ScrubReport>(again), { missing: 0, corrupt: 0, unchecked: 0 })
      t.equal((await status()).healBacklog, 0, 'heal backlog empty')
      await dropCaches()
      t.match(await timedCat('scrub.bin'), { ok: true, sha256: f.sha, close: 'OK' }, 'the file reads back')
    })

    await t.test('a corrupt copy: the read fails over, status counts it, the mount heals it', async (t) => {
      t.teardown(reviveServers)
      const before = await allUp()
      const f = await source('corrupt.bin', 3 * MiB)
      t.match(await copyIn(f.path, 'corrupt.bin'), { written: f.data.length, fsync: 'OK', close: 'OK' }, 'written')
      const b = (await blocksOf('corrupt.bin'))[1]!
      const want = f.data.subarray(MiB, 2 * MiB)
      t.ok((await readObject(servers.s2, b))?.equals(want), 's2 holds the block')
      // Flip 64 bytes of the copy on s2, the first mirror (the one reads ask first).
      const fh = await fsp.open(objectPath(servers.s2, b), 'r+')
      const patch = Buffer.from(want.subarray(5000, 5064).map((x) => x ^ 0xff))
      await fh.write(patch, 0, patch.length, 5000)
      await fh.close()
      t.notOk((await readObject(servers.s2, b))?.equals(want), 'the copy on s2 is corrupt now')

      await dropCaches()
      const r = await timedCat('corrupt.bin')
      t.match(r, { ok: true, sha256: f.sha, close: 'OK' }, 'the file reads back with the right bytes')
      const after = await status()
      t.ok(place(after, 's2:d1').corrupt >= place(before, 's2:d1').corrupt + 1, `s2's corrupt count went up (${place(before, 's2:d1').corrupt} → ${place(after, 's2:d1').corrupt})`)
      t.match(place(after, 's2:d1').lastError ?? '', /checksum|corrupt/i, 'its last error says why')
      t.ok(vol(after, 10).failovers >= vol(before, 10).failovers + 1, `volume 10 counts the failover (${vol(before, 10).failovers} → ${vol(after, 10).failovers})`)
      t.ok(place(after, 's2:d1').up, 's2 stays up (a bad copy is not a down place)')

      // The read reported the bad copy; the mount heals it by itself.
      const fixed = await waitFor(async () => (await readObject(servers.s2, b))?.equals(want) ?? false, 15_000, 200)
      t.ok(fixed, "the mount's own heal rewrote s2's copy with the right bytes")
      t.ok((await readObject(servers.s3, b))?.equals(want), "s3's copy is untouched")
      const h = await cli(['heal', m.state, '--json'])
      t.equal(h.code, 0, 'nothing left for bslfs heal to fail on', { run: describeRun(h) })
      const sc = await cli(['scrub', m.state, '--json'])
      t.equal(sc.code, 0, 'scrub is clean', { run: describeRun(sc) })
      t.match(parseJson<ScrubReport>(sc), { corrupt: 0, missing: 0 }, 'scrub reports 0 corrupt')
    })

    // One 256 MiB file (four times the daemon's 64 MiB block cache) for both failover reads.
    const big = { name: 'big.bin', size: 256 * MiB, sha: '' }
    const figures: string[] = []

    await t.test('kill -9 of the server being read, in the middle of a 256 MiB read', async (t) => {
      t.teardown(reviveServers)
      await allUp()
      const f = await source(big.name, big.size)
      big.sha = f.sha
      const w = await copyIn(f.path, big.name)
      t.match(w, { written: big.size, writeErrors: [], fsync: 'OK', close: 'OK' }, 'the 256 MiB file is written', { run: describeRun(w.run) })
      await fsp.rm(f.path) // keep the bytes on the mirrors only
      const before = await allUp()

      await dropCaches()
      const victim = servers.s2
      const r = await timedRead(big.name, victim.pid, 'SIGKILL', 32 * MiB)
      t.equal(r.bytes, big.size, 'read to the end')
      t.equal(r.sha256, big.sha, 'with the right bytes')
      t.ok(r.signalAt !== null && r.signalAt < big.size, `s2 was killed in the middle of the read (at ${r.signalAt! / MiB} MiB)`)
      t.ok(r.max < 2, `no read() stalled 2 s (max ${(r.max * 1000).toFixed(1)} ms)`)
      const fig = `kill -9: ${r.reads} reads of 128 KiB, max ${(r.max * 1000).toFixed(1)} ms, median ${(r.median * 1000).toFixed(3)} ms, max after the kill ${((r.maxAfter ?? 0) * 1000).toFixed(1)} ms`
      t.comment(fig)
      figures.push(fig)
      t.ok(await waitFor(() => !pidAlive(victim.pid), 5000), 's2 is dead')

      const st = await status()
      t.ok(place(st, 's2:d1').served > place(before, 's2:d1').served, 's2 (the first mirror) was serving the read')
      t.ok(place(st, 's3:d1').served > place(before, 's3:d1').served, 's3 served the rest')
      t.notOk(place(st, 's2:d1').up, 's2 is marked down')
      t.equal(place(st, 's2:d1').downs, place(before, 's2:d1').downs + 1, 's2 went down once')
      t.equal(vol(st, 10).health, 'degraded', 'volume 10 is degraded')
      t.ok(vol(st, 10).failovers > vol(before, 10).failovers, 'volume 10 counts failovers')

      await victim.start()
      const back = await allUp()
      t.equal(vol(back, 10).health, 'healthy', 'healthy again once s2 is back')
    })

    await t.test('SIGSTOP of the server being read (a hung copy), in the middle of a 256 MiB read', async (t) => {
      t.teardown(reviveServers)
      if (!big.sha) return t.fail('the 256 MiB file was not written')
      const before = await allUp()
      const victim = servers.s2
      await dropCaches()
      let r: ReadReport
      try {
        r = await timedRead(big.name, victim.pid, 'SIGSTOP', 32 * MiB)
      } finally {
        process.kill(victim.pid, 'SIGCONT')
      }
      t.equal(r.bytes, big.size, 'read to the end')
      t.equal(r.sha256, big.sha, 'with the right bytes')
      t.ok(r.signalAt !== null && r.signalAt < big.size, `s2 was stopped in the middle of the read (at ${r.signalAt! / MiB} MiB)`)
      t.ok(r.max < 2, `no read() stalled 2 s (max ${(r.max * 1000).toFixed(1)} ms)`)
      const fig = `SIGSTOP: ${r.reads} reads of 128 KiB, max ${(r.max * 1000).toFixed(1)} ms, median ${(r.median * 1000).toFixed(3)} ms, max after the stop ${((r.maxAfter ?? 0) * 1000).toFixed(1)} ms`
      t.comment(fig)
      figures.push(fig)

      const st = await status()
      t.ok(place(st, 's2:d1').served > place(before, 's2:d1').served, 's2 (the first mirror) was serving the read')
      t.ok(place(st, 's2:d1').failovers > place(before, 's2:d1').failovers, 'reads moved past the hung s2')
      t.ok(place(st, 's3:d1').served > place(before, 's3:d1').served, 's3 served them')
      t.ok(vol(st, 10).failovers > vol(before, 10).failovers, 'volume 10 counts failovers')
      t.ok(place(st, 's2:d1').downs > place(before, 's2:d1').downs, 's2 was marked down (it did not answer within copy_timeout)')
      await allUp()
    })

    await t.test('every copy down: EIO at once, and reads work again when they return', async (t) => {
      t.teardown(reviveServers)
      for (const [how, name] of [['SIGKILL', 'down-killed.bin'], ['SIGSTOP', 'down-hung.bin']] as const) {
        // (a write to volume 10 needs both copies: wait until the mount sees both up)
        await allUp()
        const f = await source(name, 2 * MiB + 777)
        t.match(await copyIn(f.path, name), { written: f.data.length, fsync: 'OK', close: 'OK' }, `${name} written`)
        await dropCaches()
        if (how === 'SIGKILL') await Promise.all([servers.s2.stop('SIGKILL'), servers.s3.stop('SIGKILL')])
        else for (const s of [servers.s2, servers.s3]) process.kill(s.pid, 'SIGSTOP')
        let r
        try {
          r = await timedCat(name)
        } finally {
          if (how === 'SIGSTOP') for (const s of [servers.s2, servers.s3]) process.kill(s.pid, 'SIGCONT')
        }
        t.match(r, { ok: false, errno: 'EIO' }, `both copies ${how === 'SIGKILL' ? 'killed' : 'hung'}: the read gets EIO`)
        t.ok(r.seconds < 5, `within 5 s, no hang (${r.seconds.toFixed(2)} s)`)
        t.comment(`all copies ${how}: EIO after ${(r.seconds * 1000).toFixed(0)} ms`)
        if (how === 'SIGKILL') {
          const again = await timedCat(name)
          t.match(again, { ok: false, errno: 'EIO' }, 'again while they are down')
          t.ok(again.seconds < 1, `immediately: both places are known down (${(again.seconds * 1000).toFixed(0)} ms)`)
          await reviveServers()
        }
        // No status call here: the mount must find the places back by itself.
        let last
        const ok = await waitFor(async () => {
          last = await timedCat(name)
          return last.ok
        }, 15_000, 250)
        t.ok(ok, 'the file reads again once the servers are back', { last })
        t.match(last, { sha256: f.sha, close: 'OK' }, 'with the right bytes')
      }
    })

    await t.test('writes with a mirror down: --min-copies 2 succeeds and heals; min copies = all gets EIO, then lands', async (t) => {
      t.teardown(reviveServers)
      await allUp()
      // Three mirrors, two needed: s4 down during a 64 MiB write.
      await must(['volume', 'default', m.state, '11'])
      await servers.s4.stop('SIGKILL')
      const f = await source('degraded.bin', 64 * MiB)
      const w = await copyIn(f.path, 'degraded.bin')
      t.match(w, { written: f.data.length, writeErrors: [], fsync: 'OK', close: 'OK' }, '64 MiB written and fsynced with s4 down', { run: describeRun(w.run) })
      const blocks = await blocksOf('degraded.bin')
      t.equal(blocks.length, 64, '64 blocks')
      t.ok(blocks.every((b) => b.bsl.startsWith('idx:11.')), 'on volume 11')
      const st = await status()
      t.match(vol(st, 11), { health: 'degraded', backlog: 64, mirrors: [{ volume: 2, up: true }, { volume: 3, up: true }, { volume: 4, up: false }] }, 'status: volume 11 degraded, 64 copies to heal, s4 down')
      t.match(vol(st, 4), { health: 'down', backlog: 64 }, 'volume 4 down with the backlog')
      t.equal(st.healBacklog, 64, 'heal backlog 64')
      t.notOk(place(st, 's4:d1').up, 's4:d1 down')
      const on4 = await Promise.all(blocks.map((b) => fsp.stat(objectPath(servers.s4, b)).then(() => true, () => false)))
      t.equal(on4.filter(Boolean).length, 0, 'no block on s4 yet')

      await servers.s4.start()
      // The mount finds s4 back (probe) and heals by itself; no status call meanwhile.
      const t0 = Date.now()
      const healed = await waitFor(async () => {
        for (const b of blocks) if (!(await fsp.stat(objectPath(servers.s4, b)).then(() => true, () => false))) return false
        return true
      }, 30_000, 250)
      t.ok(healed, `the mount healed every block onto s4 by itself (${((Date.now() - t0) / 1000).toFixed(1)} s)`)
      const zero = await waitFor(async () => (await status()).healBacklog === 0, 15_000, 250)
      t.ok(zero, 'the backlog went to 0')
      const st2 = await status()
      t.match(vol(st2, 11), { health: 'healthy', backlog: 0 }, 'volume 11 healthy')
      let same = 0
      for (const [i, b] of blocks.entries()) {
        const want = f.data.subarray(i * MiB, (i + 1) * MiB)
        if ((await readObject(servers.s4, b))?.equals(want) && (await readObject(servers.s2, b))?.equals(want) && (await readObject(servers.s3, b))?.equals(want)) same++
      }
      t.equal(same, 64, 'every block is on s2, s3 and s4 with the right bytes')
      await dropCaches()
      t.match(await timedCat('degraded.bin'), { ok: true, sha256: f.sha, close: 'OK' }, 'the file reads back')

      // Two mirrors, both needed (the default): s3 down, the write's fsync gets EIO.
      await must(['volume', 'default', m.state, '10'])
      await servers.s3.stop('SIGKILL')
      const g = await source('strict.bin', 2 * MiB + 4321)
      const w2 = await copyIn(g.path, 'strict.bin')
      t.equal(w2.written, g.data.length, 'every byte was handed to the mount', { run: describeRun(w2.run) })
      t.equal(w2.fsync, 'EIO', 'fsync fails with EIO: one of two copies, both needed', { run: describeRun(w2.run) })
      t.comment(`min copies = all with s3 down: write errors ${JSON.stringify(w2.writeErrors)}, fsync ${w2.fsync}, close ${w2.close}`)
      t.same(await blocksOf('strict.bin'), [], 'no block of it is in the directory')
      const mem = await timedCat('strict.bin')
      t.match(mem, { ok: true, sha256: g.sha }, 'meanwhile a reader gets the bytes (from the daemon memory)')
      t.equal(mem.close, 'OK', "a reader's close does not report the writer's failed store")
      const st3 = await status()
      t.match(vol(st3, 10), { health: 'degraded', backlog: 0 }, 'volume 10 degraded, nothing recorded as stored')

      await servers.s3.start()
      // The daemon keeps the bytes and retries every second; once s3 is found back they land.
      let stored: Block[] = []
      const landed = await waitFor(async () => (stored = await blocksOf('strict.bin')).length === 3, 20_000, 250)
      t.ok(landed, 'the blocks landed once s3 was back')
      let ok = 0
      for (const [i, b] of stored.entries()) {
        const want = g.data.subarray(i * MiB, (i + 1) * MiB)
        if ((await readObject(servers.s2, b))?.equals(want) && (await readObject(servers.s3, b))?.equals(want)) ok++
      }
      t.equal(ok, 3, 'on both s2 and s3 with the right bytes')
      await m.unmount()
      await m.mount(['copy_timeout=1500'])
      t.match(await timedCat('strict.bin'), { ok: true, sha256: g.sha, close: 'OK' }, 'and it reads back after a remount')
    })

    t.comment(`failover read figures: ${figures.join(' | ')}`)
  })
}
