/**
 * Helpers for the block server tests: a server child process on 127.0.0.1,
 * HTTP requests to it, raw socket exchanges for what an HTTP client would
 * refuse to send, and the checks that nothing leaked.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, readdirSync, readlinkSync } from 'node:fs'
import * as fsp from 'node:fs/promises'
import * as http from 'node:http'
import * as net from 'node:net'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'

export const repoRoot = resolve(__dirname, '..', '..')
/** The stand-alone server entry (built by `npm run build`). */
export const serverMain = join(repoRoot, 'dist', 'server', 'main.js')

export const HOST = '127.0.0.1'

/** The environment without tap's loader hooks, which must not reach the server process. */
export function childEnv (extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (k === 'NODE_OPTIONS' || k === 'TAP' || k.startsWith('TAP_') || k.startsWith('_TAPJS_') || k.startsWith('TS_NODE_')) continue
    env[k] = v
  }
  return { ...env, ...extra }
}

function requireBuild (): void {
  if (!existsSync(serverMain)) throw new Error(`${serverMain} is missing: run \`npm run build\` first`)
}

/**
 * A new private temp directory, removed when the test ends. (Not
 * t.testdir(): its path is fixed per test name, so two runs of the same test
 * at once would share their devices.)
 */
export async function tempDir (t: { teardown: (fn: () => unknown) => void }, files: Record<string, string | null> = {}): Promise<string> {
  const dir = await fsp.mkdtemp(join(tmpdir(), 'bslfs-server-test-'))
  t.teardown(async () => await fsp.rm(dir, { recursive: true, force: true }))
  for (const [name, content] of Object.entries(files)) {
    if (content === null) {
      await fsp.mkdir(join(dir, name), { recursive: true })
    } else {
      await fsp.mkdir(join(dir, name, '..'), { recursive: true })
      await fsp.writeFile(join(dir, name), content)
    }
  }
  return dir
}

/** A random token in a new 0600 file. */
export async function makeTokenFile (dir: string, name = 'token'): Promise<{ file: string, token: string }> {
  const file = join(dir, name)
  const token = randomBytes(32).toString('base64url')
  await fsp.writeFile(file, token + '\n', { mode: 0o600 })
  await fsp.chmod(file, 0o600)
  return { file, token }
}

export interface ServerProcess {
  pid: number
  port: number
  token: string
  /** The token file the start line names. */
  tokenFile: string
  startLine: string
  proc: ChildProcess
  stdout: () => string
  stderr: () => string
  /** Resolves when the process has exited. */
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
  /** SIGTERM (or `signal`), then the exit status; SIGKILL if it does not exit in time. */
  stop: (signal?: NodeJS.Signals, timeoutMs?: number) => Promise<{ code: number | null, signal: NodeJS.Signals | null }>
}

/**
 * Starts `node dist/server/main.js ARGS` and waits for its start line. The
 * token is read from the file the start line names. Killed by pid at exit
 * of the test process if still running.
 */
export async function startServer (args: string[], opts: { timeoutMs?: number, env?: NodeJS.ProcessEnv } = {}): Promise<ServerProcess> {
  requireBuild()
  const proc = spawn(process.execPath, [serverMain, ...args], { env: childEnv(opts.env), stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  proc.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d })
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => { err += d })
  const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>(resolve => {
    proc.once('exit', (code, signal) => resolve({ code, signal }))
  })
  const pid = proc.pid!
  const killAtExit = (): void => {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {}
  }
  process.once('exit', killAtExit)
  void exited.then(() => process.off('exit', killAtExit))

  const line = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      killAtExit()
      reject(new Error(`the server did not start within ${opts.timeoutMs ?? 15000} ms\nstdout: ${out}\nstderr: ${err}`))
    }, opts.timeoutMs ?? 15000)
    const check = (): void => {
      const m = /^bslfs serve: listening on .*$/m.exec(out)
      if (m) {
        clearTimeout(timer)
        resolve(m[0])
      }
    }
    proc.stdout!.on('data', check)
    void exited.then(({ code, signal }) => {
      clearTimeout(timer)
      reject(new Error(`the server exited (${code ?? signal}) before it started\nstdout: ${out}\nstderr: ${err}`))
    })
  })
  const m = /listening on 127\.0\.0\.1:(\d+), devices .*, token from (.+?)(?: \(.*\))?$/.exec(line)
  if (!m) throw new Error(`unexpected start line: ${line}`)
  const tokenFile = m[2]
  const token = (await fsp.readFile(tokenFile, 'utf8')).trim()
  const stop = async (signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 20000): Promise<{ code: number | null, signal: NodeJS.Signals | null }> => {
    if (proc.exitCode === null && proc.signalCode === null) {
      try {
        process.kill(pid, signal)
      } catch {}
    }
    const timer = setTimeout(killAtExit, timeoutMs)
    const r = await exited
    clearTimeout(timer)
    return r
  }
  return { pid, port: Number(m[1]), token, tokenFile, startLine: line, proc, stdout: () => out, stderr: () => err, exited, stop }
}

