// The CLI with a filesystem named by a postgres:// URL: set-up end to end (init,
// server, volume, mount), where the password may and may not appear, local
// devices refused, and bad input (one line each, exit non-zero, nothing changed).
import t from 'tap'
import * as fs from 'node:fs'
import { join } from 'node:path'
import { runtimePaths, parseFsName } from '../src/daemon/location'
import { PgServer, pgUnavailable, startPostgres } from './helpers/postgres'
import {
  bslfs, describeRun, freePort, isMounted, mountEntry, pidAlive, run, sha256, startBlockServer, waitFor, type RunResult
} from './helpers/mount'

type Test = tap.Test

const skip = pgUnavailable()
const PASSWORD = 'pw-' + Math.random().toString(36).slice(2) + 'Zq9'

/** Non-zero exit, one line on stderr+stdout, no stack trace, and never the password. */
function refused (t: Test, r: RunResult, what: string, says?: RegExp): void {
  t.ok(r.code !== 0 && r.code !== null && !r.timedOut, `${what}: exits non-zero (got ${r.code})`, { run: describeRun(r) })
  const lines = (r.stderr + '\n' + r.stdout).split('\n').map(l => l.trim()).filter(Boolean)
  t.equal(lines.length, 1, `${what}: one line`, { run: describeRun(r) })
  if (says) t.match(lines[0] ?? '', says, `${what}: says why`)
  t.notOk((r.stderr + r.stdout).includes(PASSWORD), `${what}: the password is not in the output`)
}

interface Fixture { pg: PgServer, base: string, passwordFile: string, url: (db: string) => string, tables: (db: string) => Promise<string[]> }

