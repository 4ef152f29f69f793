/**
 * Mount sessions, the job lease, hold records and the fence (sessions.ts,
 * fence.ts), with two Directory instances on one store standing for two
 * hosts: on LevelDB behind the shared rerun wrapper (every body run twice) and
 * on PostgreSQL (two stores of one database, conflicts retried for real).
 */
import t, { Test } from 'tap'
import { performance } from 'node:perf_hooks'
import { FsError } from '../src/errors'
import { Directory } from '../src/directory/directory'
import { keys, ROOT_INO } from '../src/directory/records'
import { SessionRow } from '../src/directory/sessions'
import { deadHere, reapExpiredSessions } from '../src/daemon/session-keeper'
import { parseMountOptions } from '../src/fs/mount'
import { S_IFREG } from '../src/posix/modes'
import { pgUnavailable } from './helpers/postgres'
import { type Hosts, levelHosts, pgHosts } from './helpers/directory-hosts'

const FILE = { mode: S_IFREG | 0o644, uid: 0, gid: 0 }
const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

function row (dir: Directory, expiryMs: number, mountpoint: string): SessionRow {
  return { session: dir.session, host: 'h', pid: process.pid, mountpoint, version: 'test', started: new Date().toISOString(), renewed: 0, heartbeatMs: expiryMs / 4, expiryMs }
}

async function codeOf (p: Promise<unknown>): Promise<string> {
  try {
    await p
    return 'ok'
  } catch (err) {
    if (err instanceof FsError) return err.code
    throw err
  }
}

function suite (make: (t: Test) => Promise<Hosts>): (t: Test) => Promise<void> {
  return async t => {
    t.test('sessions register, renew, end; a reaped one renews as gone', async t => {
      const { a, b } = await make(t)
      t.equal(await a.renewSession(row(a, 60_000, '/a'), true), 'renewed')
      t.equal(await b.renewSession(row(b, 60_000, '/b'), true), 'renewed')
      const seen = (await a.sessions()).sessions
      t.same(seen.map(s => s.mountpoint).sort(), ['/a', '/b'], 'both listed')
      t.ok(seen.every(s => Date.now() - s.renewed < 10_000), 'renewal times are recent')
      await b.endSession()
      t.same((await a.sessions()).sessions.map(s => s.mountpoint), ['/a'], 'B gone after it ended')
      t.equal(await b.renewSession(row(b, 60_000, '/b')), 'gone', 'an ended session does not come back by a renewal')
    })

    t.test('one lease holder at a time; the lease moves once it expires', async t => {
      const { a, b } = await make(t)
      const both = await Promise.all([a.takeLease(400), b.takeLease(400)])
      t.equal(both.filter(x => x).length, 1, 'exactly one of two at once takes it')
      const [holder, other] = both[0] ? [a, b] : [b, a]
      t.equal(await holder.takeLease(400), true, 'the holder renews it')
      t.equal(await other.takeLease(400), false, 'the other cannot while it is renewed')
      await sleep(500)
      t.equal(await other.takeLease(400), true, 'taken over after the expiry')
      t.equal(await holder.takeLease(400), false, 'the old holder lost it')
      await other.endSession()
      t.equal((await holder.sessions()).lease, undefined, 'ending the session frees the lease')
      t.equal(await holder.takeLease(400), true)
    })

    t.test('an unlink keeps an inode another host holds open; its close frees it', async t => {
      const { a, b } = await make(t)
      const f = await a.createNode(ROOT_INO, 'f', FILE)
      await b.holdOpen(f.ino)
      await a.unlink(ROOT_INO, 'f')
      a.dropCaches()
      const kept = await a.getInode(f.ino)
      t.equal(kept.nlink, 0, 'unlinked but kept: B holds it')
      t.ok(await a.kv.get(keys.orphan(f.ino)), 'recorded as an orphan')
      await a.releaseIfUnlinked(f.ino)
      t.equal((await a.readFresh(f.ino)).inode.nlink, 0, 'A letting go does not free what B holds')
      await b.releaseIfUnlinked(f.ino)
      t.equal(await codeOf(a.readFresh(f.ino)), 'ENOENT', 'freed once B let go')
      t.equal(await a.kv.get(keys.orphan(f.ino)), undefined, 'no orphan left')
      t.equal(await codeOf(b.holdOpen(f.ino)), 'ENOENT', 'a freed inode cannot be held')
    })

    t.test('a close while the file still has links lets go of its hold: a later unlink elsewhere frees it at once', async t => {
      const { a, b } = await make(t)
      const f = await a.createNode(ROOT_INO, 'g', FILE)
      await b.getInode(f.ino) // B knows the inode has a link, as after an open
      await b.holdOpen(f.ino)
      await b.releaseIfUnlinked(f.ino) // B's close
      await a.unlink(ROOT_INO, 'g')
      t.equal(await codeOf(a.readFresh(f.ino)), 'ENOENT', 'freed by the unlink: no hold of B\'s was left behind')
      t.equal(await a.kv.get(keys.orphan(f.ino)), undefined, 'no orphan left')
    })

    t.test('the lease holder reaps a dead session: its held orphans freed, its usage row folded', async t => {
      const { a, b } = await make(t)
      await a.renewSession(row(a, 60_000, '/a'), true)
      await b.renewSession(row(b, 300, '/b'), true)
      const f = await b.createNode(ROOT_INO, 'f', FILE)
      const g = await a.createNode(ROOT_INO, 'g', FILE)
      await b.holdOpen(f.ino)
      await b.holdOpen(g.ino)
      await a.holdOpen(g.ino)
      await a.unlink(ROOT_INO, 'f')
      await b.unlink(ROOT_INO, 'g')
      t.equal(await a.reapSession(b.session), undefined, 'not reaped before its expiry')
      await sleep(400)
      const before = (await a.sessions()).sessions.length
      t.equal(await a.reapSession(b.session), 1, 'one inode freed: the one only B held')
      t.equal((await a.sessions()).sessions.length, before - 1, 'B\'s row is gone')
      t.equal(await codeOf(a.readFresh(f.ino)), 'ENOENT', 'f, held by B alone, freed')
      t.equal((await a.readFresh(g.ino)).inode.nlink, 0, 'g, held by A too, stays')
      t.equal(await a.kv.get(keys.meta(`usage/${b.session}`)), undefined, 'B\'s usage row folded')
      await a.refreshUsage()
      t.equal(a.usage.files, 2, 'root and g are counted')
      t.equal(await b.renewSession(row(b, 300, '/b')), 'gone', 'B finds itself reaped')
      t.same(await b.rejoin([], true), [], 'B registers again with nothing open')
      await b.renewSession(row(b, 300, '/b'), true)
      await b.createNode(ROOT_INO, 'h', FILE)
      await a.refreshUsage()
      t.equal(a.usage.files, 3, 'B counts from zero after its row was folded: nothing counted twice')
    })

    t.test('offline (fsck --repair, no other mount): only the expired sessions are reaped', async t => {
      const { a, b } = await make(t)
      await a.renewSession(row(a, 60_000, '/a'), true)
      await b.renewSession(row(b, 300, '/b'), true)
      const f = await b.createNode(ROOT_INO, 'f', FILE)
      await b.holdOpen(f.ino)
      await b.unlink(ROOT_INO, 'f')
      await sleep(400)
      t.equal(await reapExpiredSessions(a), 1, 'B reaped, A (live) kept')
      t.same((await a.sessions()).sessions.map(s => s.mountpoint), ['/a'])
      t.equal(await codeOf(a.readFresh(f.ino)), 'ENOENT', 'what B alone held is freed')
    })

    t.test('a mount past its expiry is fenced: changes fail with EIO, reads pass', async t => {
      const { a } = await make(t)
      const f = await a.createNode(ROOT_INO, 'f', FILE)
      a.fence.confirm(200, performance.now(), Date.now())
      await a.setAttrs(f.ino, { mode: S_IFREG | 0o600 })
      await sleep(300)
      t.equal(await codeOf(a.createNode(ROOT_INO, 'g', FILE)), 'EIO', 'create refused')
      t.equal(await codeOf(a.setAttrs(f.ino, { mode: S_IFREG | 0o640 })), 'EIO', 'chmod refused')
      t.equal(await codeOf(a.unlink(ROOT_INO, 'f')), 'EIO', 'unlink refused')
      t.equal((await a.readFresh(f.ino)).inode.mode, S_IFREG | 0o600, 'reads still pass, and nothing changed')
      a.fence.confirm(60_000, performance.now(), Date.now())
      await a.createNode(ROOT_INO, 'g', FILE)
      t.ok(await a.lookup(ROOT_INO, 'g'), 'allowed again after a confirmed renewal')
      a.fence.trip('test')
      t.equal(await codeOf(a.unlink(ROOT_INO, 'g')), 'EIO', 'a tripped fence refuses until confirmed')
    })
  }
}

