"""Paths of a lattice: the one hypothesis type, n-best path sampling and n-best re-ranking.

Both lattice kinds use these: word lattices (``word_lattice``: one word per arc, spans as
attributes) and the decoder's token lattices (``rescorer.decoding.decode``: words on
ragged ``aux_labels``, spans from the token sequence). They differ in how a path becomes
words, so each turns arc paths into ``Hypothesis`` its own way; which paths are drawn
(``sample_paths``), the exact oracle path (``oracle_arc_path``) and how an n-best list is
re-ranked by a second model (``best_with_attention``) are written once here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch


class WordSpan(NamedTuple):
    word: str
    start: float  # seconds (NaN where the path gave no span)
    end: float  # seconds


@dataclass
class Hypothesis:
    """One path: words with spans, its combined score and its AM / LM parts.

    Token-lattice paths also carry what the decoder heard: each word's letters and the
    path's CTC tokens (letters and ``|``); ``extra`` holds second-pass scores.
    """

    words: List[WordSpan]
    score: float = 0.0
    am_score: float = 0.0
    lm_score: float = 0.0
    letters: List[str] = field(default_factory=list)
    tokens: List[int] = field(default_factory=list)
    extra: Dict[str, float] = field(default_factory=dict)

    @property
    def word_sequence(self) -> List[str]:
        return [w.word for w in self.words]

    @property
    def text(self) -> str:
        return " ".join(self.word_sequence)


def sample_paths(fsa, num_paths: int, nbest_scale: float = 0.5, seed: Optional[int] = None) -> List[List[int]]:
    """Arc ids of the best path, then of ``num_paths`` paths drawn by ``k2.random_paths`` from
    the lattice with scores x ``nbest_scale`` (icefall's n-best sampling). ``seed``: seeds
    torch's generator first (None: draw from its current state). Empty drawn paths are dropped."""
    import k2

    if fsa.num_arcs == 0:
        return []
    bare = k2.Fsa(fsa.arcs.clone() if hasattr(fsa.arcs, "clone") else fsa.arcs)
    bare.scores = fsa.scores.detach().clone()
    bare.arc_index = torch.arange(fsa.num_arcs, dtype=torch.int32)
    vec = k2.create_fsa_vec([bare])
    paths = [k2.shortest_path(vec, use_double_scores=True).arc_index.tolist()]
    if num_paths > 0:
        vec.scores = vec.scores * nbest_scale
        if seed is not None:
            torch.manual_seed(seed)
        paths += [p for p in k2.random_paths(vec, use_double_scores=True, num_paths=num_paths).tolist()[0] if p]
    return paths


def best_with_attention(base_scores: Sequence[float], attention_scores, attention_scale: float) -> Tuple[int, torch.Tensor]:
    """(index of the best, totals float64 [n]) of an n-best list re-ranked by a second model:
    total = base score + ``attention_scale`` x attention log-likelihood (ties: the first).

    The n-best rescoring of icefall's attention decoder; used for token-lattice n-best lists
    (base = am + ngram_lm_scale * lm) and word-lattice ones (base = the rescored score)."""
    att = torch.as_tensor(attention_scores, dtype=torch.float64).reshape(-1)
    if att.numel() != len(base_scores):
        raise ValueError(f"{att.numel()} attention scores for {len(base_scores)} hypotheses")
    if not torch.isfinite(att).all():
        raise ValueError("non-finite attention score (NaN in the attention model?)")
    total = torch.tensor(list(base_scores), dtype=torch.float64) + attention_scale * att
    return int(torch.argmax(total)), total


def oracle_arc_path(src, dst, level, words_of: Dict[int, List[int]], num_states: int,
                    ref_ids: Sequence[int]) -> Tuple[int, List[int]]:
    """The lattice path closest to a reference in word edit distance: (errors, its arc ids).

    Arcs ``src`` -> ``dst`` (int arrays), each leaving a state of ``level`` (its depth:
    every arc enters a state of a higher level, and a state's incoming arcs all leave
    lower levels; a CTC lattice's frame, a word lattice's longest-path depth). ``words_of``:
    the word ids on each arc that has any (other arcs are free); ``ref_ids``: the
    reference as word ids (a negative id never matches). State 0 starts, the last state
    ends. Unit costs for substitution, insertion, deletion; scores are ignored: every path
    counts. A dynamic programme over states x reference positions, one vectorised step
    per level (a scatter-min of packed (cost, arc, origin) keys). Ties: the smallest key.
    """
    import numpy as np

    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    level = np.asarray(level, dtype=np.int64)
    ref = np.asarray(list(ref_ids), dtype=np.int64)
    R = len(ref)
    n_arcs = len(src)
    if num_states == 0 or n_arcs == 0:
        return R, []
    J = R + 1
    M = (n_arcs + 1) * J  # key = cost * M + arc * J + origin_j ; arc n_arcs = start sentinel
    BIG = np.iinfo(np.int64).max
    key = np.full((num_states, J), BIG, dtype=np.int64)
    key[0] = np.arange(J) * M + n_arcs * J + np.arange(J)
    cost = np.full((num_states, J), 1 << 20, dtype=np.int64)
    cost[0] = np.arange(J)
    order = np.argsort(level, kind="stable")
    bounds = np.searchsorted(level[order], np.arange(level.max() + 2))
    jj = np.arange(J)
    for t in range(len(bounds) - 1):
        A = order[bounds[t] : bounds[t + 1]]
        if len(A) == 0:
            continue
        vals = cost[src[A]].copy()
        orig = np.broadcast_to(jj, vals.shape).copy()
        wrows = [i for i, a in enumerate(A.tolist()) if a in words_of]
        for i in wrows:
            for w in words_of[int(A[i])]:
                v, o = vals[i], orig[i]
                nv, no = v + 1, o.copy()  # insertion
                if R:
                    sub = v[:-1] + (ref != w)
                    take = sub < nv[1:]
                    nv[1:][take], no[1:][take] = sub[take], o[:-1][take]
                    for j in range(1, J):  # deletions
                        if nv[j - 1] + 1 < nv[j]:
                            nv[j], no[j] = nv[j - 1] + 1, no[j - 1]
                vals[i], orig[i] = nv, no
        k = vals * M + (A[:, None] * J) + orig
        np.minimum.at(key, (np.broadcast_to(dst[A][:, None], k.shape), np.broadcast_to(jj, k.shape)), k)
        touched = np.unique(dst[A])
        cost[touched] = key[touched] // M
    final = num_states - 1
    if key[final, R] == BIG:
        return R, []
    errors = int(key[final, R] // M)
    path: List[int] = []
    s, j = final, R
    for _ in range(n_arcs + 1):
        kv = int(key[s, j]) % M
        a, oj = kv // J, kv % J
        if a == n_arcs:
            break
        path.append(a)
        s, j = int(src[a]), oj
    return errors, path[::-1]
