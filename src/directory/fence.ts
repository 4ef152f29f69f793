import { performance } from 'node:perf_hooks'
import { FsError } from '../errors'
import { logger } from '../log'
import { KvStore, KvTxn } from './kv'

const events = logger('bslfs:session')

/**
 * The fence of a mount on a shared store: once its session may have expired
 * (the host froze or lost the database past the expiry: another mount may be
 * cleaning up after it and handing on what it held), every transaction that
 * writes fails with EIO until the session is renewed or re-registered
 * (native-notes/shared-mounts.md, "Fencing"). The test is on this host's
 * clocks only — no read — so it costs nothing per transaction: a change is
 * refused when more than the expiry has passed since the start of the last
 * renewal the database confirmed, on the monotonic clock or the wall clock
 * (whichever moved more: the monotonic one stands still while a VM is
 * suspended, the wall clock can be set back).
 */
export class Fence {
  private armed = false
  private confirmedMono = 0
  private confirmedWall = 0
  private expiryMs = Infinity
  /** Set while the mount knows its session expired (until it has re-registered). */
  private tripped?: string
  private logged = false

  /** Start fencing: `startMono`/`startWall` are when the renewal the store confirmed began. */
  confirm (expiryMs: number, startMono: number, startWall: number): void {
    this.armed = true
    this.expiryMs = expiryMs
    this.confirmedMono = startMono
    this.confirmedWall = startWall
    if (this.tripped) events.info('session valid again: changes allowed')
    this.tripped = undefined
    this.logged = false
  }

  /** The mount found its session expired (or reaped): refuse until confirm. */
  trip (why: string): void {
    if (!this.tripped) events.error('fenced: %s; every change fails with EIO until the session is registered again', why)
    this.tripped = why
    this.logged = true
  }

  /** Off again (the mount is ending). */
  disarm (): void { this.armed = false }

  /** Why changes are refused now, or undefined. */
  refusal (): string | undefined {
    if (this.tripped) return this.tripped
    if (!this.armed) return undefined
    const since = Math.max(performance.now() - this.confirmedMono, Date.now() - this.confirmedWall)
    if (since <= this.expiryMs) return undefined
    const why = `this mount's session was last renewed ${(since / 1000).toFixed(1)} s ago, past its expiry of ${this.expiryMs / 1000} s (the host was frozen or cut off from the directory): another mount may have taken over what it held`
    if (!this.logged) {
      this.logged = true
      events.error('fenced: %s; every change fails with EIO until the session is registered again', why)
    }
    return why
  }

  check (): void {
    const why = this.refusal()
    if (why) throw new FsError('EIO', `fenced: ${why}`)
  }
}

/**
 * `kv` behind `fence`: a transaction that writes is refused with EIO when the
 * fence is up before its body runs, or after (the moment before it commits).
 * Reads pass.
 */
export function fencedKv (kv: KvStore, fence: Fence): KvStore {
  const txn = async <T>(fn: (tx: KvTxn) => Promise<T> | T, opts?: { sync?: boolean }): Promise<T> => await kv.txn(async tx => {
    let wrote = false
    const writing = (): void => { if (!wrote) { fence.check(); wrote = true } }
    const guarded: KvTxn = {
      get: k => tx.get(k),
      scan: (prefix, o) => tx.scan(prefix, o),
      put: (k, v) => { writing(); tx.put(k, v) },
      del: k => { writing(); tx.del(k) },
      onCommit: f => tx.onCommit(f),
      ...(tx.notify ? { notify: (m: string) => tx.notify?.(m) } : {})
    }
    const result = await fn(guarded)
    if (wrote) fence.check()
    return result
  }, opts)
  return new Proxy(kv, {
    get (target, prop, receiver) {
      if (prop === 'txn') return txn
      const v = Reflect.get(target, prop, receiver)
      return typeof v === 'function' ? v.bind(target) : v
    }
  })
}
