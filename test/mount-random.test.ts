// A random-operation integrity test through the kernel: thousands of random writes, truncates,
// reads, stats, fsyncs and close/reopens at random offsets and sizes, driven from this process
// with node's fs calls on a handful of mounted files (several descriptors per file: read-write,
// read-only, O_APPEND and O_DIRECT, which goes past the page cache to the mount), checked byte
// for byte against an in-memory model, with unmount/remount in between, on three filesystems:
//
//   local-64k    a local volume with 64 KiB blocks (operations cross block boundaries often)
//   local-1m     a local volume with the default 1 MiB blocks
//   mirror-256k  volume 10 mirrored across two block servers on loopback, 256 KiB blocks
//
// Now and then a batch of 2-4 operations on different files runs concurrently (the mount serves
// them in parallel), and a write or ftruncate runs at once with a read, close, fsync or fstat of
// the same file through another descriptor (checked against the model before and after). Before
// each unmount and after each mount, every file's size and whole content are compared with the
// model; after the last unmount, `bslfs fsck --json` must find the directory and the devices in
// agreement.
//
// The run is reproducible from its seed (printed first):
//   BSLFS_RANDOM_SEED=1234 tap test/mount-random.test.ts
// BSLFS_RANDOM_OPS=N overrides the operation count of every configuration, and
// BSLFS_RANDOM_CONFIGS=local-64k,mirror-256k picks configurations.
import t, { type Test } from 'tap'
import { spawnSync } from 'node:child_process'
import { randomInt } from 'node:crypto'
import * as fsp from 'node:fs/promises'
import { constants as fsc } from 'node:fs'
import { join } from 'node:path'
import {
  type BlockServer, type RunResult, bslfs, describeRun, isMounted, pidAlive, run, startBlockServer,
  target, volumeKind, waitFor
} from './helpers/mount'

const KiB = 1024
const MiB = 1024 * KiB

// ---------------------------------------------------------------------------
// A seeded PRNG (xoshiro128**, seeded through splitmix32)

class Rng {
  private s: Uint32Array
  constructor (seed: number) {
    let x = seed >>> 0
    const split = () => {
      x = (x + 0x9e3779b9) >>> 0
      let z = x
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0
      return (z ^ (z >>> 16)) >>> 0
    }
    this.s = new Uint32Array([split(), split(), split(), split()])
  }

  next (): number {
    const s = this.s
    const r = Math.imul(rotl(Math.imul(s[1]!, 5), 7), 9) >>> 0
    const tt = s[1]! << 9
    s[2]! ^= s[0]!
    s[3]! ^= s[1]!
    s[1]! ^= s[2]!
    s[0]! ^= s[3]!
    s[2]! ^= tt
    s[3] = rotl(s[3]!, 11)
    return r
  }

  /** A float in [0, 1). */
  float (): number { return (this.next() * 2 ** 21 + (this.next() >>> 11)) / 2 ** 53 }
  /** An integer in [0, n). */
  int (n: number): number { return Math.floor(this.float() * n) }
  /** An integer in [a, b]. */
  range (a: number, b: number): number { return b <= a ? a : a + this.int(b - a + 1) }
  chance (p: number): boolean { return this.float() < p }
  pick<T> (xs: readonly T[]): T { return xs[this.int(xs.length)]! }
  /** One of the keys, chosen with the weights given. */
  weighted<K extends string> (w: Record<K, number>): K {
    const entries = Object.entries(w) as Array<[K, number]>
    let r = this.float() * entries.reduce((n, [, x]) => n + x, 0)
    for (const [k, x] of entries) if ((r -= x) < 0) return k
    return entries[entries.length - 1]![0]
  }
}
function rotl (x: number, k: number): number { return ((x << k) | (x >>> (32 - k))) >>> 0 }

function parseSeed (s: string): number {
  const n = /^0x[0-9a-f]+$/i.test(s.trim()) ? parseInt(s.trim(), 16) : Number(s.trim())
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new Error(`BSLFS_RANDOM_SEED must be a 32-bit unsigned integer, not ${JSON.stringify(s)}`)
  return n
}

// ---------------------------------------------------------------------------
// Configurations

interface Config {
  name: string
  blockSize: number
  /** Mirrored across two block servers on loopback (else: the local volume of bslfs init). */
  mirror: boolean
  files: number
  ops: number
  /** Unmount + remount this many times during the run (one more at the end, for fsck). */
  remounts: number
  /** No write or truncate makes a file larger than this. */
  maxSize: number
  /** Write and read lengths: [weight, min, max]. */
  lengths: Array<[number, number, number]>
}

