"""Embedding rescoring fused with the CTC spelling score, and OOV recovery from both.

``CtcFusion.prepare_batch`` does, for a batch of utterances, the work that does not depend
on the scales (so a grid then only recombines per-arc scores):

1. the CTC log-probs (``decoding.ctc_scores.CtcPosteriors``) are computed once;
2. with ``recover`` and a word list: the CTC word spotter's hits (``decoding.word_spotting
   .spot_batch``, all utterances in one frame loop) are added as arcs over their spans
   (``lattice.span_arcs``: between the states nearest the hit's ends, the best acoustic
   score of the paths they replace, the recovered-word LM cost ``oov_lm_score``, marked
   like recovery's arcs so that cost is tuned with the scales), then the embedding's
   nearest spellings (``Rescorer`` OOV recovery, searching the same list);
3. every word arc gets its embedding score (``awe``; the batch's spans embedded together,
   ``Rescorer.embedding_scores_batch``) and its CTC spelling score over its span (``ctc``,
   each normalisation of ``ctc_scores.NORMS``, each (span, word) once).

Scores combine as ``am + lm_scale lm + wip + awe_scale awe + ctc_scale ctc``
(``lattice.scores``); ``FusedLattice.decode`` gives the best path under a config and a
normalisation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from rescorer.decoding.ctc_scores import NORMS, CtcPosteriors, SpanScorer, arc_ctc_scores
from rescorer.decoding.word_spotting import SpellingTrie, SpottedWord, SpottingConfig, spot_batch
from rescorer.lattice.edit import add_arcs, extend_table, new_arc_mask
from rescorer.lattice.span_arcs import arcs_over_spans
from rescorer.lattice.word_lattice import best_path_hypothesis
from rescorer.rescore import Rescorer


@dataclass(frozen=True)
class FusionConfig:
    spotting: SpottingConfig = SpottingConfig()
    norms: Tuple[str, ...] = NORMS
    floor_per_token: float = -20.0  # CTC score per token of a spelling its span is too short for
    span_tolerance: float = 0.12  # seconds: how far a hit's ends may lie from the lattice arcs' ends


@dataclass
class FusedLattice:
    lattice: object
    awe: torch.Tensor
    ctc: Dict[str, torch.Tensor]  # normalisation -> per-arc CTC score
    hits: List[SpottedWord] = field(default_factory=list)
    hit_arcs: int = 0  # spotted words added as arcs
    seconds: float = 0.0

    def decode(self, rescorer: Rescorer, config, norm: str) -> List[str]:
        scored = rescorer.apply_scores(self.lattice, self.awe, config, self.ctc[norm])
        return [w.word for w in best_path_hypothesis(scored).words]


def add_spotted_arcs(lat, hits: Sequence[SpottedWord], ctc_frame_shift: float, oov_lm_score: float,
                     tolerance_seconds: float = 0.12):
    """(lattice, number added): spotted words as arcs over their spans (module doc); the
    lattice's table is extended by words it lacks; an existing (src, dst, word) is not repeated."""
    if not hits:
        return lat, 0
    r = ctc_frame_shift / lat.frame_shift
    spans = [(int(round(h.start * r)), int(round(h.end * r))) for h in hits]
    tol = max(1, int(round(tolerance_seconds / lat.frame_shift)))
    placed = arcs_over_spans(lat, spans, tol)
    keep = [i for i, p in enumerate(placed) if p is not None]
    if not keep:
        return lat, 0
    table = lat.words
    missing = [hits[i].word for i in keep if hits[i].word not in table]
    if missing:
        table, _ = extend_table(table, list(dict.fromkeys(missing)))
    rows = torch.tensor([[placed[i][0], placed[i][1], int(table[hits[i].word])] for i in keep], dtype=torch.long)
    am = torch.tensor([placed[i][2] for i in keep], dtype=torch.float32)
    new = new_arc_mask(lat.fsa.arcs.values()[:, :3].long(), rows, lat.num_states)
    if not bool(new.any()):
        return lat, 0
    idx = torch.tensor(keep)[new]
    sp = torch.tensor(spans, dtype=torch.int32)[idx]
    n = int(new.sum())
    attrs = {"start_frame": sp[:, 0], "end_frame": torch.maximum(sp[:, 1], sp[:, 0] + 1), "am_scores": am[new],
             "lm_scores": torch.full((n,), float(oov_lm_score)), "oov_lm_arcs": torch.ones(n, dtype=torch.bool)}
    return add_arcs(lat, rows[new], attrs, table), n


class CtcFusion:
    """A Rescorer (embedder + scales), a CTC model's posteriors and an optional word list."""

    def __init__(self, rescorer: Rescorer, posteriors: CtcPosteriors, word_list: Optional[Sequence[str]] = None,
                 config: FusionConfig = FusionConfig()):
        self.rescorer = rescorer
        self.posteriors = posteriors
        self.config = config
        self.trie = SpellingTrie(word_list) if word_list else None
        if word_list:
            rescorer.set_vocabulary(list(word_list))  # nearest spellings come from the same list

    def prepare(self, lat, feats: torch.Tensor, log_probs: torch.Tensor, recover: bool = False) -> FusedLattice:
        """The per-arc scores of one utterance (``prepare_batch`` of one)."""
        return self.prepare_batch([lat], [feats], [log_probs], recover)[0]

    def prepare_batch(self, lats: Sequence, feats: Sequence[torch.Tensor], log_probs: Sequence[torch.Tensor],
                      recover: bool = False) -> List[FusedLattice]:
        """The per-arc scores of several utterances (module doc); ``log_probs`` from ``posteriors``.
        Each result's ``seconds`` is its share of the batch's time."""
        t0 = time.perf_counter()
        c = self.config
        rc = self.rescorer
        n = len(lats)
        hits: List[List[SpottedWord]] = [[] for _ in range(n)]
        n_hit_arcs = [0] * n
        if recover:
            if self.trie is None:
                raise ValueError("OOV recovery with CTC fusion needs a word list")
            hits = spot_batch(log_probs, self.trie, c.spotting)
            placed = []
            for i, (lat, h) in enumerate(zip(lats, hits)):
                table, _ = rc.word_list_table(lat.words)  # the list's words: spotted arcs need no new table
                lat, n_hit_arcs[i] = add_spotted_arcs(replace(lat, words=table), h, self.posteriors.frame_shift,
                                                      rc.config.oov_lm_score, c.span_tolerance)
                placed.append(lat)
            lats = placed
        out = []
        for (lat, awe, _), lp, h, k in zip(rc.embedding_scores_batch(lats, feats, recover=recover), log_probs, hits,
                                           n_hit_arcs):
            ctc = arc_ctc_scores(lat, SpanScorer(lp, c.floor_per_token), self.posteriors.frame_shift, c.norms)
            out.append(FusedLattice(lat, awe, ctc, h, k))
        share = (time.perf_counter() - t0) / max(1, n)
        for f in out:
            f.seconds = share
        return out
