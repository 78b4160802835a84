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
#include <poll.h>
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
// renameExchange(a, b): swaps two paths atomically (renameat2
// RENAME_EXCHANGE; bpffs supports it through simple_rename).
static Napi::Value RenameExchange(const Napi::CallbackInfo &info) {
  std::string a = ArgString(info, 0);
  std::string b = ArgString(info, 1);
  if (syscall(SYS_renameat2, AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), 2 /* RENAME_EXCHANGE */))
    ThrowErrno(info.Env(), errno, "renameat2", a + " <-> " + b);
  return info.Env().Undefined();
}

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

// spawn(argv, env, stdoutFd, stdinFd) -> {pid, stdin, stdout, stderr}: the
// child's stdin, stdout and stderr are pipes (stdout goes to stdoutFd, stdin
// comes from stdinFd, instead when >= 0: -1 is returned for those); the
// parent's ends are returned, close-on-exec. Signal
// dispositions are reset and the mask cleared (Node ignores SIGPIPE; an
// ignored disposition would survive exec). `env` entries are "NAME=value";
// an empty list keeps this process's environment.
static Napi::Value Spawn(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Array args = info[0].As<Napi::Array>();
  Napi::Array vars = info[1].As<Napi::Array>();
  int stdoutFd = info[2].As<Napi::Number>().Int32Value();
  int stdinFd = info.Length() > 3 ? info[3].As<Napi::Number>().Int32Value() : -1;
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
  if ((stdinFd < 0 && pipe2(in, O_CLOEXEC)) || (stdoutFd < 0 && pipe2(out, O_CLOEXEC)) || pipe2(err, O_CLOEXEC)) {
    int saved = errno;
    closeAll();
    ThrowErrno(env, saved, "pipe2", argStore[0]);
  }
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&actions);
  posix_spawnattr_init(&attr);
  posix_spawn_file_actions_adddup2(&actions, stdinFd >= 0 ? stdinFd : in[0], 0);
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

// peerCred(fd) -> {pid, uid, gid} of the process at the other end of a
// Unix socket (SO_PEERCRED: what it was when it connected; cannot be forged).
static Napi::Value PeerCred(const Napi::CallbackInfo &info) {
  struct ucred cred {};
  socklen_t len = sizeof(cred);
  if (getsockopt(ArgFd(info, 0), SOL_SOCKET, SO_PEERCRED, &cred, &len)) ThrowErrno(info.Env(), errno, "getsockopt", "SO_PEERCRED");
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("pid", cred.pid);
  out.Set("uid", cred.uid);
  out.Set("gid", cred.gid);
  return out;
}

// Reads one request from a connected Unix stream socket: bytes up to the
// first newline (or the peer's shutdown), at most maxBytes, and the file
// descriptors passed with it (SCM_RIGHTS, at most 16, received
// close-on-exec). Blocking (poll + recvmsg) with a deadline, so it runs on
// the thread pool; the socket's libuv handle must be paused meanwhile.
class ReceiveWorker : public Napi::AsyncWorker {
 public:
  ReceiveWorker(Napi::Env env, int fd, size_t maxBytes, int timeoutMs)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), fd_(fd), max_(maxBytes), timeoutMs_(timeoutMs) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
      struct timespec now;
      clock_gettime(CLOCK_MONOTONIC, &now);
      long elapsed = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
      if (elapsed >= timeoutMs_) {
        err_ = ETIMEDOUT;
        syscall_ = "poll";
        return;
      }
      struct pollfd p = {fd_, POLLIN, 0};
      int ready = poll(&p, 1, static_cast<int>(timeoutMs_ - elapsed));
      if (ready < 0) {
        if (errno == EINTR) continue;
        err_ = errno;
        syscall_ = "poll";
        return;
      }
      if (ready == 0) continue;
      char buf[4096];
      union {
        char space[CMSG_SPACE(sizeof(int) * 16)];
        struct cmsghdr align;
      } control;
      struct iovec iov = {buf, sizeof(buf)};
      struct msghdr msg {};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control.space;
      msg.msg_controllen = sizeof(control.space);
      ssize_t n = recvmsg(fd_, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        err_ = errno;
        syscall_ = "recvmsg";
        return;
      }
      for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const int *fds = reinterpret_cast<const int *>(CMSG_DATA(c));
        for (size_t i = 0; i < count; i++) fds_.push_back(fds[i]);
      }
      if (msg.msg_flags & MSG_CTRUNC) truncated_ = true;
      if (n == 0) return;  // the peer shut down its side
      data_.append(buf, static_cast<size_t>(n));
      if (data_.size() > max_) {
        err_ = EMSGSIZE;
        syscall_ = "recvmsg";
        return;
      }
      if (data_.find('\n') != std::string::npos) return;
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_ != 0 || truncated_) {
      for (int fd : fds_) close(fd);
      deferred_.Reject(ErrnoError(env, err_ != 0 ? err_ : EMSGSIZE, syscall_ ? syscall_ : "recvmsg", truncated_ ? "more than 16 descriptors" : "").Value());
      return;
    }
    Napi::Object out = Napi::Object::New(env);
    out.Set("data", Napi::Buffer<char>::Copy(env, data_.data(), data_.size()));
    Napi::Array fds = Napi::Array::New(env, fds_.size());
    for (size_t i = 0; i < fds_.size(); i++) fds.Set(static_cast<uint32_t>(i), fds_[i]);
    out.Set("fds", fds);
    deferred_.Resolve(out);
  }

 private:
  Napi::Promise::Deferred deferred_;
  int fd_;
  size_t max_;
  int timeoutMs_;
  std::string data_;
  std::vector<int> fds_;
  bool truncated_ = false;
  int err_ = 0;
  const char *syscall_ = nullptr;
};