async function fixture (t: Test): Promise<Fixture> {
  const pg = await startPostgres(t, { settings: { fsync: 'off' } })
  await pg.sql(`CREATE ROLE bslfs LOGIN CREATEDB PASSWORD '${PASSWORD}'`)
  const base = fs.mkdtempSync('/tmp/bslfs-pgcli-')
  t.teardown(() => fs.rmSync(base, { recursive: true, force: true }))
  const passwordFile = join(base, 'password')
  fs.writeFileSync(passwordFile, PASSWORD + '\n', { mode: 0o600 })
  return {
    pg,
    base,
    passwordFile,
    url: db => pg.url({ user: 'bslfs', database: db }),
    tables: async db => (await pg.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", [], db)).map(r => r.tablename as string)
  }
}

t.test('a shared filesystem set up end to end, and where the password never shows', { skip }, async t => {
  const f = await fixture(t)
  await f.pg.sql('CREATE DATABASE fs1 OWNER bslfs')
  const url = f.url('fs1')
  const pw = ['--password-file', f.passwordFile]
  const init = await bslfs(['init', url, ...pw])
  t.equal(init.code, 0, 'bslfs init URL --password-file', { run: describeRun(init) })
  t.match(init.stdout, /no volume yet/, 'init says the filesystem has no volume yet')
  t.same(await f.tables('fs1'), ['bslfs_schema', 'kv'], 'the directory is in the database')

  // Other commands find the password through PGPASSFILE, as a user's ~/.pgpass.
  const pgpass = join(f.base, 'pgpass')
  fs.writeFileSync(pgpass, `${f.pg.host}:${f.pg.port}:fs1:bslfs:${PASSWORD}\n`, { mode: 0o600 })
  const env = { ...process.env, PGPASSFILE: pgpass }
  const cli = async (args: string[]): Promise<RunResult> => await bslfs(args, { env })
  const vols = await cli(['volume', 'list', url, '--json'])
  t.same(JSON.parse(vols.stdout), [], 'no volume: a local device would belong to one host', { run: describeRun(vols) })
  refused(t, await cli(['volume', 'add', url, '1', 'local:d0']), 'volume add on a local device', /local device .*one host/)
  refused(t, await cli(['device', 'add', url, 'd1', join(f.base, 'd1')]), 'device add', /local device .*one host/)
  t.notOk(fs.existsSync(join(f.base, 'd1')), 'no device directory was made')

  const server = await startBlockServer(join(f.base, 'server'))
  t.teardown(() => server.stop())
  for (const args of [['server', 'add', url, 's1', server.url, '--token-file', server.tokenFile], ['volume', 'add', url, '1', 's1:d1'], ['volume', 'default', url, '1']]) {
    const r = await cli(args)
    t.equal(r.code, 0, `bslfs ${args.slice(0, 2).join(' ')}`, { run: describeRun(r) })
  }

  const mnt = join(f.base, 'mnt')
  fs.mkdirSync(mnt)
  // mount(8)'s helper: the fstab form, the password file as a mount option.
  const mounted = await run(process.execPath, [join(__dirname, '..', 'bin', 'mount.bslfs'), url, mnt, '-o', `_netdev,password_file=${f.passwordFile}`], { env: { PATH: process.env.PATH } })
  t.equal(mounted.code, 0, 'mount.bslfs URL MNT -o _netdev,password_file=FILE (no PGPASSFILE)', { run: describeRun(mounted) })
  const paths = runtimePaths(parseFsName(url), mnt)
  t.teardown(async () => {
    if (isMounted(mnt)) await bslfs(['unmount', mnt])
    fs.rmSync(paths.dir, { recursive: true, force: true })
  })
  t.ok(await waitFor(() => isMounted(mnt)), 'mounted')
  t.equal(mountEntry(mnt)?.source, url, '/proc/mounts shows the URL (which holds no password) as the source')
  const data = Buffer.alloc(3 * 1024 * 1024 + 17, 7)
  fs.writeFileSync(join(mnt, 'f'), data)

  const pid = Number(fs.readFileSync(paths.pid, 'utf8'))
  t.ok(pidAlive(pid), `the daemon's pid is in ${paths.pid}`)
  t.notOk(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(PASSWORD), "the daemon's command line (ps) holds no password")
  t.notOk(fs.readFileSync(`/proc/${pid}/environ`, 'utf8').includes(PASSWORD), "nor its environment")

  const st = await cli(['status', url, '--json'])
  t.equal(st.code, 0, 'status URL while mounted', { run: describeRun(st) })
  const status = JSON.parse(st.stdout)
  t.equal(status.state, url, 'status names the filesystem by its URL')
  t.equal(status.mounted?.mountpoint, mnt, 'and its mount on this host')
  t.notOk(st.stdout.includes(PASSWORD), 'status holds no password')
  for (const args of [['blocks', url], ['bsl', url, join(mnt, 'f')], ['fsck', url], ['scrub', url], ['heal', url], ['server', 'list', url]]) {
    const r = await cli(args)
    t.equal(r.code, 0, `bslfs ${args[0]} URL while mounted`, { run: describeRun(r) })
  }
  const un = await bslfs(['unmount', mnt])
  t.equal(un.code, 0, 'bslfs unmount', { run: describeRun(un) })
  t.ok(await waitFor(() => !pidAlive(pid), 15_000), 'the daemon exits')
  t.notOk(fs.readFileSync(paths.log, 'utf8').includes(PASSWORD), 'the daemon log holds no password')

  // Unmounted: the CLI opens the directory itself.
  const fsck = await cli(['fsck', url, '--json'])
  t.equal(fsck.code, 0, 'fsck URL unmounted is clean', { run: describeRun(fsck) })
  const again = await bslfs(['mount', url, mnt, '--password-file', f.passwordFile])
  t.equal(again.code, 0, 'bslfs mount URL MNT --password-file', { run: describeRun(again) })
  t.equal(sha256(fs.readFileSync(join(mnt, 'f'))), sha256(data), 'the file reads back after a remount')
})

t.test('bad input: one line each, exit non-zero, nothing changed', { skip }, async t => {
  const f = await fixture(t)
  await f.pg.sql('CREATE DATABASE fs2 OWNER bslfs')
  const state = join(f.base, 'state')
  const init = await bslfs(['init', state])
  t.equal(init.code, 0, 'a LevelDB STATE for the mix-ups', { run: describeRun(init) })
  const stateFiles = (): string[] => fs.readdirSync(state).sort()
  const before = stateFiles()
  const mnt = join(f.base, 'mnt')
  fs.mkdirSync(mnt)
  const pw = ['--password-file', f.passwordFile]

  const dead = `postgres://bslfs@127.0.0.1:${await freePort()}/fs2`
  refused(t, await bslfs(['init', dead, ...pw]), 'init of an unreachable URL', /127\.0\.0\.1:\d+: connection refused/)
  refused(t, await bslfs(['status', dead, ...pw]), 'status of an unreachable URL', /connection refused/)
  refused(t, await bslfs(['mount', dead, mnt, ...pw]), 'mount of an unreachable URL', /connection refused/)
  t.notOk(isMounted(mnt), 'nothing mounted')
  t.notOk(fs.existsSync(runtimePaths(parseFsName(dead), mnt).dir), 'no runtime dir left behind')

  const wrong = join(f.base, 'wrong')
  fs.writeFileSync(wrong, 'not-the-password\n', { mode: 0o600 })
  refused(t, await bslfs(['init', f.url('fs2'), '--password-file', wrong]), 'a wrong password', /authentication failed for user "bslfs"/)
  refused(t, await bslfs(['status', f.url('fs2')], { env: { ...process.env, PGPASSFILE: '/nonexistent' } }), 'no password at all', /authentication failed/)
  const open = join(f.base, 'open')
  fs.writeFileSync(open, PASSWORD + '\n', { mode: 0o644 })
  refused(t, await bslfs(['init', f.url('fs2'), '--password-file', open]), 'a password file others can read', /readable by others/)
  t.same(await f.tables('fs2'), [], 'the database is still empty')

  refused(t, await bslfs(['init', f.url('nodb'), ...pw]), 'a missing database', /database "nodb" does not exist/)
  refused(t, await bslfs(['status', f.url('fs2'), ...pw]), 'a database that holds no filesystem', /holds no bslfs filesystem.*bslfs init/)
  await f.pg.sql('CREATE TABLE customers (id int)', [], 'fs2')
  refused(t, await bslfs(['init', f.url('fs2'), ...pw]), 'init of a database holding other tables', /holds other tables \(public\.customers\)/)
  t.same(await f.tables('fs2'), ['customers'], 'nothing was added to it')

  for (const bad of ['postgres://', 'postgres://bslfs@127.0.0.1:5432/', 'postgres://bslfs@127.0.0.1:99999/db', 'postgres://bslfs@127.0.0.1/a/b', 'mysql://bslfs@127.0.0.1/db']) {
    refused(t, await bslfs(['status', bad]), `a malformed URL ${bad}`, /malformed|neither a STATE directory nor/)
  }
  const withPassword = `postgres://bslfs:${PASSWORD}@127.0.0.1:${f.pg.port}/fs2`
  refused(t, await bslfs(['init', withPassword]), 'a URL with a password', /carries a password.*pgpass.*--password-file/)
  refused(t, await bslfs(['mount', withPassword, mnt]), 'mount of a URL with a password', /carries a password/)
  t.same(await f.tables('fs2'), ['customers'], 'nothing was made from it')

  // A STATE where a URL is needed, and a URL where a STATE's local device is.
  refused(t, await bslfs(['status', state, ...pw]), '--password-file with a STATE', /--password-file is for .*postgres:\/\/ URL/)
  refused(t, await bslfs(['mount', state, mnt, ...pw]), 'mount of a STATE with --password-file', /--password-file is for/)
  refused(t, await bslfs(['mount', state, mnt, '-o', `password_file=${f.passwordFile}`]), 'mount of a STATE with -o password_file=', /--password-file is for/)
  t.notOk(isMounted(mnt), 'nothing mounted')
  const fresh = join(f.base, 'fresh')
  refused(t, await bslfs(['init', fresh, ...pw]), 'init of a STATE with --password-file', /--password-file is for/)
  t.notOk(fs.existsSync(fresh), 'no STATE was made')
  t.same(stateFiles(), before, 'the STATE is unchanged')
})
