// A FUSE session (libfuse3, low-level API) whose requests are answered from
// JS, for the store's file view (src/fuse).
//
// Threads: FUSE_THREADS workers read requests from /dev/fuse (non-blocking,
// each polling the device and an eventfd that tells them to stop) and hand
// each to the JS thread through one thread-safe function, without waiting:
// many requests are in flight at once, and a burst reaches JS in one turn
// of its event loop. JS answers each exactly once, later, with the
// fuseReply* functions (a write(2) to the device from the JS thread).
// FORGET and FLUSH are answered here; nothing else is.
//
// Requests travel as numbers (the fuse_req_t pointer; x86-64 user
// addresses fit a double exactly). A WRITE's payload is copied out of the
// worker's buffer into memory the JS Buffer owns (freed with it).
//
// Lifetime: fuseMount -> (requests) -> fuseStop (workers joined: no new
// request reaches JS) -> JS answers what it still holds -> fuseDestroy
// (closes the device, which fails whatever the kernel still queues, and
// lazily unmounts: fusermount3 -u -z, or umount2 MNT_DETACH as root). When
// the file system is unmounted from outside, the workers end by themselves
// and JS hears op -1 ("ended") once; it then calls fuseStop and
// fuseDestroy as well. Replying to a request after fuseDestroy is a bug of
// the caller (the device is gone); the wrapper in src/native/fuse.ts keeps
// count so that it never does.
//
// Kernel options asked for at INIT: no automatic invalidation of cached
// data on attribute changes (FUSE_CAP_AUTO_INVAL_DATA off: a write moves
// the mtime, and the guest RAM files the pager maps must not lose their
// pages for it); write-back caching stays off (a write reaches the store
// before it returns); max_write is libfuse's most (1 MiB with max_pages).
#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#include <napi.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "args.h"
#include "errors.h"
#include "pages.h"

