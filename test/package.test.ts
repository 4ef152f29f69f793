// The package as an administrator installs it: `npm pack` in this checkout, `npm install -g` of the
// tarball into a temporary prefix (dependencies from the npm registry; skipped when it cannot be
// reached), then the installed mount.bslfs run as mount(8) runs it, the mount used and unmounted,
// and the install removed again. The checkout's bin/ is never touched.
import t from 'tap'
import { createHash } from 'node:crypto'
import * as fs from 'node:fs'
import { join } from 'node:path'
import { childEnv, describeRun, isMounted, mountEntry, repoRoot, run, waitFor } from './helpers/mount'

const version = (JSON.parse(fs.readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { version: string }).version

function binDigest (): string {
  const h = createHash('sha256')
  for (const f of fs.readdirSync(join(repoRoot, 'bin')).sort()) {
    const p = join(repoRoot, 'bin', f)
    h.update(`${f}\0${fs.lstatSync(p).mode}\0`).update(fs.readFileSync(p))
  }
  return h.digest('hex')
}

t.test('npm pack, npm install -g into a prefix, mount through its mount.bslfs, uninstall', async t => {
  const ping = await run('npm', ['ping'], { timeout: 30_000 })
  if (ping.code !== 0) {
    t.skip(`the npm registry cannot be reached (npm ping: ${(ping.stderr || ping.stdout).trim().split('\n').pop()}); the install needs it for bslfs's dependencies`)
    return
  }
  const binBefore = binDigest()
  const tmp = fs.mkdtempSync('/tmp/bslfs-pkg-')
  fs.chmodSync(tmp, 0o755)
  t.teardown(async () => {
    const mnt = join(tmp, 'mnt')
    if (isMounted(mnt)) await run('fusermount', ['-uz', mnt])
    fs.rmSync(tmp, { recursive: true, force: true })
  })

  const pack = await run('npm', ['pack', '--pack-destination', tmp], { cwd: repoRoot, timeout: 300_000 })
  const tarball = join(tmp, `bslfs-${version}.tgz`)
  if (!t.ok(pack.code === 0 && fs.existsSync(tarball), 'npm pack makes the tarball', { run: describeRun(pack) })) return
  const listing = (await run('tar', ['-tzf', tarball])).stdout.split('\n')
  for (const f of ['dist/cli/main.js', 'dist/cli/mount-helper.js', 'bin/bslfs', 'bin/mount.bslfs', 'binding.gyp', 'native/fuse_channel.c',
    'scripts/build-native.js', 'scripts/postinstall.js', 'systemd/bslfs-serve@.service', 'README.md', 'native-notes/libfuse.md']) {
    t.ok(listing.includes(`package/${f}`), `the package ships ${f}`)
  }
  t.notOk(listing.some(f => /^package\/(src|test|build|node_modules)\//.test(f) || f === 'package/tsconfig.json'), 'it ships no sources, tests, build output or tsconfig')

  const prefix = join(tmp, 'prefix')
  const sbin = join(tmp, 'sbin')
  // BSLFS_SBIN_DIR: the postinstall's helper link goes here, not to this host's /sbin.
  const env = { ...childEnv, BSLFS_SBIN_DIR: sbin }
  const install = await run('npm', ['install', '-g', '--prefix', prefix, '--no-audit', '--no-fund', tarball], { env, timeout: 600_000 })
  if (!t.equal(install.code, 0, 'npm install -g of the tarball succeeds', { run: describeRun(install) })) return
  const pkg = join(prefix, 'lib', 'node_modules', 'bslfs')
  const bslfs = join(prefix, 'bin', 'bslfs')
  const helper = join(prefix, 'bin', 'mount.bslfs')
  t.ok(fs.existsSync(bslfs) && fs.existsSync(helper), 'bslfs and mount.bslfs are in PREFIX/bin')
  t.ok(fs.existsSync(join(pkg, 'build', 'Release', 'fuse_channel.node')), 'the install built the native addons (the package\'s own postinstall ran)')
  t.equal(fs.realpathSync(join(sbin, 'mount.bslfs')), fs.realpathSync(join(pkg, 'bin', 'mount.bslfs')), 'the postinstall linked SBIN/mount.bslfs into the installed package')

  const ver = await run(bslfs, ['--version'], { env })
  t.equal(ver.stdout.trim(), version, 'bslfs --version prints package.json\'s version')

  const state = join(tmp, 'state')
  const mnt = join(tmp, 'mnt')
  fs.mkdirSync(mnt)
  const init = await run(bslfs, ['init', state], { env })
  t.equal(init.code, 0, 'the installed bslfs makes a filesystem', { run: describeRun(init) })
  // As mount(8) runs a helper for an fstab line: STATE MOUNTPOINT -o OPTIONS, with fstab-only options.
  const m = await run(helper, [state, mnt, '-o', 'rw,_netdev,nofail,x-systemd.requires=network-online.target'], { env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' } })
  if (!t.equal(m.code, 0, 'the installed mount.bslfs mounts, accepting _netdev and x-systemd.*', { run: describeRun(m) })) return
  t.equal(mountEntry(mnt)?.fstype, 'fuse.bslfs', 'a bslfs mount is there')
  const pid = Number(fs.readFileSync(join(state, 'daemon.pid'), 'utf8'))
  t.match(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8'), pkg, 'the mount daemon runs from the installed package, not the checkout')
  const data = createHash('sha256').update('bslfs package').digest('hex').repeat(5000)
  fs.writeFileSync(join(mnt, 'file.txt'), data)
  fs.mkdirSync(join(mnt, 'dir'))
  fs.renameSync(join(mnt, 'file.txt'), join(mnt, 'dir', 'file.txt'))
  t.equal(fs.readFileSync(join(mnt, 'dir', 'file.txt'), 'utf8'), data, 'a file written through the mount reads back')
  const un = await run(bslfs, ['unmount', mnt], { env })
  t.equal(un.code, 0, 'the installed bslfs unmounts', { run: describeRun(un) })
  t.ok(await waitFor(() => !isMounted(mnt), 10_000), 'the mount is gone')

  // An upgrade as the README says it: unmount (done), npm install -g of the (new) tarball over the
  // old install, mount again: the data is all there.
  const re = await run('npm', ['install', '-g', '--prefix', prefix, '--no-audit', '--no-fund', tarball], { env, timeout: 600_000 })
  t.equal(re.code, 0, 'npm install -g over the installed package', { run: describeRun(re) })
  t.equal(fs.realpathSync(join(sbin, 'mount.bslfs')), fs.realpathSync(join(pkg, 'bin', 'mount.bslfs')), 'the helper link still points into it')
  const m2 = await run(helper, [state, mnt], { env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' } })
  t.equal(m2.code, 0, 'the reinstalled mount.bslfs mounts the same STATE', { run: describeRun(m2) })
  t.equal(fs.readFileSync(join(mnt, 'dir', 'file.txt'), 'utf8'), data, 'the file written before the upgrade reads back')
  t.equal((await run(bslfs, ['unmount', mnt], { env })).code, 0, 'and unmounts')
  t.ok(await waitFor(() => !isMounted(mnt), 10_000))

  const unhelper = await run(bslfs, ['uninstall-helper', '--sbin', sbin], { env })
  t.equal(unhelper.code, 0, 'bslfs uninstall-helper', { run: describeRun(unhelper) })
  const un2 = await run('npm', ['uninstall', '-g', '--prefix', prefix, 'bslfs'], { env, timeout: 120_000 })
  t.equal(un2.code, 0, 'npm uninstall -g bslfs', { run: describeRun(un2) })
  t.notOk(fs.existsSync(pkg), 'the package is gone')
  t.same(fs.readdirSync(join(prefix, 'bin')), [], 'no bslfs or mount.bslfs left in PREFIX/bin')
  t.same(fs.readdirSync(sbin), [], 'no mount.bslfs link left behind')
  t.equal(binDigest(), binBefore, "the checkout's bin/ is untouched")
})
