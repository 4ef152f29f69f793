/**
 * The workloads, one function each, run in a target's directory: fio for
 * sequential, random and parallel I/O, a Python loop for metadata, tar and rm
 * for a real tree. Each resolves with one figure where higher is better.
 */
import { existsSync, readdirSync, statSync } from 'node:fs'
import { mkdir, readdir, readFile, rm, stat } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { fmtBytes, fmtSize } from './report'
import { dropCaches, run, timed } from './proc'

export const python = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3'

/** Random reads stop after a quarter of the file (at most RANDREAD_MAX_MIB: no block read twice) or RANDREAD_SECS, whichever is first. */
const RANDREAD_MAX_MIB = 64
const RANDREAD_SECS = 10
/** Parallel writers, each writing its share of --size. */
const WRITERS = 4
/** The tree for tar: whole packages of node_modules, in name order, until this many files. */
const TREE_FILES = 3000
/** Packages left out of the tree: bundles and binaries (any file over 1 MiB), and ones bigger than a quarter of the tree. */
const TREE_MAX_FILE_BYTES = 1 << 20
const TREE_MAX_PACKAGE_FILES = 1000

export interface Workload {
  key: string
  label: string
  unit: string
  /** A time per operation: lower is better; reported in a table of its own, beside JuiceFS's published figure. */
  latency?: { juicefsPgUs?: number }
}

export interface Options { sizeMiB: number, files: number }

/** The tarball of a real tree, made once per bench run. */
export interface Tree { tarball: string, files: number, dirs: number, bytes: number, tarBytes: number, packages: number }

/** The workloads in the order they are reported (and run). */
export function workloads (o: Options, tree: Tree): Workload[] {
  const size = fmtSize(o.sizeMiB)
  return [
    { key: 'write', label: `seq write ${size} (fio bs=1M psync end_fsync=1)`, unit: 'MB/s' },
    { key: 'read', label: `seq read ${size} (fio bs=1M, caches dropped)`, unit: 'MB/s' },
    { key: 'reread', label: `seq re-read ${size} (fio bs=1M, warm: caches kept)`, unit: 'MB/s' },
    { key: 'randread', label: `random read 4 KiB (fio, ${fmtSize(randReadMiB(o.sizeMiB))} or ${RANDREAD_SECS} s, caches dropped)`, unit: 'IOPS' },
    { key: 'copy', label: `copy_file_range of ${size} (python, served by the filesystem)`, unit: 'MB/s' },
    { key: 'copyrw', label: `copy ${size} by read and write (dd bs=1M: the fallback)`, unit: 'MB/s' },
    { key: 'sparsecp', label: `cp --sparse=always of ${fmtSize(SPARSE_MIB)} holding 4 KiB`, unit: 'GB/s apparent' },
    { key: 'parwrite', label: `${WRITERS} writers × ${fmtSize(writerMiB(o.sizeMiB))} (fio bs=1M end_fsync=1)`, unit: 'MB/s' },
    { key: 'create', label: `create ${o.files} empty files`, unit: 'ops/s' },
    { key: 'stat', label: `stat ${o.files} files`, unit: 'ops/s' },
    { key: 'unlink', label: `unlink ${o.files} files`, unit: 'ops/s' },
    { key: 'createUs', label: `create (open O_CREAT|O_EXCL + close; of ${o.files})`, unit: 'µs/op', latency: { juicefsPgUs: 844 } },
    { key: 'lookupUs', label: 'lookup (stat, the kernel\'s dentries and inodes dropped)', unit: 'µs/op', latency: { juicefsPgUs: 375 } },
    { key: 'getattrUs', label: 'getattr (statx AT_STATX_FORCE_SYNC: the kernel asks the daemon)', unit: 'µs/op', latency: { juicefsPgUs: 350 } },
    { key: 'flockUs', label: `flock lock+unlock pair, uncontended (python, ${FLOCK_PAIRS} pairs)`, unit: 'µs/op', latency: {} },
    { key: 'untar', label: `tar -x ${tree.files} files, ${tree.dirs} dirs, ${fmtBytes(tree.bytes)}`, unit: 'files/s' },
    { key: 'rmrf', label: `rm -rf of that tree`, unit: 'files/s' }
  ]
}

