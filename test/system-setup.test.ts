// Setting bslfs up as a system service, through the CLI of this checkout: the /sbin/mount.bslfs
// link (into a temporary sbin), fstab lines (in a temporary fstab, then mounted by mount(8) from
// it), the systemd unit (verified, and its ExecStart run as the unprivileged user it names),
// doctor, and build-native's message for missing Debian packages.
import t from 'tap'
import { spawn, spawnSync } from 'node:child_process'
import { checksum } from '../src/checksum'
import * as fs from 'node:fs'
import { join } from 'node:path'
import { bslfs, childEnv, describeRun, freePort, isMounted, mountEntry, repoRoot, run, startBlockServer, waitFor } from './helpers/mount'

const tmpBase = (t: { teardown (fn: () => void): void }): string => {
  const dir = fs.mkdtempSync('/tmp/bslfs-setup-')
  fs.chmodSync(dir, 0o755)
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}
const checkoutHelper = fs.realpathSync(join(repoRoot, 'bin', 'mount.bslfs'))

t.test('install-helper and uninstall-helper: the mount(8) helper link', async t => {
  const dir = tmpBase(t)
  const sbin = join(dir, 'sbin')
  const link = join(sbin, 'mount.bslfs')
  const first = await bslfs(['install-helper', '--sbin', sbin])
  t.equal(first.code, 0, 'install-helper', { run: describeRun(first) })
  t.equal(fs.realpathSync(link), checkoutHelper, 'the link points at this bslfs\'s bin/mount.bslfs')
  const again = await bslfs(['install-helper'], { env: { ...childEnv, BSLFS_SBIN_DIR: sbin } })
  t.match(again.stdout, /\(already\)/, 'again (BSLFS_SBIN_DIR): nothing to do')

  // A link into another bslfs (an older checkout, a package uninstalled since) is replaced.
  const other = join(dir, 'old', 'bin')
  fs.mkdirSync(other, { recursive: true })
  fs.rmSync(link)
  fs.symlinkSync(join(other, 'mount.bslfs'), link)
  t.equal((await bslfs(['install-helper', '--sbin', sbin])).code, 0, 'a dangling link to another bslfs')
  t.equal(fs.realpathSync(link), checkoutHelper, 'is replaced')

  // Anything else is left alone.
  fs.rmSync(link)
  fs.writeFileSync(link, '#!/bin/sh\necho someone else\n', { mode: 0o755 })
  const foreign = await bslfs(['install-helper', '--sbin', sbin])
  t.not(foreign.code, 0, 'a file that is not a bslfs link is refused')
  t.match(foreign.stderr, /not a bslfs helper link; move it away/, 'saying what to do')
  t.equal(fs.readFileSync(link, 'utf8'), '#!/bin/sh\necho someone else\n', 'and is unchanged')
  const keep = await bslfs(['uninstall-helper', '--sbin', sbin])
  t.match(keep.stdout, /left alone/, 'uninstall-helper leaves it too')
  t.ok(fs.existsSync(link))

  fs.rmSync(link)
  await bslfs(['install-helper', '--sbin', sbin])
  const un = await bslfs(['uninstall-helper', '--sbin', sbin])
  t.equal(un.code, 0, 'uninstall-helper', { run: describeRun(un) })
  t.same(fs.readdirSync(sbin), [], 'removes the link, and leaves nothing')
})

