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
  readTokenFiles, serverName
} from './config'
import { MAX_BLOCK_BYTES } from '../limits'
import { BlockServer } from './server'
import { ServerTlsFiles, loadServerTls } from './tls'
import { packageVersion } from '../version'

const events = logger('bslfs:server')
const log = events.debug

export interface ServeOptions {
  listen: string
  device?: string[]
  tokenFile?: string[]
  tokenOut?: string
  tlsCert?: string
  tlsKey?: string
  clientCa?: string
  insecurePlaintext?: boolean
  handshakeTimeout: string
  name?: string
  maxObjectBytes: string
  maxBufferedBytes: string
  headersTimeout: string
  requestTimeout: string
  idleTimeout: string
  maxConnections: string
  metricsOpen?: boolean
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
    .option('--token-file <FILE>', 'the tokens clients may send, one a line (mode 0600); repeatable; required unless listening on loopback',
      (v: string, prev: string[] | undefined) => [...(prev ?? []), v])
    .option('--token-out <FILE>', `without --token-file: where the loopback token is kept (default: ${GENERATED_TOKEN_NAME} in the first device)`)
    .option('--tls-cert <FILE>', 'speak TLS (HTTPS) with this PEM certificate (chain); SIGHUP reloads it')
    .option('--tls-key <FILE>', "the certificate's PEM private key (mode 0600)")
    .option('--client-ca <FILE>', 'mutual TLS: clients must also present a certificate signed by this CA (the token is still required)')
    .option('--insecure-plaintext', 'allow plain HTTP on an address other hosts can reach (blocks and token travel in clear)')
    .option('--handshake-timeout <SECONDS>', 'time a client has to finish its TLS handshake', '10')
    .option('--name <NAME>', "this server's name (default: the host's short name)")
    .option('--max-object-bytes <BYTES>', 'largest object a client may put', String(MAX_BLOCK_BYTES))
    .option('--max-buffered-bytes <BYTES>', 'object bytes held in memory at once; requests beyond it wait', String(512 * 1024 * 1024))
    .option('--headers-timeout <SECONDS>', "time for a request's headers to arrive", '30')
    .option('--request-timeout <SECONDS>', 'time for a whole request (headers and body) to arrive', '60')
    .option('--idle-timeout <SECONDS>', 'close a connection with no traffic for this long', '60')
    .option('--max-connections <N>', 'connections open at once; more are closed as they arrive', '1024')
    .option('--metrics-open', 'answer GET /metrics (Prometheus) without the token; every other route still needs it')
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
  const handshakeTimeoutMs = parseSeconds('--handshake-timeout', o.handshakeTimeout)
  const tlsFiles = tlsFilesOf(o)
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
  const where = formatAddress(addr.host, addr.port)
  if (tlsFiles === undefined && !isLoopback(addr.host) && o.insecurePlaintext !== true) {
    throw new UsageError(`refusing to listen on ${where} in plain HTTP: anyone on the network path could read the blocks and the token, ` +
      'then write and delete. Give --tls-cert FILE --tls-key FILE (README: "Block servers across a network"), ' +
      'or --insecure-plaintext on a network you trust')
  }
  if (tlsFiles === undefined && !isLoopback(addr.host)) {
    events.warn('warning: plain HTTP on %s (--insecure-plaintext): the blocks and the token cross the network in clear', where)
  }
  const tls = tlsFiles !== undefined ? await loadServerTls(tlsFiles) : undefined

  let tokens: string[]
  let tokenFiles: string[]
  let tokenNote = ''
  if (o.tokenFile !== undefined) {
    tokenFiles = o.tokenFile.map(f => resolve(f))
    const r = await readTokenFiles(tokenFiles)
    for (const w of r.warnings) events.warn('%s', w)
    tokens = r.tokens
  }

  const devices = new Map<string, Device>()
  try {
    for (const spec of specs) devices.set(spec.name, await openDevice(spec, name))
    if (o.tokenFile === undefined) {
      tokenFiles = [resolve(o.tokenOut ?? join(specs[0].path, GENERATED_TOKEN_NAME))]
      const r = await loopbackToken(tokenFiles[0])
      tokens = [r.token]
      tokenNote = r.generated ? ' (new; loopback only)' : ' (loopback only)'
    }
  } catch (err) {
    for (const d of devices.values()) await d.close().catch(() => {})
    throw err
  }

