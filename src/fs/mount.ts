import createDebug from 'debug'
import { promises as fsp } from 'node:fs'
import { AttrOverrides, BslFilesystem } from './filesystem'
import { DEFAULT_SESSION, FuseSession, SessionOptions } from './fuse/session'
import { DEFAULT_METRICS_PORT, ListenAddress, parseListenAddress } from '../metrics/http'
import { setMountFlags } from './vfs'

const log = createDebug('bslfs:fs')

/** Mount options the kernel (through libfuse's fuse_mount) takes as they are. */
const KERNEL_FLAGS = new Set(['allow_other', 'allow_root', 'default_permissions', 'nonempty', 'nosuid', 'suid', 'nodev', 'dev',
  'noexec', 'exec', 'noatime', 'atime', 'sync', 'async', 'dirsync'])
const KERNEL_VALUES = new Set(['fsname', 'subtype', 'max_read'])
/** libfuse2 options that describe what bslfs always does: accepted, and change nothing. */
const ALWAYS = new Set(['use_ino', 'readdir_ino', 'big_writes', 'hard_remove', 'atomic_o_trunc', 'async_read', 'intr', 'auto_cache', 'noauto_cache'])
/** mount(8) and fstab options that mean nothing to FUSE (comment=… and x-… too). */
const MOUNT8_OPTIONS = new Set(['defaults', 'auto', 'noauto', 'nofail', '_netdev', 'user', 'users', 'nouser', 'owner', 'group',
  'lazytime', 'nolazytime', 'loud', 'silent'])
/**
 * Access times: bslfs keeps them itself (the kernel leaves atime to a FUSE
 * filesystem). relatime is Linux's default; norelatime alone leaves it, as the
 * kernel does; atime undoes noatime. The per-mount flags go on the mount too (findmnt shows them).
 */
const ATIME = new Map<string, { atime?: AtimeMode, dirAtime?: boolean, vfs?: string }>([
  ['atime', { atime: 'relatime' }], ['relatime', { atime: 'relatime' }], ['norelatime', { atime: 'relatime' }],
  ['strictatime', { atime: 'strictatime', vfs: 'strictatime' }], ['noatime', { atime: 'noatime' }],
  ['diratime', { dirAtime: true }], ['nodiratime', { dirAtime: false, vfs: 'nodiratime' }],
  ['nosymfollow', { vfs: 'nosymfollow' }], ['symfollow', { vfs: 'symfollow' }]
])
/** bslfs's own options, handled by the daemon rather than the kernel. */
const OWN_FLAGS = new Set(['foreground', 'kernel_cache', 'direct_io', 'noreaddirplus', 'acl', 'noacl'])
const SECONDS = new Set(['entry_timeout', 'attr_timeout', 'negative_timeout'])

export type AtimeMode = 'relatime' | 'strictatime' | 'noatime'

export interface ParsedOptions {
  readOnly: boolean
  /** When reads move atime (relatime, strictatime, noatime), and whether listing a directory does. */
  atime: AtimeMode
  dirAtime: boolean
  /** Per-mount flags libfuse's mount does not take, set on the mount once it is made (see vfs.ts). */
  vfs: string[]
  /** copy_timeout=MS: how long a copy of a mirrored block may take before a read moves on. */
  copyTimeoutMs?: number
  /** Options for the kernel mount (fuse_mount). */
  kernel: string[]
  /** What the FUSE session is told (timeouts, page cache, request sizes). */
  session: Partial<SessionOptions>
  /** uid=, gid=, umask=: what stat shows instead of the stored owner and mode. */
  overrides: AttrOverrides
  /** metrics[=HOST:PORT]: where /metrics is served (off unless given). */
  metrics?: ListenAddress
  /** session_heartbeat=SECONDS, session_expiry=SECONDS: how often the mount's session is renewed, and when a silent one is dead. */
  sessionHeartbeatMs?: number
  sessionExpiryMs?: number
}

const ALL_OPTIONS = [...KERNEL_FLAGS, ...KERNEL_VALUES].map(o => KERNEL_VALUES.has(o) ? `${o}=V` : o).concat(
  ['ro', 'rw', ...OWN_FLAGS].filter(o => o !== 'foreground'), [...SECONDS].map(o => `${o}=SECONDS`),
  ['max_write=BYTES', 'max_readahead=BYTES', 'uid=N', 'gid=N', 'umask=OCTAL', 'copy_timeout=MS', 'metrics[=HOST:PORT]', 'session_heartbeat=SECONDS', 'session_expiry=SECONDS'], [...ALWAYS],
  [...ATIME.keys()].filter(o => !KERNEL_FLAGS.has(o)), ['(mount(8): defaults, auto, noauto, user, users, nouser, owner, group, _netdev, nofail, x-*, comment=, lazytime, loud, silent)'])

function bad (opt: string, why: string): Error {
  return new Error(`bad mount option "${opt}": ${why}`)
}

