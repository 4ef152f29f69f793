/**
 * Helpers for the end-to-end mount tests (test/mount-*.test.ts).
 *
 * Every test drives a real mount through the kernel. Which filesystem sits
 * under the mount point is chosen by BSLFS_TEST_TARGET:
 *
 *   bslfs  (default)  `bslfs init` + `bslfs mount` of a fresh STATE
 *   native            a plain directory on the local disk (ext4 here); the
 *                     reference behaviour every assertion must hold for
 *   bindfs            `bindfs` (a FUSE passthrough) over a plain directory;
 *                     shows what FUSE itself does and does not give for free
 *
 * Tests that only make sense for bslfs check `target === 'bslfs'` and are
 * simply not registered otherwise.
 */
import { spawn, spawnSync, type SpawnOptions } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream, existsSync, readFileSync } from 'node:fs'
import * as fsp from 'node:fs/promises'
import { join, resolve } from 'node:path'
import tap from 'tap'
import { parseFsName, runtimePaths } from '../../src/daemon/location'
import { PgServer } from './postgres'

export type Target = 'bslfs' | 'native' | 'bindfs'

function readTarget (): Target {
  const v = (process.env.BSLFS_TEST_TARGET ?? 'bslfs').trim() || 'bslfs'
  if (v !== 'bslfs' && v !== 'native' && v !== 'bindfs') {
    throw new Error(`BSLFS_TEST_TARGET must be bslfs, native or bindfs, not ${JSON.stringify(v)}`)
  }
  return v
}

export const target: Target = readTarget()

/**
 * Where a bslfs test filesystem keeps its directory: 'leveldb' (a STATE directory, the default) or
 * 'postgres' (BSLFS_TEST_DIRECTORY=postgres: a fresh database per mount on a throw-away PostgreSQL
 * this test process starts once; the filesystem is named by its URL, and m.state is that URL).
 */
export const directoryKind: 'leveldb' | 'postgres' = process.env.BSLFS_TEST_DIRECTORY === 'postgres' ? 'postgres' : 'leveldb'

/**
 * Where a bslfs test filesystem keeps its data: 'local' (the device bslfs init makes) or 'remote'
 * (a block server started by the test as a child process on loopback; BSLFS_TEST_VOLUME=remote).
 * A filesystem on PostgreSQL is shared, and a local device would belong to one host: always remote.
 */
export const volumeKind: 'local' | 'remote' = process.env.BSLFS_TEST_VOLUME === 'remote' || directoryKind === 'postgres' ? 'remote' : 'local'

export interface BlockServer { pid: number, port: number, url: string, tokenFile: string, device: string, stop (signal?: NodeJS.Signals): Promise<void>, start (): Promise<void> }

/** A free TCP port on 127.0.0.1 (bound, read, released). */
export async function freePort (): Promise<number> {
  const net = await import('node:net')
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port
      srv.close(() => resolve(port))
    })
  })
}

/**
 * Start `bslfs serve` as a child process on 127.0.0.1 serving device d1 in `dir`, with a 0600
 * token file; stop() kills it by pid (SIGTERM by default) and start() starts it again on the same port.
 */