function configs (): Config[] {
  const override = process.env.BSLFS_RANDOM_OPS ? Number(process.env.BSLFS_RANDOM_OPS) : undefined
  const all: Config[] = [
    {
      name: 'local-64k',
      blockSize: 64 * KiB,
      mirror: false,
      files: 6,
      ops: 6000,
      remounts: 4,
      maxSize: 24 * 64 * KiB,
      lengths: [[30, 1, 64], [25, 1, 4 * KiB], [20, 4 * KiB, 48 * KiB], [17, 48 * KiB, 96 * KiB], [8, 96 * KiB, 200 * KiB]]
    },
    {
      name: 'local-1m',
      blockSize: MiB,
      mirror: false,
      files: 5,
      ops: 5000,
      remounts: 4,
      maxSize: 7 * MiB,
      // Offsets near block boundaries make short writes cross them; a few writes span blocks.
      lengths: [[30, 1, 64], [27, 1, 8 * KiB], [25, 8 * KiB, 128 * KiB], [14, 128 * KiB, 1100 * KiB], [4, MiB, 2560 * KiB]]
    },
    {
      name: 'mirror-256k',
      blockSize: 256 * KiB,
      mirror: true,
      files: 6,
      ops: 5000,
      remounts: 4,
      maxSize: 12 * 256 * KiB,
      lengths: [[30, 1, 64], [25, 1, 8 * KiB], [22, 8 * KiB, 96 * KiB], [16, 96 * KiB, 300 * KiB], [7, 256 * KiB, 700 * KiB]]
    }
  ]
  const pickNames = process.env.BSLFS_RANDOM_CONFIGS?.split(',').map((s) => s.trim()).filter(Boolean)
  return all
    .filter((c) => !pickNames || pickNames.includes(c.name))
    .map((c) => (override && override > 0 ? { ...c, ops: override } : c))
}

// ---------------------------------------------------------------------------
// The model: one buffer per file, zero beyond its size

class Model {
  readonly buf: Buffer
  size = 0
  constructor (capacity: number) { this.buf = Buffer.alloc(capacity) }

  write (pos: number, data: Buffer): void {
    data.copy(this.buf, pos)
    this.size = Math.max(this.size, pos + data.length)
  }

  truncate (n: number): void {
    if (n < this.size) this.buf.fill(0, n, this.size)
    this.size = n
  }

  /** What a read of `len` bytes at `pos` must return (short at EOF, empty past it). */
  read (pos: number, len: number): Buffer {
    if (pos >= this.size) return Buffer.alloc(0)
    return this.buf.subarray(pos, Math.min(pos + len, this.size))
  }
}

/** rw: O_RDWR; ro: O_RDONLY; append: O_RDWR|O_APPEND; direct: O_RDWR|O_DIRECT (past the page cache, straight to the mount). */
type Mode = 'rw' | 'ro' | 'append' | 'direct'
interface Handle { id: number, fh: fsp.FileHandle, mode: Mode }
interface TestFile { name: string, path: string, model: Model, handles: Handle[] }

const MODES: readonly Mode[] = ['rw', 'rw', 'ro', 'ro', 'append', 'direct', 'direct']

/** A difference from the model (or a failed call): `message` says what, `details` the bytes, the seed and the operations before it. */
class Mismatch extends Error {
  constructor (message: string, readonly details: string) { super(message) }
}

const hex = (b: Buffer) => b.toString('hex').replace(/(..)/g, '$1 ').trim()

/** Describe the first difference between what the model expects and what the mount returned. */
function difference (expected: Buffer, got: Buffer, base: number): string | null {
  const n = Math.min(expected.length, got.length)
  let i = 0
  while (i < n && expected[i] === got[i]) i++
  if (i === n && expected.length === got.length) return null
  let last = i
  let count = 0
  for (let j = i; j < n; j++) if (expected[j] !== got[j]) { last = j; count++ }
  const from = Math.max(0, i - 8)
  const lines = [
    i < n
      ? `first differing byte at file offset ${base + i} (${count} of the ${n} compared bytes differ, the last at offset ${base + last})`
      : `the bytes agree, but ${got.length} bytes came back where ${expected.length} were expected`,
    `  expected ${expected.length} bytes; at offset ${base + from}: ${hex(expected.subarray(from, from + 32)) || '(none)'}`,
    `  got      ${got.length} bytes; at offset ${base + from}: ${hex(got.subarray(from, from + 32)) || '(none)'}`
  ]
  return lines.join('\n')
}

// ---------------------------------------------------------------------------
// A filesystem to run against

interface Fs {
  base: string
  state: string
  mnt: string
  servers: BlockServer[]
  mount (): Promise<void>
  unmount (): Promise<void>
}

const mountedPoints = new Set<string>()
process.on('exit', () => {
  // Last line of defence: a test that dies never leaves a mount behind.
  for (const mnt of mountedPoints) if (isMounted(mnt)) spawnSync('fusermount', ['-uz', mnt], { stdio: 'ignore', timeout: 5000 })
})

