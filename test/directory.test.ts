import t, { Test } from 'tap'
import fc from 'fast-check'
import { join } from 'node:path'
import { BSL, objectIdOf } from '../src/bsl'
import { FsError } from '../src/errors'
import { KvReader, KvSnapshot, KvStore, KvTxn } from '../src/directory/kv'
import { LevelKv } from '../src/directory/leveldb'
import { BlockRecord, ROOT_INO, decodeBlock, encodeBlock, keys } from '../src/directory/records'
import { CHUNK_BYTES, checksum, chunkSums } from '../src/checksum'
import { Directory, NAME_MAX, OpenInodes } from '../src/directory/directory'
import { S_IFDIR, S_IFREG, S_ISGID, isDir } from '../src/posix/modes'
import { KvEngine, StorePlace, engines } from './helpers/engines'

// Every suite registered with onEachEngine runs once per KvStore engine
// (test/helpers/engines.ts), each test on a real store of its own; the
// LevelKv tests are LevelDB's alone.

const FILE = { mode: S_IFREG | 0o644, uid: 1000, gid: 1000 }
const DIR = { mode: S_IFDIR | 0o755, uid: 1000, gid: 1000 }
const B = (s: string): Buffer => Buffer.from(s)

let dbCount = 0
function dbPath (t: Test): string {
  return join(t.testdir(), `db-${++dbCount}`)
}

/** The error a call rejects (or throws) with; fails the test when it succeeds. */
async function errorOf (fn: () => Promise<unknown> | unknown): Promise<FsError | Error | undefined> {
  try {
    await fn()
  } catch (err) {
    return err as Error
  }
  return undefined
}

async function rejectsCode (t: Test, fn: () => Promise<unknown> | unknown, code: string, what?: string): Promise<FsError | undefined> {
  const err = await errorOf(fn)
  if (!(err instanceof FsError)) {
    t.fail(`${what ?? 'call'}: expected FsError ${code}, got ${err === undefined ? 'success' : String(err)}`)
    return undefined
  }
  t.equal(err.code, code, what ?? `rejects with ${code}`)
  return err
}

async function openKv (path: string): Promise<LevelKv> {
  return LevelKv.open(path, { createIfMissing: true })
}

async function scanAll (kv: KvReader, prefix: Buffer, opts?: { after?: Buffer, limit?: number }): Promise<string[]> {
  const out: string[] = []
  for await (const [k, v] of kv.scan(prefix, opts)) out.push(`${k.toString('latin1')}=${v.toString('latin1')}`)
  return out
}

type EngineSuite = (t: Test, engine: KvEngine) => Promise<void>
const engineSuites: Array<{ name: string, fn: EngineSuite }> = []

/** A test of the directory or of the KvStore contract, run once per engine (see the end of the file). */
function onEachEngine (name: string, fn: EngineSuite): void {
  engineSuites.push({ name, fn })
}

/** A filesystem on its own store; reopen() simulates an unmount and mount. */
class Fs {
  kv!: KvStore
  dir!: Directory
  private open = false

  private constructor (readonly place: StorePlace) {}

  static async create (t: Test, engine: KvEngine, blockSize = 65536, openInodes?: OpenInodes): Promise<Fs> {
    const fs = new Fs(engine.place(t))
    fs.kv = await fs.place.open()
    fs.dir = await Directory.create(fs.kv, { blockSize, root: { uid: 0, gid: 0 }, openInodes })
    fs.open = true
    t.teardown(() => fs.close())
    return fs
  }

  async close (): Promise<void> {
    if (!this.open) return
    this.open = false
    await this.dir.close()
  }

  async reopen (): Promise<Directory> {
    await this.close()
    this.kv = await this.place.open()
    this.dir = await Directory.open(this.kv)
    this.open = true
    return this.dir
  }
}

const bslOf = (fileId: bigint, index: number, volume = 1): BSL => ({ form: 'indexed', volume, index, fileId })
const recOf = (fileId: bigint, index: number, length: number): BlockRecord =>
  ({ bsl: bslOf(fileId, index), length, checksum: Number(fileId * 7919n % 0xffffffffn) })
const oid = (fileId: bigint): string => objectIdOf(bslOf(fileId, 0))

async function reclaimQueueIds (dir: Directory): Promise<string[]> {
  return (await dir.reclaimQueue(1_000_000)).map(g => g.objectId).sort()
}

// ---------------------------------------------------------------------------
// The KvStore contract

onEachEngine('KvStore', async (t, engine) => {
  t.test('a transaction commits atomically; one whose fn throws writes nothing', async t => {
    const kv = await engine.place(t).open()
    t.teardown(() => kv.close())
    await kv.txn(tx => { tx.put(B('a'), B('1')); tx.put(B('b'), B('2')) })
    t.same(await scanAll(kv, B('')), ['a=1', 'b=2'])

    let hooked = false
    const err = await errorOf(() => kv.txn(async tx => {
      tx.put(B('a'), B('changed'))
      tx.del(B('b'))
      tx.put(B('c'), B('3'))
      tx.onCommit(() => { hooked = true })
      await new Promise(resolve => setImmediate(resolve))
      throw new Error('boom')
    }))
    t.equal(err?.message, 'boom', 'the error of fn comes back unchanged')
    t.same(await scanAll(kv, B('')), ['a=1', 'b=2'], 'nothing of the failed transaction was written')
    t.notOk(hooked, 'onCommit hook of a failed transaction never runs')

    // A batch the engine refuses (an invalid value) is an EIO, writes none of its keys and runs no hook.
    const e2 = await rejectsCode(t, () => kv.txn(tx => {
      tx.put(B('d'), B('4'))
      tx.put(B('e'), undefined as unknown as Buffer)
      tx.onCommit(() => { hooked = true })
    }), 'EIO', 'a batch the engine rejects is EIO')
    t.ok(e2)
    t.equal(await kv.get(B('d')), undefined, 'no part of a refused batch is written')
    t.notOk(hooked, 'no hook after a refused batch')

    // The lock is released after failures: later transactions still run.
    t.equal(await kv.txn(tx => { tx.put(B('z'), B('9')); return 'ok' }), 'ok', 'txn returns fn\'s result')
    t.same((await kv.get(B('z')))?.toString(), '9')
  })

  t.test('a transaction sees its own writes in get and scan', async t => {
    const kv = await engine.place(t).open()
    t.teardown(() => kv.close())
    await kv.txn(tx => {
      for (const k of ['p1', 'p3', 'p5', 'p7', 'q1', 'o9']) tx.put(B(k), B(`v${k}`))
    })
    await kv.txn(async tx => {
      tx.put(B('p2'), B('new2'))
      tx.put(B('p3'), B('new3'))
      tx.del(B('p5'))
      tx.put(B('p8'), B('new8'))
      tx.put(B('p0'), B('new0'))
      tx.del(B('p9')) // deleting a key that does not exist
      t.equal((await tx.get(B('p3')))?.toString(), 'new3', 'get sees an overwrite')
      t.equal((await tx.get(B('p2')))?.toString(), 'new2', 'get sees a new key')
      t.equal(await tx.get(B('p5')), undefined, 'get hides a delete')
      t.equal((await tx.get(B('p1')))?.toString(), 'vp1', 'get falls through to the store')
      t.equal(await kv.get(B('p2')), undefined, 'outside the transaction nothing is visible yet')
      t.same(await scanAll(tx, B('p')), ['p0=new0', 'p1=vp1', 'p2=new2', 'p3=new3', 'p7=vp7', 'p8=new8'],
        'scan merges pending writes with stored keys, in order, deletes hidden')
      t.same(await scanAll(tx, B('p'), { after: B('p2') }), ['p3=new3', 'p7=vp7', 'p8=new8'], 'after is exclusive')
      t.same(await scanAll(tx, B('p'), { after: B('p4') }), ['p7=vp7', 'p8=new8'], 'after between keys')
      t.same(await scanAll(tx, B('p'), { limit: 2 }), ['p0=new0', 'p1=vp1'], 'limit')
      t.same(await scanAll(tx, B('p'), { after: B('p1'), limit: 3 }), ['p2=new2', 'p3=new3', 'p7=vp7'], 'after + limit')
      t.same(await scanAll(tx, B('p'), { after: B('a') }), await scanAll(tx, B('p')), 'after before the prefix')
      t.same(await scanAll(tx, B('p'), { after: B('p8') }), [], 'after the last key')
      t.same(await scanAll(tx, B('q')), ['q1=vq1'], 'other prefixes unaffected')
      // Writes after a scan are seen by the next scan.
      tx.del(B('p7'))
      t.same(await scanAll(tx, B('p'), { after: B('p3') }), ['p8=new8'])
    })
    t.same(await scanAll(kv, B('p')), ['p0=new0', 'p1=vp1', 'p2=new2', 'p3=new3', 'p8=new8'], 'committed as seen')
  })

  t.test('scan with prefix, after and limit on the store', async t => {
    const kv = await engine.place(t).open()
    t.teardown(() => kv.close())
    const ff = Buffer.from([0xff])
    await kv.txn(tx => {
      for (const k of ['a', 'ab', 'abc', 'abd', 'ac', 'b']) tx.put(B(k), B(k.toUpperCase()))
      tx.put(Buffer.from([0xff, 0x01]), B('x'))
      tx.put(Buffer.from([0xff, 0xff]), B('y'))
      tx.put(Buffer.from([0xff, 0xff, 0xff]), B('z'))
    })
    t.same(await scanAll(kv, B('ab')), ['ab=AB', 'abc=ABC', 'abd=ABD'])
    t.same(await scanAll(kv, B('ab'), { after: B('ab') }), ['abc=ABC', 'abd=ABD'])
    t.same(await scanAll(kv, B('ab'), { after: B('abc'), limit: 5 }), ['abd=ABD'])
    t.same(await scanAll(kv, B('a'), { limit: 2 }), ['a=A', 'ab=AB'])
    t.same(await scanAll(kv, B('zz')), [])
    const high: string[] = []
    for await (const [k] of kv.scan(ff)) high.push(k.toString('hex'))
    t.same(high, ['ff01', 'ffff', 'ffffff'], 'a prefix of 0xff bytes has no upper bound and still works')
    const high2: string[] = []
    for await (const [k] of kv.scan(Buffer.from([0xff, 0xff]))) high2.push(k.toString('hex'))
    t.same(high2, ['ffff', 'ffffff'])
  })

  t.test('transactions are serialized', async t => {
    const kv = await engine.place(t).open()
    t.teardown(() => kv.close())
    const N = 200
    const order: number[] = []
    await Promise.all(Array.from({ length: N }, (_, i) => kv.txn(async tx => {
      const raw = await tx.get(B('counter'))
      const n = raw ? Number(raw.toString()) : 0
      // Yield to the event loop between the read and the write: without the lock, updates would be lost.
      await new Promise(resolve => setImmediate(resolve))
      tx.put(B('counter'), B(String(n + 1)))
      order.push(i)
    })))
    t.equal((await kv.get(B('counter')))?.toString(), String(N), 'read-modify-write of concurrent transactions is exact')
    t.same(order, Array.from({ length: N }, (_, i) => i), 'transactions run in the order they were started')
  })

  t.test('onCommit hooks run after the commit, before the next transaction', async t => {
    const kv = await engine.place(t).open()
    t.teardown(() => kv.close())
    const events: string[] = []
    const first = kv.txn(tx => {
      tx.put(B('k'), B('v'))
      tx.onCommit(() => { events.push('hook1') })
      tx.onCommit(() => { events.push('hook2') })
      events.push('fn1')
    })
    const second = kv.txn(async tx => {
      events.push(`fn2 sees ${(await tx.get(B('k')))?.toString()}`)
    })
    await Promise.all([first, second])
    t.same(events, ['fn1', 'hook1', 'hook2', 'fn2 sees v'])

    // Inside the hook the batch is already in the store.
    let seen: Promise<Buffer | undefined> | undefined
    await kv.txn(tx => {
      tx.put(B('k2'), B('v2'))
      tx.onCommit(() => { seen = kv.get(B('k2')) })
    })
    t.equal((await seen)?.toString(), 'v2', 'a read started in the hook sees the batch')

    // A read-only transaction runs its hooks too.
    let ran = false
    await kv.txn(tx => { tx.onCommit(() => { ran = true }) })
    t.ok(ran)
  })

  t.test('a scan longer than one synchronous read sees one state of the store', async t => {
    const kv = await engine.place(t).open()
    t.teardown(() => kv.close())
    const key = (i: number): Buffer => B(`k${String(i).padStart(4, '0')}`)
    const N = 700 // more than two of the engine's 256-entry reads
    await kv.txn(tx => { for (let i = 0; i < N; i++) tx.put(key(i), B(`v${i}`)) })
    const all = Array.from({ length: N }, (_, i) => `${key(i).toString()}=v${i}`)
    t.same(await scanAll(kv, B('k')), all, 'every key, in order, across the reads')
    for (const limit of [1, 255, 256, 257, 512, 513, 699, 700, 701]) {
      t.same(await scanAll(kv, B('k'), { limit }), all.slice(0, limit), `limit ${limit}`)
    }
    for (const after of [0, 254, 255, 256, 511, 698, 699]) {
      t.same(await scanAll(kv, B('k'), { after: key(after) }), all.slice(after + 1), `after the key at ${after}`)
      t.same(await scanAll(kv, B('k'), { after: key(after), limit: 300 }), all.slice(after + 1, after + 301), `after ${after}, limit 300`)
    }

    // A batch that commits while the scan is under way (after its first read) is not seen by it.
    const seen: string[] = []
    let changed = false
    for await (const [k, v] of kv.scan(B('k'))) {
      seen.push(`${k.toString()}=${v.toString()}`)
      if (!changed) {
        changed = true
        await kv.txn(tx => {
          for (let i = 600; i < N; i++) tx.del(key(i))
          tx.put(key(300), B('changed'))
          tx.put(B('k0650x'), B('new'))
        })
      }
    }
    t.same(seen, all, 'the scan saw the store as it was when it started')
    const after = await scanAll(kv, B('k'))
    t.equal(after.length, 601, 'the batch did commit')
    t.ok(after.includes('k0300=changed') && after.includes('k0650x=new'))

    // A snapshot's scan too, however many reads it takes.
    const snap = kv.snapshot()
    t.teardown(() => snap.close())
    await kv.txn(tx => { for (let i = 0; i < 600; i++) tx.del(key(i)) })
    t.same(await scanAll(snap, B('k')), after, 'a snapshot scans its own state')
    t.same(await scanAll(kv, B('k')), ['k0650x=new'], 'the store moved on')
  })

  t.test('reopen after close sees everything', async t => {
    const place = engine.place(t)
    const kv = await place.open()
    const want: string[] = []
    for (let i = 0; i < 500; i += 50) {
      await kv.txn(tx => {
        for (let j = i; j < i + 50; j++) tx.put(B(`k${String(j).padStart(4, '0')}`), B(`v${j}`))
      })
    }
    await kv.txn(tx => { tx.del(B('k0003')) })
    for (let j = 0; j < 500; j++) if (j !== 3) want.push(`k${String(j).padStart(4, '0')}=v${j}`)
    await kv.close()
    const again = await place.open()
    t.teardown(() => again.close())
    t.same(await scanAll(again, B('k')), want)
  })

  t.test('a body that throws writes nothing: thrown before or after awaiting, with or without sync', async t => {
    const kv = await engine.place(t).open()
    t.teardown(() => kv.close())
    await kv.txn(tx => { tx.put(B('a'), B('1')) })
    for (const sync of [false, true]) {
      const thrown = new Error(`thrown, sync ${String(sync)}`)
      let hooked = false
      const early = await errorOf(() => kv.txn(tx => {
        tx.put(B('a'), B('x'))
        tx.put(B('b'), B('y'))
        tx.onCommit(() => { hooked = true })
        throw thrown
      }, { sync }))
      t.equal(early, thrown, `a body that throws before awaiting: its error comes back (sync ${String(sync)})`)
      const late = await errorOf(() => kv.txn(async tx => {
        tx.put(B('b'), B('y'))
        tx.del(B('a'))
        t.same(await scanAll(tx, B('')), ['b=y'], 'the body sees its own writes before it throws')
        tx.onCommit(() => { hooked = true })
        throw thrown
      }, { sync }))
      t.equal(late, thrown, `a body that throws after its reads: its error comes back (sync ${String(sync)})`)
      t.same(await scanAll(kv, B('')), ['a=1'], 'neither body wrote anything')
      t.notOk(hooked, 'no hook of a body that threw ran')
    }
    t.same(await kv.txn(async tx => (await tx.get(B('a')))?.toString()), '1', 'the next transaction runs')
  })
})

