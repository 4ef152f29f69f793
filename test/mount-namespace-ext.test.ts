// The namespace beyond the POSIX basics, as programs use it (issue 26): open directories that
// outlive rmdir and rename-over, renameat2's RENAME_EXCHANGE and RENAME_WHITEOUT (with a crash
// mid-exchange).
// Each check runs real programs on a real mount; after each part the unmounted filesystem is
// checked with `bslfs fsck`.
import t from 'tap'
import * as fs from 'node:fs'
import { join } from 'node:path'
import { PYTHON, bslfs, describeRun, isMounted, mountCount, pidAlive, py, run, target, waitFor, withMount, type Mount } from './helpers/mount'
import { fsck, fsckClean } from './helpers/fsck'

type Test = tap.Test


const RENAME = `
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
def renameat2(a, b, flags):
    if libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
NOREPLACE, EXCHANGE, WHITEOUT = 1, 2, 4
`

/** One mount for the parts that need no crash (each works in its own directory): a mount costs seconds. */
let shared: Mount | undefined
async function mounted (): Promise<Mount> {
  shared ??= await withMount(t)
  return shared
}

t.test('an open directory keeps its attributes after rmdir and rename-over, until its last handle closes', async (t) => {
  const m = await mounted()
  fs.mkdirSync(join(m.mnt, 'opendirs'))
  const { results, run: r } = await py(`
d = sys.argv[1]
os.mkdir(d + '/gone')
fd = os.open(d + '/gone', os.O_RDONLY | os.O_DIRECTORY)
os.rmdir(d + '/gone')
st = os.fstat(fd)
print('rmdir_isdir', stat.S_ISDIR(st.st_mode))
print('rmdir_nlink', st.st_nlink)
print('rmdir_entries', len(os.listdir(fd)))
os.fchdir(fd)
print('rmdir_ls_dot', len(os.listdir('.')))
attempt('rmdir_create', os.open, 'x', os.O_CREAT | os.O_WRONLY, 0o644)
attempt('rmdir_mkdir', os.mkdir, 'y')
os.chdir('/')
print('rmdir_name', os.path.exists(d + '/gone'))
os.mkdir(d + '/e')
os.mkdir(d + '/f')
os.mkdir(d + '/f/inner')
fd2 = os.open(d + '/e', os.O_RDONLY | os.O_DIRECTORY)
ino_e = os.fstat(fd2).st_ino
os.rename(d + '/f', d + '/e')
st2 = os.fstat(fd2)
print('over_same', st2.st_ino == ino_e)
print('over_nlink', st2.st_nlink)
print('over_entries', len(os.listdir(fd2)))
print('over_new', sorted(os.listdir(d + '/e')) == ['inner'])
fd3 = os.open(d + '/e', os.O_RDONLY | os.O_DIRECTORY)
os.close(fd)
os.close(fd2)
print('closed_stat', os.path.isdir(d + '/e/inner'))
os.rmdir(d + '/e/inner')
os.close(fd3)
os.rmdir(d + '/e')
print('done', 'yes')
`, [join(m.mnt, 'opendirs')])
  t.same(results, {
    rmdir_isdir: 'True', rmdir_nlink: '0', rmdir_entries: '0', rmdir_ls_dot: '0', rmdir_create: 'ENOENT', rmdir_mkdir: 'ENOENT',
    rmdir_name: 'False', over_same: 'True', over_nlink: '0', over_entries: '0', over_new: 'True', closed_stat: 'True', done: 'yes'
  }, 'fstat, readdir and fchdir work on the removed directory, as on ext4', { run: describeRun(r) })
  const after = await fsckClean(t, m, 'after the handles closed')
  // The first part on a fresh filesystem: the root and opendirs are all that is left.
  if (after) t.equal(after.inodes, 2, 'the removed directories\' rows are gone')
})

