/**
 * Several Directory instances on one store stand for several hosts mounting
 * one filesystem: each has its own caches, id ranges and usage row. On the
 * shared LevelKv wrapper (rerun-kv.ts) their transactions are serialized
 * by one engine, which shows stale caches and blind counter writes; on PgKv
 * (two stores on one database) they really run at once, and conflicts are
 * PostgreSQL's serialization failures, run again.
 */
import t, { Test } from 'tap'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { FsError } from '../src/errors'
import { Change, Directory, NOTHING_OPEN, RemoteChanges } from '../src/directory/directory'
import { KvStore } from '../src/directory/kv'
import { LevelKv } from '../src/directory/leveldb'
import { PgKv } from '../src/directory/postgres'
import { NamespaceReader } from '../src/directory/reader'
import { Inode, ROOT_INO, keys } from '../src/directory/records'
import { S_IFDIR, S_IFREG, isDir } from '../src/posix/modes'
import { freshPgDatabase } from './helpers/kv-engines'
import { pgUnavailable } from './helpers/postgres'
import { RerunKv } from './helpers/rerun-kv'
import { type Hosts, levelHosts, pgHosts } from './helpers/directory-hosts'

const FILE = { mode: S_IFREG | 0o644, uid: 0, gid: 0 }
const DIR = { mode: S_IFDIR | 0o755, uid: 0, gid: 0 }

async function codeOf (p: Promise<unknown>): Promise<string> {
  try {
    await p
    return 'ok'
  } catch (err) {
    if (err instanceof FsError) return err.code
    throw err
  }
}

/** What fsck checks of the namespace, read from one snapshot of the store: a list of what is wrong (empty when clean). */
async function namespaceProblems (kv: KvStore): Promise<string[]> {
  const snap = kv.snapshot()
  const read = new NamespaceReader(snap)
  const problems: string[] = []
  try {
    const inodes = new Map<number, Inode>()
    for await (const inode of read.allInodes()) inodes.set(inode.ino, inode)
    const names = new Map<number, number>()
    const subdirs = new Map<number, number>()
    for await (const e of read.allEntries()) {
      const inode = inodes.get(e.ino)
      const at = `${e.parent}/${e.name}`
      if (!inode) { problems.push(`${at} names missing inode ${e.ino}`); continue }
      if (!inodes.has(e.parent)) problems.push(`${at}: its directory is missing`)
      if (isDir(inode.mode) !== isDir(e.mode)) problems.push(`${at}: entry type differs from inode ${e.ino}`)
      names.set(e.ino, (names.get(e.ino) ?? 0) + 1)
      if (isDir(inode.mode)) {
        subdirs.set(e.parent, (subdirs.get(e.parent) ?? 0) + 1)
        if (inode.parent !== e.parent) problems.push(`directory ${e.ino} is named in ${e.parent} but records parent ${String(inode.parent)}`)
        if ((names.get(e.ino) ?? 0) > 1) problems.push(`directory ${e.ino} has two names`)
      }
    }
    for (const [ino, inode] of inodes) {
      const n = names.get(ino) ?? 0
      if (ino !== ROOT_INO && n === 0) problems.push(`inode ${ino} has no name`)
      if (isDir(inode.mode)) {
        const want = 2 + (subdirs.get(ino) ?? 0)
        if (inode.nlink !== want) problems.push(`directory ${ino} nlink ${inode.nlink}, has ${want}`)
      } else if (inode.nlink !== n) problems.push(`file ${ino} nlink ${inode.nlink}, named ${n} times`)
    }
    if ((await read.orphanInodes()).length > 0) problems.push('orphan records left')
    const usage = await read.usage()
    if (usage.files !== inodes.size) problems.push(`usage counts ${usage.files} files, the store holds ${inodes.size}`)
  } finally {
    await snap.close()
  }
  return problems
}

