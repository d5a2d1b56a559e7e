// cuda_emulator.h: runs the rescorer kernels on the CPU, for testing where no GPU exists.
//
// The kernel sources are compiled unchanged as C++ (RK_EMULATE defined; common.cuh then
// includes this header instead of the CUDA ones) into librescorer_kernels_emu.so, which
// has the same C ABI as the CUDA library and takes host pointers. Only the part of CUDA
// these kernels use is provided, but that part follows CUDA's execution model:
//
// * Every CUDA thread of a block is a fiber (ucontext) on one OS thread; blocks run one
//   after another. A fiber runs until it reaches a barrier (__syncthreads, or a warp
//   collective: __syncwarp, __shfl_xor_sync, __ballot_sync), so shared memory written by
//   one thread is only seen by another if a barrier orders them, or by luck of the
//   schedule. The schedule is selectable (rk_emu_set_schedule: threads in index order,
//   reversed, or reshuffled every round) so that a missing barrier shows up as a wrong
//   result under at least one of them.
// * Misuse that would hang or be undefined on a GPU is reported as a launch failure
//   (cudaGetLastError) instead: deadlock (threads waiting at barriers no one else will
//   reach), threads of a block at different __syncthreads, lanes of one warp in different
//   collectives, collective masks that are not
//   the warp's live lanes, a lane exiting while its warp waits for it, launch
//   configurations the hardware rejects (empty grid, too many threads, more dynamic shared
//   memory than reserved or than an sm_80 block may have), and writes past the end of the
//   dynamic shared memory (a guard zone is checked after every block). Dynamic shared
//   memory is filled with garbage before each block, so reads of uninitialised entries
//   give wrong results rather than zeros.
// * Tensor-core WMMA fragments hold the whole 16x16 tile in every lane and multiply in
//   fp32, so results differ from a GPU's only in accumulation order.
//
// Not modelled: timing, memory coalescing or bank conflicts. Races that a barrier's yield
// hides (a fiber switch publishes every write) are found by the ThreadSanitizer build.
// Speed: about a microsecond per fiber switch, fine for test-sized problems, useless for
// benchmarks.
#pragma once

#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---------------------------------------------------------------- ThreadSanitizer
// Built with -fsanitize=thread (emulator/race_check.cpp), every fiber is a TSan fiber and
// each barrier a release/acquire pair, so TSan reports any two accesses of different CUDA
// threads to the same memory, one a write, that no barrier orders: a race detector for
// shared memory independent of the schedule. The emulator's own bookkeeping is hidden
// from it.
#if defined(__SANITIZE_THREAD__)
#define RK_EMU_TSAN 1
extern "C" {
void *__tsan_get_current_fiber(void);
void *__tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void *fiber);
void __tsan_switch_to_fiber(void *fiber, unsigned flags);
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
void __tsan_ignore_thread_begin(void);
void __tsan_ignore_thread_end(void);
}
#define RK_EMU_QUIET_BEGIN() __tsan_ignore_thread_begin()
#define RK_EMU_QUIET_END() __tsan_ignore_thread_end()
#else
#define RK_EMU_TSAN 0
#define RK_EMU_QUIET_BEGIN() ((void)0)
#define RK_EMU_QUIET_END() ((void)0)
#endif

// ---------------------------------------------------------------- qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Blocks run one at a time, so one static copy of a __shared__ variable serves every block.
#define __shared__ static

// ---------------------------------------------------------------- vector and index types
struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) float2 { float x, y; };
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

// ---------------------------------------------------------------- 16-bit float types
struct __half { uint16_t bits; };
struct __half2 { __half x, y; };
struct __nv_bfloat16 { uint16_t bits; };
struct __nv_bfloat162 { __nv_bfloat16 x, y; };

inline float __half2float(__half h) {
  _Float16 f;
  memcpy(&f, &h.bits, 2);
  return (float)f;
}
inline __half __float2half(float x) {
  _Float16 f = (_Float16)x;  // round to nearest even
  __half h;
  memcpy(&h.bits, &f, 2);
  return h;
}
inline float __bfloat162float(__nv_bfloat16 b) {
  uint32_t u = (uint32_t)b.bits << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  __nv_bfloat16 b;
  if (std::isnan(x)) {
    b.bits = 0x7fc0;
  } else {
    b.bits = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);  // round to nearest even
  }
  return b;
}
inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }
inline float2 __bfloat1622float2(__nv_bfloat162 b) {
  return float2{__bfloat162float(b.x), __bfloat162float(b.y)};
}

