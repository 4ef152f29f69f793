import { randomBytes, randomUUID } from 'node:crypto'
import { constants as fsConstants } from 'node:fs'
import * as fsp from 'node:fs/promises'
import { dirname, join } from 'node:path'
import createDebug from 'debug'
import { isObjectId, validName } from '../bsl'
import { checksum } from '../checksum'
import { syncDir, writeWhole } from '../durable'
import { FsError } from '../errors'
import { MAX_BLOCK_BYTES } from '../limits'
import { CallLimits, Device, DeviceSpace, checkDeviceRequest, checkNotInterrupted, checkRange, rangeBuffer } from './device'
import { HandleCache, handleLimit } from './handles'
import { putObject, readCached, readObject, syncFs } from './object-io'

const log = createDebug('bslfs:devices')

export const MARKER_FILE = 'bslfs-device.json'
/**
 * Objects from this size on are written and read past the page cache
 * (O_DIRECT): for them the kernel's copy costs more CPU than the disk's wait,
 * for a smaller one the other way round (native-notes/object-io.md).
 */
const DIRECT_MIN_BYTES = 256 * 1024
export const MARKER_FORMAT = 'bslfs-device'
export const MARKER_VERSION = 1

/** The identity file at the root of a local device. */
export interface DeviceMarker {
  format: typeof MARKER_FORMAT
  version: number
  server: string
  device: string
  id: string
  created: string
}

export interface DeviceNames {
  server: string
  device: string
}

/**
 * Errors of a read that say the process or the system ran short of something
 * for the moment (descriptors, memory, a busy resource), not that the copy is
 * bad: another copy is asked, and nothing is queued for repair.
 */
const TRANSIENT_CODES = new Set(['EMFILE', 'ENFILE', 'ENOMEM', 'EAGAIN', 'EWOULDBLOCK', 'ENOBUFS', 'EBUSY', 'EINTR'])

// Temp names for the marker live beside it (rename must stay in one directory).
const MARKER_TMP_RE = /^bslfs-device\.json\.[0-9a-f]+\.tmp$/

function errCode (err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code
}

/** Writes `data` to `path` whole or not at all: temp file, fsync, rename, fsync of the directory. */
async function writeFileAtomic (dir: string, name: string, data: string): Promise<void> {
  await writeWhole(join(dir, `${name}.${randomBytes(6).toString('hex')}.tmp`), join(dir, name), data)
  await syncDir(dir)
}

function notADevice (path: string, why: string): Error {
  return new Error(`${path} is not a bslfs device (${why}); create one with \`bslfs device add\` or \`bslfs init\`, or check the path`)
}

/** Reads and checks the marker; throws a plain Error (a setup problem, not an I/O error of a FUSE call). */
async function readMarker (path: string): Promise<DeviceMarker> {
  let text: string
  try {
    text = await fsp.readFile(join(path, MARKER_FILE), 'utf8')
  } catch (err) {
    if (errCode(err) === 'ENOENT') {
      try {
        await fsp.stat(path)
      } catch (e) {
        if (errCode(e) === 'ENOENT') throw notADevice(path, 'the directory does not exist')
      }
      throw notADevice(path, `no ${MARKER_FILE}`)
    }
    if (errCode(err) === 'ENOTDIR') throw notADevice(path, 'it is not a directory')
    throw new Error(`cannot read ${join(path, MARKER_FILE)}: ${(err as Error).message}`, { cause: err })
  }
  let m: Partial<DeviceMarker>
  try {
    m = JSON.parse(text)
  } catch (err) {
    throw new Error(`${join(path, MARKER_FILE)} is not valid JSON (${(err as Error).message}); the device marker is damaged`, { cause: err })
  }
  if (m === null || typeof m !== 'object' || m.format !== MARKER_FORMAT) {
    throw notADevice(path, `${MARKER_FILE} does not have format "${MARKER_FORMAT}"`)
  }
  if (m.version !== MARKER_VERSION) {
    throw new Error(`${join(path, MARKER_FILE)} has version ${String(m.version)}; this bslfs understands version ${MARKER_VERSION}` +
      (typeof m.version === 'number' && m.version > MARKER_VERSION ? ' (it was made by a newer bslfs)' : ''))
  }
  if (typeof m.server !== 'string' || typeof m.device !== 'string' || typeof m.id !== 'string') {
    throw new Error(`${join(path, MARKER_FILE)} is missing server, device or id; the device marker is damaged`)
  }
  return m as DeviceMarker
}

/**
 * A device that is a directory on a local disk:
 *
 *     bslfs-device.json          identity (written last by create)
 *     objects/<xy>/<objectId>    xy = the id's last two hex digits
 *     tmp/                       puts in progress; emptied on open
 *
 * Every object id is checked with isObjectId before it becomes part of a
 * path, so no caller-supplied string can reach outside the device.
 */
