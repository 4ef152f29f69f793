// A filesystem whose data volume lives on a block server (a child process on loopback): the
// server is killed with SIGKILL and restarted in the middle of a workload. The mount may return
// errors or retry meanwhile, but it must recover and never return wrong bytes.
import t from 'tap'
import { join } from 'node:path'
import { PYTHON, bslfs, describeRun, run, sleep, startBlockServer, target, withMount } from './helpers/mount'

if (target === 'bslfs') {
  t.test('block server killed and restarted under a workload', async (t) => {
    const m = await withMount(t, { noMount: true })
    const server = await startBlockServer(join(m.base, 'own-server'))
    t.teardown(() => server.stop('SIGKILL'))
    for (const args of [['server', 'add', m.state, 'own', server.url, '--token-file', server.tokenFile],
      ['volume', 'add', m.state, '9', 'own:d1'], ['volume', 'default', m.state, '9']]) {
      const r = await bslfs(args, { timeout: 60_000 })
      t.equal(r.code, 0, `bslfs ${args.slice(0, 2).join(' ')}`, { run: describeRun(r) })
    }
    await m.mount()

    // The workload: write files (fsync + close), read back earlier good ones, for a fixed time.
    const workload = run(PYTHON, ['-c', `
import os, sys, time, hashlib, random, json
d, secs = sys.argv[1], float(sys.argv[2])
good, failed_writes, failed_reads, wrong = {}, 0, 0, 0
i = 0
end = time.time() + secs
while time.time() < end:
    i += 1
    p = os.path.join(d, 'f%d' % i)
    data = os.urandom(random.randint(1, 300_000))
    try:
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        good[p] = hashlib.sha256(data).hexdigest()
    except OSError:
        failed_writes += 1
    if good:
        q = random.choice(list(good))
        try:
            with open(q, 'rb') as f:
                if hashlib.sha256(f.read()).hexdigest() != good[q]:
                    wrong += 1
        except OSError:
            failed_reads += 1
json.dump({'good': good, 'failed_writes': failed_writes, 'failed_reads': failed_reads, 'wrong': wrong}, sys.stdout)
`, m.mnt, '14'], { timeout: 120_000 })

    await sleep(3000)
    await server.stop('SIGKILL')
    await sleep(4000)
    await server.start()
    const r = await workload
    t.equal(r.code, 0, 'workload ran', { run: describeRun(r) })
    const res = JSON.parse(r.stdout) as { good: Record<string, string>, failed_writes: number, failed_reads: number, wrong: number }
    t.equal(res.wrong, 0, 'no read ever returned wrong bytes')
    t.ok(Object.keys(res.good).length > 10, `files written while the server was up (${Object.keys(res.good).length})`)
    t.comment(`writes failed while the server was down: ${res.failed_writes}; reads failed: ${res.failed_reads}`)

    // Recovered: every file whose write and close succeeded reads back exactly, and new writes work.
    const check = await run(PYTHON, ['-c', `
import sys, json, hashlib
good = json.load(sys.stdin)
bad = [p for p, h in good.items() if hashlib.sha256(open(p, 'rb').read()).hexdigest() != h]
print(len(good), len(bad))
`], { input: JSON.stringify(res.good), timeout: 120_000 })
    t.equal(check.code, 0, 'read back after the restart', { run: describeRun(check) })
    const [n, bad] = check.stdout.trim().split(' ').map(Number)
    t.equal(bad, 0, `all ${n} files read back exactly after the restart`)
    const w = await run(PYTHON, ['-c', `open('${join(m.mnt, 'after')}', 'w').write('recovered')`], { timeout: 60_000 })
    t.equal(w.code, 0, 'writes work again after the restart', { run: describeRun(w) })
    await m.remount()
    const again = await run(PYTHON, ['-c', `
import sys, json, hashlib
good = json.load(sys.stdin)
print(sum(1 for p, h in good.items() if hashlib.sha256(open(p, 'rb').read()).hexdigest() != h))
`], { input: JSON.stringify(res.good), timeout: 120_000 })
    t.equal(again.stdout.trim(), '0', 'and after a remount', { run: describeRun(again) })
  })
}
