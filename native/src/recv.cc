// recvStream: the payloads of a stream of big NBD WRITEs received on
// libuv's pool, into the store's landing buffers, and hashed there as they
// come, while the JS thread applies the writes already received.
//
// Why: on a stream of big writes, the kernel's copy out of the socket and
// the hash of every block are the JS thread's per-byte work; here they run
// on the pool (the JS side is src/nbd/pool-receive.ts). A receive per
// request would not do: the hop back to JS, and JS reading the next header
// and queueing the next receive, would leave the socket unread between
// payloads. So one pool job reads a run of payloads: after each it tells
// JS (a progress event: JS applies that write and replies), reads the next
// request's header, and when that is a WRITE of the length of the next
// landing JS has offered, tells JS and goes on into that landing. JS
// offers a landing for the one after as it learns of each, so the socket
// is read without a gap while the client keeps the stream going.
//
// How a payload is read: into a bounce buffer that mirrors the landing
// modulo kBounce (a multiple of the block size), so each block is whole
// there once received. It is hashed there, in this core's cache, and copied
// to the landing with streaming (non-temporal) stores: the landing is
// page-cache memory not in any cache, which a plain copy (or the kernel's
// copy straight into it) first reads line by line; streaming stores skip
// that read, so the detour through the bounce buffer costs less than it
// saves (figures: docs/benchmarks.md, "Figures behind design choices").
//
// The job ends (and JS reads the socket its own way again) when:
//   - the next request is not such a WRITE, or no landing is on offer
//     (the header bytes read, if any, go back to JS: `leftover`);
//   - no byte came for kStallMs, or a payload is still coming at the end
//     of the job's time (a slow client: JS reads the rest);
//   - JS asked it to stop, or it ran kJobMs (other connections get a turn);
//   - the stream ended or failed (JS's own read sees that too).
//
// Why the pointer uses are safe:
// - Every array the job writes (landings, hashes, zero flags) is held by a
//   persistent reference from the moment JS passes it until the job is
//   over (OnOK/OnError on the JS thread), so none can be collected while
//   the pool thread writes. JS must not transfer them (documented on the
//   TypeScript side); a landing is a view of the store's mapping, which the
//   store keeps until the connection (and so the job) ends.
// - Writes stay within each array: payloads within [from, length) of their
//   landing, hashes and zero flags within the n*16 and n bytes checked
//   against the landing's block count on the JS thread, the bounce buffer
//   and header bytes within their own sizes.
// - The socket is read through a duplicate descriptor made on the JS
//   thread and closed by the job itself: a close of the original meanwhile
//   cannot make the job read another file.
// - The offer queue and the stop flag are shared with the JS thread under
//   a mutex, in a control block both sides own (shared_ptr): an offer after
//   the job ended is refused, never a use of a freed job.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <cerrno>
#include <climits>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "args.h"
#include "errors.h"
#include "pages.h"

