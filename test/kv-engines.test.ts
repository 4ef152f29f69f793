import t, { Test } from 'tap'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { FsError } from '../src/errors'
import { KvReader, KvStore } from '../src/directory/kv'
import { PgKv, PgKvOptions } from '../src/directory/postgres'
import { TcpRelay, pgUnavailable, startPostgres } from './helpers/postgres'
import { freshPgDatabase as freshDatabase, kvEngines, openPgKv as openPg, sharedPostgres } from './helpers/kv-engines'

// One KvStore conformance suite, run on every engine through the same code;
// then what only the PostgreSQL engine has: several processes on one
// database, outages, and the errors of a connection that cannot be made.
// Everything runs on real engines: LevelDB in a temp dir, a PostgreSQL this
// file starts (initdb as the `postgres` user, a free loopback port).

const B = (s: string): Buffer => Buffer.from(s, 'latin1')
const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

async function scanAll (r: KvReader, prefix: Buffer, opts?: { after?: Buffer, limit?: number }): Promise<string[]> {
  const out: string[] = []
  for await (const [k, v] of r.scan(prefix, opts)) out.push(`${k.toString('hex')}=${v.toString('latin1')}`)
  return out
}

async function errorOf (fn: () => Promise<unknown>): Promise<Error | undefined> {
  try {
    await fn()
  } catch (err) {
    return err as Error
  }
  return undefined
}

/** A seeded generator, so a failure repeats. */
function rng (seed: number): () => number {
  let s = seed >>> 0
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0
    return s / 2 ** 32
  }
}

const pgSkip = pgUnavailable()

async function freshPgDatabase (): Promise<string> {
  return (await freshDatabase()).url
}

