/**
 * Certificates for the TLS tests, made at test time with `openssl` in a
 * temp directory: a private CA, a server certificate for 127.0.0.1 and
 * localhost, one for another host name, an expired one and one not valid
 * yet (with `openssl ca -startdate/-enddate`: this openssl's x509 has no
 * -not_before), client certificates from the CA and from another CA.
 * Keys are mode 0600, as bslfs wants them.
 */
import { execFileSync } from 'node:child_process'
import * as fs from 'node:fs'
import { join } from 'node:path'

export interface CertPair { cert: string, key: string }

export interface TestCerts {
  dir: string
  ca: string
  /** Another CA, which signed nothing the server trusts. */
  otherCa: string
  server: CertPair
  /** Signed by the CA, for other.example only. */
  otherHost: CertPair
  expired: CertPair
  notYetValid: CertPair
  client: CertPair
  /** A client certificate from the other CA. */
  foreignClient: CertPair
}

function openssl (dir: string, args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] })
}

function newKeyAndRequest (dir: string, name: string, cn: string): void {
  openssl(dir, ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`])
  fs.chmodSync(join(dir, `${name}.key`), 0o600)
}

function makeCa (dir: string, name: string): void {
  openssl(dir, ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '30', '-subj', `/CN=${name}`])
  fs.chmodSync(join(dir, `${name}.key`), 0o600)
}

/** Signs NAME.csr with CA for `ext` (an extensions file's text); dates either `days` from now or [start, end] (YYYYMMDDHHMMSSZ). */
function sign (dir: string, ca: string, name: string, ext: string, dates: { days: number } | { start: string, end: string }): CertPair {
  fs.writeFileSync(join(dir, `${name}.ext`), ext)
  if ('days' in dates) {
    openssl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial',
      '-days', String(dates.days), '-extfile', `${name}.ext`, '-out', `${name}.crt`])
  } else {
    const db = join(dir, `${ca}-db`)
    fs.mkdirSync(db, { recursive: true })
    if (!fs.existsSync(join(db, 'index.txt'))) {
      fs.writeFileSync(join(db, 'index.txt'), '')
      fs.writeFileSync(join(db, 'serial'), '1000\n')
    }
    fs.writeFileSync(join(dir, `${ca}.cnf`), [
      '[ ca ]', 'default_ca = this', '[ this ]', `dir = ${db}`, 'database = $dir/index.txt', 'serial = $dir/serial',
      'new_certs_dir = $dir', 'default_md = sha256', 'policy = any', 'unique_subject = no', '[ any ]', 'commonName = supplied', ''
    ].join('\n'))
    openssl(dir, ['ca', '-batch', '-config', `${ca}.cnf`, '-cert', `${ca}.crt`, '-keyfile', `${ca}.key`, '-in', `${name}.csr`,
      '-startdate', dates.start, '-enddate', dates.end, '-extfile', `${name}.ext`, '-out', `${name}.crt`])
  }
  return { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) }
}

const SERVER_EXT = 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n'
const CLIENT_EXT = 'extendedKeyUsage=clientAuth\n'

/** Makes every certificate in `dir` (which must exist). */
export function makeTestCerts (dir: string): TestCerts {
  makeCa(dir, 'ca')
  makeCa(dir, 'other-ca')
  newKeyAndRequest(dir, 'server', 'localhost')
  const server = sign(dir, 'ca', 'server', SERVER_EXT, { days: 30 })
  newKeyAndRequest(dir, 'other-host', 'other.example')
  const otherHost = sign(dir, 'ca', 'other-host', 'subjectAltName=DNS:other.example\nextendedKeyUsage=serverAuth\n', { days: 30 })
  newKeyAndRequest(dir, 'expired', 'localhost')
  const expired = sign(dir, 'ca', 'expired', SERVER_EXT, { start: '20200101000000Z', end: '20200201000000Z' })
  newKeyAndRequest(dir, 'not-yet', 'localhost')
  const notYetValid = sign(dir, 'ca', 'not-yet', SERVER_EXT, { start: '20990101000000Z', end: '20990201000000Z' })
  newKeyAndRequest(dir, 'client', 'host1')
  const client = sign(dir, 'ca', 'client', CLIENT_EXT, { days: 30 })
  newKeyAndRequest(dir, 'foreign-client', 'intruder')
  const foreignClient = sign(dir, 'other-ca', 'foreign-client', CLIENT_EXT, { days: 30 })
  return { dir, ca: join(dir, 'ca.crt'), otherCa: join(dir, 'other-ca.crt'), server, otherHost, expired, notYetValid, client, foreignClient }
}
