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

The pieces can also be weighed together (``HitModel``): a logistic model over each hit's
``HIT_FEATURES`` (the confidence, the cosine, the cosine's margin over the replaced words'
own best cosine on the same span, how much of the replaced words' spelling the hit shares,
the lattice's posterior of the words it replaces, and a general word LM's log-probability gain of
the path with the hit over the path without: evidence Whisper's own does not share, ``lm_gain``;
and the hit word's length in letters: Whisper's sure wrong list words are short near-homophones,
"gave" for "get", while a long list word it writes rarely is one by chance), fitted on dev's hits
(``evaluation.transcript_spotting.fit_hit_model``) and kept with the model's tuned config, so a
gate may instead ask for a least probability that a hit is right.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from rescorer.decoding.transcript_spotting import TranscriptHit, apply_hits, spot_transcript
from rescorer.lattice.paths import WordSpan
from rescorer.ops import arc_similarity
from rescorer.text import is_word
from rescorer.wer import edit_distance


HIT_FEATURES = ("confidence", "cosine", "cosine_margin", "spelling_overlap", "replaced_posterior", "lm_gain", "letters")
_FEATURE_INDEX = {f: i for i, f in enumerate(HIT_FEATURES)}
# a word the LM lacks scores as this (natural log, about 1e-7) instead of the LM's log-zero, so a
# list word the LM has never seen costs what a rare word costs, and its context still counts
LM_FLOOR = math.log(1e-7)
LM_GAIN_CLIP = 30.0
HIT_LM_BUNDLED = "pocketsphinx"


def load_hit_lm(spec: Optional[str]):
    """The word LM behind ``lm_gain`` (``RescoreConfig.transcript_hit_lm``): ``"pocketsphinx"``, the
    general-English trigram bundled with the pocketsphinx wheel (72.5k words); a path, an LM file
    pocketsphinx reads (ARPA, or its binary form); None: no LM (every hit's gain is 0)."""
    if spec is None:
        return None
    try:
        import pocketsphinx  # noqa: F401
    except ImportError as e:
        raise ValueError(f"transcript_hit_lm {spec!r} is read with pocketsphinx, which is not installed (the lattice "
                         f"extra, scripts/setup.sh); or ask for no LM (null, --hit-lm none)") from e
    from rescorer.lattice.pocketsphinx import TrigramLM

    if spec == HIT_LM_BUNDLED:
        return TrigramLM()
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"transcript_hit_lm: no LM file {spec!r} (give an ARPA or pocketsphinx binary LM, "
                                f"{HIT_LM_BUNDLED!r} for the bundled trigram, or null for none)")
    try:
        return TrigramLM(spec)
    except Exception as e:  # pocketsphinx names no reason; say which file and what it should be
        raise ValueError(f"transcript_hit_lm: {spec} is not an LM pocketsphinx can read (ARPA or binary): {e}") from e


def sentence_logprob(lm, words: Sequence[str]) -> float:
    """ln P(<s> words </s>) under ``lm`` (``logprob(word, history most recent first)``, trigram
    histories), each word's term floored at ``LM_FLOOR``."""
    total, hist = 0.0, ("<s>",)
    for w in list(words) + ["</s>"]:
        total += max(lm.logprob(w, hist[:2]), LM_FLOOR)
        hist = (w,) + hist[:1]
    return total


def lm_gains(lm, hyp: Sequence[WordSpan], hits: Sequence[TranscriptHit]) -> List[float]:
    """How much likelier ``lm`` finds the path with each hit in place than the path as it is
    (natural log, clipped to +-``LM_GAIN_CLIP``; words without a spelling, ``<unk>``, left out):
    "he opens the door" against "he open the door". 0 without an LM."""
    if lm is None:
        return [0.0] * len(hits)
    words = [w.word for w in hyp]
    base = sentence_logprob(lm, [w for w in words if is_word(w)])  # once for all the hits
    out = []
    for hit in hits:
        alt = [w for w in words[:hit.first] + [hit.word] + words[hit.last:] if is_word(w)]
        out.append(max(-LM_GAIN_CLIP, min(LM_GAIN_CLIP, sentence_logprob(lm, alt) - base)))
    return out


