// Errno naming for NativeError. No pointers outlive a call here:
// strerrorname_np/strerrordesc_np return pointers to static, read-only
// strings in glibc (never freed, thread safe), and both may return NULL for
// an unknown errno, which is checked before use.
#include "errors.h"

#include <string.h>

namespace dormant {

std::string ErrnoName(int err) {
  const char* name = strerrorname_np(err);
  return name != nullptr ? std::string(name) : "E" + std::to_string(err);
}

Napi::Error NativeError(Napi::Env env, int err, const std::string& syscall) {
  const char* desc = strerrordesc_np(err);
  std::string code = ErrnoName(err);
  std::string message = syscall + ": " + code + " (" + (desc != nullptr ? desc : "unknown error") + ")";
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  error.Set("errno", Napi::Number::New(env, err));
  error.Set("syscall", Napi::String::New(env, syscall));
  return error;
}

void ThrowNative(Napi::Env env, int err, const std::string& syscall) {
  throw NativeError(env, err, syscall);
}

}  // namespace dormant
