// What an inode carries beyond the POSIX basics, as programs use it (issue 26): inode flags
// (chattr +i / +a), POSIX ACLs (setfacl, getfacl, cp -a, tar --acls, checks as another user),
// birth time (statx), O_TMPFILE. Real programs on a real mount; after each part the unmounted
// filesystem is checked with `bslfs fsck`.
import t from 'tap'
import * as fs from 'node:fs'
import { join } from 'node:path'
import { PYTHON, bslfs, describeRun, isMounted, mountCount, pidAlive, py, run, target, waitFor, withMount, type Mount } from './helpers/mount'
import { fsck, fsckClean } from './helpers/fsck'

type Test = tap.Test


/** Flags lsattr shows for `p` ("i", "a", "ia" or ""). */
async function lsattr (p: string): Promise<string> {
  const r = await run('lsattr', ['-d', p])
  if (r.code !== 0) throw new Error(describeRun(r))
  return (r.stdout.split(' ')[0] ?? '').replace(/[^ia]/g, '')
}

async function chattr (t: Test, flags: string, p: string): Promise<void> {
  const r = await run('chattr', [flags, p])
  t.equal(r.code, 0, `chattr ${flags} ${p.slice(p.lastIndexOf('/') + 1)}`, { run: describeRun(r) })
}

/** One mount for the whole file (each part works in its own directory): a mount costs seconds. */
let shared: Mount | undefined
async function mounted (): Promise<Mount> {
  shared ??= await withMount(t)
  return shared
}

