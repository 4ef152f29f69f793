import { existsSync, promises as fsp } from 'node:fs'
import { resolve } from 'node:path'
import { UsageError } from '../errors'
import { channel, fusermount } from '../fs/fuse/native'
import { FsName, parseFsName, runtimePaths, sameFs } from './location'

export { fusermount }

/** `dev`: the superblock's major:minor, the same at every mount point of one filesystem (bind mounts). */
export interface MountEntry { mountpoint: string, fstype: string, source: string, options: string, dev: string }

/** mountinfo escapes space, tab, newline and backslash as octal. */
const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)))

export async function mountTable (): Promise<MountEntry[]> {
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8')
  return text.split('\n').filter(Boolean).map(line => {
    const [left, right] = line.split(' - ')
    const f = left.split(' ')
    const r = right.split(' ')
    return { mountpoint: unescape(f[4]), options: f[5], fstype: r[0], source: unescape(r[1]), dev: f[2] }
  })
}

export async function findMount (mountpoint: string): Promise<MountEntry | undefined> {
  const abs = resolve(mountpoint)
  return (await mountTable()).reverse().find(m => m.mountpoint === abs)
}

/** Where `name` is mounted by bslfs on this host: at most one mount of a STATE, any number of a URL. */
export async function findFsMounts (name: FsName): Promise<MountEntry[]> {
  return (await mountTable()).filter(m => m.fstype === 'fuse.bslfs' && sameFs(name, m.source))
}

/** Every mount point of the bslfs filesystem whose superblock is `dev` (major:minor): the first mount and its binds. */
export async function mountsOfSuper (dev: string): Promise<string[]> {
  return (await mountTable()).filter(m => m.fstype === 'fuse.bslfs' && m.dev === dev).map(m => m.mountpoint)
}

/** st_dev as mountinfo writes it (major:minor). */
export function devText (dev: number): string {
  const major = ((dev >> 8) & 0xfff) | (Math.floor(dev / 2 ** 32) & ~0xfff)
  const minor = (dev & 0xff) | ((dev >> 12) & 0xfff00)
  return `${major}:${minor}`
}

/** The control socket of the daemon behind a bslfs mount (its source names the filesystem). */
export function controlSocketOf (m: MountEntry): string {
  return runtimePaths(parseFsName(m.source), m.mountpoint).socket
}


/** What the machine needs to mount at all; each failure says what to install or do. */
export function checkFuseAvailable (): void {
  if (!existsSync('/dev/fuse')) {
    throw new UsageError('/dev/fuse is missing: load the fuse module (`modprobe fuse`), or in a container pass the device (--device /dev/fuse)')
  }
  const paths = (process.env.PATH ?? '/usr/bin:/bin').split(':').concat(['/bin', '/usr/bin'])
  if (!paths.some(p => existsSync(`${p}/fusermount`))) {
    throw new UsageError('fusermount is missing: install FUSE (`apt-get install -y fuse libfuse2`)')
  }
  try {
    channel()
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
}

/**
 * Check a mount point before mounting: it exists, is a directory, and nothing
 * is mounted there. A dead bslfs mount (its daemon was killed) is cleaned up.
 */
export async function prepareMountpoint (mountpoint: string): Promise<string> {
  const abs = resolve(mountpoint)
  try {
    const st = await fsp.stat(abs)
    if (!st.isDirectory()) throw new UsageError(`mount point ${abs} is not a directory`)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (err instanceof UsageError) throw err
    if (code === 'ENOENT') throw new UsageError(`mount point ${abs} does not exist; create it with \`mkdir -p ${abs}\``)
    if (code === 'ENOTCONN' || code === 'ECONNABORTED') return await removeDeadMount(abs)
    throw new UsageError(`cannot use mount point ${abs}: ${(err as Error).message}`)
  }
  const existing = await findMount(abs)
  if (existing && existing.mountpoint === abs) {
    // The kernel may still answer stat from its cache; statfs always asks the daemon.
    if (existing.fstype.startsWith('fuse') && await fsp.statfs(abs).then(() => false, (e: NodeJS.ErrnoException) => e.code === 'ENOTCONN' || e.code === 'ECONNABORTED')) {
      return await removeDeadMount(abs)
    }
    throw new UsageError(`${abs} is already a mount point (${existing.fstype} from ${existing.source}); unmount it first or pick another directory`)
  }
  return abs
}

/** The daemon of an earlier mount died: its mount is left behind, answering nothing. */
async function removeDeadMount (abs: string): Promise<string> {
  const complaint = (await fusermount(abs, false)) && (await fusermount(abs, true))
  if (complaint) throw new UsageError(`${abs} holds a dead FUSE mount that could not be removed: ${complaint}`)
  return await prepareMountpoint(abs)
}
