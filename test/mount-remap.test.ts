// Remap and adopt through the kernel: a volume's data moves between block servers (child
// processes on loopback) while the filesystem is mounted and in use, by changing one row of the
// volume table. No BSL in the directory may change (`bslfs blocks` before and after), every file
// must read back from the new place with the old server killed (files added or rewritten during
// the copy too, while others are deleted), nothing may be left behind (fsck: no orphan
// objects; --delete-old empties the old place), an interrupted remap (the CLI killed with SIGKILL
// or SIGINT, or the mount daemon killed) must leave the old mapping in force and resume where it
// stopped, physical BSLs become a volume with `bslfs adopt` (open files included), and a remap
// without --copy refuses a place that lacks the blocks.
//
// Server, volume and place names (ra, rb, rc; volumes 20 and 7) are chosen not to collide with
// what withMount adds under BSLFS_TEST_VOLUME=remote (server s1, volume 2).
import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import * as fsp from 'node:fs/promises'
import { join } from 'node:path'
import {
  type BlockServer, type Mount, type RunResult, PYTHON, bslfs, bslfsBin, childEnv, describeRun, isMounted, pidAlive, repoRoot,
  run, sleep, startBlockServer, target, volumeKind, waitFor, withMount
} from './helpers/mount'

interface DumpRow { ino: number, index: number, bsl: string, length: number, checksum: string }
interface Block { index: number, bsl: string, length: number, checksum: string, places: string[] }
interface VolumeRow { volume: number, place: string, since: string, history: Array<{ place: string, from: string, to: string }> }
interface RemapReport {
  volume: number, from: string, to: string, blocks: number, bytes: number, copied: number, alreadyThere: number, gone: number,
  checked: number, deleted: number, notDeleted: number, copySeconds: number, seconds: number
}
/** path → sha256 */
type Manifest = Record<string, string>

const MiB = 1024 * 1024

// ---------------------------------------------------------------------------
// Python programs run against the mount

/** stdin: [[path, size], ...]; writes each file (random bytes, fsync, close); prints {path: sha256}. */
const GEN = `
import os, sys, json, hashlib
out = {}
for path, size in json.load(sys.stdin):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = os.urandom(size)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        view, off = memoryview(data), 0
        while off < len(data):
            off += os.write(fd, view[off:off + 1048576])
        os.fsync(fd)
    finally:
        os.close(fd)
    out[path] = hashlib.sha256(data).hexdigest()
json.dump(out, sys.stdout)
`

/** stdin: {path: sha256}; reads every file; prints {n, bad, errors, examples}. */
const CHECK = `
import sys, json, hashlib
want = json.load(sys.stdin)
bad, errors, examples = 0, 0, []
for p, h in sorted(want.items()):
    try:
        with open(p, 'rb') as f:
            got = hashlib.sha256(f.read()).hexdigest()
        if got != h:
            bad += 1
            examples.append(p + ': wrong bytes')
    except OSError as e:
        errors += 1
        examples.append(p + ': ' + str(e))
print(json.dumps({'n': len(want), 'bad': bad, 'errors': errors, 'examples': examples[:10]}))
`

/**
 * argv: manifest file, stop file. Reads the manifest's files in a cycle (their total is larger
 * than the daemon's 64 MiB block cache, so a cyclic scan misses it every time and each read goes
 * to a block server) and checks each sha256, until the stop file appears. Logs every whole-file
 * read as [start (epoch s), duration (s), bytes].
 */
const READER = `
import os, sys, json, time, hashlib
want = json.load(open(sys.argv[1]))
stop = sys.argv[2]
paths = sorted(want)
log, bad, errors, examples = [], 0, 0, []
i = 0
while not os.path.exists(stop):
    p = paths[i % len(paths)]
    i += 1
    t0 = time.time()
    try:
        with open(p, 'rb') as f:
            data = f.read()
        dt = time.time() - t0
        if hashlib.sha256(data).hexdigest() != want[p]:
            bad += 1
            examples.append(p + ': wrong bytes')
        log.append([t0, dt, len(data)])
    except OSError as e:
        errors += 1
        examples.append(p + ': ' + str(e))
print(json.dumps({'log': log, 'bad': bad, 'errors': errors, 'examples': examples[:10]}))
`

/**
 * argv: directory, stop file. Until the stop file appears: adds files (write, fsync, close; a
 * fifth of them over the 1 MiB block size), and now and then deletes or rewrites one of its own
 * (their old blocks are reclaimed in the background, possibly before a remap copies them).
 * Prints {live: {path: sha256}, created: [[path, start, end]], deleted: [[path, time]], rewritten, errors}.
 */
