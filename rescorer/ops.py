"""Similarity kernels for rescoring: per-arc similarity and top-k nearest spellings.

Two operations, each with a CUDA kernel (``kernels/``, loaded through ctypes by
``rescorer._kernels_loader``) and a torch reference implementation:

``arc_similarity(acoustic, spelling, arcs, metric)``
    ``acoustic`` [N x D] (one embedding per span), ``spelling`` [V x D] (one per word),
    ``arcs`` integer [M x 2] rows ``(span i, word j)``. Returns float32 [M]:
    ``cosine``: ``dot(a, w) / (|a| |w|)``; ``sqeuclidean``: ``sum((a - w)^2)``.

``topk_nearest(queries, vocab, k, metric)`` (``NearestIndex(vocab, metric).search(queries, k)``
    for a vocabulary searched many times: its norms are computed once)
    For every query row, the ``k`` best vocabulary rows. Returns ``(values, indices)``:
    float32 [N x k] and int64 [N x k], best first. ``cosine``: similarity, descending;
    ``sqeuclidean``: squared distance, ascending. The N x V score matrix is never
    materialised: the kernel tiles over V with fused selection and the reference works
    through V (and, for large N, Q) in chunks, keeping a running top-k.

Dispatch: CUDA tensors use the kernel when ``librescorer_kernels.so`` is built
(``kernels/build.sh``) and loadable, otherwise the reference runs (with a one-time
warning). CPU tensors always take the torch path. It is also taken on CUDA for
``k > 128``, for float64 inputs and, in ``arc_similarity``, when an input requires grad (the
reference is differentiable; the kernels are inference only). Where ``topk_nearest`` and
``NearestIndex`` take the torch path, they run ``_topk_fast``, which returns exactly the
reference's results (``topk_nearest_reference``, tested bit for bit) at about the cost of a
matmul plus ``torch.topk``: it packs ties only where they decide the k-th place. Tests
also run the kernels on CPU tensors through the CUDA emulator build
(``_kernels_loader.load_emulator()``, ``kernels/emulator/``); that library is never
dispatched to.

Semantics shared by kernel and reference (the tests hold both to them):

* dtypes: float32, float16, bfloat16 (both inputs the same dtype); products are
  accumulated in float32. float64 is accepted by the reference path only (computed in
  float64, returned as float32).
* cosine normalises inside (inputs need not be unit vectors). A zero vector has
  similarity 0 with everything.
* NaN: a NaN anywhere in a row makes its scores NaN. ``arc_similarity`` returns the NaN;
  ``topk_nearest`` ranks NaN scores after every number (after -inf similarities and +inf
  distances), among themselves by index, and returns them with value NaN. Rows holding
  +-inf give NaN cosine (inf/inf) and usually NaN squared distance (inf - inf in the
  expansion ``|q|^2 + |w|^2 - 2 q.w``).
* Ties (equal float32 scores): the smaller vocabulary index comes first. -0.0 and +0.0
  are equal.
* ``k > V``: the V real results, then padding with index -1 and value -inf (cosine) or
  +inf (sqeuclidean). ``N == 0`` gives [0 x k] results, ``M == 0`` an empty vector.
* ``sqeuclidean`` in ``topk_nearest`` uses the expansion above (clamped at 0), so its
  absolute error scales with ``|q|^2 + |w|^2``; ``arc_similarity`` sums ``(a - w)^2``
  directly.

Tolerances of the kernels against the float64 result (``TOLERANCES``; relative to the
magnitude of the score, for sqeuclidean to ``|q|^2 + |w|^2``): float32 ~1e-5, float16
~1e-2, bfloat16 ~3e-2 (half-precision inputs are exact in float32, so the error comes from
accumulation order, not from rounding products). Top-k indices agree with the reference up
to near-ties within those tolerances.
"""

from __future__ import annotations

import contextlib
import operator
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from . import _kernels_loader as _kl

__all__ = [
    "arc_similarity",
    "arc_similarity_reference",
    "topk_nearest",
    "topk_nearest_reference",
    "NearestIndex",
    "row_factors",
    "TOPK_METHODS",
    "kernels_available",
    "Backends",
    "backends",
    "emulator_check",
    "InvalidDTypeError",
    "METRICS",
    "MAX_KERNEL_K",
    "TOLERANCES",
]

