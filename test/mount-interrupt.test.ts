// INTERRUPT through the whole stack: a reader of a file whose block server is frozen (SIGSTOP) gets
// EINTR as soon as a signal interrupts its read, long before the device's timeout and retries would
// end it, and the mount goes on serving the same file once the server answers again.
import t from 'tap'
import { join } from 'node:path'
import { PYTHON, bslfs, describeRun, run, sha256, sleep, startBlockServer, target, volumeKind, withMount } from './helpers/mount'
import { INTERRUPTED_IO_PY, InterruptedIo } from './helpers/interrupt'

// The test brings its own block server, so one pass (the local one) is enough.
if (target === 'bslfs' && volumeKind === 'local') {
  t.test('a read waiting on a frozen block server is interrupted at once', async (t) => {
    const m = await withMount(t, { noMount: true })
    const server = await startBlockServer(join(m.base, 'own-server'))
    t.teardown(async () => {
      try { process.kill(server.pid, 'SIGCONT') } catch {}
      await server.stop('SIGKILL')
    })
    for (const args of [['server', 'add', m.state, 'own', server.url, '--token-file', server.tokenFile],
      ['volume', 'add', m.state, '9', 'own:d1'], ['volume', 'default', m.state, '9']]) {
      const r = await bslfs(args)
      t.equal(r.code, 0, `bslfs ${args.slice(0, 2).join(' ')}`, { run: describeRun(r) })
    }
    // direct_io: each read is a request the reader itself waits on (a page-cache read waits on the
    // kernel's readahead, which only a fatal signal interrupts).
    await m.mount(['direct_io'])
    const file = join(m.mnt, 'data')
    const w = await run(PYTHON, ['-c', `
import os, sys
data = bytes((i * 7 + i // 251) % 256 for i in range(3 << 20))
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
os.write(fd, data); os.fsync(fd); os.close(fd)
`, file], { timeout: 60_000 })
    t.equal(w.code, 0, 'a 3 MiB file written and fsync\'d', { run: describeRun(w) })
    const expected = sha256(Buffer.from(Array.from({ length: 3 << 20 }, (_, i) => (i * 7 + Math.floor(i / 251)) % 256)))
    // A fresh daemon: nothing of the file is in its block cache, every read goes to the server.
    await m.remount(['direct_io'])

    process.kill(server.pid, 'SIGSTOP')
    for (const offset of [0, (1 << 20) + 8192]) {
      const r = await run(PYTHON, ['-c', INTERRUPTED_IO_PY, file, 'read', String(offset)], { timeout: 60_000 })
      t.equal(r.code, 0, `reader at ${offset} ran`, { run: describeRun(r) })
      const res = JSON.parse(r.stdout) as InterruptedIo
      t.same([res.n, res.errno], [-1, res.EINTR], `read at ${offset}: EINTR`)
      // The device's own bound is a 2 s timeout and two retries: far longer than this.
      t.ok(res.seconds < 1.5, `read at ${offset}: interrupted at once (${res.seconds.toFixed(2)} s after the call, the signal at 0.3 s)`)
    }
    // The device calls were cancelled, not left to run out their timeout and retries (2 s, three
    // tries) behind the reader's back, which would mark the place down. Still frozen, past all that:
    await sleep(6500)
    process.kill(server.pid, 'SIGCONT')
    const after = await bslfs(['status', m.state, '--json'])
    t.equal(after.code, 0, 'status answers', { run: describeRun(after) })
    const place = (JSON.parse(after.stdout) as { places: Array<{ place: string, downs: number }> }).places.find(p => p.place === 'own:d1')
    t.equal(place?.downs, 0, 'the interrupted reads left no call behind that failed the place', { places: after.stdout })

    const back = await run(PYTHON, ['-c', `
import hashlib, sys
print(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest())
`, file], { timeout: 60_000 })
    t.equal(back.stdout.trim(), expected, 'the whole file reads back exactly once the server answers again', { run: describeRun(back) })
    t.equal((JSON.parse(after.stdout) as { healBacklog: number }).healBacklog, 0, 'no copy was queued for heal by the interrupted reads')
  })
}