def lm_gain(lm, hyp: Sequence[WordSpan], hit: TranscriptHit) -> float:
    """``lm_gains`` of one hit."""
    return lm_gains(lm, hyp, [hit])[0]


def hit_features(hit: TranscriptHit, hyp: Sequence[WordSpan], cosine: float, confidence: float,
                 rival: float, posteriors: Optional[Sequence[float]] = None, gain: float = 0.0) -> Tuple[float, ...]:
    """One hit's ``HIT_FEATURES``, all finite: an unknown confidence is 0, a cosine that could not
    be measured (-inf) is -1; the margin over the replaced words' best cosine (``rival``) is 0 for an
    insertion (nothing replaced); the spelling overlap is 1 - edit distance / longer length
    between the hit and the replaced words run together (0 for an insertion or where none has a
    spelling, ``<unk>``, as for the cosine's rival); the replaced
    posterior is the highest lattice posterior among the replaced words (``posteriors``, one per
    word of ``hyp``; 0 for an insertion or where none are known); ``gain``: the hit's ``lm_gain``
    (NaN counts as 0, no evidence); ``letters``: the hit word's."""
    c = cosine if math.isfinite(cosine) else -1.0
    replaced = "".join(w.word for w in hyp[hit.first:hit.last] if is_word(w.word))  # <unk> has no spelling
    margin = c - rival if math.isfinite(rival) else 0.0
    overlap = 1.0 - edit_distance(list(hit.word), list(replaced)) / max(len(hit.word), len(replaced)) if replaced else 0.0
    post = [posteriors[i] for i in range(hit.first, hit.last)] if posteriors and len(posteriors) == len(hyp) else []
    post = max((p for p in post if math.isfinite(p)), default=0.0)
    return (0.0 if math.isnan(confidence) else float(confidence), float(c), float(margin), float(overlap), float(post),
            float(gain) if math.isfinite(gain) else 0.0, float(sum(c.isalpha() for c in hit.word)))


@functools.lru_cache(maxsize=None)
def feature_pairs(n: int) -> Tuple[Tuple[int, int], ...]:
    """The products a quadratic ``HitModel`` weighs, in its ``pair_weights`` order: every pair
    (i, j), i <= j, of its n standardised features (squares included). Cached: a gate asks for
    every hit's probability at every grid point."""
    return tuple(itertools.combinations_with_replacement(range(n), 2))


HIT_MODEL_FORMS = ("linear", "quadratic")