// ---------------------------------------------------------------- intrinsics
inline unsigned __float_as_uint(float x) { unsigned u; memcpy(&u, &x, 4); return u; }
inline float __uint_as_float(unsigned u) { float x; memcpy(&x, &u, 4); return x; }
inline float __int_as_float(int i) { float x; memcpy(&x, &i, 4); return x; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
template <typename T> inline T __ldg(const T *p) { return *p; }
template <typename T> inline T min(T a, T b) { return b < a ? b : a; }
template <typename T> inline T max(T a, T b) { return a < b ? b : a; }
using std::isnan;

// ---------------------------------------------------------------- runtime API subset
typedef struct CUstream_st *cudaStream_t;
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorLaunchFailure = 4,
  cudaErrorInvalidConfiguration = 9,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

namespace rk_emu {

// Largest dynamic shared memory one block may reserve on the oldest architecture the CUDA
// build targets (sm_80: 163 KiB); 48 KiB without cudaFuncSetAttribute.
constexpr size_t kMaxDynamicShared = 166912;
constexpr size_t kDefaultDynamicShared = 48 * 1024;
constexpr size_t kGuardBytes = 256;
constexpr unsigned char kGarbage = 0xA5;
constexpr size_t kStackBytes = 256 * 1024;

enum Schedule { kForward = 0, kReverse = 1, kShuffled = 2 };
enum class Wait { None, Block, Warp };
enum class Collective { SyncWarp, Shuffle, Ballot };

inline const char *collective_name(Collective c) {
  switch (c) {
    case Collective::SyncWarp: return "__syncwarp";
    case Collective::Shuffle: return "__shfl_xor_sync";
    default: return "__ballot_sync";
  }
}

struct Fiber {
  ucontext_t ctx;
  uint3 idx;
  int warp = 0, lane = 0;
  bool done = false;
  bool started = false;
  Wait wait = Wait::None;
  void *tsan = nullptr;  // TSan fiber (RK_EMU_TSAN)
};

struct Warp {
  int live = 0;
  unsigned live_mask = 0;
  int arrived = 0;
  unsigned generation = 0;
  Collective op = Collective::SyncWarp;
  uint64_t slots[2][32];  // double-buffered by generation parity
  char sync[2];           // TSan release/acquire addresses, by generation parity
};

struct Runtime {
  std::mutex launch_mutex;  // one launch at a time (ctypes releases the GIL)
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<unsigned char *> stacks;
  ucontext_t scheduler;
  int current = -1;
  dim3 grid, block;
  uint3 block_idx{0, 0, 0};
  int block_live = 0, block_arrived = 0;
  unsigned block_generation = 0;
  char block_sync[2];  // TSan release/acquire addresses, by generation parity
  void *tsan_scheduler = nullptr;
  const char *barrier_file = "";
  int barrier_line = 0;
  std::function<void()> body;
  std::string failure;
  std::vector<unsigned char> dynamic_shared;
  size_t dynamic_bytes = 0;
  std::vector<std::pair<const void *, size_t>> reserved;  // cudaFuncSetAttribute
  cudaError_t last_error = cudaSuccess;
  std::string last_message;
  int schedule = kForward;
  uint64_t seed = 0;
};

inline Runtime &rt() {
  static Runtime r;
  return r;
}

inline Fiber &self() { return rt().fibers[rt().current]; }

// Back to the scheduler. `sync`: let TSan order this fiber's past before the scheduler's
// future (only when the fiber ends: its writes are then the launch's results).
inline void yield(bool sync = false) {
  Runtime &r = rt();
#if RK_EMU_TSAN
  __tsan_switch_to_fiber(r.tsan_scheduler, sync ? 0u : 1u /* __tsan_switch_to_fiber_no_sync */);
#else
  (void)sync;
#endif
  swapcontext(&r.fibers[r.current].ctx, &r.scheduler);
}

// Stop the launch from inside a fiber: record why and never run this fiber again.
[[noreturn]] inline void fail(const std::string &why) {
  RK_EMU_QUIET_BEGIN();
  Runtime &r = rt();
  const Fiber &f = self();
  char where[160];
  snprintf(where, sizeof(where), " (block (%u,%u,%u), thread (%u,%u,%u))", r.block_idx.x,
           r.block_idx.y, r.block_idx.z, f.idx.x, f.idx.y, f.idx.z);
  if (r.failure.empty()) r.failure = why + where;
  yield();
  abort();  // unreachable: the scheduler never resumes a failed launch
}

inline void release_block() {
  Runtime &r = rt();
  for (Fiber &f : r.fibers)
    if (f.wait == Wait::Block) f.wait = Wait::None;
  r.block_arrived = 0;
  r.block_generation++;
}

inline void release_warp(int w) {
  Runtime &r = rt();
  for (Fiber &f : r.fibers)
    if (f.warp == w && f.wait == Wait::Warp) f.wait = Wait::None;
  r.warps[w].arrived = 0;
  r.warps[w].generation++;
}

// `file`/`line` name the call site: all threads of a block must wait at the same
// __syncthreads (CUDA: "allowed in conditional code only if the condition evaluates
// identically across the entire thread block").
inline void syncthreads(const char *file, int line) {
  Runtime &r = rt();
  RK_EMU_QUIET_BEGIN();
  Fiber &f = self();
#if RK_EMU_TSAN
  void *sync = &r.block_sync[r.block_generation & 1];
  __tsan_release(sync);
#endif
  if (r.block_arrived == 0) {
    r.barrier_file = file;
    r.barrier_line = line;
  } else if (r.barrier_line != line || strcmp(r.barrier_file, file) != 0) {
    char msg[300];
    snprintf(msg, sizeof(msg),
             "threads of one block wait at different __syncthreads: %s:%d and %s:%d", file, line,
             r.barrier_file, r.barrier_line);
    fail(msg);
  }
  f.wait = Wait::Block;
  if (++r.block_arrived == r.block_live) release_block();
  yield();
#if RK_EMU_TSAN
  __tsan_acquire(sync);
#endif
  RK_EMU_QUIET_END();
}

// Arrive at a warp collective with this lane's value; returns the generation whose slots
// hold every lane's value once the warp has been released.
// Called inside a quiet (TSan-ignored) region; the result slots are read in it too.
inline unsigned warp_arrive(Collective op, unsigned mask, uint64_t value) {
  Runtime &r = rt();
  Fiber &f = self();
  Warp &w = r.warps[f.warp];
  if (mask != w.live_mask) {
    char msg[160];
    snprintf(msg, sizeof(msg),
             "%s with mask 0x%08x, but the warp's live lanes are 0x%08x (the emulator supports "
             "whole-warp collectives only)", collective_name(op), mask, w.live_mask);
    fail(msg);
  }
  if (w.arrived == 0) {
    w.op = op;
  } else if (w.op != op) {
    fail(std::string("lanes of one warp in different collectives: ") + collective_name(op) +
         " while others wait in " + collective_name(w.op));
  }
  const unsigned g = w.generation;
  w.slots[g & 1][f.lane] = value;
#if RK_EMU_TSAN
  __tsan_release(&w.sync[g & 1]);
#endif
  f.wait = Wait::Warp;
  if (++w.arrived == w.live) release_warp(f.warp);
  yield();
#if RK_EMU_TSAN
  __tsan_acquire(&rt().warps[self().warp].sync[g & 1]);
#endif
  return g;
}

inline void thread_exit() {
  RK_EMU_QUIET_BEGIN();
  Runtime &r = rt();
  Fiber &f = self();
  Warp &w = r.warps[f.warp];
  if (w.arrived > 0) {
    char msg[120];
    snprintf(msg, sizeof(msg), "lane %d exited while its warp waits in %s", f.lane,
             collective_name(w.op));
    fail(msg);
  }
  f.done = true;
  w.live--;
  w.live_mask &= ~(1u << f.lane);
  r.block_live--;
  if (r.block_live > 0 && r.block_arrived > 0 && r.block_arrived == r.block_live) release_block();
  RK_EMU_QUIET_END();
  yield(/*sync=*/true);
  abort();  // unreachable
}

inline void fiber_main() {
  rt().body();
  thread_exit();
}

inline unsigned char *stack_of(size_t i) {
  Runtime &r = rt();
  while (r.stacks.size() <= i) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void *p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED) return nullptr;
    mprotect(p, page, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting
    r.stacks.push_back(static_cast<unsigned char *>(p) + page);
  }
  return r.stacks[i];
}

inline void release_fibers() {
#if RK_EMU_TSAN
  for (Fiber &f : rt().fibers)
    if (f.tsan) __tsan_destroy_fiber(f.tsan);
#endif
  rt().fibers.clear();
}

// Run one block to completion; false (with r.failure set) on a detected error.
inline bool run_block(uint3 block_idx) {
  Runtime &r = rt();
  const int n = (int)(r.block.x * r.block.y * r.block.z);
  release_fibers();
#if RK_EMU_TSAN
  r.tsan_scheduler = __tsan_get_current_fiber();
#endif
  r.block_idx = block_idx;
  r.fibers.assign(n, Fiber());
  r.warps.assign((n + 31) / 32, Warp());
  r.block_live = n;
  r.block_arrived = 0;
  std::fill(r.dynamic_shared.begin(), r.dynamic_shared.end(), kGarbage);
  for (int i = 0; i < n; ++i) {
    Fiber &f = r.fibers[i];
    f.idx = uint3{(unsigned)(i % r.block.x), (unsigned)((i / r.block.x) % r.block.y),
                  (unsigned)(i / (r.block.x * r.block.y))};
    f.warp = i / 32;
    f.lane = i % 32;
    Warp &w = r.warps[f.warp];
    w.live++;
    w.live_mask |= 1u << f.lane;
    unsigned char *stack = stack_of(i);
    if (!stack) {
      r.failure = "cannot allocate fiber stacks";
      return false;
    }
#if RK_EMU_TSAN
    f.tsan = __tsan_create_fiber(0);
#endif
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = stack;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_main, 0);
  }
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = r.schedule == kReverse ? n - 1 - i : i;
  std::mt19937_64 rng(r.seed ^ (((uint64_t)block_idx.x << 32) + block_idx.y * 65536ull + block_idx.z));
  while (r.block_live > 0) {
    if (r.schedule == kShuffled) std::shuffle(order.begin(), order.end(), rng);
    bool ran = false;
    for (int i : order) {
      Fiber &f = r.fibers[i];
      if (f.done || f.wait != Wait::None) continue;
      r.current = i;
      const bool first_entry = !f.started;
      f.started = true;
#if RK_EMU_TSAN
      // From here to swapcontext TSan already counts as the fiber: write nothing. The first
      // entry is ordered after the launch (inputs, parameters); later ones only by barriers.
      __tsan_switch_to_fiber(f.tsan, first_entry ? 0u : 1u /* no_sync */);
#else
      (void)first_entry;
#endif
      swapcontext(&r.scheduler, &f.ctx);
      ran = true;
      if (!r.failure.empty()) return false;
    }
    if (!ran) {
      int at_block = 0, at_warp = 0;
      for (const Fiber &f : r.fibers) {
        at_block += f.wait == Wait::Block;
        at_warp += f.wait == Wait::Warp;
      }
      char msg[200];
      snprintf(msg, sizeof(msg),
               "deadlock in block (%u,%u,%u): %d threads wait in __syncthreads and %d in warp "
               "collectives, %d threads have exited", block_idx.x, block_idx.y, block_idx.z,
               at_block, at_warp, n - r.block_live);
      r.failure = msg;
      return false;
    }
  }
  for (size_t i = r.dynamic_bytes; i < r.dynamic_shared.size(); ++i) {
    if (r.dynamic_shared[i] != kGarbage) {
      char msg[160];
      snprintf(msg, sizeof(msg), "block (%u,%u,%u) wrote past its %zu bytes of dynamic shared memory",
               block_idx.x, block_idx.y, block_idx.z, r.dynamic_bytes);
      r.failure = msg;
      return false;
    }
  }
  return true;
}