namespace dormant {

namespace {

constexpr int kThreads = 4;

// Operation codes handed to JS (src/native/fuse.ts has the same table).
enum Op {
  kEnded = -1,
  kLookup = 1,
  kGetattr = 2,
  kSetattr = 3,
  kOpen = 4,
  kRead = 5,
  kWrite = 6,
  kRelease = 7,
  kFsync = 8,
  kReaddir = 9,
  kStatfs = 10,
  kRefuse = 11,
};

struct Session {
  int id = 0;
  fuse_session* se = nullptr;
  int fd = -1;
  int wake = -1;
  std::vector<std::thread> threads;
  std::atomic<int> running{0};
  std::atomic<bool> stopping{false};
  /** Requests handed to JS and not answered yet (fuseDestroy waits for 0: see fuseInFlight). */
  std::atomic<int64_t> inFlight{0};
  Napi::ThreadSafeFunction tsfn;
  bool mounted = false;
};

/** Counts `req` answered (called just before each reply to a request JS held). */
fuse_req_t Answered(fuse_req_t req) {
  static_cast<Session*>(fuse_req_userdata(req))->inFlight--;
  return req;
}

std::mutex sessionsLock;
std::map<int, Session*> sessions;
int nextId = 1;

struct Call {
  int op;
  uintptr_t req;
  double ino;
  double a;
  double b;
  std::string name;
  uint8_t* data = nullptr;
  size_t length = 0;
};

void CallJs(Napi::Env env, Napi::Function fn, Call* c) {
  if (env != nullptr && fn != nullptr) {
    Napi::Value extra = env.Undefined();
    if (c->data != nullptr) {
      extra = Napi::Buffer<uint8_t>::New(env, c->data, c->length, [](Napi::Env, uint8_t* p) { free(p); });
      c->data = nullptr;
    } else if (!c->name.empty()) {
      extra = Napi::String::New(env, c->name);
    }
    fn.Call({Napi::Number::New(env, c->op), Napi::Number::New(env, static_cast<double>(c->req)),
             Napi::Number::New(env, c->ino), Napi::Number::New(env, c->a), Napi::Number::New(env, c->b), extra});
  } else if (c->req != 0) {
    // The JS side is gone (teardown; the session still lives: fuseDestroy waits for fuseInFlight 0).
    fuse_req_t req = reinterpret_cast<fuse_req_t>(c->req);
    fuse_reply_err(Answered(req), ENOTCONN);
  }
  free(c->data);
  delete c;
}

void Push(fuse_req_t req, int op, fuse_ino_t ino, double a = 0, double b = 0, const char* name = nullptr,
          const char* data = nullptr, size_t length = 0) {
  auto* s = static_cast<Session*>(fuse_req_userdata(req));
  auto* c = new Call{op, reinterpret_cast<uintptr_t>(req), static_cast<double>(ino), a, b, {}, nullptr, 0};
  if (name != nullptr) c->name = name;
  if (data != nullptr) {
    c->data = static_cast<uint8_t*>(malloc(length > 0 ? length : 1));
    if (c->data == nullptr) {
      delete c;
      fuse_reply_err(req, ENOMEM);
      return;
    }
    memcpy(c->data, data, length);
    c->length = length;
  }
  s->inFlight++;
  if (s->tsfn.NonBlockingCall(c, CallJs) != napi_ok) {
    s->inFlight--;
    free(c->data);
    delete c;
    fuse_reply_err(req, ENOTCONN);
  }
}

void OpInit(void*, fuse_conn_info* conn) {
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
}
void OpLookup(fuse_req_t req, fuse_ino_t parent, const char* name) { Push(req, kLookup, parent, 0, 0, name); }
void OpForget(fuse_req_t req, fuse_ino_t, uint64_t) { fuse_reply_none(req); }
void OpForgetMulti(fuse_req_t req, size_t, fuse_forget_data*) { fuse_reply_none(req); }
void OpGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) { Push(req, kGetattr, ino); }
void OpSetattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int toSet, fuse_file_info*) {
  Push(req, kSetattr, ino, toSet, static_cast<double>(attr->st_size));
}
void OpOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) { Push(req, kOpen, ino, fi->flags); }
void OpRead(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  Push(req, kRead, ino, static_cast<double>(off), static_cast<double>(size));
}
void OpWrite(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off, fuse_file_info*) {
  Push(req, kWrite, ino, static_cast<double>(off), static_cast<double>(size), nullptr, buf, size);
}
void OpFlush(fuse_req_t req, fuse_ino_t, fuse_file_info*) { fuse_reply_err(req, 0); }
void OpRelease(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) { Push(req, kRelease, ino); }
void OpFsync(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info*) { Push(req, kFsync, ino, datasync); }
void OpReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  Push(req, kReaddir, ino, static_cast<double>(off), static_cast<double>(size));
}
void OpStatfs(fuse_req_t req, fuse_ino_t ino) { Push(req, kStatfs, ino); }
// Every namespace change is refused; JS picks EPERM or EROFS from the parent.
void OpMknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t, dev_t) { Push(req, kRefuse, parent, 0, 0, name); }
void OpMkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t) { Push(req, kRefuse, parent, 0, 0, name); }
void OpUnlink(fuse_req_t req, fuse_ino_t parent, const char* name) { Push(req, kRefuse, parent, 0, 0, name); }
void OpRmdir(fuse_req_t req, fuse_ino_t parent, const char* name) { Push(req, kRefuse, parent, 0, 0, name); }
void OpSymlink(fuse_req_t req, const char*, fuse_ino_t parent, const char* name) { Push(req, kRefuse, parent, 0, 0, name); }
void OpRename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newParent, const char*, unsigned int) {
  Push(req, kRefuse, parent, static_cast<double>(newParent), 0, name);
}
void OpLink(fuse_req_t req, fuse_ino_t, fuse_ino_t newParent, const char* name) { Push(req, kRefuse, newParent, 0, 0, name); }
void OpCreate(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t, fuse_file_info*) {
  Push(req, kRefuse, parent, 0, 0, name);
}

