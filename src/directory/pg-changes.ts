/**
 * PgKv's change feed: transactions send `pg_notify(CHANGES_CHANNEL, origin + ' ' + message)`
 * with their writes (PostgreSQL delivers a notification only when its
 * transaction commits, in commit order); every listener holds one dedicated
 * connection that LISTENs. Channels belong to one database, and a database
 * holds one filesystem, so the channel is per filesystem.
 */
import createDebug from 'debug'
import { Client, ClientConfig } from 'pg'
import { ChangeFeed, ChangeHandler } from './kv'

const log = createDebug('bslfs:postgres')

export const CHANGES_CHANNEL = 'bslfs_changes'

const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

export class PgChanges implements ChangeFeed {
  /**
   * `origin`: this store's tag on its own notifications, which its listeners
   * skip (its Directory already knows what it changed).
   */
  constructor (private readonly config: ClientConfig, readonly origin: string, private readonly address: string) {}

  /** The payload of a notification of `message` from this store. */
  payload (message: string): string { return `${this.origin} ${message}` }

  async listen (handler: ChangeHandler): Promise<{ close (): Promise<void> }> {
    let closed = false
    let client: Client | undefined
    const connect = async (): Promise<Client> => {
      const c = new Client({ ...this.config, keepAlive: true, application_name: 'bslfs-listen' })
      c.on('notification', n => {
        if (n.channel !== CHANGES_CHANNEL || n.payload === undefined) return
        const cut = n.payload.indexOf(' ')
        if (cut < 0 || n.payload.slice(0, cut) === this.origin) return
        handler.message(n.payload.slice(cut + 1))
      })
      c.on('error', err => log('change feed connection to %s: %s', this.address, err.message))
      c.on('end', () => { if (!closed && client === c) void lost() })
      await c.connect()
      await c.query(`LISTEN ${CHANGES_CHANNEL}`)
      return c
    }
    // A dropped connection may have missed notifications: say so at once, and again once
    // listening anew (what committed between the two was not heard either).
    const lost = async (): Promise<void> => {
      client = undefined
      log('change feed from %s lost: reconnecting', this.address)
      handler.missed()
      for (let attempt = 0; !closed; attempt++) {
        await sleep(Math.min(1000, 50 * 2 ** attempt) * (0.5 + Math.random() / 2))
        if (closed) return
        try {
          const c = await connect()
          if (closed) { await c.end().catch(() => {}); return }
          client = c
          log('change feed from %s back', this.address)
          handler.missed()
          return
        } catch (err) {
          log('change feed reconnect to %s failed: %s', this.address, (err as Error).message)
        }
      }
    }
    client = await connect()
    return {
      close: async () => {
        closed = true
        const c = client
        client = undefined
        if (c) await c.end().catch(() => {})
      }
    }
  }
}