for (const engine of kvEngines) {
  /** A new empty store for one test, closed at its end. */
  const fresh = async (t: Test): Promise<KvStore> => {
    const kv = await (await engine.place(t)).open({ create: true })
    t.teardown(() => kv.close())
    return kv
  }
  t.test(`${engine.name}: KvStore conformance`, { skip: engine.skip }, async t => {
    t.test('get, put, del, overwrite; a missing key is undefined', async t => {
      const kv = await fresh(t)
      t.equal(await kv.get(B('a')), undefined)
      await kv.txn(tx => { tx.put(B('a'), B('1')); tx.put(B('b'), B('2')) })
      t.equal((await kv.get(B('a')))?.toString(), '1')
      await kv.txn(tx => { tx.put(B('a'), B('one')); tx.del(B('b')); tx.del(B('never')) })
      t.equal((await kv.get(B('a')))?.toString(), 'one', 'overwritten')
      t.equal(await kv.get(B('b')), undefined, 'deleted')
      t.same(await scanAll(kv, B('')), [`${B('a').toString('hex')}=one`])
      t.equal(await kv.txn(() => 42), 42, 'txn returns the body\'s result')
      const big = Buffer.alloc(300_000, 7)
      await kv.txn(tx => { tx.put(B('big'), big); tx.put(B('empty'), Buffer.alloc(0)) })
      t.ok((await kv.get(B('big')))?.equals(big), 'a 300 kB value round-trips')
      t.equal((await kv.get(B('empty')))?.length, 0, 'an empty value is a value, not a missing key')
    })

    t.test('a transaction reads its own writes in get and scan', async t => {
      const kv = await fresh(t)
      await kv.txn(tx => { for (const k of ['p1', 'p3', 'p5', 'p7', 'q1', 'o9']) tx.put(B(k), B(`v${k}`)) })
      const seen = await kv.txn(async tx => {
        tx.put(B('p2'), B('new'))
        tx.put(B('p3'), B('changed'))
        tx.del(B('p5'))
        tx.put(B('p8'), B('tail'))
        return {
          p3: (await tx.get(B('p3')))?.toString(),
          p5: await tx.get(B('p5')),
          p2: (await tx.get(B('p2')))?.toString(),
          all: (await scanAll(tx, B('p'))).map(s => s.split('=')[1]),
          after: (await scanAll(tx, B('p'), { after: B('p2'), limit: 2 })).map(s => s.split('=')[1]),
          first: (await scanAll(tx, B('p'), { limit: 1 })).map(s => s.split('=')[1])
        }
      })
      t.equal(seen.p3, 'changed')
      t.equal(seen.p5, undefined, 'a deleted key reads as missing')
      t.equal(seen.p2, 'new')
      t.same(seen.all, ['vp1', 'new', 'changed', 'vp7', 'tail'], 'scan merges pending puts and deletes in key order')
      t.same(seen.after, ['changed', 'vp7'], 'after and limit apply to the merged view')
      t.same(seen.first, ['vp1'])
      t.same((await scanAll(kv, B('p'))).map(s => s.split('=')[1]), ['vp1', 'new', 'changed', 'vp7', 'tail'], 'and all of it committed')
    })

    t.test('scans: bytewise order, binary keys, prefix/after/limit against a model', async t => {
      const kv = await fresh(t)
      const random = rng(21)
      const model = new Map<string, Buffer>()
      // Keys over a small alphabet with 0x00 and 0xff, so prefixes collide and prefixEnd's edge (all 0xff) comes up.
      const alphabet = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff]
      const randomKey = (max: number): Buffer => Buffer.from(Array.from({ length: 1 + Math.floor(random() * max) }, () => alphabet[Math.floor(random() * alphabet.length)]))
      for (let batch = 0; batch < 6; batch++) {
        await kv.txn(tx => {
          for (let i = 0; i < 250; i++) {
            const k = randomKey(5)
            const v = Buffer.from(`${batch}.${i}`)
            tx.put(k, v)
            model.set(k.toString('latin1'), v)
          }
        })
      }
      for (const k of [Buffer.alloc(0), Buffer.from([0xff]), Buffer.from([0xff, 0xff, 0xff])]) {
        if (k.length === 0) continue // an empty key is not a directory key; engines need not agree on it
        await kv.txn(tx => { tx.put(k, B('edge')) })
        model.set(k.toString('latin1'), B('edge'))
      }
      const sorted = [...model.entries()].map(([k, v]) => [B(k), v] as const).sort((a, b) => Buffer.compare(a[0], b[0]))
      const expect = (prefix: Buffer, after?: Buffer, limit?: number): string[] => {
        const rows = sorted.filter(([k]) => k.length >= prefix.length && k.subarray(0, prefix.length).equals(prefix) && (!after || Buffer.compare(k, after) > 0))
        return rows.slice(0, limit ?? rows.length).map(([k, v]) => `${k.toString('hex')}=${v.toString('latin1')}`)
      }
      t.ok(sorted.length > SCAN_PAGE, `${sorted.length} keys: more than one page of a paged scan`)
      t.same(await scanAll(kv, Buffer.alloc(0)), expect(Buffer.alloc(0)), 'a full scan is in bytewise order (shorter first, 0x00 < 0xff)')
      let mismatches = 0
      for (let q = 0; q < 150; q++) {
        const prefix = q % 10 === 0 ? Buffer.from([0xff, 0xff]) : randomKey(2).subarray(0, Math.floor(random() * 3))
        const after = random() < 0.5 ? randomKey(4) : undefined
        const limit = random() < 0.6 ? Math.floor(random() * 300) : undefined
        const got = await scanAll(kv, prefix, { after, limit })
        const want = expect(prefix, after, limit)
        if (JSON.stringify(got) !== JSON.stringify(want)) {
          if (++mismatches <= 3) t.same(got, want, `scan ${prefix.toString('hex')} after ${after?.toString('hex')} limit ${limit}`)
        }
      }
      t.equal(mismatches, 0, '150 random scans agree with the model')
      // The same in a transaction with pending writes over the stored ones.
      const got = await kv.txn(async tx => {
        let n = 0
        for (const [k] of sorted) if (n++ % 3 === 0) tx.del(k)
        tx.put(Buffer.from([0x00, 0x00, 0x00, 0x00, 0x00, 0x00]), B('pending'))
        return await scanAll(tx, Buffer.from([0x00]), { limit: 40 })
      })
      let n = 0
      for (const [k] of sorted) if (n++ % 3 === 0) model.delete(k.toString('latin1'))
      model.set(Buffer.from([0, 0, 0, 0, 0, 0]).toString('latin1'), B('pending'))
      sorted.splice(0, sorted.length, ...[...model.entries()].map(([k, v]) => [B(k), v] as const).sort((a, b) => Buffer.compare(a[0], b[0])))
      t.same(got, expect(Buffer.from([0x00]), undefined, 40), 'a transaction\'s scan over its own deletes and puts')
      t.same(await scanAll(kv, Buffer.alloc(0)), expect(Buffer.alloc(0)), 'and the store after it committed')
    })

    t.test('a snapshot does not see later commits', async t => {
      const kv = await fresh(t)
      await kv.txn(tx => { tx.put(B('k1'), B('old')); tx.put(B('k2'), B('old')) })
      const snap = kv.snapshot()
      t.teardown(() => snap.close())
      await kv.txn(tx => { tx.put(B('k1'), B('new')); tx.del(B('k2')); tx.put(B('k3'), B('new')) })
      t.equal((await snap.get(B('k1')))?.toString(), 'old')
      t.equal((await snap.get(B('k2')))?.toString(), 'old')
      t.equal(await snap.get(B('k3')), undefined)
      t.same((await scanAll(snap, B('k'))).map(s => s.split('=')[1]), ['old', 'old'])
      t.same((await scanAll(kv, B('k'))).map(s => s.split('=')[1]), ['new', 'new'], 'the store has moved on')
      await snap.close()
    })

    t.test('a throwing body writes nothing; onCommit runs only after a commit, before the next transaction', async t => {
      const kv = await fresh(t)
      await kv.txn(tx => { tx.put(B('a'), B('1')) })
      let hooked = false
      const err = await errorOf(async () => await kv.txn(async tx => {
        tx.put(B('a'), B('changed'))
        tx.put(B('b'), B('2'))
        await tx.get(B('a'))
        tx.onCommit(() => { hooked = true })
        throw new Error('boom')
      }))
      t.equal(err?.message, 'boom', 'the body\'s error comes back unchanged')
      t.notOk(hooked, 'no hook for a failed transaction')
      t.same((await scanAll(kv, B(''))).map(s => s.split('=')[1]), ['1'], 'nothing of it was written')

      const order: string[] = []
      const first = kv.txn(tx => {
        tx.put(B('c'), B('3'))
        tx.onCommit(() => {
          order.push('hook 1')
          // In the hook the commit is done: a read outside the transaction sees it.
          void kv.get(B('c')).then(v => order.push(`read ${v?.toString()}`))
        })
        order.push('body 1')
      })
      const second = kv.txn(() => { order.push('body 2') })
      await Promise.all([first, second])
      await sleep(50)
      t.same(order.filter(s => !s.startsWith('read')), ['body 1', 'hook 1', 'body 2'], 'the hook runs before the next transaction starts')
      t.ok(order.includes('read 3'), 'the hook sees the committed write')
      // A batch the engine refuses (a value that is not a buffer) is EIO, writes none of its keys and runs no hook.
      const refused = await errorOf(async () => await kv.txn(tx => {
        tx.put(B('d'), B('4'))
        tx.put(B('e'), undefined as unknown as Buffer)
        tx.onCommit(() => { hooked = true })
      }))
      t.equal((refused as FsError | undefined)?.code, 'EIO', `a refused batch is EIO (${refused?.message})`)
      t.equal(await kv.get(B('d')), undefined, 'no part of a refused batch is written')
      t.notOk(hooked, 'no hook after a refused batch')
      t.equal(await kv.txn(tx => { tx.put(B('z'), B('9')); return 'ok' }), 'ok', 'transactions go on after a failure')
    })

    t.test('closed and opened again, a store holds every commit; a store never created does not open', async t => {
      const place = await engine.place(t)
      t.ok(await errorOf(async () => await (await place.open()).close()), 'opening a store that was never created fails')
      const kv = await place.open({ create: true })
      for (let i = 0; i < 500; i += 100) {
        await kv.txn(tx => { for (let j = i; j < i + 100; j++) tx.put(B(`k${String(j).padStart(4, '0')}`), B(`v${j}`)) })
      }
      await kv.txn(tx => { tx.del(B('k0003')) })
      await kv.close()
      const again = await place.open()
      t.teardown(() => again.close())
      const all = await scanAll(again, B('k'))
      t.equal(all.length, 499)
      t.equal(await again.get(B('k0003')), undefined)
      t.equal((await again.get(B('k0499')))?.toString(), 'v499')
    })

    t.test('sync: true commits as well', async t => {
      const kv = await fresh(t)
      await kv.txn(tx => { tx.put(B('s'), B('1')) }, { sync: true })
      t.equal((await kv.get(B('s')))?.toString(), '1')
    })
  })
}