async function must (args: string[], timeout = 120_000): Promise<RunResult> {
  const r = await bslfs(args, { timeout })
  if (r.code !== 0) throw new Error(`bslfs ${args.slice(0, 2).join(' ')} failed:\n${describeRun(r)}`)
  return r
}

async function daemonPid (state: string): Promise<number | undefined> {
  try {
    const pid = parseInt((await fsp.readFile(join(state, 'daemon.pid'), 'utf8')).trim(), 10)
    return pid > 0 && pidAlive(pid) ? pid : undefined
  } catch {
    return undefined
  }
}

async function makeFs (tt: Test, cfg: Config): Promise<Fs> {
  const base = await fsp.mkdtemp('/tmp/bslfs-random-')
  const state = join(base, 'state')
  const mnt = join(base, 'mnt')
  await fsp.mkdir(mnt)
  const servers: BlockServer[] = []
  const fs: Fs = {
    base,
    state,
    mnt,
    servers,
    async mount () {
      await must(['mount', state, mnt], 60_000)
      mountedPoints.add(mnt)
      if (!(await waitFor(() => isMounted(mnt), 10_000))) throw new Error(`bslfs mount exited 0 but ${mnt} is not mounted`)
    },
    async unmount () {
      const pid = await daemonPid(state)
      await must(['unmount', mnt], 120_000)
      if (isMounted(mnt)) throw new Error(`bslfs unmount exited 0 but ${mnt} is still mounted`)
      if (pid !== undefined && !(await waitFor(() => !pidAlive(pid), 15_000))) throw new Error(`the mount daemon (pid ${pid}) still runs 15 s after the unmount`)
    }
  }
  tt.teardown(async () => {
    const pid = await daemonPid(state)
    if (isMounted(mnt)) {
      const r = await bslfs(['unmount', mnt], { timeout: 60_000 })
      if (r.code !== 0 || isMounted(mnt)) {
        tt.comment(`teardown: clean unmount failed, forcing:\n${describeRun(r)}`)
        await run('fusermount', ['-uz', mnt], { timeout: 15_000 })
        if (isMounted(mnt)) await run('umount', ['-l', mnt], { timeout: 15_000 })
      }
    }
    if (pid !== undefined && !(await waitFor(() => !pidAlive(pid), 10_000))) {
      try { process.kill(pid, 'SIGKILL') } catch {}
    }
    for (const s of servers) await s.stop()
    if (isMounted(mnt)) { tt.comment(`teardown: ${mnt} is still mounted; leaving ${base}`); return }
    mountedPoints.delete(mnt)
    await fsp.rm(base, { recursive: true, force: true, maxRetries: 3 })
  })
  await must(['init', state, '--block-size', String(cfg.blockSize)])
  if (cfg.mirror) {
    servers.push(await startBlockServer(join(base, 's1')), await startBlockServer(join(base, 's2')))
    await must(['server', 'add', state, 's1', servers[0]!.url, '--token-file', servers[0]!.tokenFile])
    await must(['server', 'add', state, 's2', servers[1]!.url, '--token-file', servers[1]!.tokenFile])
    await must(['volume', 'add', state, '2', 's1:d1'])
    await must(['volume', 'add', state, '3', 's2:d1'])
    await must(['mirror', state, '10', '2', '3'])
    await must(['volume', 'default', state, '10'])
  }
  await fs.mount()
  return fs
}

// ---------------------------------------------------------------------------
// The run

interface Totals {
  ops: Record<string, number>
  bytesWritten: number
  bytesRead: number
  /** Bytes read to compare whole files (before each unmount and after each mount). */
  bytesVerified: number
  remounts: number
  /** Writes that started past EOF (leaving a hole), writes that crossed a block boundary. */
  holeWrites: number
  crossingWrites: number
  /** Reads that reached EOF (short) or started past it (empty). */
  shortReads: number
  emptyReads: number
  concurrentBatches: number
  maxFileSize: number
  seconds: number
}

