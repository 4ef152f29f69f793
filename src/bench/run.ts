/**
 * `npm run bench`: bslfs against a plain local directory ("native") and bindfs
 * (the C FUSE passthrough) on the same disk, bslfs with its data volume mirrored
 * across two block servers on loopback ("bslfs-mirror") or on one
 * ("bslfs-remote", on request; "bslfs-pg" is that with the directory on a
 * PostgreSQL the bench starts, on request), and a GlusterFS replica-2 volume on this host
 * when glusterd is installed. Runs are interleaved round-robin (run 1 of every
 * target, then run 2, ...) and reported as median (min–max).
 *
 *   npm run bench -- [--runs N] [--size MIB] [--files N] [--targets LIST] [--dir DIR] [--json FILE] [--quick]
 *   npm run bench -- --baseline CHECKOUT [...]   also the bslfs of another built checkout (before a change)
 *   npm run bench -- --scale [--scale-files N] [--scale-size GIB] [--dir DIR]
 */
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises'
import { release } from 'node:os'
import { join, resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { cpuSeconds, mountLine, peakRssKiB, startCleanup, stoppedBy, Teardown, trapSignals } from './proc'
import { cell, fmt, fmtBytes, fmtRss, median, table } from './report'
import { scaleMode } from './scale'
import {
  BASELINE_TARGETS, bindfsTarget, bslfsFuseOptions, checkoutBin, bslfsPgTarget, bslfsTarget, glusterTarget, nativeTarget, onPath, removeUnlessMounted, type Target,
  type TargetName, TARGETS, watched
} from './targets'
import { buildTree, runOnce, type Tree, type Workload, workloads } from './workloads'

/** bslfs-remote is left out by default: it costs a quarter of the run and says little that bslfs-mirror does not. */
const DEFAULT_TARGETS: TargetName[] = ['native', 'bindfs', 'bslfs', 'bslfs-mirror', 'glusterfs']

const USAGE = `usage: npm run bench -- [options]
  (targets: bslfs-remote = data on one loopback block server; bslfs-pg = the same with the directory on a
   PostgreSQL on loopback the bench starts itself, which needs the postgresql package and a postgres user)
  --runs N       runs per target (default 3; 1 with --quick)
  --size MIB     sequential write/read size in MiB (default 1024; 64 with --quick)
  --files N      files to create, stat and unlink (default 10000; 1000 with --quick)
  --targets LIST comma-separated, from ${TARGETS.join(',')}
                 (default: ${DEFAULT_TARGETS.join(',')}; glusterfs only when glusterd is installed)
  --baseline DIR also bslfs-base and bslfs-mirror-base: the bslfs of another built checkout
                 (the code before a change), interleaved with this one's in the same run
  --dir DIR      where the temporary directories go (default /var/tmp, the disk the bslfs STATE is on)
  --json FILE    also write the results as JSON
  --quick        small sizes and one run: a smoke check
  --scale        instead: the scale and memory check of bslfs on a local volume
  --scale-files N   files in one directory for --scale (default 100000, a multiple of 1000)
  --scale-size GIB  sequential write for --scale's memory check (default 10)`

/** Ratios of medians, "target / reference": every figure is higher-is-better, so above 1 is faster. */
const RATIOS: Array<{ label: string, num: TargetName, den: TargetName }> = [
  { label: 'bslfs/bindfs', num: 'bslfs', den: 'bindfs' },
  { label: 'remote/bindfs', num: 'bslfs-remote', den: 'bindfs' },
  { label: 'mirror/bindfs', num: 'bslfs-mirror', den: 'bindfs' },
  { label: 'bslfs/gluster', num: 'bslfs', den: 'glusterfs' },
  { label: 'mirror/gluster', num: 'bslfs-mirror', den: 'glusterfs' },
  { label: 'bslfs/native', num: 'bslfs', den: 'native' },
  { label: 'remote/local', num: 'bslfs-remote', den: 'bslfs' },
  { label: 'mirror/local', num: 'bslfs-mirror', den: 'bslfs' },
  { label: 'pg/remote', num: 'bslfs-pg', den: 'bslfs-remote' },
  { label: 'pg/local', num: 'bslfs-pg', den: 'bslfs' },
  { label: 'mirror/remote', num: 'bslfs-mirror', den: 'bslfs-remote' },
  { label: 'tls/plain', num: 'bslfs-mirror-tls', den: 'bslfs-mirror' },
  { label: 'metrics/off', num: 'bslfs-metrics', den: 'bslfs' },
  { label: 'bslfs/base', num: 'bslfs', den: 'bslfs-base' },
  { label: 'mirror/base', num: 'bslfs-mirror', den: 'bslfs-mirror-base' }
]

function usageError (message: string): never {
  console.error(`bench: ${message}\n${USAGE}`)
  process.exit(2)
}

function parseOptions () {
  const { values } = parseArgs({
    options: {
      runs: { type: 'string' },
      size: { type: 'string' },
      files: { type: 'string' },
      targets: { type: 'string' },
      baseline: { type: 'string' },
      dir: { type: 'string', default: '/var/tmp' },
      json: { type: 'string' },
      quick: { type: 'boolean', default: false },
      scale: { type: 'boolean', default: false },
      'scale-files': { type: 'string' },
      'scale-size': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false }
    }
  })
  if (values.help) { console.log(USAGE); process.exit(0) }
  const num = (name: string, text: string | undefined, dflt: number, integer = true): number => {
    const n = text === undefined ? dflt : Number(text)
    if (!(integer ? Number.isInteger(n) : Number.isFinite(n)) || n <= 0) {
      usageError(`--${name} wants a positive ${integer ? 'integer' : 'number'}, not "${text}"`)
    }
    return n
  }
  const q = values.quick
  let targets = values.baseline === undefined ? DEFAULT_TARGETS : TARGETS.filter(t => DEFAULT_TARGETS.includes(t) || BASELINE_TARGETS.includes(t))
  if (values.targets !== undefined) {
    const names = values.targets.split(',').map(t => t.trim()).filter(t => t !== '')
    const unknown = names.filter(t => !(TARGETS as readonly string[]).includes(t))
    if (names.length === 0 || unknown.length) usageError(`--targets wants a comma-separated list from ${TARGETS.join(',')}, not "${values.targets}"`)
    targets = TARGETS.filter(t => names.includes(t)) // the usual column order, each once
  }
  if (values.baseline === undefined && targets.some(t => BASELINE_TARGETS.includes(t))) {
    usageError(`${BASELINE_TARGETS.join(' and ')} run another checkout's bslfs: give it with --baseline DIR`)
  }
  const scaleFiles = num('scale-files', values['scale-files'], 100_000)
  if (scaleFiles < 2000 || scaleFiles % 1000 !== 0) usageError(`--scale-files wants a multiple of 1000 of at least 2000 (it is timed in batches of 1000), not ${scaleFiles}`)
  return {
    runs: num('runs', values.runs, q ? 1 : 3),
    sizeMiB: num('size', values.size, q ? 64 : 1024),
    files: num('files', values.files, q ? 1000 : 10000),
    targets,
    baseline: values.baseline,
    dir: resolve(values.dir),
    json: values.json,
    scale: values.scale,
    scaleFiles,
    scaleGiB: num('scale-size', values['scale-size'], 10, false)
  }
}

