/**
 * The PostgreSQL engine under the directory's KvStore interface, for a
 * filesystem several hosts mount at once (issue 21). One table of bytea key →
 * bytea value; bytea compares bytewise, shorter first, as LevelDB's default
 * comparator does, so scans come back in the same order on both engines.
 * Figures and the reasons behind each choice: native-notes/postgres.md.
 */
import createDebug from 'debug'
import { statSync, readFileSync } from 'node:fs'
import { Pool, PoolClient, PoolConfig, escapeLiteral } from 'pg'
import { mountMetrics } from '../metrics/mount-metrics'
import { FsError } from '../errors'
import { randomUUID } from 'node:crypto'
import { KvSnapshot, KvStore, KvTxn, NOTE_MAX, prefixEnd } from './kv'
import { Mutex } from './mutex'
import { CHANGES_CHANNEL, PgChanges } from './pg-changes'
import { BufferedTxn, DELETED } from './write-buffer'

const log = createDebug('bslfs:postgres')

/** The schema this code reads and writes; a database made by a newer bslfs is refused. */
export const PG_SCHEMA_VERSION = 1

export interface PgKvOptions {
  /** A file holding the password (refused when group or others can read it). Else the URL's, PGPASSWORD, PGPASSFILE or ~/.pgpass. */
  passwordFile?: string
  /** One connection attempt's bound (default 5000 ms). */
  connectTimeoutMs?: number
  /** The server's statement_timeout (default 10000 ms; 0: none). */
  statementTimeoutMs?: number
  /** How long an operation waits out an unreachable database before EIO (default 10000 ms). */
  outageMs?: number
  /** Serialization failures and deadlocks: attempts and total time before EIO (defaults 40 and 10000 ms). */
  retryAttempts?: number
  retryMs?: number
  /** Let this process's transactions run at once (default false: one at a time, as LevelDB's engine; the directory's caches assume it). */
  concurrent?: boolean
  /** Connections in the pool (default 4; at least 2 with snapshots). */
  poolSize?: number
  /** Create the table when the database has none (default false). */
  createIfMissing?: boolean
  /** With createIfMissing: refuse a database that holds another application's tables (`bslfs init` wants a database of its own). */
  requireEmpty?: boolean
  /** For measurement only: commit `sync: false` transactions with synchronous_commit off (see native-notes/postgres.md: off by default for a reason). */
  asyncCommitWhenUnsynced?: boolean
}

/** Where a URL points, for messages: never the password. */
export function describePgUrl (url: string): string {
  try {
    const u = new URL(url)
    u.password = ''
    return u.toString()
  } catch {
    return '(malformed URL)'
  }
}

interface Target { config: PoolConfig, address: string, user: string, database: string, shown: string }

function parseUrl (url: string, opts: PgKvOptions): Target {
  let u: URL
  try {
    u = new URL(url)
  } catch {
    throw new FsError('EINVAL', 'not a PostgreSQL URL (expected postgres://USER@HOST:PORT/DATABASE)')
  }
  if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') {
    throw new FsError('EINVAL', `not a PostgreSQL URL: ${describePgUrl(url)} (expected postgres://USER@HOST:PORT/DATABASE)`)
  }
  const database = decodeURIComponent(u.pathname.replace(/^\//, ''))
  if (!u.hostname || !database || database.includes('/')) {
    throw new FsError('EINVAL', `a PostgreSQL URL needs a host and a database: ${describePgUrl(url)}`)
  }
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1')
  const port = u.port ? Number(u.port) : 5432
  const user = u.username ? decodeURIComponent(u.username) : (process.env.PGUSER ?? process.env.USER ?? 'postgres')
  let password: string | undefined = u.password ? decodeURIComponent(u.password) : undefined
  if (opts.passwordFile) password = readPasswordFile(opts.passwordFile)
  // pg calls a password function with the connection's parameters (its type omits them).
  const config: PoolConfig = { host, port, user, database, password: password ?? (passwordFromPgpass as unknown as () => Promise<string>), ssl: sslOf(u) }
  return { config, address: `${host.includes(':') ? `[${host}]` : host}:${port}`, user, database, shown: describePgUrl(url) }
}

function readPasswordFile (file: string): string {
  let mode: number
  try {
    mode = statSync(file).mode
  } catch (err) {
    throw new FsError('ENOENT', `password file ${file}: ${(err as NodeJS.ErrnoException).code ?? 'unreadable'}`)
  }
  if ((mode & 0o077) !== 0) throw new FsError('EACCES', `password file ${file} is readable by others: chmod 600 it`)
  return readFileSync(file, 'utf8').replace(/\r?\n$/, '')
}

/**
 * ~/.pgpass or PGPASSFILE, looked up as libpq does (a file readable by others
 * is ignored, with a warning). pg would do it itself, but prints a
 * deprecation notice into every command's output and the daemon's log.
 */
async function passwordFromPgpass (params: unknown): Promise<string | undefined> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const pgpass = require('pgpass') as (conn: unknown, cb: (pass: string | undefined) => void) => void
  return await new Promise(resolve => pgpass(params, resolve))
}