export class LocalDevice implements Device {
  readonly label: string
  readonly path: string
  readonly server: string
  readonly device: string
  /** The uuid written at create time: tells two devices with the same name apart. */
  readonly id: string
  private readonly objectsDir: string
  private readonly tmpDir: string
  // Fan-out dirs known to exist, held open so a put's directory fsync is one call, not three.
  private readonly fanouts = new Map<string, Promise<fsp.FileHandle>>()
  /** Handles kept open for getRange (random small reads). */
  private readonly handles = new HandleCache(handleLimit())
  private closed = false

  private constructor (path: string, marker: DeviceMarker) {
    this.path = path
    this.server = marker.server
    this.device = marker.device
    this.id = marker.id
    this.label = `${marker.server}:${marker.device}`
    this.objectsDir = join(path, 'objects')
    this.tmpDir = join(path, 'tmp')
  }

  /**
   * Makes `path` a device. The directory may be missing or empty (or hold
   * what an interrupted create left); anything else is refused. A path that
   * is already a device with the same names is simply opened, so a repeated
   * `init` is harmless; different names are refused.
   */
  static async create (path: string, names: DeviceNames): Promise<LocalDevice> {
    validName('server', names.server)
    validName('device', names.device)
    let made: string | undefined
    try {
      made = await fsp.mkdir(path, { recursive: true })
    } catch (err) {
      if (errCode(err) === 'EEXIST' || errCode(err) === 'ENOTDIR') throw new Error(`${path} exists and is not a directory`, { cause: err })
      throw err
    }
    // A new device directory must not vanish from its parent in a crash.
    if (made !== undefined) await syncDir(dirname(path))
    const entries = await fsp.readdir(path)
    if (entries.includes(MARKER_FILE)) {
      const m = await readMarker(path)
      if (m.server !== names.server || m.device !== names.device) {
        throw new Error(`${path} is already bslfs device ${m.server}:${m.device}, not ${names.server}:${names.device}`)
      }
      return LocalDevice.open(path, names)
    }
    // Only an interrupted create's leftovers may be here: empty objects/ and tmp/, marker temp files.
    for (const e of entries) {
      if (MARKER_TMP_RE.test(e)) {
        await fsp.unlink(join(path, e))
        continue
      }
      if ((e === 'objects' || e === 'tmp') && (await fsp.readdir(join(path, e)).catch(() => null))?.length === 0) continue
      throw new Error(`${path} is not empty and is not a bslfs device (found "${e}"); use an empty directory or a new path`)
    }
    await fsp.mkdir(join(path, 'objects'), { recursive: true })
    await fsp.mkdir(join(path, 'tmp'), { recursive: true })
    await syncDir(path)
    const marker: DeviceMarker = {
      format: MARKER_FORMAT,
      version: MARKER_VERSION,
      server: names.server,
      device: names.device,
      id: randomUUID(),
      created: new Date().toISOString()
    }
    // The marker goes last: its presence means the device is complete.
    await writeFileAtomic(path, MARKER_FILE, JSON.stringify(marker, null, 2) + '\n')
    log('created device %s:%s at %s (%s)', names.server, names.device, path, marker.id)
    return new LocalDevice(path, marker)
  }

  /**
   * Opens an existing device, checking that its marker names the expected
   * server and device, and clears tmp/ of puts a crash interrupted.
   * (Assumes one process opens a device at a time.)
   */
  static async open (path: string, names: DeviceNames): Promise<LocalDevice> {
    const m = await readMarker(path)
    if (m.server !== names.server || m.device !== names.device) {
      throw new Error(`${path} is bslfs device ${m.server}:${m.device}, expected ${names.server}:${names.device}; check the device path in the configuration`)
    }
    const dev = new LocalDevice(path, m)
    try {
      const st = await fsp.stat(dev.objectsDir)
      if (!st.isDirectory()) throw new Error('not a directory')
    } catch (err) {
      throw new Error(`${path} is damaged: ${dev.objectsDir} is missing or not a directory (${(err as Error).message})`, { cause: err })
    }
    await fsp.mkdir(dev.tmpDir, { recursive: true })
    const leftovers = await fsp.readdir(dev.tmpDir)
    for (const name of leftovers) {
      await fsp.rm(join(dev.tmpDir, name), { recursive: true, force: true })
    }
    if (leftovers.length > 0) log('%s: removed %d leftover temp file(s)', dev.label, leftovers.length)
    log('opened device %s at %s', dev.label, path)
    return dev
  }

  private check (objectId: string, sum?: number): void {
    checkDeviceRequest(this.label, this.closed, objectId, sum)
  }

  private fanoutOf (objectId: string): string {
    return join(this.objectsDir, objectId.slice(-2))
  }

