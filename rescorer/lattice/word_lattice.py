"""The word lattice the rescorer works on: a k2 acceptor over word ids with word spans.

Representation (``WordLattice``, a small dataclass around a k2 ``Fsa``):

- ``fsa``: a single k2 acceptor. ``labels`` are word ids in ``words`` (a k2
  ``SymbolTable``); 0 (``<eps>``) marks filler / epsilon arcs (silence, noise, sentence
  marks), which keep their scores and spans; -1 marks the arcs into the (unique, last)
  final state, as k2 requires. States are numbered in topological order, state 0 is the
  start state, and every state lies on a path from start to final.
- per-arc tensor attributes, which k2 ops (``shortest_path``, ``intersect``,
  ``arc_sort``, ``index_fsa``...) carry along:
  ``start_frame``, ``end_frame`` (int32, the word occupies frames ``[start, end)``),
  ``am_scores``, ``lm_scores`` (float32, natural log; the acoustic and the language-model
  log-likelihood of the word on the arc; final arcs carry the end-of-sentence LM score),
  and ``scores`` = the combined score ``am_scale * am + lm_scale * lm + wip`` (``wip``
  added on word arcs only, label > 0; ``rescorer.lattice.scores``, which also adds the
  rescorer's ``awe_scale * awe``) under the scales recorded in ``meta["scales"]``
  (``Scales.to_dict()``; ``rescale`` recomputes it).
- ``frame_shift``: seconds per frame (0.01 for 10 ms frames); frames x frame_shift = seconds.
- ``words``: the k2 SymbolTable of the labels; ``utterance_id``; ``meta``: a JSON-able
  dict (source, scales, counts of widened spans and unknown words...).

Zero-length word spans (end == start) cannot be embedded; ``build_word_lattice`` widens
them to one frame (``end = start + 1``, counted in ``meta["widened_spans"]``) unless
``zero_length="error"``. Filler (label 0) and final (-1) arcs may have zero length.

Shards (``save_word_lattices`` / ``load_word_lattices``) are ``rescorer.word_lattices/2``
files (``rescorer.formats.word_lattices``: plain tensors + JSON, loaded without
unpickling objects, readable without k2; version 1 shards still load): arcs, spans,
am/lm scores and meta of every lattice, the symbol table (or only its digest), and how
the writer pruned, and ``awe_scores`` of rescored lattices. ``scores`` are stored only
when they are not the combination of those columns under ``meta["scales"]``; otherwise
they are recombined on loading.

Loading with an expected symbol table that differs from the stored one is an error.
Shards written with ``include_words=False`` (per-utterance shards next to one
``words.txt``, e.g. the pocketsphinx lattices) hold only the digest and need the table.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from rescorer.formats.contract import UNK
from rescorer.formats.tagged import FormatError, UnsafeFileError
from rescorer.formats.word_lattices import FORMAT, LatticeRecord, WordLatticeShard, read_word_lattices, write_word_lattices
from rescorer.lattice.paths import Hypothesis, WordSpan, oracle_arc_path, sample_paths
from rescorer.lattice.scores import Scales, combine, with_scores

EPS_ID = 0
FINAL_LABEL = -1
ATTRS_INT = ("start_frame", "end_frame")
ATTRS_FLOAT = ("am_scores", "lm_scores")


class WordLatticeError(ValueError):
    """An invalid word lattice (the message names the utterance and the problem)."""


@dataclass
class WordLattice:
    fsa: Any  # k2.Fsa (single acceptor, see module docstring)
    frame_shift: float
    words: Any  # k2.SymbolTable
    utterance_id: str = ""
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_arcs(self) -> int:
        return int(self.fsa.arcs.values().shape[0])

    @property
    def num_states(self) -> int:
        return int(self.fsa.shape[0])

    def arcs(self) -> torch.Tensor:
        """int32 [A, 3]: src, dst, label."""
        return self.fsa.arcs.values()[:, :3]


# ---------------------------------------------------------------------------- tables


def make_word_table(words: Iterable[str], unk: str = UNK):
    """A k2 SymbolTable: ``<eps>`` 0, ``unk`` 1, then the distinct words sorted."""
    import k2

    syms = ["<eps>", unk] + sorted(set(words) - {"<eps>", unk})
    return k2.SymbolTable.from_str("\n".join(f"{s} {i}" for i, s in enumerate(syms)))


def table_items(words) -> List[Tuple[str, int]]:
    return sorted(((s, int(words[s])) for s in words.symbols), key=lambda x: x[1])


def table_digest(words) -> str:
    """sha1 prefix of the (symbol, id) pairs; cached on the table object (tables are not mutated here)."""
    cached = getattr(words, "_rescorer_digest", None)
    if cached is not None:
        return cached
    h = hashlib.sha1()
    for s, i in table_items(words):
        h.update(f"{s}\t{i}\n".encode())
    digest = h.hexdigest()[:16]
    try:
        words._rescorer_digest = digest
    except AttributeError:
        pass
    return digest


def _table_from_items(items):
    import k2

    return k2.SymbolTable.from_str("\n".join(f"{s} {i}" for s, i in items))


# ---------------------------------------------------------------------------- building


def _word_id(word, words, where: str) -> int:
    if word is None:
        return EPS_ID
    if isinstance(word, str):
        if word not in words:
            raise WordLatticeError(f"{where}: word {word!r} is not in the symbol table")
        return int(words[word])
    w = int(word)
    if w == EPS_ID or w == FINAL_LABEL:
        return w
    if w < 0 or w not in words:
        raise WordLatticeError(f"{where}: word id {w} is not in the symbol table")
    return w


def build_word_lattice(
    arcs: Iterable[Sequence],
    words,
    *,
    frame_shift: float,
    final_states: Union[None, Iterable[Hashable], Mapping[Hashable, Tuple[float, float]]] = None,
    start_state: Hashable = 0,
    utterance_id: str = "",
    zero_length: str = "widen",
    am_scale: float = 1.0,
    lm_scale: float = 1.0,
    word_insertion_penalty: float = 0.0,
    meta: Optional[Dict[str, Any]] = None,
) -> WordLattice:
    """Build a WordLattice from arcs ``(src, dst, word, start_frame, end_frame, am, lm)``.

    States are any hashable keys. ``word`` is a symbol (str) or an id; ``None``, 0 or
    ``"<eps>"`` make an epsilon (filler) arc. ``final_states``: the states where paths
    end, optionally mapping each to its ``(am, lm)`` final score (e.g. the end-of-sentence
    LM score); by default every state without outgoing arcs is final with score 0.
    A final arc spans ``[t, t)`` where t is the latest end frame of the arcs into it.
    Unreachable / dead states and arcs are dropped; cycles are an error.
    """
    where = f"utterance {utterance_id!r}" if utterance_id else "word lattice"
    if not (isinstance(frame_shift, (int, float)) and frame_shift > 0 and math.isfinite(frame_shift)):
        raise WordLatticeError(f"{where}: frame_shift must be a positive number, got {frame_shift!r}")
    if zero_length not in ("widen", "error"):
        raise ValueError("zero_length must be 'widen' or 'error'")
    meta = dict(meta or {})
    rows = []
    widened = 0
    for k, a in enumerate(arcs):
        if len(a) != 7:
            raise WordLatticeError(f"{where}: arc {k} must be (src, dst, word, start_frame, end_frame, am, lm), got {a!r}")
        src, dst, w, sf, ef, am, lm = a
        wid = _word_id(w, words, f"{where}, arc {k}")
        if wid == FINAL_LABEL:
            raise WordLatticeError(f"{where}, arc {k}: label -1 is reserved; use final_states")
        if sf is None or ef is None:
            raise WordLatticeError(f"{where}, arc {k}: no frame information (start/end frame missing)")
        sf, ef = int(sf), int(ef)
        am, lm = float(am), float(lm)
        if math.isnan(am) or math.isnan(lm):
            raise WordLatticeError(f"{where}, arc {k}: NaN score (am={am}, lm={lm})")
        if ef < sf:
            raise WordLatticeError(f"{where}, arc {k}: span ends before it starts ([{sf}, {ef}) frames)")
        if sf < 0:
            raise WordLatticeError(f"{where}, arc {k}: negative start frame {sf}")
        if ef == sf and wid > 0:
            if zero_length == "error":
                raise WordLatticeError(f"{where}, arc {k}: zero-length span for word {words.get(wid)!r} at frame {sf}")
            ef = sf + 1
            widened += 1
        rows.append((src, dst, wid, sf, ef, am, lm))
    if not rows:
        raise WordLatticeError(f"{where}: empty lattice (no arcs)")

    out_arcs: Dict[Hashable, List[int]] = defaultdict(list)
    in_arcs: Dict[Hashable, List[int]] = defaultdict(list)
    nodes = {start_state}
    for k, r in enumerate(rows):
        out_arcs[r[0]].append(k)
        in_arcs[r[1]].append(k)
        nodes.add(r[0])
        nodes.add(r[1])
    if final_states is None:
        finals = {n: (0.0, 0.0) for n in nodes if not out_arcs.get(n)}
    elif isinstance(final_states, Mapping):
        finals = {n: (float(v[0]), float(v[1])) for n, v in final_states.items()}
    else:
        finals = {n: (0.0, 0.0) for n in final_states}
    for n, (fa, fl) in finals.items():
        if math.isnan(fa) or math.isnan(fl):
            raise WordLatticeError(f"{where}: NaN final score at state {n!r}")

    # forward reachability from start, then backward from finals (connect)
    fwd = {start_state}
    dq = deque([start_state])
    while dq:
        s = dq.popleft()
        for k in out_arcs.get(s, ()):
            d = rows[k][1]
            if d not in fwd:
                fwd.add(d)
                dq.append(d)
    bwd = {n for n in finals if n in fwd}
    dq = deque(bwd)
    while dq:
        s = dq.popleft()
        for k in in_arcs.get(s, ()):
            p = rows[k][0]
            if p in fwd and p not in bwd:
                bwd.add(p)
                dq.append(p)
    if start_state not in bwd:
        raise WordLatticeError(f"{where}: empty lattice (no path from the start state to a final state)")
    keep = [k for k, r in enumerate(rows) if r[0] in bwd and r[1] in bwd]

    # topological order (Kahn) over kept states; leftover states mean a cycle
    indeg = {n: 0 for n in bwd}
    kept_out: Dict[Hashable, List[int]] = defaultdict(list)
    for k in keep:
        indeg[rows[k][1]] += 1
        kept_out[rows[k][0]].append(k)
    if indeg[start_state] != 0:
        raise WordLatticeError(f"{where}: the start state has incoming arcs (a cycle through the start)")
    order = []
    dq = deque([start_state])
    while dq:
        s = dq.popleft()
        order.append(s)
        for k in kept_out.get(s, ()):
            d = rows[k][1]
            indeg[d] -= 1
            if indeg[d] == 0:
                dq.append(d)
    if len(order) != len(bwd):
        raise WordLatticeError(f"{where}: the lattice has a cycle ({len(bwd) - len(order)} states on or after cycles)")
    sid = {n: i for i, n in enumerate(order)}
    super_final = len(order)

    final_frame: Dict[Hashable, int] = {}
    for k in keep:
        d = rows[k][1]
        final_frame[d] = max(final_frame.get(d, 0), rows[k][4])
    table = [(sid[rows[k][0]], sid[rows[k][1]]) + tuple(rows[k][2:]) for k in keep]
    for n in order:
        if n in finals:
            t = final_frame.get(n, 0)
            table.append((sid[n], super_final, FINAL_LABEL, t, t) + finals[n])
    table.sort(key=lambda r: r[0])
    meta.setdefault("widened_spans", 0)
    meta["widened_spans"] += widened
    return _from_columns(
        torch.tensor([r[:3] for r in table], dtype=torch.int32),
        torch.tensor([r[3] for r in table], dtype=torch.int32),
        torch.tensor([r[4] for r in table], dtype=torch.int32),
        torch.tensor([r[5] for r in table], dtype=torch.float32),
        torch.tensor([r[6] for r in table], dtype=torch.float32),
        words,
        frame_shift,
        utterance_id,
        meta,
        scales=Scales(am_scale, lm_scale, word_insertion_penalty),
    )


def from_arrays(
    src, dst, labels, start_frame, end_frame, am_scores, lm_scores, words, *, frame_shift: float,
    utterance_id: str = "", am_scale: float = 1.0, lm_scale: float = 1.0, word_insertion_penalty: float = 0.0,
    meta: Optional[Dict[str, Any]] = None,
) -> WordLattice:
    """Fast path for producers that already number states k2's way (start 0, one final
    state = the largest id, reached only by label -1 arcs, every state connected). Arcs
    are stably sorted by source state; the result is validated. Zero-length word spans are
    widened to one frame (counted in ``meta["widened_spans"]``)."""
    src = torch.as_tensor(src, dtype=torch.int32)
    order = torch.argsort(src.long() * (src.numel() + 1) + torch.arange(src.numel()))
    cols = [torch.as_tensor(x)[order] for x in (src, dst, labels, start_frame, end_frame)]
    sf, ef = cols[3].to(torch.int32), cols[4].to(torch.int32).clone()
    zero = (ef == sf) & (cols[2] > 0)
    ef[zero] += 1
    meta = dict(meta or {})
    meta["widened_spans"] = meta.get("widened_spans", 0) + int(zero.sum())
    arcs3 = torch.stack([c.to(torch.int32) for c in cols[:3]], dim=1)
    am = torch.as_tensor(am_scores, dtype=torch.float32)[order]
    lm = torch.as_tensor(lm_scores, dtype=torch.float32)[order]
    return _from_columns(arcs3, sf, ef, am, lm, words, frame_shift, utterance_id, meta, Scales(am_scale, lm_scale, word_insertion_penalty))


def _from_columns(arcs3, start_frame, end_frame, am, lm, words, frame_shift, utterance_id, meta, scales: Scales, scores=None):
    """A validated WordLattice of these columns; ``scores`` combined under ``scales`` unless given
    (then ``scales`` are the ones they were combined with, recorded in ``meta``)."""
    import k2

    a = torch.zeros((arcs3.shape[0], 4), dtype=torch.int32)
    a[:, :3] = arcs3
    fsa = k2.Fsa(a)
    fsa.start_frame = start_frame.to(torch.int32)
    fsa.end_frame = end_frame.to(torch.int32)
    fsa.am_scores = am.to(torch.float32)
    fsa.lm_scores = lm.to(torch.float32)
    lat = WordLattice(fsa, float(frame_shift), words, utterance_id, dict(meta))
    if scores is None:
        lat = with_scores(lat, scales)
    else:
        lat.fsa.scores = scores.to(torch.float32)
        lat.meta["scales"] = scales.to_dict()
    validate(lat)
    return lat


def from_k2(fsa, words, frame_shift: float, utterance_id: str = "", meta=None, scales=None) -> WordLattice:
    """Wrap an existing k2 acceptor that has the span and score attributes (validated).

    The fsa is connected and top-sorted first. ``scores`` are kept if ``scales`` is None.
    """
    import k2

    where = f"utterance {utterance_id!r}" if utterance_id else "word lattice"
    for name in ATTRS_INT + ATTRS_FLOAT:
        if not hasattr(fsa, name):
            raise WordLatticeError(f"{where}: the fsa has no {name!r} attribute (a word lattice needs frame spans and scores)")
    f = k2.top_sort(k2.connect(fsa))
    lat = WordLattice(f, float(frame_shift), words, utterance_id, dict(meta or {}))
    if scales is not None:
        lat = rescale(lat, *scales)
    validate(lat)
    return lat


# ---------------------------------------------------------------------------- validation


def validate(lat: WordLattice) -> None:
    """Raise WordLatticeError if the lattice breaks the conventions in the module docstring."""
    where = f"utterance {lat.utterance_id!r}" if lat.utterance_id else "word lattice"
    fsa = lat.fsa
    if not (lat.frame_shift > 0 and math.isfinite(lat.frame_shift)):
        raise WordLatticeError(f"{where}: frame_shift must be positive, got {lat.frame_shift}")
    if len(fsa.shape) != 2:
        raise WordLatticeError(f"{where}: expected a single Fsa, got an FsaVec")
    if fsa.arcs.values().shape[0] == 0 or fsa.shape[0] < 2:
        raise WordLatticeError(f"{where}: empty lattice")
    for name in ATTRS_INT + ATTRS_FLOAT:
        if not hasattr(fsa, name):
            raise WordLatticeError(f"{where}: missing per-arc attribute {name!r} (no frame information or scores)")
    # numpy views of the per-arc tensors: the checks run once per lattice on rescoring's hot path,
    # where torch's per-call overhead on these small arrays was most of their cost
    sf, ef = fsa.start_frame.cpu().numpy(), fsa.end_frame.cpu().numpy()
    labels = fsa.labels.cpu().numpy()
    bad = np.flatnonzero(ef < sf)
    if bad.size:
        k = int(bad[0])
        raise WordLatticeError(f"{where}, arc {k}: span ends before it starts ([{int(sf[k])}, {int(ef[k])}))")
    bad = np.flatnonzero((ef == sf) & (labels > 0))
    if bad.size:
        k = int(bad[0])
        raise WordLatticeError(f"{where}, arc {k}: zero-length span for word id {int(labels[k])}")
    for name in ("am_scores", "lm_scores", "scores"):
        nan = np.isnan(getattr(fsa, name).detach().cpu().float().numpy())
        if nan.any():
            raise WordLatticeError(f"{where}, arc {int(np.flatnonzero(nan)[0])}: NaN in {name}")
    ids = np.unique(labels[labels > 0]).tolist()
    missing = [i for i in ids if i not in lat.words]
    if missing:
        raise WordLatticeError(f"{where}: word ids {missing[:5]} are not in the symbol table")
    if (labels < FINAL_LABEL).any():
        raise WordLatticeError(f"{where}: negative labels other than -1")


# ---------------------------------------------------------------------------- scores


def rescale(lat: WordLattice, am_scale: float = 1.0, lm_scale: float = 1.0, word_insertion_penalty: float = 0.0) -> WordLattice:
    """A copy whose ``scores`` = am_scale*am + lm_scale*lm + word_insertion_penalty per word arc
    (``scores.with_scores`` without an embedding term).

    ``word_insertion_penalty`` is in the log domain and added to every arc with a word
    (label > 0); pocketsphinx's ``-wip 0.65`` is ``math.log(0.65)``.
    """
    return with_scores(lat, Scales(float(am_scale), float(lm_scale), float(word_insertion_penalty)))


def prune(lat: WordLattice, min_posterior: float = 1e-4, scale: float = 1.0) -> WordLattice:
    """Drop arcs whose posterior (scores x ``scale``) is below ``min_posterior``.

    Large decoder lattices (tens of thousands of arcs) hold many word hypotheses that no
    rescoring weight could bring back; removing them first cuts the spans to embed. The
    best path always survives (its arcs have the highest posteriors on their frames).
    Attributes (spans, am/lm scores) are kept; unreachable states are removed. A lattice
    already pruned at this threshold and scale under the same scales (``meta["pruned"]``,
    e.g. by the decoder when it wrote ``word_lattices.pt``) is returned as it is.
    """
    import k2

    if lat.num_arcs == 0 or min_posterior <= 0:
        return lat
    done = {"min_posterior": float(min_posterior), "scale": float(scale), "scales": lat.meta.get("scales")}
    if lat.meta.get("pruned") == done:  # pruning at writing time and again when rescoring = pruning once
        return lat
    vec = k2.create_fsa_vec([lat.fsa])
    vec.unscaled_scores = vec.scores.clone()  # an attribute, so it follows the kept arcs
    vec.scores = vec.scores * scale
    f = k2.connect(k2.prune_on_arc_post(vec, float(min_posterior), True))[0]
    f.scores = f.unscaled_scores
    del f.unscaled_scores
    meta = dict(lat.meta)
    meta["pruned_min_posterior"] = float(min_posterior)
    meta["pruned"] = done
    out = WordLattice(f, lat.frame_shift, lat.words, lat.utterance_id, meta)
    validate(out)
    return out


def _path_to_hyp(lat: WordLattice, path) -> Hypothesis:
    """Hypothesis from a linear path fsa carrying the lattice attributes."""
    labels = path.labels.tolist()
    sf, ef = path.start_frame.tolist(), path.end_frame.tolist()
    spans = [
        WordSpan(lat.words.get(l), sf[i] * lat.frame_shift, ef[i] * lat.frame_shift) for i, l in enumerate(labels) if l > 0
    ]
    return Hypothesis(
        spans, float(path.scores.double().sum()), float(path.am_scores.double().sum()), float(path.lm_scores.double().sum())
    )


def best_path_hypothesis(lat: WordLattice) -> Hypothesis:
    import k2

    p = k2.shortest_path(k2.create_fsa_vec([lat.fsa]), use_double_scores=True)
    return _path_to_hyp(lat, p[0])


def best_path(lat: WordLattice) -> List[WordSpan]:
    """The highest-scoring path's words as (word, start_sec, end_sec); fillers dropped."""
    return best_path_hypothesis(lat).words