t.test('renameat2 RENAME_EXCHANGE swaps files and directories atomically', async (t) => {
  const m = await mounted()
  const d = join(m.mnt, 'exchange')
  fs.mkdirSync(d)
  fs.mkdirSync(join(d, 'p1/x/sub'), { recursive: true })
  fs.writeFileSync(join(d, 'p1/x/sub/file'), 'in x')
  fs.mkdirSync(join(d, 'p2'))
  fs.writeFileSync(join(d, 'p2/y'), 'file y')
  fs.writeFileSync(join(d, 'a'), 'AAA')
  fs.writeFileSync(join(d, 'b'), 'BB')
  const inoA = fs.statSync(join(d, 'a')).ino
  const inoB = fs.statSync(join(d, 'b')).ino
  const old = new Date('2001-01-01T00:00:00Z')
  for (const p of ['p1', 'p2']) fs.utimesSync(join(d, p), old, old)
  const { results, run: r } = await py(RENAME + `
d = sys.argv[1]
attempt('files', renameat2, d + '/a', d + '/b', EXCHANGE)
attempt('dirs', renameat2, d + '/p1/x', d + '/p2/y', EXCHANGE)
attempt('missing', renameat2, d + '/a', d + '/nothing', EXCHANGE)
attempt('into_itself', renameat2, d + '/p2/y', d + '/p2/y/sub/file', EXCHANGE)
attempt('with_noreplace', renameat2, d + '/a', d + '/b', EXCHANGE | NOREPLACE)
attempt('noreplace', renameat2, d + '/a', d + '/b', NOREPLACE)
`, [d])
  t.same(results, { files: 'OK', dirs: 'OK', missing: 'ENOENT', into_itself: 'EINVAL', with_noreplace: 'EINVAL', noreplace: 'EEXIST' }, 'renameat2 answers as ext4', { run: describeRun(r) })
  t.equal(fs.readFileSync(join(d, 'a'), 'utf8'), 'BB', 'a holds what b held')
  t.equal(fs.readFileSync(join(d, 'b'), 'utf8'), 'AAA', 'b holds what a held')
  t.equal(fs.statSync(join(d, 'a')).ino, inoB, 'the inodes swapped, not the bytes')
  t.equal(fs.statSync(join(d, 'b')).ino, inoA)
  t.equal(fs.readFileSync(join(d, 'p2/y/sub/file'), 'utf8'), 'in x', 'the directory moved with its contents')
  t.equal(fs.readFileSync(join(d, 'p1/x'), 'utf8'), 'file y', 'the file took the directory\'s place')
  t.equal(fs.statSync(join(d, 'p2/y/..')).ino, fs.statSync(join(d, 'p2')).ino, 'the directory\'s .. follows it')
  t.equal(fs.statSync(join(d, 'p1')).nlink, 2, 'p1 lost its subdirectory link')
  t.equal(fs.statSync(join(d, 'p2')).nlink, 3, 'p2 gained it')
  for (const p of ['p1', 'p2']) t.ok(fs.statSync(join(d, p)).mtimeMs > old.getTime() + 1000, `${p}'s mtime moved`)
  await m.remount()
  t.equal(fs.readFileSync(join(d, 'p2/y/sub/file'), 'utf8'), 'in x', 'the exchange outlived the remount')
})

t.test('RENAME_WHITEOUT leaves a whiteout (character device 0:0) behind', async (t) => {
  const m = await mounted()
  const d = join(m.mnt, 'whiteout')
  fs.mkdirSync(d)
  fs.writeFileSync(join(d, 'w'), 'moved')
  const { results, run: r } = await py(RENAME + `
d = sys.argv[1]
attempt('whiteout', renameat2, d + '/w', d + '/w2', WHITEOUT)
st = os.lstat(d + '/w')
print('chr', stat.S_ISCHR(st.st_mode))
print('rdev', st.st_rdev)
`, [d])
  t.same(results, { whiteout: 'OK', chr: 'True', rdev: '0' }, 'the source name is a whiteout', { run: describeRun(r) })
  t.equal(fs.readFileSync(join(d, 'w2'), 'utf8'), 'moved')
  if (target === 'bslfs') {
    await m.unmount()
    const rep = await fsck(m)
    t.ok(rep.clean, 'fsck is clean after exchanges and whiteouts', { problems: rep.problems, first: rep.first })
    await m.mount()
  }
})

