// `bslfs fsck` of an unmounted test filesystem, read as its JSON report (the mount tests' one way to ask it).
import type tap from 'tap'
import { type Mount, bslfs, describeRun, target } from './mount'

export interface FsckReport {
  inodes: number, blocks: number, bytes: number, objectsListed: number, problems: Record<string, number>, first: string[],
  repaired: Record<string, number>, openOrphans: number, reclaimQueue: number, healQueue: number, clean: boolean, seconds: number
}

/** fsck's report (with the run, for diagnostics); throws when there is none, or its exit code and `clean` disagree. */
export async function fsck (m: Mount, ...args: string[]): Promise<FsckReport & { run: string }> {
  const r = await bslfs(['fsck', m.state, '--json', ...args], { timeout: 120_000 })
  try {
    const rep = JSON.parse(r.stdout) as FsckReport
    if ((r.code === 0) !== rep.clean) throw new Error(`exit ${r.code} but clean is ${rep.clean}`)
    return { ...rep, run: describeRun(r) }
  } catch (err) {
    throw new Error(`fsck ${args.join(' ')}: ${(err as Error).message}\n${describeRun(r)}`)
  }
}

/** Unmount, fsck (clean, nothing left open), mount again (bslfs only). */
export async function fsckClean (t: tap.Test, m: Mount, what: string): Promise<FsckReport | undefined> {
  if (target !== 'bslfs') return undefined
  await m.unmount()
  const rep = await fsck(m)
  t.ok(rep.clean, `${what}: fsck is clean`, { problems: rep.problems, first: rep.first })
  t.equal(rep.openOrphans, 0, `${what}: nothing is left open and unlinked`)
  await m.mount()
  return rep
}
