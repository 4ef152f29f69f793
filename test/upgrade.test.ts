// On-disk formats across versions: a filesystem made by bslfs 0.1.0 (format 1 of STATE/bslfs.json
// and of the directory), checked in under test/fixtures/state-v1, must keep mounting and reading
// back exactly; a format newer than this bslfs knows is refused, naming both versions, and left
// as it was. test/fixtures/state-v1.md says how the fixture was made.
import t from 'tap'
import * as fs from 'node:fs'
import { join } from 'node:path'
import { LevelKv } from '../src/directory/leveldb'
import { keys } from '../src/directory/records'
import { HANDLES, dropCaches } from './helpers/handles'
import { bslfs, describeRun, isMounted, py, repoRoot, sha256, waitFor } from './helpers/mount'

const fixture = join(repoRoot, 'test', 'fixtures', 'state-v1')
/** What the fixture's files hold: path → sha256 of the content, and mode (as made, see state-v1.md). */
const expected = JSON.parse(fs.readFileSync(join(repoRoot, 'test', 'fixtures', 'state-v1.files.json'), 'utf8')) as Record<string, { sha256: string, mode: number, size: number }>

/** Where the fixture was made (its STATE was MADE_AT/state). */
const MADE_AT = '/tmp/bslfs-fixture-v1'

function copyFixture (t: { teardown (fn: () => void): void }): { dir: string, state: string, mnt: string } {
  // The directory records its local device's absolute path (STATE/devices/d0 as `bslfs init` made
  // it), so the fixture is used where it was made: a copy at that path.
  const dir = MADE_AT
  fs.rmSync(dir, { recursive: true, force: true })
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const state = join(dir, 'state')
  fs.cpSync(fixture, state, { recursive: true })
  const mnt = join(dir, 'mnt')
  fs.mkdirSync(mnt)
  return { dir, state, mnt }
}

t.test('a filesystem made by format 1 mounts and reads back exactly', async t => {
  const { state, mnt } = copyFixture(t)
  const m = await bslfs(['mount', state, mnt])
  if (!t.equal(m.code, 0, 'it mounts', { run: describeRun(m) })) return
  t.teardown(async () => { if (isMounted(mnt)) await bslfs(['unmount', mnt]) })
  const found: Record<string, { sha256: string, mode: number, size: number }> = {}
  const walk = (rel: string): void => {
    for (const name of fs.readdirSync(join(mnt, rel)).sort()) {
      const p = join(rel, name)
      const st = fs.lstatSync(join(mnt, p))
      if (st.isDirectory()) walk(p)
      else found[p] = { sha256: sha256(fs.readFileSync(join(mnt, p))), mode: st.mode, size: st.size }
    }
  }
  walk('')
  t.same(found, expected, 'every file, with its content and mode')
  // Inodes of format 1 have no generation (0): their file handles open after the kernel forgot them.
  const file = 'docs/blocks.bin'
  const h = (await py(HANDLES, ['encode', join(mnt, file)])).results.h0 ?? ''
  dropCaches()
  const r = await py(HANDLES, ['open', mnt, h])
  t.equal(r.results.h0, `OK:${expected[file]!.sha256}`, `a handle of ${file} opens it after drop_caches`, { run: describeRun(r.run) })
  const fsck = await bslfs(['fsck', state])
  t.equal(fsck.code, 0, 'fsck finds nothing wrong', { run: describeRun(fsck) })
  t.equal((await bslfs(['unmount', mnt])).code, 0, 'it unmounts')
  t.ok(await waitFor(() => !isMounted(mnt), 10_000))
})

t.test('a newer format is refused, naming both versions, and nothing changes', async t => {
  const { state, mnt } = copyFixture(t)
  const marker = join(state, 'bslfs.json')
  const original = fs.readFileSync(marker, 'utf8')
  fs.writeFileSync(marker, original.replace('"version": 1', '"version": 2'))
  const m = await bslfs(['mount', state, mnt])
  t.not(m.code, 0, 'a STATE marker of format 2 does not mount')
  t.match(m.stderr, /bslfs\.json is in format version 2, and this bslfs \(\d+\.\d+\.\d+\) reads format version 1: it was made by a newer bslfs; upgrade bslfs/, 'naming both versions', { run: describeRun(m) })
  t.notOk(isMounted(mnt), 'nothing is mounted')
  fs.writeFileSync(marker, original)

  // The directory's own config record of a newer format.
  const kv = await LevelKv.open(join(state, 'directory'))
  const config = JSON.parse((await kv.get(keys.meta('config')))!.toString('utf8')) as Record<string, unknown>
  await kv.txn(tx => { tx.put(keys.meta('config'), Buffer.from(JSON.stringify({ ...config, version: 3 }))) }, { sync: true })
  await kv.close()
  const s = await bslfs(['status', state])
  t.not(s.code, 0, 'a directory of format 3 does not open')
  t.match(s.stderr, /the directory database is in format version 3, and this bslfs \(\d+\.\d+\.\d+\) reads format version 1/, 'naming both versions', { run: describeRun(s) })
  const m2 = await bslfs(['mount', state, mnt])
  t.not(m2.code, 0, 'nor mount')
  t.notOk(isMounted(mnt))
})
