import createDebug from 'debug'
import { BSL, objectIdOf } from '../bsl'
import { PendingRecords } from '../data/group-commit'
import { Directory } from '../directory/directory'
import { FsError, UsageError } from '../errors'
import { Place, placeText } from '../volumes/tables'
import { BlockRecord } from '../volumes/block'
import { Volumes } from '../volumes/volumes'
import { eachParallel } from './parallel'
import { OnProgress } from './progress'

const log = createDebug('bslfs:remap')

export interface RemapOptions {
  /** Copy every block to the new place first (else only check that it holds them). */
  copy: boolean
  /** After the switch, remove the copies from the old place. */
  deleteOld: boolean
  /** Without --copy: check every block rather than a sample. */
  verify: boolean
  /**
   * The mount's block records whose bytes are stored and still wait for its group
   * commit (none offline): committed before each scan of the block maps, which must see them.
   */
  pendingRecords?: PendingRecords
  /** Aborts the copy (Ctrl-C: the CLI's control connection closed); the old mapping stays. */
  signal?: AbortSignal
  onProgress?: OnProgress
}

export interface RemapReport {
  volume: number
  from: string
  to: string
  /** Blocks that have a copy on the volume. */
  blocks: number
  bytes: number
  /** Blocks copied by this run, and those already on the new place (an earlier, interrupted run). */
  copied: number
  alreadyThere: number
  /** Blocks whose file was deleted or rewritten during the copy (their old object reclaimed): nothing to copy. */
  gone: number
  /** Blocks written as the row switched that could not be copied to the new place: the old copies are kept (run fsck). */
  stranded: number
  /** Blocks checked on the new place without --copy. */
  checked: number
  deleted: number
  /** Old copies that could not be removed (the old place is gone). */
  notDeleted: number
  /** Time spent copying (the rate is bytes over this), and in all. */
  copySeconds: number
  seconds: number
}

/** What remap needs of the STATE it runs in. */
export interface RemapHost {
  /** Re-read the tables once the row has changed. */
  reloadTables (): Promise<void>
}

const PARALLEL = 8
const SAMPLE = 64

/** Does `volume` hold a copy of the block (as itself or as one of its mirrors)? */
function holds (volumes: Volumes, volume: number, bsl: BSL): boolean {
  return bsl.form !== 'physical' && volumes.mirrorsOf(bsl.volume).includes(volume)
}

/** Every block with a copy on `volume` (as itself or as a mirror), once each; `where` gets the (inode, index) of each. */
async function blocksOf (dir: Directory, volumes: Volumes, volume: number, where?: Map<string, { ino: number, index: number }>): Promise<Map<string, BlockRecord>> {
  const out = new Map<string, BlockRecord>()
  for await (const { ino, index, block } of dir.allBlocks()) {
    if (holds(volumes, volume, block.bsl)) {
      out.set(objectIdOf(block.bsl), block)
      where?.set(objectIdOf(block.bsl), { ino, index })
    }
  }
  return out
}

/** Stops a remap whose client went away (Ctrl-C): before the switch, so the old row stays. */
function stopIfAborted (signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new UsageError('remap interrupted; the volume stays where it was (run the same command again to resume)')
}

/**
 * Move `volume` to `target` by changing its row in the volume table; no BSL
 * in the directory changes. With `copy`, every block is first copied there
 * (from the old place or a mirror, verified by checksum), blocks already
 * there from an interrupted run are kept, and new blocks written meanwhile
 * are copied there too. The row switches in one step only after all that;
 * an interruption before it leaves the old mapping in force.
 */
