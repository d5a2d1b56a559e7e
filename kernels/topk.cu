// topk.cu: brute-force k-nearest search with a tiled matrix product and fused selection.
//
// Pipeline (all on the caller's stream, workspace supplied by the caller):
//   1. row_factor_kernel: per-row factor of queries and vocabulary in fp32
//      (cosine: 1/|x|, 0 for zero rows; sqeuclidean: |x|^2).
//   2. topk_tile_kernel, grid (query blocks, vocabulary splits): a block owns BM = 64
//      queries and walks its split of the vocabulary in BN = 64-row tiles. For each tile it
//      computes the 64 x 64 dot products (tensor cores via WMMA for fp16/bf16, SIMT fp32
//      FMAs for fp32; fp32 accumulation either way) into shared memory, turns them into
//      scores, and each warp filters its 8 queries' scores against the current k-th best
//      (ballot + compaction); survivors are merged into the query's sorted top-k list in
//      shared memory (warp_merge). After the first few tiles almost nothing survives the
//      threshold, so selection costs little next to the product. Each block writes its
//      queries' top-k (packed keys) for its split: n_queries x splits x k, never N x V.
//      Query blocks vary fastest in the grid so concurrently running blocks read the same
//      vocabulary rows (L2 reuse).
//   3. topk_merge_kernel: one warp per query merges the per-split lists and decodes the
//      packed keys into (value, index), padding with index -1 when k > n_vocab.
#include "common.cuh"

