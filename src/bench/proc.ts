/**
 * Child processes for the benchmark: a promise around spawn that remembers the
 * running children, so Ctrl-C can stop them and let the benchmark clean up.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { readFile } from 'node:fs/promises'

const running = new Set<ChildProcess>()
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
    })
  }
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
