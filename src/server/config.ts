/**
 * Turning `bslfs serve` options into a running configuration: the listen
 * address, the devices, the token. Every problem is a UsageError that says
 * what to do.
 */
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import * as fsp from 'node:fs/promises'
import { isIP } from 'node:net'
import { hostname } from 'node:os'
import { basename, dirname, join, resolve } from 'node:path'
import { isValidName } from '../bsl'
import { LocalDevice, MARKER_FILE } from '../devices/local'
import { syncDir } from '../durable'
import { readSecretFile } from '../credentials'
import { UsageError } from '../errors'

export interface ListenAddress {
  host: string
  port: number
}

/** `HOST:PORT`, `[IPV6]:PORT`; port 0 picks a free port. */
export function parseListen (s: string): ListenAddress {
  const m = /^\[([^\]]+)\]:([0-9]{1,5})$/.exec(s) ?? /^([^:[\]]+):([0-9]{1,5})$/.exec(s)
  if (!m) throw new UsageError(`bad --listen ${JSON.stringify(s)}: use HOST:PORT, e.g. 127.0.0.1:7070 or [::1]:7070`)
  const host = m[1]
  const port = Number(m[2])
  if (port > 65535) throw new UsageError(`bad --listen ${JSON.stringify(s)}: port ${port} is larger than 65535`)
  if (s.startsWith('[') && isIP(host) !== 6) throw new UsageError(`bad --listen ${JSON.stringify(s)}: ${host} is not an IPv6 address`)
  if (!s.startsWith('[') && isIP(host) === 0 && !/^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/.test(host)) {
    throw new UsageError(`bad --listen ${JSON.stringify(s)}: ${JSON.stringify(host)} is not an IP address or host name`)
  }
  return { host, port }
}

/** True for addresses only this host can reach: 127.0.0.0/8, ::1 and "localhost". */
export function isLoopback (host: string): boolean {
  const h = host.toLowerCase()
  if (h === 'localhost' || h === 'localhost.') return true
  if (isIP(h) === 4) return h.split('.')[0] === '127'
  if (isIP(h) === 6) {
    if (h === '::1' || /^(0{1,4}:){7}0{0,3}1$/.test(h) || h === '0:0:0:0:0:0:0:1') return true
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(h)
    return mapped !== null && mapped[1].split('.')[0] === '127'
  }
  return false
}

/** The address as people write it: `[::1]:7070`, `127.0.0.1:7070`. */
export function formatAddress (host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`
}

export interface DeviceSpec {
  name: string
  path: string
}

/** `NAME=PATH`; the path made absolute. */
export function parseDeviceSpec (s: string): DeviceSpec {
  const eq = s.indexOf('=')
  if (eq <= 0 || eq === s.length - 1) {
    throw new UsageError(`bad --device ${JSON.stringify(s)}: use NAME=PATH, e.g. d1=/srv/disk1`)
  }
  const name = s.slice(0, eq)
  if (!isValidName(name)) {
    throw new UsageError(`bad --device ${JSON.stringify(s)}: ${JSON.stringify(name)} is not a valid device name (1-64 characters of A-Z a-z 0-9 _ . -, not starting with "." or "-")`)
  }
  return { name, path: resolve(s.slice(eq + 1)) }
}

/** Several specs: at least one, no name or path twice. */
export function parseDeviceSpecs (specs: readonly string[]): DeviceSpec[] {
  if (specs.length === 0) throw new UsageError('no device to serve: give at least one --device NAME=PATH')
  const out = specs.map(parseDeviceSpec)
  const names = new Set<string>()
  const paths = new Set<string>()
  for (const d of out) {
    if (names.has(d.name)) throw new UsageError(`device ${d.name} is given twice`)
    if (paths.has(d.path)) throw new UsageError(`${d.path} is given as two devices`)
    names.add(d.name)
    paths.add(d.path)
  }
  return out
}

/** The server's name: --name, or this host's short name. */
export function serverName (given: string | undefined): string {
  if (given !== undefined) {
    if (!isValidName(given)) {
      throw new UsageError(`bad --name ${JSON.stringify(given)}: 1-64 characters of A-Z a-z 0-9 _ . -, not starting with "." or "-"`)
    }
    return given
  }
  const short = hostname().split('.')[0]
  if (!isValidName(short)) {
    throw new UsageError(`this host's name ${JSON.stringify(hostname())} is not a valid server name; give one with --name NAME`)
  }
  return short
}

