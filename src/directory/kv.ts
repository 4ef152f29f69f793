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
  /**
   * Tell the other processes listening to the store's change feed `message`
   * if and only if this transaction commits (engines with a `changes` feed;
   * at most NOTE_MAX bytes).
   */
  notify? (message: string): void
  /**
   * Read `keys` ahead in one go, where a read is a round trip (PgKv): later
   * gets of them in this transaction answer from what was read.
   */
  prefetch? (keys: Buffer[]): Promise<void>
}

/** The longest message `notify` carries (PostgreSQL's NOTIFY payload is under 8000 bytes). */
export const NOTE_MAX = 7000

/** What a listener of the change feed is told. */
export interface ChangeHandler {
  /** Another process committed a transaction that notified `message` (this process's own are not repeated). */
  message (message: string): void
  /** Messages may have been lost (the feed's connection dropped, or came back): assume anything changed. */
  missed (): void
}

/** Messages other processes' transactions sent with `notify`, delivered after their commit. */
export interface ChangeFeed {
  /** Start listening; resolves once listening (a message committed after that is delivered). */
  listen (handler: ChangeHandler): Promise<{ close (): Promise<void> }>
}

/** A consistent read-only view of the store as it was when taken. */
export interface KvSnapshot extends KvReader {
  close (): Promise<void>
}

export interface KvStore extends KvReader {
  /**
   * True when this process is the store's only writer (LevelDB's lock keeps
   * others out): what the directory cached from committed transactions is then
   * exact, and a transaction may read it instead of the store. Absent or false
   * (PostgreSQL: other hosts write too), every read inside a transaction goes
   * through it, so a stale cache cannot decide a change and the database sees
   * the read (SERIALIZABLE detects the conflict).
   */
  readonly singleWriter?: boolean
  /** Other processes' committed changes, on engines shared between them (PgKv); LevelKv has none. */
  readonly changes?: ChangeFeed
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