t.test('fstab add and remove: one correct, idempotent line; mount(8) mounts from it', async t => {
  const dir = tmpBase(t)
  const state = join(dir, 'state with space')
  const mnt = join(dir, 'mnt')
  fs.mkdirSync(mnt)
  t.equal((await bslfs(['init', state])).code, 0, 'init')
  const fstab = join(dir, 'fstab')
  const original = '# /etc/fstab: static file system information.\nUUID=1234 / ext4 errors=remount-ro 0 1\n'
  fs.writeFileSync(fstab, original)
  const escaped = state.replace(/ /g, '\\040')

  const add = await bslfs(['fstab', 'add', state, mnt, '--fstab', fstab])
  t.equal(add.code, 0, 'fstab add', { run: describeRun(add) })
  t.equal(fs.readFileSync(fstab, 'utf8'), `${original}${escaped}  ${mnt}  bslfs  defaults,_netdev  0  0\n`, 'the line is added, blanks escaped, with _netdev')
  const before = fs.readFileSync(fstab, 'utf8')
  const again = await bslfs(['fstab', 'add', state, mnt], { env: { ...childEnv, BSLFS_FSTAB: fstab } })
  t.match(again.stdout, /unchanged/, 'again (BSLFS_FSTAB): unchanged')
  t.equal(fs.readFileSync(fstab, 'utf8'), before, 'byte for byte')

  const opts = await bslfs(['fstab', 'add', state, mnt, '-o', 'ro,x-systemd.automount,entry_timeout=5', '--fstab', fstab])
  t.match(opts.stdout, /updated/, 'other options update the line')
  t.equal(fs.readFileSync(fstab, 'utf8'), `${original}${escaped}  ${mnt}  bslfs  ro,x-systemd.automount,entry_timeout=5,_netdev  0  0\n`, 'in place: still one line')

  for (const [what, args, message] of [
    ['a bad mount option', [state, mnt, '-o', 'bogus'], /unknown or unsupported mount option "bogus"/],
    ['a directory that is no STATE', [dir, join(dir, 'm2')], /not a bslfs filesystem/],
    ['the STATE at a second mount point', [state, join(dir, 'm2')], /already mounts .* at .*mnt.*bslfs fstab remove/],
    ['another filesystem\'s mount point', [state, '/'], /already mounts UUID=1234 \(ext4\) at \//]
  ] as const) {
    const r = await bslfs(['fstab', 'add', ...args, '--fstab', fstab])
    t.not(r.code, 0, `${what} is refused`)
    t.match(r.stderr, message, `${what}: says why`, { run: describeRun(r) })
  }
  t.equal(fs.readFileSync(fstab, 'utf8').split('\n').length, 4, 'the refusals changed nothing')

  // mount(8) from that fstab runs /sbin/mount.bslfs with the line's options.
  const helper = '/sbin/mount.bslfs'
  const rw = await bslfs(['fstab', 'add', state, mnt, '-o', 'x-systemd.requires=network-online.target,nofail', '--fstab', fstab])
  t.equal(rw.code, 0, 'x-systemd.* and nofail are accepted')
  if (fs.existsSync(helper)) {
    const m = await run('mount', ['-T', fstab, mnt])
    t.equal(m.code, 0, 'mount -T FSTAB MOUNTPOINT mounts through the helper', { run: describeRun(m) })
    t.equal(mountEntry(mnt)?.fstype, 'fuse.bslfs', 'a bslfs mount')
    fs.writeFileSync(join(mnt, 'f'), 'from fstab')
    t.equal(fs.readFileSync(join(mnt, 'f'), 'utf8'), 'from fstab')
    t.equal((await run('umount', [mnt])).code, 0, 'umount')
    t.ok(await waitFor(() => !isMounted(mnt), 10_000), 'unmounted')
  } else {
    t.comment(`${helper} is not installed (bslfs install-helper): the mount from the fstab line is not tried`)
  }

  const rm = await bslfs(['fstab', 'remove', mnt, '--fstab', fstab])
  t.equal(rm.code, 0, 'fstab remove')
  t.equal(fs.readFileSync(fstab, 'utf8'), original, 'leaves the fstab as it was')
})

t.test('systemd: the unit installs, verifies, and its ExecStart serves as the user bslfs', async t => {
  const dir = tmpBase(t)
  const units = join(dir, 'units')
  const conf = join(dir, 'conf')
  const inst = await bslfs(['systemd', 'install', '--unit-dir', units, '--conf-dir', conf])
  t.equal(inst.code, 0, 'bslfs systemd install', { run: describeRun(inst) })
  const uid = Number(spawnSync('id', ['-u', 'bslfs'], { encoding: 'utf8' }).stdout)
  const gid = Number(spawnSync('id', ['-g', 'bslfs'], { encoding: 'utf8' }).stdout)
  t.ok(uid > 0, 'the user bslfs exists, not root')
  const unit = fs.readFileSync(join(units, 'bslfs-serve@.service'), 'utf8')
  const bin = fs.realpathSync(join(repoRoot, 'bin', 'bslfs'))
  t.match(unit, `\nExecStart=${bin} serve $BSLFS_SERVE_OPTIONS\n`, 'ExecStart runs this bslfs')
  t.match(unit, `\nEnvironmentFile=${conf}/%i.conf\n`, 'options come from CONF/NAME.conf')
  for (const line of ['User=bslfs', 'Restart=on-failure', 'KillSignal=SIGTERM', 'TimeoutStopSec=90s']) t.match(unit, `\n${line}\n`, line)

  const analyze = spawnSync('systemd-analyze', ['--version'])
  if (analyze.error) t.comment('systemd-analyze is not installed (Debian\'s systemd package): the unit is not verified')
  else {
    const vdir = join(dir, 'verify')
    fs.mkdirSync(vdir)
    fs.writeFileSync(join(vdir, 'bslfs-serve@t1.service'), unit)
    const v = await run('systemd-analyze', ['verify', join(vdir, 'bslfs-serve@t1.service')])
    t.equal(v.code, 0, 'systemd-analyze verify finds nothing wrong', { run: describeRun(v) })
    t.equal(v.stderr.trim(), '', 'not even a warning')
  }

  const port = await freePort()
  const token = join(dir, 'token')
  fs.writeFileSync(token, 'a-token-for-the-systemd-test-0123456789\n', { mode: 0o600 })
  const dev = join(dir, 'devices', 'd1')
  const sc = await bslfs(['systemd', 'serve', 't1', '--listen', `127.0.0.1:${port}`, '--device', `d1=${dev}`, '--token-file', token, '--conf-dir', conf])
  t.equal(sc.code, 0, 'bslfs systemd serve writes the instance', { run: describeRun(sc) })
  t.equal(fs.statSync(dev).uid, uid, 'the device directory belongs to bslfs')
  t.equal(fs.statSync(join(dir, 'devices')).uid, 0, 'its parent does not')
  t.equal(fs.statSync(token).uid, uid, 'the token file is readable by bslfs (mode 0600, its owner)')

  // ExecStart as systemd runs it: the unbraced $BSLFS_SERVE_OPTIONS split at blanks, as User=bslfs.
  const options = /^BSLFS_SERVE_OPTIONS="([^"]*)"$/m.exec(fs.readFileSync(join(conf, 't1.conf'), 'utf8'))![1].split(/\s+/)
  const exec = /^ExecStart=(.*)$/m.exec(unit)![1].split(' ').flatMap(w => w === '$BSLFS_SERVE_OPTIONS' ? options : [w])
  // env -i: systemd's clean environment (and none of tap's NODE_OPTIONS, which it adds to every spawn).
  const server = spawn('env', ['-i', 'PATH=/usr/local/bin:/usr/bin:/bin', 'setpriv', `--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', '--', ...exec],
    { cwd: '/', stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  server.stdout.on('data', c => { out += c })
  server.stderr.on('data', c => { out += c })
  const exited = new Promise<number | null>(resolve => server.on('exit', code => resolve(code)))
  t.teardown(() => { try { server.kill('SIGKILL') } catch {} })
  t.ok(await waitFor(() => out.includes('listening on'), 20_000), 'the server starts as bslfs', { out })
  t.equal(Number(/^Uid:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${server.pid}/status`, 'utf8'))?.[1]), uid, 'its process runs as bslfs')
  const body = Buffer.from('hello from the systemd test')
  const put = await fetch(`http://127.0.0.1:${port}/v1/devices/d1/objects/00000000000000a1`, {
    method: 'PUT',
    body,
    headers: { Authorization: `Bearer ${fs.readFileSync(token, 'utf8').trim()}`, 'X-Bslfs-Checksum': String(checksum(body)) }
  })
  t.equal(put.status, 201, 'it stores an object in its device')
  t.ok(fs.readdirSync(dev).length > 0, 'in the device directory')
  server.kill('SIGTERM')
  t.equal(await exited, 0, 'SIGTERM stops it cleanly (exit 0)')
  const lines = out.split('\n').filter(l => l && !l.startsWith('bslfs serve: listening'))
  t.ok(lines.length >= 2, 'it logged its events', { out })
  for (const l of lines) t.match(l, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARN|ERROR|DEBUG) bslfs:server /, 'one line per event: time, level, namespace')

  const un = await bslfs(['systemd', 'uninstall', '--unit-dir', units])
  t.equal(un.code, 0, 'systemd uninstall')
  t.same(fs.readdirSync(units), [], 'removes the unit')
})

