import { readFileSync } from 'node:fs'

/**
 * libfuse2's high-level API keeps an open file reachable after its last name
 * goes, by renaming it to ".fuse_hiddenXXXXXXXXYYYYYYYY" and unlinking that
 * name at the last close. It does so in two cases: unlink(2) of an open file,
 * and rename(2) over an open target (the target is hidden, then the real
 * rename follows). ext4 shows no such name, lets the parent be removed, and
 * replaces a rename target atomically, so bslfs keeps hidden names in memory
 * only and, for a rename, leaves the target in place for the real rename to
 * replace in one batch. (libfuse's hard_remove would avoid the hiding, but
 * then fstat(2) of the open file fails with ENOENT: libfuse cannot name it.)
 */
export const HIDDEN_NAME = /\/\.fuse_hidden[0-9a-f]{16}$/

/** rename, renameat, renameat2 by architecture; libfuse hides on behalf of the caller's system call. */
const RENAME_SYSCALLS: Record<string, number[]> = {
  x64: [82, 264, 316],
  arm64: [38, 276]
}

/**
 * Whether process `pid` is inside a rename system call right now (it is
 * blocked in it while we answer its request). False when unknown, which
 * falls back to libfuse's plain semantics.
 */
export function callerIsRenaming (pid: number): boolean {
  const numbers = RENAME_SYSCALLS[process.arch]
  if (!numbers || !(pid > 0)) return false
  try {
    const nr = Number(readFileSync(`/proc/${pid}/syscall`, 'utf8').split(' ')[0])
    return numbers.includes(nr)
  } catch {
    return false
  }
}

/**
 * The hidden names of unlinked open files, by path. An entry holds its inode
 * alive: the kernel may still open the file through the old name's node for
 * a moment after libfuse lets go of it (an open that raced a rename), so an
 * entry is forgotten only some time after libfuse unlinked the hidden name.
 */
export class HiddenNames {
  private readonly names = new Map<string, { ino: number, releasedAt: number | null }>()

  add (path: string, ino: number): void {
    this.names.set(path, { ino, releasedAt: null })
  }

  get (path: string): number | undefined {
    return this.names.get(path)?.ino
  }

  has (path: string): boolean {
    return this.names.has(path)
  }

  holds (ino: number): boolean {
    for (const e of this.names.values()) if (e.ino === ino) return true
    return false
  }

  /** libfuse unlinked the hidden name (its last close); false when `path` is not hidden. */
  release (path: string, now = Date.now()): boolean {
    const e = this.names.get(path)
    if (!e) return false
    e.releasedAt ??= now
    return true
  }

  /** Entries released at least `graceMs` ago. */
  due (graceMs: number, now = Date.now()): Array<{ path: string, ino: number, releasedAt: number }> {
    const out = []
    for (const [path, e] of this.names) {
      if (e.releasedAt !== null && now - e.releasedAt >= graceMs) out.push({ path, ino: e.ino, releasedAt: e.releasedAt })
    }
    return out
  }

  forget (path: string): void {
    this.names.delete(path)
  }
}
