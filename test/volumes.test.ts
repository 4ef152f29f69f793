import t, { Test } from 'tap'
import * as fsp from 'node:fs/promises'
import { join } from 'node:path'
import { BSL, objectIdOf } from '../src/bsl'
import { CHUNK_BYTES, checksum, chunkSums } from '../src/checksum'
import { CallLimits, Device, DeviceSpace } from '../src/devices/device'
import { LocalDevice } from '../src/devices/local'
import { CopyFault, FsError } from '../src/errors'
import { MirrorRow, Place, Tables, VolumeRow, placeText } from '../src/volumes/tables'
import { BlockRecord } from '../src/volumes/block'
import { CopyToHeal, Volumes } from '../src/volumes/volumes'

// The volumes layer's unit test: fake devices (the layer below) stand in for
// disks and servers, except in the last test, which uses real LocalDevices.

/** An in-memory device with switches to make it fail. */
class FakeDevice implements Device {
  readonly objects = new Map<string, { data: Buffer, sum: number }>()
  failGet = false
  /** Answer nothing at all, as a dead server: fault "unreachable". */
  unreachable = false
  /** Hold gets this long before answering (a slow or hung copy). */
  delayMs = 0
  failPut = false
  failDelete = false
  /** Return bytes that do not match their checksum, as a damaged disk would (the device reports EIO). */
  corrupt = false
  closed = false

  /** Fail gets and ranged reads with this error (a fault of any kind). */
  failWith: FsError | null = null
  /**
   * Hang gets and ranged reads: 'signal' until the call's signal aborts (then
   * EINTR, as a device that honours it), 'ignore' until release().
   */
  hang: false | 'signal' | 'ignore' = false
  private hung: Array<(err: Error) => void> = []

  constructor (readonly label: string, readonly log: string[] = []) {}

  limits: Array<CallLimits | undefined> = []

  private async hangs (limits?: CallLimits): Promise<void> {
    if (!this.hang) return
    const signal = this.hang === 'signal' ? limits?.signal : undefined
    await new Promise<void>((_resolve, reject) => {
      this.hung.push(reject)
      signal?.addEventListener('abort', () => reject(new FsError('EINTR', `${this.label}: interrupted`)), { once: true })
    })
  }

  /** End every hung call with `err`. */
  release (err: Error): void {
    const hung = this.hung
    this.hung = []
    for (const reject of hung) reject(err)
  }

  async put (objectId: string, data: Uint8Array, sum: number): Promise<void> {
    this.log.push(`put ${this.label} ${objectId}`)
    if (this.unreachable) throw new FsError('EIO', `${this.label} unreachable`, { fault: 'unreachable' })
    if (this.failPut) throw new FsError('EIO', `${this.label}: put failed`)
    if (checksum(data) !== sum) throw new FsError('EIO', `${this.label}: checksum of the data does not match`)
    this.objects.set(objectId, { data: Buffer.from(data), sum })
  }

  async get (objectId: string, sum: number, limits?: CallLimits): Promise<Buffer> {
    this.log.push(`get ${this.label} ${objectId}`)
    this.limits.push(limits)
    await this.hangs(limits)
    if (this.failWith) throw this.failWith
    if (this.delayMs) {
      const ms = this.delayMs
      const bound = limits?.timeoutMs ?? Infinity
      await new Promise(resolve => setTimeout(resolve, Math.min(ms, bound)))
      if (ms > bound) throw new FsError('EIO', `${this.label} unreachable: no answer within ${bound} ms`, { fault: 'unreachable' })
    }
    if (this.unreachable) throw new FsError('EIO', `${this.label} unreachable`, { fault: 'unreachable' })
    if (this.failGet) throw new FsError('EIO', `${this.label}: disk error`)
    const o = this.objects.get(objectId)
    if (!o) throw new FsError('EIO', `${this.label}: object ${objectId} is missing`, { fault: 'missing' })
    const data = this.corrupt ? Buffer.concat([o.data, Buffer.from('rot')]) : o.data
    if (checksum(data) !== sum) throw new FsError('EIO', `${this.label}: checksum mismatch on ${objectId}`, { fault: 'corrupt' })
    return Buffer.from(data)
  }

  /** Flip this byte of the stored object in what getRange returns (a rotted chunk; get sees it too). */
  rotAt: number | null = null

  async getRange (objectId: string, offset: number, length: number, limits?: CallLimits): Promise<Buffer> {
    this.log.push(`range ${this.label} ${objectId} ${offset}+${length}`)
    this.limits.push(limits)
    await this.hangs(limits)
    if (this.failWith) throw this.failWith
    if (this.unreachable) throw new FsError('EIO', `${this.label} unreachable`, { fault: 'unreachable' })
    if (this.failGet) throw new FsError('EIO', `${this.label}: disk error`)
    const o = this.objects.get(objectId)
    if (!o) throw new FsError('EIO', `${this.label}: object ${objectId} is missing`, { fault: 'missing' })
    const out = Buffer.from(o.data.subarray(offset, offset + length))
    if (this.rotAt !== null && this.rotAt >= offset && this.rotAt < offset + length) out[this.rotAt - offset] ^= 0x40
    return out
  }

  async delete (objectId: string): Promise<void> {
    this.log.push(`delete ${this.label} ${objectId}`)
    if (this.failDelete) throw new FsError('EIO', `${this.label}: delete failed`)
    this.objects.delete(objectId)
  }

  async stat (objectId: string): Promise<{ size: number } | null> {
    const o = this.objects.get(objectId)
    return o ? { size: o.data.length } : null
  }

  async * list (): AsyncIterable<string> {
    yield * this.objects.keys()
  }

  async space (): Promise<DeviceSpace> {
    if (this.unreachable) throw new FsError('EIO', `${this.label} unreachable`, { fault: 'unreachable' })
    return { total: 1000, free: 500, available: 400 }
  }

  async close (): Promise<void> {
    this.closed = true
  }
}

/** Mirror rows from [volume, mirrors, minCopies?]; min copies default to all. */
function mirrorMap (rows: Array<[number, number[], number?]>): Map<number, MirrorRow> {
  return new Map(rows.map(([volume, mirrors, minCopies]) => [volume, { volume, mirrors, minCopies: minCopies ?? mirrors.length }]))
}

