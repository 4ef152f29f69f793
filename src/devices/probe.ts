import { Pool } from 'undici'
import { FsError } from '../errors'
import { HEALTH_PATH } from '../wire/routes'
import { DEFAULT_TIMEOUT_MS, Endpoint, checkedTimeout, checkedToken, checkedUrl, exchange, jsonObject, smallAnswer } from './http-call'
import { ClientTls, tlsConnectOptions } from './tls'

/** What `GET /v1/health` answers. */
export interface ServerHealth {
  ok: true
  /** The server's own name for itself. */
  server: string
  /** Names of the devices it serves. */
  devices: string[]
}

/**
 * Asks a block server whether it is up and which devices it serves (for
 * `bslfs status` and `bslfs server add`). One attempt unless `retries` says
 * otherwise; every failure is an FsError (EACCES for a rejected token, EIO
 * for an unreachable server or a malformed answer).
 */
export async function probeServer (url: string, token: string, timeoutMs: number = DEFAULT_TIMEOUT_MS, opts: { retries?: number, name?: string, tls?: ClientTls } = {}): Promise<ServerHealth> {
  const { origin, basePath } = checkedUrl(url)
  const host = new URL(origin).host
  const ms = checkedTimeout(timeoutMs)
  const pool = new Pool(origin, { connections: 1, pipelining: 1, connect: { timeout: ms, ...(opts.tls !== undefined ? tlsConnectOptions(opts.tls) : {}) } })
  const ep: Endpoint = {
    label: host,
    serverName: opts.name ?? host,
    origin,
    basePath,
    token: checkedToken(token),
    timeoutMs: ms,
    retries: opts.retries ?? 0,
    dispatcher: pool,
    ...(opts.tls !== undefined ? { tls: opts.tls } : {}),
    closed: () => false
  }
  const what = 'health check'
  try {
    return await exchange(ep, {
      method: 'GET',
      path: HEALTH_PATH,
      what,
      receive: () => smallAnswer(ep, what, status => status === 200, body => {
        const j = jsonObject(ep, body, what)
        if (j.ok !== true) throw new FsError('EIO', `${host} says it is not healthy: ${JSON.stringify(j).slice(0, 200)}`)
        if (typeof j.server !== 'string') throw new FsError('EIO', `${host} answered the ${what} without a server name`)
        if (!Array.isArray(j.devices)) throw new FsError('EIO', `${host} answered the ${what} without a device list`)
        const devices = j.devices.map((d: unknown) => {
          // A device is a name, or an object with one; the protocol leaves the rest open.
          const name = typeof d === 'string' ? d : (d !== null && typeof d === 'object' ? (d as Record<string, unknown>).name : undefined)
          if (typeof name !== 'string') throw new FsError('EIO', `${host} listed a device without a name: ${String(JSON.stringify(d)).slice(0, 80)}`)
          return name
        })
        return { ok: true as const, server: j.server, devices }
      })
    })
  } finally {
    await pool.destroy().catch(() => undefined)
  }
}