/**
 * Opens a device directory for serving as SERVER:NAME; a missing or empty
 * directory becomes a new device.
 */
export async function openDevice (spec: DeviceSpec, server: string): Promise<LocalDevice> {
  const names = { server, device: spec.name }
  try {
    if (existsSync(join(spec.path, MARKER_FILE))) return await LocalDevice.open(spec.path, names)
    return await LocalDevice.create(spec.path, names)
  } catch (err) {
    throw new UsageError(`device ${spec.name}: ${(err as Error).message}`)
  }
}

const TOKEN_RE = /^[\x21-\x7e]+$/
const MAKE_TOKEN = (file: string): string => `(umask 077; head -c 32 /dev/urandom | base64 > ${file})`

/**
 * The tokens in FILE: one a line (several while clients change over from an
 * old token to a new one), blank lines ignored. Refused when the file is
 * missing, empty, not a regular file, or open to group or others.
 */
export async function readTokenFile (file: string): Promise<{ tokens: string[], warnings: string[] }> {
  let text: string
  try {
    text = (await readSecretFile(file, 'token file')).toString('utf8')
  } catch (err) {
    if (err instanceof UsageError && / does not exist$/.test(err.message)) {
      throw new UsageError(`${err.message}; create one with: ${MAKE_TOKEN(file)}`)
    }
    throw err
  }
  const tokens = text.split('\n').map(l => l.trim()).filter(l => l !== '')
  if (tokens.length === 0) throw new UsageError(`token file ${file} is empty; put a token in it with: ${MAKE_TOKEN(file)}`)
  const warnings: string[] = []
  for (const [i, token] of tokens.entries()) {
    if (!TOKEN_RE.test(token)) {
      throw new UsageError(`line ${i + 1} of ${file} is not a token: each line must be one token of printable ASCII without spaces; make one with: ${MAKE_TOKEN(file)}`)
    }
    if (token.length < 16) warnings.push(`the token on line ${i + 1} of ${file} is only ${token.length} characters long; a random one of 32 or more is much safer`)
  }
  return { tokens, warnings }
}

/** Every token of every file (a server accepts any of them), each file read as readTokenFile does. */
export async function readTokenFiles (files: readonly string[]): Promise<{ tokens: string[], warnings: string[] }> {
  const tokens: string[] = []
  const warnings: string[] = []
  for (const f of files) {
    const r = await readTokenFile(f)
    for (const t of r.tokens) if (!tokens.includes(t)) tokens.push(t)
    warnings.push(...r.warnings)
  }
  return { tokens, warnings }
}

/**
 * For a loopback server without --token-file: the token in `file` when it
 * holds one already (so clients keep working across restarts), otherwise a
 * new random one written there (mode 0600, atomically).
 */
export async function loopbackToken (file: string): Promise<{ token: string, generated: boolean }> {
  if (existsSync(file)) {
    const { tokens } = await readTokenFile(file)
    return { token: tokens[0], generated: false }
  }
  const token = randomBytes(32).toString('base64url')
  const dir = dirname(file)
  const tmp = join(dir, `.${basename(file)}.${randomBytes(6).toString('hex')}.tmp`)
  try {
    const h = await fsp.open(tmp, 'wx', 0o600)
    try {
      await h.writeFile(token + '\n')
      await h.sync()
    } finally {
      await h.close()
    }
    await fsp.rename(tmp, file)
    await syncDir(dir)
  } catch (err) {
    await fsp.unlink(tmp).catch(() => {})
    throw new UsageError(`cannot write the token file ${file}: ${(err as Error).message}`)
  }
  return { token, generated: true }
}

/** A positive integer option. */
export function parseCount (flag: string, s: string, min: number, max: number): number {
  if (!/^[0-9]+$/.test(s) || Number(s) < min || Number(s) > max) {
    throw new UsageError(`bad ${flag} ${JSON.stringify(s)}: use a whole number from ${min} to ${max}`)
  }
  return Number(s)
}

/** A duration in seconds (fractions allowed), returned in milliseconds. */
export function parseSeconds (flag: string, s: string, max = 3600): number {
  const n = Number(s)
  if (!/^[0-9]+(\.[0-9]+)?$/.test(s) || !(n > 0) || n > max) {
    throw new UsageError(`bad ${flag} ${JSON.stringify(s)}: use a number of seconds greater than 0 and at most ${max}`)
  }
  return Math.round(n * 1000)
}
