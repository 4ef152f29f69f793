import { mountCommand } from './mount-command'
import { remountCommand } from './remount'

/**
 * mount.bslfs: what `mount -t bslfs STATE|URL MOUNTPOINT` and /etc/fstab run (a URL's
 * password: `-o password_file=FILE`, since mount(8) gives helpers a bare environment).
 * mount(8) calls it as: mount.bslfs STATE MOUNTPOINT [-sfnv] [-o OPTIONS]. As mount.fuse.bslfs
 * (the type /proc/mounts shows) it is what `mount -o remount,ro MOUNTPOINT` runs.
 */
export async function main (argv = process.argv.slice(2)): Promise<void> {
  const positional: string[] = []
  let options: string | undefined
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '-o') options = argv[++i]
    else if (a.startsWith('-o')) options = a.slice(2)
    else if (/^-[sfnvNt]+$/.test(a)) { if (a === '-t') i++ } // sloppy, fake, no-mtab, verbose: nothing to do for FUSE
    else positional.push(a)
  }
  if (positional.length !== 2) {
    console.error('usage: mount.bslfs STATE|postgres://USER@HOST:PORT/DB MOUNTPOINT [-o OPTIONS,password_file=FILE]')
    process.exit(1)
  }
  // mount(8) runs helpers with a bare environment; the daemon is this same program.
  process.argv[1] = require.resolve('./main')
  try {
    if ((options ?? '').split(',').includes('remount')) await remountCommand(positional[1], options ?? '')
    else await mountCommand(positional[0], positional[1], { options })
  } catch (err) {
    console.error(`mount.bslfs: ${(err as Error).message}`)
    process.exit(32) // mount(8)'s "mount failure"
  }
}

if (require.main === module) void main()