def _constrained_best(lat: WordLattice, seqs: List[List[int]]):
    """For each word-id sequence, the best lattice path with exactly those words (or None)."""
    import k2

    if not seqs:
        return []
    lats = k2.arc_sort(k2.create_fsa_vec([lat.fsa]))
    lin = k2.add_epsilon_self_loops(k2.linear_fsa(seqs))
    lin.scores = torch.zeros_like(lin.scores)
    inter = k2.intersect_device(lats, lin, b_to_a_map=torch.zeros(len(seqs), dtype=torch.int32), sorted_match_a=True)
    inter = k2.top_sort(k2.connect(inter))
    paths = k2.shortest_path(inter, use_double_scores=True)
    out = []
    for i in range(len(seqs)):
        p = paths[i]
        out.append(None if p.arcs.values().shape[0] == 0 else p)
    return out


def contains_path(lat: WordLattice, words: Sequence[Union[str, int]]) -> bool:
    """Whether some path of the lattice reads exactly ``words`` (fillers ignored)."""
    ids = []
    for w in words:
        if isinstance(w, str):
            if w not in lat.words:
                return False
            ids.append(int(lat.words[w]))
        else:
            ids.append(int(w))
    return _constrained_best(lat, [ids])[0] is not None


def nbest(lat: WordLattice, n: int = 10, num_paths: int = 100, nbest_scale: float = 0.5, seed: Optional[int] = 0) -> List[Hypothesis]:
    """Up to n distinct word sequences, best first, each with its best path's spans and scores.

    Sequences come from ``paths.sample_paths`` (the 1-best and ``num_paths`` paths drawn
    with scores x ``nbest_scale``); each distinct sequence is then scored exactly by its
    best path (intersection with the lattice).
    """
    labels = lat.fsa.labels.tolist()
    seqs = [tuple(labels[a] for a in p if labels[a] > 0) for p in sample_paths(lat.fsa, num_paths, nbest_scale, seed)]
    uniq = list(dict.fromkeys(seqs))
    hyps = [_path_to_hyp(lat, p) for p in _constrained_best(lat, [list(s) for s in uniq]) if p is not None]
    hyps.sort(key=lambda h: -h.score)
    return hyps[:n]


