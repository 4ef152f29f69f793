import { mkdtempSync, rmdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { KernelConnection } from './connection'
import { fusermount } from './native'
import { IN_HEADER_BYTES } from './protocol'

/**
 * The FUSE protocol version the kernel speaks, as its INIT request states it: the only place the
 * kernel says so (/sys/module/fuse has no version). A throw-away mount on a temporary directory
 * is made, its INIT read and left unanswered, and the mount removed again. Needs root (or
 * fusermount's setuid) like any mount.
 */
export async function kernelFuseVersion (timeoutMs = 3000): Promise<{ major: number, minor: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'bslfs-probe-'))
  let conn: KernelConnection | undefined
  try {
    conn = new KernelConnection(dir, 'fsname=bslfs-probe,subtype=bslfs-probe,ro')
    const c = conn
    // The kernel refuses a read into less than its largest request could need (8 KiB at least).
    const buffer = Buffer.alloc((1 << 20) + 4096)
    return await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the kernel sent no FUSE INIT within ${timeoutMs} ms`)), timeoutMs)
      c.watch(status => {
        const n = status < 0 ? status : c.read(buffer)
        if (n === -11) return // EAGAIN: woken without a request
        clearTimeout(timer)
        if (n < IN_HEADER_BYTES + 8) reject(new Error(`reading /dev/fuse failed (${n})`))
        else resolve({ major: buffer.readUInt32LE(IN_HEADER_BYTES), minor: buffer.readUInt32LE(IN_HEADER_BYTES + 4) })
      })
    })
  } finally {
    // Closing the descriptor aborts the connection; the mount is then only a name to remove.
    try { conn?.close() } catch {}
    await fusermount(dir, true)
    try { rmdirSync(dir) } catch {}
  }
}
