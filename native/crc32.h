// CRC-32, zlib's polynomial: crc32_bytes(0, buf, len) equals zlib's crc32(0, buf, len), and a
// running value continues as zlib's does. Safe from any thread.
#ifndef BSLFS_CRC32_H
#define BSLFS_CRC32_H

#include <stddef.h>
#include <stdint.h>

uint32_t crc32_bytes (uint32_t crc, const uint8_t *buf, size_t len);

/** 1 when the carry-less multiply path is in use (this CPU has PCLMULQDQ), else 0. */
int crc32_folds (void);

#endif
