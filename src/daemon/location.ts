import { createHash } from 'node:crypto'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { UsageError } from '../errors'

/**
 * What names a filesystem on the command line:
 *
 *   a STATE directory   its LevelDB directory inside; one host, one mount at a time
 *   postgres://USER@HOST:PORT/DATABASE[?sslmode=verify-full&sslrootcert=FILE]
 *                       the directory on PostgreSQL; any number of hosts mount it at once
 *
 * A URL never carries a password: it would show in `ps`, /proc/mounts, shell
 * history and logs. The password comes from ~/.pgpass, PGPASSFILE or --password-file.
 */
export type FsName =
  | { kind: 'state', root: string }
  /** `url` is normalized (the port written out) and is what /proc/mounts shows as the source. */
  | { kind: 'postgres', url: string, user: string, address: string, database: string }

export const PG_URL_SHAPE = 'postgres://USER@HOST:PORT/DATABASE'

const PASSWORD_ADVICE = 'put it in ~/.pgpass or the file PGPASSFILE names (a line HOST:PORT:DATABASE:USER:PASSWORD, mode 0600), ' +
  'or in a file given with --password-file FILE (mount option password_file=FILE)'

export function isPgUrl (arg: string): boolean {
  return /^postgres(ql)?:/i.test(arg)
}

/** A STATE path or a postgres:// URL, checked; one line saying what is wrong otherwise. */
export function parseFsName (arg: string): FsName {
  if (isPgUrl(arg)) return parsePgName(arg)
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(arg)
  if (scheme) throw new UsageError(`"${scheme[1]}://…" is neither a STATE directory nor a PostgreSQL URL (${PG_URL_SHAPE})`)
  return { kind: 'state', root: resolve(arg) }
}

function parsePgName (arg: string): FsName {
  let u: URL
  try {
    u = new URL(arg)
  } catch {
    throw new UsageError(`malformed PostgreSQL URL: expected ${PG_URL_SHAPE}`)
  }
  if (u.password) throw new UsageError(`the URL carries a password, which would show in \`ps\`, /proc/mounts and logs: remove it and ${PASSWORD_ADVICE}`)
  const database = decodeURIComponent(u.pathname.replace(/^\//, ''))
  if (!u.hostname || !database || database.includes('/') || u.hash) {
    throw new UsageError(`malformed PostgreSQL URL: it needs a host and a database: ${PG_URL_SHAPE}`)
  }
  // The URL is the kernel's fsname and an fstab field: a comma or a blank would split it.
  if (/[,\s]/.test(arg)) throw new UsageError('a PostgreSQL URL with a comma or a blank cannot name a mount; rename the database or percent-encode it')
  for (const key of u.searchParams.keys()) {
    if (key !== 'sslmode' && key !== 'sslrootcert') throw new UsageError(`unknown URL parameter "${key}": bslfs takes sslmode and sslrootcert`)
  }
  const port = u.port || '5432'
  const host = u.hostname
  const user = u.username
  const url = `postgres://${user ? `${user}@` : ''}${host}:${port}/${u.pathname.replace(/^\//, '')}${u.search}`
  return { kind: 'postgres', url, user: user ? decodeURIComponent(user) : '', address: `${host}:${port}`, database }
}

/** The name as messages, `status` and /proc/mounts show it (never a password: a URL cannot hold one). */
export function fsNameText (name: FsName): string {
  return name.kind === 'state' ? name.root : name.url
}

/** Do two names (as typed, or a mount's source) name the same filesystem? */
export function sameFs (a: FsName, source: string): boolean {
  try {
    const b = parseFsName(source)
    return fsNameText(a) === fsNameText(b)
  } catch {
    return false
  }
}

/**
 * Where a running mount keeps its control socket, pid and log. A STATE holds
 * its own (one mount at a time: the mount owns the LevelDB). A URL-named
 * filesystem can be mounted on many hosts and twice on one (tests, or two
 * views), so its runtime files are per mount point on this host:
 * /run/bslfs/<mount point, escaped as systemd-escape --path does>/.
 */
export interface RuntimePaths { dir: string, socket: string, pid: string, log: string }

export function runtimeRoot (): string {
  if (process.env.BSLFS_RUN_DIR) return resolve(process.env.BSLFS_RUN_DIR)
  if (process.getuid?.() === 0) return '/run/bslfs'
  return join(process.env.XDG_RUNTIME_DIR ?? tmpdir(), `bslfs-${process.getuid?.() ?? 'user'}`)
}

/** "/mnt/a-b" → "mnt-a\x2db": readable, one directory name per mount point, distinct for distinct paths. */
export function escapeMountpoint (mountpoint: string): string {
  const abs = resolve(mountpoint)
  const inner = abs.replace(/^\/+|\/+$/g, '')
  if (!inner) return '-'
  const escaped = inner.split('/').map(part => part.replace(/^\./, '\\x2e').replace(/[^A-Za-z0-9:_.]/g, c =>
    [...Buffer.from(c)].map(b => `\\x${b.toString(16).padStart(2, '0')}`).join(''))).join('-')
  // A unix socket path holds at most 107 bytes: a long mount point keeps its head and a hash of the whole.
  if (Buffer.byteLength(escaped) <= 64) return escaped
  return `${escaped.slice(0, 40)}~${createHash('sha256').update(abs).digest('hex').slice(0, 16)}`
}

export function runtimePaths (name: FsName, mountpoint: string): RuntimePaths {
  if (name.kind === 'state') {
    return { dir: name.root, socket: join(name.root, 'control.sock'), pid: join(name.root, 'daemon.pid'), log: join(name.root, 'daemon.log') }
  }
  const dir = join(runtimeRoot(), escapeMountpoint(mountpoint))
  return { dir, socket: join(dir, 'control.sock'), pid: join(dir, 'daemon.pid'), log: join(dir, 'daemon.log') }
}
