/**
 * The one table between HTTP statuses and POSIX codes, read in both
 * directions: the server answers a device's error with a row's status and
 * code, and a client turns a status (and the code the answer names) back
 * into the FsError it raises, and into whether asking again may help.
 */
import type { CopyFault, ErrnoCode } from '../errors'

export interface StatusRow {
  status: number
  /** The codes a server names with this status (the body's "code" and X-Bslfs-Error). */
  codes: readonly ErrnoCode[]
  /** What a client raises for it. A 404 that names ENOENT (an object read) is the caller's to read as "missing" first. */
  errno: ErrnoCode
  /** Asking again may help: the server was busy, or failed for the moment. */
  retry: boolean
  /** Named with this status, a code that makes the answer final all the same (a 5xx EIO: the server found its copy bad). */
  final?: readonly ErrnoCode[]
  /** Device errors the server answers with this status: by their code, or by the copy fault they carry. */
  fromDevice?: readonly ErrnoCode[]
  fromFault?: CopyFault
  /** The copy fault a client's error carries for it. */
  fault?: CopyFault
}

export const STATUS_TABLE: readonly StatusRow[] = [
  { status: 400, codes: ['EINVAL'], errno: 'EINVAL', retry: false, fromDevice: ['EINVAL'] },
  { status: 401, codes: ['EACCES'], errno: 'EACCES', retry: false },
  { status: 403, codes: ['EACCES'], errno: 'EACCES', retry: false },
  { status: 404, codes: ['ENOENT', 'ENODEV'], errno: 'ENODEV', retry: false, fromDevice: ['ENOENT'] },
  { status: 405, codes: ['EOPNOTSUPP'], errno: 'EINVAL', retry: false },
  { status: 408, codes: ['ETIMEDOUT'], errno: 'EIO', retry: true },
  { status: 411, codes: ['EINVAL'], errno: 'EINVAL', retry: false },
  { status: 413, codes: ['EFBIG'], errno: 'EFBIG', retry: false },
  { status: 414, codes: ['ENAMETOOLONG'], errno: 'EINVAL', retry: false },
  { status: 416, codes: ['EINVAL', 'ERANGE'], errno: 'EINVAL', retry: false },
  { status: 417, codes: ['EINVAL'], errno: 'EINVAL', retry: false },
  { status: 422, codes: ['EBADMSG'], errno: 'EIO', retry: false },
  { status: 426, codes: ['EINVAL'], errno: 'EINVAL', retry: false },
  { status: 429, codes: ['EAGAIN'], errno: 'EIO', retry: true },
  { status: 431, codes: ['EMSGSIZE'], errno: 'EINVAL', retry: false },
  // The row for every device error no other row names.
  { status: 500, codes: ['EIO', 'EACCES', 'EPERM', 'EROFS'], errno: 'EIO', retry: true, final: ['EIO'], fromDevice: ['EIO', 'EACCES', 'EPERM', 'EROFS'] },
  { status: 501, codes: ['ENOSYS'], errno: 'EIO', retry: true, final: ['EIO'] },
  { status: 503, codes: ['EAGAIN'], errno: 'EIO', retry: true, final: ['EIO'], fromFault: 'transient', fault: 'transient' },
  { status: 507, codes: ['ENOSPC'], errno: 'ENOSPC', retry: false, fromDevice: ['ENOSPC', 'EDQUOT'] }
]

const byStatus = new Map(STATUS_TABLE.map(r => [r.status, r]))
const DEVICE_DEFAULT = byStatus.get(500) as StatusRow

/** The row of a status: its own, else its class's (a 418 reads as 400, a 502 as 500); undefined for anything below 400. */
export function statusRow (status: number): StatusRow | undefined {
  if (status < 400 || status > 599) return undefined
  return byStatus.get(status) ?? byStatus.get(status - (status % 100))
}

/** What a client makes of an error answer: the errno to raise, whether to ask again, and the copy fault if any. */
export function statusMeaning (status: number, code: string | undefined): { errno: ErrnoCode, retry: boolean, fault?: CopyFault } | undefined {
  const row = statusRow(status)
  if (row === undefined) return undefined
  const final = code !== undefined && (row.final?.includes(code as ErrnoCode) ?? false)
  return { errno: row.errno, retry: row.retry && !final, fault: row.fault }
}

/** The status and code a server answers a device's error with (500 EIO for anything the table does not name). */
export function deviceErrorAnswer (code: ErrnoCode, fault?: CopyFault): { status: number, code: ErrnoCode } {
  const row = (fault !== undefined ? STATUS_TABLE.find(r => r.fromFault === fault) : undefined) ??
    STATUS_TABLE.find(r => r.fromDevice?.includes(code)) ?? DEVICE_DEFAULT
  return { status: row.status, code: row.codes.includes(code) ? code : row.codes[0] }
}