/** `sslmode` and `sslrootcert` of the URL, libpq's names (disable, require, verify-ca, verify-full). */
function sslOf (u: URL): PoolConfig['ssl'] {
  const mode = u.searchParams.get('sslmode') ?? 'disable'
  const caFile = u.searchParams.get('sslrootcert')
  const ca = caFile ? readFileSync(caFile, 'utf8') : undefined
  switch (mode) {
    case 'disable': case 'prefer': case 'allow': return undefined
    case 'require': return { rejectUnauthorized: false }
    case 'verify-ca': return { ca, rejectUnauthorized: true, checkServerIdentity: () => undefined }
    case 'verify-full': return { ca, rejectUnauthorized: true }
    default: throw new FsError('EINVAL', `sslmode=${mode} is not one of disable, require, verify-ca, verify-full`)
  }
}

type PgError = Error & { code?: string, severity?: string }

const CONNECTION_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH',
  'EHOSTDOWN', 'EAI_AGAIN', 'ENOTCONN', '57P01', '57P02', '57P03'])

/** The connection broke or could not be made: the operation may succeed once the database is back. */
export function isConnectionError (err: unknown): boolean {
  const e = err as PgError | undefined
  if (!e || typeof e !== 'object' || e instanceof FsError) return false // already decided (a bound ran out)
  if (e.code && (CONNECTION_CODES.has(e.code) || e.code.startsWith('08'))) return true
  return /Connection terminated|connection error|not queryable|timeout expired|Query read timeout|timeout exceeded when trying to connect/i.test(e.message ?? '')
}

/** Serialization failure or deadlock: run the transaction again. */
export function isSerializationFailure (err: unknown): boolean {
  const code = (err as PgError | undefined)?.code
  return code === '40001' || code === '40P01'
}

/** The one line a failed first connection gives: the address and what failed. */
function openError (err: unknown, target: Target, timeoutMs: number): FsError {
  const e = err as PgError
  const at = `PostgreSQL at ${target.address}`
  switch (e.code) {
    case 'ECONNREFUSED': return new FsError('ECONNREFUSED', `${at}: connection refused`)
    case 'ENOTFOUND': case 'EAI_AGAIN': return new FsError('EHOSTUNREACH', `${at}: host not found`)
    case 'EHOSTUNREACH': case 'ENETUNREACH': return new FsError('EHOSTUNREACH', `${at}: host unreachable`)
    case '28P01': return new FsError('EACCES', `${at}: authentication failed for user "${target.user}"`)
    case '28000': return new FsError('EACCES', `${at}: user "${target.user}" is not allowed in (${e.message})`)
    case '3D000': return new FsError('ENOENT', `${at}: database "${target.database}" does not exist`)
    case '57P03': return new FsError('ECONNREFUSED', `${at}: the server is starting up or shutting down`)
  }
  if (/password must be a string|no password/i.test(e.message ?? '')) {
    return new FsError('EACCES', `${at}: authentication failed for user "${target.user}": the server asks for a password and none was given (--password-file, PGPASSFILE or ~/.pgpass)`)
  }
  if (/timeout/i.test(e.message ?? '')) return new FsError('ETIMEDOUT', `${at}: no answer within ${timeoutMs} ms`)
  return new FsError('EIO', `${at}: ${e.code ? `${e.code} ` : ''}${e.message}`)
}

const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

/** Full jitter: a random wait up to base·2^attempt, capped. */
function backoff (attempt: number, baseMs: number, capMs: number): number {
  return Math.random() * Math.min(capMs, baseMs * 2 ** attempt)
}