export async function startBlockServer (dir: string, opts: { port?: number } = {}): Promise<BlockServer> {
  await fsp.mkdir(dir, { recursive: true })
  const tokenFile = join(dir, 'token')
  if (!existsSync(tokenFile)) await fsp.writeFile(tokenFile, randomBytes(24).toString('hex') + '\n', { mode: 0o600 })
  const port = opts.port ?? await freePort()
  const device = join(dir, 'd1')
  let child: ReturnType<typeof spawn> | undefined
  const server: BlockServer = {
    pid: 0,
    port,
    url: `http://127.0.0.1:${port}`,
    tokenFile,
    device,
    async start () {
      child = spawn(process.execPath, [join(repoRoot, 'dist', 'server', 'main.js'), '--listen', `127.0.0.1:${port}`,
        '--device', `d1=${device}`, '--token-file', tokenFile, '--name', 's1'], { stdio: ['ignore', 'pipe', 'pipe'], env: childEnv })
      server.pid = child.pid ?? 0
      let out = ''
      child.stdout!.on('data', (c) => { out += c })
      child.stderr!.on('data', (c) => { out += c })
      const up = await waitFor(() => out.includes('listening on'), 15_000)
      if (!up) throw new Error(`block server did not start:\n${out}`)
    },
    async stop (signal: NodeJS.Signals = 'SIGTERM') {
      if (!child || child.exitCode !== null || child.signalCode !== null) return
      const exited = new Promise<void>((resolve) => child!.once('exit', () => resolve()))
      child.kill(signal)
      await exited
    }
  }
  await server.start()
  return server
}
export const isBslfs = target === 'bslfs'

/** The repository root (test/helpers/../..). */
export const repoRoot = resolve(__dirname, '..', '..')
/** The CLI under test (a Node script); BSLFS_BIN overrides bin/bslfs. */
export const bslfsBin = process.env.BSLFS_BIN ?? join(repoRoot, 'bin', 'bslfs')

/** PATH for processes run as another user. */
export const SYSTEM_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

/** The system python3 (not a pyenv shim under /root, which other users cannot reach). */
export const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3'

/**
 * The environment without tap's own variables: NODE_OPTIONS carries tap's
 * loader hooks (--import=...processinfo), which must not leak into the bslfs
 * CLI, its daemon, or mount.bslfs (an extension-less script the ESM hook rejects).
 */
function cleanEnv (): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (k === 'NODE_OPTIONS' || k === 'TAP' || k.startsWith('TAP_') || k.startsWith('_TAPJS_') || k.startsWith('TS_NODE_')) continue
    env[k] = v
  }
  return env
}

const TAP_SPAWN_VARS = [...new Set(['NODE_OPTIONS', '_TAPJS_PROCESSINFO_EXTERNAL_ID_', '_TAPJS_PROCESSINFO_EXCLUDE_',
  ...Object.keys(process.env).filter((k) => k.startsWith('_TAPJS_'))])]

/** Environment for child processes: no tap variables, stable locale and time zone so outputs can be compared. */
export const childEnv: NodeJS.ProcessEnv = {
  ...cleanEnv(),
  TZ: 'UTC',
  LC_ALL: 'C',
  LANG: 'C',
  GIT_CONFIG_NOSYSTEM: '1',
  GIT_AUTHOR_NAME: 'bslfs test',
  GIT_AUTHOR_EMAIL: 'test@bslfs.invalid',
  GIT_COMMITTER_NAME: 'bslfs test',
  GIT_COMMITTER_EMAIL: 'test@bslfs.invalid'
}

// ---------------------------------------------------------------------------
// Running programs

export interface RunResult {
  /** Exit code, or null when killed by a signal. */
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  /** True when the run was killed because it exceeded its timeout. */
  timedOut: boolean
  /** The command line, for messages. */
  cmd: string
}

export interface RunOptions {
  cwd?: string
  env?: NodeJS.ProcessEnv
  /** Written to stdin, then stdin is closed. */
  input?: string | Buffer
  /** Milliseconds before the process group gets SIGKILL (default 120 s). */
  timeout?: number
  /** Run as this uid/gid (and no supplementary groups unless `groups`). */
  uid?: number
  gid?: number
  groups?: number[]
}