type Options = ReturnType<typeof parseOptions>

/** Set up one target; glusterfs is optional, so a failure there is a note and the target is skipped. */
async function setUp (name: TargetName, root: string, td: Teardown, opts: Options): Promise<Target | undefined> {
  switch (name) {
    case 'native': return await nativeTarget(root)
    case 'bindfs': return await bindfsTarget(root, td)
    case 'bslfs': return await bslfsTarget(root, td, name, 'local')
    case 'bslfs-remote': return await bslfsTarget(root, td, name, 'remote')
    case 'bslfs-pg': return await bslfsPgTarget(root, td)
    case 'bslfs-mirror': return await bslfsTarget(root, td, name, 'mirror')
    case 'bslfs-mirror-tls': return await bslfsTarget(root, td, name, 'mirror-tls')
    case 'bslfs-base': return await bslfsTarget(root, td, name, 'local', await checkoutBin(opts.baseline as string))
    case 'bslfs-metrics': return await bslfsTarget(root, td, name, 'local', undefined, undefined, true)
    case 'bslfs-mirror-base': return await bslfsTarget(root, td, name, 'mirror', await checkoutBin(opts.baseline as string))
    case 'glusterfs':
      if (!await onPath('glusterd')) {
        console.log('  note: glusterfs skipped: glusterd is not on PATH (the glusterfs-server package is not installed)')
        return undefined
      }
      try {
        return await glusterTarget(root, td)
      } catch (err) {
        if (stoppedBy()) throw err
        console.log(`  note: glusterfs skipped: its set-up failed: ${(err as Error).message}`)
        return undefined
      }
  }
}

/** The peak RSS of each watched process of each target, kept across samples (a restarted daemon keeps its own row). */
class PeakRss {
  readonly rows = new Map<string, { label: string, pid: number, kib: number }>()
  async sample (t: Target): Promise<void> {
    for (const w of await t.processes()) {
      if (w.pid === undefined) continue
      const kib = await peakRssKiB(w.pid)
      if (kib === undefined) continue
      const key = `${w.label} ${w.pid}`
      this.rows.set(key, { label: w.label, pid: w.pid, kib: Math.max(kib, this.rows.get(key)?.kib ?? 0) })
    }
  }
}