function row (volume: number, server: string, device: string): VolumeRow {
  return { volume, place: { server, device }, since: '2024-01-01T00:00:00.000Z', history: [] }
}

/** DESIGN.md's tables: VOL 1 → (X, x), VOL 2 → (Y, y); VOL 0 → VOL 1, VOL 2. */
function figureTables (extra: Partial<Tables> = {}): Tables {
  return {
    volumes: new Map([[1, row(1, 'X', 'x')], [2, row(2, 'Y', 'y')], [3, row(3, 'Z', 'z')]]),
    mirrors: mirrorMap([[0, [1, 2]], [10, [2, 3, 1]]]),
    devices: new Map(),
    servers: new Map(),
    defaultVolume: 0,
    ...extra
  }
}

/** Fake devices by place, an opener that counts opens, and a Volumes over them. */
function rig (t: Test, tables = figureTables(), copyTimeoutMs = 1500): { volumes: Volumes, dev: (server: string, device: string) => FakeDevice, opens: string[], log: string[], unreachable: Set<string>, toHeal: CopyToHeal[] } {
  const log: string[] = []
  const devices = new Map<string, FakeDevice>()
  const opens: string[] = []
  const unreachable = new Set<string>()
  const dev = (server: string, device: string): FakeDevice => {
    const key = `${server}:${device}`
    let d = devices.get(key)
    if (!d) devices.set(key, d = new FakeDevice(key, log))
    return d
  }
  const toHeal: CopyToHeal[] = []
  const volumes = new Volumes(tables, async (p: Place) => {
    opens.push(placeText(p))
    if (unreachable.has(placeText(p))) throw new Error(`cannot reach ${placeText(p)}`)
    return dev(p.server, p.device)
  }, { copyTimeoutMs, healQueue: { record: async r => { toHeal.push(...r) } } })
  t.teardown(() => volumes.close())
  return { volumes, dev, opens, log, unreachable, toHeal }
}

async function rejectsCode (t: Test, fn: () => Promise<unknown> | unknown, code: string, what: string): Promise<FsError | undefined> {
  let err: unknown
  try {
    await fn()
  } catch (e) {
    err = e
  }
  if (!(err instanceof FsError)) {
    t.fail(`${what}: expected FsError ${code}, got ${err === undefined ? 'success' : String(err)}`)
    return undefined
  }
  t.equal(err.code, code, what)
  return err
}

const data = Buffer.from('the bytes of one block\n'.repeat(100))
const sum = checksum(data)
/** The directory's record of `data` stored at `bsl`. */
const blk = (bsl: BSL): BlockRecord => ({ bsl, length: data.length, checksum: sum })

t.test('resolve', async t => {
  const { volumes } = rig(t)
  t.same(volumes.resolve({ form: 'physical', server: 'host9', device: 'disk3', fileId: 5n }), [{ server: 'host9', device: 'disk3' }],
    'a physical BSL names its own place')
  t.same(volumes.resolve({ form: 'physical', server: 'X', device: 'other', fileId: 5n }), [{ server: 'X', device: 'other' }],
    'even one no table knows')
  t.same(volumes.resolve({ form: 'logical', volume: 1, fileId: 5n }), [{ server: 'X', device: 'x' }], 'logical → the volume table')
  t.same(volumes.resolve({ form: 'logical', volume: 2, fileId: 5n }), [{ server: 'Y', device: 'y' }])
  t.same(volumes.resolve({ form: 'mirrored', volume: 0, fileId: 5n }), [{ server: 'X', device: 'x' }, { server: 'Y', device: 'y' }],
    'mirrored → its mirrors in order')
  t.same(volumes.resolve({ form: 'mirrored', volume: 10, fileId: 5n }),
    [{ server: 'Y', device: 'y' }, { server: 'Z', device: 'z' }, { server: 'X', device: 'x' }], 'the mirror table\'s order, not the volume numbers\'')
  t.same(volumes.resolve({ form: 'logical', volume: 0, fileId: 5n }), [{ server: 'X', device: 'x' }, { server: 'Y', device: 'y' }],
    'a logical BSL of a mirrored volume → its mirrors')
  t.same(volumes.resolve({ form: 'indexed', volume: 10, index: 7, fileId: 5n }),
    [{ server: 'Y', device: 'y' }, { server: 'Z', device: 'z' }, { server: 'X', device: 'x' }], 'indexed on a mirrored volume')
  t.same(volumes.resolve({ form: 'indexed', volume: 3, index: 0, fileId: 5n }), [{ server: 'Z', device: 'z' }], 'indexed on a plain volume')

  await rejectsCode(t, () => volumes.resolve({ form: 'mirrored', volume: 1, fileId: 5n }), 'EIO', 'mirrored form of a volume not in the mirror table')
  const e1 = await rejectsCode(t, () => volumes.resolve({ form: 'logical', volume: 77, fileId: 5n }), 'EIO', 'unknown volume')
  t.match(e1?.message ?? '', /volume 77\b/, `names the volume: ${e1?.message}`)
  t.match(e1?.message ?? '', /vol:77\/0000000000000005/, 'and the BSL')
  const e2 = await rejectsCode(t, () => volumes.resolve({ form: 'indexed', volume: 78, index: 2, fileId: 5n }), 'EIO', 'unknown volume, indexed')
  t.match(e2?.message ?? '', /volume 78\b/)
  const e3 = await rejectsCode(t, () => volumes.resolve({ form: 'mirrored', volume: 99, fileId: 5n }), 'EIO', 'unknown mirrored volume')
  t.match(e3?.message ?? '', /volume 99\b/)

  // A mirror that lists a volume the volume table lacks.
  const broken = rig(t, figureTables({ mirrors: mirrorMap([[20, [1, 42]]]) })).volumes
  const e4 = await rejectsCode(t, () => broken.resolve({ form: 'mirrored', volume: 20, fileId: 1n }), 'EIO', 'a mirror of an unknown volume')
  t.match(e4?.message ?? '', /volume 42\b/, 'names the missing mirror volume')
})