def arc_posteriors(lat: WordLattice, scale: float = 1.0) -> torch.Tensor:
    """Per-arc posterior probabilities (forward-backward in the log semiring, scores x scale)."""
    import k2

    vec = k2.create_fsa_vec([lat.fsa])
    vec.scores = vec.scores * scale
    return vec.get_arc_post(use_double_scores=True, log_semiring=True).exp().to(torch.float32)


def word_confidences(lat: WordLattice, spans: Sequence[WordSpan], scale: float = 1.0) -> List[float]:
    """Confidence of each word of a hypothesis: the summed posterior of the lattice arcs with
    the same word whose span contains the word's middle frame (clipped to 1)."""
    post = arc_posteriors(lat, scale)
    labels = lat.fsa.labels
    sf, ef = lat.fsa.start_frame, lat.fsa.end_frame
    out = []
    for w in spans:
        if w.word not in lat.words:
            out.append(0.0)
            continue
        mid = int(round((w.start + w.end) / 2 / lat.frame_shift))
        m = (labels == int(lat.words[w.word])) & (sf <= mid) & (ef > mid)
        out.append(min(1.0, float(post[m].sum())))
    return out


# ---------------------------------------------------------------------------- oracle


def oracle_path(lat: WordLattice, reference: Sequence[str]) -> Tuple[int, List[WordSpan]]:
    """The lattice path closest to ``reference`` in word edit distance: (errors, its words).

    ``paths.oracle_arc_path`` with each state's longest-path depth as its level (states
    are numbered topologically); fillers are free; reference words outside the table
    never match.
    """
    ref = [int(lat.words[w]) if w in lat.words else -2 for w in reference]
    arcs = lat.fsa.arcs.values()[:, :3]
    src, dst, labels = arcs[:, 0].tolist(), arcs[:, 1].tolist(), arcs[:, 2].tolist()
    depth = [0] * lat.num_states
    for s, d in zip(src, dst):  # arcs sorted by source state, states topological
        if depth[s] + 1 > depth[d]:
            depth[d] = depth[s] + 1
    level = [depth[s] for s in src]
    words_of = {a: [lab] for a, lab in enumerate(labels) if lab > 0}
    errors, path = oracle_arc_path(src, dst, level, words_of, lat.num_states, ref)
    sf, ef = lat.fsa.start_frame.tolist(), lat.fsa.end_frame.tolist()
    fs = lat.frame_shift
    return errors, [WordSpan(lat.words.get(labels[a]), sf[a] * fs, ef[a] * fs) for a in path if labels[a] > 0]


