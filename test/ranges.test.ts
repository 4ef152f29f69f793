// Byte ranges against blocks (src/data/ranges.ts): what a punch drops whole or rewrites, and
// SEEK_DATA/SEEK_HOLE against a model that looks at every byte.
import t from 'tap'
import fc from 'fast-check'
import { cover, seek, SEEK_DATA, SEEK_HOLE } from '../src/data/ranges'
import { FsError } from '../src/errors'

const code = (fn: () => unknown): string => {
  try { fn(); return 'ok' } catch (err) { return (err as FsError).code }
}

t.test('cover: whole blocks and partial pieces', async t => {
  t.same(cover(1536, 3072, 1024), { first: 2, end: 4, partial: [{ index: 1, from: 512, to: 1024 }, { index: 4, from: 0, to: 512 }] }, 'both ends partial')
  t.same(cover(1024, 2048, 1024), { first: 1, end: 3, partial: [] }, 'aligned: no partial piece')
  t.same(cover(100, 200, 1024), { first: 1, end: 1, partial: [{ index: 0, from: 100, to: 300 }] }, 'inside one block')
  fc.assert(fc.property(fc.integer({ min: 0, max: 10_000 }), fc.integer({ min: 1, max: 10_000 }), fc.constantFrom(512, 1024, 4096), (pos, len, bs) => {
    const c = cover(pos, len, bs)
    const bytes = new Set<number>()
    for (let i = c.first; i < c.end; i++) for (let b = i * bs; b < (i + 1) * bs; b++) bytes.add(b)
    for (const p of c.partial) for (let b = p.index * bs + p.from; b < p.index * bs + p.to; b++) bytes.add(b)
    return bytes.size === len && [...bytes].every(b => b >= pos && b < pos + len)
  }))
})

t.test('seek against a byte model', async t => {
  fc.assert(fc.property(fc.uniqueArray(fc.integer({ min: 0, max: 40 }), { maxLength: 20 }), fc.integer({ min: 1, max: 41 * 8 }), fc.nat(41 * 8),
    (data, size, pos) => {
      const bs = 8
      const idx = [...data].sort((a, b) => a - b)
      const isData = (b: number) => idx.includes(Math.floor(b / bs)) && b < size
      const want = (whence: number): number | string => {
        if (pos >= size) return 'ENXIO'
        for (let b = pos; b < size; b++) if (isData(b) === (whence === SEEK_DATA)) return b
        return whence === SEEK_HOLE ? size : 'ENXIO'
      }
      const got = (whence: number): number | string => { try { return seek(whence, pos, size, bs, idx) } catch (e) { return (e as FsError).code } }
      return got(SEEK_DATA) === want(SEEK_DATA) && got(SEEK_HOLE) === want(SEEK_HOLE)
    }))
  t.equal(code(() => seek(0, 0, 10, 8, [])), 'EINVAL', 'SEEK_SET is not for here')
})