/** A small seeded generator (mulberry32): the same run every time. */
function seeded (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = Math.imul(a ^ (a >>> 15), 1 | a)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

function hostTests (make: (t: Test) => Promise<Hosts>): (t: Test) => Promise<void> {
  return async t => {
    t.test('a name another host created is seen inside the transaction, not the stale cache', async t => {
      const { a, b } = await make(t)
      t.equal(await a.lookup(ROOT_INO, 'x'), undefined, 'host A caches that x is absent')
      const made = await b.createNode(ROOT_INO, 'x', FILE)
      t.equal(await codeOf(a.createNode(ROOT_INO, 'x', FILE)), 'EEXIST', 'host A cannot create x over B\'s')
      t.equal(await codeOf(a.link(made.ino, ROOT_INO, 'x')), 'EEXIST')
      await a.unlink(ROOT_INO, 'x')
      t.equal(await codeOf(b.unlink(ROOT_INO, 'x')), 'ENOENT', 'host B, which cached x, finds it gone')
      b.dropCaches()
      t.equal(await b.lookup(ROOT_INO, 'x'), undefined)
      t.equal((await b.getInode(ROOT_INO)).nlink, 2)
    })

    t.test('two hosts never hand out one inode number or object id', async t => {
      const { a, b, kv } = await make(t)
      const inos = new Set<number>()
      const made = await Promise.all(Array.from({ length: 40 }, async (_, i) =>
        await (i % 2 === 0 ? a : b).createNode(ROOT_INO, `f${i}`, FILE)))
      for (const m of made) inos.add(m.ino)
      t.equal(inos.size, 40, 'forty creates, forty inode numbers')
      const ids = new Set<bigint>()
      for (let i = 0; i < 20; i++) {
        ids.add(await a.allocateObjectId())
        ids.add(await b.allocateObjectId())
      }
      t.equal(ids.size, 40, 'forty object ids, all different')
      t.same(await namespaceProblems(kv), [])
    })

    t.test('usage totals: each host its own row, the sum right, folded at close', async t => {
      const { a, b, kv } = await make(t)
      for (let i = 0; i < 3; i++) await a.createNode(ROOT_INO, `a${i}`, FILE)
      for (let i = 0; i < 2; i++) await b.createNode(ROOT_INO, `b${i}`, FILE)
      await b.unlink(ROOT_INO, 'a0')
      t.equal(a.usage.files, 4, 'host A counts its own creates at once')
      await a.refreshUsage()
      t.equal(a.usage.files, 5, 'and the other host\'s after a refresh')
      const rows: string[] = []
      for await (const [k] of kv.scan(keys.meta('usage/'))) rows.push(k.toString())
      t.equal(rows.length, 2, 'one usage row per mount')
      t.equal(await codeOf(kv.txn(tx => { tx.del(keys.meta('nothing')) })), 'ok')
      t.same(await namespaceProblems(kv), [])
    })

    t.test('xattrs another host set are read, and freed with their inode', async t => {
      const { a, b, kv } = await make(t)
      const f = await a.createNode(ROOT_INO, 'f', FILE)
      await b.setXattr(f.ino, 'user.k', Buffer.from('v'), 0)
      t.equal((await a.getXattr(f.ino, 'user.k')).toString(), 'v')
      t.same(await a.listXattrs(f.ino), ['user.k'])
      await a.unlink(ROOT_INO, 'f')
      const left: string[] = []
      for await (const [k] of kv.scan(keys.xattrPrefix)) left.push(k.toString('hex'))
      t.same(left, [], 'no xattr outlives its inode')
    })

    t.test('two hosts rename one file at once: one wins, the file has one name', async t => {
      const { a, b, kv } = await make(t)
      for (let i = 0; i < 20; i++) {
        const f = await a.createNode(ROOT_INO, `src${i}`, FILE)
        const codes = await Promise.all([
          codeOf(a.rename(ROOT_INO, `src${i}`, ROOT_INO, `toA${i}`)),
          codeOf(b.rename(ROOT_INO, `src${i}`, ROOT_INO, `toB${i}`))
        ])
        t.same(codes.slice().sort(), ['ENOENT', 'ok'], `round ${i}: one rename took, the other found no source`)
        a.dropCaches()
        b.dropCaches()
        const where = [await a.lookup(ROOT_INO, `toA${i}`), await a.lookup(ROOT_INO, `toB${i}`), await b.lookup(ROOT_INO, `src${i}`)]
        t.same(where.filter(x => x !== undefined), [f.ino], 'the file is under the winner\'s name only')
      }
      t.same(await namespaceProblems(kv), [])
    })

    t.test('random operations racing in one directory from two hosts lose nothing', async t => {
      const { a, b, kv, conflicts } = await make(t)
      const shared = (await a.createNode(ROOT_INO, 'shared', DIR)).ino
      const NAMES = Array.from({ length: 12 }, (_, i) => `n${i}`)
      const own: Record<string, Set<string>> = { A: new Set(), B: new Set() }
      const counts: Record<string, number> = {}
      const run = async (host: Directory, who: string, seed: number): Promise<void> => {
        const rnd = seeded(seed)
        const pick = (): string => NAMES[Math.floor(rnd() * NAMES.length)]
        for (let i = 0; i < 200; i++) {
          const r = rnd()
          let op: string
          let p: Promise<unknown>
          if (r < 0.1) {
            // Names only this host touches: every one it made must be there at the end.
            op = 'own'
            const name = `${who}-${i}`
            p = host.createNode(shared, name, FILE).then(() => own[who].add(name))
          } else if (r < 0.3) { op = 'create'; p = host.createNode(shared, pick(), FILE) }
          else if (r < 0.45) { op = 'unlink'; p = host.unlink(shared, pick()) }
          else if (r < 0.65) { op = 'rename'; p = host.rename(shared, pick(), shared, pick()) }
          else if (r < 0.75) {
            op = 'link'
            const from = pick()
            p = host.lookup(shared, from).then(async ino => {
              if (ino === undefined) throw new FsError('ENOENT', from)
              return await host.link(ino, shared, pick())
            })
          } else if (r < 0.88) { op = 'mkdir'; p = host.createNode(shared, pick(), DIR) }
          else { op = 'rmdir'; p = host.rmdir(shared, pick()) }
          const code = await codeOf(p)
          counts[`${op} ${code}`] = (counts[`${op} ${code}`] ?? 0) + 1
          // Each host acts on what it believes; a stale belief must fail cleanly, never corrupt.
          if (rnd() < 0.2) host.dropCaches()
        }
      }
      await Promise.all([run(a, 'A', 21), run(b, 'B', 42)])
      t.comment(`outcomes: ${JSON.stringify(counts)}; conflicts run again: ${conflicts()}`)
      for (const op of ['create ok', 'unlink ok', 'rename ok', 'mkdir ok']) t.ok((counts[op] ?? 0) > 0, `some ${op}`)
      t.same(await namespaceProblems(kv), [], 'the namespace is consistent (fsck\'s checks)')
      a.dropCaches()
      b.dropCaches()
      const listA = (await a.readdir(shared)).map(e => `${e.name}:${e.ino}`).sort()
      const listB = (await b.readdir(shared)).map(e => `${e.name}:${e.ino}`).sort()
      t.same(listA, listB, 'both hosts see the same directory')
      for (const who of ['A', 'B']) {
        for (const name of own[who]) t.ok(await a.lookup(shared, name) !== undefined, `${name} was not lost`)
      }
      for (const e of await a.readdir(shared)) {
        t.equal((await a.getInode(e.ino)).ino, (await b.getInode(e.ino)).ino)
        t.same(await a.getInode(e.ino), await b.getInode(e.ino), `${e.name}: both hosts read one inode`)
      }
      await a.refreshUsage()
      await b.refreshUsage()
      t.same(a.usage, b.usage, 'both hosts count the same usage')
    })
  }
}

t.test('RerunKv runs every body twice and keeps only the second run', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'bslfs-rerun-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const kv = new RerunKv(await LevelKv.open(join(dir, 'db'), { createIfMissing: true }))
  t.teardown(() => kv.close())
  let inBody = 0
  let onCommit = 0
  await kv.txn(async tx => {
    const n = Number((await tx.get(Buffer.from('n')))?.toString() ?? '0')
    inBody++ // what a body must not do: the wrapper shows it
    tx.put(Buffer.from('n'), Buffer.from(String(n + 1)))
    tx.onCommit(() => { onCommit++ })
  })
  t.equal(inBody, 2, 'a change made in the body happens once per run')
  t.equal(onCommit, 1, 'a change made on commit happens once')
  t.equal((await kv.get(Buffer.from('n')))?.toString(), '1', 'the first run\'s write was thrown away')
  t.equal(kv.reruns, 1)
})

