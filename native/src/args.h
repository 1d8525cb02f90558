// Argument checks shared by the bindings. Wrong JS types throw TypeError;
// values of the right type that are out of range throw NativeError EINVAL
// (tagged with the function name), so a bad call never reaches a syscall.
#pragma once

#include <napi.h>

#include <cstdint>

namespace dormant {

/** A JS number that is an integer in [min, max] (max <= 2^53), else EINVAL. */
uint64_t IntegerArg(const Napi::Value& value, const char* fn, const char* what, uint64_t min, uint64_t max);

/**
 * Largest range the residency calls accept (1 TiB: a 256 MiB bitmap). V8
 * aborts the process when it cannot allocate an ArrayBuffer, so the bitmap
 * size is bounded before anything is allocated.
 */
constexpr uint64_t kMaxResidencyBytes = 1ULL << 40;

/** The system page size, cached at load. */
uint64_t PageSize();

/** Bytes of a Uint8Array/Buffer argument; the pointer is valid only while the JS object lives and is not detached. */
struct ByteView {
  const uint8_t* data;
  size_t length;
};
ByteView BytesArg(const Napi::Value& value, const char* fn);

}  // namespace dormant
