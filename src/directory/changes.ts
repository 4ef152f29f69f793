import { NOTE_MAX } from './kv'

/** What a committed transaction changed, as other mounts hear it: inodes, entries by (parent, name), and whether the tables changed. */
export interface Change {
  inodes: number[]
  entries: Array<{ parent: number, name: string }>
  /** The volume, mirror, server or device tables or the default volume changed: re-read them. */
  tables?: boolean
  /** Inodes whose advisory locks were released or loosened (locks.ts): their waiters try again. */
  locks?: number[]
}

/** Who hears what other mounts changed (the mount turns it into kernel invalidations). */
export interface RemoteChanges {
  /** Another mount committed `change`; the directory's caches have dropped it already. */
  changed (change: Change): void
  /** Changes may have been missed (the feed's connection dropped or came back): every cache was flushed. */
  missed (): void
}

/** A change as feed messages of at most NOTE_MAX bytes each: {"i":[ino…],"e":[[parent,name]…]}, with "t":1 when the tables changed, "l":[ino…] for released locks. */
export function encodeChange (change: Change): string[] {
  const out: string[] = []
  let inodes: number[] = []
  let entries: Array<[number, string]> = []
  let size = 20
  const flush = (): void => {
    if (inodes.length > 0 || entries.length > 0) out.push(JSON.stringify({ i: inodes, e: entries }))
    inodes = []
    entries = []
    size = 20
  }
  for (const ino of change.inodes) {
    if (size + 21 > NOTE_MAX) flush()
    inodes.push(ino)
    size += 21
  }
  for (const { parent, name } of change.entries) {
    const n = 25 + JSON.stringify(name).length * 3 // bytes, at the worst
    if (size + n > NOTE_MAX) flush()
    entries.push([parent, name])
    size += n
  }
  flush()
  for (let i = 0; i < (change.locks?.length ?? 0); i += 300) out.push(JSON.stringify({ i: [], e: [], l: change.locks!.slice(i, i + 300) }))
  if (change.tables === true) out.push(JSON.stringify({ i: [], e: [], t: 1 }))
  return out
}

/** The feed message of a change to the tables. */
export const TABLES_CHANGED = encodeChange({ inodes: [], entries: [], tables: true })[0]!

/** A feed message back into a change; undefined when it is not one (another version's, or damaged). */
export function decodeChange (message: string): Change | undefined {
  try {
    const v = JSON.parse(message)
    if (!Array.isArray(v?.i) || !Array.isArray(v?.e)) return undefined
    const inodes = v.i.filter((n: unknown) => Number.isSafeInteger(n)) as number[]
    const entries = (v.e as unknown[])
      .filter((e): e is [number, string] => Array.isArray(e) && Number.isSafeInteger(e[0]) && typeof e[1] === 'string')
      .map(([parent, name]) => ({ parent, name }))
    const change: Change = v.t === 1 ? { inodes, entries, tables: true } : { inodes, entries }
    if (Array.isArray(v.l)) change.locks = v.l.filter((n: unknown) => Number.isSafeInteger(n))
    return change
  } catch {
    return undefined
  }
}