fuse_lowlevel_ops MakeOps() {
  fuse_lowlevel_ops ops;
  memset(&ops, 0, sizeof ops);
  ops.init = OpInit;
  ops.lookup = OpLookup;
  ops.forget = OpForget;
  ops.forget_multi = OpForgetMulti;
  ops.getattr = OpGetattr;
  ops.setattr = OpSetattr;
  ops.open = OpOpen;
  ops.read = OpRead;
  ops.write = OpWrite;
  ops.flush = OpFlush;
  ops.release = OpRelease;
  ops.fsync = OpFsync;
  ops.readdir = OpReaddir;
  ops.statfs = OpStatfs;
  ops.mknod = OpMknod;
  ops.mkdir = OpMkdir;
  ops.unlink = OpUnlink;
  ops.rmdir = OpRmdir;
  ops.symlink = OpSymlink;
  ops.rename = OpRename;
  ops.link = OpLink;
  ops.create = OpCreate;
  return ops;
}
const fuse_lowlevel_ops kOps = MakeOps();

void Worker(Session* s) {
  fuse_buf buf;
  memset(&buf, 0, sizeof buf);
  while (!s->stopping.load() && !fuse_session_exited(s->se)) {
    pollfd p[2] = {{s->fd, POLLIN, 0}, {s->wake, POLLIN, 0}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p[1].revents != 0) break;
    int res = fuse_session_receive_buf(s->se, &buf);
    if (res == -EINTR || res == -EAGAIN) continue;
    if (res <= 0) break;  // 0: unmounted (ENODEV) or exited
    fuse_session_process_buf(s->se, &buf);
  }
  free(buf.mem);
  if (--s->running == 0 && !s->stopping.load()) {
    // Ended by itself (unmounted from outside): JS hears it once.
    auto* c = new Call{kEnded, 0, 0, 0, 0, {}, nullptr, 0};
    if (s->tsfn.NonBlockingCall(c, CallJs) != napi_ok) delete c;
  }
}

Session* SessionArg(const Napi::CallbackInfo& info, const char* fn) {
  int id = static_cast<int>(IntegerArg(info[0], fn, "session", 1, 1u << 30));
  std::lock_guard<std::mutex> g(sessionsLock);
  auto it = sessions.find(id);
  if (it == sessions.end()) ThrowNative(info.Env(), EINVAL, std::string(fn) + ": no such session");
  return it->second;
}

// The request a reply answers (counted as answered by Answered, just before the reply).
fuse_req_t ReqArg(const Napi::CallbackInfo& info, const char* fn) {
  if (!info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(fn) + ": request must be a number");
  double v = info[0].As<Napi::Number>().DoubleValue();
  if (!(v > 0) || v >= 9007199254740992.0) ThrowNative(info.Env(), EINVAL, std::string(fn) + ": bad request");
  return reinterpret_cast<fuse_req_t>(static_cast<uintptr_t>(v));
}


// attr: Float64Array [ino, mode, nlink, uid, gid, size, blocks, blksize, atimeMs, mtimeMs, ctimeMs]
struct stat StatArg(const Napi::Value& v, const char* fn) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
      v.As<Napi::Float64Array>().ElementLength() < 11) {
    throw Napi::TypeError::New(v.Env(), std::string(fn) + ": attr must be a Float64Array of 11");
  }
  auto a = v.As<Napi::Float64Array>();
  struct stat st;
  memset(&st, 0, sizeof st);
  st.st_ino = static_cast<ino_t>(a[0]);
  st.st_mode = static_cast<mode_t>(a[1]);
  st.st_nlink = static_cast<nlink_t>(a[2]);
  st.st_uid = static_cast<uid_t>(a[3]);
  st.st_gid = static_cast<gid_t>(a[4]);
  st.st_size = static_cast<off_t>(a[5]);
  st.st_blocks = static_cast<blkcnt_t>(a[6]);
  st.st_blksize = static_cast<blksize_t>(a[7]);
  auto ts = [](double ms) {
    timespec t;
    t.tv_sec = static_cast<time_t>(ms / 1000);
    t.tv_nsec = static_cast<long>((ms - static_cast<double>(t.tv_sec) * 1000) * 1e6);
    return t;
  };
  st.st_atim = ts(a[8]);
  st.st_mtim = ts(a[9]);
  st.st_ctim = ts(a[10]);
  return st;
}

