/**
 * Byte ranges of a file against its blocks: which blocks a range covers whole
 * (fallocate punches and copies those as records, without their bytes), and
 * where data and holes begin (lseek SEEK_DATA / SEEK_HOLE). Pure functions of
 * the block map, so they are tested without a mount.
 */
import { FsError } from '../errors'

/** fallocate(2) modes (linux/falloc.h). */
export const FALLOC_FL_KEEP_SIZE = 0x01
export const FALLOC_FL_PUNCH_HOLE = 0x02
export const FALLOC_FL_COLLAPSE_RANGE = 0x08
export const FALLOC_FL_ZERO_RANGE = 0x10
export const FALLOC_FL_INSERT_RANGE = 0x20

export const SEEK_DATA = 3
export const SEEK_HOLE = 4

/** The blocks [first, end) that [pos, pos + len) covers whole, with the partial pieces at either side. */
export interface Cover {
  first: number
  end: number
  /** Partly covered blocks: index, and the bytes [from, to) inside it. */
  partial: Array<{ index: number, from: number, to: number }>
}

export function cover (pos: number, len: number, bs: number): Cover {
  const stop = pos + len
  const first = Math.ceil(pos / bs)
  const end = Math.floor(stop / bs)
  const partial: Cover['partial'] = []
  if (first > end) {
    // Inside one block.
    const i = Math.floor(pos / bs)
    if (len > 0) partial.push({ index: i, from: pos - i * bs, to: stop - i * bs })
    return { first, end: first, partial }
  }
  if (pos % bs) partial.push({ index: first - 1, from: pos % bs, to: bs })
  if (stop % bs) partial.push({ index: end, from: 0, to: stop % bs })
  return { first, end, partial }
}

/** What a seek looks at: whether block `i` holds data (a record, or bytes not yet stored). */
export type HasData = (i: number) => boolean

/**
 * lseek(SEEK_DATA / SEEK_HOLE) from `pos` in a file of `size` bytes whose data
 * blocks are those `indexes` (ascending) name. A block without data is a hole;
 * the end of the file is a hole. ENXIO at or past the end, or with no data after `pos`.
 */
export function seek (whence: number, pos: number, size: number, bs: number, indexes: number[]): number {
  if (whence !== SEEK_DATA && whence !== SEEK_HOLE) throw new FsError('EINVAL', `lseek whence ${whence}: only SEEK_DATA (3) and SEEK_HOLE (4) come here`)
  if (pos < 0 || pos >= size) throw new FsError('ENXIO', `offset ${pos} is not before the end of the file (${size} bytes)`)
  const i = Math.floor(pos / bs)
  // The first data block at or after i (indexes is sorted: binary search).
  let lo = 0
  let hi = indexes.length
  while (lo < hi) {
    const mid = (lo + hi) >> 1
    if (indexes[mid] < i) lo = mid + 1
    else hi = mid
  }
  if (whence === SEEK_DATA) {
    if (lo >= indexes.length) throw new FsError('ENXIO', `no data after offset ${pos}`)
    const at = Math.max(pos, indexes[lo] * bs)
    if (at >= size) throw new FsError('ENXIO', `no data after offset ${pos}`)
    return at
  }
  // SEEK_HOLE: walk the run of consecutive data blocks starting at i.
  if (lo >= indexes.length || indexes[lo] !== i) return pos
  let k = lo
  while (k + 1 < indexes.length && indexes[k + 1] === indexes[k] + 1) k++
  return Math.min(size, (indexes[k] + 1) * bs)
}

/** Check a COLLAPSE_RANGE / INSERT_RANGE against the block size, as ext4 does. */
export function checkAligned (what: string, pos: number, len: number, bs: number): void {
  if (pos % bs || len % bs) throw new FsError('EINVAL', `${what}: offset ${pos} and length ${len} must be multiples of the block size ${bs}`)
}