// ---------------------------------------------------------------------------
// LevelKv (LevelDB's own)

t.test('LevelKv', async t => {
  t.test('batches LevelDB might stall go through the thread pool, with the same result', async t => {
    // level0SyncLimit 0: as if level 0 were always full, so no batch is written on this thread.
    const path = dbPath(t)
    const kv = await LevelKv.open(path, { createIfMissing: true, level0SyncLimit: 0 })
    let hooked = 0
    await kv.txn(tx => { tx.put(B('a'), B('1')); tx.put(B('b'), B('2')); tx.onCommit(() => { hooked++ }) })
    await kv.txn(tx => { tx.del(B('a')); tx.put(B('c'), B('3')); tx.onCommit(() => { hooked++ }) }, { sync: true })
    await Promise.all(Array.from({ length: 50 }, (_, i) => kv.txn(tx => { tx.put(B(`n${String(i).padStart(2, '0')}`), B(String(i))) })))
    t.equal(hooked, 2, 'hooks ran once per commit')
    t.same(await scanAll(kv, B('')), ['b=2', 'c=3', ...Array.from({ length: 50 }, (_, i) => `n${String(i).padStart(2, '0')}=${i}`)])
    await rejectsCode(t, () => kv.txn(tx => { tx.put(B('d'), undefined as unknown as Buffer) }), 'EIO', 'a bad value is still refused whole')
    await kv.close()
    const again = await openKv(path)
    t.teardown(() => again.close())
    t.equal((await scanAll(again, B(''))).length, 52, 'all of it is in the store after a reopen')
  })

  t.test('classic-level\'s binding carries bslfs\'s synchronous batch and scan', async t => {
    const { ClassicLevel } = await import('classic-level')
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const binding = require('classic-level/binding')
    t.equal(typeof binding.batch_do_sync, 'function', 'npm install rebuilt the binding (scripts/build-native.js)')
    t.equal(typeof binding.scan_sync, 'function')
    const db = new ClassicLevel<Buffer, Buffer>(dbPath(t), { keyEncoding: 'buffer', valueEncoding: 'buffer' })
    await db.open()
    const ctx = (db as unknown as Record<symbol, unknown>)[Object.getOwnPropertySymbols(db).find(s => s.description === 'context')!]
    t.equal(binding.batch_do_sync(ctx, [B('a'), B('b'), B('c')], [B('1'), B('2'), B('3')], 4), true, 'written on this thread')
    t.same(binding.scan_sync(ctx, B('a'), true, null, 10, undefined).map(String), ['a', '1', 'b', '2', 'c', '3'])
    t.equal(binding.batch_do_sync(ctx, [B('a'), B('d')], [null, B('4')], 0), false, 'level 0 at its limit: refused')
    t.equal(String(db.getSync(B('a'))), '1', 'a refused batch writes nothing')
    t.equal(db.getSync(B('d')), undefined)
    t.equal(binding.batch_do_sync(ctx, [B('a'), B('d')], [null, B('4')], 4), true)
    t.same(binding.scan_sync(ctx, B('b'), false, null, 10, undefined).map(String), ['c', '3', 'd', '4'], 'from excluded; a null value deleted a')
    t.same(binding.scan_sync(ctx, B('b'), true, B('d'), 10, undefined).map(String), ['b', '2', 'c', '3'], 'to excluded')
    t.same(binding.scan_sync(ctx, B('b'), true, null, 1, undefined).map(String), ['b', '2'], 'limit')
    t.same(binding.scan_sync(ctx, B('e'), true, null, 10, undefined), [], 'nothing from past the end')
    t.throws(() => binding.batch_do_sync(ctx, [B('x')], [7], 4), 'a value that is not a buffer is refused')
    t.equal(db.getSync(B('x')), undefined)
    await db.close()
    t.throws(() => binding.batch_do_sync(ctx, [B('x')], [null], 4), { code: 'LEVEL_DATABASE_NOT_OPEN' }, 'a closed database is refused, not touched')
    t.throws(() => binding.scan_sync(ctx, B('a'), true, null, 1, undefined), { code: 'LEVEL_DATABASE_NOT_OPEN' })
  })

  t.test('a second open is refused; a missing database is not created unasked', async t => {
    const path = dbPath(t)
    const kv = await openKv(path)
    t.teardown(() => kv.close())
    await rejectsOrThrows(t, () => LevelKv.open(path), 'a second open of an open database fails (LevelDB lock)')
    await rejectsOrThrows(t, () => LevelKv.open(dbPath(t)), 'opening a missing database without createIfMissing fails')
  })
})

async function rejectsOrThrows (t: Test, fn: () => Promise<unknown>, what: string): Promise<void> {
  const err = await errorOf(fn)
  if (err === undefined) t.fail(what)
  else t.pass(what)
}

// ---------------------------------------------------------------------------
// Directory: create, open, corruption

onEachEngine('Directory.create then open; empty and corrupt databases', async (t, engine) => {
  t.test('create then open', async t => {
    const fs = await Fs.create(t, engine, 131072)
    const root = await fs.dir.getInode(ROOT_INO)
    t.ok(isDir(root.mode))
    t.equal(root.nlink, 2)
    t.equal(root.parent, ROOT_INO)
    t.same(fs.dir.usage, { files: 1, bytes: 0 })
    const uuid = fs.dir.config.uuid
    await rejectsCode(t, () => Directory.create(fs.kv, { blockSize: 65536, root: { uid: 0, gid: 0 } }), 'EEXIST', 'create over an existing filesystem')
    const dir = await fs.reopen()
    t.equal(dir.config.uuid, uuid)
    t.equal(dir.blockSize, 131072)
    t.same(dir.usage, { files: 1, bytes: 0 })
    t.same(await dir.readdir(ROOT_INO), [])
  })

  t.test('open of an empty database is ENOENT', async t => {
    const kv = await engine.place(t).open()
    t.teardown(() => kv.close())
    await rejectsCode(t, () => Directory.open(kv), 'ENOENT')
  })

  const corruptions: Array<[string, (ino: number) => Buffer, Buffer, RegExp]> = [
    ['config not JSON', () => keys.meta('config'), B('{{{garbage'), /configuration/],
    ['config of the wrong shape', () => keys.meta('config'), B('{"format":"ext4","version":1}'), /configuration/],
    ['config with a silly block size', () => keys.meta('config'), B('{"format":"bslfs-directory","version":1,"uuid":"x","blockSize":7}'), /configuration/],
    ['root inode not JSON', () => keys.inode(ROOT_INO), Buffer.from([0, 1, 2, 0xff]), /inode 1\b/],
    ['root inode with a bad mode', () => keys.inode(ROOT_INO), B('{"ino":1,"mode":-5}'), /inode 1\b/],
    ['root inode naming another ino', () => keys.inode(ROOT_INO), B('{"ino":2}'), /inode 1\b/],
    ['ino counter', () => keys.meta('ino'), B('"two"'), /metadata "ino"/],
    ['object counter', () => keys.meta('object'), B('12'), /metadata "object"/],
    ['usage', () => keys.meta('usage'), B('null'), /metadata "usage"/]
  ]
  for (const [what, key, garbage, names] of corruptions) {
    t.test(`corrupt record: ${what} → EIO naming it`, async t => {
      const fs = await Fs.create(t, engine)
      await fs.close()
      const kv = await fs.place.open()
      await kv.txn(tx => { tx.put(key(ROOT_INO), garbage) })
      const err = await rejectsCode(t, () => Directory.open(kv), 'EIO')
      t.match(err?.message ?? '', names, `message names the record: ${err?.message}`)
      await kv.close()
    })
  }

  t.test('a corrupt file inode or entry is EIO when read, not a crash', async t => {
    const fs = await Fs.create(t, engine)
    const f = await fs.dir.createNode(ROOT_INO, 'f', FILE)
    await fs.dir.createNode(ROOT_INO, 'g', FILE)
    await fs.close()
    const kv = await fs.place.open()
    await kv.txn(tx => {
      tx.put(keys.inode(f.ino), B(JSON.stringify({ ino: f.ino, mode: S_IFREG, uid: 0, gid: 0, nlink: 'many' })))
      tx.put(keys.entry(ROOT_INO, 'g'), B('short'))
    })
    const dir = await Directory.open(kv)
    t.teardown(() => dir.close())
    t.equal(await dir.lookup(ROOT_INO, 'f'), f.ino, 'the entry itself is fine')
    const err = await rejectsCode(t, () => dir.getInode(f.ino), 'EIO')
    t.match(err?.message ?? '', new RegExp(`inode ${f.ino}\\b`))
    await rejectsCode(t, () => dir.resolve('/f/x'), 'EIO', 'resolving through it')
    const e2 = await rejectsCode(t, () => dir.lookup(ROOT_INO, 'g'), 'EIO', 'a short entry record')
    t.match(e2?.message ?? '', /directory entry/)
    await rejectsCode(t, () => dir.readdir(ROOT_INO), 'EIO', 'readdir over a corrupt entry')
  })
})