t.test('a crash in the middle of exchanges leaves one state or the other, and fsck clean', { skip: target !== 'bslfs' && 'bslfs only' }, async (t) => {
  const m = await withMount(t)
  const d = m.mnt
  await m.unmount()
  const inodesBefore = (await fsck(m)).inodes
  await m.mount()
  fs.mkdirSync(join(d, 'l/one'), { recursive: true })
  fs.writeFileSync(join(d, 'l/one/tag'), 'one')
  fs.mkdirSync(join(d, 'r'))
  fs.writeFileSync(join(d, 'r/two'), 'two')
  const script = join(m.base, 'swap.py')
  fs.writeFileSync(script, `import os, sys, ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
d = sys.argv[1]
n = 0
while True:
    if libc.renameat2(-100, (d + '/l/one').encode(), -100, (d + '/r/two').encode(), 2) != 0:
        e = ctypes.get_errno()
        if e in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO): break
        raise OSError(e, os.strerror(e))
    n += 1
    if n == 200:
        # Held open at the crash: a removed directory and an unnamed temporary file with data.
        os.mkdir(d + '/doomed')
        held = os.open(d + '/doomed', os.O_RDONLY | os.O_DIRECTORY)
        os.rmdir(d + '/doomed')
        tmp = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o600)
        os.write(tmp, b'unnamed' * 1000)
        os.fsync(tmp)
        open(d + '/../started', 'w').close()
`)
  const swapper = run(PYTHON, [script, d], { timeout: 60_000 })
  t.ok(await waitFor(() => fs.existsSync(join(m.base, 'started')), 30_000), 'the exchanges run')
  const pid = await m.daemonPid()
  if (!pid) throw new Error('no daemon')
  process.kill(pid, 'SIGKILL')
  t.ok(await waitFor(() => !pidAlive(pid), 10_000), 'the daemon died')
  const sw = await swapper
  t.not(sw.stderr.includes('Traceback'), true, 'the swapper stopped on the dead mount', { run: describeRun(sw) })
  const rep = await fsck(m)
  t.same(Object.keys(rep.problems).filter(k => k !== 'orphan object'), [], 'fsck after the crash finds no namespace problem', { problems: rep.problems, first: rep.first })
  t.equal(rep.openOrphans, 2, 'the removed directory and the temporary file wait, unlinked, for the next mount')
  const r = await bslfs(['mount', m.state, m.mnt], { timeout: 60_000 })
  if (r.code !== 0 || !(await waitFor(() => isMounted(m.mnt), 10_000))) throw new Error(`mount after the crash failed:\n${describeRun(r)}`)
  t.equal(mountCount(m.mnt), 1)
  const left = fs.readdirSync(join(d, 'l')).join(',')
  const right = fs.readdirSync(join(d, 'r')).join(',')
  t.same([left, right], ['one', 'two'], 'each side still has its one name')
  const oneIsDir = fs.statSync(join(d, 'l/one')).isDirectory()
  const dirPath = oneIsDir ? 'l/one' : 'r/two'
  const filePath = oneIsDir ? 'r/two' : 'l/one'
  t.equal(fs.readFileSync(join(d, dirPath, 'tag'), 'utf8'), 'one', 'the directory is whole, wherever it is')
  t.equal(fs.readFileSync(join(d, filePath), 'utf8'), 'two', 'the file is whole, wherever it is')
  t.equal(fs.statSync(join(d, dirPath, '..')).ino, fs.statSync(join(d, dirPath, '../..', dirPath.split('/')[0]!)).ino, 'its .. is where it is')
  t.equal(fs.statSync(join(d, 'l')).nlink, oneIsDir ? 3 : 2, 'link counts match where the directory is')
  t.equal(fs.statSync(join(d, 'r')).nlink, oneIsDir ? 2 : 3)
  await m.unmount()
  const clean = await fsck(m)
  t.same(Object.keys(clean.problems).filter(k => k !== 'orphan object'), [], 'fsck after the remount', { problems: clean.problems })
  t.equal(clean.openOrphans, 0, 'the mount freed what the crash left unlinked')
  t.equal(clean.inodes, inodesBefore + 5, 'no row of theirs is left (l, l/one, l/one/tag, r, r/two are all there is)')
  await m.mount()
})