double NumberArg(const Napi::Value& v, const char* fn, const char* what) {
  if (!v.IsNumber()) throw Napi::TypeError::New(v.Env(), std::string(fn) + ": " + what + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

// fuseReplyFile's work: read the range from the segment file, check every
// 4096-byte block against its hash, and answer the READ from this pool
// thread. Anything wrong (a short read, an error, a block that does not
// match) sends nothing: JS hears why and answers the request itself.
class ReplyFileWorker : public Napi::AsyncWorker {
 public:
  ReplyFileWorker(Napi::Function done, fuse_req_t req, int fd, uint64_t position, size_t length, const uint8_t* hashes)
      : Napi::AsyncWorker(done, "dormant-fuse-read"), req_(req), fd_(fd), position_(position), length_(length),
        hashes_(hashes, hashes + (length / 4096) * 16) {}

  void Execute() override {
    std::vector<uint8_t> buf(length_);
    size_t done = 0;
    while (done < length_) {
      ssize_t n = pread(fd_, buf.data() + done, length_ - done, static_cast<off_t>(position_ + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        result_ = -3 - errno;
        return;
      }
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
    if (done != length_) { result_ = -2; return; }
    for (size_t i = 0; i < length_ / 4096; i++) {
      uint8_t got[16];
      CanonicalHash128(buf.data() + i * 4096, 4096, got);
      if (memcmp(got, hashes_.data() + i * 16, 16) != 0) { result_ = static_cast<double>(i); return; }
    }
    fuse_reply_buf(Answered(req_), reinterpret_cast<const char*>(buf.data()), length_);
    result_ = -1;
  }

  void OnOK() override { Callback().Call({Napi::Number::New(Env(), result_)}); }

 private:
  fuse_req_t req_;
  int fd_;
  uint64_t position_;
  size_t length_;
  std::vector<uint8_t> hashes_;
  double result_ = -2;
};

}  // namespace

// fuseReplyFile(req, fd, position, length, hashes, done): answers a READ with `length` bytes (a multiple of
// 4096) of file `fd` from `position`, each block checked against hashes[i*16, +16), read on libuv's pool.
// done(r): -1 answered; i >= 0 block i does not match; -2 short read; -3 - errno a read error (not answered).
Napi::Value FuseReplyFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "fuseReplyFile";
  fuse_req_t req = ReqArg(info, fn);
  int fd = static_cast<int>(IntegerArg(info[1], fn, "fd", 0, 1u << 30));
  uint64_t position = IntegerArg(info[2], fn, "position", 0, 1ULL << 52);
  size_t length = static_cast<size_t>(IntegerArg(info[3], fn, "length", 4096, 1u << 24));
  if (length % 4096 != 0) ThrowNative(env, EINVAL, "fuseReplyFile(length)");
  ByteView hashes = BytesArg(info[4], fn);
  if (hashes.length < (length / 4096) * 16) ThrowNative(env, EINVAL, "fuseReplyFile(hashes)");
  if (!info[5].IsFunction()) throw Napi::TypeError::New(env, "fuseReplyFile: done must be a function");
  auto* w = new ReplyFileWorker(info[5].As<Napi::Function>(), req, fd, position, length, hashes.data);
  w->Queue();
  return env.Undefined();
}

// fuseMount(mountpoint, options, handler): the session id. options: the -o list ("fsname=x,allow_other").
Napi::Value FuseMount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsString() || !info[2].IsFunction()) {
    throw Napi::TypeError::New(env, "fuseMount(mountpoint: string, options: string, handler: function)");
  }
  std::string mountpoint = info[0].As<Napi::String>();
  std::string options = info[1].As<Napi::String>();
  auto* s = new Session();
  std::vector<std::string> argv = {"dormant"};
  if (!options.empty()) {
    argv.push_back("-o");
    argv.push_back(options);
  }
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(cargv.size()), cargv.data());
  s->se = fuse_session_new(&args, &kOps, sizeof kOps, s);
  fuse_opt_free_args(&args);
  if (s->se == nullptr) {
    delete s;
    ThrowNative(env, EINVAL, "fuse_session_new");
  }
  if (fuse_session_mount(s->se, mountpoint.c_str()) != 0) {
    fuse_session_destroy(s->se);
    delete s;
    ThrowNative(env, EIO, "fuse_session_mount");
  }
  s->mounted = true;
  s->fd = fuse_session_fd(s->se);
  int flags = fcntl(s->fd, F_GETFL);
  fcntl(s->fd, F_SETFL, flags | O_NONBLOCK);
  fcntl(s->fd, F_SETFD, FD_CLOEXEC);
  s->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (s->wake < 0) {
    int err = errno;
    fuse_session_unmount(s->se);
    fuse_session_destroy(s->se);
    delete s;
    ThrowNative(env, err, "eventfd");
  }
  s->tsfn = Napi::ThreadSafeFunction::New(env, info[2].As<Napi::Function>(), "dormant-fuse", 0, 1);
  // Requests must not keep the process alive by themselves: the wrapper holds the loop open while mounted.
  s->tsfn.Unref(env);
  {
    std::lock_guard<std::mutex> g(sessionsLock);
    s->id = nextId++;
    sessions[s->id] = s;
  }
  s->running = kThreads;
  for (int i = 0; i < kThreads; i++) s->threads.emplace_back(Worker, s);
  return Napi::Number::New(env, s->id);
}

