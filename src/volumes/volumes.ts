import createDebug from 'debug'
import { BSL, formatBSL, objectIdOf } from '../bsl'
import { Device, DeviceSpace } from '../devices/device'
import { FsError } from '../errors'
import { Place, Tables, placeText } from './tables'

const log = createDebug('bslfs:volumes')

/** Opens the device at a place; the caller (the state layer) knows local paths and remote servers. */
export type DeviceOpener = (place: Place) => Promise<Device>

/**
 * Resolves BSLs to the places that hold their bytes, and reads and writes
 * blocks there. Failover is this layer's policy: reads try the places in
 * order, writes go to every place in parallel.
 */
export class Volumes {
  private readonly devices = new Map<string, Promise<Device>>()

  constructor (private tables: Tables, private readonly openDevice: DeviceOpener) {}

  /** New tables (after `volume add`, `remap`, …): later resolutions use them. */
  update (tables: Tables): void {
    this.tables = tables
  }

  get defaultVolume (): number {
    return this.tables.defaultVolume
  }

  /** The BSL for a new block: the indexed logical form on the default volume. */
  newBlock (fileId: bigint, index: number): BSL {
    const volume = this.tables.defaultVolume
    if (!this.tables.volumes.has(volume) && !this.tables.mirrors.has(volume)) {
      throw new FsError('EIO', `the default volume ${volume} is not in the volume table; run \`bslfs volume default STATE VOL\``)
    }
    return { form: 'indexed', volume, index, fileId }
  }

  /** The places that hold a block, in the order reads should try them. */
  resolve (bsl: BSL): Place[] {
    if (bsl.form === 'physical') return [{ server: bsl.server, device: bsl.device }]
    const mirrors = this.tables.mirrors.get(bsl.volume)
    if (bsl.form === 'mirrored' && !mirrors) throw new FsError('EIO', `${formatBSL(bsl)}: volume ${bsl.volume} is not in the mirror table`)
    const volumes = mirrors ?? [bsl.volume]
    return volumes.map(v => {
      const row = this.tables.volumes.get(v)
      if (!row) throw new FsError('EIO', `${formatBSL(bsl)}: volume ${v} is not in the volume table`)
      return row.place
    })
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

  /** Store a block on every place of its BSL; resolves once every copy is flushed. */
  async write (bsl: BSL, data: Uint8Array, checksum: number): Promise<void> {
    const id = objectIdOf(bsl)
    await Promise.all(this.resolve(bsl).map(async p => (await this.device(p)).put(id, data, checksum)))
  }

  /** Read a whole block, verified; a failed or corrupt copy falls through to the next. */
  async read (bsl: BSL, checksum: number): Promise<Buffer> {
    const id = objectIdOf(bsl)
    let lastError: unknown
    for (const p of this.resolve(bsl)) {
      try {
        return await (await this.device(p)).get(id, checksum)
      } catch (err) {
        log('read %s from %s failed: %s', id, placeText(p), (err as Error).message)
        lastError = err
      }
    }
    // Whatever each copy said (missing, corrupt, unreachable), to the reader it is an I/O error.
    throw new FsError('EIO', `no copy of ${formatBSL(bsl)} could be read: ${(lastError as Error)?.message}`, { cause: lastError })
  }

  /** Remove a block's objects from every place (reclaim). */
  async delete (bsl: BSL): Promise<void> {
    const id = objectIdOf(bsl)
    await Promise.all(this.resolve(bsl).map(async p => (await this.device(p)).delete(id)))
  }

  /** Space of every device named in the volume table, by place. */
  async space (): Promise<Map<string, DeviceSpace | Error>> {
    const out = new Map<string, DeviceSpace | Error>()
    const places = new Map<string, Place>()
    for (const row of this.tables.volumes.values()) places.set(placeText(row.place), row.place)
    await Promise.all([...places].map(async ([key, p]) => {
      try {
        out.set(key, await (await this.device(p)).space())
      } catch (err) {
        out.set(key, err as Error)
      }
    }))
    return out
  }

  async close (): Promise<void> {
    const all = [...this.devices.values()]
    this.devices.clear()
    await Promise.all(all.map(async d => (await d.catch(() => null))?.close()))
  }
}
