import createDebug from 'debug'
import { EventEmitter } from 'node:events'
import { BSL, formatBSL, objectIdOf } from '../bsl'
import { CHUNK_BYTES, checksum } from '../checksum'
import { CallLimits, Device, DeviceSpace } from '../devices/device'
import { FsError, faultOf } from '../errors'
import { BlockRecord } from './block'
import { Health, PlaceHealth, isBadCopy } from './health'
import { Place, Tables, placeText } from './tables'
import { DeviceOp, mountMetrics } from '../metrics/mount-metrics'

const log = createDebug('bslfs:volumes')

/** Opens the device at a place; the caller (the state layer) knows local paths and remote servers. */
export type DeviceOpener = (place: Place) => Promise<Device>

/**
 * The caller's buffer for the copy asked first, undefined for any other: two
 * copies asked at once must not read into one buffer.
 */
function lender (into?: Buffer): () => Buffer | undefined {
  let lent = into
  return () => {
    const b = lent
    lent = undefined
    return b
  }
}

/** A failed device call's kind for the metrics: its fault, else its POSIX code (a small set either way). */
function errorKind (err: unknown): string {
  const code = (err as FsError).code
  return faultOf(err) ?? (typeof code === 'string' && /^E[A-Z0-9]{1,15}$/.test(code) ? code : 'other')
}

/** Reads one copy of a block and verifies what it read (a whole object, or chunks of it). */
type CopyRead = (d: Device, limits?: CallLimits) => Promise<Buffer>

/** A read whose caller stopped waiting (FUSE INTERRUPT aborted its signal). */
function interrupted (bsl: BSL): FsError {
  return new FsError('EINTR', `read of ${formatBSL(bsl)} interrupted`)
}

/** `work`'s answer, or EINTR as soon as `signal` aborts (the late answer is dropped). */
function untilAborted<T> (work: Promise<T>, bsl: BSL, signal?: AbortSignal): Promise<T> {
  if (!signal) return work
  return new Promise((resolve, reject) => {
    const onAbort = (): void => reject(interrupted(bsl))
    if (signal.aborted) return onAbort()
    signal.addEventListener('abort', onAbort, { once: true })
    work.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort))
  })
}

/**
 * Checks `data`, the bytes of chunks first, first + 1, … of `block`, against
 * the block's chunk sums: a mismatch is a corrupt copy, never wrong bytes.
 */
function verifyChunks (block: BlockRecord, first: number, data: Buffer, label: string): Buffer {
  const sums = block.chunks as number[]
  for (let at = 0, k = first; at < data.length; at += CHUNK_BYTES, k++) {
    const got = checksum(data.subarray(at, at + CHUNK_BYTES))
    if (got !== sums[k]) {
      throw new FsError('EIO', `chunk checksum mismatch on ${label} object ${objectIdOf(block.bsl)} chunk ${k}: expected 0x${sums[k].toString(16)}, got 0x${got.toString(16)}`, { fault: 'corrupt' })
    }
  }
  return data
}

/** A copy of a block that is missing or bad on one mirror volume and must be healed. */
export interface CopyToHeal {
  block: BlockRecord
  /** The mirror volume whose copy is missing. */
  volume: number
}

/** A place that receives copies of a volume's new blocks while the volume is remapped to it. */
export interface Shadow {
  volume: number
  /** The place the volume leaves, and the one it moves to. */
  from: Place
  place: Place
  /** Blocks whose copy to `place` failed, by object id. */
  missed: Map<string, BlockRecord>
  /** Every new block of the volume written meanwhile, by object id (they reached the old place too). */
  written: Set<string>
  remove (): void
}

/** Where copies to heal are recorded durably (the directory's heal queue); the volumes layer only reports them. */
export interface HealQueue {
  record (copies: CopyToHeal[]): Promise<void>
}

/** One copy of a block: the mirror volume (or the volume itself) and the place it resolves to. */
interface Copy {
  volume: number
  place: Place
  key: string
}

export interface VolumesOptions {
  /** How long one copy of a mirrored block may take to answer before the read moves on (ms). */
  copyTimeoutMs?: number
  /**
   * Where the copies a write missed or a read found bad are recorded. Without
   * one, a write that misses a copy fails (it cannot be recorded, and must
   * not be dropped) and bad copies found by reads are only counted.
   */
  healQueue?: HealQueue
}

