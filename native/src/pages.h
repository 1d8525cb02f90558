// Page helpers shared by hash.cc and store.cc: the all-zero test and the
// XXH3-128 in canonical (big-endian) byte order, the same bytes as
// xxhash-addon's XXHash128.hash (through the widest ISA here, xxh3.cc). Callers pass pointers to `n` readable bytes.
#pragma once

#include "xxh3.h"

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace dormant {

/** True when the n bytes at p (n a multiple of 64) are all zero; loads 8 bytes at a time with memcpy (unaligned-safe). */
inline bool IsZeroPage(const uint8_t* p, size_t n) {
  for (size_t at = 0; at < n; at += 64) {
    uint64_t w[8];
    std::memcpy(w, p + at, sizeof w);
    if ((w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) != 0) return false;
  }
  return true;
}

/** Writes the 16-byte canonical XXH3-128 (seed 0) of the n bytes at p to out. */
inline void CanonicalHash128(const uint8_t* p, size_t n, uint8_t* out) {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, xxh3_128(p, n));
  std::memcpy(out, &c, sizeof c);
}

/** Store blocks are 4 KiB, their hashes 16 bytes. */
constexpr uint64_t kBlockBytes = 4096;
constexpr uint64_t kBlockHashBytes = 16;

/**
 * For each of the n 4 KiB blocks at data: zero[i] = 1 (hashes left as they
 * are) when it is all zeroes, else zero[i] = 0 and its canonical XXH3-128 at
 * hashes[i*16, +16). Returns the number of zero blocks. The caller checks
 * that data holds n blocks, hashes n*16 bytes and zero n bytes.
 */
inline uint64_t HashBlockRun(const uint8_t* data, uint64_t n, uint8_t* hashes, uint8_t* zero) {
  uint64_t zeros = 0;
  for (uint64_t i = 0; i < n; i++) {
    const uint8_t* p = data + i * kBlockBytes;
    if (IsZeroPage(p, kBlockBytes)) {
      zero[i] = 1;
      zeros++;
    } else {
      zero[i] = 0;
      CanonicalHash128(p, kBlockBytes, hashes + i * kBlockHashBytes);
    }
  }
  return zeros;
}

}  // namespace dormant
