import createDebug from 'debug'
import { createConnection, createServer, Server, Socket } from 'node:net'
import { UsageError } from '../errors'

const log = createDebug('bslfs:control')

/**
 * The control socket of a running mount (STATE/control.sock): one JSON
 * request per line, one JSON answer per line. Only root can reach it (the
 * socket is mode 0600).
 */
export interface ControlRequest { cmd: string, args: string[], options?: Record<string, unknown> }
export type ControlAnswer = { ok: true, result: unknown } | { ok: false, error: string, code?: string }

const MAX_REQUEST = 64 * 1024

/** Progress of a long command, sent to the client as `{"progress": …}` lines before the answer. */
export type ControlProgress = (progress: unknown) => void
/** `signal` aborts when the client goes away before its answer (Ctrl-C on a long command). */
export type ControlHandler = (req: ControlRequest, progress: ControlProgress, signal: AbortSignal) => Promise<unknown>

/** At most this often a progress line goes out (the client draws a bar). */
const PROGRESS_EVERY_MS = 200

export function serveControl (path: string, handler: ControlHandler): Promise<Server> {
  const server = createServer(socket => {
    let buf = ''
    socket.setEncoding('utf8')
    socket.on('error', err => log('control client: %s', err.message))
    socket.on('data', chunk => {
      buf += chunk
      if (buf.length > MAX_REQUEST) {
        socket.end(JSON.stringify({ ok: false, error: 'request too large' }) + '\n')
        return
      }
      const nl = buf.indexOf('\n')
      if (nl < 0) return
      const line = buf.slice(0, nl)
      buf = ''
      let req: ControlRequest
      try {
        req = JSON.parse(line)
        if (typeof req?.cmd !== 'string' || !Array.isArray(req.args) || !req.args.every(a => typeof a === 'string')) throw new Error('bad shape')
      } catch {
        socket.end(JSON.stringify({ ok: false, error: 'malformed control request' }) + '\n')
        return
      }
      let lastProgress = 0
      const progress: ControlProgress = p => {
        const now = Date.now()
        if (now - lastProgress < PROGRESS_EVERY_MS || socket.destroyed) return
        lastProgress = now
        socket.write(JSON.stringify({ progress: p }) + '\n')
      }
      const gone = new AbortController()
      socket.once('close', () => gone.abort())
      handler(req, progress, gone.signal).then(
        result => socket.end(JSON.stringify({ ok: true, result }) + '\n'),
        (err: Error & { code?: string }) => socket.end(JSON.stringify({ ok: false, error: err.message, code: err.code }) + '\n'))
    })
  })
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen({ path }, () => {
      server.off('error', reject)
      resolve(server)
    })
  })
}

/**
 * Ask the mount behind `path`; null when no mount answers there (not mounted,
 * or the daemon is gone). Progress lines before the answer go to `onProgress`.
 */
export function askControl (path: string, req: ControlRequest, timeoutMs = 600_000, onProgress?: (p: unknown) => void): Promise<ControlAnswer | null> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ path })
    let buf = ''
    let connected = false
    // A bound on silence: progress lines of a long heal or scrub restart it.
    const arm = () => setTimeout(() => {
      socket.destroy()
      reject(new UsageError(`the mount did not answer within ${timeoutMs / 1000} s (${path})`))
    }, timeoutMs)
    let timer = arm()
    socket.setEncoding('utf8')
    socket.on('connect', () => {
      connected = true
      socket.write(JSON.stringify(req) + '\n')
    })
    socket.on('data', chunk => {
      buf += chunk
      clearTimeout(timer)
      timer = arm()
      // Every complete line but the answer is progress.
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl)
        if (!line.startsWith('{"progress":')) break
        buf = buf.slice(nl + 1)
        try {
          onProgress?.(JSON.parse(line).progress)
        } catch {}
      }
    })
    socket.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer)
      if (!connected && (err.code === 'ENOENT' || err.code === 'ECONNREFUSED')) resolve(null)
      else reject(new UsageError(`control socket ${path}: ${err.message}`))
    })
    socket.on('close', () => {
      clearTimeout(timer)
      if (!connected) return
      const line = buf.split('\n')[0]
      try {
        resolve(JSON.parse(line))
      } catch {
        reject(new UsageError(`the mount closed the control connection without an answer (${path}); see STATE/daemon.log`))
      }
    })
  })
}