// fuseStop(session): the workers stop taking requests and are joined.
Napi::Value FuseStop(const Napi::CallbackInfo& info) {
  Session* s = SessionArg(info, "fuseStop");
  s->stopping = true;
  uint64_t one = 1;
  if (write(s->wake, &one, sizeof one) < 0) { /* the eventfd cannot be full here */ }
  for (auto& t : s->threads) if (t.joinable()) t.join();
  s->threads.clear();
  return info.Env().Undefined();
}

// fuseInFlight(session): requests handed to JS and not answered yet.
Napi::Value FuseInFlight(const Napi::CallbackInfo& info) {
  Session* s = SessionArg(info, "fuseInFlight");
  return Napi::Number::New(info.Env(), static_cast<double>(s->inFlight.load()));
}

// fuseDestroy(session): closes the device and lazily unmounts; after fuseStop, once JS answered every request.
Napi::Value FuseDestroy(const Napi::CallbackInfo& info) {
  Session* s = SessionArg(info, "fuseDestroy");
  if (!s->threads.empty()) ThrowNative(info.Env(), EBUSY, "fuseDestroy: fuseStop first");
  {
    std::lock_guard<std::mutex> g(sessionsLock);
    sessions.erase(s->id);
  }
  if (s->mounted) fuse_session_unmount(s->se);
  fuse_session_destroy(s->se);
  close(s->wake);
  s->tsfn.Release();
  delete s;
  return info.Env().Undefined();
}

Napi::Value FuseReplyErr(const Napi::CallbackInfo& info) {
  fuse_req_t req = ReqArg(info, "fuseReplyErr");
  int err = static_cast<int>(IntegerArg(info[1], "fuseReplyErr", "errno", 0, 4095));
  return Napi::Number::New(info.Env(), fuse_reply_err(Answered(req), err));
}

// fuseReplyBuf(req, buffer, length): the first `length` bytes of buffer.
Napi::Value FuseReplyBuf(const Napi::CallbackInfo& info) {
  fuse_req_t req = ReqArg(info, "fuseReplyBuf");
  ByteView b = BytesArg(info[1], "fuseReplyBuf");
  size_t n = static_cast<size_t>(IntegerArg(info[2], "fuseReplyBuf", "length", 0, b.length));
  return Napi::Number::New(info.Env(), fuse_reply_buf(Answered(req), reinterpret_cast<const char*>(b.data), n));
}

Napi::Value FuseReplyWrite(const Napi::CallbackInfo& info) {
  fuse_req_t req = ReqArg(info, "fuseReplyWrite");
  size_t n = static_cast<size_t>(IntegerArg(info[1], "fuseReplyWrite", "count", 0, 1ULL << 40));
  return Napi::Number::New(info.Env(), fuse_reply_write(Answered(req), n));
}

// fuseReplyOpen(req, fh): page cache dropped at open (no keep_cache), not direct I/O (shared mmap works).
Napi::Value FuseReplyOpen(const Napi::CallbackInfo& info) {
  fuse_req_t req = ReqArg(info, "fuseReplyOpen");
  fuse_file_info fi;
  memset(&fi, 0, sizeof fi);
  fi.fh = static_cast<uint64_t>(IntegerArg(info[1], "fuseReplyOpen", "fh", 0, 1ULL << 53));
  return Napi::Number::New(info.Env(), fuse_reply_open(Answered(req), &fi));
}

