import { join } from 'node:path'
import { getSystemErrorName } from 'node:util'

/** native/object_io.c: whole-object puts and reads, one thread-pool job each. */
interface ObjectIo {
  version: number
  put (path: string, dirFd: number, data: Uint8Array, cb: (errno: number) => void): void
  read (path: string, maxBytes: number, cb: (errno: number, data?: Buffer, crc?: number) => void): void
}

const VERSION = 1
const ADDON = join(__dirname, '..', '..', 'build', 'Release', 'object_io.node')

let addon: ObjectIo | undefined

function io (): ObjectIo {
  if (addon) return addon
  let a: ObjectIo
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    a = require(ADDON) as ObjectIo
  } catch (err) {
    throw new Error(`the object I/O addon (${ADDON}) cannot be loaded: ${(err as Error).message.split('\n')[0]}; rebuild it with \`npm install\``)
  }
  if (a.version !== VERSION) throw new Error(`${ADDON} is version ${a.version}, this bslfs needs ${VERSION}: rebuild it with \`npm install\``)
  addon = a
  return a
}

/** An error shaped as Node's fs errors are (code, errno, syscall, path), so callers treat both alike. */
function systemError (errno: number, syscall: string, path: string): NodeJS.ErrnoException {
  const code = getSystemErrorName(-errno)
  return Object.assign(new Error(`${code}: ${syscall} of ${path} failed`), { code, errno: -errno, syscall, path })
}

/**
 * Create `path` (it must not exist), write `data`, fsync it and the directory
 * open as `dirFd`. A failure removes what was made; EEXIST touches nothing.
 */
export function putObject (path: string, dirFd: number, data: Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => {
    io().put(path, dirFd, data, errno => errno === 0 ? resolve() : reject(systemError(errno, 'put', path)))
  })
}

/**
 * The whole file at `path` and its CRC-32 (computed on the thread pool; -1
 * when this node has no zlib to do it with); EFBIG when it is longer than `maxBytes`.
 */
export function readObject (path: string, maxBytes: number): Promise<{ data: Buffer, crc: number }> {
  return new Promise((resolve, reject) => {
    io().read(path, maxBytes, (errno, data, crc) => errno === 0 && data ? resolve({ data, crc: crc ?? -1 }) : reject(systemError(errno, 'read', path)))
  })
}
