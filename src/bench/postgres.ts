/**
 * A throw-away PostgreSQL, for the tests (test/helpers/postgres.ts) and the
 * bench's bslfs-pg target: initdb in a private temp dir as the
 * `postgres` user (PostgreSQL refuses to run as root), the server on a free
 * loopback port with its socket in that dir, stopped by pid at the end.
 *
 * Authentication: the superuser `postgres` is trusted (the harness uses it to
 * set things up); every other role logs in over TCP with a SCRAM password, so
 * a wrong password is a real authentication failure.
 */
import { execFile } from 'node:child_process'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import * as fsp from 'node:fs/promises'
import * as net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { Client } from 'pg'

const run = promisify(execFile)

export const PG_HOST = '127.0.0.1'
const SUPERUSER = 'postgres'

/** The newest installed PostgreSQL's binaries (Debian: /usr/lib/postgresql/N/bin), if any. */
export function pgBinDir (): string | undefined {
  const root = '/usr/lib/postgresql'
  if (!existsSync(root)) return undefined
  const versions = readdirSync(root).filter(v => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a))
  for (const v of versions) {
    const bin = join(root, v, 'bin')
    if (existsSync(join(bin, 'initdb')) && existsSync(join(bin, 'pg_ctl'))) return bin
  }
  return undefined
}

/** Why a PostgreSQL cannot be started here, or undefined when it can (for `t.skip`/`{ skip }`). */
export function pgUnavailable (): string | undefined {
  if (!pgBinDir()) return 'PostgreSQL binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)'
  if (!/^postgres:/m.test(readFileSync('/etc/passwd', 'utf8'))) return 'no `postgres` user to run PostgreSQL as'
  if (!existsSync('/usr/sbin/runuser') && !existsSync('/sbin/runuser')) return 'runuser(1) not found (util-linux)'
  return undefined
}

async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once('error', reject)
    srv.listen(0, PG_HOST, () => {
      const port = (srv.address() as net.AddressInfo).port
      srv.close(() => resolve(port))
    })
  })
}

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
  } catch {
    return false
  }
  // A zombie answers kill(0) but is gone for our purpose.
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return false
  }
}

const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

/** Postmasters started by this process, killed if the process exits without stopping them. */
const running = new Set<number>()
process.once('exit', () => {
  for (const pid of running) {
    try { process.kill(pid, 'SIGKILL') } catch {}
  }
})

/** Wait until `pid` has left the process table (reaped, not just a zombie), at most `ms`. */
async function gone (pid: number, ms: number): Promise<void> {
  const deadline = Date.now() + ms
  while (existsSync(`/proc/${pid}`) && Date.now() < deadline) await sleep(20)
}

/**
 * Temp dirs of servers whose test process died before stopping them (its
 * pid is in DIR/owner): their postmaster is killed and the dir removed.
 */
async function removeStale (): Promise<void> {
  const root = tmpdir()
  for (const name of readdirSync(root)) {
    if (!name.startsWith('bslfs-pg-')) continue
    const dir = join(root, name)
    try {
      let owner = 0
      try { owner = Number(readFileSync(join(dir, 'owner'), 'utf8')) } catch {}
      if (owner ? alive(owner) : Date.now() - (await fsp.stat(dir)).mtimeMs < 10 * 60_000) continue
      let pid = 0
      try { pid = Number(readFileSync(join(dir, 'data', 'postmaster.pid'), 'utf8').split('\n')[0]) } catch {}
      if (pid && alive(pid)) {
        // Its test process is gone: nobody will stop it.
        try { process.kill(pid, 'SIGKILL') } catch {}
        await gone(pid, 5000)
      }
      await fsp.rm(dir, { recursive: true, force: true })
    } catch {}
  }
}

export interface PgServerOptions {
  /** Extra server settings, `-c name=value` each (e.g. { fsync: 'off' }). */
  settings?: Record<string, string>
  /** The database created for the test (default `bslfs`). */
  database?: string
}

export class PgServer {
  pid = 0
  readonly host = PG_HOST

  private constructor (
    readonly dir: string,
    readonly port: number,
    readonly database: string,
    private readonly bin: string,
    private readonly settings: Record<string, string>
  ) {}

  get dataDir (): string { return join(this.dir, 'data') }
  get logFile (): string { return join(this.dir, 'server.log') }

  /** initdb, start, create the test database. The caller stops it (or use `startPostgres(t)`). */
  static async create (opts: PgServerOptions = {}): Promise<PgServer> {
    const reason = pgUnavailable()
    if (reason) throw new Error(reason)
    await removeStale()
    const dir = await fsp.mkdtemp(join(tmpdir(), 'bslfs-pg-'))
    const server = new PgServer(dir, await freePort(), opts.database ?? 'bslfs', pgBinDir()!, opts.settings ?? {})
    try {
      await fsp.writeFile(join(dir, 'owner'), String(process.pid))
      await run('chown', [`${SUPERUSER}:`, dir])
      await server.asPostgres('initdb', ['-D', server.dataDir, '-U', SUPERUSER, '--no-sync', '--auth-local=trust', '--auth-host=scram-sha-256', '-E', 'UTF8', '--locale=C'])
      await fsp.writeFile(join(server.dataDir, 'pg_hba.conf'), [
        'local all all trust',
        `host all ${SUPERUSER} 127.0.0.1/32 trust`,
        'host all all 127.0.0.1/32 scram-sha-256',
        ''
      ].join('\n'))
      await server.start()
      await server.sql(`CREATE DATABASE ${server.database}`)
    } catch (err) {
      await server.destroy()
      throw err
    }
    return server
  }