const GET_SQL = 'SELECT v FROM kv WHERE k = $1'
const GET_MANY_SQL = 'SELECT k, v FROM kv WHERE k = ANY($1::bytea[])'
const SCAN_SQL = 'SELECT k, v FROM kv WHERE k >= $1 AND k < $2 ORDER BY k LIMIT $3'
const SCAN_AFTER_SQL = 'SELECT k, v FROM kv WHERE k > $1 AND k < $2 ORDER BY k LIMIT $3'
const SCAN_OPEN_SQL = 'SELECT k, v FROM kv WHERE k >= $1 ORDER BY k LIMIT $2'
const SCAN_OPEN_AFTER_SQL = 'SELECT k, v FROM kv WHERE k > $1 ORDER BY k LIMIT $2'
/**
 * A transaction's writes in one statement: every put, every delete, and the
 * transaction id a commit of unknown outcome is looked up by. (Keys are
 * either put or deleted, never both: the buffer holds one write per key.)
 */
const WRITE_SQL = `WITH p AS (INSERT INTO kv (k, v) SELECT * FROM unnest($1::bytea[], $2::bytea[])
    ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v RETURNING 1),
  d AS (DELETE FROM kv WHERE k = ANY($3::bytea[]) RETURNING 1),
  n AS (SELECT pg_notify('${CHANGES_CHANNEL}', m) FROM unnest($5::text[]) m)
  SELECT pg_current_xact_id()::text AS xid, CASE WHEN $4::boolean THEN set_config('synchronous_commit', 'off', true) END AS sc,
    (SELECT count(*) FROM n) AS notes`

/**
 * The same statements as server-side prepared statements (SQL PREPARE, once
 * per connection), so a transaction's first statement can travel with its
 * BEGIN in one simple-protocol message: one round trip instead of two, and
 * no planning (native-notes/postgres.md).
 */
const PREPARED: Record<string, { sql: string, types: string }> = {
  bslfs_get: { sql: GET_SQL, types: 'bytea' },
  bslfs_get_many: { sql: GET_MANY_SQL, types: 'bytea[]' },
  bslfs_scan: { sql: SCAN_SQL, types: 'bytea, bytea, bigint' },
  bslfs_scan_after: { sql: SCAN_AFTER_SQL, types: 'bytea, bytea, bigint' },
  bslfs_scan_open: { sql: SCAN_OPEN_SQL, types: 'bytea, bigint' },
  bslfs_scan_open_after: { sql: SCAN_OPEN_AFTER_SQL, types: 'bytea, bigint' },
  bslfs_write: { sql: WRITE_SQL, types: 'bytea[], bytea[], bytea[], boolean, text[]' }
}
const PREPARE_ALL = Object.entries(PREPARED).map(([name, p]) => `PREPARE x${name} (${p.types}) AS ${p.sql}`).join('; ')
/** A first statement with parameters this large goes as parameters (no literal to build and parse), after a BEGIN of its own. */
const LITERAL_MAX = 256 * 1024
const BEGIN_SQL = 'BEGIN ISOLATION LEVEL SERIALIZABLE'

/** A value as an SQL literal: buffers as hex bytea, strings escaped by pg, arrays of either. */
function literal (v: unknown, arrayType?: string): string {
  if (Buffer.isBuffer(v)) return `E'\\\\x${v.toString('hex')}'::bytea` // E'': the same under any standard_conforming_strings
  if (Array.isArray(v)) return v.length === 0 ? `'{}'::${arrayType ?? 'text[]'}` : `ARRAY[${v.map(x => literal(x)).join(', ')}]::${arrayType ?? 'text[]'}`
  if (typeof v === 'number' && Number.isSafeInteger(v)) return String(v)
  if (typeof v === 'boolean') return v ? 'true' : 'false'
  if (typeof v === 'string') return escapeLiteral(v)
  throw new FsError('EIO', `directory statement: a parameter of type ${typeof v} cannot be sent as a literal`)
}

/** Roughly how long `values` are as literals. */
function literalSize (values: unknown[]): number {
  let n = 0
  for (const v of values.flat()) n += Buffer.isBuffer(v) ? 2 * v.length + 16 : typeof v === 'string' ? v.length + 4 : 8
  return n
}

/** `EXECUTE` of prepared statement `name` with `values` as literals. */
function execute (name: string, values: unknown[]): string {
  const types = PREPARED[name].types.split(', ')
  return `EXECUTE x${name} (${values.map((v, i) => literal(v, types[i].endsWith('[]') ? types[i] : undefined)).join(', ')})`
}