export const DEFAULT_COPY_TIMEOUT_MS = 1500

/** What is wrong with one copy of a block (scrub, fsck): the kind, and words for a report. */
export interface CopyProblem {
  problem: 'down' | 'missing' | 'corrupt' | 'error'
  detail: string
}

/** What healing one copy did. */
export type HealOutcome = 'copied' | 'present' | 'gone'

/**
 * What Volumes tells its users, as events: listeners come and go with their
 * own lifetimes (the mount's healer starts after the mount answers and stops
 * before it ends; offline commands have none), and Volumes asks nothing of them.
 */
export type VolumesEvents = {
  /** A place that was down answered again ("server:device"): its copies can be healed now. */
  up: [place: string]
  /** Copies a read found missing or bad were recorded in the heal queue. */
  healQueued: []
}

/**
 * Resolves BSLs to the places that hold their bytes, and reads and writes
 * blocks there. Failover is this layer's policy:
 *
 * - reads of a mirrored block try the copies that are up, best first; a copy
 *   that has not answered within its usual time gets a second copy asked
 *   beside it (a hedged read), and one that fails or times out passes the
 *   read to the next. Missing or corrupt copies are queued for heal;
 *   a copy that does not answer at all marks its place down, and a down
 *   place is skipped until a background probe finds it back;
 * - writes go to every copy that is up, in parallel; the write succeeds when
 *   the volume's `minCopies` are flushed, and the copies it missed are
 *   recorded (HealQueue) before it returns, never dropped.
 *
 * A block with one copy (a plain volume, a physical BSL) is read and written
 * with the device's own timeout and retries: there is nowhere to fail over.
 *
 * Events: VolumesEvents.
 */
export class Volumes extends EventEmitter<VolumesEvents> {
  private readonly devices = new Map<string, Promise<Device>>()
  readonly health = new Health()
  private readonly probes = new Map<string, NodeJS.Timeout>()
  private readonly healQueue: HealQueue | undefined
  private readonly copyTimeoutMs: number
  /** Extra places that get a copy of every new block of a volume while it is being remapped. */
  private readonly shadows = new Map<number, Shadow>()
  /** Writes in progress (remap waits for those that began before its shadow). */
  private readonly inFlight = new Set<Promise<unknown>>()
  /** Reads of each logical volume that needed more than their first copy. */
  private readonly failovers = new Map<number, number>()
  /** Places that hold blocks stored since their last sync, by place text. */
  private readonly unsynced = new Map<string, Place>()
  private closed = false

  constructor (private tables: Tables, private readonly openDevice: DeviceOpener, opts: VolumesOptions = {}) {
    super()
    this.copyTimeoutMs = opts.copyTimeoutMs ?? DEFAULT_COPY_TIMEOUT_MS
    this.healQueue = opts.healQueue
  }

  /** New tables (after `volume add`, `remap`, …): later resolutions use them. */
  update (tables: Tables): void {
    this.tables = tables
  }

  get defaultVolume (): number {
    return this.tables.defaultVolume
  }

  /** The BSL for a new block: the indexed logical form on the default volume (or the physical form on a default place). */
  newBlock (fileId: bigint, index: number): BSL {
    const place = this.tables.defaultPlace
    if (place) return { form: 'physical', server: place.server, device: place.device, fileId }
    const volume = this.tables.defaultVolume
    if (!this.tables.volumes.has(volume) && !this.tables.mirrors.has(volume)) {
      throw new FsError('EIO', `the default volume ${volume} is not in the volume table; run \`bslfs volume default STATE VOL\``)
    }
    return { form: 'indexed', volume, index, fileId }
  }

  private copies (bsl: BSL): Copy[] {
    if (bsl.form === 'physical') {
      const place = { server: bsl.server, device: bsl.device }
      return [{ volume: -1, place, key: placeText(place) }]
    }
    const mirror = this.tables.mirrors.get(bsl.volume)
    if (bsl.form === 'mirrored' && !mirror) throw new FsError('EIO', `${formatBSL(bsl)}: volume ${bsl.volume} is not in the mirror table`)
    return (mirror?.mirrors ?? [bsl.volume]).map(volume => {
      const row = this.tables.volumes.get(volume)
      if (!row) throw new FsError('EIO', `${formatBSL(bsl)}: volume ${volume} is not in the volume table`)
      return { volume, place: row.place, key: placeText(row.place) }
    })
  }