/** A paged scan's page on the PostgreSQL engine (postgres.ts SCAN_CHUNK): the model test needs more keys than that. */
const SCAN_PAGE = 256

t.test('PgKv: several hosts on one database', { skip: pgSkip }, async t => {
  t.test('two stores incrementing one counter at once lose no update', async t => {
    const url = await freshPgDatabase()
    const hosts = [await openPg(t, url), await openPg(t, url, { concurrent: true })]
    const key = B('counter')
    let runs = 0
    const increment = async (kv: PgKv): Promise<void> => {
      await kv.txn(async tx => {
        runs++
        const v = Number((await tx.get(key))?.toString() ?? '0')
        await sleep(Math.random() * 3) // widen the window between read and write
        tx.put(key, B(String(v + 1)))
      })
    }
    const per = 40
    // Host 0 one transaction at a time (the default); host 1 four at once (concurrent: true).
    await Promise.all([
      (async () => { for (let i = 0; i < per; i++) await increment(hosts[0]) })(),
      ...[0, 1, 2, 3].map(async () => { for (let i = 0; i < per / 4; i++) await increment(hosts[1]) })
    ])
    t.equal((await hosts[0].get(key))?.toString(), String(2 * per), 'every increment counted')
    t.ok(runs > 2 * per, `conflicts were retried (${runs} runs for ${2 * per} commits)`)
    t.equal(hosts[0].stats.conflictRetries + hosts[1].stats.conflictRetries, runs - 2 * per, 'every rerun was counted')
  })

  t.test('a body run again after a conflict gets a fresh view and a fresh write set', async t => {
    const url = await freshPgDatabase()
    const a = await openPg(t, url)
    const b = await openPg(t, url)
    await a.txn(tx => { tx.put(B('k'), B('0')) })
    const views: Array<{ k?: string, scratch?: string }> = []
    let hooks = 0
    await a.txn(async tx => {
      const k = (await tx.get(B('k')))?.toString()
      views.push({ k, scratch: (await tx.get(B('scratch')))?.toString() })
      tx.put(B('scratch'), B(`run ${views.length}`))
      tx.onCommit(() => { hooks++ })
      if (views.length === 1) await b.txn(tx2 => { tx2.put(B('k'), B('from b')) })
      tx.put(B('k'), B(`${k} then a`))
    })
    t.same(views, [{ k: '0', scratch: undefined }, { k: 'from b', scratch: undefined }],
      'the second run reads b\'s commit, and nothing of the first run\'s writes')
    t.equal(hooks, 1, 'only the run that committed has its hook run')
    t.equal((await b.get(B('k')))?.toString(), 'from b then a')
    t.equal((await b.get(B('scratch')))?.toString(), 'run 2')
  })

  t.test('the change feed: a transaction\'s notes reach the other stores\' listeners once it commits, never its own', async t => {
    const url = await freshPgDatabase()
    const a = await openPg(t, url)
    const b = await openPg(t, url)
    const heard: Record<string, string[]> = { a: [], b: [] }
    let missed = 0
    const la = await a.changes.listen({ message: m => heard.a.push(m), missed: () => { missed++ } })
    const lb = await b.changes.listen({ message: m => heard.b.push(m), missed: () => { missed++ } })
    t.teardown(async () => { await la.close(); await lb.close() })
    let runs = 0
    await a.txn(async tx => {
      runs++
      tx.notify!(`note ${runs}`)
      await tx.get(B('k'))
      // The first run conflicts with b's write: its note must not go out.
      if (runs === 1) await b.txn(tx2 => { tx2.put(B('k'), B('b')) })
      tx.put(B('k'), B(String(runs)))
    })
    await errorOf(async () => await a.txn(tx => { tx.notify!('never'); tx.put(B('x'), B('1')); throw new Error('no') }))
    await a.txn(tx => { tx.notify!('second') })
    for (let i = 0; i < 100 && heard.b.length < 2; i++) await sleep(10)
    t.ok(runs >= 2, `the first run conflicted (${runs} runs)`)
    t.same(heard.b, [`note ${runs}`, 'second'], 'b heard the committed run\'s note and the next, in order; nothing of a run that did not commit')
    t.same(heard.a, [], 'a does not hear its own')
    t.equal(missed, 0)
  })

  t.test('a prefetch reads inside the transaction: its view is the transaction\'s, a run again reads afresh', async t => {
    const url = await freshPgDatabase()
    const a = await openPg(t, url)
    const b = await openPg(t, url)
    await a.txn(tx => { tx.put(B('p1'), B('0')); tx.put(B('p3'), B('0')) })
    const seen: Array<Array<string | undefined>> = []
    await a.txn(async tx => {
      // The first statement of the body: it carries BEGIN and fixes the snapshot.
      await tx.prefetch!([B('p1'), B('p2')])
      if (seen.length === 0) await b.txn(tx2 => { for (const k of ['p1', 'p2', 'p3']) tx2.put(B(k), B('b')) })
      const got = []
      for (const k of ['p1', 'p2', 'p3', 'p1']) got.push((await tx.get(B(k)))?.toString())
      seen.push(got)
      tx.put(B('p1'), B('a'))
    })
    t.same(seen[0], ['0', undefined, '0', '0'], 'the first run sees the store as it was at its prefetch, p3 (not prefetched) too: one snapshot')
    t.equal(seen.length, 2, 'b wrote what a then wrote: a ran again')
    t.same(seen[1], ['b', 'b', 'b', 'b'], 'the run again reads b\'s commit')
    t.equal((await b.get(B('p1')))?.toString(), 'a')
  })

  t.test('statements sent as literals with their BEGIN, and those too large for that, carry every byte', async t => {
    const url = await freshPgDatabase()
    const a = await openPg(t, url)
    const b = await openPg(t, url)
    const heard: string[] = []
    const lb = await b.changes.listen({ message: m => heard.push(m), missed: () => {} })
    t.teardown(async () => await lb.close())
    const odd = Buffer.from([0, 0x27, 0x5c, 0x22, 0xff, 0x0a, 0x3b])
    const note = 'it\'s a \\ "note"; COMMIT; é ✓'
    // Small: the writes go with BEGIN (nothing read first); then writes after a read.
    await a.txn(tx => { tx.put(Buffer.concat([B('s'), odd]), odd); tx.notify!(note) })
    await a.txn(async tx => { await tx.get(B('x')); tx.put(B('s2'), odd); tx.del(Buffer.concat([B('s'), odd])) })
    // Large (over 256 KiB): BEGIN on its own, then the writes as parameters.
    const big = Array.from({ length: 300 }, (_, i) => Buffer.concat([odd, Buffer.alloc(1024, i & 0xff)]))
    await a.txn(tx => { big.forEach((v, i) => tx.put(Buffer.concat([B('L'), odd, Buffer.from([i >> 8, i & 0xff])]), v)); tx.notify!(note) })
    t.same(await b.get(B('s2')), odd, 'binary value through the one-message commit')
    t.equal(await b.get(Buffer.concat([B('s'), odd])), undefined, 'and the delete')
    let n = 0
    for await (const [k, v] of b.scan(Buffer.concat([B('L'), odd]))) { t.same(v, big[k[k.length - 2] * 256 + k[k.length - 1]]); n++ }
    t.equal(n, 300, 'every key of the large write')
    for (let i = 0; i < 100 && heard.length < 2; i++) await sleep(10)
    t.same(heard, [note, note], 'the notes arrive as sent, both ways')
  })

  t.test('conflicts past the retry bound are EIO', async t => {
    const url = await freshPgDatabase()
    const a = await openPg(t, url, { retryAttempts: 3 })
    const b = await openPg(t, url)
    await a.txn(tx => { tx.put(B('k'), B('0')) })
    let runs = 0
    const err = await errorOf(async () => await a.txn(async tx => {
      runs++
      await tx.get(B('k'))
      await b.txn(tx2 => { tx2.put(B('k'), B(`b${runs}`)) })
      tx.put(B('k'), B('a'))
    }))
    t.ok(err instanceof FsError && err.code === 'EIO', `EIO: ${err?.message}`)
    t.match(err?.message, /conflicting after 3 attempts/)
    t.equal(runs, 3)
    t.equal((await a.get(B('k')))?.toString(), 'b3', 'none of a\'s runs was written')
  })
})

