"""Word spans from k2 token-level (HLG) lattices -> a WordLattice.

Input: a k2 ``Fsa`` (one utterance) with ``labels`` = token ids (0 = blank / epsilon,
-1 on final arcs), ``aux_labels`` = word ids (0 = none; a word's id sits on ONE arc, the
first token arc of the word: its *word-bearing arc*), per-arc int32 ``frames`` (the frame
the arc consumes), ``am_scores`` and ``lm_scores`` (natural log). ``scores`` are not used:
paths are compared by ``am_scale * am + lm_scale * lm`` (the given scales).

Span rule (exact per token path):

- a word starts at the frame of its word-bearing arc;
- ``end_rule="last_token"`` (default): it ends one frame after the last non-blank token
  arc before the next word-bearing arc (or before the final arc), so trailing blanks /
  silence are not part of the word;
  ``end_rule="next_word"``: it ends where the next word starts (the frame of the next
  word-bearing arc; for the last word, the frame of the final arc).
- blanks before the first word become an epsilon arc (label 0) spanning
  [first frame, first word start); its scores are kept.

Algorithm (exact traversal with state splitting, no n-best): word-level states are the
token states from which a word-bearing arc leaves, plus a start and a final state. For
every word-bearing arc ``a`` from token state u, a Viterbi search follows the arcs without
a word (aux label 0) from a's destination, keyed by (token state, end frame); whenever it
reaches a token state v that has word-bearing arcs it emits a word arc u -> v (and keeps
going along word-less arcs), and a final arc ends it. Token sub-paths that give the same
(word-bearing arc, next state, end frame) are merged by the max score (tropical semiring),
so every token path maps to a word path with its own exact spans, and two token paths on
which the same word ends at different frames give two word arcs. The best word path has
the best token path's score. The search visits at most ``max_expansions`` (state, end)
pairs in all, else WordLatticeError.
"""

from __future__ import annotations

import heapq
from typing import Dict, List, Optional, Tuple

from rescorer.lattice.word_lattice import WordLattice, WordLatticeError, build_word_lattice

START = ("start",)
FINAL = ("final",)


def _get(fsa, name: str, where: str):
    if not hasattr(fsa, name):
        raise WordLatticeError(f"{where}: token lattice has no {name!r} attribute")
    return getattr(fsa, name)


