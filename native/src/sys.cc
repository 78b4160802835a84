// The few syscalls Node lacks: pidfd_open/pidfd_getfd, socket introspection,
// flock, sd_notify (a datagram to an AF_UNIX socket, which Node cannot
// send). Each reports failure as an errno error naming the syscall.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "errors.h"

#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif

namespace sy {

static Napi::Value PidfdOpen(const Napi::CallbackInfo &info) {
  int fd = static_cast<int>(syscall(SYS_pidfd_open, ArgU32(info, 0), 0));
  if (fd < 0) ThrowErrno(info.Env(), errno, "pidfd_open", std::to_string(ArgU32(info, 0)));
  return Napi::Number::New(info.Env(), fd);
}

static Napi::Value PidfdGetfd(const Napi::CallbackInfo &info) {
  int fd = static_cast<int>(syscall(SYS_pidfd_getfd, ArgFd(info, 0), ArgU32(info, 1), 0));
  if (fd < 0) ThrowErrno(info.Env(), errno, "pidfd_getfd", "fd " + std::to_string(ArgU32(info, 1)));
  return Napi::Number::New(info.Env(), fd);
}

static int GetIntOpt(Napi::Env env, int fd, int level, int name, const char *what) {
  int v = 0;
  socklen_t len = sizeof(v);
  if (getsockopt(fd, level, name, &v, &len)) ThrowErrno(env, errno, "getsockopt", what);
  return v;
}

// socketInfo(fd) -> {domain, type, protocol, listening, connected, v6only,
// reuseport, address, port, cookie, netnsIno}
static Napi::Value SocketInfo(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  Napi::Object out = Napi::Object::New(env);
  int domain = GetIntOpt(env, fd, SOL_SOCKET, SO_DOMAIN, "SO_DOMAIN");
  out.Set("domain", domain);
  out.Set("type", GetIntOpt(env, fd, SOL_SOCKET, SO_TYPE, "SO_TYPE"));
  out.Set("protocol", GetIntOpt(env, fd, SOL_SOCKET, SO_PROTOCOL, "SO_PROTOCOL"));
  out.Set("listening", GetIntOpt(env, fd, SOL_SOCKET, SO_ACCEPTCONN, "SO_ACCEPTCONN") != 0);
  out.Set("reuseport", GetIntOpt(env, fd, SOL_SOCKET, SO_REUSEPORT, "SO_REUSEPORT") != 0);
  if (domain == AF_INET6)
    out.Set("v6only", GetIntOpt(env, fd, IPPROTO_IPV6, IPV6_V6ONLY, "IPV6_V6ONLY") != 0);

  struct sockaddr_storage ss = {};
  socklen_t len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<struct sockaddr *>(&ss), &len)) ThrowErrno(env, errno, "getsockname");
  char text[INET6_ADDRSTRLEN] = "";
  if (ss.ss_family == AF_INET) {
    auto *sin = reinterpret_cast<struct sockaddr_in *>(&ss);
    inet_ntop(AF_INET, &sin->sin_addr, text, sizeof(text));
    out.Set("port", ntohs(sin->sin_port));
  } else if (ss.ss_family == AF_INET6) {
    auto *sin6 = reinterpret_cast<struct sockaddr_in6 *>(&ss);
    inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof(text));
    out.Set("port", ntohs(sin6->sin6_port));
  }
  out.Set("address", std::string(text));

  struct sockaddr_storage peer = {};
  len = sizeof(peer);
  out.Set("connected", getpeername(fd, reinterpret_cast<struct sockaddr *>(&peer), &len) == 0);

  uint64_t cookie = 0;
  len = sizeof(cookie);
  if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len)) ThrowErrno(env, errno, "getsockopt", "SO_COOKIE");
  out.Set("cookie", Napi::BigInt::New(env, cookie));

  // The socket's network namespace: a socket from another namespace must
  // never be handed packets of this one.
  int ns = ioctl(fd, SIOCGSKNS);
  if (ns < 0) ThrowErrno(env, errno, "ioctl", "SIOCGSKNS");
  struct stat st;
  int rc = fstat(ns, &st);
  int saved = errno;
  close(ns);
  if (rc) ThrowErrno(env, saved, "fstat", "socket netns");
  out.Set("netnsIno", static_cast<double>(st.st_ino));
  return out;
}

// flock(fd, exclusive, wait) -> acquired
static Napi::Value Flock(const Napi::CallbackInfo &info) {
  int op = (info[1].ToBoolean() ? LOCK_EX : LOCK_SH) | (info[2].ToBoolean() ? 0 : LOCK_NB);
  if (flock(ArgFd(info, 0), op)) {
    if (errno == EWOULDBLOCK) return Napi::Boolean::New(info.Env(), false);
    ThrowErrno(info.Env(), errno, "flock");
  }
  return Napi::Boolean::New(info.Env(), true);
}

// sdNotify(socketPath, message): one datagram to systemd's notification
// socket ($NOTIFY_SOCKET; "@name" is the abstract namespace), as
// sd_notify(3) sends it.
static Napi::Value SdNotify(const Napi::CallbackInfo &info) {
  std::string path = info[0].As<Napi::String>().Utf8Value();
  std::string message = info[1].As<Napi::String>().Utf8Value();
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    ThrowErrno(info.Env(), EINVAL, "sd_notify", path);
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (path[0] == '@') addr.sun_path[0] = '\0';
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(info.Env(), errno, "socket", "sd_notify");
  ssize_t sent = sendto(fd, message.data(), message.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr *>(&addr), len);
  int saved = errno;
  close(fd);
  if (sent < 0) ThrowErrno(info.Env(), saved, "sendto", path);
  return info.Env().Undefined();
}

void InitSys(Napi::Env env, Napi::Object exports) {
  exports.Set("sdNotify", Napi::Function::New(env, SdNotify));
  exports.Set("pidfdOpen", Napi::Function::New(env, PidfdOpen));
  exports.Set("pidfdGetfd", Napi::Function::New(env, PidfdGetfd));
  exports.Set("socketInfo", Napi::Function::New(env, SocketInfo));
  exports.Set("flock", Napi::Function::New(env, Flock));
}

}  // namespace sy