const WRITER = `
import os, sys, json, time, hashlib, random
d, stop = sys.argv[1], sys.argv[2]
os.makedirs(d, exist_ok=True)
live, created, deleted, rewritten, errors = {}, [], [], 0, []
def put(p):
    size = random.randint(1048577, 2200000) if random.random() < 0.2 else random.randint(1, 60000)
    data = os.urandom(size)
    fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    live[p] = hashlib.sha256(data).hexdigest()
i = 0
while not os.path.exists(stop):
    i += 1
    try:
        if i % 6 == 3 and live:
            p = random.choice(sorted(live))
            os.unlink(p)
            del live[p]
            deleted.append([p, time.time()])
        elif i % 6 == 5 and live:
            put(random.choice(sorted(live)))
            rewritten += 1
        else:
            p = os.path.join(d, 'w%04d' % i)
            t0 = time.time()
            put(p)
            created.append([p, t0, time.time()])
    except OSError as e:
        errors.append(str(e))
    time.sleep(0.02)
print(json.dumps({'live': live, 'created': created, 'deleted': deleted, 'rewritten': rewritten, 'errors': errors}))
`

/** argv: file, ready file, go file. Opens the file, says so, waits for the go file, then reads it all. */
const HOLD = `
import os, sys, time, hashlib
path, ready, go = sys.argv[1:4]
fd = os.open(path, os.O_RDONLY)
open(ready, 'w').close()
while not os.path.exists(go):
    time.sleep(0.02)
h = hashlib.sha256()
while True:
    b = os.read(fd, 1048576)
    if not b:
        break
    h.update(b)
os.close(fd)
print(h.hexdigest())
`

// ---------------------------------------------------------------------------
// Helpers

function parseJSON<T> (r: RunResult): T {
  try {
    return JSON.parse(r.stdout) as T
  } catch {
    throw new Error(`not JSON:\n${describeRun(r)}`)
  }
}

/** `bslfs ARGS` that must succeed; its stdout parsed as JSON when `json`. */
async function ok (t: Test, args: string[], what?: string): Promise<RunResult> {
  const r = await bslfs(args, { timeout: 180_000 })
  t.equal(r.code, 0, what ?? `bslfs ${args.slice(0, 2).join(' ')}`, { run: describeRun(r) })
  if (r.code !== 0) throw new Error(`bslfs ${args.join(' ')} failed:\n${describeRun(r)}`)
  return r
}

async function blocksDump (state: string): Promise<DumpRow[]> {
  const r = await bslfs(['blocks', state, '--json'], { timeout: 60_000 })
  if (r.code !== 0) throw new Error(`bslfs blocks failed:\n${describeRun(r)}`)
  return parseJSON<DumpRow[]>(r)
}

async function volumeRow (state: string, volume: number): Promise<VolumeRow | undefined> {
  const r = await bslfs(['volume', 'list', state, '--json'], { timeout: 60_000 })
  if (r.code !== 0) throw new Error(`bslfs volume list failed:\n${describeRun(r)}`)
  return parseJSON<VolumeRow[]>(r).find(v => v.volume === volume)
}

async function bslOf (state: string, path: string): Promise<Block[]> {
  const r = await bslfs(['bsl', state, path, '--json'], { timeout: 60_000 })
  if (r.code !== 0) throw new Error(`bslfs bsl failed:\n${describeRun(r)}`)
  return parseJSON<Block[]>(r)
}

/** The object id a BSL names (its text after the slash). */
const objectId = (bsl: string) => bsl.slice(bsl.lastIndexOf('/') + 1)

/** Where a block server's device keeps an object. */
const objectPath = (s: BlockServer, id: string) => join(s.device, 'objects', id.slice(-2), id)

/** How many objects a block server's device holds. */
async function objectCount (s: BlockServer): Promise<number> {
  let n = 0
  const top = join(s.device, 'objects')
  for (const fan of await fsp.readdir(top).catch(() => [] as string[])) {
    n += (await fsp.readdir(join(top, fan)).catch(() => [] as string[])).length
  }
  return n
}

/** `bslfs fsck` (read-only when mounted) finds nothing wrong: no orphan object, every copy there and good. */
async function fsckClean (t: Test, state: string, what: string): Promise<void> {
  const r = await bslfs(['fsck', state, '--json'], { timeout: 180_000 })
  t.equal(r.code, 0, `${what}: fsck finds no problem`, { run: describeRun(r) })
}

/** Read every file of the manifest through the mount and compare sha256s. */
async function checkAll (t: Test, files: Manifest, what: string): Promise<void> {
  const r = await run(PYTHON, ['-c', CHECK], { input: JSON.stringify(files), timeout: 180_000 })
  t.equal(r.code, 0, `${what}: the check ran`, { run: describeRun(r) })
  const res = parseJSON<{ n: number, bad: number, errors: number, examples: string[] }>(r)
  t.ok(res.n === Object.keys(files).length && res.n > 0, `${what}: ${res.n} files checked`)
  t.equal(res.bad + res.errors, 0, `${what}: every file reads back exactly (${res.bad} wrong, ${res.errors} errors)`, { examples: res.examples })
}