t.test('write goes to every place; read fails over in order', async t => {
  const { volumes, dev, opens, log } = rig(t)
  const bsl: BSL = { form: 'mirrored', volume: 10, fileId: 0xabcn }
  const id = objectIdOf(bsl)
  await volumes.write(blk(bsl), data)
  for (const [s, d] of [['X', 'x'], ['Y', 'y'], ['Z', 'z']]) {
    t.same(dev(s, d).objects.get(id)?.data, data, `copy on ${s}:${d}`)
  }
  t.same(opens.sort(), ['X:x', 'Y:y', 'Z:z'], 'each device opened once')

  log.length = 0
  t.same(await volumes.read(blk(bsl)), data, 'read')
  t.same(log, [`get Y:y ${id}`], 'the first copy is enough')

  log.length = 0
  dev('Y', 'y').failGet = true
  t.same(await volumes.read(blk(bsl)), data, 'read with the first copy failing')
  t.same(log, [`get Y:y ${id}`, `get Z:z ${id}`], 'falls through to the second, in order')

  log.length = 0
  dev('Z', 'z').corrupt = true
  t.same(await volumes.read(blk(bsl)), data, 'read with the first failing and the second corrupt')
  t.same(log, [`get Y:y ${id}`, `get Z:z ${id}`, `get X:x ${id}`], 'tries every copy in order')

  log.length = 0
  dev('X', 'x').objects.delete(id)
  const err = await rejectsCode(t, () => volumes.read(blk(bsl)), 'EIO', 'every copy failing is EIO')
  t.ok(err)
  t.same(log, [`get Y:y ${id}`, `get Z:z ${id}`, `get X:x ${id}`])

  dev('Y', 'y').failGet = false
  t.same(await volumes.read(blk(bsl)), data, 'a copy that comes back is used again')

  await rejectsCode(t, () => volumes.read({ ...blk(bsl), checksum: sum ^ 1 }), 'EIO', 'a wrong checksum is EIO from every copy')
  t.same(opens.length, 3, 'no device was opened twice')
})

t.test('readRange reads and verifies only the chunks it needs, with the same failover as read', async t => {
  const { volumes, dev, log, toHeal } = rig(t)
  const big = Buffer.from(Array.from({ length: 3 * CHUNK_BYTES + 1000 }, (_v, i) => (i * 7 + (i >> 9)) & 0xff))
  const bsl: BSL = { form: 'mirrored', volume: 0, fileId: 0x51n }
  const id = objectIdOf(bsl)
  const block: BlockRecord = { bsl, length: big.length, checksum: checksum(big), chunks: chunkSums(big) }
  await volumes.write(block, big)

  log.length = 0
  let r = await volumes.readRange(block, CHUNK_BYTES + 10, 100)
  t.equal(r.start, CHUNK_BYTES, 'starts at the chunk boundary')
  t.same(r.data, big.subarray(CHUNK_BYTES, 2 * CHUNK_BYTES), 'the whole covering chunk')
  t.same(log, [`range X:x ${id} ${CHUNK_BYTES}+${CHUNK_BYTES}`], 'one ranged read of one copy, no whole get')
  r = await volumes.readRange(block, 2 * CHUNK_BYTES - 5, CHUNK_BYTES + 10)
  t.same([r.start, r.data], [CHUNK_BYTES, big.subarray(CHUNK_BYTES, big.length)], 'a span over chunks, the last one short')

  // The first copy's chunk 1 rotted: the read moves to the next copy and queues the bad one for heal.
  log.length = 0
  dev('X', 'x').rotAt = CHUNK_BYTES + 5
  r = await volumes.readRange(block, CHUNK_BYTES, 10)
  t.same(r.data, big.subarray(CHUNK_BYTES, 2 * CHUNK_BYTES), 'good bytes from the other mirror')
  t.same(log, [`range X:x ${id} ${CHUNK_BYTES}+${CHUNK_BYTES}`, `range Y:y ${id} ${CHUNK_BYTES}+${CHUNK_BYTES}`], 'failed over in order')
  t.same(toHeal.map(x => [objectIdOf(x.block.bsl), x.volume]), [[id, 1]], 'the bad copy is queued for heal')
  t.same(toHeal[0].block.chunks, block.chunks, 'with the chunk sums')
  t.equal(volumes.health.report('X:x').corrupt, 1, 'and counted as a corrupt copy')
  t.same((await volumes.readRange(block, 0, 10)).data, big.subarray(0, CHUNK_BYTES), 'other chunks of the copy still read')

  // A single copy with a rotted chunk: EIO, never wrong bytes.
  const one: BSL = { form: 'logical', volume: 3, fileId: 0x52n }
  const oneBlock = { ...block, bsl: one }
  await volumes.write(oneBlock, big)
  dev('Z', 'z').rotAt = 3 * CHUNK_BYTES + 1
  const err = await rejectsCode(t, () => volumes.readRange(oneBlock, 3 * CHUNK_BYTES, 1), 'EIO', 'a corrupt single copy is EIO')
  t.match(err?.message ?? '', /chunk checksum mismatch.*chunk 3/, err?.message)
  t.same((await volumes.readRange(oneBlock, 0, 1)).data, big.subarray(0, CHUNK_BYTES), 'its good chunks read')

  // A record without chunk sums (written before they existed) is read whole.
  log.length = 0
  const old: BlockRecord = { bsl, length: big.length, checksum: checksum(big) }
  dev('X', 'x').rotAt = null
  r = await volumes.readRange(old, CHUNK_BYTES + 1, 3)
  t.same([r.start, r.data], [CHUNK_BYTES, big.subarray(CHUNK_BYTES, 2 * CHUNK_BYTES)], 'same answer')
  t.same(log, [`get X:x ${id}`], 'from a whole verified get')

  await rejectsCode(t, () => volumes.readRange(block, big.length - 1, 2), 'EINVAL', 'a range past the block')
  await rejectsCode(t, () => volumes.readRange(block, 0, 0), 'EINVAL', 'an empty range')
})

