/*
 * rescorer_kernels.h: plain C ABI of librescorer_kernels.so.
 *
 * Every function takes raw device pointers, sizes, a dtype code and a CUDA stream
 * passed as an opaque pointer (Python: torch.cuda.current_stream().cuda_stream).
 * Nothing here depends on torch's C++ ABI; Python loads the library with ctypes
 * (rescorer/_kernels_loader.py). All matrices are dense row-major (contiguous rows).
 * Functions return RK_OK (0) or an error code; rk_last_error() gives a message
 * (thread-local) for the last failure on the calling thread.
 */
#ifndef RESCORER_KERNELS_H
#define RESCORER_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RK_API __attribute__((visibility("default")))

/* Bumped whenever a signature below changes; Python checks it before use. */
#define RK_ABI_VERSION 3

enum rk_dtype { RK_DTYPE_F32 = 0, RK_DTYPE_F16 = 1, RK_DTYPE_BF16 = 2 };
enum rk_metric { RK_METRIC_COSINE = 0, RK_METRIC_SQEUCLIDEAN = 1 };
enum rk_status {
  RK_OK = 0,
  RK_ERR_INVALID_ARGUMENT = 1,
  RK_ERR_UNSUPPORTED_K = 2,
  RK_ERR_WORKSPACE_TOO_SMALL = 3,
  RK_ERR_CUDA = 4
};

RK_API int rk_abi_version(void);
RK_API const char *rk_error_string(int status);
RK_API const char *rk_last_error(void);

/*
 * Per-arc similarity: out[m] = sim(acoustic[arcs[m,0]], spelling[arcs[m,1]]).
 *   acoustic [n_spans x dim], spelling [n_words x dim] (same dtype), arcs int64 [n_arcs x 2],
 *   out float32 [n_arcs]. metric COSINE: dot/(|a||w|), 0 when either vector is zero;
 *   SQEUCLIDEAN: sum((a-w)^2). fp32 accumulation. Out-of-range arcs give NaN
 *   (the Python layer rejects them before calling).
 */
RK_API int rk_arc_similarity(const void *acoustic, const void *spelling, const int64_t *arcs,
                             int64_t n_spans, int64_t n_words, int64_t n_arcs, int64_t dim,
                             int dtype, int metric, float *out, void *stream);

/* Largest k rk_topk supports. */
RK_API int rk_topk_max_k(void);

/* Number of vocabulary splits (grid.y) for a problem on a device with num_sms SMs. */
RK_API int64_t rk_topk_num_splits(int64_t n_queries, int64_t n_vocab, int k, int num_sms);

/* Bytes of device workspace rk_topk needs for these sizes and this number of splits. */
RK_API size_t rk_topk_workspace_bytes(int64_t n_queries, int64_t n_vocab, int k,
                                      int64_t num_splits);

/*
 * Per-row factors of x [rows x dim] as rk_topk uses them, float32 [rows]: COSINE 1/|x| (0 for
 * a zero, NaN or infinite norm), SQEUCLIDEAN |x|^2. Computed once for a vocabulary that is
 * searched many times and passed to rk_topk as vocab_factors.
 */
RK_API int rk_row_factors(const void *x, int64_t rows, int64_t dim, int dtype, int metric,
                          float *out, void *stream);

/*
 * Top-k nearest vocabulary rows for every query, without materialising n_queries x n_vocab.
 *   queries [n_queries x dim], vocab [n_vocab x dim] (same dtype); out_values float32
 *   [n_queries x k], out_indices int64 [n_queries x k], best first.
 *   COSINE: similarity, descending. SQEUCLIDEAN: squared distance, ascending.
 *   Ties: smaller vocabulary index first. NaN scores rank after every number.
 *   k > n_vocab: the n_vocab real results, then index -1 with value -inf (cosine) / +inf (L2).
 *   vocab_factors: NULL (computed here), or rk_row_factors(vocab) for this metric [n_vocab].
 *   workspace: 16-byte aligned device memory of rk_topk_workspace_bytes(...) bytes.
 *   n_vocab must be < 2^32 - 1, 1 <= k <= rk_topk_max_k().
 */
RK_API int rk_topk(const void *queries, const void *vocab, const float *vocab_factors,
                   int64_t n_queries, int64_t n_vocab, int64_t dim, int k, int dtype, int metric,
                   int64_t num_splits, void *workspace, size_t workspace_bytes,
                   float *out_values, int64_t *out_indices, void *stream);

/*
 * The GEMM path of top-k (FAISS's way): the caller computes fp32 dot products of the queries
 * with a tile of vocabulary rows (e.g. cuBLAS), scores [n_queries x n_cols] with row stride
 * ld, for vocabulary rows col0 .. col0 + n_cols; rk_topk_select turns them into scores with
 * the row factors (rk_row_factors of queries and of the whole vocabulary) and merges them
 * into lists (uint64 [n_queries x k], this library's packed keys; first != 0 starts them
 * empty). After the last tile, rk_topk_finish decodes lists into values and indices with
 * the same semantics as rk_topk.
 */
RK_API int rk_topk_select(const float *scores, int64_t ld, int64_t n_queries, int64_t n_cols,
                          int64_t col0, const float *query_factors, const float *vocab_factors,
                          int k, int metric, int first, uint64_t *lists, void *stream);
RK_API int rk_topk_finish(const uint64_t *lists, int64_t n_queries, int k, int metric,
                          float *out_values, int64_t *out_indices, void *stream);

#ifdef __cplusplus
}
#endif

#endif /* RESCORER_KERNELS_H */