  /** The copies of a block: each mirror volume (-1 for a physical BSL) and its place, in table order. */
  copiesOf (bsl: BSL): Array<{ volume: number, place: Place }> {
    return this.copies(bsl).map(({ volume, place }) => ({ volume, place }))
  }

  /** The places that hold a block, in table order. */
  resolve (bsl: BSL): Place[] {
    return this.copies(bsl).map(c => c.place)
  }

  /** The mirror volumes a logical volume writes to ([volume] for a plain one). */
  mirrorsOf (volume: number): number[] {
    return this.tables.mirrors.get(volume)?.mirrors ?? [volume]
  }

  private device (place: Place): Promise<Device> {
    const key = placeText(place)
    let d = this.devices.get(key)
    if (!d) {
      d = this.openDevice(place)
      d.catch(() => this.devices.delete(key))
      this.devices.set(key, d)
    }
    return d
  }

  /**
   * Note what a failed call says about a copy: a missing or bad copy, or a
   * place that is down. Any other failure (a transient one: EMFILE, ENOMEM…)
   * says neither: the read fails over and nothing is queued for heal.
   */
  private copyFailed (c: Copy, err: unknown, block?: BlockRecord): void {
    const message = (err as Error).message
    const fault = faultOf(err)
    if (isBadCopy(fault)) {
      this.health.badCopy(c.key, fault, message)
      if (block && c.volume >= 0) this.queueHeal([{ block, volume: c.volume }])
    } else if (fault === 'unreachable' || (err as FsError).code === 'ENODEV' || (err as FsError).code === 'EACCES') {
      this.markDown(c.key, message)
    }
  }

  private queueHeal (copies: CopyToHeal[]): void {
    if (!this.healQueue) return
    this.healQueue.record(copies).then(() => this.emit('healQueued'), err => log('cannot queue copies for heal: %s', (err as Error).message))
  }

  private markDown (key: string, message: string): void {
    if (!this.health.markDown(key, message)) return
    log('%s is down: %s', key, message)
    this.scheduleProbe(key)
  }

  private scheduleProbe (key: string): void {
    if (this.closed || this.probes.has(key)) return
    const timer = setTimeout(() => {
      this.probes.delete(key)
      void this.probe(key)
    }, this.health.nextProbeDelay(key))
    timer.unref()
    this.probes.set(key, timer)
  }

  /** Ask a down place whether it is back (its space query is cheap and touches the device). */
  private async probe (key: string): Promise<void> {
    if (this.closed || this.health.isUp(key)) return
    const [server, ...rest] = key.split(':')
    try {
      const d = await this.device({ server, device: rest.join(':') })
      await d.space({ timeoutMs: this.copyTimeoutMs, retries: 0 })
      this.placeUp(key)
    } catch (err) {
      log('%s still down: %s', key, (err as Error).message)
      this.scheduleProbe(key)
    }
  }

  private placeUp (key: string): void {
    if (!this.health.markUp(key)) return
    log('%s is back up', key)
    this.emit('up', key)
  }

  private async timed<T> (c: Copy, read: boolean, work: (d: Device) => Promise<T>, op: DeviceOp = read ? 'read' : 'write'): Promise<T> {
    const started = performance.now()
    const m = mountMetrics.place(c.key)
    let out: T
    try {
      out = await work(await this.device(c.place))
    } catch (err) {
      m.failed(op, (performance.now() - started) / 1000, errorKind(err))
      throw err
    }
    const ms = performance.now() - started
    // A read's answer is its bytes; a write counts its own (put).
    m.done(op, ms / 1000, op === 'read' && out instanceof Buffer ? out.length : 0)
    if (this.health.succeeded(c.key, ms, read)) this.placeUp(c.key)
    return out
  }