t.test('a device that cannot be opened is a failed copy, and is retried later', async t => {
  const { volumes, dev, opens, unreachable } = rig(t)
  const bsl: BSL = { form: 'indexed', volume: 0, index: 3, fileId: 77n }
  dev('X', 'x').objects.set(objectIdOf(bsl), { data, sum })
  dev('Y', 'y').objects.set(objectIdOf(bsl), { data, sum })
  unreachable.add('X:x')
  t.same(await volumes.read(blk(bsl)), data, 'read skips a device that cannot be opened')
  unreachable.clear()
  t.same(await volumes.read(blk(bsl)), data)
  t.equal(opens.filter(o => o === 'X:x').length, 2, 'the failed open is retried, not cached as failed')
  await rejectsCode(t, () => volumes.write(blk({ form: 'logical', volume: 77, fileId: 1n }), data), 'EIO', 'write to an unknown volume')

  // Nothing reachable: EIO for reads, and writes fail rather than drop a copy.
  const other = rig(t)
  other.unreachable.add('X:x')
  other.unreachable.add('Y:y')
  other.dev('Y', 'y').objects.set(objectIdOf(bsl), { data, sum })
  const err = await rejectsCode(t, () => other.volumes.read(blk(bsl)), 'EIO', 'no device reachable is EIO')
  t.match(err?.message ?? '', /idx:0\.3\/000000000000004d/, `names the block: ${err?.message}`)
  other.unreachable.delete('Y:y')
  t.ok(await errorOf(() => other.volumes.write(blk(bsl), data)), 'a write that cannot reach every copy fails rather than silently dropping a copy')
})

t.test('a write that fails on one copy is not reported as done', async t => {
  const { volumes, dev, log, toHeal } = rig(t)
  const bsl: BSL = { form: 'logical', volume: 0, fileId: 9n }
  dev('Y', 'y').failPut = true
  const err = await rejectsCode(t, () => volumes.write(blk(bsl), data), 'EIO', 'write rejects with the device\'s error')
  t.match(err?.message ?? '', /only 1 of 2 copies written, 2 needed.*Y:y: put failed/, `says how many copies and why: ${err?.message}`)
  t.ok(log.includes(`put X:x ${objectIdOf(bsl)}`), 'the other copy was written (in parallel)')
  await new Promise(resolve => setTimeout(resolve, 20))
  t.notOk(dev('X', 'x').objects.has(objectIdOf(bsl)), 'and removed again: nothing will reference it')
  t.same(toHeal, [], 'a failed write queues nothing for heal (the caller writes the block again)')
})

t.test('delete reaches every place', async t => {
  const { volumes, dev, log } = rig(t)
  const bsl: BSL = { form: 'mirrored', volume: 10, fileId: 0x55n }
  const id = objectIdOf(bsl)
  await volumes.write(blk(bsl), data)
  log.length = 0
  await volumes.delete(bsl)
  t.same(log.sort(), [`delete X:x ${id}`, `delete Y:y ${id}`, `delete Z:z ${id}`])
  for (const [s, d] of [['X', 'x'], ['Y', 'y'], ['Z', 'z']]) t.notOk(dev(s, d).objects.has(id), `gone from ${s}:${d}`)
  await volumes.delete(bsl)
  t.pass('deleting again is not an error')
  const phys: BSL = { form: 'physical', server: 'P', device: 'p', fileId: 0x66n }
  await volumes.write(blk(phys), data)
  t.ok(dev('P', 'p').objects.has(objectIdOf(phys)), 'a physical BSL writes to its place')
  await volumes.delete(phys)
  t.notOk(dev('P', 'p').objects.has(objectIdOf(phys)))
  dev('X', 'x').failDelete = true
  await rejectsCode(t, () => volumes.delete({ form: 'logical', volume: 1, fileId: 1n }), 'EIO', 'a failed delete is reported')
})

t.test('newBlock uses the default volume and the indexed form', async t => {
  const { volumes } = rig(t, figureTables({ defaultVolume: 2 }))
  t.equal(volumes.defaultVolume, 2)
  t.same(volumes.newBlock(0x1234n, 5), { form: 'indexed', volume: 2, index: 5, fileId: 0x1234n })
  volumes.update(figureTables({ defaultVolume: 10 }))
  const b = volumes.newBlock(1n, 0)
  t.same(b, { form: 'indexed', volume: 10, index: 0, fileId: 1n }, 'a volume only in the mirror table is a valid default')
  t.equal(volumes.resolve(b).length, 3, 'and resolves to its mirrors')
  volumes.update(figureTables({ defaultVolume: 55 }))
  const err = await rejectsCode(t, () => volumes.newBlock(1n, 0), 'EIO', 'an unknown default volume')
  t.match(err?.message ?? '', /55/, 'names the volume')
})

t.test('update(tables) changes later resolutions (remap)', async t => {
  const tables = figureTables()
  const { volumes, dev, log } = rig(t, tables)
  const bsl: BSL = { form: 'indexed', volume: 3, index: 0, fileId: 0x99n }
  const id = objectIdOf(bsl)
  await volumes.write(blk(bsl), data)
  t.same(volumes.resolve(bsl), [{ server: 'Z', device: 'z' }])
  // Z's disk moves to W: copy, then change one row. The BSL stays the same.
  dev('W', 'w').objects.set(id, { data, sum })
  volumes.update(figureTables({ volumes: new Map([...tables.volumes, [3, row(3, 'W', 'w')]]) }))
  t.same(volumes.resolve(bsl), [{ server: 'W', device: 'w' }], 'the volume now resolves to the new place')
  dev('Z', 'z').failGet = true
  log.length = 0
  t.same(await volumes.read(blk(bsl)), data, 'reads go to the new place')
  t.same(log, [`get W:w ${id}`])
  // A mirror change too.
  volumes.update(figureTables({ mirrors: mirrorMap([[10, [1]]]) }))
  t.same(volumes.resolve({ form: 'mirrored', volume: 10, fileId: 1n }), [{ server: 'X', device: 'x' }])
  await rejectsCode(t, () => volumes.resolve({ form: 'mirrored', volume: 0, fileId: 1n }), 'EIO', 'a mirror removed by the update is gone')
})

