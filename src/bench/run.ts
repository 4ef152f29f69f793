/**
 * `npm run bench`: bslfs against a plain local directory ("native") and bindfs
 * (the C FUSE passthrough) on the same disk, bslfs with its data volume on
 * a block server on loopback ("bslfs-remote"), and bslfs with its data volume
 * mirrored across two such servers ("bslfs-mirror"). Runs are interleaved
 * round-robin (run 1 of every target, then run 2, ...) and reported as median (min–max).
 *
 *   npm run bench -- [--runs N] [--size MIB] [--files N] [--targets LIST] [--dir DIR] [--json FILE] [--quick]
 */
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { release } from 'node:os'
import { join, resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { defaultFuseOptions } from '../fs/mount'
import {
  alive, type Background, dropCaches, freePort, mountLine, peakRssKiB, run, sleep, startBackground, startCleanup,
  stoppedBy, trapSignals
} from './proc'

const USAGE = `usage: npm run bench -- [options]
  --runs N       runs per target (default 3; 1 with --quick)
  --size MIB     sequential write/read size in MiB (default 1024; 64 with --quick)
  --files N      files to create, stat and unlink (default 10000; 1000 with --quick)
  --targets LIST comma-separated, from native,bindfs,bslfs,bslfs-remote,bslfs-mirror (default: all five)
  --dir DIR      where the temporary directories go (default /var/tmp, the disk the bslfs STATE is on)
  --json FILE    also write the results as JSON
  --quick        small sizes and one run: a smoke check`

const TARGETS = ['native', 'bindfs', 'bslfs', 'bslfs-remote', 'bslfs-mirror'] as const
type Target = typeof TARGETS[number]

/** bslfs-remote and bslfs-mirror: block servers on loopback, each serving one device. */
const SERVER_HOST = '127.0.0.1'
const SERVER_DEVICE = 'd1'
/** bslfs-remote: its data volume on server s1. */
const REMOTE_SERVERS = ['s1']
const REMOTE_VOLUME = '2'
/** bslfs-mirror: volumes 2 and 3 on its own servers s1 and s2, mirrored as volume 10 (a write needs both copies). */
const MIRROR_SERVERS = ['s1', 's2']
const MIRROR_VOLUMES = ['2', '3']
const MIRROR_VOLUME = '10'
/** How long the block server gets to say it is listening, and to exit after SIGTERM. */
const SERVER_START_MS = 30_000
const SERVER_STOP_GRACE_MS = 10_000
/** How long a server-backed mount daemon gets to finish (final flush, reclaim) after its unmount, before the server stops. */
const DAEMON_EXIT_MS = 60_000

interface Workload { key: string, label: string, unit: string }

const repoRoot = resolve(__dirname, '..', '..')
const bslfsBin = join(repoRoot, 'bin', 'bslfs')
const python = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3'

/** Create, stat and unlink N empty files in a new directory; prints the seconds each phase took. */
const META_SCRIPT = `
import json, os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
os.mkdir(d)
names = [os.path.join(d, 'f%07d' % i) for i in range(n)]
flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
t0 = time.perf_counter()
for p in names: os.close(os.open(p, flags, 0o644))
t1 = time.perf_counter()
for p in names: os.stat(p)
t2 = time.perf_counter()
for p in names: os.unlink(p)
t3 = time.perf_counter()
os.rmdir(d)
print(json.dumps({'create': t1 - t0, 'stat': t2 - t1, 'unlink': t3 - t2}))
`

function parseOptions () {
  const { values } = parseArgs({
    options: {
      runs: { type: 'string' },
      size: { type: 'string' },
      files: { type: 'string' },
      targets: { type: 'string' },
      dir: { type: 'string', default: '/var/tmp' },
      json: { type: 'string' },
      quick: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false }
    }
  })
  if (values.help) { console.log(USAGE); process.exit(0) }
  const int = (name: string, text: string | undefined, dflt: number): number => {
    const n = text === undefined ? dflt : Number(text)
    if (!Number.isInteger(n) || n < 1) { console.error(`bench: --${name} wants a positive integer, not "${text}"\n${USAGE}`); process.exit(2) }
    return n
  }
  const q = values.quick
  let targets: Target[] = [...TARGETS]
  if (values.targets !== undefined) {
    const names = values.targets.split(',').map(t => t.trim()).filter(t => t !== '')
    const unknown = names.filter(t => !(TARGETS as readonly string[]).includes(t))
    if (names.length === 0 || unknown.length) {
      console.error(`bench: --targets wants a comma-separated list from ${TARGETS.join(',')}, not "${values.targets}"\n${USAGE}`)
      process.exit(2)
    }
    targets = TARGETS.filter(t => names.includes(t)) // the usual column order, each once
  }
  return {
    runs: int('runs', values.runs, q ? 1 : 3),
    sizeMiB: int('size', values.size, q ? 64 : 1024),
    files: int('files', values.files, q ? 1000 : 10000),
    targets,
    dir: resolve(values.dir),
    json: values.json
  }
}

