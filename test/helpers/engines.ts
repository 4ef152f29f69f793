import { Test } from 'tap'
import { join } from 'node:path'
import { KvStore } from '../../src/directory/kv'
import { LevelKv } from '../../src/directory/leveldb'

/**
 * The KvStore engines the directory's tests run on: every suite written
 * against KvEngine runs once per engine here, with the same assertions.
 */

/** Where one store keeps its data, for one test. */
export interface StorePlace {
  /** The store: empty at the first open, with everything committed before a close at the next. One open at a time. */
  open (): Promise<KvStore>
}

export interface KvEngine {
  name: string
  /** A new, empty place for a store, removed when `t` ends. */
  place (t: Test): StorePlace
}

let levelDbs = 0

export const levelDb: KvEngine = {
  name: 'LevelDB',
  place (t: Test): StorePlace {
    // t.testdir() is removed when the test ends.
    const path = join(t.testdir(), `db-${++levelDbs}`)
    return { open: () => LevelKv.open(path, { createIfMissing: true }) }
  }
}

export const engines: KvEngine[] = [levelDb]