/** What host B heard of the others' changes, with when. */
class Heard implements RemoteChanges {
  readonly changes: Array<{ at: number, change: Change }> = []
  misses = 0
  private waiters: Array<() => void> = []
  changed (change: Change): void {
    this.changes.push({ at: performance.now(), change })
    for (const w of this.waiters.splice(0)) w()
  }

  missed (): void {
    this.misses++
    for (const w of this.waiters.splice(0)) w()
  }

  /** Until `ok()` holds, at most `ms`. */
  async until (ok: () => boolean, ms = 5000): Promise<boolean> {
    const deadline = performance.now() + ms
    while (!ok()) {
      const left = deadline - performance.now()
      if (left <= 0) return false
      await new Promise<void>(resolve => {
        const timer = setTimeout(resolve, left)
        this.waiters.push(() => { clearTimeout(timer); resolve() })
      })
    }
    return true
  }
}

t.test('the change feed on PostgreSQL', { skip: pgUnavailable() ?? false }, async t => {
  const { server, url, database } = await freshPgDatabase()
  const kvA = await PgKv.open(url, { createIfMissing: true })
  const kvB = await PgKv.open(url)
  const heardA = new Heard()
  const heardB = new Heard()
  const a = await Directory.create(kvA, { blockSize: 65536, root: { uid: 0, gid: 0 }, remote: heardA })
  const b = await Directory.open(kvB, NOTHING_OPEN, heardB)
  t.teardown(async () => { await a.close(); await b.close() })

  t.test('a change on A reaches B after its commit, and B\'s caches drop it', async t => {
    t.equal(await b.lookup(ROOT_INO, 'x'), undefined, 'B caches that x is absent')
    const x = await a.createNode(ROOT_INO, 'x', FILE)
    t.ok(await heardB.until(() => heardB.changes.some(c => c.change.inodes.includes(x.ino))), 'B heard of the new inode')
    const change = heardB.changes.at(-1)!.change
    t.ok(change.entries.some(e => e.parent === ROOT_INO && e.name === 'x'), 'and of the entry (parent, name)')
    t.ok(change.inodes.includes(ROOT_INO), 'and of the directory it changed')
    t.equal(await b.lookup(ROOT_INO, 'x'), x.ino, 'B\'s lookup sees x without dropping its caches by hand')
    await a.setAttrs(x.ino, { mode: S_IFREG | 0o600 })
    t.ok(await heardB.until(() => heardB.changes.length >= 2))
    t.equal((await b.getInode(x.ino)).mode & 0o777, 0o600, 'B reads the new mode')
    t.equal(heardA.changes.length, 0, 'A does not hear its own changes')
    const files = a.usage.files
    t.equal(files, 2, 'A counts the root and x')
    t.ok(await heardB.until(() => b.usage.files === files, 3000), `B's usage follows A's within a second or so (${b.usage.files})`)
  })

  t.test('the delay from a commit on A to B hearing it', async t => {
    const delays: number[] = []
    for (let i = 0; i < 200; i++) {
      const n = heardB.changes.length
      const start = performance.now()
      await a.createNode(ROOT_INO, `d${i}`, FILE)
      const committed = performance.now()
      t.ok(await heardB.until(() => heardB.changes.length > n), `change ${i} heard`)
      delays.push(heardB.changes[n].at - committed)
      if (i === 0) t.comment(`one create took ${(committed - start).toFixed(2)} ms`)
    }
    delays.sort((x, y) => x - y)
    const median = delays[delays.length >> 1]
    const worst = delays[delays.length - 1]
    t.comment(`commit on A → heard on B over ${delays.length} changes: median ${median.toFixed(2)} ms, p90 ${delays[Math.floor(delays.length * 0.9)].toFixed(2)} ms, worst ${worst.toFixed(2)} ms (after the commit returned; negative: heard before A's COMMIT reply arrived)`)
    t.ok(median < 50, `median under 50 ms (${median.toFixed(2)})`)
  })

  t.test('a change to the tables reaches B as a change of the tables, and B reads the new row', async t => {
    const n = heardB.changes.length
    await a.setVolume(7, { server: 's9', device: 'd3' })
    t.ok(await heardB.until(() => heardB.changes.slice(n).some(c => c.change.tables === true)), 'B heard that the tables changed')
    t.same((await b.tables()).volumes.get(7)?.place, { server: 's9', device: 'd3' }, 'B reads the row A wrote')
    const m = heardB.changes.length
    await a.createNode(ROOT_INO, 'not-a-table-change', FILE)
    t.ok(await heardB.until(() => heardB.changes.length > m))
    t.notOk(heardB.changes.slice(m).some(c => c.change.tables === true), 'a namespace change says nothing of the tables')
  })

  t.test('a dropped LISTEN connection: B flushes its caches, reconnects and hears again', async t => {
    const y = await a.createNode(ROOT_INO, 'y', FILE)
    t.ok(await heardB.until(() => heardB.changes.some(c => c.change.inodes.includes(y.ino))))
    t.equal(await b.lookup(ROOT_INO, 'y'), y.ino)
    const misses = heardB.misses
    await server.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'bslfs-listen' AND datname = $1", [database])
    t.ok(await heardB.until(() => heardB.misses >= misses + 2, 10_000), 'B was told twice: at the drop, and once listening again')
    const z = await a.createNode(ROOT_INO, 'z', FILE)
    t.ok(await heardB.until(() => heardB.changes.some(c => c.change.inodes.includes(z.ino))), 'B hears changes after the reconnect')
  })
})