// ---------------------------------------------------------------------------
// Namespace

onEachEngine('createNode, lookup, resolve, resolveParent', async (t, engine) => {
  const fs = await Fs.create(t, engine)
  const dir = fs.dir
  const a = await dir.createNode(ROOT_INO, 'a', DIR)
  const f = await dir.createNode(a.ino, 'f', FILE)
  const link = await dir.createNode(a.ino, 'sym', { mode: 0o120777, uid: 1, gid: 1, target: 'f' })
  t.equal(link.target, 'f')
  t.equal(link.size, 1)
  t.equal(await dir.lookup(ROOT_INO, 'a'), a.ino)
  t.equal(await dir.lookup(a.ino, 'f'), f.ino)
  t.equal(await dir.lookup(a.ino, 'nope'), undefined)
  t.equal(await dir.resolve('/'), ROOT_INO)
  t.equal(await dir.resolve('/a'), a.ino)
  t.equal(await dir.resolve('/a/f'), f.ino)
  t.equal(await dir.resolve('/a/'), a.ino, 'a trailing slash')
  t.same(await dir.resolveParent('/a/f'), { parent: a.ino, name: 'f' })
  t.same(await dir.resolveParent('/x'), { parent: ROOT_INO, name: 'x' })
  t.same(await dir.resolveParent('/a/new'), { parent: a.ino, name: 'new' }, 'the last name need not exist')
  t.not(a.ino, f.ino)
  t.equal((await dir.getInode(a.ino)).parent, ROOT_INO)
  t.equal((await dir.getInode(ROOT_INO)).nlink, 3)

  await rejectsCode(t, () => dir.createNode(ROOT_INO, 'a', FILE), 'EEXIST', 'create over an existing name')
  await rejectsCode(t, () => dir.createNode(a.ino, 'f', DIR), 'EEXIST', 'mkdir over an existing file')
  await rejectsCode(t, () => dir.resolve('/b'), 'ENOENT')
  await rejectsCode(t, () => dir.resolve('/b/c'), 'ENOENT')
  await rejectsCode(t, () => dir.resolve('/a/f/x'), 'ENOTDIR', 'resolve through a file')
  await rejectsCode(t, () => dir.resolve('/a/f/x/y'), 'ENOTDIR')
  await rejectsCode(t, () => dir.resolveParent('/a/f/x'), 'ENOTDIR', 'resolveParent under a file')
  await rejectsCode(t, () => dir.resolveParent('/nope/x'), 'ENOENT')
  await rejectsCode(t, () => dir.createNode(f.ino, 'x', FILE), 'ENOTDIR', 'createNode in a file')
  await rejectsCode(t, () => dir.createNode(99999, 'x', FILE), 'ENOENT', 'createNode in a missing inode')
  await rejectsCode(t, () => dir.readdir(f.ino), 'ENOTDIR')

  // Names: 255 bytes are fine, 256 are not (bytes, not characters).
  const n255 = 'x'.repeat(NAME_MAX)
  t.equal(NAME_MAX, 255)
  const long = await dir.createNode(a.ino, n255, FILE)
  t.equal(await dir.lookup(a.ino, n255), long.ino)
  t.equal(await dir.resolve(`/a/${n255}`), long.ino)
  const utf255 = 'é'.repeat(127) + 'x' // 255 bytes, 128 characters
  t.equal(Buffer.byteLength(utf255), 255)
  await dir.createNode(a.ino, utf255, FILE)
  const n256 = 'y'.repeat(256)
  const utf256 = 'é'.repeat(128) // 256 bytes, 128 characters
  for (const name of [n256, utf256]) {
    await rejectsCode(t, () => dir.createNode(a.ino, name, FILE), 'ENAMETOOLONG', `createNode ${name.length} chars`)
    await rejectsCode(t, () => dir.lookup(a.ino, name), 'ENAMETOOLONG', 'lookup')
    await rejectsCode(t, () => dir.resolve(`/a/${name}`), 'ENAMETOOLONG', 'resolve')
    await rejectsCode(t, () => dir.resolveParent(`/a/${name}`), 'ENAMETOOLONG', 'resolveParent')
    await rejectsCode(t, () => dir.link(f.ino, a.ino, name), 'ENAMETOOLONG', 'link')
    await rejectsCode(t, () => dir.rename(a.ino, 'f', a.ino, name), 'ENAMETOOLONG', 'rename')
  }
  for (const bad of ['', 'a/b', '/', '.', '..', 'nul\0x']) {
    await rejectsCode(t, () => dir.createNode(ROOT_INO, bad, FILE), 'EINVAL', `createNode ${JSON.stringify(bad)}`)
    await rejectsCode(t, () => dir.link(f.ino, ROOT_INO, bad), 'EINVAL', `link ${JSON.stringify(bad)}`)
    await rejectsCode(t, () => dir.rename(a.ino, 'f', ROOT_INO, bad), 'EINVAL', `rename to ${JSON.stringify(bad)}`)
  }
  await rejectsCode(t, () => dir.resolveParent('/a/'), 'EINVAL', 'resolveParent with an empty last name')
  t.same((await dir.readdir(a.ino)).map(e => e.name).sort(), ['f', 'sym', n255, utf255].sort(), 'no rejected name was created')
  t.same(dir.usage.files, 6)

  await fs.reopen()
  t.equal(await fs.dir.resolve(`/a/${utf255}`), (await fs.dir.lookup(a.ino, utf255)))
  t.equal((await fs.dir.getInode(link.ino)).target, 'f')
})

onEachEngine('setgid directories hand down their group and setgid bit', async (t, engine) => {
  const fs = await Fs.create(t, engine)
  const dir = fs.dir
  const shared = await dir.createNode(ROOT_INO, 'shared', { mode: S_IFDIR | S_ISGID | 0o2775, uid: 0, gid: 500 })
  t.equal(shared.mode & S_ISGID, S_ISGID)
  const file = await dir.createNode(shared.ino, 'f', { mode: S_IFREG | 0o644, uid: 1000, gid: 1000 })
  t.equal(file.gid, 500, 'file gets the directory\'s group')
  t.equal(file.mode & S_ISGID, 0, 'a file does not get S_ISGID')
  const sub = await dir.createNode(shared.ino, 'sub', { mode: S_IFDIR | 0o755, uid: 1000, gid: 1000 })
  t.equal(sub.gid, 500, 'subdirectory gets the group')
  t.equal(sub.mode & S_ISGID, S_ISGID, 'subdirectory inherits S_ISGID')
  t.equal(sub.mode & 0o777, 0o755, 'permission bits kept')
  const deep = await dir.createNode(sub.ino, 'deep', { mode: S_IFREG | 0o600, uid: 1000, gid: 1000 })
  t.equal(deep.gid, 500, 'inherited through the subdirectory')
  const plain = await dir.createNode(ROOT_INO, 'plain', { mode: S_IFDIR | 0o755, uid: 1000, gid: 1000 })
  const pf = await dir.createNode(plain.ino, 'f', { mode: S_IFREG | 0o644, uid: 1000, gid: 1000 })
  t.equal(pf.gid, 1000, 'a plain directory does not')
  t.equal(plain.mode & S_ISGID, 0)
  await fs.reopen()
  t.equal((await fs.dir.getInode(sub.ino)).mode & S_ISGID, S_ISGID, 'persisted')
  t.equal((await fs.dir.getInode(file.ino)).gid, 500)
})

onEachEngine('link counts', async (t, engine) => {
  const fs = await Fs.create(t, engine)
  const dir = fs.dir
  const nlink = async (ino: number): Promise<number> => (await dir.getInode(ino)).nlink
  const f = await dir.createNode(ROOT_INO, 'f', FILE)
  t.equal(await nlink(f.ino), 1)
  const after = await dir.link(f.ino, ROOT_INO, 'g')
  t.equal(after.nlink, 2)
  t.equal(await nlink(f.ino), 2)
  t.equal(await dir.lookup(ROOT_INO, 'g'), f.ino)
  await rejectsCode(t, () => dir.link(f.ino, ROOT_INO, 'g'), 'EEXIST', 'link over an existing name')
  await rejectsCode(t, () => dir.link(f.ino, f.ino, 'x'), 'ENOTDIR', 'link into a file')
  await rejectsCode(t, () => dir.link(424242, ROOT_INO, 'x'), 'ENOENT', 'link of a missing inode')

  t.equal(await nlink(ROOT_INO), 2)
  const d1 = await dir.createNode(ROOT_INO, 'd1', DIR)
  t.equal(d1.nlink, 2, 'a new directory has nlink 2')
  t.equal(await nlink(ROOT_INO), 3, 'parent +1 per subdirectory')
  const d2 = await dir.createNode(ROOT_INO, 'd2', DIR)
  t.equal(await nlink(ROOT_INO), 4)
  const d11 = await dir.createNode(d1.ino, 'd11', DIR)
  await dir.createNode(d1.ino, 'file', FILE)
  t.equal(await nlink(d1.ino), 3, 'files do not count')
  await rejectsCode(t, () => dir.link(d1.ino, ROOT_INO, 'dl'), 'EPERM', 'hard link to a directory')
  await rejectsCode(t, () => dir.unlink(ROOT_INO, 'd1'), 'EISDIR', 'unlink of a directory')
  await rejectsCode(t, () => dir.rmdir(ROOT_INO, 'f'), 'ENOTDIR', 'rmdir of a file')
  await rejectsCode(t, () => dir.rmdir(ROOT_INO, 'd1'), 'ENOTEMPTY', 'rmdir of a non-empty directory')
  await rejectsCode(t, () => dir.rmdir(ROOT_INO, 'nope'), 'ENOENT')
  await rejectsCode(t, () => dir.unlink(ROOT_INO, 'nope'), 'ENOENT')
  t.equal(await nlink(d1.ino), 3, 'failed calls changed nothing')
  await dir.rmdir(d1.ino, 'd11')
  t.equal(await nlink(d1.ino), 2, 'rmdir restores the parent\'s count')
  await rejectsCode(t, () => dir.getInode(d11.ino), 'ENOENT', 'the removed directory\'s inode is gone')
  await dir.unlink(d1.ino, 'file')
  await dir.rmdir(ROOT_INO, 'd1')
  await dir.rmdir(ROOT_INO, 'd2')
  t.equal(await nlink(ROOT_INO), 2)
  t.not(d2.ino, d1.ino)

  await dir.unlink(ROOT_INO, 'f')
  t.equal(await nlink(f.ino), 1, 'unlink one of two links')
  t.equal(await dir.lookup(ROOT_INO, 'f'), undefined)
  t.equal(await dir.lookup(ROOT_INO, 'g'), f.ino)
  await dir.unlink(ROOT_INO, 'g')
  await rejectsCode(t, () => dir.getInode(f.ino), 'ENOENT', 'last link gone: inode gone')
  t.same(dir.usage.files, 1)
  await fs.reopen()
  t.same(fs.dir.usage.files, 1)
  t.equal((await fs.dir.getInode(ROOT_INO)).nlink, 2)
  t.same(await fs.dir.readdir(ROOT_INO), [])
})

