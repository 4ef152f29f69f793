import { promises as fsp } from 'node:fs'
import { basename, dirname, join, resolve } from 'node:path'
import { UsageError } from '../errors'
import { packageRoot } from '../version'

/**
 * /sbin/mount.bslfs: mount(8) looks for `mount.TYPE` helpers in /sbin only (not PATH), so the one
 * that `mount -t bslfs` and /etc/fstab run is a link there into an installed bslfs. npm (since v7)
 * runs no uninstall scripts, so `bslfs uninstall-helper` is what removes it.
 */
export const HELPER_NAME = 'mount.bslfs'
/**
 * The same helper under the type /proc/mounts shows (fuse.bslfs): what mount(8) runs for
 * `mount -o remount,ro MOUNTPOINT` and for an fstab line of type fuse.bslfs (without it,
 * it runs fuse's generic mount.fuse, which knows nothing of bslfs).
 */
export const HELPER_NAMES = [HELPER_NAME, 'mount.fuse.bslfs']

/** The directory the link goes in: --sbin DIR, else $BSLFS_SBIN_DIR, else /sbin. */
export function sbinDir (option?: string): string {
  return resolve(option ?? process.env.BSLFS_SBIN_DIR ?? '/sbin')
}

/** This bslfs's own helper, which the link names. */
export async function helperTarget (): Promise<string> {
  return await fsp.realpath(join(packageRoot, 'bin', HELPER_NAME))
}

/** A link bslfs made: to some bslfs's bin/mount.bslfs (this package's, another checkout's, or one uninstalled since). */
function isBslfsHelper (target: string): boolean {
  return basename(target) === HELPER_NAME && basename(dirname(target)) === 'bin'
}

export type HelperState = { link: string, state: 'missing' } | { link: string, state: 'ours' | 'other-bslfs' | 'dangling', target: string } |
{ link: string, state: 'foreign', target?: string }

export async function helperState (dir: string, name = HELPER_NAME): Promise<HelperState> {
  const link = join(dir, name)
  let st
  try {
    st = await fsp.lstat(link)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { link, state: 'missing' }
    throw err
  }
  if (!st.isSymbolicLink()) return { link, state: 'foreign' }
  const target = resolve(dir, await fsp.readlink(link))
  if (!isBslfsHelper(target)) return { link, state: 'foreign', target }
  const real = await fsp.realpath(target).catch(() => null)
  if (real === null) return { link, state: 'dangling', target }
  return { link, state: real === await helperTarget() ? 'ours' : 'other-bslfs', target }
}

/** Point DIR/mount.bslfs at this bslfs; replaces a link to another bslfs, refuses anything else. */
export async function installHelper (dir: string, name = HELPER_NAME): Promise<{ link: string, target: string, changed: boolean }> {
  const target = await helperTarget()
  const now = await helperState(dir, name)
  if (now.state === 'ours') return { link: now.link, target, changed: false }
  if (now.state === 'foreign') {
    throw new UsageError(`${now.link} exists and is not a bslfs helper link${now.target ? ` (it points at ${now.target})` : ''}; move it away, then run \`bslfs install-helper\` again`)
  }
  await fsp.mkdir(dir, { recursive: true })
  // A new link renamed over the old one: mount(8) never sees the helper missing.
  const tmp = `${now.link}.tmp-${process.pid}`
  await fsp.rm(tmp, { force: true })
  await fsp.symlink(target, tmp)
  await fsp.rename(tmp, now.link)
  return { link: now.link, target, changed: true }
}

/** Remove DIR/mount.bslfs when it is a bslfs helper link (this one, another, or dangling); leaves anything else. */
export async function uninstallHelper (dir: string, name = HELPER_NAME): Promise<{ link: string, removed: boolean, why?: string }> {
  const now = await helperState(dir, name)
  if (now.state === 'missing') return { link: now.link, removed: false, why: 'not there' }
  if (now.state === 'foreign') return { link: now.link, removed: false, why: 'not a bslfs helper link; left alone' }
  await fsp.rm(now.link)
  return { link: now.link, removed: true }
}
