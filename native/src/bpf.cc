// BPF objects, maps, programs and links. Thin wrappers: every function maps
// to one or two syscalls (through libbpf) and reports failure as an errno
// error; all policy lives in TypeScript (src/kernel/native.ts).
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "errors.h"

namespace sy {

// libbpf prints the verifier log through this hook; keep the tail so a
// failed load can say why.
static std::string g_libbpf_log;
static int CaptureLibbpfLog(enum libbpf_print_level level, const char *fmt, va_list args) {
  if (level == LIBBPF_DEBUG) return 0;
  va_list copy;
  va_copy(copy, args);
  int n = vsnprintf(nullptr, 0, fmt, copy);
  va_end(copy);
  if (n > 0) {
    std::string buf(static_cast<size_t>(n) + 1, '\0');
    vsnprintf(buf.data(), buf.size(), fmt, args);
    buf.resize(static_cast<size_t>(n));
    g_libbpf_log += buf;
  }
  if (g_libbpf_log.size() > 64 * 1024) g_libbpf_log.erase(0, g_libbpf_log.size() - 64 * 1024);
  return 0;
}

static int DupOrThrow(Napi::Env env, int fd, const char *what) {
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (copy < 0) ThrowErrno(env, errno, "fcntl", what);
  return copy;
}

// loadObject(path, reuse: {mapName: fd}, innerMaps: {outerMapName: fd})
//   -> {maps: {name: fd}, programs: {name: fd}}
// Maps named in `reuse` are not created: the program is verified against the
// given (pinned) maps, which is how an upgrade keeps the maps. A map-of-maps
// that is created takes its inner template from innerMaps (every inner map
// must then match it), so the caller decides the inner size at load time.
static Napi::Value LoadObject(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0);
  Napi::Object reuse = info.Length() > 1 && info[1].IsObject() ? info[1].As<Napi::Object>()
                                                               : Napi::Object::New(env);
  Napi::Object inner = info.Length() > 2 && info[2].IsObject() ? info[2].As<Napi::Object>()
                                                               : Napi::Object::New(env);
  g_libbpf_log.clear();
  libbpf_set_print(CaptureLibbpfLog);
  struct bpf_object *obj = bpf_object__open_file(path.c_str(), nullptr);
  if (!obj) ThrowErrno(env, errno, "bpf_object__open_file", path + ": " + g_libbpf_log);

  struct bpf_map *map;
  bpf_object__for_each_map(map, obj) {
    const char *name = bpf_map__name(map);
    if (inner.Has(name) && !reuse.Has(name)) {
      // (bpf_map__set_max_entries on bpf_map__inner_map() crashes libbpf 1.1.)
      int err = bpf_map__set_inner_map_fd(map, inner.Get(name).As<Napi::Number>().Int32Value());
      if (err) {
        bpf_object__close(obj);
        ThrowErrno(env, -err, "bpf_map__set_inner_map_fd", name);
      }
    }
    if (!reuse.Has(name)) continue;
    int fd = reuse.Get(name).As<Napi::Number>().Int32Value();
    int err = bpf_map__reuse_fd(map, fd);
    if (err) {
      bpf_object__close(obj);
      ThrowErrno(env, -err, "bpf_map__reuse_fd", name);
    }
  }
  // The verifier gives up with EAGAIN whenever a signal is pending for this
  // thread (SIGCHLD of a tool the agent ran, a profiler's SIGPROF), and a
  // big program takes it ~0.1-0.3 s: signals wait until the load is done.
  sigset_t all, previous;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &previous);
  int err = bpf_object__load(obj);
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  if (err) {
    std::string log = g_libbpf_log;
    bpf_object__close(obj);
    ThrowErrno(env, -err, "bpf_object__load", log);
  }

  Napi::Object maps = Napi::Object::New(env);
  Napi::Object programs = Napi::Object::New(env);
  try {
    bpf_object__for_each_map(map, obj) {
      maps.Set(bpf_map__name(map), DupOrThrow(env, bpf_map__fd(map), bpf_map__name(map)));
    }
    struct bpf_program *prog;
    bpf_object__for_each_program(prog, obj) {
      programs.Set(bpf_program__name(prog),
                   DupOrThrow(env, bpf_program__fd(prog), bpf_program__name(prog)));
    }
  } catch (...) {
    bpf_object__close(obj);
    throw;
  }
  bpf_object__close(obj);
  Napi::Object result = Napi::Object::New(env);
  result.Set("maps", maps);
  result.Set("programs", programs);
  return result;
}

