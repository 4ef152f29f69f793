// The background mount daemon's log, STATE/daemon.log: one line per event (time, level,
// namespace), DEBUG=bslfs:* for more, and bounded: past BSLFS_LOG_MAX_BYTES it is kept as
// daemon.log.1 and cut, so a busy or chatty mount cannot fill the disk.
import t from 'tap'
import * as fs from 'node:fs'
import { join } from 'node:path'
import { bslfs, childEnv, describeRun, isMounted, sleep, waitFor } from './helpers/mount'

const LINE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARN|ERROR) bslfs:[a-z:-]+ \S/

t.test('daemon.log: timestamped lines with a level, kept under its bound', async t => {
  const dir = fs.mkdtempSync('/tmp/bslfs-log-')
  const state = join(dir, 'state')
  const mnt = join(dir, 'mnt')
  fs.mkdirSync(mnt)
  t.teardown(async () => {
    if (isMounted(mnt)) await bslfs(['unmount', mnt])
    fs.rmSync(dir, { recursive: true, force: true })
  })
  t.equal((await bslfs(['init', state])).code, 0, 'init')
  const max = 64 * 1024
  const env = { ...childEnv, DEBUG: 'bslfs:*', BSLFS_LOG_MAX_BYTES: String(max) }
  const m = await bslfs(['mount', state, mnt], { env })
  if (!t.equal(m.code, 0, 'mount with DEBUG=bslfs:*', { run: describeRun(m) })) return
  const log = join(state, 'daemon.log')
  t.match(fs.readFileSync(log, 'utf8'), /^\S+Z INFO bslfs:daemon bslfs \d+\.\d+\.\d+ mounted \S+ on \S+ \(pid \d+, node v/m, 'the mount is an INFO event')

  // Debug lines of a few thousand operations: far more than the bound.
  let written = 0
  for (let round = 0; round < 40 && !fs.existsSync(`${log}.1`); round++) {
    for (let i = 0; i < 100; i++) fs.writeFileSync(join(mnt, `f${i}`), 'x')
    for (let i = 0; i < 100; i++) fs.rmSync(join(mnt, `f${i}`))
    written += 200
    await sleep(50)
  }
  t.ok(await waitFor(() => fs.existsSync(`${log}.1`), 5000), `daemon.log.1 appears once the log passed ${max} bytes (${written} operations)`)
  // Quiet: within the check's second the log is back under its bound.
  await sleep(2500)
  t.ok(fs.statSync(log).size <= max, `daemon.log is at most ${max} bytes (${fs.statSync(log).size})`)
  t.ok(fs.statSync(`${log}.1`).size < 4 * max, `daemon.log.1 holds one cut's worth (${fs.statSync(`${log}.1`).size})`)
  const lines = (fs.readFileSync(`${log}.1`, 'utf8') + fs.readFileSync(log, 'utf8')).split('\n').filter(Boolean)
  const bad = lines.filter(l => !LINE.test(l))
  t.same(bad.slice(0, 5), [], `every one of ${lines.length} lines is TIME LEVEL NAMESPACE message`)
  t.ok(lines.some(l => / DEBUG bslfs:/.test(l)), 'DEBUG=bslfs:* lines are there')

  t.equal((await bslfs(['unmount', mnt])).code, 0, 'unmount')
  await waitFor(() => !isMounted(mnt), 10_000)
  t.match(fs.readFileSync(log, 'utf8'), / INFO bslfs:daemon unmounted /, 'the unmount is an INFO event')
})