/** The options every bslfs mount gets, minus its name: what bindfs should get too where it accepts them. */
function bslfsFuseOptions (): string[] {
  return defaultFuseOptions('bench').filter(o => !o.startsWith('fsname=') && !o.startsWith('subtype='))
}

/** Which of bslfs's FUSE options bindfs (with this libfuse) accepts: try a scratch mount with each. */
async function probeBindfsOptions (src: string, mnt: string): Promise<{ used: string[], refused: string[] }> {
  const used = ['allow_other']
  const refused: string[] = []
  for (const opt of bslfsFuseOptions().filter(o => o !== 'allow_other')) {
    try {
      await run('bindfs', ['-o', `allow_other,${opt}`, src, mnt])
      used.push(opt)
    } catch {
      refused.push(opt)
    }
    if (await mountLine(mnt)) await run('fusermount', ['-u', mnt])
  }
  return { used, refused }
}

async function fio (rw: 'write' | 'read', file: string, sizeMiB: number): Promise<number> {
  const args = [`--name=seq${rw}`, `--filename=${file}`, `--rw=${rw}`, '--bs=1M', `--size=${sizeMiB}M`,
    '--ioengine=psync', '--output-format=json']
  if (rw === 'write') args.push('--end_fsync=1')
  const { stdout } = await run('fio', args)
  const job = JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0]
  if (job.error) throw new Error(`fio ${rw} on ${file}: error ${job.error}`)
  const io = job[rw]
  if (io.io_bytes !== sizeMiB * 1048576) throw new Error(`fio ${rw} on ${file}: moved ${io.io_bytes} bytes, not ${sizeMiB} MiB`)
  return io.bw_bytes / 1e6 // fio's write runtime includes the end_fsync
}

/** One run of every workload in a target's directory; the files are removed afterwards. */
async function runOnce (dir: string, sizeMiB: number, files: number): Promise<Record<string, number>> {
  const file = join(dir, 'bench.dat')
  await dropCaches()
  const write = await fio('write', file, sizeMiB)
  await dropCaches()
  const read = await fio('read', file, sizeMiB)
  await rm(file)
  await run('sync', [])
  const { stdout } = await run(python, ['-c', META_SCRIPT, join(dir, 'meta'), String(files)])
  const secs = JSON.parse(stdout) as { create: number, stat: number, unlink: number }
  return { write, read, create: files / secs.create, stat: files / secs.stat, unlink: files / secs.unlink }
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}
const fmt = (x: number): string => x >= 100 ? x.toFixed(0) : x.toPrecision(3)
const fmtSize = (mib: number): string => mib % 1024 === 0 ? `${mib / 1024} GiB` : `${mib} MiB`

function table (rows: string[][]): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map(r => r[c].length)))
  return rows.map(r => r.map((cell, c) => c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c])).join('   ')).join('\n')
}