# ---------------------------------------------------------------------------- save / load


def _scores_recomputable(lat: WordLattice) -> bool:
    """Whether ``scores`` are the combination of the stored columns under ``meta["scales"]``
    (then they are not stored but recombined on loading)."""
    f = lat.fsa
    again = combine(Scales.from_meta(lat.meta), f.am_scores, f.lm_scores, f.labels, getattr(f, "awe_scores", None))
    return torch.equal(again.to(torch.float32), f.scores.to(torch.float32))


def _to_record(lat: WordLattice, with_scores: bool) -> LatticeRecord:
    f = lat.fsa
    awe = getattr(f, "awe_scores", None)
    return LatticeRecord(
        lat.utterance_id, lat.num_states, f.arcs.values()[:, :3].to(torch.int32), f.start_frame.to(torch.int32),
        f.end_frame.to(torch.int32), f.am_scores.to(torch.float32), f.lm_scores.to(torch.float32),
        float(lat.frame_shift), dict(lat.meta),
        scores=f.scores.to(torch.float32) if with_scores else None,
        awe_scores=awe.to(torch.float32) if isinstance(awe, torch.Tensor) else None,
    )


def _from_record(r: LatticeRecord, table) -> WordLattice:
    scales = Scales.from_meta(r.meta)
    scores = r.scores
    if scores is None:
        scores = combine(scales, r.am_scores, r.lm_scores, r.arcs[:, 2], r.awe_scores).to(torch.float32)
    lat = _from_columns(
        r.arcs, r.start_frame, r.end_frame, r.am_scores, r.lm_scores, table, r.frame_shift, r.utterance_id,
        r.meta, scales=scales, scores=scores,
    )
    if r.awe_scores is not None:
        lat.fsa.awe_scores = r.awe_scores
    return lat


