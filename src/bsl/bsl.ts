/**
 * The block storage locator (BSL): the name of one block, in four forms.
 *
 * - physical: names (server, device) directly;
 * - logical:  a volume, resolved through the volume table;
 * - mirrored: a volume resolved through the mirror table;
 * - indexed:  a volume plus the block's index within its file.
 *
 * Every form carries a file id, which is also the name of the block object on
 * a device (`objectIdOf`). There is a compact binary form for LevelDB and a
 * text form for people; both parsers are strict and never guess.
 */

export type BSL =
  | { form: 'physical', server: string, device: string, fileId: bigint }
  | { form: 'logical', volume: number, fileId: bigint }
  | { form: 'mirrored', volume: number, fileId: bigint }
  | { form: 'indexed', volume: number, index: number, fileId: bigint }

export type BSLForm = BSL['form']

/** A malformed BSL, object id or name, in any representation. */
export class BSLFormatError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'BSLFormatError'
  }
}

export const MAX_FILE_ID = (1n << 64n) - 1n
export const MAX_VOLUME = 0xffff_ffff
export const MAX_INDEX = 2 ** 48 - 1
export const MAX_NAME_LENGTH = 64

/** Current binary format version, stored in the high nibble of the tag byte. */
export const BSL_FORMAT_VERSION = 1

// Low nibble of the tag byte. 0 is left unused so an all-zero buffer is never a BSL.
const FORM_CODE: Record<BSLForm, number> = { physical: 1, logical: 2, mirrored: 3, indexed: 4 }
const CODE_FORM: Record<number, BSLForm> = { 1: 'physical', 2: 'logical', 3: 'mirrored', 4: 'indexed' }

const NAME_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/
const OBJECT_ID_RE = /^[0-9a-f]{16}$/
const DECIMAL_RE = /^(?:0|[1-9][0-9]*)$/

/** A string quoted for an error message: escapes made visible, long input cut short. */
function show (s: string): string {
  const cut = s.length > 80 ? s.slice(0, 80) + '…' : s
  return JSON.stringify(cut)
}

function nameProblem (s: unknown): string | null {
  if (typeof s !== 'string') return `must be a string, not ${typeof s}`
  if (s.length === 0) return 'must not be empty'
  if (s.length > MAX_NAME_LENGTH) return `is ${s.length} characters long; at most ${MAX_NAME_LENGTH} are allowed`
  if (s[0] === '.' || s[0] === '-') return `must not start with "${s[0]}"`
  if (!NAME_RE.test(s)) {
    const bad = [...s].find(c => !/[A-Za-z0-9_.-]/.test(c)) ?? ''
    return `contains ${JSON.stringify(bad)}; only letters, digits, "_", "." and "-" are allowed`
  }
  return null
}

/** True when `s` is a valid server or device name. */
export function isValidName (s: unknown): s is string {
  return nameProblem(s) === null
}

/**
 * Checks a server or device name: 1–64 characters of [A-Za-z0-9_.-], not
 * starting with "." or "-" (so a name is never a path component like ".." or
 * an option like "-f"). Throws BSLFormatError saying what is wrong.
 */
export function validName (kind: 'server' | 'device', s: string): string {
  const problem = nameProblem(s)
  if (problem !== null) {
    const shown = typeof s === 'string' ? ` ${show(s)}` : ''
    throw new BSLFormatError(`bad ${kind} name${shown}: ${problem}`)
  }
  return s
}

function isU64 (n: unknown): n is bigint {
  return typeof n === 'bigint' && n >= 0n && n <= MAX_FILE_ID
}

function isIntIn (n: unknown, max: number): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n >= 0 && n <= max
}

/** Checks a BSL value built in code (not parsed); throws BSLFormatError naming the bad field. */
export function validateBSL (bsl: BSL): BSL {
  const b = bsl as unknown as Record<string, unknown>
  if (b === null || typeof b !== 'object') throw new BSLFormatError('bad BSL: not an object')
  const form = b.form
  if (typeof form !== 'string' || !(form in FORM_CODE)) {
    throw new BSLFormatError(`bad BSL: unknown form ${JSON.stringify(form)}; expected physical, logical, mirrored or indexed`)
  }
  if (!isU64(b.fileId)) {
    throw new BSLFormatError(`bad ${form} BSL: fileId must be a bigint 0..${MAX_FILE_ID}, got ${String(b.fileId)}`)
  }
  if (form === 'physical') {
    validName('server', b.server as string)
    validName('device', b.device as string)
  } else {
    if (!isIntIn(b.volume, MAX_VOLUME)) {
      throw new BSLFormatError(`bad ${form} BSL: volume must be an integer 0..${MAX_VOLUME}, got ${String(b.volume)}`)
    }
    if (form === 'indexed' && !isIntIn(b.index, MAX_INDEX)) {
      throw new BSLFormatError(`bad indexed BSL: index must be an integer 0..${MAX_INDEX}, got ${String(b.index)}`)
    }
  }
  return bsl
}