/** Connections that hold the PREPAREd statements (a new connection is a new object). */
const preparedOn = new WeakSet<PoolClient>()

/** Keys read ahead per statement. */
const PREFETCH_CHUNK = 1024

/** Rows read per statement; a longer scan pages on by key. */
const SCAN_CHUNK = 256

type Query = (name: string, text: string, values: unknown[]) => Promise<Array<Record<string, unknown>>>

/** Keys under `prefix` (after `after`) in key order through `query`, at most `limit`, a chunk per statement. */
async function * scanRows (query: Query, prefix: Buffer, opts: { after?: Buffer, limit?: number }, chunk = SCAN_CHUNK): AsyncIterable<[Buffer, Buffer]> {
  let limit = opts.limit ?? Infinity
  if (limit <= 0) return
  const end = prefixEnd(prefix)
  let from = prefix
  let inclusive = true
  if (opts.after && Buffer.compare(opts.after, prefix) >= 0) {
    from = opts.after
    inclusive = false
  }
  for (;;) {
    const want = Math.min(limit, chunk)
    const rows = end
      ? await query(inclusive ? 'bslfs_scan' : 'bslfs_scan_after', inclusive ? SCAN_SQL : SCAN_AFTER_SQL, [from, end, want])
      : await query(inclusive ? 'bslfs_scan_open' : 'bslfs_scan_open_after', inclusive ? SCAN_OPEN_SQL : SCAN_OPEN_AFTER_SQL, [from, want])
    for (const row of rows) yield [row.k as Buffer, row.v as Buffer]
    limit -= rows.length
    if (rows.length < want || limit <= 0) return
    from = rows[rows.length - 1].k as Buffer
    inclusive = false
  }
}

/** Thrown when a COMMIT's connection broke and the transaction's fate could not be learnt. */
class UnknownOutcome extends Error {}

class PgTxn extends BufferedTxn {
  /** The first database error of this attempt: it decides retry or EIO even if `fn` caught it. */
  failure: unknown
  /** Change-feed payloads, sent with the writes (delivered by PostgreSQL at commit). */
  private readonly notes: string[] = []
  private client?: PoolClient
  private begun?: Promise<PoolClient>

  constructor (private readonly kv: PgKv) { super() }

  /** A pooled connection holding the prepared statements (PREPAREd once, on its first use). */
  private async prepared (): Promise<PoolClient> {
    const client = await this.kv.connect()
    this.client = client
    if (!preparedOn.has(client)) {
      await client.query(PREPARE_ALL)
      preparedOn.add(client)
      this.kv.stats.roundTrips++
    }
    return client
  }

  /** The transaction's connection, BEGIN sent (on its own: for a statement that did not carry it). */
  private async connection (): Promise<PoolClient> {
    this.begun ??= (async () => {
      const client = await this.prepared()
      await client.query(BEGIN_SQL)
      this.kv.stats.roundTrips++
      return client
    })()
    return await this.begun
  }

  private readonly query: Query = async (name, text, values) => {
    try {
      if (!this.begun && literalSize(values) <= LITERAL_MAX) {
        // The first statement carries the BEGIN: one message, one round trip.
        let rows: Array<Record<string, unknown>> = []
        this.begun = (async () => {
          const client = await this.prepared()
          const results = await client.query(`${BEGIN_SQL}; ${execute(name, values)}`) as unknown as Array<{ rows: Array<Record<string, unknown>> }>
          this.kv.stats.roundTrips++
          rows = results[1].rows
          return client
        })()
        await this.begun
        return rows
      }
      const client = await this.connection()
      const rows = (await client.query({ name, text, values })).rows
      this.kv.stats.roundTrips++
      return rows
    } catch (err) {
      this.failure ??= err
      throw err
    }
  }

  /**
   * What this attempt read, by key (latin1): a second read of a key answers
   * from here. The same answer the database would give inside this
   * transaction (its snapshot is fixed, and its own writes are in the buffer).
   */
  private readonly reads = new Map<string, Buffer | undefined>()

  protected async storedGet (key: Buffer): Promise<Buffer | undefined> {
    const k = key.toString('latin1')
    if (this.reads.has(k)) return this.reads.get(k)
    const rows = await this.query('bslfs_get', GET_SQL, [key])
    const v = rows.length > 0 ? rows[0].v as Buffer : undefined
    this.reads.set(k, v)
    return v
  }

