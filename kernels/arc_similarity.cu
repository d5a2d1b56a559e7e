// arc_similarity.cu: fused gather + dot/norm pass over lattice arcs.
//
// One group of G lanes (G in {4, 8, 16, 32}, a power of two dividing the warp) per arc:
// the group reads the two embedding rows with 16-byte vector loads when rows are
// 16-byte aligned and dim is a multiple of the vector width (scalar loads otherwise),
// accumulates dot, |a|^2, |w|^2 and |a-w|^2 in fp32, and reduces with shuffles.
#include "common.cuh"

namespace rk {

template <typename T, int G>
__global__ void __launch_bounds__(256)
arc_similarity_kernel(const T *__restrict__ A, const T *__restrict__ W,
                      const int64_t *__restrict__ arcs, int64_t n_spans, int64_t n_words,
                      int64_t n_arcs, int dim, int metric, bool vec, float *__restrict__ out) {
  constexpr int VEC = Vec16<T>::N;
  const int64_t gid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t arc = gid / G;
  const int lane = (int)(gid % G);
  const bool active = arc < n_arcs;
  bool valid = false;
  float dot = 0.f, na = 0.f, nw = 0.f, d2 = 0.f;
  if (active) {
    const int64_t i = arcs[2 * arc], j = arcs[2 * arc + 1];
    valid = i >= 0 && i < n_spans && j >= 0 && j < n_words;
    if (valid) {
      const T *a = A + i * (int64_t)dim;
      const T *w = W + j * (int64_t)dim;
      if (vec) {
        const uint4 *av = reinterpret_cast<const uint4 *>(a);
        const uint4 *wv = reinterpret_cast<const uint4 *>(w);
        const int nvec = dim / VEC;
        for (int v = lane; v < nvec; v += G) {
          float fa[VEC], fw[VEC];
          unpack16(__ldg(av + v), fa, T());
          unpack16(__ldg(wv + v), fw, T());
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            dot = fmaf(fa[e], fw[e], dot);
            na = fmaf(fa[e], fa[e], na);
            nw = fmaf(fw[e], fw[e], nw);
            const float df = fa[e] - fw[e];
            d2 = fmaf(df, df, d2);
          }
        }
      } else {
        for (int d = lane; d < dim; d += G) {
          const float x = to_float(a[d]), y = to_float(w[d]);
          dot = fmaf(x, y, dot);
          na = fmaf(x, x, na);
          nw = fmaf(y, y, nw);
          const float df = x - y;
          d2 = fmaf(df, df, d2);
        }
      }
    }
  }
  // Every lane of the warp reaches the shuffles (no early return above).
#pragma unroll
  for (int off = G / 2; off > 0; off >>= 1) {
    dot += __shfl_xor_sync(0xffffffffu, dot, off, G);
    na += __shfl_xor_sync(0xffffffffu, na, off, G);
    nw += __shfl_xor_sync(0xffffffffu, nw, off, G);
    d2 += __shfl_xor_sync(0xffffffffu, d2, off, G);
  }
  if (active && lane == 0) {
    float r;
    if (!valid) {
      r = __int_as_float(0x7fc00000);
    } else if (metric == RK_METRIC_COSINE) {
      r = dot * norm_factor(na, RK_METRIC_COSINE) * norm_factor(nw, RK_METRIC_COSINE);
    } else {
      r = d2;
    }
    out[arc] = r;
  }
}

template <typename T, int G>
static int launch_arc(const void *A, const void *W, const int64_t *arcs, int64_t n_spans,
                      int64_t n_words, int64_t n_arcs, int dim, int metric, bool vec, float *out,
                      cudaStream_t stream) {
  const int threads = 256;
  const int64_t blocks = (n_arcs * G + threads - 1) / threads;
  if (blocks > 0x7fffffffLL) {
    set_last_error("rk_arc_similarity: too many arcs (%lld)", (long long)n_arcs);
    return RK_ERR_INVALID_ARGUMENT;
  }
  auto kern = arc_similarity_kernel<T, G>;
  RK_LAUNCH(kern, (unsigned)blocks, threads, 0, stream)(
      static_cast<const T *>(A), static_cast<const T *>(W), arcs, n_spans, n_words, n_arcs, dim,
      metric, vec, out);
  RK_CHECK_LAUNCH("rk_arc_similarity");
  return RK_OK;
}

template <typename T>
static int dispatch_arc(const void *A, const void *W, const int64_t *arcs, int64_t n_spans,
                        int64_t n_words, int64_t n_arcs, int dim, int metric, float *out,
                        cudaStream_t stream) {
  constexpr int VEC = Vec16<T>::N;
  const bool vec = (dim % VEC == 0) && (reinterpret_cast<uintptr_t>(A) % 16 == 0) &&
                   (reinterpret_cast<uintptr_t>(W) % 16 == 0);
  const int work = vec ? dim / VEC : dim;  // loads per row
  if (work <= 4) return launch_arc<T, 4>(A, W, arcs, n_spans, n_words, n_arcs, dim, metric, vec, out, stream);
  if (work <= 8) return launch_arc<T, 8>(A, W, arcs, n_spans, n_words, n_arcs, dim, metric, vec, out, stream);
  if (work <= 16) return launch_arc<T, 16>(A, W, arcs, n_spans, n_words, n_arcs, dim, metric, vec, out, stream);
  return launch_arc<T, 32>(A, W, arcs, n_spans, n_words, n_arcs, dim, metric, vec, out, stream);
}

}  // namespace rk

extern "C" RK_API int rk_arc_similarity(const void *acoustic, const void *spelling,
                                        const int64_t *arcs, int64_t n_spans, int64_t n_words,
                                        int64_t n_arcs, int64_t dim, int dtype, int metric,
                                        float *out, void *stream) {
  if (n_arcs < 0 || n_spans < 0 || n_words < 0 || dim < 1 || dim > 0x7fffffffLL ||
      (metric != RK_METRIC_COSINE && metric != RK_METRIC_SQEUCLIDEAN)) {
    rk::set_last_error("rk_arc_similarity: bad sizes or metric (n_arcs=%lld dim=%lld metric=%d)",
                       (long long)n_arcs, (long long)dim, metric);
    return RK_ERR_INVALID_ARGUMENT;
  }
  if (n_arcs == 0) return RK_OK;
  if (!acoustic || !spelling || !arcs || !out) {
    rk::set_last_error("rk_arc_similarity: null pointer");
    return RK_ERR_INVALID_ARGUMENT;
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int d = (int)dim;
  switch (dtype) {
    case RK_DTYPE_F32: return rk::dispatch_arc<float>(acoustic, spelling, arcs, n_spans, n_words, n_arcs, d, metric, out, s);
    case RK_DTYPE_F16: return rk::dispatch_arc<__half>(acoustic, spelling, arcs, n_spans, n_words, n_arcs, d, metric, out, s);
    case RK_DTYPE_BF16: return rk::dispatch_arc<__nv_bfloat16>(acoustic, spelling, arcs, n_spans, n_words, n_arcs, d, metric, out, s);
    default:
      rk::set_last_error("rk_arc_similarity: unknown dtype code %d", dtype);
      return RK_ERR_INVALID_ARGUMENT;
  }
}
