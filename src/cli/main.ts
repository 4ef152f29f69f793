import { Command, CommanderError, Option } from 'commander'
import { resolve } from 'node:path'
import { FsError, UsageError } from '../errors'
import * as admin from '../daemon/admin'
import * as dump from '../daemon/dump'
import { askControl } from '../daemon/control'
import { fsNameText, parseFsName, runtimePaths } from '../daemon/location'
import { controlSocketOf, findFsMounts, findMount, fusermount } from '../daemon/mountpoint'
import { DEFAULT_BLOCK_SIZE, State, checkPasswordFile, initState } from '../daemon/state'
import { Progress } from '../daemon/progress'
import { FsckReport } from '../daemon/fsck'
import { Presets, SingleBar } from 'cli-progress'
import { mountCommand } from './mount-command'
import { registerServe } from './serve-command'
import { registerStats } from './stats-command'
import { registerSystemCommands } from './system-commands'
import { packageVersion } from '../version'

/** Commands that change the tables every mount resolves BSLs with. */
const CHANGES_TABLES = new Set(['device-add', 'volume-add', 'volume-default', 'server-add', 'mirror', 'remap', 'adopt'])

/**
 * Run a management command where the filesystem is open. A STATE: on its
 * running mount through the control socket (the mount owns the LevelDB), or,
 * when nothing is mounted, on the STATE opened here. A URL: on a mount of it
 * on this host when there is one (its volumes and writers take part, as with
 * a STATE), else on the directory opened here, next to the other hosts'
 * mounts. A change to the tables is then told to every other mount of it on
 * this host; mounts on other hosts re-read the tables within 2 s by themselves.
 */
async function runOnFs<T> (nameArg: string, cmd: string, args: string[], offline: (s: State) => Promise<T>,
  extra: { options?: Record<string, unknown>, onProgress?: (p: Progress) => void, passwordFile?: string } = {}): Promise<T> {
  const name = parseFsName(nameArg)
  const passwordFile = extra.passwordFile
  checkPasswordFile(name, passwordFile)
  const sockets = name.kind === 'state' ? [runtimePaths(name, '').socket] : (await findFsMounts(name)).map(controlSocketOf)
  const req = { cmd, args, options: extra.options }
  let result: { value: T } | undefined
  let ranOn: string | undefined
  for (const socket of sockets) {
    const answer = await askControl(socket, req, undefined, p => extra.onProgress?.(p as Progress))
    if (!answer) continue
    if (!answer.ok) throw new UsageError(answer.error)
    result = { value: answer.result as T }
    ranOn = socket
    break
  }
  if (!result) {
    const s = await State.open(name, { passwordFile })
    try {
      result = { value: await offline(s) }
    } finally {
      await s.close()
    }
  }
  if (name.kind === 'postgres' && CHANGES_TABLES.has(cmd)) {
    // The periodic re-read covers a mount that does not answer now.
    await Promise.all(sockets.filter(s => s !== ranOn).map(async s => await askControl(s, { cmd: 'reload-tables', args: [] }, 10_000).catch(() => null)))
  }
  return result.value
}

const print = (json: boolean | undefined, value: unknown, text: () => string) => {
  console.log(json ? JSON.stringify(value, null, 2) : text())
}

const mib = (n?: number) => n === undefined ? '?' : `${(n / 1048576).toFixed(1)} MiB`