namespace dormant {

namespace {

/** How long the job waits for more bytes before handing the stream back to JS. */
constexpr int kStallMs = 20;
/** How long one job may run before it hands the stream back (and its pool thread to others). */
constexpr int64_t kJobMs = 1000;
/** The bounce buffer (a multiple of the block size; about what a Unix socket buffers). */
constexpr size_t kBounce = 256 * 1024;
/** An NBD request header: magic, flags, type, cookie, offset, length (big-endian). */
constexpr size_t kHeader = 28;
constexpr uint32_t kRequestMagic = 0x25609513;
constexpr uint16_t kCmdWrite = 1;
constexpr uint16_t kFlagFua = 1;

/** Copies n bytes, with non-temporal stores where dst is 16-byte aligned (src and dst agree modulo 16 here). */
void StreamCopy(uint8_t* dst, const uint8_t* src, size_t n) {
#if defined(__x86_64__)
  size_t head = (16 - (reinterpret_cast<uintptr_t>(dst) & 15)) & 15;
  if (head > n || (reinterpret_cast<uintptr_t>(src) & 15) != (reinterpret_cast<uintptr_t>(dst) & 15)) {
    std::memcpy(dst, src, n);
    return;
  }
  std::memcpy(dst, src, head);
  size_t i = head;
  for (; i + 64 <= n; i += 64) {
    __m128i a = _mm_load_si128(reinterpret_cast<const __m128i*>(src + i));
    __m128i b = _mm_load_si128(reinterpret_cast<const __m128i*>(src + i + 16));
    __m128i c = _mm_load_si128(reinterpret_cast<const __m128i*>(src + i + 32));
    __m128i d = _mm_load_si128(reinterpret_cast<const __m128i*>(src + i + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), d);
  }
  std::memcpy(dst + i, src + i, n - i);
#else
  std::memcpy(dst, src, n);
#endif
}

/** Orders the streaming stores before anything this thread does next (another thread reads the landing after). */
void StreamFence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}

int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

uint64_t Be(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v = (v << 8) | p[i];
  return v;
}

/** A landing to fill: its bytes, its hash and zero arrays (views checked on the JS thread). */
struct Landing {
  uint8_t* data;
  uint64_t length;
  uint8_t* hashes;
  uint8_t* zero;
};

/** What the JS thread and the job share: landings on offer, the stop flag, whether the job is over. */
struct Control {
  std::mutex mu;
  std::deque<Landing> offered;
  bool stop = false;
  bool over = false;
};

/** Slot k's payload received whole, or (took_next) the header of the request whose payload slot k receives. */
struct Event {
  uint32_t slot;
  uint8_t took_next;
  uint8_t header[kHeader];
};

Landing LandingArg(const Napi::CallbackInfo& info, size_t at, const char* fn) {
  Napi::Env env = info.Env();
  ByteView d = BytesArg(info[at], fn);
  ByteView h = BytesArg(info[at + 1], fn);
  ByteView z = BytesArg(info[at + 2], fn);
  uint64_t n = d.length / kBlockBytes;
  if (d.length == 0 || d.length % kBlockBytes != 0) ThrowNative(env, EINVAL, std::string(fn) + "(landing length)");
  if (h.length < n * kBlockHashBytes) ThrowNative(env, EINVAL, std::string(fn) + "(hashes)");
  if (z.length < n) ThrowNative(env, EINVAL, std::string(fn) + "(zero)");
  return {const_cast<uint8_t*>(d.data), d.length, const_cast<uint8_t*>(h.data), const_cast<uint8_t*>(z.data)};
}

class RecvStream : public Napi::AsyncProgressQueueWorker<Event> {
 public:
  RecvStream(Napi::Function on_end, Napi::Function on_event, int fd, uint64_t size, Landing first, uint64_t from,
             std::shared_ptr<Control> control)
      : Napi::AsyncProgressQueueWorker<Event>(on_end, "dormant:recvStream"), on_event_(Napi::Persistent(on_event)),
        fd_(fd), size_(size), first_(first), from_(from), control_(std::move(control)) {}

  ~RecvStream() override {
    if (fd_ >= 0) close(fd_);
  }

  /** Keeps an array the job may write alive until the job is over (JS thread only). */
  void Hold(Napi::Value v) { held_.push_back(Napi::Persistent(v.As<Napi::Object>())); }

  void Execute(const ExecutionProgress& progress) override {
    int64_t job_end = NowMs() + kJobMs;
    Landing cur = first_;
    uint64_t filled = from_;
    for (uint32_t slot = 0;; slot++) {
      if (!Fill(cur, &filled, job_end)) {
        stalled_slot_ = static_cast<int64_t>(slot);
        stalled_filled_ = filled;
        break;
      }
      // JS applies this write (and replies) while the next header is awaited: a client that
      // waits for the reply before its next request must not wait for a stall here.
      Event done{};
      done.slot = slot;
      progress.Send(&done, 1);
      Event next{};
      next.slot = slot + 1;
      next.took_next = 1;
      if (!NextHeader(next.header, job_end, &cur)) break;
      progress.Send(&next, 1);
      filled = 0;
    }
    close(fd_);
    fd_ = -1;
    std::lock_guard<std::mutex> lock(control_->mu);
    control_->over = true;
  }

  void OnProgress(const Event* events, size_t count) override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    for (size_t i = 0; i < count; i++) {
      const Event& e = events[i];
      Napi::Value header = e.took_next ? Napi::Value(Napi::Buffer<uint8_t>::Copy(env, e.header, kHeader)) : env.Null();
      on_event_.Call({Napi::Number::New(env, e.slot), header});
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    Release();
    Napi::Object end = Napi::Object::New(env);
    end.Set("stalledSlot", Napi::Number::New(env, static_cast<double>(stalled_slot_)));
    end.Set("filled", Napi::Number::New(env, static_cast<double>(stalled_filled_)));
    end.Set("leftover", Napi::Buffer<uint8_t>::Copy(env, leftover_, leftover_bytes_));
    Callback().Call({env.Null(), end});
  }