inline void set_error(cudaError_t e, const std::string &msg) {
  Runtime &r = rt();
  if (r.last_error == cudaSuccess) {
    r.last_error = e;
    r.last_message = msg;
  }
}

inline size_t reserved_bytes(const void *kernel) {
  for (const auto &p : rt().reserved)
    if (p.first == kernel) return p.second;
  return kDefaultDynamicShared;
}

// kernel<<<grid, block, smem, stream>>>(args...) becomes Launch(kernel, grid, block, smem,
// stream)(args...): the arguments are converted to the kernel's parameter types and copied,
// as a CUDA launch does.
template <typename... Params>
struct Launch {
  void (*kernel)(Params...);
  dim3 grid, block;
  size_t smem;
  template <typename... Args>
  void operator()(Args &&...args) const {
    Runtime &r = rt();
    std::lock_guard<std::mutex> lock(r.launch_mutex);
    const uint64_t threads = (uint64_t)block.x * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0 || threads > 1024 ||
        grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu) {
      char msg[160];
      snprintf(msg, sizeof(msg), "invalid launch configuration: grid (%u,%u,%u), block (%u,%u,%u)",
               grid.x, grid.y, grid.z, block.x, block.y, block.z);
      set_error(cudaErrorInvalidConfiguration, msg);
      return;
    }
    if (smem > reserved_bytes((const void *)kernel)) {
      char msg[160];
      snprintf(msg, sizeof(msg), "%zu bytes of dynamic shared memory requested, %zu reserved", smem,
               reserved_bytes((const void *)kernel));
      set_error(cudaErrorInvalidValue, msg);
      return;
    }
    std::tuple<Params...> params(std::forward<Args>(args)...);
    auto kern = kernel;
    r.body = [kern, &params]() { std::apply(kern, params); };
    r.grid = grid;
    r.block = block;
    r.dynamic_bytes = smem;
    r.dynamic_shared.assign(smem + kGuardBytes, kGarbage);
    r.failure.clear();
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x)
          if (!run_block(uint3{x, y, z})) {
            set_error(cudaErrorLaunchFailure, r.failure);
            release_fibers();
            r.body = nullptr;
            return;
          }
    release_fibers();
    r.body = nullptr;
  }
};

