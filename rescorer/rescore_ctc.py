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

Abstention on both views (``FusionConfig.evidence``; ``EvidenceGate``): every added arc gets
two pieces of evidence for its word over its span, and a gate keeps it only when both clear
their thresholds (tuned on dev):

- ``posterior``: the word's share of a softmax (temperature ``evidence_temperature``) of the
  span's cosines with every spelling of the lexicon and the list: how far the embedding puts
  the word ahead of all the others;
- ``ctc_margin``: the word's CTC log-likelihood per token over the span minus the best of its
  ``evidence_rivals`` rivals' (the lexicon and list words nearest the span by cosine): whether
  the letters prefer it among the words the embedding finds alike.

Why: each view alone separates right from wrong proposals poorly and in different places
(``benchmarks/oov_proposal_evidence.py`` on speechocean762 dev: average precision 0.13 for
the posterior, 0.14 for the CTC margin, 0.23 for their rank mean).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from rescorer.decoding.ctc_scores import (NORMS, CtcPosteriors, SpanScorer, arc_ctc_scores, lattice_spans, normalise,
                                          with_temperature)
from rescorer.decoding.word_spotting import SpellingTrie, SpottedWord, SpottingConfig, spot_batch
from rescorer.lattice.edit import add_arcs, extend_table, new_arc_mask
from rescorer.lattice.scores import oov_lm_arcs
from rescorer.lattice.span_arcs import arcs_over_spans
from rescorer.lattice.word_lattice import best_path_hypothesis
from rescorer.rescore import RescoreConfig, Rescorer, RescoreResult, distinct_arc_spans


@dataclass(frozen=True)
class FusionConfig:
    spotting: SpottingConfig = SpottingConfig()
    norms: Tuple[str, ...] = NORMS
    floor_per_token: float = -20.0  # CTC score per token of a spelling its span is too short for
    span_tolerance: float = 0.12  # seconds: how far a hit's ends may lie from the lattice arcs' ends
    evidence: bool = False  # compute the added arcs' evidence (module doc), for an EvidenceGate
    evidence_temperature: float = 0.05  # the posterior's softmax temperature (the benchmark's best single rule)
    evidence_rivals: int = 20  # the CTC margin's rivals: the words nearest the span by cosine


@dataclass(frozen=True)
class EvidenceGate:
    """Keeps an added arc only when its evidence clears both thresholds (None: that view not asked)."""

    min_posterior: Optional[float] = None
    min_ctc_margin: Optional[float] = None

    @property
    def active(self) -> bool:
        return self.min_posterior is not None or self.min_ctc_margin is not None

    def failing(self, evidence: Dict[str, torch.Tensor]) -> torch.Tensor:
        """bool [A]: the arcs this gate drops (evidence of arcs that were not added is +inf)."""
        drop = torch.zeros_like(evidence["posterior"], dtype=torch.bool)
        if self.min_posterior is not None:
            drop |= evidence["posterior"] < self.min_posterior
        if self.min_ctc_margin is not None:
            drop |= evidence["ctc_margin"] < self.min_ctc_margin
        return drop

    def to_dict(self) -> Dict[str, Optional[float]]:
        return {"oov_min_posterior": self.min_posterior, "oov_min_ctc_margin": self.min_ctc_margin}



@dataclass
class FusedLattice:
    lattice: object
    awe: torch.Tensor
    ctc: Dict[str, torch.Tensor]  # normalisation -> per-arc CTC score
    hits: List[SpottedWord] = field(default_factory=list)
    hit_arcs: int = 0  # spotted words added as arcs
    seconds: float = 0.0
    evidence: Optional[Dict[str, torch.Tensor]] = None  # "posterior", "ctc_margin": per arc, +inf unless added
    _gated: Dict[EvidenceGate, object] = field(default_factory=dict, repr=False)

    def gated(self, gate: Optional[EvidenceGate] = None):
        """The lattice with the added arcs ``gate`` drops taken out of every path (score -inf)."""
        if gate is None or not gate.active:
            return self.lattice
        if self.evidence is None:
            raise ValueError("an evidence gate needs the added arcs' evidence (FusionConfig(evidence=True))")
        if gate not in self._gated:
            drop = gate.failing(self.evidence)
            lat = self.lattice
            if bool(drop.any()):
                fsa = lat.fsa.clone()
                fsa.am_scores = torch.where(drop.to(fsa.am_scores.device), torch.full_like(fsa.am_scores, float("-inf")),
                                            fsa.am_scores)
                lat = replace(lat, fsa=fsa)
            self._gated[gate] = lat
        return self._gated[gate]

    def decode(self, rescorer: Rescorer, config, norm: str, gate: Optional[EvidenceGate] = None) -> List[str]:
        scored = rescorer.apply_scores(self.gated(gate), self.awe, config, self.ctc[norm])
        return [w.word for w in best_path_hypothesis(scored).words]