  async prefetch (keys: Buffer[]): Promise<void> {
    const want = keys.filter(key => !this.reads.has(key.toString('latin1')) && !this.writes.lookup(key))
    for (let i = 0; i < want.length; i += PREFETCH_CHUNK) {
      const chunk = want.slice(i, i + PREFETCH_CHUNK)
      const rows = await this.query('bslfs_get_many', GET_MANY_SQL, [chunk])
      for (const key of chunk) this.reads.set(key.toString('latin1'), undefined)
      for (const row of rows) this.reads.set((row.k as Buffer).toString('latin1'), row.v as Buffer)
    }
  }

  protected storedScan (prefix: Buffer, opts: { after?: Buffer, limit?: number }): AsyncIterable<[Buffer, Buffer]> {
    // Deleted keys may hide stored ones: read that many more per statement, so a small limit still takes one.
    const page = Math.max(1, Math.min(SCAN_CHUNK, (opts.limit ?? Infinity) + this.writes.deletesUnder(prefix, opts.after)))
    return scanRows(this.query, prefix, { after: opts.after }, page)
  }

  notify (message: string): void {
    if (Buffer.byteLength(message) > NOTE_MAX) throw new FsError('EIO', `a change-feed message of ${Buffer.byteLength(message)} bytes (at most ${NOTE_MAX})`)
    this.notes.push(this.kv.changes.payload(message))
  }

  /** Send the writes and COMMIT. A transaction that neither read nor wrote has nothing to commit. */
  async commit (asyncCommit: boolean): Promise<void> {
    if (!this.begun && this.writes.size === 0 && this.notes.length === 0) return
    let xid: string | undefined
    if (this.writes.size > 0 || this.notes.length > 0) {
      const putKeys: Buffer[] = []
      const putValues: Buffer[] = []
      const delKeys: Buffer[] = []
      for (const { key, value } of this.writes.values()) {
        // As LevelDB's engine: a write that is not a buffer refuses the whole batch (EIO), and nothing is sent.
        if (!Buffer.isBuffer(key) || (value !== DELETED && !Buffer.isBuffer(value))) {
          throw new FsError('EIO', `directory write refused: a ${value === DELETED ? 'del' : 'put'} of a key or value that is not a buffer`)
        }
        if (value === DELETED) delKeys.push(key)
        else { putKeys.push(key); putValues.push(value) }
      }
      // Not sent with the COMMIT in one message: PostgreSQL flushes its answers only at the end of
      // a message, so the transaction id would not be known if COMMIT's answer were lost.
      const rows = await this.query('bslfs_write', WRITE_SQL, [putKeys, putValues, delKeys, asyncCommit, this.notes])
      xid = rows[0].xid as string
    }
    const client = await this.connection()
    try {
      await client.query('COMMIT')
      this.kv.stats.roundTrips++
    } catch (err) {
      this.failure ??= err
      if (xid === undefined || !isConnectionError(err)) throw err
      await this.learnOutcome(xid, err)
      return
    }
    this.release()
  }

  /** The COMMIT was sent and the answer lost: it may have committed. Ask, rather than guess. */
  private async learnOutcome (xid: string, err: unknown): Promise<void> {
    this.release(err)
    let status: string | undefined
    try {
      status = await this.kv.commitStatus(xid)
    } catch (e) {
      throw new UnknownOutcome(`the connection broke during COMMIT and transaction ${xid}'s outcome could not be learnt: ${(e as Error).message}`)
    }
    this.kv.stats.commitsLookedUp++
    if (status === 'committed') return
    if (status === 'aborted') throw err // nothing written: retried as any broken connection
    throw new UnknownOutcome(`the connection broke during COMMIT and transaction ${xid}'s outcome could not be learnt`)
  }

  /** Give the connection back: destroyed after a connection error, else rolled back first if still open. */
  async abandon (err: unknown): Promise<void> {
    const client = this.client
    if (!client) return
    if (isConnectionError(err)) { this.release(err); return }
    try {
      await client.query('ROLLBACK')
      this.release()
    } catch (e) {
      this.release(e)
    }
  }

  private release (err?: unknown): void {
    const client = this.client
    this.client = undefined
    if (client) client.release(err instanceof Error ? err : err === undefined ? undefined : true)
  }
}