t.test('a session of this host whose process is gone is dead at once; elsewhere only its expiry tells', async t => {
  const { spawnSync } = await import('node:child_process')
  const { readFileSync, readlinkSync } = await import('node:fs')
  const local = `${readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()} ${readlinkSync('/proc/self/ns/pid')}`
  const gone = spawnSync('true').pid! // exited and reaped
  const base: SessionRow = { session: 's', host: 'h', pid: gone, mountpoint: '/m', version: 'test', started: '', renewed: Date.now(), heartbeatMs: 1000, expiryMs: 60_000, local }
  t.equal(deadHere(base), true, 'its process gone on this host: dead')
  t.equal(deadHere({ ...base, pid: process.ppid }), false, 'a process that runs: alive')
  t.equal(deadHere({ ...base, local: 'another-boot pid:[1]' }), false, 'another host (or boot, or pid namespace): the expiry decides')
  t.equal(deadHere({ ...base, local: undefined }), false, 'a row without it: the expiry decides')
})

t.test('session_heartbeat= and session_expiry= mount options', async t => {
  const o = parseMountOptions('session_heartbeat=0.5,session_expiry=2')
  t.equal(o.sessionHeartbeatMs, 500)
  t.equal(o.sessionExpiryMs, 2000)
  t.equal(parseMountOptions('').sessionExpiryMs, undefined, 'default: none given (12 s and 60 s)')
  t.throws(() => parseMountOptions('session_expiry=0'), /session_expiry=SECONDS takes 0.1 to 3600 seconds/)
  t.throws(() => parseMountOptions('session_heartbeat=x'), /bad mount option "session_heartbeat=x"/)
  t.throws(() => parseMountOptions('session_heartbeat=31'), /session_expiry \(60 s\) must be at least twice session_heartbeat \(31 s\)/)
})

t.test('LevelKv shared, every body run twice', suite(levelHosts))
t.test('PgKv, two stores of one database', { skip: pgUnavailable() ?? false }, suite(pgHosts))
