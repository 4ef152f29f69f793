/**
 * Run `fn` over `items` with at most `n` at once (heal, scrub, remap, fsck).
 * `before` runs ahead of each item and may throw to stop the run (an
 * interrupted remap).
 */
export async function eachParallel<T> (items: T[], n: number, fn: (item: T) => Promise<void>, before?: () => void): Promise<void> {
  let at = 0
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, async () => {
    while (at < items.length) {
      before?.()
      await fn(items[at++])
    }
  }))
}