METRICS = ("cosine", "sqeuclidean")
MAX_KERNEL_K = 128
#: (rtol, atol) per input dtype for kernel-vs-float64 comparisons of normalised scores.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (3e-2, 3e-2),
    torch.float64: (1e-6, 1e-6),
}

_KERNEL_DTYPES = {torch.float32: _kl.DTYPE_F32, torch.float16: _kl.DTYPE_F16, torch.bfloat16: _kl.DTYPE_BF16}
_REFERENCE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_METRIC_CODES = {"cosine": _kl.METRIC_COSINE, "sqeuclidean": _kl.METRIC_SQEUCLIDEAN}
_MAX_VOCAB_KERNEL = 0xFFFFFFFF - 1  # indices are packed into 32 bits
_EMULATED_SMS = 4  # what the CPU emulator reports as SM count (several vocabulary splits)
_KERNEL_QUERY_CHUNK = 65536  # bounds the kernel's per-split workspace (N x splits x k x 8 bytes)
_REFERENCE_BUDGET = 1 << 24  # scores per reference chunk (~200 MB with the packed keys)

_warned: set = set()


class InvalidDTypeError(TypeError, ValueError):
    """Unsupported or mismatched dtype (both a TypeError and a ValueError)."""


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def kernels_available() -> bool:
    """True when CUDA is usable and the kernel library is built and loadable."""
    if not torch.cuda.is_available():
        return False
    return _kl.load() is not None


@dataclass(frozen=True)
class Backends:
    """Which similarity backend runs where: the CUDA device, the kernel library and the
    CPU-emulated build (each its path, or why it did not load)."""

    cuda_device: Optional[str]
    kernel_library: Optional[str]
    kernel_error: Optional[str]
    emulator_library: Optional[str]
    emulator_error: Optional[str]

    @property
    def dispatch(self) -> str:
        if self.cuda_device is not None and self.kernel_library is not None:
            return f"CUDA tensors -> CUDA kernels (k <= {MAX_KERNEL_K}), CPU tensors -> torch reference"
        return "torch reference for every tensor" + ("" if self.cuda_device is not None else " (no CUDA)")


def backends() -> Backends:
    """What ``arc_similarity`` / ``topk_nearest`` dispatch to on this machine."""
    lib, emu = _kl.load(), _kl.load_emulator()
    return Backends(
        cuda_device=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        kernel_library=lib._name if lib is not None else None,
        kernel_error=None if lib is not None else str(_kl.load_error()),
        emulator_library=emu._name if emu is not None else None,
        emulator_error=None if emu is not None else str(_kl.emulator_load_error()),
    )


def emulator_check(seed: int = 0) -> Tuple[float, float]:
    """Run both kernels once on the CPU emulator against the torch reference: (fraction of
    top-10 indices that agree, largest arc-similarity error). RuntimeError when not built."""
    emu = _kl.load_emulator()
    if emu is None:
        raise RuntimeError(f"the emulator library is not built: run kernels/build.sh ({_kl.emulator_load_error()})")
    g = torch.Generator().manual_seed(seed)
    q, w = torch.randn(70, 64, generator=g), torch.randn(1000, 64, generator=g)
    arcs = torch.stack([torch.randint(0, 70, (200,), generator=g), torch.randint(0, 1000, (200,), generator=g)], 1)
    _, got = _topk_kernel(emu, q, w, 10, "cosine")
    _, want = topk_nearest_reference(q, w, 10)
    sims = _arc_kernel(emu, q, w, arcs, "cosine")
    err = float((sims - arc_similarity_reference(q, w, arcs)).abs().max())
    return float((got == want).float().mean()), err


# ------------------------------------------------------------------ validation

