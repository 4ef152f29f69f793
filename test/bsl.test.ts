import t from 'tap'
import fc from 'fast-check'
import {
  BSL, BSLFormatError, decodeBSL, encodeBSL, formatBSL, isObjectId, MAX_FILE_ID, MAX_INDEX, MAX_VOLUME,
  objectIdOf, parseBSL, parseObjectId, parsePlace, formatPlace, sameBSL, validName, validateBSL
} from '../src/bsl'

const nameChar = fc.constantFrom(...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-')
const firstChar = fc.constantFrom(...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_')
const name = fc.tuple(firstChar, fc.array(nameChar, { maxLength: 63 })).map(([a, b]) => a + b.join(''))
const fileId = fc.oneof(fc.bigInt({ min: 0n, max: MAX_FILE_ID }), fc.constantFrom(0n, 1n, MAX_FILE_ID, MAX_FILE_ID - 1n))
const volume = fc.oneof(fc.integer({ min: 0, max: MAX_VOLUME }), fc.constantFrom(0, 1, MAX_VOLUME))
const index = fc.oneof(fc.integer({ min: 0, max: MAX_INDEX }), fc.constantFrom(0, 1, MAX_INDEX))

const bslArb: fc.Arbitrary<BSL> = fc.oneof(
  fc.record({ form: fc.constant('physical' as const), server: name, device: name, fileId }),
  fc.record({ form: fc.constant('logical' as const), volume, fileId }),
  fc.record({ form: fc.constant('mirrored' as const), volume, fileId }),
  fc.record({ form: fc.constant('indexed' as const), volume, index, fileId })
)

const runs = { numRuns: 5000 }

t.test('binary round trip', async t => {
  fc.assert(fc.property(bslArb, b => {
    const enc = encodeBSL(b)
    const dec = decodeBSL(enc)
    return sameBSL(b, dec) && JSON.stringify(b, big) === JSON.stringify(dec, big)
  }), runs)
})

t.test('text round trip', async t => {
  fc.assert(fc.property(bslArb, b => {
    const text = formatBSL(b)
    return sameBSL(b, parseBSL(text)) && formatBSL(parseBSL(text)) === text && /^[\x21-\x7e]+$/.test(text)
  }), runs)
})

t.test('distinct BSLs have distinct encodings and texts', async t => {
  fc.assert(fc.property(bslArb, bslArb, (a, b) => {
    const same = sameBSL(a, b)
    return same === encodeBSL(a).equals(encodeBSL(b)) && same === (formatBSL(a) === formatBSL(b))
  }), runs)
  // Neighbours that a careless encoding could confuse.
  const near: BSL[] = [
    { form: 'logical', volume: 1, fileId: 1n },
    { form: 'mirrored', volume: 1, fileId: 1n },
    { form: 'indexed', volume: 1, index: 0, fileId: 1n },
    { form: 'logical', volume: 0, fileId: 1n },
    { form: 'logical', volume: 1, fileId: 0n },
    { form: 'physical', server: 'ab', device: 'c', fileId: 1n },
    { form: 'physical', server: 'a', device: 'bc', fileId: 1n }
  ]
  const encs = new Set(near.map(b => encodeBSL(b).toString('hex')))
  const texts = new Set(near.map(formatBSL))
  t.equal(encs.size, near.length)
  t.equal(texts.size, near.length)
  for (const a of near) for (const b of near) t.equal(sameBSL(a, b), a === b)
})

t.test('object ids', async t => {
  fc.assert(fc.property(bslArb, b => {
    const id = objectIdOf(b)
    return isObjectId(id) && parseObjectId(id) === b.fileId
  }), runs)
  t.equal(objectIdOf({ form: 'logical', volume: 3, fileId: 0xabcn }), '0000000000000abc')
  t.equal(objectIdOf({ form: 'indexed', volume: 3, index: 9, fileId: 0xabcn }), '0000000000000abc')
  t.equal(objectIdOf({ form: 'physical', server: 's', device: 'd', fileId: MAX_FILE_ID }), 'ffffffffffffffff')
  t.equal(parseObjectId('0000000000000000'), 0n)
  for (const bad of ['', '0', '000000000000abc', '00000000000000abc', '0000000000000ABC', '../0000000000000a',
    '0000000000000ab\0', ' 000000000000abc', '000000000000abc\n', '0x00000000000abc', '000000000000abcg']) {
    t.equal(isObjectId(bad), false, JSON.stringify(bad))
    t.throws(() => parseObjectId(bad), BSLFormatError, JSON.stringify(bad))
  }
  t.throws(() => parseObjectId('0000000000000ABC'), /lowercase/)
  t.throws(() => parseObjectId('abc'), /exactly 16 hex digits, got 3/)
  t.equal(isObjectId(123), false)
})

t.test('edge values', async t => {
  const edges: Array<[BSL, string, string]> = [
    [{ form: 'logical', volume: 0, fileId: 0n }, 'vol:0/0000000000000000', '12000000000000000000000000'],
    [{ form: 'mirrored', volume: MAX_VOLUME, fileId: MAX_FILE_ID }, 'mir:4294967295/ffffffffffffffff', '13ffffffffffffffffffffffff'],
    [{ form: 'indexed', volume: 10, index: MAX_INDEX, fileId: 0xabcn }, 'idx:10.281474976710655/0000000000000abc', '140000000affffffffffff0000000000000abc'],
    [{ form: 'indexed', volume: 0, index: 0, fileId: 0n }, 'idx:0.0/0000000000000000', '14' + '00'.repeat(18)],
    [{ form: 'physical', server: 'X', device: 'd0', fileId: 1n }, 'phys:X:d0/0000000000000001', '110158026430' + '0000000000000001']
  ]
  for (const [b, text, hex] of edges) {
    t.equal(formatBSL(b), text)
    t.equal(encodeBSL(b).toString('hex'), hex)
    t.same(parseBSL(text), b)
    t.same(decodeBSL(Buffer.from(hex, 'hex')), b)
  }
  const long = 'a'.repeat(64)
  const p: BSL = { form: 'physical', server: long, device: long, fileId: MAX_FILE_ID }
  t.same(decodeBSL(encodeBSL(p)), p)
  t.same(parseBSL(formatBSL(p)), p)
  // A Uint8Array view with an offset decodes too.
  const enc = encodeBSL({ form: 'logical', volume: 7, fileId: 9n })
  const backing = new Uint8Array(enc.length + 5)
  backing.set(enc, 3)
  t.same(decodeBSL(backing.subarray(3, 3 + enc.length)), { form: 'logical', volume: 7, fileId: 9n })
})

t.test('malformed texts are rejected with a specific message', async t => {
  const cases: Array<[string, RegExp]> = [
    ['', /empty/],
    ['vol:x/12', /volume must be a decimal number 0\.\.4294967295.*expected vol:VOLUME\/FILEID \(16 hex digits\)/],
    ['vol:3/0000000000000abc ', /whitespace/],
    [' vol:3/0000000000000abc', /whitespace/],
    ['vol:3/0000000000000abc\n', /whitespace/],
    ['vol: 3/0000000000000abc', /whitespace/],
    ['0000000000000abc', /no form prefix/],
    ['VOL:3/0000000000000abc', /unknown form prefix "VOL"/],
    ['volume:3/0000000000000abc', /unknown form prefix "volume"/],
    [':3/0000000000000abc', /unknown form prefix ""/],
    ['vol:3', /missing "\/FILEID"/],
    ['vol:3/', /file id "" must be exactly 16/],
    ['vol:3/abc', /file id "abc" must be exactly 16 hex digits, got 3/],
    ['vol:3/00000000000000abc', /got 17/],
    ['vol:3/0000000000000ABC', /lowercase/],
    ['vol:3/000000000000zabc', /16 lowercase hex digits/],
    ['vol:3/0000000000000abc/x', /more than one "\/"/],
    ['vol:03/0000000000000abc', /volume must be a decimal number/],
    ['vol:00/0000000000000abc', /volume must be a decimal number/],
    ['vol:+3/0000000000000abc', /volume must be a decimal number/],
    ['vol:-3/0000000000000abc', /volume must be a decimal number/],
    ['vol:3.0/0000000000000abc', /volume must be a decimal number/],
    ['vol:1e3/0000000000000abc', /volume must be a decimal number/],
    ['vol:0x10/0000000000000abc', /volume must be a decimal number/],
    ['vol:/0000000000000abc', /volume must be a decimal number/],
    ['vol:4294967296/0000000000000abc', /volume must be a decimal number 0\.\.4294967295, got "4294967296"/],
    ['vol:99999999999999999999/0000000000000abc', /volume must be a decimal number/],
    ['mir:x/0000000000000abc', /expected mir:VOLUME\/FILEID/],
    ['mir:4294967296/0000000000000abc', /volume must be/],
    ['idx:10/0000000000000abc', /expected VOLUME\.INDEX, got "10".*expected idx:VOLUME\.INDEX\/FILEID/],
    ['idx:10.5.1/0000000000000abc', /expected VOLUME\.INDEX/],
    ['idx:10./0000000000000abc', /index must be a decimal number/],
    ['idx:.5/0000000000000abc', /volume must be a decimal number/],
    ['idx:10.05/0000000000000abc', /index must be a decimal number/],
    ['idx:10.281474976710656/0000000000000abc', /index must be a decimal number 0\.\.281474976710655/],
    ['idx:4294967296.1/0000000000000abc', /volume must be/],
    ['phys:a/0000000000000abc', /exactly one ":" between server and device/],
    ['phys:a:b:c/0000000000000abc', /exactly one ":"/],
    ['phys::d0/0000000000000abc', /server name "" must not be empty/],
    ['phys:s:/0000000000000abc', /device name "" must not be empty/],
    ['phys:.s:d0/0000000000000abc', /server name ".s" must not start with "."/],
    ['phys:s:-d/0000000000000abc', /device name "-d" must not start with "-"/],
    ['phys:s:..\\x/0000000000000abc', /must not start with "\."/],
    ['phys:s:d\u00e9/0000000000000abc', /contains "é"/],
    ['phys:s*:d/0000000000000abc', /server name "s\*" contains "\*"/],
    [`phys:${'a'.repeat(65)}:d/0000000000000abc`, /65 characters long; at most 64/],
    ['phys:s:d/0000000000000abcd', /got 17.*expected phys:SERVER:DEVICE\/FILEID/],
    ['vol:3/0000000000000ab\0', /16 lowercase hex/]
  ]
  for (const [text, re] of cases) {
    t.throws(() => parseBSL(text), BSLFormatError, JSON.stringify(text))
    t.throws(() => parseBSL(text), re, JSON.stringify(text))
    t.throws(() => parseBSL(text), /^bad BSL /)
  }
  t.throws(() => parseBSL('vol:x/12'), {
    message: 'bad BSL "vol:x/12": volume must be a decimal number 0..4294967295, got "x"; expected vol:VOLUME/FILEID (16 hex digits)'
  })
  t.throws(() => parseBSL(undefined as unknown as string), /expected a string/)
  // Fuzz: random strings never crash with anything but BSLFormatError, and anything accepted round-trips exactly.
  fc.assert(fc.property(fc.string({ maxLength: 40 }), s => {
    try {
      return formatBSL(parseBSL(s)) === s
    } catch (err) {
      return err instanceof BSLFormatError
    }
  }), runs)
})

t.test('malformed buffers are rejected with a specific message', async t => {
  const good = encodeBSL({ form: 'indexed', volume: 1, index: 2, fileId: 3n })
  const phys = encodeBSL({ form: 'physical', server: 'sv', device: 'dv', fileId: 3n })
  const h = (s: string): Buffer => Buffer.from(s, 'hex')
  const cases: Array<[Uint8Array, RegExp]> = [
    [Buffer.alloc(0), /empty buffer/],
    [h('00'), /format version 0; this bslfs reads version 1/],
    [h('22' + '00'.repeat(12)), /format version 2/],
    [h('f2' + '00'.repeat(12)), /format version 15/],
    [h('10' + '00'.repeat(12)), /unknown form code 0/],
    [h('15' + '00'.repeat(12)), /unknown form code 5/],
    [h('1f'), /unknown form code 15/],
    [h('12'), /logical BSL: 1 bytes, truncated \(expected 13\)/],
    [h('12' + '00'.repeat(11)), /truncated \(expected 13\)/],
    [h('12' + '00'.repeat(13)), /logical BSL: 1 trailing bytes/],
    [h('13' + '00'.repeat(14)), /mirrored BSL: 2 trailing bytes/],
    [good.subarray(0, 18), /indexed BSL: 18 bytes, truncated \(expected 19\)/],
    [Buffer.concat([good, h('00')]), /indexed BSL: 1 trailing bytes/],
    [h('11'), /truncated before the server name length/],
    [h('1100'), /server name length 0 is out of range 1\.\.64/],
    [h('1141' + '61'.repeat(65)), /server name length 65 is out of range/],
    [h('110561'), /truncated inside the server name/],
    [h('110161'), /truncated before the device name length/],
    [h('11016100'), /device name length 0/],
    [h('1101610162'), /physical BSL: 5 bytes, truncated \(expected 13\)/],
    [phys.subarray(0, phys.length - 1), /truncated/],
    [Buffer.concat([phys, h('ff')]), /1 trailing bytes/],
    [h('11012e0162' + '00'.repeat(8)), /server name "\." must not start with "\."/],
    [h('110161012d' + '00'.repeat(8)), /device name "-" must not start with "-"/],
    [h('110161012f' + '00'.repeat(8)), /device name "\/" contains "\/"/],
    [h('1101610100' + '00'.repeat(8)), /device name "\\u0000" contains/],
    [h('1101e90162' + '00'.repeat(8)), /server name "é" contains "é"/]
  ]
  for (const [buf, re] of cases) {
    t.throws(() => decodeBSL(buf), BSLFormatError, Buffer.from(buf).toString('hex'))
    t.throws(() => decodeBSL(buf), re, Buffer.from(buf).toString('hex'))
  }
  t.throws(() => decodeBSL('12' as unknown as Buffer), /not a byte buffer/)
  // Fuzz: random bytes either decode to something that re-encodes identically, or fail cleanly.
  fc.assert(fc.property(fc.uint8Array({ maxLength: 40 }), bytes => {
    try {
      return encodeBSL(decodeBSL(bytes)).equals(Buffer.from(bytes))
    } catch (err) {
      return err instanceof BSLFormatError
    }
  }), runs)
  // Every single-byte corruption of a valid encoding either fails or decodes to a different BSL.
  const orig = decodeBSL(good)
  for (let i = 0; i < good.length; i++) {
    for (const bit of [1, 0x80]) {
      const c = Buffer.from(good)
      c[i] ^= bit
      let dec: BSL | null = null
      try { dec = decodeBSL(c) } catch (err) { t.ok(err instanceof BSLFormatError) }
      if (dec) t.notOk(sameBSL(dec, orig))
    }
  }
})

t.test('encode and format refuse invalid BSL values', async t => {
  const bad: Array<[unknown, RegExp]> = [
    [{ form: 'logical', volume: -1, fileId: 0n }, /volume must be an integer/],
    [{ form: 'logical', volume: 1.5, fileId: 0n }, /volume must be an integer/],
    [{ form: 'logical', volume: MAX_VOLUME + 1, fileId: 0n }, /volume must be an integer/],
    [{ form: 'logical', volume: 1, fileId: -1n }, /fileId must be a bigint/],
    [{ form: 'logical', volume: 1, fileId: MAX_FILE_ID + 1n }, /fileId must be a bigint/],
    [{ form: 'logical', volume: 1, fileId: 5 }, /fileId must be a bigint/],
    [{ form: 'indexed', volume: 1, index: MAX_INDEX + 1, fileId: 0n }, /index must be an integer/],
    [{ form: 'indexed', volume: 1, fileId: 0n }, /index must be an integer/],
    [{ form: 'physical', server: 'a:b', device: 'd', fileId: 0n }, /bad server name "a:b": contains ":"/],
    [{ form: 'physical', server: 's', device: '', fileId: 0n }, /bad device name "": must not be empty/],
    [{ form: 'weird', volume: 1, fileId: 0n }, /unknown form "weird"/]
  ]
  for (const [b, re] of bad) {
    t.throws(() => encodeBSL(b as BSL), re)
    t.throws(() => formatBSL(b as BSL), re)
    t.throws(() => validateBSL(b as BSL), BSLFormatError)
  }
  t.throws(() => objectIdOf({ form: 'logical', volume: 1, fileId: -1n }), /fileId/)
})

t.test('names and places', async t => {
  t.equal(validName('server', 'host-2.example_x'), 'host-2.example_x')
  t.equal(validName('device', '_'), '_')
  t.equal(validName('device', 'a'.repeat(64)), 'a'.repeat(64))
  t.throws(() => validName('server', ''), { message: 'bad server name "": must not be empty' })
  t.throws(() => validName('device', '..'), /bad device name "\.\.": must not start with "\."/)
  t.throws(() => validName('device', '-rf'), /must not start with "-"/)
  t.throws(() => validName('device', 'a/b'), /contains "\/"/)
  t.throws(() => validName('device', 'a b'), /contains " "/)
  t.throws(() => validName('device', 'a'.repeat(65)), /65 characters long/)
  t.throws(() => validName('device', 5 as unknown as string), /must be a string/)

  t.same(parsePlace('local:d0'), { server: 'local', device: 'd0' })
  t.equal(formatPlace({ server: 's4', device: 'd1' }), 's4:d1')
  const badPlaces: Array<[string, RegExp]> = [
    ['', /empty/],
    ['local', /missing ":"/],
    ['a:b:c', /more than one ":"/],
    [':d0', /server name "" must not be empty/],
    ['local:', /device name "" must not be empty/],
    ['local:d0 ', /device name "d0 " contains " "/],
    ['local:../x', /device name "\.\.\/x" must not start with "\."/],
    ['http://x:1', /more than one ":"/]
  ]
  for (const [text, re] of badPlaces) {
    t.throws(() => parsePlace(text), re, text)
    t.throws(() => parsePlace(text), /expected SERVER:DEVICE, e\.g\. local:d0$/)
  }
  fc.assert(fc.property(name, name, (s, d) => {
    const p = parsePlace(`${s}:${d}`)
    return p.server === s && p.device === d && formatPlace(p) === `${s}:${d}`
  }), runs)
})

function big (_k: string, v: unknown): unknown {
  return typeof v === 'bigint' ? v.toString() + 'n' : v
}
