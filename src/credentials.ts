/**
 * Reading the files that hold secrets (bearer tokens, TLS private keys) and
 * the public ones beside them (certificates, CAs), for the block server and
 * its clients alike. A secret file open to group or others is refused: a
 * token or key others can read is no longer a secret. Only paths are ever
 * stored or printed; the bytes stay in memory.
 */
import * as fsp from 'node:fs/promises'
import { UsageError } from './errors'

/** What the file is for, in messages: "token file", "TLS key file". */
export type FileRole = string

async function readRegular (file: string, role: FileRole): Promise<{ data: Buffer, mode: number }> {
  let h
  try {
    h = await fsp.open(file, 'r')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new UsageError(`${role} ${file} does not exist`)
    throw new UsageError(`cannot read ${role} ${file}: ${(err as Error).message}`)
  }
  try {
    // The mode of what was opened, not of what the name points to a moment later.
    const st = await h.stat()
    if (!st.isFile()) throw new UsageError(`${role} ${file} is not a regular file`)
    return { data: await h.readFile(), mode: st.mode }
  } catch (err) {
    if (err instanceof UsageError) throw err
    throw new UsageError(`cannot read ${role} ${file}: ${(err as Error).message}`)
  } finally {
    await h.close()
  }
}

/** A secret's bytes; refused when the file is missing, not a regular file, or open to group or others. */
export async function readSecretFile (file: string, role: FileRole): Promise<Buffer> {
  const { data, mode } = await readRegular(file, role)
  if ((mode & 0o077) !== 0) {
    throw new UsageError(`${role} ${file} is accessible by group or others (mode ${(mode & 0o777).toString(8).padStart(4, '0')}); make it private with: chmod 600 ${file}`)
  }
  return data
}

/** A public file's bytes (a certificate, a CA bundle). */
export async function readPublicFile (file: string, role: FileRole): Promise<Buffer> {
  return (await readRegular(file, role)).data
}
