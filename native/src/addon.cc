#include <cerrno>
#include <cstring>

#include "errors.h"

namespace sy {

Napi::Error ErrnoError(Napi::Env env, int err, const char *syscall, const std::string &detail) {
  const char *name = strerrorname_np(err);
  std::string message = std::string(syscall) + ": " + strerror(err);
  if (!detail.empty()) message += " (" + detail + ")";
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, name ? name : "EUNKNOWN"));
  e.Set("errno", Napi::Number::New(env, -err));
  e.Set("syscall", Napi::String::New(env, syscall));
  if (!detail.empty()) e.Set("detail", Napi::String::New(env, detail));
  return e;
}

static void TypeErr(const Napi::CallbackInfo &info, size_t i, const char *want) {
  throw Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be " + want);
}

int ArgFd(const Napi::CallbackInfo &info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber()) TypeErr(info, i, "a file descriptor");
  int fd = info[i].As<Napi::Number>().Int32Value();
  if (fd < 0) TypeErr(info, i, "a file descriptor");
  return fd;
}

uint32_t ArgU32(const Napi::CallbackInfo &info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber()) TypeErr(info, i, "a number");
  return info[i].As<Napi::Number>().Uint32Value();
}

std::string ArgString(const Napi::CallbackInfo &info, size_t i) {
  if (info.Length() <= i || !info[i].IsString()) TypeErr(info, i, "a string");
  return info[i].As<Napi::String>().Utf8Value();
}

Napi::Buffer<uint8_t> ArgBuffer(const Napi::CallbackInfo &info, size_t i) {
  if (info.Length() <= i || !info[i].IsBuffer()) TypeErr(info, i, "a Buffer");
  return info[i].As<Napi::Buffer<uint8_t>>();
}

}  // namespace sy

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  sy::InitBpf(env, exports);
  sy::InitSys(env, exports);
  return exports;
}

NODE_API_MODULE(switchyard, Init)
