// Argument checks. The one pointer handed out, ByteView::data, points into a
// JS Uint8Array's backing store: it is read here only for its address and
// length, and each caller either uses it before returning to JS (hashPages)
// or keeps a reference to the typed array for as long as it uses it
// (hashPagesAsync).
#include "args.h"

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <string>

#include "errors.h"

namespace dormant {

uint64_t IntegerArg(const Napi::Value& value, const char* fn, const char* what, uint64_t min, uint64_t max) {
  Napi::Env env = value.Env();
  if (!value.IsNumber()) throw Napi::TypeError::New(env, std::string(fn) + ": " + what + " must be a number");
  double d = value.As<Napi::Number>().DoubleValue();
  // NaN fails every comparison, so it lands in the error branch too.
  if (!(d >= static_cast<double>(min) && d <= static_cast<double>(max)) || std::trunc(d) != d) {
    ThrowNative(env, EINVAL, std::string(fn) + "(" + what + ")");
  }
  return static_cast<uint64_t>(d);
}

uint64_t PageSize() {
  static const uint64_t size = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  return size;
}

ByteView BytesArg(const Napi::Value& value, const char* fn) {
  Napi::Env env = value.Env();
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    throw Napi::TypeError::New(env, std::string(fn) + ": data must be a Buffer or Uint8Array");
  }
  Napi::Uint8Array array = value.As<Napi::Uint8Array>();
  return ByteView{array.Data(), array.ElementLength()};
}

}  // namespace dormant
