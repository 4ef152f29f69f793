/**
 * The block server's wire protocol (HTTP/1.1, version 1), spoken by the
 * server (src/server/) and its client (src/devices/remote.ts):
 *
 *   GET    /v1/health                          200 {"ok":true,"server":NAME,"devices":[...]}
 *   GET    /v1/devices/DEV/space               200 {"total","free","available"} (bytes)
 *   GET    /v1/devices/DEV/objects             200 text/plain, one object id per line
 *   PUT    /v1/devices/DEV/objects/ID          201 (Content-Length and X-Bslfs-Checksum required), once the
 *                                              object is durable; with X-Bslfs-Durable: 0 once it is whole
 *                                              and readable, durable after the next sync
 *   POST   /v1/devices/DEV/sync                204 once every object put before it is durable
 *   GET    /v1/devices/DEV/objects/ID          200 the bytes, verified (X-Bslfs-Checksum required), or with
 *                                              Range: bytes=A-B 206 those bytes read alone and NOT verified
 *                                              (the client checks them against its chunk sums)
 *   HEAD   /v1/devices/DEV/objects/ID          200 with Content-Length, or 404
 *   DELETE /v1/devices/DEV/objects/ID          204 (idempotent)
 *   GET    /v1/stream                          101 with Upgrade: bslfs-blocks/1: the connection then carries
 *                                              object reads as binary frames (./frames.ts)
 *   GET    /metrics                            200 Prometheus text (with the token, unless the server runs
 *                                              with --metrics-open)
 *
 * Every request carries `Authorization: Bearer TOKEN` (401 otherwise, before
 * anything else is looked at). Every error answer is JSON
 * `{"error": MESSAGE, "code": POSIX_CODE}`, with the code also in the
 * `X-Bslfs-Error` header (a HEAD answer has no body). The statuses and their
 * codes are the table of ./errno-status.ts; headers are ./headers.ts, size
 * limits ./limits.ts.
 */
import { HttpError, shown } from './http-error'
import { MAX_TARGET_LENGTH } from './limits'

export const PROTOCOL_PREFIX = '/v1'
export const HEALTH_PATH = `${PROTOCOL_PREFIX}/health`
/** Prometheus metrics (text exposition), where Prometheus looks by default. */
export const METRICS_PATH = '/metrics'
/** The path of the read stream's upgrade request, under the server's URL. */
export const STREAM_PATH = `${PROTOCOL_PREFIX}/stream`

/** The path of a device: its space, sync and objects are under it. */
export function devicePath (device: string): string {
  return `${PROTOCOL_PREFIX}/devices/${encodeURIComponent(device)}`
}

export function spacePath (device: string): string {
  return `${devicePath(device)}/space`
}

export function syncPath (device: string): string {
  return `${devicePath(device)}/sync`
}

/** The listing of a device's objects. */
export function objectsPath (device: string): string {
  return `${devicePath(device)}/objects`
}

export function objectPath (device: string, objectId: string): string {
  // The id is 16 lowercase hex digits (checked by the caller), so encoding is only belt and braces.
  return `${objectsPath(device)}/${encodeURIComponent(objectId)}`
}

/** What a request target names. */
export type Route =
  | { kind: 'health' }
  | { kind: 'space', device: string }
  | { kind: 'list', device: string }
  | { kind: 'sync', device: string }
  | { kind: 'object', device: string, id: string }
  | { kind: 'stream' }
  | { kind: 'metrics' }

/** The methods each kind of route answers (the Allow header of a 405). */
export const ALLOWED: Record<Route['kind'], readonly string[]> = {
  health: ['GET', 'HEAD'],
  space: ['GET', 'HEAD'],
  list: ['GET'],
  sync: ['POST'],
  object: ['GET', 'HEAD', 'PUT', 'DELETE'],
  stream: ['GET'],
  metrics: ['GET', 'HEAD']
}

/**
 * Maps a raw request target to a route. Nothing is percent-decoded: an
 * encoded byte in a device name or object id simply fails validation later,
 * so `%2F`, `%2e%2e` or `%00` can never turn into a path separator or a
 * parent directory. An object id that spans several segments (`a/b`,
 * `../x`) is returned as one string, to be refused as a bad id (400).
 */
export function parseTarget (target: string | undefined): Route {
  const url = target ?? ''
  if (url.length > MAX_TARGET_LENGTH) {
    throw new HttpError(414, 'ENAMETOOLONG', `request target is ${url.length} characters long; at most ${MAX_TARGET_LENGTH} are allowed`)
  }
  if (!url.startsWith('/')) throw new HttpError(400, 'EINVAL', `bad request target ${shown(url)}: must be an absolute path`)
  const q = url.indexOf('?')
  const path = q < 0 ? url : url.slice(0, q)
  if (path.includes('#')) throw new HttpError(400, 'EINVAL', `bad request target ${shown(url)}`)
  const segs = path.split('/').slice(1)
  const noRoute = (): HttpError => new HttpError(404, 'ENOENT', `no such route: ${shown(path, 80)}`)
  if (path === METRICS_PATH) return { kind: 'metrics' }
  if (segs[0] !== PROTOCOL_PREFIX.slice(1)) throw noRoute()
  if (segs.length === 2 && segs[1] === 'health') return { kind: 'health' }
  if (segs.length === 2 && segs[1] === 'stream') return { kind: 'stream' }
  if (segs[1] === 'devices' && segs.length >= 4) {
    const device = segs[2]
    if (segs[3] === 'space' && segs.length === 4) return { kind: 'space', device }
    if (segs[3] === 'sync' && segs.length === 4) return { kind: 'sync', device }
    if (segs[3] === 'objects') {
      if (segs.length === 4) return { kind: 'list', device }
      return { kind: 'object', device, id: segs.slice(4).join('/') }
    }
  }
  throw noRoute()
}
