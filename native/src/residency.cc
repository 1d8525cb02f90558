// fileResidency: which pages of a file range are in the page cache, seen from
// our own process: mmap(PROT_READ, MAP_SHARED) + mincore + munmap, on the
// libuv pool.
// fileCached: the same answer from cachestat(2) (Linux 6.5+), without any
// mapping. The daemon must use this one on the FUSE files it serves: FUSE
// writes a file's dirty pages back when a mapping of it is unmapped
// (fuse_vma_close), and munmap holds our mmap_lock meanwhile, so the JS
// thread's next malloc waits for a write-back only the JS thread can serve.
// cachestat only walks the page cache. A range is split in halves until a
// piece is wholly cached or wholly absent, so a mostly uniform file costs a
// few hundred calls, not one per page.
//
// Why each pointer use is safe:
// - The mapping is never dereferenced. mincore only inspects page tables and
//   the page cache; it does not fault pages in. Touching the bytes could
//   deadlock, since the fd may be a FUSE file served by this very process.
//   (The same reason puts the work on the pool: even mmap of a FUSE file can
//   call into the filesystem.)
// - The mapping is walked in windows of at most kWindow bytes; each window is
//   mapped, passed to mincore with a vector slice of exactly
//   ceil(window/page) bytes starting at its page index, and unmapped before
//   the next, so nothing outlives Execute() and no write lands past `vec_`.
// - The worker only holds plain integers from JS; the result arrays are made
//   on the JS thread in OnOK from the worker's own vector (copied).
// - The range is at most kMaxResidencyBytes (args.h), so the bitmap made in
//   OnOK stays small enough for V8 to allocate (an ArrayBuffer allocation
//   failure aborts the process); a failed vector allocation in Execute is a
//   std::bad_alloc, which AsyncWorker turns into a rejection.
// - If JS closes (or reuses) the fd while the worker runs, mmap fails with
//   EBADF or maps the other file: a wrong answer, never a memory error.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "args.h"
#include "errors.h"

namespace dormant {

namespace {

constexpr uint64_t kMaxSafeInteger = (1ULL << 53) - 1;
constexpr uint64_t kWindow = 1ULL << 30;  // bytes mapped at a time

#ifndef __NR_cachestat
#define __NR_cachestat 451
#endif

struct CachestatRange {
  uint64_t off;
  uint64_t len;
};
struct Cachestat {
  uint64_t nr_cache;
  uint64_t nr_dirty;
  uint64_t nr_writeback;
  uint64_t nr_evicted;
  uint64_t nr_recently_evicted;
};

/** Cached pages of fd's [off, off+len) (len > 0), or -1 with errno set. */
int64_t CachedIn(int fd, uint64_t off, uint64_t len) {
  CachestatRange range{off, len};
  Cachestat cs{};
  if (syscall(__NR_cachestat, fd, &range, &cs, 0) != 0) return -1;
  return static_cast<int64_t>(cs.nr_cache);
}

class ResidencyWorker : public Napi::AsyncWorker {
 public:
  ResidencyWorker(Napi::Env env, int fd, uint64_t offset, uint64_t length, bool cachestat)
      : Napi::AsyncWorker(env, "dormant:fileResidency"), deferred_(Napi::Promise::Deferred::New(env)),
        fd_(fd), offset_(offset), length_(length), cachestat_(cachestat) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    uint64_t page = PageSize();
    uint64_t pages = (length_ + page - 1) / page;
    vec_.assign(pages, 0);
    if (cachestat_) {
      if (pages > 0 && !Split(0, pages)) return;
      for (uint8_t v : vec_) present_ += v;
      return;
    }
    for (uint64_t at = 0; at < length_; at += kWindow) {
      size_t window = static_cast<size_t>(std::min(kWindow, length_ - at));
      void* map = mmap(nullptr, window, PROT_READ, MAP_SHARED, fd_, static_cast<off_t>(offset_ + at));
      if (map == MAP_FAILED) {
        Fail(errno, "mmap");
        return;
      }
      int r = mincore(map, window, vec_.data() + at / page);
      int mincore_errno = errno;
      munmap(map, window);
      if (r != 0) {
        Fail(mincore_errno, "mincore");
        return;
      }
    }
    for (uint8_t& v : vec_) {
      v &= 1;  // the other bits are reserved
      present_ += v;
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_ != 0) {
      deferred_.Reject(NativeError(env, err_, syscall_).Value());
      return;
    }
    Napi::Uint8Array bitmap = Napi::Uint8Array::New(env, vec_.size());
    if (!vec_.empty()) std::memcpy(bitmap.Data(), vec_.data(), vec_.size());
    Napi::Object result = Napi::Object::New(env);
    result.Set("present", Napi::Number::New(env, static_cast<double>(present_)));
    result.Set("total", Napi::Number::New(env, static_cast<double>(vec_.size())));
    result.Set("bitmap", bitmap);
    deferred_.Resolve(result);
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  /** Fills vec_[first, first+count) from cachestat, halving mixed pieces; false after a failure. */
  bool Split(uint64_t first, uint64_t count) {
    uint64_t page = PageSize();
    int64_t n = CachedIn(fd_, offset_ + first * page, count * page);
    if (n < 0) {
      Fail(errno, "cachestat");
      return false;
    }
    if (n == 0) return true;
    if (static_cast<uint64_t>(n) >= count) {
      std::memset(vec_.data() + first, 1, count);  // first + count <= vec_.size() by construction
      return true;
    }
    uint64_t half = count / 2;  // count >= 2 here: a one-page piece is 0 or 1
    return Split(first, half) && Split(first + half, count - half);
  }

