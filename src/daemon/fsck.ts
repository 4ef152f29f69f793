import createDebug from 'debug'
import { formatBSL, objectIdOf } from '../bsl'
import { Directory, NamespaceReader } from '../directory/directory'
import { Inode, ROOT_INO } from '../directory/records'
import { FsError } from '../errors'
import { S_IFMT, isDir, isRegular } from '../posix/modes'
import { Place, placeText } from '../volumes/tables'
import { BlockRecord } from '../volumes/block'
import { CopyToHeal, Volumes } from '../volumes/volumes'
import { eachParallel } from './parallel'
import { OnProgress } from './progress'

const log = createDebug('bslfs:fsck')

const LOST_FOUND = 'lost+found'
/** Problems listed one by one in the report; the counts cover all of them. */
const MAX_LISTED = 20
const PARALLEL = 8

export interface FsckOptions {
  /** Fix what can be fixed (offline only). */
  repair: boolean
  /** Read every copy and check its checksum (else only that each object exists with the right size). */
  checksums: boolean
  onProgress?: OnProgress
}

export interface FsckReport {
  inodes: number
  directories: number
  entries: number
  blocks: number
  bytes: number
  copiesChecked: number
  objectsListed: number
  /** Counts of each kind of problem found. */
  problems: Record<string, number>
  /** The first problems, in words. */
  first: string[]
  /** What --repair did, by kind. */
  repaired: Record<string, number>
  /** Unlinked-but-open inodes a crash left (the next mount frees them; so does --repair). */
  openOrphans: number
  /** Blocks in the reclaim queue (deleted in the background). */
  reclaimQueue: number
  /** Copies in the heal queue. */
  healQueue: number
  clean: boolean
  seconds: number
}

/**
 * Check the directory and the devices against each other:
 *
 * - every entry names an inode that exists, of the type the entry says;
 * - link counts match the entries (directories: 2 + subdirectories);
 * - every directory is reached from the root once, through its parent
 *   (no cycles, no second names), and every inode is reached;
 * - every block record belongs to a regular file and resolves to known places;
 * - every block has a good copy (missing or bad copies of a mirror are
 *   queued for heal); objects on the devices that nothing references are
 *   orphans (a crash between a block's write and its commit).
 *
 * `repair` (offline) fixes counts, removes dangling entries and orphans,
 * frees the blocks of inodes that are gone, and moves inodes nothing names
 * into /lost+found rather than deleting them.
 */
export async function fsck (dir: Directory, volumes: Volumes, opts: FsckOptions): Promise<FsckReport> {
  const started = Date.now()
  const report: FsckReport = {
    inodes: 0, directories: 0, entries: 0, blocks: 0, bytes: 0, copiesChecked: 0, objectsListed: 0,
    problems: {}, first: [], repaired: {}, openOrphans: 0, reclaimQueue: 0, healQueue: 0, clean: true, seconds: 0
  }

  // ---- what the devices hold, listed first: on a mounted filesystem a block written after the
  // listing is not an orphan, and one written before it is committed by the time the maps are read.
  const listed = new Map<string, string[] | Error>()
  const listPlace = async (key: string, place: Place): Promise<void> => {
    if (listed.has(key)) return
    try {
      const ids: string[] = []
      for await (const id of (await volumes.deviceAt(place)).list()) ids.push(id)
      listed.set(key, ids)
      report.objectsListed += ids.length
    } catch (err) {
      listed.set(key, err as Error)
    }
  }
  const tables = await dir.tables()
  for (const row of tables.volumes.values()) await listPlace(placeText(row.place), row.place)
  if (tables.defaultPlace) await listPlace(placeText(tables.defaultPlace), tables.defaultPlace)

  // ---- the namespace, read from one snapshot so a mounted filesystem's changes meanwhile do not look like damage ----
  await volumes.drain() // blocks being written as the devices were listed get committed first
  const snap = dir.snapshot()
  try {
    return await check(dir, snap.read, volumes, opts, report, listed, listPlace, started)
  } finally {
    await snap.close()
  }
}

