import { join } from 'node:path'

/** The command that builds every native addon (npm's postinstall runs it). */
export const BUILD_NATIVE = '`node scripts/build-native.js` (npm run postinstall)'

/** bslfs's own addon NAME (native/*.c, binding.gyp), where scripts/build-native.js puts it. */
export function releaseAddon (name: string): string {
  return join(__dirname, '..', 'build', 'Release', `${name}.node`)
}

export interface AddonSpec {
  /** What the addon is, for messages: "the FUSE channel". */
  what: string
  /** What `require` loads: releaseAddon(NAME), or a package's binding that build-native.js rebuilds. */
  file: string
  /** The interface version the caller speaks: the addon's `version` must be this. */
  version?: number
  /** Functions the addon must export (a package binding has no version of ours). */
  functions?: string[]
  /** A message of its own for a load failure with a known cause (a shared library missing), else undefined. */
  explain?: (reason: string) => string | undefined
}

/**
 * A loader of one native addon: the first call loads and checks it, later
 * calls return it. An addon that cannot load, or is not the one this code
 * speaks (a build left from another version), is an Error naming it and the
 * command that builds it; the next call tries again.
 */
export function addonLoader<T> (spec: AddonSpec): () => T {
  let loaded: T | undefined
  return () => {
    if (loaded) return loaded
    let addon: Record<string, unknown>
    try {
      // eslint-disable-next-line @typescript-eslint/no-var-requires
      addon = require(spec.file) as Record<string, unknown>
    } catch (err) {
      const reason = (err as Error).message.split('\n')[0]
      throw new Error(spec.explain?.(reason) ?? `${spec.what} (${spec.file}) cannot be loaded: ${reason}; build it with ${BUILD_NATIVE}`)
    }
    if (spec.version !== undefined && addon.version !== spec.version) {
      throw new Error(`${spec.what} (${spec.file}) is version ${String(addon.version)}, this bslfs needs ${spec.version}: rebuild it with ${BUILD_NATIVE}`)
    }
    const lacking = (spec.functions ?? []).filter(f => typeof addon[f] !== 'function')
    if (lacking.length > 0) throw new Error(`${spec.what} (${spec.file}) lacks ${lacking.join(', ')}: rebuild it with ${BUILD_NATIVE}`)
    loaded = addon as T
    return loaded
  }
}