function formatStatus (r: admin.StatusReport): string {
  const lines = [
    r.problems.length ? `health      ${r.problems.length} PROBLEM${r.problems.length > 1 ? 'S' : ''}` : 'health      ok',
    ...r.problems.map(p => `  ! ${p}`),
    `filesystem  ${r.state}`,
    `mounted     ${r.mounted ? `${r.mounted.mountpoint} (pid ${r.mounted.pid}${r.mounted.readOnly ? ', read-only' : ''}, since ${r.mounted.since})` : 'no'}`,
    `files       ${r.files}`,
    `bytes       ${r.bytes} (${mib(r.bytes)})`,
    `block size  ${r.blockSize}`,
    `default     ${r.defaultPlace ? `${r.defaultPlace} (physical BSLs)` : `volume ${r.defaultVolume}`}`,
    'volumes:'
  ]
  for (const v of r.volumes) {
    const where = v.mirrors
      ? `mirrored on ${v.mirrors.map(m => `${m.volume} (${m.place}${m.up ? '' : ', DOWN'})`).join(', ')}, min copies ${v.minCopies}`
      : v.place
    const extra = [v.backlog ? `${v.backlog} copies to heal` : '', v.failovers ? `${v.failovers} failovers` : ''].filter(Boolean).join(', ')
    lines.push(`  ${v.volume}  ${v.health}  ${where}${extra ? `  (${extra})` : ''}`)
  }
  lines.push(`heal backlog ${r.healBacklog}`)
  if (r.sessions.length) lines.push('sessions:')
  for (const s of r.sessions) {
    lines.push(`  ${s.session}  ${s.host} pid ${s.pid} ${s.mountpoint}  bslfs ${s.version}, since ${s.started}, renewed ${s.renewed}${s.live ? '' : '  EXPIRED (awaiting cleanup)'}${s.jobs ? '  (runs the jobs)' : ''}`)
  }
  const places = r.places.filter(p => !p.up || p.failovers || p.missing || p.corrupt || p.downs)
  if (places.length) lines.push('places:')
  for (const p of places) {
    lines.push(`  ${p.place}  ${p.up ? 'up' : `DOWN since ${p.downSince}`}  served ${p.served}, failovers ${p.failovers}, missing ${p.missing}, corrupt ${p.corrupt}, went down ${p.downs}x${p.lastError ? `; last error${p.lastErrorAt ? ` at ${p.lastErrorAt}` : ''}: ${p.lastError}` : ''}`)
  }
  if (r.servers.length) lines.push('servers:')
  for (const sv of r.servers) lines.push(`  ${sv.name}  ${sv.url}  ${sv.reachable ? `reachable, devices ${sv.devices?.join(', ')}` : `UNREACHABLE: ${sv.error}`}`)
  lines.push('devices:')
  for (const d of r.devices) {
    lines.push(d.error
      ? `  ${d.place}  ${d.path ?? ''}  unavailable: ${d.error}`
      : `  ${d.place}  ${d.path ?? ''}  ${mib(d.available)} free of ${mib(d.total)}`)
  }
  if (r.recentErrors.length) lines.push('recent errors:')
  for (const e of r.recentErrors.slice(-10)) lines.push(`  ${e.time} ${e.level} ${e.namespace} ${e.message}`)
  return lines.join('\n')
}

function formatFsck (r: FsckReport): string {
  const kinds = Object.entries(r.problems)
  return [
    `bslfs: fsck ${r.clean ? (kinds.length ? 'repaired everything it found' : 'found no problems') : 'found problems'} in ${r.seconds.toFixed(1)} s`,
    `  ${r.inodes} inodes (${r.directories} directories), ${r.entries} entries, ${r.blocks} blocks (${mib(r.bytes)}), ${r.copiesChecked} copies checked, ${r.objectsListed} objects on the devices`,
    `  queues: ${r.reclaimQueue} blocks to reclaim, ${r.healQueue} copies to heal, ${r.openOrphans} unlinked open inodes to free`,
    ...kinds.map(([k, n]) => `  ${k}: ${n}${r.repaired[k] ? ` (repaired ${r.repaired[k]})` : ''}`),
    ...Object.entries(r.repaired).filter(([k]) => !(k in r.problems)).map(([k, n]) => `  ${k}: ${n}`),
    ...(r.first.length ? ['first problems:', ...r.first.map(p => `  ${p}`)] : [])
  ].join('\n')
}

/** Run `work` with a progress bar on stderr (when it is a terminal and the output is not JSON). */
async function withProgressBar<T> (name: string, unit: 'copies' | 'bytes', work: (onProgress: (p: Progress) => void) => Promise<T>, json?: boolean): Promise<T> {
  if (json || !process.stderr.isTTY) return await work(() => {})
  const bytes = unit === 'bytes'
  const bar = new SingleBar({
    format: `${name} [{bar}] {percentage}% | ${bytes ? '{doneMiB}/{totalMiB} MiB{blocks}' : '{value}/{total} copies, {doneMiB} MiB'} | {rate} MiB/s | eta {eta_formatted}`,
    stream: process.stderr,
    hideCursor: true
  }, Presets.shades_classic)
  const started = Date.now()
  bar.start(1, 0, { doneMiB: '0', totalMiB: '0', rate: '0', blocks: '' })
  try {
    return await work(p => {
      const s = Math.max(0.001, (Date.now() - started) / 1000)
      bar.setTotal(Math.max(1, p.total))
      bar.update(p.done, {
        doneMiB: (p.bytes / 1048576).toFixed(1),
        totalMiB: (p.total / 1048576).toFixed(1),
        rate: (p.bytes / 1048576 / s).toFixed(1),
        blocks: p.blocks === undefined ? '' : `, ${p.blocks} blocks`
      })
    })
  } finally {
    bar.stop()
  }
}

