#!/usr/bin/env node
'use strict'
// Patch fuse-native 2.2.6 and build its binding from source against Debian's libfuse2.
//
//   1. patch-package applies patches/fuse-native+2.2.6.patch (already applied: fine).
//   2. node-gyp rebuilds node_modules/fuse-native against the local Node headers
//      (--nodedir derived from process.execPath) and /usr/include/fuse + -lfuse.
//   3. The built build/Release/fuse.node is loaded in a child process and must export
//      the bslfs_patch_version the patched fuse-native.c declares; node-gyp-build must
//      pick it (build/Release wins over prebuilds/).
//
// Safe to run any number of times (npm's postinstall runs it on every `npm install`).
// See native-notes/fuse-native-patch.md.

const fs = require('fs')
const path = require('path')
const { spawnSync } = require('child_process')

const INSTALL_HINT = 'apt-get install -y libfuse2 fuse libfuse-dev python3 make g++'
const root = path.resolve(__dirname, '..')

function fail (msg, detail) {
  if (detail) process.stderr.write(String(detail).trimEnd() + '\n')
  process.stderr.write('build-fuse-native: ' + msg + '\n')
  process.exit(1)
}

function have (cmd) {
  const r = spawnSync('sh', ['-c', 'command -v "$1"', 'sh', cmd], { encoding: 'utf8' })
  return r.status === 0
}

function resolveFrom (id) {
  try {
    return require.resolve(id, { paths: [root] })
  } catch (err) {
    return null
  }
}

// --- locate things ----------------------------------------------------------------

const fusePkg = resolveFrom('fuse-native/package.json')
if (!fusePkg) fail('node_modules/fuse-native is missing; run `npm install` first')
const fuseDir = path.dirname(fusePkg)
const fuseVersion = JSON.parse(fs.readFileSync(fusePkg, 'utf8')).version
if (fuseVersion !== '2.2.6') {
  fail(`fuse-native ${fuseVersion} is installed but patches/ is for 2.2.6; pin fuse-native to 2.2.6`)
}

const patchPkgJson = resolveFrom('patch-package/package.json')
if (!patchPkgJson) fail('patch-package is missing; run `npm install` first')
const patchPkg = JSON.parse(fs.readFileSync(patchPkgJson, 'utf8'))
const patchBin = path.join(path.dirname(patchPkgJson),
  typeof patchPkg.bin === 'string' ? patchPkg.bin : patchPkg.bin['patch-package'])

const nodeGyp = resolveFrom('node-gyp/bin/node-gyp.js')
if (!nodeGyp) fail('node-gyp is missing; run `npm install` first')

// --- 1. apply the patch -----------------------------------------------------------

const cSource = path.join(fuseDir, 'fuse-native.c')
const PATCH_MARK = /static const uint32_t bslfs_patch_version = (\d+);/

{
  const r = spawnSync(process.execPath, [patchBin, '--error-on-fail'], {
    cwd: root,
    encoding: 'utf8',
    env: { ...process.env, CI: process.env.CI || '' }
  })
  if (r.status !== 0) {
    fail('patch-package could not apply patches/fuse-native+2.2.6.patch ' +
      '(node_modules/fuse-native modified by hand? `rm -rf node_modules/fuse-native && npm install`)',
    (r.stdout || '') + (r.stderr || ''))
  }
}

const match = PATCH_MARK.exec(fs.readFileSync(cSource, 'utf8'))
if (!match) fail('node_modules/fuse-native/fuse-native.c is not patched after patch-package ran; is patches/fuse-native+2.2.6.patch present?')
const expectedVersion = Number(match[1])

// --- 2. build prerequisites ---------------------------------------------------------