  private objectPath (objectId: string): string {
    return join(this.fanoutOf(objectId), objectId)
  }

  /** A failed read of an object: EIO for the reader, with a message (and fault) that says missing, transient or corrupt. */
  private readError (objectId: string, err: unknown): FsError {
    const code = errCode(err)
    if (code === 'ENOENT') return new FsError('EIO', `object ${objectId} is missing on ${this.label}`, { cause: err, fault: 'missing' })
    if (code !== undefined && TRANSIENT_CODES.has(code)) {
      return new FsError('EIO', `read of object ${objectId} on ${this.label} failed for now: ${(err as Error).message}`, { cause: err, fault: 'transient' })
    }
    return new FsError('EIO', `read of object ${objectId} on ${this.label} failed: ${(err as Error)?.message ?? String(err)}`, { cause: err, fault: 'corrupt' })
  }

  private ioError (what: string, objectId: string, err: unknown): FsError {
    const code = errCode(err)
    if (code === 'ENOSPC' || code === 'EDQUOT') {
      return new FsError('ENOSPC', `${this.label} is full (${what} object ${objectId})`, { cause: err })
    }
    const fault = code !== undefined && TRANSIENT_CODES.has(code) ? 'transient' : undefined
    return new FsError('EIO', `${what} object ${objectId} on ${this.label} failed: ${(err as Error)?.message ?? String(err)}`, { cause: err, fault })
  }

  /** The fan-out directory of an object, made (durably) when it is the first there. */
  private ensureFanout (objectId: string): Promise<fsp.FileHandle> {
    const dir = this.fanoutOf(objectId)
    let h = this.fanouts.get(dir)
    if (!h) {
      h = (async () => {
        try {
          await fsp.mkdir(dir)
          // A new directory entry in objects/ must be durable before objects in it are.
          await syncDir(this.objectsDir)
        } catch (err) {
          if (errCode(err) !== 'EEXIST') throw err
        }
        return await fsp.open(dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY)
      })()
      this.fanouts.set(dir, h)
      h.catch(() => this.fanouts.delete(dir))
    }
    return h
  }

  put (objectId: string, data: Uint8Array, sum: number, limits?: CallLimits): Promise<void> {
    return this.write(objectId, data, sum, true, limits)
  }

  store (objectId: string, data: Uint8Array, sum: number, limits?: CallLimits): Promise<void> {
    return this.write(objectId, data, sum, false, limits)
  }

  /** One syncfs of the disk under the device: a journal commit covers every object stored. */
  async sync (limits?: CallLimits): Promise<void> {
    if (this.closed) throw new FsError('EIO', `device ${this.label} is closed`)
    checkNotInterrupted(this.label, limits)
    let h: fsp.FileHandle | undefined
    try {
      h = await fsp.open(this.objectsDir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY)
      await syncFs(h.fd, this.objectsDir)
    } catch (err) {
      throw new FsError('EIO', `sync of ${this.label} at ${this.path} failed: ${(err as Error).message}`, { cause: err })
    } finally {
      await h?.close()
    }
  }

  private async write (objectId: string, data: Uint8Array, sum: number, durable: boolean, limits?: CallLimits): Promise<void> {
    // `sum` is not recomputed here: the caller made it from these bytes (a block server from the
    // bytes it received), and every read checks it.
    this.check(objectId, sum)
    checkNotInterrupted(this.label, limits)
    const final = this.objectPath(objectId)
    try {
      const dir = await this.ensureFanout(objectId)
      // A new object is written in place, in one job (with its fsync and the directory's when
      // durable): nothing refers to it until this put returns, and a crash mid-write leaves an
      // orphan for fsck. Big objects go past the page cache; small ones are cheaper through it.
      // One already there (a retried or repeated put, or healing over a bad copy) is kept when
      // it holds these bytes, else replaced whole.
      try {
        await putObject(final, dir.fd, data, { durable, direct: data.byteLength >= DIRECT_MIN_BYTES })
      } catch (err) {
        if (errCode(err) !== 'EEXIST') throw err
        if (await this.holds(final, data.byteLength, sum)) return
        await writeWhole(join(this.tmpDir, `${objectId}.${randomBytes(6).toString('hex')}`), final, data)
        await dir.sync()
      }
    } catch (err) {
      throw this.ioError('put of', objectId, err)
    } finally {
      // A put may have replaced a bad copy: an open handle would still read the old file.
      this.handles.forget(objectId)
    }
    log('%s: put %s (%d bytes)', this.label, objectId, data.byteLength)
  }

  /** True when `path` already holds exactly these bytes (same size and checksum). */
  private async holds (path: string, size: number, sum: number): Promise<boolean> {
    try {
      const st = await fsp.stat(path)
      if (!st.isFile() || st.size !== size) return false
      return checksum(await fsp.readFile(path)) === sum
    } catch {
      return false
    }
  }