// mapCreate(type, keySize, valueSize, maxEntries, flags, name, innerMapFd) -> fd
static Napi::Value MapCreate(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  LIBBPF_OPTS(bpf_map_create_opts, opts);
  opts.map_flags = ArgU32(info, 4);
  std::string name = ArgString(info, 5);
  if (info.Length() > 6 && info[6].IsNumber()) opts.inner_map_fd = ArgU32(info, 6);
  int fd = bpf_map_create(static_cast<enum bpf_map_type>(ArgU32(info, 0)), name.c_str(),
                          ArgU32(info, 1), ArgU32(info, 2), ArgU32(info, 3), &opts);
  if (fd < 0) ThrowErrno(env, errno, "bpf_map_create", name);
  return Napi::Number::New(env, fd);
}

static Napi::Value ObjPin(const Napi::CallbackInfo &info) {
  std::string path = ArgString(info, 1);
  if (bpf_obj_pin(ArgFd(info, 0), path.c_str())) ThrowErrno(info.Env(), errno, "bpf_obj_pin", path);
  return info.Env().Undefined();
}

static Napi::Value ObjGet(const Napi::CallbackInfo &info) {
  std::string path = ArgString(info, 0);
  int fd = bpf_obj_get(path.c_str());
  if (fd < 0) ThrowErrno(info.Env(), errno, "bpf_obj_get", path);
  return Napi::Number::New(info.Env(), fd);
}

// getFdById(id, kind) -> a new fd on the map, program or link with that id.
static Napi::Value GetFdById(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  uint32_t id = ArgU32(info, 0);
  std::string kind = ArgString(info, 1);
  int fd;
  if (kind == "map") fd = bpf_map_get_fd_by_id(id);
  else if (kind == "prog") fd = bpf_prog_get_fd_by_id(id);
  else if (kind == "link") fd = bpf_link_get_fd_by_id(id);
  else throw Napi::TypeError::New(env, "kind must be map, prog or link");
  if (fd < 0) ThrowErrno(env, errno, "bpf_obj_get_fd_by_id", kind);
  return Napi::Number::New(env, fd);
}

// linkIds() -> the ids of every BPF link on the machine (the load's orphan search).
static Napi::Value LinkIds(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Array out = Napi::Array::New(env);
  __u32 id = 0;
  uint32_t n = 0;
  while (bpf_link_get_next_id(id, &id) == 0) out.Set(n++, Napi::Number::New(env, id));
  if (errno != ENOENT) ThrowErrno(env, errno, "bpf_link_get_next_id");
  return out;
}

// progQuery(targetFd, attachType) -> ids of the programs attached there
// (BPF_PROG_QUERY). On a netns fd it needs only CAP_NET_ADMIN, where listing
// links or programs by id needs CAP_SYS_ADMIN.
static Napi::Value ProgQuery(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  auto type = static_cast<enum bpf_attach_type>(ArgU32(info, 1));
  // Programs can be attached between two queries: ask again with room for all.
  std::vector<__u32> ids(16);
  for (;;) {
    __u32 count = static_cast<__u32>(ids.size());
    __u32 flags = 0;
    if (bpf_prog_query(fd, type, 0, &flags, ids.data(), &count) == 0) {
      Napi::Array out = Napi::Array::New(env, count);
      for (__u32 i = 0; i < count; i++) out.Set(i, Napi::Number::New(env, ids[i]));
      return out;
    }
    if (errno != ENOSPC || count <= ids.size()) ThrowErrno(env, errno, "bpf_prog_query");
    ids.resize(count + 16);
  }
}

