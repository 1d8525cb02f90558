// hashPages / hashPagesAsync: XXH3-128 and an all-zero flag per page.
//
// Why each pointer use is safe:
// - Input bytes are read through ByteView (pointer + length taken from the
//   Uint8Array on the JS thread). Every page read is [i*pageSize,
//   (i+1)*pageSize) with i < length/pageSize, and length % pageSize == 0 is
//   checked first, so no read passes the end.
// - hashPages runs to completion before returning to JS, so the array cannot
//   be collected meanwhile. hashPagesAsync keeps a persistent reference to the
//   array until OnOK/OnError, so it cannot be collected while the pool thread
//   reads it. The one thing a reference cannot stop is a detach (transferring
//   the ArrayBuffer to a worker thread): the caller must not transfer a buffer
//   while it is being hashed (documented on the TypeScript side).
// - Output goes to worker-owned vectors sized pages*16 and pages, copied into
//   fresh JS arrays on the JS thread in OnOK.
// - Zero detection loads 8 bytes at a time with memcpy, which compiles to
//   plain (unaligned-safe) loads: a Uint8Array may start at any byte offset.
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "args.h"
#include "errors.h"
#include "pages.h"

namespace dormant {

namespace {

constexpr uint64_t kHashSize = 16;
constexpr uint64_t kMinPageSize = 512;
constexpr uint64_t kMaxPageSize = 1ULL << 30;

struct Hashed {
  std::vector<uint8_t> hashes;
  std::vector<uint8_t> zero;
  uint64_t pages = 0;
};

// Same bytes as xxhash-addon's XXHash128.hash(page): XXH3-128, seed 0, in
// canonical (big-endian) form.
void HashAll(const uint8_t* data, uint64_t length, uint64_t page_size, Hashed* out) {
  out->pages = length / page_size;
  out->hashes.resize(out->pages * kHashSize);
  out->zero.resize(out->pages);
  XXH128_canonical_t zero_hash;
  bool have_zero_hash = false;
  for (uint64_t i = 0; i < out->pages; i++) {
    const uint8_t* p = data + i * page_size;
    XXH128_canonical_t canonical;
    if (IsZeroPage(p, page_size)) {
      out->zero[i] = 1;
      if (!have_zero_hash) {
        XXH128_canonicalFromHash(&zero_hash, xxh3_128(p, page_size));
        have_zero_hash = true;
      }
      canonical = zero_hash;
    } else {
      XXH128_canonicalFromHash(&canonical, xxh3_128(p, page_size));
    }
    std::memcpy(out->hashes.data() + i * kHashSize, &canonical, kHashSize);
  }
}

uint64_t PageSizeArg(const Napi::Value& value, uint64_t length) {
  uint64_t page_size = 4096;
  if (!value.IsUndefined()) page_size = IntegerArg(value, "hashPages", "pageSize", kMinPageSize, kMaxPageSize);
  if ((page_size & (page_size - 1)) != 0) ThrowNative(value.Env(), EINVAL, "hashPages(pageSize)");
  if (length % page_size != 0) ThrowNative(value.Env(), EINVAL, "hashPages(length)");
  return page_size;
}

Napi::Object ToJs(Napi::Env env, const Hashed& h) {
  Napi::Object result = Napi::Object::New(env);
  result.Set("hashes", Napi::Buffer<uint8_t>::Copy(env, h.hashes.data(), h.hashes.size()));
  Napi::Uint8Array zero = Napi::Uint8Array::New(env, h.zero.size());
  if (!h.zero.empty()) std::memcpy(zero.Data(), h.zero.data(), h.zero.size());
  result.Set("zero", zero);
  result.Set("pages", Napi::Number::New(env, static_cast<double>(h.pages)));
  return result;
}

class HashWorker : public Napi::AsyncWorker {
 public:
  HashWorker(Napi::Env env, Napi::Object array, ByteView view, uint64_t page_size)
      : Napi::AsyncWorker(env, "dormant:hashPages"), deferred_(Napi::Promise::Deferred::New(env)),
        array_(Napi::Persistent(array)), view_(view), page_size_(page_size) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override { HashAll(view_.data, view_.length, page_size_, &out_); }

  void OnOK() override {
    array_.Reset();
    deferred_.Resolve(ToJs(Env(), out_));
  }

  void OnError(const Napi::Error& e) override {
    array_.Reset();
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference array_;  // keeps the input alive while Execute reads it
  ByteView view_;
  uint64_t page_size_;
  Hashed out_;
};

}  // namespace

Napi::Value HashPages(const Napi::CallbackInfo& info) {
  ByteView view = BytesArg(info[0], "hashPages");
  uint64_t page_size = PageSizeArg(info[1], view.length);
  Hashed out;
  HashAll(view.data, view.length, page_size, &out);
  return ToJs(info.Env(), out);
}

Napi::Value HashPagesAsync(const Napi::CallbackInfo& info) {
  ByteView view = BytesArg(info[0], "hashPages");
  uint64_t page_size = PageSizeArg(info[1], view.length);
  auto* worker = new HashWorker(info.Env(), info[0].As<Napi::Object>(), view, page_size);
  Napi::Promise promise = worker->Promise();
  worker->Queue();  // libuv owns and deletes the worker after OnOK/OnError
  return promise;
}

}  // namespace dormant
