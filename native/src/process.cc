// Other processes' memory and scheduling: pidfdOpen, processMadvise,
// mappingResidency, setThreadIdle.
//
// Why each pointer use is safe:
// - processMadvise copies every range into a std::vector<iovec> owned by the
//   worker before it is queued, so the libuv thread never touches a JS value.
//   The iovecs hold addresses in the *target* process; the kernel interprets
//   them there and we never dereference them. The vector is only mutated (to
//   resume after a partial return) by the worker thread, and the advance loop
//   never steps past its end.
// - processMadvise runs on the libuv pool because this daemon also serves the
//   FUSE files those pages map: reclaiming or reading them may call back into
//   our own event loop, so a call on the JS thread could deadlock.
// - mappingResidency reads /proc/PID/pagemap into a heap buffer of exactly
//   `chunk` entries (pread never writes past the size passed), and writes the
//   bitmap through Uint8Array::Data() of an array it just allocated with
//   `pages` elements; index `done + k` stays below `pages` by construction.
//   Nothing runs JS between the allocation and the writes, so the array can
//   neither be collected nor detached meanwhile. The range is capped at
//   kMaxResidencyBytes first, because V8 aborts (not throws) when an
//   ArrayBuffer allocation fails.
#include <fcntl.h>
#include <sched.h>
#include <limits.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "args.h"
#include "errors.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_process_madvise
#define SYS_process_madvise 440
#endif
#ifndef MADV_COLD
#define MADV_COLD 20
#endif
#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

namespace dormant {

namespace {

constexpr uint64_t kMaxSafeInteger = (1ULL << 53) - 1;
constexpr uint64_t kMaxPid = INT32_MAX;
constexpr uint64_t kPagemapEntry = 8;
constexpr uint64_t kPagemapChunk = 4096;  // entries per pread
constexpr uint64_t kPresent = 1ULL << 63;
// MADV_WILLNEED on a file reads ahead at most max(ra_pages, io_pages) of the
// backing device per range (force_page_cache_ra), the rest of a longer range
// is silently dropped. 128 KiB is the kernel's default readahead
// (VM_READAHEAD_PAGES), so willneed ranges are split into pieces that size.
constexpr uint64_t kWillneedPiece = 128 * 1024;

// True when pid no longer exists or has exited (a zombie has no memory left).
bool ProcessGone(int pid) {
  if (kill(pid, 0) == -1 && errno == ESRCH) return true;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;
  size_t paren = line.rfind(')');
  if (paren == std::string::npos || paren + 2 >= line.size()) return false;
  char state = line[paren + 2];
  return state == 'Z' || state == 'X';
}

class MadviseWorker : public Napi::AsyncWorker {
 public:
  MadviseWorker(Napi::Env env, int pidfd, std::vector<iovec> iov, int advice, std::string name)
      : Napi::AsyncWorker(env, "dormant:processMadvise"), deferred_(Napi::Promise::Deferred::New(env)),
        pidfd_(pidfd), iov_(std::move(iov)), advice_(advice), syscall_("process_madvise(" + name + ")") {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    size_t i = 0;
    while (i < iov_.size()) {
      size_t n = std::min<size_t>(IOV_MAX, iov_.size() - i);
      long r = syscall(SYS_process_madvise, pidfd_, &iov_[i], n, advice_, 0);
      if (r < 0) {
        if (errno == EINTR) continue;
        err_ = errno;
        return;
      }
      // The kernel stops early on an error after some progress, and caps one
      // call at MAX_RW_COUNT bytes: resume exactly where it stopped. A zero
      // return cannot happen with non-empty iovecs; stop rather than spin.
      if (r == 0) return;
      total_ += static_cast<uint64_t>(r);
      uint64_t left = static_cast<uint64_t>(r);
      while (left > 0 && i < iov_.size()) {
        if (left >= iov_[i].iov_len) {
          left -= iov_[i].iov_len;
          i++;
        } else {
          iov_[i].iov_base = static_cast<char*>(iov_[i].iov_base) + left;
          iov_[i].iov_len -= left;
          left = 0;
        }
      }
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_ != 0) {
      deferred_.Reject(NativeError(env, err_, syscall_).Value());
    } else {
      deferred_.Resolve(Napi::Number::New(env, static_cast<double>(total_)));
    }
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  int pidfd_;
  std::vector<iovec> iov_;
  int advice_;
  std::string syscall_;
  int err_ = 0;
  uint64_t total_ = 0;
};

}  // namespace

Napi::Value PidfdOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid = static_cast<int>(IntegerArg(info[0], "pidfd_open", "pid", 1, kMaxPid));
  long fd = syscall(SYS_pidfd_open, pid, 0);
  if (fd < 0) ThrowNative(env, errno, "pidfd_open");
  return Napi::Number::New(env, static_cast<double>(fd));
}

// setCloexec: fcntl(F_SETFD, FD_CLOEXEC) on one of our descriptors. Only an
// integer crosses; a wrong fd is EBADF.
Napi::Value SetCloexec(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(IntegerArg(info[0], "setCloexec", "fd", 0, INT32_MAX));
  int flags = fcntl(fd, F_GETFD);
  if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0) ThrowNative(env, errno, "fcntl(F_SETFD)");
  return env.Undefined();
}

