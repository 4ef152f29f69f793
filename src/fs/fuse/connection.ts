import { writev, writevSync } from 'node:fs'
import { channel } from './native'

/**
 * The session's side of one connection to the kernel: requests in, replies
 * out. An interface so that the session can be fed crafted bytes in a test.
 */
export interface Connection {
  /** Call `onReadable(status)` on the event loop whenever requests wait (status < 0: a poll error). */
  watch (onReadable: (status: number) => void): void
  /** One request into `buffer`: its length, or -errno (-EAGAIN when none waits). */
  read (buffer: Buffer): number
  /** One reply, header and payload in one write; throws as writev(2) fails (ENOENT: the kernel forgot the request). */
  write (parts: Buffer[]): void
  /**
   * One notification, written off the event loop's thread: the kernel may hold
   * it until a request this loop must answer is done (it takes the inode's
   * lock), so a synchronous write could deadlock the session. `done` gets
   * writev(2)'s error (ENOENT: the kernel had nothing of it cached).
   */
  notify? (parts: Buffer[], done: (err: NodeJS.ErrnoException | null) => void): void
  close (): void
}

/** A FUSE mount's /dev/fuse descriptor, through the native channel. */
export class KernelConnection implements Connection {
  private readonly native = channel()
  readonly fd: number

  /** Mount (libfuse2's fuse_mount) with the kernel options `options`; throws with libfuse's reason. */
  constructor (mountpoint: string, options: string) {
    this.fd = this.native.mount(mountpoint, options)
  }

  watch (onReadable: (status: number) => void): void { this.native.watch(this.fd, onReadable) }
  read (buffer: Buffer): number { return this.native.read(this.fd, buffer) }
  write (parts: Buffer[]): void { writevSync(this.fd, parts) }
  notify (parts: Buffer[], done: (err: NodeJS.ErrnoException | null) => void): void { writev(this.fd, parts, err => done(err)) }
  close (): void { this.native.close(this.fd) }
}
