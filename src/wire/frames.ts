/**
 * The block server's read stream (version 1): an HTTP/1.1 connection upgraded
 * to binary frames that carry object reads, the requests a mount makes most.
 * It saves each read the HTTP request and answer (their parsing, headers and
 * allocations on both sides), about a third of a small read's time.
 *
 *   GET /v1/stream HTTP/1.1
 *   Connection: Upgrade
 *   Upgrade: bslfs-blocks/1
 *   Authorization: Bearer TOKEN
 *                                       → 101 Switching Protocols, or an HTTP error answer
 *
 * Then the client sends requests and the server answers each one, in any
 * order, matched by the request's id. Numbers are little-endian.
 *
 *   request (32 bytes, then the device name)
 *     0  u8   op: 1 = the whole object, verified on the server; 2 = a range, not verified
 *     1  u8   length of the device name (1..64)
 *     2  u16  0
 *     4  u32  request id (the client's choice; echoed in the answer)
 *     8  u32  op 2: the range's first byte; op 1: 0
 *    12  u32  op 2: the range's length (> 0); op 1: 0
 *    16  u32  op 1: the object's CRC-32 (as X-Bslfs-Checksum); op 2: 0
 *    20  u32  0
 *    24  8 bytes: the object id (16 hex digits as 8 bytes)
 *    32  the device name, ASCII
 *
 *   answer (16 bytes, then `length` bytes)
 *     0  u32  request id
 *     4  u16  status, as in HTTP: 200 (op 1), 206 (op 2) or an error status
 *     6  u16  0
 *     8  u32  length of what follows: the bytes read, or the JSON `{"error","code"}` of an error
 *    12  u32  op 2 answered 206: the object's size (Content-Range's /SIZE); else 0
 *
 * A request the server cannot use (bad op, name or reserved field) is
 * answered 400 on its id; the connection goes on, since the frame's length is
 * known from its header. The error statuses and codes are the HTTP
 * protocol's (./errno-status.ts).
 */

import { MAX_NAME_LENGTH } from '../bsl'

/** The Upgrade token both sides name. */
export const STREAM_PROTOCOL = 'bslfs-blocks/1'

export const REQUEST_BYTES = 32
export const ANSWER_BYTES = 16
/** The longest device name a frame carries: the longest a device may have. */
export const MAX_DEVICE_NAME = MAX_NAME_LENGTH

export const OP_OBJECT = 1
export const OP_RANGE = 2

export interface StreamRequest {
  op: typeof OP_OBJECT | typeof OP_RANGE
  id: number
  device: string
  objectId: string
  /** OP_RANGE: first byte and length. */
  offset: number
  length: number
  /** OP_OBJECT: the object's CRC-32. */
  sum: number
}

export interface AnswerHeader {
  id: number
  status: number
  length: number
  /** The object's size, on a 206. */
  size: number
}

/** The frame of a request; the caller has checked its fields (names, id, u32 ranges). */
export function encodeRequest (r: StreamRequest): Buffer {
  const name = Buffer.from(r.device, 'latin1')
  const b = Buffer.alloc(REQUEST_BYTES + name.length)
  b[0] = r.op
  b[1] = name.length
  b.writeUInt32LE(r.id, 4)
  b.writeUInt32LE(r.offset, 8)
  b.writeUInt32LE(r.length, 12)
  b.writeUInt32LE(r.sum, 16)
  b.write(r.objectId, 24, 8, 'hex')
  name.copy(b, REQUEST_BYTES)
  return b
}

/** The whole frame's length, from its first REQUEST_BYTES bytes (the name's length is in them). */
export function requestFrameBytes (head: Buffer, at = 0): number {
  return REQUEST_BYTES + head[at + 1]
}

/**
 * A request frame, from `frame` (exactly requestFrameBytes long). Returns the
 * request, or what is wrong with it and the id to answer it on.
 */
export function decodeRequest (frame: Buffer): StreamRequest | { id: number, problem: string } {
  const id = frame.readUInt32LE(4)
  const op = frame[0]
  const nameLength = frame[1]
  if (op !== OP_OBJECT && op !== OP_RANGE) return { id, problem: `unknown op ${op}: must be ${OP_OBJECT} (an object) or ${OP_RANGE} (a range)` }
  if (frame.readUInt16LE(2) !== 0 || frame.readUInt32LE(20) !== 0) return { id, problem: 'reserved fields must be 0' }
  if (nameLength === 0 || nameLength > MAX_DEVICE_NAME) return { id, problem: `device name of ${nameLength} bytes: must be 1..${MAX_DEVICE_NAME}` }
  const offset = frame.readUInt32LE(8)
  const length = frame.readUInt32LE(12)
  const sum = frame.readUInt32LE(16)
  if (op === OP_OBJECT && (offset !== 0 || length !== 0)) return { id, problem: 'an object request has no offset or length' }
  if (op === OP_RANGE && (length === 0 || sum !== 0)) return { id, problem: 'a range request needs a length and no checksum' }
  return {
    op,
    id,
    offset,
    length,
    sum,
    objectId: frame.toString('hex', 24, 32),
    device: frame.toString('latin1', REQUEST_BYTES, REQUEST_BYTES + nameLength)
  }
}

/** An answer's header. */
export function encodeAnswer (a: AnswerHeader): Buffer {
  const b = Buffer.allocUnsafe(ANSWER_BYTES)
  b.writeUInt32LE(a.id, 0)
  b.writeUInt16LE(a.status, 4)
  b.writeUInt16LE(0, 6)
  b.writeUInt32LE(a.length, 8)
  b.writeUInt32LE(a.size, 12)
  return b
}

/** An answer's header from ANSWER_BYTES bytes at `at`. */
export function decodeAnswer (b: Buffer, at = 0): AnswerHeader {
  return {
    id: b.readUInt32LE(at),
    status: b.readUInt16LE(at + 4),
    length: b.readUInt32LE(at + 8),
    size: b.readUInt32LE(at + 12)
  }
}