// ---------------------------------------------------------------------------
// Object ids

/** The name of a BSL's block object on a device: the file id as 16 lowercase hex digits. */
export function objectIdOf (bsl: BSL): string {
  if (!isU64(bsl.fileId)) throw new BSLFormatError(`bad BSL: fileId must be a bigint 0..${MAX_FILE_ID}, got ${String(bsl.fileId)}`)
  return fileIdHex(bsl.fileId)
}

function fileIdHex (id: bigint): string {
  return id.toString(16).padStart(16, '0')
}

/** True for exactly 16 lowercase hex digits: the only strings allowed near a device path. */
export function isObjectId (s: unknown): s is string {
  return typeof s === 'string' && OBJECT_ID_RE.test(s)
}

/** The file id named by an object id; strict (exactly 16 lowercase hex digits). */
export function parseObjectId (s: string): bigint {
  if (!isObjectId(s)) {
    throw new BSLFormatError(`bad object id ${typeof s === 'string' ? show(s) : String(s)}: ${hexProblem(s)}`)
  }
  return BigInt('0x' + s)
}

function hexProblem (s: unknown): string {
  if (typeof s !== 'string') return 'must be a string of 16 lowercase hex digits'
  if (/^[0-9a-fA-F]*$/.test(s) && s.length === 16) return 'hex digits must be lowercase'
  if (/^[0-9a-fA-F]+$/.test(s)) return `must be exactly 16 hex digits, got ${s.length}`
  return 'must be exactly 16 lowercase hex digits (0-9, a-f)'
}

// ---------------------------------------------------------------------------
// Binary form
//
//   tag     u8     (version << 4) | form code
//   logical, mirrored:  volume u32 BE, fileId u64 BE                       (13 bytes)
//   indexed:            volume u32 BE, index u48 BE, fileId u64 BE         (19 bytes)
//   physical:           serverLen u8, server, deviceLen u8, device, fileId u64 BE

/** The compact binary form stored in LevelDB. Throws BSLFormatError for an invalid BSL. */
export function encodeBSL (bsl: BSL): Buffer {
  validateBSL(bsl)
  const tag = (BSL_FORMAT_VERSION << 4) | FORM_CODE[bsl.form]
  switch (bsl.form) {
    case 'physical': {
      // Names are validated ASCII, so string length equals byte length.
      const s = bsl.server.length
      const d = bsl.device.length
      const buf = Buffer.allocUnsafe(1 + 1 + s + 1 + d + 8)
      buf[0] = tag
      buf[1] = s
      buf.write(bsl.server, 2, 'latin1')
      buf[2 + s] = d
      buf.write(bsl.device, 3 + s, 'latin1')
      buf.writeBigUInt64BE(bsl.fileId, 3 + s + d)
      return buf
    }
    case 'logical':
    case 'mirrored': {
      const buf = Buffer.allocUnsafe(13)
      buf[0] = tag
      buf.writeUInt32BE(bsl.volume, 1)
      buf.writeBigUInt64BE(bsl.fileId, 5)
      return buf
    }
    case 'indexed': {
      const buf = Buffer.allocUnsafe(19)
      buf[0] = tag
      buf.writeUInt32BE(bsl.volume, 1)
      buf.writeUIntBE(bsl.index, 5, 6)
      buf.writeBigUInt64BE(bsl.fileId, 11)
      return buf
    }
  }
}

function hexByte (n: number): string {
  return '0x' + n.toString(16).padStart(2, '0')
}

/** Decodes `encodeBSL`'s output; anything else is a BSLFormatError saying exactly what is wrong. */
export function decodeBSL (buf: Uint8Array): BSL {
  const { bsl, bytes } = decodeBSLPrefix(buf)
  if (buf.length > bytes) {
    throw new BSLFormatError(`bad encoded ${bsl.form} BSL: ${buf.length - bytes} trailing bytes (expected ${bytes} bytes, got ${buf.length})`)
  }
  return bsl
}

/**
 * Decodes the encoded BSL at the start of `buf` (the encoding is
 * self-delimiting) and says how many bytes it took: records may carry more
 * after it. Throws BSLFormatError as decodeBSL does, except for trailing bytes.
 */