t.test('PgKv: the database goes away and comes back', { skip: pgSkip }, async t => {
  // A server of its own: these tests stop it.
  const server = await startPostgres(t)
  const url = server.url()

  t.test('stopped mid-transaction: EIO within the bound, nothing written; back: the same store goes on', async t => {
    const kv = await openPg(t, url, { outageMs: 1500 })
    await kv.txn(tx => { tx.put(B('kept'), B('1')) })
    const start = Date.now()
    let stopped = 0
    const err = await errorOf(async () => await kv.txn(async tx => {
      await tx.get(B('kept'))
      tx.put(B('lost'), B('x'))
      tx.put(B('kept'), B('2'))
      if (stopped++ === 0) await server.stop()
    }))
    const took = Date.now() - start
    t.ok(err instanceof FsError && err.code === 'EIO', `EIO: ${err?.message}`)
    t.ok(took < 1500 + 3000, `within the bound (${took} ms)`)
    t.notMatch(err?.message ?? '', /password/i)
    await server.start()
    t.equal((await kv.get(B('kept')))?.toString(), '1', 'the failed transaction wrote nothing')
    t.equal(await kv.get(B('lost')), undefined)
    await kv.txn(tx => { tx.put(B('after'), B('ok')) })
    t.equal((await kv.get(B('after')))?.toString(), 'ok', 'the same PgKv works after the restart')
  })

  t.test('an operation during a short outage waits and succeeds', async t => {
    const kv = await openPg(t, url, { outageMs: 10_000 })
    await kv.txn(tx => { tx.put(B('n'), B('1')) })
    await server.stop()
    const back = sleep(1000).then(async () => await server.start())
    const start = Date.now()
    await kv.txn(async tx => {
      const n = Number((await tx.get(B('n')))?.toString())
      tx.put(B('n'), B(String(n + 1)))
    })
    t.ok(Date.now() - start >= 900, `it waited for the server (${Date.now() - start} ms)`)
    t.equal((await kv.get(B('n')))?.toString(), '2')
    const getDuring = (async () => { await server.stop(); const p = kv.get(B('n')); await sleep(500); await server.start(); return await p })()
    await back
    t.equal((await getDuring)?.toString(), '2', 'a get waits out an outage too')
  })

  for (const how of ['restart', 'crash'] as const) {
  t.test(`${how} under a stream of commits loses none that returned`, async t => {
    const kv = await openPg(t, url, { outageMs: 10_000 })
    const prefix = how === 'restart' ? 'w' : 'c'
    const committed: number[] = []
    let stop = false
    const writer = (async () => {
      for (let i = 0; !stop; i++) {
        try {
          await kv.txn(tx => { tx.put(B(`${prefix}${String(i).padStart(6, '0')}`), B(String(i))) })
          committed.push(i)
        } catch {}
      }
    })()
    try {
      await sleep(300)
      if (how === 'restart') {
        await server.restart() // fast shutdown: clients cut off, then up again
      } else {
        await server.kill() // SIGKILL: recovery from the WAL at the next start
        await server.start()
      }
      await sleep(300)
    } finally {
      stop = true
      await writer
    }
    const stored = new Set((await scanAll(kv, B(prefix))).map(s => Number(s.split('=')[1])))
    t.ok(committed.length > 10, `${committed.length} commits around the ${how}`)
    t.equal(committed.filter(i => !stored.has(i)).length, 0, 'every commit that returned is stored')
  })
  }
})

