import { readFileSync } from 'node:fs'
import { join } from 'node:path'

/** This bslfs's version: package.json's, which ships beside dist/ in a checkout and in the package. */
export function packageVersion (): string {
  return (JSON.parse(readFileSync(join(__dirname, '..', 'package.json'), 'utf8')) as { version: string }).version
}

/** The package's root directory (where package.json, bin/, dist/ and systemd/ are). */
export const packageRoot = join(__dirname, '..')
