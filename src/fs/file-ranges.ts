import { OpenFile } from '../data/open-file'
import {
  FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, checkAligned
} from '../data/ranges'
import { FsError } from '../errors'
import { nowTimespec } from '../posix/time'

/**
 * fallocate(2) on an open file, by mode:
 * - 0 / KEEP_SIZE: preallocation. bslfs makes no blocks (a block is an object
 *   written whole), so the space is counted, not reserved: ENOSPC when the
 *   devices have less room than the range's holes need; 0 then grows the size.
 * - PUNCH_HOLE|KEEP_SIZE, ZERO_RANGE: the range reads as zeros; whole blocks
 *   leave the block map and their space is reclaimed (OpenFile.punch).
 *   ZERO_RANGE without KEEP_SIZE grows the size as mode 0 does.
 * - COLLAPSE_RANGE, INSERT_RANGE: the kernel's FUSE client refuses them before
 *   asking (EOPNOTSUPP); should one come, it is refused the same way.
 */
export async function fallocateFile (file: OpenFile, offset: number, length: number, mode: number,
  available: () => Promise<number>, blockSize: number): Promise<void> {
  if (offset < 0 || length <= 0) throw new FsError('EINVAL', `fallocate: offset ${offset}, length ${length}: the length must be positive`)
  if (mode & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE)) {
    checkAligned('fallocate', offset, length, blockSize)
    throw new FsError('EOPNOTSUPP', 'fallocate: COLLAPSE_RANGE and INSERT_RANGE are not supported')
  }
  const known = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE
  if (mode & ~known) throw new FsError('EOPNOTSUPP', `fallocate: mode 0x${mode.toString(16)} is not supported`)
  const punch = (mode & FALLOC_FL_PUNCH_HOLE) !== 0
  if (punch && !(mode & FALLOC_FL_KEEP_SIZE)) throw new FsError('EOPNOTSUPP', 'fallocate: PUNCH_HOLE needs KEEP_SIZE')
  if (punch && (mode & FALLOC_FL_ZERO_RANGE)) throw new FsError('EINVAL', 'fallocate: PUNCH_HOLE and ZERO_RANGE together')
  const now = nowTimespec()
  if (punch || (mode & FALLOC_FL_ZERO_RANGE)) {
    await file.punch(offset, length, now)
  } else {
    const need = file.holeBytes(offset, length)
    const room = await available()
    if (need > room) throw new FsError('ENOSPC', `fallocate: ${need} bytes needed, the devices have ${room}`)
  }
  if (!(mode & FALLOC_FL_KEEP_SIZE)) await file.extend(offset + length, now)
}