/** The CPU seconds each watched process used per run (all workloads of one run), by target and process label. */
class CpuPerRun {
  readonly rows = new Map<string, { target: TargetName, label: string, secs: number[] }>()
  /** Run `fn` and note how much CPU each of `t`'s processes used meanwhile. */
  async around<T> (t: Target, fn: () => Promise<T>): Promise<T> {
    const before = new Map<string, number>()
    for (const w of await t.processes()) {
      const c = w.pid === undefined ? undefined : await cpuSeconds(w.pid)
      if (c !== undefined) before.set(`${w.label} ${w.pid}`, c)
    }
    const out = await fn()
    for (const w of await t.processes()) {
      const key = `${w.label} ${w.pid}`
      const start = before.get(key)
      const now = w.pid === undefined ? undefined : await cpuSeconds(w.pid)
      if (start === undefined || now === undefined) continue
      const row = this.rows.get(w.label) ?? { target: t.name, label: w.label, secs: [] }
      row.secs.push(now - start)
      this.rows.set(w.label, row)
    }
    return out
  }
}

/** The samples of every workload on every target that ran: the figures, their ratios, and how they are shown. */
class Results {
  readonly ratios: typeof RATIOS
  constructor (readonly list: Workload[], readonly samples: Record<string, Partial<Record<TargetName, number[]>>>, readonly ran: TargetName[]) {
    this.ratios = RATIOS.filter(r => ran.includes(r.num) && ran.includes(r.den))
  }

  xs (key: string, t: TargetName): number[] { return this.samples[key][t] ?? [] }
  ratio (key: string, num: TargetName, den: TargetName): number { return median(this.xs(key, num)) / median(this.xs(key, den)) }

  /** The table of figures, the table of ratios, the peak RSS of the processes behind the targets. */
  print (runs: number, peaks: PeakRss, cpu: CpuPerRun): void {
    const { list, ran, ratios } = this
    console.log(`\nmedian (min–max) of ${runs} run(s); higher is better\n`)
    const rates = list.filter(w => !w.latency)
    const times = list.filter(w => w.latency)
    console.log(table([['workload', 'unit', ...ran], ...rates.map(w => [w.label, w.unit, ...ran.map(t => cell(this.xs(w.key, t)))])]))
    console.log('(caches dropped: the kernel\'s page, dentry and inode caches; a FUSE daemon\'s own, such as bslfs\'s recently read blocks, stay)')
    if (ratios.length) {
      const spelled = ratios.filter(r => r.label !== `${r.num}/${r.den}`).map(r => `${r.label} = ${r.num} / ${r.den}`)
      console.log(`\nratios of medians, target / reference: above 1 the target is faster${spelled.length ? `\n(${spelled.join('; ')})` : ''}\n`)
      console.log(table([['workload', ...ratios.map(r => r.label)],
        ...rates.map(w => [w.label, ...ratios.map(r => this.ratio(w.key, r.num, r.den).toFixed(2))])]))
    }
    if (times.length) {
      console.log('\nmetadata: µs per operation through the mount, median (min–max); lower is better.\n' +
        'JuiceFS: its published figures for PostgreSQL (docs/en/benchmark/metadata_engines_benchmark.md, its own Go benchmark of the metadata API)\n')
      console.log(table([['operation', ...ran, 'JuiceFS (PostgreSQL)'],
        ...times.map(w => [w.label, ...ran.map(t => cell(this.xs(w.key, t))), String(w.latency!.juicefsPgUs ?? '—')])]))
    }
    if (peaks.rows.size) {
      console.log('\npeak RSS (VmHWM, read after each run, before unmounting)')
      console.log(table([...peaks.rows.values()].map(p => [`${p.label} (pid ${p.pid})`, fmtRss(p.kib)]), '  '))
    }
    if (cpu.rows.size) {
      console.log('\nCPU seconds (user + system) per run of every workload, median (min–max): what each process spent, little moved by other load')
      console.log(table([...cpu.rows.values()].map(r => [r.label, cell(r.secs)]), '  '))
      const ratioOf = (num: TargetName, den: TargetName): string | undefined => {
        const a = [...cpu.rows.values()].find(r => r.target === num && / mount daemon$/.test(r.label))
        const b = [...cpu.rows.values()].find(r => r.target === den && / mount daemon$/.test(r.label))
        return a && b ? `${num}/${den} ${(median(a.secs) / median(b.secs)).toFixed(3)}` : undefined
      }
      const cpuRatios = ratios.map(r => ratioOf(r.num, r.den)).filter((x): x is string => x !== undefined)
      if (cpuRatios.length) console.log(`mount daemon CPU per run, ratio of medians (below 1 the target spends less): ${cpuRatios.join('; ')}`)
    }
    if (ran.includes('glusterfs')) console.log('(GlusterFS processes are not sampled for RSS or CPU)')
  }