t.test('space and close', async t => {
  const { volumes, dev } = rig(t)
  await volumes.write(blk({ form: 'logical', volume: 1, fileId: 1n }), data)
  const space = await volumes.space()
  t.same([...space.keys()].sort(), ['X:x', 'Y:y', 'Z:z'])
  t.same(space.get('X:x'), { total: 1000, free: 500, available: 400 })
  await volumes.close()
  t.ok(dev('X', 'x').closed, 'close closes the opened devices')
})

t.test('the last copy\'s own error code must not leak out of read', async t => {
  // The Device interface allows ENOENT for a missing object; a read of a block
  // no copy can supply is an I/O error for the program that reads the file.
  const { volumes, dev } = rig(t)
  const bsl: BSL = { form: 'logical', volume: 0, fileId: 3n }
  dev('X', 'x').failGet = true
  dev('Y', 'y').get = async (objectId: string) => { throw new FsError('ENOENT', `object ${objectId} is not on Y:y`) }
  await rejectsCode(t, () => volumes.read(blk(bsl)), 'EIO', 'all copies failed → EIO')
})

async function errorOf (fn: () => Promise<unknown>): Promise<unknown> {
  try {
    await fn()
  } catch (err) {
    return err
  }
  return undefined
}

t.test('with real LocalDevices', async t => {
  const root = t.testdir()
  const paths = { d1: join(root, 'd1'), d2: join(root, 'd2'), d3: join(root, 'd3') }
  const devs = new Map<string, LocalDevice>()
  for (const [name, path] of Object.entries(paths)) devs.set(`local:${name}`, await LocalDevice.create(path, { server: 'local', device: name }))
  const tables: Tables = {
    volumes: new Map([[1, row(1, 'local', 'd1')], [2, row(2, 'local', 'd2')]]),
    mirrors: mirrorMap([[10, [1, 2]]]),
    devices: new Map(),
    servers: new Map(),
    defaultVolume: 10
  }
  const volumes = new Volumes(tables, async p => {
    const d = devs.get(placeText(p))
    if (!d) throw new Error(`no device ${placeText(p)}`)
    return d
  })
  t.teardown(() => volumes.close())

  const bsl = volumes.newBlock(0x1234abcdn, 0)
  t.same(bsl, { form: 'indexed', volume: 10, index: 0, fileId: 0x1234abcdn })
  const id = objectIdOf(bsl)
  const objectFile = (dev: string): string => join(paths[dev as keyof typeof paths], 'objects', id.slice(-2), id)

  await volumes.write(blk(bsl), data)
  t.same(await fsp.readFile(objectFile('d1')), data, 'the bytes are on d1')
  t.same(await fsp.readFile(objectFile('d2')), data, 'and on d2')
  t.same(await volumes.read(blk(bsl)), data)

  // Bit rot on the first copy: the read falls over to the mirror.
  const rotten = Buffer.from(data)
  rotten[10] ^= 0x40
  await fsp.writeFile(objectFile('d1'), rotten)
  t.same(await volumes.read(blk(bsl)), data, 'a corrupt first copy falls over to the second')

  // The second copy lost too: EIO.
  await fsp.unlink(objectFile('d2'))
  await rejectsCode(t, () => volumes.read(blk(bsl)), 'EIO', 'no good copy left')

  // Heal d2 and move volume 1 to d3 (a remap with a copy).
  await devs.get('local:d2')!.put(id, data, sum)
  await devs.get('local:d3')!.put(id, data, sum)
  volumes.update({ ...tables, volumes: new Map([[1, row(1, 'local', 'd3')], [2, row(2, 'local', 'd2')]]) })
  t.same(volumes.resolve(bsl), [{ server: 'local', device: 'd3' }, { server: 'local', device: 'd2' }])
  t.same(await volumes.read(blk(bsl)), data, 'after the remap')

  await volumes.delete(bsl)
  t.equal(await devs.get('local:d3')!.stat(id), null, 'deleted from d3')
  t.equal(await devs.get('local:d2')!.stat(id), null, 'deleted from d2')
  t.ok(await devs.get('local:d1')!.stat(id), 'd1 is no longer a place of volume 1, so its (rotten) copy stays')
  await rejectsCode(t, () => volumes.read(blk(bsl)), 'EIO', 'read after delete')

  const space = await volumes.space()
  t.same([...space.keys()].sort(), ['local:d2', 'local:d3'])
  t.ok((space.get('local:d2') as DeviceSpace).total > 0)
})

const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms))

t.test('a place that does not answer is down: skipped, probed, and back when it answers', async t => {
  const { volumes, dev, log } = rig(t)
  const bsl: BSL = { form: 'indexed', volume: 10, index: 0, fileId: 0x77n }
  const id = objectIdOf(bsl)
  await volumes.write(blk(bsl), data)
  dev('Y', 'y').unreachable = true
  log.length = 0
  t.same(await volumes.read(blk(bsl)), data, 'read falls over from the dead first copy')
  t.same(log, [`get Y:y ${id}`, `get Z:z ${id}`])
  t.notOk(volumes.health.isUp('Y:y'), 'Y:y is marked down')
  t.equal(volumes.failoversOf(10), 1, 'one failover counted for volume 10')
  t.equal(volumes.health.report('Y:y').failovers, 1, 'and against the place that failed')
  t.equal(volumes.health.report('Z:z').served, 1)
  log.length = 0
  t.same(await volumes.read(blk(bsl)), data)
  t.same(log, [`get Z:z ${id}`], 'a down place is not asked again on every read')
  t.equal(volumes.failoversOf(10), 1, 'skipping a down place is not a failover')

  const up = new Promise<string>(resolve => volumes.once('up', resolve))
  dev('Y', 'y').unreachable = false
  t.equal(await Promise.race([up, sleep(3000).then(() => 'timeout')]), 'Y:y', 'the background probe finds it back')
  log.length = 0
  t.same(await volumes.read(blk(bsl)), data)
  t.same(log, [`get Y:y ${id}`], 'and reads prefer it again')
  t.equal(volumes.health.report('Y:y').downs, 1)
})