  void OnError(const Napi::Error& e) override {
    Release();
    Callback().Call({e.Value()});
  }

 private:
  void Release() {
    {
      std::lock_guard<std::mutex> lock(control_->mu);
      control_->over = true;
      control_->offered.clear();
    }
    for (auto& r : held_) r.Reset();
    held_.clear();
    on_event_.Reset();
  }

  /**
   * Receives landing `l` up to its end from `*filled` on, hashing blocks as
   * they come; false on a stall (or past `job_end`) or an end.
   */
  bool Fill(const Landing& l, uint64_t* filled, int64_t job_end) {
    // The socket is read into bounce_, which mirrors the landing modulo kBounce (a multiple of
    // the block size), so every block is whole in it once received: hashed there while in this
    // core's cache, and copied to the landing with streaming stores (the landing is fresh memory:
    // an ordinary copy first reads every line of it).
    uint8_t* bounce = bounce_.get();
    uint64_t hashed = *filled / kBlockBytes;
    // Bytes there before this call (slot 0's `from`): their whole blocks are hashed where they
    // are, the block begun goes to the bounce buffer to be completed.
    HashBlockRun(l.data, hashed, l.hashes, l.zero);
    if (*filled % kBlockBytes != 0) {
      uint64_t start = hashed * kBlockBytes;
      std::memcpy(bounce + start % kBounce, l.data + start, *filled - start);
    }
    while (*filled < l.length) {
      uint64_t at = *filled % kBounce;
      uint64_t want = l.length - *filled;
      if (want > kBounce - at) want = kBounce - at;
      ssize_t n = recv(fd_, bounce + at, want, MSG_DONTWAIT);
      if (n > 0) {
        StreamCopy(l.data + *filled, bounce + at, static_cast<size_t>(n));
        *filled += static_cast<uint64_t>(n);
        uint64_t upto = *filled / kBlockBytes;
        for (; hashed < upto; hashed++) {
          const uint8_t* p = bounce + (hashed * kBlockBytes) % kBounce;
          HashBlockRun(p, 1, l.hashes + hashed * kBlockHashBytes, l.zero + hashed);
        }
        continue;
      }
      if (n == 0) break;
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) break;
      // A payload trickling in past the job's time is a stall too: the pool thread is not its to keep.
      if (NowMs() > job_end || !Wait()) break;
    }
    StreamFence();
    return *filled == l.length;
  }

  /** Waits up to kStallMs for bytes; false when none came. */
  bool Wait() {
    for (;;) {
      pollfd p{fd_, POLLIN, 0};
      int r = poll(&p, 1, kStallMs);
      if (r > 0) return true;
      if (r == 0 || errno != EINTR) return false;
    }
  }

  /**
   * Reads the next request's header into `header`. True (and the landing
   * in `*next`) when the job takes that request on: a WRITE (FUA allowed)
   * of exactly the next offered landing's length, block-aligned and within
   * the export. Else the header bytes read (maybe none) are the leftover.
   */
  bool NextHeader(uint8_t* header, int64_t job_end, Landing* next) {
    bool want;
    {
      std::lock_guard<std::mutex> lock(control_->mu);
      want = !control_->stop && !control_->offered.empty() && NowMs() < job_end;
    }
    size_t got = 0;
    while (got < kHeader) {
      ssize_t n = recv(fd_, header + got, kHeader - got, MSG_DONTWAIT);
      if (n > 0) {
        got += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      // Only wait for the rest of a header when it may be taken on; else JS reads it.
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && want && Wait()) continue;
      break;
    }
    if (got == kHeader && want) {
      uint32_t magic = static_cast<uint32_t>(Be(header, 4));
      uint16_t flags = static_cast<uint16_t>(Be(header + 4, 2));
      uint16_t type = static_cast<uint16_t>(Be(header + 6, 2));
      uint64_t offset = Be(header + 16, 8);
      uint64_t length = Be(header + 24, 4);
      std::lock_guard<std::mutex> lock(control_->mu);
      if (!control_->stop && !control_->offered.empty() && magic == kRequestMagic && type == kCmdWrite &&
          (flags & ~kFlagFua) == 0 && length == control_->offered.front().length && offset % kBlockBytes == 0 &&
          offset <= size_ && length <= size_ - offset) {
        *next = control_->offered.front();
        control_->offered.pop_front();
        return true;
      }
    }
    std::memcpy(leftover_, header, got);
    leftover_bytes_ = got;
    return false;
  }

