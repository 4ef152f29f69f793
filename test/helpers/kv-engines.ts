/**
 * Every KvStore engine, for tests that run the same code on each: a new
 * empty store per test, opened (and reopened after a close) through one
 * shape. LevelKv in a temp dir; PgKv in a new database of one PostgreSQL per
 * test process (started on first use, stopped when the process's tests end),
 * skipped with the reason when PostgreSQL is not installed.
 */
import t, { Test } from 'tap'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { KvStore } from '../../src/directory/kv'
import { LevelKv } from '../../src/directory/leveldb'
import { PgKv, PgKvOptions } from '../../src/directory/postgres'
import { PgServer, pgUnavailable } from './postgres'

export interface KvPlace {
  /** Open the store; `create` makes it when it does not exist yet (else opening a missing one fails). */
  open: (opts?: { create?: boolean }) => Promise<KvStore>
}

export interface KvEngine {
  name: 'LevelKv' | 'PgKv'
  /** Why the engine cannot run here, for `{ skip }`; undefined when it can. */
  skip?: string
  /** A new empty place for a store, removed at the end of `t`. The caller closes what it opens. */
  place: (t: Test) => Promise<KvPlace>
}

let shared: Promise<PgServer> | undefined

/** The test process's PostgreSQL, started on first use. */
export async function sharedPostgres (): Promise<PgServer> {
  shared ??= PgServer.create().then(server => {
    t.teardown(async () => await server.destroy())
    return server
  })
  return await shared
}

let databases = 0

/** A new empty database on the shared PostgreSQL; its superuser URL. */
export async function freshPgDatabase (): Promise<{ server: PgServer, url: string, database: string }> {
  const server = await sharedPostgres()
  const database = `kv${process.pid}_${++databases}`
  await server.sql(`CREATE DATABASE ${database}`)
  return { server, url: server.url({ database }), database }
}

export async function openPgKv (t: Test, url: string, opts: PgKvOptions = {}): Promise<PgKv> {
  const kv = await PgKv.open(url, { createIfMissing: true, ...opts })
  t.teardown(() => kv.close())
  return kv
}

export const kvEngines: KvEngine[] = [
  {
    name: 'LevelKv',
    place: async t => {
      const dir = await mkdtemp(join(tmpdir(), 'bslfs-kv-'))
      t.teardown(async () => await rm(dir, { recursive: true, force: true }))
      return { open: async (opts = {}) => await LevelKv.open(join(dir, 'db'), { createIfMissing: opts.create ?? false }) }
    }
  },
  {
    name: 'PgKv',
    skip: pgUnavailable(),
    place: async () => {
      const { url } = await freshPgDatabase()
      return { open: async (opts = {}) => await PgKv.open(url, { createIfMissing: opts.create ?? false }) }
    }
  }
]
