import { DeviceRow, MirrorRow, Place, ServerRow, Tables, VolumeRow } from '../volumes/tables'
import { TABLES_CHANGED } from './changes'
import { KvReader, KvStore, KvTxn } from './kv'
import { decodeJSON, encodeJSON, keys } from './records'

/**
 * The volume, mirror, server and device tables (T kind key, JSON rows) and
 * the default volume (M defaultVolume). Changes are rare (admin commands)
 * and each is made durable before it returns; on a shared store each tells
 * the other mounts to re-read the tables (the change feed).
 */

export async function readTables (kv: KvReader): Promise<Tables> {
  const t: Tables = { volumes: new Map(), mirrors: new Map(), devices: new Map(), servers: new Map(), defaultVolume: 0 }
  for await (const [k, v] of kv.scan(keys.tablePrefix('volume'))) {
    const row = decodeJSON<VolumeRow>(`volume row ${k.toString()}`, v, r => Number.isInteger(r?.volume) && typeof r.place?.server === 'string' && typeof r.place?.device === 'string' && Array.isArray(r.history))
    t.volumes.set(row.volume, row)
  }
  for await (const [k, v] of kv.scan(keys.tablePrefix('mirror'))) {
    const vol = Number(k.subarray(keys.tablePrefix('mirror').length).toString())
    const row = decodeJSON<MirrorRow>(`mirror row ${vol}`, v, r => r?.volume === vol && Array.isArray(r.mirrors) &&
      r.mirrors.length > 0 && r.mirrors.every(Number.isInteger) && Number.isInteger(r.minCopies) && r.minCopies >= 1 && r.minCopies <= r.mirrors.length)
    t.mirrors.set(vol, row)
  }
  for await (const [, v] of kv.scan(keys.tablePrefix('device'))) {
    const row = decodeJSON<DeviceRow>('device row', v, r => typeof r?.name === 'string' && typeof r.path === 'string')
    t.devices.set(row.name, row)
  }
  for await (const [, v] of kv.scan(keys.tablePrefix('server'))) {
    const row = decodeJSON<ServerRow>('server row', v, r => typeof r?.name === 'string' && typeof r.url === 'string')
    t.servers.set(row.name, row)
  }
  const def = await kv.get(keys.meta('defaultVolume'))
  const d = def ? decodeJSON<number | Place>('default volume', def, v => Number.isInteger(v) || (typeof v?.server === 'string' && typeof v.device === 'string')) : 0
  if (typeof d === 'number') t.defaultVolume = d
  else t.defaultPlace = { server: d.server, device: d.device }
  return t
}

export function putDevice (kv: KvStore, row: DeviceRow): Promise<void> {
  return kv.txn(tx => { put(tx, keys.table('device', row.name), encodeJSON(row)) }, { sync: true })
}

export function putServer (kv: KvStore, row: ServerRow): Promise<void> {
  return kv.txn(tx => { put(tx, keys.table('server', row.name), encodeJSON(row)) }, { sync: true })
}

/** Point a volume at a place; a move keeps the old place in the history. */
export function setVolume (kv: KvStore, volume: number, place: Place): Promise<VolumeRow> {
  return kv.txn(async tx => {
    const key = keys.table('volume', String(volume))
    const raw = await tx.get(key)
    const now = new Date().toISOString()
    const old = raw ? decodeJSON<VolumeRow>(`volume row ${volume}`, raw, r => typeof r === 'object') : undefined
    const row: VolumeRow = old
      ? { volume, place, since: now, history: [...old.history, { place: old.place, from: old.since, to: now }] }
      : { volume, place, since: now, history: [] }
    put(tx, key, encodeJSON(row))
    return row
  }, { sync: true })
}

export function setMirror (kv: KvStore, row: MirrorRow): Promise<void> {
  return kv.txn(tx => { put(tx, keys.table('mirror', String(row.volume)), encodeJSON(row)) }, { sync: true })
}

/** Where new blocks go: a volume, or a place (physical BSLs). */
export function setDefaultVolume (kv: KvStore, volume: number | Place): Promise<void> {
  return kv.txn(tx => { put(tx, keys.meta('defaultVolume'), encodeJSON(volume)) }, { sync: true })
}

/** A table write; other mounts hear of it when it commits. */
function put (tx: KvTxn, key: Buffer, value: Buffer): void {
  tx.put(key, value)
  tx.notify?.(TABLES_CHANGED)
}