/** The PostgreSQL engine: any number of processes on any hosts share one database. */
export class PgKv implements KvStore {
  /** Counts since open, for `status` and the bench: commits, bodies run again after a conflict or a broken connection, lost COMMITs looked up, statements sent inside transactions. */
  readonly stats = { commits: 0, conflictRetries: 0, outageRetries: 0, commitsLookedUp: 0, roundTrips: 0 }
  /** Other processes' committed changes (LISTEN on a connection of its own). */
  readonly changes: PgChanges
  private readonly lock = new Mutex()
  private closed = false
  private readonly outageMs: number
  private readonly retryAttempts: number
  private readonly retryMs: number

  private constructor (private readonly pool: Pool, private readonly target: Target, private readonly opts: PgKvOptions) {
    this.outageMs = opts.outageMs ?? 10_000
    this.retryAttempts = opts.retryAttempts ?? 40
    this.retryMs = opts.retryMs ?? 10_000
    this.changes = new PgChanges({ ...target.config, connectionTimeoutMillis: opts.connectTimeoutMs ?? 5000 }, randomUUID(), target.address)
  }

  /**
   * Connect to `url` (postgres://USER[:PASSWORD]@HOST:PORT/DATABASE[?sslmode=…&sslrootcert=…])
   * and check the schema. A failure is one FsError line naming the address
   * and what failed; the password never appears in it.
   */
  static async open (url: string, opts: PgKvOptions = {}): Promise<PgKv> {
    const target = parseUrl(url, opts)
    const connectTimeoutMs = opts.connectTimeoutMs ?? 5000
    const statementTimeoutMs = opts.statementTimeoutMs ?? 10_000
    const pool = new Pool({
      ...target.config,
      max: Math.max(2, opts.poolSize ?? 4),
      connectionTimeoutMillis: connectTimeoutMs,
      idleTimeoutMillis: 30_000,
      keepAlive: true,
      // The client's own bound: a server that stops answering (not just refusing) must not hang an operation.
      query_timeout: (opts.outageMs ?? 10_000) + statementTimeoutMs,
      application_name: 'bslfs',
      // Every statement, even one outside BEGIN, is SERIALIZABLE: SSI's guarantee holds only among serializable transactions.
      options: `-c default_transaction_isolation=serializable -c statement_timeout=${statementTimeoutMs}`
    })
    // An idle connection's error (the server restarted) must not crash the process; the next use reconnects.
    pool.on('error', err => log('idle connection to %s lost: %s', target.address, err.message))
    pool.on('connect', client => client.on('error', err => log('connection to %s lost: %s', target.address, err.message)))
    const kv = new PgKv(pool, target, opts)
    try {
      let client: PoolClient
      try {
        client = await pool.connect()
      } catch (err) {
        throw openError(err, target, connectTimeoutMs)
      }
      try {
        await kv.checkSchema(client, opts.createIfMissing ?? false)
      } finally {
        client.release()
      }
    } catch (err) {
      await pool.end().catch(() => {})
      throw err
    }
    log('opened %s', target.shown)
    return kv
  }

  /** Where this store is, for messages and `status` (no password). */
  get location (): string { return this.target.shown }

  private async checkSchema (client: PoolClient, create: boolean): Promise<void> {
    const at = `PostgreSQL at ${this.target.address}, database "${this.target.database}"`
    let version: number | undefined
    try {
      const rows = (await client.query('SELECT version FROM bslfs_schema')).rows
      version = rows.length > 0 ? Number(rows[0].version) : undefined
    } catch (err) {
      if ((err as PgError).code !== '42P01') throw new FsError('EIO', `${at}: ${(err as Error).message}`, { cause: err })
    }
    if (version === undefined) {
      if (!create) throw new FsError('ENOENT', `${at}: holds no bslfs directory (no bslfs_schema table)`)
      if (this.opts.requireEmpty) {
        const rows = (await client.query(`SELECT schemaname || '.' || tablename AS name FROM pg_tables
          WHERE schemaname NOT IN ('pg_catalog', 'information_schema') AND tablename NOT IN ('kv', 'bslfs_schema') ORDER BY 1 LIMIT 3`)).rows
        if (rows.length > 0) {
          throw new FsError('ENOTEMPTY', `${at}: holds other tables (${rows.map(r => r.name as string).join(', ')}${rows.length === 3 ? ', …' : ''}); give bslfs a database of its own (CREATE DATABASE …)`)
        }
      }
      try {
        await client.query('BEGIN')
        // Two hosts initializing at once: the second waits, then finds the tables.
        await client.query('SELECT pg_advisory_xact_lock(7135001)')
        await client.query('CREATE TABLE IF NOT EXISTS kv (k bytea PRIMARY KEY, v bytea NOT NULL)')
        await client.query('CREATE TABLE IF NOT EXISTS bslfs_schema (version integer NOT NULL)')
        await client.query('INSERT INTO bslfs_schema (version) SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM bslfs_schema)', [PG_SCHEMA_VERSION])
        await client.query('COMMIT')
      } catch (err) {
        await client.query('ROLLBACK').catch(() => {})
        throw new FsError('EIO', `${at}: cannot create the bslfs tables: ${(err as Error).message}`, { cause: err })
      }
      return
    }
    if (version > PG_SCHEMA_VERSION) {
      throw new FsError('EIO', `${at}: schema version ${version} is newer than this bslfs understands (${PG_SCHEMA_VERSION}): upgrade bslfs`)
    }
  }

