/**
 * `bslfs doctor [STATE|URL]`: whether this host can run bslfs, and whether a filesystem's devices
 * and block servers (or one server) answer. Every problem comes with the command that fixes it.
 */
import { spawnSync } from 'node:child_process'
import { closeSync, constants, existsSync, openSync, statSync } from 'node:fs'
import { join } from 'node:path'
import type { StatusReport } from '../daemon/admin'
import { probeServer } from '../devices/probe'
import { nativeCrc32 } from '../devices/object-io'
import { channel } from '../fs/fuse/native'
import { kernelFuseVersion } from '../fs/fuse/kernel-version'
import { MIN_KERNEL_MINOR } from '../fs/fuse/protocol'
import { readTokenFile } from '../daemon/state'
import { HEALTH_PATH } from '../wire/routes'
import { packageRoot, packageVersion } from '../version'
import { HELPER_NAME, HELPER_NAMES, helperState, sbinDir } from './helper-link'

export interface Check {
  name: string
  ok: boolean
  /** What was found. */
  detail: string
  /** When not ok: the command (or step) that fixes it. */
  fix?: string
}

const BUILD = `node ${join(packageRoot, 'scripts', 'build-native.js')}`
const APT = (pkgs: string) => `apt-get install -y ${pkgs}`

function check (name: string, work: () => { detail: string } | string): Check {
  try {
    const r = work()
    return { name, ok: true, detail: typeof r === 'string' ? r : r.detail }
  } catch (err) {
    const e = err as Error & { fix?: string }
    return { name, ok: false, detail: e.message.split('\n')[0], fix: e.fix }
  }
}

function problem (message: string, fix: string): Error {
  return Object.assign(new Error(message), { fix })
}

/** Checks of this host: what any mount needs. */
export async function hostChecks (): Promise<Check[]> {
  const checks: Check[] = []
  checks.push({ name: 'bslfs', ok: true, detail: `${packageVersion()} (${packageRoot})` })
  const [major, minor] = process.versions.node.split('.').map(Number)
  const nodeOk = major > 20 || (major === 20 && minor >= 18)
  checks.push({
    name: 'node',
    ok: nodeOk,
    detail: `${process.version} (${process.execPath})`,
    fix: nodeOk ? undefined : 'install Node.js 20.18 or newer (nodejs.org, or NodeSource\'s Debian packages)'
  })
  checks.push(check('/dev/fuse', () => {
    if (!existsSync('/dev/fuse')) throw problem('missing', '`modprobe fuse` (in a container: run it with --device /dev/fuse)')
    if (!statSync('/dev/fuse').isCharacterDevice()) throw problem('not a character device', '`rm /dev/fuse && mknod -m 666 /dev/fuse c 10 229`')
    try { closeSync(openSync('/dev/fuse', constants.O_RDWR)) } catch (err) {
      throw problem(`cannot be opened: ${(err as Error).message}`, 'run as root, or `chmod 666 /dev/fuse`')
    }
    return 'present, opens read-write'
  }))
  checks.push(check('fusermount', () => {
    const r = spawnSync('fusermount', ['-V'], { encoding: 'utf8' })
    if (r.error || r.status !== 0) throw problem('not found on PATH', APT('fuse'))
    return (r.stdout + r.stderr).trim()
  }))
  checks.push(check('libfuse2', () => {
    const r = spawnSync('ldconfig', ['-p'], { encoding: 'utf8' })
    const lib = /\s(\/\S*libfuse\.so\.2)$/m.exec(r.stdout ?? '')
    if (!lib) throw problem('libfuse.so.2 is not in the linker cache (ldconfig -p)', APT('libfuse2'))
    return lib[1]
  }))
  checks.push(check('FUSE channel addon', () => `loads (interface ${channel().version})`))
  checks.push(check('object I/O addon', () => { nativeCrc32(Buffer.from('bslfs')); return 'loads' }))
  checks.push(check('classic-level sync calls', () => {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const b = require('classic-level/binding') as Record<string, unknown>
    if (typeof b.batch_do_sync !== 'function' || typeof b.scan_sync !== 'function') throw problem('the binding lacks batch_do_sync and scan_sync', BUILD)
    return 'loads, with batch_do_sync and scan_sync'
  }))
  for (const c of checks) if (!c.ok && !c.fix && /addon|classic-level/.test(c.name)) c.fix = BUILD
  try {
    const v = await kernelFuseVersion()
    const ok = v.major === 7 && v.minor >= MIN_KERNEL_MINOR
    checks.push({ name: 'kernel FUSE protocol', ok, detail: `${v.major}.${v.minor} (from the kernel's INIT request to a probe mount)`, fix: ok ? undefined : `a kernel speaking FUSE 7.${MIN_KERNEL_MINOR} or newer (Linux 4.20+)` })
  } catch (err) {
    checks.push({ name: 'kernel FUSE protocol', ok: false, detail: `no probe mount: ${(err as Error).message}`, fix: 'run `bslfs doctor` as root once /dev/fuse, fusermount and the channel addon are fine' })
  }
  for (const name of HELPER_NAMES) {
    const helper = await helperState(sbinDir(), name)
    const helperOk = helper.state === 'ours'
    checks.push({
      name: `${name} helper`,
      ok: helperOk,
      detail: helper.state === 'missing' ? `${helper.link} missing (${name === HELPER_NAME ? 'mount -t bslfs and /etc/fstab need it' : 'mount -o remount and fstab type fuse.bslfs need it'})`
        : helper.state === 'ours' ? `${helper.link} → ${helper.target}`
          : helper.state === 'foreign' ? `${helper.link} is not a bslfs link` : `${helper.link} → ${helper.target} (${helper.state === 'dangling' ? 'gone' : 'another bslfs'})`,
      fix: helperOk ? undefined : helper.state === 'foreign' ? `move ${helper.link} away, then \`bslfs install-helper\`` : '`bslfs install-helper` (as root)'
    })
  }
  return checks
}

