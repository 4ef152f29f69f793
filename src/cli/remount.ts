import { resolve } from 'node:path'
import { UsageError } from '../errors'
import { askControl } from '../daemon/control'
import { controlSocketOf, findMount } from '../daemon/mountpoint'
import { setMountFlags } from '../fs/vfs'

/**
 * `mount -o remount,ro|rw MOUNTPOINT` (mount(8) runs mount.fuse.bslfs with the mount's
 * options and `remount`): the daemon makes the mount read-only or read-write. A
 * remount with `bind` changes one mount point's own flags, which is the kernel's alone.
 */
export async function remountCommand (mountpoint: string, options: string): Promise<void> {
  const abs = resolve(mountpoint)
  const m = await findMount(abs)
  if (!m) throw new UsageError(`${abs} is not mounted`)
  if (m.fstype !== 'fuse.bslfs') throw new UsageError(`${abs} is not a bslfs mount (${m.fstype})`)
  const words = options.split(',').map(o => o.trim())
  if (words.includes('bind')) return await setMountFlags(abs, words.filter(o => o !== 'remount' && o !== 'bind' && o !== ''))
  let readOnly = /(^|,)ro(,|$)/.test(m.options)
  for (const o of words) {
    if (o === 'ro') readOnly = true
    else if (o === 'rw') readOnly = false
  }
  const answer = await askControl(controlSocketOf(m), { cmd: 'remount', args: [abs], options: { readOnly } }, 120_000)
  if (!answer) throw new UsageError(`the mount daemon of ${abs} does not answer (see \`bslfs status ${m.source}\`)`)
  if (!answer.ok) throw new UsageError(answer.error)
}