  async writeJson (file: string, opts: Options, tree: Tree, targets: Target[], peaks: PeakRss, cpu: CpuPerRun): Promise<void> {
    const stats = (xs: number[]): object => ({ runs: xs, median: median(xs), min: Math.min(...xs), max: Math.max(...xs) })
    const out = {
      date: new Date().toISOString(),
      kernel: release(),
      runs: opts.runs,
      sizeMiB: opts.sizeMiB,
      files: opts.files,
      tree: { files: tree.files, dirs: tree.dirs, bytes: tree.bytes, tarBytes: tree.tarBytes, packages: tree.packages },
      targets: Object.fromEntries(targets.map(t => [t.name, t.description])),
      bslfsOptions: bslfsFuseOptions(),
      results: Object.fromEntries(this.list.map(w => [w.key, {
        label: w.label,
        unit: w.unit,
        ...Object.fromEntries(this.ran.map(t => [t, stats(this.xs(w.key, t))])),
        ratios: Object.fromEntries(this.ratios.map(r => [`${r.num}/${r.den}`, this.ratio(w.key, r.num, r.den)]))
      }])),
      peakRssKiB: [...peaks.rows.values()],
      cpuSecondsPerRun: [...cpu.rows.values()]
    }
    await writeFile(file, JSON.stringify(out, null, 2) + '\n')
    console.log(`results written to ${file}`)
  }
}

async function compare (opts: Options): Promise<boolean> {
  await mkdir(opts.dir, { recursive: true })
  const root = await mkdtemp(join(opts.dir, 'bslfs-bench-'))
  const td = new Teardown()
  td.add(`remove ${root}`, async () => await removeUnlessMounted(root))
  let failed = false
  try {
    console.log(`bslfs benchmark: ${opts.runs} run(s) per target, round-robin; kernel ${release()}; temp dir ${root}`)
    const tree = await buildTree(root)
    console.log(`  tar workload: ${tree.tarball}, ${fmtBytes(tree.tarBytes)}: ${tree.files} files, ${tree.dirs} dirs, ` +
      `${fmtBytes(tree.bytes)} of file data, from ${tree.packages} packages of node_modules`)
    const targets: Target[] = []
    for (const name of opts.targets) {
      const t = await setUp(name, root, td, opts)
      if (t) targets.push(t)
    }
    if (targets.length === 0) throw new Error(`none of the targets ${opts.targets.join(',')} could be set up`)
    const width = Math.max(...targets.map(t => t.name.length)) + 1
    for (const t of targets) console.log(`  ${`${t.name}:`.padEnd(width)} ${t.description}`)
    for (const t of targets) if (t.name !== 'native') console.log(`  /proc/mounts: ${await mountLine(t.dir)}`)

    const list = workloads(opts, tree)
    const samples: Record<string, Partial<Record<TargetName, number[]>>> = Object.fromEntries(list.map(w => [w.key, {}]))
    const peaks = new PeakRss()
    const cpu = new CpuPerRun()
    for (let r = 1; r <= opts.runs; r++) {
      for (const t of targets) {
        const res = await cpu.around(t, async () => await watched(t, async () => await runOnce(t.dir, opts, tree)))
        for (const w of list) (samples[w.key][t.name] ??= []).push(res[w.key])
        // VmHWM is a high-water mark: sampled after each run, before any unmount, it covers all of them.
        await peaks.sample(t)
        console.log(`  run ${r}/${opts.runs} ${t.name.padEnd(width - 1)} ` + list.map(w => `${w.key} ${fmt(res[w.key])}`).join(', '))
      }
    }

    const results = new Results(list, samples, targets.map(t => t.name))
    results.print(opts.runs, peaks, cpu)
    if (opts.json) await results.writeJson(opts.json, opts, tree, targets, peaks, cpu)
  } catch (err) {
    failed = true
    console.error(`bench: ${(err as Error).message}`)
  } finally {
    startCleanup()
    if (!await td.run()) failed = true
  }
  return !failed
}

async function main (): Promise<void> {
  const opts = parseOptions()
  trapSignals()
  const ok = opts.scale ? await scaleMode({ dir: opts.dir, files: opts.scaleFiles, sizeGiB: opts.scaleGiB }) : await compare(opts)
  const sig = stoppedBy()
  if (sig) process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1))
  if (!ok) process.exit(1)
}

main().catch(err => { console.error(err); process.exit(1) })
