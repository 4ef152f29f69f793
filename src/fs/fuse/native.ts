import { execFile } from 'node:child_process'
import { join } from 'node:path'

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
const ADDON = join(__dirname, '..', '..', '..', 'build', 'Release', 'fuse_channel.node')

let loaded: Channel | undefined

/** The channel addon, loaded once; the message says what to install when it cannot load. */
export function channel (): Channel {
  if (loaded) return loaded
  let addon: Channel
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    addon = require(ADDON) as Channel
  } catch (err) {
    const msg = (err as Error).message.split('\n')[0]
    if (/libfuse\.so/.test(msg)) throw new Error('libfuse2 is missing: install it (`apt-get install -y libfuse2 fuse`), then mount again')
    throw new Error(`the FUSE channel (${ADDON}) cannot be loaded: ${msg}; rebuild it with \`npm install\` (needs libfuse-dev, make, g++, python3)`)
  }
  if (addon.version !== CHANNEL_VERSION) {
    throw new Error(`${ADDON} is version ${addon.version}, this bslfs needs ${CHANNEL_VERSION}: rebuild it with \`npm install\``)
  }
  loaded = addon
  return addon
}

/** fusermount -u (strict: EBUSY on a busy mount) or -uz (lazy); resolves with fusermount's complaint, or null. */
export function fusermount (mountpoint: string, lazy: boolean): Promise<string | null> {
  return new Promise(resolve => {
    execFile('fusermount', [lazy ? '-uz' : '-u', mountpoint], (err, _stdout, stderr) => {
      resolve(err ? (String(stderr) || err.message).trim() : null)
    })
  })
}