namespace rk {

constexpr int BM = 64;        // queries per block
constexpr int BN = 64;        // vocabulary rows per tile
constexpr int THREADS = 256;  // 8 warps
constexpr int WARPS = THREADS / 32;
constexpr int ROWS_PER_WARP = BM / WARPS;
constexpr int LDC = BN + 4;  // fp32 score tile leading dimension
constexpr int MAX_K = 128;

// Shared memory used by the dot-product stage (operand tiles, then the score tile).
constexpr int HALF_BK = 64, HALF_LDS = HALF_BK + 8;  // 16-bit types: 128-byte row chunks
constexpr int F32_BK = 32, F32_LDS = F32_BK + 1;     // fp32: conflict-free column reads
constexpr size_t GEMM_SMEM_HALF = 2 * (size_t)BM * HALF_LDS * 2;
constexpr size_t GEMM_SMEM_F32 = 2 * (size_t)BM * F32_LDS * 4;
constexpr size_t GEMM_SMEM_C = (size_t)BM * LDC * 4;
constexpr size_t cmax(size_t a, size_t b) { return a > b ? a : b; }
constexpr size_t GEMM_SMEM = cmax(cmax(GEMM_SMEM_HALF, GEMM_SMEM_F32), GEMM_SMEM_C);

template <int KCAP> constexpr size_t tile_smem_bytes() {
  return (size_t)BM * KCAP * 8      // per-query sorted lists
         + (size_t)WARPS * BN * 8   // per-warp candidate buffers
         + GEMM_SMEM                // operand tiles / score tile
         + (size_t)(BM + BN) * 4;   // query and vocabulary row factors
}

// ---------------------------------------------------------------- stage 1: row factors
template <typename T>
__global__ void __launch_bounds__(256)
row_factor_kernel(const T *__restrict__ X, int64_t rows, int dim, int metric, bool vec,
                  float *__restrict__ out) {
  constexpr int VEC = Vec16<T>::N;
  const int lane = threadIdx.x & 31;
  const int64_t warp = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int64_t nwarps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  for (int64_t r = warp; r < rows; r += nwarps) {
    const T *x = X + r * (int64_t)dim;
    float s = 0.f;
    if (vec) {
      const uint4 *xv = reinterpret_cast<const uint4 *>(x);
      for (int v = lane; v < dim / VEC; v += 32) {
        float f[VEC];
        unpack16(__ldg(xv + v), f, T());
#pragma unroll
        for (int e = 0; e < VEC; ++e) s = fmaf(f[e], f[e], s);
      }
    } else {
      for (int d = lane; d < dim; d += 32) {
        const float f = to_float(x[d]);
        s = fmaf(f, f, s);
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) out[r] = norm_factor(s, metric);
  }
}

// ---------------------------------------------------------------- stage 2 helpers
// Load a 64-row x BK-column chunk (columns k0..k0+BK) of a row-major [rows x dim] matrix
// into shared memory (row stride LDS elements), zero-filling rows >= rows and columns >= dim.
// Each row chunk is 128 bytes = 8 vectors of 16 bytes; 512 vectors, 2 per thread.
template <typename T, int BK, int LDS>
__device__ __forceinline__ void load_chunk(const T *__restrict__ X, int64_t rows, int dim,
                                           int64_t row0, int k0, bool vec, T *tile) {
  constexpr int VEC = Vec16<T>::N;
  constexpr int VPR = BK / VEC;
  static_assert(VPR * VEC == BK, "chunk must be whole vectors");
  for (int v = threadIdx.x; v < BM * VPR; v += THREADS) {
    const int r = v / VPR;
    const int c = (v % VPR) * VEC;
    const int64_t gr = row0 + r;
    const int gc = k0 + c;
    T *dst = tile + r * LDS + c;
    if (vec) {  // dim % VEC == 0 and 16-byte aligned base: gc < dim means the whole vector is in
      uint4 val = make_uint4(0u, 0u, 0u, 0u);
      if (gr < rows && gc < dim) val = __ldg(reinterpret_cast<const uint4 *>(X + gr * dim + gc));
      if ((LDS * sizeof(T)) % 16 == 0) {
        *reinterpret_cast<uint4 *>(dst) = val;
      } else {
        const T *src = reinterpret_cast<const T *>(&val);
#pragma unroll
        for (int e = 0; e < VEC; ++e) dst[e] = src[e];
      }
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e)
        dst[e] = (gr < rows && gc + e < dim) ? X[gr * dim + gc + e] : zero_value<T>();
    }
  }
}

// 64 x 64 dot products of query rows q0.. and vocabulary rows v0.. into C (row-major, LDC).
// Tensor-core path for 16-bit inputs: 8 warps, each a 16 x 32 strip (two 16x16 fragments).
template <typename T>
__device__ __forceinline__ void dot_tile(const T *__restrict__ Q, const T *__restrict__ W,
                                         int64_t n_q, int64_t n_v, int dim, int64_t q0,
                                         int64_t v0, bool vec, unsigned char *smem, float *C) {
  using namespace nvcuda;
  T *As = reinterpret_cast<T *>(smem);
  T *Bs = As + BM * HALF_LDS;
  const int warp = threadIdx.x >> 5;
  const int wr = warp >> 1;        // fragment row 0..3
  const int wc = (warp & 1) * 2;   // fragment columns wc, wc+1
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2];
  wmma::fill_fragment(acc[0], 0.0f);
  wmma::fill_fragment(acc[1], 0.0f);
  for (int k0 = 0; k0 < dim; k0 += HALF_BK) {
    load_chunk<T, HALF_BK, HALF_LDS>(Q, n_q, dim, q0, k0, vec, As);
    load_chunk<T, HALF_BK, HALF_LDS>(W, n_v, dim, v0, k0, vec, Bs);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < HALF_BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
      wmma::load_matrix_sync(a, As + wr * 16 * HALF_LDS + kk, HALF_LDS);
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        // B(k, n) = W[v0 + n][k]: the vocabulary tile read column-major.
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
        wmma::load_matrix_sync(b, Bs + (wc + c) * 16 * HALF_LDS + kk, HALF_LDS);
        wmma::mma_sync(acc[c], a, b, acc[c]);
      }
    }
    __syncthreads();  // operand tiles are overwritten next (by the next chunk or by C)
  }
#pragma unroll
  for (int c = 0; c < 2; ++c)
    wmma::store_matrix_sync(C + wr * 16 * LDC + (wc + c) * 16, acc[c], LDC, wmma::mem_row_major);
}

