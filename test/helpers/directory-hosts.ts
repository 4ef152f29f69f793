// Two Directory instances on one store standing for two hosts (each its own caches, id ranges,
// usage row and session): on the shared LevelKv wrapper (every transaction body run twice) or on
// two PgKv stores of one fresh PostgreSQL database.
import type { Test } from 'tap'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Directory } from '../../src/directory/directory'
import { KvStore } from '../../src/directory/kv'
import { LevelKv } from '../../src/directory/leveldb'
import { PgKv } from '../../src/directory/postgres'
import { freshPgDatabase } from './kv-engines'
import { RerunKv } from './rerun-kv'

export interface Hosts {
  a: Directory
  b: Directory
  /** A third view, for checks. */
  kv: KvStore
  /** Conflicts run again, when the engine counts them. */
  conflicts: () => number
}

const ROOT = { blockSize: 65536, root: { uid: 0, gid: 0 } }

export async function levelHosts (t: Test): Promise<Hosts> {
  const dir = await mkdtemp(join(tmpdir(), 'bslfs-hosts-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const kv = new RerunKv(await LevelKv.open(join(dir, 'db'), { createIfMissing: true }), { shared: true })
  const a = await Directory.create(kv.share(), ROOT)
  const b = await Directory.open(kv.share())
  t.teardown(async () => { await a.close(); await b.close(); await kv.close() })
  return { a, b, kv, conflicts: () => 0 }
}

export async function pgHosts (t: Test): Promise<Hosts> {
  const { url } = await freshPgDatabase()
  const kvA = await PgKv.open(url, { createIfMissing: true })
  const kvB = await PgKv.open(url)
  const kv = await PgKv.open(url)
  const a = await Directory.create(kvA, ROOT)
  const b = await Directory.open(kvB)
  t.teardown(async () => { await a.close(); await b.close(); await kv.close() })
  return { a, b, kv, conflicts: () => kvA.stats.conflictRetries + kvB.stats.conflictRetries }
}
