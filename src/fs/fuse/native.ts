import { execFile } from 'node:child_process'
import { addonLoader, releaseAddon } from '../../native-addon'

/** The native FUSE channel (native/fuse_channel.c): mount, watch and read; the protocol is ours. */
export interface Channel {
  version: number
  /** Mount and open the channel: libfuse2's fuse_mount. Throws with libfuse's reason. */
  mount (mountpoint: string, options: string): number
  /** Call `onReadable(status)` on the event loop whenever requests wait (status < 0: a poll error). */
  watch (fd: number, onReadable: (status: number) => void): void
  unwatch (fd: number): void
  /** One request into `buffer`: its length, or -errno (-EAGAIN when none waits). */
  read (fd: number, buffer: Buffer): number
  close (fd: number): void
}

/** The interface version this code speaks (CHANNEL_VERSION in fuse_channel.c). */
const CHANNEL_VERSION = 1

/** The channel addon, loaded once; the message says what to install when it cannot load. */
export const channel = addonLoader<Channel>({
  what: 'the FUSE channel',
  file: releaseAddon('fuse_channel'),
  version: CHANNEL_VERSION,
  explain: reason => /libfuse\.so/.test(reason) ? 'libfuse2 is missing: install it (`apt-get install -y libfuse2 fuse`), then mount again' : undefined
})

/** fusermount -u (strict: EBUSY on a busy mount) or -uz (lazy); resolves with fusermount's complaint, or null. */
export function fusermount (mountpoint: string, lazy: boolean): Promise<string | null> {
  return new Promise(resolve => {
    execFile('fusermount', [lazy ? '-uz' : '-u', mountpoint], (err, _stdout, stderr) => {
      resolve(err ? (String(stderr) || err.message).trim() : null)
    })
  })
}