onEachEngine('rename', async (t, engine) => {
  const fs = await Fs.create(t, engine)
  const dir = fs.dir
  const nlink = async (ino: number): Promise<number> => (await dir.getInode(ino)).nlink
  /** Look both names up (warming the cache), rename, and check both names again. */
  const renameChecked = async (sp: number, sn: string, dp: number, dn: string): Promise<void> => {
    const ino = await dir.lookup(sp, sn)
    await dir.lookup(dp, dn)
    await dir.getInode(ino!)
    await dir.rename(sp, sn, dp, dn)
    if (sp !== dp || sn !== dn) t.equal(await dir.lookup(sp, sn), undefined, `${sn} is gone after the rename`)
    t.equal(await dir.lookup(dp, dn), ino, `${dn} names the moved inode`)
  }

  t.test('over an existing file', async t => {
    const f = await dir.createNode(ROOT_INO, 'f', FILE)
    const g = await dir.createNode(ROOT_INO, 'g', FILE)
    await dir.commitBlocks(g.ino, [{ index: 0, record: recOf(9001n, 0, 10) }, { index: 1, record: recOf(9002n, 1, 5) }], { size: 65541 })
    await dir.commitBlocks(f.ino, [{ index: 0, record: recOf(9003n, 0, 3) }], { size: 3 })
    const files = dir.usage.files
    const bytes = dir.usage.bytes
    await renameChecked(ROOT_INO, 'f', ROOT_INO, 'g')
    await rejectsCode(t, () => dir.getInode(g.ino), 'ENOENT', 'the old target inode is gone')
    t.same(await reclaimQueueIds(dir), [oid(9001n), oid(9002n)], 'its blocks are queued for reclaim')
    t.equal(dir.usage.files, files - 1)
    t.equal(dir.usage.bytes, bytes - 15)
    t.same([...(await dir.getBlocks(f.ino)).keys()], [0], 'the moved file keeps its blocks')
    t.same((await dir.getBlocks(g.ino)).size, 0)
    t.equal(await nlink(f.ino), 1)
    await dir.forgetReclaimed([oid(9001n), oid(9002n)])
    t.same(await reclaimQueueIds(dir), [])
    await dir.unlink(ROOT_INO, 'g')
    await dir.forgetReclaimed(await reclaimQueueIds(dir))
  })

  t.test('over a file with another link keeps that inode', async t => {
    const f = await dir.createNode(ROOT_INO, 'f', FILE)
    const g = await dir.createNode(ROOT_INO, 'g', FILE)
    await dir.link(g.ino, ROOT_INO, 'g2')
    await renameChecked(ROOT_INO, 'f', ROOT_INO, 'g')
    t.equal(await nlink(g.ino), 1)
    t.equal(await dir.lookup(ROOT_INO, 'g2'), g.ino)
    t.equal(await dir.lookup(ROOT_INO, 'g'), f.ino)
    await dir.unlink(ROOT_INO, 'g')
    await dir.unlink(ROOT_INO, 'g2')
  })

  t.test('directories over directories, files over directories and back', async t => {
    const a = await dir.createNode(ROOT_INO, 'a', DIR)
    const b = await dir.createNode(ROOT_INO, 'b', DIR)
    const full = await dir.createNode(ROOT_INO, 'full', DIR)
    await dir.createNode(full.ino, 'x', FILE)
    const file = await dir.createNode(ROOT_INO, 'file', FILE)
    t.equal(await nlink(ROOT_INO), 5)
    await rejectsCode(t, () => dir.rename(ROOT_INO, 'a', ROOT_INO, 'full'), 'ENOTEMPTY', 'dir over non-empty dir')
    await rejectsCode(t, () => dir.rename(ROOT_INO, 'file', ROOT_INO, 'b'), 'EISDIR', 'file over dir')
    await rejectsCode(t, () => dir.rename(ROOT_INO, 'a', ROOT_INO, 'file'), 'ENOTDIR', 'dir over file')
    await rejectsCode(t, () => dir.rename(ROOT_INO, 'missing', ROOT_INO, 'z'), 'ENOENT', 'missing source')
    await rejectsCode(t, () => dir.rename(ROOT_INO, 'a', file.ino, 'z'), 'ENOTDIR', 'into a file')
    t.equal(await dir.lookup(ROOT_INO, 'a'), a.ino, 'failed renames changed nothing')
    t.equal(await dir.lookup(ROOT_INO, 'b'), b.ino)
    t.equal(await dir.lookup(ROOT_INO, 'file'), file.ino)
    t.equal(await nlink(ROOT_INO), 5)

    await renameChecked(ROOT_INO, 'a', ROOT_INO, 'b')
    await rejectsCode(t, () => dir.getInode(b.ino), 'ENOENT', 'the replaced empty directory is gone')
    t.equal(await nlink(ROOT_INO), 4, 'one subdirectory fewer')
    t.equal(await nlink(a.ino), 2)
    t.equal((await dir.getInode(a.ino)).parent, ROOT_INO)

    // into a subdirectory of itself
    const sub = await dir.createNode(a.ino, 'sub', DIR)
    const subsub = await dir.createNode(sub.ino, 'subsub', DIR)
    await rejectsCode(t, () => dir.rename(ROOT_INO, 'b', sub.ino, 'moved'), 'EINVAL', 'into its own subdirectory')
    await rejectsCode(t, () => dir.rename(ROOT_INO, 'b', subsub.ino, 'moved'), 'EINVAL', 'into a deeper subdirectory')
    await rejectsCode(t, () => dir.rename(ROOT_INO, 'b', a.ino, 'self'), 'EINVAL', 'into itself')
    await rejectsCode(t, () => dir.rename(a.ino, 'sub', subsub.ino, 'x'), 'EINVAL', 'a subdirectory into its own child')
    t.equal(await dir.resolve('/b/sub/subsub'), subsub.ino, 'tree unchanged')

    // same name: nothing happens
    await dir.rename(ROOT_INO, 'b', ROOT_INO, 'b')
    t.equal(await dir.lookup(ROOT_INO, 'b'), a.ino)
    t.equal(await nlink(ROOT_INO), 4)

    await dir.rmdir(sub.ino, 'subsub')
    await dir.rmdir(a.ino, 'sub')
    await dir.rmdir(ROOT_INO, 'b')
    await dir.unlink(full.ino, 'x')
    await dir.rmdir(ROOT_INO, 'full')
    await dir.unlink(ROOT_INO, 'file')
    t.equal(await nlink(ROOT_INO), 2)
  })

  t.test('across directories', async t => {
    const p = await dir.createNode(ROOT_INO, 'p', DIR)
    const q = await dir.createNode(ROOT_INO, 'q', DIR)
    const d = await dir.createNode(p.ino, 'd', DIR)
    const inner = await dir.createNode(d.ino, 'inner', FILE)
    const f = await dir.createNode(p.ino, 'f', FILE)
    t.equal(await nlink(p.ino), 3)
    t.equal(await nlink(q.ino), 2)
    await renameChecked(p.ino, 'd', q.ino, 'd2')
    t.equal(await nlink(p.ino), 2, 'old parent lost a subdirectory')
    t.equal(await nlink(q.ino), 3, 'new parent gained one')
    t.equal(await nlink(d.ino), 2)
    t.equal((await dir.getInode(d.ino)).parent, q.ino, 'the moved directory\'s parent field follows')
    t.equal(await dir.resolve('/q/d2/inner'), inner.ino, 'its contents move with it')
    await rejectsCode(t, () => dir.resolve('/p/d/inner'), 'ENOENT')
    await renameChecked(p.ino, 'f', q.ino, 'f')
    t.equal(await nlink(p.ino), 2, 'files do not change link counts')
    t.equal(await nlink(q.ino), 3)
    t.equal(await nlink(f.ino), 1)

    // a directory over an empty directory in another parent
    const e = await dir.createNode(p.ino, 'e', DIR)
    t.equal(await nlink(p.ino), 3)
    await renameChecked(q.ino, 'd2', p.ino, 'e')
    await rejectsCode(t, () => dir.getInode(e.ino), 'ENOENT')
    t.equal(await nlink(p.ino), 3, 'replaced one subdirectory with another')
    t.equal(await nlink(q.ino), 2)
    t.equal((await dir.getInode(d.ino)).parent, p.ino)
    t.equal(await dir.resolve('/p/e/inner'), inner.ino)

    // up and down the tree
    await renameChecked(p.ino, 'e', ROOT_INO, 'top')
    t.equal((await dir.getInode(d.ino)).parent, ROOT_INO)
    t.equal(await nlink(ROOT_INO), 5)
    t.equal(await nlink(p.ino), 2)
    await renameChecked(ROOT_INO, 'top', q.ino, 'back')
    t.equal(await nlink(ROOT_INO), 4)
    t.equal(await nlink(q.ino), 3)

    await fs.reopen()
    const dir2 = fs.dir
    t.equal(await dir2.resolve('/q/back/inner'), inner.ino, 'persisted')
    t.equal((await dir2.getInode(d.ino)).parent, q.ino)
    t.equal((await dir2.getInode(q.ino)).nlink, 3)
    t.equal((await dir2.getInode(p.ino)).nlink, 2)
    t.equal((await dir2.getInode(ROOT_INO)).nlink, 4)
    await dir2.unlink(d.ino, 'inner')
    await dir2.rmdir(q.ino, 'back')
    await dir2.unlink(q.ino, 'f')
    await dir2.rmdir(ROOT_INO, 'q')
    await dir2.rmdir(ROOT_INO, 'p')
  })

  t.test('a hard link renamed onto another link of the same inode is a no-op', async t => {
    const d = fs.dir
    const f = await d.createNode(ROOT_INO, 'h1', FILE)
    const sub = await d.createNode(ROOT_INO, 'hs', DIR)
    await d.link(f.ino, ROOT_INO, 'h2')
    await d.link(f.ino, sub.ino, 'h3')
    const before = await d.getInode(f.ino)
    await d.rename(ROOT_INO, 'h1', ROOT_INO, 'h2')
    await d.rename(ROOT_INO, 'h2', sub.ino, 'h3')
    t.equal(await d.lookup(ROOT_INO, 'h1'), f.ino, 'both names stay')
    t.equal(await d.lookup(ROOT_INO, 'h2'), f.ino)
    t.equal(await d.lookup(sub.ino, 'h3'), f.ino)
    t.same(await d.getInode(f.ino), before, 'the inode is untouched')
    await fs.reopen()
    t.equal((await fs.dir.getInode(f.ino)).nlink, 3)
    t.equal(await fs.dir.lookup(ROOT_INO, 'h1'), f.ino)
  })
})

// ---------------------------------------------------------------------------
// Cache staleness

interface Seen { path: string, ino: number, mode: number, nlink: number, parent?: number, size: number }

/** The tree as the (cached) Directory sees it, walked by path. */
async function treeView (dir: Directory, viaCache: boolean): Promise<Seen[]> {
  const out: Seen[] = []
  const walk = async (ino: number, path: string): Promise<void> => {
    for (const e of (await dir.readdir(ino)).sort((a, b) => a.name < b.name ? -1 : 1)) {
      const p = `${path}/${e.name}`
      const found = viaCache ? await dir.resolve(p) : e.ino
      const inode = await dir.getInode(found)
      out.push({ path: p, ino: found, mode: inode.mode, nlink: inode.nlink, parent: inode.parent, size: inode.size })
      if (isDir(inode.mode)) await walk(found, p)
    }
  }
  await walk(ROOT_INO, '')
  return out
}