def save_word_lattices(
    path: Union[str, Path], lattices: Iterable[WordLattice], include_words: bool = True,
    min_posterior: Optional[float] = None, prune_scale: float = 1.0,
) -> Path:
    """Write a shard (format ``rescorer.formats.word_lattices``) atomically; all lattices must
    share one table.

    ``include_words=False`` stores only the table's digest: for many small shards next to
    one ``words.txt``; loading them then needs the table (checked by digest).
    ``min_posterior``: prune every lattice first (``prune(lat, min_posterior, prune_scale)``,
    as rescoring does; the decoder passes 1e-4); the file records it. None keeps every arc.
    """
    path = Path(path)
    lattices = list(lattices)
    if not lattices:
        raise WordLatticeError(f"{path}: no lattices to save")
    if min_posterior:
        lattices = [prune(lat, min_posterior, scale=prune_scale) for lat in lattices]
    words = lattices[0].words
    digest = table_digest(words)
    seen = set()
    for lat in lattices:
        validate(lat)
        if lat.words is not words and table_digest(lat.words) != digest:
            raise WordLatticeError(f"{path}: utterance {lat.utterance_id!r} uses a different symbol table")
        if lat.utterance_id in seen:
            raise WordLatticeError(f"{path}: duplicate utterance id {lat.utterance_id!r}")
        seen.add(lat.utterance_id)
    with_scores = not all(_scores_recomputable(lat) for lat in lattices)
    shard = WordLatticeShard(
        [_to_record(lat, with_scores) for lat in lattices], table_items(words) if include_words else None, digest,
        {"min_posterior": float(min_posterior), "scale": float(prune_scale)} if min_posterior else None,
    )
    try:
        return write_word_lattices(path, shard)
    except FormatError as e:
        raise WordLatticeError(str(e)) from None