@dataclass(frozen=True)
class HitModel:
    """A logistic model of the probability that a hit is right, over standardised ``HIT_FEATURES``
    (``features``: which, by name; a model fitted before ``lm_gain`` and ``letters`` existed names the
    first five), z = (x - mean) / scale:
    sigmoid(bias + sum(weight * z) [+ sum over i <= j of pair_weight * z_i * z_j]). The second-order
    terms (``pair_weights``, empty for a linear model; ``feature_pairs`` gives their order) let one
    piece of evidence count for more where another is high: on speechocean762 dev the fits weigh
    the cosine's margin over the replaced words more where the lattice was sure of those words, and
    Whisper's confidence more near its top, yet over many speaker splits they rank held-out hits
    no better than the linear model (README, "A second-order hit model").
    Plain numbers, so it is kept as JSON in the tuned config (``to_dict`` / ``from_dict``, which
    refuses a model of features this version lacks)."""
    weights: Tuple[float, ...]
    bias: float
    mean: Tuple[float, ...]
    scale: Tuple[float, ...]
    features: Tuple[str, ...] = HIT_FEATURES
    pair_weights: Tuple[float, ...] = ()

    def __post_init__(self):
        n = len(self.features)
        unknown = [f for f in self.features if f not in _FEATURE_INDEX]
        if unknown or len(set(self.features)) != n or not n:
            raise ValueError(f"hit model over features {list(self.features)}; this version computes {list(HIT_FEATURES)}")
        for name in ("weights", "mean", "scale"):
            v = getattr(self, name)
            if len(v) != n or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v):
                raise ValueError(f"hit model {name}: expected {n} finite numbers, got {v!r}")
        if not (isinstance(self.bias, (int, float)) and math.isfinite(self.bias)) or min(self.scale) <= 0:
            raise ValueError(f"hit model: bias {self.bias!r} must be finite and every scale positive ({self.scale!r})")
        pairs = self.pair_weights
        if pairs and (len(pairs) != n * (n + 1) // 2 or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in pairs)):
            raise ValueError(f"hit model pair_weights: expected {n * (n + 1) // 2} finite numbers (one per pair of its "
                             f"{n} features, squares included), got {pairs!r}")

    @property
    def form(self) -> str:
        """``"quadratic"`` where it weighs products of its features, else ``"linear"``."""
        return "quadratic" if self.pair_weights else "linear"

    def probability(self, x: Sequence[float]) -> float:
        """``x``: a hit's ``HIT_FEATURES``, all of them (the model reads the ones it names)."""
        if len(x) != len(HIT_FEATURES):
            raise ValueError(f"hit model: expected the {len(HIT_FEATURES)} HIT_FEATURES, got {len(x)} values")
        z = [(x[_FEATURE_INDEX[f]] - m) / s for f, m, s in zip(self.features, self.mean, self.scale)]
        z = (self.bias + sum(w * v for w, v in zip(self.weights, z))
             + sum(w * z[i] * z[j] for w, (i, j) in zip(self.pair_weights, feature_pairs(len(z)))))
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def to_dict(self) -> dict:
        """A linear model's dict has no ``pair_weights``, so configs tuned before it read as before."""
        d = {"features": list(self.features), "weights": [round(w, 6) for w in self.weights],
             "bias": round(self.bias, 6), "mean": [round(m, 6) for m in self.mean],
             "scale": [round(s, 6) for s in self.scale]}
        if self.pair_weights:
            d["pair_weights"] = [round(w, 6) for w in self.pair_weights]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "HitModel":
        keys = {"features", "weights", "bias", "mean", "scale"}
        if not isinstance(d, dict) or not keys <= set(d) or set(d) - keys - {"pair_weights"}:
            raise ValueError(f"hit model: expected keys features, weights, bias, mean, scale [, pair_weights]; got {d!r}")
        pairs = d.get("pair_weights", [])
        if not isinstance(pairs, list):
            raise ValueError(f"hit model pair_weights: expected a list of numbers, got {pairs!r}")
        return cls(tuple(d["weights"]), d["bias"], tuple(d["mean"]), tuple(d["scale"]), tuple(d["features"]), tuple(pairs))


def weighs_lm(model: Optional[HitModel]) -> bool:
    """Whether ``model`` reads ``lm_gain`` (so spotting must compute it, with the config's LM)."""
    return model is not None and "lm_gain" in model.features


class HitGate(NamedTuple):
    """The least cosine and the least recogniser confidence a hit needs (None: no threshold;
    an unknown, NaN, confidence fails any confidence threshold); with ``model``, also the least
    probability (``probability``) that the model gives the hit."""
    cosine: Optional[float] = None
    confidence: Optional[float] = None
    probability: Optional[float] = None
    model: Optional[HitModel] = None

    def keeps(self, cosine: float, confidence: float, features: Optional[Sequence[float]] = None) -> bool:
        if self.probability is not None:
            if self.model is None or features is None:
                raise ValueError("a probability gate needs a hit model and the hits' features")
            if self.model.probability(features) < self.probability:
                return False
        return ((self.cosine is None or cosine >= self.cosine)
                and (self.confidence is None or (not math.isnan(confidence) and confidence >= self.confidence)))

    def as_row(self) -> dict:
        row = {"gate": self.cosine, "confidence_gate": self.confidence}
        if self.probability is not None:
            row["probability_gate"] = self.probability
        return row

    @classmethod
    def from_row(cls, row: dict) -> "HitGate":
        """The gate of a tuned row (``as_row``, with ``hit_model``: its model's ``to_dict()``, where it
        has a probability gate); ValueError naming what is wrong with another."""
        keys = {"gate", "confidence_gate", "probability_gate", "hit_model"}
        if not isinstance(row, dict) or not {"gate", "confidence_gate"} <= set(row) or set(row) - keys:
            raise ValueError(f"hit gate: expected keys gate, confidence_gate [, probability_gate, hit_model]; got {row!r}")
        for k in ("gate", "confidence_gate", "probability_gate"):
            v = row.get(k)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise ValueError(f"hit gate: {k} must be a finite number or null, not {v!r}")
        model = HitModel.from_dict(row["hit_model"]) if row.get("hit_model") is not None else None
        if row.get("probability_gate") is not None and model is None:
            raise ValueError("hit gate: a probability_gate needs its hit_model")
        return cls(row["gate"], row["confidence_gate"], row.get("probability_gate"), model)


@dataclass
class SpottedUtterance:
    hyp: List[WordSpan]  # the rescored best path
    hits: List[TranscriptHit] = field(default_factory=list)
    cosines: List[float] = field(default_factory=list)  # the embedder's evidence for each hit
    confidences: List[float] = field(default_factory=list)  # the recogniser's (NaN: unknown); empty: none known
    rivals: List[float] = field(default_factory=list)  # the replaced words' best cosine on the span (NaN: none)
    posteriors: List[float] = field(default_factory=list)  # the lattice's posterior of each hyp word; empty: unknown
    lm_gains: List[float] = field(default_factory=list)  # each hit's lm_gain; empty: no LM (0)

    def features(self) -> List[Tuple[float, ...]]:
        """Each hit's ``HIT_FEATURES``."""
        conf = self.confidences or [math.nan] * len(self.hits)
        rivals = self.rivals or [math.nan] * len(self.hits)
        gains = self.lm_gains or [0.0] * len(self.hits)
        return [hit_features(h, self.hyp, c, q, r, self.posteriors, g)
                for h, c, q, r, g in zip(self.hits, self.cosines, conf, rivals, gains)]

    def kept(self, gate: HitGate) -> List[TranscriptHit]:
        conf = self.confidences or [math.nan] * len(self.hits)
        feats = self.features() if gate.probability is not None else [None] * len(self.hits)
        return [h for h, c, q, f in zip(self.hits, self.cosines, conf, feats) if gate.keeps(c, q, f)]

    def words(self, gate: HitGate) -> List[str]:
        """The hypothesis with the hits ``gate`` keeps in place."""
        return [w.word for w in self.spotted(gate)[0]]

    def spotted(self, gate: HitGate):
        return apply_hits(self.hyp, self.kept(gate))

    def spotted_path(self, gate: HitGate) -> Tuple[List[WordSpan], Optional[List[float]]]:
        """(the hypothesis with the hits ``gate`` keeps in place, each of its words' lattice posterior:
        the path's own, NaN for a word the transcript put there; None where the path's are unknown)."""
        kept = sorted(self.kept(gate), key=lambda h: (h.first, h.last))
        words, _ = apply_hits(self.hyp, kept)
        if len(self.posteriors) != len(self.hyp) or not self.hyp:
            return words, None
        post, i = [], 0
        for h in kept:
            post += self.posteriors[i:h.first] + [math.nan]
            i = h.last
        return words, post + self.posteriors[i:]


def hit_cosines(rescorer, feats: torch.Tensor, hits: Sequence[TranscriptHit],
                hyp: Optional[Sequence[WordSpan]] = None) -> Tuple[List[float], List[float]]:
    """(the embedder's cosine of each hit's spelling with its span's audio (-inf: under one
    feature frame, or no span: a path without times); the best cosine of the words of ``hyp``
    each hit replaces, on the same span and from the same span embeddings: NaN for an insertion,
    where none of them has a spelling (``<unk>``) or without ``hyp``, -inf where the span could
    not be measured)."""
    out = [-math.inf] * len(hits)
    rivals = [math.nan if hyp is None or h.last <= h.first else -math.inf for h in hits]
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
        words, spans_of, own = [], [], []  # per word to compare: its span's row, whether it is the hit's own
        for j, i in enumerate(idx):
            replaced = [] if hyp is None else [w.word for w in hyp[hits[i].first:hits[i].last] if is_word(w.word)]
            if hyp is not None and not replaced:
                rivals[i] = math.nan  # nothing with a spelling replaced (an insertion, or <unk>)
            for k, word in enumerate([hits[i].word] + replaced):
                words.append(word)
                spans_of.append(j)
                own.append(k == 0)
        w = rescorer.spelling_embeddings(words).float()
        pairs = torch.tensor([[j, k] for k, j in enumerate(spans_of)], dtype=torch.long, device=q.device)
        sims = arc_similarity(q, w.to(q.device), pairs, metric="cosine").cpu().tolist()
        for j, is_own, c in zip(spans_of, own, sims):
            i = idx[j]
            if is_own:
                out[i] = float(c)
            else:
                rivals[i] = max(rivals[i], float(c))
    return out, rivals


def spot_utterance(rescorer, hyp: Sequence[WordSpan], transcript: Sequence[str], words, feats: torch.Tensor,
                   min_letters: int = 4, confidences: Optional[Sequence[float]] = None,
                   posteriors: Optional[Sequence[float]] = None, lm=None) -> SpottedUtterance:
    """One utterance's hits of ``transcript``'s list words (``words``, a set) on ``hyp``, with
    their cosines (and the replaced words' own) and (from ``confidences``, the transcript's
    per-word ones) the recogniser's confidence in each; ``posteriors``: the lattice's posterior
    of each word of ``hyp`` (e.g. ``RescoreResult.confidences``); ``lm``: the word LM of each
    hit's ``lm_gain`` (``load_hit_lm``; None: none)."""
    hits = spot_transcript(hyp, transcript, words, min_letters)
    conf = confidences
    cos, rivals = hit_cosines(rescorer, feats, hits, hyp) if hits else ([], [])
    return SpottedUtterance(list(hyp), hits, cos,
                            [conf[h.source] if conf is not None and 0 <= h.source < len(conf) else math.nan
                             for h in hits], rivals, list(posteriors or []),
                            lm_gains(lm, hyp, hits) if lm is not None else [])


def spot_all(rescorer, hyps: Dict[str, List[WordSpan]], transcripts: Dict[str, List[str]], words,
             feats: Dict[str, torch.Tensor], min_letters: int = 4,
             confidences: Optional[Dict[str, List[float]]] = None,
             posteriors: Optional[Dict[str, List[float]]] = None, lm=None) -> Dict[str, SpottedUtterance]:
    """``spot_utterance`` for every utterance of ``hyps`` (one without a transcript gets no hits)."""
    words = set(words)
    confidences, posteriors = confidences or {}, posteriors or {}
    return {u: spot_utterance(rescorer, hyps[u], transcripts.get(u, []), words, feats[u], min_letters,
                              confidences.get(u), posteriors.get(u), lm) for u in sorted(hyps)}


def check_confidences(transcripts, needed: bool, skip_hint: str) -> None:
    """A confidence threshold (``needed``) needs transcripts that record confidences: ValueError
    naming the file and the way out (``skip_hint``) otherwise."""
    if needed and transcripts.words and not transcripts.confidences:
        raise ValueError(f"{transcripts.path} has no word confidences (written before rescorer transcribe recorded "
                         f"them): transcribe again into a new file, or {skip_hint}")
