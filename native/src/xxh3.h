// XXH3-128 through the widest instruction set this machine runs (xxh3.cc).
#pragma once

#ifndef XXH_INLINE_ALL
#define XXH_INLINE_ALL
#endif
#include <xxhash.h>

#include <cstddef>

namespace dormant {

using Xxh3Fn = XXH128_hash_t (*)(const void*, size_t);

/** The variant chosen at load time (see xxh3.cc); never null. */
extern Xxh3Fn xxh3_128;

/** Name of the variant in use: "avx512", "avx2" or "sse2". */
const char* Xxh3Isa();

}  // namespace dormant
