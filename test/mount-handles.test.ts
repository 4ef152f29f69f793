// File handles (name_to_handle_at / open_by_handle_at, what the kernel's NFS server and backup
// tools use) on a bslfs mount: they open the same file after the kernel dropped its inodes
// (drop_caches) and after a remount, a directory's handle comes back connected to its path
// (the kernel looks up ".." by inode number), a removed file's handle gives ESTALE, and so does
// the handle of a file whose inode number a new file got (a STATE restored from an older copy).
// The volume does not matter here: the local pass and the PostgreSQL directory run it.
import t from 'tap'
import * as fs from 'node:fs'
import { join } from 'node:path'
import { HANDLES, dropCaches } from './helpers/handles'
import { describeRun, directoryKind, py, sha256, target, volumeKind, withMount } from './helpers/mount'

if (target === 'bslfs' && (volumeKind === 'local' || directoryKind === 'postgres')) {
  t.test('handles open after drop_caches and after a remount; a removed file gives ESTALE', async t => {
    const m = await withMount(t)
    const p = (n: string) => join(m.mnt, n)
    fs.mkdirSync(p('a/b/c'), { recursive: true })
    fs.writeFileSync(p('top'), 'top-file')
    fs.writeFileSync(p('a/b/c/deep'), 'deep-file')
    fs.writeFileSync(p('gone'), 'removed')
    const paths = ['top', 'a/b/c/deep', 'a/b/c', 'a', 'gone'].map(p)
    const enc = await py(HANDLES, ['encode', ...paths])
    const handles = paths.map((_, i) => enc.results[`h${i}`] ?? '')
    if (!t.ok(handles.every(h => /^\d+:[0-9a-f]+$/.test(h)), 'name_to_handle_at gives a handle for each', { run: describeRun(enc.run) })) return
    const expect = [`OK:${sha256('top-file')}`, `OK:${sha256('deep-file')}`, `OK:${p('a/b/c')}`, `OK:${p('a')}`]
    const opened = async (what: string, gone: string): Promise<void> => {
      const r = await py(HANDLES, ['open', m.mnt, ...handles])
      t.same(paths.map((_, i) => r.results[`h${i}`]), [...expect, gone], what, { run: describeRun(r.run) })
    }
    await opened('while the kernel holds the inodes: files read, directories open at their paths', `OK:${sha256('removed')}`)
    fs.unlinkSync(p('gone'))
    dropCaches()
    await opened('after drop_caches: the same, the removed file ESTALE', 'ESTALE')
    await m.remount()
    await opened('after a remount: the same', 'ESTALE')
    fs.renameSync(p('a/b/c'), p('moved'))
    dropCaches()
    const r = await py(HANDLES, ['open', m.mnt, handles[2]!, handles[1]!])
    t.same([r.results.h0, r.results.h1], [`OK:${p('moved')}`, `OK:${sha256('deep-file')}`], 'a renamed directory: its handle opens it at its new path', { run: describeRun(r.run) })
  })
}

if (target === 'bslfs' && volumeKind === 'local') {
  t.test('a handle never opens a new file that got the old one\'s inode number', async t => {
    const m = await withMount(t)
    fs.writeFileSync(join(m.mnt, 'kept'), 'kept')
    await m.unmount()
    const copy = join(m.base, 'state-copy')
    fs.cpSync(m.state, copy, { recursive: true })
    await m.mount()
    fs.writeFileSync(join(m.mnt, 'first'), 'first-file')
    const ino = fs.statSync(join(m.mnt, 'first')).ino
    const enc = await py(HANDLES, ['encode', join(m.mnt, 'first'), join(m.mnt, 'kept')])
    const [first, kept] = [enc.results.h0 ?? '', enc.results.h1 ?? '']
    t.match(first, /^\d+:[0-9a-f]+$/, 'a handle of the first file', { run: describeRun(enc.run) })
    // The STATE as it was before: the inode counter too, so the next new file gets the same number.
    await m.unmount()
    fs.rmSync(m.state, { recursive: true, force: true })
    fs.cpSync(copy, m.state, { recursive: true })
    await m.mount()
    fs.writeFileSync(join(m.mnt, 'second'), 'second-file')
    t.equal(fs.statSync(join(m.mnt, 'second')).ino, ino, `the new file got inode number ${ino} again`)
    dropCaches()
    const second = (await py(HANDLES, ['encode', join(m.mnt, 'second')])).results.h0 ?? ''
    const r = await py(HANDLES, ['open', m.mnt, first, kept, second])
    t.same([r.results.h0, r.results.h1, r.results.h2], ['ESTALE', `OK:${sha256('kept')}`, `OK:${sha256('second-file')}`],
      'the old handle is ESTALE; a file from before (generation 0 or not) and the new file open', { run: describeRun(r.run) })
  })
}
