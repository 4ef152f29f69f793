/**
 * Micro-benchmark of the directory's KvStore engines (not part of the tests):
 * time per point get, per small transaction (1 read + 2 puts), per scan of
 * 100 keys, on LevelKv and on PgKv against a throw-away PostgreSQL on
 * loopback. Medians of several runs. Run as root from the repo:
 *   npx ts-node-transpile-only scripts/kv-bench.ts
 * Figures and their reading: native-notes/postgres.md.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Client } from 'pg'
import { KvStore } from '../src/directory/kv'
import { LevelKv } from '../src/directory/leveldb'
import { PgKv, PgKvOptions } from '../src/directory/postgres'
import { PgServer } from '../test/helpers/postgres'

const RUNS = Number(process.env.RUNS ?? 5)
const OPS = Number(process.env.OPS ?? 400)

function median (xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]
}

async function timeEach (n: number, op: (i: number) => Promise<unknown>): Promise<number> {
  const start = process.hrtime.bigint()
  for (let i = 0; i < n; i++) await op(i)
  return Number(process.hrtime.bigint() - start) / 1000 / n
}

const key = (i: number): Buffer => Buffer.from(`i${String(i % 1000).padStart(6, '0')}`)

async function measure (kv: KvStore, sync: boolean): Promise<Record<string, number>> {
  await kv.txn(tx => { for (let i = 0; i < 1000; i++) tx.put(key(i), Buffer.alloc(100, i & 0xff)) })
  const out: Record<string, number[]> = { get: [], txn: [], scan100: [], readOnlyTxn: [] }
  for (let r = 0; r < RUNS; r++) {
    out.get.push(await timeEach(OPS, async i => await kv.get(key(i * 7))))
    out.txn.push(await timeEach(OPS, async i => await kv.txn(async tx => {
      const v = await tx.get(key(i))
      tx.put(key(i), v ?? Buffer.alloc(0))
      tx.put(key(i + 1), Buffer.alloc(100))
    }, { sync })))
    out.readOnlyTxn.push(await timeEach(OPS, async i => await kv.txn(async tx => await tx.get(key(i)))))
    out.scan100.push(await timeEach(OPS / 4, async i => {
      let n = 0
      for await (const _ of kv.scan(Buffer.from('i'), { after: key(i * 13 % 900), limit: 100 })) n++
      if (n !== 100) throw new Error(`scan gave ${n}`)
    }))
  }
  return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, median(v)]))
}

async function main (): Promise<void> {
  const rows: Array<[string, Record<string, number>]> = []
  const dir = await mkdtemp(join(tmpdir(), 'bslfs-kvbench-'))
  const level = await LevelKv.open(join(dir, 'db'), { createIfMissing: true })
  rows.push(['LevelKv', await measure(level, false)])
  rows.push(['LevelKv sync', await measure(level, true)])
  await level.close()
  await rm(dir, { recursive: true, force: true })

  const server = await PgServer.create()
  try {
    const variants: Array<[string, PgKvOptions, boolean]> = [
      ['PgKv', {}, false],
      ['PgKv synchronous_commit=off', { asyncCommitWhenUnsynced: true }, false]
    ]
    // One round trip: the floor under every statement.
    const client = new Client({ host: server.host, port: server.port, user: 'postgres', database: server.database })
    await client.connect()
    const ping: number[] = []
    for (let r = 0; r < RUNS; r++) ping.push(await timeEach(OPS, async () => await client.query('SELECT 1')))
    await client.end()
    console.log(`round trip (SELECT 1): ${median(ping).toFixed(0)} µs`)
    let n = 0
    for (const [name, opts, sync] of variants) {
      await server.sql(`CREATE DATABASE bench${++n}`)
      const kv = await PgKv.open(server.url({ database: `bench${n}` }), { createIfMissing: true, ...opts })
      rows.push([name, await measure(kv, sync)])
      await kv.close()
    }
  } finally {
    await server.destroy()
  }
  console.log(`medians of ${RUNS} runs of ${OPS} ops, µs per op`)
  console.log(['engine', 'get', 'txn 1r+2w', 'read-only txn', 'scan 100'].join(' | '))
  for (const [name, r] of rows) console.log([name, r.get, r.txn, r.readOnlyTxn, r.scan100].map(x => typeof x === 'number' ? x.toFixed(0) : x).join(' | '))
}

main().catch(err => { console.error(err); process.exit(1) })
