"""rescorer.ops: torch references against float64 numpy (always); the kernels against the
references on CUDA (``@pytest.mark.gpu``, skipped without CUDA and a built kernel library)
and on the CPU CUDA emulator (wherever kernels/build.sh built it)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from rescorer import _kernels_loader as _kl
from rescorer import ops

ALL_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
METRICS = ["cosine", "sqeuclidean"]

HAVE_CUDA = torch.cuda.is_available()
needs_kernels = pytest.mark.skipif(
    not (HAVE_CUDA and ops.kernels_available()),
    reason="needs CUDA and kernels/build/librescorer_kernels.so (kernels/build.sh)")


# ------------------------------------------------------------------ float64 truth

def np64(t: torch.Tensor) -> np.ndarray:
    """The exact values of a tensor (fp16/bf16 are exactly representable in float64)."""
    return t.detach().to("cpu", torch.float64).numpy()


def inv_norm64(sq):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sq > 0, 1.0 / np.sqrt(np.where(sq > 0, sq, 1.0)), 0.0)


def arc_truth(a, w, arcs, metric):
    a, w = np64(a), np64(w)
    arcs = np.asarray(arcs, dtype=np.int64).reshape(-1, 2)
    x, y = a[arcs[:, 0]], w[arcs[:, 1]]
    with np.errstate(invalid="ignore", over="ignore"):
        if metric == "cosine":
            return (x * y).sum(1) * inv_norm64((x * x).sum(1)) * inv_norm64((y * y).sum(1))
        return ((x - y) ** 2).sum(1)


def score_truth(q, w, metric):
    """float64 [N x V] scores with the documented semantics (same formulas as the ops)."""
    q, w = np64(q), np64(w)
    with np.errstate(invalid="ignore", over="ignore"):
        dot = q @ w.T
        qn, wn = (q * q).sum(1), (w * w).sum(1)
        if metric == "cosine":
            return dot * inv_norm64(qn)[:, None] * inv_norm64(wn)[None, :]
        d = (qn[:, None] + wn[None, :]) - 2.0 * dot
        return np.where(d < 0, 0.0, d)


def expected_order(keys_row: np.ndarray) -> np.ndarray:
    """Indices sorted by key descending, ties by smaller index, NaN last."""
    nan = np.isnan(keys_row)
    k = np.where(nan, 0.0, keys_row)
    return np.lexsort((np.arange(len(k)), -k, nan))


def assert_topk(values, indices, S, k, metric, atol, exact_margin=None):
    """Check (values, indices) against float64 scores S [N x V] with absolute tolerance atol:
    right shapes and padding, values equal S at the returned indices, best first, and no
    omitted item beats a returned one by more than atol. If exact_margin is given, indices
    must equal the exact order wherever neighbouring true keys differ by more than it."""
    values, indices = values.cpu().numpy(), indices.cpu().numpy()
    n, v = S.shape
    assert values.shape == (n, k) and indices.shape == (n, k)
    assert values.dtype == np.float32 and indices.dtype == np.int64
    kk = min(k, v)
    pad = -np.inf if metric == "cosine" else np.inf
    assert (indices[:, kk:] == -1).all()
    assert (values[:, kk:] == pad).all()
    keys = S if metric == "cosine" else -S
    for r in range(n):
        idx = indices[r, :kk]
        assert ((idx >= 0) & (idx < v)).all(), idx
        assert len(np.unique(idx)) == kk
        np.testing.assert_allclose(values[r, :kk], S[r, idx], rtol=0, atol=atol, equal_nan=True)
        got = keys[r, idx]
        order = expected_order(keys[r])
        truth = keys[r, order[:kk]]
        # best first: returned keys non-increasing (within tolerance), NaN only at the end
        nan = np.isnan(got)
        assert not (np.diff(nan.astype(int)) < 0).any(), "NaN before a number"
        fin = got[~nan]
        assert (np.diff(fin) <= atol).all(), fin
        # optimality: the i-th returned is (within tolerance) as good as the i-th best
        assert nan.sum() == np.isnan(truth).sum()
        np.testing.assert_allclose(np.sort(fin)[::-1], truth[~np.isnan(truth)], rtol=0, atol=atol)
        if exact_margin is not None:
            kf = np.where(np.isnan(keys[r][order]), -np.inf, keys[r][order])
            for p in range(kk):
                lo = kf[p - 1] - kf[p] if p > 0 else np.inf
                hi = kf[p] - kf[p + 1] if p + 1 < v else np.inf
                if min(lo, hi) > exact_margin:
                    assert idx[p] == order[p], (r, p, idx[p], order[p])


def l2_scale(q, w):
    """Magnitude of |q|^2 + |w|^2, the scale of the expansion's rounding error."""
    sq = lambda x: np.nan_to_num(np64(x) ** 2).sum(1).max(initial=0.0)  # noqa: E731
    return float(sq(q) + sq(w))


def ref_atol(dtype, metric, q, w):
    # The reference upcasts to fp32 (exact for fp16/bf16 inputs), so only fp32 rounding.
    base = 1e-5 if dtype != torch.float64 else 1e-7  # float64 results are rounded to fp32
    return base * (l2_scale(q, w) if metric == "sqeuclidean" else 1.0)


# ------------------------------------------------------------------ packing order

