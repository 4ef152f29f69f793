/**
 * `bslfs serve`: options, start-up checks, and the life of the server
 * process (start line, SIGTERM, exit). Shared by the bslfs CLI
 * (src/cli/serve-command.ts) and the stand-alone entry (./main.ts).
 */
import { Command } from 'commander'
import { join, resolve } from 'node:path'
import { logger } from '../log'
import type { Device } from '../devices/device'
import { returnFreedBuffers } from '../devices/object-io'
import { UsageError } from '../errors'
import {
  formatAddress, isLoopback, loopbackToken, openDevice, parseCount, parseDeviceSpecs, parseListen, parseSeconds,
  readTokenFile, serverName
} from './config'
import { MAX_BLOCK_BYTES } from '../limits'
import { BlockServer } from './server'
import { packageVersion } from '../version'

const events = logger('bslfs:server')
const log = events.debug

export interface ServeOptions {
  listen: string
  device?: string[]
  tokenFile?: string
  tokenOut?: string
  name?: string
  maxObjectBytes: string
  maxBufferedBytes: string
  headersTimeout: string
  requestTimeout: string
  idleTimeout: string
  maxConnections: string
}

/** The token file a loopback server writes when no --token-file is given. */
export const GENERATED_TOKEN_NAME = 'serve-token'

/** Adds the serve options and action to `cmd` (a `serve` subcommand, or a program of its own). */
export function configureServeCommand (cmd: Command): Command {
  return cmd
    .description('serve local devices to other hosts over HTTP (the block server)')
    .requiredOption('--listen <HOST:PORT>', 'address to listen on, e.g. 0.0.0.0:7070 or 127.0.0.1:7070 (port 0: any free port)')
    .option('--device <NAME=PATH>', 'a device to serve: a directory (created when missing or empty); repeatable',
      (v: string, prev: string[] | undefined) => [...(prev ?? []), v])
    .option('--token-file <FILE>', 'the shared token clients must send (mode 0600); required unless listening on loopback')
    .option('--token-out <FILE>', `without --token-file: where the loopback token is kept (default: ${GENERATED_TOKEN_NAME} in the first device)`)
    .option('--name <NAME>', "this server's name (default: the host's short name)")
    .option('--max-object-bytes <BYTES>', 'largest object a client may put', String(MAX_BLOCK_BYTES))
    .option('--max-buffered-bytes <BYTES>', 'object bytes held in memory at once; requests beyond it wait', String(512 * 1024 * 1024))
    .option('--headers-timeout <SECONDS>', "time for a request's headers to arrive", '30')
    .option('--request-timeout <SECONDS>', 'time for a whole request (headers and body) to arrive', '60')
    .option('--idle-timeout <SECONDS>', 'close a connection with no traffic for this long', '60')
    .option('--max-connections <N>', 'connections open at once; more are closed as they arrive', '1024')
    .action(async (o: ServeOptions) => {
      process.exitCode = await runServe(o)
      // Stopped: a signal sent while the process winds down (a supervisor asking again) must
      // not turn a clean exit into death by signal.
      const exiting = (sig: NodeJS.Signals): void => { events.info('%s: already stopped, exiting', sig) }
      process.on('SIGTERM', exiting)
      process.on('SIGINT', exiting)
      // Should anything still hold the event loop open after a stop, do not hang around for it.
      setTimeout(() => process.exit(), 2000).unref()
    })
}

/** Runs the server until SIGTERM or SIGINT; resolves with the exit code. Start-up problems throw UsageError. */
export async function runServe (o: ServeOptions): Promise<number> {
  // Signals are caught from the start: one that arrives while the devices are being
  // opened stops the server as soon as it is up (and before it accepts anything).
  let early: NodeJS.Signals | null = null
  const onEarly = (sig: NodeJS.Signals): void => { early = sig }
  process.on('SIGTERM', onEarly)
  process.on('SIGINT', onEarly)
  try {
    return await serve(o, () => early)
  } finally {
    process.off('SIGTERM', onEarly)
    process.off('SIGINT', onEarly)
  }
}

