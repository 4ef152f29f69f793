// Two mounts of one filesystem on PostgreSQL at two mount points: two daemons,
// each with its own caches, standing for two hosts. It starts its own
// PostgreSQL and block server, so it runs once: in the mount suite's first pass.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import * as fs from 'node:fs'
import { join } from 'node:path'
import { bslfsBin, describeRun, isMounted, run, sha256, sleep, waitFor } from './helpers/mount'
import { ENTRY_TIMEOUT_MS, sharedSkip as skip, twoMounts } from './helpers/shared-mounts'

t.test('two mounts of one URL', { skip }, async t => {
  const s = await twoMounts(t)

  t.test('a create on A is visible on B within the entry timeout', async t => {
    const delays: number[] = []
    for (let i = 0; i < 40; i++) {
      const name = `new-${i}`
      if (i % 2) fs.mkdirSync(join(s.a, name))
      else fs.closeSync(fs.openSync(join(s.a, name), 'w'))
      const start = Date.now()
      const seen = await waitFor(() => fs.existsSync(join(s.b, name)), ENTRY_TIMEOUT_MS + 2000, 2)
      delays.push(Date.now() - start)
      if (!t.ok(seen, `${name} appears on B`)) return
      t.equal(fs.statSync(join(s.b, name)).isDirectory(), i % 2 === 1, `${name} is a ${i % 2 ? 'directory' : 'file'} on B too`)
    }
    delays.sort((x, y) => x - y)
    // A name B never looked up: B's kernel and daemon ask the directory. A name B looked up before it existed
    // waits out B's negative entry (kernel and daemon), which only invalidation can cut short.
    t.comment(`create on A → visible on B (40 new names): median ${delays[delays.length >> 1]} ms, worst ${delays[delays.length - 1]} ms`)
  })

  t.test('write+close on A, then open+read on B, gives the new bytes', async t => {
    const f = 'shared-file'
    let current = Buffer.alloc(0)
    fs.writeFileSync(join(s.a, f), current)
    await sleep(ENTRY_TIMEOUT_MS + 200) // B's first lookup of the new name
    const wrong: string[] = []
    const closes: number[] = []
    const ROUNDS = 200
    for (let i = 0; i < ROUNDS; i++) {
      // What B holds when A writes: nothing; a descriptor open since before (its daemon's open file and the
      // kernel's pages of the old bytes); or the old bytes just read (cached pages, and a size that stays).
      const held = i % 4 === 1 ? fs.openSync(join(s.b, f), 'r') : undefined
      if (i % 4 >= 1) fs.readFileSync(join(s.b, f))
      if (i % 4 === 3 && current.length > 0) {
        // A rewrites part of the file in place: same size, one block changed.
        const at = Math.floor(Math.random() * current.length)
        const patch = randomBytes(Math.min(current.length - at, 1 + Math.floor(Math.random() * 70_000)))
        const fd = fs.openSync(join(s.a, f), 'r+')
        fs.writeSync(fd, patch, 0, patch.length, at)
        fs.closeSync(fd)
        current = Buffer.from(current)
        patch.copy(current, at)
      } else {
        const size = i % 4 === 2 ? current.length
          : [0, 1, 4095, 4096, 65537, 1048576, 1048577, 3 * 1048576 + 5][i % 8]! + (i > 7 ? Math.floor(Math.random() * 200_000) : 0)
        current = randomBytes(size)
        const start = process.hrtime.bigint()
        fs.writeFileSync(join(s.a, f), current) // open, write, close on A
        closes.push(Number(process.hrtime.bigint() - start) / 1e6)
      }
      // No wait: the open on B starts right after the close on A returned.
      const got = fs.readFileSync(join(s.b, f))
      if (!got.equals(current)) wrong.push(`round ${i}: B read ${got.length} bytes (sha256 ${sha256(got).slice(0, 12)}), A wrote ${current.length} (${sha256(current).slice(0, 12)})`)
      if (held !== undefined) fs.closeSync(held)
    }
    t.same(wrong, [], `every open on B after a close on A reads the bytes A wrote (${ROUNDS} rounds: random sizes, ` +
      'a descriptor held on B, pages cached on B, a rewrite in place)')
    closes.sort((x, y) => x - y)
    t.comment(`open+write+close on A (random sizes up to 3.2 MB): median ${closes[closes.length >> 1]!.toFixed(1)} ms, worst ${closes[closes.length - 1]!.toFixed(1)} ms`)
  })

  t.test('a table change run on this host reaches both mounts at once', async t => {
    // A second device on the block server's host would need another server: a second volume on the same device does.
    await s.must(['volume', 'add', s.url, '2', 's1:d1'])
    await s.must(['volume', 'default', s.url, '2'])
    // No wait: the CLI told every local mount to re-read the tables (reload-tables on each control socket).
    for (const mnt of [s.a, s.b]) {
      const name = join(mnt, `after-default-${mnt === s.a ? 'a' : 'b'}`)
      fs.writeFileSync(name, 'x') // B writes a block too: its object ids are its own (see twoMounts)
      const r = await s.must(['bsl', s.url, name, '--json'])
      t.match(JSON.parse(r.stdout)[0]?.bsl ?? '', /^idx:2\./, `a block written through ${mnt === s.a ? 'A' : 'B'} goes to volume 2`, { run: describeRun(r) })
    }
  })

  t.test('a table change made on another host reaches the mounts at once (change feed; 2 s re-read as a backstop)', async t => {
    // "Another host": a mount namespace of its own with both mounts detached there, so the CLI finds no
    // local mount to run on or to tell, and changes the tables in the database directly.
    const elsewhere = await run('unshare', ['-m', '--propagation', 'private', '--', 'sh', '-c',
      `umount -l '${s.a}' && umount -l '${s.b}' && "$0" "$1" volume add "$2" 3 s1:d1 && "$0" "$1" volume default "$2" 3`,
      process.execPath, bslfsBin, s.url], { env: s.env })
    if (!t.equal(elsewhere.code, 0, 'volume add + volume default from a host with no mount of it', { run: describeRun(elsewhere) })) return
    t.ok(isMounted(s.a) && isMounted(s.b), 'both mounts are still there outside that namespace')
    const start = Date.now()
    let volume = ''
    for (let i = 0; Date.now() - start < 4000; i++) {
      const name = join(s.b, `after-remote-default-${i}`)
      fs.writeFileSync(name, 'y')
      volume = (JSON.parse((await s.must(['bsl', s.url, name, '--json'])).stdout)[0]?.bsl ?? '').replace(/\..*/, '')
      if (volume === 'idx:3') break
      await sleep(100)
    }
    t.equal(volume, 'idx:3', `B's new blocks go to volume 3 after ${Date.now() - start} ms (bound: 2 s re-read)`)
    // A too: its next block goes to volume 3 without waiting (it heard the feed, and an admin command re-reads first).
    const onA = join(s.a, 'after-remote-default-a')
    fs.writeFileSync(onA, 'z')
    t.match(JSON.parse((await s.must(['bsl', s.url, onA, '--json'])).stdout)[0]?.bsl ?? '', /^idx:3\./, "A's new blocks go to volume 3 too")
  })

  t.test('fsck of the URL while both are mounted is clean', async t => {
    const r = await s.cli(['fsck', s.url, '--json'])
    t.equal(r.code, 0, 'fsck exits 0', { run: describeRun(r) })
  })
})