def load_word_lattices(path: Union[str, Path], words=None) -> Dict[str, WordLattice]:
    """Read a shard -> {utterance_id: WordLattice}. With ``words``, the stored table must equal it.

    ``path`` may also be a directory of shards (``*.pt``, e.g. one per utterance as
    rescorer.lattice.pocketsphinx writes them); shards without a table then use the
    ``words.txt`` of the directory or of its parent unless ``words`` is given. A file that
    is not plain data raises ``rescorer.formats.UnsafeFileError`` and is never unpickled.
    """
    path = Path(path)
    if path.is_dir():
        import k2

        shards = sorted(path.glob("*.pt"))
        if not shards:
            raise WordLatticeError(f"{path}: no word-lattice shards (*.pt) in this directory")
        table_file = next((d / "words.txt" for d in (path, path.parent) if (d / "words.txt").exists()), None)
        if words is None and table_file is not None:
            words = k2.SymbolTable.from_file(str(table_file))
        out: Dict[str, WordLattice] = {}
        for shard in shards:
            part = load_word_lattices(shard, words)
            dup = set(part) & set(out)
            if dup:
                raise WordLatticeError(f"{shard}: utterance {sorted(dup)[0]!r} is also in another shard of {path}")
            out.update(part)
        return out
    try:
        shard = read_word_lattices(path)
    except UnsafeFileError:
        raise
    except FormatError as e:
        raise WordLatticeError(str(e)) from None
    items = shard.words
    if items is None:
        if words is None:
            raise WordLatticeError(f"{path}: the shard stores no symbol table (only its digest): pass words=")
        if shard.words_digest != table_digest(words):
            raise WordLatticeError(
                f"{path}: symbol table mismatch: the shard was written with table {shard.words_digest}, "
                f"the given table is {table_digest(words)}"
            )
        table = words
    elif words is not None:
        same = shard.words_digest == table_digest(words) if shard.words_digest else table_items(words) == items
        if not same:
            mine = dict((i, s) for s, i in table_items(words))
            theirs = dict((i, s) for s, i in items)
            diff = next((i for i in sorted(set(mine) | set(theirs)) if mine.get(i) != theirs.get(i)), None)
            raise WordLatticeError(
                f"{path}: symbol table mismatch: the shard has {len(items)} symbols, the given table {len(mine)}; "
                f"first difference at id {diff}: shard {theirs.get(diff)!r} vs given {mine.get(diff)!r}"
            )
        table = words
    else:
        table = _table_from_items(items)
    return {r.utterance_id: _from_record(r, table) for r in shard.records}
