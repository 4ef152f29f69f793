// mount(8) as an administrator uses it on a bslfs mount: the generic options fstab and systemd
// pass (accepted; the access-time ones and nosymfollow applied), an fstab line mounted with
// `mount -T`, `mount -o remount,ro` and `remount,rw` of the live mount, and a STATE mounted at
// a second mount point (a bind of the first, one daemon, which stops with the last).
// mount(8) finds helpers in /sbin only: the test links mount.bslfs and mount.fuse.bslfs there
// when they are missing, and removes them again. Nothing here depends on the volume or the
// directory kind: the local pass runs it.
import t from 'tap'
import * as fs from 'node:fs'
import { join } from 'node:path'
import { parseMountOptions } from '../src/fs/mount'
import {
  bslfs, describeRun, errCode, isMounted, mountEntry, pidAlive, run, target, treeDigest, volumeKind, waitFor, withMount
} from './helpers/mount'

/** Every generic option mount(8), fstab and systemd hand a helper. */
const GENERIC = ['defaults', 'auto', 'noauto', 'user', 'users', 'nouser', 'owner', 'group', '_netdev', 'nofail',
  'x-systemd.automount', 'x-systemd.requires=network-online.target', 'x-systemd.device-timeout=10s', 'x-initrd.mount', 'x-mine',
  'comment=systemd.automount', 'atime', 'noatime', 'relatime', 'norelatime', 'strictatime', 'lazytime', 'diratime', 'nodiratime',
  'loud', 'silent', 'nosymfollow']

const flagsOf = (mnt: string): string[] => (mountEntry(mnt)?.options ?? '').split(',')