async function check (dir: Directory, read: NamespaceReader, volumes: Volumes, opts: FsckOptions, report: FsckReport,
  listed: Map<string, string[] | Error>, listPlace: (key: string, place: Place) => Promise<void>, started: number): Promise<FsckReport> {
  const problem = (kind: string, text: string): void => {
    report.problems[kind] = (report.problems[kind] ?? 0) + 1
    if (report.first.length < MAX_LISTED) report.first.push(text)
  }
  const repaired = (kind: string, n = 1): void => { report.repaired[kind] = (report.repaired[kind] ?? 0) + n }
  const progress = opts.onProgress ?? (() => {})
  const inodes = new Map<number, Inode>()
  for await (const inode of read.allInodes()) inodes.set(inode.ino, inode)
  report.inodes = inodes.size
  const orphans = new Set(await read.orphanInodes())
  report.openOrphans = orphans.size
  const names = new Map<number, number>() // entries naming each inode
  const subdirs = new Map<number, number>()
  const holders = new Map<number, Array<{ parent: number, name: string }>>() // for directories
  const children = new Map<number, number[]>()
  const firstName = new Map<number, { parent: number, name: string }>()
  /** A path for messages: "/a/b" (or "inode N" when it has no name). */
  const pathOf = (ino: number): string => {
    const parts: string[] = []
    for (let at = ino, hops = 0; at !== ROOT_INO; hops++) {
      const n = firstName.get(at)
      if (!n || hops > 4096) return `inode ${ino}`
      parts.unshift(n.name)
      at = n.parent
    }
    return `/${parts.join('/')}`
  }
  for await (const e of read.allEntries()) {
    report.entries++
    const child = inodes.get(e.ino)
    const parent = inodes.get(e.parent)
    if (!parent || !isDir(parent.mode)) {
      problem('entry in a missing directory', `entry "${e.name}" → ${e.ino} sits in inode ${e.parent}, which is not a directory`)
      if (opts.repair) { await dir.fsckFixes.dropEntry(e.parent, e.name); repaired('entry in a missing directory') }
      continue
    }
    if (!child) {
      problem('dangling entry', `entry "${e.name}" in directory ${e.parent} names inode ${e.ino}, which does not exist`)
      if (opts.repair) { await dir.fsckFixes.dropEntry(e.parent, e.name); repaired('dangling entry') }
      continue
    }
    if ((child.mode & S_IFMT) !== (e.mode & S_IFMT)) problem('entry type', `entry "${e.name}" in ${e.parent} says type ${(e.mode & S_IFMT).toString(8)}, inode ${e.ino} is ${(child.mode & S_IFMT).toString(8)}`)
    names.set(e.ino, (names.get(e.ino) ?? 0) + 1)
    if (!firstName.has(e.ino)) firstName.set(e.ino, { parent: e.parent, name: e.name })
    if (isDir(child.mode)) {
      subdirs.set(e.parent, (subdirs.get(e.parent) ?? 0) + 1)
      holders.set(e.ino, [...(holders.get(e.ino) ?? []), { parent: e.parent, name: e.name }])
    }
    children.set(e.parent, [...(children.get(e.parent) ?? []), e.ino])
  }

  // Reachability from the root; a directory must be entered once.
  const reached = new Set<number>([ROOT_INO])
  const queue = [ROOT_INO]
  while (queue.length) {
    const d = queue.pop()!
    for (const c of children.get(d) ?? []) {
      if (reached.has(c)) continue
      reached.add(c)
      if (isDir(inodes.get(c)!.mode)) queue.push(c)
    }
  }
  for (const [ino, held] of holders) {
    if (held.length > 1) problem('directory with several names', `directory ${ino} is named ${held.length} times (${held.map(h => `${h.parent}/${h.name}`).join(', ')})`)
  }

  let lostFound: number | undefined
  const lost: Inode[] = []
  for (const inode of inodes.values()) {
    if (isDir(inode.mode)) report.directories++
    if (!reached.has(inode.ino)) {
      if (orphans.has(inode.ino) && inode.nlink === 0) continue // unlinked while open: the next mount frees it
      if (names.get(inode.ino)) problem('cycle', `inode ${inode.ino} is named only from directories the root cannot reach (a cycle)`)
      else problem('unreachable inode', `inode ${inode.ino} (${isDir(inode.mode) ? 'directory' : 'file'}, ${inode.size} bytes) has no name`)
      lost.push(inode)
      continue
    }
    if (inode.ino === ROOT_INO) continue
    const want = isDir(inode.mode) ? 2 + (subdirs.get(inode.ino) ?? 0) : names.get(inode.ino) ?? 0
    if (inode.nlink !== want) {
      problem('link count', `${pathOf(inode.ino)} (inode ${inode.ino}) has nlink ${inode.nlink}, ${want} ${isDir(inode.mode) ? 'for its subdirectories' : 'names'} found`)
      if (opts.repair) { await dir.fsckFixes.fixInode(inode.ino, { nlink: want }); repaired('link count') }
    }
    const holder = holders.get(inode.ino)?.[0]
    if (isDir(inode.mode) && holder && inode.parent !== holder.parent) {
      problem('parent', `directory ${inode.ino} says its parent is ${String(inode.parent)}, it is in ${holder.parent}`)
      if (opts.repair) { await dir.fsckFixes.fixInode(inode.ino, { parent: holder.parent }); repaired('parent') }
    }
  }
  const root = inodes.get(ROOT_INO)!
  if (root.nlink !== 2 + (subdirs.get(ROOT_INO) ?? 0)) {
    problem('link count', `the root has nlink ${root.nlink}, ${2 + (subdirs.get(ROOT_INO) ?? 0)} expected`)
    if (opts.repair) { await dir.fsckFixes.fixInode(ROOT_INO, { nlink: 2 + (subdirs.get(ROOT_INO) ?? 0) }); repaired('link count') }
  }
  if (opts.repair && lost.length) {
    lostFound = await dir.lookup(ROOT_INO, LOST_FOUND)
    if (lostFound === undefined) {
      lostFound = (await dir.createNode(ROOT_INO, LOST_FOUND, { mode: 0o040700, uid: 0, gid: 0 })).ino
    }
    for (const inode of lost) {
      await dir.fsckFixes.relink(inode.ino, lostFound, `#${inode.ino}`)
      await dir.fsckFixes.fixInode(inode.ino, { nlink: isDir(inode.mode) ? 2 + (subdirs.get(inode.ino) ?? 0) : 1 })
      repaired('moved to lost+found')
    }
  }

  // ---- block maps and copies ----
  const referenced = new Set<string>()
  const places = new Map<string, Place>()
  const stored = new Map<number, number>()
  const heal = new Set<string>()
  for (const r of await read.healQueue(Number.MAX_SAFE_INTEGER)) heal.add(`${objectIdOf(r.block.bsl)}/${r.volume}`)
  report.healQueue = heal.size
  const toHeal: CopyToHeal[] = []
  let batch: Array<{ ino: number, index: number, block: BlockRecord }> = []
  const missingInodes = new Set<number>()
  const totalBytes = (await read.usage()).bytes
  const checkBatch = async (): Promise<void> => {
    const items = batch
    batch = []
    await eachParallel(items, PARALLEL, ({ ino, index, block }) => checkBlock(ino, index, block))
    progress({ done: report.bytes, total: Math.max(totalBytes, report.bytes), bytes: report.bytes, blocks: report.blocks })
  }
  const checkBlock = async (ino: number, index: number, block: BlockRecord): Promise<void> => {
    const what = `block ${index} of ${pathOf(ino)} (inode ${ino}, ${formatBSL(block.bsl)})`
    let copies: Array<{ volume: number, place: Place }>
    try {
      copies = volumes.copiesOf(block.bsl)
    } catch (err) {
      problem('unknown volume', `${what}: ${(err as FsError).message}`)
      return
    }
    let good = 0
    const bad: Array<{ volume: number, why: string }> = []
    for (const c of copies) {
      places.set(placeText(c.place), c.place)
      report.copiesChecked++
      const verdict = await volumes.checkCopy(block, c.volume, opts.checksums)
      if (verdict === null) good++
      else bad.push({ volume: c.volume, why: `${placeText(c.place)}: ${verdict.detail}` })
    }
    if (good === 0) {
      problem('block with no good copy', `${what}: no good copy (${bad.map(b => b.why).join('; ')})`)
      return
    }
    for (const b of bad) {
      if (b.volume < 0 || heal.has(`${objectIdOf(block.bsl)}/${b.volume}`)) continue // a physical BSL has one copy; queued ones are known
      problem('bad copy', `${what}: ${b.why} (another copy is good)`)
      toHeal.push({ block, volume: b.volume })
    }
  }
  for await (const { ino, index, block } of read.allBlocks()) {
    report.blocks++
    report.bytes += block.length
    referenced.add(objectIdOf(block.bsl))
    const inode = inodes.get(ino)
    if (!inode) {
      if (!missingInodes.has(ino)) problem('blocks of a missing inode', `inode ${ino} has block records but does not exist`)
      missingInodes.add(ino)
      continue
    }
    if (!isRegular(inode.mode)) problem('blocks of a non-file', `inode ${ino} is not a regular file but has block ${index}`)
    stored.set(ino, (stored.get(ino) ?? 0) + block.length)
    batch.push({ ino, index, block })
    if (batch.length >= 256) await checkBatch()
  }
  await checkBatch()
  if (opts.repair) {
    for (const ino of missingInodes) { await dir.fsckFixes.freeBlocksOf(ino); repaired('blocks of a missing inode') }
    if (toHeal.length) { await dir.queueHeal(toHeal); repaired('bad copy (queued for heal)', toHeal.length) }
  }
  for (const inode of inodes.values()) {
    if (!isRegular(inode.mode)) continue
    const want = stored.get(inode.ino) ?? 0
    if ((inode.stored ?? 0) !== want) {
      problem('stored bytes', `inode ${inode.ino} records ${inode.stored ?? 0} stored bytes, its blocks hold ${want}`)
      if (opts.repair) { await dir.fsckFixes.fixInode(inode.ino, { stored: want }); repaired('stored bytes') }
    }
  }
  let usageBytes = 0
  for (const [ino, n] of stored) if (!missingInodes.has(ino)) usageBytes += n
  const usage = { files: inodes.size + (opts.repair && lostFound !== undefined && !inodes.has(lostFound) ? 1 : 0), bytes: usageBytes }
  const now = await read.usage()
  if (now.files !== inodes.size || now.bytes !== usageBytes) {
    problem('usage counters', `the directory counts ${now.files} files and ${now.bytes} bytes; fsck found ${inodes.size} and ${usageBytes}`)
    if (opts.repair) { await dir.fsckFixes.fixUsage(usage); repaired('usage counters') }
  }

  // ---- orphan objects: on the devices, referenced by nothing ----
  for await (const id of read.reclaimQueueIds()) { referenced.add(id); report.reclaimQueue++ }
  for (const [key, place] of places) await listPlace(key, place) // places only physical BSLs name
  for (const [key, ids] of listed) {
    if (ids instanceof Error) {
      problem('device not listed', `${key} could not be listed: ${ids.message}`)
      continue
    }
    for (const id of ids) {
      if (referenced.has(id)) continue
      problem('orphan object', `object ${id} on ${key} is referenced by nothing`)
      if (opts.repair) {
        const [server, ...device] = key.split(':')
        await (await volumes.deviceAt({ server, device: device.join(':') })).delete(id)
        repaired('orphan object')
      }
    }
  }
  if (opts.repair && orphans.size) {
    const freed = await dir.purgeOrphans()
    if (freed) repaired('unlinked open inodes freed', freed)
  }
  const unrepaired = Object.entries(report.problems).some(([k, n]) => (report.repaired[k] ?? 0) < n && !(k === 'bad copy' && report.repaired['bad copy (queued for heal)']))
  report.clean = Object.keys(report.problems).length === 0 || (opts.repair && !unrepaired)
  report.seconds = (Date.now() - started) / 1000
  log('fsck: %j', { problems: report.problems, repaired: report.repaired })
  return report
}