def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def _check_matrix(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [rows x D], got shape {tuple(t.shape)}")
    if t.dtype not in _REFERENCE_DTYPES:
        raise InvalidDTypeError(
            f"{name} has dtype {t.dtype}; supported: float32, float16, bfloat16 (float64 on the reference path)")
    return t


def _check_pair(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding size mismatch: {name_a} has D={a.shape[1]}, {name_b} has D={b.shape[1]}")
    if a.dtype != b.dtype:
        raise InvalidDTypeError(f"{name_a} ({a.dtype}) and {name_b} ({b.dtype}) must have the same dtype")
    if a.device != b.device:
        raise ValueError(f"{name_a} is on {a.device} but {name_b} is on {b.device}")
    if a.shape[1] == 0:
        raise ValueError(f"embedding size D must be at least 1, got shape {tuple(a.shape)}")


def _check_arcs(arcs, n_spans: int, n_words: int, device: torch.device) -> torch.Tensor:
    if not isinstance(arcs, torch.Tensor):
        arcs = torch.as_tensor(arcs, dtype=torch.int64)
    if arcs.numel() == 0:
        return torch.empty((0, 2), dtype=torch.int64, device=device)
    if arcs.dtype.is_floating_point or arcs.dtype.is_complex or arcs.dtype == torch.bool:
        raise InvalidDTypeError(f"arcs must be an integer tensor, got {arcs.dtype}")
    if arcs.dim() != 2 or arcs.shape[1] != 2:
        raise ValueError(f"arcs must have shape [M x 2] (span, word), got {tuple(arcs.shape)}")
    arcs = arcs.to(device=device, dtype=torch.int64)
    i, j = arcs[:, 0], arcs[:, 1]
    bad = (i < 0) | (i >= n_spans) | (j < 0) | (j >= n_words)
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0, 0])
        si, sj = int(arcs[row, 0]), int(arcs[row, 1])
        raise ValueError(
            f"arc row {row} = (span {si}, word {sj}) is out of range: "
            f"there are {n_spans} acoustic spans and {n_words} spelling rows")
    return arcs


def _check_k(k) -> int:
    if isinstance(k, bool):
        raise TypeError("k must be an int, got bool")
    try:
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"k must be an int, got {type(k).__name__}") from None
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    return k


# ------------------------------------------------------------------ shared numerics

def _inv_norm(sq: torch.Tensor) -> torch.Tensor:
    """1/sqrt(sq) where sq > 0, else 0 (zero, NaN and +inf norms); safe under autograd."""
    pos = sq > 0
    safe = torch.where(pos, sq, torch.ones_like(sq))
    return torch.where(pos, torch.rsqrt(safe), torch.zeros_like(sq))


def _factor(x: torch.Tensor, metric: str) -> torch.Tensor:
    sq = (x * x).sum(dim=1)
    return _inv_norm(sq) if metric == "cosine" else sq


_TWO31 = 1 << 31
_TWO32 = 1 << 32
_MASK32 = 0xFFFFFFFF
_PAD = -(1 << 63)  # packed padding entry: worst possible key


def _pack(key: torch.Tensor, offset: int, columns: Optional[torch.Tensor] = None) -> torch.Tensor:
    """float32 keys [n x C] (larger = better) of columns offset.. (or of the int64 ``columns``
    [n x C]) -> int64 keys with the same order, ties broken by smaller column, NaN below
    every number; distinct per column. Same encoding as the kernel (there unsigned; here
    shifted by 2^63 to stay signed)."""
    key = key.contiguous()
    b = key.view(torch.int32).to(torch.int64) & _MASK32
    b = b.masked_fill(b == _TWO31, 0)  # -0.0 -> +0.0
    u = torch.where(b >= _TWO31, _MASK32 - b, b + _TWO31)
    u = u.masked_fill(torch.isnan(key), 0)
    if columns is None:
        idx = torch.arange(offset, offset + key.shape[1], dtype=torch.int64, device=key.device).unsqueeze(0)
    else:
        idx = columns.to(torch.int64) + offset
    return (u - _TWO31) * _TWO32 + (_MASK32 - idx)


