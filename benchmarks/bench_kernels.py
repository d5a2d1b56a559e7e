#!/usr/bin/env python
"""Benchmark rescorer's CUDA kernels against torch baselines and against the hardware floor.

    python benchmarks/bench_kernels.py                  # full sweep on CUDA -> results/kernels.json
    python benchmarks/bench_kernels.py --quick          # a few shapes
    python benchmarks/bench_kernels.py --device cpu     # tiny reference run (no JSON unless --out)

Top-k rows: ``ops.topk_nearest`` (``ms``: the default method, the fused kernel; ``gemm_ms``:
``method="gemm"``, cuBLAS tiles + the selection kernel; ``index_ms``: ``ops.NearestIndex.search``,
whose vocabulary norms are computed once) vs ``cdist + topk`` and ``mm + topk`` (the best of the two
is ``torch_ms``; a baseline whose N x V matrix would not fit in free memory is skipped and
recorded as null). Arc rows: ``ops.arc_similarity`` vs a torch gather + sum.

Floor: max(bytes moved / measured copy bandwidth, FLOPs / measured torch.mm rate for the
dtype). Bandwidth comes from a 1 GiB device-to-device copy (read + write counted), the
matmul rate from an 8192^3 torch.mm (fp32 with TF32 off, as the fp32 kernel uses exact fp32).
Times are medians over repetitions measured with CUDA events after warm-up.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from rescorer import ops  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--V", type=int, nargs="+", default=[10_000, 100_000, 1_000_000, 4_000_000])
    p.add_argument("--N", type=int, nargs="+", default=[256, 4096])
    p.add_argument("--D", type=int, nargs="+", default=[128, 256])
    p.add_argument("--k", type=int, nargs="+", default=[10, 100])
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    p.add_argument("--metrics", nargs="+", choices=list(ops.METRICS), default=["cosine"])
    p.add_argument("--arcs", type=int, nargs="+", default=[1_000_000, 10_000_000],
                   help="numbers of arcs M for the arc_similarity rows (0 to skip)")
    p.add_argument("--quick", action="store_true", help="a small subset of shapes")
    p.add_argument("--min-time-ms", type=float, default=200.0, help="target measured time per case")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON output (default results/kernels.json on CUDA; nothing on CPU)")
    p.add_argument("--no-write", action="store_true", help="print the rows, write nothing")
    return p.parse_args(argv)


# ------------------------------------------------------------------ timing

class Timer:
    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def once(self, fn) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    def measure(self, fn, min_time_ms: float, warmup: int = 2, max_reps: int = 50) -> float:
        for _ in range(warmup):
            fn()
        if self.cuda:
            torch.cuda.synchronize()
        first = self.once(fn)
        reps = int(min(max_reps, max(3, math.ceil(min_time_ms / max(first, 1e-3)))))
        return statistics.median([first] + [self.once(fn) for _ in range(reps - 1)])


def is_oom(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


def free_bytes() -> int:
    if not torch.cuda.is_available():
        return 1 << 62
    free, _ = torch.cuda.mem_get_info()
    return int(free)


# ------------------------------------------------------------------ hardware rates

def measure_bandwidth(timer: Timer, device: str) -> float:
    """Bytes per second of a large device copy (read + write)."""
    n = (1 << 30) // 4 if device == "cuda" else (1 << 24)
    x = torch.empty(n, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    ms = timer.measure(lambda: y.copy_(x), 50)
    del x, y
    return 2 * n * 4 / (ms * 1e-3)


def measure_mm_rate(timer: Timer, device: str, dtype: torch.dtype) -> float:
    """FLOP per second of a large torch.mm in this dtype."""
    n = 8192 if device == "cuda" else 512
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ms = timer.measure(lambda: torch.mm(a, b), 100)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return 2 * n ** 3 / (ms * 1e-3)


# ------------------------------------------------------------------ baselines

def mm_topk(q, w, k, metric):
    if metric == "cosine":
        qn = torch.nn.functional.normalize(q.float(), dim=1).to(q.dtype)
        wn = torch.nn.functional.normalize(w.float(), dim=1).to(w.dtype)
        return (qn @ wn.t()).topk(min(k, w.shape[0]), dim=1)
    qq = (q.float() ** 2).sum(1)
    ww = (w.float() ** 2).sum(1)
    d = qq[:, None] + ww[None, :] - 2.0 * (q @ w.t()).float()
    return d.topk(min(k, w.shape[0]), dim=1, largest=False)


def cdist_topk(q, w, k, metric):
    if metric == "cosine":
        q = torch.nn.functional.normalize(q.float(), dim=1).to(q.dtype)
        w = torch.nn.functional.normalize(w.float(), dim=1).to(w.dtype)
    return torch.cdist(q, w).topk(min(k, w.shape[0]), dim=1, largest=False)


def try_time(timer, fn, need_bytes, min_time_ms):
    """Median ms, or None when it would not fit (need_bytes > 80% of free) or runs out of memory."""
    if need_bytes > 0.8 * free_bytes():
        return None
    try:
        return timer.measure(fn, min_time_ms, warmup=1)
    except RuntimeError as exc:  # OOM, or a dtype the op does not support
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if is_oom(exc) or "not implemented" in str(exc).lower() or "not supported" in str(exc).lower():
            return None
        raise


# ------------------------------------------------------------------ main

def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_kernels: CUDA is not available, nothing benchmarked "
              "(use --device cpu for a tiny run of the torch reference)", file=sys.stderr)
        return 0
    if args.device == "cpu":  # tiny reference run
        args.V = [v for v in args.V if v <= 20_000] or [10_000]
        args.N, args.D, args.k = [16], [64], [10]
        args.dtypes, args.arcs = ["float32"], [10_000]
    elif args.quick:
        args.V, args.N, args.D, args.k = [100_000, 1_000_000], [256], [128], [10, 100]
        args.arcs = [1_000_000]
    device = args.device
    kernel = "cuda" if device == "cuda" and ops.kernels_available() else "reference"
    if device == "cuda" and kernel == "reference":
        print("bench_kernels: the CUDA kernel library is not built (kernels/build.sh); timing the reference",
              file=sys.stderr)
    timer = Timer(device)
    date = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    dev_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    bw = measure_bandwidth(timer, device)
    rates = {name: measure_mm_rate(timer, device, dt) for name, dt in DTYPES.items() if name in args.dtypes}
    print(f"# {dev_name}: copy bandwidth {bw / 1e9:.0f} GB/s; mm " +
          ", ".join(f"{n} {r / 1e12:.1f} TFLOP/s" for n, r in rates.items()), file=sys.stderr)

    rows = []
    out = args.out
    if out is None and device == "cuda":
        out = REPO / "results" / "kernels.json"

    def save():
        """Write what is measured so far (after every row: a run cut short keeps its rows)."""
        if out is None or args.no_write:
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = dict(command=" ".join([Path(sys.executable).name] + sys.argv), device=dev_name, date=date,
                   torch=torch.__version__, cuda=torch.version.cuda, kernel=kernel,
                   copy_bandwidth_GBps=bw / 1e9, mm_TFLOPs={n: r / 1e12 for n, r in rates.items()}, rows=rows)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(out)

    gen = torch.Generator(device=device).manual_seed(0)
    for dname in args.dtypes:
        dtype = DTYPES[dname]
        elem = torch.tensor([], dtype=dtype).element_size()
        for D in args.D:
            for V in args.V:
                w = torch.randn(V, D, device=device, generator=gen).to(dtype)
                for N in args.N:
                    q = torch.randn(N, D, device=device, generator=gen).to(dtype)
                    for metric in args.metrics:
                        for k in args.k:
                            ms = timer.measure(lambda: ops.topk_nearest(q, w, k, metric), args.min_time_ms)
                            gemm_ms = timer.measure(lambda: ops.topk_nearest(q, w, k, metric, method="gemm"),
                                                    args.min_time_ms)
                            index = ops.NearestIndex(w, metric)  # vocabulary norms computed once
                            index_ms = timer.measure(lambda: index.search(q, k), args.min_time_ms)
                            del index
                            nv = N * V
                            mm_ms = try_time(timer, lambda: mm_topk(q, w, k, metric), nv * (4 + 4 + elem), args.min_time_ms)
                            cd_ms = try_time(timer, lambda: cdist_topk(q, w, k, metric), nv * (4 + elem) * 2, args.min_time_ms)
                            base = [t for t in (mm_ms, cd_ms) if t is not None]
                            nbytes = (N + V) * D * elem + N * k * 12
                            flops = 2.0 * N * V * D
                            floor = max(nbytes / bw, flops / rates[dname]) * 1e3
                            row = dict(kernel=f"topk_nearest[{kernel}]", metric=metric, N=N, V=V, D=D, k=k,
                                       dtype=dname, ms=ms, gemm_ms=gemm_ms, index_ms=index_ms,
                                       torch_ms=min(base) if base else None,
                                       cdist_topk_ms=cd_ms, mm_topk_ms=mm_ms, floor_ms=floor,
                                       speedup_vs_torch=(min(base) / ms) if base else None,
                                       fraction_of_floor=floor / ms,
                                       achieved_GBps=nbytes / (ms * 1e-3) / 1e9,
                                       achieved_TFLOPs=flops / (ms * 1e-3) / 1e12,
                                       device=dev_name, date=date)
                            rows.append(row)
                            save()
                            print(json.dumps(row), flush=True)
                    del q
                del w
                if device == "cuda":
                    torch.cuda.empty_cache()
        # arc similarity: N spans, V words, M random arcs
        for M in [m for m in args.arcs if m > 0]:
            for D in args.D:
                n_spans, n_words = min(M, 200_000), 1_000_000 if device == "cuda" else 5_000
                a = torch.randn(n_spans, D, device=device, generator=gen).to(dtype)
                w = torch.randn(n_words, D, device=device, generator=gen).to(dtype)
                arcs = torch.stack([torch.randint(0, n_spans, (M,), device=device, generator=gen),
                                    torch.randint(0, n_words, (M,), device=device, generator=gen)], 1)
                ms = timer.measure(lambda: ops.arc_similarity(a, w, arcs), args.min_time_ms)

                def torch_arcs():
                    x, y = a[arcs[:, 0]].float(), w[arcs[:, 1]].float()
                    return (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1)).clamp_min(1e-30)

                t_ms = try_time(timer, torch_arcs, M * D * 4 * 4, args.min_time_ms)
                nbytes = M * (2 * D * elem + 16 + 4)
                floor = nbytes / bw * 1e3
                row = dict(kernel=f"arc_similarity[{kernel}]", metric="cosine", N=n_spans, V=n_words, D=D, k=None,
                           M=M, dtype=dname, ms=ms, torch_ms=t_ms, cdist_topk_ms=None, mm_topk_ms=None,
                           floor_ms=floor, speedup_vs_torch=(t_ms / ms) if t_ms else None,
                           fraction_of_floor=floor / ms, achieved_GBps=nbytes / (ms * 1e-3) / 1e9,
                           achieved_TFLOPs=None, device=dev_name, date=date)
                rows.append(row)
                save()
                print(json.dumps(row), flush=True)
                del a, w, arcs

    save()
    if out is not None and not args.no_write:
        print(f"# wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