template <typename... Params>
inline Launch<Params...> launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                cudaStream_t) {
  return Launch<Params...>{kernel, grid, block, smem};
}

// The kernel's view of the runtime, read inside a quiet region: which fiber is current is
// the scheduler's business, not the kernel's memory.
template <typename F>
inline auto quietly(F read) {
  RK_EMU_QUIET_BEGIN();
  const auto value = read();
  RK_EMU_QUIET_END();
  return value;
}
inline unsigned char *dynamic_shared() { return quietly([] { return rt().dynamic_shared.data(); }); }
inline uint3 thread_idx() { return quietly([] { return self().idx; }); }
inline uint3 block_idx() { return quietly([] { return rt().block_idx; }); }
inline dim3 block_dim() { return quietly([] { return rt().block; }); }
inline dim3 grid_dim() { return quietly([] { return rt().grid; }); }

}  // namespace rk_emu

#define threadIdx (::rk_emu::thread_idx())
#define blockIdx (::rk_emu::block_idx())
#define blockDim (::rk_emu::block_dim())
#define gridDim (::rk_emu::grid_dim())

#define __syncthreads() ::rk_emu::syncthreads(__FILE__, __LINE__)
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  RK_EMU_QUIET_BEGIN();
  rk_emu::warp_arrive(rk_emu::Collective::SyncWarp, mask, 0);
  RK_EMU_QUIET_END();
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  RK_EMU_QUIET_BEGIN();
  const unsigned g = rk_emu::warp_arrive(rk_emu::Collective::Ballot, mask, predicate ? 1 : 0);
  const rk_emu::Warp &w = rk_emu::rt().warps[rk_emu::self().warp];
  unsigned bits = 0;
  for (int l = 0; l < 32; ++l)
    if (((mask >> l) & 1u) && w.slots[g & 1][l]) bits |= 1u << l;
  RK_EMU_QUIET_END();
  return bits;
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
  uint64_t bits = 0;
  memcpy(&bits, &var, sizeof(T));
  RK_EMU_QUIET_BEGIN();
  const unsigned g = rk_emu::warp_arrive(rk_emu::Collective::Shuffle, mask, bits);
  const int lane = rk_emu::self().lane;
  int src = lane ^ lane_mask;
  if (src >= (lane / width + 1) * width) src = lane;  // outside this lane's segment: own value
  T out;
  memcpy(&out, &rk_emu::rt().warps[rk_emu::self().warp].slots[g & 1][src], sizeof(T));
  RK_EMU_QUIET_END();
  return out;
}

