import { constants as fsConstants } from 'node:fs'
import * as fsp from 'node:fs/promises'

/** fsync a directory so a rename or create inside it survives a crash. */
export async function syncDir (path: string): Promise<void> {
  const h = await fsp.open(path, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY)
  try {
    await h.sync()
  } finally {
    await h.close()
  }
}

/**
 * Create `path` with `data` and flush it; false (and nothing touched) when
 * the name exists already. A failure removes what was made. Unlike
 * writeWhole, a crash can leave a partial file under the name: only for
 * names nothing refers to until this resolves (new block objects).
 */
export async function writeNew (path: string, data: Uint8Array): Promise<boolean> {
  let h: fsp.FileHandle
  try {
    h = await fsp.open(path, 'wx', 0o644)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false
    throw err
  }
  try {
    for (let at = 0; at < data.byteLength;) at += (await h.write(data, at, data.byteLength - at, at)).bytesWritten
    await h.sync()
  } catch (err) {
    await h.close().catch(() => {})
    await fsp.unlink(path).catch(() => {})
    throw err
  }
  try {
    await h.close()
  } catch (err) {
    await fsp.unlink(path).catch(() => {})
    throw err
  }
  return true
}

/**
 * Write `data` to the new file `tmp`, flush it, and rename it to `final`:
 * `final` then holds all of it, or (on any failure) stays as it was and the
 * temp file is gone. The caller syncs the directory when the name must last.
 */
export async function writeWhole (tmp: string, final: string, data: string | Uint8Array): Promise<void> {
  if (!await writeNew(tmp, typeof data === 'string' ? Buffer.from(data) : data)) {
    throw Object.assign(new Error(`EEXIST: temp file ${tmp} exists already`), { code: 'EEXIST' })
  }
  try {
    await fsp.rename(tmp, final)
  } catch (err) {
    await fsp.unlink(tmp).catch(() => {})
    throw err
  }
}