static Napi::Value ObjInfo(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  std::string kind = ArgString(info, 1);
  Napi::Object out = Napi::Object::New(env);
  if (kind == "map") {
    struct bpf_map_info m = {};
    __u32 len = sizeof(m);
    if (bpf_obj_get_info_by_fd(fd, &m, &len)) ThrowErrno(env, errno, "bpf_obj_get_info_by_fd", "map");
    out.Set("type", m.type);
    out.Set("id", m.id);
    out.Set("keySize", m.key_size);
    out.Set("valueSize", m.value_size);
    out.Set("maxEntries", m.max_entries);
    out.Set("flags", m.map_flags);
    out.Set("name", std::string(m.name));
  } else if (kind == "prog") {
    struct bpf_prog_info p = {};
    __u32 len = sizeof(p);
    if (bpf_obj_get_info_by_fd(fd, &p, &len)) ThrowErrno(env, errno, "bpf_obj_get_info_by_fd", "prog");
    out.Set("type", p.type);
    out.Set("id", p.id);
    out.Set("name", std::string(p.name));
    out.Set("loadTime", Napi::BigInt::New(env, static_cast<uint64_t>(p.load_time)));
    out.Set("jited", p.jited_prog_len > 0);
    // The kernel's digest of the instructions as loaded, map references
    // zeroed: the same object code has the same tag whatever maps it uses.
    char tag[2 * BPF_TAG_SIZE + 1];
    for (int i = 0; i < BPF_TAG_SIZE; i++) snprintf(tag + 2 * i, 3, "%02x", p.tag[i]);
    out.Set("tag", std::string(tag));
    // Cumulative run time and count: the kernel adds to them only while
    // someone holds a BPF_ENABLE_STATS fd (enableStats).
    out.Set("runTimeNs", Napi::BigInt::New(env, static_cast<uint64_t>(p.run_time_ns)));
    out.Set("runCnt", Napi::BigInt::New(env, static_cast<uint64_t>(p.run_cnt)));
  } else if (kind == "link") {
    struct bpf_link_info l = {};
    __u32 len = sizeof(l);
    if (bpf_obj_get_info_by_fd(fd, &l, &len)) ThrowErrno(env, errno, "bpf_obj_get_info_by_fd", "link");
    out.Set("type", l.type);
    out.Set("id", l.id);
    out.Set("progId", l.prog_id);
    if (l.type == BPF_LINK_TYPE_NETNS) {
      out.Set("netnsIno", l.netns.netns_ino);
      out.Set("attachType", l.netns.attach_type);
    }
  } else {
    throw Napi::TypeError::New(env, "kind must be map, prog or link");
  }
  return out;
}

static Napi::Value MapLookup(const Napi::CallbackInfo &info) {
  auto key = ArgBuffer(info, 1);
  auto value = ArgBuffer(info, 2);
  if (bpf_map_lookup_elem(ArgFd(info, 0), key.Data(), value.Data())) {
    if (errno == ENOENT) return Napi::Boolean::New(info.Env(), false);
    ThrowErrno(info.Env(), errno, "bpf_map_lookup_elem");
  }
  return Napi::Boolean::New(info.Env(), true);
}

static Napi::Value MapUpdate(const Napi::CallbackInfo &info) {
  auto key = ArgBuffer(info, 1);
  auto value = ArgBuffer(info, 2);
  uint32_t flags = info.Length() > 3 ? ArgU32(info, 3) : static_cast<uint32_t>(BPF_ANY);
  if (bpf_map_update_elem(ArgFd(info, 0), key.Data(), value.Data(), flags))
    ThrowErrno(info.Env(), errno, "bpf_map_update_elem");
  return info.Env().Undefined();
}