async function serve (o: ServeOptions, earlySignal: () => NodeJS.Signals | null): Promise<number> {
  returnFreedBuffers()
  const addr = parseListen(o.listen)
  const specs = parseDeviceSpecs(o.device ?? [])
  const name = serverName(o.name)
  const maxObjectBytes = parseCount('--max-object-bytes', o.maxObjectBytes, 1, 2 ** 31 - 1)
  const maxBufferedBytes = parseCount('--max-buffered-bytes', o.maxBufferedBytes, 1, Number.MAX_SAFE_INTEGER)
  const headersTimeoutMs = parseSeconds('--headers-timeout', o.headersTimeout)
  const requestTimeoutMs = parseSeconds('--request-timeout', o.requestTimeout)
  const idleTimeoutMs = parseSeconds('--idle-timeout', o.idleTimeout)
  const maxConnections = parseCount('--max-connections', o.maxConnections, 1, 1_000_000)
  if (headersTimeoutMs > requestTimeoutMs) {
    throw new UsageError('--headers-timeout must not be longer than --request-timeout')
  }
  if (o.tokenFile !== undefined && o.tokenOut !== undefined) {
    throw new UsageError('--token-out is only for a loopback server without --token-file')
  }
  if (o.tokenFile === undefined && !isLoopback(addr.host)) {
    throw new UsageError(`refusing to listen on ${formatAddress(addr.host, addr.port)} without --token-file: ` +
      'anyone who can reach it could read, write and delete the devices. Make a token with ' +
      '`(umask 077; head -c 32 /dev/urandom | base64 > /etc/bslfs/token)` and pass --token-file /etc/bslfs/token ' +
      '(clients get the same file), or listen on 127.0.0.1 only')
  }

  let token: string
  let tokenFile: string
  let tokenNote = ''
  if (o.tokenFile !== undefined) {
    tokenFile = resolve(o.tokenFile)
    const r = await readTokenFile(tokenFile)
    if (r.warning) events.warn('%s', r.warning)
    token = r.token
  }

  const devices = new Map<string, Device>()
  try {
    for (const spec of specs) devices.set(spec.name, await openDevice(spec, name))
    if (o.tokenFile === undefined) {
      tokenFile = resolve(o.tokenOut ?? join(specs[0].path, GENERATED_TOKEN_NAME))
      const r = await loopbackToken(tokenFile)
      token = r.token
      tokenNote = r.generated ? ' (new; loopback only)' : ' (loopback only)'
    }
  } catch (err) {
    for (const d of devices.values()) await d.close().catch(() => {})
    throw err
  }

  const server = new BlockServer({
    name,
    devices,
    token: token!,
    maxObjectBytes,
    maxBufferedBytes,
    headersTimeoutMs,
    requestTimeoutMs,
    idleTimeoutMs,
    keepAliveTimeoutMs: 5000,
    maxConnections
  })
  let bound
  try {
    bound = await server.listen(addr.host, addr.port)
  } catch (err) {
    await server.stop(0)
    throw new UsageError((err as Error).message)
  }

  // Per-request errors are all caught; this only keeps a bug elsewhere from taking every client down with it.
  const onUncaught = (err: unknown): void => {
    events.error('internal error (still serving): %s', (err as Error)?.stack ?? String(err))
  }
  process.on('uncaughtException', onUncaught)
  process.on('unhandledRejection', onUncaught)

  let stoppedCleanup = (): void => {}
  const stopped = new Promise<boolean>((resolve) => {
    let signals = 0
    const onSignal = (sig: NodeJS.Signals): void => {
      signals++
      if (signals === 1) {
        events.info('%s: no longer accepting connections; finishing %d request(s) in flight', sig, server.inFlight)
        server.stop(requestTimeoutMs + 10_000).then(resolve, (err: Error) => {
          events.error('stopping failed: %s', err.message)
          resolve(false)
        })
      } else {
        events.warn('%s again: cutting off %d request(s)', sig, server.inFlight)
        server.forceStop()
      }
    }
    process.on('SIGTERM', onSignal)
    process.on('SIGINT', onSignal)
    const sig = earlySignal()
    if (sig !== null) onSignal(sig)
    stoppedCleanup = () => {
      process.off('SIGTERM', onSignal)
      process.off('SIGINT', onSignal)
    }
  })
  const list = specs.map(s => `${s.name}=${s.path}`).join(', ')
  // The start line on stdout is what scripts and tests wait for; the event goes to the log.
  const where = `listening on ${formatAddress(bound.address, bound.port)}, devices ${list}, token from ${tokenFile!}${tokenNote}`
  console.log(`bslfs serve: ${where}`)
  events.info('bslfs %s server %s %s (pid %d)', packageVersion(), name, where, process.pid)
  log('server %s, max object %d bytes, buffered %d bytes, timeouts headers %d ms, request %d ms, idle %d ms',
    name, maxObjectBytes, maxBufferedBytes, headersTimeoutMs, requestTimeoutMs, idleTimeoutMs)

  const clean = await stopped
  stoppedCleanup()
  process.off('uncaughtException', onUncaught)
  process.off('unhandledRejection', onUncaught)
  if (clean) events.info('stopped')
  else events.warn('stopped (some requests were cut off)')
  return 0
}