t.test('every copy down: EIO at once, naming each copy', async t => {
  const { volumes, dev } = rig(t)
  const bsl: BSL = { form: 'indexed', volume: 0, index: 1, fileId: 0x78n }
  await volumes.write(blk(bsl), data)
  dev('X', 'x').unreachable = true
  dev('Y', 'y').unreachable = true
  await rejectsCode(t, () => volumes.read(blk(bsl)), 'EIO', 'both copies unreachable')
  const started = Date.now()
  const err = await rejectsCode(t, () => volumes.read(blk(bsl)), 'EIO', 'again, now that both are down')
  t.ok(Date.now() - started < 50, 'without asking anyone')
  t.match(err?.message ?? '', /every copy is down.*X:x.*Y:y/, `says so: ${err?.message}`)
})

t.test('a hung copy: the read is hedged to the next one, well within the timeout', async t => {
  const { volumes, dev, log } = rig(t, figureTables(), 1500)
  const bsl: BSL = { form: 'indexed', volume: 0, index: 2, fileId: 0x79n }
  const id = objectIdOf(bsl)
  await volumes.write(blk(bsl), data)
  dev('X', 'x').delayMs = 60_000
  log.length = 0
  const started = Date.now()
  t.same(await volumes.read(blk(bsl)), data, 'the read completes from Y')
  const took = Date.now() - started
  t.ok(took < 750, `hedged after at most half the timeout (${took} ms)`)
  t.same(log, [`get X:x ${id}`, `get Y:y ${id}`])
  t.same(dev('X', 'x').limits[0], { timeoutMs: 1500, retries: 0 }, 'a copy of a mirror is asked once, with the copy timeout')
  t.equal(volumes.failoversOf(0), 1)
  await sleep(1600)
  t.notOk(volumes.health.isUp('X:x'), 'the hung copy is down once its timeout passes')
})

t.test('missing and corrupt copies are queued for heal; the place stays up', async t => {
  const { volumes, dev, toHeal } = rig(t)
  const bsl: BSL = { form: 'indexed', volume: 10, index: 0, fileId: 0x7an }
  const id = objectIdOf(bsl)
  await volumes.write(blk(bsl), data)
  dev('Y', 'y').objects.delete(id)
  dev('Z', 'z').corrupt = true
  t.same(await volumes.read(blk(bsl)), data, 'served by the third copy')
  await sleep(10)
  t.same(toHeal.map(r => r.volume).sort(), [2, 3], 'volume 2 (Y, missing) and 3 (Z, corrupt) queued')
  t.same(toHeal[0].block, blk(bsl), 'with the block record')
  t.ok(volumes.health.isUp('Y:y') && volumes.health.isUp('Z:z'), 'a bad copy does not take its place down')
  t.equal(volumes.health.report('Y:y').missing, 1)
  t.equal(volumes.health.report('Z:z').corrupt, 1)
  dev('Z', 'z').corrupt = false

  t.equal(await volumes.healCopy(blk(bsl), 2), 'copied', 'heal copies Y back from a good copy')
  t.same(dev('Y', 'y').objects.get(id)?.data, data)
  t.equal(await volumes.healCopy(blk(bsl), 3), 'present', 'a copy that reads back right is left alone')
  t.equal(await volumes.healCopy(blk(bsl), 7), 'gone', 'a volume that is not a mirror of the block')
  dev('X', 'x').unreachable = true
  dev('Z', 'z').unreachable = true
  await volumes.read(blk(bsl))
  dev('Y', 'y').objects.delete(id)
  dev('Y', 'y').unreachable = false
  await rejectsCode(t, () => volumes.healCopy(blk(bsl), 2), 'EIO', 'no good source up')
  await rejectsCode(t, () => volumes.healCopy(blk(bsl), 1), 'EIO', 'the target is down')
})

t.test('degraded writes: min copies decide; the missed copies are recorded before the write returns', async t => {
  const { volumes, dev, toHeal } = rig(t, figureTables({ mirrors: mirrorMap([[10, [2, 3, 1], 2]]) }))
  const bsl: BSL = { form: 'indexed', volume: 10, index: 0, fileId: 0x7bn }
  const id = objectIdOf(bsl)
  dev('Z', 'z').unreachable = true
  await volumes.write(blk(bsl), data)
  t.same(toHeal, [{ block: blk(bsl), volume: 3 }], 'Z\'s copy (volume 3) is recorded for healing')
  t.ok(dev('X', 'x').objects.has(id) && dev('Y', 'y').objects.has(id), 'the other two are written')
  t.notOk(volumes.health.isUp('Z:z'), 'Z is down')

  dev('Y', 'y').failPut = true
  const bsl2: BSL = { ...bsl, fileId: 0x7cn }
  await rejectsCode(t, () => volumes.write(blk(bsl2), data), 'EIO', 'one copy of three is below min copies 2')
  t.equal(toHeal.length, 1, 'nothing more recorded')

  // Without a heal queue, a degraded write cannot be recorded: it fails rather than drop the copy.
  const bare = new Volumes(figureTables({ mirrors: mirrorMap([[10, [2, 3], 1]]) }), async p => dev(p.server, p.device))
  t.teardown(() => bare.close())
  await rejectsCode(t, () => bare.write(blk({ ...bsl, fileId: 0x7dn }), data), 'EIO', 'no heal queue')
})

t.test('a copy much slower than the others is read last', async t => {
  const { volumes, dev, log } = rig(t)
  const bsl: BSL = { form: 'indexed', volume: 0, index: 0, fileId: 0x7en }
  const id = objectIdOf(bsl)
  await volumes.write(blk(bsl), data)
  dev('X', 'x').delayMs = 60
  for (let i = 0; i < 3; i++) await volumes.read(blk(bsl))
  log.length = 0
  dev('Y', 'y').delayMs = 0
  await volumes.read(blk(bsl))
  t.same(log, [`get Y:y ${id}`], 'Y (fast) is asked first now')
  t.ok(volumes.health.isUp('X:x'), 'slow is not down')
})

