/**
 * Child processes for the benchmark: a promise around spawn that remembers the
 * running children, so Ctrl-C can stop them and let the benchmark clean up.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { createServer } from 'node:net'

const running = new Set<ChildProcess>()
/** Called once on the first stop signal (a background child still starting up gives up waiting). */
const onStop = new Set<(sig: NodeJS.Signals) => void>()
let stopSignal: NodeJS.Signals | null = null
let cleaningUp = false

/** Why the benchmark was stopped, or null while it runs. */
export function stoppedBy (): NodeJS.Signals | null { return stopSignal }

/** On SIGINT/SIGTERM/SIGHUP: stop the running children; the step waiting on them then fails and cleanup runs. */
export function trapSignals (): void {
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      if (stopSignal) return
      stopSignal = sig
      console.error(`\nbench: ${sig}: stopping, then cleaning up`)
      for (const child of running) child.kill('SIGTERM')
      for (const f of onStop) f(sig)
    })
  }
}

/** Stop the running children, as a signal would, without stopping the benchmark: the step waiting on them fails. */
export function killRunning (): void {
  for (const child of running) child.kill('SIGTERM')
}

/** From here on, commands run even after a signal (unmounting must still happen). */
export function startCleanup (): void { cleaningUp = true }

export interface RunResult { stdout: string, stderr: string }

/** Run a command to completion; rejects on a non-zero exit with its stderr. */
export function run (cmd: string, args: string[]): Promise<RunResult> {
  if (stopSignal && !cleaningUp) return Promise.reject(new Error(`stopped by ${stopSignal}`))
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    running.add(child)
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (s: string) => { stdout += s })
    child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s })
    child.on('error', err => { running.delete(child); reject(err) })
    child.on('close', (code, signal) => {
      running.delete(child)
      if (code === 0) return resolve({ stdout, stderr })
      const how = signal ? `signal ${signal}` : `exit ${code}`
      reject(new Error(`${cmd} ${args.join(' ')}: ${how}${stderr.trim() ? '\n' + stderr.trim() : ''}`))
    })
  })
}

/** The tail of a child's output that is kept for error messages. */
const KEEP_OUTPUT = 64 * 1024
const keepTail = (text: string): string => text.length > KEEP_OUTPUT ? text.slice(-KEEP_OUTPUT) : text

export interface Exit { code: number | null, signal: NodeJS.Signals | null }

/** A long-running child (the block server): started by startBackground, stopped by its stop(). */
export interface Background {
  pid: number
  /** The start line it printed. */
  readyLine: string
  stdout: () => string
  stderr: () => string
  /** How it exited, or null while it runs. */
  exit: () => Exit | null
  /** SIGTERM; SIGKILL when it has not exited after graceMs. Resolves with how it exited. */
  stop: (graceMs: number) => Promise<Exit>
  /** Leave it running when the benchmark exits (something still depends on it). */
  disown: () => void
}

export const describeExit = (e: Exit): string => e.signal ? `signal ${e.signal}` : `exit ${e.code}`

/**
 * Start a long-running command and wait until a line of its stdout matches
 * `ready`. It gets its own process group, so a Ctrl-C at the terminal does not
 * reach it: the benchmark stops it itself, in order, during cleanup. It is
 * killed when the benchmark exits without having stopped it (unless disowned).
 */