if (target === 'bslfs' && volumeKind === 'local') {
  t.test('each generic option is accepted alone; unknown ones are still refused by name', async t => {
    for (const o of GENERIC) t.doesNotThrow(() => parseMountOptions(o), o)
    t.throws(() => parseMountOptions('nodiratime,bogus'), /unknown or unsupported mount option "bogus"; supported: /, 'bogus refused with the list')
    t.throws(() => parseMountOptions('remount'), /unknown or unsupported mount option "remount"/, 'remount is not an option of bslfs mount')
  })

  const helpers = ['/sbin/mount.bslfs', '/sbin/mount.fuse.bslfs']
  t.test('mount(8): generic options, an fstab line, remount ro/rw, a second mount point', async t => {
    if (!helpers.every(h => fs.existsSync(h))) {
      const r = await bslfs(['install-helper'])
      if (!t.equal(r.code, 0, 'bslfs install-helper links the mount(8) helpers', { run: describeRun(r) })) return
      t.teardown(async () => { await bslfs(['uninstall-helper']) })
    }
    const m = await withMount(t, { noMount: true })
    const p = (n: string) => join(m.mnt, n)

    t.test('every generic option at once through mount -t bslfs; an unknown one refused', async t => {
      const r = await run('mount', ['-t', 'bslfs', '-o', GENERIC.join(','), m.state, m.mnt], { timeout: 60_000 })
      if (!t.equal(r.code, 0, 'mount -t bslfs -o <all of them>', { run: describeRun(r) })) return
      t.ok(flagsOf(m.mnt).includes('nosymfollow'), 'findmnt shows nosymfollow', { options: mountEntry(m.mnt)?.options })
      t.ok(flagsOf(m.mnt).includes('nodiratime'), 'and nodiratime', { options: mountEntry(m.mnt)?.options })
      fs.writeFileSync(p('target'), 'through a link')
      fs.symlinkSync('target', p('link'))
      t.equal(fs.readlinkSync(p('link')), 'target', 'nosymfollow: readlink works')
      t.equal(await errCode(() => fs.readFileSync(p('link'))), 'ELOOP', 'nosymfollow: following the link is ELOOP')
      await m.unmount()
      const bad = await run('mount', ['-t', 'bslfs', '-o', 'nodiratime,bogus', m.state, m.mnt], { timeout: 60_000 })
      t.not(bad.code, 0, 'an unknown bslfs option is still refused', { run: describeRun(bad) })
      t.match(bad.stderr, /unknown or unsupported mount option "bogus"/, 'naming it')
      t.notOk(isMounted(m.mnt), 'and nothing is mounted')
    })

    t.test('access times: strictatime with nodiratime, then noatime', async t => {
      const atime = (f: string) => fs.statSync(f).atimeMs
      const read = (f: string) => fs.readFileSync(f)
      await m.mount(['strictatime', 'nodiratime', 'attr_timeout=0', 'entry_timeout=0'])
      fs.writeFileSync(p('a'), 'atime')
      fs.mkdirSync(p('d'), { recursive: true })
      read(p('a'))
      const a1 = atime(p('a'))
      await new Promise(resolve => setTimeout(resolve, 20))
      read(p('a'))
      t.ok(atime(p('a')) > a1, 'strictatime: a second read moves atime again (relatime would not)')
      fs.utimesSync(p('d'), 1000, 2000)
      fs.readdirSync(p('d'))
      t.equal(atime(p('d')), 1000 * 1000, 'nodiratime: a listing leaves the directory\'s atime')
      await m.unmount()
      await m.mount(['noatime', 'attr_timeout=0', 'entry_timeout=0'])
      fs.utimesSync(p('a'), 1000, 2000)
      fs.utimesSync(p('d'), 1000, 2000)
      read(p('a'))
      fs.readdirSync(p('d'))
      t.equal(atime(p('a')), 1000 * 1000, 'noatime: a read leaves atime (relatime would move it: it is older than mtime)')
      t.equal(atime(p('d')), 1000 * 1000, 'noatime: a listing leaves the directory\'s atime')
      await m.unmount()
    })

    t.test('an fstab line, mounted with mount -T', async t => {
      const fstab = join(m.base, 'fstab')
      fs.writeFileSync(fstab, `# bslfs\n${m.state}  ${m.mnt}  bslfs  defaults,noauto,_netdev,nofail,x-systemd.automount,comment=x,noatime,nodiratime  0  0\n`)
      const r = await run('mount', ['-T', fstab, m.mnt], { timeout: 60_000 })
      if (!t.equal(r.code, 0, 'mount -T FSTAB MOUNTPOINT', { run: describeRun(r) })) return
      t.equal(mountEntry(m.mnt)?.fstype, 'fuse.bslfs', 'a bslfs mount')
      t.ok(flagsOf(m.mnt).includes('noatime'), 'findmnt shows noatime', { options: mountEntry(m.mnt)?.options })
      fs.writeFileSync(p('from-fstab'), 'x')
      t.equal(fs.readFileSync(p('from-fstab'), 'utf8'), 'x', 'usable')
      await m.unmount()
      fs.writeFileSync(fstab, `${m.state} ${m.mnt} fuse.bslfs rw,nofail,x-systemd.requires=network-online.target 0 0\n`)
      const f = await run('mount', ['-T', fstab, m.mnt], { timeout: 60_000 })
      t.equal(f.code, 0, 'a line of type fuse.bslfs (mount.fuse.bslfs)', { run: describeRun(f) })
      // The tests below go on with this mount.
    })

    let written: Awaited<ReturnType<typeof treeDigest>> = []
    t.test('remount,ro then remount,rw of the live mount', async t => {
      if (!m.mounted()) await m.mount()
      fs.writeFileSync(p('before'), 'written before the remount, not synced')
      fs.mkdirSync(p('dir'), { recursive: true })
      const reader = fs.openSync(p('before'), 'r')
      const writer = fs.openSync(p('open-for-writing'), 'w')
      const busy = await run('mount', ['-o', 'remount,ro', m.mnt], { timeout: 60_000 })
      t.not(busy.code, 0, 'remount,ro is refused while a file is open for writing', { run: describeRun(busy) })
      t.match(busy.stderr, /open for writing/, 'saying why')
      t.ok(flagsOf(m.mnt).includes('rw'), 'the mount stays read-write')
      fs.writeSync(writer, 'still writable')
      fs.closeSync(writer)
      const ro = await run('mount', ['-o', 'remount,ro', m.mnt], { timeout: 60_000 })
      if (!t.equal(ro.code, 0, 'mount -o remount,ro MOUNTPOINT', { run: describeRun(ro) })) return
      const fm = await run('findmnt', ['-n', '-o', 'OPTIONS', m.mnt])
      t.match(fm.stdout, /^ro,/, 'findmnt shows ro', { run: describeRun(fm) })
      t.equal(await errCode(() => fs.writeFileSync(p('before'), 'x')), 'EROFS', 'a write: EROFS')
      t.equal(await errCode(() => fs.writeFileSync(p('new'), 'x')), 'EROFS', 'a create: EROFS')
      t.equal(await errCode(() => fs.mkdirSync(p('dir2'))), 'EROFS', 'mkdir: EROFS')
      t.equal(await errCode(() => fs.unlinkSync(p('before'))), 'EROFS', 'unlink: EROFS')
      t.equal(await errCode(() => fs.renameSync(p('before'), p('after'))), 'EROFS', 'rename: EROFS')
      const buf = Buffer.alloc(100)
      const n = fs.readSync(reader, buf, 0, 100, 0)
      t.equal(buf.subarray(0, n).toString(), 'written before the remount, not synced', 'a file open before reads on')
      t.equal(fs.readFileSync(p('open-for-writing'), 'utf8'), 'still writable', 'what was written before is there')
      const before = await treeDigest(m.mnt)
      const rw = await run('mount', ['-o', 'remount,rw', m.mnt], { timeout: 60_000 })
      if (!t.equal(rw.code, 0, 'mount -o remount,rw MOUNTPOINT', { run: describeRun(rw) })) return
      t.match((await run('findmnt', ['-n', '-o', 'OPTIONS', m.mnt])).stdout, /^rw,/, 'findmnt shows rw')
      fs.writeFileSync(p('new'), 'writable again')
      t.equal(fs.readFileSync(p('new'), 'utf8'), 'writable again', 'writes work again')
      fs.closeSync(reader)
      fs.unlinkSync(p('new'))
      written = before
    })

    t.test('a second mount point of a mounted STATE, and a third read-only one', async t => {
      if (!m.mounted()) await m.mount()
      const earlier = await treeDigest(m.mnt)
      const pid = await m.daemonPid()
      const m2 = join(m.base, 'mnt2')
      const m3 = join(m.base, 'mnt3')
      fs.mkdirSync(m2)
      fs.mkdirSync(m3)
      t.teardown(async () => {
        for (const x of [m3, m2]) if (isMounted(x)) await run('umount', ['-l', x])
      })
      fs.writeFileSync(p('one'), 'seen everywhere')
      const refused = await bslfs(['mount', m.state, m2, '-o', 'uid=5'])
      t.match(refused.stderr, /mounted at .* already; .*drop -o uid=5/, 'a setting of the daemon is refused for another mount point', { run: describeRun(refused) })
      t.notOk(isMounted(m2), 'and nothing is mounted there')
      const r2 = await run('mount', ['-t', 'bslfs', m.state, m2], { timeout: 60_000 })
      if (!t.equal(r2.code, 0, 'mount -t bslfs STATE SECOND', { run: describeRun(r2) })) return
      const r3 = await bslfs(['mount', m.state, m3, '-o', 'ro,noexec'])
      if (!t.equal(r3.code, 0, 'bslfs mount STATE THIRD -o ro,noexec', { run: describeRun(r3) })) return
      t.same(await treeDigest(m2), await treeDigest(m.mnt), 'the second mount point shows the same files')
      fs.writeFileSync(join(m2, 'two'), 'written at the second')
      t.equal(fs.readFileSync(p('two'), 'utf8'), 'written at the second', 'a write at one is read at the other')
      t.equal(fs.readFileSync(join(m3, 'one'), 'utf8'), 'seen everywhere', 'the third reads')
      t.equal(await errCode(() => fs.writeFileSync(join(m3, 'x'), '')), 'EROFS', 'the third is read-only')
      t.ok(flagsOf(m3).includes('ro') && flagsOf(m3).includes('noexec'), 'findmnt shows ro,noexec on the third', { options: mountEntry(m3)?.options })
      const u1 = await run('umount', [m.mnt], { timeout: 60_000 })
      t.equal(u1.code, 0, 'umount FIRST', { run: describeRun(u1) })
      t.notOk(isMounted(m.mnt), 'the first is gone')
      t.equal(fs.readFileSync(join(m2, 'one'), 'utf8'), 'seen everywhere', 'the second still works')
      fs.writeFileSync(join(m2, 'three'), 'after the first went')
      const st = await bslfs(['status', m.state, '--json'])
      t.ok([m2, m3].includes((JSON.parse(st.stdout || '{}') as { mounted?: { mountpoint?: string } }).mounted?.mountpoint ?? ''), 'status names a mount point still there', { run: describeRun(st) })
      const u2 = await bslfs(['unmount', m2])
      t.equal(u2.code, 0, 'bslfs unmount SECOND', { run: describeRun(u2) })
      t.notOk(isMounted(m2), 'the second is gone')
      t.equal(fs.readFileSync(join(m3, 'three'), 'utf8'), 'after the first went', 'the third still works')
      t.ok(pid !== undefined && pidAlive(pid), 'the one daemon still runs')
      const u3 = await bslfs(['unmount', m3])
      t.equal(u3.code, 0, 'bslfs unmount THIRD', { run: describeRun(u3) })
      t.ok(pid !== undefined && await waitFor(() => !pidAlive(pid), 15_000), 'the daemon stopped with the last mount point')
      await m.mount()
      t.equal(fs.readFileSync(p('three'), 'utf8'), 'after the first went', 'mounted again: what was written at the last mount point is there')
      fs.rmSync(p('one'))
      fs.rmSync(p('two'))
      fs.rmSync(p('three'))
      const after = await treeDigest(m.mnt)
      t.same(after, earlier, 'and every file from before')
      if (written.length) t.same(after.filter(e => written.some(w => w.path === e.path)), written, 'each as it was at the read-only remount')
    })
  })
}