// fp32 path: SIMT FMAs (exact fp32, no TF32), each thread a 4 x 4 micro-tile
// (rows ty + 16 i, columns tx + 16 j): broadcast reads of A, conflict-free reads of B.
template <>
__device__ __forceinline__ void dot_tile<float>(const float *__restrict__ Q,
                                                const float *__restrict__ W, int64_t n_q,
                                                int64_t n_v, int dim, int64_t q0, int64_t v0,
                                                bool vec, unsigned char *smem, float *C) {
  float *As = reinterpret_cast<float *>(smem);
  float *Bs = As + BM * F32_LDS;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
  for (int k0 = 0; k0 < dim; k0 += F32_BK) {
    load_chunk<float, F32_BK, F32_LDS>(Q, n_q, dim, q0, k0, vec, As);
    load_chunk<float, F32_BK, F32_LDS>(W, n_v, dim, v0, k0, vec, Bs);
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < F32_BK; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[(ty + 16 * i) * F32_LDS + kk];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = Bs[(tx + 16 * j) * F32_LDS + kk];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) C[(ty + 16 * i) * LDC + tx + 16 * j] = acc[i][j];
}

// Score -> key where larger is better (cosine: similarity; sqeuclidean: -distance).
__device__ __forceinline__ float score_key(float dot, float qf, float wf, int metric) {
  if (metric == RK_METRIC_COSINE) return dot * qf * wf;
  float d = (qf + wf) - 2.0f * dot;
  d = (d < 0.0f) ? 0.0f : d;  // rounding can make it slightly negative; NaN stays NaN
  return -d;
}

// ---------------------------------------------------------------- stage 2: tiles + selection
template <typename T, int KCAP>
__global__ void __launch_bounds__(THREADS)
topk_tile_kernel(const T *__restrict__ Q, const T *__restrict__ W,
                 const float *__restrict__ qfac, const float *__restrict__ wfac, int64_t n_q,
                 int64_t n_v, int dim, int k, int metric, int64_t tiles_per_split,
                 int64_t num_splits, bool vec, uint64_t *__restrict__ partial) {
  RK_DYNAMIC_SHARED(smem_raw);
  uint64_t *lists = reinterpret_cast<uint64_t *>(smem_raw);  // [BM][KCAP]
  uint64_t *cands = lists + BM * KCAP;                         // [WARPS][BN]
  unsigned char *gemm = reinterpret_cast<unsigned char *>(cands + WARPS * BN);
  float *C = reinterpret_cast<float *>(gemm);                  // [BM][LDC], aliases operands
  float *qf = reinterpret_cast<float *>(gemm + GEMM_SMEM);     // [BM]
  float *wf = qf + BM;                                         // [BN]

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t q0 = (int64_t)blockIdx.x * BM;
  const int64_t split = blockIdx.y;
  const int64_t n_tiles = (n_v + BN - 1) / BN;
  const int64_t t_begin = split * tiles_per_split;
  const int64_t t_end = min(t_begin + tiles_per_split, n_tiles);

  for (int i = threadIdx.x; i < BM * KCAP; i += THREADS) lists[i] = 0ull;
  if (threadIdx.x < BM) {
    const int64_t q = q0 + threadIdx.x;
    qf[threadIdx.x] = q < n_q ? qfac[q] : 0.f;
  }
  const unsigned lt_mask = (1u << lane) - 1u;
  uint64_t *my_cands = cands + warp * BN;
  __syncthreads();  // lists and qf initialised

  for (int64_t tile = t_begin; tile < t_end; ++tile) {
    const int64_t v0 = tile * BN;
    dot_tile<T>(Q, W, n_q, n_v, dim, q0, v0, vec, gemm, C);
    if (threadIdx.x < BN) {
      const int64_t v = v0 + threadIdx.x;
      wf[threadIdx.x] = v < n_v ? wfac[v] : 0.f;
    }
    __syncthreads();  // C, wf (and on the first tile lists, qf) visible to all warps

    const int64_t j0 = v0 + lane, j1 = v0 + lane + 32;
#pragma unroll 1
    for (int rr = 0; rr < ROWS_PER_WARP; ++rr) {
      const int r = warp * ROWS_PER_WARP + rr;
      if (q0 + r >= n_q) break;  // warp-uniform
      uint64_t *list = lists + r * KCAP;
      const float qr = qf[r];
      const uint64_t c0 =
          j0 < n_v ? pack_key(score_key(C[r * LDC + lane], qr, wf[lane], metric), (uint32_t)j0) : 0ull;
      const uint64_t c1 =
          j1 < n_v ? pack_key(score_key(C[r * LDC + lane + 32], qr, wf[lane + 32], metric), (uint32_t)j1) : 0ull;
      const uint64_t thr = list[k - 1];
      const bool p0 = c0 > thr, p1 = c1 > thr;
      const unsigned m0 = __ballot_sync(0xffffffffu, p0);
      const unsigned m1 = __ballot_sync(0xffffffffu, p1);
      if ((m0 | m1) == 0u) continue;  // warp-uniform: the common case once lists fill
      const int n0 = __popc(m0);
      if (p0) my_cands[__popc(m0 & lt_mask)] = c0;
      if (p1) my_cands[n0 + __popc(m1 & lt_mask)] = c1;
      __syncwarp();
      warp_merge<KCAP, BN>(list, my_cands, n0 + __popc(m1), lane);
    }
    __syncthreads();  // C and wf are overwritten by the next tile
  }

  // Write this split's top-k of every query of the block.
  __syncthreads();
  for (int i = threadIdx.x; i < BM * k; i += THREADS) {
    const int r = i / k, t = i % k;
    const int64_t q = q0 + r;
    if (q < n_q) partial[(q * num_splits + split) * k + t] = lists[r * KCAP + t];
  }
}

