/** Progress of a long run: units done of total (total may grow), and bytes moved or read. */
export interface Progress {
  done: number
  total: number
  bytes: number
  /** Blocks handled so far, when `done` counts bytes (remap, fsck). */
  blocks?: number
}
export type OnProgress = (p: Progress) => void
