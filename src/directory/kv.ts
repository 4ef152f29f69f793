/**
 * The small ordered key-value interface the directory's logic is written
 * against (DESIGN.md: "the directory's logic sits on a small key-value
 * interface"). LevelDB is the first engine; a distributed store can slot in
 * under the same shape.
 */
export interface KvReader {
  get (key: Buffer): Promise<Buffer | undefined>
  /** Entries whose key starts with `prefix`, in key order; `after` skips keys up to and including it. */
  scan (prefix: Buffer, opts?: { after?: Buffer, limit?: number }): AsyncIterable<[Buffer, Buffer]>
}

/** Reads and writes that commit together; reads see the transaction's own writes. */
export interface KvTxn extends KvReader {
  put (key: Buffer, value: Buffer): void
  del (key: Buffer): void
  /** Run `fn` right after the batch commits, before the next transaction starts (cache updates go here). */
  onCommit (fn: () => void): void
}

/** A consistent read-only view of the store as it was when taken. */
export interface KvSnapshot extends KvReader {
  close (): Promise<void>
}

export interface KvStore extends KvReader {
  /** A view that later transactions do not change (fsck reads a mounted filesystem through one). */
  snapshot (): KvSnapshot
  /**
   * Run `fn` and commit everything it wrote as one atomic batch. Transactions
   * are serialized; `sync` asks the engine to make the batch durable against
   * power loss before resolving (a crash of the process never loses a committed batch).
   */
  txn<T> (fn: (tx: KvTxn) => Promise<T> | T, opts?: { sync?: boolean }): Promise<T>
  close (): Promise<void>
}

/** Smallest key greater than every key starting with `prefix` (undefined when there is none). */
export function prefixEnd (prefix: Buffer): Buffer | undefined {
  const end = Buffer.from(prefix)
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i] < 0xff) {
      end[i]++
      return end.subarray(0, i + 1)
    }
  }
  return undefined
}