onEachEngine('the caches never serve a stale entry', async (t, engine) => {
  const fs = await Fs.create(t, engine)
  const dir = fs.dir
  const a = await dir.createNode(ROOT_INO, 'a', DIR)
  const b = await dir.createNode(a.ino, 'b', DIR)
  const f = await dir.createNode(b.ino, 'f', FILE)
  const g = await dir.createNode(ROOT_INO, 'g', FILE)
  const warm = async (): Promise<void> => {
    for (const p of ['/a', '/a/b', '/a/b/f', '/g', '/x', '/a/x', '/a/b/x', '/a/y', '/y']) await dir.resolve(p).catch(() => undefined)
    for (const ino of [a.ino, b.ino, f.ino, g.ino]) await dir.getInode(ino).catch(() => undefined)
  }
  await warm()
  t.equal(await dir.resolve('/a/b/f'), f.ino)
  await rejectsCode(t, () => dir.resolve('/x'), 'ENOENT', 'negative entry cached')

  // unlink
  await dir.unlink(b.ino, 'f')
  t.equal(await dir.lookup(b.ino, 'f'), undefined, 'unlink seen at once')
  await rejectsCode(t, () => dir.resolve('/a/b/f'), 'ENOENT')
  await rejectsCode(t, () => dir.getInode(f.ino), 'ENOENT', 'inode cache forgot the freed inode')

  // a negative entry turns positive
  const x = await dir.createNode(ROOT_INO, 'x', FILE)
  t.equal(await dir.resolve('/x'), x.ino, 'create over a cached negative entry')

  // rename of a directory with cached children
  await warm()
  await dir.rename(ROOT_INO, 'a', ROOT_INO, 'y')
  await rejectsCode(t, () => dir.resolve('/a/b'), 'ENOENT', 'old path gone')
  t.equal(await dir.resolve('/y/b'), b.ino, 'new path resolves')
  t.equal(await dir.resolve('/y'), a.ino)
  t.equal((await dir.getInode(a.ino)).nlink, 3)

  // rename over a cached file
  await warm()
  await dir.rename(ROOT_INO, 'x', ROOT_INO, 'g')
  t.equal(await dir.resolve('/g'), x.ino)
  await rejectsCode(t, () => dir.resolve('/x'), 'ENOENT')
  await rejectsCode(t, () => dir.getInode(g.ino), 'ENOENT')

  // rmdir
  await warm()
  await dir.rmdir(a.ino, 'b')
  await rejectsCode(t, () => dir.resolve('/y/b'), 'ENOENT', 'rmdir seen at once')
  await rejectsCode(t, () => dir.getInode(b.ino), 'ENOENT')
  t.equal((await dir.getInode(a.ino)).nlink, 2)
  const b2 = await dir.createNode(a.ino, 'b', DIR)
  t.not(b2.ino, b.ino, 'inode numbers are not reused')
  t.equal(await dir.resolve('/y/b'), b2.ino)

  // a failed transaction leaves the cache as it was
  await warm()
  await rejectsCode(t, () => dir.rename(ROOT_INO, 'y', b2.ino, 'loop'), 'EINVAL')
  t.equal(await dir.resolve('/y/b'), b2.ino)
  t.equal(await dir.lookup(b2.ino, 'loop'), undefined)
  t.equal((await dir.getInode(ROOT_INO)).nlink, 3)

  // attributes
  await dir.setAttrs(x.ino, { mode: S_IFREG | 0o600, size: 77 })
  t.equal((await dir.getInode(x.ino)).size, 77)
  t.equal((await dir.getInode(x.ino)).mode & 0o777, 0o600)

  const cached = await treeView(dir, true)
  const stored = await treeView(dir, false)
  t.same(cached, stored, 'the cached walk equals the stored entries')
  const usage = dir.usage
  await fs.reopen()
  t.same(await treeView(fs.dir, false), cached, 'after reopen the persisted state equals the cached view')
  t.same(await treeView(fs.dir, true), cached)
  t.same(fs.dir.usage, usage, 'usage persisted')
})

/** A real store whose reads can be held back after they have read, to model a slow (disk) read. */
class SlowReadKv implements KvStore {
  private hold: { key: Buffer, gate: Promise<void>, read: () => void } | undefined
  constructor (readonly inner: KvStore) {}
  /** The next get of `key` reads now but returns only when `release` is called. */
  holdNextRead (key: Buffer): { hasRead: Promise<void>, release: () => void } {
    let release!: () => void
    let read!: () => void
    const gate = new Promise<void>(resolve => { release = resolve })
    const hasRead = new Promise<void>(resolve => { read = resolve })
    this.hold = { key, gate, read }
    return { hasRead, release }
  }

  async get (key: Buffer): Promise<Buffer | undefined> {
    const v = await this.inner.get(key)
    const h = this.hold
    if (h && h.key.equals(key)) {
      this.hold = undefined
      h.read()
      await h.gate
    }
    return v
  }

  scan (prefix: Buffer, opts?: { after?: Buffer, limit?: number }): AsyncIterable<[Buffer, Buffer]> { return this.inner.scan(prefix, opts) }
  snapshot (): KvSnapshot { return this.inner.snapshot() }
  txn<T> (fn: (tx: KvTxn) => Promise<T> | T, opts?: { sync?: boolean }): Promise<T> { return this.inner.txn(fn, opts) }
  close (): Promise<void> { return this.inner.close() }
}

// Races and failures found by these tests once: a read that raced a commit cached what it read,
// and a failed commit left the inode reservation ahead of what was stored.

onEachEngine('a read that finishes after a commit must not put a stale entry in the cache', async (t, engine) => {
  const fs = await Fs.create(t, engine)
  const f = await fs.dir.createNode(ROOT_INO, 'f', FILE)
  await fs.close()
  const kv = new SlowReadKv(await fs.place.open())
  const dir = await Directory.open(kv)
  t.teardown(() => dir.close())

  // A FUSE lookup of /f starts (cold cache) and its read is slow; meanwhile unlink /f commits.
  const held = kv.holdNextRead(keys.entry(ROOT_INO, 'f'))
  const slowLookup = dir.lookup(ROOT_INO, 'f')
  await held.hasRead
  await dir.unlink(ROOT_INO, 'f')
  held.release()
  t.equal(await slowLookup, f.ino, 'the lookup that started before the unlink may see the file')
  t.equal(await kv.inner.get(keys.entry(ROOT_INO, 'f')), undefined, 'the store itself has no /f')
  t.equal(await dir.lookup(ROOT_INO, 'f'), undefined, 'a lookup after the unlink must not see it')
  await rejectsCode(t, () => dir.resolve('/f'), 'ENOENT', 'resolve after the unlink')
  const err = await errorOf(() => dir.createNode(ROOT_INO, 'f', FILE))
  t.equal(err?.message, undefined, 'creating /f again works')

  // The same with an inode: a slow getInode of a file being deleted.
  const g = await dir.createNode(ROOT_INO, 'g', FILE)
  const dir2 = dir
  await dir2.close()
  const kv2 = new SlowReadKv(await fs.place.open())
  const d2 = await Directory.open(kv2)
  t.teardown(() => d2.close())
  await d2.lookup(ROOT_INO, 'g')
  const heldInode = kv2.holdNextRead(keys.inode(g.ino))
  const slowStat = d2.getInode(g.ino)
  await heldInode.hasRead
  await d2.unlink(ROOT_INO, 'g')
  heldInode.release()
  await slowStat
  await rejectsCode(t, () => d2.getInode(g.ino), 'ENOENT', 'a freed inode must not come back from the cache')
})

/** A real store whose next commit fails (as a full disk makes LevelDB's batch fail). */
class FailingCommitKv implements KvStore {
  failNext = false
  constructor (readonly inner: KvStore) {}
  get (key: Buffer): Promise<Buffer | undefined> { return this.inner.get(key) }
  scan (prefix: Buffer, opts?: { after?: Buffer, limit?: number }): AsyncIterable<[Buffer, Buffer]> { return this.inner.scan(prefix, opts) }
  snapshot (): KvSnapshot { return this.inner.snapshot() }
  txn<T> (fn: (tx: KvTxn) => Promise<T> | T, opts?: { sync?: boolean }): Promise<T> {
    // Decided when the transaction starts, so that every run of its body (an engine may run it again) fails.
    const fail = this.failNext
    this.failNext = false
    return this.inner.txn(async tx => {
      const r = await fn(tx)
      if (fail) throw new FsError('EIO', 'directory write failed: injected (disk full)')
      return r
    }, opts)
  }

  close (): Promise<void> { return this.inner.close() }
}

onEachEngine('a failed commit must not leave the inode reservation ahead of what is stored', async (t, engine) => {
  const place = engine.place(t)
  const kv = new FailingCommitKv(await place.open())
  let dir = await Directory.create(kv, { blockSize: 65536, root: { uid: 0, gid: 0 } })
  kv.failNext = true
  await rejectsCode(t, () => dir.createNode(ROOT_INO, 'lost', FILE), 'EIO', 'the first create hits a failed commit')
  const a = await dir.createNode(ROOT_INO, 'a', FILE)
  await dir.close()
  dir = await Directory.open(await place.open())
  t.teardown(() => dir.close())
  const b = await dir.createNode(ROOT_INO, 'b', FILE)
  const c = await dir.createNode(ROOT_INO, 'c', FILE)
  t.equal(new Set([a.ino, b.ino, c.ino]).size, 3, `inode numbers are unique (a=${a.ino} b=${b.ino} c=${c.ino})`)
  t.equal(await dir.resolve('/a'), a.ino)
  t.not(await dir.resolve('/c'), a.ino, '/a and /c are different files')
})

onEachEngine('a change that fails partway writes nothing and leaves the caches as they were', async (t, engine) => {
  const fs = await Fs.create(t, engine)
  const dir = fs.dir
  const f = await dir.createNode(ROOT_INO, 'f', FILE)
  await dir.commitBlocks(f.ino, [{ index: 0, record: recOf(1n, 0, 65536) }, { index: 1, record: recOf(2n, 1, 100) }], { size: 65536 + 100 })
  t.equal(await dir.lookup(ROOT_INO, 'f'), f.ino, 'the entry is in the cache')
  const usage = dir.usage
  // Block 1's record corrupt: unlink drops the entry and frees block 0 in its batch before it meets it.
  await fs.kv.txn(tx => { tx.put(keys.block(f.ino, 1), B('not a block record')) })
  await rejectsCode(t, () => dir.unlink(ROOT_INO, 'f'), 'EIO', 'unlink meets the corrupt record while freeing the inode')
  t.equal(await dir.lookup(ROOT_INO, 'f'), f.ino, 'the entry is still there')
  t.equal((await dir.getInode(f.ino)).nlink, 1, 'the link count is unchanged')
  t.same(dir.usage, usage, 'the usage counters are unchanged')
  t.same(await reclaimQueueIds(dir), [], 'block 0 was not queued for reclaim')
  t.ok(await dir.getBlock(f.ino, 0), 'block 0 is still mapped')
  await fs.reopen()
  t.equal(await fs.dir.lookup(ROOT_INO, 'f'), f.ino, 'the store holds the entry too')
  t.equal((await fs.dir.getInode(f.ino)).nlink, 1)
  t.same(fs.dir.usage, usage)
  t.same(await reclaimQueueIds(fs.dir), [])
})

// ---------------------------------------------------------------------------
// Block maps, garbage and orphans