export function program (): Command {
  const cli = new Command('bslfs')
    .description('A FUSE filesystem that maps POSIX paths to block storage locators (BSLs)')
    .version(packageVersion(), '-V, --version', 'print the version')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride()
    .option('--password-file <FILE>', 'the PostgreSQL password for a postgres:// URL, in a file only its owner can read (else ~/.pgpass or PGPASSFILE)')
  /** `--password-file FILE`: a program option, so it may come before or after the command. */
  const globalPasswordFile = (): string | undefined => {
    const file = cli.opts<{ passwordFile?: string }>().passwordFile
    return file === undefined ? undefined : resolve(file)
  }
  const onState = async <T>(name: string, cmd: string, args: string[], offline: (s: State) => Promise<T>,
    extra: { options?: Record<string, unknown>, onProgress?: (p: Progress) => void } = {}): Promise<T> =>
    await runOnFs(name, cmd, args, offline, { ...extra, passwordFile: globalPasswordFile() })

  cli.command('init').argument('<STATE>', 'directory for the new filesystem, or postgres://USER@HOST:PORT/DATABASE (an empty database)')
    .description('create a filesystem: in a STATE directory one local device and one logical volume on it; in PostgreSQL the directory only (add servers and volumes)')
    .option('--block-size <BYTES>', 'block size (4096..67108864, a power of two)', String(DEFAULT_BLOCK_SIZE))
    .action(async (state: string, o: { blockSize: string }) => {
      const bs = Number(o.blockSize)
      if (!Number.isInteger(bs) || bs < 4096 || bs > 64 * 1048576 || (bs & (bs - 1)) !== 0) {
        throw new UsageError(`bad --block-size "${o.blockSize}": use a power of two from 4096 to 67108864`)
      }
      const name = parseFsName(state)
      await initState(name, { blockSize: bs, passwordFile: globalPasswordFile() })
      if (name.kind === 'state') console.log(`bslfs: new filesystem in ${name.root} (device local:d0, volume 1); mount it with \`bslfs mount ${state} MOUNTPOINT\``)
      else {
        console.log(`bslfs: new filesystem in ${fsNameText(name)}, with no volume yet: its data lives on block servers every host can reach. ` +
          `Next: \`bslfs server add ${name.url} NAME http://HOST:PORT --token-file FILE\`, \`bslfs volume add ${name.url} 1 NAME:DEVICE\`, \`bslfs volume default ${name.url} 1\``)
      }
    })

  cli.command('mount').argument('<STATE>').argument('<MOUNTPOINT>')
    .description('mount the filesystem (in the background unless -f)')
    .option('-f, --foreground', 'stay in the foreground')
    .option('-o, --options <OPTIONS>', 'mount options, comma-separated (ro, allow_other, kernel_cache, entry_timeout=N, ...)')
    .addOption(new Option('--ready-fd <FD>').hideHelp())
    .action(async (state: string, mnt: string, o: { foreground?: boolean, options?: string, readyFd?: string }) => {
      await mountCommand(state, mnt, { ...o, passwordFile: globalPasswordFile() })
    })

  cli.command('unmount').alias('umount').argument('<MOUNTPOINT>')
    .description('flush everything, unmount, and stop the mount daemon')
    .option('--lazy', 'detach even when busy (the mount goes away when the last user leaves)')
    .action(async (mnt: string, o: { lazy?: boolean }) => {
      const abs = resolve(mnt)
      const m = await findMount(abs)
      if (!m) throw new UsageError(`${abs} is not mounted`)
      if (m.fstype !== 'fuse.bslfs') throw new UsageError(`${abs} is not a bslfs mount (${m.fstype})`)
      const answer = await askControl(controlSocketOf(m), { cmd: 'unmount', args: [abs], options: { lazy: !!o.lazy } })
      if (answer && !answer.ok) throw new UsageError(answer.error)
      if (!answer) {
        // The daemon is gone: only the kernel's side of the mount is left.
        const complaint = await fusermount(abs, !!o.lazy)
        if (complaint) throw new UsageError(/busy/i.test(complaint) ? `${abs} is busy; close what uses it, or use --lazy` : complaint)
      }
      console.log(o.lazy ? `bslfs: detached ${abs}; the mount daemon exits when the last process using it leaves` : `bslfs: unmounted ${abs}`)
    })

  cli.command('status').argument('<STATE>')
    .description('volumes, devices and space, files and bytes, and where it is mounted')
    .option('--json', 'machine-readable output')
    .action(async (state: string, o: { json?: boolean }) => {
      const r = await onState(state, 'status', [], s => admin.status(s, null))
      print(o.json, r, () => formatStatus(r))
    })

  registerServe(cli)
  registerStats(cli)

  const device = cli.command('device').description('local devices (directories on local disks)')
  device.command('add').argument('<STATE>').argument('<NAME>').argument('<PATH>')
    .description('add a local device: a directory on a disk of this host')
    .action(async (state: string, name: string, path: string) => {
      const fsName = parseFsName(state)
      if (fsName.kind === 'postgres') admin.refuseLocalDevice(fsName.url, `cannot add local device "${name}"`)
      const r = await onState(state, 'device-add', [name, resolve(path)], s => admin.deviceAdd(s, name, path))
      console.log(`bslfs: device local:${r.device} at ${r.path}`)
    })

  const server = cli.command('server').description('remote block servers (see `bslfs serve`)')
  server.command('add').argument('<STATE>').argument('<NAME>').argument('<URL>', 'https://HOST:PORT (http:// only on a trusted network)')
    .description('add a block server; it must answer with the token (and, for https, a certificate the CA signed for its name)')
    .option('--token-file <FILE>', 'the file holding the server\'s bearer token (mode 0600)')
    .option('--ca <FILE>', 'https: the CA certificate that signed the server\'s certificate (default: the system\'s CAs)')
    .option('--client-cert <FILE>', 'https with mutual TLS: this host\'s certificate')
    .option('--client-key <FILE>', 'https with mutual TLS: this host\'s private key (mode 0600)')
    .action(async (state: string, name: string, url: string, o: { tokenFile?: string, ca?: string, clientCert?: string, clientKey?: string }) => {
      const tokenFile = o.tokenFile ? resolve(o.tokenFile) : undefined
      const tlsFiles = {
        ...(o.ca !== undefined ? { caFile: resolve(o.ca) } : {}),
        ...(o.clientCert !== undefined ? { clientCertFile: resolve(o.clientCert) } : {}),
        ...(o.clientKey !== undefined ? { clientKeyFile: resolve(o.clientKey) } : {})
      }
      const r = await onState(state, 'server-add', [name, url, tokenFile ?? ''], s => admin.serverAdd(s, name, url, tokenFile, tlsFiles), { options: tlsFiles })
      console.log(`bslfs: server ${r.name} at ${r.url}`)
    })
  server.command('set-token').argument('<STATE>').argument('<NAME>')
    .description('move to a new token (the server must accept it already); a running mount switches without a remount')
    .requiredOption('--token-file <FILE>', 'the file holding the new token (mode 0600)')
    .action(async (state: string, name: string, o: { tokenFile: string }) => {
      const tokenFile = resolve(o.tokenFile)
      const r = await onState(state, 'server-set-token', [name, tokenFile], s => admin.serverSetToken(s, name, tokenFile))
      console.log(`bslfs: server ${r.name} now uses the token in ${r.tokenFile ?? '?'}${r.devices > 0 ? ` (${r.devices} open device(s) switched)` : ''}`)
    })
  server.command('list').argument('<STATE>')
    .description('the block servers this filesystem uses')
    .option('--json', 'machine-readable output')
    .action(async (state: string, o: { json?: boolean }) => {
      const rows = await onState(state, 'server-list', [], s => admin.serverList(s))
      print(o.json, rows, () => rows.map(r => `${r.name}  ${r.url}${r.tokenFile ? `  token ${r.tokenFile}` : ''}` +
        `${r.caFile ? `  ca ${r.caFile}` : ''}${r.clientCertFile ? `  client cert ${r.clientCertFile}, key ${r.clientKeyFile ?? '?'}` : ''}`).join('\n') || '(no servers)')
    })

  const volume = cli.command('volume').description('logical volumes')
  volume.command('add').argument('<STATE>').argument('<VOL>').argument('<SERVER:DEVICE>')
    .description('map a new logical volume to a device (server "local" is this host)')
    .action(async (state: string, vol: string, place: string) => {
      const r = await onState(state, 'volume-add', [vol, place], s => admin.volumeAdd(s, vol, place))
      console.log(`bslfs: volume ${r.volume} → ${r.place}`)
    })
  volume.command('default').argument('<STATE>').argument('<VOL>', 'a volume, or SERVER:DEVICE for physical BSLs (no volume; see adopt)')
    .description('send new blocks to this volume (or straight to a device)')
    .action(async (state: string, vol: string) => {
      const r = await onState(state, 'volume-default', [vol], s => admin.volumeDefault(s, vol))
      console.log('volume' in r ? `bslfs: new blocks go to volume ${r.volume}` : `bslfs: new blocks go to ${r.place} directly, as physical BSLs (they cannot be remapped until adopted into a volume)`)
    })
  volume.command('list').argument('<STATE>')
    .description('every volume, where it lives now, and where it lived before')
    .option('--json', 'machine-readable output')
    .action(async (state: string, o: { json?: boolean }) => {
      const rows = await onState(state, 'volume-list', [], s => admin.volumeList(s))
      print(o.json, rows, () => rows.map(r => [`${r.volume}  ${r.place}  since ${r.since}`,
        ...r.history.map(h => `     was ${h.place}  ${h.from} .. ${h.to}`)].join('\n')).join('\n') || '(no volumes)')
    })

  cli.command('mirror').argument('<STATE>').argument('<VOL>', 'the mirrored volume (a new number)').argument('<MIRRORS...>', 'two or more volumes of the volume table')
    .description('serve volume VOL from mirror volumes: every block is written to each of them')
    .option('--min-copies <N>', 'copies a write must reach to succeed (default: all); the missed ones are healed later')
    .action(async (state: string, vol: string, mirrors: string[], o: { minCopies?: string }) => {
      const r = await onState(state, 'mirror', [vol, ...mirrors], s => admin.mirrorSet(s, vol, mirrors, o.minCopies), { options: { minCopies: o.minCopies } })
      console.log(`bslfs: volume ${r.volume} → mirrors ${r.mirrors.join(', ')} (a write needs ${r.minCopies} of ${r.mirrors.length} copies)`)
    })

  cli.command('heal').argument('<STATE>')
    .description('copy every missing or bad copy of a mirrored block from a good one')
    .option('--json', 'machine-readable summary')
    .action(async (state: string, o: { json?: boolean }) => {
      const r = await withProgressBar('heal', 'copies', bar => onState(state, 'heal', [], s => admin.heal(s, bar), { onProgress: bar }), o.json)
      print(o.json, r, () => [
        `bslfs: heal: ${r.queued} queued; ${r.copied} copied (${mib(r.bytes)}), ${r.present} already whole, ${r.dropped} no longer needed, ${r.failed} left for later`,
        ...r.errors.map(e => `  ${e}`)].join('\n'))
      if (r.failed) process.exitCode = 1
    })

  cli.command('scrub').argument('<STATE>')
    .description('read every copy of every block, check its checksum, and queue bad copies for heal')
    .option('--json', 'machine-readable summary')
    .action(async (state: string, o: { json?: boolean }) => {
      const r = await withProgressBar('scrub', 'bytes', bar => onState(state, 'scrub', [], s => admin.scrub(s, bar), { onProgress: bar }), o.json)
      print(o.json, r, () => `bslfs: scrub: ${r.blocks} blocks, ${r.good} good copies (${mib(r.bytes)}), ${r.missing} missing, ${r.corrupt} corrupt, ${r.unchecked} not checked (place down); ${r.queued} queued for heal${r.queued ? ' (run `bslfs heal STATE`, or let the mount heal them)' : ''}`)
      if (r.missing || r.corrupt || r.unchecked) process.exitCode = 1
    })

  cli.command('remap').argument('<STATE>').argument('<VOL>').argument('<SERVER:DEVICE>', 'the new place')
    .description('move a volume to another server or device: one row of the volume table changes, no BSL does')
    .option('--copy', 'copy every block there first (resumes an interrupted copy); blocks written meanwhile go there too')
    .option('--delete-old', 'after the switch, remove the copies from the old place')
    .option('--verify', 'without --copy: check every block is there, not a sample')
    .option('--json', 'machine-readable summary')
    .action(async (state: string, vol: string, place: string, o: { copy?: boolean, deleteOld?: boolean, verify?: boolean, json?: boolean }) => {
      const opts = { copy: !!o.copy, deleteOld: !!o.deleteOld, verify: !!o.verify }
      const r = await withProgressBar('remap', opts.copy ? 'bytes' : 'copies',
        bar => onState(state, 'remap', [vol, place], s => admin.remapVolume(s, vol, place, opts, bar), { options: opts, onProgress: bar }), o.json)
      print(o.json, r, () => [
        `bslfs: volume ${r.volume} moved from ${r.from} to ${r.to} (${r.blocks} blocks, ${mib(r.bytes)})`,
        opts.copy ? `  copied ${r.copied}, already there ${r.alreadyThere}${r.gone ? `, ${r.gone} deleted meanwhile` : ''}, ${(r.bytes / 1048576 / Math.max(r.copySeconds, 0.001)).toFixed(1)} MiB/s over ${r.copySeconds.toFixed(1)} s` : `  checked ${r.checked} blocks on the new place`,
        ...(r.stranded ? [`  WARNING: ${r.stranded} blocks written during the switch could not be copied to ${r.to}; they are still on ${r.from}, whose copies were kept`] : []),
        ...(opts.deleteOld && !r.stranded ? [`  old copies removed: ${r.deleted}${r.notDeleted ? `, ${r.notDeleted} could not be (the old place is gone?)` : ''}`] : [])].join('\n'))
      if (r.stranded) process.exitCode = 1
    })

  cli.command('adopt').argument('<STATE>').argument('<SERVER:DEVICE>')
    .description('turn the physical BSLs naming a device into logical BSLs of a volume on it')
    .requiredOption('--as <VOL>', 'the volume (new, or already on that device)')
    .action(async (state: string, place: string, o: { as: string }) => {
      const r = await onState(state, 'adopt', [place, o.as], s => admin.adopt(s, place, o.as))
      console.log(`bslfs: ${r.blocks} blocks of ${r.files} files on ${r.place} are now volume ${r.volume}; it can be remapped`)
    })

  cli.command('fsck').argument('<STATE>')
    .description('check the directory and the devices against each other; exit 1 when something is wrong')
    .option('--repair', 'fix counts, remove orphans, move what has no name into /lost+found (unmounted only)')
    .option('--no-checksums', 'check that each copy exists with the right size instead of reading it')
    .option('--json', 'machine-readable report')
    .action(async (state: string, o: { repair?: boolean, checksums: boolean, json?: boolean }) => {
      const opts = { repair: !!o.repair, checksums: o.checksums }
      const r = await withProgressBar('fsck', 'bytes', bar => onState(state, 'fsck', [], s => admin.fsckState(s, opts, false, bar), { options: opts, onProgress: bar }), o.json)
      print(o.json, r, () => formatFsck(r))
      if (!r.clean) process.exitCode = 1
    })

  cli.command('blocks').argument('<STATE>')
    .description('every block map entry (inode, index, BSL, length, checksum), for comparison and audits')
    .option('--json', 'machine-readable output')
    .action(async (state: string, o: { json?: boolean }) => {
      const rows = await onState(state, 'blocks', [], s => admin.blockDump(s))
      print(o.json, rows, () => rows.map(b => `${b.ino}\t${b.index}\t${b.bsl}\t${b.length}\t${b.checksum}`).join('\n'))
    })

  cli.command('bsl').argument('<STATE>').argument('<PATH>', 'a path in the filesystem, or through its mount point')
    .description("the BSLs of a file's blocks and where each resolves")
    .option('--json', 'machine-readable output')
    .action(async (state: string, path: string, o: { json?: boolean }) => {
      const abs = resolve(path)
      const m = (await findFsMounts(parseFsName(state))).find(m => abs === m.mountpoint || abs.startsWith(m.mountpoint + '/'))
      const inner = m ? abs.slice(m.mountpoint.length) || '/' : path
      const blocks = await onState(state, 'bsl', [inner], s => admin.bslOf(s, inner))
      if (!o.json && blocks.length === 0) console.error('(no blocks: the file is empty or a hole)')
      else {
        print(o.json, blocks, () => blocks.map(b =>
          `${b.index}\t${b.bsl}\t${b.length} bytes\tcrc32 ${b.checksum}\t→ ${b.places.join(', ')}`).join('\n'))
      }
    })

  // Moving a filesystem between engines (src/daemon/dump.ts).
  cli.command('dump').argument('<STATE>', 'a STATE directory or postgres:// URL, mounted or not')
    .description('write the whole directory (names, inodes, xattrs, block maps, tables, queues) as one checksummed dump to stdout')
    .action(async (state: string) => {
      dump.checkDumpOutput()
      const r = await dump.dumpCommand(state, process.stdout, { passwordFile: globalPasswordFile() })
      await new Promise<void>(resolve => process.stdout.write('', () => resolve()))
      console.error(`bslfs: dumped ${r.records} records (${mib(r.bytes)}, sha256 ${r.sha256.slice(0, 16)}…), ${r.usage.files} files, ${mib(r.usage.bytes)} in blocks`)
    })
  const formatLoad = (r: dump.LoadReport): string => [
    `bslfs: loaded ${r.records} records of filesystem ${r.uuid} (dumped from ${r.source}) into ${r.target}`,
    `  verified: ${r.verified.records} records read back as written (${r.verified.blocks} block map entries, so \`bslfs blocks\` lists the same); ` +
      `fsck ${r.verified.fsck.clean ? 'clean' : `found problems: ${Object.entries(r.verified.fsck.problems).map(([k, n]) => `${k} ${n}`).join(', ')}`}`,
    ...r.verified.fsck.first.map(p => `    ${p}`),
    ...(r.verified.fsck.clean ? [] : ['  (a dump holds the directory; the blocks stay on the volumes: if the source was used after the dump, what it wrote since shows as orphan objects and what it freed as missing copies)']),
    ...(r.usageCorrected ? [`  usage: the dump counted ${r.usageCorrected.files} files and ${r.usageCorrected.bytes} bytes; its records hold ${r.usage.files} and ${r.usage.bytes}, which were loaded`] : []),
    ...(r.localVolumes.length && r.target.startsWith('postgres') ? [`  note: ${r.localVolumes.join(', ')}: a device of this host only; other hosts reach it once it is served: see "From one host to PostgreSQL" in the README`] : [])
  ].join('\n')
  cli.command('load').argument('<STATE>', 'an empty or new STATE directory, or an empty database (postgres:// URL)').argument('[DUMP]', 'the dump file (default: stdin)')
    .description('load a dump made by `bslfs dump` into an empty target, check it whole first, verify it afterwards')
    .option('--checksums', 'verify by reading every block copy (default: check each copy is there with the right size)')
    .option('--json', 'machine-readable report')
    .action(async (state: string, file: string | undefined, o: { checksums?: boolean, json?: boolean }) => {
      const input = await dump.dumpInput(file)
      try {
        const r = await dump.loadDump(state, input.source, { passwordFile: globalPasswordFile(), checksums: !!o.checksums })
        print(o.json, r, () => formatLoad(r))
        if (!r.verified.fsck.clean) process.exitCode = 1
      } finally {
        await input.cleanup()
      }
    })
  cli.command('migrate').argument('<FROM>', 'STATE or postgres:// URL (unmounted)').argument('<TO>', 'an empty STATE directory or database')
    .description('move a filesystem to another engine: `bslfs dump FROM | bslfs load TO` in one step, verified')
    .option('--json', 'machine-readable report')
    .action(async (from: string, to: string, o: { json?: boolean }) => {
      const r = await dump.migrate(from, to, { passwordFile: globalPasswordFile() })
      print(o.json, r, () => formatLoad(r))
      if (!r.verified.fsck.clean) process.exitCode = 1
    })

  // Package, systemd, fstab and doctor (src/cli/system-commands.ts).
  registerSystemCommands(cli, state => onState(state, 'status', [], s => admin.status(s, null)))

  return cli
}

export async function main (argv = process.argv): Promise<void> {
  try {
    await program().parseAsync(argv)
  } catch (err) {
    if (err instanceof CommanderError) {
      process.exit(err.exitCode === 0 ? 0 : 2)
    }
    const msg = err instanceof UsageError || err instanceof FsError ? err.message : (err as Error).message ?? String(err)
    console.error(`bslfs: ${msg}`)
    if (process.env.DEBUG && err instanceof Error) console.error(err.stack)
    process.exit(1)
  }
}

if (require.main === module) void main()