def _unpack(packed: torch.Tensor, metric: str) -> Tuple[torch.Tensor, torch.Tensor]:
    hi = torch.div(packed, _TWO32, rounding_mode="floor") + _TWO31
    lo = packed - (hi - _TWO31) * _TWO32
    indices = _MASK32 - lo
    bits = torch.where(hi >= _TWO31, hi - _TWO31, _MASK32 - hi)
    bits = torch.where(bits >= _TWO31, bits - _TWO32, bits).to(torch.int32).contiguous()
    values = bits.view(torch.float32).clone()
    values = values.masked_fill(hi == 0, float("nan"))
    if metric == "sqeuclidean":
        values = 0.0 - values  # key = -distance; 0 - (+0) = +0
    pad = packed == _PAD
    values = values.masked_fill(pad, float("-inf") if metric == "cosine" else float("inf"))
    indices = indices.masked_fill(pad, -1)
    return values, indices


# ------------------------------------------------------------------ arc similarity

def arc_similarity_reference(acoustic: torch.Tensor, spelling: torch.Tensor, arcs,
                             metric: str = "cosine", *, chunk: Optional[int] = None) -> torch.Tensor:
    """Torch reference of :func:`arc_similarity` (any device; differentiable)."""
    _check_metric(metric)
    _check_matrix("acoustic", acoustic)
    _check_matrix("spelling", spelling)
    _check_pair("acoustic", acoustic, "spelling", spelling)
    arcs = _check_arcs(arcs, acoustic.shape[0], spelling.shape[0], acoustic.device)
    return _arc_reference(acoustic, spelling, arcs, metric, chunk)


