// Helpers of the data-range mount tests (mount-fallocate, mount-punch): the block map through
// `bslfs bsl`, objects on the devices, fsck, xfs_io's seek table.
import { createHash } from 'node:crypto'
import { type Mount, type RunResult, bslfs, describeRun, run, waitFor } from './mount'

export const MiB = 1024 * 1024
/** `bslfs init`'s block size, which the mounts here use. */
export const BS = MiB
export const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')

export interface Block { index: number, bsl: string, length: number, checksum: string, places?: string[] }
export { fsck } from './fsck'

export function must (r: RunResult, what: string): RunResult {
  if (r.code !== 0) throw new Error(`${what} failed:\n${describeRun(r)}`)
  return r
}

export async function blocksOf (m: Mount, path: string): Promise<Block[]> {
  const r = must(await bslfs(['bsl', m.state, path, '--json'], { timeout: 30_000 }), `bslfs bsl ${path}`)
  return (JSON.parse(r.stdout) as Block[]).sort((a, b) => a.index - b.index)
}

export const objectId = (b: Block) => b.bsl.slice(-16)

/** Where the objects of the mount's data volume are: the block server's device, or the STATE's local device. */
export function deviceRoots (m: Mount): string[] {
  return m.server ? [m.server.device] : [m.state]
}

/** Object files named `id` under `roots`. */
export async function objectFiles (roots: string[], id: string): Promise<string[]> {
  const r = await run('find', [...roots, '-type', 'f', '-name', id])
  return r.stdout.split('\n').filter(Boolean)
}

/** xfs_io's `seek -a -r 0` table as [whence, offset] pairs. */
export async function seekTable (file: string): Promise<Array<[string, number]>> {
  const r = must(await run('xfs_io', ['-c', 'seek -a -r 0', file]), 'xfs_io seek')
  return r.stdout.split('\n').map(l => /^(DATA|HOLE)\s+(\d+)/.exec(l.trim())).filter(Boolean).map(x => [x![1], Number(x![2])] as [string, number])
}

export async function statBlocks (file: string): Promise<{ size: number, blocks: number }> {
  const r = must(await run('stat', ['-c', '%s %b', file]), 'stat')
  const [size, blocks] = r.stdout.trim().split(' ').map(Number)
  return { size: size!, blocks: blocks! }
}

/** Objects of `ids` gone from every root (the reclaimer runs within seconds of a quiet mount). */
export async function reclaimed (roots: string[], ids: string[]): Promise<string[]> {
  let left: string[] = []
  await waitFor(async () => {
    left = []
    for (const id of ids) if ((await objectFiles(roots, id)).length > 0) left.push(id)
    return left.length === 0
  }, 15_000, 200)
  return left
}

