import { packageVersion } from './version'

/** The on-disk formats this bslfs writes and reads: STATE/bslfs.json's, and the directory's config record. */
export const STATE_FORMAT_VERSION = 1
export const DIRECTORY_FORMAT_VERSION = 1

/**
 * Why `found` (a format version read from disk) cannot be used by this bslfs: a newer format
 * than it knows, named with both versions. null when it is one this bslfs reads.
 */
export function formatTooNew (what: string, found: unknown, known: number): string | null {
  if (typeof found !== 'number' || !Number.isInteger(found) || found <= known) return null
  return `${what} is in format version ${found}, and this bslfs (${packageVersion()}) reads format version ${known}: ` +
    'it was made by a newer bslfs; upgrade bslfs (npm install -g) to use it, nothing was changed'
}