export async function startBackground (cmd: string, args: string[], ready: RegExp, timeoutMs: number): Promise<Background> {
  if (stopSignal && !cleaningUp) throw new Error(`stopped by ${stopSignal}`)
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true })
  let stdout = ''
  let stderr = ''
  let exit: Exit | null = null
  let spawnError: Error | null = null
  child.stdout.setEncoding('utf8').on('data', (s: string) => { stdout = keepTail(stdout + s) })
  child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr = keepTail(stderr + s) })
  const exited = new Promise<Exit>(resolve => {
    child.on('error', err => { spawnError = err; exit = { code: null, signal: null }; resolve(exit) })
    child.on('exit', (code, signal) => { exit = { code, signal }; resolve(exit) })
  })
  const killAtExit = (): void => {
    if (exit !== null || child.pid === undefined) return
    try {
      process.kill(child.pid, 'SIGKILL')
    } catch {}
  }
  process.on('exit', killAtExit)
  void exited.then(() => process.off('exit', killAtExit))

  const stop = async (graceMs: number): Promise<Exit> => {
    if (exit === null) child.kill('SIGTERM')
    let timer: NodeJS.Timeout | undefined
    const killed = new Promise<void>(resolve => {
      timer = setTimeout(() => {
        if (exit === null) {
          console.error(`bench: ${cmd} ${args[0] ?? ''} (pid ${child.pid}) still running ${graceMs / 1000} s after SIGTERM: SIGKILL`)
          child.kill('SIGKILL')
        }
        resolve()
      }, graceMs)
    })
    const e = await Promise.race([exited, killed.then(async () => await exited)])
    clearTimeout(timer)
    return e
  }
  const what = `${cmd} ${args.join(' ')}`
  const output = (): string => `${stdout.trim() ? `\nstdout: ${stdout.trim()}` : ''}${stderr.trim() ? `\nstderr: ${stderr.trim()}` : ''}`

  let onSignal: ((sig: NodeJS.Signals) => void) | undefined
  let timer: NodeJS.Timeout | undefined
  let onData: (() => void) | undefined
  try {
    const readyLine = await new Promise<string>((resolve, reject) => {
      onData = () => {
        const lines = stdout.split('\n')
        lines.pop() // not a whole line yet
        const line = lines.find(l => ready.test(l))
        if (line !== undefined) resolve(line)
      }
      child.stdout.on('data', onData)
      void exited.then(e => reject(new Error(`${what}: ${spawnError ? spawnError.message : `${describeExit(e)} before it was ready`}${output()}`)))
      timer = setTimeout(() => reject(new Error(`${what}: not ready after ${timeoutMs / 1000} s${output()}`)), timeoutMs)
      onSignal = sig => reject(new Error(`stopped by ${sig}`))
      onStop.add(onSignal)
    })
    if (child.pid === undefined) throw new Error(`${what}: no pid`)
    return {
      pid: child.pid,
      readyLine,
      stdout: () => stdout,
      stderr: () => stderr,
      exit: () => exit,
      stop,
      disown: () => { process.off('exit', killAtExit) }
    }
  } catch (err) {
    await stop(10_000)
    throw err
  } finally {
    clearTimeout(timer)
    if (onSignal) onStop.delete(onSignal)
    if (onData) child.stdout.off('data', onData)
  }
}

/** A TCP port that was free on HOST a moment ago: bind port 0, note the port, release it. */
export async function freePort (host: string): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once('error', reject)
    srv.listen(0, host, () => {
      const addr = srv.address()
      srv.close(() => typeof addr === 'object' && addr !== null ? resolve(addr.port) : reject(new Error(`no port from ${host}:0`)))
    })
  })
}

/** Whether a process with this pid exists. */
export function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** A process's peak resident set size in KiB (VmHWM in /proc/PID/status), or undefined when it is gone. */
export async function peakRssKiB (pid: number): Promise<number | undefined> {
  try {
    const m = /^VmHWM:\s+(\d+) kB/m.exec(await readFile(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) : undefined
  } catch {
    return undefined
  }
}

/**
 * The CPU seconds (user + system) a process has used so far, or undefined when it is gone.
 * CPU time, unlike wall time, hardly moves with what else the machine runs: it shows what a
 * change costs (metrics on against off, say) on a machine too busy for wall-clock ratios.
 */
export async function cpuSeconds (pid: number): Promise<number | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
    // Fields after the command name (which may hold spaces, in parentheses): utime and stime are the 12th and 13th.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    const ticks = Number(fields[11]) + Number(fields[12])
    return Number.isFinite(ticks) ? ticks / CLOCK_TICKS : undefined
  } catch {
    return undefined
  }
}