  /**
   * Store a block on every copy of its BSL; resolves once enough copies are
   * flushed (every copy, or the mirror's minCopies), after the missed ones
   * are recorded for healing. Not `durable`: once the copies are stored,
   * durable after the next `sync`.
   */
  async write (block: BlockRecord, data: Uint8Array, opts: { durable?: boolean } = {}): Promise<void> {
    const work = this.writeCopies(block, data, opts.durable ?? true)
    this.inFlight.add(work)
    try {
      await work
    } finally {
      this.inFlight.delete(work)
    }
  }

  /**
   * While volume `volume` moves to `place` (remap), every new block that has a
   * copy on the volume gets one on `place` too. A copy the new place misses
   * does not fail the write: it is noted in `missed` for the remap to copy.
   * Deletes of its blocks reach both places until the shadow is removed.
   */
  addShadow (volume: number, from: Place, place: Place): Shadow {
    if (this.shadows.has(volume)) throw new FsError('EBUSY', `volume ${volume} is already being remapped`)
    const shadow: Shadow = { volume, from, place, missed: new Map(), written: new Set(), remove: () => { if (this.shadows.get(volume) === shadow) this.shadows.delete(volume) } }
    this.shadows.set(volume, shadow)
    return shadow
  }

  /** Wait for every write in progress now (not for ones that start later). */
  async drain (): Promise<void> {
    await Promise.allSettled([...this.inFlight])
  }

  /** The device at a place (remap copies to places no volume names yet). */
  deviceAt (place: Place): Promise<Device> {
    return this.device(place)
  }

  /** Put, or store and remember the place for the next sync. */
  private async put (place: Place, key: string, d: Device, id: string, data: Uint8Array, sum: number, durable: boolean): Promise<void> {
    if (durable) await d.put(id, data, sum)
    else {
      await d.store(id, data, sum)
      this.unsynced.set(key, place)
    }
    mountMetrics.place(key).bytesWritten.n += data.length
    mountMetrics.totals.deviceBytesWritten += data.length
  }

  /**
   * Make every block written without `durable` so far durable: one sync of
   * each place it went to. EIO when a place could not (the blocks it holds
   * must be written again).
   */
  async sync (): Promise<void> {
    const places = [...this.unsynced]
    this.unsynced.clear()
    const failed: string[] = []
    await Promise.all(places.map(async ([key, place]) => {
      const c: Copy = { volume: -1, place, key }
      try {
        await this.timed(c, false, d => d.sync(), 'sync')
      } catch (err) {
        this.copyFailed(c, err)
        failed.push(`${key}: ${(err as Error).message}`)
      }
    }))
    if (failed.length > 0) throw new FsError('EIO', `blocks stored could not be made durable: ${failed.join('; ')}`)
  }

  private async shadowWrites (block: BlockRecord, data: Uint8Array, copies: Copy[], durable: boolean): Promise<void> {
    const id = objectIdOf(block.bsl)
    await Promise.all(copies.map(async c => {
      const shadow = this.shadows.get(c.volume)
      // After the switch the copy itself goes to the new place.
      if (!shadow || placeText(shadow.place) === c.key) return
      shadow.written.add(id)
      try {
        await this.put(shadow.place, placeText(shadow.place), await this.device(shadow.place), id, data, block.checksum, durable)
      } catch (err) {
        log('remap copy of %s to %s missed: %s', id, placeText(shadow.place), (err as Error).message)
        shadow.missed.set(id, block)
      }
    }))
  }