t.test('PgKv: a COMMIT whose answer is lost is looked up, not guessed', { skip: pgSkip }, async t => {
  const { server: pg, database: db } = await freshDatabase()
  const relay = await TcpRelay.start(pg.port)
  t.teardown(async () => await relay.close())
  const kv = await openPg(t, pg.url({ database: db, port: relay.port }))
  // A deferred trigger makes the COMMIT of a transaction that writes key "slow" take 600 ms: the window to break it in.
  await pg.sql(`CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.6); RETURN NULL; END $$`, [], db)
  await pg.sql(`CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT OR UPDATE ON kv DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.k = '\\x736c6f77'::bytea) EXECUTE FUNCTION slow_commit()`, [], db)
  /** The backend of the transaction now in COMMIT. */
  const committing = async (): Promise<number> => {
    for (let i = 0; i < 500; i++) {
      const rows = await pg.sql("SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = 'bslfs' AND state = 'active' AND query = 'COMMIT'", [db])
      if (rows.length > 0) return Number(rows[0].pid)
      await sleep(10)
    }
    throw new Error('no transaction reached COMMIT')
  }
  let runs = 0
  let hooks = 0
  const increment = async (): Promise<void> => await kv.txn(async tx => {
    runs++
    const n = Number((await tx.get(B('n')))?.toString() ?? '0')
    tx.put(B('n'), B(String(n + 1)))
    tx.put(B('slow'), B(String(runs)))
    tx.onCommit(() => { hooks++ })
  })

  const first = increment()
  await committing()
  relay.cut() // the server goes on and commits; the client never hears
  await first
  t.equal(runs, 1, 'the server committed it: the body is not run again')
  t.equal(hooks, 1, 'and its hooks ran')
  t.equal((await kv.get(B('n')))?.toString(), '1', 'counted once')

  runs = 0
  hooks = 0
  const second = increment()
  await pg.sql('SELECT pg_terminate_backend($1)', [await committing()]) // the server aborts it mid-COMMIT
  await second
  t.equal(runs, 2, 'the server aborted it: the body ran again')
  t.equal(kv.stats.commitsLookedUp, 2, 'both lost COMMITs were looked up')
  t.equal(hooks, 1, 'hooks of the run that committed only')
  t.equal((await kv.get(B('n')))?.toString(), '2', 'counted once')
})