/** A whole number from `lo` to `hi`. */
function integer (opt: string, text: string, lo: number, hi: number, radix = 10): number {
  const n = radix === 8 ? (/^[0-7]{1,4}$/.test(text) ? parseInt(text, 8) : NaN) : (/^[0-9]{1,10}$/.test(text) ? Number(text) : NaN)
  if (!(n >= lo && n <= hi)) throw bad(opt, `takes ${radix === 8 ? 'an octal number' : 'a whole number'} from ${lo.toString(radix)} to ${hi.toString(radix)}`)
  return n
}

/** metrics (loopback, the default port), metrics=PORT (loopback) or metrics=HOST:PORT. */
function metricsAddress (opt: string, value: string | undefined): ListenAddress {
  if (value === undefined) return { host: '127.0.0.1', port: DEFAULT_METRICS_PORT }
  try {
    return parseListenAddress(value, 'metrics address')
  } catch (err) {
    throw bad(opt, (err as Error).message)
  }
}

/** Parse a mount -o list ("ro,allow_other,entry_timeout=5"); throws a message that names the bad option. */
export function parseMountOptions (text: string | undefined): ParsedOptions {
  const out: ParsedOptions = { readOnly: false, atime: 'relatime', dirAtime: true, vfs: [], kernel: [], session: {}, overrides: {} }
  for (const raw of (text ?? '').split(',')) {
    const opt = raw.trim()
    if (opt === '' || MOUNT8_OPTIONS.has(opt) || opt.startsWith('x-') || opt.startsWith('comment=') || ALWAYS.has(opt) || opt === 'foreground') continue
    const time = ATIME.get(opt)
    if (time) {
      if (time.atime) out.atime = time.atime
      if (time.dirAtime !== undefined) out.dirAtime = time.dirAtime
      if (time.vfs) out.vfs.push(time.vfs)
      if (!KERNEL_FLAGS.has(opt)) continue
    }
    const eq = opt.indexOf('=')
    const name = eq < 0 ? opt : opt.slice(0, eq)
    const value = eq < 0 ? '' : opt.slice(eq + 1)
    if (eq >= 0 && !/^[A-Za-z0-9_.:/@+-]+$/.test(value)) throw bad(opt, 'the value has characters a mount option cannot carry')
    if (eq < 0 && KERNEL_FLAGS.has(name)) out.kernel.push(name)
    else if (eq >= 0 && KERNEL_VALUES.has(name)) out.kernel.push(opt)
    else if (opt === 'ro') out.readOnly = true
    else if (opt === 'rw') out.readOnly = false
    else if (opt === 'kernel_cache') out.session.keepCache = true
    else if (opt === 'direct_io') out.session.directIo = true
    else if (opt === 'noreaddirplus') out.session.readdirPlus = false
    else if (opt === 'acl' || opt === 'noacl') out.session.posixAcl = opt === 'acl'
    else if (eq >= 0 && SECONDS.has(name)) {
      const s = Number(value)
      if (!/^[0-9]+(\.[0-9]+)?$/.test(value) || s > 86400) throw bad(opt, `${name}=SECONDS takes 0 to 86400 seconds`)
      if (name === 'entry_timeout') out.session.entryTimeout = s
      else if (name === 'attr_timeout') out.session.attrTimeout = s
      else out.session.negativeTimeout = s
    } else if (name === 'max_write' && eq >= 0) {
      const n = integer(opt, value, 4096, 1 << 20)
      if (n % 4096) throw bad(opt, 'max_write=BYTES takes a multiple of 4096')
      out.session.maxWrite = n
    } else if (name === 'max_readahead' && eq >= 0) out.session.maxReadahead = integer(opt, value, 0, 2 ** 31)
    else if (name === 'uid' && eq >= 0) out.overrides.uid = integer(opt, value, 0, 0xfffffffe)
    else if (name === 'gid' && eq >= 0) out.overrides.gid = integer(opt, value, 0, 0xfffffffe)
    else if (name === 'umask' && eq >= 0) out.overrides.umask = integer(opt, value, 0, 0o777, 8)
    else if (name === 'copy_timeout' && eq >= 0) out.copyTimeoutMs = integer(opt, value, 10, 60000)
    else if (name === 'metrics') out.metrics = metricsAddress(opt, eq < 0 ? undefined : value)
    else if ((name === 'session_heartbeat' || name === 'session_expiry') && eq >= 0) {
      const s = Number(value)
      if (!/^[0-9]+(\.[0-9]+)?$/.test(value) || s < 0.1 || s > 3600) throw bad(opt, `${name}=SECONDS takes 0.1 to 3600 seconds`)
      if (name === 'session_heartbeat') out.sessionHeartbeatMs = s * 1000
      else out.sessionExpiryMs = s * 1000
    }
    else throw new Error(`unknown or unsupported mount option "${opt}"; supported: ${ALL_OPTIONS.join(', ')}`)
  }
  // A session must be renewable a few times before it expires (defaults 12 s and 60 s).
  const beat = out.sessionHeartbeatMs ?? 12_000
  const expiry = out.sessionExpiryMs ?? 60_000
  if (expiry < 2 * beat) throw new Error(`bad mount options: session_expiry (${expiry / 1000} s) must be at least twice session_heartbeat (${beat / 1000} s)`)
  return out
}

