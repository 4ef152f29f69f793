import { promises as fsp } from 'node:fs'
import { UsageError } from '../errors'
import { FsName, fsNameText } from '../daemon/location'
import { MountEntry, findFsMounts, fusermount, prepareMountpoint } from '../daemon/mountpoint'
import { ParsedOptions, parseMountOptions } from '../fs/mount'
import { bindMount, setMountFlags } from '../fs/vfs'

/** Per-mount flags a bind mount can have of its own (mount(8) words). */
const PER_MOUNT = new Set(['nosuid', 'suid', 'nodev', 'dev', 'noexec', 'exec', 'noatime', 'atime'])

/** The running mount of a STATE on this host, if any (a dead one, its daemon killed, is not). */
export async function liveMountOf (name: FsName): Promise<MountEntry | undefined> {
  for (const m of await findFsMounts(name)) {
    if (await fsp.statfs(m.mountpoint).then(() => true, () => false)) return m
  }
  return undefined
}

/**
 * A STATE already mounted on this host, mounted at a second mount point: a
 * bind of the first mount, served by the same daemon (the STATE has one
 * owner). The files are the same at both; unmounting either leaves the other,
 * and the daemon stops with the last. The second mount point may differ in
 * per-mount flags (ro, nosuid, noexec, nosymfollow…); what the daemon itself
 * is told (uid=, timeouts, …) is the first mount's.
 */
export async function mountSecond (name: FsName, first: MountEntry, mountpoint: string, text: string | undefined, parsed: ParsedOptions): Promise<void> {
  const daemonOnly = (text ?? '').split(',').map(o => o.trim()).filter(o => {
    if (o === '') return false
    const p = parseMountOptions(o)
    return p.copyTimeoutMs !== undefined || Object.keys(p.session).length > 0 || Object.keys(p.overrides).length > 0 ||
      p.kernel.some(k => k.includes('=')) || (p.atime !== 'relatime' && o !== 'noatime')
  })
  if (daemonOnly.length) {
    throw new UsageError(`${fsNameText(name)} is mounted at ${first.mountpoint} already; a second mount point shares that mount's settings: drop -o ${daemonOnly.join(',')}, or unmount ${first.mountpoint} first`)
  }
  const abs = await prepareMountpoint(mountpoint)
  const flags = [...(parsed.readOnly ? ['ro'] : []), ...parsed.kernel.filter(k => PER_MOUNT.has(k)), ...parsed.vfs.filter(f => f !== 'strictatime')]
  try {
    await bindMount(first.mountpoint, abs)
  } catch (err) {
    throw new UsageError(`${fsNameText(name)} is mounted at ${first.mountpoint}; a second mount point is a bind mount of it, which failed: ${(err as Error).message}`)
  }
  try {
    await setMountFlags(abs, flags)
  } catch (err) {
    await fusermount(abs, true)
    throw new UsageError(`cannot set ${flags.join(',')} on ${abs}: ${(err as Error).message}`)
  }
}
