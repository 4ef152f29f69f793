/**
 * Where a metadata operation's time goes on PostgreSQL (not part of the tests):
 * Directory calls against a throw-away PostgreSQL on loopback, µs per operation
 * and round trips (statements sent through pg) per operation. Host A creates,
 * host B (a second Directory on its own PgKv) looks up and reads attributes
 * cold, A unlinks. Run from the repo:
 *   npx ts-node-transpile-only scripts/dir-bench.ts
 * Figures and their reading: native-notes/postgres.md.
 */
import { Client } from 'pg'
import { Directory } from '../src/directory/directory'
import { PgKv } from '../src/directory/postgres'
import { PgServer } from '../test/helpers/postgres'

const N = Number(process.env.OPS ?? 300)
const RUNS = Number(process.env.RUNS ?? 3)

let trips = 0
const query = Client.prototype.query
Client.prototype.query = function (this: Client, ...args: unknown[]) {
  trips++
  return (query as (...a: unknown[]) => unknown).apply(this, args)
} as typeof Client.prototype.query

function median (xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]
}

async function main (): Promise<void> {
  const pg = await PgServer.create({ database: 'dirbench' })
  try {
    // PG_ASYNC=1: commits without waiting for the WAL flush (measurement only: what the flush costs)
    const kvA = await PgKv.open(pg.url(), { createIfMissing: true, asyncCommitWhenUnsynced: process.env.PG_ASYNC === '1' })
    const a = await Directory.create(kvA, { blockSize: 65536, root: { uid: 0, gid: 0 } })
    const kvB = await PgKv.open(pg.url())
    const b = await Directory.open(kvB)
    const ops: Record<string, Array<{ us: number, trips: number }>> = { create: [], close: [], lookup: [], getattr: [], unlink: [] }
    for (let r = 0; r < RUNS; r++) {
      const d = await a.createNode(1, `d${r}`, { mode: 0o40755, uid: 0, gid: 0 })
      const names = Array.from({ length: N }, (_, i) => `f${i}`)
      const inos: number[] = []
      const time = async (what: string, op: (i: number) => Promise<unknown>): Promise<void> => {
        const t0 = trips
        const start = process.hrtime.bigint()
        for (let i = 0; i < N; i++) await op(i)
        ops[what].push({ us: Number(process.hrtime.bigint() - start) / 1000 / N, trips: (trips - t0) / N })
      }
      await time('create', async i => inos.push((await a.createNode(d.ino, names[i], { mode: 0o100644, uid: 0, gid: 0 })).ino))
      // What close of a small written file commits (a shared mount waits for it): one block and the size.
      await time('close', async i => await a.commitFiles([{
        ino: inos[i],
        changes: [{ index: 0, record: { bsl: { form: 'logical', volume: 1, fileId: BigInt(r * N + i + 1) }, length: 4096, checksum: 0 } }],
        patch: { size: 4096 }
      }]))
      await new Promise(resolve => setTimeout(resolve, 200)) // B hears the creates (its caches drop them)
      await time('lookup', async i => await b.lookup(d.ino, names[i]))
      await time('getattr', async i => await b.getInode(inos[i]))
      await time('unlink', async i => await a.unlink(d.ino, names[i]))
    }
    for (const [what, xs] of Object.entries(ops)) {
      console.log(`${what.padEnd(8)} ${median(xs.map(x => x.us)).toFixed(0).padStart(6)} µs  ${median(xs.map(x => x.trips)).toFixed(2)} round trips  (runs: ${xs.map(x => x.us.toFixed(0)).join(', ')})`)
    }
    console.log(`conflicts run again: A ${kvA.stats.conflictRetries}, B ${kvB.stats.conflictRetries}`)
    await b.close(); await a.close()
    await kvB.close(); await kvA.close()
  } finally {
    await pg.destroy()
  }
}

void main().catch(err => { console.error(err); process.exitCode = 1 })
