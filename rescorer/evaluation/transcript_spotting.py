"""A second recogniser's list words spotted into the embedding-rescored 1-best, gated by the
embedder and tuned on dev (``rescorer tune --methods awe_whisper_context_list,...``).

Per utterance (``spot_all``): the rescored best path (words with spans) and the second
recogniser's transcript give the hits (``decoding.transcript_spotting``); each hit carries two
pieces of evidence: the embedder's cosine between its span's audio and its spelling (a span
too short to embed scores -inf), and the recogniser's own confidence in the word (the
transcript's, NaN where it has none). A gate is a pair of thresholds (``HitGate``; None: no
threshold) and keeps the hits that reach both. Why both: on speechocean762 dev the
recogniser's confidence separates its right list words from its wrong ones far better than
the cosine (AUC 0.79 against 0.60 on the context list), and the cosine still vetoes hits
whose audio does not sound like the word. ``tune_gate`` picks the pair on dev by the
keep-or-abstain rule of the other recovery methods (``evaluation.rescoring.choose_recovery``): the hits must lower the dev WER against
the same rescoring without them (or, with ``min_precision``, reach that precision without
raising it), else the method abstains and adds nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch

from rescorer.decoding.transcript_spotting import TranscriptHit, apply_hits, spot_transcript
from rescorer.evaluation.rescoring import added_counts, choose_recovery
from rescorer.lattice.paths import WordSpan
from rescorer.metrics import NoPositivePairsError, average_precision, roc_auc
from rescorer.ops import arc_similarity
from rescorer.wer import compute_wer


class HitGate(NamedTuple):
    """The least cosine and the least recogniser confidence a hit needs (None: no threshold;
    an unknown, NaN, confidence fails any confidence threshold)."""
    cosine: Optional[float] = None
    confidence: Optional[float] = None

    def keeps(self, cosine: float, confidence: float) -> bool:
        return ((self.cosine is None or cosine >= self.cosine)
                and (self.confidence is None or (not math.isnan(confidence) and confidence >= self.confidence)))

    def as_row(self) -> dict:
        return {"gate": self.cosine, "confidence_gate": self.confidence}


@dataclass
class SpottedUtterance:
    hyp: List[WordSpan]  # the rescored best path
    hits: List[TranscriptHit] = field(default_factory=list)
    cosines: List[float] = field(default_factory=list)  # the embedder's evidence for each hit
    confidences: List[float] = field(default_factory=list)  # the recogniser's (NaN: unknown); empty: none known

    def kept(self, gate: HitGate) -> List[TranscriptHit]:
        conf = self.confidences or [math.nan] * len(self.hits)
        return [h for h, c, q in zip(self.hits, self.cosines, conf) if gate.keeps(c, q)]

    def words(self, gate: HitGate) -> List[str]:
        """The hypothesis with the hits ``gate`` keeps in place."""
        return [w.word for w in self.spotted(gate)[0]]

    def spotted(self, gate: HitGate):
        return apply_hits(self.hyp, self.kept(gate))


def hit_cosines(rescorer, feats: torch.Tensor, hits: Sequence[TranscriptHit]) -> List[float]:
    """The embedder's cosine of each hit's spelling with its span's audio (-inf: under one feature
    frame, or no span: a path without times)."""
    out = [-math.inf] * len(hits)
    shift, n = rescorer.frame_shift, int(feats.shape[0])
    spans, idx = [], []
    for i, h in enumerate(hits):
        if not (math.isfinite(h.start) and math.isfinite(h.end)):
            continue
        s, e = int(round(h.start / shift)), min(n, int(round(h.end / shift)))
        if e > s:
            spans.append((s, e))
            idx.append(i)
    if spans:
        q = rescorer.span_embeddings(feats, spans).float()
        w = rescorer.spelling_embeddings([hits[i].word for i in idx]).float()
        pairs = torch.arange(len(idx), device=q.device).repeat(2, 1).T  # hit j: span j, word j
        for i, c in zip(idx, arc_similarity(q, w.to(q.device), pairs, metric="cosine").cpu().tolist()):
            out[i] = float(c)
    return out


def spot_all(rescorer, hyps: Dict[str, List[WordSpan]], transcripts: Dict[str, List[str]], words,
             feats: Dict[str, torch.Tensor], min_letters: int = 4,
             confidences: Optional[Dict[str, List[float]]] = None) -> Dict[str, SpottedUtterance]:
    """Every utterance of ``hyps`` with its hits, their cosines and (from ``confidences``, the
    transcripts' per-word confidences) the recogniser's confidence in each; an utterance
    without a transcript gets no hits."""
    words = set(words)
    confidences = confidences or {}
    out = {}
    for u in sorted(hyps):
        hits = spot_transcript(hyps[u], transcripts.get(u, []), words, min_letters)
        conf = confidences.get(u)
        out[u] = SpottedUtterance(list(hyps[u]), hits, hit_cosines(rescorer, feats[u], hits) if hits else [],
                                  [conf[h.source] if conf is not None and 0 <= h.source < len(conf) else math.nan
                                   for h in hits])
    return out


def tune_gate(spotted: Dict[str, SpottedUtterance], refs: Dict[str, List[str]], gates: Sequence[Optional[float]],
              train_vocab=None, min_precision: Optional[float] = None, max_p: Optional[float] = None,
              confidence_gates: Sequence[Optional[float]] = (None,)):
    """(the chosen ``HitGate``, or ``"abstained"``; curve rows): one row per pair of a cosine
    gate (``gates``) and a confidence gate (``confidence_gates``), with WER and ``added_counts``
    against the hypotheses without hits, then the choice by ``choose_recovery`` against the
    row without hits (``gate: "off"``; ``max_p``: its sign test over dev utterances)."""
    uids = sorted(spotted)
    r = [refs[u] for u in uids]
    without = [[w.word for w in spotted[u].hyp] for u in uids]
    off = compute_wer(r, without, train_vocab)
    base_row = {"gate": "off", "confidence_gate": "off", "wer": off["wer"], "iv_wer": off.get("iv_wer"), "oov_wer": off.get("oov_wer")}
    rows, grid = [], [HitGate(g, q) for q in confidence_gates for g in gates]
    for gate in grid:
        hyps = [spotted[u].words(gate) for u in uids]
        m = compute_wer(r, hyps, train_vocab)
        rows.append({**gate.as_row(), "wer": m["wer"], "iv_wer": m.get("iv_wer"), "oov_wer": m.get("oov_wer"),
                     **added_counts(r, without, hyps, train_vocab)})
    pick = choose_recovery(base_row, rows, min_precision, max_p)
    if pick is None:
        base_row["chosen"] = True
        return "abstained", [base_row] + rows
    rows[pick]["chosen"] = True
    return grid[pick], [base_row] + rows


def hit_evidence(spotted_sets: Sequence[Dict[str, SpottedUtterance]], refs: Dict[str, List[str]]) -> dict:
    """How well each piece of evidence parts right hits from wrong ones, over every hit of
    ``spotted_sets`` (e.g. each fold's dev): a hit is right when its word is among its
    utterance's reference words. ROC AUC and average precision of the embedder's cosine and of
    the recogniser's confidence (unknown ones rank last); None where undefined."""
    cos, conf, right = [], [], []
    for spotted in spotted_sets:
        for u, su in spotted.items():
            ref = set(refs.get(u, ()))
            q = su.confidences or [math.nan] * len(su.hits)
            for h, c, k in zip(su.hits, su.cosines, q):
                cos.append(c)
                conf.append(-math.inf if math.isnan(k) else k)
                right.append(h.word in ref)
    out = {"hits": len(right), "right": int(sum(right))}
    pos = torch.tensor(right, dtype=torch.bool)
    for name, vals in (("cosine", cos), ("confidence", conf)):
        x = torch.tensor(vals, dtype=torch.float64).clamp(min=-1e30)  # -inf ranks last, without inf arithmetic
        try:
            out[f"{name}_roc_auc"] = round(roc_auc(x, pos), 4)
            out[f"{name}_ap"] = round(average_precision(x, pos), 4)
        except NoPositivePairsError:
            out[f"{name}_roc_auc"] = out[f"{name}_ap"] = None
    return out
