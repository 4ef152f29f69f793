/**
 * A client's side of TLS to a block server: the CA that vouches for the
 * server and the client's own certificate (for mutual TLS), and what a
 * failed handshake means in words. Such a failure is permanent (a retry
 * would fail the same way), and is never answered by trying plain HTTP.
 */
import { createHash } from 'node:crypto'
import type { ConnectionOptions } from 'node:tls'
import { readPublicFile, readSecretFile } from '../credentials'
import { FsError, UsageError } from '../errors'

/** Where a server's TLS material is (what the server table keeps: paths, never the bytes). */
export interface ClientTlsFiles {
  /** The CA that signed the server's certificate; none: the system's CAs. */
  caFile?: string
  clientCertFile?: string
  clientKeyFile?: string
}

/** The loaded material. */
export interface ClientTls {
  ca?: Buffer
  cert?: Buffer
  key?: Buffer
  /** A digest of the above: two servers with the same material share connections, others do not. */
  identity: string
}

/**
 * Reads the files (the key must be private); undefined when none is given.
 * A certificate without its key, or a key without it, is refused.
 */
export async function loadClientTls (files: ClientTlsFiles): Promise<ClientTls | undefined> {
  if ((files.clientCertFile === undefined) !== (files.clientKeyFile === undefined)) {
    throw new UsageError('a client certificate needs its key: give both --client-cert FILE and --client-key FILE')
  }
  if (files.caFile === undefined && files.clientCertFile === undefined) return undefined
  const ca = files.caFile !== undefined ? await readPublicFile(files.caFile, 'CA file') : undefined
  const cert = files.clientCertFile !== undefined ? await readPublicFile(files.clientCertFile, 'client certificate file') : undefined
  const key = files.clientKeyFile !== undefined ? await readSecretFile(files.clientKeyFile, 'client key file') : undefined
  const h = createHash('sha256')
  for (const b of [ca, cert, key]) h.update(b ?? '').update('\0')
  return { ca, cert, key, identity: h.digest('hex').slice(0, 16) }
}

/** The options of tls.connect (and of undici's connector) for this material. */
export function tlsConnectOptions (t: ClientTls): ConnectionOptions {
  return {
    ...(t.ca !== undefined ? { ca: t.ca } : {}),
    ...(t.cert !== undefined ? { cert: t.cert, key: t.key } : {}),
    minVersion: 'TLSv1.2',
    rejectUnauthorized: true
  }
}

/** A TLS failure talking to a server: permanent, said once, never retried. */
export class TlsFailure extends FsError {
  constructor (readonly server: string, readonly reason: string, cause: unknown) {
    super('EIO', `${server}: ${reason}`, { cause, fault: 'unreachable' })
    this.name = 'TlsFailure'
  }
}

const UNTRUSTED = new Set(['UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'UNABLE_TO_GET_ISSUER_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'CERT_SIGNATURE_FAILURE', 'CERT_UNTRUSTED', 'CERT_REJECTED',
  'INVALID_CA', 'CERT_CHAIN_TOO_LONG'])

/**
 * What a connection failure says about TLS, in words; undefined when it is
 * not a TLS failure (a refused connection, a timeout: those may pass).
 */
export function tlsFailureReason (err: unknown): string | undefined {
  if (err instanceof AggregateError) {
    for (const e of err.errors) {
      const r = tlsFailureReason(e)
      if (r !== undefined) return r
    }
    return undefined
  }
  const e = err as { code?: unknown, message?: unknown, reason?: unknown } | null
  const code = typeof e?.code === 'string' ? e.code : ''
  const message = typeof e?.message === 'string' ? e.message : ''
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    return `the server's certificate is not for this host name (${typeof e?.reason === 'string' ? e.reason : message})`
  }
  if (code === 'CERT_HAS_EXPIRED') return "the server's certificate has expired"
  if (code === 'CERT_NOT_YET_VALID') return "the server's certificate is not valid yet (check both hosts' clocks)"
  if (UNTRUSTED.has(code)) return `the server's certificate is not signed by a trusted CA (${code}; give the CA that signed it with --ca FILE)`
  if (code === 'ERR_SSL_WRONG_VERSION_NUMBER' || code === 'ERR_SSL_PACKET_LENGTH_TOO_LONG' || /wrong version number/i.test(message)) {
    return 'the server does not speak TLS (plain HTTP?): start it with --tls-cert/--tls-key, or use an http:// URL on a trusted network'
  }
  if (/CERTIFICATE_REQUIRED/.test(code)) return 'the server requires a client certificate: give --client-cert FILE --client-key FILE'
  if (/ALERT_UNKNOWN_CA|ALERT_BAD_CERTIFICATE|ALERT_CERTIFICATE_UNKNOWN|ALERT_DECRYPT_ERROR/.test(code)) {
    return `the server refused this host's client certificate (${code}): it must be signed by the server's --client-ca`
  }
  if (code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_')) return `TLS failed (${code}: ${message})`
  return undefined
}

/**
 * Whether something at HOST:PORT completes a TLS handshake (its certificate
 * unchecked, nothing sent after it): to tell a user who gave an http:// URL
 * that the server wants https://. Only a diagnosis, never a way to talk.
 */
export async function speaksTls (host: string, port: number, timeoutMs: number): Promise<boolean> {
  const { connect } = await import('node:tls')
  const { isIP } = await import('node:net')
  return await new Promise<boolean>(resolve => {
    const s = connect({ host, port, rejectUnauthorized: false, ...(isIP(host) === 0 ? { servername: host } : {}) })
    const done = (yes: boolean): void => {
      clearTimeout(timer)
      s.destroy()
      resolve(yes)
    }
    const timer = setTimeout(() => done(false), timeoutMs)
    s.once('secureConnect', () => done(true))
    s.once('error', () => done(false))
  })
}

/**
 * Why a TLS server cut a connection, when it was for TLS's sake: a fresh
 * handshake with the same material, given a moment for the server's alert
 * (TLS 1.3 judges a client's certificate after the client thinks it is in,
 * and a request's bytes in flight can turn that alert into a bare reset).
 * Undefined when the handshake stands: the cut was something else.
 */
export async function tlsRefusal (origin: string, t: ClientTls | undefined, timeoutMs: number): Promise<string | undefined> {
  const { connect } = await import('node:tls')
  const { isIP } = await import('node:net')
  const u = new URL(origin)
  const host = u.hostname.replace(/^\[|\]$/g, '')
  return await new Promise<string | undefined>(resolve => {
    const s = connect({ host, port: Number(u.port || 443), ...(isIP(host) === 0 ? { servername: host } : {}), ...tlsConnectOptions(t ?? { identity: '' }) })
    const done = (why: string | undefined): void => {
      clearTimeout(timer)
      s.destroy()
      resolve(why)
    }
    const timer = setTimeout(() => done(undefined), timeoutMs)
    s.once('secureConnect', () => {
      clearTimeout(timer)
      setTimeout(() => done(undefined), Math.min(300, timeoutMs))
    })
    s.once('error', err => done(tlsFailureReason(err)))
  })
}
