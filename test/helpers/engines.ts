import { Test } from 'tap'
import { KvStore } from '../../src/directory/kv'
import { kvEngines } from './kv-engines'

/**
 * The KvStore engines the directory's tests run on: every suite written
 * against KvEngine runs once per engine here, with the same assertions.
 * The engines are those of kv-engines.ts (LevelDB in a temp dir, PostgreSQL
 * in a database of its own), seen through the one shape these suites use.
 */

/** Where one store keeps its data, for one test. */
export interface StorePlace {
  /** The store: empty at the first open, with everything committed before a close at the next. One open at a time. */
  open (): Promise<KvStore>
}

export interface KvEngine {
  name: string
  /** Why the engine cannot run here (for tap's skip); undefined when it can. */
  skip?: string
  /** A new, empty place for a store, removed when `t` ends. */
  place (t: Test): StorePlace
}

export const engines: KvEngine[] = kvEngines.map(e => ({
  name: e.name,
  skip: e.skip,
  place (t: Test): StorePlace {
    const place = e.place(t)
    return { open: async () => await (await place).open({ create: true }) }
  }
}))