function quote (s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`
}

/** A readable multi-line description of a finished run, for assertion messages. */
export function describeRun (r: RunResult): string {
  const clip = (s: string) => (s.length > 4000 ? s.slice(0, 2000) + '\n…[clipped]…\n' + s.slice(-2000) : s)
  return [
    `$ ${r.cmd}`,
    `exit ${r.code ?? 'none'}${r.signal ? ` (signal ${r.signal})` : ''}${r.timedOut ? ' (TIMED OUT)' : ''}`,
    r.stdout ? `--- stdout ---\n${clip(r.stdout.trimEnd())}` : '--- stdout: (empty)',
    r.stderr ? `--- stderr ---\n${clip(r.stderr.trimEnd())}` : '--- stderr: (empty)'
  ].join('\n')
}

/**
 * Run a program and collect its output; never throws for a non-zero exit.
 *
 * Resolves on the process's *exit*, not on its pipes closing: `bslfs mount`
 * leaves a daemon behind, and if that daemon kept our stdout/stderr pipes
 * open, waiting for them would hang. After exit we wait at most 1 s more for
 * the pipes to drain.
 */
export function run (cmd: string, args: string[] = [], opts: RunOptions = {}): Promise<RunResult> {
  let file = cmd
  let argv = args
  let env = opts.env ?? childEnv
  let cwd = opts.cwd
  if (opts.uid !== undefined) {
    // root's PATH may lead through /root (pyenv shims, cargo): unreachable for other users
    env = { ...env, PATH: SYSTEM_PATH, HOME: '/' }
    cwd = cwd ?? '/'
    const gid = opts.gid ?? opts.uid
    const groups = opts.groups && opts.groups.length > 0 ? [`--groups=${opts.groups.join(',')}`] : ['--clear-groups']
    file = 'setpriv'
    argv = [`--reuid=${opts.uid}`, `--regid=${gid}`, ...groups, '--', cmd, ...args]
  }
  const cmdline = [file, ...argv].map(quote).join(' ')
  // tap's processinfo plugin re-adds NODE_OPTIONS (its --import hook) and
  // _TAPJS_PROCESSINFO_* to the env of every spawn; `env -u` strips them again
  // in the child so programs under test (and the bslfs daemon) run clean.
  argv = [...TAP_SPAWN_VARS.flatMap((v) => ['-u', v]), '--', file, ...argv]
  file = 'env'
  const timeout = opts.timeout ?? 120_000
  return new Promise((resolvePromise) => {
    const so: SpawnOptions = {
      cwd,
      env,
      stdio: ['pipe', 'pipe', 'pipe'],
      detached: true // own process group, so a timeout can kill helpers too
    }
    const child = spawn(file, argv, so)
    const out: Buffer[] = []
    const err: Buffer[] = []
    child.stdout!.on('data', (b: Buffer) => out.push(b))
    child.stderr!.on('data', (b: Buffer) => err.push(b))
    child.stdin!.on('error', () => {})
    if (opts.input !== undefined) child.stdin!.end(opts.input)
    else child.stdin!.end()
    let timedOut = false
    let settled = false
    const timer = setTimeout(() => {
      timedOut = true
      try { process.kill(-child.pid!, 'SIGKILL') } catch { try { child.kill('SIGKILL') } catch {} }
    }, timeout)
    const finish = (code: number | null, signal: NodeJS.Signals | null, spawnError?: Error) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      let closed = false
      const done = () => {
        if (closed) return
        closed = true
        child.stdout!.destroy()
        child.stderr!.destroy()
        resolvePromise({
          code,
          signal,
          stdout: Buffer.concat(out).toString('utf8'),
          stderr: Buffer.concat(err).toString('utf8') + (spawnError ? `\n[spawn error] ${spawnError.message}` : ''),
          timedOut,
          cmd: cmdline + (cwd ? `   (in ${cwd})` : '')
        })
      }
      if (spawnError) return done()
      const grace = setTimeout(done, 1000)
      let ends = 0
      const onEnd = () => { if (++ends === 2) { clearTimeout(grace); done() } }
      if (child.stdout!.readableEnded) onEnd(); else child.stdout!.once('end', onEnd)
      if (child.stderr!.readableEnded) onEnd(); else child.stderr!.once('end', onEnd)
    }
    child.once('exit', (code, signal) => finish(code, signal))
    child.once('error', (e) => finish(null, null, e))
  })
}

/** Run a program; throw an Error describing the run unless it exits 0. */
export async function mustRun (cmd: string, args: string[] = [], opts: RunOptions = {}): Promise<RunResult> {
  const r = await run(cmd, args, opts)
  if (r.code !== 0) throw new Error(`command failed:\n${describeRun(r)}`)
  return r
}

/** `bash -c script`; never throws. */
export function sh (script: string, opts: RunOptions = {}): Promise<RunResult> {
  return run('bash', ['-c', script], opts)
}

/** `bash -c script`; throws unless it exits 0. */
export function mustSh (script: string, opts: RunOptions = {}): Promise<RunResult> {
  return mustRun('bash', ['-c', script], opts)
}

/** Run `cmd args` under another uid/gid (via setpriv, supplementary groups cleared). */
export function runAs (uid: number, gid: number, cmd: string, args: string[] = [], opts: RunOptions = {}): Promise<RunResult> {
  return run(cmd, args, { ...opts, uid, gid })
}

const PY_PRELUDE = `
import os, sys, errno, stat
def attempt(label, f, *a, **k):
    try:
        f(*a, **k)
        print(label + " OK")
    except OSError as e:
        print(label + " " + (errno.errorcode.get(e.errno) or str(e.errno)))
`

/**
 * Run a python3 snippet (with `attempt(label, fn, *args)` predefined, which
 * prints "label OK" or "label ERRNO"; sys.argv[1:] = args) as root, or as
 * uid/gid when opts.uid/opts.gid are given.
 * Returns a map label → "OK" / errno name, plus the raw run.
 */
export async function py (code: string, args: string[] = [], opts: RunOptions = {}): Promise<{ results: Record<string, string>, run: RunResult }> {
  const r = await run(PYTHON, ['-c', PY_PRELUDE + code, ...args], opts)
  const results: Record<string, string> = {}
  for (const line of r.stdout.split('\n')) {
    const m = /^(\S+) (\S+)$/.exec(line.trim())
    if (m) results[m[1]!] = m[2]!
  }
  return { results, run: r }
}

// ---------------------------------------------------------------------------
// Content digests

export async function sha256File (path: string): Promise<string> {
  const h = createHash('sha256')
  await new Promise<void>((res, rej) => {
    const s = createReadStream(path)
    s.on('data', (b) => h.update(b))
    s.on('end', () => res())
    s.on('error', rej)
  })
  return h.digest('hex')
}

export function sha256 (data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex')
}

export interface DigestEntry {
  path: string
  type: 'file' | 'dir' | 'symlink' | 'fifo' | 'socket' | 'chardev' | 'blockdev' | 'other'
  mode: string
  size: number
  sha256?: string
  target?: string
  uid?: number
  gid?: number
  mtimeNs?: string
}

export interface DigestOptions {
  /** Only these top-level names (default: all). */
  only?: string[]
  /** Also record uid/gid (default true). */
  owner?: boolean
  /** Also record mtime in ns (default false). Directory mtimes are left out. */
  mtime?: boolean
}

function typeOf (st: import('node:fs').BigIntStats): DigestEntry['type'] {
  if (st.isFile()) return 'file'
  if (st.isDirectory()) return 'dir'
  if (st.isSymbolicLink()) return 'symlink'
  if (st.isFIFO()) return 'fifo'
  if (st.isSocket()) return 'socket'
  if (st.isCharacterDevice()) return 'chardev'
  if (st.isBlockDevice()) return 'blockdev'
  return 'other'
}

/**
 * Sorted list of every entry under `root`: relative path, type, permission
 * bits (incl. setuid/setgid/sticky), size (0 for directories, whose size is
 * filesystem-specific), sha256 of file content, symlink target, optionally
 * owner and mtime. Two trees are byte-for-byte equal iff their digests are.
 */
export async function treeDigest (root: string, opts: DigestOptions = {}): Promise<DigestEntry[]> {
  const out: DigestEntry[] = []
  const owner = opts.owner ?? true
  const walk = async (rel: string): Promise<void> => {
    const abs = rel ? join(root, rel) : root
    const st = await fsp.lstat(abs, { bigint: true })
    const type = typeOf(st)
    const e: DigestEntry = {
      path: rel || '.',
      type,
      mode: (Number(st.mode) & 0o7777).toString(8).padStart(4, '0'),
      size: type === 'dir' ? 0 : Number(st.size)
    }
    if (owner) { e.uid = Number(st.uid); e.gid = Number(st.gid) }
    if (opts.mtime && type !== 'dir') e.mtimeNs = st.mtimeNs.toString()
    if (type === 'file') e.sha256 = await sha256File(abs)
    if (type === 'symlink') e.target = await fsp.readlink(abs)
    if (rel) out.push(e)
    if (type === 'dir') {
      let names = await fsp.readdir(abs)
      if (!rel && opts.only) names = names.filter((n) => opts.only!.includes(n))
      names.sort()
      for (const n of names) await walk(rel ? join(rel, n) : n)
    }
  }
  await walk('')
  out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
  return out
}

/** The first few differences between two digests, readable, for failure messages. */
export function digestDiff (a: DigestEntry[], b: DigestEntry[], max = 20): string[] {
  const ma = new Map(a.map((e) => [e.path, JSON.stringify(e)]))
  const mb = new Map(b.map((e) => [e.path, JSON.stringify(e)]))
  const diffs: string[] = []
  for (const [p, ea] of ma) {
    const eb = mb.get(p)
    if (eb === undefined) diffs.push(`only in first:  ${ea}`)
    else if (eb !== ea) diffs.push(`differs:\n   ${ea}\n   ${eb}`)
    if (diffs.length >= max) return diffs
  }
  for (const [p, eb] of mb) {
    if (!ma.has(p)) diffs.push(`only in second: ${eb}`)
    if (diffs.length >= max) return diffs
  }
  return diffs
}

// ---------------------------------------------------------------------------
// Mount table

function unescapeMountinfo (s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
}

/** The mountinfo line's fields for a mount point, or undefined when it is not mounted. */
export function mountEntry (mnt: string): { fstype: string, source: string, options: string } | undefined {
  let text = ''
  try { text = readFileSync('/proc/self/mountinfo', 'utf8') } catch { return undefined }
  let found: { fstype: string, source: string, options: string } | undefined
  for (const line of text.split('\n')) {
    if (!line) continue
    const [pre, post] = line.split(' - ')
    const f = pre!.split(' ')
    if (unescapeMountinfo(f[4] ?? '') !== mnt) continue
    const p = (post ?? '').split(' ')
    found = { fstype: p[0] ?? '', source: unescapeMountinfo(p[1] ?? ''), options: `${f[5] ?? ''},${p[2] ?? ''}` }
  }
  return found // the last (topmost) mount on that point
}

/** How many mounts are stacked on `mnt` (a stale FUSE mount left under a new one counts). */
export function mountCount (mnt: string): number {
  let text = ''
  try { text = readFileSync('/proc/self/mountinfo', 'utf8') } catch { return 0 }
  return text.split('\n').filter((line) => line && unescapeMountinfo(line.split(' ')[4] ?? '') === mnt).length
}

export function isMounted (mnt: string): boolean {
  return mountEntry(mnt) !== undefined
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

/** Poll `fn` until it returns true or `ms` passes; returns the last value. */
export async function waitFor (fn: () => boolean | Promise<boolean>, ms = 10_000, step = 50): Promise<boolean> {
  const end = Date.now() + ms
  for (;;) {
    if (await fn()) return true
    if (Date.now() > end) return false
    await sleep(step)
  }
}

/** Is the process running? A zombie (exited, not yet reaped by its parent or init) counts as dead. */
export function pidAlive (pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
    return state !== 'Z' && state !== 'X'
  } catch {
    return false
  }
}

// ---------------------------------------------------------------------------
// withMount

export interface MountOpts {
  /** `-o` options for `bslfs mount` (ignored for native; passed to bindfs). */
  options?: string[]
  /** Don't mount, only create the dirs and run `bslfs init` (default false). */
  noMount?: boolean
}

export interface Mount {
  target: Target
  /** Temp dir holding state/ and mnt/. */
  base: string
  /** The STATE directory (for bindfs: holds backing/, the dir bindfs shows). */
  state: string
  /** The mount point (for native: just a directory). */
  mnt: string
  /** Is it mounted right now (always true for native). */
  mounted (): boolean
  /** Mount (bslfs mount STATE MNT [-o opts]); throws with the run on failure. */
  mount (options?: string[]): Promise<RunResult | undefined>
  /** Clean unmount; throws with the run on failure. native: sync. */
  unmount (): Promise<RunResult | undefined>
  /** unmount + mount (with new options when given). native: sync. */
  remount (options?: string[]): Promise<void>
  /** Run `node bin/bslfs ...args` (never throws). */
  bslfs (args: string[], opts?: RunOptions): Promise<RunResult>
  /** The mount daemon's pid: STATE/daemon.pid, else pgrep -f on the mount point. */
  daemonPid (): Promise<number | undefined>
  /** With BSLFS_TEST_VOLUME=remote: the block server holding the data volume. */
  server?: BlockServer
  /** With BSLFS_TEST_DIRECTORY=postgres: the password file `init` and `mount` were given (other commands use PGPASSFILE). */
  passwordFile?: string
}

/** The test process's PostgreSQL for BSLFS_TEST_DIRECTORY=postgres, with a login role that needs a password. */
interface TestPostgres { server: PgServer, user: string, passwordFile: string }
let testPostgres: Promise<TestPostgres> | undefined
let databases = 0

function startTestPostgres (): Promise<TestPostgres> {
  testPostgres ??= (async () => {
    // No server crash in the mount suite: fsync off only makes its commits cheaper.
    const server = await PgServer.create({ settings: { fsync: 'off', full_page_writes: 'off' } })
    tap.teardown(async () => await server.destroy())
    const user = 'bslfs'
    const password = randomBytes(12).toString('hex')
    await server.sql(`CREATE ROLE ${user} LOGIN CREATEDB PASSWORD '${password}'`)
    const dir = await fsp.mkdtemp('/tmp/bslfs-pgpass-')
    tap.teardown(async () => await fsp.rm(dir, { recursive: true, force: true }))
    const passwordFile = join(dir, 'password')
    await fsp.writeFile(passwordFile, password + '\n', { mode: 0o600 })
    // Commands the tests run themselves find the password as a user's would: PGPASSFILE.
    const pgpass = join(dir, 'pgpass')
    await fsp.writeFile(pgpass, `${server.host}:${server.port}:*:${user}:${password}\n`, { mode: 0o600 })
    childEnv.PGPASSFILE = pgpass
    return { server, user, passwordFile }
  })()
  return testPostgres
}

/** A new empty database owned by the test role; the filesystem's URL. */
async function freshDatabase (): Promise<{ url: string, passwordFile: string }> {
  const pg = await startTestPostgres()
  const database = `fs${process.pid}_${++databases}`
  await pg.server.sql(`CREATE DATABASE ${database} OWNER ${pg.user}`)
  return { url: pg.server.url({ user: pg.user, database }), passwordFile: pg.passwordFile }
}

/** Pids of processes that must die at exit (started by the helper). */
const liveMounts = new Set<Mount>()
let exitHookInstalled = false
function installExitHook () {
  if (exitHookInstalled) return
  exitHookInstalled = true
  // Last line of defence: a test file that dies or times out never leaves a mount behind.
  process.on('exit', () => {
    for (const m of liveMounts) {
      if (m.target === 'native') continue
      if (isMounted(m.mnt)) {
        spawnSync('fusermount', ['-uz', m.mnt], { stdio: 'ignore', timeout: 5000 })
        if (isMounted(m.mnt)) spawnSync('umount', ['-l', m.mnt], { stdio: 'ignore', timeout: 5000 })
      }
    }
  })
}

export function bslfs (args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return run(process.execPath, [bslfsBin, ...args], { timeout: 60_000, cwd: repoRoot, ...opts })
}

interface TapLike {
  teardown (fn: () => unknown): void
  comment (...args: unknown[]): void
}

/**
 * Create base/{state,mnt} under /tmp, init and mount, and register a teardown
 * that always leaves nothing mounted and nothing on disk.
 */
export async function withMount (t: TapLike, opts: MountOpts = {}): Promise<Mount> {
  installExitHook()
  const base = await fsp.mkdtemp('/tmp/bslfs-test-')
  await fsp.chmod(base, 0o755) // other users (permission tests) must reach mnt
  const pgFs = target === 'bslfs' && directoryKind === 'postgres' ? await freshDatabase() : undefined
  const state = pgFs?.url ?? join(base, 'state')
  const mnt = join(base, 'mnt')
  if (!pgFs) await fsp.mkdir(state, { mode: 0o755 })
  await fsp.mkdir(mnt, { mode: 0o755 })
  const backing = join(state, 'backing')
  let currentOptions = opts.options ?? []

  if (target === 'bslfs' && !process.env.BSLFS_BIN && !existsSync(join(repoRoot, 'dist', 'cli', 'main.js'))) {
    throw new Error(`dist/cli/main.js is missing: run \`npm run build\` first (or set BSLFS_TEST_TARGET=native|bindfs)`)
  }

  const daemonPid = async (): Promise<number | undefined> => {
    if (target === 'native') return undefined
    if (target === 'bslfs') {
      try {
        const pid = parseInt((await fsp.readFile(runtimePaths(parseFsName(state), mnt).pid, 'utf8')).trim(), 10)
        if (pid > 0 && pidAlive(pid)) return pid
      } catch {}
    }
    const pat = target === 'bindfs' ? `bindfs .*${mnt}` : mnt
    const r = await run('pgrep', ['-f', '--', pat], { timeout: 10_000 })
    const pids = r.stdout.split('\n').map((s) => parseInt(s, 10)).filter((p) => p > 0 && p !== process.pid)
    // prefer a process that is not the short-lived `bslfs mount` client
    return pids[pids.length - 1]
  }

  const m: Mount = {
    target,
    base,
    state,
    mnt,
    mounted: () => target === 'native' || isMounted(mnt),
    bslfs: (args, o) => bslfs(args, o),
    daemonPid,
    passwordFile: pgFs?.passwordFile,
    async mount (options?: string[]) {
      if (options) currentOptions = options
      if (target === 'native') return undefined
      let r: RunResult
      if (target === 'bindfs') {
        const o = ['allow_other', ...currentOptions].join(',')
        r = await run('bindfs', ['-o', o, backing, mnt], { timeout: 30_000 })
      } else {
        const args = ['mount', state, mnt]
        if (currentOptions.length > 0) args.push('-o', currentOptions.join(','))
        if (pgFs) args.push('--password-file', pgFs.passwordFile)
        r = await bslfs(args, { timeout: 60_000 })
      }
      if (r.code !== 0) throw new Error(`mount failed:\n${describeRun(r)}`)
      if (!(await waitFor(() => isMounted(mnt), 10_000))) {
        throw new Error(`mount exited 0 but ${mnt} is not in /proc/self/mountinfo:\n${describeRun(r)}`)
      }
      return r
    },
    async unmount () {
      if (target === 'native') { await run('sync', []); return undefined }
      const pid = await daemonPid()
      const r = target === 'bindfs'
        ? await run('fusermount', ['-u', mnt], { timeout: 60_000 })
        : await bslfs(['unmount', mnt], { timeout: 120_000 })
      if (r.code !== 0) throw new Error(`unmount failed:\n${describeRun(r)}`)
      if (isMounted(mnt)) throw new Error(`unmount exited 0 but ${mnt} is still mounted:\n${describeRun(r)}`)
      if (target === 'bslfs' && pid !== undefined && !(await waitFor(() => !pidAlive(pid), 15_000))) {
        throw new Error(`unmount exited 0 but the daemon (pid ${pid}) is still running 15 s later:\n${describeRun(r)}`)
      }
      return r
    },
    async remount (options?: string[]) {
      await m.unmount()
      await m.mount(options)
    }
  }

  liveMounts.add(m)
  t.teardown(async () => {
    try {
      await forceCleanup(m, t)
    } finally {
      liveMounts.delete(m)
    }
  })

  if (target === 'bindfs') {
    await fsp.mkdir(backing, { mode: 0o755 })
  } else if (target === 'bslfs') {
    const r = await bslfs(['init', state, ...(pgFs ? ['--password-file', pgFs.passwordFile] : [])], { timeout: 60_000 })
    if (r.code !== 0) throw new Error(`bslfs init failed:\n${describeRun(r)}`)
    if (volumeKind === 'remote') {
      // New data goes to volume 2 on a block server on loopback, stopped after the unmount.
      const server = await startBlockServer(join(base, 'server'))
      m.server = server
      t.teardown(() => server.stop())
      for (const args of [['server', 'add', state, 's1', server.url, '--token-file', server.tokenFile],
        ['volume', 'add', state, '2', 's1:d1'], ['volume', 'default', state, '2']]) {
        const rr = await bslfs(args, { timeout: 60_000 })
        if (rr.code !== 0) throw new Error(`bslfs ${args[0]} ${args[1]} failed:\n${describeRun(rr)}`)
      }
    }
  }
  if (!opts.noMount) await m.mount()
  return m
}

