import { Test } from 'tap'
import { KvStore } from '../../src/directory/kv'
import { kvEngines } from './kv-engines'
import { RerunKv } from './rerun-kv'

/**
 * The KvStore engines the directory's tests run on: every suite written
 * against KvEngine runs once per engine here, with the same assertions.
 * The engines are those of kv-engines.ts (LevelDB in a temp dir, PostgreSQL
 * in a database of its own), seen through the one shape these suites use,
 * and LevelDB behind RerunKv (rerun-kv.ts): every transaction's body run
 * twice as after a serialization failure, once with the caches trusted (one
 * writer) and once as a store other hosts write too.
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
  /** Bodies run more than once (the KvStore contract's own tests count runs, so they do not apply). */
  rerunsBodies?: boolean
  /** A new, empty place for a store, removed when `t` ends. */
  place (t: Test): StorePlace
}

const plain: KvEngine[] = kvEngines.map(e => ({
  name: e.name,
  skip: e.skip,
  place (t: Test): StorePlace {
    const place = e.place(t)
    return { open: async () => await (await place).open({ create: true }) }
  }
}))

const level = kvEngines.find(e => e.name === 'LevelKv')

function rerunning (name: string, shared: boolean): KvEngine {
  return {
    name,
    skip: level === undefined ? 'no LevelKv engine' : undefined,
    rerunsBodies: true,
    place (t: Test): StorePlace {
      const place = level!.place(t)
      return { open: async () => new RerunKv(await (await place).open({ create: true }), { shared }) }
    }
  }
}

export const engines: KvEngine[] = [
  ...plain,
  rerunning('LevelKv, every txn rerun once', false),
  rerunning('LevelKv shared (caches not trusted in a txn), every txn rerun once', true)
]
