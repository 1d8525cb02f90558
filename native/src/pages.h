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

}  // namespace dormant