t.test('a shadow place gets a copy of every new block of a volume being remapped', async t => {
  const { volumes, dev } = rig(t)
  const plain: BSL = { form: 'indexed', volume: 3, index: 0, fileId: 0x90n }
  const mirrored: BSL = { form: 'indexed', volume: 0, index: 0, fileId: 0x91n }
  const other: BSL = { form: 'indexed', volume: 2, index: 0, fileId: 0x92n }
  const shadow = volumes.addShadow(3, { server: 'Z', device: 'z' }, { server: 'W', device: 'w' })
  t.throws(() => volumes.addShadow(3, { server: 'Z', device: 'z' }, { server: 'V', device: 'v' }), /already being remapped/, 'one remap of a volume at a time')
  await volumes.write(blk(plain), data)
  await volumes.write(blk(other), data)
  t.ok(dev('W', 'w').objects.has(objectIdOf(plain)), 'a block of volume 3 reaches the new place')
  t.notOk(dev('W', 'w').objects.has(objectIdOf(other)), 'a block of another volume does not')
  // Volume 3 as a mirror: mirror 10 is [2, 3, 1].
  await volumes.write(blk({ ...mirrored, volume: 10 }), data)
  t.ok(dev('W', 'w').objects.has(objectIdOf(mirrored)), 'a block of a mirror that includes volume 3 too')
  dev('W', 'w').failPut = true
  const missed: BSL = { ...plain, fileId: 0x93n }
  await volumes.write(blk(missed), data)
  t.ok(dev('Z', 'z').objects.has(objectIdOf(missed)), 'a failing new place does not fail the write')
  t.same([...shadow.missed.keys()], [objectIdOf(missed)], 'the missed copy is noted for the remap')
  shadow.remove()
  dev('W', 'w').failPut = false
  await volumes.write(blk({ ...plain, fileId: 0x94n }), data)
  t.notOk(dev('W', 'w').objects.has('0000000000000094'), 'after remove, no more shadow copies')
  await volumes.drain()
  t.pass('drain with nothing in flight returns')
})

t.test('while a volume is remapped, a delete reaches its old and its new place, before and after the switch', async t => {
  const tables = figureTables()
  const { volumes, dev } = rig(t, tables)
  const [Z, W] = [dev('Z', 'z'), dev('W', 'w')]
  const bsl = (fileId: bigint): BSL => ({ form: 'indexed', volume: 3, index: 0, fileId })
  const shadow = volumes.addShadow(3, { server: 'Z', device: 'z' }, { server: 'W', device: 'w' })
  await volumes.write(blk(bsl(0xa0n)), data)
  await volumes.write(blk(bsl(0xa1n)), data)
  await volumes.delete(bsl(0xa0n))
  t.notOk(Z.objects.has(objectIdOf(bsl(0xa0n))) || W.objects.has(objectIdOf(bsl(0xa0n))), 'before the switch: gone from both')
  // The switch: volume 3 now names W.
  volumes.update({ ...tables, volumes: new Map([...tables.volumes, [3, row(3, 'W', 'w')]]) })
  await volumes.write(blk(bsl(0xa2n)), data)
  t.notOk(Z.objects.has(objectIdOf(bsl(0xa2n))), 'after the switch a new block goes to the new place only')
  t.notOk(shadow.written.has(objectIdOf(bsl(0xa2n))), 'and is not a shadow copy')
  Z.objects.set(objectIdOf(bsl(0xa2n)), { data, sum })
  await volumes.delete(bsl(0xa1n))
  t.notOk(Z.objects.has(objectIdOf(bsl(0xa1n))) || W.objects.has(objectIdOf(bsl(0xa1n))), 'after the switch: a block from before it is gone from both')
  shadow.remove()
  await volumes.delete(bsl(0xa2n))
  t.ok(Z.objects.has(objectIdOf(bsl(0xa2n))), 'once the remap is over, a delete reaches the volume\'s place only')
  t.notOk(W.objects.has(objectIdOf(bsl(0xa2n))), 'which is the new one')
})

/** What the health of a place says about its copies, to show that nothing changed. */
const healthOf = (volumes: Volumes, place: string) => {
  const { up, missing, corrupt, downs, failovers } = volumes.health.report(place)
  return { up, missing, corrupt, downs, failovers }
}
const untouched = { up: true, missing: 0, corrupt: 0, downs: 0, failovers: 0 }

/** Wait until `cond` holds (polling), or fail after `ms`. */
async function until (t: Test, cond: () => boolean, what: string, ms = 3000): Promise<void> {
  const end = Date.now() + ms
  while (!cond() && Date.now() < end) await sleep(5)
  t.ok(cond(), what)
}

t.test('an aborted read of hung copies rejects EINTR at once; the copies are not failed ones', async t => {
  const { volumes, dev, log, toHeal } = rig(t)
  const bsl: BSL = { form: 'indexed', volume: 0, index: 0, fileId: 0xb0n }
  const id = objectIdOf(bsl)
  await volumes.write(blk(bsl), data)
  // X honours the signal (EINTR); Y ignores it and fails late, unreachable, as a device whose
  // timeout races the abort.
  dev('X', 'x').hang = 'signal'
  dev('Y', 'y').hang = 'ignore'
  log.length = 0
  const ac = new AbortController()
  const reading = volumes.read(blk(bsl), undefined, ac.signal)
  reading.catch(() => undefined)
  await until(t, () => log.length === 2, 'the hung first copy is hedged to the second')
  t.same(log, [`get X:x ${id}`, `get Y:y ${id}`])
  t.equal(dev('X', 'x').limits[0]?.signal, ac.signal, 'the signal goes to each device call')
  t.equal(dev('Y', 'y').limits[0]?.signal, ac.signal, 'the hedged one\'s too')
  t.match(dev('X', 'x').limits[0], { timeoutMs: 1500, retries: 0 }, 'with the copy limits')
  const aborted = Date.now()
  ac.abort()
  const err = await rejectsCode(t, () => reading, 'EINTR', 'the read rejects EINTR')
  t.ok(Date.now() - aborted < 50, `at once (${Date.now() - aborted} ms)`)
  t.match(err?.message ?? '', /idx:0\.0\/00000000000000b0.*interrupted/, `names the block: ${err?.message}`)
  dev('Y', 'y').release(new FsError('EIO', 'Y:y unreachable', { fault: 'unreachable' }))
  await sleep(20)
  t.same(log.length, 2, 'no copy is asked after the abort')
  t.same(healthOf(volumes, 'X:x'), untouched, 'X: no health change')
  t.same(healthOf(volumes, 'Y:y'), untouched, 'Y: no health change, though it failed late')
  t.same(toHeal, [], 'nothing queued for heal')
  t.equal(volumes.failoversOf(0), 0, 'no failover counted')

  // Once they answer again, the same read works, without a signal and with one that never aborts.
  dev('X', 'x').hang = false
  dev('Y', 'y').hang = false
  t.same(await volumes.read(blk(bsl)), data, 'read without a signal')
  t.same(await volumes.read(blk(bsl), undefined, new AbortController().signal), data, 'read with a signal not aborted')
})

