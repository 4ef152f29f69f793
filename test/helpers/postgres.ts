/**
 * A throw-away PostgreSQL for a test: the server itself is src/bench/postgres.ts
 * (the bench's bslfs-pg target starts one the same way); here what only tests use.
 */
import * as net from 'node:net'
import { PG_HOST, PgServer, type PgServerOptions } from '../../src/bench/postgres'

export { PG_HOST, PgServer, pgBinDir, pgUnavailable, type PgServerOptions } from '../../src/bench/postgres'

/** A PostgreSQL for test `t`, destroyed at its teardown. Check `pgUnavailable()` first to skip. */
export async function startPostgres (t: { teardown: (fn: () => unknown) => void }, opts: PgServerOptions = {}): Promise<PgServer> {
  const server = await PgServer.create(opts)
  t.teardown(async () => await server.destroy())
  return server
}

/**
 * A TCP relay in front of a server, for faults a server stop cannot make: `cut()`
 * breaks every connection through it at once (the server's side carries on, as
 * when a network path fails), while new connections still go through.
 */
export class TcpRelay {
  private constructor (private readonly server: net.Server, readonly port: number, private readonly sockets: Set<net.Socket>) {}

  static async start (targetPort: number, targetHost = PG_HOST): Promise<TcpRelay> {
    const sockets = new Set<net.Socket>()
    const server = net.createServer(client => {
      const upstream = net.connect(targetPort, targetHost)
      for (const s of [client, upstream]) {
        sockets.add(s)
        s.on('close', () => sockets.delete(s))
        s.on('error', () => { client.destroy(); upstream.destroy() })
      }
      client.pipe(upstream)
      upstream.pipe(client)
    })
    await new Promise<void>(resolve => server.listen(0, PG_HOST, resolve))
    return new TcpRelay(server, (server.address() as net.AddressInfo).port, sockets)
  }

  /** Reset every relayed connection, both sides. */
  cut (): void {
    for (const s of this.sockets) s.resetAndDestroy()
    this.sockets.clear()
  }

  async close (): Promise<void> {
    this.cut()
    await new Promise<void>(resolve => this.server.close(() => resolve()))
  }
}
