#!/usr/bin/env bash
# The GPU checks of the kernels, in one run on a machine with a GPU, nvcc and torch (no k2 or
# lhotse needed): what CI cannot do. Writes everything under $OUT (default ./device_out):
#
#   scripts/device_check.sh tests   # build for this GPU, GPU tests, compute-sanitizer (~3 min)
#   scripts/device_check.sh bench   # benchmarks/bench_kernels.py -> $OUT/kernels.json
#   scripts/device_check.sh all     # both (default)
#
# Then commit $OUT/gpu_tests.log and $OUT/sanitizer.log under results/kernels_gpu/ and
# $OUT/kernels.json as results/kernels.json (rescorer report results fills RESULTS.md's table).
# BENCH_ARGS: the benchmark's arguments (default "--min-time-ms 30"; e.g. "--quick").
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
WHAT="${1:-all}"
OUT="${OUT:-$REPO/device_out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
status=0

"$PY" - <<'EOF' || exit 1
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
p = torch.cuda.get_device_properties(0)
print(f"[device] {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, torch {torch.__version__}")
EOF
ARCH="$("$PY" -c 'import torch; a, b = torch.cuda.get_device_capability(); print(f"{a}{b}")')"
RK_CUDA_ARCHS="$ARCH" bash kernels/build.sh --cuda-only --force 2>&1 | tee "$OUT/build.log" || exit 1

if [ "$WHAT" = tests ] || [ "$WHAT" = all ]; then
  echo "[device] GPU tests"
  "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs tests/test_ops.py 2>&1 | tee "$OUT/gpu_tests.log" || status=1
  if command -v compute-sanitizer >/dev/null 2>&1; then
    echo "[device] compute-sanitizer (memcheck, racecheck, synccheck, initcheck) on both kernels"
    cat > "$OUT/sanitize_case.py" <<'EOF'
import torch
from rescorer import ops
g = torch.Generator(device="cuda").manual_seed(0)
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    q = torch.randn(70, 100, device="cuda", generator=g).to(dtype)
    w = torch.randn(3000, 100, device="cuda", generator=g).to(dtype)
    for k in (5, 64, 128):
        ops.topk_nearest(q, w, k)
        ops.topk_nearest(q, w, k, "sqeuclidean")
    arcs = torch.randint(0, 70, (500, 2), device="cuda", generator=g)
    ops.arc_similarity(q, w, arcs)
torch.cuda.synchronize()
print("sanitize case done")
EOF
    : > "$OUT/sanitizer.log"
    # every kernel of torch's is instrumented too: each tool gets a time limit; racecheck of
    # torch's kernels outlasted 60 s on an H200, so it checks ours alone, one family at a time
    for tool in memcheck racecheck synccheck initcheck; do
      filters=("")
      [ "$tool" = racecheck ] && filters=(kns=topk_ kns=row_factor_kernel kns=arc_similarity_kernel)
      for f in "${filters[@]}"; do
        timeout "${SANITIZER_TIMEOUT:-150}" compute-sanitizer --tool "$tool" ${f:+--kernel-name "$f"} \
          --error-exitcode 9 "$PY" "$OUT/sanitize_case.py" 2>&1 | tee -a "$OUT/sanitizer.log"
        rc=${PIPESTATUS[0]}
        [ "$rc" = 0 ] || { echo "[device] compute-sanitizer $tool $f: exit $rc (124: time limit)" | tee -a "$OUT/sanitizer.log"; status=1; }
      done
    done
  else
    echo "[device] compute-sanitizer not found: skipped" | tee "$OUT/sanitizer.log"
  fi
fi

if [ "$WHAT" = bench ] || [ "$WHAT" = all ]; then
  echo "[device] benchmark"
  # shellcheck disable=SC2086
  # rows are written as they are measured, so a run stopped by its time limit keeps them
  "$PY" benchmarks/bench_kernels.py --out "$OUT/kernels.json" ${BENCH_ARGS:---min-time-ms 30} 2>&1 \
    | tee "$OUT/bench.log" || status=1
fi
echo "[device] done, status $status; outputs in $OUT"
exit $status
