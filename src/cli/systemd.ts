import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync, promises as fsp } from 'node:fs'
import { isAbsolute, join, resolve } from 'node:path'
import { UsageError } from '../errors'
import { packageRoot } from '../version'

/** The unprivileged user block servers run as (the units name it). */
export const SERVICE_USER = 'bslfs'
export const UNITS = ['bslfs-serve@.service']
/** What the shipped units run; `systemd install` puts this package's own bin/bslfs there. */
const SHIPPED_BSLFS = '/usr/local/bin/bslfs'

export interface SystemdPaths {
  /** Where units go: /etc/systemd/system. */
  unitDir: string
  /** Where instances' options go: /etc/bslfs/serve. */
  confDir: string
}

export function systemdPaths (o: { unitDir?: string, confDir?: string } = {}): SystemdPaths {
  return { unitDir: resolve(o.unitDir ?? '/etc/systemd/system'), confDir: resolve(o.confDir ?? '/etc/bslfs/serve') }
}

/** A shipped unit as installed: running this bslfs, and reading its options from `confDir`. */
export async function renderUnit (name: string, confDir: string): Promise<string> {
  const text = await fsp.readFile(join(packageRoot, 'systemd', name), 'utf8')
  const bslfs = await fsp.realpath(join(packageRoot, 'bin', 'bslfs'))
  return text.split(SHIPPED_BSLFS).join(bslfs).split('/etc/bslfs/serve').join(confDir)
}

function hasUser (name: string): boolean {
  return spawnSync('id', ['-u', name], { stdio: 'ignore' }).status === 0
}

/** The user and group `bslfs`, a system account with no login and no home of its own. */
export function ensureServiceUser (): boolean {
  if (hasUser(SERVICE_USER)) return false
  const r = spawnSync('useradd', ['--system', '--user-group', '--home-dir', '/nonexistent', '--no-create-home',
    '--shell', '/usr/sbin/nologin', '--comment', 'bslfs block server', SERVICE_USER], { encoding: 'utf8' })
  if (r.status !== 0) throw new UsageError(`cannot create the user ${SERVICE_USER}: ${(r.stderr || r.error?.message || '').trim()} (useradd is in Debian's passwd package; run as root)`)
  return true
}

/** systemd is this host's init (not merely installed): only then is there a manager to reload. */
export function systemdRunning (): boolean {
  return existsSync('/run/systemd/system')
}

/** `bslfs systemd install`: the units, the user, the configuration directory, and a daemon-reload. */
export async function installUnits (paths: SystemdPaths): Promise<{ units: string[], userCreated: boolean, reloaded: boolean }> {
  const userCreated = ensureServiceUser()
  await fsp.mkdir(paths.unitDir, { recursive: true })
  await fsp.mkdir(paths.confDir, { recursive: true, mode: 0o755 })
  const units: string[] = []
  for (const name of UNITS) {
    const file = join(paths.unitDir, name)
    await fsp.writeFile(`${file}.tmp`, await renderUnit(name, paths.confDir), { mode: 0o644 })
    await fsp.rename(`${file}.tmp`, file)
    units.push(file)
  }
  const reloaded = paths.unitDir === '/etc/systemd/system' && systemdRunning()
  if (reloaded) execFileSync('systemctl', ['daemon-reload'], { stdio: 'inherit' })
  return { units, userCreated, reloaded }
}

/** `bslfs systemd uninstall`: the units go (instances' configurations and the user stay). */
export async function uninstallUnits (paths: SystemdPaths): Promise<string[]> {
  const removed: string[] = []
  for (const name of UNITS) {
    const file = join(paths.unitDir, name)
    if (existsSync(file)) { await fsp.rm(file); removed.push(file) }
  }
  if (removed.length && paths.unitDir === '/etc/systemd/system' && systemdRunning()) execFileSync('systemctl', ['daemon-reload'], { stdio: 'inherit' })
  return removed
}

/** Quote one word for a systemd EnvironmentFile value that ExecStart splits at blanks. */
function confWord (w: string): string {
  if (!/^[A-Za-z0-9_.:/@=,+-]+$/.test(w)) throw new UsageError(`"${w}" cannot go in a unit's options (use a path without blanks, quotes or $)`)
  return w
}

/**
 * `bslfs systemd serve NAME --listen ... --device N=P ... [--token-file F]`: the options of
 * bslfs-serve@NAME.service in CONF/NAME.conf, each device directory created and given to the
 * service user (the only place it may write), and the token file made readable by it.
 */
export async function writeServeConf (paths: SystemdPaths, name: string, o: { listen: string, device: string[], tokenFile?: string, extra?: string[] }): Promise<{ conf: string, devices: string[] }> {
  if (!/^[A-Za-z0-9_.-]+$/.test(name)) throw new UsageError(`bad instance name "${name}": letters, digits, ".", "_" and "-" only`)
  if (o.device.length === 0) throw new UsageError('give at least one --device NAME=PATH')
  if (!hasUser(SERVICE_USER)) throw new UsageError(`no user ${SERVICE_USER}: run \`bslfs systemd install\` first`)
  const uid = Number(execFileSync('id', ['-u', SERVICE_USER], { encoding: 'utf8' }).trim())
  const gid = Number(execFileSync('id', ['-g', SERVICE_USER], { encoding: 'utf8' }).trim())
  const words = ['--listen', o.listen]
  const devices: string[] = []
  for (const spec of o.device) {
    const eq = spec.indexOf('=')
    const path = eq > 0 ? spec.slice(eq + 1) : ''
    if (!isAbsolute(path)) throw new UsageError(`--device ${spec}: give NAME=/absolute/path`)
    await fsp.mkdir(path, { recursive: true })
    // Only the device directories are the service's; the server creates what is inside them.
    spawnSync('chown', ['-R', `${uid}:${gid}`, path])
    await fsp.chmod(path, 0o700)
    devices.push(path)
    words.push('--device', spec)
  }
  if (o.tokenFile) {
    const token = resolve(o.tokenFile)
    await fsp.chown(token, uid, gid).catch((err: Error) => { throw new UsageError(`cannot give ${token} to ${SERVICE_USER}: ${err.message}`) })
    await fsp.chmod(token, 0o600)
    words.push('--token-file', token)
  }
  words.push(...(o.extra ?? []))
  const conf = join(paths.confDir, `${name}.conf`)
  await fsp.mkdir(paths.confDir, { recursive: true })
  await fsp.writeFile(conf, [
    `# bslfs-serve@${name}.service: the options of \`bslfs serve\` (bslfs serve --help).`,
    '# DEBUG=bslfs:server here logs more.',
    `BSLFS_SERVE_OPTIONS="${words.map(confWord).join(' ')}"`, ''].join('\n'), { mode: 0o644 })
  return { conf, devices }
}