  /** Local reads are not stopped once started (one thread-pool job each): `limits.signal` is checked before. */
  async get (objectId: string, sum: number, limits?: CallLimits, into?: Buffer): Promise<Buffer> {
    this.check(objectId, sum)
    checkNotInterrupted(this.label, limits)
    let data: Buffer
    let crc: number
    try {
      ({ data, crc } = await readObject(this.objectPath(objectId), MAX_BLOCK_BYTES, DIRECT_MIN_BYTES, into))
    } catch (err) {
      throw this.readError(objectId, err)
    }
    if (crc !== sum) {
      log('%s: checksum mismatch on %s', this.label, objectId)
      throw new FsError('EIO', `checksum mismatch on ${this.label} object ${objectId}: expected 0x${sum.toString(16)}, got 0x${crc.toString(16)} (${data.length} bytes)`, { fault: 'corrupt' })
    }
    return data
  }

  async getRange (objectId: string, offset: number, length: number, limits?: CallLimits, into?: Buffer): Promise<Buffer> {
    this.check(objectId)
    checkRange(this.label, objectId, offset, length)
    checkNotInterrupted(this.label, limits)
    try {
      const { data, n } = await this.handles.use(objectId, () => fsp.open(this.objectPath(objectId), 'r'), async fh => {
        const data = rangeBuffer(length, into)
        // What the page cache holds is read right here; only the rest goes through the thread pool.
        let n = readCached(fh.fd, data, offset, this.objectPath(objectId))
        while (n < length) {
          const { bytesRead } = await fh.read(data, n, length - n, offset + n)
          if (bytesRead === 0) break
          n += bytesRead
        }
        return { data, n }
      })
      if (n < length) {
        throw new FsError('EIO', `object ${objectId} on ${this.label} ends before bytes ${offset}..${offset + length} (read ${n})`, { fault: 'corrupt' })
      }
      return data
    } catch (err) {
      throw err instanceof FsError ? err : this.readError(objectId, err)
    }
  }

  async delete (objectId: string): Promise<void> {
    this.check(objectId)
    this.handles.forget(objectId)
    try {
      await fsp.unlink(this.objectPath(objectId))
    } catch (err) {
      if (errCode(err) === 'ENOENT') return
      throw this.ioError('delete of', objectId, err)
    }
    // No directory fsync: a delete a crash undoes leaves an orphan, which fsck collects.
    log('%s: deleted %s', this.label, objectId)
  }

  async stat (objectId: string): Promise<{ size: number } | null> {
    this.check(objectId)
    try {
      // A handle kept for reads knows (objects change only by put and delete, which drop it).
      const size = this.handles.sizeOf(objectId)
      if (size !== undefined) return { size }
      const st = await fsp.stat(this.objectPath(objectId))
      if (!st.isFile()) throw new Error('not a regular file')
      return { size: st.size }
    } catch (err) {
      if (errCode(err) === 'ENOENT') return null
      throw this.ioError('stat of', objectId, err)
    }
  }

  /** Every object id on the device; streams directory entries, so memory stays flat for large devices. */
  async * list (): AsyncIterable<string> {
    if (this.closed) throw new FsError('EIO', `device ${this.label} is closed`)
    for (const fan of (await fsp.readdir(this.objectsDir)).sort()) {
      if (!/^[0-9a-f]{2}$/.test(fan)) continue
      let dir
      try {
        dir = await fsp.opendir(join(this.objectsDir, fan))
      } catch (err) {
        if (errCode(err) === 'ENOTDIR' || errCode(err) === 'ENOENT') continue
        throw new FsError('EIO', `listing ${this.label} failed: ${(err as Error).message}`, { cause: err })
      }
      for await (const e of dir) {
        // An id in the wrong fan-out dir is unreachable by get, so it is not listed either.
        if (e.isFile() && isObjectId(e.name) && e.name.endsWith(fan)) yield e.name
      }
    }
  }

  async space (limits?: CallLimits): Promise<DeviceSpace> {
    checkNotInterrupted(this.label, limits)
    try {
      const s = await fsp.statfs(this.path)
      return { total: s.bsize * s.blocks, free: s.bsize * s.bfree, available: s.bsize * s.bavail }
    } catch (err) {
      throw new FsError('EIO', `statfs of ${this.label} at ${this.path} failed: ${(err as Error).message}`, { cause: err })
    }
  }

  async close (): Promise<void> {
    this.closed = true
    this.handles.closeAll()
    const dirs = [...this.fanouts.values()]
    this.fanouts.clear()
    await Promise.all(dirs.map(async h => { await (await h).close() }).map(p => p.catch(() => {})))
  }
}
