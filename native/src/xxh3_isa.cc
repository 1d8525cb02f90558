// XXH3-128 compiled for one instruction set (DORMANT_XXH3_ISA names it):
// binding.gyp builds this file once per ISA with that ISA's compiler flags
// (-mavx2, -mavx512f), and xxh3.cc picks the widest the CPU and the kernel
// support at load time. Every variant computes the same hash (xxHash
// guarantees it; native.test.ts checks it), only faster: wider vectors do
// more of each block per instruction, most of all on data in the cache
// (figures: docs/benchmarks.md, "Figures behind design choices").
//
// XXH_INLINE_ALL makes every xxHash function static in this translation
// unit, so the variants cannot collide at link time: the one exported
// symbol per variant is the function below.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <cstddef>

#ifndef DORMANT_XXH3_ISA
#error "DORMANT_XXH3_ISA must name the variant (binding.gyp sets it)"
#endif
#define DORMANT_CONCAT2(a, b) a##b
#define DORMANT_CONCAT(a, b) DORMANT_CONCAT2(a, b)

extern "C" XXH128_hash_t DORMANT_CONCAT(dormant_xxh3_128_, DORMANT_XXH3_ISA)(const void* p, size_t n) {
  return XXH3_128bits(p, n);
}