// ---------------------------------------------------------------- stage 2b: selection only
// The GEMM path (rk_topk_select): the dot products of a query chunk with a vocabulary tile come
// from a library GEMM (cuBLAS through torch, FAISS's way) as an fp32 [n_q x n_cols] tile; this
// kernel turns them into keys (same score_key as the fused kernel) and merges them into each
// query's running top-k (k packed keys per query in global memory, carried across tiles).
// One warp per query; 32 columns per step: threshold, ballot, compaction, warp_merge.
template <int KCAP>
__global__ void __launch_bounds__(THREADS)
topk_select_kernel(const float *__restrict__ S, int64_t ld, int64_t n_q, int64_t n_cols,
                   int64_t col0, const float *__restrict__ qfac, const float *__restrict__ wfac,
                   int k, int metric, bool first, uint64_t *__restrict__ lists) {
  __shared__ uint64_t s_list[WARPS][KCAP];
  __shared__ uint64_t s_cand[WARPS][32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t q = (int64_t)blockIdx.x * WARPS + warp;
  if (q >= n_q) return;  // warp-uniform; no block-level barriers below
  uint64_t *list = s_list[warp];
  uint64_t *cand = s_cand[warp];
  uint64_t *glist = lists + q * k;
  for (int i = lane; i < KCAP; i += 32) list[i] = (!first && i < k) ? glist[i] : 0ull;
  __syncwarp();
  const unsigned lt_mask = (1u << lane) - 1u;
  const float qr = qfac[q];
  const float *row = S + q * ld;
  uint64_t thr = list[k - 1];
  for (int64_t base = 0; base < n_cols; base += 32) {
    const int64_t j = base + lane;
    const uint64_t c =
        j < n_cols ? pack_key(score_key(row[j], qr, wfac[col0 + j], metric), (uint32_t)(col0 + j)) : 0ull;
    const bool p = c > thr;
    const unsigned m = __ballot_sync(0xffffffffu, p);
    if (m == 0u) continue;  // warp-uniform
    if (p) cand[__popc(m & lt_mask)] = c;
    __syncwarp();
    warp_merge<KCAP, 32>(list, cand, __popc(m), lane);
    thr = list[k - 1];
  }
  for (int i = lane; i < k; i += 32) glist[i] = list[i];
}

// ---------------------------------------------------------------- stage 3: merge + decode
template <int KCAP>
__global__ void __launch_bounds__(THREADS)
topk_merge_kernel(const uint64_t *__restrict__ partial, int64_t n_q, int64_t num_splits, int k,
                  int metric, float *__restrict__ values, int64_t *__restrict__ indices) {
  __shared__ uint64_t s_list[WARPS][KCAP];
  __shared__ uint64_t s_cand[WARPS][KCAP];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t q = (int64_t)blockIdx.x * WARPS + warp;
  if (q >= n_q) return;  // warp-uniform; no block-level barriers below
  uint64_t *list = s_list[warp];
  uint64_t *cand = s_cand[warp];
  const unsigned lt_mask = (1u << lane) - 1u;
  for (int i = lane; i < KCAP; i += 32) list[i] = 0ull;
  __syncwarp();
  for (int64_t s = 0; s < num_splits; ++s) {
    const uint64_t *src = partial + (q * num_splits + s) * k;
    const uint64_t thr = list[k - 1];
    int n = 0;
    for (int base = 0; base < k; base += 32) {
      const int t = base + lane;
      const uint64_t c = t < k ? src[t] : 0ull;
      const bool p = c > thr;
      const unsigned m = __ballot_sync(0xffffffffu, p);
      if (p) cand[n + __popc(m & lt_mask)] = c;
      n += __popc(m);
    }
    __syncwarp();
    if (n > 0) warp_merge<KCAP, KCAP>(list, cand, n, lane);
  }
  const float pad = metric == RK_METRIC_COSINE ? -INFINITY : INFINITY;
  for (int t = lane; t < k; t += 32) {
    const uint64_t p = list[t];
    float v;
    if (p == 0ull) {
      v = pad;
    } else {
      v = unpack_key(p);
      if (metric != RK_METRIC_COSINE) v = 0.0f - v;  // key = -distance; 0 - (+0) = +0
    }
    values[q * k + t] = v;
    indices[q * k + t] = unpack_index(p);
  }
}

// ---------------------------------------------------------------- host side
static size_t align_up(size_t x) { return (x + 255) & ~(size_t)255; }

static int64_t splits_for(int64_t n_q, int64_t n_v, int num_sms) {
  const int64_t qblocks = (n_q + BM - 1) / BM;
  const int64_t tiles = (n_v + BN - 1) / BN;
  if (qblocks <= 0 || tiles <= 0) return 1;
  const int64_t target = 2 * (int64_t)(num_sms > 0 ? num_sms : 108);  // ~2 waves of blocks
  int64_t s = (target + qblocks - 1) / qblocks;
  const int64_t min_tiles = 8;  // keep enough tiles per split for the threshold to pay off
  if (s > tiles / min_tiles) s = tiles / min_tiles;
  if (s < 1) s = 1;
  if (s > 4096) s = 4096;
  return s;
}

template <typename T, int KCAP>
static int launch_tiles(const void *Q, const void *W, const float *qfac, const float *wfac,
                        int64_t n_q, int64_t n_v, int dim, int k, int metric, int64_t splits,
                        int64_t tiles_per_split, bool vec, uint64_t *partial,
                        cudaStream_t stream) {
  constexpr size_t smem = tile_smem_bytes<KCAP>();
  auto kern = topk_tile_kernel<T, KCAP>;
  cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (e != cudaSuccess) {
    set_last_error("rk_topk: cannot reserve %zu bytes of shared memory: %s", smem, cudaGetErrorString(e));
    return RK_ERR_CUDA;
  }
  dim3 grid((unsigned)((n_q + BM - 1) / BM), (unsigned)splits);
  RK_LAUNCH(kern, grid, THREADS, smem, stream)(static_cast<const T *>(Q), static_cast<const T *>(W), qfac,
                                        wfac, n_q, n_v, dim, k, metric, tiles_per_split, splits,
                                        vec, partial);
  RK_CHECK_LAUNCH("rk_topk (tile kernel)");
  return RK_OK;
}

template <int KCAP>
static int launch_merge(const uint64_t *partial, int64_t n_q, int64_t splits, int k, int metric,
                        float *values, int64_t *indices, cudaStream_t stream) {
  const int64_t blocks = (n_q + WARPS - 1) / WARPS;
  auto kern = topk_merge_kernel<KCAP>;
  RK_LAUNCH(kern, (unsigned)blocks, THREADS, 0, stream)(partial, n_q, splits, k, metric,
                                                                    values, indices);
  RK_CHECK_LAUNCH("rk_topk (merge kernel)");
  return RK_OK;
}

static unsigned factor_blocks(int64_t rows) {
  const int64_t b = (rows * 32 + 255) / 256;  // a warp per row
  return (unsigned)(b < 65535 * 16 ? (b > 0 ? b : 1) : 65535 * 16);
}

template <typename T>
static int launch_factors(const void *X, int64_t rows, int dim, int metric, float *out,
                          cudaStream_t stream, const char *what) {
  constexpr int VEC = Vec16<T>::N;
  const bool vec = dim % VEC == 0 && reinterpret_cast<uintptr_t>(X) % 16 == 0;
  auto kern = row_factor_kernel<T>;
  RK_LAUNCH(kern, factor_blocks(rows), 256, 0, stream)(static_cast<const T *>(X), rows, dim, metric, vec, out);
  RK_CHECK_LAUNCH(what);
  return RK_OK;
}

template <typename T>
static int run_topk(const void *Q, const void *W, const float *vocab_factors, int64_t n_q,
                    int64_t n_v, int dim, int k, int metric, int64_t splits, void *workspace,
                    float *values, int64_t *indices, cudaStream_t stream) {
  constexpr int VEC = Vec16<T>::N;
  unsigned char *ws = static_cast<unsigned char *>(workspace);
  float *qfac = reinterpret_cast<float *>(ws);
  float *wfac = reinterpret_cast<float *>(ws + align_up((size_t)n_q * 4));
  uint64_t *partial =
      reinterpret_cast<uint64_t *>(ws + align_up((size_t)n_q * 4) + align_up((size_t)n_v * 4));
  const bool vec = dim % VEC == 0 && reinterpret_cast<uintptr_t>(Q) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(W) % 16 == 0;
  int st = launch_factors<T>(Q, n_q, dim, metric, qfac, stream, "rk_topk (query norms)");
  if (st != RK_OK) return st;
  if (vocab_factors != nullptr) {
    wfac = const_cast<float *>(vocab_factors);  // precomputed by rk_row_factors (an index)
  } else {
    st = launch_factors<T>(W, n_v, dim, metric, wfac, stream, "rk_topk (vocabulary norms)");
    if (st != RK_OK) return st;
  }

  const int64_t tiles = (n_v + BN - 1) / BN;
  const int64_t tps = (tiles + splits - 1) / splits;
  if (k <= 32) st = launch_tiles<T, 32>(Q, W, qfac, wfac, n_q, n_v, dim, k, metric, splits, tps, vec, partial, stream);
  else if (k <= 64) st = launch_tiles<T, 64>(Q, W, qfac, wfac, n_q, n_v, dim, k, metric, splits, tps, vec, partial, stream);
  else st = launch_tiles<T, 128>(Q, W, qfac, wfac, n_q, n_v, dim, k, metric, splits, tps, vec, partial, stream);
  if (st != RK_OK) return st;
  if (k <= 32) return launch_merge<32>(partial, n_q, splits, k, metric, values, indices, stream);
  if (k <= 64) return launch_merge<64>(partial, n_q, splits, k, metric, values, indices, stream);
  return launch_merge<128>(partial, n_q, splits, k, metric, values, indices, stream);
}

}  // namespace rk

