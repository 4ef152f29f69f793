import { MAX_BLOCK_BYTES } from '../limits'
import { DIRECTORY_FORMAT_VERSION } from '../format-version'
import { KvReader } from './kv'
import { corrupt, decodeJSON, keys } from './records'

/** The filesystem's identity and block size (M config), written once by create. */
export interface DirectoryConfig {
  format: 'bslfs-directory'
  version: typeof DIRECTORY_FORMAT_VERSION
  uuid: string
  blockSize: number
  created: string
}

/** The file and byte counters statfs shows (M usage and each mount's row: usage.ts). */
export interface Usage {
  /** Inodes, the root included. */
  files: number
  /** Bytes stored in blocks (one copy). */
  bytes: number
}

export const isConfig = (v: any): boolean =>
  v?.format === 'bslfs-directory' && v.version === DIRECTORY_FORMAT_VERSION && typeof v.uuid === 'string' &&
  Number.isInteger(v.blockSize) && v.blockSize >= 4096 && v.blockSize <= MAX_BLOCK_BYTES

/** The config record's format version as stored, whatever else it holds (checked before its shape). */
export function configVersion (raw: Buffer): unknown {
  try {
    return (JSON.parse(raw.toString('utf8')) as { version?: unknown } | null)?.version
  } catch {
    return undefined
  }
}

export const isUsage = (v: any): boolean => Number.isSafeInteger(v?.files) && Number.isSafeInteger(v?.bytes)

/** A metadata record (M name) that must be there: missing or malformed is EIO. */
export async function readMeta<T> (kv: KvReader, name: string, check: (v: any) => boolean): Promise<T> {
  const raw = await kv.get(keys.meta(name))
  if (!raw) throw corrupt(`metadata "${name}"`, 'missing')
  return decodeJSON<T>(`metadata "${name}"`, raw, check)
}
