// common.cuh: device helpers shared by the rescorer kernels (not part of the C ABI).
#pragma once

#include <stdint.h>

#ifdef RK_EMULATE
// CPU build for tests (kernels/build.sh --emulator): the same sources on a CUDA emulator.
#include "emulator/cuda_emulator.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

// kernel<<<...>>> and extern __shared__ behind macros so that the emulator can stand in.
// `kernel` must be one token (bind a template instance to a variable first).
#define RK_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#define RK_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

#include <cstdarg>
#include <cstdio>

#include "rescorer_kernels.h"

namespace rk {

// ---------------------------------------------------------------- error reporting
void set_last_error(const char *fmt, ...);

// ---------------------------------------------------------------- element conversion
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T zero_value();
template <> __device__ __forceinline__ float zero_value<float>() { return 0.0f; }
template <> __device__ __forceinline__ __half zero_value<__half>() { return __float2half(0.0f); }
template <> __device__ __forceinline__ __nv_bfloat16 zero_value<__nv_bfloat16>() {
  return __float2bfloat16(0.0f);
}

// Elements per 16-byte vector.
template <typename T> struct Vec16 { static constexpr int N = 16 / (int)sizeof(T); };

// Unpack one 16-byte vector into Vec16<T>::N floats.
__device__ __forceinline__ void unpack16(const uint4 &v, float *f, float) {
  f[0] = __uint_as_float(v.x);
  f[1] = __uint_as_float(v.y);
  f[2] = __uint_as_float(v.z);
  f[3] = __uint_as_float(v.w);
}
__device__ __forceinline__ void unpack16(const uint4 &v, float *f, __half) {
  const __half2 *h = reinterpret_cast<const __half2 *>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 t = __half22float2(h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}
__device__ __forceinline__ void unpack16(const uint4 &v, float *f, __nv_bfloat16) {
  const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 t = __bfloat1622float2(h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

// Squared-norm -> per-row factor used by the top-k epilogue.
// cosine: 1/|x| (0 for a zero, NaN-norm or infinite-norm row, so zero rows score 0 and
// non-finite rows score NaN through the dot product); sqeuclidean: |x|^2.
__device__ __forceinline__ float norm_factor(float sqnorm, int metric) {
  if (metric == RK_METRIC_COSINE) return sqnorm > 0.0f ? 1.0f / sqrtf(sqnorm) : 0.0f;
  return sqnorm;
}

// ---------------------------------------------------------------- packed (score, index) keys
// A candidate is one uint64: high 32 bits = order-preserving image of the float key
// (larger = better; NaN -> 0, below -inf), low 32 bits = 0xFFFFFFFF - index (smaller index
// = larger). So "better" is plain unsigned '>' and all real keys are distinct and > 0;
// 0 is the padding entry (index -1). Requires index < 0xFFFFFFFF.
__device__ __forceinline__ uint32_t ordered_bits(float key) {
  if (isnan(key)) return 0u;
  uint32_t b = __float_as_uint(key);
  if ((b << 1) == 0u) b = 0u;  // -0 -> +0: equal scores must tie
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ uint64_t pack_key(float key, uint32_t index) {
  return ((uint64_t)ordered_bits(key) << 32) | (uint64_t)(0xFFFFFFFFu - index);
}
__device__ __forceinline__ float unpack_key(uint64_t packed) {
  uint32_t hi = (uint32_t)(packed >> 32);
  if (hi == 0u) return __int_as_float(0x7fc00000);  // NaN
  uint32_t b = (hi & 0x80000000u) ? (hi & 0x7FFFFFFFu) : ~hi;
  return __uint_as_float(b);
}
__device__ __forceinline__ int64_t unpack_index(uint64_t packed) {
  if (packed == 0ull) return -1;
  return (int64_t)(0xFFFFFFFFu - (uint32_t)(packed & 0xFFFFFFFFull));
}

// ---------------------------------------------------------------- warp merge
// list: KCAP packed keys in shared memory, sorted descending, real entries first then
// zeros. cand: n (<= MAXB) distinct non-zero keys in shared memory, any order, none of
// them already in list. After the call list holds the KCAP best of list U cand, sorted.
// Rank-based and in place: every entry computes its final position (its index plus the
// number of entries of the other set that beat it), positions are collected in
// registers, then written. Must be called by all 32 lanes of a warp.
template <int KCAP, int MAXB>
__device__ __forceinline__ void warp_merge(uint64_t *list, const uint64_t *cand, int n,
                                           int lane) {
  static_assert(KCAP % 32 == 0 && MAXB % 32 == 0, "sizes must be multiples of 32");
  constexpr int PA = KCAP / 32;
  constexpr int PB = MAXB / 32;
  uint64_t aval[PA], bval[PB];
  int apos[PA], bpos[PB];
#pragma unroll
  for (int t = 0; t < PA; ++t) {
    const int i = lane + 32 * t;
    const uint64_t a = list[i];
    int r = KCAP;
    if (a != 0ull) {
      r = i;
      for (int j = 0; j < n; ++j) r += (cand[j] > a) ? 1 : 0;
    }
    aval[t] = a;
    apos[t] = r;
  }
#pragma unroll
  for (int t = 0; t < PB; ++t) {
    const int j = lane + 32 * t;
    uint64_t b = 0ull;
    int r = KCAP;
    if (j < n) {
      b = cand[j];
      int rb = 0;
      for (int jj = 0; jj < n; ++jj) rb += (cand[jj] > b) ? 1 : 0;
      int lo = 0, hi = KCAP;  // first position whose entry is not better than b
      while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (list[mid] > b) lo = mid + 1; else hi = mid;
      }
      r = rb + lo;
    }
    bval[t] = b;
    bpos[t] = r;
  }
  __syncwarp();
#pragma unroll
  for (int t = 0; t < PA; ++t)
    if (apos[t] < KCAP) list[apos[t]] = aval[t];
#pragma unroll
  for (int t = 0; t < PB; ++t)
    if (bpos[t] < KCAP) list[bpos[t]] = bval[t];
  __syncwarp();
}

}  // namespace rk

#define RK_CHECK_LAUNCH(what)                                                         \
  do {                                                                                \
    cudaError_t err_ = cudaGetLastError();                                            \
    if (err_ != cudaSuccess) {                                                        \
      rk::set_last_error("%s: %s (%s)", what, cudaGetErrorString(err_),               \
                         cudaGetErrorName(err_));                                     \
      return RK_ERR_CUDA;                                                             \
    }                                                                                 \
  } while (0)