if (!fs.existsSync('/usr/include/fuse/fuse.h')) {
  fail(`libfuse-dev headers not found (/usr/include/fuse/fuse.h); install: ${INSTALL_HINT}`)
}
for (const tool of ['make', 'cc', 'g++']) {
  if (!have(tool)) fail(`\`${tool}\` not found (a C/C++ compiler and make are needed to build fuse-native); install: ${INSTALL_HINT}`)
}
if (!have('python3')) fail(`python3 not found (node-gyp needs it); install: ${INSTALL_HINT}`)

// The directory holding include/node/node_api.h: /usr for /usr/bin/node, the install
// prefix for a tarball or nvm Node.
function findNodeDir () {
  const candidates = [path.resolve(path.dirname(process.execPath), '..')]
  if (process.env.npm_config_nodedir) candidates.push(process.env.npm_config_nodedir)
  for (const dir of candidates) {
    if (fs.existsSync(path.join(dir, 'include', 'node', 'node_api.h'))) return dir
  }
  return null
}
const nodeDir = findNodeDir()

// --- 3. build ----------------------------------------------------------------------

{
  const args = [nodeGyp, 'rebuild', '--loglevel=warn']
  // Without local headers node-gyp tries to download them (needs the network).
  if (nodeDir) args.push('--nodedir=' + nodeDir)
  const r = spawnSync(process.execPath, args, { cwd: fuseDir, encoding: 'utf8' })
  if (r.status !== 0) {
    const out = (r.stdout || '') + (r.stderr || '')
    if (/fuse\.h: No such file|cannot find -lfuse/.test(out)) {
      fail(`libfuse-dev is missing (fuse.h or libfuse.so not found); install: ${INSTALL_HINT}`, out)
    }
    if (/node_api\.h: No such file|gyp ERR! .*(download|ENOTFOUND|EAI_AGAIN)/.test(out)) {
      fail(`Node headers not found next to ${process.execPath} (need <prefix>/include/node/node_api.h); ` +
        'install the headers for this Node or set npm_config_nodedir', out)
    }
    fail(`node-gyp rebuild failed in ${fuseDir} (prerequisites: ${INSTALL_HINT})`, out)
  }
}

// --- 4. check the result -------------------------------------------------------------

{
  const built = path.join(fuseDir, 'build', 'Release', 'fuse.node')
  if (!fs.existsSync(built)) fail(`node-gyp finished but ${built} does not exist`)

  const probe = `
    const b = require(${JSON.stringify(built)})
    const picked = require('node-gyp-build').path(${JSON.stringify(fuseDir)})
    const Fuse = require(${JSON.stringify(fuseDir)})
    console.log(JSON.stringify({ version: b.bslfs_patch_version, picked, js: Fuse.PATCH_VERSION }))
  `
  const r = spawnSync(process.execPath, ['-e', probe], { cwd: fuseDir, encoding: 'utf8' })
  if (r.status !== 0) {
    const out = (r.stdout || '') + (r.stderr || '')
    if (/libfuse\.so\.2/.test(out)) fail(`the built binding cannot load libfuse.so.2; install: ${INSTALL_HINT}`, out)
    fail(`the built binding ${built} does not load`, out)
  }
  let info
  try {
    info = JSON.parse(r.stdout.trim().split('\n').pop())
  } catch (err) {
    fail('could not read the probe output of the built binding', r.stdout + r.stderr)
  }
  if (info.version !== expectedVersion) {
    fail(`${built} exports bslfs_patch_version=${info.version}, expected ${expectedVersion}: not the patched build`)
  }
  if (path.resolve(info.picked) !== path.resolve(built)) {
    fail(`node-gyp-build loads ${info.picked} instead of ${built}`)
  }
  if (info.js !== expectedVersion) fail('node_modules/fuse-native/index.js is not the patched one')

  console.log(`build-fuse-native: fuse-native 2.2.6 patched (bslfs_patch_version ${expectedVersion}), ` +
    `built against libfuse2${nodeDir ? ' with Node headers from ' + nodeDir : ''}: ${path.relative(root, built)}`)
}