// setThreadIdle: sched_setscheduler of one thread (a tid, as in
// /proc/PID/task) to SCHED_IDLE, or back to SCHED_OTHER. Only integers
// cross; a gone thread is ESRCH, one we may not touch EPERM.
Napi::Value SetThreadIdle(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int tid = static_cast<int>(IntegerArg(info[0], "setThreadIdle", "tid", 1, kMaxPid));
  if (!info[1].IsBoolean()) throw Napi::TypeError::New(env, "setThreadIdle: idle must be a boolean");
  struct sched_param param = {};
  param.sched_priority = 0;
  if (sched_setscheduler(tid, info[1].As<Napi::Boolean>().Value() ? SCHED_IDLE : SCHED_OTHER, &param) != 0) {
    ThrowNative(env, errno, "sched_setscheduler");
  }
  return env.Undefined();
}

Napi::Value ProcessMadvise(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pidfd = static_cast<int>(IntegerArg(info[0], "process_madvise", "pidfd", 0, INT32_MAX));
  if (!info[1].IsArray()) throw Napi::TypeError::New(env, "process_madvise: ranges must be an array");
  if (!info[2].IsString()) throw Napi::TypeError::New(env, "process_madvise: advice must be a string");
  std::string name = info[2].As<Napi::String>().Utf8Value();
  int advice;
  if (name == "pageout") {
    advice = MADV_PAGEOUT;
  } else if (name == "cold") {
    advice = MADV_COLD;
  } else if (name == "willneed") {
    advice = MADV_WILLNEED;
  } else {
    ThrowNative(env, EINVAL, "process_madvise(advice)");
  }
  std::string upper = name == "pageout" ? "MADV_PAGEOUT" : name == "cold" ? "MADV_COLD" : "MADV_WILLNEED";

  Napi::Array ranges = info[1].As<Napi::Array>();
  std::vector<iovec> iov;
  iov.reserve(ranges.Length());
  for (uint32_t k = 0; k < ranges.Length(); k++) {
    Napi::Value item = ranges.Get(k);
    if (!item.IsObject()) throw Napi::TypeError::New(env, "process_madvise: each range must be {addr, length}");
    Napi::Object range = item.As<Napi::Object>();
    uint64_t addr = IntegerArg(range.Get("addr"), "process_madvise", "addr", 0, kMaxSafeInteger);
    uint64_t length = IntegerArg(range.Get("length"), "process_madvise", "length", 0, kMaxSafeInteger);
    if (length == 0) continue;  // nothing to advise; the kernel would accept it but gain nothing
    uint64_t piece = advice == MADV_WILLNEED ? kWillneedPiece : length;
    for (uint64_t at = 0; at < length; at += piece) {
      uint64_t n = std::min(piece, length - at);
      iov.push_back(iovec{reinterpret_cast<void*>(static_cast<uintptr_t>(addr + at)), static_cast<size_t>(n)});
    }
  }

  auto* worker = new MadviseWorker(env, pidfd, std::move(iov), advice, upper);
  Napi::Promise promise = worker->Promise();
  worker->Queue();  // libuv owns and deletes the worker after OnOK/OnError
  return promise;
}

Napi::Value MappingResidency(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid = static_cast<int>(IntegerArg(info[0], "pagemap", "pid", 1, kMaxPid));
  uint64_t addr = IntegerArg(info[1], "pagemap", "addr", 0, kMaxSafeInteger);
  uint64_t length = IntegerArg(info[2], "pagemap", "length", 0, kMaxResidencyBytes);
  uint64_t page = PageSize();
  if (addr % page != 0 || length % page != 0) ThrowNative(env, EINVAL, "pagemap(alignment)");
  uint64_t pages = length / page;

  // Allocate before opening, so a throwing allocation cannot leak the fd.
  Napi::Uint8Array bitmap = Napi::Uint8Array::New(env, pages);
  uint8_t* out = bitmap.Data();
  std::vector<uint64_t> entries(kPagemapChunk);

  std::string path = "/proc/" + std::to_string(pid) + "/pagemap";
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) ThrowNative(env, errno == ENOENT ? ESRCH : errno, "open(" + path + ")");
  uint64_t present = 0;
  uint64_t done = 0;
  int err = 0;
  while (done < pages) {
    uint64_t want = std::min(kPagemapChunk, pages - done);
    off_t at = static_cast<off_t>((addr / page + done) * kPagemapEntry);
    ssize_t r = pread(fd, entries.data(), want * kPagemapEntry, at);
    if (r < 0) {
      if (errno == EINTR) continue;
      err = errno;
      break;
    }
    // pagemap reads 0 bytes when the process has lost its memory (exited) or
    // the range lies beyond its address space.
    if (r == 0) {
      err = ProcessGone(pid) ? ESRCH : EINVAL;
      break;
    }
    uint64_t got = static_cast<uint64_t>(r) / kPagemapEntry;
    if (got == 0) {  // pagemap only returns whole entries; never spin on a short read
      err = EIO;
      break;
    }
    for (uint64_t k = 0; k < got; k++) {
      uint8_t bit = (entries[k] & kPresent) != 0 ? 1 : 0;
      out[done + k] = bit;
      present += bit;
    }
    done += got;
  }
  close(fd);
  if (err != 0) ThrowNative(env, err, "pread(" + path + ")");

  Napi::Object result = Napi::Object::New(env);
  result.Set("present", Napi::Number::New(env, static_cast<double>(present)));
  result.Set("total", Napi::Number::New(env, static_cast<double>(pages)));
  result.Set("bitmap", bitmap);
  return result;
}

}  // namespace dormant