t.test('two hosts creating in one directory on PostgreSQL: conflicts and time, against one alone', { skip: pgUnavailable() ?? false }, async t => {
  const N = 150
  const measure = async (hostCount: number): Promise<{ ms: number, conflicts: number, commits: number }> => {
    const { url } = await freshPgDatabase()
    const stores = [await PgKv.open(url, { createIfMissing: true })]
    const dirs = [await Directory.create(stores[0], { blockSize: 65536, root: { uid: 0, gid: 0 } })]
    for (let i = 1; i < hostCount; i++) {
      stores.push(await PgKv.open(url))
      dirs.push(await Directory.open(stores[i]))
    }
    const shared = (await dirs[0].createNode(ROOT_INO, 'd', DIR)).ino
    const before = stores.map(s => ({ ...s.stats }))
    const start = performance.now()
    await Promise.all(dirs.map(async (d, h) => {
      for (let i = 0; i < N / hostCount; i++) await d.createNode(shared, `h${h}-${i}`, FILE)
    }))
    const ms = performance.now() - start
    const conflicts = stores.reduce((n, s, i) => n + s.stats.conflictRetries - before[i].conflictRetries, 0)
    const commits = stores.reduce((n, s, i) => n + s.stats.commits - before[i].commits, 0)
    t.equal((await dirs[0].readdir(shared)).length, N, `${hostCount} host(s): every create is there`)
    for (const d of dirs) await d.close()
    return { ms, conflicts, commits }
  }
  const one = await measure(1)
  const two = await measure(2)
  t.comment(`${N} creates in one directory: one host ${one.ms.toFixed(0)} ms (${(one.ms * 1000 / N).toFixed(0)} us each, ${one.conflicts} conflicts); ` +
    `two hosts at once ${two.ms.toFixed(0)} ms (${(two.ms * 1000 / N).toFixed(0)} us each; ${two.conflicts} serialization failures run again over ${two.commits} commits)`)
  t.equal(one.conflicts, 0, 'one host alone never conflicts')
})

t.test('two hosts on one store (LevelKv, shared, every txn rerun once)', hostTests(levelHosts))
t.test('two hosts on one PostgreSQL database', { skip: pgUnavailable() ?? false }, hostTests(pgHosts))
