import createDebug from 'debug'
import { BslFilesystem } from './filesystem'
import { fuseOperations } from './fuse-ops'

const log = createDebug('bslfs:fs')

/** Options the user may pass with -o, besides the ones bslfs always sets. Anything else is refused up front:
 * libfuse2 rejects unknown options only after the kernel mount exists, leaving a dead mount behind. */
const FLAG_OPTIONS = new Set(['ro', 'rw', 'allow_other', 'allow_root', 'default_permissions', 'kernel_cache', 'auto_cache',
  'noauto_cache', 'big_writes', 'async_read', 'sync_read', 'atomic_o_trunc', 'no_remote_lock', 'nosuid', 'suid', 'nodev',
  'dev', 'noexec', 'exec', 'intr', 'direct_io', 'debug', 'use_ino', 'readdir_ino', 'noatime'])
const VALUE_OPTIONS = new Set(['entry_timeout', 'attr_timeout', 'negative_timeout', 'ac_attr_timeout', 'max_write',
  'max_read', 'max_readahead', 'umask', 'uid', 'gid', 'fsname', 'subtype', 'intr_signal', 'blksize'])
/** mount(8) and fstab options that mean nothing to FUSE. */
const MOUNT8_OPTIONS = new Set(['defaults', 'auto', 'noauto', 'nofail', '_netdev', 'user', 'users', 'nouser', 'owner', 'group', 'relatime', 'strictatime', 'lazytime'])

/** bslfs's own -o options, handled by the daemon rather than libfuse. */
const OWN_OPTIONS = new Set(['foreground'])

export interface ParsedOptions {
  readOnly: boolean
  /** copy_timeout=MS: how long a copy of a mirrored block may take before a read moves on. */
  copyTimeoutMs?: number
  /** Options to hand to libfuse. */
  fuse: string[]
}

/** Parse a mount -o list ("ro,allow_other,entry_timeout=5"); throws a message that names the bad option. */
export function parseMountOptions (text: string | undefined): ParsedOptions {
  const out: ParsedOptions = { readOnly: false, fuse: [] }
  for (const raw of (text ?? '').split(',')) {
    const opt = raw.trim()
    if (opt === '' || MOUNT8_OPTIONS.has(opt) || opt.startsWith('x-') || OWN_OPTIONS.has(opt)) continue
    const eq = opt.indexOf('=')
    const name = eq < 0 ? opt : opt.slice(0, eq)
    if (name === 'copy_timeout') {
      const ms = Number(opt.slice(eq + 1))
      if (eq < 0 || !/^[0-9]+$/.test(opt.slice(eq + 1)) || ms < 10 || ms > 60000) throw new Error(`bad mount option "${opt}": copy_timeout=MS takes 10 to 60000 milliseconds`)
      out.copyTimeoutMs = ms
      continue
    }
    if (eq < 0 ? !FLAG_OPTIONS.has(name) : !VALUE_OPTIONS.has(name)) {
      throw new Error(`unknown or unsupported mount option "${opt}"; supported: ${[...FLAG_OPTIONS].join(', ')}, ${[...VALUE_OPTIONS].map(o => o + '=N').join(', ')}, copy_timeout=MS`)
    }
    if (eq >= 0 && !/^[A-Za-z0-9_.:/@+-]+$/.test(opt.slice(eq + 1))) throw new Error(`bad value in mount option "${opt}"`)
    if (name === 'ro') out.readOnly = true
    else if (name === 'rw') out.readOnly = false
    else out.fuse.push(opt)
  }
  if (out.readOnly) out.fuse.push('ro')
  return out
}

/** The options every bslfs mount gets; user options come after and win. */
export function defaultFuseOptions (fsname: string): string[] {
  const opts = [
    'use_ino', // st_ino is ours: hard links show one inode number
    'default_permissions', // the kernel checks modes and owners as on ext4
    'big_writes', 'max_write=131072', // 128 KiB writes instead of 4 KiB
    // libfuse2's high-level API gives each name of a hard-linked file its own kernel inode, so
    // cached attributes of one name go stale when another changes: the kernel asks every time.
    'entry_timeout=0', 'attr_timeout=0',
    `fsname=${fsname}`, 'subtype=bslfs'
  ]
  if (process.getuid?.() === 0) opts.push('allow_other') // a root mount is for every user, under the usual checks
  return opts
}

// fuse-native is plain JavaScript with no types.
// eslint-disable-next-line @typescript-eslint/no-var-requires
const Fuse = require('fuse-native')

export interface MountedFuse {
  /** Unmount: strict fails with EBUSY on a busy mount; lazy detaches it anyway. */
  unmount (lazy: boolean): Promise<void>
  /** Whether the kernel connection has ended (after a lazy unmount: once the last user left). */
  ended (): boolean
}

export function mountFuse (mountpoint: string, fs: BslFilesystem, options: string[]): Promise<MountedFuse> {
  const fuse = new Fuse(mountpoint, fuseOperations(fs), {
    timeout: false, // the layers below bound their own waits; a FUSE-level timeout would answer while work goes on
    extraOptions: options,
    strictUnmount: true
  })
  log('mounting %s with -o %s', mountpoint, options.join(','))
  return new Promise((resolve, reject) => {
    fuse.mount((err: Error | null) => {
      if (err) return reject(err)
      resolve({
        ended: () => fuse.loopDone(),
        unmount: (lazy: boolean) => new Promise<void>((resolve, reject) => {
          fuse.opts.strictUnmount = !lazy
          fuse.unmount((err: Error | null) => err ? reject(err) : resolve())
        })
      })
    })
  })
}
