// The data path beyond read and write, through the kernel with the tools a user has (issue 26,
// points 1-3): fallocate in its modes (xfs_io, fallocate(1), posix_fallocate), holes answered
// from the block map (lseek SEEK_DATA/SEEK_HOLE, st_blocks, cp --sparse), and copy_file_range
// served by the daemon (python's os.copy_file_range, cp). Every punch is checked against the block
// map (`bslfs bsl`), the objects on the device, and fsck. Mirrored and crash punches: mount-punch.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import * as fsp from 'node:fs/promises'
import { join } from 'node:path'
import { py, run, target, waitFor, withMount } from './helpers/mount'
import { BS, MiB, blocksOf, deviceRoots, fsck, must, objectFiles, objectId, reclaimed, seekTable, sha, statBlocks, type Block } from './helpers/ranges'

if (target !== 'bslfs') {
  t.comment(`fallocate/holes/copy_file_range tests check bslfs's block map: not registered for ${target}`)
} else {
  t.test('fallocate, holes and copy_file_range', async (t) => {
    const m = await withMount(t)
    const roots = deviceRoots(m)

    t.test('xfs_io fpunch: whole blocks leave the block map and the device, partial ones are rewritten', async (t) => {
      const f = join(m.mnt, 'img')
      const data = randomBytes(8 * MiB)
      await fsp.writeFile(f, data)
      const before = await blocksOf(m, f)
      t.same(before.map(b => b.index), [0, 1, 2, 3, 4, 5, 6, 7], '8 blocks before')
      must(await run('xfs_io', ['-c', `fpunch ${1.5 * MiB} ${3 * MiB}`, f]), 'xfs_io fpunch')
      const model = Buffer.from(data)
      model.fill(0, 1.5 * MiB, 4.5 * MiB)
      t.equal(sha(await fsp.readFile(f)), sha(model), 'the file reads as the model: zeros in the punched range')
      const after = await blocksOf(m, f)
      t.same(after.map(b => b.index), [0, 1, 4, 5, 6, 7], 'blocks 2 and 3 (inside the range) are gone from the block map')
      const id = (bs: Block[], i: number) => objectId(bs.find(b => b.index === i)!)
      for (const i of [0, 5, 6, 7]) t.equal(id(after, i), id(before, i), `block ${i} (outside) is the same object`)
      for (const i of [1, 4]) t.not(id(after, i), id(before, i), `block ${i} (partly inside) is a new object`)
      t.same(await seekTable(f), [['DATA', 0], ['HOLE', 2 * MiB], ['DATA', 4 * MiB], ['HOLE', 8 * MiB]], 'SEEK_DATA/SEEK_HOLE from the block map')
      t.same(await statBlocks(f), { size: 8 * MiB, blocks: 6 * MiB / 512 }, 'size kept, st_blocks counts the 6 blocks left')
      const gone = [2, 3, 1, 4].map(i => id(before, i))
      t.same(await reclaimed(roots, gone), [], 'the objects of the punched and rewritten blocks are reclaimed on the device')
      for (const i of [0, 5]) t.ok((await objectFiles(roots, id(after, i))).length > 0, `block ${i}'s object is still there`)

      // A punch of everything but a few bytes, past the end too: the file stays its size.
      must(await run('xfs_io', ['-c', `fpunch 0 ${20 * MiB}`, f]), 'xfs_io fpunch all')
      t.same(await blocksOf(m, f), [], 'a punch of the whole file leaves no block')
      t.same(await statBlocks(f), { size: 8 * MiB, blocks: 0 }, 'the size stays, st_blocks 0')
      t.same(await seekTable(f), [['HOLE', 0]], 'all hole')
      t.equal(sha(await fsp.readFile(f)), sha(Buffer.alloc(8 * MiB)), 'it reads as zeros')
    })

    t.test('fallocate(1): preallocate, keep size, zero range, punch; collapse and insert as the kernel allows', async (t) => {
      const f = join(m.mnt, 'pre')
      must(await run('fallocate', ['-l', '3M', f]), 'fallocate -l 3M')
      t.same(await statBlocks(f), { size: 3 * MiB, blocks: 0 }, 'mode 0 grows the size; no block is made (space counted, not reserved)')
      t.same(await seekTable(f), [['HOLE', 0]], 'the preallocated range is a hole')
      must(await run('dd', ['if=/dev/urandom', `of=${f}`, 'bs=4k', 'count=1', 'seek=256', 'conv=notrunc', 'status=none']), 'dd into it')
      // The kernel may hold the attributes it had for attr_timeout (1 s).
      let st = await statBlocks(f)
      await waitFor(async () => (st = await statBlocks(f)).blocks === 2048, 3000, 100)
      t.same(st, { size: 3 * MiB, blocks: 2048 }, 'a write into the range makes its block')
      must(await run('fallocate', ['-n', '-o', '0', '-l', '8M', f]), 'fallocate -n')
      t.equal((await statBlocks(f)).size, 3 * MiB, 'KEEP_SIZE keeps the size')
      await fsp.writeFile(join(m.mnt, 'huge'), '')
      const tooMuch = await run('fallocate', ['-n', '-l', '10T', join(m.mnt, 'huge')])
      t.not(tooMuch.code, 0, 'a preallocation beyond the devices\' room fails')
      t.match(tooMuch.stderr, /No space left on device/, '... with ENOSPC')
      t.equal((await statBlocks(join(m.mnt, 'huge'))).size, 0, '... and changes nothing')
      const p = await py(`
f = sys.argv[1]
fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
attempt('posix_fallocate', os.posix_fallocate, fd, 0, 5 << 20)
print('size', os.fstat(fd).st_size)
os.close(fd)`, [join(m.mnt, 'posix')])
      t.equal(p.results.posix_fallocate, 'OK', 'posix_fallocate works (no write-zeros fallback: it is served)')
      t.equal(p.results.size, String(5 * MiB), 'posix_fallocate grew the file')

      const z = join(m.mnt, 'zero')
      const data = randomBytes(2 * MiB + 5000)
      await fsp.writeFile(z, data)
      must(await run('fallocate', ['-z', '-o', '100', '-l', String(MiB + 5000), z]), 'fallocate -z')
      const model = Buffer.from(data)
      model.fill(0, 100, 100 + MiB + 5000)
      t.equal(sha(await fsp.readFile(z)), sha(model), 'ZERO_RANGE zeroes the range (partial blocks rewritten)')
      must(await run('fallocate', ['-z', '-o', String(2 * MiB), '-l', String(2 * MiB), z]), 'fallocate -z past the end')
      const grown = Buffer.concat([model.subarray(0, 2 * MiB), Buffer.alloc(2 * MiB)])
      t.equal((await statBlocks(z)).size, 4 * MiB, 'ZERO_RANGE without KEEP_SIZE grows the file')
      t.equal(sha(await fsp.readFile(z)), sha(grown), '... with zeros')
      must(await run('fallocate', ['-p', '-o', '0', '-l', '1M', z]), 'fallocate -p')
      t.same((await blocksOf(m, z)).map(b => b.index), [1], 'PUNCH_HOLE of block 0 drops it (block 2, the old tail, went with the zeroing)')
      grown.fill(0, 0, MiB)
      t.equal(sha(await fsp.readFile(z)), sha(grown), 'the punched file reads as the model')

      // The kernel's FUSE client refuses COLLAPSE_RANGE and INSERT_RANGE itself (EOPNOTSUPP), before asking bslfs.
      for (const [flag, what] of [['-c', 'collapse'], ['-i', 'insert']]) {
        const r = await run('fallocate', [flag, '-o', '0', '-l', '1M', z])
        t.match(r.stderr, /not supported/, `fallocate ${what}: "Operation not supported"`)
      }
      t.equal(sha(await fsp.readFile(z)), sha(grown), 'the refused modes changed nothing')
    })

    t.test('a 10 GiB file with 4 KiB of data: SEEK_DATA/SEEK_HOLE, st_blocks, cp --sparse=always', async (t) => {
      const big = join(m.mnt, 'big')
      const at = 5 * 1024 * MiB
      const r = await py(`
f, at = sys.argv[1], int(sys.argv[2])
fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
os.ftruncate(fd, 10 << 30)
os.pwrite(fd, b'x' * 4096, at)
os.fsync(fd)
print('data0', os.lseek(fd, 0, os.SEEK_DATA))
print('hole0', os.lseek(fd, 0, os.SEEK_HOLE))
print('holeAt', os.lseek(fd, at, os.SEEK_HOLE))
attempt('dataAfter', os.lseek, fd, at + (1 << 20), os.SEEK_DATA)
attempt('pastEnd', os.lseek, fd, 10 << 30, os.SEEK_HOLE)
print('blocks', os.fstat(fd).st_blocks)
os.close(fd)`, [big, String(at)])
      must(r.run, 'python seek')
      t.equal(r.results.data0, String(at), 'SEEK_DATA from 0 finds the data at 5 GiB')
      t.equal(r.results.hole0, '0', 'SEEK_HOLE from 0 is 0')
      const holeAt = Number(r.results.holeAt)
      t.ok(holeAt > at && holeAt <= at + BS, `SEEK_HOLE from the data is at its block's end (${holeAt})`)
      t.equal(r.results.dataAfter, 'ENXIO', 'no data after the block: ENXIO')
      t.equal(r.results.pastEnd, 'ENXIO', 'at the end: ENXIO')
      t.ok(Number(r.results.blocks) <= BS / 512, `st_blocks counts one block at most (${r.results.blocks})`)
      const copy = join(m.mnt, 'big.copy')
      const started = Date.now()
      must(await run('cp', ['--sparse=always', big, copy], { timeout: 60_000 }), 'cp --sparse=always')
      t.comment(`cp --sparse=always of 10 GiB with 4 KiB of data: ${Date.now() - started} ms`)
      const c = await statBlocks(copy)
      t.equal(c.size, 10 * 1024 * MiB, 'the copy has the size')
      t.ok(c.blocks * 512 <= BS, `the copy is sparse (${c.blocks} blocks of 512)`)
      const d = await py(`
fd = os.open(sys.argv[1], os.O_RDONLY)
at = os.lseek(fd, 0, os.SEEK_DATA)
print('at', at)
print('bytes', os.pread(fd, 8192, at).rstrip(b'\\0').decode())
os.close(fd)`, [copy])
      t.equal(d.results.at, String(at), 'the copy\'s data is at 5 GiB')
      t.equal(d.results.bytes, 'x'.repeat(4096), 'the copy\'s data is the 4 KiB written')
      // tar -S asks SEEK_DATA/SEEK_HOLE too: the archive holds the data block, not 10 GiB of zeros.
      const tarball = join(m.base, 'big.tar')
      must(await run('tar', ['-S', '-cf', tarball, '-C', m.mnt, 'big'], { timeout: 60_000 }), 'tar -S')
      const tarBytes = (await fsp.stat(tarball)).size
      t.ok(tarBytes <= 2 * BS, `tar -S archived the data only (${tarBytes} bytes)`)
      await fsp.rm(tarball)
      await fsp.rm(big)
      await fsp.rm(copy)
    })

    t.test('copy_file_range inside the daemon: objects copied, never shared, holes kept', async (t) => {
      const src = join(m.mnt, 'src')
      const data = randomBytes(8 * MiB + 1000)
      await fsp.writeFile(src, data)
      const r = await py(`
s, d = sys.argv[1], sys.argv[2]
fi = os.open(s, os.O_RDONLY)
fo = os.open(d, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
n, total = 1, 0
while n:
    n = os.copy_file_range(fi, fo, 1 << 30, total, total)
    total += n
print('copied', total)
fo2 = os.open(d + '.part', os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
print('part', os.copy_file_range(fi, fo2, 3 << 20, 1000, 0))
os.close(fi); os.close(fo); os.close(fo2)`, [src, join(m.mnt, 'dst')])
      must(r.run, 'python copy_file_range')
      t.equal(r.results.copied, String(data.length), 'every byte copied')
      t.equal(sha(await fsp.readFile(join(m.mnt, 'dst'))), sha(data), 'the copy has the bytes')
      t.equal(r.results.part, String(3 * MiB), 'an unaligned copy: all of it')
      t.equal(sha(await fsp.readFile(join(m.mnt, 'dst.part'))), sha(data.subarray(1000, 1000 + 3 * MiB)), 'the unaligned copy has the bytes')
      const srcIds = new Set((await blocksOf(m, src)).map(objectId))
      const dst = await blocksOf(m, join(m.mnt, 'dst'))
      t.same(dst.map(b => b.index), [0, 1, 2, 3, 4, 5, 6, 7, 8], 'the copy has all 9 blocks')
      t.same(dst.filter(b => srcIds.has(objectId(b))).map(b => b.index), [], 'no object is shared with the source')

      // A sparse source: the kernel's fallback would write 64 MiB of zeros; bslfs keeps the holes.
      const sparse = join(m.mnt, 'sparse')
      await fsp.writeFile(sparse, Buffer.alloc(0))
      await fsp.truncate(sparse, 64 * MiB)
      const fh = await fsp.open(sparse, 'r+')
      await fh.write(randomBytes(MiB), 0, MiB, 32 * MiB)
      await fh.close()
      const s = await py(`
fi = os.open(sys.argv[1], os.O_RDONLY)
fo = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
print('copied', os.copy_file_range(fi, fo, 64 << 20, 0, 0))
os.close(fi); os.close(fo)`, [sparse, join(m.mnt, 'sparse.copy')])
      t.equal(s.results.copied, String(64 * MiB), 'the sparse file copied whole')
      t.same((await blocksOf(m, join(m.mnt, 'sparse.copy'))).map(b => b.index), [32], 'the copy holds one block: holes stayed holes')
      t.equal(sha(await fsp.readFile(join(m.mnt, 'sparse.copy'))), sha(await fsp.readFile(sparse)), 'and the same bytes')

      must(await run('cp', [src, join(m.mnt, 'cp.copy')]), 'cp')
      t.equal(sha(await fsp.readFile(join(m.mnt, 'cp.copy'))), sha(data), 'cp copies the bytes')
      // Over existing data, in the middle of a file.
      const over = join(m.mnt, 'over')
      const base = randomBytes(6 * MiB)
      await fsp.writeFile(over, base)
      const o = await py(`
fi = os.open(sys.argv[1], os.O_RDONLY)
fo = os.open(sys.argv[2], os.O_WRONLY)
print('copied', os.copy_file_range(fi, fo, 2 << 20, 1 << 20, 3 << 20))
os.close(fi); os.close(fo)`, [src, over])
      t.equal(o.results.copied, String(2 * MiB), 'a copy into the middle of a file')
      const want = Buffer.from(base)
      data.copy(want, 3 * MiB, MiB, 3 * MiB)
      t.equal(sha(await fsp.readFile(over)), sha(want), 'the file holds the copied range and its own bytes around it')
    })

    t.test('after all of it: fsck is clean, nothing left to reclaim, no leaked object', async (t) => {
      await m.unmount()
      const rep = await fsck(m)
      t.ok(rep.clean && Object.keys(rep.problems).length === 0, 'fsck is clean', { problems: rep.problems, first: rep.first })
      t.equal(rep.reclaimQueue, 0, 'the reclaim queue is empty')
      t.equal(rep.objectsListed, rep.blocks, `every object is a block (${rep.objectsListed} objects, ${rep.blocks} blocks)`)
      await m.mount()
    })
  })
}