  std::unique_ptr<uint8_t[]> bounce_{new uint8_t[kBounce]};  // (not zeroed: only received bytes are read)
  Napi::FunctionReference on_event_;
  std::vector<Napi::ObjectReference> held_;
  int fd_;
  uint64_t size_;
  Landing first_;
  uint64_t from_;
  std::shared_ptr<Control> control_;
  int64_t stalled_slot_ = -1;
  uint64_t stalled_filled_ = 0;
  uint8_t leftover_[kHeader] = {};
  size_t leftover_bytes_ = 0;
};

using ControlRef = std::shared_ptr<Control>;

ControlRef& ControlOf(const Napi::CallbackInfo& info) { return *static_cast<ControlRef*>(info.Data()); }

}  // namespace

// recvStream(socketFd, size, dest, hashes, zero, from, onEvent(slot, header), onEnd(err, end))
//   -> { offer(dest, hashes, zero): boolean, stop(): void }
// Receives dest[from..] (slot 0) and, while the next request is a WRITE
// (FUA allowed) of the next offered landing's length, block-aligned and
// within `size`, that landing too (slots 1, 2, ... in the order offered),
// hashing each into its arrays as hashBlocks does. On the JS thread, in
// order: onEvent(k, null) when slot k is whole, onEvent(k, header) when
// the job took on the request whose payload slot k receives (`header` its
// 28 bytes), and last onEnd(null, {stalledSlot, filled, leftover}):
// stalledSlot (-1: none) is a slot left partly filled (`filled` bytes from
// its start) by a stall or an end of the stream, `leftover` the bytes of
// the next request read but not taken on. `offer` returns false once the
// job is over (the caller keeps that landing). The caller must not read the
// socket, nor touch the arrays it passed, until onEnd ran.
Napi::Value RecvStreamStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "recvStream";
  int sock = static_cast<int>(IntegerArg(info[0], fn, "socketFd", 0, INT_MAX));
  uint64_t size = IntegerArg(info[1], fn, "size", 0, 1ULL << 53);
  Landing first = LandingArg(info, 2, fn);
  uint64_t from = IntegerArg(info[5], fn, "from", 0, first.length);
  if (!info[6].IsFunction() || !info[7].IsFunction()) {
    throw Napi::TypeError::New(env, "recvStream: callbacks must be functions");
  }
  int fd = fcntl(sock, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) ThrowNative(env, errno, "fcntl(F_DUPFD_CLOEXEC)");
  auto control = std::make_shared<Control>();
  auto* job = new RecvStream(info[7].As<Napi::Function>(), info[6].As<Napi::Function>(), fd, size, first, from, control);
  job->Hold(info[2]);
  job->Hold(info[3]);
  job->Hold(info[4]);
  // Each function holds the control block (its own reference, dropped when it is collected).
  auto bind = [&](Napi::Function f, ControlRef* ref) {
    f.AddFinalizer([](Napi::Env, ControlRef* c) { delete c; }, ref);
    return f;
  };
  auto* offer_ref = new ControlRef(control);
  auto* stop_ref = new ControlRef(control);
  Napi::Object handle = Napi::Object::New(env);
  handle.Set("offer", bind(Napi::Function::New(env, [job](const Napi::CallbackInfo& i) -> Napi::Value {
    ControlRef& c = ControlOf(i);
    Landing l = LandingArg(i, 0, "recvStream.offer");
    std::lock_guard<std::mutex> lock(c->mu);
    if (c->over) return Napi::Boolean::New(i.Env(), false);
    // Not over: the job is alive (it is deleted on this thread, after `over` is set) and has not
    // released its references yet (that too happens on this thread).
    job->Hold(i[0]);
    job->Hold(i[1]);
    job->Hold(i[2]);
    c->offered.push_back(l);
    return Napi::Boolean::New(i.Env(), true);
  }, "offer", offer_ref), offer_ref));
  handle.Set("stop", bind(Napi::Function::New(env, [](const Napi::CallbackInfo& i) -> Napi::Value {
    ControlRef& c = ControlOf(i);
    std::lock_guard<std::mutex> lock(c->mu);
    c->stop = true;
    return i.Env().Undefined();
  }, "stop", stop_ref), stop_ref));
  job->Queue();  // libuv owns and deletes the job after OnOK/OnError
  return handle;
}

}  // namespace dormant
