// Programs on two mounts of one filesystem on PostgreSQL ("hosts" A and B, each its own daemon and
// caches): renames on A while B looks, git on A then on B, tar -x on A while find runs on B, and
// PostgreSQL going away and coming back under a workload. Runs once, in the mount suite's first pass.
import t from 'tap'
import * as fs from 'node:fs'
import { join } from 'node:path'
import { describeRun, digestDiff, mustRun, py, run, sha256, sleep, treeDigest, waitFor, type RunResult } from './helpers/mount'
import { ENTRY_TIMEOUT_MS, sharedSkip as skip, twoMounts } from './helpers/shared-mounts'

/** The directory's default bound on waiting out an unreachable PostgreSQL before EIO (PgKvOptions.outageMs). */
const OUTAGE_MS = 10_000

const GIT_ENV = { GIT_AUTHOR_NAME: 'a', GIT_AUTHOR_EMAIL: 'a@example.com', GIT_COMMITTER_NAME: 'a', GIT_COMMITTER_EMAIL: 'a@example.com', GIT_CONFIG_NOSYSTEM: '1', HOME: '/tmp' }

t.test('programs on two mounts of one URL', { skip }, async t => {
  const s = await twoMounts(t)

  t.test('rename on A while B stats and reads in a loop', async t => {
    const dir = 'renames'
    fs.mkdirSync(join(s.a, dir))
    // x-0 and x-1 are one file renamed back and forth; doc is replaced by a rename over it (an editor's save).
    fs.writeFileSync(join(s.a, dir, 'x-0'), Buffer.alloc(70_000, 'x'))
    fs.writeFileSync(join(s.a, dir, 'doc'), version(0))
    await sleep(ENTRY_TIMEOUT_MS + 200) // B looks the names up fresh
    // B: stat both names and read doc as fast as it can until A is done, timing every spell of both or neither.
    const watcher = py(`
import os, sys, time, json
d, stop = sys.argv[1], sys.argv[2]
def expected(v, n):
    head = ('version %d\\n' % v).encode()
    return (head * (n // len(head) + 1))[:n]
worst, spell_start, spell, states, reads, wrong, gone = 0.0, None, None, {}, 0, [], {}
while not os.path.exists(stop):
    seen = tuple(os.path.exists(os.path.join(d, n)) for n in ('x-0', 'x-1'))
    state = {(True, False): 'old', (False, True): 'new', (True, True): 'both', (False, False): 'neither'}[seen]
    states[state] = states.get(state, 0) + 1
    now = time.monotonic()
    if state in ('both', 'neither'):
        if spell != state: spell, spell_start = state, now
        worst = max(worst, now - spell_start)
    else:
        spell = None
    try:
        fd = os.open(os.path.join(d, 'doc'), os.O_RDONLY)
    except OSError as e:
        # ESTALE: the version B's kernel named was freed by A, and so was the one it found on looking again (two replacements raced this open).
        if e.errno == errno.ESTALE: gone['ESTALE at open'] = gone.get('ESTALE at open', 0) + 1
        else: wrong.append('open of doc: %s' % errno.errorcode.get(e.errno, e.errno))
        continue
    try:
        data = b''
        while True:
            chunk = os.read(fd, 65536)
            if not chunk: break
            data += chunk
    except OSError as e:
        # The version B opened was replaced on A meanwhile, and A freed its inode: cross-host open files are the next issue.
        gone[errno.errorcode.get(e.errno, str(e.errno))] = gone.get(errno.errorcode.get(e.errno, str(e.errno)), 0) + 1
        continue
    finally:
        os.close(fd)
    reads += 1
    try:
        v = int(data.split(b'\\n', 1)[0].split(b' ')[1])
        if data != expected(v, len(data)) or len(data) != 1000 + 37 * v: wrong.append('version %d: %d bytes, not as written' % (v, len(data)))
    except (ValueError, IndexError):
        wrong.append('doc unreadable: %r' % data[:40])
print(json.dumps({'worst_ms': worst * 1000, 'states': states, 'reads': reads, 'gone': gone, 'wrong': wrong[:10]}))
`, [join(s.b, dir), join(s.a, '..', 'stop-renames')])
    const renamer = py(`
import os, sys, time
d = sys.argv[1]
def expected(v, n):
    head = ('version %d\\n' % v).encode()
    return (head * (n // len(head) + 1))[:n]
for i in range(1, 121):
    os.rename(os.path.join(d, 'x-%d' % ((i - 1) % 2)), os.path.join(d, 'x-%d' % (i % 2)))
    if i % 3 == 0:
        v = i // 3
        tmp = os.path.join(d, '.doc.tmp')
        with open(tmp, 'wb') as f: f.write(expected(v, 1000 + 37 * v))
        os.rename(tmp, os.path.join(d, 'doc'))
    time.sleep(0.002)
`, [join(s.a, dir)])
    const renamed = await renamer
    await sleep(50)
    fs.writeFileSync(join(s.a, '..', 'stop-renames'), '')
    const watched = await watcher
    fs.rmSync(join(s.a, '..', 'stop-renames'))
    if (!t.equal(renamed.run.code, 0, '120 renames and 40 replacements on A', { run: describeRun(renamed.run) })) return
    if (!t.equal(watched.run.code, 0, 'the loop on B ran', { run: describeRun(watched.run) })) return
    const r = JSON.parse(watched.run.stdout.trim().split('\n').pop()!) as { worst_ms: number, states: Record<string, number>, reads: number, gone: Record<string, number>, wrong: string[] }
    t.same(r.wrong, [], `every open of doc on B succeeds, and every read (${r.reads}) gives one whole version A wrote`)
    // Not asserted: a read of a version that A replaced and freed while B had it open fails (cross-host open files: the
    // next issue), and so does an open that two replacements raced (ESTALE, after the kernel looked the name up again).
    t.comment(`opens and reads on B of a version A freed meanwhile, failed: ${JSON.stringify(r.gone)}`)
    t.ok(r.states.old > 0 && r.states.new > 0, `B saw the file under both names in turn (${JSON.stringify(r.states)})`)
    // Both names or neither is what B's kernel shows until A's change reaches it (the change feed), never for long.
    t.ok(r.worst_ms < ENTRY_TIMEOUT_MS, `B never saw both names or neither for long: longest ${r.worst_ms.toFixed(1)} ms`)
    t.comment(`rename on A → B's names: states ${JSON.stringify(r.states)}, longest spell of both/neither ${r.worst_ms.toFixed(1)} ms`)
    await waitFor(() => fs.existsSync(join(s.b, dir, 'x-0')), 2000)
    t.same(fs.readdirSync(join(s.b, dir)).sort(), ['doc', 'x-0'], 'afterwards B lists what A does')
    t.equal(fs.readFileSync(join(s.b, dir, 'doc')).toString().split('\n')[0], 'version 40', "B reads A's last version of doc")
  })

  t.test('git init, add, commit on A; status and log on B', async t => {
    const repo = 'repo'
    const onA = join(s.a, repo)
    fs.mkdirSync(join(onA, 'src', 'lib'), { recursive: true })
    for (let i = 0; i < 12; i++) fs.writeFileSync(join(onA, 'src', i % 3 ? 'lib' : '', `f${i}.txt`), `file ${i}\n`.repeat(i * 50 + 1))
    fs.symlinkSync('src/f0.txt', join(onA, 'link'))
    const git = async (where: string, args: string[]): Promise<RunResult> => await mustRun('git', ['-C', where, ...args], { env: { ...process.env, ...GIT_ENV } })
    await git(onA, ['init', '-q', '-b', 'main'])
    await git(onA, ['add', '-A'])
    await git(onA, ['commit', '-q', '-m', 'first'])
    fs.appendFileSync(join(onA, 'src', 'f0.txt'), 'more\n')
    fs.renameSync(join(onA, 'src', 'lib', 'f1.txt'), join(onA, 'src', 'lib', 'f1-renamed.txt'))
    await git(onA, ['add', '-A'])
    await git(onA, ['commit', '-q', '-m', 'second'])
    // No wait: B runs git right after A's commit returned.
    const onB = join(s.b, repo)
    const status = await run('git', ['-C', onB, 'status', '--porcelain'], { env: { ...process.env, ...GIT_ENV } })
    t.equal(status.code, 0, 'git status on B', { run: describeRun(status) })
    t.equal(status.stdout, '', 'B sees a clean work tree')
    const logA = (await git(onA, ['log', '--format=%H %s', '--name-status'])).stdout
    const logB = (await git(onB, ['log', '--format=%H %s', '--name-status'])).stdout
    t.equal(logB, logA, 'git log on B is git log on A')
    t.match(logB, /second[\s\S]*first/, 'both commits')
    const fsck = await run('git', ['-C', onB, 'fsck', '--strict'], { env: { ...process.env, ...GIT_ENV } })
    t.equal(fsck.code, 0, 'git fsck on B: every object A wrote reads back whole', { run: describeRun(fsck) })
  })

  t.test('tar -x on A while find runs on B; then both hold the same tree', async t => {
    const src = fs.mkdtempSync('/tmp/bslfs-shared-tree-')
    t.teardown(() => fs.rmSync(src, { recursive: true, force: true }))
    const made = await py(`
import os, sys, random
root = sys.argv[1]
r = random.Random(21)
for d in range(6):
    p = os.path.join(root, 'tree', 'd%02d' % d, 'sub%d' % (d % 3))
    os.makedirs(p)
    for f in range(10):
        with open(os.path.join(p, 'f%02d' % f), 'wb') as fh: fh.write(r.randbytes(r.choice([0, 1, 100, 4096, 70000, 300000])))
    os.symlink('f00', os.path.join(p, 'ln'))
`, [src])
    if (!t.equal(made.run.code, 0, 'the source tree', { run: describeRun(made.run) })) return
    const tarball = join(src, 'tree.tar')
    await mustRun('tar', ['-C', src, '-cf', tarball, 'tree'])
    fs.mkdirSync(join(s.a, 'x'))
    await sleep(ENTRY_TIMEOUT_MS + 200) // B's lookups of x start fresh
    const stop = join(src, 'stop')
    const finder = run('sh', ['-c', `n=0; while [ ! -e "$1" ]; do find "$2" > /dev/null || exit 1; n=$((n+1)); sleep 0.02; done; echo $n`, 'sh', stop, join(s.b, 'x')])
    const tar = await run('tar', ['-C', join(s.a, 'x'), '-xf', tarball])
    fs.writeFileSync(stop, '')
    const found = await finder
    t.equal(tar.code, 0, 'tar -x on A', { run: describeRun(tar) })
    t.equal(found.code, 0, `find on B ran ${found.stdout.trim()} times while tar extracted, never failing`, { run: describeRun(found) })
    const want = await treeDigest(join(src, 'tree'))
    t.same(digestDiff(await treeDigest(join(s.a, 'x', 'tree')), want), [], 'A holds the tree')
    // B: at once for what it never cached; a name B's find saw missing waits out its negative entry at most.
    let diff: string[] = []
    await waitFor(async () => (diff = digestDiff(await treeDigest(join(s.b, 'x', 'tree')), want)).length === 0, ENTRY_TIMEOUT_MS + 2000, 100)
    t.same(diff, [], 'B holds the same tree')
  })

  t.test('PostgreSQL crashes, then stops, under a workload: EIO within the bound, no wrong bytes, no lost commit, the mount goes on', async t => {
    const dir = join(s.a, 'outage')
    fs.mkdirSync(dir)
    const logFile = join(fs.mkdtempSync('/tmp/bslfs-shared-outage-'), 'log')
    const stop = `${logFile}.stop`
    t.teardown(() => fs.rmSync(join(logFile, '..'), { recursive: true, force: true }))
    // A writes file after file (create, write, close) and says what became of each; it goes on after an error.
    const writer = py(`
import os, sys, time, random, hashlib
d, log, stop = sys.argv[1], sys.argv[2], sys.argv[3]
r = random.Random(7)
with open(log, 'w', buffering=1) as out:
    i = 0
    while not os.path.exists(stop):
        data = r.randbytes(r.choice([1, 5000, 70000, 1048577]))
        start = time.monotonic()
        try:
            with open(os.path.join(d, 'f%04d' % i), 'wb') as f: f.write(data)
            rc = 0
        except OSError as e:
            rc = e.errno
        out.write('%d %d %s %d %.1f %.3f\\n' % (i, len(data), hashlib.sha256(data).hexdigest(), rc, (time.monotonic() - start) * 1000, time.time()))
        i += 1
        time.sleep(0.01)
`, [dir, logFile, stop])
    interface Op { i: number, size: number, sha: string, rc: number, ms: number, at: number }
    const ops = (): Op[] => fs.readFileSync(logFile, 'utf8').split('\n').filter(l => l.split(' ').length === 6).map(l => {
      const [i, size, sha, rc, ms, at] = l.split(' ')
      return { i: Number(i), size: Number(size), sha, rc: Number(rc), ms: Number(ms), at: Number(at) * 1000 }
    })
    const progress = async (n: number, ms: number): Promise<boolean> => {
      const from = fs.existsSync(logFile) ? ops().filter(o => o.rc === 0).length : 0
      return await waitFor(() => fs.existsSync(logFile) && ops().filter(o => o.rc === 0).length >= from + n, ms, 50)
    }
    t.ok(await progress(5, 10_000), 'A writes files')

    // A crash (SIGKILL), back within the bound: operations wait it out and succeed.
    const crashAt = Date.now()
    await s.pg.kill()
    await sleep(1000)
    await s.pg.start()
    const crashEnd = Date.now()
    t.ok(await progress(5, OUTAGE_MS + 5000), `A goes on after PostgreSQL came back from a crash (down ${crashEnd - crashAt} ms)`)

    // A stop (pg_ctl stop -m fast: SIGINT) for longer than the bound: operations fail with EIO within it.
    const downAt = Date.now()
    await s.pg.stop()
    await waitFor(() => ops().some(o => o.rc !== 0 && o.at > downAt), OUTAGE_MS + 8000, 100)
    await sleep(500)
    await s.pg.start()
    const upAt = Date.now()
    t.ok(await progress(5, OUTAGE_MS + 5000), `the mount goes on by itself once PostgreSQL is back (down ${upAt - downAt} ms)`)
    fs.writeFileSync(stop, '')
    const w = await writer
    t.equal(w.run.code, 0, 'the writer ran to the end', { run: describeRun(w.run) })

    const all = ops()
    const failed = all.filter(o => o.rc !== 0)
    t.ok(failed.length > 0 && failed.every(o => o.rc === 5), `what failed, failed with EIO (${failed.length}: ${[...new Set(failed.map(o => o.rc))].join(', ')})`)
    t.ok(failed.every(o => o.at - o.ms >= crashEnd), 'nothing failed while PostgreSQL was back within the bound (the crash)')
    // The bound, plus a connection attempt's own (5 s) and the loaded machine's slack.
    const slowest = Math.max(...failed.map(o => o.ms))
    t.ok(slowest <= OUTAGE_MS + 7000, `every failure came within the bound: slowest ${slowest.toFixed(0)} ms (bound ${OUTAGE_MS} ms)`)
    t.comment(`outage: ${all.length} files, ${failed.length} failed with EIO (slowest ${slowest.toFixed(0)} ms), the longest success ${Math.max(...all.filter(o => o.rc === 0).map(o => o.ms)).toFixed(0)} ms`)

    // Every file whose close returned 0 holds its bytes on both hosts; one that failed holds its bytes or none, never
    // others (its blocks, kept, are written again once PostgreSQL is back: a moment to settle first).
    const check = (): string[] => {
      const wrong: string[] = []
      for (const o of all) {
        for (const [host, root] of [['A', s.a], ['B', s.b]] as const) {
          let got: Buffer | undefined
          try {
            got = fs.readFileSync(join(root, 'outage', `f${String(o.i).padStart(4, '0')}`))
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'ENOENT') wrong.push(`${host} f${o.i}: ${(err as Error).message}`)
          }
          if (o.rc === 0 && (!got || sha256(got) !== o.sha)) wrong.push(`${host} f${o.i}: written (close returned 0), reads ${got ? `${got.length} other bytes` : 'missing'}`)
          if (o.rc !== 0 && got && got.length > 0 && sha256(got) !== o.sha) wrong.push(`${host} f${o.i}: failed, holds ${got.length} other bytes`)
        }
      }
      return wrong
    }
    let wrong: string[] = []
    await waitFor(() => (wrong = check()).length === 0, ENTRY_TIMEOUT_MS + 5000, 500)
    t.same(wrong, [], `no lost commit, no wrong bytes on A or B (${all.length - failed.length} written, ${failed.length} failed)`)
    // A block stored whose record could not be committed is an orphan object, as after a crash (DESIGN: fsck collects them).
    const fsck = await s.cli(['fsck', s.url, '--json'])
    const problems = Object.keys((JSON.parse(fsck.stdout) as { problems: Record<string, number> }).problems)
    t.same(problems.filter(p => p !== 'orphan object'), [], 'fsck after the outages finds nothing but orphan objects', { run: describeRun(fsck) })
    t.comment(`fsck after the outages: ${fsck.code === 0 ? 'clean' : JSON.stringify((JSON.parse(fsck.stdout) as { problems: unknown }).problems)}`)
  })
})

/** What the rename test's doc holds at version `v`: its header repeated, 1000 + 37·v bytes. */
function version (v: number): Buffer {
  const head = Buffer.from(`version ${v}\n`)
  return Buffer.alloc(1000 + 37 * v, head)
}