  /** A pooled connection, waiting out an outage up to the bound. */
  async connect (): Promise<PoolClient> {
    return await this.outageRetrying('connect', async () => await this.pool.connect())
  }

  private checkOpen (): void {
    if (this.closed) throw new FsError('EIO', 'the directory database is closed')
  }

  /** Run `op`, again after connection errors (with backoff) until the outage bound, then EIO. */
  private async outageRetrying<T> (what: string, op: () => Promise<T>): Promise<T> {
    this.checkOpen()
    const start = Date.now()
    for (let attempt = 0; ; attempt++) {
      try {
        return await op()
      } catch (err) {
        if (!isConnectionError(err)) throw this.eio(what, err)
        if (this.closed || Date.now() - start >= this.outageMs) throw this.eio(what, err, `unreachable for ${Date.now() - start} ms`)
        log('%s: %s unreachable (%s), retrying', what, this.target.address, (err as Error).message)
        await sleep(Math.min(backoff(attempt, 50, 1000), Math.max(0, start + this.outageMs - Date.now())))
      }
    }
  }

  private eio (what: string, err: unknown, why?: string): FsError {
    if (err instanceof FsError) return err
    const msg = `directory ${what} on PostgreSQL at ${this.target.address} failed${why ? ` (${why})` : ''}: ${(err as Error).message}`
    log(msg)
    return new FsError('EIO', msg, { cause: err })
  }

  /** An autocommit read: one statement on any pooled connection. */
  private readonly read: Query = async (name, text, values) => {
    return await this.outageRetrying('read', async () => (await this.pool.query({ name, text, values })).rows)
  }

  async get (key: Buffer): Promise<Buffer | undefined> {
    const rows = await this.read('bslfs_get', GET_SQL, [key])
    return rows.length > 0 ? rows[0].v as Buffer : undefined
  }

  async * scan (prefix: Buffer, opts: { after?: Buffer, limit?: number } = {}): AsyncIterable<[Buffer, Buffer]> {
    const limit = opts.limit ?? Infinity
    if (limit <= SCAN_CHUNK) {
      yield * scanRows(this.read, prefix, opts)
      return
    }
    // One statement answers most scans; one that needs more reads them all
    // again in one snapshot, as LevelDB's engine does (a page at a time from
    // separate statements could mix two states of the store).
    const first: Array<[Buffer, Buffer]> = []
    for await (const row of scanRows(this.read, prefix, { ...opts, limit: SCAN_CHUNK })) first.push(row)
    if (first.length < SCAN_CHUNK) {
      yield * first
      return
    }
    const snap = this.startSnapshot(false)
    try {
      yield * snap.scan(prefix, opts)
    } finally {
      await snap.close()
    }
  }

  snapshot (): KvSnapshot {
    return this.startSnapshot(!(this.opts.concurrent ?? false))
  }