t.test('PgKv: a database that cannot be opened is one clear line', { skip: pgSkip }, async t => {
  const pg = await sharedPostgres()
  await pg.createRole('alice', 's3cret-pw')
  const one = async (url: string, re: RegExp, code: string, what: string, opts: PgKvOptions = {}): Promise<void> => {
    const err = await errorOf(async () => await PgKv.open(url, { connectTimeoutMs: 2000, ...opts }))
    t.ok(err instanceof FsError, `${what}: an FsError (${err?.message})`)
    t.equal((err as FsError | undefined)?.code, code, `${what}: ${code}`)
    t.match(err?.message, re, what)
    t.notOk(err?.message.includes('\n'), `${what}: one line`)
    t.notOk(/s3cret|wrong-pw/.test(err?.message ?? ''), `${what}: no password in it`)
  }
  const closed = await new Promise<number>(resolve => {
    const srv = require('node:net').createServer().listen(0, '127.0.0.1', () => { const p = srv.address().port; srv.close(() => resolve(p)) })
  })
  await one(pg.url({ user: 'alice', password: 'wrong-pw' }), /PostgreSQL at 127\.0\.0\.1:\d+: authentication failed for user "alice"/, 'EACCES', 'wrong password')
  await one(pg.url({ user: 'alice' }), /authentication failed for user "alice".*none was given/, 'EACCES', 'no password')
  await one(pg.url({ user: 'alice', password: 's3cret-pw', database: 'nosuch' }), /database "nosuch" does not exist/, 'ENOENT', 'missing database')
  await one(pg.url({ user: 'alice', password: 's3cret-pw', port: closed }), new RegExp(`PostgreSQL at 127\\.0\\.0\\.1:${closed}: connection refused`), 'ECONNREFUSED', 'nothing listening')
  await one('postgres://alice:s3cret-pw@[::1', /not a PostgreSQL URL/, 'EINVAL', 'malformed URL')
  await one('/var/lib/bslfs/demo', /not a PostgreSQL URL/, 'EINVAL', 'a path where a URL is needed')
  await one('postgres://alice:s3cret-pw@127.0.0.1:5432/', /needs a host and a database/, 'EINVAL', 'no database in the URL')
  await one(pg.url({ user: 'alice', password: 's3cret-pw' }), /holds no bslfs directory/, 'ENOENT', 'a database without the tables', { createIfMissing: false })

  // The password from a file: used when private, refused when others can read it.
  const dir = await mkdtemp(join(tmpdir(), 'bslfs-pw-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'pw')
  await writeFile(file, 's3cret-pw\n', { mode: 0o644 })
  await one(pg.url({ user: 'alice' }), /readable by others/, 'EACCES', 'a password file others can read', { passwordFile: file })
  await writeFile(file + '2', 's3cret-pw\n', { mode: 0o600 })
  const kv = await PgKv.open(pg.url({ user: 'alice' }), { passwordFile: file + '2', createIfMissing: true })
  t.teardown(() => kv.close())
  t.notMatch(kv.location, /s3cret/, 'the location shown has no password')
  await kv.txn(tx => { tx.put(B('x'), B('1')) })
  t.equal((await kv.get(B('x')))?.toString(), '1', 'the password file works')
})
