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
 * Write `data` to the new file `tmp`, flush it, and rename it to `final`:
 * `final` then holds all of it, or (on any failure) stays as it was and the
 * temp file is gone. The caller syncs the directory when the name must last.
 */
export async function writeWhole (tmp: string, final: string, data: string | Uint8Array): Promise<void> {
  try {
    const h = await fsp.open(tmp, 'wx', 0o644)
    try {
      await h.writeFile(data)
      await h.sync()
    } finally {
      await h.close()
    }
    await fsp.rename(tmp, final)
  } catch (err) {
    await fsp.unlink(tmp).catch(() => {})
    throw err
  }
}