t.test('doctor: all ok on this host; a STATE whose server is down is named, with the fix', async t => {
  const dir = tmpBase(t)
  const sbin = join(dir, 'sbin')
  const env = { ...childEnv, BSLFS_SBIN_DIR: sbin }
  const missing = await bslfs(['doctor'], { env })
  t.equal(missing.code, 1, 'without the helper: exit 1')
  t.match(missing.stdout, /PROBLEM\s+mount\.bslfs helper .*missing[^\n]*\n\s+fix: `bslfs install-helper`/, 'names it, with the fix')

  await bslfs(['install-helper', '--sbin', sbin])
  const ok = await bslfs(['doctor'], { env })
  t.equal(ok.code, 0, 'a healthy host: exit 0', { run: describeRun(ok) })
  t.match(ok.stdout, /bslfs doctor: all ok\n$/)
  const json = JSON.parse((await bslfs(['doctor', '--json'], { env })).stdout) as { ok: boolean, checks: Array<{ name: string, ok: boolean, detail: string }> }
  t.equal(json.ok, true, '--json: ok')
  t.same(json.checks.map(c => c.name).slice(0, 9), ['bslfs', 'node', '/dev/fuse', 'fusermount', 'libfuse2', 'FUSE channel addon', 'object I/O addon', 'classic-level sync calls', 'kernel FUSE protocol'])
  t.match(json.checks.find(c => c.name === 'kernel FUSE protocol')!.detail, /^7\.\d+ \(from the kernel's INIT request/, 'the kernel\'s FUSE version, from its INIT')
  t.equal(fs.readdirSync('/tmp').filter(f => f.startsWith('bslfs-probe-')).length, 0, 'the probe mount left nothing behind')

  const state = join(dir, 'state')
  t.equal((await bslfs(['init', state])).code, 0)
  const srv = await startBlockServer(join(dir, 'server'))
  t.teardown(() => srv.stop('SIGKILL').catch(() => {}))
  t.equal((await bslfs(['server', 'add', state, 's1', srv.url, '--token-file', srv.tokenFile])).code, 0, 'server add')
  t.equal((await bslfs(['volume', 'add', state, '2', 's1:d1'])).code, 0, 'volume add')
  const up = await bslfs(['doctor', state], { env })
  t.equal(up.code, 0, 'with the server up: all ok', { run: describeRun(up) })
  t.match(up.stdout, /ok\s+server s1\s+http:\/\/127\.0\.0\.1:\d+ answers/)
  const url = await bslfs(['doctor', srv.url, '--token-file', srv.tokenFile], { env })
  t.equal(url.code, 0, 'doctor URL: the server answers, token accepted', { run: describeRun(url) })

  await srv.stop()
  const down = await bslfs(['doctor', state], { env })
  t.equal(down.code, 1, 'with the server down: exit 1')
  t.match(down.stdout, /PROBLEM\s+server s1\s+http:\/\/127\.0\.0\.1:\d+ does not answer[^\n]*\n\s+fix: start the block server on its host \(`systemctl start bslfs-serve@INSTANCE`, or `bslfs serve --listen 127\.0\.0\.1:\d+/, 'the server is named, with the fix', { run: describeRun(down) })
  t.match(down.stdout, /PROBLEM\s+device s1:d1/, 'and its device')
  const downUrl = await bslfs(['doctor', srv.url, '--json'], { env })
  t.equal(downUrl.code, 1, 'doctor URL of a stopped server: exit 1')
  t.match((JSON.parse(downUrl.stdout) as { checks: Array<{ fix?: string }> }).checks.pop()!.fix, /systemctl start bslfs-serve@INSTANCE/)
})

t.test('build-native names the Debian package of each missing tool', async t => {
  const dir = tmpBase(t)
  // A PATH with node, sh and python3 but neither make nor the C++ compiler.
  for (const tool of ['env', 'sh', 'python3', 'cc']) {
    const found = spawnSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).stdout.trim()
    if (found) fs.symlinkSync(found, join(dir, tool))
  }
  const r = await run(process.execPath, [join(repoRoot, 'scripts', 'build-native.js')], { env: { PATH: dir } })
  t.equal(r.code, 1, 'it stops before building anything')
  t.match(r.stderr, /missing `make` \(Debian package make\), `g\+\+` \(Debian package g\+\+\); install: apt-get install -y make g\+\+ /, 'naming make and g++', { run: describeRun(r) })
})
