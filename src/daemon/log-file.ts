import { copyFileSync, fstatSync, ftruncateSync, statSync } from 'node:fs'

/** daemon.log's bound unless BSLFS_LOG_MAX_BYTES says otherwise. */
export const DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024

export function logMaxBytes (env = process.env): number {
  const n = Number(env.BSLFS_LOG_MAX_BYTES)
  return Number.isSafeInteger(n) && n >= 1024 ? n : DEFAULT_LOG_MAX_BYTES
}

/**
 * Keep a background daemon's log file (its stdout and stderr, opened O_APPEND by `bslfs mount`)
 * under `maxBytes`: once larger, it is copied to FILE.1 (the one before is dropped) and cut to
 * nothing. Appends then start again at 0, so the daemon needs no new descriptor (logrotate's
 * copytruncate). Nothing happens when stderr is not that file (a foreground or systemd mount,
 * whose stderr is a terminal or the journal). Checked every 100 ms (an fstat): with DEBUG on a
 * busy mount writes several hundred KB a second, and FILE.1 holds what came since the last check.
 * Returns the stop function.
 */
export function boundLogFile (file: string, maxBytes: number, everyMs = 100): () => void {
  let ino: number
  try {
    const err = fstatSync(2)
    const st = statSync(file)
    if (!err.isFile() || err.ino !== st.ino || err.dev !== st.dev) return () => {}
    ino = st.ino
  } catch {
    return () => {}
  }
  const check = (): void => {
    try {
      const st = fstatSync(2)
      if (st.ino !== ino || st.size <= maxBytes) return
      copyFileSync(file, `${file}.1`)
      ftruncateSync(2, 0)
    } catch {
      // A log that cannot be cut is no reason to stop serving the mount.
    }
  }
  check()
  const timer = setInterval(check, everyMs)
  timer.unref()
  return () => clearInterval(timer)
}