onEachEngine('block records carry chunk sums; records without them still decode', async (t, engine) => {
  const key = keys.block(5, 0)
  const bytes = Buffer.alloc(2 * CHUNK_BYTES + 7, 'x')
  const forms: BSL[] = [
    { form: 'indexed', volume: 3, index: 9, fileId: 0xabcn },
    { form: 'logical', volume: 1, fileId: 1n },
    { form: 'physical', server: 'host2', device: 'd1', fileId: 2n }
  ]
  for (const bsl of forms) {
    const rec: BlockRecord = { bsl, length: bytes.length, checksum: checksum(bytes), chunks: chunkSums(bytes) }
    t.equal(rec.chunks?.length, 3, 'one sum per 32 KiB, the last chunk short')
    t.same(decodeBlock(key, encodeBlock(rec)), rec, `round trip with sums (${bsl.form})`)
    const old: BlockRecord = { bsl, length: bytes.length, checksum: checksum(bytes) }
    const oldBytes = encodeBlock(old)
    const decoded = decodeBlock(key, oldBytes)
    t.same(decoded, old, `a record without sums (the old layout) decodes (${bsl.form})`)
    t.equal(decoded.chunks, undefined, 'and has none')
    const bad = encodeBlock(rec)
    t.throws(() => decodeBlock(key, bad.subarray(0, bad.length - 4)), /corrupt block record.*2 chunk sums for 65543 bytes, expected 3/, 'too few sums is corrupt')
    t.throws(() => decodeBlock(key, Buffer.concat([bad, Buffer.alloc(4)])), /4 chunk sums.*expected 3/, 'too many sums is corrupt')
    t.throws(() => decodeBlock(key, bad.subarray(0, bad.length - 1)), /chunk sums/, 'a cut sum is corrupt')
    t.throws(() => decodeBlock(key, Buffer.concat([oldBytes, Buffer.from([0x58, 1, 2, 3, 4])])), /unexpected bytes after the BSL/, 'unknown trailing bytes are corrupt')
    t.throws(() => encodeBlock({ ...rec, chunks: [1] }), /needs 3 chunk sums/, 'a record with the wrong number of sums is never written')
  }
  const e = (() => { try { decodeBlock(key, encodeBlock({ bsl: forms[0], length: 10, checksum: 0, chunks: [0] }).subarray(0, 20)) } catch (err) { return err } })()
  t.ok(e instanceof FsError && e.code === 'EIO', 'corrupt records are EIO')
})

onEachEngine('chunk sums survive the directory: block maps, the heal queue, adopt', async (t, engine) => {
  const fs = await Fs.create(t, engine)
  const dir = fs.dir
  const f = await dir.createNode(ROOT_INO, 'f', FILE)
  const bytes = Buffer.alloc(CHUNK_BYTES + 1, 'y')
  const rec: BlockRecord = { bsl: { form: 'physical', server: 'local', device: 'd0', fileId: 77n }, length: bytes.length, checksum: checksum(bytes), chunks: chunkSums(bytes) }
  await dir.commitBlocks(f.ino, [{ index: 0, record: rec }], { size: bytes.length })
  t.same((await dir.getBlocks(f.ino)).get(0), rec, 'committed and read back with its sums')
  await dir.queueHeal([{ block: rec, volume: 2 }])
  t.same((await dir.healQueue(10))[0].block, rec, 'a queued repair keeps them')
  const adopted = await dir.adoptBlocks(f.ino, { server: 'local', device: 'd0' }, 1)
  t.same(adopted.get(0)?.chunks, rec.chunks, 'adopt keeps them')
  t.same((await dir.getBlocks(f.ino)).get(0)?.chunks, rec.chunks, 'and stores them')
})

onEachEngine('block maps', async (t, engine) => {
  const fs = await Fs.create(t, engine)
  const dir = fs.dir
  const f = await dir.createNode(ROOT_INO, 'f', FILE)
  t.same(await dir.getBlocks(f.ino), new Map())

  let ino = await dir.commitBlocks(f.ino, [
    { index: 0, record: recOf(100n, 0, 65536) },
    { index: 1, record: recOf(101n, 1, 65536) },
    { index: 3, record: recOf(103n, 3, 1000) } // index 2 is a hole
  ], { size: 3 * 65536 + 1000, mtime: { sec: 5, nsec: 6 } })
  t.equal(ino.size, 3 * 65536 + 1000)
  t.equal(ino.stored, 2 * 65536 + 1000)
  t.same(ino.mtime, { sec: 5, nsec: 6 })
  t.same(dir.usage.bytes, 2 * 65536 + 1000)
  const blocks = await dir.getBlocks(f.ino)
  t.same([...blocks.keys()], [0, 1, 3])
  t.same(blocks.get(3), recOf(103n, 3, 1000), 'the record round-trips (BSL, length, checksum)')
  t.equal(blocks.get(1)?.bsl.form, 'indexed')
  t.same(await reclaimQueueIds(dir), [], 'nothing to reclaim yet')

  // Replacing a block queues the old object.
  ino = await dir.commitBlocks(f.ino, [{ index: 1, record: recOf(201n, 1, 40000) }], {})
  t.same(await reclaimQueueIds(dir), [oid(101n)])
  const g = await dir.reclaimQueue(10)
  t.same(g[0].bsl, bslOf(101n, 1), 'garbage keeps the whole BSL to delete')
  t.equal(ino.stored, 65536 + 40000 + 1000)
  t.equal(dir.usage.bytes, 65536 + 40000 + 1000)
  t.same((await dir.getBlocks(f.ino)).get(1), recOf(201n, 1, 40000))

  // A hole punched by a null record.
  ino = await dir.commitBlocks(f.ino, [{ index: 0, record: null }], {})
  t.same(await reclaimQueueIds(dir), [oid(100n), oid(101n)])
  t.equal(ino.stored, 40000 + 1000)
  t.same([...(await dir.getBlocks(f.ino)).keys()], [1, 3])

  // A large index sorts after the small ones (u64 big-endian keys).
  ino = await dir.commitBlocks(f.ino, [{ index: 300, record: recOf(300n, 300, 7) }, { index: 20, record: recOf(20n, 20, 8) }], {})
  t.same([...(await dir.getBlocks(f.ino)).keys()], [1, 3, 20, 300])

  // Truncate: dropFrom drops the block at the index and every one after it.
  ino = await dir.commitBlocks(f.ino, [], { size: 3 * 65536 }, { dropFrom: 3 })
  t.same([...(await dir.getBlocks(f.ino)).keys()], [1], 'blocks at and after 3 dropped')
  t.same(await reclaimQueueIds(dir), [oid(100n), oid(101n), oid(103n), oid(20n), oid(300n)].sort())
  t.equal(ino.stored, 40000)
  t.equal(ino.size, 3 * 65536)
  t.equal(dir.usage.bytes, 40000)

  // dropFrom at an index that is a hole, together with a new block past it.
  ino = await dir.commitBlocks(f.ino, [{ index: 5, record: recOf(500n, 5, 10) }], {}, { dropFrom: 0 })
  t.same([...(await dir.getBlocks(f.ino)).keys()], [5], 'drop first, then the changes')
  t.ok((await reclaimQueueIds(dir)).includes(oid(201n)))
  t.equal(ino.stored, 10)
  t.equal(dir.usage.bytes, 10)

  // Blocks of two files are kept apart.
  const h = await dir.createNode(ROOT_INO, 'h', FILE)
  await dir.commitBlocks(h.ino, [{ index: 0, record: recOf(900n, 0, 100) }], { size: 100 })
  await dir.commitBlocks(f.ino, [], { size: 0 }, { dropFrom: 0 })
  t.same([...(await dir.getBlocks(h.ino)).keys()], [0], 'truncating f leaves h alone')
  t.equal(dir.usage.bytes, 100)
  t.equal((await dir.getInode(f.ino)).stored, 0)

  await dir.forgetReclaimed(await reclaimQueueIds(dir))
  t.same(await dir.reclaimQueue(10), [])
  await dir.commitBlocks(h.ino, [{ index: 1, record: recOf(901n, 1, 50) }], { size: 65586 })
  const usage = dir.usage
  await fs.reopen()
  t.same(fs.dir.usage, usage, 'usage persisted')
  t.same([...(await fs.dir.getBlocks(h.ino)).entries()], [[0, recOf(900n, 0, 100)], [1, recOf(901n, 1, 50)]])
  t.equal((await fs.dir.getInode(h.ino)).stored, 150)
  t.same(await fs.dir.reclaimQueue(5), [], 'forgotten garbage stays forgotten')
  await rejectsCode(t, () => fs.dir.commitBlocks(9999, [], {}), 'ENOENT', 'commitBlocks of a missing inode')
})

onEachEngine('deleting an inode queues its blocks; open inodes become orphans', async (t, engine) => {
  const open = new Set<number>()
  const fs = await Fs.create(t, engine, 65536, { isOpen: ino => open.has(ino) })
  let dir = fs.dir
  const withBlocks = async (name: string, base: bigint): Promise<number> => {
    const f = await dir.createNode(ROOT_INO, name, FILE)
    await dir.commitBlocks(f.ino, [{ index: 0, record: recOf(base, 0, 10) }, { index: 1, record: recOf(base + 1n, 1, 20) }], { size: 65556 })
    await dir.setXattr(f.ino, 'user.k', B('v'), 0)
    return f.ino
  }

  // Not open: the last unlink frees everything.
  const a = await withBlocks('a', 1000n)
  t.equal(dir.usage.bytes, 30)
  t.equal(dir.usage.files, 2)
  await dir.unlink(ROOT_INO, 'a')
  await rejectsCode(t, () => dir.getInode(a), 'ENOENT')
  t.same(await reclaimQueueIds(dir), [oid(1000n), oid(1001n)])
  t.same(await dir.getBlocks(a), new Map())
  t.equal(await fs.kv.get(keys.xattr(a, 'user.k')), undefined, 'xattrs deleted with the inode')
  t.same(dir.usage, { files: 1, bytes: 0 })
  await dir.forgetReclaimed(await reclaimQueueIds(dir))

  // Open: the inode stays with nlink 0 and an orphan record.
  const b = await withBlocks('b', 2000n)
  open.add(b)
  await dir.unlink(ROOT_INO, 'b')
  t.equal(await dir.lookup(ROOT_INO, 'b'), undefined, 'the name is gone')
  const orphan = await dir.getInode(b)
  t.equal(orphan.nlink, 0, 'the inode stays with no links')
  t.ok(await fs.kv.get(keys.orphan(b)), 'an orphan is recorded')
  t.equal((await dir.getBlocks(b)).size, 2, 'its blocks stay readable')
  t.same(await reclaimQueueIds(dir), [])
  t.same(dir.usage, { files: 2, bytes: 30 })
  await dir.releaseIfUnlinked(b)
  t.ok(await dir.getInode(b), 'release while still open does nothing')
  open.delete(b)
  await dir.releaseIfUnlinked(b)
  await rejectsCode(t, () => dir.getInode(b), 'ENOENT', 'released')
  t.equal(await fs.kv.get(keys.orphan(b)), undefined, 'orphan record gone')
  t.same(await reclaimQueueIds(dir), [oid(2000n), oid(2001n)])
  t.same(dir.usage, { files: 1, bytes: 0 })
  await dir.releaseIfUnlinked(b)
  await dir.releaseIfUnlinked(99999)
  t.pass('release of a freed or unknown inode is harmless')
  await dir.forgetReclaimed(await reclaimQueueIds(dir))

  // releaseIfUnlinked of a linked file does nothing.
  const c = await withBlocks('c', 3000n)
  await dir.releaseIfUnlinked(c)
  t.equal((await dir.getInode(c)).nlink, 1)

  // Renaming over an open file orphans it too.
  const d = await withBlocks('d', 4000n)
  open.add(d)
  await dir.rename(ROOT_INO, 'c', ROOT_INO, 'd')
  t.equal((await dir.getInode(d)).nlink, 0)
  t.ok(await fs.kv.get(keys.orphan(d)))
  open.delete(d)

  // An open, empty directory removed by rmdir.
  const e = await dir.createNode(ROOT_INO, 'e', DIR)
  open.add(e.ino)
  await dir.rmdir(ROOT_INO, 'e')
  t.equal((await dir.getInode(e.ino)).nlink, 0)
  t.ok(await fs.kv.get(keys.orphan(e.ino)))
  await rejectsCode(t, () => dir.createNode(e.ino, 'x', FILE), 'ENOENT', 'nothing can be created in a removed directory')
  t.equal((await dir.getInode(ROOT_INO)).nlink, 2)

  // "Crash": close without releasing; purgeOrphans on the next mount frees both.
  const filesBefore = dir.usage.files
  dir = await fs.reopen()
  t.equal(dir.usage.files, filesBefore)
  t.equal((await dir.getInode(d)).nlink, 0, 'the orphan survived the crash')
  t.equal(await dir.purgeOrphans(), 2)
  await rejectsCode(t, () => dir.getInode(d), 'ENOENT')
  await rejectsCode(t, () => dir.getInode(e.ino), 'ENOENT')
  t.same(await reclaimQueueIds(dir), [oid(4000n), oid(4001n)])
  t.same(dir.usage, { files: 2, bytes: 30 })
  t.equal(await dir.purgeOrphans(), 0, 'nothing left')
  const orphans: Buffer[] = []
  for await (const [k] of fs.kv.scan(keys.orphanPrefix)) orphans.push(k)
  t.same(orphans, [])
  t.equal(await dir.resolve('/d'), c)
})