async function randomRun (tt: Test, cfg: Config, seed: number): Promise<Totals> {
  const rng = new Rng(seed)
  const bs = cfg.blockSize
  const started = Date.now()
  const totals: Totals = {
    ops: {},
    bytesWritten: 0,
    bytesRead: 0,
    bytesVerified: 0,
    remounts: 0,
    holeWrites: 0,
    crossingWrites: 0,
    shortReads: 0,
    emptyReads: 0,
    concurrentBatches: 0,
    maxFileSize: 0,
    seconds: 0
  }
  const count = (k: string) => { totals.ops[k] = (totals.ops[k] ?? 0) + 1 }

  const maxLen = Math.max(...cfg.lengths.map(([, , max]) => max))
  // Write data: slices of a seeded pool at random offsets.
  const pool = Buffer.alloc(4 * maxLen + 4 * MiB)
  const words = new Uint32Array(pool.buffer, pool.byteOffset, Math.floor(pool.length / 4))
  for (let i = 0; i < words.length; i++) words[i] = rng.next()

  const fs = await makeFs(tt, cfg)
  const files: TestFile[] = []
  for (let i = 0; i < cfg.files; i++) {
    const name = `f${i}.bin`
    files.push({ name, path: join(fs.mnt, name), model: new Model(cfg.maxSize + maxLen + bs), handles: [] })
  }

  let opIndex = 0
  let handleIds = 0
  const recent: string[] = []
  const log = (s: string) => {
    recent.push(s)
    if (recent.length > 2000) recent.splice(0, 1000)
  }
  const where = (f?: TestFile) => [
    `config ${cfg.name}, seed ${seed}, at op #${opIndex} (replay: BSLFS_RANDOM_SEED=${seed} BSLFS_RANDOM_CONFIGS=${cfg.name})`,
    'the last operations:', ...recent.slice(-10).map((x) => `  ${x}`),
    ...(f ? [`the last operations on ${f.name}:`, ...recent.filter((x) => x.includes(` ${f.name}`)).slice(-20).map((x) => `  ${x}`)] : [])
  ].join('\n')
  const fail = (what: string, detail: string, f?: TestFile): never => { throw new Mismatch(what, `${detail ? detail + '\n' : ''}${where(f)}`) }
  /** Run an fs call; an error from it fails the run with the operation and seed. */
  const call = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn()
    } catch (e) {
      if (e instanceof Mismatch) throw e
      return fail(`${what}: ${(e as NodeJS.ErrnoException).code ?? ''} ${(e as Error).message}`, '')
    }
  }

  const lengthWeights = Object.fromEntries(cfg.lengths.map(([w], i) => [String(i), w]))
  const length = () => {
    const [, min, max] = cfg.lengths[Number(rng.weighted(lengthWeights))]!
    return rng.range(min, max)
  }
  const nearBoundary = (size: number) => Math.max(0, rng.range(0, Math.floor(size / bs) + 2) * bs + rng.range(-300, 300))

  const openHandle = async (f: TestFile, mode: Mode, trunc = false): Promise<Handle> => {
    const flags = trunc ? 'w+' : mode === 'rw' ? 'r+' : mode === 'ro' ? 'r' : mode === 'append' ? 'a+' : fsc.O_RDWR | fsc.O_DIRECT
    const fh = await call(`open ${f.name} ${flags}`, () => fsp.open(f.path, flags))
    if (trunc) f.model.truncate(0)
    const h: Handle = { id: ++handleIds, fh, mode }
    f.handles.push(h)
    return h
  }
  const closeHandle = async (f: TestFile, h: Handle) => {
    f.handles.splice(f.handles.indexOf(h), 1)
    await call(`close ${f.name} h${h.id}`, () => h.fh.close())
  }
  const openAll = async () => {
    for (const f of files) {
      await openHandle(f, 'rw')
      if (rng.chance(0.6)) await openHandle(f, rng.pick(MODES))
      if (rng.chance(0.25)) await openHandle(f, rng.pick(MODES))
    }
  }
  const closeAll = async () => {
    for (const f of files) for (const h of [...f.handles]) await closeHandle(f, h)
  }

  /** Compare a whole file (stat and content) with its model, through a fresh open. */
  const verifyAll = async (when: string) => {
    for (const f of files) {
      const st = await call(`stat ${f.name}`, () => fsp.stat(f.path))
      if (st.size !== f.model.size) fail(`${when}: ${f.name} has size ${st.size}, the model says ${f.model.size}`, '', f)
      const got = await call(`readFile ${f.name}`, () => fsp.readFile(f.path))
      totals.bytesVerified += got.length
      const d = difference(f.model.read(0, f.model.size), got, 0)
      if (d) fail(`${when}: ${f.name} differs from the model`, d, f)
    }
  }

  // ---- the operations -------------------------------------------------------

  const writable = (f: TestFile) => f.handles.filter((h) => h.mode !== 'ro')

  /** Where, what and how much a write on `h` writes (O_APPEND: at EOF, whatever offset it is given). */
  const chooseWrite = (f: TestFile, h: Handle) => {
    const m = f.model
    let len = length()
    const r = rng.float()
    let pos = r < 0.25
      ? nearBoundary(m.size)
      : r < 0.55
        ? rng.range(0, m.size)
        : r < 0.68
          ? m.size
          : r < 0.85
            ? m.size + rng.range(1, 2 * bs) // a hole past EOF
            : rng.range(0, cfg.maxSize) // anywhere, often far past EOF
    if (h.mode === 'append') pos = m.size // O_APPEND: the kernel writes at EOF whatever the offset
    if (pos + len > cfg.maxSize) {
      if (h.mode === 'append') len = Math.max(1, Math.min(len, cfg.maxSize - pos))
      else pos = Math.max(0, cfg.maxSize - len)
    }
    const off = rng.int(pool.length - len)
    const bytes = pool.subarray(off, off + len)
    const given = h.mode === 'append' ? rng.range(0, m.size) : pos // the offset an O_APPEND write ignores
    const what = `write ${f.name} h${h.id}(${h.mode}) pos=${pos}${h.mode === 'append' ? ` (offset given ${given})` : ''} len=${len} size=${m.size}`
    count(h.mode === 'append' ? 'write (O_APPEND)' : h.mode === 'direct' ? 'write (O_DIRECT)' : 'write')
    if (pos > m.size) totals.holeWrites++
    if (Math.floor(pos / bs) !== Math.floor((pos + len - 1) / bs)) totals.crossingWrites++
    return { pos, len, given, bytes, what }
  }

  const doWrite = async (f: TestFile, h: Handle, w: ReturnType<typeof chooseWrite>) => {
    const { bytesWritten } = await call(w.what, () => h.fh.write(w.bytes, 0, w.len, w.given))
    if (bytesWritten !== w.len) fail(`write ${f.name} h${h.id} at ${w.pos}: wrote ${bytesWritten} of ${w.len} bytes`, '', f)
  }

  const applyWrite = (f: TestFile, w: ReturnType<typeof chooseWrite>) => {
    f.model.write(w.pos, w.bytes)
    totals.bytesWritten += w.len
    totals.maxFileSize = Math.max(totals.maxFileSize, f.model.size)
  }

  const opWrite = async (f: TestFile) => {
    const h = rng.pick(writable(f))
    const w = chooseWrite(f, h)
    log(`#${opIndex} ${w.what}`)
    await doWrite(f, h, w)
    applyWrite(f, w)
  }

  /**
   * A write or an ftruncate and another call on the same file at once, through another
   * descriptor: a read (the kernel does not hold a read back while a write runs), a close and
   * reopen (the daemon's flush), an fsync or an fstat. Every byte read must be the byte before
   * or the byte after (a byte a truncate cuts off may read as 0 meanwhile), and a read's length
   * and an fstat's size between what they would be before and after.
   */
  const opConcurrentPair = async (f: TestFile) => {
    const hw = rng.pick(writable(f))
    const others = f.handles.filter((h) => h !== hw)
    if (others.length === 0) return await opWrite(f)
    const hr = rng.pick(others)
    const m = f.model
    const sizeBefore = m.size
    const truncating = rng.chance(0.25)
    const w = truncating ? null : chooseWrite(f, hw)
    const n = truncating ? truncSize(m) : 0
    const main = w ? w.what : `ftruncate ${f.name} h${hw.id}(${hw.mode}) ${m.size} -> ${n}`
    const partner = rng.weighted({ read: 55, reopen: 20, fsync: 15, fstat: 10 })
    const rlen = partner !== 'read' ? 0 : rng.chance(0.5) ? length() : (w ? w.len : 2 * bs) + rng.range(0, 8192)
    const rpos = partner !== 'read' ? 0 : rng.chance(0.6) ? Math.max(0, (w ? w.pos : n) + rng.range(-8192, 4096)) : rng.range(0, m.size)
    log(`#${opIndex} ${main} while h${hr.id}(${hr.mode}) ${partner === 'read' ? `reads pos=${rpos} len=${rlen}` : `does ${partner}`}`)
    count(`${partner === 'reopen' ? 'close + reopen' : partner} during a ${w ? 'write' : 'ftruncate'} on another descriptor`)
    if (!w) count(n < sizeBefore ? 'ftruncate down' : n > sizeBefore ? 'ftruncate up' : 'ftruncate same')
    const before = Buffer.from(m.read(rpos, rlen))
    const buf = Buffer.alloc(rlen)
    let seen = -1
    let bytesRead = -1
    const first = w ? doWrite(f, hw, w) : call(main, () => hw.fh.truncate(n))
    const second = partner === 'reopen'
      ? (async () => {
          await closeHandle(f, hr)
          const nh = await openHandle(f, hr.mode)
          log(`#${opIndex} ... h${hr.id} on ${f.name} reopened as h${nh.id}(${nh.mode})`)
        })()
      : partner === 'fsync'
        ? call(`fsync ${f.name} h${hr.id}`, () => hr.fh.sync())
        : partner === 'fstat'
          ? call(`fstat ${f.name} h${hr.id}`, () => hr.fh.stat()).then((st) => { seen = st.size })
          : call(`read ${f.name} pos=${rpos} len=${rlen}`, () => hr.fh.read(buf, 0, rlen, rpos)).then((r) => { bytesRead = r.bytesRead })
    const settled = await Promise.allSettled([first, second])
    for (const x of settled) if (x.status === 'rejected') throw x.reason
    if (w) applyWrite(f, w)
    else m.truncate(n)
    // (The kernel splits a large write into requests of 128 KiB, and a large read: a read or an
    // fstat meanwhile can see the size anywhere between the one before and the one after.)
    const [lo, hi] = [Math.min(sizeBefore, m.size), Math.max(sizeBefore, m.size)]
    if (partner === 'fstat' && (seen < lo || seen > hi)) {
      fail(`fstat of ${f.name} (h${hr.id}) during ${main} saw size ${seen}: not between ${sizeBefore} before and ${m.size} after`, '', f)
    }
    if (partner !== 'read') return
    totals.bytesRead += bytesRead
    const after = m.read(rpos, rlen)
    const what = `a read of ${rlen} bytes at ${rpos} (h${hr.id}, ${hr.mode}) during ${main}`
    if (bytesRead < Math.min(before.length, after.length) || bytesRead > Math.max(before.length, after.length)) fail(`${what} returned ${bytesRead} bytes: not between the ${before.length} before and the ${after.length} after`, '', f)
    for (let i = 0; i < bytesRead; i++) {
      const old = i < before.length ? before[i] : 0
      if (buf[i] === old || buf[i] === after[i] || (i >= after.length && buf[i] === 0)) continue
      const from = Math.max(0, i - 8)
      fail(`${what} returned a byte that is neither the one before nor the one after, at offset ${rpos + i}`,
        `  before, at offset ${rpos + from}: ${hex(before.subarray(from, from + 32))}\n  after,  at offset ${rpos + from}: ${hex(after.subarray(from, from + 32))}\n  got,    at offset ${rpos + from}: ${hex(buf.subarray(from, Math.min(bytesRead, from + 32)))}`, f)
    }
  }

  const opRead = async (f: TestFile) => {
    const h = rng.pick(f.handles)
    const m = f.model
    const len = length()
    const r = rng.float()
    const pos = r < 0.45
      ? rng.range(0, m.size)
      : r < 0.65
        ? nearBoundary(m.size)
        : r < 0.88
          ? Math.max(0, m.size - rng.range(0, len)) // reaching EOF: a short read
          : m.size + rng.range(0, 2 * bs) // past EOF: nothing
    log(`#${opIndex} read ${f.name} h${h.id}(${h.mode}) pos=${pos} len=${len} size=${m.size}`)
    count(h.mode === 'direct' ? 'read (O_DIRECT)' : 'read')
    const expected = m.read(pos, len)
    const buf = Buffer.alloc(len)
    const { bytesRead } = await call(`read ${f.name} pos=${pos} len=${len}`, () => h.fh.read(buf, 0, len, pos))
    totals.bytesRead += bytesRead
    if (expected.length < len) totals[expected.length === 0 ? 'emptyReads' : 'shortReads']++
    const d = difference(expected, buf.subarray(0, bytesRead), pos)
    if (d) fail(`read of ${len} bytes at ${pos} from ${f.name} (h${h.id}, ${h.mode}; model size ${m.size}) returned other bytes than the model`, d, f)
  }

  const truncSize = (m: Model) => {
    const r = rng.float()
    const n = r < 0.12
      ? 0
      : r < 0.35
        ? nearBoundary(m.size)
        : r < 0.45
          ? rng.range(0, Math.floor(m.size / bs) + 1) * bs
          : r < 0.75
            ? rng.range(0, m.size)
            : m.size + rng.range(1, 2 * bs)
    return Math.min(n, cfg.maxSize)
  }

  const opFtruncate = async (f: TestFile) => {
    const h = rng.pick(writable(f).filter((x) => x.mode === 'rw').concat(writable(f)))
    const n = truncSize(f.model)
    log(`#${opIndex} ftruncate ${f.name} h${h.id}(${h.mode}) ${f.model.size} -> ${n}`)
    count(n < f.model.size ? 'ftruncate down' : n > f.model.size ? 'ftruncate up' : 'ftruncate same')
    await call(`ftruncate ${f.name} to ${n}`, () => h.fh.truncate(n))
    f.model.truncate(n)
  }

  const opTruncate = async (f: TestFile) => {
    const n = truncSize(f.model)
    log(`#${opIndex} truncate(path) ${f.name} ${f.model.size} -> ${n}`)
    count(n < f.model.size ? 'truncate(path) down' : n > f.model.size ? 'truncate(path) up' : 'truncate(path) same')
    await call(`truncate ${f.name} to ${n}`, () => fsp.truncate(f.path, n))
    f.model.truncate(n)
  }

  const opStat = async (f: TestFile) => {
    const viaPath = rng.chance(0.4)
    const h = rng.pick(f.handles)
    log(`#${opIndex} ${viaPath ? 'stat' : `fstat h${h.id}`} ${f.name} size=${f.model.size}`)
    count(viaPath ? 'stat' : 'fstat')
    const st = await call(`stat ${f.name}`, () => (viaPath ? fsp.stat(f.path) : h.fh.stat()))
    if (st.size !== f.model.size) fail(`${viaPath ? 'stat' : 'fstat'} of ${f.name} says size ${st.size}, the model says ${f.model.size}`, '', f)
  }

  const opFsync = async (f: TestFile) => {
    const h = rng.pick(f.handles)
    const data = rng.chance(0.3)
    log(`#${opIndex} ${data ? 'fdatasync' : 'fsync'} ${f.name} h${h.id}(${h.mode})`)
    count(data ? 'fdatasync' : 'fsync')
    await call(`fsync ${f.name}`, () => (data ? h.fh.datasync() : h.fh.sync()))
  }

  const opReopen = async (f: TestFile) => {
    const h = rng.pick(f.handles)
    await closeHandle(f, h)
    // Keep one writable descriptor per file; open a second now and then.
    const need = writable(f).length === 0
    const mode: Mode = need ? rng.pick(['rw', 'rw', 'rw', 'append', 'direct'] as const) : rng.pick(MODES)
    const trunc = mode === 'rw' && rng.chance(0.06)
    log(`#${opIndex} reopen ${f.name}: closed h${h.id}(${h.mode}), opened ${trunc ? 'w+ (O_TRUNC)' : mode}${f.handles.length === 0 ? ' (was the last descriptor)' : ''} size=${f.model.size}`)
    count(trunc ? 'close + reopen with O_TRUNC' : f.handles.length === 0 ? 'close last + reopen' : 'close + reopen')
    const nh = await openHandle(f, mode, trunc)
    if (f.handles.length < 3 && rng.chance(0.15)) {
      await openHandle(f, rng.pick(['rw', 'ro', 'direct'] as const))
      log(`#${opIndex} ... and opened another on ${f.name} (${f.handles.length} descriptors now)`)
    } else if (f.handles.length > 3) {
      const extra = f.handles.find((x) => x !== nh && (x.mode === 'ro' || writable(f).length > 1))
      if (extra) await closeHandle(f, extra)
    }
  }

  /** Read the whole file through one of its open descriptors, in random-sized pieces, to EOF. */
  const opReadAll = async (f: TestFile) => {
    const h = rng.pick(f.handles)
    const m = f.model
    log(`#${opIndex} read all of ${f.name} h${h.id}(${h.mode}) size=${m.size}`)
    count('read whole file')
    let pos = 0
    for (;;) {
      const len = rng.range(1, 2 * bs)
      const buf = Buffer.alloc(len)
      const { bytesRead } = await call(`read ${f.name} pos=${pos}`, () => h.fh.read(buf, 0, len, pos))
      totals.bytesRead += bytesRead
      const d = difference(m.read(pos, len), buf.subarray(0, bytesRead), pos)
      if (d) fail(`reading all of ${f.name} (h${h.id}): ${len} bytes at ${pos} differ from the model (size ${m.size})`, d, f)
      if (bytesRead === 0) break
      pos += bytesRead
    }
  }

  type Kind = 'write' | 'read' | 'ftruncate' | 'truncate' | 'stat' | 'fsync' | 'reopen' | 'readAll' | 'pair'
  const ops: Record<Kind, (f: TestFile) => Promise<void>> = {
    write: opWrite,
    read: opRead,
    ftruncate: opFtruncate,
    truncate: opTruncate,
    stat: opStat,
    fsync: opFsync,
    reopen: opReopen,
    readAll: opReadAll,
    pair: opConcurrentPair
  }
  const weights: Record<Kind, number> = { write: 36, read: 30, ftruncate: 6, truncate: 2, stat: 7, fsync: 4, reopen: 5, readAll: 0.6, pair: 5 }
  const concurrentWeights: Record<Kind, number> = { write: 45, read: 35, ftruncate: 8, truncate: 0, stat: 8, fsync: 4, reopen: 0, readAll: 0, pair: 3 }

  // ---- the loop -------------------------------------------------------------

  const remountEvery = Math.ceil(cfg.ops / (cfg.remounts + 1))
  let nextRemount = remountEvery
  const remount = async (last: boolean) => {
    log(`#${opIndex} close everything, verify, unmount, mount, verify`)
    await closeAll()
    await verifyAll(`before unmount ${totals.remounts + 1}`)
    await fs.unmount()
    if (last) {
      // The directory and the devices agree: every block referenced exists with its checksum.
      const r = await bslfs(['fsck', fs.state, '--json'], { timeout: 300_000 })
      let report: { clean?: boolean, problems?: Record<string, number>, first?: string[], blocks?: number, copiesChecked?: number } = {}
      try { report = JSON.parse(r.stdout) } catch {}
      tt.equal(r.code, 0, 'bslfs fsck exits 0', { run: describeRun(r) })
      tt.match(report, { clean: true, problems: {} }, 'fsck: clean, no problems', { first: report.first })
      if (cfg.mirror) tt.equal(report.copiesChecked, 2 * (report.blocks ?? 0), `fsck checked two copies of each of the ${report.blocks} blocks`)
      tt.comment(`fsck: ${report.blocks} blocks, ${report.copiesChecked} copies checked, clean ${report.clean}`)
    }
    await fs.mount()
    totals.remounts++
    await verifyAll(`after remount ${totals.remounts}`)
  }

  try {
    for (const f of files) await call(`create ${f.name}`, () => fsp.writeFile(f.path, ''))
    await openAll()
    while (opIndex < cfg.ops) {
      if (opIndex >= nextRemount) {
        nextRemount += remountEvery
        await remount(false)
        tt.pass(`after ${opIndex} operations and remount ${totals.remounts}: every file matches the model`)
        await openAll()
        continue
      }
      if (rng.chance(0.05)) {
        // 2-4 operations on different files at once.
        const k = rng.range(2, Math.min(4, files.length))
        const chosen = [...files]
        for (let i = chosen.length - 1; i > 0; i--) { const j = rng.int(i + 1); [chosen[i], chosen[j]] = [chosen[j]!, chosen[i]!] }
        chosen.length = k
        totals.concurrentBatches++
        const batch = chosen.map((f) => {
          const kind = rng.weighted(concurrentWeights)
          opIndex++
          return ops[kind](f)
        })
        const settled = await Promise.allSettled(batch)
        const bad = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected')
        if (bad) throw bad.reason
        continue
      }
      opIndex++
      const kind = rng.weighted(weights)
      await ops[kind](rng.pick(files))
    }
    await remount(true)
    tt.pass(`after all ${opIndex} operations and the last remount: every file matches the model`)
  } catch (e) {
    // Stop this configuration; the teardown unmounts (with every descriptor closed) and cleans up.
    for (const f of files) for (const h of f.handles.splice(0)) await h.fh.close().catch(() => {})
    if (!(e instanceof Mismatch)) throw e
    tt.fail(e.message, { details: e.details })
  } finally {
    totals.seconds = (Date.now() - started) / 1000
  }
  return totals
}