extern "C" {

RK_API int rk_topk_max_k(void) { return rk::MAX_K; }

RK_API int64_t rk_topk_num_splits(int64_t n_queries, int64_t n_vocab, int k, int num_sms) {
  (void)k;
  return rk::splits_for(n_queries, n_vocab, num_sms);
}

RK_API size_t rk_topk_workspace_bytes(int64_t n_queries, int64_t n_vocab, int k,
                                      int64_t num_splits) {
  if (n_queries < 0 || n_vocab < 0 || k < 1 || num_splits < 1) return 0;
  return rk::align_up((size_t)n_queries * 4) + rk::align_up((size_t)n_vocab * 4) +
         (size_t)n_queries * (size_t)num_splits * (size_t)k * 8;
}

RK_API int rk_row_factors(const void *x, int64_t rows, int64_t dim, int dtype, int metric,
                          float *out, void *stream) {
  if (rows < 0 || dim < 1 || dim > 0x7fffffffLL ||
      (metric != RK_METRIC_COSINE && metric != RK_METRIC_SQEUCLIDEAN)) {
    rk::set_last_error("rk_row_factors: bad arguments (rows=%lld dim=%lld metric=%d)",
                       (long long)rows, (long long)dim, metric);
    return RK_ERR_INVALID_ARGUMENT;
  }
  if (rows == 0) return RK_OK;
  if (!x || !out) {
    rk::set_last_error("rk_row_factors: null pointer");
    return RK_ERR_INVALID_ARGUMENT;
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int d = (int)dim;
  const char *what = "rk_row_factors";
  switch (dtype) {
    case RK_DTYPE_F32: return rk::launch_factors<float>(x, rows, d, metric, out, s, what);
    case RK_DTYPE_F16: return rk::launch_factors<__half>(x, rows, d, metric, out, s, what);
    case RK_DTYPE_BF16: return rk::launch_factors<__nv_bfloat16>(x, rows, d, metric, out, s, what);
    default:
      rk::set_last_error("rk_row_factors: unknown dtype code %d", dtype);
      return RK_ERR_INVALID_ARGUMENT;
  }
}

RK_API int rk_topk_select(const float *scores, int64_t ld, int64_t n_queries, int64_t n_cols,
                          int64_t col0, const float *query_factors, const float *vocab_factors,
                          int k, int metric, int first, uint64_t *lists, void *stream) {
  if (k < 1 || k > rk::MAX_K) {
    rk::set_last_error("rk_topk_select: k=%d outside [1, %d]", k, rk::MAX_K);
    return RK_ERR_UNSUPPORTED_K;
  }
  if (n_queries < 0 || n_cols < 0 || ld < n_cols || col0 < 0 || col0 + n_cols >= 0xFFFFFFFFLL ||
      (metric != RK_METRIC_COSINE && metric != RK_METRIC_SQEUCLIDEAN)) {
    rk::set_last_error("rk_topk_select: bad arguments (n_queries=%lld n_cols=%lld ld=%lld col0=%lld metric=%d)",
                       (long long)n_queries, (long long)n_cols, (long long)ld, (long long)col0, metric);
    return RK_ERR_INVALID_ARGUMENT;
  }
  if (n_queries == 0 || (n_cols == 0 && !first)) return RK_OK;
  if (!scores || !query_factors || !vocab_factors || !lists) {
    rk::set_last_error("rk_topk_select: null pointer");
    return RK_ERR_INVALID_ARGUMENT;
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int64_t blocks = (n_queries + rk::WARPS - 1) / rk::WARPS;
  if (blocks > 0x7fffffffLL) {
    rk::set_last_error("rk_topk_select: too many queries");
    return RK_ERR_INVALID_ARGUMENT;
  }
  if (k <= 32) {
    auto kern = rk::topk_select_kernel<32>;
    RK_LAUNCH(kern, (unsigned)blocks, rk::THREADS, 0, s)(scores, ld, n_queries, n_cols, col0, query_factors, vocab_factors, k, metric, first != 0, lists);
  } else if (k <= 64) {
    auto kern = rk::topk_select_kernel<64>;
    RK_LAUNCH(kern, (unsigned)blocks, rk::THREADS, 0, s)(scores, ld, n_queries, n_cols, col0, query_factors, vocab_factors, k, metric, first != 0, lists);
  } else {
    auto kern = rk::topk_select_kernel<128>;
    RK_LAUNCH(kern, (unsigned)blocks, rk::THREADS, 0, s)(scores, ld, n_queries, n_cols, col0, query_factors, vocab_factors, k, metric, first != 0, lists);
  }
  RK_CHECK_LAUNCH("rk_topk_select");
  return RK_OK;
}

RK_API int rk_topk_finish(const uint64_t *lists, int64_t n_queries, int k, int metric,
                          float *out_values, int64_t *out_indices, void *stream) {
  if (k < 1 || k > rk::MAX_K || n_queries < 0 ||
      (metric != RK_METRIC_COSINE && metric != RK_METRIC_SQEUCLIDEAN)) {
    rk::set_last_error("rk_topk_finish: bad arguments (n_queries=%lld k=%d metric=%d)",
                       (long long)n_queries, k, metric);
    return RK_ERR_INVALID_ARGUMENT;
  }
  if (n_queries == 0) return RK_OK;
  if (!lists || !out_values || !out_indices) {
    rk::set_last_error("rk_topk_finish: null pointer");
    return RK_ERR_INVALID_ARGUMENT;
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  // the running lists are one sorted split per query: decoding is the merge kernel's last step
  if (k <= 32) return rk::launch_merge<32>(lists, n_queries, 1, k, metric, out_values, out_indices, s);
  if (k <= 64) return rk::launch_merge<64>(lists, n_queries, 1, k, metric, out_values, out_indices, s);
  return rk::launch_merge<128>(lists, n_queries, 1, k, metric, out_values, out_indices, s);
}

RK_API int rk_topk(const void *queries, const void *vocab, const float *vocab_factors,
                   int64_t n_queries, int64_t n_vocab, int64_t dim, int k, int dtype, int metric,
                   int64_t num_splits, void *workspace, size_t workspace_bytes,
                   float *out_values, int64_t *out_indices, void *stream) {
  if (k < 1 || k > rk::MAX_K) {
    rk::set_last_error("rk_topk: k=%d outside [1, %d]", k, rk::MAX_K);
    return RK_ERR_UNSUPPORTED_K;
  }
  if (n_queries < 0 || n_vocab < 1 || n_vocab >= 0xFFFFFFFFLL || dim < 1 || dim > 0x7fffffffLL ||
      num_splits < 1 || num_splits > 65535 ||
      (metric != RK_METRIC_COSINE && metric != RK_METRIC_SQEUCLIDEAN)) {
    rk::set_last_error("rk_topk: bad arguments (n_queries=%lld n_vocab=%lld dim=%lld splits=%lld metric=%d)",
                       (long long)n_queries, (long long)n_vocab, (long long)dim,
                       (long long)num_splits, metric);
    return RK_ERR_INVALID_ARGUMENT;
  }
  if ((n_queries + rk::BM - 1) / rk::BM > 0x7fffffffLL) {
    rk::set_last_error("rk_topk: too many queries");
    return RK_ERR_INVALID_ARGUMENT;
  }
  if (n_queries == 0) return RK_OK;
  const size_t need = rk_topk_workspace_bytes(n_queries, n_vocab, k, num_splits);
  if (workspace_bytes < need || workspace == nullptr ||
      reinterpret_cast<uintptr_t>(workspace) % 16 != 0) {
    rk::set_last_error("rk_topk: workspace of %zu bytes (16-byte aligned) needed, got %zu",
                       need, workspace_bytes);
    return RK_ERR_WORKSPACE_TOO_SMALL;
  }
  if (!queries || !vocab || !out_values || !out_indices) {
    rk::set_last_error("rk_topk: null pointer");
    return RK_ERR_INVALID_ARGUMENT;
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int d = (int)dim;
  switch (dtype) {
    case RK_DTYPE_F32: return rk::run_topk<float>(queries, vocab, vocab_factors, n_queries, n_vocab, d, k, metric, num_splits, workspace, out_values, out_indices, s);
    case RK_DTYPE_F16: return rk::run_topk<__half>(queries, vocab, vocab_factors, n_queries, n_vocab, d, k, metric, num_splits, workspace, out_values, out_indices, s);
    case RK_DTYPE_BF16: return rk::run_topk<__nv_bfloat16>(queries, vocab, vocab_factors, n_queries, n_vocab, d, k, metric, num_splits, workspace, out_values, out_indices, s);
    default:
      rk::set_last_error("rk_topk: unknown dtype code %d", dtype);
      return RK_ERR_INVALID_ARGUMENT;
  }
}

}  // extern "C"