/** Runs the server with ARGS expecting it to refuse to start: its exit code and output. */
export async function runServerToFailure (args: string[], timeoutMs = 15000): Promise<{ code: number | null, stdout: string, stderr: string }> {
  requireBuild()
  const proc = spawn(process.execPath, [serverMain, ...args], { env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  proc.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
  proc.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
  const timer = setTimeout(() => {
    try {
      process.kill(proc.pid!, 'SIGKILL')
    } catch {}
  }, timeoutMs)
  const code = await new Promise<number | null>(resolve => proc.once('exit', (c) => resolve(c)))
  clearTimeout(timer)
  return { code, stdout, stderr }
}

export interface Reply {
  status: number
  headers: http.IncomingHttpHeaders
  body: Buffer
  /** The body parsed as JSON, when it is JSON. */
  json: any
}

export interface RequestOptions {
  method?: string
  path: string
  headers?: http.OutgoingHttpHeaders
  body?: Buffer | string
  agent?: http.Agent | false
  timeoutMs?: number
}

/** One HTTP request to the server on 127.0.0.1:PORT; a fresh connection unless an agent is given. */
export async function request (port: number, o: RequestOptions): Promise<Reply> {
  return await new Promise<Reply>((resolve, reject) => {
    const req = http.request({
      host: HOST,
      port,
      method: o.method ?? 'GET',
      path: o.path,
      headers: o.headers,
      agent: o.agent ?? false
    }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('error', reject)
      res.on('end', () => {
        clearTimeout(timer)
        const body = Buffer.concat(chunks)
        let json: any
        if (String(res.headers['content-type']).startsWith('application/json')) {
          try {
            json = JSON.parse(body.toString('utf8'))
          } catch {}
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, json })
      })
    })
    const timer = setTimeout(() => req.destroy(new Error(`${o.method ?? 'GET'} ${o.path.slice(0, 60)}: no answer in ${o.timeoutMs ?? 15000} ms`)), o.timeoutMs ?? 15000)
    req.on('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    req.end(o.body)
  })
}

/** The Authorization header for a token. */
export const bearer = (token: string): Record<string, string> => ({ Authorization: `Bearer ${token}` })

export interface RawResult {
  /** Everything the server sent. */
  data: Buffer
  /** The server closed the connection (rather than our time running out). */
  closedByServer: boolean
  /** Milliseconds from connect to the server closing (or to the time limit). */
  ms: number
}

export interface RawOptions {
  /** Give up (and close) after this long. */
  timeoutMs?: number
  /** Half-close our side after writing. */
  end?: boolean
  /** Close our side once this many complete responses have arrived. */
  responses?: number
}

/**
 * Writes `data` on a new TCP connection (bytes exactly as given) and collects
 * what the server answers until it closes, `responses` answers have arrived,
 * or the time limit.
 */
export async function raw (port: number, data: string | Buffer, o: RawOptions = {}): Promise<RawResult> {
  const started = Date.now()
  return await new Promise<RawResult>((resolve) => {
    const sock = net.connect({ host: HOST, port })
    const chunks: Buffer[] = []
    let done = false
    const finish = (closedByServer: boolean): void => {
      if (done) return
      done = true
      clearTimeout(timer)
      sock.destroy()
      resolve({ data: Buffer.concat(chunks), closedByServer, ms: Date.now() - started })
    }
    const timer = setTimeout(() => finish(false), o.timeoutMs ?? 10000)
    sock.on('connect', () => {
      sock.write(data)
      if (o.end) sock.end()
    })
    sock.on('data', (c: Buffer) => {
      chunks.push(c)
      if (o.responses !== undefined && parseResponses(Buffer.concat(chunks)).length >= o.responses) finish(false)
    })
    sock.on('error', () => finish(true))
    sock.on('close', () => finish(true))
  })
}

export interface RawResponse {
  status: number
  headers: Record<string, string>
  body: Buffer
  json: any
}

/**
 * Splits what a server sent into responses (Content-Length or chunked
 * bodies; 1xx answers included). A trailing incomplete response is left out.
 */
export function parseResponses (data: Buffer): RawResponse[] {
  const out: RawResponse[] = []
  let at = 0
  while (at < data.length) {
    const headEnd = data.indexOf('\r\n\r\n', at)
    if (headEnd < 0) break
    const head = data.subarray(at, headEnd).toString('latin1').split('\r\n')
    const sm = /^HTTP\/1\.[01] (\d{3})/.exec(head[0])
    if (!sm) break
    const status = Number(sm[1])
    const headers: Record<string, string> = {}
    for (const h of head.slice(1)) {
      const i = h.indexOf(':')
      if (i > 0) headers[h.slice(0, i).trim().toLowerCase()] = h.slice(i + 1).trim()
    }
    let pos = headEnd + 4
    let body: Buffer
    if (status < 200 || status === 204 || status === 304) {
      body = Buffer.alloc(0)
    } else if (headers['transfer-encoding'] === 'chunked') {
      const parts: Buffer[] = []
      let complete = false
      while (true) {
        const le = data.indexOf('\r\n', pos)
        if (le < 0) break
        const size = parseInt(data.subarray(pos, le).toString('latin1'), 16)
        if (Number.isNaN(size)) break
        if (le + 2 + size + 2 > data.length) break
        parts.push(data.subarray(le + 2, le + 2 + size))
        pos = le + 2 + size + 2
        if (size === 0) {
          complete = true
          break
        }
      }
      if (!complete) break
      body = Buffer.concat(parts)
    } else {
      const n = Number(headers['content-length'] ?? 0)
      if (pos + n > data.length) break
      body = data.subarray(pos, pos + n)
      pos += n
    }
    let json: any
    if ((headers['content-type'] ?? '').startsWith('application/json')) {
      try {
        json = JSON.parse(body.toString('utf8'))
      } catch {}
    }
    out.push({ status, headers, body, json })
    at = pos
  }
  return out
}

/**
 * The number of open file descriptors of a process, not counting the
 * fan-out directories (objects/xx) a device holds open for its fsyncs:
 * there are at most 256 per device, kept for its lifetime, not leaked.
 */
export function fdCount (pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).filter(fd => {
    try {
      return !/\/objects\/[0-9a-f]{2}$/.test(readlinkSync(`/proc/${pid}/fd/${fd}`))
    } catch {
      return false // closed while we looked
    }
  }).length
}

/** Every path under `dir` (relative, directories marked with a trailing "/"), not descending into `skip`. */
export async function listTree (dir: string, skip: readonly string[] = []): Promise<string[]> {
  const out: string[] = []
  const walk = async (d: string, rel: string): Promise<void> => {
    for (const e of await fsp.readdir(d, { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name
      if (e.isDirectory()) {
        out.push(r + '/')
        if (!skip.includes(join(d, e.name))) await walk(join(d, e.name), r)
      } else {
        out.push(r)
      }
    }
  }
  await walk(dir, '')
  return out.sort()
}

export const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

/** Polls `fn` every 100 ms until it returns true or `ms` pass; the last result. */
export async function eventually (fn: () => boolean | Promise<boolean>, ms: number): Promise<boolean> {
  const until = Date.now() + ms
  while (Date.now() < until) {
    if (await fn()) return true
    await sleep(100)
  }
  return await fn()
}