t.test('inode flags: chattr +i and +a, enforced for every writer, set only by root', async (t) => {
  const m = await mounted()
  const d = join(m.mnt, 'flags')
  fs.mkdirSync(d)
  fs.writeFileSync(join(d, 'imm'), 'fixed')
  fs.writeFileSync(join(d, 'app'), 'log\n')
  fs.mkdirSync(join(d, 'idir'))
  fs.writeFileSync(join(d, 'idir/in'), 'x')
  fs.mkdirSync(join(d, 'adir'))
  fs.writeFileSync(join(d, 'adir/in'), 'x')
  t.equal(await lsattr(join(d, 'imm')), '', 'no flags at first')
  // ext4 lets a handle opened before chattr +a write anywhere; bslfs holds every write to the end.
  const earlyOverwrite = target === 'native' ? 'OK' : 'EPERM'
  // Handles opened before the flags are set obey them too.
  const { results, run: r } = await py(`
import subprocess
d = sys.argv[1]
early, early_app = os.open(d + '/imm', os.O_RDWR), os.open(d + '/app', os.O_RDWR)
for f, p in (('+i', 'imm'), ('+a', 'app'), ('+i', 'idir'), ('+a', 'adir')):
    print('chattr' + f + p, subprocess.run(['chattr', f, d + '/' + p]).returncode)
def write_at(path, flags, data):
    fd = os.open(path, flags)
    try: os.write(fd, data)
    finally: os.close(fd)
attempt('i_open_write', os.open, d + '/imm', os.O_WRONLY)
attempt('i_open_read', lambda: os.close(os.open(d + '/imm', os.O_RDONLY)))
attempt('i_early_write', os.pwrite, early, b'y', 0)
attempt('i_truncate', os.truncate, d + '/imm', 0)
attempt('i_unlink', os.unlink, d + '/imm')
attempt('i_rename', os.rename, d + '/imm', d + '/imm2')
attempt('i_link', os.link, d + '/imm', d + '/imm3')
attempt('i_chmod', os.chmod, d + '/imm', 0o600)
attempt('i_chown', os.chown, d + '/imm', 1, 1)
attempt('i_utime', os.utime, d + '/imm', (1, 1))
attempt('i_xattr', os.setxattr, d + '/imm', 'user.k', b'v')
attempt('i_over', os.rename, d + '/app', d + '/imm')
attempt('a_open_write', os.open, d + '/app', os.O_WRONLY)
attempt('a_open_trunc', os.open, d + '/app', os.O_WRONLY | os.O_APPEND | os.O_TRUNC)
attempt('a_append', write_at, d + '/app', os.O_WRONLY | os.O_APPEND, b'more\\n')
attempt('a_early_overwrite', os.pwrite, early_app, b'X', 0)
attempt('a_truncate', os.truncate, d + '/app', 0)
attempt('a_unlink', os.unlink, d + '/app')
attempt('a_rename', os.rename, d + '/app', d + '/app2')
attempt('a_chmod', os.chmod, d + '/app', 0o600)
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def falloc(fd, mode, off, length):
    if libc.fallocate(fd, mode, ctypes.c_long(off), ctypes.c_long(length)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
attempt('i_early_punch', falloc, early, 3, 0, 1)
attempt('a_early_punch', falloc, early_app, 3, 0, 1)
attempt('a_early_prealloc', falloc, early_app, 1, 0, 1 << 16)
attempt('idir_create', os.open, d + '/idir/new', os.O_CREAT | os.O_WRONLY, 0o644)
attempt('idir_unlink', os.unlink, d + '/idir/in')
attempt('idir_write_inside', write_at, d + '/idir/in', os.O_WRONLY, b'z')
attempt('adir_create', lambda: os.close(os.open(d + '/adir/new', os.O_CREAT | os.O_WRONLY, 0o644)))
attempt('adir_unlink', os.unlink, d + '/adir/in')
attempt('adir_rename_out', os.rename, d + '/adir/in', d + '/moved')
os.close(early)
os.close(early_app)
`, [d])
  t.same(results, {
    'chattr+iimm': '0', 'chattr+aapp': '0', 'chattr+iidir': '0', 'chattr+aadir': '0',
    i_open_write: 'EPERM', i_open_read: 'OK', i_early_write: 'EPERM', i_truncate: 'EPERM', i_unlink: 'EPERM', i_rename: 'EPERM', i_link: 'EPERM',
    i_chmod: 'EPERM', i_chown: 'EPERM', i_utime: 'EPERM', i_xattr: 'EPERM', i_over: 'EPERM',
    a_open_write: 'EPERM', a_open_trunc: 'EPERM', a_append: 'OK', a_early_overwrite: earlyOverwrite, a_truncate: 'EPERM', a_unlink: 'EPERM', a_rename: 'EPERM', a_chmod: 'EPERM',
    i_early_punch: 'EPERM', a_early_punch: 'EPERM', a_early_prealloc: 'OK',
    idir_create: 'EPERM', idir_unlink: 'EPERM', idir_write_inside: 'OK', adir_create: 'OK', adir_unlink: 'EPERM', adir_rename_out: 'EPERM'
  }, 'immutable and append-only as on ext4', { run: describeRun(r) })
  t.equal(await lsattr(join(d, 'imm')), 'i', 'lsattr shows immutable')
  t.equal(await lsattr(join(d, 'app')), 'a', 'lsattr shows append-only')
  t.equal(fs.readFileSync(join(d, 'imm'), 'utf8'), 'fixed', 'the immutable file is unchanged')
  t.equal(fs.readFileSync(join(d, 'app'), 'utf8'), earlyOverwrite === 'OK' ? 'Xog\nmore\n' : 'log\nmore\n', 'the append-only file only grew at its end')
  // Only root (CAP_LINUX_IMMUTABLE) sets or clears them.
  fs.writeFileSync(join(d, 'mine'), 'x')
  fs.chownSync(join(d, 'mine'), 65534, 65534)
  const user = await run('chattr', ['+i', join(d, 'mine')], { uid: 65534, gid: 65534 })
  t.not(user.code, 0, 'an unprivileged owner cannot set immutable', { run: describeRun(user) })
  t.equal(await lsattr(join(d, 'mine')), '', 'and nothing was set')
  const clear = await run('chattr', ['-i', join(d, 'imm')], { uid: 65534, gid: 65534 })
  t.not(clear.code, 0, 'nor clear it')
  await fsckClean(t, m, 'with flags set')
  t.equal(await lsattr(join(d, 'imm')), 'i', 'the flags outlive a remount')
  t.equal(await lsattr(join(d, 'app')), 'a')
  for (const [f, p] of [['-i', 'imm'], ['-a', 'app'], ['-i', 'idir'], ['-a', 'adir']]) await chattr(t, f!, join(d, p!))
  fs.writeFileSync(join(d, 'imm'), 'free')
  fs.unlinkSync(join(d, 'app'))
  fs.unlinkSync(join(d, 'adir/in'))
  fs.writeFileSync(join(d, 'idir/new'), 'ok')
  t.equal(fs.readFileSync(join(d, 'imm'), 'utf8'), 'free', 'cleared, the files are writable and removable again')
})