  const server = new BlockServer({
    name,
    devices,
    tokens: tokens!,
    ...(tls !== undefined ? { tls } : {}),
    handshakeTimeoutMs,
    maxObjectBytes,
    maxBufferedBytes,
    headersTimeoutMs,
    requestTimeoutMs,
    idleTimeoutMs,
    keepAliveTimeoutMs: 5000,
    maxConnections,
    metricsOpen: o.metricsOpen === true
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
  const onHangup = reloader(server, tokenFiles!, tlsFiles)
  process.on('SIGHUP', onHangup)

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
  const listening = `listening on ${formatAddress(bound.address, bound.port)}, devices ${list}, token from ${tokenFiles!.join(', ')}${tokenNote}`
  console.log(`bslfs serve: ${listening}`)
  events.info('bslfs %s server %s %s (pid %d)', packageVersion(), name, listening, process.pid)
  if (tlsFiles !== undefined) {
    console.log(`bslfs serve: TLS with certificate ${tlsFiles.certFile}, key ${tlsFiles.keyFile}` +
      (tlsFiles.clientCaFile !== undefined ? `; clients need a certificate signed by ${tlsFiles.clientCaFile} and the token` : ''))
  }
  log('server %s, max object %d bytes, buffered %d bytes, timeouts headers %d ms, request %d ms, idle %d ms',
    name, maxObjectBytes, maxBufferedBytes, headersTimeoutMs, requestTimeoutMs, idleTimeoutMs)

  const clean = await stopped
  stoppedCleanup()
  process.off('SIGHUP', onHangup)
  process.off('uncaughtException', onUncaught)
  process.off('unhandledRejection', onUncaught)
  if (clean) events.info('stopped')
  else events.warn('stopped (some requests were cut off)')
  return 0
}

/** The TLS files of the options, resolved; undefined for plain HTTP. Half a pair, or a client CA without TLS, is refused. */
function tlsFilesOf (o: ServeOptions): ServerTlsFiles | undefined {
  if (o.tlsCert === undefined && o.tlsKey === undefined) {
    if (o.clientCa !== undefined) throw new UsageError('--client-ca needs TLS: give --tls-cert FILE --tls-key FILE as well')
    return undefined
  }
  if (o.tlsCert === undefined || o.tlsKey === undefined) throw new UsageError('TLS needs both --tls-cert FILE and --tls-key FILE')
  if (o.insecurePlaintext === true) throw new UsageError('--insecure-plaintext and --tls-cert contradict each other: give one of them')
  return {
    certFile: resolve(o.tlsCert),
    keyFile: resolve(o.tlsKey),
    ...(o.clientCa !== undefined ? { clientCaFile: resolve(o.clientCa) } : {})
  }
}

/**
 * SIGHUP: the token files and the TLS files read again. What cannot be used
 * (a missing file, a key that does not match, an expired certificate) is
 * refused with a line saying why, and the server keeps what it had.
 * Connections open keep the certificate they started with.
 */
function reloader (server: BlockServer, tokenFiles: readonly string[], tlsFiles: ServerTlsFiles | undefined): () => void {
  let running: Promise<void> = Promise.resolve()
  const reload = async (): Promise<void> => {
    try {
      const r = await readTokenFiles(tokenFiles)
      for (const w of r.warnings) events.warn('%s', w)
      server.setTokens(r.tokens)
      events.info('SIGHUP: %d token(s) from %s', r.tokens.length, tokenFiles.join(', '))
    } catch (err) {
      events.error('SIGHUP: keeping the tokens in use: %s', (err as Error).message)
    }
    if (tlsFiles === undefined) return
    try {
      server.setTls(await loadServerTls(tlsFiles))
      events.info('SIGHUP: new connections use the certificate in %s', tlsFiles.certFile)
    } catch (err) {
      events.error('SIGHUP: keeping the certificate in use: %s', (err as Error).message)
    }
  }
  return () => {
    running = running.then(reload)
  }
}
