// NativeError construction: an errno plus the syscall that returned it,
// turned into a JS Error with code/errno/syscall fields. The TypeScript
// wrapper (src/native/index.ts) re-types these as NativeError.
#pragma once

#include <napi.h>

#include <string>

namespace dormant {

/** The symbolic name of an errno ("ESRCH"), or "E<number>" when unknown. */
std::string ErrnoName(int err);

/** A JS Error "syscall: CODE (description)" with code, errno and syscall set. */
Napi::Error NativeError(Napi::Env env, int err, const std::string& syscall);

/** Throws NativeError(env, err, syscall) as a C++ exception (NAPI_CPP_EXCEPTIONS). */
[[noreturn]] void ThrowNative(Napi::Env env, int err, const std::string& syscall);

}  // namespace dormant
