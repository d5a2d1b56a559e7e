"""New word arcs over given time spans, joined to a lattice's existing states.

A word found outside the lattice (e.g. by CTC word spotting) has a span but no states.
``arcs_over_spans`` places it between the source state of a word arc that starts near the
span's start and the destination state of a word arc that ends near its end (within
``tolerance`` frames; the closest pair, by summed distance, that a path joins). States are
numbered topologically, so an arc from an earlier to a later state keeps the lattice
acyclic and on a start-to-final path. Its acoustic score is the best acoustic score of the
existing paths between those states (what the lattice already says about that audio);
the caller gives the LM score. Spans with no such pair are skipped.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch


def _best_am_between(arcs: List[Tuple[int, int, float]], a: int, b: int) -> float:
    """Highest summed acoustic score of a path from state ``a`` to ``b`` (arcs sorted by source)."""
    best: Dict[int, float] = {a: 0.0}
    for s, d, am in arcs:
        if s < a or d > b or s not in best:
            continue
        v = best[s] + am
        if v > best.get(d, -math.inf):
            best[d] = v
    return best.get(b, -math.inf)


def _states_near(states: torch.Tensor, dist: torch.Tensor, tolerance: int) -> Dict[int, int]:
    near: Dict[int, int] = {}
    for st, d in zip(states.tolist(), dist.tolist()):
        if d <= tolerance and d < near.get(st, tolerance + 1):
            near[st] = d
    return near


def arcs_over_spans(lat, spans: Sequence[Tuple[int, int]], tolerance: int):
    """For each span ``(start, end)`` in lattice frames: ``(src, dst, am)`` of the new arc, or None (module doc)."""
    fsa = lat.fsa
    a3 = fsa.arcs.values()[:, :3].long()
    src, dst, lab = a3[:, 0], a3[:, 1], a3[:, 2]
    word = lab > 0
    sf, ef = fsa.start_frame.long(), fsa.end_frame.long()
    order = torch.argsort(src, stable=True)
    arc_list = list(zip(src[order].tolist(), dst[order].tolist(), fsa.am_scores.double()[order].tolist()))
    final = lat.num_states - 1
    out = []
    for s, e in spans:
        starts = _states_near(src[word], (sf[word] - int(s)).abs(), tolerance)
        ends = _states_near(dst[word], (ef[word] - int(e)).abs(), tolerance)
        pairs = sorted(((ds + de, a, b) for a, ds in starts.items() for b, de in ends.items() if a < b and b != final))
        found = None
        for _, a, b in pairs:
            am = _best_am_between(arc_list, a, b)
            if math.isfinite(am):
                found = (a, b, am)
                break
        out.append(found)
    return out