/** getfacl's entries for `p` (no header), or the run when it fails. */
async function getfacl (p: string): Promise<string> {
  const r = await run('getfacl', ['-p', '--omit-header', p])
  if (r.code !== 0) throw new Error(describeRun(r))
  return r.stdout.trim()
}

async function mustRun (t: Test, cmd: string, args: string[]): Promise<void> {
  const r = await run(cmd, args)
  t.equal(r.code, 0, `${cmd} ${args.join(' ')}`, { run: describeRun(r) })
}

const NOBODY = 65534
const STRANGER = 12345

t.test('POSIX ACLs: stored, enforced for other users, kept in step with chmod, inherited, copied', async (t) => {
  const m = await mounted()
  const d = join(m.mnt, 'acl')
  fs.mkdirSync(d, { mode: 0o755 })
  fs.chmodSync(d, 0o755)
  const secret = join(d, 'secret')
  fs.writeFileSync(secret, 'secret\n', { mode: 0o600 })
  fs.chmodSync(secret, 0o600)
  const readAs = async (uid: number, p: string): Promise<string> => {
    const r = await run('cat', [p], { uid, gid: uid })
    return r.code === 0 ? r.stdout : r.stderr.includes('Permission denied') ? 'EACCES' : describeRun(r)
  }
  t.equal(await readAs(NOBODY, secret), 'EACCES', 'mode 0600: nobody cannot read')
  await mustRun(t, 'setfacl', ['-m', 'u:nobody:r', secret])
  t.equal(await getfacl(secret), 'user::rw-\nuser:nobody:r--\ngroup::---\nmask::r--\nother::---', 'getfacl shows what setfacl stored')
  t.equal(fs.statSync(secret).mode & 0o777, 0o640, 'the mode\'s group bits show the mask')
  t.match((await run('ls', ['-l', secret])).stdout, /^-rw-r-----\+ /, 'ls -l marks the ACL')
  t.equal(await readAs(NOBODY, secret), 'secret\n', 'the named user reads through the ACL')
  t.equal(await readAs(STRANGER, secret), 'EACCES', 'another user still cannot')
  fs.chmodSync(secret, 0o600)
  t.equal(await getfacl(secret), 'user::rw-\nuser:nobody:r--\t#effective:---\ngroup::---\nmask::---\nother::---', 'chmod sets the mask')
  t.equal(await readAs(NOBODY, secret), 'EACCES', 'and the mask holds the named user back')
  fs.chmodSync(secret, 0o640)
  t.equal(await readAs(NOBODY, secret), 'secret\n', 'chmod g+r lets the named user in again')

  // Default ACLs: new files and directories inherit them, masked by the mode asked for, and the umask does not apply.
  const team = join(d, 'team')
  fs.mkdirSync(team, { mode: 0o755 })
  fs.chmodSync(team, 0o755)
  await mustRun(t, 'setfacl', ['-d', '-m', 'u:nobody:rwx', team])
  const { results, run: r } = await py(`
d = sys.argv[1]
os.umask(0o022)
os.close(os.open(d + '/f', os.O_CREAT | os.O_WRONLY, 0o666))
os.mkdir(d + '/sub', 0o777)
print('f', oct(os.stat(d + '/f').st_mode & 0o777))
print('sub', oct(os.stat(d + '/sub').st_mode & 0o777))
`, [team])
  t.same(results, { f: '0o664', sub: '0o775' }, 'modes masked by the default ACL, not the umask', { run: describeRun(r) })
  t.equal(await getfacl(join(team, 'f')), 'user::rw-\nuser:nobody:rwx\t#effective:rw-\ngroup::r-x\t#effective:r--\nmask::rw-\nother::r--', 'a new file inherits the default ACL')
  t.match(await getfacl(join(team, 'sub')), /default:user:nobody:rwx/, 'a new directory inherits it as its own default too')
  const w = await run('sh', ['-c', `echo from-nobody >> ${team}/f && echo made > ${team}/sub/by-nobody`], { uid: NOBODY, gid: NOBODY })
  t.equal(w.code, 0, 'the named user writes the inherited file and creates in the inherited directory', { run: describeRun(w) })
  const s = await run('sh', ['-c', `echo x >> ${team}/f`], { uid: STRANGER, gid: STRANGER })
  t.not(s.code, 0, 'a stranger cannot')
  t.equal(fs.readFileSync(join(team, 'f'), 'utf8'), 'from-nobody\n')

  // cp -a and tar --acls carry ACLs along.
  await mustRun(t, 'cp', ['-a', secret, join(d, 'copied')])
  t.equal(await getfacl(join(d, 'copied')), await getfacl(secret), 'cp -a keeps the ACL')
  const tarball = join(m.base, 'acl.tar')
  await mustRun(t, 'tar', ['--acls', '-cf', tarball, '-C', d, 'secret', 'team'])
  fs.mkdirSync(join(d, 'untar'))
  await mustRun(t, 'tar', ['--acls', '-xpf', tarball, '-C', join(d, 'untar')])
  t.equal(await getfacl(join(d, 'untar/secret')), await getfacl(secret), 'tar --acls keeps the access ACL')
  t.equal(await getfacl(join(d, 'untar/team')), await getfacl(team), 'and the default ACL')

  // Set-group-ID goes when an owner outside the file's group sets an access ACL (as ext4's posix_acl_update_mode), not when root does.
  const sgid = join(d, 'sgid')
  fs.mkdirSync(sgid, { mode: 0o777 })
  fs.chmodSync(sgid, 0o777)
  for (const f of ['by-owner', 'by-root']) {
    fs.writeFileSync(join(sgid, f), 'x')
    fs.chownSync(join(sgid, f), NOBODY, 0)
    fs.chmodSync(join(sgid, f), 0o2775)
  }
  const own = await run('setfacl', ['-m', 'u:daemon:r', join(sgid, 'by-owner')], { uid: NOBODY, gid: NOBODY })
  t.equal(own.code, 0, 'the owner sets an ACL on its file', { run: describeRun(own) })
  t.equal(fs.statSync(join(sgid, 'by-owner')).mode & 0o7777, 0o775, 'outside the file\'s group: set-group-ID is cleared')
  await mustRun(t, 'setfacl', ['-m', 'u:daemon:r', join(sgid, 'by-root')])
  t.equal(fs.statSync(join(sgid, 'by-root')).mode & 0o7777, 0o2775, 'root (CAP_FSETID) keeps it')

  await mustRun(t, 'setfacl', ['-b', secret])
  t.equal(await getfacl(secret), 'user::rw-\ngroup::---\nother::---', 'setfacl -b leaves the minimal ACL: the owning group\'s own bits come back')
  t.equal(fs.statSync(secret).mode & 0o777, 0o600, 'and the mode says it')
  t.equal(await readAs(NOBODY, secret), 'EACCES', 'and the named user is out')
  await fsckClean(t, m, 'with ACLs')
  t.equal(await getfacl(join(team, 'f')), 'user::rw-\nuser:nobody:rwx\t#effective:rw-\ngroup::r-x\t#effective:r--\nmask::rw-\nother::r--', 'ACLs outlive a remount')
})

