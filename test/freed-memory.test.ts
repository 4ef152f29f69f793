import t from 'tap'
import { execFile } from 'node:child_process'
import { join } from 'node:path'

// A long-running process (mount daemon, block server) calls returnFreedBuffers() at start: buffers
// of 128 KiB and more go back to the system when freed, and the pages freed inside malloc's heap
// (smaller buffers, a socket's 64 KiB reads) are handed back every 2 s. Checked in a child
// process of its own, on the built code, through /proc/self/smaps.

const objectIo = join(__dirname, '..', 'dist', 'devices', 'object-io.js')

/** The child: fragment malloc's heap with 64 KiB buffers, free most, then measure it over time. */
const CHILD = `
const fs = require('fs')
const heapKiB = () => {
  let inHeap = false, kib = 0
  for (const line of fs.readFileSync('/proc/self/smaps', 'utf8').split('\\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) inHeap = line.trim().endsWith('[heap]')
    else if (inHeap && line.startsWith('Anonymous:')) kib += Number(line.split(/\\s+/)[1])
  }
  return kib
}
const { returnFreedBuffers } = require(process.argv[1])
const start = process.argv[2] === 'start'
if (start) returnFreedBuffers()
let kept = []
let all = []
for (let i = 0; i < 2000; i++) {
  const b = Buffer.allocUnsafeSlow(64 * 1024)
  b.fill(i & 0xff)
  all.push(b)
  if (i % 10 === 9) kept.push(b) // every tenth stays: the freed ones are holes inside the heap
}
const full = heapKiB()
all = null
global.gc()
global.gc()
setTimeout(() => {
  console.log(JSON.stringify({ full, after: heapKiB(), kept: kept.length }))
}, 2600)
`

function child (mode: 'start' | 'none'): Promise<{ full: number, after: number }> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['--expose-gc', '-e', CHILD, objectIo, mode], (err, stdout, stderr) => {
      if (err) return reject(new Error(`${err.message}\n${stderr}`))
      resolve(JSON.parse(stdout))
    })
  })
}

t.test('the pages freed inside malloc\'s heap go back to the system', async t => {
  const without = await child('none')
  const withTrim = await child('start')
  t.comment(`heap KiB: full ${without.full} -> ${without.after} without; ${withTrim.full} -> ${withTrim.after} with returnFreedBuffers`)
  t.ok(without.full > 100 * 1024, 'the 2000 buffers of 64 KiB were in the heap')
  t.ok(without.after > without.full * 0.5, 'left alone, glibc keeps the freed holes')
  t.ok(withTrim.after < withTrim.full * 0.3, 'with returnFreedBuffers they are handed back within its interval')
})