export function decodeBSLPrefix (buf: Uint8Array): { bsl: BSL, bytes: number } {
  if (!(buf instanceof Uint8Array)) throw new BSLFormatError('bad encoded BSL: not a byte buffer')
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength)
  if (b.length === 0) throw new BSLFormatError('bad encoded BSL: empty buffer')
  const tag = b[0]
  const version = tag >> 4
  const form = CODE_FORM[tag & 0x0f]
  if (version !== BSL_FORMAT_VERSION) {
    throw new BSLFormatError(`bad encoded BSL: tag ${hexByte(tag)} has format version ${version}; this bslfs reads version ${BSL_FORMAT_VERSION}`)
  }
  if (form === undefined) {
    throw new BSLFormatError(`bad encoded BSL: tag ${hexByte(tag)} has unknown form code ${tag & 0x0f}`)
  }
  const need = (want: number): number => {
    if (b.length < want) throw new BSLFormatError(`bad encoded ${form} BSL: ${b.length} bytes, truncated (expected ${want})`)
    return want
  }
  switch (form) {
    case 'logical':
    case 'mirrored':
      need(13)
      return { bsl: { form, volume: b.readUInt32BE(1), fileId: b.readBigUInt64BE(5) }, bytes: 13 }
    case 'indexed':
      need(19)
      return { bsl: { form, volume: b.readUInt32BE(1), index: b.readUIntBE(5, 6), fileId: b.readBigUInt64BE(11) }, bytes: 19 }
    case 'physical': {
      let at = 1
      const name = (kind: 'server' | 'device'): string => {
        if (at >= b.length) throw new BSLFormatError(`bad encoded physical BSL: truncated before the ${kind} name length (${b.length} bytes)`)
        const len = b[at]
        if (len === 0 || len > MAX_NAME_LENGTH) {
          throw new BSLFormatError(`bad encoded physical BSL: ${kind} name length ${len} is out of range 1..${MAX_NAME_LENGTH}`)
        }
        if (at + 1 + len > b.length) {
          throw new BSLFormatError(`bad encoded physical BSL: truncated inside the ${kind} name (needs ${len} bytes at offset ${at + 1}, buffer is ${b.length})`)
        }
        const raw = b.subarray(at + 1, at + 1 + len)
        const s = raw.toString('latin1')
        const problem = nameProblem(s)
        if (problem !== null) throw new BSLFormatError(`bad encoded physical BSL: ${kind} name ${show(s)} ${problem}`)
        at += 1 + len
        return s
      }
      const server = name('server')
      const device = name('device')
      const bytes = need(at + 8)
      return { bsl: { form, server, device, fileId: b.readBigUInt64BE(at) }, bytes }
    }
  }
}

// ---------------------------------------------------------------------------
// Text form
//
//   phys:SERVER:DEVICE/FILEID     vol:VOLUME/FILEID
//   mir:VOLUME/FILEID             idx:VOLUME.INDEX/FILEID
//
// FILEID is always 16 lowercase hex digits (the object id); numbers are plain
// decimal without sign, spaces or leading zeros. Names cannot hold ":" or "/",
// so every text has exactly one reading.

const EXPECTED: Record<BSLForm, string> = {
  physical: 'phys:SERVER:DEVICE/FILEID (16 hex digits)',
  logical: 'vol:VOLUME/FILEID (16 hex digits)',
  mirrored: 'mir:VOLUME/FILEID (16 hex digits)',
  indexed: 'idx:VOLUME.INDEX/FILEID (16 hex digits)'
}
const PREFIX_FORM: Record<string, BSLForm> = { phys: 'physical', vol: 'logical', mir: 'mirrored', idx: 'indexed' }

/** The text form printed by the CLI, e.g. `vol:3/0000000000000abc`. */
export function formatBSL (bsl: BSL): string {
  validateBSL(bsl)
  const id = fileIdHex(bsl.fileId)
  switch (bsl.form) {
    case 'physical': return `phys:${bsl.server}:${bsl.device}/${id}`
    case 'logical': return `vol:${bsl.volume}/${id}`
    case 'mirrored': return `mir:${bsl.volume}/${id}`
    case 'indexed': return `idx:${bsl.volume}.${bsl.index}/${id}`
  }
}

function parseDecimal (s: string, max: number): number | null {
  if (!DECIMAL_RE.test(s) || s.length > 16) return null
  const n = Number(s)
  return n <= max ? n : null
}