t.test('an aborted signal: EINTR before any copy is asked', async t => {
  const { volumes, log } = rig(t)
  const bsl: BSL = { form: 'indexed', volume: 0, index: 0, fileId: 0xb1n }
  await volumes.write(blk(bsl), data)
  log.length = 0
  const signal = AbortSignal.abort()
  await rejectsCode(t, () => volumes.read(blk(bsl), undefined, signal), 'EINTR', 'read')
  await rejectsCode(t, () => volumes.readRange({ ...blk(bsl), chunks: chunkSums(data) }, 0, 10, undefined, signal), 'EINTR', 'readRange')
  await rejectsCode(t, () => volumes.readRange(blk(bsl), 0, 10, undefined, signal), 'EINTR', 'readRange of a block without chunk sums')
  const lone: BSL = { form: 'indexed', volume: 3, index: 0, fileId: 0xb1n }
  await volumes.write(blk(lone), data)
  log.length = 0
  await rejectsCode(t, () => volumes.read(blk(lone), undefined, signal), 'EINTR', 'read of a lone copy')
  t.same(log, [], 'no device was asked')
})

t.test('an aborted readRange of a lone hung copy rejects EINTR at once, and the place stays up', async t => {
  const { volumes, dev, log, toHeal } = rig(t)
  const big = Buffer.alloc(2 * CHUNK_BYTES, 7)
  const bsl: BSL = { form: 'indexed', volume: 3, index: 0, fileId: 0xb2n }
  const block: BlockRecord = { bsl, length: big.length, checksum: checksum(big), chunks: chunkSums(big) }
  await volumes.write(block, big)
  const Z = dev('Z', 'z')
  Z.hang = 'ignore'
  log.length = 0
  const ac = new AbortController()
  const reading = volumes.readRange(block, CHUNK_BYTES, 10, Buffer.alloc(CHUNK_BYTES), ac.signal)
  reading.catch(() => undefined)
  await until(t, () => log.length === 1, 'the one copy is asked')
  t.same(Z.limits[0], { signal: ac.signal }, 'a lone copy keeps the device\'s own timeout and retries, and gets the signal')
  const aborted = Date.now()
  ac.abort()
  await rejectsCode(t, () => reading, 'EINTR', 'EINTR, though the device does not honour the signal')
  t.ok(Date.now() - aborted < 50, `at once (${Date.now() - aborted} ms)`)
  Z.release(new FsError('EIO', 'Z:z unreachable', { fault: 'unreachable' }))
  await sleep(20)
  t.same(healthOf(volumes, 'Z:z'), untouched, 'a late failure of the aborted copy changes nothing')
  t.same(toHeal, [])
  Z.hang = false
  t.same((await volumes.readRange(block, CHUNK_BYTES, 10)).data, big.subarray(CHUNK_BYTES), 'the copy reads again')
})

/** A fault the volumes layer does not know as a bad copy: the devices' "transient" (EMFILE, ENOMEM, EAGAIN). */
const TRANSIENT = 'transient' as string as CopyFault

t.test('a copy failing with a fault other than missing or corrupt fails over, and is not queued for heal', async t => {
  const { volumes, dev, log, toHeal } = rig(t)
  const bsl: BSL = { form: 'indexed', volume: 10, index: 0, fileId: 0xb3n }
  const id = objectIdOf(bsl)
  await volumes.write(blk(bsl), data)
  dev('Y', 'y').failWith = new FsError('EIO', `read of object ${id} on Y:y failed: EMFILE: too many open files`, { fault: TRANSIENT })
  dev('Z', 'z').failWith = new FsError('ENOMEM', 'Z:z: cannot allocate memory')
  log.length = 0
  t.same(await volumes.read(blk(bsl)), data, 'served by the third copy')
  t.same(log, [`get Y:y ${id}`, `get Z:z ${id}`, `get X:x ${id}`], 'failed over in order')
  t.same((await volumes.readRange({ ...blk(bsl), chunks: chunkSums(data) }, 0, 10)).data, data, 'readRange too')
  await sleep(10)
  t.same(toHeal, [], 'nothing queued for heal')
  t.same(healthOf(volumes, 'Y:y'), { ...untouched, failovers: 2 }, 'Y stays up, no bad copy counted')
  t.same(healthOf(volumes, 'Z:z'), { ...untouched, failovers: 2 }, 'Z too')

  // A lone copy: EIO for the reader, nothing queued, the place up.
  const lone: BSL = { form: 'indexed', volume: 2, index: 0, fileId: 0xb4n }
  dev('Y', 'y').failWith = null
  await volumes.write(blk(lone), data)
  dev('Y', 'y').failWith = new FsError('EIO', 'EAGAIN', { fault: TRANSIENT })
  await rejectsCode(t, () => volumes.read(blk(lone)), 'EIO', 'a lone copy failing transiently is EIO')
  t.same(toHeal, [], 'still nothing queued')
  t.ok(volumes.health.isUp('Y:y'), 'Y is up')

  // Heal and check do not take it for a bad copy either.
  await rejectsCode(t, () => volumes.healCopy(blk(bsl), 2), 'EIO', 'heal of that copy fails for now')
  t.same(dev('Y', 'y').objects.get(id)?.data, data, 'and copies nothing over it')
  t.match(await volumes.checkCopy(blk(bsl), 2), { problem: 'error' }, 'check says error, not missing or corrupt')
  t.same(toHeal, [])
})