static Napi::Value MapDelete(const Napi::CallbackInfo &info) {
  auto key = ArgBuffer(info, 1);
  if (bpf_map_delete_elem(ArgFd(info, 0), key.Data())) {
    if (errno == ENOENT) return Napi::Boolean::New(info.Env(), false);
    ThrowErrno(info.Env(), errno, "bpf_map_delete_elem");
  }
  return Napi::Boolean::New(info.Env(), true);
}

// mapLookupBatch(fd, inToken|null, outToken, keys, values, count) -> {count, done}
static Napi::Value MapLookupBatch(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  void *in = info[1].IsBuffer() ? info[1].As<Napi::Buffer<uint8_t>>().Data() : nullptr;
  auto out = ArgBuffer(info, 2);
  auto keys = ArgBuffer(info, 3);
  auto values = ArgBuffer(info, 4);
  __u32 count = ArgU32(info, 5);
  bool done = false;
  if (bpf_map_lookup_batch(fd, in, out.Data(), keys.Data(), values.Data(), &count, nullptr)) {
    if (errno != ENOENT) ThrowErrno(env, errno, "bpf_map_lookup_batch");
    done = true;
  }
  Napi::Object r = Napi::Object::New(env);
  r.Set("count", count);
  r.Set("done", done);
  return r;
}

// mapUpdateBatch(fd, keys, values, count, flags) -> count written
static Napi::Value MapUpdateBatch(const Napi::CallbackInfo &info) {
  auto keys = ArgBuffer(info, 1);
  auto values = ArgBuffer(info, 2);
  __u32 count = ArgU32(info, 3);
  LIBBPF_OPTS(bpf_map_batch_opts, opts);
  opts.elem_flags = info.Length() > 4 ? ArgU32(info, 4) : 0;
  if (bpf_map_update_batch(ArgFd(info, 0), keys.Data(), values.Data(), &count, &opts))
    ThrowErrno(info.Env(), errno, "bpf_map_update_batch", std::to_string(count) + " written");
  return Napi::Number::New(info.Env(), count);
}

// mmap of a BPF_F_MMAPABLE array as an ArrayBuffer. The mapping keeps the
// map alive in the kernel, so callers unmap explicitly (unmap) as soon as they
// are done rather than waiting for the garbage collector.
struct Mapping {
  void *addr;
  size_t len;
};
static std::mutex g_mappings_lock;
static std::unordered_map<void *, Mapping *> g_mappings;

static void FinalizeMapping(Napi::Env, void *, Mapping *m) {
  std::lock_guard<std::mutex> guard(g_mappings_lock);
  if (m->addr) {
    munmap(m->addr, m->len);
    g_mappings.erase(m->addr);
  }
  delete m;
}

static Napi::Value Mmap(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  double len = info[1].As<Napi::Number>().DoubleValue();
  bool writable = info.Length() > 2 && info[2].ToBoolean();
  void *addr = mmap(nullptr, static_cast<size_t>(len), PROT_READ | (writable ? PROT_WRITE : 0),
                    MAP_SHARED, fd, 0);
  if (addr == MAP_FAILED) ThrowErrno(env, errno, "mmap");
  auto *m = new Mapping{addr, static_cast<size_t>(len)};
  {
    std::lock_guard<std::mutex> guard(g_mappings_lock);
    g_mappings[addr] = m;
  }
  return Napi::ArrayBuffer::New(env, addr, m->len, FinalizeMapping, m);
}

static Napi::Value Unmap(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer()) throw Napi::TypeError::New(env, "argument 0 must be an ArrayBuffer");
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  void *addr = ab.Data();
  {
    std::lock_guard<std::mutex> guard(g_mappings_lock);
    auto it = g_mappings.find(addr);
    if (it == g_mappings.end()) return env.Undefined();  // already unmapped
    munmap(it->second->addr, it->second->len);
    it->second->addr = nullptr;
    g_mappings.erase(it);
  }
  ab.Detach();
  return env.Undefined();
}