// receiveRequest(fd, maxBytes, timeoutMs) -> Promise<{data, fds}>
static Napi::Value ReceiveRequest(const Napi::CallbackInfo &info) {
  auto *worker = new ReceiveWorker(info.Env(), ArgFd(info, 0), ArgU32(info, 1), static_cast<int>(ArgU32(info, 2)));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

// unixRequest(path, request, fds, timeoutMs) -> reply: the client side, for
// the CLI (synchronous): connect, send the request with the descriptors
// (SCM_RIGHTS on its first bytes), shut down writing, read the reply to EOF.
static Napi::Value UnixRequest(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0);
  Napi::Buffer<uint8_t> request = ArgBuffer(info, 1);
  Napi::Array fdList = info[2].As<Napi::Array>();
  int timeoutMs = static_cast<int>(ArgU32(info, 3));
  std::vector<int> fds;
  for (uint32_t i = 0; i < fdList.Length() && i < 16; i++) fds.push_back(fdList.Get(i).As<Napi::Number>().Int32Value());
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) ThrowErrno(env, ENAMETOOLONG, "connect", path);
  std::memcpy(addr.sun_path, path.data(), path.size());
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) ThrowErrno(env, errno, "socket", path);
  struct timeval tv = {timeoutMs / 1000, (timeoutMs % 1000) * 1000};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  auto fail = [&](const char *call) {
    int saved = errno;
    close(s);
    ThrowErrno(env, saved, call, path);
  };
  if (connect(s, reinterpret_cast<sockaddr *>(&addr), sizeof(addr))) fail("connect");
  size_t sent = 0;
  const char *data = reinterpret_cast<const char *>(request.Data());
  while (sent < request.Length()) {
    struct iovec iov = {const_cast<char *>(data + sent), request.Length() - sent};
    struct msghdr msg {};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    union {
      char space[CMSG_SPACE(sizeof(int) * 16)];
      struct cmsghdr align;
    } control;
    if (sent == 0 && !fds.empty()) {
      msg.msg_control = control.space;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    ssize_t n = sendmsg(s, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("sendmsg");
    }
    sent += static_cast<size_t>(n);
  }
  shutdown(s, SHUT_WR);
  std::string reply;
  char buf[65536];
  for (;;) {
    ssize_t n = read(s, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("read");
    }
    if (n == 0) break;
    reply.append(buf, static_cast<size_t>(n));
  }
  close(s);
  return Napi::Buffer<char>::Copy(env, reply.data(), reply.size());
}

void InitSys(Napi::Env env, Napi::Object exports) {
  exports.Set("peerCred", Napi::Function::New(env, PeerCred));
  exports.Set("receiveRequest", Napi::Function::New(env, ReceiveRequest));
  exports.Set("unixRequest", Napi::Function::New(env, UnixRequest));
  exports.Set("spawn", Napi::Function::New(env, Spawn));
  exports.Set("waitPid", Napi::Function::New(env, WaitPid));
  exports.Set("sdNotify", Napi::Function::New(env, SdNotify));
  exports.Set("pidfdOpen", Napi::Function::New(env, PidfdOpen));
  exports.Set("pidfdGetfd", Napi::Function::New(env, PidfdGetfd));
  exports.Set("socketInfo", Napi::Function::New(env, SocketInfo));
  exports.Set("flock", Napi::Function::New(env, Flock));
  exports.Set("renameExchange", Napi::Function::New(env, RenameExchange));
}

}  // namespace sy
