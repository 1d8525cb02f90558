// setSendBuffer: SO_SNDBUF of a socket descriptor, so a large NBD reply
// leaves in one write instead of a write per drained socket buffer.
//
// No pointers cross from JS: the arguments are integers, checked before
// the system call.
#include <sys/socket.h>

#include <cerrno>
#include <climits>

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

}  // namespace dormant