  /**
   * A REPEATABLE READ READ ONLY transaction on its own connection. Its view
   * is fixed by its first statement, run at once here (after this process's
   * transaction in flight when `ordered`), so later commits do not show.
   */
  private startSnapshot (ordered: boolean): KvSnapshot {
    const begin = async (): Promise<PoolClient> => {
      const client = await this.connect()
      try {
        await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1')
      } catch (err) {
        client.release(true)
        throw this.eio('snapshot', err)
      }
      return client
    }
    const started = ordered ? this.lock.run(begin) : begin()
    started.catch(() => {}) // surfaced by the first use
    let done = false
    const query: Query = async (name, text, values) => {
      if (done) throw new FsError('EIO', 'read of a closed snapshot')
      const client = await started
      try {
        return (await client.query({ name, text, values })).rows
      } catch (err) {
        throw this.eio('snapshot read', err) // the view cannot be re-established elsewhere
      }
    }
    return {
      get: async key => {
        const rows = await query('bslfs_get', GET_SQL, [key])
        return rows.length > 0 ? rows[0].v as Buffer : undefined
      },
      scan: (prefix, opts = {}) => scanRows(query, prefix, opts),
      close: async () => {
        if (done) return
        done = true
        let client: PoolClient
        try { client = await started } catch { return }
        try {
          await client.query('COMMIT')
          client.release()
        } catch (err) {
          client.release(true)
        }
      }
    }
  }

  txn<T> (fn: (tx: KvTxn) => Promise<T> | T, opts: { sync?: boolean } = {}): Promise<T> {
    if (this.opts.concurrent ?? false) return this.runTxn(fn, opts)
    return this.lock.run(async () => await this.runTxn(fn, opts))
  }

  /**
   * Run `fn` in a SERIALIZABLE transaction, from scratch again after a
   * serialization failure or deadlock (jittered backoff, bounded in attempts
   * and time) or a connection that broke before COMMIT (bounded by the outage
   * limit). Commit hooks run once, after the commit that took.
   */
  private async runTxn<T> (fn: (tx: KvTxn) => Promise<T> | T, opts: { sync?: boolean }): Promise<T> {
    this.checkOpen()
    const start = Date.now()
    let conflicts = 0
    let outageStart: number | undefined
    for (let attempt = 0; ; attempt++) {
      const tx = new PgTxn(this)
      let result: T
      try {
        result = await fn(tx)
        if (tx.failure !== undefined) throw tx.failure
        await tx.commit(!(opts.sync ?? false) && (this.opts.asyncCommitWhenUnsynced ?? false))
      } catch (err) {
        const cause = tx.failure ?? err
        await tx.abandon(cause)
        if (err instanceof UnknownOutcome) throw this.eio('commit', err)
        if (isSerializationFailure(cause)) {
          conflicts++
          if (conflicts >= this.retryAttempts || Date.now() - start >= this.retryMs) {
            throw this.eio('transaction', cause, `still conflicting after ${conflicts} attempts in ${Date.now() - start} ms`)
          }
          this.stats.conflictRetries++
          await sleep(backoff(conflicts, 1, 100))
          continue
        }
        if (isConnectionError(cause) && !this.closed) {
          outageStart ??= Date.now()
          if (Date.now() - outageStart >= this.outageMs) throw this.eio('transaction', cause, `unreachable for ${Date.now() - outageStart} ms`)
          log('transaction: %s unreachable (%s), running it again', this.target.address, (cause as Error).message)
          this.stats.outageRetries++
          await sleep(Math.min(backoff(attempt, 50, 1000), Math.max(0, outageStart + this.outageMs - Date.now())))
          continue
        }
        if (tx.failure !== undefined) throw this.eio('transaction', cause)
        throw err // the body's own error: nothing was written
      }
      if (conflicts > 0) log('transaction committed after %d serialization retries', conflicts)
      this.stats.commits++
      mountMetrics.directoryTxn.observe((Date.now() - start) / 1000)
      for (const hook of tx.commitHooks) hook()
      return result
    }
  }

  /** A transaction's fate by id, from a fresh connection: 'committed', 'aborted', 'in progress' or undefined (too old to know). */
  async commitStatus (xid: string): Promise<string | undefined> {
    const deadline = Date.now() + this.outageMs
    for (;;) {
      const rows = await this.outageRetrying('commit check', async () =>
        (await this.pool.query('SELECT pg_xact_status($1::xid8) AS status', [xid])).rows)
      const status = rows[0]?.status as string | null
      // In progress: the old backend has not finished (or not yet noticed its client left).
      if (status !== 'in progress' || Date.now() >= deadline) return status ?? undefined
      await sleep(50)
    }
  }

  async close (): Promise<void> {
    if (this.closed) return
    // Wait for the transaction in flight, then close.
    await this.lock.run(async () => {
      this.closed = true
      await this.pool.end()
    })
  }
}