/** The pid in STATE/daemon.pid, or undefined when there is none (not mounted, or already stopped). */
async function daemonPid (state: string): Promise<number | undefined> {
  try {
    const pid = Number((await readFile(join(state, 'daemon.pid'), 'utf8')).trim())
    return Number.isInteger(pid) && pid > 0 ? pid : undefined
  } catch {
    return undefined
  }
}

/** A random token in a new 0600 file. */
async function writeTokenFile (file: string): Promise<void> {
  await writeFile(file, randomBytes(32).toString('base64url') + '\n', { mode: 0o600, flag: 'wx' })
  await chmod(file, 0o600)
}

/**
 * `bslfs serve` on a free loopback port, in the foreground of its own process
 * group. The port is found by binding port 0 and releasing it; should another
 * process take it in between, a new one is tried.
 */
async function startBlockServer (name: string, device: string, tokenFile: string): Promise<{ server: Background, url: string }> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort(SERVER_HOST)
    try {
      const server = await startBackground(process.execPath, [bslfsBin, 'serve', '--listen', `${SERVER_HOST}:${port}`,
        '--device', `${SERVER_DEVICE}=${device}`, '--name', name, '--token-file', tokenFile], /listening on/, SERVER_START_MS)
      return { server, url: `http://${SERVER_HOST}:${port}` }
    } catch (err) {
      if (attempt >= 3 || !/EADDRINUSE|address already in use/i.test((err as Error).message)) throw err
    }
  }
}

/** Run a bslfs CLI command; resolves with its trimmed stdout. */
const bslfs = async (...args: string[]): Promise<string> => (await run(process.execPath, [bslfsBin, ...args])).stdout.trim()

/** A block server the benchmark started: its name (the same in `serve --name` and `server add`), device dir, token file, URL. */
interface BlockServer { name: string, device: string, tokenFile: string, url: string, proc: Background }

/** A bslfs target whose data is on block servers of its own: its STATE, mount point and servers. */
interface Served { target: Target, state: string, mnt: string, servers: BlockServer[] }

/**
 * Start one block server per name for a target, each with its own device dir
 * and token file in ROOT, then `bslfs init` its STATE and `server add` them.
 * Each server goes into s.servers as soon as it is up, so cleanup stops it
 * even when a later step fails.
 */
async function startServed (root: string, s: Served, names: string[]): Promise<void> {
  for (const name of names) {
    const device = join(root, `${s.target}-${name}-${SERVER_DEVICE}`)
    const tokenFile = join(root, `${s.target}-${name}-token`)
    await mkdir(device)
    await writeTokenFile(tokenFile)
    const { server, url } = await startBlockServer(name, device, tokenFile)
    s.servers.push({ name, device, tokenFile, url, proc: server })
  }
  await bslfs('init', s.state)
  for (const b of s.servers) await bslfs('server', 'add', s.state, b.name, b.url, '--token-file', b.tokenFile)
}

/** How a target's servers are described: name, URL, pid and device dir of each. */
const describeServers = (servers: BlockServer[]): string =>
  servers.map(b => `${b.name} at ${b.url} (pid ${b.proc.pid}, device ${SERVER_DEVICE}=${b.device})`).join('; ')

const fmtRss = (kib: number | undefined): string => kib !== undefined ? `${(kib / 1024).toFixed(1)} MiB` : 'unknown'

