import { spawn } from 'node:child_process'
import { closeSync, createWriteStream, openSync, promises as fsp } from 'node:fs'
import { resolve } from 'node:path'
import { UsageError } from '../errors'
import { runDaemon } from '../daemon/daemon'
import { readMarker, statePaths } from '../daemon/state'
import { parseMountOptions } from '../fs/mount'

/**
 * `bslfs mount`: in the foreground it is the daemon; in the background (the
 * default) it starts the daemon detached and waits for it to say the mount
 * answers, or why it could not mount.
 */
export async function mountCommand (state: string, mountpoint: string, opts: { foreground?: boolean, options?: string, readyFd?: string }): Promise<void> {
  const options = parseMountOptions(opts.options) // refuse bad options before anything starts
  if (opts.foreground || opts.readyFd) {
    const ready = opts.readyFd ? createWriteStream('', { fd: Number(opts.readyFd) }) : null
    let daemon
    try {
      daemon = await runDaemon(state, mountpoint, options)
    } catch (err) {
      if (ready) ready.end(`error ${(err as Error).message}\n`)
      throw err
    }
    if (ready) ready.end('ok\n')
    else console.log(`bslfs: ${resolve(state)} mounted at ${resolve(mountpoint)} (pid ${process.pid})`)
    await daemon.done
    process.exit(0)
  }
  await readMarker(state) // a missing or wrong STATE is reported here, not in a log file
  const p = statePaths(state)
  const logFd = openSync(p.log, 'a')
  const args = [process.argv[1], 'mount', p.root, resolve(mountpoint), '--ready-fd', '3']
  if (opts.options) args.push('-o', opts.options)
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
  if (answer.startsWith('error ')) throw new UsageError(answer.slice(6).trim())
  const tail = (await fsp.readFile(p.log, 'utf8').catch(() => '')).trim().split('\n').slice(-3).join(' | ')
  throw new UsageError(`the mount daemon exited before the mount came up: ${tail || 'no output'} (see ${p.log})`)
}
