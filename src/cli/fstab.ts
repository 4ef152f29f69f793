import { promises as fsp } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { UsageError } from '../errors'
import { readMarker } from '../daemon/state'
import { parseMountOptions } from '../fs/mount'

/** The fstab edited: --fstab FILE, else $BSLFS_FSTAB (tests point it at a copy), else /etc/fstab. */
export function fstabPath (option?: string): string {
  return resolve(option ?? process.env.BSLFS_FSTAB ?? '/etc/fstab')
}

// fstab(5) fields are separated by blanks; a blank inside one is written as an octal escape.
const escapeField = (s: string): string => s.replace(/[\\ \t\n]/g, c => `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`)
const unescapeField = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))

const isBslfs = (type: string): boolean => type === 'bslfs' || type === 'fuse.bslfs'

interface Entry { index: number, source: string, target: string, type: string }

function entries (lines: string[]): Entry[] {
  const out: Entry[] = []
  lines.forEach((line, index) => {
    const f = line.trim().split(/\s+/)
    if (f.length < 3 || f[0].startsWith('#')) return
    out.push({ index, source: unescapeField(f[0]), target: unescapeField(f[1]), type: f[2] })
  })
  return out
}

/**
 * The options of an fstab line: the user's (checked as mount.bslfs will check them), with
 * _netdev added (a mount may need block servers over the network, and the daemon is a program
 * of its own: it must start after the network and stop before it goes).
 */
export function fstabOptions (options: string | undefined): string {
  const list = (options ?? '').split(',').map(o => o.trim()).filter(o => o !== '')
  try {
    parseMountOptions(list.join(','))
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
  if (!list.includes('_netdev')) list.push('_netdev')
  if (list.length === 1) list.unshift('defaults')
  return list.join(',')
}

export function fstabLine (state: string, mountpoint: string, options: string | undefined): string {
  return `${escapeField(state)}  ${escapeField(mountpoint)}  bslfs  ${fstabOptions(options)}  0  0`
}

async function readLines (file: string): Promise<string[]> {
  const text = await fsp.readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return ''
    throw new UsageError(`cannot read ${file}: ${err.message}`)
  })
  const lines = text.split('\n')
  if (lines[lines.length - 1] === '') lines.pop()
  return lines
}

/** Replace `file` whole (a new file renamed over it, its mode kept): never half written. */
async function writeLines (file: string, lines: string[]): Promise<void> {
  const mode = await fsp.stat(file).then(s => s.mode & 0o7777, () => 0o644)
  const tmp = `${file}.bslfs-${process.pid}`
  await fsp.mkdir(dirname(file), { recursive: true })
  await fsp.writeFile(tmp, lines.map(l => l + '\n').join(''), { mode })
  await fsp.rename(tmp, file)
}

/**
 * Add (or update) the line mounting STATE at MOUNTPOINT. Run again with the same arguments it
 * changes nothing; with other options it rewrites that one line. Another filesystem at the mount
 * point, or STATE listed at another one (a STATE is mounted once at a time), is refused.
 */
export async function fstabAdd (file: string, state: string, mountpoint: string, options?: string): Promise<{ line: string, change: 'added' | 'updated' | 'unchanged' }> {
  const src = resolve(state)
  const mnt = resolve(mountpoint)
  await readMarker(src)
  const line = fstabLine(src, mnt, options)
  const lines = await readLines(file)
  const all = entries(lines)
  const here = all.filter(e => e.target === mnt)
  const other = here.find(e => !isBslfs(e.type) || e.source !== src)
  if (other) throw new UsageError(`${file} already mounts ${other.source} (${other.type}) at ${mnt} (line ${other.index + 1}); remove that line first or pick another mount point`)
  const elsewhere = all.find(e => isBslfs(e.type) && e.source === src && e.target !== mnt)
  if (elsewhere) throw new UsageError(`${file} already mounts ${src} at ${elsewhere.target} (line ${elsewhere.index + 1}); a filesystem is mounted in one place: \`bslfs fstab remove ${elsewhere.target}\` first`)
  if (here.length > 0) {
    if (lines[here[0].index] === line) return { line, change: 'unchanged' }
    lines[here[0].index] = line
    await writeLines(file, lines)
    return { line, change: 'updated' }
  }
  lines.push(line)
  await writeLines(file, lines)
  return { line, change: 'added' }
}

/** Remove the bslfs line for MOUNTPOINT; another filesystem's line is never touched. */
export async function fstabRemove (file: string, mountpoint: string): Promise<{ removed: boolean }> {
  const mnt = resolve(mountpoint)
  const lines = await readLines(file)
  const ours = entries(lines).filter(e => e.target === mnt && isBslfs(e.type)).map(e => e.index)
  if (ours.length === 0) return { removed: false }
  await writeLines(file, lines.filter((_, i) => !ours.includes(i)))
  return { removed: true }
}