  private async writeCopies (block: BlockRecord, data: Uint8Array, durable: boolean): Promise<void> {
    const id = objectIdOf(block.bsl)
    const copies = this.copies(block.bsl)
    const shadowed = this.shadows.size > 0 ? this.shadowWrites(block, data, copies, durable) : undefined
    const put = (c: Copy): Promise<void> => this.timed(c, false, d => this.put(c.place, c.key, d, id, data, block.checksum, durable))
    if (copies.length === 1) {
      await Promise.all([shadowed, put(copies[0]).catch(err => {
        this.copyFailed(copies[0], err)
        throw err
      })])
      return
    }
    const need = this.minCopies(block.bsl, copies.length)
    const errors: string[] = []
    const results = await Promise.all(copies.map(async c => {
      if (!this.health.isUp(c.key)) {
        errors.push(`${c.key} is down`)
        return false
      }
      try {
        await put(c)
        return true
      } catch (err) {
        errors.push((err as Error).message)
        this.copyFailed(c, err)
        return false
      }
    }))
    await shadowed
    const written = copies.filter((_c, i) => results[i])
    const missed = copies.filter((_c, i) => !results[i])
    if (written.length < need) {
      // Not stored: the caller keeps the bytes and tries again; the copies made are of no use.
      for (const c of written) void this.device(c.place).then(d => d.delete(id)).catch(() => undefined)
      throw new FsError('EIO', `${formatBSL(block.bsl)}: only ${written.length} of ${copies.length} copies written, ${need} needed: ${errors.join('; ')}`)
    }
    if (missed.length > 0) {
      log('%s written degraded: %d of %d copies', formatBSL(block.bsl), written.length, copies.length)
      if (!this.healQueue) throw new FsError('EIO', `${formatBSL(block.bsl)}: ${missed.length} copies missed and nowhere to record them`)
      await this.healQueue.record(missed.map(c => ({ block, volume: c.volume })))
    }
  }

  private minCopies (bsl: BSL, copies: number): number {
    if (bsl.form === 'physical') return 1
    return Math.min(this.tables.mirrors.get(bsl.volume)?.minCopies ?? copies, copies)
  }

  /**
   * Read a whole block, verified; see the class comment for the failover.
   * The copy asked first reads into `into` (when given and the device can);
   * any other copy into a buffer of its own (lender). The answer is a view of
   * `into` only when that copy answered.
   *
   * `signal`: goes to every device call; when it aborts, the read stops
   * asking copies and rejects EINTR at once. A copy that was asked may still
   * be writing `into` then. An aborted copy is not a failed one: its place's
   * health stays as it was and nothing is queued for heal.
   */
  async read (block: BlockRecord, into?: Buffer, signal?: AbortSignal): Promise<Buffer> {
    const id = objectIdOf(block.bsl)
    const lend = lender(into)
    return await this.readCopies(block, (d, limits) => d.get(id, block.checksum, limits, lend()), signal)
  }

  /**
   * The bytes of the chunks of `block` that cover [offset, offset + length),
   * each verified against the block's chunk sums, with the same failover as
   * `read` (a chunk that does not match is a corrupt copy). `start` is where
   * `data` begins in the block: offset rounded down to a chunk boundary;
   * `data` ends at a chunk boundary or at the end of the block. A block
   * without chunk sums (written before they existed) is read whole.
   * `into` and `signal`: as for `read`, for the chunks' bytes.
   */
  async readRange (block: BlockRecord, offset: number, length: number, into?: Buffer, signal?: AbortSignal): Promise<{ start: number, data: Buffer }> {
    if (!(Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length > 0 && offset + length <= block.length)) {
      throw new FsError('EINVAL', `bad range ${offset}+${length} of ${formatBSL(block.bsl)} (${block.length} bytes)`)
    }
    const first = Math.floor(offset / CHUNK_BYTES)
    const start = first * CHUNK_BYTES
    const end = Math.min(block.length, Math.ceil((offset + length) / CHUNK_BYTES) * CHUNK_BYTES)
    if (block.chunks === undefined) return { start, data: (await this.read(block, undefined, signal)).subarray(start, end) }
    const id = objectIdOf(block.bsl)
    const lend = lender(into)
    const data = await this.readCopies(block, async (d, limits) => verifyChunks(block, first, await d.getRange(id, start, end - start, limits, lend()), d.label), signal)
    return { start, data }
  }

  /** One good answer of `fetch` from the copies of a block: the device's own retries for a lone copy, else `race`. */
  private async readCopies (block: BlockRecord, fetch: CopyRead, signal?: AbortSignal): Promise<Buffer> {
    if (signal?.aborted) throw interrupted(block.bsl)
    const copies = this.copies(block.bsl)
    if (copies.length === 1) {
      try {
        return await untilAborted(this.timed(copies[0], true, d => fetch(d, signal ? { signal } : undefined)), block.bsl, signal)
      } catch (err) {
        if (signal?.aborted) throw interrupted(block.bsl)
        this.copyFailed(copies[0], err)
        throw new FsError('EIO', `${formatBSL(block.bsl)} could not be read: ${(err as Error).message}`, { cause: err })
      }
    }
    const up = this.health.order(copies, c => c.key)
    if (up.length === 0) {
      throw new FsError('EIO', `${formatBSL(block.bsl)}: every copy is down (${copies.map(c => `${c.key}: ${this.health.report(c.key).lastError ?? 'down'}`).join('; ')})`)
    }
    return await this.race(block, up, fetch, signal)
  }