/**
 * The kernel options every bslfs mount gets; the user's come after and win.
 * default_permissions: the kernel checks modes and owners as on ext4; a root
 * mount is for every user (allow_other), under the usual checks.
 */
export function kernelOptions (fsname: string, parsed: ParsedOptions): string[] {
  const opts = ['default_permissions', `fsname=${fsname}`, 'subtype=bslfs']
  if (process.getuid?.() === 0) opts.push('allow_other')
  if (parsed.readOnly) opts.push('ro')
  return [...opts, ...parsed.kernel.filter(o => !opts.includes(o))]
}

/** The session settings: bslfs's defaults with the user's options on top. */
export function sessionOptions (parsed: ParsedOptions): SessionOptions {
  return { ...DEFAULT_SESSION, ...parsed.session }
}

/**
 * bslfs's defaults spelled as libfuse2 mount options (what `bslfs mount`
 * does with none given): the benchmark gives bindfs these, where it takes them.
 */
export function defaultOptionList (): string[] {
  const s = DEFAULT_SESSION
  return ['default_permissions', ...(process.getuid?.() === 0 ? ['allow_other'] : []), 'use_ino', 'big_writes',
    `max_write=${s.maxWrite}`, ...(s.keepCache ? ['kernel_cache'] : []),
    `entry_timeout=${s.entryTimeout}`, `attr_timeout=${s.attrTimeout}`, `negative_timeout=${s.negativeTimeout}`]
}

export interface MountedFuse {
  /** Unmount (the mount point `at`, else the first): strict fails with EBUSY on a busy mount; lazy detaches it anyway. */
  unmount (lazy: boolean, at?: string): Promise<void>
  /** Whether the kernel connection has ended (after a lazy unmount: once the last user left). */
  ended (): boolean
  /** Settles when the kernel connection ends, however it does. */
  readonly end: Promise<void>
  /** Milliseconds since the kernel last asked anything (or was answered). */
  quietMs (): number
  /** Tell the kernel what another host changed (FuseSession's notifications: queued, never blocking). */
  notifyInvalEntry (parent: number, name: string): void
  /** Resolves once the kernel has dropped `ino`'s attributes and pages. */
  notifyInvalInode (ino: number): Promise<void>
  /** Changes may have been missed: drop every inode the kernel holds. */
  notifyInvalAll (): void
}

/** The kernel's read-ahead for a FUSE mount, whatever INIT says: its backing device's default. */
const BDI_READ_AHEAD_BYTES = 128 * 1024

/**
 * The kernel reads ahead at most what the mount's backing device allows:
 * raise it, as root may, to `bytes`, so a sequential reader's requests come as
 * whole blocks, a few at a time (see KERNEL_READ_AHEAD_BYTES). Not being able
 * to is not an error.
 */
async function raiseReadahead (mountpoint: string, bytes: number): Promise<void> {
  try {
    const dev = (await fsp.stat(mountpoint)).dev
    const major = ((dev >> 8) & 0xfff) | (Math.floor(dev / 2 ** 32) & ~0xfff)
    const minor = (dev & 0xff) | ((dev >> 12) & 0xfff00)
    await fsp.writeFile(`/sys/class/bdi/${major}:${minor}/read_ahead_kb`, String(Math.floor(bytes / 1024)))
  } catch (err) {
    log('read-ahead of %s left as it is: %s', mountpoint, (err as Error).message)
  }
}

export async function mountFuse (mountpoint: string, fs: BslFilesystem, fsname: string, parsed: ParsedOptions): Promise<MountedFuse> {
  const kernel = kernelOptions(fsname, parsed)
  // Locks go to the filesystem where they must exclude across hosts (fs/locks.ts).
  const session = { ...sessionOptions(parsed), locks: fs.servesLocks }
  log('mounting %s with -o %s, session %o', mountpoint, kernel.join(','), session)
  const s = await FuseSession.mount(mountpoint, fs, kernel, session, fs.files.services.buffers)
  await setMountFlags(mountpoint, parsed.vfs).catch(async (err: Error) => {
    await s.unmount(true).catch(() => undefined)
    throw new Error(`the mount flags ${parsed.vfs.join(',')} could not be set: ${err.message}`)
  })
  if (session.maxReadahead > BDI_READ_AHEAD_BYTES) await raiseReadahead(mountpoint, session.maxReadahead)
  return {
    unmount: (lazy, at) => s.unmount(lazy, at),
    ended: () => s.isEnded(),
    end: s.ended,
    quietMs: () => s.quietMs(),
    notifyInvalEntry: (parent, name) => s.notifyInvalEntry(parent, name),
    notifyInvalInode: ino => s.notifyInvalInode(ino),
    notifyInvalAll: () => s.notifyInvalAll()
  }
}
