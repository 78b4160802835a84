// Errors thrown into JavaScript carry `code` (errno name), `errno` (negative,
// as in Node's own errors) and `syscall`, and never get flattened into
// strings here: callers decide what to tell the operator.
#pragma once
#include <napi.h>
#include <string>

namespace sy {

Napi::Error ErrnoError(Napi::Env env, int err, const char *syscall, const std::string &detail = "");

[[noreturn]] inline void ThrowErrno(Napi::Env env, int err, const char *syscall,
                                    const std::string &detail = "") {
  throw ErrnoError(env, err, syscall, detail);
}

// Argument helpers: a wrong type from TypeScript is a programming error.
int ArgFd(const Napi::CallbackInfo &info, size_t i);
uint32_t ArgU32(const Napi::CallbackInfo &info, size_t i);
std::string ArgString(const Napi::CallbackInfo &info, size_t i);
Napi::Buffer<uint8_t> ArgBuffer(const Napi::CallbackInfo &info, size_t i);

void InitBpf(Napi::Env env, Napi::Object exports);
void InitSys(Napi::Env env, Napi::Object exports);

}  // namespace sy
