#!/usr/bin/env node
'use strict'
// npm's postinstall, for a checkout (`npm ci`) and for the package (`npm install -g ./bslfs-*.tgz`):
//  1. the native addons and classic-level's splice (scripts/build-native.js), on this host;
//  2. in a checkout only (it has src/ and tsconfig.json, which the package does not ship): the
//     TypeScript build; the package ships dist/ built by `npm pack` (prepack), since typescript is a
//     devDependency that a global install leaves out;
//  3. in a global install as root: /sbin/mount.bslfs linked into this package (BSLFS_SBIN_DIR
//     elsewhere), so mount(8) and /etc/fstab find it. `bslfs uninstall-helper` removes it again.
const fs = require('fs')
const path = require('path')
const { spawnSync } = require('child_process')

const root = path.resolve(__dirname, '..')
const run = (what, args, fatal = true) => {
  const r = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' })
  if (r.status === 0) return
  process.stderr.write(`bslfs postinstall: ${what} failed${fatal ? '' : ' (bslfs itself is installed; see above)'}\n`)
  if (fatal) process.exit(r.status || 1)
}

run('building the native addons', [path.join(root, 'scripts', 'build-native.js')])

const checkout = fs.existsSync(path.join(root, 'tsconfig.json')) && fs.existsSync(path.join(root, 'src'))
if (checkout) {
  run('the TypeScript build', [require.resolve('typescript/bin/tsc', { paths: [root] }), '-p', 'tsconfig.json'])
} else if (!fs.existsSync(path.join(root, 'dist', 'cli', 'main.js'))) {
  process.stderr.write('bslfs postinstall: dist/ is missing from this package; build the package with `npm pack` in a checkout (its prepack compiles it)\n')
  process.exit(1)
}

const global = process.env.npm_config_global === 'true' || /[\\/]lib[\\/]node_modules[\\/]bslfs$/.test(root)
if (!checkout && global) {
  if (process.getuid && process.getuid() === 0) {
    run('linking the mount.bslfs helper', [path.join(root, 'bin', 'bslfs'), 'install-helper'], false)
  } else {
    console.log('bslfs: as root, run `bslfs install-helper` so that `mount -t bslfs` and /etc/fstab find mount.bslfs')
  }
}
