import createDebug from 'debug'
import http from 'node:http'
import { AddressInfo, isIP } from 'node:net'
import { Registry } from 'prom-client'

const log = createDebug('bslfs:metrics')

/** Where the mount serves /metrics when `-o metrics` names no address. */
export const DEFAULT_METRICS_PORT = 9567

export interface ListenAddress { host: string, port: number }

/**
 * HOST:PORT, or PORT alone (loopback), for a /metrics listener. IPv6 is
 * written without brackets (`::1:9567`: the port follows the last colon), as a
 * mount option cannot carry them; `[::1]:9567` is taken too.
 */
export function parseListenAddress (text: string, what: string): ListenAddress {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|(.*)):([0-9]{1,5})$/.exec(text) ?? /^()()([0-9]{1,5})$/.exec(text)
  const host = m ? (m[1] || m[2] || '127.0.0.1') : ''
  const port = m ? Number(m[3]) : NaN
  const hostOk = isIP(host) !== 0 || /^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$/.test(host)
  if (!m || !hostOk || !(port >= 1 && port <= 65535)) {
    throw new Error(`bad ${what} "${text}": give HOST:PORT (127.0.0.1:${DEFAULT_METRICS_PORT}, 0.0.0.0:${DEFAULT_METRICS_PORT} for every address) or a PORT on loopback`)
  }
  return { host, port }
}

/**
 * Serve `registry` as Prometheus text at GET /metrics on `addr`, nothing
 * else. A scrape that fails (a collector threw) is a 500 with the reason.
 */
export function serveMetrics (registry: Registry, addr: ListenAddress): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0]
    if (path !== '/metrics') {
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end('only /metrics is here\n')
      return
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { Allow: 'GET, HEAD' }).end()
      return
    }
    answerMetrics(registry, res, req.method === 'HEAD')
  })
  server.on('clientError', (_err, socket) => socket.destroy())
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      reject(new Error(`cannot serve metrics on ${addr.host}:${addr.port}: ${err.code === 'EADDRINUSE' ? 'the port is in use' : err.message}`))
    })
    server.listen(addr.port, addr.host, () => {
      server.removeAllListeners('error')
      server.on('error', err => log('metrics listener: %s', err.message))
      log('metrics on http://%s:%d/metrics', addr.host, (server.address() as AddressInfo).port)
      resolve(server)
    })
  })
}

/** The exposition of `registry` as an answer. */
export function answerMetrics (registry: Registry, res: http.ServerResponse, head = false): void {
  registry.metrics().then(text => {
    res.writeHead(200, { 'Content-Type': registry.contentType, 'Cache-Control': 'no-store' })
    res.end(head ? undefined : text)
  }, (err: Error) => {
    res.writeHead(500, { 'Content-Type': 'text/plain' }).end(`metrics failed: ${err.message}\n`)
  })
}