/** sysconf(_SC_CLK_TCK): 100 on every Linux architecture Node runs on. */
const CLOCK_TICKS = 100

/** Flush dirty data and drop the page, dentry and inode caches. */
export async function dropCaches (): Promise<void> {
  await run('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches'])
}

/** The /proc/mounts line of a mount point, or undefined when nothing is mounted there. */
export async function mountLine (mountpoint: string): Promise<string | undefined> {
  const lines = (await readFile('/proc/mounts', 'utf8')).split('\n')
  return lines.find(l => l.split(' ')[1] === mountpoint)
}

export const sleep = (ms: number): Promise<void> => new Promise(resolve => setTimeout(resolve, ms))

/** Seconds a step took, with its result. */
export async function timed<T> (fn: () => Promise<T>): Promise<{ secs: number, result: T }> {
  const t0 = process.hrtime.bigint()
  const result = await fn()
  return { secs: Number(process.hrtime.bigint() - t0) / 1e9, result }
}

/**
 * What to undo, in reverse order of set-up: each step is added just before the
 * thing it undoes is done, so a set-up that fails half-way is undone as far as
 * it got. Every step runs even when an earlier one failed.
 */
export class Teardown {
  private readonly steps: Array<{ what: string, fn: () => Promise<boolean | undefined | void> }> = []

  /** fn resolves with false (or throws) when it left something behind. */
  add (what: string, fn: () => Promise<boolean | undefined | void>): void { this.steps.push({ what, fn }) }

  /** Run and forget every step, last added first; resolves with false when one of them failed. */
  async run (): Promise<boolean> {
    let ok = true
    for (let step = this.steps.pop(); step !== undefined; step = this.steps.pop()) {
      try {
        if (await step.fn() === false) ok = false
      } catch (err) {
        console.error(`bench: ${step.what}: ${(err as Error).message}`)
        ok = false
      }
    }
    return ok
  }
}

/** How often a strict unmount is tried, a second apart, while the mount is busy. */
const STRICT_UNMOUNT_TRIES = 5

/**
 * Unmount a FUSE mount: the strict command, retried while busy, then each
 * fallback in turn (lazy ones). Resolves with whether it is gone.
 */
export async function unmount (mnt: string, strict: string[], fallbacks: string[][]): Promise<boolean> {
  const n = STRICT_UNMOUNT_TRIES
  const tries = [...Array<string[]>(n).fill(strict), ...fallbacks]
  const quote = (cmd: string[]): string => `\`${cmd.join(' ')}\``
  for (const [i, [cmd, ...args]] of tries.entries()) {
    if (!await mountLine(mnt)) return true
    if (i === n) console.error(`bench: ${mnt} is still mounted after ${n} tries of ${quote(strict)}; trying ${fallbacks.map(quote).join(', then ')}`)
    try { await run(cmd, args) } catch (err) { if (i >= n - 1) console.error(`bench: ${(err as Error).message}`) }
    if (i < n - 1 && await mountLine(mnt)) await sleep(1000)
  }
  if (!await mountLine(mnt)) return true
  console.error(`bench: ${mnt} is still mounted after ${[strict, ...fallbacks].map(quote).join(', ')}`)
  return false
}

/** Wait up to ms for a process to exit; SIGKILL it after that. Resolves with whether it exited by itself. */
export async function waitExit (pid: number, ms: number, what: string, after: string): Promise<boolean> {
  const deadline = Date.now() + ms
  while (alive(pid) && Date.now() < deadline) await sleep(200)
  if (!alive(pid)) return true
  console.error(`bench: ${what} (pid ${pid}) is still running ${ms / 1000} s after ${after}; killing it (SIGKILL)`)
  try { process.kill(pid, 'SIGKILL') } catch {}
  return false
}
