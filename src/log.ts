/**
 * Event logging: one line per event on stderr, `TIME LEVEL NAMESPACE message`, which journald
 * keeps under systemd and STATE/daemon.log keeps for a background mount. The `debug` lines
 * (DEBUG=bslfs:*) take the same form, with level DEBUG, so one log reads as one stream.
 */
import createDebug from 'debug'
import { InspectOptions, formatWithOptions } from 'node:util'

export type Level = 'ERROR' | 'WARN' | 'INFO' | 'DEBUG'

export interface Logger {
  error (format: string, ...args: unknown[]): void
  warn (format: string, ...args: unknown[]): void
  info (format: string, ...args: unknown[]): void
  /** The `debug` namespace of the same name: printed only when DEBUG names it. */
  debug: createDebug.Debugger
}

/** One event as one line: a message's own line breaks (a stack) are folded into it. */
export function logLine (level: Level, namespace: string, message: string): string {
  return `${new Date().toISOString()} ${level} ${namespace} ${message.trimEnd().replace(/\n\s*/g, ' | ')}\n`
}

// debug prints "TIME NAMESPACE message" when stderr is not a terminal; put the level in as well.
const debugFormat = createDebug.formatArgs
createDebug.formatArgs = function (this: createDebug.Debugger & { useColors?: boolean }, args: unknown[]) {
  if (this.useColors === true) return debugFormat.call(this, args)
  args[0] = `${new Date().toISOString()} DEBUG ${this.namespace} ${String(args[0])}`
}
createDebug.log = (...args: unknown[]) => {
  process.stderr.write(formatWithOptions((createDebug.inspectOpts ?? {}) as InspectOptions, ...args).replace(/\n\s*/g, ' | ') + '\n')
}

/** An ERROR or WARN event kept for `bslfs status` (the last few, with their times). */
export interface RecentEvent { time: string, level: Level, namespace: string, message: string }
const RECENT_EVENTS = 20
const recent: RecentEvent[] = []

/** The last ERROR and WARN events of this process, oldest first. */
export function recentEvents (): RecentEvent[] {
  return recent.slice()
}

export function logger (namespace: string): Logger {
  const write = (level: Level) => (format: string, ...args: unknown[]) => {
    const message = formatWithOptions({ colors: false }, format, ...args)
    process.stderr.write(logLine(level, namespace, message))
    if (level === 'ERROR' || level === 'WARN') {
      recent.push({ time: new Date().toISOString(), level, namespace, message: message.slice(0, 500) })
      if (recent.length > RECENT_EVENTS) recent.shift()
    }
  }
  return { error: write('ERROR'), warn: write('WARN'), info: write('INFO'), debug: createDebug(namespace) }
}
