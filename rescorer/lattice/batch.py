"""Many word lattices decoded again and again under other score combinations (a tuning grid).

Decoding one lattice at a time (``with_scores`` + ``best_path_hypothesis``) clones its k2
Fsa with every attribute, builds a one-lattice FsaVec and lets k2 recompute the topology
(incoming arcs, state batches) for every grid point; with a few thousand arcs per lattice
that Python and k2 bookkeeping costs more than the search. ``LatticeBatch`` does it once:
the lattices' arcs are joined into one FsaVec carrying only its scores and each arc's index,
the per-arc columns are concatenated, and each decode is one vectorised score combination
(``scores.arc_scores``, the function ``with_scores`` uses, so the scores are the same bits)
and one ``k2.shortest_path`` over all lattices. Setting an Fsa's scores drops only k2's
score caches, so the topology is computed for the first decode only. The best paths equal
those of one lattice at a time (tested).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from rescorer.lattice.scores import Scales, arc_scores


class LatticeBatch:
    """Lattices (``WordLattice``) with optional per-arc embedding scores (``awe``, one tensor
    per lattice, or None for none), decoded together (module doc)."""

    def __init__(self, lattices: Sequence, awe: Optional[Sequence[torch.Tensor]] = None):
        import k2

        self.lattices = list(lattices)
        if not self.lattices:
            raise ValueError("LatticeBatch needs at least one lattice")
        if awe is not None and len(awe) != len(self.lattices):
            raise ValueError(f"{len(self.lattices)} lattices but {len(awe)} awe score vectors")
        fsas = [lat.fsa for lat in self.lattices]
        sizes = [int(f.arcs.values().shape[0]) for f in fsas]
        for lat, n, i in zip(self.lattices, sizes, range(len(sizes))):
            if awe is not None and int(awe[i].shape[0]) != n:
                raise ValueError(f"lattice {lat.utterance_id or i}: {n} arcs but {int(awe[i].shape[0])} awe scores")
        # only the arcs travel into the FsaVec (k2.Fsa of a lattice's arcs has no other attribute)
        self.vec = k2.create_fsa_vec([k2.Fsa(f.arcs) for f in fsas])
        total = sum(sizes)
        self.vec.arc_index = torch.arange(total, dtype=torch.int32)
        self.utterance_of_arc = torch.repeat_interleave(torch.arange(len(fsas)), torch.tensor(sizes))
        self.labels = torch.cat([f.labels for f in fsas])
        self.am = torch.cat([f.am_scores for f in fsas])
        self.lm = torch.cat([f.lm_scores for f in fsas])
        self.awe = None if awe is None else torch.cat([a.to(torch.float32).cpu() for a in awe])
        oov = [getattr(f, "oov_lm_arcs", None) for f in fsas]
        self.oov_lm = None if all(m is None for m in oov) else torch.cat(
            [torch.zeros(n, dtype=torch.bool) if m is None else m.bool() for m, n in zip(oov, sizes)])
        adv = [getattr(f, "oov_advantage", None) for f in fsas]
        self._has_advantage = [a is not None for a in adv]
        dtype = next((a.dtype for a in adv if a is not None), torch.float32)
        # lattices without recovery evidence are never dropped: +inf beats any required margin
        self.advantage = None if not any(self._has_advantage) else torch.cat(
            [torch.full((n,), float("inf"), dtype=dtype) if a is None else a.to(dtype) for a, n in zip(adv, sizes)])
        self.sizes = sizes
        self._words: dict = {}  # id(table) -> (table, {label: word})

    def __len__(self) -> int:
        return len(self.lattices)

    def scores(self, scales: Scales, oov_lm_score: Optional[float] = None,
               min_oov_advantage: Optional[Sequence[Optional[float]]] = None) -> torch.Tensor:
        """float32 scores of every arc (lattice after lattice), as ``with_scores`` gives each
        lattice; ``min_oov_advantage``: one required margin per lattice (None: none dropped)."""
        threshold = None
        if self.advantage is not None and min_oov_advantage is not None:
            if len(min_oov_advantage) != len(self.lattices):
                raise ValueError(f"{len(min_oov_advantage)} margins for {len(self.lattices)} lattices")
            per_lattice = torch.tensor([float("-inf") if m is None else float(m) for m in min_oov_advantage],
                                       dtype=self.advantage.dtype)
            threshold = per_lattice[self.utterance_of_arc]
        return arc_scores(scales, self.am, self.lm, self.labels, self.awe, oov_lm=self.oov_lm, oov_lm_score=oov_lm_score,
                          advantage=self.advantage, min_advantage=threshold)

    def _best_path_arcs(self, scores: torch.Tensor):
        """(arc indices into the batch of every best path's arcs, lattice after lattice and in
        path order; how many of them each lattice has)."""
        import k2

        self.vec.scores = scores
        arcs = k2.shortest_path(self.vec, use_double_scores=True).arc_index.long()
        return arcs, torch.bincount(self.utterance_of_arc[arcs], minlength=len(self.lattices)).tolist()

    def best_arcs(self, scores: torch.Tensor) -> List[torch.Tensor]:
        """Each lattice's best path under ``scores`` (``scores()``'s layout) as its own arc
        indices, in path order."""
        arcs, counts = self._best_path_arcs(scores)
        offsets = [0]
        for n in self.sizes[:-1]:
            offsets.append(offsets[-1] + n)
        return [a - o for a, o in zip(arcs.split(counts), offsets)]

    def best_words(self, scales: Scales, oov_lm_score: Optional[float] = None,
                   min_oov_advantage: Optional[Sequence[Optional[float]]] = None) -> List[List[str]]:
        """The words (fillers dropped) of each lattice's best path under these scores."""
        arcs, counts = self._best_path_arcs(self.scores(scales, oov_lm_score, min_oov_advantage))
        labels = self.labels[arcs].tolist()
        out, start = [], 0
        for lat, n in zip(self.lattices, counts):
            out.append([self._word(lat.words, x) for x in labels[start:start + n] if x > 0])
            start += n
        return out

    def _word(self, table, label: int) -> str:
        hit = self._words.get(id(table))
        if hit is None or hit[0] is not table:
            hit = self._words[id(table)] = (table, {})
        names = hit[1]
        if label not in names:
            names[label] = table.get(label)
        return names[label]
