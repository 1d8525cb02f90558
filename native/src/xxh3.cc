// Picks the XXH3-128 variant (xxh3_isa.cc) once, when the addon loads: the
// widest of AVX-512, AVX2 and the baseline (SSE2 on x86-64) that both the
// CPU and the kernel support (__builtin_cpu_supports checks both: CPUID
// and the register state the kernel saves, XCR0). DORMANT_XXH3=sse2|avx2|
// avx512 forces a narrower one (tests compare the variants); asking for
// one the machine cannot run falls back to the choice above.
#include "xxh3.h"

#include <cstdlib>
#include <cstring>

extern "C" XXH128_hash_t dormant_xxh3_128_base(const void* p, size_t n);
#if defined(__x86_64__)
extern "C" XXH128_hash_t dormant_xxh3_128_avx2(const void* p, size_t n);
extern "C" XXH128_hash_t dormant_xxh3_128_avx512(const void* p, size_t n);
#endif

namespace dormant {

namespace {

struct Choice {
  Xxh3Fn fn;
  const char* name;
};

Choice Choose() {
  const char* forced = std::getenv("DORMANT_XXH3");
  auto allowed = [forced](const char* name) { return forced == nullptr || std::strcmp(forced, name) == 0; };
#if defined(__x86_64__)
  __builtin_cpu_init();
  bool avx512 = __builtin_cpu_supports("avx512f");
  bool avx2 = __builtin_cpu_supports("avx2");
  if (avx512 && allowed("avx512")) return {dormant_xxh3_128_avx512, "avx512"};
  if (avx2 && (allowed("avx2") || (forced != nullptr && std::strcmp(forced, "avx512") == 0))) {
    return {dormant_xxh3_128_avx2, "avx2"};
  }
  return {dormant_xxh3_128_base, "sse2"};
#else
  return {dormant_xxh3_128_base, "base"};
#endif
}

const Choice kChoice = Choose();

}  // namespace

Xxh3Fn xxh3_128 = kChoice.fn;

const char* Xxh3Isa() { return kChoice.name; }

}  // namespace dormant