def test_pack_orders_special_values():
    vals = [float("nan"), float("-inf"), -3.5, -1e-40, -0.0, 0.0, 1e-40, 2.0, float("inf"), 2.0, float("nan")]
    key = torch.tensor([vals], dtype=torch.float32)
    packed = ops._pack(key, 10)[0]
    order = torch.argsort(packed, descending=True).tolist()
    # inf, 2.0 (col 7), 2.0 (col 9), 1e-40, -0.0 == +0.0 (col 4 before 5), -1e-40, -3.5, -inf, NaNs by index
    assert order == [8, 7, 9, 6, 4, 5, 3, 2, 1, 0, 10]
    values, indices = ops._unpack(packed[order][None], "cosine")
    assert indices[0].tolist() == [o + 10 for o in order]
    got = values[0].tolist()
    want = [key[0, o].item() for o in order]
    assert all((np.isnan(g) and np.isnan(x)) or g == x for g, x in zip(got, want))
    assert not np.signbit(got[5])  # -0.0 canonicalised to +0.0
    pv, pi = ops._unpack(torch.tensor([[ops._PAD]]), "sqeuclidean")
    assert pi.item() == -1 and pv.item() == float("inf")


# ------------------------------------------------------------------ arc similarity: reference

@pytest.mark.parametrize("dtype", ALL_DTYPES + [torch.float64])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("seed", [0, 1])
def test_arc_reference_matches_float64(dtype, metric, seed):
    g = torch.Generator().manual_seed(seed)
    n, v = int(torch.randint(1, 40, (1,), generator=g)), int(torch.randint(1, 60, (1,), generator=g))
    d = int(torch.randint(1, 300, (1,), generator=g))
    m = int(torch.randint(1, 500, (1,), generator=g))
    a = (torch.randn(n, d, generator=g) * 3).to(dtype)
    w = (torch.randn(v, d, generator=g) * 3).to(dtype)
    arcs = torch.stack([torch.randint(0, n, (m,), generator=g), torch.randint(0, v, (m,), generator=g)], 1)
    out = ops.arc_similarity_reference(a, w, arcs, metric)
    assert out.dtype == torch.float32 and out.shape == (m,)
    truth = arc_truth(a, w, arcs, metric)
    rtol = 1e-6 if dtype == torch.float64 else 2e-5
    atol = 1e-6 if metric == "cosine" else 0.0
    np.testing.assert_allclose(out.numpy(), truth, rtol=rtol, atol=atol)
    # the dispatching entry point runs the same reference on CPU
    assert torch.equal(ops.arc_similarity(a, w, arcs, metric), out)


def test_arc_reference_small_chunks_and_int32_arcs():
    g = torch.Generator().manual_seed(5)
    a, w = torch.randn(7, 9, generator=g), torch.randn(11, 9, generator=g)
    arcs = torch.stack([torch.randint(0, 7, (50,), generator=g), torch.randint(0, 11, (50,), generator=g)], 1)
    full = ops.arc_similarity_reference(a, w, arcs)
    chunked = ops.arc_similarity_reference(a, w, arcs.to(torch.int32), chunk=3)
    torch.testing.assert_close(full, chunked, rtol=0, atol=1e-7)
    listed = ops.arc_similarity(a, w, arcs.tolist())
    torch.testing.assert_close(full, listed, rtol=0, atol=1e-7)


