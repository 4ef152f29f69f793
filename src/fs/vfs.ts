import { execFile } from 'node:child_process'
import { FsError } from '../errors'

/**
 * The kernel's per-mount (VFS) side of a mount, through mount(8): flags that
 * libfuse's mount does not take (nosymfollow, nodiratime, strictatime), a
 * remount read-only or read-write, a bind of a mount at a second mount point.
 * `-i`: mount(8) runs no mount.TYPE helper (mount.fuse.bslfs is this program).
 */

/** mount(8) with a PATH it is found on, whatever environment mount(8) gave its helper. */
function mount8 (args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('mount', args, { env: { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/usr/bin:/sbin:/bin`, LC_ALL: 'C' } }, (err, _out, stderr) => {
      if (!err) return resolve()
      const text = (String(stderr) || err.message).trim().replace(/^mount: /, '')
      reject(new FsError(/busy/i.test(text) ? 'EBUSY' : /permission|not permitted/i.test(text) ? 'EPERM' : 'EINVAL', text))
    })
  })
}

/** Per-mount flags (mount(8) words) set on the mount at `mountpoint`; the others it has stay. */
export async function setMountFlags (mountpoint: string, flags: string[]): Promise<void> {
  if (flags.length) await mount8(['-i', '-o', ['remount', 'bind', ...flags].join(','), mountpoint])
}

/**
 * The filesystem behind `mountpoint` read-only or read-write (MS_REMOUNT: its
 * superblock, so every mount point of it). Going read-only the kernel first
 * writes back what it holds, and refuses (EBUSY) while a file is open for writing.
 */
export async function remountSuper (mountpoint: string, readOnly: boolean): Promise<void> {
  await mount8(['-i', '-o', `remount,${readOnly ? 'ro' : 'rw'}`, mountpoint])
}

/** Show the mount at `from` at `to` too (the same superblock: the same files, the same daemon). */
export async function bindMount (from: string, to: string): Promise<void> {
  await mount8(['-i', '--bind', from, to])
}
