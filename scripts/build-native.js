#!/usr/bin/env node
'use strict'
// Build bslfs's native addons against Debian's libfuse2 and this Node's headers: the FUSE
// channel (native/fuse_channel.c) and the local device's whole-object I/O
// (native/object_io.c), into build/Release/; and classic-level's LevelDB binding with
// bslfs's synchronous calls (native/classic_level_sync.cc). Then load each in a child
// process to check it.
// Safe to run any number of times (npm's postinstall runs it). See native-notes/.

const fs = require('fs')
const path = require('path')
const { spawnSync } = require('child_process')

const INSTALL_HINT = 'apt-get install -y libfuse2 fuse libfuse-dev python3 make g++'
const root = path.resolve(__dirname, '..')

function fail (msg, detail) {
  if (detail) process.stderr.write(String(detail).trimEnd() + '\n')
  process.stderr.write('build-native: ' + msg + '\n')
  process.exit(1)
}

/** What a child printed, both streams. */
function output (r) {
  return (r.stdout || '') + (r.stderr || '')
}

function have (cmd) {
  return spawnSync('sh', ['-c', 'command -v "$1"', 'sh', cmd]).status === 0
}

// Each missing piece named with the Debian package that brings it (one message for all of them).
const missing = []
if (!fs.existsSync('/usr/include/fuse/fuse_lowlevel.h')) missing.push(['libfuse2\'s headers (/usr/include/fuse/fuse_lowlevel.h)', 'libfuse-dev'])
for (const [tool, pkg] of [['python3', 'python3'], ['make', 'make'], ['cc', 'gcc'], ['g++', 'g++']]) {
  if (!have(tool)) missing.push([`\`${tool}\``, pkg])
}
if (missing.length) {
  fail(`cannot build the native addons: missing ${missing.map(m => `${m[0]} (Debian package ${m[1]})`).join(', ')}; ` +
    `install: apt-get install -y ${[...new Set(missing.map(m => m[1]))].join(' ')} (everything bslfs needs: ${INSTALL_HINT})`)
}

let nodeGyp
try {
  nodeGyp = require.resolve('node-gyp/bin/node-gyp.js', { paths: [root] })
} catch {
  fail('node-gyp is missing; run `npm install` first')
}

// The directory holding include/node/node_api.h (/usr for Debian's /usr/bin/node): with it,
// node-gyp downloads no headers.
const nodeDir = [path.resolve(path.dirname(process.execPath), '..'), process.env.npm_config_nodedir]
  .find(d => d && fs.existsSync(path.join(d, 'include', 'node', 'node_api.h')))

const args = [nodeGyp, 'rebuild', '--loglevel=warn']
if (nodeDir) args.push('--nodedir=' + nodeDir)
const gyp = spawnSync(process.execPath, args, { cwd: root, encoding: 'utf8' })
if (gyp.status !== 0) {
  const out = output(gyp)
  if (/fuse_lowlevel\.h: No such file|cannot find -lfuse/.test(out)) fail(`libfuse-dev is missing; install: ${INSTALL_HINT}`, out)
  if (/node_api\.h: No such file|gyp ERR! .*(download|ENOTFOUND|EAI_AGAIN)/.test(out)) {
    fail(`Node headers not found next to ${process.execPath} (need <prefix>/include/node/node_api.h); install them or set npm_config_nodedir`, out)
  }
  fail(`node-gyp rebuild failed (prerequisites: ${INSTALL_HINT})`, out)
}

// Each addon loads in a child process (a missing libfuse.so.2 shows here, not at mount time).
const built = []
for (const name of ['fuse_channel', 'object_io']) {
  const addon = path.join(root, 'build', 'Release', `${name}.node`)
  const probe = spawnSync(process.execPath, ['-e', `console.log(require(${JSON.stringify(addon)}).version)`], { encoding: 'utf8' })
  if (probe.status !== 0) {
    const out = output(probe)
    if (/libfuse\.so\.2/.test(out)) fail(`the built channel cannot load libfuse.so.2; install: ${INSTALL_HINT}`, out)
    fail(`the built addon ${addon} does not load`, out)
  }
  built.push(`${path.relative(root, addon)} (version ${probe.stdout.trim()})`)
}
// classic-level's binding, rebuilt with bslfs's synchronous batch and scan
// (native/classic_level_sync.cc, spliced in between markers, so a rerun replaces it).
const BEGIN = '// ---- bslfs sync calls: begin (scripts/build-native.js) ----\n'
const END = '// ---- bslfs sync calls: end ----\n'
let levelDir
try {
  levelDir = path.dirname(require.resolve('classic-level/package.json', { paths: [root] }))
} catch {
  fail('classic-level is missing; run `npm install` first')
}
const levelVersion = require(path.join(levelDir, 'package.json')).version
const bindingCc = path.join(levelDir, 'binding.cc')
let source = fs.readFileSync(bindingCc, 'utf8')
const at = source.indexOf(BEGIN)
if (at >= 0) source = source.slice(0, at) + source.slice(source.indexOf(END, at) + END.length)
source = source.replace('\n  NAPI_EXPORT_FUNCTION(batch_do_sync);\n  NAPI_EXPORT_FUNCTION(scan_sync);', '')
const anchors = ['\nNAPI_INIT() {\n', '\n  NAPI_EXPORT_FUNCTION(batch_do);']
if (anchors.some(a => source.split(a).length !== 2)) {
  fail(`classic-level ${levelVersion} (${levelDir}) does not have the binding.cc bslfs patches (NAPI_INIT and batch_do, once each); bslfs is written against classic-level 3.0.0`)
}
const fragment = fs.readFileSync(path.join(root, 'native', 'classic_level_sync.cc'), 'utf8')
source = source
  .replace(anchors[0], '\n' + BEGIN + fragment + END + anchors[0].slice(1))
  .replace(anchors[1], anchors[1] + '\n  NAPI_EXPORT_FUNCTION(batch_do_sync);\n  NAPI_EXPORT_FUNCTION(scan_sync);')
fs.writeFileSync(bindingCc, source)
const levelGyp = spawnSync(process.execPath, [...args, '-j', '2'], { cwd: levelDir, encoding: 'utf8' })
if (levelGyp.status !== 0) fail(`rebuilding classic-level's binding in ${levelDir} failed (prerequisites: ${INSTALL_HINT})`, output(levelGyp))
const levelProbe = spawnSync(process.execPath, ['-e', `const b = require(${JSON.stringify(path.join(levelDir, 'binding.js'))}); console.log(typeof b.batch_do_sync + ' ' + typeof b.scan_sync)`], { encoding: 'utf8' })
if (levelProbe.status !== 0 || levelProbe.stdout.trim() !== 'function function') {
  fail(`classic-level's rebuilt binding does not load with batch_do_sync and scan_sync (${levelDir}/build/Release)`, output(levelProbe))
}
built.push(`classic-level ${levelVersion} with synchronous batch and scan`)

console.log(`build-native: ${built.join(', ')}, against libfuse2${nodeDir ? `, Node headers from ${nodeDir}` : ''}`)