/** One run of every workload in DIR; everything it writes is removed again. */
export async function runOnce (dir: string, o: Options, tree: Tree): Promise<Record<string, number>> {
  const file = join(dir, 'bench.dat')
  const r: Record<string, number> = {}
  await dropCaches()
  r.write = await seqWrite(file, o.sizeMiB)
  await dropCaches()
  r.read = await seqRead(file, o.sizeMiB, true)
  r.reread = await seqRead(file, o.sizeMiB, false)
  await dropCaches()
  r.randread = await randRead(file, o.sizeMiB)
  Object.assign(r, await copies(file, o.sizeMiB))
  await rm(file)
  r.sparsecp = await sparseCopy(dir)
  await dropCaches()
  r.parwrite = await parallelWrite(dir, o.sizeMiB)
  await run('sync', [])
  Object.assign(r, await metadata(join(dir, 'meta'), o.files))
  r.flockUs = await flockPairs(join(dir, 'flock.dat'))
  Object.assign(r, await untarAndRemove(join(dir, 'tree'), tree))
  return r
}

interface FioIo { io_bytes: number, bw_bytes: number, iops: number }
interface FioJob { error: number, read: FioIo, write: FioIo }

/** Run fio (psync, JSON output) and return its first job (the only one, or the group with group_reporting). */
async function fio (what: string, args: string[]): Promise<FioJob> {
  const { stdout } = await run('fio', ['--ioengine=psync', '--output-format=json', ...args])
  // fio may print notes before its JSON.
  const job = JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0] as FioJob
  if (job.error) throw new Error(`fio ${what}: error ${job.error}`)
  return job
}

/** Check that fio moved exactly the bytes asked for: a short transfer would make a rate meaningless. */
function checkBytes (what: string, io: FioIo, mib: number): void {
  if (io.io_bytes !== mib * 1048576) throw new Error(`fio ${what}: moved ${io.io_bytes} bytes, not ${mib} MiB`)
}

/** Sequential write, bs 1 MiB, fsync at the end (fio's runtime includes it): MB/s. */
export async function seqWrite (file: string, mib: number): Promise<number> {
  const job = await fio(`write ${file}`, ['--name=seqwrite', `--filename=${file}`, '--rw=write', '--bs=1M', `--size=${mib}M`, '--end_fsync=1'])
  checkBytes(`write ${file}`, job.write, mib)
  return job.write.bw_bytes / 1e6
}

/** Sequential read, bs 1 MiB: MB/s. Warm, fio must not invalidate the file's cached pages first (it does by default). */
async function seqRead (file: string, mib: number, cold: boolean): Promise<number> {
  const job = await fio(`read ${file}`, ['--name=seqread', `--filename=${file}`, '--rw=read', '--bs=1M', `--size=${mib}M`,
    ...(cold ? [] : ['--invalidate=0'])])
  checkBytes(`read ${file}`, job.read, mib)
  return job.read.bw_bytes / 1e6
}

const randReadMiB = (mib: number): number => Math.max(1, Math.min(RANDREAD_MAX_MIB, Math.floor(mib / 4)))
const writerMiB = (mib: number): number => Math.max(1, Math.floor(mib / WRITERS))

/** Random 4 KiB reads over the whole file, each offset once, until randReadMiB or RANDREAD_SECS: IOPS. */
async function randRead (file: string, mib: number): Promise<number> {
  const job = await fio(`randread ${file}`, ['--name=randread', `--filename=${file}`, '--rw=randread', '--bs=4k', `--size=${mib}M`,
    `--io_size=${randReadMiB(mib)}M`, `--runtime=${RANDREAD_SECS}`])
  if (job.read.io_bytes <= 0) throw new Error(`fio randread ${file}: read nothing`)
  return job.read.iops
}

/** WRITERS fio jobs, each writing its own file sequentially, fsync at the end: aggregate MB/s. */
async function parallelWrite (dir: string, mib: number): Promise<number> {
  const each = writerMiB(mib)
  const job = await fio(`${WRITERS} writers in ${dir}`, ['--name=parwrite', `--directory=${dir}`, '--rw=write', '--bs=1M', `--size=${each}M`,
    `--numjobs=${WRITERS}`, '--end_fsync=1', '--group_reporting'])
  checkBytes(`${WRITERS} writers in ${dir}`, job.write, each * WRITERS)
  for (const name of await readdir(dir)) if (name.startsWith('parwrite.')) await rm(join(dir, name))
  return job.write.bw_bytes / 1e6
}

