import { Command, Option } from 'commander'
import type { StatusReport } from '../daemon/admin'
import { readMarker } from '../daemon/state'
import { UsageError } from '../errors'
import { Check, formatChecks, hostChecks, stateChecks, urlChecks } from './doctor'
import { fstabAdd, fstabPath, fstabRemove } from './fstab'
import { HELPER_NAMES, installHelper, sbinDir, uninstallHelper } from './helper-link'
import { installUnits, systemdPaths, uninstallUnits, writeServeConf } from './systemd'

/**
 * The commands that make bslfs a system package: the mount(8) helper link, systemd units,
 * fstab lines, and doctor. `status` is how a STATE's report is had (the mount's, or offline).
 */
export function registerSystemCommands (cli: Command, status: (state: string) => Promise<StatusReport>): void {
  const sbin = new Option('--sbin <DIR>', 'where mount(8) looks for helpers (default: $BSLFS_SBIN_DIR or /sbin)')
  cli.command('install-helper')
    .description('link /sbin/mount.bslfs (and mount.fuse.bslfs, for remount) to this bslfs, for `mount -t bslfs` and /etc/fstab')
    .addOption(sbin)
    .action(async (o: { sbin?: string }) => {
      for (const name of HELPER_NAMES) {
        const r = await installHelper(sbinDir(o.sbin), name)
        console.log(`bslfs: ${r.link} → ${r.target}${r.changed ? '' : ' (already)'}`)
      }
    })
  cli.command('uninstall-helper')
    .description('remove the /sbin/mount.bslfs link (before `npm uninstall -g bslfs`, which runs no uninstall scripts)')
    .addOption(sbin)
    .action(async (o: { sbin?: string }) => {
      for (const name of HELPER_NAMES) {
        const r = await uninstallHelper(sbinDir(o.sbin), name)
        console.log(r.removed ? `bslfs: removed ${r.link}` : `bslfs: ${r.link}: ${r.why}`)
      }
    })

  const systemd = cli.command('systemd').description('systemd units for block servers')
  const unitDir = (): Option => new Option('--unit-dir <DIR>', 'where units go').default('/etc/systemd/system')
  const confDir = (): Option => new Option('--conf-dir <DIR>', "where instances' options go").default('/etc/bslfs/serve')
  systemd.command('install')
    .description('install bslfs-serve@.service, create the user bslfs, and reload systemd')
    .addOption(unitDir()).addOption(confDir())
    .action(async (o: { unitDir: string, confDir: string }) => {
      const r = await installUnits(systemdPaths(o))
      console.log([`bslfs: installed ${r.units.join(', ')}${r.reloaded ? ' (systemd reloaded)' : ''}`,
        r.userCreated ? 'bslfs: created the system user bslfs' : 'bslfs: the user bslfs exists',
        'next: `bslfs systemd serve NAME --listen HOST:PORT --device DEV=PATH --token-file FILE`, then `systemctl enable --now bslfs-serve@NAME`'].join('\n'))
    })
  systemd.command('uninstall')
    .description('remove the units (instances\' options and the user stay)')
    .addOption(unitDir())
    .action(async (o: { unitDir: string }) => {
      const removed = await uninstallUnits(systemdPaths(o))
      console.log(removed.length ? `bslfs: removed ${removed.join(', ')}` : 'bslfs: no units installed')
    })
  systemd.command('serve').argument('<NAME>', 'the instance: bslfs-serve@NAME.service')
    .description("write NAME.conf for bslfs-serve@NAME and give the device directories to the user bslfs")
    .requiredOption('--listen <HOST:PORT>', 'as for bslfs serve')
    .option('--device <NAME=PATH>', 'a device directory (created, owned by bslfs); repeatable', (v: string, prev: string[] = []) => [...prev, v])
    .option('--token-file <FILE>', 'the shared token (it becomes owned by bslfs, mode 0600)')
    .addOption(confDir())
    .action(async (name: string, o: { listen: string, device?: string[], tokenFile?: string, confDir: string }) => {
      const r = await writeServeConf(systemdPaths(o), name, { listen: o.listen, device: o.device ?? [], tokenFile: o.tokenFile })
      console.log(`bslfs: ${r.conf} written; ${r.devices.join(', ')} owned by bslfs. Start it: systemctl enable --now bslfs-serve@${name}`)
    })

  const fstab = cli.command('fstab').description('/etc/fstab lines for bslfs mounts (mounted at boot through mount.bslfs)')
  const fstabFile = (): Option => new Option('--fstab <FILE>', 'the fstab to edit (default: $BSLFS_FSTAB or /etc/fstab)')
  fstab.command('add').argument('<STATE>').argument('<MOUNTPOINT>')
    .description('add or update the line mounting STATE at MOUNTPOINT (with _netdev); again changes nothing')
    .option('-o, --options <OPTIONS>', 'mount options, as for bslfs mount; x-systemd.* are passed to systemd')
    .addOption(fstabFile())
    .action(async (state: string, mnt: string, o: { options?: string, fstab?: string }) => {
      const file = fstabPath(o.fstab)
      const r = await fstabAdd(file, state, mnt, o.options)
      console.log(`bslfs: ${file}: ${r.change}: ${r.line}`)
    })
  fstab.command('remove').argument('<MOUNTPOINT>')
    .description('remove the bslfs line for MOUNTPOINT')
    .addOption(fstabFile())
    .action(async (mnt: string, o: { fstab?: string }) => {
      const file = fstabPath(o.fstab)
      const r = await fstabRemove(file, mnt)
      console.log(r.removed ? `bslfs: ${file}: removed the line for ${mnt}` : `bslfs: ${file} has no bslfs line for ${mnt}`)
    })

  cli.command('doctor').argument('[STATE|URL]', 'a filesystem to check its devices and servers, or a block server\'s http://HOST:PORT')
    .description('check this host (FUSE, libfuse2, addons, kernel protocol, helper) and a filesystem or server; exit 1 on a problem')
    .option('--token-file <FILE>', "with a URL: the server's token, to check it is accepted")
    .option('--json', 'machine-readable output')
    .action(async (target: string | undefined, o: { tokenFile?: string, json?: boolean }) => {
      const checks: Check[] = await hostChecks()
      if (target && /^https?:\/\//.test(target)) checks.push(...await urlChecks(target, o.tokenFile))
      else if (target) {
        try {
          await readMarker(target)
          checks.push(...stateChecks(await status(target)))
        } catch (err) {
          if (!(err instanceof UsageError)) throw err
          checks.push({ name: 'filesystem', ok: false, detail: err.message, fix: 'give the STATE directory `bslfs init` made' })
        }
      }
      const ok = checks.every(c => c.ok)
      console.log(o.json ? JSON.stringify({ ok, checks }, null, 2) : formatChecks(checks))
      if (!ok) process.exitCode = 1
    })
}
