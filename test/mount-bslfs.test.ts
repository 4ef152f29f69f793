// bslfs-only behaviour of the mount and its CLI: crash (kill -9) and
// recovery, status, bsl, unmount of a busy mount, refusal of bad mounts and
// bad STATE directories, `mount -t bslfs`, and read-only mounts.
// Nothing is registered for BSLFS_TEST_TARGET=native|bindfs.
import t from 'tap'
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import * as fs from 'node:fs'
import { join } from 'node:path'
import {
  describeRun, digestDiff, directoryKind, errCode, isMounted, mountCount, mountEntry, pidAlive, py, run, sha256,
  sleep, target, treeDigest, waitFor, withMount, type RunResult
} from './helpers/mount'
import { parseFsName, runtimePaths } from '../src/daemon/location'

type Test = tap.Test

/** stdout+stderr is exactly one non-empty line and no stack trace. */
function oneLine (t: Test, r: RunResult, what: string): void {
  const lines = (r.stderr + '\n' + r.stdout).split('\n').map((l) => l.trim()).filter(Boolean)
  t.equal(lines.length, 1, `${what}: a one-line message`, { run: describeRun(r) })
  t.notMatch(r.stderr + r.stdout, /^\s+at .+[:(]/m, `${what}: no stack trace`, { run: describeRun(r) })
}

/** Non-zero exit with a one-line message. */
function refused (t: Test, r: RunResult, what: string): void {
  t.ok(r.code !== 0 && r.code !== null && !r.timedOut, `${what}: exits non-zero (got ${r.code}${r.timedOut ? ', timed out' : ''})`, { run: describeRun(r) })
  oneLine(t, r, what)
}

const bslLines = (r: RunResult) => r.stdout.split('\n').map((l) => l.trim()).filter(Boolean)

if (target !== 'bslfs') {
  t.comment(`bslfs-only tests are not registered for BSLFS_TEST_TARGET=${target}`)
} else {
  t.test('random 4 KiB reads through the kernel; a rotted chunk fails only the reads that cover it', async (t) => {
    const m = await withMount(t)
    const MiB = 1024 * 1024
    const CHUNK = 32 * 1024
    const data = randomBytes(3 * MiB)
    const f = join(m.mnt, 'random')
    fs.writeFileSync(f, data)
    await m.remount() // an empty daemon cache: the reads below go to the device
    const dropCaches = (): void => fs.writeFileSync('/proc/sys/vm/drop_caches', '3')
    dropCaches()
    const pread = (fd: number, pos: number): Buffer => {
      const buf = Buffer.alloc(4096)
      const n = fs.readSync(fd, buf, 0, 4096, pos)
      return buf.subarray(0, n)
    }
    let fd = fs.openSync(f, 'r')
    let bad = 0
    let seed = 12345
    for (let i = 0; i < 300; i++) {
      seed = (seed * 1103515245 + 12345) % 2 ** 31
      const pos = seed % (data.length - 4096)
      if (!pread(fd, pos).equals(data.subarray(pos, pos + 4096))) bad++
    }
    fs.closeSync(fd)
    t.equal(bad, 0, '300 random 4 KiB preads return the bytes written')

    // Rot one byte in chunk 3 of block 1's object, wherever the volume keeps it.
    const r = await m.bslfs(['bsl', m.state, '/random', '--json'])
    t.equal(r.code, 0, 'bslfs bsl', { run: describeRun(r) })
    const blocks = JSON.parse(r.stdout) as Array<{ index: number, bsl: string }>
    const objectId = blocks.find(b => b.index === 1)?.bsl.split('/').pop() ?? ''
    const find = (dir: string): string[] => {
      if (!fs.existsSync(dir)) return []
      return fs.readdirSync(dir, { withFileTypes: true, recursive: true })
        .filter(e => e.isFile() && e.name === objectId).map(e => join(e.parentPath, e.name))
    }
    const files = [...find(join(m.state, 'devices')), ...(m.server ? find(m.server.device) : [])]
    t.equal(files.length, 1, `block 1's object ${objectId} found once (${files.join(', ')})`)
    await m.remount() // the chunks read above are cached in the daemon: start afresh
    const at = 3 * CHUNK + 1000
    const obj = fs.readFileSync(files[0])
    obj[at] ^= 0x5a
    fs.writeFileSync(files[0], obj)
    dropCaches()

    fd = fs.openSync(f, 'r')
    const good = MiB + 6 * CHUNK + 100
    t.ok(pread(fd, good).equals(data.subarray(good, good + 4096)), 'a read in another chunk of the damaged block returns the right bytes')
    t.equal(await errCode(() => pread(fd, MiB + at - 10)), 'EIO', 'a read covering the rotted chunk fails with EIO')
    const other = 2 * MiB + 5000
    t.ok(pread(fd, other).equals(data.subarray(other, other + 4096)), 'other blocks are untouched')
    fs.closeSync(fd)
  })

  t.test('kill -9 of the daemon: fsync-ed data survives and mount recovers the dead mount point', async (t) => {
    const m = await withMount(t)
    const data = randomBytes(3 * 1024 * 1024 + 11)
    const f = join(m.mnt, 'durable')
    const fd = fs.openSync(f, 'w')
    fs.writeSync(fd, data)
    fs.fsyncSync(fd)
    fs.mkdirSync(join(m.mnt, 'dir'))
    fs.writeFileSync(join(m.mnt, 'dir', 'small'), 'small and synced')
    const dfd = fs.openSync(join(m.mnt, 'dir', 'small'), 'r')
    fs.fsyncSync(dfd)
    fs.closeSync(dfd)
    const pid = await m.daemonPid()
    t.ok(pid, `daemon pid found (${pid}) via STATE/daemon.pid or pgrep`)
    if (!pid) { fs.closeSync(fd); return }
    process.kill(pid, 'SIGKILL')
    t.ok(await waitFor(() => !pidAlive(pid), 10_000), 'daemon died')
    try { fs.closeSync(fd) } catch {}
    t.equal(await errCode(() => fs.statSync(join(m.mnt, 'durable'))), 'ENOTCONN', 'the dead mount answers ENOTCONN')

    const r = await m.bslfs(['mount', m.state, m.mnt], { timeout: 60_000 })
    t.equal(r.code, 0, 'bslfs mount again over the dead mount point succeeds', { run: describeRun(r) })
    t.ok(await waitFor(() => isMounted(m.mnt)), 'mounted')
    t.equal(mountCount(m.mnt), 1, 'exactly one mount on the mount point (the dead one was cleaned up, not stacked)')
    t.equal(sha256(fs.readFileSync(f)), sha256(data), 'fsync-ed 3 MiB file intact after kill -9')
    t.equal(fs.readFileSync(join(m.mnt, 'dir', 'small'), 'utf8'), 'small and synced', 'fsync-ed small file intact')
    fs.writeFileSync(join(m.mnt, 'after'), 'after')
    t.equal(fs.readFileSync(join(m.mnt, 'after'), 'utf8'), 'after', 'new mount is writable')
    await m.unmount()
    t.pass('clean unmount after recovery')
  })

  t.test('kill -9 in the middle of a copy: remount works and every file reads without error', async (t) => {
    const m = await withMount(t)
    fs.writeFileSync(join(m.mnt, 'before'), 'before')
    const bfd = fs.openSync(join(m.mnt, 'before'), 'r'); fs.fsyncSync(bfd); fs.closeSync(bfd)
    const cp = run('cp', ['-a', '/usr/include/linux', join(m.mnt, 'linux')], { timeout: 120_000 })
    let cpDone = false
    void cp.then(() => { cpDone = true })
    // kill once the copy is well under way (about 100 entries in), not before it starts or after it ends
    await waitFor(() => cpDone || (() => { try { return fs.readdirSync(join(m.mnt, 'linux')).length >= 100 } catch { return false } })(), 60_000, 20)
    t.notOk(cpDone, 'the copy was still running when the daemon was killed')
    const pid = await m.daemonPid()
    t.ok(pid, 'daemon pid found')
    if (pid) {
      process.kill(pid, 'SIGKILL')
      t.ok(await waitFor(() => !pidAlive(pid), 10_000), 'daemon died')
    }
    const c = await cp
    t.comment(`cp exit ${c.code} (expected to fail once the daemon died)`)
    await m.mount()
    t.equal(mountCount(m.mnt), 1, 'one mount on the mount point')
    t.equal(fs.readFileSync(join(m.mnt, 'before'), 'utf8'), 'before', 'file synced before the crash intact')
    const rd = await run('bash', ['-c', 'find . -type f -print0 | xargs -0r cat > /dev/null && find . | wc -l'], { cwd: m.mnt, timeout: 120_000 })
    t.equal(rd.code, 0, 'every file left by the interrupted copy reads without an error', { run: describeRun(rd) })
    t.comment(`${rd.stdout.trim()} entries survived the crash`)
    const rm = await run('rm', ['-rf', join(m.mnt, 'linux')], { timeout: 120_000 })
    t.equal(rm.code, 0, 'and they can be removed', { run: describeRun(rm) })
  })

  t.test('status --json', async (t) => {
    const m = await withMount(t)
    const r = await m.bslfs(['status', m.state, '--json'])
    t.equal(r.code, 0, 'status --json exits 0', { run: describeRun(r) })
    let parsed: unknown
    t.doesNotThrow(() => { parsed = JSON.parse(r.stdout) }, 'output is JSON', { run: describeRun(r) })
    t.ok(parsed !== null && typeof parsed === 'object', 'a JSON object')
    t.match(JSON.stringify(parsed), m.mnt, 'mentions the mount point while mounted', { stdout: r.stdout })
    const plain = await m.bslfs(['status', m.state])
    t.equal(plain.code, 0, 'status (text) exits 0', { run: describeRun(plain) })
    t.ok(plain.stdout.trim().length > 0, 'status prints something')
    await m.unmount()
    const off = await m.bslfs(['status', m.state, '--json'])
    t.equal(off.code, 0, 'status --json works when not mounted', { run: describeRun(off) })
    t.doesNotThrow(() => JSON.parse(off.stdout), 'and is JSON', { run: describeRun(off) })
    const missing = await m.bslfs(['status', join(m.base, 'nope'), '--json'])
    refused(t, missing, 'status of a missing STATE')
  })

  t.test('bsl prints one line per block', async (t) => {
    const m = await withMount(t)
    const write = (name: string, data: Buffer) => {
      const fd = fs.openSync(join(m.mnt, name), 'w'); fs.writeSync(fd, data); fs.fsyncSync(fd); fs.closeSync(fd)
    }
    write('one', Buffer.from('x'))
    write('a', randomBytes(4 * 1024 * 1024))
    write('b', randomBytes(8 * 1024 * 1024))
    write('empty', Buffer.alloc(0))
    const bsl = (p: string) => m.bslfs(['bsl', m.state, p])
    const one = await bsl('/one'); const a = await bsl('/a'); const b = await bsl('/b'); const e = await bsl('/empty')
    for (const [n, r] of [['/one', one], ['/a', a], ['/b', b], ['/empty', e]] as const) t.equal(r.code, 0, `bsl ${n} exits 0`, { run: describeRun(r) })
    t.equal(bslLines(one).length, 1, 'a 1-byte file has one block', { run: describeRun(one) })
    t.ok(bslLines(a).length >= 1, `4 MiB file: ${bslLines(a).length} block(s)`)
    t.equal(bslLines(b).length, 2 * bslLines(a).length, '8 MiB file has twice the blocks of a 4 MiB file', { a: a.stdout, b: b.stdout })
    t.equal(new Set(bslLines(b)).size, bslLines(b).length, 'every block line is distinct')
    // an empty file has no blocks: no output, or at most a parenthesised note such as "(no blocks)"
    const eLines = bslLines(e)
    t.ok(eLines.length === 0 || (eLines.length === 1 && /^\(.*\)$/.test(eLines[0]!)), 'an empty file has no block lines', { run: describeRun(e) })
    refused(t, await bsl('/missing'), 'bsl of a missing path')
    // the same answer with the file system unmounted (the CLI opens the directory itself)
    await m.unmount()
    const b2 = await bsl('/b')
    t.equal(b2.code, 0, 'bsl works when not mounted', { run: describeRun(b2) })
    t.same(bslLines(b2), bslLines(b), 'same blocks mounted and unmounted')
  })

  t.test('unmount of a busy mount', async (t) => {
    const m = await withMount(t)
    fs.writeFileSync(join(m.mnt, 'f'), 'still here')
    const sleeper = spawn('sleep', ['120'], { cwd: m.mnt, stdio: 'ignore' })
    t.teardown(() => { try { sleeper.kill('SIGKILL') } catch {} })
    await sleep(300)
    const busy = await m.bslfs(['unmount', m.mnt], { timeout: 60_000 })
    t.not(busy.code, 0, 'unmount with a process inside exits non-zero', { run: describeRun(busy) })
    t.match(busy.stderr + busy.stdout, /busy/i, 'and says "busy"', { run: describeRun(busy) })
    t.ok(isMounted(m.mnt), 'still mounted')
    t.equal(fs.readFileSync(join(m.mnt, 'f'), 'utf8'), 'still here', 'and still serving')
    const pid = await m.daemonPid()
    const lazy = await m.bslfs(['unmount', m.mnt, '--lazy'], { timeout: 60_000 })
    t.equal(lazy.code, 0, 'unmount --lazy succeeds', { run: describeRun(lazy) })
    t.ok(await waitFor(() => !isMounted(m.mnt), 10_000), 'detached from the mount table')
    // as with umount -l on any filesystem, the detached tree keeps working for
    // those still inside it: the daemon must keep serving until the last user goes
    let viaCwd: string
    try { viaCwd = fs.readFileSync(`/proc/${sleeper.pid}/cwd/f`, 'utf8') } catch (e) { viaCwd = (e as NodeJS.ErrnoException).code ?? String(e) }
    t.equal(viaCwd, 'still here', 'after --lazy, the busy process still reaches its files (daemon keeps serving)')
    sleeper.kill('SIGKILL')
    if (pid) t.ok(await waitFor(() => !pidAlive(pid), 30_000), 'daemon exits once the last user is gone')
    const again = await m.bslfs(['mount', m.state, m.mnt])
    t.equal(again.code, 0, 'mounts again afterwards', { run: describeRun(again) })
    t.equal(fs.readFileSync(join(m.mnt, 'f'), 'utf8'), 'still here', 'data intact')
  })

  t.test('mount refuses bad mount points', async (t) => {
    const m = await withMount(t)
    fs.writeFileSync(join(m.mnt, 'f'), 'first')
    const missing = join(m.base, 'no-such-dir')
    const r1 = await m.bslfs(['mount', m.state, missing])
    refused(t, r1, 'mount onto a missing mount point')
    t.notOk(fs.existsSync(missing), 'the missing mount point was not created')
    const r2 = await m.bslfs(['mount', m.state, m.mnt])
    refused(t, r2, 'mount the same STATE again onto its mount point')
    const other = join(m.base, 'other-mnt'); fs.mkdirSync(other)
    const r3 = await m.bslfs(['mount', m.state, other, ...(m.passwordFile ? ['--password-file', m.passwordFile] : [])])
    // A second mount point shows the same files, as with a disk filesystem: a STATE's is a bind of the first
    // mount (one daemon owns the LevelDB directory); a filesystem on PostgreSQL gets a mount daemon of its own.
    t.equal(r3.code, 0, 'a mounted filesystem mounts at a second mount point too', { run: describeRun(r3) })
    t.equal(fs.readFileSync(join(other, 'f'), 'utf8'), 'first', 'the second mount serves the same files')
    const u = await m.bslfs(['unmount', other])
    t.equal(u.code, 0, 'and unmounts', { run: describeRun(u) })
    t.notOk(isMounted(other), 'the second mount point is free again')
    if (directoryKind === 'postgres') fs.rmSync(runtimePaths(parseFsName(m.state), other).dir, { recursive: true, force: true })
    const state2 = join(m.base, 'state2'); fs.mkdirSync(state2)
    const init2 = await m.bslfs(['init', state2])
    t.equal(init2.code, 0, 'init a second STATE', { run: describeRun(init2) })
    const r4 = await m.bslfs(['mount', state2, m.mnt])
    refused(t, r4, 'mount another STATE onto an already-mounted mount point')
    t.equal(mountCount(m.mnt), 1, 'still exactly one mount on the mount point')
    const file = join(m.base, 'a-file'); fs.writeFileSync(file, '')
    refused(t, await m.bslfs(['mount', state2, file]), 'mount onto a regular file')
    t.equal(fs.readFileSync(join(m.mnt, 'f'), 'utf8'), 'first', 'the original mount still serves')
    refused(t, await m.bslfs(['unmount', other]), 'unmount of a directory that is not mounted')
  })

  t.test('init refuses non-empty and existing directories', async (t) => {
    const m = await withMount(t, { noMount: true })
    const dir = join(m.base, 'precious'); fs.mkdirSync(dir)
    fs.writeFileSync(join(dir, 'data.txt'), 'do not touch')
    fs.mkdirSync(join(dir, 'sub')); fs.writeFileSync(join(dir, 'sub', 'x'), 'x')
    const before = await treeDigest(dir, { mtime: true })
    refused(t, await m.bslfs(['init', dir]), 'init of a non-empty, non-bslfs dir')
    t.same(digestDiff(before, await treeDigest(dir, { mtime: true })), [], 'the directory is unchanged')
    if (directoryKind === 'leveldb') {
      const stBefore = await treeDigest(m.state, { mtime: true })
      refused(t, await m.bslfs(['init', m.state]), 'init of an existing bslfs STATE')
      t.same(digestDiff(stBefore, await treeDigest(m.state, { mtime: true })), [], 'the existing STATE is unchanged')
    } else {
      // A database is compared by what the filesystem holds: its tables and its files.
      const holds = async (): Promise<unknown> => [(await m.bslfs(['volume', 'list', m.state, '--json'])).stdout, (await m.bslfs(['blocks', m.state])).stdout]
      const before = await holds()
      refused(t, await m.bslfs(['init', m.state, '--password-file', m.passwordFile!]), 'init of a database that holds a bslfs filesystem')
      t.same(await holds(), before, 'the existing filesystem is unchanged')
    }
  })

  t.test('mount refuses a missing or corrupt STATE and changes nothing', {
    skip: directoryKind === 'postgres' ? 'corrupts the files of a STATE directory (LevelDB); test/pg-cli.test.ts covers a bad URL' : false
  }, async (t) => {
    const m = await withMount(t, { noMount: true })
    const missing = join(m.base, 'no-state')
    refused(t, await m.bslfs(['mount', missing, m.mnt]), 'mount of a missing STATE')
    t.notOk(fs.existsSync(missing), 'the missing STATE was not created')
    t.notOk(isMounted(m.mnt), 'nothing mounted')

    const empty = join(m.base, 'empty-state'); fs.mkdirSync(empty)
    refused(t, await m.bslfs(['mount', empty, m.mnt]), 'mount of an empty (never initialised) dir')
    t.same(fs.readdirSync(empty), [], 'the empty dir stays empty')
    t.notOk(isMounted(m.mnt), 'nothing mounted')

    const files: string[] = []
    const walk = (d: string) => { for (const e of fs.readdirSync(d, { withFileTypes: true })) { const p = join(d, e.name); if (e.isDirectory()) walk(p); else if (e.isFile()) files.push(p) } }
    walk(m.state)
    t.ok(files.length > 0, `a fresh STATE has files (${files.length})`)
    const copy = join(m.base, 'pristine'); fs.cpSync(m.state, copy, { recursive: true })

    const variants: Array<[string, (p: string, i: number) => void]> = [
      ['garbage in every file', (p, i) => fs.writeFileSync(p, Buffer.concat([Buffer.from('garbage '), randomBytes(200 + i)]))],
      ['every file emptied', (p) => fs.truncateSync(p, 0)]
    ]
    for (const [what, corrupt] of variants) {
      fs.rmSync(m.state, { recursive: true, force: true }); fs.cpSync(copy, m.state, { recursive: true })
      files.forEach((p, i) => corrupt(p, i))
      const before = await treeDigest(m.state, { mtime: true })
      const r = await m.bslfs(['mount', m.state, m.mnt], { timeout: 60_000 })
      refused(t, r, `mount of a STATE with ${what}`)
      await sleep(500)
      t.notOk(isMounted(m.mnt), `${what}: nothing mounted`)
      const left = await run('pgrep', ['-f', '--', m.state])
      t.equal(left.stdout.trim(), '', `${what}: no daemon left running`)
      t.same(digestDiff(before, await treeDigest(m.state, { mtime: true })), [], `${what}: STATE unchanged (listing, content, mtimes)`)
    }
  })

  const mountHelper = ['/sbin/mount.bslfs', '/usr/sbin/mount.bslfs'].find((p) => fs.existsSync(p))
  if (mountHelper) {
    t.test(`mount -t bslfs (${mountHelper})`, async (t) => {
      const m = await withMount(t, { noMount: true })
      const r = await run('mount', ['-t', 'bslfs', m.state, m.mnt], { timeout: 60_000 })
      t.equal(r.code, 0, 'mount -t bslfs STATE MNT', { run: describeRun(r) })
      if (!t.ok(await waitFor(() => isMounted(m.mnt)), 'mounted')) return
      fs.writeFileSync(join(m.mnt, 'f'), 'via mount -t')
      t.equal(fs.readFileSync(join(m.mnt, 'f'), 'utf8'), 'via mount -t', 'usable')
      await m.unmount()
      const ro = await run('mount', ['-t', 'bslfs', '-o', 'ro', m.state, m.mnt], { timeout: 60_000 })
      t.equal(ro.code, 0, 'mount -t bslfs -o ro', { run: describeRun(ro) })
      if (!t.ok(await waitFor(() => isMounted(m.mnt)), 'mounted read-only')) return
      t.equal(fs.readFileSync(join(m.mnt, 'f'), 'utf8'), 'via mount -t', 'data there')
      t.equal(await errCode(() => fs.writeFileSync(join(m.mnt, 'g'), '')), 'EROFS', '-o ro honoured')
      const um = await run('umount', [m.mnt], { timeout: 60_000 })
      t.equal(um.code, 0, 'umount', { run: describeRun(um) })
    })
  }

  t.test('-o ro gives EROFS', async (t) => {
    const m = await withMount(t)
    fs.writeFileSync(join(m.mnt, 'f'), 'kept')
    fs.mkdirSync(join(m.mnt, 'd'))
    await m.remount(['ro'])
    t.match(mountEntry(m.mnt)?.options ?? '', /(^|,)ro(,|$)/, 'mount table says ro')
    t.equal(fs.readFileSync(join(m.mnt, 'f'), 'utf8'), 'kept', 'reads work')
    const p = (n: string) => join(m.mnt, n)
    t.equal(await errCode(() => fs.writeFileSync(p('f'), 'x')), 'EROFS', 'write to an existing file: EROFS')
    t.equal(await errCode(() => fs.writeFileSync(p('new'), 'x')), 'EROFS', 'create: EROFS')
    t.equal(await errCode(() => fs.mkdirSync(p('d2'))), 'EROFS', 'mkdir: EROFS')
    t.equal(await errCode(() => fs.unlinkSync(p('f'))), 'EROFS', 'unlink: EROFS')
    t.equal(await errCode(() => fs.rmdirSync(p('d'))), 'EROFS', 'rmdir: EROFS')
    t.equal(await errCode(() => fs.renameSync(p('f'), p('g'))), 'EROFS', 'rename: EROFS')
    t.equal(await errCode(() => fs.chmodSync(p('f'), 0o600)), 'EROFS', 'chmod: EROFS')
    t.equal(await errCode(() => fs.utimesSync(p('f'), 1, 1)), 'EROFS', 'utimes: EROFS')
    t.equal(await errCode(() => fs.truncateSync(p('f'), 0)), 'EROFS', 'truncate: EROFS')
    t.equal(await errCode(() => fs.symlinkSync('x', p('l'))), 'EROFS', 'symlink: EROFS')
    const x = await py('attempt("setxattr", os.setxattr, sys.argv[1], "user.x", b"1")', [p('f')])
    t.equal(x.results.setxattr, 'EROFS', 'setxattr: EROFS', { run: describeRun(x.run) })
    t.equal(fs.readFileSync(p('f'), 'utf8'), 'kept', 'content unchanged')
    await m.remount([])
    fs.writeFileSync(p('f'), 'rw again')
    t.equal(fs.readFileSync(p('f'), 'utf8'), 'rw again', 'writable after a read-write remount')
  })
}