static Napi::Value LinkCreateSkLookup(const Napi::CallbackInfo &info) {
  int fd = bpf_link_create(ArgFd(info, 0), ArgFd(info, 1), BPF_SK_LOOKUP, nullptr);
  if (fd < 0) ThrowErrno(info.Env(), errno, "bpf_link_create");
  return Napi::Number::New(info.Env(), fd);
}

static Napi::Value LinkUpdate(const Napi::CallbackInfo &info) {
  if (bpf_link_update(ArgFd(info, 0), ArgFd(info, 1), nullptr))
    ThrowErrno(info.Env(), errno, "bpf_link_update");
  return info.Env().Undefined();
}

// enableStats() -> fd. BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): every program's
// run_time_ns and run_cnt count while any such fd is open; closing the last
// one restores the previous setting (sysctl kernel.bpf_stats_enabled).
static Napi::Value EnableStats(const Napi::CallbackInfo &info) {
  int fd = bpf_enable_stats(BPF_STATS_RUN_TIME);
  if (fd < 0) ThrowErrno(info.Env(), errno, "bpf_enable_stats");
  return Napi::Number::New(info.Env(), fd);
}

// progTestRun(progFd, ctx, repeat) -> {retval, duration, ctx}
static Napi::Value ProgTestRun(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  auto ctx = ArgBuffer(info, 1);
  Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::Copy(env, ctx.Data(), ctx.Length());
  LIBBPF_OPTS(bpf_test_run_opts, opts);
  opts.ctx_in = ctx.Data();
  opts.ctx_size_in = ctx.Length();
  opts.ctx_out = out.Data();
  opts.ctx_size_out = out.Length();
  opts.repeat = static_cast<int>(info.Length() > 2 ? ArgU32(info, 2) : 1);
  if (bpf_prog_test_run_opts(ArgFd(info, 0), &opts)) ThrowErrno(env, errno, "bpf_prog_test_run");
  Napi::Object r = Napi::Object::New(env);
  r.Set("retval", opts.retval);
  r.Set("duration", opts.duration);
  r.Set("ctx", out);
  return r;
}

void InitBpf(Napi::Env env, Napi::Object exports) {
  exports.Set("loadObject", Napi::Function::New(env, LoadObject));
  exports.Set("mapCreate", Napi::Function::New(env, MapCreate));
  exports.Set("objPin", Napi::Function::New(env, ObjPin));
  exports.Set("objGet", Napi::Function::New(env, ObjGet));
  exports.Set("getFdById", Napi::Function::New(env, GetFdById));
  exports.Set("objInfo", Napi::Function::New(env, ObjInfo));
  exports.Set("linkIds", Napi::Function::New(env, LinkIds));
  exports.Set("progQuery", Napi::Function::New(env, ProgQuery));
  exports.Set("mapLookup", Napi::Function::New(env, MapLookup));
  exports.Set("mapUpdate", Napi::Function::New(env, MapUpdate));
  exports.Set("mapDelete", Napi::Function::New(env, MapDelete));
  exports.Set("mapLookupBatch", Napi::Function::New(env, MapLookupBatch));
  exports.Set("mapUpdateBatch", Napi::Function::New(env, MapUpdateBatch));
  exports.Set("mmap", Napi::Function::New(env, Mmap));
  exports.Set("unmap", Napi::Function::New(env, Unmap));
  exports.Set("linkCreateSkLookup", Napi::Function::New(env, LinkCreateSkLookup));
  exports.Set("linkUpdate", Napi::Function::New(env, LinkUpdate));
  exports.Set("progTestRun", Napi::Function::New(env, ProgTestRun));
  exports.Set("enableStats", Napi::Function::New(env, EnableStats));
}

}  // namespace sy
