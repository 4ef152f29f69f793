/**
 * The volume, mirror, server and device tables, as plain data. The directory
 * stores them; the resolver reads them. DESIGN.md's example:
 *
 *   volume table                   mirror table
 *   VOL 1 → (server X, device X)   VOL 0 → VOL 1, VOL 2
 *   VOL 2 → (server Y, device Y)
 */

/** Where bytes live: a device on a server ("local" is this host). */
export interface Place {
  server: string
  device: string
}

export interface VolumeRow {
  volume: number
  place: Place
  /** When the volume moved to `place` (ISO date). */
  since: string
  /** Earlier places, oldest first. */
  history: Array<{ place: Place, from: string, to: string }>
}

/** A device of this host: a directory on a local disk. */
export interface DeviceRow {
  name: string
  path: string
}

/**
 * A remote block server. Credentials are kept as paths to their files,
 * read when a device of the server is opened; never their bytes.
 */
export interface ServerRow {
  name: string
  /** http://HOST:PORT or https://HOST:PORT. */
  url: string
  tokenFile?: string
  /** https: the CA that signed the server's certificate (none: the system's CAs). */
  caFile?: string
  /** https with mutual TLS: this host's certificate and key. */
  clientCertFile?: string
  clientKeyFile?: string
}

/** A logical volume served by mirror volumes: every block goes to each of them. */
export interface MirrorRow {
  volume: number
  /** The mirror volumes, each resolved through the volume table, in the order reads prefer. */
  mirrors: number[]
  /** Copies a write must reach to succeed; the others are recorded for healing. */
  minCopies: number
}

export interface Tables {
  volumes: Map<number, VolumeRow>
  mirrors: Map<number, MirrorRow>
  devices: Map<string, DeviceRow>
  servers: Map<string, ServerRow>
  /** The volume new blocks are written to. */
  defaultVolume: number
  /** Instead of a volume: a place new blocks are written to directly, as physical BSLs. */
  defaultPlace?: Place
}

export const LOCAL_SERVER = 'local'

export function placeText (p: Place): string {
  return `${p.server}:${p.device}`
}