async function main (): Promise<void> {
  const opts = parseOptions()
  const targets = opts.targets
  const has = (t: Target): boolean => targets.includes(t)
  trapSignals()
  const workloads: Workload[] = [
    { key: 'write', label: `seq write ${fmtSize(opts.sizeMiB)} (fio bs=1M psync end_fsync=1)`, unit: 'MB/s' },
    { key: 'read', label: `seq read ${fmtSize(opts.sizeMiB)} (fio bs=1M psync, caches dropped)`, unit: 'MB/s' },
    { key: 'create', label: `create ${opts.files} empty files`, unit: 'ops/s' },
    { key: 'stat', label: `stat ${opts.files} files`, unit: 'ops/s' },
    { key: 'unlink', label: `unlink ${opts.files} files`, unit: 'ops/s' }
  ]

  await mkdir(opts.dir, { recursive: true })
  const root = await mkdtemp(join(opts.dir, 'bslfs-bench-'))
  const p = {
    native: join(root, 'native'),
    bindfsSrc: join(root, 'bindfs-src'),
    bindfsMnt: join(root, 'bindfs-mnt'),
    state: join(root, 'bslfs-state'),
    bslfsMnt: join(root, 'bslfs-mnt')
  }
  const remote: Served = { target: 'bslfs-remote', state: join(root, 'bslfs-remote-state'), mnt: join(root, 'bslfs-remote-mnt'), servers: [] }
  const mirror: Served = { target: 'bslfs-mirror', state: join(root, 'bslfs-mirror-state'), mnt: join(root, 'bslfs-mirror-mnt'), servers: [] }
  const served = [remote, mirror]
  const dirs: Record<Target, string> = {
    native: p.native, bindfs: p.bindfsMnt, bslfs: p.bslfsMnt, 'bslfs-remote': remote.mnt, 'bslfs-mirror': mirror.mnt
  }
  const samples: Record<string, Record<Target, number[]>> = {}
  for (const w of workloads) samples[w.key] = { native: [], bindfs: [], bslfs: [], 'bslfs-remote': [], 'bslfs-mirror': [] }
  let bindfsOptions: string[] = []
  let mirrorSummary = '' // what `bslfs mirror` said, e.g. how many copies a write needs

  let failed = false
  try {
    let bindfsRefused: string[] = []
    if (has('native')) await mkdir(p.native)
    if (has('bindfs')) {
      for (const d of [p.bindfsSrc, p.bindfsMnt]) await mkdir(d)
      const probe = await probeBindfsOptions(p.bindfsSrc, p.bindfsMnt)
      bindfsOptions = probe.used
      bindfsRefused = probe.refused
      await run('bindfs', ['-o', bindfsOptions.join(','), p.bindfsSrc, p.bindfsMnt])
    }
    if (has('bslfs')) {
      await mkdir(p.bslfsMnt)
      await run(process.execPath, [bslfsBin, 'init', p.state])
      await run(process.execPath, [bslfsBin, 'mount', p.state, p.bslfsMnt])
    }
    if (has('bslfs-remote')) {
      await mkdir(remote.mnt)
      await startServed(root, remote, REMOTE_SERVERS)
      await bslfs('volume', 'add', remote.state, REMOTE_VOLUME, `${REMOTE_SERVERS[0]}:${SERVER_DEVICE}`)
      await bslfs('volume', 'default', remote.state, REMOTE_VOLUME)
      await bslfs('mount', remote.state, remote.mnt)
    }
    if (has('bslfs-mirror')) {
      await mkdir(mirror.mnt)
      await startServed(root, mirror, MIRROR_SERVERS)
      for (const [i, vol] of MIRROR_VOLUMES.entries()) await bslfs('volume', 'add', mirror.state, vol, `${MIRROR_SERVERS[i]}:${SERVER_DEVICE}`)
      mirrorSummary = (await bslfs('mirror', mirror.state, MIRROR_VOLUME, ...MIRROR_VOLUMES)).replace(/^bslfs: /, '')
      await bslfs('volume', 'default', mirror.state, MIRROR_VOLUME)
      await bslfs('mount', mirror.state, mirror.mnt)
    }

    console.log(`bslfs benchmark: ${opts.runs} run(s) per target, round-robin; kernel ${release()}; temp dir ${root}`)
    const describe: Record<Target, () => string> = {
      native: () => `plain directory ${p.native}`,
      bindfs: () => `bindfs -o ${bindfsOptions.join(',')}${bindfsRefused.length ? ` (refused by bindfs: ${bindfsRefused.join(',')})` : ''}`,
      bslfs: () => `bslfs mount (its defaults: ${bslfsFuseOptions().join(',')})`,
      'bslfs-remote': () => `bslfs mount, data on volume ${REMOTE_VOLUME} = ${REMOTE_SERVERS[0]}:${SERVER_DEVICE}, ` +
        `\`bslfs serve\` ${describeServers(remote.servers)}`,
      'bslfs-mirror': () => `bslfs mount, data on ${mirrorSummary}, ` +
        `volumes ${MIRROR_VOLUMES.map((v, i) => `${v} = ${MIRROR_SERVERS[i]}:${SERVER_DEVICE}`).join(', ')}, ` +
        `\`bslfs serve\` ${describeServers(mirror.servers)}`
    }
    const width = Math.max(...targets.map(t => t.length)) + 1
    for (const t of targets) console.log(`  ${`${t}:`.padEnd(width)} ${describe[t]()}`)
    for (const t of targets) if (t !== 'native') console.log(`  /proc/mounts: ${await mountLine(dirs[t])}`)

    for (let r = 1; r <= opts.runs; r++) {
      for (const t of targets) {
        const res = await runOnce(dirs[t], opts.sizeMiB, opts.files)
        for (const w of workloads) samples[w.key][t].push(res[w.key])
        console.log(`  run ${r}/${opts.runs} ${t.padEnd(width - 1)} ` + workloads.map(w => `${w.key} ${fmt(res[w.key])}`).join(', '))
      }
    }

    // Peak RSS: VmHWM is a high-water mark, so sampling once after the last run is enough.
    const daemonRss = async (state: string): Promise<{ pid?: number, kib?: number }> => {
      const pid = await daemonPid(state)
      return { pid, kib: pid !== undefined ? await peakRssKiB(pid) : undefined }
    }
    const rss = {
      bslfs: has('bslfs') ? await daemonRss(p.state) : {},
      // Per server-backed target: its mount daemon, and each of its block servers (in s.servers order).
      served: Object.fromEntries(await Promise.all(served.filter(s => has(s.target)).map(async s => [s.target, {
        daemon: await daemonRss(s.state),
        servers: await Promise.all(s.servers.map(async b => await peakRssKiB(b.proc.pid)))
      }] as const)))
    }

    const cell = (xs: number[]): string => `${fmt(median(xs))} (${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))})`
    const ratio = (w: Workload, num: Target, den: Target): number => median(samples[w.key][num]) / median(samples[w.key][den])
    const allRatios: Array<{ label: string, key: string, num: Target, den: Target }> = [
      { label: 'bslfs/bindfs', key: 'bslfsToBindfs', num: 'bslfs', den: 'bindfs' },
      { label: 'bslfs/native', key: 'bslfsToNative', num: 'bslfs', den: 'native' },
      { label: 'remote/local', key: 'remoteToLocal', num: 'bslfs-remote', den: 'bslfs' },
      { label: 'mirror/local', key: 'mirrorToLocal', num: 'bslfs-mirror', den: 'bslfs' },
      { label: 'mirror/remote', key: 'mirrorToRemote', num: 'bslfs-mirror', den: 'bslfs-remote' }
    ]
    const ratios = allRatios.filter(r => has(r.num) && has(r.den))
    const rows = [['workload', 'unit', ...targets, ...ratios.map(r => r.label)]]
    for (const w of workloads) {
      rows.push([w.label, w.unit, ...targets.map(t => cell(samples[w.key][t])), ...ratios.map(r => ratio(w, r.num, r.den).toFixed(2))])
    }
    // Spell out the ratios whose labels abbreviate the target names.
    const abbreviated = ratios.filter(r => r.label !== `${r.num}/${r.den}`).map(r => `${r.label}: ${r.num} / ${r.den}`)
    console.log(`\nmedian (min–max) of ${opts.runs} run(s); higher is better; ratios are of medians` +
      `${abbreviated.length ? ` (${abbreviated.join('; ')})` : ''}\n`)
    console.log(table(rows))
    const rssRows: string[][] = []
    if (has('bslfs')) rssRows.push([`bslfs mount daemon (pid ${rss.bslfs.pid ?? '?'})`, fmtRss(rss.bslfs.kib)])
    for (const s of served.filter(s => has(s.target))) {
      const r = rss.served[s.target]
      rssRows.push([`${s.target} mount daemon (pid ${r.daemon.pid ?? '?'})`, fmtRss(r.daemon.kib)])
      s.servers.forEach((b, i) => rssRows.push([`${s.target} block server ${b.name} (pid ${b.proc.pid})`, fmtRss(r.servers[i])]))
    }
    if (rssRows.length) {
      console.log('\npeak RSS (VmHWM, read after the last run)')
      console.log(table(rssRows).split('\n').map(l => `  ${l}`).join('\n'))
    }

    if (opts.json) {
      const results = Object.fromEntries(workloads.map(w => [w.key, {
        label: w.label,
        unit: w.unit,
        ...Object.fromEntries(targets.map(t => {
          const xs = samples[w.key][t]
          return [t, { runs: xs, median: median(xs), min: Math.min(...xs), max: Math.max(...xs) }]
        })),
        ...Object.fromEntries(ratios.map(r => [r.key, ratio(w, r.num, r.den)]))
      }]))
      const out = {
        date: new Date().toISOString(),
        kernel: release(),
        targets,
        runs: opts.runs,
        sizeMiB: opts.sizeMiB,
        files: opts.files,
        ...(has('bindfs') ? { bindfsOptions } : {}),
        ...(has('bslfs') || has('bslfs-remote') || has('bslfs-mirror') ? { bslfsOptions: bslfsFuseOptions() } : {}),
        ...(has('bslfs-remote')
          ? { blockServer: { url: remote.servers[0].url, name: remote.servers[0].name, device: SERVER_DEVICE, volume: Number(REMOTE_VOLUME) } }
          : {}),
        ...(has('bslfs-mirror')
          ? {
              mirror: {
                volume: Number(MIRROR_VOLUME),
                servers: mirror.servers.map((b, i) => ({ url: b.url, name: b.name, device: SERVER_DEVICE, volume: Number(MIRROR_VOLUMES[i]) }))
              }
            }
          : {}),
        results,
        ...(has('bslfs') ? { bslfsPeakRssKiB: rss.bslfs.kib } : {}),
        ...(has('bslfs-remote')
          ? { bslfsRemotePeakRssKiB: rss.served['bslfs-remote'].daemon.kib, blockServerPeakRssKiB: rss.served['bslfs-remote'].servers[0] }
          : {}),
        ...(has('bslfs-mirror')
          ? { bslfsMirrorPeakRssKiB: rss.served['bslfs-mirror'].daemon.kib, mirrorServersPeakRssKiB: rss.served['bslfs-mirror'].servers }
          : {})
      }
      await writeFile(opts.json, JSON.stringify(out, null, 2) + '\n')
      console.log(`results written to ${opts.json}`)
    }
  } catch (err) {
    failed = true
    console.error(`bench: ${(err as Error).message}`)
    for (const s of served) {
      for (const b of s.servers) {
        const exit = b.proc.exit()
        if (exit) {
          console.error(`bench: ${s.target}'s block server ${b.name} (pid ${b.proc.pid}) had exited ` +
            `(${exit.signal ? `signal ${exit.signal}` : `exit ${exit.code}`}); ` +
            `its stderr:\n${b.proc.stderr().trim() || '(nothing)'}`)
        }
      }
    }
  } finally {
    startCleanup()
    if (!await cleanup(root, p, served)) failed = true
  }
  const sig = stoppedBy()
  if (sig) process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1))
  if (failed) process.exit(1)
}

