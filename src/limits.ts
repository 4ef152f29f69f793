/**
 * The largest block bslfs allows (init --block-size), and so the largest
 * object a device stores, a block server accepts and a range may ask for.
 * Frames of the read stream carry offsets and lengths as u32, well above it.
 */
export const MAX_BLOCK_BYTES = 64 * 1024 * 1024
