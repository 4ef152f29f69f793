import { spawn } from 'node:child_process'
import { closeSync, createWriteStream, openSync, promises as fsp } from 'node:fs'
import { resolve } from 'node:path'
import { UsageError } from '../errors'
import { runDaemon } from '../daemon/daemon'
import { fsNameText, parseFsName, runtimePaths } from '../daemon/location'
import { checkPasswordFile, readMarker } from '../daemon/state'
import { parseMountOptions } from '../fs/mount'
import { liveMountOf, mountSecond } from './second-mount'

/**
 * `password_file=FILE` in -o (what an fstab line can carry) is this
 * command's --password-file, not a mount option: taken out here.
 */
function takePasswordFile (options: string | undefined): { options: string | undefined, passwordFile?: string } {
  if (!options) return { options }
  let passwordFile: string | undefined
  const rest = options.split(',').filter(o => {
    if (!o.trim().startsWith('password_file=')) return true
    passwordFile = o.trim().slice('password_file='.length)
    return false
  })
  return { options: rest.join(','), passwordFile }
}

/**
 * `bslfs mount`: in the foreground it is the daemon; in the background (the
 * default) it starts the daemon detached and waits for it to say the mount
 * answers, or why it could not mount.
 */
export async function mountCommand (nameArg: string, mountpoint: string, opts: { foreground?: boolean, options?: string, readyFd?: string, passwordFile?: string }): Promise<void> {
  const taken = takePasswordFile(opts.options)
  if (taken.passwordFile !== undefined && opts.passwordFile !== undefined && resolve(taken.passwordFile) !== opts.passwordFile) {
    throw new UsageError('two password files given (--password-file and -o password_file=): give one')
  }
  const passwordFile = opts.passwordFile ?? (taken.passwordFile === undefined ? undefined : resolve(taken.passwordFile))
  const options = parseMountOptions(taken.options) // refuse bad options before anything starts
  const name = parseFsName(nameArg)
  checkPasswordFile(name, passwordFile)
  // A STATE has one daemon: mounted already, it is shown here too (the daemon itself never is one).
  const first = name.kind === 'state' && !opts.readyFd ? await liveMountOf(name) : undefined
  if (first) {
    await mountSecond(name, first, mountpoint, taken.options, options)
    if (opts.foreground) console.log(`bslfs: ${fsNameText(name)} (mounted at ${first.mountpoint}) mounted at ${resolve(mountpoint)} too`)
    return
  }
  if (opts.foreground || opts.readyFd) {
    const ready = opts.readyFd ? createWriteStream('', { fd: Number(opts.readyFd) }) : null
    let daemon
    try {
      daemon = await runDaemon(nameArg, mountpoint, options, { passwordFile })
    } catch (err) {
      if (ready) ready.end(`error ${(err as Error).message}\n`)
      throw err
    }
    if (ready) ready.end('ok\n')
    else console.log(`bslfs: ${fsNameText(name)} mounted at ${resolve(mountpoint)} (pid ${process.pid})`)
    await daemon.done
    process.exit(0)
  }
  if (name.kind === 'state') await readMarker(name.root) // a missing or wrong STATE is reported here, not in a log file
  const p = runtimePaths(name, resolve(mountpoint))
  // A URL's runtime dir made here for a mount that is refused goes again: bad input leaves nothing behind.
  const madeDir = name.kind === 'postgres' && (await fsp.mkdir(p.dir, { recursive: true, mode: 0o700 })) !== undefined
  const logFd = openSync(p.log, 'a', 0o600)
  // The password file's path goes on the daemon's command line; the password never does.
  const args = [process.argv[1], 'mount', fsNameText(name), resolve(mountpoint), '--ready-fd', '3']
  if (taken.options) args.push('-o', taken.options)
  if (passwordFile !== undefined) args.push('--password-file', passwordFile)
  // The daemon runs with this command's node flags (bin/bslfs's shebang sets them).
  const child = spawn(process.execPath, [...process.execArgv, ...args], { detached: true, stdio: ['ignore', logFd, logFd, 'pipe'], env: process.env })
  closeSync(logFd)
  const answer = await new Promise<string>((resolve) => {
    let text = ''
    const pipe = child.stdio[3] as NodeJS.ReadableStream
    pipe.setEncoding('utf8')
    pipe.on('data', (c: string) => { text += c })
    pipe.on('end', () => resolve(text))
    child.on('exit', () => setTimeout(() => resolve(text), 100))
  })
  if (answer.startsWith('ok')) {
    child.unref()
    ;(child.stdio[3] as unknown as { destroy(): void }).destroy()
    return
  }
  if (answer.startsWith('error ')) {
    if (madeDir) await fsp.rm(p.dir, { recursive: true, force: true })
    throw new UsageError(answer.slice(6).trim())
  }
  const tail = (await fsp.readFile(p.log, 'utf8').catch(() => '')).trim().split('\n').slice(-3).join(' | ')
  throw new UsageError(`the mount daemon exited before the mount came up: ${tail || 'no output'} (see ${p.log})`)
}
