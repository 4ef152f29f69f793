import { createHash } from 'node:crypto'
import createDebug from 'debug'
import { Pool } from 'undici'
import { StreamPool } from './stream-client'
import { ClientTls, tlsConnectOptions } from './tls'

const log = createDebug('bslfs:devices')

/** Connections per server in the shared pool. */
export const POOL_CONNECTIONS = 8

/**
 * The pool registry: one keep-alive pool per (server URL, token, TLS material), shared by
 * every device of that server and closed when the last of them closes.
 */
export interface PoolEntry {
  key: string
  pool: Pool
  /** The server's read streams (over TLS for https:). */
  streams: StreamPool
  refs: number
}

const pools = new Map<string, PoolEntry>()

function poolKey (origin: string, token: string, tls: ClientTls | undefined): string {
  // The token is part of the key (two tokens are two sets of connections) but is not kept in clear.
  return `${origin} ${createHash('sha256').update(token).digest('hex').slice(0, 16)} ${tls?.identity ?? '-'}`
}

export function acquirePool (origin: string, token: string, connectTimeoutMs: number, tls?: ClientTls): PoolEntry {
  const key = poolKey(origin, token, tls)
  let e = pools.get(key)
  if (e === undefined) {
    const pool = new Pool(origin, {
      connections: POOL_CONNECTIONS,
      pipelining: 1,
      keepAliveTimeout: 4000,
      keepAliveMaxTimeout: 30_000,
      connect: { timeout: connectTimeoutMs, ...(tls !== undefined ? tlsConnectOptions(tls) : {}) }
    })
    const streams = new StreamPool(origin, token, connectTimeoutMs, tls)
    e = { key, pool, streams, refs: 0 }
    pools.set(key, e)
    log('new connection pool for %s', origin)
  }
  e.refs++
  return e
}

/**
 * One user fewer; the last closes the pool. Requests in flight get `graceMs`
 * to finish (a device closing: briefly; a token changing: as long as a call may take).
 */
export async function releasePool (e: PoolEntry, graceMs = 500): Promise<void> {
  e.refs--
  if (e.refs > 0) return
  if (pools.get(e.key) === e) pools.delete(e.key)
  e.streams.close(graceMs)
  // Let finished requests hand back their sockets; anything still hanging is cut off.
  let timer: NodeJS.Timeout | undefined
  const closed = await Promise.race([
    e.pool.close().then(() => true, () => true),
    new Promise<boolean>(resolve => { timer = setTimeout(() => resolve(false), graceMs) })
  ])
  clearTimeout(timer)
  if (!closed) await e.pool.destroy().catch(() => undefined)
}

/** How many shared server pools are open (for status output and tests). */
export function openPoolCount (): number {
  return pools.size
}
