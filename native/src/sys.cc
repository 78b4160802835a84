// The few syscalls Node lacks: pidfd_open/pidfd_getfd, socket introspection,
// flock, sd_notify (a datagram to an AF_UNIX socket, which Node cannot
// send), and posix_spawn (libuv forks: the cost of fork() grows with the
// parent's memory, 3 ms at 50 MB and 45 ms at 850 MB measured here, while
// posix_spawn's vfork does not copy page tables). Each reports failure as
// an errno error naming the syscall.
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
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <vector>

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

extern "C" char **environ;

// spawn(argv, env, stdoutFd) -> {pid, stdin, stdout, stderr}: the child's
// stdin, stdout and stderr are pipes (stdout goes to stdoutFd instead when
// it is >= 0); the parent's ends are returned, close-on-exec. Signal
// dispositions are reset and the mask cleared (Node ignores SIGPIPE; an
// ignored disposition would survive exec). `env` entries are "NAME=value";
// an empty list keeps this process's environment.
static Napi::Value Spawn(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Array args = info[0].As<Napi::Array>();
  Napi::Array vars = info[1].As<Napi::Array>();
  int stdoutFd = info[2].As<Napi::Number>().Int32Value();
  std::vector<std::string> argStore, envStore;
  for (uint32_t i = 0; i < args.Length(); i++) argStore.push_back(args.Get(i).As<Napi::String>().Utf8Value());
  for (uint32_t i = 0; i < vars.Length(); i++) envStore.push_back(vars.Get(i).As<Napi::String>().Utf8Value());
  if (argStore.empty()) ThrowErrno(env, EINVAL, "posix_spawn", "empty argv");
  std::vector<char *> argv, envp;
  for (auto &a : argStore) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto &e : envStore) envp.push_back(e.data());
  envp.push_back(nullptr);

  int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
  auto closeAll = [&]() {
    for (int fd : {in[0], in[1], out[0], out[1], err[0], err[1]})
      if (fd >= 0) close(fd);
  };
  if (pipe2(in, O_CLOEXEC) || (stdoutFd < 0 && pipe2(out, O_CLOEXEC)) || pipe2(err, O_CLOEXEC)) {
    int saved = errno;
    closeAll();
    ThrowErrno(env, saved, "pipe2", argStore[0]);
  }
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&actions);
  posix_spawnattr_init(&attr);
  posix_spawn_file_actions_adddup2(&actions, in[0], 0);
  posix_spawn_file_actions_adddup2(&actions, stdoutFd >= 0 ? stdoutFd : out[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err[1], 2);
  sigset_t all, none;
  sigfillset(&all);
  sigemptyset(&none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, argv[0], &actions, &attr, argv.data(), envStore.empty() ? environ : envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  // The child's ends are the child's now.
  for (int *fd : {&in[0], &out[1], &err[1]}) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
  if (rc != 0) {
    closeAll();
    ThrowErrno(env, rc, "posix_spawn", argStore[0]);
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("pid", pid);
  result.Set("stdin", in[1]);
  result.Set("stdout", out[0]);
  result.Set("stderr", err[0]);
  return result;
}

// waitPid(pid) -> null while it runs, else {code, signal} (reaped).
static Napi::Value WaitPid(const Napi::CallbackInfo &info) {
  int status = 0;
  pid_t pid = static_cast<pid_t>(ArgU32(info, 0));
  pid_t rc;
  do rc = waitpid(pid, &status, WNOHANG);
  while (rc < 0 && errno == EINTR);
  if (rc < 0) ThrowErrno(info.Env(), errno, "waitpid", std::to_string(pid));
  if (rc == 0) return info.Env().Null();
  Napi::Object result = Napi::Object::New(info.Env());
  result.Set("code", WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  result.Set("signal", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  return result;
}

void InitSys(Napi::Env env, Napi::Object exports) {
  exports.Set("spawn", Napi::Function::New(env, Spawn));
  exports.Set("waitPid", Napi::Function::New(env, WaitPid));
  exports.Set("sdNotify", Napi::Function::New(env, SdNotify));
  exports.Set("pidfdOpen", Napi::Function::New(env, PidfdOpen));
  exports.Set("pidfdGetfd", Napi::Function::New(env, PidfdGetfd));
  exports.Set("socketInfo", Napi::Function::New(env, SocketInfo));
  exports.Set("flock", Napi::Function::New(env, Flock));
}

}  // namespace sy