  /**
   * Ask copies one after another, starting the next early when one is slow; the first good answer wins.
   * An abort of `signal` ends the race at once with EINTR; the copies' late answers are dropped.
   */
  private race (block: BlockRecord, copies: Copy[], fetch: CopyRead, signal?: AbortSignal): Promise<Buffer> {
    const limits: CallLimits = { timeoutMs: this.copyTimeoutMs, retries: 0, ...(signal ? { signal } : {}) }
    return new Promise((resolve, reject) => {
      let next = 0
      let running = 0
      let settled = false
      let hedge: NodeJS.Timeout | undefined
      const errors: string[] = []
      const settle = (): void => {
        settled = true
        clearTimeout(hedge)
        signal?.removeEventListener('abort', onAbort)
      }
      const onAbort = (): void => {
        if (settled) return
        settle()
        reject(interrupted(block.bsl))
      }
      if (signal?.aborted) return onAbort()
      signal?.addEventListener('abort', onAbort, { once: true })
      const launch = (): void => {
        clearTimeout(hedge)
        if (settled || next >= copies.length) return
        const c = copies[next++]
        running++
        this.timed(c, true, d => fetch(d, limits)).then(data => {
          running--
          if (settled) return
          settle()
          // Every copy asked before this one failed or was too slow.
          for (const earlier of copies.slice(0, copies.indexOf(c))) this.health.failedOver(earlier.key)
          if (c !== copies[0] && block.bsl.form !== 'physical') {
            this.failovers.set(block.bsl.volume, this.failoversOf(block.bsl.volume) + 1)
            mountMetrics.failover(block.bsl.volume)
          }
          resolve(data)
        }, err => {
          running--
          // Aborted, the copy says nothing about itself (it may have failed for the abort).
          if (signal?.aborted) return
          this.copyFailed(c, err, block)
          errors.push((err as Error).message)
          if (settled) return
          if (next < copies.length) launch()
          else if (running === 0) {
            settle()
            reject(new FsError('EIO', `no copy of ${formatBSL(block.bsl)} could be read: ${errors.join('; ')}`, { cause: err }))
          }
        })
        if (next < copies.length) {
          hedge = setTimeout(() => {
            // The timer fires only while this copy is still on its way: a hedge (a failure launches at once).
            if (!settled && block.bsl.form !== 'physical') mountMetrics.hedged(block.bsl.volume)
            launch()
          }, this.health.hedgeDelay(c.key, this.copyTimeoutMs))
          hedge.unref()
        }
      }
      launch()
    })
  }

  /** Reads of a logical volume that were served by other than their first copy. */
  failoversOf (volume: number): number {
    return this.failovers.get(volume) ?? 0
  }

  /**
   * Make the copy of `block` on mirror volume `volume` whole again: keep it
   * if it reads back right, else copy it from another copy (checksummed
   * both ways). 'gone' when that volume no longer holds the block.
   */
  async healCopy (block: BlockRecord, volume: number): Promise<HealOutcome> {
    const id = objectIdOf(block.bsl)
    const copies = this.copies(block.bsl)
    const target = copies.find(c => c.volume === volume)
    if (!target) return 'gone'
    if (!this.health.isUp(target.key)) throw new FsError('EIO', `${target.key} (volume ${volume}) is down`)
    try {
      await this.timed(target, false, d => d.get(id, block.checksum), 'read')
      return 'present'
    } catch (err) {
      if (!isBadCopy(faultOf(err))) {
        this.copyFailed(target, err)
        throw err
      }
    }
    const sources = this.health.order(copies.filter(c => c !== target), c => c.key)
    if (sources.length === 0) throw new FsError('EIO', `${formatBSL(block.bsl)}: no other copy is up to heal ${target.key} from`)
    const data = await this.race(block, sources, (d, limits) => d.get(id, block.checksum, limits))
    try {
      await this.timed(target, false, d => this.put(target.place, target.key, d, id, data, block.checksum, true))
    } catch (err) {
      this.copyFailed(target, err)
      throw err
    }
    return 'copied'
  }