/** Write files [relative path, size] under the mount; returns their manifest (absolute paths). */
async function writeFiles (m: Mount, spec: Array<[string, number]>): Promise<Manifest> {
  const r = await run(PYTHON, ['-c', GEN], { input: JSON.stringify(spec.map(([p, n]) => [join(m.mnt, p), n])), timeout: 300_000 })
  if (r.code !== 0) throw new Error(`writing files failed:\n${describeRun(r)}`)
  return parseJSON<Manifest>(r)
}

/** A fresh filesystem (not mounted yet) with `n` block servers of its own: ra, rb, rc… */
async function setup (t: Test, n: number): Promise<{ m: Mount, servers: BlockServer[] }> {
  const m = await withMount(t, { noMount: true })
  const servers: BlockServer[] = []
  for (let i = 0; i < n; i++) {
    const s = await startBlockServer(join(m.base, `server-${i}`))
    servers.push(s)
    t.teardown(() => s.stop('SIGKILL'))
    await ok(t, ['server', 'add', m.state, `r${'abc'[i]}`, s.url, '--token-file', s.tokenFile])
  }
  await fsp.mkdir(join(m.base, 'ctl'))
  return { m, servers }
}

/** tap's loader variables, which must not reach a child (see run() in helpers/mount.ts). */
const TAP_VARS = [...new Set(['NODE_OPTIONS', '_TAPJS_PROCESSINFO_EXTERNAL_ID_', '_TAPJS_PROCESSINFO_EXCLUDE_',
  ...Object.keys(process.env).filter(k => k.startsWith('_TAPJS_'))])]