def test_arc_zero_vectors_nan_and_inf():
    a = torch.tensor([[0.0, 0.0], [1.0, 0.0], [float("nan"), 1.0], [float("inf"), 0.0]])
    w = torch.tensor([[0.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    arcs = [[0, 2], [1, 0], [0, 0], [1, 1], [1, 2], [2, 2], [3, 2]]
    cos = ops.arc_similarity(a, w, arcs, "cosine")
    assert cos[:5].tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert torch.isnan(cos[5]) and torch.isnan(cos[6])  # NaN propagates; inf/inf is NaN
    sq = ops.arc_similarity(a, w, arcs, "sqeuclidean")
    assert sq[:5].tolist() == [9.0, 1.0, 0.0, 5.0, 4.0]
    assert torch.isnan(sq[5]) and torch.isinf(sq[6])


def test_arc_empty_and_errors():
    a, w = torch.randn(4, 8), torch.randn(6, 8)
    for empty in (torch.empty(0, 2, dtype=torch.int64), [], torch.empty(0, dtype=torch.int64)):
        out = ops.arc_similarity(a, w, empty)
        assert out.shape == (0,) and out.dtype == torch.float32
    with pytest.raises(ValueError, match=r"arc row 2 = \(span 1, word 6\)"):
        ops.arc_similarity(a, w, [[0, 0], [3, 5], [1, 6], [9, 9]])
    with pytest.raises(ValueError, match=r"arc row 1 = \(span -1, word 0\)"):
        ops.arc_similarity_reference(a, w, [[0, 0], [-1, 0]])
    with pytest.raises(ValueError, match="arc row 0"):
        ops.arc_similarity(a, w, [[4, 0]])
    with pytest.raises(ValueError, match=r"\[M x 2\]"):
        ops.arc_similarity(a, w, torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="integer"):
        ops.arc_similarity(a, w, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="D=8.*D=5"):
        ops.arc_similarity(a, torch.randn(6, 5), [[0, 0]])
    with pytest.raises(ops.InvalidDTypeError, match="same dtype"):
        ops.arc_similarity(a, w.half(), [[0, 0]])
    with pytest.raises(TypeError, match="dtype"):  # also a ValueError
        ops.arc_similarity(a.to(torch.int32), w.to(torch.int32), [[0, 0]])
    with pytest.raises(ValueError, match="dtype"):
        ops.arc_similarity(a.to(torch.int32), w.to(torch.int32), [[0, 0]])
    with pytest.raises(ValueError, match="2-D"):
        ops.arc_similarity(a[0], w, [[0, 0]])
    with pytest.raises(ValueError, match="metric"):
        ops.arc_similarity(a, w, [[0, 0]], metric="dot")


def test_arc_reference_is_differentiable():
    a = torch.randn(3, 5, requires_grad=True)
    w = torch.randn(4, 5)
    w[2] = 0
    out = ops.arc_similarity(a, w, [[0, 1], [2, 2], [1, 3]])
    out.sum().backward()
    assert torch.isfinite(a.grad).all()
    assert a.grad[2].abs().sum() == 0  # only touched the zero word


# ------------------------------------------------------------------ top-k: reference

TOPK_CASES = [  # n, v, d, k, chunk
    (5, 300, 16, 5, 64),     # V not a multiple of the chunk
    (3, 1000, 33, 1, 97),
    (17, 2500, 8, 50, 256),
    (4, 130, 64, 128, None),
    (2, 10, 4, 25, 3),       # k > V, tiny chunks
    (1, 1, 3, 1, None),
    (0, 50, 8, 4, None),     # N = 0
]


@pytest.mark.parametrize("n,v,d,k,chunk", TOPK_CASES)
@pytest.mark.parametrize("metric", METRICS)
def test_topk_reference_matches_float64(n, v, d, k, chunk, metric):
    g = torch.Generator().manual_seed(n * 1000 + v + d + k)
    q = torch.randn(n, d, generator=g) * 2
    w = torch.randn(v, d, generator=g) * 2
    values, indices = ops.topk_nearest_reference(q, w, k, metric, chunk=chunk)
    S = score_truth(q, w, metric)
    atol = ref_atol(torch.float32, metric, q, w)
    assert_topk(values, indices, S, k, metric, atol=atol, exact_margin=4 * atol)
    v2, i2 = ops.topk_nearest(q, w, k, metric, chunk=chunk)  # CPU dispatch = reference
    assert torch.equal(i2, indices) and torch.equal(v2, values)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("metric", METRICS)
def test_topk_reference_low_precision_inputs(dtype, metric):
    g = torch.Generator().manual_seed(11)
    q = torch.randn(6, 40, generator=g).to(dtype)
    w = torch.randn(700, 40, generator=g).to(dtype)
    values, indices = ops.topk_nearest_reference(q, w, 20, metric, chunk=128)
    S = score_truth(q, w, metric)  # truth on the (exactly representable) rounded inputs
    atol = ref_atol(dtype, metric, q, w)
    assert_topk(values, indices, S, 20, metric, atol=atol, exact_margin=4 * atol)


def test_topk_reference_chunking_invariant():
    g = torch.Generator().manual_seed(3)
    # integer data: every score is exact, so any chunking must give identical results
    q = torch.randint(-3, 4, (9, 12), generator=g).float()
    w = torch.randint(-3, 4, (777, 12), generator=g).float()
    for metric in METRICS:
        base = ops.topk_nearest_reference(q, w, 40, metric, chunk=777)
        for chunk in (1, 7, 64, 500):
            got = ops.topk_nearest_reference(q, w, 40, metric, chunk=chunk)
            assert torch.equal(got[1], base[1]) and torch.equal(got[0], base[0]), (metric, chunk)


def _tie_data(seed=0):
    """Vocab made of base rows, exact duplicates and power-of-two rescalings of them
    (equal cosine exactly, in any precision); queries likewise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(-4, 5, (12, 10), generator=g).float()
    base[0] = 0  # a zero row
    scales = torch.tensor([1.0, 2.0, 0.5, 1.0, 4.0])
    rows = torch.cat([base * s for s in scales])  # row r = base[r % 12] * scale
    perm = torch.randperm(rows.shape[0], generator=g)
    w = rows[perm]
    origin = (torch.arange(rows.shape[0]) % 12)[perm]
    q = torch.randint(-4, 5, (6, 10), generator=g).float()
    q[1] = 0  # zero query: every cosine is 0, order = index order
    return q, w, origin


def test_topk_reference_ties_smaller_index_first():
    q, w, origin = _tie_data()
    k = 37
    # cosine: scores of rescaled copies are identical; truth from the base rows only
    vals, idx = ops.topk_nearest_reference(q, w, k, "cosine", chunk=16)
    base_scores = score_truth(q, w, "cosine")
    for r in range(q.shape[0]):
        key = base_scores[r]
        # identical base row -> identical key: use the base row's exact key for the whole group
        group_key = {int(o): key[int(torch.nonzero(origin == o)[0, 0])] for o in origin.unique()}
        keys = np.array([group_key[int(o)] for o in origin])
        order = expected_order(keys)
        assert idx[r].tolist() == order[:k].tolist(), r
    assert (vals[1] == 0).all() and idx[1].tolist() == list(range(k))
    # sqeuclidean on integer data is exact: ties among exact duplicates
    vals, idx = ops.topk_nearest_reference(q, w, k, "sqeuclidean", chunk=5)
    S = score_truth(q, w, "sqeuclidean")
    for r in range(q.shape[0]):
        assert idx[r].tolist() == expected_order(-S[r])[:k].tolist()
        assert vals[r].tolist() == S[r, idx[r].numpy()].tolist()


@pytest.mark.parametrize("metric", METRICS)
def test_topk_reference_nan_and_inf_rank_last(metric):
    g = torch.Generator().manual_seed(2)
    q = torch.randn(4, 6, generator=g)
    q[3, 2] = float("nan")  # a NaN query: every score NaN, returned in index order
    w = torch.randn(20, 6, generator=g)
    w[[1, 5]] = float("nan")
    w[7, 0] = float("inf")
    w[8, 0] = float("-inf")
    k = 20
    values, indices = ops.topk_nearest_reference(q, w, k, metric, chunk=6)
    S = score_truth(q, w, metric)
    assert np.isnan(S[:, [1, 5]]).all()
    if metric == "cosine":
        assert np.isnan(S[:, [7, 8]]).all()  # inf/inf
    assert_topk(values, indices, S, k, metric, atol=ref_atol(torch.float32, metric, q[:3], w[9:]))
    for r in range(3):
        n_nan = int(np.isnan(S[r]).sum())
        nan_tail = indices[r, k - n_nan:].tolist()
        assert nan_tail == sorted(nan_tail) and set(nan_tail) == set(np.flatnonzero(np.isnan(S[r])))
        assert torch.isnan(values[r, k - n_nan:]).all() and not torch.isnan(values[r, :k - n_nan]).any()
    assert indices[3].tolist() == list(range(20)) and torch.isnan(values[3]).all()


@pytest.mark.parametrize("metric", METRICS)
def test_topk_k_greater_than_v_and_empty(metric):
    q = torch.randn(3, 4)
    w = torch.randn(2, 4)
    values, indices = ops.topk_nearest(q, w, 5, metric)
    pad = float("-inf") if metric == "cosine" else float("inf")
    assert (indices[:, 2:] == -1).all() and (values[:, 2:] == pad).all()
    assert sorted(indices[0, :2].tolist()) == [0, 1]
    v0, i0 = ops.topk_nearest(q[:0], w, 3, metric)
    assert v0.shape == (0, 3) and i0.shape == (0, 3) and i0.dtype == torch.int64
    ve, ie = ops.topk_nearest(q, w[:0], 3, metric)
    assert (ie == -1).all() and (ve == pad).all()


def test_topk_errors():
    q, w = torch.randn(3, 8), torch.randn(10, 8)
    for bad_k in (0, -2):
        with pytest.raises(ValueError, match="k must be positive"):
            ops.topk_nearest(q, w, bad_k)
    with pytest.raises(TypeError, match="k must be an int"):
        ops.topk_nearest(q, w, 2.0)
    with pytest.raises(TypeError, match="k must be an int"):
        ops.topk_nearest(q, w, True)
    assert ops.topk_nearest(q, w, np.int64(2))[1].shape == (3, 2)
    with pytest.raises(ValueError, match="D=8.*D=7"):
        ops.topk_nearest(q, torch.randn(10, 7), 2)
    with pytest.raises(ops.InvalidDTypeError):
        ops.topk_nearest(q, w.bfloat16(), 2)
    with pytest.raises(ops.InvalidDTypeError):
        ops.topk_nearest_reference(q.long(), w.long(), 2)
    with pytest.raises(ValueError, match="2-D"):
        ops.topk_nearest(q, w[None], 2)
    with pytest.raises(ValueError, match="metric"):
        ops.topk_nearest(q, w, 2, metric="l1")


def test_big_vocab_reference_is_chunked(monkeypatch):
    """The reference never forms N x V: watch the largest matmul it issues."""
    calls = []
    real_mm = torch.Tensor.__matmul__

    def spy(a, b):
        out = real_mm(a, b)
        calls.append(out.numel())
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    q, w = torch.randn(4, 8), torch.randn(20000, 8)
    values, indices = ops.topk_nearest_reference(q, w, 3, chunk=1024)
    assert calls and max(calls) <= 4 * 1024 and len(calls) == 20
    monkeypatch.undo()
    S = score_truth(q, w, "cosine")
    assert_topk(values, indices, S, 3, "cosine", atol=1e-5)


def test_cpu_dispatch_never_warns():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.topk_nearest(torch.randn(2, 4), torch.randn(5, 4), 2)
        ops.arc_similarity(torch.randn(2, 4), torch.randn(5, 4), [[0, 0]])


def test_kernels_available_needs_cuda():
    if not HAVE_CUDA:
        assert ops.kernels_available() is False


# ------------------------------------------------------------------ top-k: the fast torch path

def _hard_topk_inputs(dtype):
    """Random rows plus every case the fast path must hand back to packing: exact duplicates
    (ties across the k-th place), zero rows and a zero query (all-equal cosines), -0.0 vs
    +0.0, NaN and inf rows, a NaN query."""
    g = torch.Generator().manual_seed(11)
    w = torch.randn(3000, 12, generator=g)
    w[100:140] = w[3]  # 41 equal rows
    w[500:520] = 0.0
    w[600, 0] = float("nan")
    w[601, 1] = float("inf")
    w[2999] = -w[5]
    q = torch.randn(8, 12, generator=g)
    q[0] = w[3] * 3  # its best 41 are one tie
    q[1] = 0.0
    q[2, 4] = float("nan")
    q[3] = -0.0
    q[4] = w[5]
    return q.to(dtype), w.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("k, chunk", [(1, None), (5, 700), (40, 333), (60, 50), (3000, 1024), (3005, None)])
def test_fast_topk_returns_exactly_the_reference(dtype, metric, k, chunk):
    """The path CPU searches dispatch to (float top-k + a tie check) returns the packed
    reference's values and indices bit for bit, ties and NaN included."""
    q, w = _hard_topk_inputs(dtype)
    ref_v, ref_i = ops.topk_nearest_reference(q, w, k, metric, chunk=chunk)
    got_v, got_i = ops._topk_fast(q, w, k, metric, chunk)
    assert torch.equal(got_i, ref_i)
    torch.testing.assert_close(got_v, ref_v, rtol=0, atol=0, equal_nan=True)
    if k == 40 and metric == "cosine" and dtype == torch.float32:
        assert got_i[0, :41 if k > 41 else k].tolist() == [3] + list(range(100, 139))  # the tie, by index
    # the entry points use it on CPU, with the index's precomputed norms too
    v2, i2 = ops.NearestIndex(w, metric).search(q, k, chunk=chunk)
    assert torch.equal(i2, ref_i)


def test_fast_topk_avoids_packing_scores_of_untied_rows(monkeypatch):
    """Packing (int64 keys for every score) is what made the reference slow: the fast path
    packs only k candidates of an untied row."""
    g = torch.Generator().manual_seed(3)
    q, w = torch.randn(4, 16, generator=g), torch.randn(5000, 16, generator=g)
    packed = []
    real = ops._pack
    monkeypatch.setattr(ops, "_pack", lambda key, *a: packed.append(key.numel()) or real(key, *a))
    got = ops._topk_fast(q, w, 5, "cosine", 1000)
    assert max(packed) == 4 * 5
    assert all(torch.equal(a, b) for a, b in zip(got, ops.topk_nearest_reference(q, w, 5, "cosine", chunk=1000)))


# ------------------------------------------------------------------ NearestIndex

@pytest.mark.parametrize("dtype", ALL_DTYPES + [torch.float64])
@pytest.mark.parametrize("metric", METRICS)
def test_index_search_equals_topk_nearest(dtype, metric):
    g = torch.Generator().manual_seed(5)
    q = torch.randn(9, 24, generator=g).to(dtype)
    w = torch.randn(3000, 24, generator=g).to(dtype)
    w[7] = 0
    w[8, 0] = float("nan")
    index = ops.NearestIndex(w, metric)
    assert len(index) == 3000 and index.dim == 24 and metric in repr(index)
    for k in (1, 10, 200):  # 200: beyond the kernel's k, same answer
        got = index.search(q, k, chunk=700)
        want = ops.topk_nearest(q, w, k, metric)
        assert torch.equal(got[1], want[1]), k
        # norms summed over the whole vocabulary vs per chunk may differ in the last bit
        torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6, equal_nan=True)
    v, i = index.search(q[:0], 4)
    assert v.shape == (0, 4) and i.shape == (0, 4)


def test_index_computes_vocabulary_norms_once(monkeypatch):
    w, q = torch.randn(5000, 16), torch.randn(3, 16)
    index = ops.NearestIndex(w)
    calls = []
    real = ops._factor
    monkeypatch.setattr(ops, "_factor", lambda x, metric: calls.append(x.shape[0]) or real(x, metric))
    index.search(q, 5, chunk=1000)
    assert calls == [3]  # the queries only; the 5000 vocabulary rows were done at build time
    ops.topk_nearest(q, w, 5, chunk=1000)
    assert calls[1:] == [3, 1000, 1000, 1000, 1000, 1000]


def test_topk_method_is_checked_and_ignored_by_the_reference():
    q, w = torch.randn(3, 8), torch.randn(100, 8)
    want = ops.topk_nearest(q, w, 4)
    for method in ops.TOPK_METHODS:
        got = ops.topk_nearest(q, w, 4, method=method)
        assert torch.equal(got[1], want[1])
    with pytest.raises(ValueError, match="method must be one of"):
        ops.topk_nearest(q, w, 4, method="faiss")
    with pytest.raises(ValueError, match="method must be one of"):
        ops.NearestIndex(w).search(q, 4, method="")


def test_index_rejects_bad_input():
    with pytest.raises(ValueError, match="metric"):
        ops.NearestIndex(torch.randn(4, 3), metric="l1")
    with pytest.raises(ValueError, match="2-D"):
        ops.NearestIndex(torch.randn(4))
    with pytest.raises(ValueError, match="at least 1"):
        ops.NearestIndex(torch.randn(4, 0))
    index = ops.NearestIndex(torch.randn(4, 3))
    with pytest.raises(ValueError, match="D=2.*D=3"):
        index.search(torch.randn(2, 2), 1)
    with pytest.raises(ops.InvalidDTypeError):
        index.search(torch.randn(2, 3).half(), 1)
    with pytest.raises(ValueError, match="k must be positive"):
        index.search(torch.randn(2, 3), 0)


# ------------------------------------------------------------------ kernels vs references
# Every kernel test runs on two backends: "cuda" (the CUDA library through the public API;
# @pytest.mark.gpu, skipped without a GPU) and "emulator" (the same kernel sources built for
# the CPU CUDA emulator, kernels/emulator/, called on CPU tensors; runs wherever a C++
# compiler built it). Cases too big for the emulator's speed run on CUDA only.

EMU = _kl.load_emulator()
needs_emulator = pytest.mark.skipif(
    EMU is None, reason=f"needs kernels/build/librescorer_kernels_emu.so: {_kl.emulator_load_error()}")


class KernelBackend:
    """The kernels on CUDA (public API, inputs moved to the GPU, results back to the CPU)
    or on the CPU emulator (inputs validated as the public API does, then the same ctypes
    calls on host pointers)."""

    def __init__(self, name: str):
        self.name = name

    @property
    def emulated(self) -> bool:
        return self.name == "emulator"

    def to(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.emulated else t.cuda()

    def arc(self, a, w, arcs, metric="cosine"):
        if not self.emulated:
            got = ops.arc_similarity(self.to(a), self.to(w), self.to(torch.as_tensor(arcs)), metric)
            assert got.is_cuda and got.dtype == torch.float32
            return got.cpu()
        ops._check_pair("acoustic", a, "spelling", w)
        arcs = ops._check_arcs(arcs, a.shape[0], w.shape[0], a.device)
        if arcs.shape[0] == 0:
            return torch.empty(0)
        return ops._arc_kernel(EMU, a, w, arcs, metric)

    def topk(self, q, w, k, metric="cosine", method="fused"):
        """method "gemm": GEMM tiles of 128 columns, so that lists carry across many tiles."""
        if not self.emulated:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(ops, "_GEMM_TILE_BYTES", 4 * max(1, q.shape[0]) * 128)
                values, indices = ops.topk_nearest(self.to(q), self.to(w), k, metric, method=method)
            assert values.is_cuda and indices.is_cuda
            return values.cpu(), indices.cpu()
        k = ops._validate_topk(q, w, k, metric)
        assert k <= ops.MAX_KERNEL_K and q.shape[0] > 0 and w.shape[0] > 0
        if method == "gemm":
            return ops._topk_gemm(EMU, q, w, k, metric, tile_bytes=4 * q.shape[0] * 128)
        return ops._topk_kernel(EMU, q, w, k, metric)


    def index_search(self, q, w, k, metric="cosine"):
        """Top-k through a NearestIndex (vocabulary factors from the factor kernel)."""
        if not self.emulated:
            index = ops.NearestIndex(self.to(w), metric)
            assert index.factors.is_cuda
            values, indices = index.search(self.to(q), k)
            return values.cpu(), indices.cpu(), index.factors.cpu()
        factors = ops._factors_kernel(EMU, w, metric)
        values, indices = ops._topk_kernel(EMU, q, w, k, metric, factors)
        return values, indices, factors


@pytest.fixture(params=[pytest.param("cuda", marks=[pytest.mark.gpu, needs_kernels]),
                        pytest.param("emulator", marks=needs_emulator)])
def kernel(request):
    return KernelBackend(request.param)


def skip_on_emulator(kernel, why="too big for the emulator"):
    if kernel.emulated:
        pytest.skip(why)


def kernel_atol(dtype, metric, q, w):
    rtol, _ = ops.TOLERANCES[dtype]
    # fp16/bf16 inputs are exact in fp32, so the kernel differs from the reference only
    # by accumulation order; allow the documented tolerance anyway.
    scale = l2_scale(q, w) if metric == "sqeuclidean" else 1.0
    return rtol * scale


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("d", [1, 3, 8, 64, 100, 128, 256, 300, 1024])
def test_arc_kernel_matches_reference(kernel, dtype, metric, d):
    g = torch.Generator().manual_seed(d)
    n, v = 50, 70
    m = 400 if kernel.emulated else 3000
    a = torch.randn(n, d, generator=g).to(dtype)
    w = torch.randn(v, d, generator=g).to(dtype)
    a[3] = 0
    w[4, : min(d, 2)] = float("nan")
    arcs = torch.stack([torch.randint(0, n, (m,), generator=g), torch.randint(0, v, (m,), generator=g)], 1)
    arcs[:5, 0], arcs[5:10, 1] = 3, 4
    ref = ops.arc_similarity_reference(a, w, arcs, metric)
    got = kernel.arc(a, w, arcs, metric)
    rtol, atol = ops.TOLERANCES[torch.float32]
    torch.testing.assert_close(got, ref, rtol=10 * rtol, atol=10 * atol, equal_nan=True)
    truth = arc_truth(a, w, arcs, metric)
    np.testing.assert_allclose(got.numpy(), truth, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_arc_kernel_unaligned_rows(kernel, dtype):
    g = torch.Generator().manual_seed(1)
    buf_a = kernel.to(torch.randn(41 * 64 + 1, generator=g).to(dtype))
    buf_w = kernel.to(torch.randn(23 * 64 + 3, generator=g).to(dtype))
    a = buf_a[1:].view(41, 64)  # data pointer not 16-byte aligned: scalar path
    w = buf_w[3:].view(23, 64)
    assert a.data_ptr() % 16 and w.data_ptr() % 16
    arcs = torch.stack([torch.randint(0, 41, (999,)), torch.randint(0, 23, (999,))], 1)
    ref = ops.arc_similarity_reference(a.cpu(), w.cpu(), arcs)
    torch.testing.assert_close(kernel.arc(a, w, arcs), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@needs_kernels
def test_arc_kernel_streams_and_many_arcs():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(41, 64, generator=g).cuda()
    w = torch.randn(23, 64, generator=g).cuda()
    arcs = torch.stack([torch.randint(0, 41, (999,)), torch.randint(0, 23, (999,))], 1).cuda()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = ops.arc_similarity(a, w, arcs)
    stream.synchronize()
    torch.testing.assert_close(got.cpu(), ops.arc_similarity_reference(a.cpu(), w.cpu(), arcs.cpu()),
                               rtol=1e-4, atol=1e-5)
    big = torch.stack([torch.randint(0, 41, (300000,)), torch.randint(0, 23, (300000,))], 1).cuda()
    got = ops.arc_similarity(a, w, big, "sqeuclidean")
    torch.testing.assert_close(got, ops.arc_similarity_reference(a, w, big, "sqeuclidean"), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@needs_kernels
def test_arc_kernel_errors_and_grad_fallback():
    a, w = torch.randn(4, 8, device="cuda"), torch.randn(6, 8, device="cuda")
    with pytest.raises(ValueError, match="arc row 1"):
        ops.arc_similarity(a, w, torch.tensor([[0, 0], [0, 6]], device="cuda"))
    a.requires_grad_(True)
    out = ops.arc_similarity(a, w, [[0, 1], [3, 5]])
    out.sum().backward()  # requires grad -> differentiable reference
    assert a.grad is not None


TOPK_CASES = [  # n, v, d, k
    (1, 1, 1, 1),
    (3, 63, 7, 5),
    (64, 64, 64, 10),
    (65, 129, 100, 32),
    (100, 1000, 128, 33),
    (7, 5000, 256, 64),
    (130, 3000, 96, 100),  # several query blocks and vocabulary splits
    (2, 50, 37, 128),      # k > V
    (4, 3000, 1030, 17),   # D across several chunks with a remainder
    pytest.param(130, 20000, 96, 100, id="130-20000-96-100-cuda-only"),
    pytest.param(300, 70000, 128, 128, id="300-70000-128-128-cuda-only"),  # many splits per block
]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("n,v,d,k", TOPK_CASES)
def test_topk_kernel_matches_reference(kernel, dtype, metric, n, v, d, k):
    if v >= 20000:
        skip_on_emulator(kernel)
    g = torch.Generator().manual_seed(n + v + d + k)
    q = torch.randn(n, d, generator=g).to(dtype)
    w = torch.randn(v, d, generator=g).to(dtype)
    if v > 10:
        w[v // 2] = 0
        w[v // 3, 0] = float("nan")
    values, indices = kernel.topk(q, w, k, metric)
    S = score_truth(q, w, metric)
    atol = kernel_atol(dtype, metric, q, w)
    assert_topk(values, indices, S, k, metric, atol=atol, exact_margin=4 * atol)
    rv, ri = ops.topk_nearest_reference(kernel.to(q), kernel.to(w), k, metric)  # reference on the device too
    same = (ri.cpu() == indices).float().mean().item()
    assert same > 0.95, same


@pytest.mark.parametrize("seed", range(8))
def test_kernels_on_random_shapes(kernel, seed):
    """Shapes, dtype, metric, k and top-k method drawn at random (seeded): nothing about
    tile sizes, vector widths or list capacities may matter to the results."""
    rng = np.random.default_rng(seed)
    n, v, d = int(rng.integers(1, 150)), int(rng.integers(1, 2500)), int(rng.integers(1, 300))
    k = int(rng.integers(1, 129))
    dtype = ALL_DTYPES[int(rng.integers(0, 3))]
    metric = METRICS[int(rng.integers(0, 2))]
    method = ("fused", "gemm")[int(rng.integers(0, 2))]
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, d, generator=g).to(dtype)
    w = (torch.randn(v, d, generator=g) * float(rng.uniform(0.1, 10))).to(dtype)
    values, indices = kernel.topk(q, w, k, metric, method=method)
    atol = kernel_atol(dtype, metric, q, w)
    assert_topk(values, indices, score_truth(q, w, metric), k, metric, atol=atol, exact_margin=4 * atol)
    m = int(rng.integers(1, 500))
    arcs = torch.stack([torch.randint(0, n, (m,), generator=g), torch.randint(0, v, (m,), generator=g)], 1)
    got = kernel.arc(q, w, arcs, metric)
    scale = l2_scale(q, w) if metric == "sqeuclidean" else 1.0
    np.testing.assert_allclose(got.numpy(), arc_truth(q, w, arcs, metric), rtol=1e-4, atol=1e-5 * scale)


GEMM_CASES = [(1, 1, 1, 1), (3, 63, 7, 5), (65, 129, 100, 32), (7, 3000, 256, 64), (130, 1000, 96, 100),
              (2, 50, 37, 128)]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("n,v,d,k", GEMM_CASES)
def test_topk_gemm_path_matches_reference(kernel, dtype, metric, n, v, d, k):
    """method="gemm": library GEMM tiles + rk_topk_select, lists carried over many tiles."""
    g = torch.Generator().manual_seed(n + v + d + k)
    q = torch.randn(n, d, generator=g).to(dtype)
    w = torch.randn(v, d, generator=g).to(dtype)
    if v > 10:
        w[v // 2] = 0
        w[v // 3, 0] = float("nan")
    values, indices = kernel.topk(q, w, k, metric, method="gemm")
    atol = kernel_atol(dtype, metric, q, w)
    assert_topk(values, indices, score_truth(q, w, metric), k, metric, atol=atol, exact_margin=4 * atol)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("method", ["fused", "gemm"])
def test_topk_kernel_ties_nan_and_padding_exact(kernel, dtype, method):
    q, w, _ = _tie_data()
    w = torch.cat([w, torch.full((3, w.shape[1]), float("nan"))])  # NaN rows 60..62
    for metric in METRICS:
        for k in (1, 9, 32, 63, 64, 65, 128):
            want = ops.topk_nearest_reference(q.to(dtype), w.to(dtype), k, metric)
            got = kernel.topk(q.to(dtype), w.to(dtype), k, metric, method=method)
            # small integers: every score identical in both, so the results are too
            assert torch.equal(got[1], want[1]), (metric, k)
            torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_topk_kernel_unaligned_vocabulary(kernel, dtype):
    g = torch.Generator().manual_seed(4)
    d = 64
    buf = kernel.to(torch.randn(3000 * d + 1, generator=g).to(dtype))
    w = buf[1:].view(3000, d)  # unaligned: scalar loads
    assert w.data_ptr() % 16
    q = kernel.to(torch.randn(40, d, generator=g).to(dtype))
    values, indices = kernel.topk(q, w, 16)
    S = score_truth(q, w, "cosine")
    atol = kernel_atol(dtype, "cosine", q, w)
    assert_topk(values, indices, S, 16, "cosine", atol=atol)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("metric", METRICS)
def test_index_search_equals_topk_kernel(kernel, dtype, metric):
    """Precomputed vocabulary factors (rk_row_factors) give exactly the results of the
    kernel computing them itself, and the factors match the reference's."""
    g = torch.Generator().manual_seed(11)
    q = torch.randn(70, 72, generator=g).to(dtype)
    w = torch.randn(2000, 72, generator=g).to(dtype)
    w[5] = 0
    w[9, 3] = float("nan")
    for k in (3, 64):
        values, indices, factors = kernel.index_search(q, w, k, metric)
        want_v, want_i = kernel.topk(q, w, k, metric)
        assert torch.equal(indices, want_i)
        torch.testing.assert_close(values, want_v, rtol=0, atol=0, equal_nan=True)
    ref = ops.row_factors(w, metric)
    torch.testing.assert_close(factors, ref, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert factors[5] == 0 and (metric == "cosine" and factors[9] == 0 or metric == "sqeuclidean" and factors[9].isnan())


@needs_emulator
@pytest.mark.parametrize("k", [1, 100])
def test_emulated_topk_with_many_vocabulary_splits(monkeypatch, k):
    """As on a 132-SM GPU: dozens of splits per query block, each with its own partial list,
    merged by the merge kernel (the CUDA-only case 300 x 70000 covers this on a GPU)."""
    monkeypatch.setattr(ops, "_EMULATED_SMS", 132)
    g = torch.Generator().manual_seed(k)
    q, w = torch.randn(5, 16, generator=g), torch.randn(20000, 16, generator=g)
    assert EMU.rk_topk_num_splits(5, 20000, k, 132) >= 30
    values, indices = KernelBackend("emulator").topk(q, w, k)
    atol = kernel_atol(torch.float32, "cosine", q, w)
    assert_topk(values, indices, score_truth(q, w, "cosine"), k, "cosine", atol=atol, exact_margin=4 * atol)


@needs_emulator
@pytest.mark.parametrize("schedule,seed", [(_kl.EMU_REVERSE, 0), (_kl.EMU_SHUFFLED, 1), (_kl.EMU_SHUFFLED, 2)])
def test_emulated_kernels_do_not_depend_on_the_thread_schedule(schedule, seed):
    """A missing barrier makes results depend on which thread runs first: under every
    schedule the emulator offers, the kernels must still agree with the reference."""
    backend = KernelBackend("emulator")
    g = torch.Generator().manual_seed(seed)
    assert EMU.rk_emu_set_schedule(schedule, seed) == 0
    try:
        for dtype in (torch.float32, torch.float16):
            q = torch.randn(70, 96, generator=g).to(dtype)
            w = torch.randn(1500, 96, generator=g).to(dtype)
            for k in (7, 40, 128):
                values, indices = backend.topk(q, w, k)
                atol = kernel_atol(dtype, "cosine", q, w)
                assert_topk(values, indices, score_truth(q, w, "cosine"), k, "cosine", atol=atol,
                            exact_margin=4 * atol)
            a, arcs = q[:30], torch.stack([torch.randint(0, 30, (300,), generator=g),
                                           torch.randint(0, 1500, (300,), generator=g)], 1)
            np.testing.assert_allclose(backend.arc(a, w, arcs).numpy(), arc_truth(a, w, arcs, "cosine"),
                                       rtol=1e-4, atol=1e-5)
    finally:
        EMU.rk_emu_set_schedule(_kl.EMU_FORWARD, 0)


@pytest.mark.gpu
@needs_kernels
def test_topk_kernel_stream():
    g = torch.Generator().manual_seed(4)
    q = torch.randn(40, 64, generator=g).cuda()
    w = torch.randn(3000, 64, generator=g).cuda()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        values, indices = ops.topk_nearest(q, w, 16)
    stream.synchronize()
    assert_topk(values, indices, score_truth(q, w, "cosine"), 16, "cosine", atol=1e-5)


@pytest.mark.gpu
@needs_kernels
def test_topk_kernel_large_k_falls_back_and_empty():
    q, w = torch.randn(3, 16, device="cuda"), torch.randn(500, 16, device="cuda")
    values, indices = ops.topk_nearest(q, w, 200)
    assert values.shape == (3, 200)
    assert_topk(values, indices, score_truth(q, w, "cosine"), 200, "cosine", atol=1e-5)
    v0, i0 = ops.topk_nearest(q[:0], w, 5)
    assert v0.shape == (0, 5) and v0.is_cuda
