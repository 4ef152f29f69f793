/**
 * The size limits of the block server's protocol, each defined once and read
 * by both sides. The largest object (a block) is MAX_BLOCK_BYTES of
 * src/limits.ts: a server's default limit, and what a client accepts.
 */

/** A request target longer than this is refused with 414 before it is looked at. */
export const MAX_TARGET_LENGTH = 4096
/** How much of an error answer is read for its message; the rest is dropped. */
export const ERROR_BODY_LIMIT = 16 * 1024
/** The largest small answer (JSON: health, space) a client takes. */
export const JSON_BODY_LIMIT = 64 * 1024
/** The longest line a listing may hold (an id is 16 characters). */
export const LIST_LINE_LIMIT = 1024
/** The longest answer to a stream's upgrade request (headers and error body) a client reads. */
export const HANDSHAKE_LIMIT = 16 * 1024
/** An unauthenticated request's body is read (and dropped) only up to this size; a larger one closes the connection. */
export const UNAUTHENTICATED_BODY_LIMIT = 64 * 1024
