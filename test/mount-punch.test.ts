// Punches beyond one local volume (issue 26, point 1), local pass only: on a mirrored volume of two
// block servers the punched blocks leave every mirror; a kill -9 of the daemon in the middle of
// punches leaves every block whole (old or punched), and fsck finds nothing but orphan objects.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import * as fsp from 'node:fs/promises'
import { join } from 'node:path'
import { PYTHON, bslfs, isMounted, pidAlive, run, sh, startBlockServer, target, volumeKind, waitFor, withMount } from './helpers/mount'
import { MiB, blocksOf, fsck, must, objectFiles, objectId, reclaimed, sha } from './helpers/ranges'

if (target !== 'bslfs' || volumeKind !== 'local') {
  t.comment(`mirrored and crash punches make their own servers and kill the daemon: local bslfs pass only, not ${target}/${volumeKind}`)
} else {
  t.test('a punch on a mirrored volume drops the blocks from every mirror', async (t) => {
    const m = await withMount(t, { noMount: true })
    const s2 = await startBlockServer(join(m.base, 's2'))
    const s3 = await startBlockServer(join(m.base, 's3'))
    t.teardown(async () => {
      if (m.mounted()) await m.unmount().catch(() => {})
      await Promise.all([s2.stop(), s3.stop()])
    })
    const cli = async (args: string[]) => must(await bslfs(args, { timeout: 60_000 }), `bslfs ${args.slice(0, 2).join(' ')}`)
    for (const [name, s] of [['s2', s2], ['s3', s3]] as const) {
      await cli(['server', 'add', m.state, name, s.url, '--token-file', s.tokenFile])
      await cli(['volume', 'add', m.state, name.slice(1), `${name}:d1`])
    }
    await cli(['mirror', m.state, '10', '2', '3'])
    await cli(['volume', 'default', m.state, '10'])
    await m.mount()
    const f = join(m.mnt, 'm')
    const data = randomBytes(4 * MiB)
    await fsp.writeFile(f, data)
    const before = await blocksOf(m, f)
    const roots = [s2.device, s3.device]
    for (const b of before) t.equal((await objectFiles(roots, objectId(b))).length, 2, `block ${b.index} is on both mirrors`)
    must(await run('xfs_io', ['-c', `fpunch ${MiB} ${2 * MiB}`, f]), 'xfs_io fpunch')
    t.same((await blocksOf(m, f)).map(b => b.index), [0, 3], 'blocks 1 and 2 left the block map')
    t.same(await reclaimed(roots, before.filter(b => b.index === 1 || b.index === 2).map(objectId)), [], 'their objects left both mirrors')
    for (const b of before.filter(b => b.index === 0 || b.index === 3)) t.equal((await objectFiles(roots, objectId(b))).length, 2, `block ${b.index} is still on both`)
    const model = Buffer.from(data)
    model.fill(0, MiB, 3 * MiB)
    t.equal(sha(await fsp.readFile(f)), sha(model), 'the file reads as the model')
    await m.unmount()
    const rep = await fsck(m)
    t.ok(rep.clean, 'fsck is clean', { problems: rep.problems, first: rep.first })
  })

  t.test('kill -9 of the daemon in the middle of punches: every block whole, old or punched; fsck finds only orphans', async (t) => {
    const m = await withMount(t)
    const f = join(m.mnt, 'victim')
    const blocks = 48
    const data = randomBytes(blocks * MiB)
    await fsp.writeFile(f, data)
    must(await sh(`sync -f ${f}`), 'sync')
    // Punches one after another, until the mount goes: of a whole block (even ones), of all but 4 KiB
    // at either end (odd ones: the block is rewritten as a new object). Each is one durable batch.
    const driver = `
import os, sys, random
f, blocks = sys.argv[1], int(sys.argv[2])
fd = os.open(f, os.O_RDWR)
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
order = list(range(blocks)); random.shuffle(order)
for i in order:
    off, n = ((i << 20), 1 << 20) if i % 2 == 0 else ((i << 20) + 4096, (1 << 20) - 8192)
    if libc.fallocate(fd, 3, off, n) != 0:
        break
    print('punched', i, flush=True)
`
    const pid = await m.daemonPid()
    if (!pid) throw new Error('no daemon pid')
    const log = join(m.base, 'punches')
    const child = run('sh', ['-c', `exec "$0" -c "$1" "$2" "$3" > "$4"`, PYTHON, driver, f, String(blocks), log], { timeout: 30_000 })
    // Killed after a few punches, with most still to come.
    await waitFor(async () => (await fsp.readFile(log, 'utf8').catch(() => '')).split('\n').length > 8, 10_000, 5)
    process.kill(pid, 'SIGKILL')
    t.ok(await waitFor(() => !pidAlive(pid), 10_000, 10), 'the daemon died')
    await child
    const punched = (await fsp.readFile(log, 'utf8')).split('\n').filter(l => l.startsWith('punched')).map(l => Number(l.split(' ')[1]))
    t.comment(`${punched.length} punches answered before the kill`)
    t.ok(punched.length < blocks, 'the kill came in the middle of the punches')
    const rep = await fsck(m)
    t.same(Object.keys(rep.problems).filter(k => k !== 'orphan object'), [], 'fsck finds no problem but orphan objects', { problems: rep.problems, first: rep.first })
    must(await bslfs(['mount', m.state, m.mnt], { timeout: 60_000 }), 'mount after the kill')
    t.ok(await waitFor(() => isMounted(m.mnt), 10_000), 'mounted again')
    const now = await fsp.readFile(f)
    const zero = Buffer.alloc(MiB)
    const punchedBlock = (i: number) => {
      if (i % 2 === 0) return zero
      const b = Buffer.from(data.subarray(i * MiB, (i + 1) * MiB))
      return b.fill(0, 4096, MiB - 4096)
    }
    const torn: number[] = []
    const done = new Set<number>()
    for (let i = 0; i < blocks; i++) {
      const got = now.subarray(i * MiB, (i + 1) * MiB)
      if (got.equals(punchedBlock(i))) done.add(i)
      else if (!got.equals(data.subarray(i * MiB, (i + 1) * MiB))) torn.push(i)
    }
    t.same(torn, [], 'every block is its old bytes or its punched bytes')
    t.same(punched.filter(i => !done.has(i)), [], 'every punch answered before the kill holds (one durable batch each)')
    const mapped = new Set((await blocksOf(m, f)).map(b => b.index))
    t.same([...done].filter(i => i % 2 === 0 && mapped.has(i)), [], 'a whole block punched is not in the block map')
    await m.unmount()
    const after = await fsck(m)
    t.equal(after.reclaimQueue, 0, 'the remount emptied the reclaim queue')
  })
}