// ---------------------------------------------------------------------------

if (target === 'bslfs' && volumeKind === 'local') {
  // (The file makes its own volumes, a mirrored remote one included: under
  // BSLFS_TEST_VOLUME=remote it would only run again.)
  const baseSeed = process.env.BSLFS_RANDOM_SEED ? parseSeed(process.env.BSLFS_RANDOM_SEED) : randomInt(0, 2 ** 32 - 1)
  t.comment(`random-operation test: seed ${baseSeed} (replay with BSLFS_RANDOM_SEED=${baseSeed})`)
  const all: Array<{ cfg: Config, totals: Totals }> = []
  for (const cfg of configs()) {
    t.test(`random operations against a model: ${cfg.name} (${cfg.blockSize / KiB} KiB blocks, ${cfg.mirror ? 'mirrored on two block servers' : 'local volume'})`, async (tt) => {
      // Every configuration draws from the same seed, so one seed replays the whole file.
      const seed = baseSeed
      const totals = await randomRun(tt, cfg, seed)
      all.push({ cfg, totals })
      const ops = Object.values(totals.ops).reduce((n, x) => n + x, 0)
      tt.comment(`${cfg.name}: ${ops} operations, ${totals.remounts} remounts, ${(totals.seconds).toFixed(1)} s`)
      tt.comment(`${cfg.name}: written ${totals.bytesWritten} bytes (${(totals.bytesWritten / MiB).toFixed(1)} MiB), read ${totals.bytesRead} bytes (${(totals.bytesRead / MiB).toFixed(1)} MiB), verified ${(totals.bytesVerified / MiB).toFixed(1)} MiB of whole files`)
      tt.comment(`${cfg.name}: ${totals.holeWrites} writes past EOF, ${totals.crossingWrites} writes across a block boundary, ${totals.shortReads} short reads at EOF, ${totals.emptyReads} reads past EOF, ${totals.concurrentBatches} concurrent batches, largest file ${totals.maxFileSize} bytes`)
      tt.comment(`${cfg.name}: by kind ${JSON.stringify(Object.fromEntries(Object.entries(totals.ops).sort()))}`)
    })
  }
  t.teardown(() => {
    if (all.length === 0) return
    const sum = (f: (x: Totals) => number) => all.reduce((n, x) => n + f(x.totals), 0)
    const opsOf = (x: Totals) => Object.values(x.ops).reduce((n, v) => n + v, 0)
    console.log(`# random-operation test, seed ${baseSeed}: ${sum(opsOf)} operations, ${(sum((x) => x.bytesWritten) / MiB).toFixed(1)} MiB written, ` +
      `${(sum((x) => x.bytesRead) / MiB).toFixed(1)} MiB read (+ ${(sum((x) => x.bytesVerified) / MiB).toFixed(1)} MiB whole-file checks), ${sum((x) => x.remounts)} remounts, ` +
      `over ${all.map((x) => x.cfg.name).join(', ')}`)
  })
}