t.test('mounted with noacl, ACLs are not supported (the old behaviour)', { skip: target !== 'bslfs' && 'bslfs only' }, async (t) => {
  const m = await mounted()
  await m.remount(['noacl'])
  t.teardown(async () => { if (isMounted(m.mnt)) await m.remount([]) })
  const f = join(m.mnt, 'acl/noacl')
  fs.writeFileSync(f, 'x')
  const r = await run('setfacl', ['-m', 'u:nobody:r', f])
  t.not(r.code, 0, 'setfacl fails')
  t.match(r.stderr, /Operation not supported/, 'with EOPNOTSUPP', { run: describeRun(r) })
  const { results } = await py(`
d = sys.argv[1]
os.umask(0o022)
os.close(os.open(d + '/f2', os.O_CREAT | os.O_WRONLY, 0o666))
print('mode', oct(os.stat(d + '/f2').st_mode & 0o777))
`, [join(m.mnt, 'acl/team')])
  t.same(results, { mode: '0o644' }, 'the umask applies in a directory with a default ACL')
})

async function statFmt (fmt: string, p: string): Promise<string> {
  const r = await run('stat', ['-c', fmt, p])
  if (r.code !== 0) throw new Error(describeRun(r))
  return r.stdout.trim()
}

t.test('birth time: statx reports it, set once at creation, kept across renames and changes', async (t) => {
  const m = await mounted()
  const d = join(m.mnt, 'btime')
  fs.mkdirSync(d)
  const before = Math.floor(Date.now() / 1000)
  fs.writeFileSync(join(d, 'f'), 'born')
  fs.mkdirSync(join(d, 'sub'))
  const born = await statFmt('%w', join(d, 'f'))
  const dirBorn = await statFmt('%w', join(d, 'sub'))
  t.not(born, '-', 'stat -c %w shows a birth time')
  t.not(dirBorn, '-', 'for a directory too')
  const sec = Number(await statFmt('%W', join(d, 'f')))
  t.ok(sec >= before - 1 && sec <= Math.floor(Date.now() / 1000) + 1, 'it is the creation time', { sec, before })
  await new Promise(resolve => setTimeout(resolve, 20))
  fs.appendFileSync(join(d, 'f'), ' and grown')
  fs.chmodSync(join(d, 'f'), 0o600)
  fs.renameSync(join(d, 'f'), join(d, 'g'))
  fs.utimesSync(join(d, 'g'), new Date('2001-01-01T00:00:00Z'), new Date('2001-01-01T00:00:00Z'))
  fs.renameSync(join(d, 'sub'), join(m.mnt, 'btime-moved'))
  t.equal(await statFmt('%w', join(d, 'g')), born, 'writes, chmod, rename and utimes leave it')
  t.not(await statFmt('%z', join(d, 'g')), born, 'while the change time moved')
  t.equal(await statFmt('%w', join(m.mnt, 'btime-moved')), dirBorn, 'a moved directory keeps its birth time')
  await fsckClean(t, m, 'with birth times')
  t.equal(await statFmt('%w', join(d, 'g')), born, 'the birth time outlives a remount')
})

