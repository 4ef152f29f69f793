/**
 * `npm run bench`: bslfs against a plain local directory ("native") and bindfs
 * (the C FUSE passthrough) on the same disk. Runs are interleaved round-robin
 * (run 1 of every target, then run 2, ...) and reported as median (min–max).
 *
 *   npm run bench -- [--runs N] [--size MIB] [--files N] [--dir DIR] [--json FILE] [--quick]
 */
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { release } from 'node:os'
import { join, resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { defaultFuseOptions } from '../fs/mount'
import { dropCaches, mountLine, run, sleep, startCleanup, stoppedBy, trapSignals } from './proc'

const USAGE = `usage: npm run bench -- [options]
  --runs N       runs per target (default 3; 1 with --quick)
  --size MIB     sequential write/read size in MiB (default 1024; 64 with --quick)
  --files N      files to create, stat and unlink (default 10000; 1000 with --quick)
  --dir DIR      where the temporary directories go (default /var/tmp, the disk the bslfs STATE is on)
  --json FILE    also write the results as JSON
  --quick        small sizes and one run: a smoke check`

const TARGETS = ['native', 'bindfs', 'bslfs'] as const
type Target = typeof TARGETS[number]

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
  return {
    runs: int('runs', values.runs, q ? 1 : 3),
    sizeMiB: int('size', values.size, q ? 64 : 1024),
    files: int('files', values.files, q ? 1000 : 10000),
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

async function main (): Promise<void> {
  const opts = parseOptions()
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
  const dirs: Record<Target, string> = { native: p.native, bindfs: p.bindfsMnt, bslfs: p.bslfsMnt }
  const samples: Record<string, Record<Target, number[]>> = {}
  for (const w of workloads) samples[w.key] = { native: [], bindfs: [], bslfs: [] }
  let bindfsOptions: string[] = []
  let peakRssKiB: number | undefined

  let failed = false
  try {
    for (const d of [p.native, p.bindfsSrc, p.bindfsMnt, p.bslfsMnt]) await mkdir(d)

    const probe = await probeBindfsOptions(p.bindfsSrc, p.bindfsMnt)
    bindfsOptions = probe.used
    await run('bindfs', ['-o', bindfsOptions.join(','), p.bindfsSrc, p.bindfsMnt])
    await run(process.execPath, [bslfsBin, 'init', p.state])
    await run(process.execPath, [bslfsBin, 'mount', p.state, p.bslfsMnt])

    console.log(`bslfs benchmark: ${opts.runs} run(s) per target, round-robin; kernel ${release()}; temp dir ${root}`)
    console.log(`  native: plain directory ${p.native}`)
    console.log(`  bindfs: bindfs -o ${bindfsOptions.join(',')}${probe.refused.length ? ` (refused by bindfs: ${probe.refused.join(',')})` : ''}`)
    console.log(`  bslfs:  bslfs mount (its defaults: ${bslfsFuseOptions().join(',')})`)
    for (const mnt of [p.bindfsMnt, p.bslfsMnt]) console.log(`  /proc/mounts: ${await mountLine(mnt)}`)

    for (let r = 1; r <= opts.runs; r++) {
      for (const t of TARGETS) {
        const res = await runOnce(dirs[t], opts.sizeMiB, opts.files)
        for (const w of workloads) samples[w.key][t].push(res[w.key])
        console.log(`  run ${r}/${opts.runs} ${t.padEnd(6)} ` + workloads.map(w => `${w.key} ${fmt(res[w.key])}`).join(', '))
      }
    }

    const pid = Number((await readFile(join(p.state, 'daemon.pid'), 'utf8')).trim())
    const hwm = /^VmHWM:\s+(\d+) kB/m.exec(await readFile(`/proc/${pid}/status`, 'utf8'))
    peakRssKiB = hwm ? Number(hwm[1]) : undefined

    const cell = (xs: number[]): string => `${fmt(median(xs))} (${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))})`
    const ratio = (w: Workload, base: Target): string => (median(samples[w.key].bslfs) / median(samples[w.key][base])).toFixed(2)
    const rows = [['workload', 'unit', ...TARGETS, 'bslfs/bindfs', 'bslfs/native']]
    for (const w of workloads) {
      rows.push([w.label, w.unit, ...TARGETS.map(t => cell(samples[w.key][t])), ratio(w, 'bindfs'), ratio(w, 'native')])
    }
    console.log(`\nmedian (min–max) of ${opts.runs} run(s); higher is better; ratios are of medians\n`)
    console.log(table(rows))
    console.log(`\nbslfs mount daemon (pid ${pid}) peak RSS (VmHWM): ${peakRssKiB !== undefined ? `${(peakRssKiB / 1024).toFixed(1)} MiB` : 'unknown'}`)

    if (opts.json) {
      const results = Object.fromEntries(workloads.map(w => [w.key, {
        label: w.label,
        unit: w.unit,
        ...Object.fromEntries(TARGETS.map(t => {
          const xs = samples[w.key][t]
          return [t, { runs: xs, median: median(xs), min: Math.min(...xs), max: Math.max(...xs) }]
        })),
        bslfsToBindfs: median(samples[w.key].bslfs) / median(samples[w.key].bindfs),
        bslfsToNative: median(samples[w.key].bslfs) / median(samples[w.key].native)
      }]))
      const out = { date: new Date().toISOString(), kernel: release(), runs: opts.runs, sizeMiB: opts.sizeMiB, files: opts.files, bindfsOptions, bslfsOptions: bslfsFuseOptions(), results, bslfsPeakRssKiB: peakRssKiB }
      await writeFile(opts.json, JSON.stringify(out, null, 2) + '\n')
      console.log(`results written to ${opts.json}`)
    }
  } catch (err) {
    failed = true
    console.error(`bench: ${(err as Error).message}`)
  } finally {
    startCleanup()
    await cleanup(root, p.bindfsMnt, p.bslfsMnt)
  }
  const sig = stoppedBy()
  if (sig) process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1))
  if (failed) process.exit(1)
}

/** Unmount both FUSE mounts (retrying a busy one, then detaching it) and remove the temp dir once nothing is mounted in it. */
async function cleanup (root: string, bindfsMnt: string, bslfsMnt: string): Promise<void> {
  const unmounts: Array<[string, string[][]]> = [
    [bindfsMnt, [['fusermount', '-u', bindfsMnt], ['fusermount', '-uz', bindfsMnt]]],
    [bslfsMnt, [[process.execPath, bslfsBin, 'unmount', bslfsMnt], [process.execPath, bslfsBin, 'unmount', '--lazy', bslfsMnt]]]
  ]
  for (const [mnt, [strict, lazy]] of unmounts) {
    for (let attempt = 1; (await mountLine(mnt)) && attempt <= 6; attempt++) {
      const [cmd, ...args] = attempt < 6 ? strict : lazy
      try { await run(cmd, args) } catch (err) { if (attempt >= 5) console.error(`bench: ${(err as Error).message}`) }
      if (await mountLine(mnt)) await sleep(1000)
    }
  }
  const left = (await readFile('/proc/mounts', 'utf8')).split('\n').filter(l => (l.split(' ')[1] ?? '').startsWith(root + '/'))
  if (left.length) {
    console.error(`bench: still mounted, leaving ${root} in place:\n${left.join('\n')}`)
    return
  }
  await rm(root, { recursive: true, force: true })
}

main().catch(err => { console.error(err); process.exit(1) })