// ---------------------------------------------------------------------------
// xattrs

onEachEngine('xattrs', async (t, engine) => {
  const fs = await Fs.create(t, engine)
  const dir = fs.dir
  const f = await dir.createNode(ROOT_INO, 'f', FILE)
  const other = await dir.createNode(ROOT_INO, 'other', FILE)
  t.same(await dir.listXattrs(f.ino), [])
  await rejectsCode(t, () => dir.getXattr(f.ino, 'user.a'), 'ENODATA', 'get of a missing attribute')
  await dir.setXattr(f.ino, 'user.a', B('one'), 0)
  t.equal((await dir.getXattr(f.ino, 'user.a')).toString(), 'one')
  await dir.setXattr(f.ino, 'user.a', B('two'), 0)
  t.equal((await dir.getXattr(f.ino, 'user.a')).toString(), 'two', 'flags 0 replaces')
  await rejectsCode(t, () => dir.setXattr(f.ino, 'user.a', B('x'), 1), 'EEXIST', 'XATTR_CREATE on a present name')
  await rejectsCode(t, () => dir.setXattr(f.ino, 'user.b', B('x'), 2), 'ENODATA', 'XATTR_REPLACE on an absent name')
  await dir.setXattr(f.ino, 'user.b', B('bee'), 1)
  await dir.setXattr(f.ino, 'user.a', B('three'), 2)
  t.equal((await dir.getXattr(f.ino, 'user.a')).toString(), 'three')
  const binary = Buffer.from([0, 1, 2, 0xff, 0xfe, 0, 0x80, 10, 13])
  await dir.setXattr(f.ino, 'trusted.bin', binary, 0)
  t.same(await dir.getXattr(f.ino, 'trusted.bin'), binary, 'binary values round-trip')
  await dir.setXattr(f.ino, 'user.empty', Buffer.alloc(0), 0)
  t.same(await dir.getXattr(f.ino, 'user.empty'), Buffer.alloc(0), 'an empty value is a value')
  const big = Buffer.alloc(60000, 7)
  await dir.setXattr(f.ino, 'user.big', big, 0)
  t.same(await dir.getXattr(f.ino, 'user.big'), big)
  t.same((await dir.listXattrs(f.ino)).sort(), ['trusted.bin', 'user.a', 'user.b', 'user.big', 'user.empty'])
  t.same(await dir.listXattrs(other.ino), [], 'per inode')
  await rejectsCode(t, () => dir.getXattr(other.ino, 'user.a'), 'ENODATA')

  const ctime = (await dir.getInode(f.ino)).ctime
  await dir.removeXattr(f.ino, 'user.a', { sec: ctime.sec + 10, nsec: 0 })
  t.equal((await dir.getInode(f.ino)).ctime.sec, ctime.sec + 10, 'xattr changes set ctime')
  await rejectsCode(t, () => dir.getXattr(f.ino, 'user.a'), 'ENODATA')
  await rejectsCode(t, () => dir.removeXattr(f.ino, 'user.a'), 'ENODATA', 'remove of a missing name')
  await rejectsCode(t, () => dir.setXattr(9999, 'user.a', B('x'), 0), 'ENOENT', 'set on a missing inode')
  await rejectsCode(t, () => dir.listXattrs(9999), 'ENOENT')

  await fs.reopen()
  t.same(await fs.dir.getXattr(f.ino, 'trusted.bin'), binary, 'persisted')
  t.same((await fs.dir.listXattrs(f.ino)).sort(), ['trusted.bin', 'user.b', 'user.big', 'user.empty'])
})

// ---------------------------------------------------------------------------
// Tables

onEachEngine('tables', async (t, engine) => {
  const fs = await Fs.create(t, engine)
  const dir = fs.dir
  const empty = await dir.tables()
  t.equal(empty.volumes.size, 0)
  t.equal(empty.defaultVolume, 0)
  await dir.putDevice({ name: 'd0', path: '/srv/d0' })
  await dir.putDevice({ name: 'd1', path: '/srv/d1' })
  await dir.putServer({ name: 's2', url: 'http://host2:7070', tokenFile: '/etc/token' })
  const v1 = await dir.setVolume(1, { server: 'local', device: 'd0' })
  t.same(v1.history, [])
  t.same(v1.place, { server: 'local', device: 'd0' })
  const v1b = await dir.setVolume(1, { server: 's2', device: 'd1' })
  t.equal(v1b.history.length, 1, 'a move keeps the old place')
  t.same(v1b.history[0].place, { server: 'local', device: 'd0' })
  t.equal(v1b.history[0].from, v1.since)
  t.equal(v1b.history[0].to, v1b.since)
  const v1c = await dir.setVolume(1, { server: 's3', device: 'd1' })
  t.same(v1c.history.map(h => h.place.server), ['local', 's2'], 'history grows, oldest first')
  await dir.setVolume(2, { server: 'local', device: 'd1' })
  await dir.setVolume(12, { server: 'local', device: 'd0' })
  await dir.setMirror({ volume: 10, mirrors: [2, 1], minCopies: 1 })
  await dir.setMirror({ volume: 0, mirrors: [12], minCopies: 1 })
  await dir.setDefaultVolume(10)

  const check = async (d: Directory): Promise<void> => {
    const tb = await d.tables()
    t.same([...tb.volumes.keys()].sort((a, b) => a - b), [1, 2, 12])
    t.same(tb.volumes.get(1)?.place, { server: 's3', device: 'd1' })
    t.equal(tb.volumes.get(1)?.history.length, 2)
    t.same(tb.volumes.get(12)?.place, { server: 'local', device: 'd0' })
    t.same(tb.mirrors.get(10), { volume: 10, mirrors: [2, 1], minCopies: 1 }, 'mirror order and min copies kept')
    t.same(tb.mirrors.get(0), { volume: 0, mirrors: [12], minCopies: 1 })
    t.equal(tb.mirrors.size, 2)
    t.same(tb.devices.get('d1'), { name: 'd1', path: '/srv/d1' })
    t.equal(tb.devices.size, 2)
    t.same(tb.servers.get('s2'), { name: 's2', url: 'http://host2:7070', tokenFile: '/etc/token' })
    t.equal(tb.defaultVolume, 10)
  }
  await check(dir)
  await dir.setMirror({ volume: 10, mirrors: [1, 2], minCopies: 2 })
  t.same((await dir.tables()).mirrors.get(10)?.mirrors, [1, 2], 'setMirror replaces')
  await dir.setMirror({ volume: 10, mirrors: [2, 1], minCopies: 1 })
  await fs.reopen()
  await check(fs.dir)

  // A corrupt row is EIO, not a crash.
  await fs.close()
  const kv = await fs.place.open()
  await kv.txn(tx => { tx.put(keys.table('mirror', '10'), B('[1, "two"]')) })
  const d = await Directory.open(kv)
  t.teardown(() => d.close())
  const err = await rejectsCode(t, () => d.tables(), 'EIO')
  t.match(err?.message ?? '', /mirror row 10/)
  for (const bad of ['[1, 2]', '{"volume":10,"mirrors":[1,2],"minCopies":3}', '{"volume":10,"mirrors":[1,2],"minCopies":0}', '{"volume":11,"mirrors":[1,2],"minCopies":1}', '{"volume":10,"mirrors":[],"minCopies":1}']) {
    await kv.txn(tx => { tx.put(keys.table('mirror', '10'), B(bad)) })
    const e = await rejectsCode(t, () => d.tables(), 'EIO', `mirror row ${bad}`)
    t.match(e?.message ?? '', /corrupt mirror row 10/)
  }
})

onEachEngine('the heal queue', async (t, engine) => {
  const fs = await Fs.create(t, engine)
  const dir = fs.dir
  const block = (fileId: bigint) => ({ bsl: { form: 'indexed' as const, volume: 10, index: 0, fileId }, length: 100, checksum: 0xdeadbeef })
  t.same(await dir.healQueue(10), [], 'empty at first')
  await dir.queueHeal([{ block: block(1n), volume: 2 }, { block: block(1n), volume: 3 }, { block: block(2n), volume: 3 }])
  await dir.queueHeal([{ block: block(1n), volume: 2 }])
  t.same([...(await dir.healBacklog())].sort(), [[2, 1], [3, 2]], 'by volume; recording twice is one repair')
  const all = await dir.healQueue(10)
  t.same(all.map(r => [r.block.bsl.fileId, r.volume]), [[1n, 2], [1n, 3], [2n, 3]], 'in key order')
  t.same(all[0].block, block(1n), 'with the block record')
  const page = await dir.healQueue(1, all[0].key)
  t.same(page.map(r => [r.block.bsl.fileId, r.volume]), [[1n, 3]], 'paged after a key')
  await dir.forgetHealed([all[0].key, all[2].key])
  await fs.reopen()
  t.same((await fs.dir.healQueue(10)).map(r => [r.block.bsl.fileId, r.volume]), [[1n, 3]], 'forgotten ones are gone, the rest survive a reopen')
  t.equal(await fs.dir.isQueuedForReclaim('0000000000000001'), false)
})

// ---------------------------------------------------------------------------
// Object ids

onEachEngine('allocateObjectId is unique and increasing, across reopen', async (t, engine) => {
  const fs = await Fs.create(t, engine)
  let last = -1n
  let ok = true
  const N = 70000 // crosses a reservation boundary (65536)
  for (let i = 0; i < N; i++) {
    const id = await fs.dir.allocateObjectId()
    if (id <= last) { ok = false; t.fail(`id ${id} after ${last}`); break }
    last = id
  }
  t.ok(ok, `${N} sequential ids increase`)
  t.ok(last > 0n)
  const concurrent = await Promise.all(Array.from({ length: 2000 }, () => fs.dir.allocateObjectId()))
  t.equal(new Set(concurrent).size, concurrent.length, 'concurrent ids are unique')
  t.ok(concurrent.every(id => id > last), 'and above earlier ones')
  const max = concurrent.reduce((a, b) => a > b ? a : b)
  await fs.reopen()
  const after = await fs.dir.allocateObjectId()
  t.ok(after > max, `after reopen ${after} > ${max}: never reused`)
  // A crash right after allocating (no clean close): the reservation was durable.
  const before = await fs.dir.allocateObjectId()
  await fs.reopen()
  t.ok(await fs.dir.allocateObjectId() > before)
})

// ---------------------------------------------------------------------------
// Generated operations against a model

const NAMES = ['a', 'b']
const PATHS: string[] = []
for (const x of NAMES) {
  PATHS.push(`/${x}`)
  for (const y of NAMES) {
    PATHS.push(`/${x}/${y}`)
    for (const z of NAMES) PATHS.push(`/${x}/${y}/${z}`)
  }
}

type Op =
  | { op: 'mkdir' | 'create' | 'unlink' | 'rmdir', p: string }
  | { op: 'rename' | 'link', p: string, q: string }
  | { op: 'reopen' }

/** A path as generated: a fixed one, or "the n-th name that exists now" (so more calls succeed). */
type Pick = string | { existing: number }
type GenOp =
  | { op: 'mkdir' | 'create' | 'unlink' | 'rmdir', p: Pick }
  | { op: 'rename' | 'link', p: Pick, q: Pick }
  | { op: 'reopen' }