export async function remap (dir: Directory, volumes: Volumes, host: RemapHost, volume: number, target: Place, opts: RemapOptions): Promise<RemapReport> {
  const started = Date.now()
  const row = (await dir.tables()).volumes.get(volume)
  if (!row) throw new UsageError(`there is no volume ${volume}`)
  const report: RemapReport = {
    volume, from: placeText(row.place), to: placeText(target), blocks: 0, bytes: 0, copied: 0, alreadyThere: 0, gone: 0, stranded: 0, checked: 0, deleted: 0, notDeleted: 0, copySeconds: 0, seconds: 0
  }
  const progress = opts.onProgress ?? (() => {})
  const stop = (): void => stopIfAborted(opts.signal)
  const dest = await volumes.deviceAt(target)
  await dest.space().catch((err: Error) => { throw new UsageError(`the new place ${report.to} does not answer: ${err.message}`) })
  const present = async (b: BlockRecord): Promise<boolean> => (await dest.stat(objectIdOf(b.bsl)))?.size === b.length

  // Writes in progress finish, and their blocks are committed to the directory: a stored block joins the
  // mount's group commit right after its write returns, so after one turn of the event loop the group holds
  // it; committing the group now (rather than a few ms later) puts it in the directory before the scan.
  const settleWrites = async (): Promise<void> => {
    await volumes.drain()
    await new Promise(resolve => setImmediate(resolve))
    await opts.pendingRecords?.commitNow()
    await dir.sync()
  }
  // New blocks get a copy on the new place too (with or without --copy: the check below only covers the scan).
  const shadow = volumes.addShadow(volume, row.place, target)
  /** Every object the volume had on the old place: at the scan, and written since (the shadow saw those). */
  const onOld = new Set<string>()
  try {
    // Writes that began before the shadow may not reach the new place; the scan after them and their commits sees their blocks.
    await settleWrites()
    const where = new Map<string, { ino: number, index: number }>()
    const blocks = await blocksOf(dir, volumes, volume, where)
    report.blocks = blocks.size
    for (const id of blocks.keys()) onOld.add(id)
    const list = [...blocks.values()]
    const total = list.reduce((n, b) => n + b.length, 0)
    // Is the block still in a file? (Unlink, truncate and rewrite drop it from the block map before its object is reclaimed.)
    const referenced = async (b: BlockRecord): Promise<boolean> => {
      const id = objectIdOf(b.bsl)
      const at = where.get(id)
      if (!at) return false
      const rec = await dir.getBlock(at.ino, at.index)
      return rec !== undefined && objectIdOf(rec.bsl) === id
    }
    const copyOne = async (b: BlockRecord): Promise<void> => {
      if (await present(b)) {
        report.alreadyThere++
      } else {
        let data: Buffer
        try {
          data = await volumes.read(b)
        } catch (err) {
          // A file deleted or rewritten since the scan: its old object may be reclaimed already, and need not move.
          if (!(await referenced(b))) {
            report.gone++
            return
          }
          throw err
        }
        await dest.put(objectIdOf(b.bsl), data, b.checksum)
        // Deleted while it was being copied: the reclaim may have missed this copy (it was not there yet).
        if (!(await referenced(b))) {
          await dest.delete(objectIdOf(b.bsl)).catch(() => {})
          report.gone++
          return
        }
        report.copied++
      }
      report.bytes += b.length
      progress({ done: report.bytes, total, bytes: report.bytes, blocks: report.copied + report.alreadyThere })
    }
    const copyStarted = Date.now()
    if (!opts.copy) {
      const sample = opts.verify || list.length <= SAMPLE ? list : [...list].sort(() => Math.random() - 0.5).slice(0, SAMPLE)
      const missing: string[] = []
      await eachParallel(sample, PARALLEL * 4, async b => {
        if (!(await present(b))) missing.push(objectIdOf(b.bsl))
        report.checked++
        progress({ done: report.checked, total: sample.length, bytes: 0 })
      }, stop)
      if (missing.length) {
        throw new UsageError(`${report.to} lacks ${missing.length} of the ${sample.length} blocks checked${opts.verify ? '' : ' (a sample)'} of volume ${volume}` +
          ` (e.g. ${missing.slice(0, 3).join(', ')}); nothing changed. Copy them with --copy, or check the place`)
      }
    } else {
      await eachParallel(list, PARALLEL, copyOne, stop)
    }
    // New blocks whose copy to the new place failed meanwhile: copy them now, until none is left.
    for (let round = 0; shadow.missed.size > 0; round++) {
      if (round >= 5) throw new FsError('EIO', `${report.to} keeps missing new blocks; the volume stays on ${report.from}`)
      // Once their writes are committed, a scan tells which of them are still in a file (and where).
      await settleWrites()
      await blocksOf(dir, volumes, volume, where)
      const missed = [...shadow.missed.values()]
      shadow.missed.clear()
      await eachParallel(missed, PARALLEL, copyOne, stop)
    }
    if (opts.copy) report.copySeconds = (Date.now() - copyStarted) / 1000
    stop()
    await dir.setVolume(volume, target)
    await host.reloadTables()
    log('volume %d moved from %s to %s', volume, report.from, report.to)
    // Writes that resolved the old row still get their shadow copy until they are done.
    await volumes.drain()
    // A write racing the switch whose copy to the new place failed exists only on the old place:
    // copy it straight from there, and keep the old copies if that fails.
    if (shadow.missed.size > 0) {
      const old = await volumes.deviceAt(row.place)
      for (const b of shadow.missed.values()) {
        const id = objectIdOf(b.bsl)
        try {
          await dest.put(id, await old.get(id, b.checksum), b.checksum)
        } catch (err) {
          report.stranded++
          log('block %s written during the switch is only on %s: %s', id, report.from, (err as Error).message)
        }
      }
    }

    // The shadow stays until the old copies are gone: a block reclaimed meanwhile is deleted from both places.
    if (opts.deleteOld && report.from !== report.to && report.stranded === 0) {
      // A read that resolved the old row a moment ago may still be fetching from there.
      await new Promise(resolve => setTimeout(resolve, 1000))
      const old = await volumes.deviceAt(row.place)
      // Blocks of files deleted since the switch are no longer in the scan, but their old copies are in onOld;
      // those still waiting in the reclaim queue may be deleted after the shadow is gone (from the new place only).
      const ids = new Set([...onOld, ...shadow.written, ...(await blocksOf(dir, volumes, volume)).keys()])
      for (const g of await dir.reclaimQueue()) if (holds(volumes, volume, g.bsl)) ids.add(g.objectId)
      await eachParallel([...ids], PARALLEL * 4, async id => {
        try {
          await old.delete(id)
          report.deleted++
        } catch (err) {
          report.notDeleted++
          log('cannot delete the old copy %s: %s', id, (err as Error).message)
        }
      })
    }
  } finally {
    shadow.remove()
  }
  report.seconds = (Date.now() - started) / 1000
  return report
}