  /**
   * Check the copy of a block on mirror volume `volume` (-1: a physical
   * BSL's one copy), for scrub and fsck: null when it is there and whole.
   * `checksums` reads it and checks its checksum; without, its size is enough.
   * A place that is down is not asked.
   */
  async checkCopy (block: BlockRecord, volume: number, checksums = true): Promise<CopyProblem | null> {
    const c = this.copies(block.bsl).find(x => x.volume === volume)
    if (!c || !this.health.isUp(c.key)) return { problem: 'down', detail: 'down' }
    const id = objectIdOf(block.bsl)
    try {
      if (checksums) {
        await this.timed(c, false, d => d.get(id, block.checksum), 'read')
        return null
      }
      const st = await this.timed(c, false, d => d.stat(id), 'stat')
      if (!st) return { problem: 'missing', detail: 'missing' }
      return st.size === block.length ? null : { problem: 'corrupt', detail: `${st.size} bytes instead of ${block.length}` }
    } catch (err) {
      this.copyFailed(c, err)
      const fault = faultOf(err)
      if (isBadCopy(fault)) return { problem: fault, detail: fault }
      return { problem: this.health.isUp(c.key) ? 'error' : 'down', detail: (err as Error).message }
    }
  }

  /** Remove a block's objects from every place (reclaim); fails while a copy cannot be reached. */
  async delete (bsl: BSL): Promise<void> {
    const id = objectIdOf(bsl)
    const copies = this.copies(bsl)
    // While a volume is remapped a block may have a copy on both its old and its new place, whichever
    // the row names at this moment (it switches mid-way): the delete reaches both, or an object nothing
    // references would stay behind. Taken with the copies, for a remap that ends while the deletes run.
    const extra = new Map<string, Place>()
    for (const c of copies) {
      const shadow = this.shadows.get(c.volume)
      if (shadow) for (const p of [shadow.from, shadow.place]) extra.set(placeText(p), p)
    }
    for (const c of copies) extra.delete(c.key)
    await Promise.all(copies.map(async c => {
      if (!this.health.isUp(c.key)) throw new FsError('EIO', `${c.key} is down`)
      try {
        await (await this.device(c.place)).delete(id)
      } catch (err) {
        this.copyFailed(c, err)
        throw err
      }
    }))
    await Promise.all([...extra].map(async ([key, place]) => {
      await (await this.device(place)).delete(id).catch((err: Error) => {
        log('cannot delete %s from %s (a place of a volume being remapped): %s', id, key, err.message)
      })
    }))
  }

  /** Every place of the volume table. */
  private places (): Map<string, Place> {
    const places = new Map<string, Place>()
    for (const row of this.tables.volumes.values()) places.set(placeText(row.place), row.place)
    return places
  }

  /** Space of every device named in the volume table, by place; asking also checks that each is up. */
  async space (): Promise<Map<string, DeviceSpace | Error>> {
    const out = new Map<string, DeviceSpace | Error>()
    await Promise.all([...this.places()].map(async ([key, p]) => {
      try {
        const d = await this.device(p)
        out.set(key, await d.space(this.health.isUp(key) ? {} : { timeoutMs: this.copyTimeoutMs, retries: 0 }))
        this.placeUp(key)
      } catch (err) {
        out.set(key, err as Error)
        if (faultOf(err) === 'unreachable') this.markDown(key, (err as Error).message)
      }
    }))
    return out
  }

  /** Health of every place of the volume table. */
  placeHealth (): PlaceHealth[] {
    return [...this.places().keys()].map(k => this.health.report(k))
  }

  async close (): Promise<void> {
    this.closed = true
    for (const t of this.probes.values()) clearTimeout(t)
    this.probes.clear()
    const all = [...this.devices.values()]
    this.devices.clear()
    await Promise.all(all.map(async d => (await d.catch(() => null))?.close()))
  }
}