t.test('O_TMPFILE: an unnamed file that goes with its last close unless linked; O_EXCL forbids linking', async (t) => {
  const m = await mounted()
  const d = join(m.mnt, 'tmpfile')
  fs.mkdirSync(d)
  const { results, run: r } = await py(`
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, AT_SYMLINK_FOLLOW, AT_EMPTY_PATH = -100, 0x400, 0x1000
def linkat(fd, name, how):
    src = b'' if how == 'empty' else ('/proc/self/fd/%d' % fd).encode()
    if libc.linkat(fd if how == 'empty' else AT_FDCWD, src, AT_FDCWD, name.encode(), AT_EMPTY_PATH if how == 'empty' else AT_SYMLINK_FOLLOW) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
d = sys.argv[1]
os.umask(0o022)
fd = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o666)
os.write(fd, b'journal entry')
st = os.fstat(fd)
print('nlink', st.st_nlink)
print('mode', oct(st.st_mode & 0o777))
print('unnamed', len(os.listdir(d)))
attempt('link_proc', linkat, fd, d + '/via-proc', 'proc')
os.close(fd)
fd = os.open(d, os.O_TMPFILE | os.O_WRONLY, 0o600)
os.write(fd, b'second')
attempt('link_empty', linkat, fd, d + '/via-empty', 'empty')
os.close(fd)
fd = os.open(d, os.O_TMPFILE | os.O_WRONLY | os.O_EXCL, 0o600)
attempt('link_excl', linkat, fd, d + '/never', 'proc')
os.close(fd)
fd = os.open(d, os.O_TMPFILE | os.O_WRONLY, 0o600)
os.write(fd, b'x' * 100000)
os.close(fd)
print('names', ','.join(sorted(os.listdir(d))))
print('nlink_after', os.stat(d + '/via-proc').st_nlink)
`, [d])
  t.same(results, { nlink: '0', mode: '0o644', unnamed: '0', link_proc: 'OK', link_empty: 'OK', link_excl: 'ENOENT', names: 'via-empty,via-proc', nlink_after: '1' },
    'O_TMPFILE as on ext4', { run: describeRun(r) })
  t.equal(fs.readFileSync(join(d, 'via-proc'), 'utf8'), 'journal entry', 'the linked file holds what was written before its name')
  t.equal(fs.readFileSync(join(d, 'via-empty'), 'utf8'), 'second')
  const rep = await fsckClean(t, m, 'after temporary files')
  if (rep) t.equal(rep.problems['orphan object'] ?? 0, 0, 'the unlinked temporary file left no block behind')
})