/** The apparent size of the sparse file cp copies. */
const SPARSE_MIB = 10 * 1024

/** copy_file_range(2) of a whole file, 1 GiB per call, then fsync (cp on coreutils 9.1 uses it only for a file that looks sparse). */
const COPY_SCRIPT = `
import os, sys
fi = os.open(sys.argv[1], os.O_RDONLY)
fo = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
while os.copy_file_range(fi, fo, 1 << 30):
    pass
os.fsync(fo)
os.close(fi)
os.close(fo)
`

/**
 * FILE copied by copy_file_range (which a filesystem may serve without the
 * bytes crossing into the kernel and back; else the kernel copies by splice)
 * and by dd's reads and writes; each copy synced to its disk, then removed:
 * MB/s of each.
 */
async function copies (file: string, mib: number): Promise<{ copy: number, copyrw: number }> {
  const a = `${file}.cfr`
  const b = `${file}.dd`
  const copy = await timed(async () => await run(python, ['-c', COPY_SCRIPT, file, a]))
  await rm(a)
  const copyrw = await timed(async () => { await run('dd', [`if=${file}`, `of=${b}`, 'bs=1M', 'status=none']); await run('sync', [b]) })
  await rm(b)
  return { copy: mib * 1048576 / 1e6 / copy.secs, copyrw: mib * 1048576 / 1e6 / copyrw.secs }
}

/** A SPARSE_MIB file with 4 KiB of data in its middle, copied with cp --sparse=always (SEEK_DATA/SEEK_HOLE): apparent GB/s. */
async function sparseCopy (dir: string): Promise<number> {
  const src = join(dir, 'sparse.dat')
  const dst = join(dir, 'sparse.copy')
  await run('truncate', ['-s', `${SPARSE_MIB}M`, src])
  await run('dd', ['if=/dev/urandom', `of=${src}`, 'bs=4k', 'count=1', `seek=${SPARSE_MIB * 128}`, 'conv=notrunc', 'status=none'])
  const t = await timed(async () => await run('cp', ['--sparse=always', src, dst]))
  await rm(src)
  await rm(dst)
  return SPARSE_MIB * 1048576 / 1e9 / t.secs
}

/**
 * Create, stat, look up and getattr, then unlink N empty files in a new
 * directory; prints the seconds each phase took. Lookup: after dropping the
 * kernel's dentries and inodes, each stat is a LOOKUP to the filesystem.
 * Getattr: statx with AT_STATX_FORCE_SYNC, which makes the kernel ask the
 * filesystem even when it holds the attributes.
 */
const META_SCRIPT = `
import ctypes, json, os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
os.mkdir(d)
names = [os.path.join(d, 'f%07d' % i) for i in range(n)]
flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
t0 = time.perf_counter()
for p in names: os.close(os.open(p, flags, 0o644))
t1 = time.perf_counter()
for p in names: os.stat(p)
t2 = time.perf_counter()
os.sync()
with open('/proc/sys/vm/drop_caches', 'w') as f: f.write('2')
t3 = time.perf_counter()
for p in names: os.stat(p)
t4 = time.perf_counter()
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(256)
raw = [p.encode() for p in names]
t5 = time.perf_counter()
for p in raw:
    if libc.statx(-100, p, 0x2000, 0x7ff, buf) != 0: raise OSError(ctypes.get_errno(), 'statx ' + p.decode())
t6 = time.perf_counter()
for p in names: os.unlink(p)
t7 = time.perf_counter()
os.rmdir(d)
print(json.dumps({'create': t1 - t0, 'stat': t2 - t1, 'lookup': t4 - t3, 'getattr': t6 - t5, 'unlink': t7 - t6}))
`