def _arc_reference(acoustic, spelling, arcs, metric, chunk=None) -> torch.Tensor:
    m, d = arcs.shape[0], acoustic.shape[1]
    cdt = torch.float64 if acoustic.dtype == torch.float64 else torch.float32
    if chunk is None:
        chunk = max(1, _REFERENCE_BUDGET // d)
    outs = []
    for s in range(0, m, chunk):
        part = arcs[s:s + chunk]
        a = acoustic.index_select(0, part[:, 0]).to(cdt)
        w = spelling.index_select(0, part[:, 1]).to(cdt)
        if metric == "cosine":
            dot = (a * w).sum(dim=1)
            out = dot * _inv_norm((a * a).sum(dim=1)) * _inv_norm((w * w).sum(dim=1))
        else:
            out = ((a - w) ** 2).sum(dim=1)
        outs.append(out.to(torch.float32))
    if not outs:
        return torch.empty(0, dtype=torch.float32, device=acoustic.device)
    return torch.cat(outs)


def arc_similarity(acoustic: torch.Tensor, spelling: torch.Tensor, arcs,
                   metric: str = "cosine") -> torch.Tensor:
    """Similarity of every lattice arc: float32 [M].

    acoustic: [N x D] span embeddings; spelling: [V x D] word embeddings (same dtype);
    arcs: integer [M x 2] (span index, word index). Raises ValueError naming the first
    arc row whose indices are out of range (this check synchronises with the GPU).
    """
    _check_metric(metric)
    _check_matrix("acoustic", acoustic)
    _check_matrix("spelling", spelling)
    _check_pair("acoustic", acoustic, "spelling", spelling)
    arcs = _check_arcs(arcs, acoustic.shape[0], spelling.shape[0], acoustic.device)
    m = arcs.shape[0]
    if m == 0:
        return torch.empty(0, dtype=torch.float32, device=acoustic.device)
    needs_grad = torch.is_grad_enabled() and (acoustic.requires_grad or spelling.requires_grad)
    if acoustic.is_cuda and acoustic.dtype in _KERNEL_DTYPES and not needs_grad:
        lib = _kernel_lib()
        if lib is not None:
            return _arc_kernel(lib, acoustic, spelling, arcs, metric)
    return _arc_reference(acoustic, spelling, arcs, metric)


def _kernel_lib():
    lib = _kl.load()
    if lib is None:
        _warn_once("nolib", "rescorer CUDA kernels unavailable, using the torch reference: "
                   f"{_kl.load_error()}")
    return lib


def _device_context(t: torch.Tensor):
    """(context manager, stream handle, SM count) for a kernel call on ``t``'s device. CPU
    tensors only reach the kernels through the emulator library (tests): no stream, and a
    small SM count so that top-k still splits the vocabulary."""
    if t.is_cuda:
        return (torch.cuda.device(t.device), torch.cuda.current_stream(t.device).cuda_stream,
                torch.cuda.get_device_properties(t.device).multi_processor_count)
    return contextlib.nullcontext(), None, _EMULATED_SMS


def _arc_kernel(lib, acoustic, spelling, arcs, metric) -> torch.Tensor:
    """Run rk_arc_similarity on validated inputs (``arcs`` int64 [M x 2], in range)."""
    a = acoustic.contiguous()
    w = spelling.contiguous()
    pairs = arcs.contiguous()
    out = torch.empty(pairs.shape[0], dtype=torch.float32, device=a.device)
    ctx, stream, _ = _device_context(a)
    with ctx:
        st = lib.rk_arc_similarity(a.data_ptr(), w.data_ptr(), pairs.data_ptr(), a.shape[0], w.shape[0],
                                   pairs.shape[0], a.shape[1], _KERNEL_DTYPES[a.dtype], _METRIC_CODES[metric],
                                   out.data_ptr(), stream)
    _kl.check(lib, st, "rk_arc_similarity")
    return out


# ------------------------------------------------------------------ top-k

def _empty_topk(n: int, k: int, metric: str, device) -> Tuple[torch.Tensor, torch.Tensor]:
    pad = float("-inf") if metric == "cosine" else float("inf")
    return (torch.full((n, k), pad, dtype=torch.float32, device=device),
            torch.full((n, k), -1, dtype=torch.int64, device=device))


def _validate_topk(queries, vocab, k, metric):
    _check_metric(metric)
    _check_matrix("queries", queries)
    _check_matrix("vocab", vocab)
    _check_pair("queries", queries, "vocab", vocab)
    return _check_k(k)


def topk_nearest_reference(queries: torch.Tensor, vocab: torch.Tensor, k: int, metric: str = "cosine",
                           chunk: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Torch reference of :func:`topk_nearest`, chunked over V (and Q) so that at most
    about ``chunk`` x (query block) scores exist at once. Any device, any k."""
    k = _validate_topk(queries, vocab, k, metric)
    return _topk_reference(queries, vocab, k, metric, chunk)


def _chunk_keys(q, qf, w, wf, metric) -> torch.Tensor:
    """float32 ranking keys (larger = better) of query rows x vocabulary rows, computed the
    one way both torch paths (reference and fast) compute them, so they rank alike."""
    dot = q @ w.t()
    if metric == "cosine":
        key = dot * qf[:, None] * wf[None, :]
    else:
        dist = (qf[:, None] + wf[None, :]) - 2.0 * dot
        key = -dist.masked_fill(dist < 0, 0.0)
    return key.to(torch.float32)


def _chunked_topk(queries, vocab, k, metric, chunk, vocab_factors, chunk_top):
    """The loop both torch paths share: query blocks x vocabulary chunks, each chunk's packed
    top (``chunk_top(q, qf, w, wf, first_row)``, at most k columns) merged into the running
    best, then sorted, padded to k and unpacked."""
    n, v = queries.shape[0], vocab.shape[0]
    if n == 0 or v == 0:
        return _empty_topk(n, k, metric, queries.device)
    if chunk is None:
        chunk = max(1024, _REFERENCE_BUDGET // max(n, 1))
    chunk = max(1, min(int(chunk), v))
    qblock = max(1, _REFERENCE_BUDGET // chunk)
    cdt = torch.float64 if queries.dtype == torch.float64 else torch.float32
    out_v, out_i = [], []
    for qs in range(0, n, qblock):
        q = queries[qs:qs + qblock].to(cdt)
        qf = _factor(q, metric)
        best = None
        for vs in range(0, v, chunk):
            w = vocab[vs:vs + chunk].to(cdt)
            wf = _factor(w, metric) if vocab_factors is None else vocab_factors[vs:vs + chunk].to(cdt)
            top = chunk_top(q, qf, w, wf, vs)
            if best is not None:
                both = torch.cat([best, top], dim=1)
                top = both.topk(min(k, both.shape[1]), dim=1, sorted=False).values
            best = top
        best = best.sort(dim=1, descending=True).values
        if best.shape[1] < k:
            best = torch.cat([best, best.new_full((best.shape[0], k - best.shape[1]), _PAD)], dim=1)
        vals, idx = _unpack(best, metric)
        out_v.append(vals)
        out_i.append(idx)
    return torch.cat(out_v), torch.cat(out_i)


def _topk_reference(queries, vocab, k, metric, chunk=None, vocab_factors=None):
    """Every key of a chunk packed (``_pack``), then the k largest packed values."""

    def chunk_top(q, qf, w, wf, vs):
        packed = _pack(_chunk_keys(q, qf, w, wf, metric), vs)
        return packed.topk(min(k, packed.shape[1]), dim=1, sorted=False).values

    return _chunked_topk(queries, vocab, k, metric, chunk, vocab_factors, chunk_top)


def _topk_fast(queries, vocab, k, metric, chunk=None, vocab_factors=None):
    """The reference's exact results at about the cost of a plain matmul + ``torch.topk``
    (the torch path ``topk_nearest`` and ``NearestIndex`` dispatch to; 2-4x faster than the
    reference on CPU for 100k-word lists).

    Each chunk's float keys (``_chunk_keys``, as the reference computes them) go through
    ``torch.topk`` for k + 1 columns. When a row's k-th value is strictly above its
    (k+1)-th and no NaN is among them (torch ranks NaN first), those k columns are
    exactly the row's k best, so only they are packed (``_pack``: ties by smaller index,
    -0.0 equal to +0.0). Rows with a tie across the k-th place or a NaN, and chunks no
    wider than k, are packed whole, as the reference does. Chunks are merged as the
    reference merges them.
    """

    def chunk_top(q, qf, w, wf, vs):
        key = _chunk_keys(q, qf, w, wf, metric)
        if key.shape[1] <= k:
            return _pack(key, vs)
        vals, cols = key.topk(k + 1, dim=1)
        clean = ~torch.isnan(vals).any(dim=1) & (vals[:, k - 1] > vals[:, k])
        top = _pack(vals[:, :k], vs, cols[:, :k])
        tied = (~clean).nonzero().flatten()
        if tied.numel():
            top[tied] = _pack(key[tied], vs).topk(k, dim=1, sorted=False).values
        return top

    return _chunked_topk(queries, vocab, k, metric, chunk, vocab_factors, chunk_top)


def topk_nearest(queries: torch.Tensor, vocab: torch.Tensor, k: int, metric: str = "cosine",
                 chunk: Optional[int] = None, *, method: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """The k nearest vocabulary rows of every query: (values float32 [N x k], indices int64 [N x k]).

    cosine: similarities, descending; sqeuclidean: squared distances, ascending. Ties go to
    the smaller index; NaN scores rank last; k > V pads with index -1 and -inf / +inf.
    ``chunk`` only affects the reference path (vocabulary rows per step). ``method`` picks
    the CUDA kernel: ``"fused"`` (product and selection in one kernel), ``"gemm"`` (cuBLAS
    products of vocabulary tiles, then the selection kernel: FAISS's way) or ``"auto"``
    (currently ``"fused"``; ``benchmarks/bench_kernels.py`` times both). To search one
    vocabulary many times, build a :class:`NearestIndex` once instead.
    """
    k = _validate_topk(queries, vocab, k, metric)
    return _topk_dispatch(queries, vocab, k, metric, chunk, None, _check_method(method))


TOPK_METHODS = ("auto", "fused", "gemm")


def _check_method(method: str) -> str:
    if method not in TOPK_METHODS:
        raise ValueError(f"method must be one of {TOPK_METHODS}, got {method!r}")
    return "fused" if method == "auto" else method


def _topk_dispatch(queries, vocab, k, metric, chunk, vocab_factors, method="fused"):
    n, v = queries.shape[0], vocab.shape[0]
    if n == 0 or v == 0:
        return _empty_topk(n, k, metric, queries.device)
    if (queries.is_cuda and queries.dtype in _KERNEL_DTYPES and k <= MAX_KERNEL_K
            and v <= _MAX_VOCAB_KERNEL):
        lib = _kernel_lib()
        if lib is not None:
            if method == "gemm":
                return _topk_gemm(lib, queries, vocab, k, metric, vocab_factors)
            return _topk_kernel(lib, queries, vocab, k, metric, vocab_factors)
    return _topk_fast(queries, vocab, k, metric, chunk, vocab_factors)


def _check_rows(name: str, x) -> torch.Tensor:
    """A 2-D embedding matrix of a supported dtype with D >= 1."""
    _check_matrix(name, x)
    if x.shape[1] == 0:
        raise ValueError(f"embedding size D must be at least 1, got shape {tuple(x.shape)}")
    return x


def row_factors(x: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
    """Per-row factors as top-k uses them, float32 [rows] (float64 for float64 input):
    cosine ``1/|x|`` (0 for zero, NaN and infinite norms), sqeuclidean ``|x|^2``; the CUDA
    kernel on GPU."""
    _check_metric(metric)
    _check_rows("x", x)
    return _row_factors(x, metric)


def _row_factors(x: torch.Tensor, metric: str) -> torch.Tensor:
    if x.is_cuda and x.dtype in _KERNEL_DTYPES and x.shape[0] > 0:
        lib = _kernel_lib()
        if lib is not None:
            return _factors_kernel(lib, x, metric)
    return _factor(x.to(torch.float64 if x.dtype == torch.float64 else torch.float32), metric)


def _factors_kernel(lib, x, metric) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    ctx, stream, _ = _device_context(x)
    with ctx:
        st = lib.rk_row_factors(x.data_ptr(), x.shape[0], x.shape[1], _KERNEL_DTYPES[x.dtype],
                                _METRIC_CODES[metric], out.data_ptr(), stream)
    _kl.check(lib, st, "rk_row_factors")
    return out


class NearestIndex:
    """A fixed vocabulary prepared for repeated top-k searches, in the manner of FAISS's
    ``IndexFlat``: the rows are made contiguous and their norms computed once, so a search
    reads the vocabulary once (``topk_nearest`` reads it twice: norms, then products).

    >>> index = NearestIndex(spelling_embeddings, metric="cosine")
    >>> values, indices = index.search(span_embeddings, k=5)

    Results are those of ``topk_nearest(queries, vocab, k, metric)`` (same ties, NaN and
    padding rules). The index holds a reference to the vocabulary: do not modify it in place.
    """

    def __init__(self, vocab: torch.Tensor, metric: str = "cosine"):
        _check_metric(metric)
        _check_rows("vocab", vocab)
        self.metric = metric
        self.vocab = vocab.contiguous()
        self.factors = _row_factors(self.vocab, metric)

    def __len__(self) -> int:
        return self.vocab.shape[0]

    @property
    def dim(self) -> int:
        return self.vocab.shape[1]

    def search(self, queries: torch.Tensor, k: int, chunk: Optional[int] = None, *,
               method: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
        """(values float32 [N x k], indices int64 [N x k]) of each query's k nearest rows
        (``chunk`` and ``method`` as in :func:`topk_nearest`)."""
        k = _validate_topk(queries, self.vocab, k, self.metric)
        return _topk_dispatch(queries, self.vocab, k, self.metric, chunk, self.factors, _check_method(method))

    def __repr__(self) -> str:
        return f"NearestIndex({len(self)} x {self.dim}, {self.vocab.dtype}, metric={self.metric!r}, device={self.vocab.device})"


def _kernel_factors(factors: torch.Tensor, device) -> torch.Tensor:
    """Precomputed row factors as the kernels read them: contiguous float32 on ``device``."""
    return factors.to(device=device, dtype=torch.float32).contiguous()


def _topk_kernel(lib, queries, vocab, k, metric, vocab_factors=None):
    """Run rk_topk on validated inputs (N >= 1, V >= 1, 1 <= k <= 128), in query chunks."""
    q = queries.contiguous()
    w = vocab.contiguous()
    n, v, d = q.shape[0], w.shape[0], q.shape[1]
    device = q.device
    values = torch.empty((n, k), dtype=torch.float32, device=device)
    indices = torch.empty((n, k), dtype=torch.int64, device=device)
    if vocab_factors is not None:
        vocab_factors = _kernel_factors(vocab_factors, device)
    wf = None if vocab_factors is None else vocab_factors.data_ptr()
    ctx, stream, sms = _device_context(q)
    with ctx:
        for s in range(0, n, _KERNEL_QUERY_CHUNK):
            qq = q[s:s + _KERNEL_QUERY_CHUNK]
            nq = qq.shape[0]
            splits = int(lib.rk_topk_num_splits(nq, v, k, sms))
            nbytes = int(lib.rk_topk_workspace_bytes(nq, v, k, splits))
            workspace = torch.empty(nbytes, dtype=torch.uint8, device=device)
            st = lib.rk_topk(qq.data_ptr(), w.data_ptr(), wf, nq, v, d, k, _KERNEL_DTYPES[q.dtype],
                             _METRIC_CODES[metric], splits, workspace.data_ptr(), nbytes,
                             values[s:s + nq].data_ptr(), indices[s:s + nq].data_ptr(), stream)
            _kl.check(lib, st, "rk_topk")
    return values, indices


_GEMM_TILE_BYTES = 256 << 20  # fp32 dot-product tile of the GEMM path


def _tile_dots(q: torch.Tensor, w_tile: torch.Tensor) -> torch.Tensor:
    """fp32 dot products [n x c] of ``q`` with the rows of ``w_tile``: a library GEMM (cuBLAS
    on GPU, fp32 accumulation; fp32 output where this torch can, else rounded to the input
    dtype first). On the CPU (the emulator's tests) in exact fp32."""
    if q.dtype == torch.float32:
        return torch.mm(q, w_tile.t())
    if not q.is_cuda:
        return torch.mm(q.float(), w_tile.float().t())
    try:
        return torch.mm(q, w_tile.t(), out_dtype=torch.float32)
    except (TypeError, RuntimeError):
        return torch.mm(q, w_tile.t()).float()


def _topk_gemm(lib, queries, vocab, k, metric, vocab_factors=None, tile_bytes: int = _GEMM_TILE_BYTES):
    """Top-k by the GEMM path on validated inputs: per query chunk and vocabulary tile, the
    dot products from ``_tile_dots`` and rk_topk_select's merge into running lists."""
    q = queries.contiguous()
    w = vocab.contiguous()
    n, v = q.shape[0], w.shape[0]
    device = q.device
    qf_all = _factors_kernel(lib, q, metric)
    wf = _factors_kernel(lib, w, metric) if vocab_factors is None else _kernel_factors(vocab_factors, device)
    values = torch.empty((n, k), dtype=torch.float32, device=device)
    indices = torch.empty((n, k), dtype=torch.int64, device=device)
    ctx, stream, _ = _device_context(q)
    with ctx:
        for s in range(0, n, _KERNEL_QUERY_CHUNK):
            qq, qf = q[s:s + _KERNEL_QUERY_CHUNK], qf_all[s:s + _KERNEL_QUERY_CHUNK]
            nq = qq.shape[0]
            cols = max(64, min(v, (tile_bytes // (4 * nq)) // 64 * 64))
            lists = torch.empty((nq, k), dtype=torch.int64, device=device)  # packed uint64 keys
            for c0 in range(0, v, cols):
                dots = _tile_dots(qq, w[c0:c0 + cols])
                st = lib.rk_topk_select(dots.data_ptr(), dots.stride(0), nq, dots.shape[1], c0, qf.data_ptr(),
                                        wf.data_ptr(), k, _METRIC_CODES[metric], int(c0 == 0), lists.data_ptr(),
                                        stream)
                _kl.check(lib, st, "rk_topk_select")
            st = lib.rk_topk_finish(lists.data_ptr(), nq, k, _METRIC_CODES[metric], values[s:s + nq].data_ptr(),
                                    indices[s:s + nq].data_ptr(), stream)
            _kl.check(lib, st, "rk_topk_finish")
    return values, indices