  private async asPostgres (program: string, args: string[]): Promise<string> {
    try {
      const { stdout } = await run('runuser', ['-u', SUPERUSER, '--', join(this.bin, program), ...args], { cwd: this.dir })
      return stdout
    } catch (err) {
      const e = err as { stderr?: string, message: string }
      let log = ''
      try { log = readFileSync(this.logFile, 'utf8').split('\n').slice(-15).join('\n') } catch {}
      throw new Error(`${program} failed: ${e.stderr?.trim() || e.message}${log ? `\nserver log:\n${log}` : ''}`)
    }
  }

  /** Start (again) on the same port and data dir; resolves once it accepts connections. */
  async start (): Promise<void> {
    if (this.pid && alive(this.pid)) return
    const opts = [`-p ${this.port}`, `-k ${this.dir}`, `-c listen_addresses=${PG_HOST}`,
      ...Object.entries(this.settings).map(([k, v]) => `-c ${k}=${v}`)].join(' ')
    // After a crash the old postmaster's pid and its backends' shared memory linger a moment.
    for (let attempt = 1; ; attempt++) {
      try {
        await this.asPostgres('pg_ctl', ['-D', this.dataDir, '-l', this.logFile, '-w', '-t', '60', '-o', opts, 'start'])
        break
      } catch (err) {
        if (attempt >= 20 || !/another server might be running|already exists|still in use/.test((err as Error).message)) throw err
        await sleep(250)
      }
    }
    this.pid = Number(readFileSync(join(this.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0])
    running.add(this.pid)
    // pg_ctl -w waits for the socket; wait for a real login over TCP too.
    const deadline = Date.now() + 30_000
    for (;;) {
      try {
        await this.sql('SELECT 1')
        return
      } catch (err) {
        if (Date.now() > deadline) throw err
        await sleep(50)
      }
    }
  }

  /** Fast shutdown by pid (SIGINT: clients disconnected, committed work kept), SIGKILL after `graceMs`. */
  async stop (graceMs = 10_000): Promise<void> {
    await this.signal('SIGINT', graceMs)
  }

  /** A crash: SIGKILL the postmaster (its backends exit when they notice). */
  async kill (): Promise<void> {
    const pid = this.pid
    await this.signal('SIGKILL', 5000)
    // PostgreSQL refuses to start while the old pid exists, even as a zombie.
    await gone(pid, 5000)
  }

  private async signal (sig: NodeJS.Signals, graceMs: number): Promise<void> {
    const pid = this.pid
    if (!pid || !alive(pid)) return
    try { process.kill(pid, sig) } catch {}
    const deadline = Date.now() + graceMs
    while (alive(pid) && Date.now() < deadline) await sleep(20)
    if (alive(pid)) {
      try { process.kill(pid, 'SIGKILL') } catch {}
      while (alive(pid)) await sleep(20)
    }
    running.delete(pid)
  }

  async restart (): Promise<void> {
    await this.stop()
    await this.start()
  }

  /** Stop and remove the temp dir. */
  async destroy (): Promise<void> {
    await this.stop()
    await fsp.rm(this.dir, { recursive: true, force: true })
  }

  /** postgres://USER[:PASSWORD]@127.0.0.1:PORT/DB (default: the superuser, the test database). */
  url (opts: { user?: string, password?: string, database?: string, port?: number } = {}): string {
    const user = encodeURIComponent(opts.user ?? SUPERUSER)
    const auth = opts.password !== undefined ? `${user}:${encodeURIComponent(opts.password)}` : user
    return `postgres://${auth}@${this.host}:${opts.port ?? this.port}/${opts.database ?? this.database}`
  }

  /** Run SQL as the superuser (in `database`, default the test database; `postgres` before it exists). */
  async sql (text: string, params: unknown[] = [], database?: string): Promise<Array<Record<string, unknown>>> {
    const client = new Client({ host: this.host, port: this.port, user: SUPERUSER, database: database ?? 'postgres', connectionTimeoutMillis: 5000 })
    client.on('error', () => {})
    await client.connect()
    try {
      return (await client.query(text, params)).rows
    } finally {
      await client.end().catch(() => {})
    }
  }

  /** A login role with a password (SCRAM), owning nothing; granted all on the test database. */
  async createRole (name: string, password: string): Promise<void> {
    await this.sql(`CREATE ROLE "${name}" LOGIN PASSWORD '${password.replace(/'/g, "''")}'`)
    await this.sql(`GRANT ALL ON DATABASE ${this.database} TO "${name}"`)
    await this.sql(`GRANT ALL ON SCHEMA public TO "${name}"`, [], this.database)
  }
}