inline cudaError_t cudaGetLastError() {
  rk_emu::Runtime &r = rk_emu::rt();
  cudaError_t e = r.last_error;
  r.last_error = cudaSuccess;
  return e;
}
inline const char *cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    default: return "cudaErrorUnknown";
  }
}
// The emulator's detail of the last failure (valid until the next failure).
inline const char *cudaGetErrorString(cudaError_t e) {
  if (e == cudaSuccess) return "no error";
  return rk_emu::rt().last_message.empty() ? cudaGetErrorName(e) : rk_emu::rt().last_message.c_str();
}
template <typename K>
inline cudaError_t cudaFuncSetAttribute(K kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      (size_t)value > rk_emu::kMaxDynamicShared)
    return cudaErrorInvalidValue;
  auto &res = rk_emu::rt().reserved;
  for (auto &p : res)
    if (p.first == (const void *)kernel) {
      p.second = (size_t)value;
      return cudaSuccess;
    }
  res.emplace_back((const void *)kernel, (size_t)value);
  return cudaSuccess;
}

// ---------------------------------------------------------------- WMMA (nvcuda::wmma)
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

// Every lane holds the whole tile (rows x cols as the operand's role implies), in fp32.
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = std::is_same<Use, matrix_b>::value ? K : M;
  static constexpr int cols = std::is_same<Use, matrix_a>::value ? K : N;
  float v[rows][cols];
};