/** Unmount a FUSE mount: the strict command, retried while busy, then the lazy one. Resolves with whether it is gone. */
async function unmount (mnt: string, strict: string[], lazy: string[]): Promise<boolean> {
  for (let attempt = 1; (await mountLine(mnt)) && attempt <= 6; attempt++) {
    const [cmd, ...args] = attempt < 6 ? strict : lazy
    try { await run(cmd, args) } catch (err) { if (attempt >= 5) console.error(`bench: ${(err as Error).message}`) }
    if (await mountLine(mnt)) await sleep(1000)
  }
  return !(await mountLine(mnt))
}

/**
 * Unmount the FUSE mounts (retrying a busy one, then detaching it); then, for
 * each server-backed target, once its mount is gone and its daemon has exited,
 * stop its block servers (SIGTERM, SIGKILL after 10 s); remove the temp dir once
 * nothing is mounted in it. Resolves with false when something was left behind.
 */
async function cleanup (root: string, p: { bindfsMnt: string, bslfsMnt: string }, served: Served[]): Promise<boolean> {
  const bslfsUnmount = (mnt: string): [string[], string[]] =>
    [[process.execPath, bslfsBin, 'unmount', mnt], [process.execPath, bslfsBin, 'unmount', '--lazy', mnt]]
  await unmount(p.bindfsMnt, ['fusermount', '-u', p.bindfsMnt], ['fusermount', '-uz', p.bindfsMnt])
  await unmount(p.bslfsMnt, ...bslfsUnmount(p.bslfsMnt))

  let ok = true
  for (const s of served) {
    // Its pid before the unmount: the daemon removes daemon.pid as it finishes.
    const pid = await daemonPid(s.state)
    const gone = await unmount(s.mnt, ...bslfsUnmount(s.mnt))
    const running = s.servers.filter(b => b.proc.exit() === null)
    const pids = running.map(b => b.proc.pid)
    if (!gone) {
      // The mount still needs its daemon and the servers; leave them for the user.
      for (const b of running) b.proc.disown()
      console.error(`bench: ${s.mnt} is still mounted, so its block servers${pids.length ? ` (pid ${pids.join(', ')})` : ''} are left running; ` +
        `unmount it, then stop the servers${pids.length ? ` (\`kill ${pids.join(' ')}\`)` : ''}`)
      ok = false
      continue
    }
    // After an unmount (a lazy one above all) the daemon still flushes and reclaims, through the servers.
    if (pid !== undefined && alive(pid)) {
      const deadline = Date.now() + DAEMON_EXIT_MS
      while (alive(pid) && Date.now() < deadline) await sleep(200)
      if (alive(pid)) {
        console.error(`bench: the ${s.target} mount daemon (pid ${pid}) is still running ${DAEMON_EXIT_MS / 1000} s after its unmount; ` +
          'killing it (SIGKILL)')
        try { process.kill(pid, 'SIGKILL') } catch {}
        ok = false
      }
    }
    for (const b of running) {
      const exit = await b.proc.stop(SERVER_STOP_GRACE_MS)
      if (exit.code !== 0) {
        console.error(`bench: ${s.target}'s block server ${b.name} (pid ${b.proc.pid}) exited with ` +
          `${exit.signal ? `signal ${exit.signal}` : `code ${exit.code}`}` +
          `${b.proc.stderr().trim() ? `; its stderr:\n${b.proc.stderr().trim()}` : ''}`)
        ok = false
      }
    }
  }

  const left = (await readFile('/proc/mounts', 'utf8')).split('\n').filter(l => (l.split(' ')[1] ?? '').startsWith(root + '/'))
  if (left.length) {
    console.error(`bench: still mounted, leaving ${root} in place:\n${left.join('\n')}`)
    return false
  }
  await rm(root, { recursive: true, force: true })
  return ok
}

main().catch(err => { console.error(err); process.exit(1) })