interface MNode { kind: 'dir' | 'file', id: number }

class Model {
  readonly entries = new Map<string, MNode>()
  private nextId = 1

  static parent (p: string): string {
    const cut = p.lastIndexOf('/')
    return cut <= 0 ? '/' : p.slice(0, cut)
  }

  pick (p: Pick): string {
    if (typeof p === 'string') return p
    const names = [...this.entries.keys()].sort()
    return names.length === 0 ? '/a' : names[p.existing % names.length]
  }

  concrete (o: GenOp): Op {
    if (o.op === 'reopen') return o
    if (o.op === 'rename' || o.op === 'link') return { op: o.op, p: this.pick(o.p), q: this.pick(o.q) }
    return { op: o.op, p: this.pick(o.p) }
  }

  get (p: string): MNode | undefined {
    return p === '/' ? { kind: 'dir', id: 0 } : this.entries.get(p)
  }

  children (p: string): string[] {
    const prefix = p === '/' ? '/' : p + '/'
    return [...this.entries.keys()].filter(k => k.startsWith(prefix) && !k.slice(prefix.length).includes('/'))
  }

  /** The error resolving `p` gives, or null. */
  resolveErr (p: string): string | null {
    const parts = p.split('/').filter(Boolean)
    let cur = ''
    for (let i = 0; i < parts.length; i++) {
      cur += '/' + parts[i]
      const n = this.entries.get(cur)
      if (!n) return 'ENOENT'
      if (i < parts.length - 1 && n.kind !== 'dir') return 'ENOTDIR'
    }
    return null
  }

  parentErr (p: string): string | null {
    const parent = Model.parent(p)
    return this.resolveErr(parent) ?? (this.get(parent)!.kind === 'dir' ? null : 'ENOTDIR')
  }

  apply (o: Op): string | null {
    switch (o.op) {
      case 'reopen': return null
      case 'mkdir':
      case 'create': {
        const e = this.parentErr(o.p)
        if (e) return e
        if (this.entries.has(o.p)) return 'EEXIST'
        this.entries.set(o.p, { kind: o.op === 'mkdir' ? 'dir' : 'file', id: this.nextId++ })
        return null
      }
      case 'unlink':
      case 'rmdir': {
        const e = this.parentErr(o.p)
        if (e) return e
        const n = this.entries.get(o.p)
        if (!n) return 'ENOENT'
        if (o.op === 'unlink' && n.kind === 'dir') return 'EISDIR'
        if (o.op === 'rmdir' && n.kind !== 'dir') return 'ENOTDIR'
        if (o.op === 'rmdir' && this.children(o.p).length > 0) return 'ENOTEMPTY'
        this.entries.delete(o.p)
        return null
      }
      case 'link': {
        const e = this.resolveErr(o.p) ?? this.parentErr(o.q)
        if (e) return e
        const n = this.entries.get(o.p)!
        if (n.kind === 'dir') return 'EPERM'
        if (this.entries.has(o.q)) return 'EEXIST'
        this.entries.set(o.q, n)
        return null
      }
      case 'rename': {
        const e = this.parentErr(o.p) ?? this.parentErr(o.q)
        if (e) return e
        const s = this.entries.get(o.p)
        if (!s) return 'ENOENT'
        const d = this.entries.get(o.q)
        if (d && d.id === s.id) return null
        const moving = s.kind === 'dir'
        const dp = Model.parent(o.q)
        if (moving && Model.parent(o.p) !== dp && (dp === o.p || dp.startsWith(o.p + '/'))) return 'EINVAL'
        if (d) {
          if (d.kind === 'dir') {
            if (!moving) return 'EISDIR'
            if (this.children(o.q).length > 0) return 'ENOTEMPTY'
          } else if (moving) return 'ENOTDIR'
          this.entries.delete(o.q)
        }
        const moved: Array<[string, MNode]> = []
        for (const [k, v] of this.entries) {
          if (k === o.p || k.startsWith(o.p + '/')) moved.push([o.q + k.slice(o.p.length), v])
        }
        for (const [k] of [...this.entries]) if (k === o.p || k.startsWith(o.p + '/')) this.entries.delete(k)
        for (const [k, v] of moved) this.entries.set(k, v)
        return null
      }
    }
  }
}

async function applyReal (dir: Directory, o: Exclude<Op, { op: 'reopen' }>): Promise<string | null> {
  try {
    switch (o.op) {
      case 'mkdir':
      case 'create': {
        const { parent, name } = await dir.resolveParent(o.p)
        await dir.createNode(parent, name, o.op === 'mkdir' ? DIR : FILE)
        break
      }
      case 'unlink': {
        const { parent, name } = await dir.resolveParent(o.p)
        await dir.unlink(parent, name)
        break
      }
      case 'rmdir': {
        const { parent, name } = await dir.resolveParent(o.p)
        await dir.rmdir(parent, name)
        break
      }
      case 'link': {
        const ino = await dir.resolve(o.p)
        const { parent, name } = await dir.resolveParent(o.q)
        await dir.link(ino, parent, name)
        break
      }
      case 'rename': {
        const s = await dir.resolveParent(o.p)
        const d = await dir.resolveParent(o.q)
        await dir.rename(s.parent, s.name, d.parent, d.name)
        break
      }
    }
    return null
  } catch (err) {
    if (err instanceof FsError) return err.code
    throw err
  }
}

/** Compares every name of the namespace with the model; returns the first difference. */
async function compare (dir: Directory, m: Model): Promise<string | null> {
  const inoOf = new Map<number, number>() // model id → ino
  const pathIno = new Map<string, number>([['/', ROOT_INO]])
  for (const p of PATHS) {
    const want = m.get(p)
    let got: number | string
    try {
      got = await dir.resolve(p)
    } catch (err) {
      if (!(err instanceof FsError)) throw err
      got = err.code
    }
    if (!want) {
      const code = m.resolveErr(p)
      if (got !== code) return `${p}: expected ${code}, got ${got}`
      continue
    }
    if (typeof got !== 'number') return `${p}: expected a ${want.kind}, got ${got}`
    pathIno.set(p, got)
    const known = inoOf.get(want.id)
    if (known !== undefined && known !== got) return `${p}: expected ino ${known} (a hard link), got ${got}`
    inoOf.set(want.id, got)
    const inode = await dir.getInode(got)
    if (isDir(inode.mode) !== (want.kind === 'dir')) return `${p}: expected a ${want.kind}, mode ${inode.mode.toString(8)}`
    const nlink = want.kind === 'dir'
      ? 2 + m.children(p).filter(c => m.get(c)!.kind === 'dir').length
      : [...m.entries.values()].filter(n => n.id === want.id).length
    if (inode.nlink !== nlink) return `${p}: expected nlink ${nlink}, got ${inode.nlink}`
    if (want.kind === 'dir' && inode.parent !== pathIno.get(Model.parent(p))) return `${p}: parent field ${inode.parent}, expected ${pathIno.get(Model.parent(p))}`
  }
  if (new Set(inoOf.values()).size !== inoOf.size) return 'two model nodes share an inode'
  const rootLinks = 2 + m.children('/').filter(c => m.get(c)!.kind === 'dir').length
  if ((await dir.getInode(ROOT_INO)).nlink !== rootLinks) return `root nlink ${(await dir.getInode(ROOT_INO)).nlink}, expected ${rootLinks}`
  for (const [p, ino] of pathIno) {
    if (m.get(p)!.kind !== 'dir') continue
    const names = (await dir.readdir(ino)).map(e => e.name).sort()
    const want = m.children(p).map(c => c.slice(c.lastIndexOf('/') + 1)).sort()
    if (names.join(',') !== want.join(',')) return `readdir ${p}: [${names.join(',')}] expected [${want.join(',')}]`
  }
  const files = new Set([...m.entries.values()].map(n => n.id)).size + 1
  if (dir.usage.files !== files) return `usage.files ${dir.usage.files}, expected ${files}`
  return null
}

onEachEngine('generated operations agree with a model of the tree', async (t, engine) => {
  const shallow = fc.constantFrom(...PATHS.filter(p => p.split('/').length === 2))
  const mid = fc.constantFrom(...PATHS.filter(p => p.split('/').length === 3))
  const deep = fc.constantFrom(...PATHS.filter(p => p.split('/').length === 4))
  const fixed: fc.Arbitrary<Pick> = fc.oneof({ arbitrary: shallow, weight: 4 }, { arbitrary: mid, weight: 3 }, { arbitrary: deep, weight: 2 })
  const existing: fc.Arbitrary<Pick> = fc.nat({ max: 1000 }).map(n => ({ existing: n }))
  const path = fc.oneof({ arbitrary: fixed, weight: 1 }, { arbitrary: existing, weight: 1 })
  const op: fc.Arbitrary<GenOp> = fc.oneof(
    { arbitrary: fc.record({ op: fc.constant('mkdir' as const), p: fixed }), weight: 5 },
    { arbitrary: fc.record({ op: fc.constant('create' as const), p: fixed }), weight: 4 },
    { arbitrary: fc.record({ op: fc.constant('unlink' as const), p: path }), weight: 2 },
    { arbitrary: fc.record({ op: fc.constant('rmdir' as const), p: path }), weight: 2 },
    { arbitrary: fc.record({ op: fc.constant('rename' as const), p: path, q: path }), weight: 5 },
    { arbitrary: fc.record({ op: fc.constant('link' as const), p: existing, q: fixed }), weight: 3 },
    { arbitrary: fc.constant({ op: 'reopen' as const }), weight: 1 }
  )
  let run = 0
  const started = Date.now()
  let opsRun = 0
  const succeeded: Record<string, number> = {}
  try {
    await fc.assert(fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 60, size: 'max' }), async ops => {
      run++
      const place = engine.place(t)
      let kv = await place.open()
      let dir = await Directory.create(kv, { blockSize: 65536, root: { uid: 0, gid: 0 } })
      const m = new Model()
      try {
        for (const [i, g] of ops.entries()) {
          opsRun++
          const o = m.concrete(g)
          if (o.op === 'reopen') {
            await dir.close()
            kv = await place.open()
            dir = await Directory.open(kv)
          } else {
            const want = m.apply(o)
            const got = await applyReal(dir, o)
            if (got !== want) throw new Error(`op ${i} ${JSON.stringify(o)}: expected ${want ?? 'success'}, got ${got ?? 'success'}`)
            const outcome = `${o.op} ${got ?? 'ok'}`
            succeeded[outcome] = (succeeded[outcome] ?? 0) + 1
          }
          const diff = await compare(dir, m)
          if (diff) throw new Error(`after op ${i} ${JSON.stringify(o)}: ${diff}`)
        }
        await dir.close()
        kv = await place.open()
        dir = await Directory.open(kv)
        const diff = await compare(dir, m)
        if (diff) throw new Error(`after reopen: ${diff}`)
      } finally {
        await dir.close()
      }
    }), { numRuns: 100, seed: Number(process.env.BSLFS_FC_SEED ?? Date.now() % 2 ** 31) })
    t.pass(`${run} sequences, ${opsRun} operations in ${Date.now() - started} ms`)
    const outcomes = Object.entries(succeeded).sort().map(([k, n]) => `${k}: ${n}`).join(', ')
    t.comment(`outcomes: ${outcomes}`)
    for (const o of ['mkdir', 'create', 'unlink', 'rmdir', 'rename', 'link']) t.ok(succeeded[`${o} ok`] > 0, `some ${o} calls succeeded`)
  } catch (err) {
    t.fail((err as Error).message)
  }
})

// ---------------------------------------------------------------------------
// Every suite above, on every engine

for (const engine of engines) {
  t.test(engine.name, { skip: engine.skip ?? false }, async t => {
    for (const { name, fn } of engineSuites) {
      // The KvStore contract counts how often bodies run and in what order: a wrapper that reruns them breaks it by design.
      const skip = engine.rerunsBodies === true && name === 'KvStore' ? 'the KvStore contract holds for the engines, not for a wrapper that reruns bodies' : false
      t.test(name, { skip }, t => fn(t, engine))
    }
  })
}