/** `bslfs ARGS` as a child we can kill: its pid (env execs node, so the pid is the CLI's) and its end. */
function startCli (args: string[]): { pid: number, done: Promise<{ code: number | null, signal: string | null, out: string }> } {
  const child = spawn('env', [...TAP_VARS.flatMap(v => ['-u', v]), '--', process.execPath, bslfsBin, ...args],
    { cwd: repoRoot, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stdout.on('data', c => { out += c })
  child.stderr.on('data', c => { out += c })
  const done = new Promise<{ code: number | null, signal: string | null, out: string }>(resolve =>
    child.once('exit', (code, signal) => setTimeout(() => resolve({ code, signal, out }), 100)))
  return { pid: child.pid!, done }
}

/** Send a signal to a process we started, if it is still there. */
function kill (pid: number, signal: NodeJS.Signals): void {
  try { process.kill(pid, signal) } catch {}
}

/** Wait until a count stops changing for `quietMs`; returns it. */
async function settled (count: () => Promise<number>, quietMs = 1500, maxMs = 30_000): Promise<number> {
  const end = Date.now() + maxMs
  let last = await count()
  let since = Date.now()
  while (Date.now() < end) {
    await sleep(100)
    const now = await count()
    if (now !== last) { last = now; since = Date.now() } else if (Date.now() - since >= quietMs) break
  }
  return last
}

function stats (xs: number[]): string {
  if (xs.length === 0) return 'no reads'
  const s = [...xs].sort((a, b) => a - b)
  const med = s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2
  return `max ${s[s.length - 1]!.toFixed(1)} ms, median ${med.toFixed(1)} ms over ${s.length} reads`
}

/** The logical volume of a BSL text (idx:V.I/ID, vol:V/ID, mir:V/ID), or undefined for a physical one. */
function volumeOf (bsl: string): number | undefined {
  const m = /^(?:idx:(\d+)\.\d+|vol:(\d+)|mir:(\d+))\/[0-9a-f]{16}$/.exec(bsl)
  return m ? Number(m[1] ?? m[2] ?? m[3]) : undefined
}

// ---------------------------------------------------------------------------

// The file makes its own servers: under BSLFS_TEST_VOLUME=remote it would only run again.
if (target === 'bslfs' && volumeKind === 'local') {
  t.test('remap --copy --delete-old of a volume of 500 files while they are read and written', async t => {
    const { m, servers: [ra, rb] } = await setup(t, 2)
    await ok(t, ['volume', 'add', m.state, '20', 'ra:d1'])
    await ok(t, ['volume', 'default', m.state, '20'])
    await m.mount()

    // 500 files in 10 directories: 470 small ones (1 B..40 KiB) and 30 of 1..3.5 MiB (several blocks).
    // About 80 MiB in all: more than the daemon's 64 MiB block cache, so the reader's cyclic scan
    // below reads from a block server every time.
    const spec: Array<[string, number]> = []
    for (let i = 0; i < 500; i++) {
      const size = i % 17 === 3 && spec.filter(([, n]) => n > MiB).length < 30
        ? MiB + 1 + Math.floor(Math.random() * 2.5 * MiB)
        : 1 + Math.floor(Math.random() * 40 * 1024)
      spec.push([`orig/d${i % 10}/f${String(i).padStart(3, '0')}`, size])
    }
    let big = spec.filter(([, n]) => n > MiB).length
    for (let i = 0; big < 30; i++) if (spec[i]![1] <= MiB) { spec[i]![1] = 3 * MiB + 7; big++ }
    const orig = await writeFiles(m, spec)
    const totalBytes = spec.reduce((a, [, n]) => a + n, 0)
    t.equal(Object.keys(orig).length, 500, `500 files written (${(totalBytes / MiB).toFixed(1)} MiB, ${big} over 1 MiB)`)

    const before = await blocksDump(m.state)
    const origInos = new Set(before.map(b => b.ino))
    t.equal(origInos.size, 500, 'the block dump covers the 500 files')
    t.ok(before.length > 500, `some files have several blocks (${before.length} block records)`)
    t.ok(before.every(b => volumeOf(b.bsl) === 20), 'every block is a logical BSL of volume 20')
    t.ok(before.every(b => existsSync(objectPath(ra, objectId(b.bsl)))), 'every object is on ra')

    const ctl = join(m.base, 'ctl')
    const manifestFile = join(ctl, 'orig.json')
    const stop = join(ctl, 'stop')
    await fsp.writeFile(manifestFile, JSON.stringify(orig))
    const reader = run(PYTHON, ['-c', READER, manifestFile, stop], { timeout: 300_000 })
    const writer = run(PYTHON, ['-c', WRITER, join(m.mnt, 'new'), stop], { timeout: 300_000 })
    await sleep(2000) // both are under way before the remap starts

    const remapStart = Date.now()
    const rr = await bslfs(['remap', m.state, '20', 'rb:d1', '--copy', '--delete-old', '--json'], { timeout: 180_000 })
    const remapEnd = Date.now()
    await sleep(1500) // and still running after it
    await fsp.writeFile(stop, '')
    const [rd, wr] = await Promise.all([reader, writer])
    t.equal(rr.code, 0, 'remap --copy --delete-old succeeds under load', { run: describeRun(rr) })
    const rep = parseJSON<RemapReport>(rr)
    t.match(rep, { volume: 20, from: 'ra:d1', to: 'rb:d1', alreadyThere: 0, notDeleted: 0 }, 'the report names the move')
    t.ok(rep.blocks >= before.length, `every block of the volume was in the copy (${rep.blocks} ≥ ${before.length})`)
    t.equal(rep.copied + rep.alreadyThere + rep.gone, rep.blocks, 'each block copied, already there, or deleted meanwhile')
    t.ok(rep.bytes >= before.reduce((a, b) => a + b.length, 0), `bytes copied (${rep.bytes}) cover the original files`)
    t.ok(rep.deleted >= before.length, `old copies removed (${rep.deleted})`)

    // The switch: the moment the volume row changed, as the history records it.
    const row = await volumeRow(m.state, 20)
    t.equal(row?.place, 'rb:d1', 'volume list: volume 20 is on rb:d1')
    t.equal(row?.history.length, 1, 'volume list: one earlier place')
    t.match(row?.history[0], { place: 'ra:d1' }, 'volume list: it was on ra:d1')
    const switchAt = Date.parse(row!.history[0]!.to)
    t.equal(row!.since, row!.history[0]!.to, 'it is on rb since it left ra')
    t.ok(switchAt >= remapStart && switchAt <= remapEnd, 'the switch happened during the remap command')

    // The concurrent reader: never a wrong byte or an error, and reads all through the copy.
    t.equal(rd.code, 0, 'the reader ran', { run: describeRun(rd) })
    const reads = parseJSON<{ log: Array<[number, number, number]>, bad: number, errors: number, examples: string[] }>(rd)
    t.equal(reads.bad, 0, `the reader never saw wrong bytes (${reads.log.length} reads)`, { examples: reads.examples })
    t.equal(reads.errors, 0, 'the reader never got an error', { examples: reads.examples })
    const ms = reads.log.map(([t0, dt, n]) => ({ start: t0 * 1000, end: (t0 + dt) * 1000, dt: dt * 1000, n }))
    const duringCopy = ms.filter(r => r.start >= remapStart && r.end <= switchAt)
    const aroundSwitch = ms.filter(r => r.end >= switchAt - 500 && r.start <= switchAt + 500)
    const beforeRemap = ms.filter(r => r.end < remapStart)
    t.ok(duringCopy.length > 0, `the reader read during the copy (${duringCopy.length} reads)`)
    t.ok(aroundSwitch.length > 0, `the reader read around the switch (${aroundSwitch.length} reads)`)
    t.ok(ms.some(r => r.start > switchAt), 'and after it')
    const stall = Math.max(...ms.filter(r => r.end >= remapStart && r.start <= remapEnd).map(r => r.dt))
    t.ok(stall < 15_000, `no read stalled during the remap (longest ${stall.toFixed(0)} ms)`)

    // The concurrent writer: every change succeeded, some of them while the copy ran.
    t.equal(wr.code, 0, 'the writer ran', { run: describeRun(wr) })
    const written = parseJSON<{ live: Manifest, created: Array<[string, number, number]>, deleted: Array<[string, number]>, rewritten: number, errors: string[] }>(wr)
    t.same(written.errors, [], 'every write and delete succeeded')
    const added = written.live
    const addedDuringCopy = written.created.filter(([, t0, t1]) => t0 * 1000 >= remapStart && t1 * 1000 <= switchAt).length
    const deletedDuringCopy = written.deleted.filter(([, t0]) => t0 * 1000 >= remapStart && t0 * 1000 <= switchAt).length
    t.ok(addedDuringCopy > 0, `files were added while the copy ran (${addedDuringCopy} of ${written.created.length})`)
    t.ok(deletedDuringCopy > 0, `files were deleted while the copy ran (${deletedDuringCopy} of ${written.deleted.length})`)
    t.ok(written.created.some(([, t0]) => t0 * 1000 > switchAt), 'and added after the switch')
    t.ok(written.deleted.every(([p]) => !existsSync(p)), 'the deleted files are gone')

    // No BSL changed: the block maps of the 500 files are exactly as before. (The files added
    // meanwhile add records of their own inodes, all on volume 20.)
    const after = await blocksDump(m.state)
    t.same(after.filter(b => origInos.has(b.ino)), before, 'the block map entries of the original files are unchanged')
    const newRows = after.filter(b => !origInos.has(b.ino))
    t.equal(new Set(newRows.map(b => b.ino)).size, Object.keys(added).length, `the writer's files have block records (${newRows.length})`)
    t.ok(newRows.every(b => volumeOf(b.bsl) === 20), 'the added files are on volume 20 too')
    const one = await bslOf(m.state, join(m.mnt, spec.find(([, n]) => n > MiB)![0]))
    t.ok(one.length > 1 && one.every(b => b.places.length === 1 && b.places[0] === 'rb:d1'), 'bsl: a file\'s blocks resolve to rb:d1', { one })

    // The old place is emptied (--delete-old), the new one holds everything.
    t.ok(before.every(b => !existsSync(objectPath(ra, objectId(b.bsl)))), 'ra no longer holds the original files\' objects')
    t.equal(await objectCount(ra), 0, 'ra holds no object of the volume at all')
    const notOnRb = after.filter(b => !existsSync(objectPath(rb, objectId(b.bsl))))
    t.same(notOnRb, [], 'rb holds every object')

    // The old server goes away for good: everything reads, through this daemon and a fresh one
    // (an empty block cache).
    await ra.stop('SIGKILL')
    const everything = { ...orig, ...added }
    await checkAll(t, everything, 'old server killed')
    await m.remount()
    await checkAll(t, everything, 'old server killed, after a remount')
    // Nothing left behind on the new place either (copies of blocks deleted during the copy).
    await fsckClean(t, m.state, 'after the remap')

    const mbps = rep.bytes / 1e6 / rep.copySeconds
    t.comment(`remap copy: ${rep.blocks} blocks, ${(rep.bytes / MiB).toFixed(1)} MiB in ${rep.copySeconds.toFixed(2)} s = ${mbps.toFixed(1)} MB/s ` +
      `(${(rep.bytes / MiB / rep.copySeconds).toFixed(1)} MiB/s); whole remap ${rep.seconds.toFixed(2)} s incl. --delete-old; ` +
      `during the copy the writer added ${addedDuringCopy} files and deleted ${deletedDuringCopy} (${rep.gone} blocks deleted before the copy reached them); ` +
      `in all it created ${written.created.length}, deleted ${written.deleted.length}, rewrote ${written.rewritten}`)
    t.comment(`reader latency per whole file (${(totalBytes / 500 / 1024).toFixed(0)} KiB on average): before the remap ${stats(beforeRemap.map(r => r.dt))}`)
    t.comment(`reader latency during the copy: ${stats(duringCopy.map(r => r.dt))}`)
    t.comment(`reader latency around the switch (±0.5 s): ${stats(aroundSwitch.map(r => r.dt))}`)
    const bigReads = (rs: typeof ms) => rs.filter(r => r.n > MiB).map(r => r.dt)
    t.comment(`  files over 1 MiB only: before ${stats(bigReads(beforeRemap))}; during the copy ${stats(bigReads(duringCopy))}; around the switch ${stats(bigReads(aroundSwitch))}`)
  })

  t.test('an interrupted remap (CLI or daemon killed) leaves the old mapping and resumes', async t => {
    const { m, servers: [ra, rb, rc] } = await setup(t, 3)
    await ok(t, ['volume', 'add', m.state, '20', 'ra:d1'])
    await ok(t, ['volume', 'default', m.state, '20'])
    await m.mount()
    // 8 files of 10 MiB (80 blocks) and a few small ones: a copy of a few seconds.
    const spec: Array<[string, number]> = []
    for (let i = 0; i < 8; i++) spec.push([`big${i}`, 10 * MiB + 1000 * (i + 1)])
    for (let i = 0; i < 12; i++) spec.push([`small${i}`, 1 + 3000 * i])
    const files = await writeFiles(m, spec)
    const before = await blocksDump(m.state)
    const blocks = before.length
    t.equal(blocks, 8 * 11 + 12, 'block records: 11 per big file, one per small file')

    // 1. The CLI is killed (SIGKILL) half-way through the copy: its control connection closes,
    // the daemon stops copying and the volume stays where it was.
    const cli = startCli(['remap', m.state, '20', 'rb:d1', '--copy', '--json'])
    const seen = await waitFor(async () => (await objectCount(rb)) >= 30, 30_000, 10)
    const atKill = await objectCount(rb)
    const stillRunning = pidAlive(cli.pid)
    kill(cli.pid, 'SIGKILL')
    const killed = await cli.done
    t.ok(seen && stillRunning, `the CLI was killed mid-copy (${atKill} of ${blocks} blocks on rb)`, { out: killed.out })
    t.equal(killed.signal, 'SIGKILL', 'the CLI died of SIGKILL')
    const partial = await settled(() => objectCount(rb))
    t.ok(partial > 0 && partial < blocks, `the daemon stopped copying: ${partial} of ${blocks} blocks on rb`)
    let row = await volumeRow(m.state, 20)
    t.equal(row?.place, 'ra:d1', 'volume list: volume 20 is still on ra:d1')
    t.equal(row?.history.length, 0, 'volume list: it never moved')
    t.same(await blocksDump(m.state), before, 'no block record changed')
    await checkAll(t, files, 'after the killed remap')

    // Again, interrupted with Ctrl-C (SIGINT) this time, a little further on.
    const cli1 = startCli(['remap', m.state, '20', 'rb:d1', '--copy', '--json'])
    const seen1 = await waitFor(async () => (await objectCount(rb)) >= partial + 20, 30_000, 10)
    const stillRunning1 = pidAlive(cli1.pid)
    kill(cli1.pid, 'SIGINT')
    const interrupted = await cli1.done
    t.ok(seen1 && stillRunning1, 'the second run was interrupted mid-copy', { out: interrupted.out })
    t.not(interrupted.code, 0, 'it did not report success', { out: interrupted.out })
    const partial1 = await settled(() => objectCount(rb))
    t.ok(partial1 > partial && partial1 < blocks, `the daemon stopped copying again: ${partial1} of ${blocks} blocks on rb`)
    t.equal((await volumeRow(m.state, 20))?.place, 'ra:d1', 'volume list: volume 20 is still on ra:d1')

    // The same command again resumes: what reached rb is not copied twice.
    const again = await ok(t, ['remap', m.state, '20', 'rb:d1', '--copy', '--json'], 'the same remap again finishes')
    const rep = parseJSON<RemapReport>(again)
    t.match(rep, { from: 'ra:d1', to: 'rb:d1', blocks }, 'it moved the volume')
    t.equal(rep.alreadyThere, partial1, `it resumed: ${rep.alreadyThere} blocks already there`)
    t.equal(rep.copied, blocks - partial1, `and copied the other ${rep.copied}`)
    t.equal((await volumeRow(m.state, 20))?.place, 'rb:d1', 'volume list: volume 20 is on rb:d1 now')
    t.same(await blocksDump(m.state), before, 'no block record changed')
    await ra.stop('SIGKILL')

    // 2. The mount daemon is killed (SIGKILL) in the middle of a remap to rc.
    const pid = await m.daemonPid()
    t.ok(pid, 'the daemon pid')
    const cli2 = startCli(['remap', m.state, '20', 'rc:d1', '--copy', '--json'])
    const seen2 = await waitFor(async () => (await objectCount(rc)) >= 30, 30_000, 10)
    const stillRunning2 = pidAlive(cli2.pid)
    kill(pid!, 'SIGKILL')
    const lost = await cli2.done
    t.ok(seen2 && stillRunning2, 'the daemon was killed mid-copy')
    t.not(lost.code, 0, 'the CLI reports the failure', { out: lost.out })
    t.match(lost.out, /control connection|control socket/, 'it says the mount went away', { out: lost.out })
    t.ok(await waitFor(() => !pidAlive(pid!), 10_000), 'the daemon is gone')
    const partial2 = await settled(() => objectCount(rc))
    t.ok(partial2 > 0 && partial2 < blocks, `${partial2} of ${blocks} blocks reached rc`)
    await run('fusermount', ['-uz', m.mnt], { timeout: 30_000 })
    t.notOk(isMounted(m.mnt), 'the dead mount is gone')

    row = await volumeRow(m.state, 20) // offline: the CLI opens the directory itself
    t.equal(row?.place, 'rb:d1', 'volume list (offline): volume 20 is still on rb:d1')
    t.same(await blocksDump(m.state), before, 'no block record changed')
    await m.mount()
    await checkAll(t, files, 'remounted after the daemon was killed')
    t.equal((await volumeRow(m.state, 20))?.place, 'rb:d1', 'volume list (mounted): still on rb:d1')
    await m.unmount()

    // The same remap, offline this time, resumes too.
    const off = await ok(t, ['remap', m.state, '20', 'rc:d1', '--copy', '--json'], 'the remap again, offline, finishes')
    const rep2 = parseJSON<RemapReport>(off)
    t.match(rep2, { from: 'rb:d1', to: 'rc:d1', blocks }, 'it moved the volume')
    t.equal(rep2.alreadyThere, partial2, `it resumed: ${rep2.alreadyThere} blocks already there`)
    t.equal(rep2.copied, blocks - partial2, `and copied the other ${rep2.copied}`)
    row = await volumeRow(m.state, 20)
    t.equal(row?.place, 'rc:d1', 'volume list: volume 20 is on rc:d1')
    t.same(row?.history.map(h => h.place), ['ra:d1', 'rb:d1'], 'volume list: it was on ra, then rb')
    await rb.stop('SIGKILL')
    await m.mount()
    await checkAll(t, files, 'on rc, with ra and rb killed')
    t.same(await blocksDump(m.state), before, 'no block record changed')
    await fsckClean(t, m.state, 'on rc')
    t.comment(`killed remaps: CLI at ${partial}/${blocks} blocks, Ctrl-C at ${partial1}/${blocks}, daemon at ${partial2}/${blocks}`)
  })

  t.test('adopt: physical BSLs become a volume, which can then be remapped', async t => {
    const { m, servers: [ra, rb] } = await setup(t, 2)
    await ok(t, ['volume', 'default', m.state, 'ra:d1'])
    await m.mount()
    const files = await writeFiles(m, [['a', 10], ['b', 3 * MiB + 5], ['dir/c', 200_000], ['held', 2 * MiB + 99], ['d', MiB]])
    const held = join(m.mnt, 'held')
    const ctl = join(m.base, 'ctl')

    for (const p of Object.keys(files)) {
      const bl = await bslOf(m.state, p)
      t.ok(bl.length > 0 && bl.every(b => b.bsl.startsWith('phys:ra:d1/') && b.places[0] === 'ra:d1'), `${p}: physical BSLs on ra:d1`, { bl })
    }
    const before = await blocksDump(m.state)

    // A reader holds "held" open (not read yet) across the adopt and the remap.
    const hold = run(PYTHON, ['-c', HOLD, held, join(ctl, 'ready'), join(ctl, 'go')], { timeout: 180_000 })
    t.ok(await waitFor(() => existsSync(join(ctl, 'ready')), 30_000), 'the held file is open')

    const refused = await bslfs(['remap', m.state, 'ra:d1', 'rb:d1', '--copy'], { timeout: 60_000 })
    t.equal(refused.code, 1, 'remap of a place refuses', { run: describeRun(refused) })
    t.match(refused.stderr, /physical/, 'it explains physical BSLs')
    t.match(refused.stderr, /bslfs adopt STATE ra:d1 --as VOL/, 'and points at adopt')

    const adopted = await ok(t, ['adopt', m.state, 'ra:d1', '--as', '7'])
    t.match(adopted.stdout, /\b10 blocks of 5 files\b/, 'adopt reports 10 blocks of 5 files', { out: adopted.stdout })
    const afterAdopt = await blocksDump(m.state)
    t.same(afterAdopt.map(b => ({ ...b, bsl: objectId(b.bsl) })), before.map(b => ({ ...b, bsl: objectId(b.bsl) })),
      'the same blocks, objects, lengths and checksums')
    t.ok(afterAdopt.every(b => b.bsl === `vol:7/${objectId(b.bsl)}`), 'every BSL is now vol:7/ID')
    t.match((await bslOf(m.state, 'b'))[0], { places: ['ra:d1'] }, 'bsl: vol:7 resolves to ra:d1')
    const vl = await volumeRow(m.state, 7)
    t.equal(vl?.place, 'ra:d1', 'volume 7 was created on ra:d1')
    const st = await ok(t, ['status', m.state, '--json'])
    t.match(JSON.parse(st.stdout), { defaultVolume: 7 }, 'the default is volume 7 now')
    t.notOk('defaultPlace' in JSON.parse(st.stdout), 'and no longer the place')
    Object.assign(files, await writeFiles(m, [['e', MiB + 3]]))
    t.ok((await bslOf(m.state, 'e')).every(b => volumeOf(b.bsl) === 7), 'a new file goes to volume 7')

    const rr = await ok(t, ['remap', m.state, '7', 'rb:d1', '--copy', '--delete-old', '--json'], 'remap 7 to rb:d1')
    const rep = parseJSON<RemapReport>(rr)
    t.match(rep, { volume: 7, from: 'ra:d1', to: 'rb:d1', blocks: 12, copied: 12, deleted: 12, notDeleted: 0 }, 'all 12 blocks copied, old copies deleted')
    t.equal(await objectCount(ra), 0, 'ra holds no object')
    t.equal(await objectCount(rb), 12, 'rb holds the 12')
    t.match((await bslOf(m.state, 'b'))[0], { places: ['rb:d1'] }, 'bsl: vol:7 resolves to rb:d1')
    await ra.stop('SIGKILL')

    // The held file reads through the descriptor it opened when its BSLs were physical.
    await fsp.writeFile(join(ctl, 'go'), '')
    const h = await hold
    t.equal(h.code, 0, 'the held file was read', { run: describeRun(h) })
    t.equal(h.stdout.trim(), files[held], 'the file held open across adopt and remap reads back exactly')
    await checkAll(t, files, 'ra killed')
    await m.remount()
    await checkAll(t, files, 'ra killed, after a remount')
    t.equal((await blocksDump(m.state)).filter(b => before.some(o => o.ino === b.ino)).length, before.length, 'the adopted records are still there')
    await fsckClean(t, m.state, 'adopted and remapped')
  })

  t.test('remap without --copy checks that the new place holds the blocks', async t => {
    const { m, servers: [ra, rb] } = await setup(t, 2)
    await ok(t, ['volume', 'add', m.state, '20', 'ra:d1'])
    await ok(t, ['volume', 'default', m.state, '20'])
    await m.mount()
    const spec: Array<[string, number]> = []
    for (let i = 0; i < 100; i++) spec.push([`f${i}`, 1 + 997 * i])
    spec.push(['big', 3 * MiB])
    const files = await writeFiles(m, spec)
    const before = await blocksDump(m.state)
    const n = before.length
    t.equal(n, 103, '103 blocks')

    let r = await bslfs(['remap', m.state, '20', 'rb:d1'], { timeout: 60_000 })
    t.equal(r.code, 1, 'remap to an empty place refuses', { run: describeRun(r) })
    t.match(r.stderr, /lacks 64 of the 64 blocks checked \(a sample\)/, 'with the count of a sample of 64')
    t.match(r.stderr, /--copy/, 'and suggests --copy')
    r = await bslfs(['remap', m.state, '20', 'rb:d1', '--verify'], { timeout: 60_000 })
    t.equal(r.code, 1, 'remap --verify refuses too', { run: describeRun(r) })
    t.match(r.stderr, new RegExp(`lacks ${n} of the ${n} blocks checked`), 'with the count of every block')
    t.equal((await volumeRow(m.state, 20))?.place, 'ra:d1', 'nothing moved')

    // The objects copied by hand; one left out: --verify finds exactly that one.
    const objs = join(rb.device, 'objects')
    await fsp.rm(objs, { recursive: true, force: true })
    const cp = await run('cp', ['-a', join(ra.device, 'objects'), objs])
    t.equal(cp.code, 0, 'cp -a the objects', { run: describeRun(cp) })
    const gone = objectPath(rb, objectId(before[50]!.bsl))
    await fsp.rename(gone, join(m.base, 'ctl', 'aside'))
    r = await bslfs(['remap', m.state, '20', 'rb:d1', '--verify'], { timeout: 60_000 })
    t.equal(r.code, 1, 'remap --verify refuses a place that lacks one block', { run: describeRun(r) })
    t.match(r.stderr, new RegExp(`lacks 1 of the ${n} blocks checked`), 'and says one')
    t.match(r.stderr, objectId(before[50]!.bsl), 'and which')
    await fsp.rename(join(m.base, 'ctl', 'aside'), gone)

    r = await ok(t, ['remap', m.state, '20', 'rb:d1', '--json'], 'remap without --copy to a place that holds the blocks')
    t.match(parseJSON<RemapReport>(r), { from: 'ra:d1', to: 'rb:d1', blocks: n, checked: 64, copied: 0, deleted: 0 }, 'a sample of 64 checked')
    t.equal((await volumeRow(m.state, 20))?.place, 'rb:d1', 'volume 20 is on rb:d1')
    await checkAll(t, files, 'on rb')

    // Back to ra (which still has everything), offline, every block checked.
    await m.unmount()
    r = await ok(t, ['remap', m.state, '20', 'ra:d1', '--verify', '--json'], 'remap --verify back to ra (offline)')
    t.match(parseJSON<RemapReport>(r), { from: 'rb:d1', to: 'ra:d1', blocks: n, checked: n }, 'every block checked')
    await rb.stop('SIGKILL')
    await m.mount()
    await checkAll(t, files, 'back on ra, rb killed')
    t.same(await blocksDump(m.state), before, 'no block record changed')

    // A mirrored volume is remapped one mirror at a time.
    await ok(t, ['volume', 'add', m.state, '21', 'local:d0'])
    await ok(t, ['mirror', m.state, '30', '20', '21'])
    r = await bslfs(['remap', m.state, '30', 'ra:d1', '--copy'], { timeout: 60_000 })
    t.equal(r.code, 1, 'remap of a mirrored volume refuses', { run: describeRun(r) })
    t.match(r.stderr, /mirrored on 20, 21/, 'and names its mirrors')
  })
}
