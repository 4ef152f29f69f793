// Two mounts of one filesystem on PostgreSQL at two mount points: two daemons,
// each with its own caches, standing for two hosts (test/mount-shared*.test.ts).
import { randomBytes } from 'node:crypto'
import * as fs from 'node:fs'
import { join } from 'node:path'
import { parseFsName, runtimePaths } from '../../src/daemon/location'
import { PgServer, pgUnavailable, startPostgres } from './postgres'
import { bslfs, describeRun, isMounted, startBlockServer, target, volumeKind, type RunResult } from './mount'

/** Why the shared tests do not run here: they start their own PostgreSQL and block server, so once, in the first pass. */
export const sharedSkip = target !== 'bslfs' ? `two mounts of one filesystem need bslfs (BSLFS_TEST_TARGET=${target})`
  : volumeKind === 'remote' ? 'runs once, in the first pass of the mount suite (it starts its own PostgreSQL and block server)'
    : pgUnavailable()

/** The kernel's entry and attribute timeout of a default mount (DEFAULT_SESSION). */
export const ENTRY_TIMEOUT_MS = 1000

export interface Shared { url: string, a: string, b: string, env: NodeJS.ProcessEnv, cli (args: string[]): Promise<RunResult>, must (args: string[]): Promise<RunResult>, pg: PgServer }

/** `options`: mount -o for both mounts. */
export async function twoMounts (t: { teardown: (fn: () => unknown) => void }, opts: { options?: string } = {}): Promise<Shared> {
  const pg = await startPostgres(t, { settings: { fsync: 'off' } })
  const password = randomBytes(9).toString('hex')
  await pg.sql(`CREATE ROLE bslfs LOGIN PASSWORD '${password}'`)
  await pg.sql('CREATE DATABASE shared OWNER bslfs')
  const base = fs.mkdtempSync('/tmp/bslfs-shared-')
  t.teardown(() => fs.rmSync(base, { recursive: true, force: true }))
  const pgpass = join(base, 'pgpass')
  fs.writeFileSync(pgpass, `${pg.host}:${pg.port}:shared:bslfs:${password}\n`, { mode: 0o600 })
  const env = { ...process.env, PGPASSFILE: pgpass }
  const url = pg.url({ user: 'bslfs', database: 'shared' })
  const cli = async (args: string[]): Promise<RunResult> => await bslfs(args, { env })
  const must = async (args: string[]): Promise<RunResult> => {
    const r = await cli(args)
    if (r.code !== 0) throw new Error(`bslfs ${args[0]} failed:\n${describeRun(r)}`)
    return r
  }
  const server = await startBlockServer(join(base, 'server'))
  t.teardown(() => server.stop())
  await must(['init', url])
  await must(['server', 'add', url, 's1', server.url, '--token-file', server.tokenFile])
  await must(['volume', 'add', url, '1', 's1:d1'])
  await must(['volume', 'default', url, '1'])
  const a = join(base, 'host-a')
  const b = join(base, 'host-b')
  for (const mnt of [a, b]) {
    fs.mkdirSync(mnt)
    await must(['mount', ...(opts.options ? ['-o', opts.options] : []), url, mnt])
    t.teardown(async () => {
      if (isMounted(mnt)) {
        const r = await cli(['unmount', mnt])
        if (r.code !== 0) {
          console.error(`unmount of ${mnt} failed:\n${describeRun(r)}`)
          await cli(['unmount', '--lazy', mnt])
        }
      }
      fs.rmSync(runtimePaths(parseFsName(url), mnt).dir, { recursive: true, force: true })
    })
    // A's first file reserves its ranges of inode numbers and object ids before B loads the
    // counters: two mounts that load them at once would hand out the same numbers until the
    // counters are taken in batches per mount (the directory's multi-writer part of issue 21).
    if (mnt === a) fs.writeFileSync(join(a, 'seed'), 'reserves A\'s ranges')
  }
  return { url, a, b, env, cli, must, pg }
}

