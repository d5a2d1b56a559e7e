"""A second recogniser's list words spotted into the rescored 1-best and gated by the audio:
the inference side of Whisper's list words (``rescorer rescore --transcripts``; tuned by
``evaluation.transcript_spotting``).

Per utterance (``spot_utterance``): the rescored best path (words with spans) and the second
recogniser's transcript give the hits (``decoding.transcript_spotting``); each hit carries two
pieces of evidence: the embedder's cosine between its span's audio and its spelling (a span
too short to embed scores -inf), and the recogniser's own confidence in the word (the
transcript's, NaN where it has none). A gate is a pair of thresholds (``HitGate``; None: no
threshold) and keeps the hits that reach both. Why both: on speechocean762 dev the
recogniser's confidence separates its right list words from its wrong ones far better than
the cosine (``dev_hit_evidence`` of the Whisper rows in ``results/wer.json``), and the cosine
still vetoes hits whose audio does not sound like the word.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch

from rescorer.decoding.transcript_spotting import TranscriptHit, apply_hits, spot_transcript
from rescorer.lattice.paths import WordSpan
from rescorer.ops import arc_similarity


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


def spot_utterance(rescorer, hyp: Sequence[WordSpan], transcript: Sequence[str], words, feats: torch.Tensor,
                   min_letters: int = 4, confidences: Optional[Sequence[float]] = None) -> SpottedUtterance:
    """One utterance's hits of ``transcript``'s list words (``words``, a set) on ``hyp``, with
    their cosines and (from ``confidences``, the transcript's per-word ones) the recogniser's
    confidence in each."""
    hits = spot_transcript(hyp, transcript, words, min_letters)
    conf = confidences
    return SpottedUtterance(list(hyp), hits, hit_cosines(rescorer, feats, hits) if hits else [],
                            [conf[h.source] if conf is not None and 0 <= h.source < len(conf) else math.nan
                             for h in hits])


def spot_all(rescorer, hyps: Dict[str, List[WordSpan]], transcripts: Dict[str, List[str]], words,
             feats: Dict[str, torch.Tensor], min_letters: int = 4,
             confidences: Optional[Dict[str, List[float]]] = None) -> Dict[str, SpottedUtterance]:
    """``spot_utterance`` for every utterance of ``hyps`` (one without a transcript gets no hits)."""
    words = set(words)
    confidences = confidences or {}
    return {u: spot_utterance(rescorer, hyps[u], transcripts.get(u, []), words, feats[u], min_letters,
                              confidences.get(u)) for u in sorted(hyps)}


def check_confidences(transcripts, needed: bool, skip_hint: str) -> None:
    """A confidence threshold (``needed``) needs transcripts that record confidences: ValueError
    naming the file and the way out (``skip_hint``) otherwise."""
    if needed and transcripts.words and not transcripts.confidences:
        raise ValueError(f"{transcripts.path} has no word confidences (written before rescorer transcribe recorded "
                         f"them): transcribe again into a new file, or {skip_hint}")