/** Parses the text form strictly; a BSLFormatError says what was wrong and shows the expected form. */
export function parseBSL (text: string): BSL {
  if (typeof text !== 'string') throw new BSLFormatError(`bad BSL: expected a string, got ${typeof text}`)
  const all = 'expected phys:SERVER:DEVICE/FILEID, vol:VOLUME/FILEID, mir:VOLUME/FILEID or idx:VOLUME.INDEX/FILEID (FILEID is 16 hex digits)'
  const fail = (why: string, form?: BSLForm): never => {
    throw new BSLFormatError(`bad BSL ${show(text)}: ${why}; ${form ? 'expected ' + EXPECTED[form] : all}`)
  }
  if (text.length === 0) fail('empty')
  if (/\s/.test(text)) fail('contains whitespace')
  const colon = text.indexOf(':')
  if (colon < 0) fail('no form prefix')
  const prefix = text.slice(0, colon)
  const form = PREFIX_FORM[prefix]
  if (form === undefined) fail(`unknown form prefix ${show(prefix)} (phys, vol, mir or idx)`)
  const rest = text.slice(colon + 1)
  const slash = rest.indexOf('/')
  if (slash < 0) fail('missing "/FILEID"', form)
  const place = rest.slice(0, slash)
  const idText = rest.slice(slash + 1)

  // Check the place first, left to right, so the first problem a reader sees is reported.
  const volumeOf = (s: string): number => {
    const v = parseDecimal(s, MAX_VOLUME)
    if (v === null) fail(`volume must be a decimal number 0..${MAX_VOLUME}, got ${show(s)}`, form)
    return v as number
  }
  let bsl: BSL
  switch (form) {
    case 'physical': {
      const parts = place.split(':')
      if (parts.length !== 2) fail(`expected exactly one ":" between server and device, got ${show(place)}`, form)
      const [server, device] = parts
      for (const [kind, s] of [['server', server], ['device', device]] as const) {
        const problem = nameProblem(s)
        if (problem !== null) fail(`${kind} name ${show(s)} ${problem}`, form)
      }
      bsl = { form, server, device, fileId: 0n }
      break
    }
    case 'logical':
    case 'mirrored':
      bsl = { form, volume: volumeOf(place), fileId: 0n }
      break
    case 'indexed': {
      const parts = place.split('.')
      if (parts.length !== 2) fail(`expected VOLUME.INDEX, got ${show(place)}`, form)
      const volume = volumeOf(parts[0])
      const index = parseDecimal(parts[1], MAX_INDEX)
      if (index === null) fail(`index must be a decimal number 0..${MAX_INDEX}, got ${show(parts[1])}`, form)
      bsl = { form, volume, index: index as number, fileId: 0n }
      break
    }
    default:
      return fail('unknown form')
  }
  if (idText.includes('/')) fail('more than one "/"', form)
  if (!isObjectId(idText)) fail(`file id ${show(idText)} ${hexProblem(idText)}`, form)
  bsl.fileId = BigInt('0x' + idText)
  return bsl
}

/** True when two BSLs name the same block in the same form. */
export function sameBSL (a: BSL, b: BSL): boolean {
  if (a.form !== b.form || a.fileId !== b.fileId) return false
  switch (a.form) {
    case 'physical': return b.form === 'physical' && a.server === b.server && a.device === b.device
    case 'logical': return b.form === 'logical' && a.volume === b.volume
    case 'mirrored': return b.form === 'mirrored' && a.volume === b.volume
    case 'indexed': return b.form === 'indexed' && a.volume === b.volume && a.index === b.index
  }
}

/** Parses the CLI's `SERVER:DEVICE` argument (e.g. `local:d0`) strictly. */
export function parsePlace (text: string): { server: string, device: string } {
  const fail = (why: string): never => {
    throw new BSLFormatError(`bad place ${typeof text === 'string' ? show(text) : String(text)}: ${why}; expected SERVER:DEVICE, e.g. local:d0`)
  }
  if (typeof text !== 'string') return fail('not a string')
  if (text.length === 0) fail('empty')
  const parts = text.split(':')
  if (parts.length !== 2) fail(parts.length === 1 ? 'missing ":"' : 'more than one ":"')
  const [server, device] = parts
  for (const [kind, s] of [['server', server], ['device', device]] as const) {
    const problem = nameProblem(s)
    if (problem !== null) fail(`${kind} name ${show(s)} ${problem}`)
  }
  return { server, device }
}

/** The text form of a place, the inverse of `parsePlace`. */
export function formatPlace (place: { server: string, device: string }): string {
  return `${validName('server', place.server)}:${validName('device', place.device)}`
}