/** Checks of one filesystem from its status report (the mount's, or made offline). */
export function stateChecks (r: StatusReport): Check[] {
  const checks: Check[] = [{ name: 'filesystem', ok: true, detail: `${r.state}, ${r.mounted ? `mounted at ${r.mounted.mountpoint} (pid ${r.mounted.pid})` : 'not mounted'}` }]
  for (const sv of r.servers) {
    checks.push(sv.reachable
      ? { name: `server ${sv.name}`, ok: true, detail: `${sv.url} answers, devices ${sv.devices?.join(', ')}` }
      : {
          name: `server ${sv.name}`,
          ok: false,
          detail: `${sv.url} does not answer: ${sv.error}`,
          fix: `start the block server on its host (\`systemctl start bslfs-serve@INSTANCE\`, or \`bslfs serve --listen ${hostPort(sv.url)} --device ...\`), then \`bslfs doctor ${sv.url}\``
        })
  }
  for (const d of r.devices) {
    if (!d.error) { checks.push({ name: `device ${d.place}`, ok: true, detail: `${d.path ?? ''} ${((d.available ?? 0) / 1048576).toFixed(0)} MiB free`.trim() }); continue }
    const local = d.place.startsWith('local:')
    checks.push({
      name: `device ${d.place}`,
      ok: false,
      detail: `${d.path ? d.path + ': ' : ''}${d.error}`,
      fix: local ? `mount the disk ${d.path ?? 'it'} lives on (or restore the directory), or move its volume: \`bslfs remap ${r.state} VOL SERVER:DEVICE --copy\``
        : `start the server ${d.place.split(':')[0]} with that device (\`bslfs serve ... --device ${d.place.split(':')[1]}=PATH\`)`
    })
  }
  for (const v of r.volumes) {
    if (v.health === 'down') checks.push({ name: `volume ${v.volume}`, ok: false, detail: 'down: no copy of its blocks can be reached', fix: 'bring back the servers or devices above' })
  }
  return checks
}

function hostPort (url: string): string {
  try { return new URL(url).host } catch { return 'HOST:PORT' }
}

/** One block server at URL: it answers (with the token when one is given). */
export async function urlChecks (url: string, tokenFile?: string): Promise<Check[]> {
  const name = `server ${url}`
  const fix = `start it on its host: \`systemctl start bslfs-serve@INSTANCE\` or \`bslfs serve --listen ${hostPort(url)} --device NAME=PATH --token-file FILE\``
  try {
    if (tokenFile) {
      const h = await probeServer(url, await readTokenFile(tokenFile), 2000)
      return [{ name, ok: true, detail: `answers as ${h.server}, devices ${h.devices.join(', ')}, token accepted` }]
    }
    const res = await fetch(new URL(HEALTH_PATH.slice(1), url.endsWith('/') ? url : url + '/'), { signal: AbortSignal.timeout(2000) })
    if (res.status === 401 || res.ok) return [{ name, ok: true, detail: `answers (HTTP ${res.status}); give --token-file FILE to check the token too` }]
    return [{ name, ok: false, detail: `answers HTTP ${res.status}, not as a bslfs block server`, fix: 'check the URL (http://HOST:PORT of `bslfs serve --listen`)' }]
  } catch (err) {
    const e = err as Error & { cause?: Error }
    return [{ name, ok: false, detail: `does not answer: ${e.cause?.message ?? e.message}`, fix }]
  }
}

export function formatChecks (checks: Check[]): string {
  const width = Math.max(...checks.map(c => c.name.length))
  const lines = checks.map(c => `${c.ok ? 'ok     ' : 'PROBLEM'}  ${c.name.padEnd(width)}  ${c.detail}${c.ok || !c.fix ? '' : `\n         ${' '.repeat(width)}  fix: ${c.fix}`}`)
  const bad = checks.filter(c => !c.ok).length
  lines.push(bad ? `bslfs doctor: ${bad} problem${bad > 1 ? 's' : ''}` : 'bslfs doctor: all ok')
  return lines.join('\n')
}