def word_lattice_from_token_lattice(
    token_lattice,
    words,
    *,
    frame_shift: float,
    utterance_id: str = "",
    end_rule: str = "last_token",
    am_scale: float = 1.0,
    lm_scale: float = 1.0,
    word_insertion_penalty: float = 0.0,
    max_expansions: int = 2_000_000,
) -> WordLattice:
    """Build the word-level WordLattice (with exact per-path spans) of a token lattice."""
    import k2

    where = f"utterance {utterance_id!r}" if utterance_id else "token lattice"
    if end_rule not in ("last_token", "next_word"):
        raise ValueError("end_rule must be 'last_token' or 'next_word'")
    fsa = token_lattice
    if len(fsa.shape) == 3:
        if fsa.shape[0] != 1:
            raise WordLatticeError(f"{where}: expected one utterance, got an FsaVec of {fsa.shape[0]}")
        fsa = fsa[0]
    for name in ("aux_labels", "frames", "am_scores", "lm_scores"):
        _get(fsa, name, where)
    if not isinstance(fsa.aux_labels, __import__("torch").Tensor):
        raise WordLatticeError(f"{where}: aux_labels must be a plain tensor (one word id per arc)")
    fsa = k2.top_sort(k2.connect(fsa))
    if fsa.arcs.values().shape[0] == 0:
        raise WordLatticeError(f"{where}: empty token lattice")
    arcs = fsa.arcs.values()[:, :3].tolist()
    aux = fsa.aux_labels.tolist()
    frames = fsa.frames.tolist()
    am = fsa.am_scores.tolist()
    lm = fsa.lm_scores.tolist()
    n_states = int(fsa.shape[0])
    out: List[List[int]] = [[] for _ in range(n_states)]
    for k, (s, _, _) in enumerate(arcs):
        out[s].append(k)
    word_out = [[k for k in out[s] if aux[k] > 0] for s in range(n_states)]
    word_frame = [min((frames[k] for k in ws), default=None) for ws in word_out]

    def sc(a: float, l: float) -> float:
        return am_scale * a + lm_scale * l

    budget = [max_expansions]
    # emitted word-level arcs: key (src_key, dst_key, label, start, end) -> (score, am, lm)
    emitted: Dict[Tuple, Tuple[float, float, float]] = {}

    def emit(key, am_, lm_):
        s = sc(am_, lm_)
        old = emitted.get(key)
        if old is None or s > old[0]:
            emitted[key] = (s, am_, lm_)

    def search(src_key, label: int, start: int, init_state: int, init_end: Optional[int], am0: float, lm0: float):
        """Viterbi over word-less arcs from init_state; emits word-level arcs."""
        best: Dict[Tuple[int, Optional[int]], Tuple[float, float, float]] = {(init_state, init_end): (sc(am0, lm0), am0, lm0)}
        heap = [(init_state, -1 if init_end is None else init_end)]
        done = set()
        while heap:
            s, e = heapq.heappop(heap)
            e = None if e == -1 else e
            if (s, e) in done:
                continue
            done.add((s, e))
            budget[0] -= 1
            if budget[0] < 0:
                raise WordLatticeError(f"{where}: more than {max_expansions} search steps building word spans")
            _, a_, l_ = best[(s, e)]
            if word_out[s]:
                if label == 0:
                    end = word_frame[s]
                elif end_rule == "next_word":
                    end = word_frame[s]
                else:
                    end = e + 1
                emit((src_key, s, label, start, end), a_, l_)
            for k in out[s]:
                if aux[k] > 0:
                    continue
                _, d, tok = arcs[k]
                if tok == -1:
                    if label == 0:
                        end = frames[k]
                    elif end_rule == "next_word":
                        end = frames[k]
                    else:
                        end = e + 1
                    emit((src_key, FINAL, label, start, max(end, start)), a_ + am[k], l_ + lm[k])
                    continue
                ne = frames[k] if (tok > 0 and label != 0) else e
                cand = (sc(a_ + am[k], l_ + lm[k]), a_ + am[k], l_ + lm[k])
                old = best.get((d, ne))
                if old is None or cand[0] > old[0]:
                    best[(d, ne)] = cand
                    heapq.heappush(heap, (d, -1 if ne is None else ne))

    first_frame = min(frames[k] for k in out[0]) if out[0] else 0
    search(START, 0, first_frame, 0, None, 0.0, 0.0)
    for s in range(n_states):
        for k in word_out[s]:
            _, d, tok = arcs[k]
            if tok == -1:
                raise WordLatticeError(f"{where}: a word id on a final arc (arc {k})")
            search(s, aux[k], frames[k], d, frames[k], am[k], lm[k])
    if not emitted:
        raise WordLatticeError(f"{where}: no path through the token lattice")
    wl_arcs = [(src, dst, lab, st, en, a_, l_) for (src, dst, lab, st, en), (_, a_, l_) in emitted.items()]
    if any(lab > 0 and lab not in words for _, _, lab, *_ in wl_arcs):
        bad = next(lab for _, _, lab, *_ in wl_arcs if lab > 0 and lab not in words)
        raise WordLatticeError(f"{where}: word id {bad} is not in the symbol table")
    return build_word_lattice(
        wl_arcs, words, frame_shift=frame_shift, final_states=[FINAL], start_state=START, utterance_id=utterance_id,
        am_scale=am_scale, lm_scale=lm_scale, word_insertion_penalty=word_insertion_penalty,
        meta={"source": "token_lattice", "end_rule": end_rule},
    )


def word_lattices_from_token_lattices(token_lattices, words, *, frame_shift: float, utterance_ids=None, **kw) -> List[WordLattice]:
    """``word_lattice_from_token_lattice`` for every utterance of a k2 FsaVec (ids in order)."""
    n = token_lattices.shape[0] if len(token_lattices.shape) == 3 else 1
    ids = list(utterance_ids) if utterance_ids is not None else [str(i) for i in range(n)]
    if len(ids) != n:
        raise WordLatticeError(f"{len(ids)} utterance ids for {n} token lattices")
    if len(token_lattices.shape) == 2:
        return [word_lattice_from_token_lattice(token_lattices, words, frame_shift=frame_shift, utterance_id=ids[0], **kw)]
    return [
        word_lattice_from_token_lattice(token_lattices[i], words, frame_shift=frame_shift, utterance_id=ids[i], **kw)
        for i in range(n)
    ]
