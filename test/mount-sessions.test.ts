// Mount sessions across two mounts of one filesystem on PostgreSQL (two daemons standing for hosts A
// and B, a short session expiry): the sessions status lists, an unlink on A of a file B is reading, a
// frozen A fenced when it comes back, and a killed A whose unlinked-open file B's lease frees.
// Runs once, in the mount suite's first pass.
import t from 'tap'
import * as fs from 'node:fs'
import { dirname, join } from 'node:path'
import { parseFsName, runtimePaths } from '../src/daemon/location'
import { PgKv } from '../src/directory/postgres'
import { expired, readSessions } from '../src/directory/sessions'
import { describeRun, isMounted, py, sha256, sleep, waitFor } from './helpers/mount'
import { sharedSkip as skip, twoMounts } from './helpers/shared-mounts'

const HEARTBEAT_S = 0.5
const EXPIRY_S = 2
const OPTIONS = `session_heartbeat=${HEARTBEAT_S},session_expiry=${EXPIRY_S}`

interface SessionJson { session: string, host: string, pid: number, mountpoint: string, live: boolean, jobs: boolean }

/** Regular files under `dir` (the block server's device: one per object). */
function countFiles (dir: string): number {
  let n = 0
  for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) if (e.isFile()) n++
  return n
}

t.test('sessions of two mounts of one URL', { skip }, async t => {
  const s = await twoMounts(t, { options: OPTIONS })
  const device = join(dirname(s.a), 'server', 'd1')
  const sessions = async (): Promise<SessionJson[]> => {
    const r = await s.must(['status', '--json', s.url])
    return (JSON.parse(r.stdout) as { sessions: SessionJson[] }).sessions
  }
  const sessionOf = async (mnt: string): Promise<SessionJson | undefined> => (await sessions()).find(x => x.mountpoint === mnt)
  // Read from the directory itself: \`bslfs status URL\` asks a mount of it on this host, and a frozen one does not answer.
  process.env.PGPASSFILE = s.env.PGPASSFILE
  const kv = await PgKv.open(s.url)
  t.teardown(async () => await kv.close())
  const storedSession = async (mnt: string): Promise<{ live: boolean } | undefined> => {
    const row = (await readSessions(kv)).find(x => x.mountpoint === mnt)
    return row && { live: !expired(row) }
  }

  t.test('status lists the sessions; an unmounted one is gone', async t => {
    const all = await sessions()
    t.same(all.map(x => x.mountpoint).sort(), [s.a, s.b].sort(), 'both mounts listed')
    t.ok(all.every(x => x.live && x.pid > 0 && x.host.length > 0), 'both live, with host and pid')
    t.equal(all.filter(x => x.jobs).length, 1, 'one of them runs the background jobs')
    const c = join(dirname(s.a), 'host-c')
    fs.mkdirSync(c)
    await s.must(['mount', '-o', OPTIONS, s.url, c])
    t.teardown(async () => { if (isMounted(c)) await s.cli(['unmount', '--lazy', c]) })
    t.ok(await sessionOf(c), 'a third mount is listed')
    const text = await s.must(['status', s.url])
    t.match(text.stdout, /sessions:/, 'the text status has the sessions')
    t.ok(text.stdout.includes(c), 'with the mount point')
    await s.must(['unmount', c])
    t.same((await sessions()).map(x => x.mountpoint).sort(), [s.a, s.b].sort(), 'after its unmount it is gone')
  })

  t.test('unlink on A of a file B reads: B reads to the end; the objects go after B closes', async t => {
    const before = countFiles(device)
    const data = Buffer.alloc(3 << 20)
    for (let i = 0; i < data.length; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i)
    fs.writeFileSync(join(s.a, 'big'), data)
    t.ok(countFiles(device) > before, 'the file has objects on the server')
    const ready = join(dirname(s.a), 'reader-ready')
    const go = join(dirname(s.a), 'reader-go')
    await waitFor(() => fs.existsSync(join(s.b, 'big')), 5000)
    const reader = py(`
import hashlib, time
f = os.open(sys.argv[1], os.O_RDONLY)
h = hashlib.sha256()
h.update(os.read(f, 65536))
open(sys.argv[2], 'w').close()
while not os.path.exists(sys.argv[3]): time.sleep(0.02)
time.sleep(0.5)
while True:
    b = os.read(f, 1 << 20)
    if not b: break
    h.update(b)
print('sha ' + h.hexdigest())
os.close(f)
`, [join(s.b, 'big'), ready, go])
    t.ok(await waitFor(() => fs.existsSync(ready), 10_000), 'B has it open')
    fs.unlinkSync(join(s.a, 'big'))
    t.notOk(fs.existsSync(join(s.a, 'big')), 'gone on A')
    fs.writeFileSync(go, '')
    const r = await reader
    t.equal(r.results.sha, sha256(data), `B read the whole file after A unlinked it\n${describeRun(r.run)}`)
    t.ok(await waitFor(() => countFiles(device) === before, 10_000, 200), 'its objects are deleted after B closed it')
  })

  t.test('SIGSTOP of A past its expiry: fenced when it comes back, B untouched, A recovers', async t => {
    fs.writeFileSync(join(s.b, 'keep'), 'B wrote this\n')
    await waitFor(() => fs.existsSync(join(s.a, 'keep')), 5000)
    const a = await sessionOf(s.a)
    t.ok(a, 'A has a session')
    process.kill(a!.pid, 'SIGSTOP')
    let stopped = true
    t.teardown(() => { if (stopped) process.kill(a!.pid, 'SIGCONT') })
    await sleep(EXPIRY_S * 1000 + 500)
    t.ok(await waitFor(async () => (await storedSession(s.a)) === undefined, 10_000, 200), 'B\'s lease cleaned up after A\'s expired session')
    // Asked while A is frozen: the kernel holds the requests, A meets them first thing when it runs again.
    const writer = py(`
attempt('mkdir', os.mkdir, os.path.join(sys.argv[1], 'fenced-dir'))
def overwrite():
    f = os.open(os.path.join(sys.argv[1], 'keep'), os.O_WRONLY)
    try:
        os.write(f, b'A overwrote it')
        os.fsync(f)
    finally:
        os.close(f)
attempt('write', overwrite)
`, [s.a])
    await sleep(300)
    process.kill(a!.pid, 'SIGCONT')
    stopped = false
    const w = await writer
    t.equal(w.results.mkdir, 'EIO', `A's mkdir fails with EIO\n${describeRun(w.run)}`)
    t.equal(w.results.write, 'EIO', 'A\'s write fails with EIO')
    t.equal(fs.readFileSync(join(s.b, 'keep'), 'utf8'), 'B wrote this\n', 'B\'s data untouched')
    const log = fs.readFileSync(runtimePaths(parseFsName(s.url), s.a).log, 'utf8')
    t.match(log, /fenced: .*expiry/, 'A\'s log says why it refused')
    t.ok(await waitFor(async () => (await sessionOf(s.a))?.live === true, 10_000, 200), 'A registered again')
    fs.mkdirSync(join(s.a, 'after'))
    t.ok(fs.existsSync(join(s.a, 'after')), 'A changes things again')
    t.match(fs.readFileSync(runtimePaths(parseFsName(s.url), s.a).log, 'utf8'), /registered again/, 'A\'s log says it re-registered')
  })

  t.test('kill -9 of A holding locks and an unlinked open file: B takes the locks and frees the file after the expiry, fsck clean', async t => {
    fs.writeFileSync(join(s.a, 'lockfile'), 'x')
    const before = countFiles(device)
    const ready = join(dirname(s.a), 'holder-ready')
    const holder = py(`
import time, fcntl
p = sys.argv[1]
with open(p, 'wb') as f: f.write(os.urandom(2 << 20))
f = os.open(p, os.O_RDONLY)
os.unlink(p)
l = os.open(sys.argv[4], os.O_RDWR)
fcntl.flock(l, fcntl.LOCK_EX)
fcntl.lockf(l, fcntl.LOCK_EX, 10, 0)
open(sys.argv[2], 'w').close()
while not os.path.exists(sys.argv[3]): time.sleep(0.1)
`, [join(s.a, 'held'), ready, join(dirname(s.a), 'holder-stop'), join(s.a, 'lockfile')])
    t.ok(await waitFor(() => fs.existsSync(ready), 10_000), 'A holds an unlinked file open')
    t.ok(countFiles(device) > before, 'its objects are on the server')
    const tryLocks = `
import fcntl
l = os.open(sys.argv[1], os.O_RDWR)
attempt('flock', fcntl.flock, l, fcntl.LOCK_EX | fcntl.LOCK_NB)
attempt('fcntl', fcntl.lockf, l, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
`
    const held = await py(tryLocks, [join(s.b, 'lockfile')])
    t.same([held.results.flock, held.results.fcntl], ['EAGAIN', 'EAGAIN'], `B cannot take A's locks while A lives\n${describeRun(held.run)}`)
    const a = await sessionOf(s.a)
    process.kill(a!.pid, 'SIGKILL')
    fs.writeFileSync(join(dirname(s.a), 'holder-stop'), '')
    await holder
    t.ok(await waitFor(async () => (await storedSession(s.a)) === undefined, 15_000, 200), 'A\'s session is cleaned up by B after the expiry')
    t.ok(await waitFor(() => countFiles(device) === before, 15_000, 200), 'the file\'s objects are deleted')
    const taken = await py(tryLocks, [join(s.b, 'lockfile')])
    t.same([taken.results.flock, taken.results.fcntl], ['OK', 'OK'], `B takes the locks A held once A's session is cleaned up\n${describeRun(taken.run)}`)
    const f = await s.cli(['fsck', '--json', s.url])
    const report = JSON.parse(f.stdout) as { clean: boolean, openOrphans: number }
    t.equal(report.clean, true, `fsck is clean\n${describeRun(f)}`)
    t.equal(report.openOrphans, 0, 'no open orphan left')
    await s.cli(['unmount', '--lazy', s.a])
  })
})