@torch.no_grad()
def added_arc_evidence(rc: Rescorer, lat, feats: torch.Tensor, scorer: SpanScorer, ctc_frame_shift: float,
                       temperature: float, rivals: int) -> Dict[str, torch.Tensor]:
    """The module doc's ``posterior`` and ``ctc_margin`` of every added arc (``oov_lm_arcs``) of a
    lattice on the list's table; +inf on the other arcs (no gate drops them)."""
    fsa = lat.fsa
    n = int(fsa.labels.shape[0])
    out = {"posterior": torch.full((n,), float("inf")), "ctc_margin": torch.full((n,), float("inf"))}
    added = oov_lm_arcs(fsa)
    if added is None or not bool(added.any()):
        return out
    arcs = added.nonzero().flatten()
    words = [lat.words.get(int(fsa.labels[a])) for a in arcs.tolist()]
    keys, inverse = distinct_arc_spans(lat, arcs, int(feats.shape[0]), rc.frame_shift)  # each span embedded once
    q = F.normalize(rc.span_embeddings(feats, [tuple(k) for k in keys.tolist()]).float(), dim=-1)
    ids, index = rc.spelling_index(lat.words)  # every real word of the table: the lexicon and the list
    names = [lat.words.get(int(i)) for i in ids.tolist()]
    column = {w: j for j, w in enumerate(names)}
    cos = (q.to(index.vocab.device) @ index.vocab.T).float().cpu()[inverse]  # [arcs, words]
    own = torch.tensor([column.get(w, -1) for w in words])
    own_cos = (F.normalize(rc.spelling_embeddings(words).float(), dim=-1).cpu() * q.cpu()[inverse]).sum(-1)
    if bool((own >= 0).any()):
        cos[(own >= 0).nonzero().flatten(), own[own >= 0]] = -2.0  # the word itself is no rival
    post = torch.softmax(torch.cat([cos, own_cos[:, None]], 1) / temperature, dim=1)[:, -1]
    k = min(int(rivals), cos.shape[1])
    top = torch.topk(cos, k, dim=1).indices
    cand_words, cand_spans = [], []
    ctc_spans = lattice_spans(fsa.start_frame[arcs], fsa.end_frame[arcs], lat.frame_shift, ctc_frame_shift,
                              scorer.num_frames)
    for i, w in enumerate(words):
        cand_words += [w] + [names[j] for j in top[i].tolist()]
        cand_spans.append(ctc_spans[i].expand(1 + k, 2))
    ll, frames, tokens = scorer.scores(torch.cat(cand_spans), cand_words)
    per_token = normalise(ll, frames, tokens, "token").reshape(len(words), 1 + k)
    margin = per_token[:, 0] - (per_token[:, 1:].max(1).values if k else 0.0)
    out["posterior"][arcs] = post.float()
    out["ctc_margin"][arcs] = margin.float()
    return out


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
        for (lat, awe, _), f, lp, h, k in zip(rc.embedding_scores_batch(lats, feats, recover=recover), feats, log_probs,
                                              hits, n_hit_arcs):
            scorer = SpanScorer(lp, c.floor_per_token)
            ctc = arc_ctc_scores(lat, scorer, self.posteriors.frame_shift, c.norms)
            evidence = None
            if recover and c.evidence:
                evidence = added_arc_evidence(rc, lat, f, scorer, self.posteriors.frame_shift, c.evidence_temperature,
                                              c.evidence_rivals)
            out.append(FusedLattice(lat, awe, ctc, h, k, evidence=evidence))
        share = (time.perf_counter() - t0) / max(1, n)
        for f in out:
            f.seconds = share
        return out

    def rescore_batch(self, lats: Sequence, feats: Sequence[torch.Tensor], log_probs: Sequence[torch.Tensor],
                      config: Optional[RescoreConfig] = None, recover: bool = False) -> List[RescoreResult]:
        """The fused rescoring of several utterances under a tuned config (the rescorer's own by
        default: ``ctc_scale``, ``ctc_norm`` and ``ctc_temperature`` as ``awe_ctc_rescore`` chose
        them), as ``Rescorer.rescore_batch`` gives embedding rescoring's: scored lattice, best path,
        its words' posteriors, the added words on it. ``log_probs``: the model's own (the
        temperature is applied here)."""
        c = config or self.rescorer.config
        if c.ctc_norm is None:
            raise ValueError("this config was not tuned for the CTC fusion (no ctc_norm): rescorer tune --methods "
                             "awe_ctc_rescore --save-config writes one")
        if c.ctc_norm not in self.config.norms:
            raise ValueError(f"the fusion computes CTC scores normalised by {', '.join(self.config.norms)}, "
                             f"not {c.ctc_norm!r}")
        scaled = [with_temperature(lp, c.ctc_temperature) for lp in log_probs]
        out = []
        for given, fused in zip(lats, self.prepare_batch(lats, feats, scaled, recover)):
            out.append(self.rescorer.result(given, fused.lattice, fused.awe, _added_spans(fused.lattice), c,
                                            fused.ctc[c.ctc_norm]))
        return out


def _added_spans(lat) -> List[Tuple[str, float, float]]:
    """(word, start, end) in seconds of the arcs recovery or the spotter added (``oov_lm_arcs``)."""
    fsa = lat.fsa
    added = oov_lm_arcs(fsa)
    if added is None:
        return []
    idx = added.nonzero().flatten().tolist()
    return [(lat.words.get(int(fsa.labels[i])), float(fsa.start_frame[i]) * lat.frame_shift,
             float(fsa.end_frame[i]) * lat.frame_shift) for i in idx]