/** Unmount by any means, kill a surviving daemon, remove the temp dirs. */
async function forceCleanup (m: Mount, t: TapLike): Promise<void> {
  if (m.target !== 'native') {
    const pid = await m.daemonPid().catch(() => undefined)
    if (isMounted(m.mnt)) {
      const r = m.target === 'bslfs'
        ? await bslfs(['unmount', m.mnt], { timeout: 60_000 })
        : await run('fusermount', ['-u', m.mnt], { timeout: 30_000 })
      if (r.code !== 0 || isMounted(m.mnt)) {
        t.comment(`teardown: clean unmount of ${m.mnt} failed, forcing:\n${describeRun(r)}`)
        await run('fusermount', ['-uz', m.mnt], { timeout: 15_000 })
        if (isMounted(m.mnt)) await run('umount', ['-l', m.mnt], { timeout: 15_000 })
      }
    }
    if (pid !== undefined && pidAlive(pid)) {
      if (!(await waitFor(() => !pidAlive(pid), 10_000))) {
        t.comment(`teardown: daemon pid ${pid} still alive after unmount; SIGKILL`)
        try { process.kill(pid, 'SIGKILL') } catch {}
        await waitFor(() => !pidAlive(pid), 5_000)
      }
    }
  }
  if (m.target !== 'native' && isMounted(m.mnt)) {
    t.comment(`teardown: ${m.mnt} is STILL mounted; leaving ${m.base} in place`)
    return
  }
  if (m.passwordFile) await fsp.rm(runtimePaths(parseFsName(m.state), m.mnt).dir, { recursive: true, force: true })
  await fsp.rm(m.base, { recursive: true, force: true, maxRetries: 3 }).catch((e) => {
    t.comment(`teardown: could not remove ${m.base}: ${String(e)}`)
  })
}

// ---------------------------------------------------------------------------
// Small fs helpers for tests

/** The errno code of a thrown error, or 'OK' when fn does not throw. */
export async function errCode (fn: () => unknown): Promise<string> {
  try {
    await fn()
    return 'OK'
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String(e)
  }
}
