// setSendBuffer: SO_SNDBUF of a socket descriptor, so a large NBD reply
// leaves in one write instead of a write per drained socket buffer.
// notifySocket: one datagram to a Unix datagram socket (systemd's
// NOTIFY_SOCKET, "READY=1"): sent by this process itself, as systemd
// accepts notifications only from the service's main process by default.
// sendFileRange: a reply's header and then a range of a store file, with
// sendfile(2): the kernel hands the file's page-cache pages to the socket
// (Unix and TCP sockets take them by reference since Linux 6.5), so a big
// READ reply costs no copy in this process, only the kernel's bookkeeping
// of the pages, where pread + write would copy every byte twice (figures:
// docs/benchmarks.md, "Figures behind design choices").
//
// Why the pointer use is safe: `head` is read through ByteView (pointer and
// length taken from the Uint8Array on the JS thread) and only during the
// send(2) below, before returning to JS. Descriptors are integers checked
// before any system call; a stale one gives an error, never a memory error.
// The socket is non-blocking (libuv made it so): a full socket buffer ends
// the call with what was sent so far, and the caller writes the rest.
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstddef>
#include <string>

#include "args.h"
#include "errors.h"

namespace dormant {

// setSendBuffer(fd, bytes) -> the send buffer size the kernel now reports
// (Linux doubles the request for bookkeeping and caps it at wmem_max).
Napi::Value SetSendBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(IntegerArg(info[0], "setSendBuffer", "fd", 0, INT_MAX));
  int bytes = static_cast<int>(IntegerArg(info[1], "setSendBuffer", "bytes", 4096, 1 << 30));
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes) != 0) ThrowNative(env, errno, "setsockopt");
  int now = 0;
  socklen_t len = sizeof now;
  if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &now, &len) != 0) ThrowNative(env, errno, "getsockopt");
  return Napi::Number::New(env, now);
}

// sendFileRange(socketFd, head, fileFd, position, length) -> bytes sent,
// head first (0..head.length + length). Stops early, without error, when
// the socket's buffer is full (EAGAIN) or the file ends; any other failure
// (a closed peer: EPIPE, ECONNRESET) is a NativeError. Never raises
// SIGPIPE (MSG_NOSIGNAL; Node ignores it anyway).
Napi::Value SendFileRange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sock = static_cast<int>(IntegerArg(info[0], "sendFileRange", "socketFd", 0, INT_MAX));
  ByteView head = BytesArg(info[1], "sendFileRange");
  int file = static_cast<int>(IntegerArg(info[2], "sendFileRange", "fileFd", 0, INT_MAX));
  off_t position = static_cast<off_t>(IntegerArg(info[3], "sendFileRange", "position", 0, 1ULL << 53));
  uint64_t length = IntegerArg(info[4], "sendFileRange", "length", 0, 1ULL << 31);
  uint64_t sent = 0;
  while (sent < head.length) {
    ssize_t n = send(sock, head.data + sent, head.length - sent, MSG_NOSIGNAL | MSG_DONTWAIT | MSG_MORE);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, static_cast<double>(sent));
      ThrowNative(env, errno, "send");
    }
    sent += static_cast<uint64_t>(n);
  }
  uint64_t done = 0;
  while (done < length) {
    ssize_t n = sendfile(sock, file, &position, length - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      ThrowNative(env, errno, "sendfile");
    }
    if (n == 0) break;  // end of file: the caller sends the rest its own way
    done += static_cast<uint64_t>(n);
  }
  return Napi::Number::New(env, static_cast<double>(sent + done));
}

// notifySocket(path, message): sends `message` as one datagram to the Unix
// socket at `path` ('@' first: the abstract namespace). The strings are
// copied into std::string on the JS thread; the call is a socket, a sendto
// and a close.
Napi::Value NotifySocket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsString()) throw Napi::TypeError::New(env, "notifySocket: path and message must be strings");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  std::string message = info[1].As<Napi::String>().Utf8Value();
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path) throw Napi::RangeError::New(env, "notifySocket: bad socket path length");
  path.copy(addr.sun_path, path.size());
  if (path[0] == '@') addr.sun_path[0] = '\0';
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowNative(env, errno, "socket");
  ssize_t n = sendto(fd, message.data(), message.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr), len);
  int err = errno;
  close(fd);
  if (n < 0) ThrowNative(env, err, "sendto");
  return env.Undefined();
}

}  // namespace dormant

