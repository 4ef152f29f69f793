// CRC-32 with zlib's polynomial (the checksum every bslfs block carries), for the pool
// threads of object_io.c. The zlib inside node computes it at ~185 us per MiB here (its
// SIMD path is never switched on); folding with carry-less multiplication (PCLMULQDQ, as
// Chromium's zlib and the Linux kernel do it) takes ~40. Without PCLMUL, slicing by 8.
//
// The folding constants are those of Intel's "Fast CRC Computation for Generic Polynomials
// Using PCLMULQDQ Instruction" for the bit-reflected polynomial 0xedb88320.
#include "crc32.h"

#include <pthread.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define HAVE_FOLD 1
#endif

static uint32_t table[8][256];
static int use_fold;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void setup (void) {
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = n;
    for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0xedb88320u : c >> 1;
    table[0][n] = c;
  }
  for (uint32_t n = 0; n < 256; n++) {
    for (int k = 1; k < 8; k++) table[k][n] = (table[k - 1][n] >> 8) ^ table[0][table[k - 1][n] & 0xff];
  }
#ifdef HAVE_FOLD
  __builtin_cpu_init();
  use_fold = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
#endif
}

// On the pre- and post-inverted value, as zlib's inner loop.
static uint32_t slice8 (uint32_t c, const uint8_t *p, size_t len) {
  while (len >= 8) {
    uint32_t lo = c ^ ((uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 | (uint32_t) p[3] << 24);
    c = table[7][lo & 0xff] ^ table[6][(lo >> 8) & 0xff] ^ table[5][(lo >> 16) & 0xff] ^ table[4][lo >> 24] ^
        table[3][p[4]] ^ table[2][p[5]] ^ table[1][p[6]] ^ table[0][p[7]];
    p += 8;
    len -= 8;
  }
  while (len--) c = table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
  return c;
}

#ifdef HAVE_FOLD
// len >= 64 and a multiple of 16; c is the inverted running value.
__attribute__((target("sse4.1,pclmul")))
static uint32_t fold (uint32_t c, const uint8_t *buf, size_t len) {
  const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596, 0x0154442bd4);
  const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009e, 0x01751997d0);
  const __m128i k5k0 = _mm_set_epi64x(0, 0x0163cd6124);
  const __m128i poly = _mm_set_epi64x(0x01f7011641, 0x01db710641);
  __m128i x0, x1, x2, x3, x4, x5, x6, x7, x8;

  x1 = _mm_loadu_si128((const __m128i *) (buf + 0x00));
  x2 = _mm_loadu_si128((const __m128i *) (buf + 0x10));
  x3 = _mm_loadu_si128((const __m128i *) (buf + 0x20));
  x4 = _mm_loadu_si128((const __m128i *) (buf + 0x30));
  x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int) c));
  buf += 64;
  len -= 64;

  // Four lanes of 128 bits, each folded 512 bits forward per step.
  x0 = k1k2;
  while (len >= 64) {
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x6 = _mm_clmulepi64_si128(x2, x0, 0x00);
    x7 = _mm_clmulepi64_si128(x3, x0, 0x00);
    x8 = _mm_clmulepi64_si128(x4, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x11);
    x3 = _mm_clmulepi64_si128(x3, x0, 0x11);
    x4 = _mm_clmulepi64_si128(x4, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x5), _mm_loadu_si128((const __m128i *) (buf + 0x00)));
    x2 = _mm_xor_si128(_mm_xor_si128(x2, x6), _mm_loadu_si128((const __m128i *) (buf + 0x10)));
    x3 = _mm_xor_si128(_mm_xor_si128(x3, x7), _mm_loadu_si128((const __m128i *) (buf + 0x20)));
    x4 = _mm_xor_si128(_mm_xor_si128(x4, x8), _mm_loadu_si128((const __m128i *) (buf + 0x30)));
    buf += 64;
    len -= 64;
  }

  // The four lanes into one.
  x0 = k3k4;
  x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
  x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
  x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
  x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
  x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
  x1 = _mm_xor_si128(_mm_xor_si128(x1, x3), x5);
  x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
  x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
  x1 = _mm_xor_si128(_mm_xor_si128(x1, x4), x5);

  while (len >= 16) {
    x2 = _mm_loadu_si128((const __m128i *) buf);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
    buf += 16;
    len -= 16;
  }

  // 128 bits to 64, then Barrett reduction to 32.
  x2 = _mm_clmulepi64_si128(x1, x0, 0x10);
  x3 = _mm_setr_epi32(~0, 0, ~0, 0);
  x1 = _mm_srli_si128(x1, 8);
  x1 = _mm_xor_si128(x1, x2);
  x0 = k5k0;
  x2 = _mm_srli_si128(x1, 4);
  x1 = _mm_and_si128(x1, x3);
  x1 = _mm_clmulepi64_si128(x1, x0, 0x00);
  x1 = _mm_xor_si128(x1, x2);
  x0 = poly;
  x2 = _mm_and_si128(x1, x3);
  x2 = _mm_clmulepi64_si128(x2, x0, 0x10);
  x2 = _mm_and_si128(x2, x3);
  x2 = _mm_clmulepi64_si128(x2, x0, 0x00);
  x1 = _mm_xor_si128(x1, x2);
  return (uint32_t) _mm_extract_epi32(x1, 1);
}
#endif

uint32_t crc32_bytes (uint32_t crc, const uint8_t *buf, size_t len) {
  pthread_once(&once, setup);
  uint32_t c = ~crc;
#ifdef HAVE_FOLD
  if (use_fold && len >= 64) {
    size_t whole = len & ~(size_t) 15;
    c = fold(c, buf, whole);
    buf += whole;
    len -= whole;
  }
#endif
  return ~slice8(c, buf, len);
}

int crc32_folds (void) {
  pthread_once(&once, setup);
  return use_fold;
}
