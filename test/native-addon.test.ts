import t from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { BUILD_NATIVE, addonLoader, releaseAddon } from '../src/native-addon'
import { channel } from '../src/fs/fuse/native'

// The one loader of native addons: what it says when an addon is missing or is another build.

t.test('a missing addon: an error naming it and the command that builds it; the next call tries again', async t => {
  const dir = t.testdir()
  const file = join(dir, 'absent.js')
  const load = addonLoader<{ version: number }>({ what: 'the test addon', file, version: 3 })
  const err = t.throws(() => load()) as Error
  t.match(err.message, 'the test addon', 'names the addon')
  t.match(err.message, file, 'and its file')
  t.match(err.message, BUILD_NATIVE, 'and how to build it')
  t.match(BUILD_NATIVE, 'node scripts/build-native.js')
  writeFileSync(file, 'module.exports = { version: 3 }\n')
  t.equal(load().version, 3, 'once built, the same loader loads it')
  t.equal(load(), load(), 'and keeps it')
})

t.test('another version, or functions missing: rebuild', async t => {
  const dir = t.testdir({ 'v2.js': 'module.exports = { version: 2, f () {} }\n' })
  const old = addonLoader({ what: 'the test addon', file: join(dir, 'v2.js'), version: 3 })
  t.throws(() => old(), /the test addon .* is version 2, this bslfs needs 3: rebuild it with `node scripts\/build-native\.js`/)
  const lacking = addonLoader({ what: 'the test binding', file: join(dir, 'v2.js'), functions: ['f', 'g', 'h'] })
  t.throws(() => lacking(), /the test binding .* lacks g, h: rebuild it/)
  const explained = addonLoader({ what: 'x', file: join(dir, 'nothing.js'), explain: reason => /Cannot find module/.test(reason) ? 'install x' : undefined })
  t.throws(() => explained(), { message: 'install x' }, 'a known cause gets its own message')
})

t.test('the built addons load', async t => {
  t.match(releaseAddon('object_io'), /build\/Release\/object_io\.node$/)
  t.equal(channel().version, 1, 'the FUSE channel, the version this code speaks')
})