Napi::Value FuseReplyAttr(const Napi::CallbackInfo& info) {
  fuse_req_t req = ReqArg(info, "fuseReplyAttr");
  struct stat st = StatArg(info[1], "fuseReplyAttr");
  double timeout = NumberArg(info[2], "fuseReplyAttr", "timeout");
  return Napi::Number::New(info.Env(), fuse_reply_attr(Answered(req), &st, timeout));
}

// fuseReplyEntry(req, attr, attrTimeout, entryTimeout): the entry's inode is attr[0].
Napi::Value FuseReplyEntry(const Napi::CallbackInfo& info) {
  fuse_req_t req = ReqArg(info, "fuseReplyEntry");
  fuse_entry_param e;
  memset(&e, 0, sizeof e);
  e.attr = StatArg(info[1], "fuseReplyEntry");
  e.ino = e.attr.st_ino;
  e.generation = 1;
  e.attr_timeout = NumberArg(info[2], "fuseReplyEntry", "attrTimeout");
  e.entry_timeout = NumberArg(info[3], "fuseReplyEntry", "entryTimeout");
  return Napi::Number::New(info.Env(), fuse_reply_entry(Answered(req), &e));
}

// fuseReplyStatfs(req, Float64Array [bsize, frsize, blocks, bfree, bavail, files, ffree, favail, namemax]).
Napi::Value FuseReplyStatfs(const Napi::CallbackInfo& info) {
  fuse_req_t req = ReqArg(info, "fuseReplyStatfs");
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
      info[1].As<Napi::Float64Array>().ElementLength() < 9) {
    throw Napi::TypeError::New(info.Env(), "fuseReplyStatfs: values must be a Float64Array of 9");
  }
  auto a = info[1].As<Napi::Float64Array>();
  struct statvfs st;
  memset(&st, 0, sizeof st);
  st.f_bsize = static_cast<unsigned long>(a[0]);
  st.f_frsize = static_cast<unsigned long>(a[1]);
  st.f_blocks = static_cast<fsblkcnt_t>(a[2]);
  st.f_bfree = static_cast<fsblkcnt_t>(a[3]);
  st.f_bavail = static_cast<fsblkcnt_t>(a[4]);
  st.f_files = static_cast<fsfilcnt_t>(a[5]);
  st.f_ffree = static_cast<fsfilcnt_t>(a[6]);
  st.f_favail = static_cast<fsfilcnt_t>(a[7]);
  st.f_namemax = static_cast<unsigned long>(a[8]);
  return Napi::Number::New(info.Env(), fuse_reply_statfs(Answered(req), &st));
}

// fuseReplyDir(req, size, offset, names, inos, modes): entries from index `offset` on that fit in `size` bytes.
Napi::Value FuseReplyDir(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  fuse_req_t req = ReqArg(info, "fuseReplyDir");
  size_t size = static_cast<size_t>(IntegerArg(info[1], "fuseReplyDir", "size", 0, 1u << 24));
  uint64_t offset = IntegerArg(info[2], "fuseReplyDir", "offset", 0, 1ULL << 53);
  if (!info[3].IsArray() || !info[4].IsArray() || !info[5].IsArray()) {
    throw Napi::TypeError::New(env, "fuseReplyDir: names, inos and modes must be arrays");
  }
  auto names = info[3].As<Napi::Array>();
  auto inos = info[4].As<Napi::Array>();
  auto modes = info[5].As<Napi::Array>();
  std::vector<char> buf(size);
  size_t used = 0;
  for (uint32_t i = static_cast<uint32_t>(offset); i < names.Length(); i++) {
    std::string name = names.Get(i).As<Napi::String>();
    struct stat st;
    memset(&st, 0, sizeof st);
    st.st_ino = static_cast<ino_t>(inos.Get(i).As<Napi::Number>().DoubleValue());
    st.st_mode = static_cast<mode_t>(modes.Get(i).As<Napi::Number>().DoubleValue());
    size_t need = fuse_add_direntry(req, buf.data() + used, size - used, name.c_str(), &st, static_cast<off_t>(i) + 1);
    if (need > size - used) break;
    used += need;
  }
  return Napi::Number::New(env, fuse_reply_buf(Answered(req), buf.data(), used));
}

}  // namespace dormant
