/**
 * The block server's TLS: the certificate, key and (for mutual TLS) client
 * CA loaded from their files and checked before the server uses them, at
 * start and on every reload (SIGHUP). A file that cannot be used is a
 * UsageError naming it; the key file must be private, like a token file.
 */
import { X509Certificate } from 'node:crypto'
import * as tls from 'node:tls'
import { readPublicFile, readSecretFile } from '../credentials'
import { UsageError } from '../errors'

export interface ServerTlsFiles {
  certFile: string
  keyFile: string
  /** With it, every client must present a certificate signed by this CA (mutual TLS), as well as the token. */
  clientCaFile?: string
}

/** TLS 1.3, and 1.2 for clients that have nothing newer; nothing older. */
export const MIN_TLS_VERSION = 'TLSv1.2'

/** What tls.Server takes, both at creation and in setSecureContext. */
export interface ServerTlsOptions {
  cert: Buffer
  key: Buffer
  ca?: Buffer
  minVersion: tls.SecureVersion
  requestCert: boolean
  rejectUnauthorized: boolean
}

/** Reads and checks the files: a certificate that does not match its key, or a file that is not PEM, is refused here. */
export async function loadServerTls (files: ServerTlsFiles): Promise<ServerTlsOptions> {
  const cert = await readPublicFile(files.certFile, 'TLS certificate file')
  const key = await readSecretFile(files.keyFile, 'TLS key file')
  const ca = files.clientCaFile !== undefined ? await readPublicFile(files.clientCaFile, 'client CA file') : undefined
  const opts: ServerTlsOptions = {
    cert,
    key,
    ...(ca !== undefined ? { ca } : {}),
    minVersion: MIN_TLS_VERSION,
    requestCert: ca !== undefined,
    // Checked by the server on each request instead (BlockServer.authenticate), so that a client with a
    // certificate of another CA is told so (403) rather than cut off with no reason: Node closes such a
    // handshake without an alert. No request of such a client reaches a device either way.
    rejectUnauthorized: false
  }
  try {
    tls.createSecureContext(opts)
  } catch (err) {
    throw new UsageError(`cannot use the TLS certificate ${files.certFile} with the key ${files.keyFile}` +
      `${files.clientCaFile !== undefined ? ` and client CA ${files.clientCaFile}` : ''}: ${describeTlsFileError(err)}`)
  }
  const x509 = firstCertificate(cert, files.certFile)
  const now = Date.now()
  if (Date.parse(x509.validTo) < now) throw new UsageError(`the TLS certificate ${files.certFile} expired on ${x509.validTo}; renew it`)
  if (Date.parse(x509.validFrom) > now) throw new UsageError(`the TLS certificate ${files.certFile} is not valid before ${x509.validFrom}`)
  return opts
}

function firstCertificate (pem: Buffer, file: string): X509Certificate {
  try {
    return new X509Certificate(pem)
  } catch (err) {
    throw new UsageError(`the TLS certificate file ${file} holds no PEM certificate: ${(err as Error).message}`)
  }
}

function describeTlsFileError (err: unknown): string {
  const e = err as { code?: string, message?: string }
  switch (e.code) {
    case 'ERR_OSSL_X509_KEY_VALUES_MISMATCH': return 'the key does not belong to the certificate'
    case 'ERR_OSSL_PEM_NO_START_LINE': return 'a file is not in PEM form'
    default: return e.message ?? String(err)
  }
}

/** Why the client of `socket` is not accepted (mutual TLS), or undefined when it is (or none is asked for). */
export function clientCertificateProblem (socket: unknown, requested: boolean): string | undefined {
  if (!requested) return undefined
  const s = socket as tls.TLSSocket
  if (s.authorized) return undefined
  const peer = typeof s.getPeerCertificate === 'function' ? s.getPeerCertificate() : undefined
  if (peer === undefined || peer === null || Object.keys(peer).length === 0) {
    return 'no client certificate: this server requires one signed by its --client-ca'
  }
  const e = s.authorizationError as unknown
  const code = e instanceof Error ? (e as Error & { code?: string }).code ?? e.message : String(e ?? 'not verified')
  return `the client certificate is not accepted (${code}): it must be signed by this server's --client-ca`
}
