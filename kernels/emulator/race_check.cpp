// race_check.cpp: runs every kernel path of the emulated library, for its ThreadSanitizer
// build (tests/test_kernel_emulator.py):
//
//   RK_EMU_SANITIZE=thread RK_BUILD_DIR=B kernels/build.sh --emulator-only
//   g++ -std=c++17 -fsanitize=thread -DRK_EMULATE -I kernels kernels/emulator/race_check.cpp
//       -L B -l:librescorer_kernels_emu.so -Wl,-rpath,B
//
// With TSan every CUDA thread is a fiber and every barrier a release/acquire pair (see
// cuda_emulator.h), so a shared- or global-memory access of one thread that no barrier
// orders against another thread's write is reported as a data race, whatever the schedule.
// The program checks statuses and that each top-1 is the true best (in double), and
// prints "race_check: ok".
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "../common.cuh"

namespace {

int failures = 0;

void expect(bool ok, const char *what, int status) {
  if (!ok) {
    std::fprintf(stderr, "race_check: %s failed (status %d: %s)\n", what, status, rk_last_error());
    ++failures;
  }
}

template <typename T> T from_float(float x);
template <> float from_float<float>(float x) { return x; }
template <> __half from_float<__half>(float x) { return __float2half(x); }
template <> __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
float to_f(float x) { return x; }
float to_f(__half x) { return __half2float(x); }
float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
std::vector<T> random_matrix(std::mt19937 &rng, int64_t rows, int64_t dim) {
  std::normal_distribution<float> normal;
  std::vector<T> m(rows * dim);
  for (auto &x : m) x = from_float<T>(normal(rng));
  return m;
}

// Best vocabulary row of query r by the documented score, in double.
template <typename T>
int64_t best_row(const std::vector<T> &q, const std::vector<T> &w, int64_t r, int64_t v, int64_t d,
                 int metric) {
  int64_t best = -1;
  double best_key = -INFINITY;
  for (int64_t j = 0; j < v; ++j) {
    double dot = 0, nq = 0, nw = 0;
    for (int64_t e = 0; e < d; ++e) {
      const double a = to_f(q[r * d + e]), b = to_f(w[j * d + e]);
      dot += a * b, nq += a * a, nw += b * b;
    }
    const double key = metric == RK_METRIC_COSINE ? dot / std::sqrt(nq * nw) : -(nq + nw - 2 * dot);
    if (key > best_key) best_key = key, best = j;
  }
  return best;
}

template <typename T>
void run_case(int dtype, int metric, int64_t n, int64_t v, int64_t d, int k, std::mt19937 &rng) {
  const auto q = random_matrix<T>(rng, n, d);
  const auto w = random_matrix<T>(rng, v, d);

  // per-arc similarity
  std::vector<int64_t> arcs;
  for (int m = 0; m < 70; ++m) arcs.push_back(rng() % n), arcs.push_back(rng() % v);
  std::vector<float> sims(arcs.size() / 2);
  int st = rk_arc_similarity(q.data(), w.data(), arcs.data(), n, v, (int64_t)sims.size(), d, dtype, metric,
                             sims.data(), nullptr);
  expect(st == RK_OK, "rk_arc_similarity", st);

  // fused top-k, with and without precomputed vocabulary factors
  std::vector<float> wfac(v), values(n * k);
  std::vector<int64_t> indices(n * k);
  st = rk_row_factors(w.data(), v, d, dtype, metric, wfac.data(), nullptr);
  expect(st == RK_OK, "rk_row_factors", st);
  for (const float *factors : {(const float *)nullptr, (const float *)wfac.data()}) {
    const int64_t splits = rk_topk_num_splits(n, v, k, 4);
    std::vector<uint64_t> ws((rk_topk_workspace_bytes(n, v, k, splits) + 7) / 8 + 2);
    st = rk_topk(q.data(), w.data(), factors, n, v, d, k, dtype, metric, splits, ws.data(), ws.size() * 8,
                 values.data(), indices.data(), nullptr);
    expect(st == RK_OK, "rk_topk", st);
    for (int64_t r = 0; r < n; ++r) expect(indices[r * k] == best_row(q, w, r, v, d, metric), "top-1 (fused)", 0);
  }

  // GEMM path: dot tiles of 64 columns computed here, selection in the library
  std::vector<float> qfac(n), dots;
  std::vector<uint64_t> lists(n * k);
  st = rk_row_factors(q.data(), n, d, dtype, metric, qfac.data(), nullptr);
  expect(st == RK_OK, "rk_row_factors", st);
  for (int64_t c0 = 0; c0 < v; c0 += 64) {
    const int64_t cols = std::min<int64_t>(64, v - c0);
    dots.assign(n * cols, 0.f);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        float s = 0.f;
        for (int64_t e = 0; e < d; ++e) s = fmaf(to_f(q[r * d + e]), to_f(w[(c0 + c) * d + e]), s);
        dots[r * cols + c] = s;
      }
    st = rk_topk_select(dots.data(), cols, n, cols, c0, qfac.data(), wfac.data(), k, metric, c0 == 0,
                        lists.data(), nullptr);
    expect(st == RK_OK, "rk_topk_select", st);
  }
  st = rk_topk_finish(lists.data(), n, k, metric, values.data(), indices.data(), nullptr);
  expect(st == RK_OK, "rk_topk_finish", st);
  for (int64_t r = 0; r < n; ++r) expect(indices[r * k] == best_row(q, w, r, v, d, metric), "top-1 (gemm)", 0);
}

}  // namespace

int main() {
  // Each code path once (TSan fibers are slow): the fp32 SIMT and 16-bit tensor-core
  // products, the three list capacities, scalar and vector loads, both metrics, two query
  // blocks and several vocabulary splits.
  std::mt19937 rng(7);
  run_case<float>(RK_DTYPE_F32, RK_METRIC_COSINE, 66, 300, 72, 40, rng);
  run_case<__half>(RK_DTYPE_F16, RK_METRIC_SQEUCLIDEAN, 3, 150, 64, 100, rng);
  run_case<__nv_bfloat16>(RK_DTYPE_BF16, RK_METRIC_COSINE, 3, 40, 7, 5, rng);
  if (failures) {
    std::fprintf(stderr, "race_check: %d failures\n", failures);
    return 1;
  }
  std::printf("race_check: ok\n");
  return 0;
}