inline float element_to_float(float x) { return x; }
inline float element_to_float(__half x) { return __half2float(x); }
inline float element_to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout> &f, const T *p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, Layout>;
  for (int i = 0; i < F::rows; ++i)
    for (int j = 0; j < F::cols; ++j)
      f.v[i][j] = element_to_float(std::is_same<Layout, col_major>::value ? p[(size_t)j * ldm + i]
                                                                          : p[(size_t)i * ldm + j]);
}

template <int M, int N, int K>
inline void fill_fragment(fragment<accumulator, M, N, K, float> &f, float value) {
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) f.v[i][j] = value;
}

template <int M, int N, int K, typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, M, N, K, float> &d,
                     const fragment<matrix_a, M, N, K, T, LA> &a,
                     const fragment<matrix_b, M, N, K, T, LB> &b,
                     const fragment<accumulator, M, N, K, float> &c) {
  float out[M][N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = c.v[i][j];
      for (int kk = 0; kk < K; ++kk) s = fmaf(a.v[i][kk], b.v[kk][j], s);
      out[i][j] = s;
    }
  memcpy(d.v, out, sizeof(out));
}

// Each lane stores its share of the tile (elements lane, lane + 32, ...), as on the GPU
// where every lane holds a part of it: no two threads write the same element.
template <int M, int N, int K>
inline void store_matrix_sync(float *p, const fragment<accumulator, M, N, K, float> &f, unsigned ldm,
                              layout_t layout) {
  const int lane = ::rk_emu::quietly([] { return ::rk_emu::self().lane; });
  for (int e = lane; e < M * N; e += 32) {
    const int i = e / N, j = e % N;
    p[layout == mem_col_major ? (size_t)j * ldm + i : (size_t)i * ldm + j] = f.v[i][j];
  }
}
}  // namespace wmma
}  // namespace nvcuda

// Portability macros the kernel sources use (CUDA versions in common.cuh).
#define RK_LAUNCH(kernel, grid, block, smem, stream) \
  ::rk_emu::launch(kernel, grid, block, smem, stream)
#define RK_DYNAMIC_SHARED(name) unsigned char *name = ::rk_emu::dynamic_shared()