  void Fail(int err, const char* syscall) {
    err_ = err;
    syscall_ = syscall;
  }

  Napi::Promise::Deferred deferred_;
  int fd_;
  uint64_t offset_;
  uint64_t length_;
  bool cachestat_;
  std::vector<uint8_t> vec_;
  uint64_t present_ = 0;
  int err_ = 0;
  std::string syscall_;
};

}  // namespace

static Napi::Value Residency(const Napi::CallbackInfo& info, const char* fn, bool cachestat) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(IntegerArg(info[0], fn, "fd", 0, INT32_MAX));
  uint64_t offset = IntegerArg(info[1], fn, "offset", 0, kMaxSafeInteger);
  uint64_t length = IntegerArg(info[2], fn, "length", 0, kMaxResidencyBytes);
  if (offset % PageSize() != 0) ThrowNative(env, EINVAL, (std::string(fn) + "(offset alignment)").c_str());
  auto* worker = new ResidencyWorker(env, fd, offset, length, cachestat);
  Napi::Promise promise = worker->Promise();
  worker->Queue();  // libuv owns and deletes the worker after OnOK/OnError
  return promise;
}

Napi::Value FileResidency(const Napi::CallbackInfo& info) { return Residency(info, "fileResidency", false); }
Napi::Value FileCached(const Napi::CallbackInfo& info) { return Residency(info, "fileCached", true); }

}  // namespace dormant

// fileAdvise: posix_fadvise(2) on the libuv pool. DONTNEED drops the clean,
// unmapped page-cache pages of a range (after starting write-back of dirty
// ones), which MADV_PAGEOUT on QEMU's mapping never sees: pages read ahead
// around a fault but not mapped. Only integers cross to the worker.
namespace dormant {

namespace {

class AdviseWorker : public Napi::AsyncWorker {
 public:
  AdviseWorker(Napi::Env env, int fd, uint64_t offset, uint64_t length, int advice)
      : Napi::AsyncWorker(env, "dormant:fileAdvise"), deferred_(Napi::Promise::Deferred::New(env)),
        fd_(fd), offset_(offset), length_(length), advice_(advice) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    err_ = posix_fadvise(fd_, static_cast<off_t>(offset_), static_cast<off_t>(length_), advice_);  // returns the errno
  }

  void OnOK() override {
    if (err_ != 0) {
      deferred_.Reject(NativeError(Env(), err_, "posix_fadvise").Value());
      return;
    }
    deferred_.Resolve(Env().Undefined());
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  int fd_;
  uint64_t offset_;
  uint64_t length_;
  int advice_;
  int err_ = 0;
};

}  // namespace

Napi::Value FileAdvise(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(IntegerArg(info[0], "fileAdvise", "fd", 0, INT32_MAX));
  uint64_t offset = IntegerArg(info[1], "fileAdvise", "offset", 0, (1ULL << 53) - 1);
  uint64_t length = IntegerArg(info[2], "fileAdvise", "length", 0, (1ULL << 53) - 1);
  if (!info[3].IsString()) throw Napi::TypeError::New(env, "fileAdvise: advice must be 'dontneed' or 'willneed'");
  std::string name = info[3].As<Napi::String>().Utf8Value();
  int advice = 0;
  if (name == "dontneed") advice = POSIX_FADV_DONTNEED;
  else if (name == "willneed") advice = POSIX_FADV_WILLNEED;
  else ThrowNative(env, EINVAL, "fileAdvise(advice)");
  auto* worker = new AdviseWorker(env, fd, offset, length, advice);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace dormant
