// A real tree (a few thousand headers from /usr/include) copied into the
// mount with `cp -a`, compared byte for byte (content, modes, owners, mtimes,
// symlinks) before and after a remount, archived with tar, then removed.
import t from 'tap'
import { lstatSync, readdirSync } from 'node:fs'
import { mkdir, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { describeRun, digestDiff, run, sh, treeDigest, withMount, type DigestEntry } from './helpers/mount'

const SRC = '/usr/include'
// Enough for > 2,000 files without copying all of /usr/include (8,000+ entries,
// 130 MB on the dev machine): every top-level file and symlink plus these
// directories. BSLFS_TREE_FULL=1 copies everything.
const PREFERRED = ['linux', 'asm-generic', 'x86_64-linux-gnu', 'c++', 'X11', 'ncursesw', 'python3.11', 'openssl',
  'sys', 'bits', 'netinet', 'arpa', 'rpc', 'scsi', 'net']

function selection (): string[] {
  const all = readdirSync(SRC).sort()
  if (process.env.BSLFS_TREE_FULL === '1') return all
  return all.filter((n) => !lstatSync(join(SRC, n)).isDirectory() || PREFERRED.includes(n))
}

const countFiles = (d: DigestEntry[]) => d.filter((e) => e.type === 'file').length

t.test('cp -a of /usr/include, remount, tar, rm -rf', async (t) => {
  const m = await withMount(t)
  let names = selection()
  let srcDigest = await treeDigest(SRC, { only: names, mtime: true })
  if (countFiles(srcDigest) < 2000) { // another machine's /usr/include: take all of it
    names = readdirSync(SRC).sort()
    srcDigest = await treeDigest(SRC, { only: names, mtime: true })
  }
  const nFiles = countFiles(srcDigest)
  t.ok(nFiles >= 2000, `source selection has ${nFiles} files (need >= 2000)`)
  t.ok(srcDigest.some((e) => e.type === 'symlink'), 'source selection includes symlinks')
  t.comment(`copying ${srcDigest.length} entries (${nFiles} files) from ${SRC}`)

  const dst = join(m.mnt, 'include')
  await mkdir(dst)
  let started = Date.now()
  const cp = await run('cp', ['-a', '--', ...names, `${dst}/`], { cwd: SRC, timeout: 300_000 })
  t.equal(cp.code, 0, 'cp -a succeeds', { diagnostic: cp.code !== 0, run: describeRun(cp) })
  t.comment(`cp -a took ${Date.now() - started} ms`)

  const compare = async (what: string) => {
    started = Date.now()
    const got = await treeDigest(dst, { mtime: true })
    t.equal(countFiles(got), nFiles, `${what}: same number of files (${nFiles})`)
    t.equal(got.length, srcDigest.length, `${what}: same number of entries (${srcDigest.length})`)
    const diffs = digestDiff(srcDigest, got)
    t.same(diffs, [], `${what}: tree identical to the source (path, type, mode, owner, size, sha256, symlink target, mtime)`)
    t.comment(`${what}: digest took ${Date.now() - started} ms`)
  }
  await compare('after cp -a')

  await m.remount()
  await compare('after remount')

  // tar of the mount is byte-identical to tar of the source (headers carry
  // names, modes, owners, sizes, mtimes incl. directories, link targets).
  const tarOpts = '--sort=name --numeric-owner --format=gnu -cf -'
  const quoted = names.map((n) => `'${n.replace(/'/g, "'\\''")}'`).join(' ')
  const tarSrc = await sh(`tar -C ${SRC} ${tarOpts} -- ${quoted} | sha256sum`, { timeout: 300_000 })
  const tarMnt = await sh(`tar -C '${dst}' ${tarOpts} -- ${quoted} | sha256sum`, { timeout: 300_000 })
  t.equal(tarMnt.code, 0, 'tar -c from the mount succeeds', { run: describeRun(tarMnt) })
  t.ok(tarSrc.stdout.length > 64, 'tar of the source produced a stream', { run: describeRun(tarSrc) })
  if (tarMnt.stdout.trim() !== tarSrc.stdout.trim()) {
    const d = await sh(`diff <(tar -C ${SRC} ${tarOpts} -- ${quoted} | tar -tvf - --numeric-owner --full-time) ` +
      `<(tar -C '${dst}' ${tarOpts} -- ${quoted} | tar -tvf - --numeric-owner --full-time) | head -40`, { timeout: 300_000 })
    t.fail('tar stream of the mount equals tar stream of the source', { listingDiff: d.stdout })
  } else {
    t.pass('tar stream of the mount equals tar stream of the source')
  }
  // the archive also extracts to the same tree
  const x = await sh(`set -o pipefail; mkdir -p '${m.base}/untar' && tar -C '${dst}' ${tarOpts} -- ${quoted} | tar -C '${m.base}/untar' -xpf -`, { timeout: 300_000 })
  t.equal(x.code, 0, 'tar from mount | tar -x succeeds', { run: describeRun(x) })
  t.same(digestDiff(srcDigest, await treeDigest(join(m.base, 'untar'), { mtime: true })), [], 'extracted archive equals source')

  started = Date.now()
  const rm = await run('rm', ['-rf', '--', dst], { timeout: 300_000 })
  t.equal(rm.code, 0, 'rm -rf succeeds', { run: describeRun(rm) })
  t.comment(`rm -rf took ${Date.now() - started} ms`)
  t.same(await readdir(m.mnt), [], 'mount root is empty after rm -rf')
  const ls = await run('ls', ['-a', m.mnt])
  t.same(ls.stdout.split('\n').filter(Boolean), ['.', '..'], 'ls -a shows only . and ..')
  await m.remount()
  t.same(await readdir(m.mnt), [], 'still empty after remount')
})