/** The metadata phases in N files in one directory: ops/s of create, stat and unlink, µs per create, lookup and getattr. */
async function metadata (dir: string, files: number): Promise<Record<'create' | 'stat' | 'unlink' | 'createUs' | 'lookupUs' | 'getattrUs', number>> {
  const { stdout } = await run(python, ['-c', META_SCRIPT, dir, String(files)])
  const secs = JSON.parse(stdout) as { create: number, stat: number, lookup: number, getattr: number, unlink: number }
  const us = (s: number): number => s * 1e6 / files
  return {
    create: files / secs.create,
    stat: files / secs.stat,
    unlink: files / secs.unlink,
    createUs: us(secs.create),
    lookupUs: us(secs.lookup),
    getattrUs: us(secs.getattr)
  }
}

/** Lock and unlock pairs timed: on a shared filesystem each goes to the directory (two transactions), elsewhere the kernel keeps them. */
const FLOCK_PAIRS = 1000

/** µs per uncontended flock(LOCK_EX) + flock(LOCK_UN) on one open file. */
async function flockPairs (file: string): Promise<number> {
  const { stdout } = await run(python, ['-c', `
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
t0 = time.perf_counter()
for _ in range(int(sys.argv[2])):
    fcntl.flock(fd, fcntl.LOCK_EX)
    fcntl.flock(fd, fcntl.LOCK_UN)
print(time.perf_counter() - t0)
os.close(fd)
os.unlink(sys.argv[1])
`, file, String(FLOCK_PAIRS)])
  return Number(stdout.trim()) * 1e6 / FLOCK_PAIRS
}

/** `tar -xf` the tree into DIR, then `rm -rf` it: files/s of each. The tarball is read into the page cache first, so its disk stays out of it. */
async function untarAndRemove (dir: string, tree: Tree): Promise<{ untar: number, rmrf: number }> {
  await readFile(tree.tarball)
  await mkdir(dir)
  const untar = await timed(async () => await run('tar', ['-xf', tree.tarball, '-C', dir]))
  const rmrf = await timed(async () => await run('rm', ['-rf', dir]))
  return { untar: tree.files / untar.secs, rmrf: tree.files / rmrf.secs }
}

/** Files, dirs and bytes under DIR, and its largest file. */
function survey (dir: string): { files: number, dirs: number, bytes: number, largest: number } {
  const s = { files: 0, dirs: 1, bytes: 0, largest: 0 }
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    if (e.isDirectory()) {
      const sub = survey(p)
      s.files += sub.files; s.dirs += sub.dirs; s.bytes += sub.bytes; s.largest = Math.max(s.largest, sub.largest)
    } else if (e.isFile()) {
      const size = statSync(p).size
      s.files++; s.bytes += size; s.largest = Math.max(s.largest, size)
    }
  }
  return s
}

/**
 * The tarball for the tar workload, in ROOT: whole packages of this repo's
 * node_modules (there after `npm ci` on every machine), in name order, leaving
 * out bundles, binaries and very big packages, until TREE_FILES files.
 */
export async function buildTree (root: string): Promise<Tree> {
  const nm = resolve(__dirname, '..', '..', 'node_modules')
  if (!existsSync(nm)) throw new Error(`no ${nm}: run \`npm ci\` first (the tar workload uses part of it)`)
  const packages: string[] = []
  for (const name of readdirSync(nm).sort()) {
    if (name.startsWith('.')) continue
    if (name.startsWith('@')) packages.push(...readdirSync(join(nm, name)).sort().map(p => `${name}/${p}`))
    else packages.push(name)
  }
  const chosen: string[] = []
  const total = { files: 0, dirs: 0, bytes: 0 }
  for (const pkg of packages) {
    if (total.files >= TREE_FILES) break
    if (!statSync(join(nm, pkg)).isDirectory()) continue
    const s = survey(join(nm, pkg))
    if (s.files > TREE_MAX_PACKAGE_FILES || s.largest > TREE_MAX_FILE_BYTES) continue
    chosen.push(pkg)
    total.files += s.files; total.dirs += s.dirs; total.bytes += s.bytes
  }
  if (total.files < TREE_FILES / 2) throw new Error(`${nm} has only ${total.files} files in packages fit for the tar workload; run \`npm ci\``)
  const tarball = join(root, 'tree.tar')
  await run('tar', ['-cf', tarball, '-C', nm, ...chosen])
  // Scoped packages bring their @scope dir along.
  total.dirs += new Set(chosen.filter(p => p.startsWith('@')).map(p => p.split('/')[0])).size
  return { tarball, ...total, tarBytes: (await stat(tarball)).size, packages: chosen.length }
}
