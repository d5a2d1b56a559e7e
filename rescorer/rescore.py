"""Rescoring word lattices with acoustic word embeddings: the plugin API.

For every word arc of a lattice, the audio of its span and the spelling of its word
are embedded into the same space; their cosine similarity (``awe_scores``, a per-arc
attribute that k2 operations carry along) is mixed with the decoder's scores::

    score(arc) = am_scale * am + lm_scale * lm + wip * [word arc] + awe_scale * awe

(``rescorer.lattice.scores``: the scales are a ``Scales``, the combination ``with_scores``).

Every distinct span is encoded once (in length-sorted batches) and every distinct
word's spelling once (cached across lattices); the per-arc similarities come from
``rescorer.ops.arc_similarity`` (the CUDA kernel on GPU, the torch reference on CPU).
``<unk>`` arcs have no spelling: they get ``unk_awe_score``. Filler arcs (label 0)
and final arcs get no embedding score.

OOV recovery (``recover_oov``) adds, next to some word arcs, up to ``oov_topk`` parallel
arcs (same states, same span, same acoustic score) for the nearest spellings of the arc's
audio in a word list (``set_vocabulary``: words or a word-list file; one ``WordListIndex``, an
``ops.NearestIndex``) whose cosine is at least ``oov_min_similarity``, unless recovery
abstains there (below); then the lattice is decoded again. A new arc's LM score is
``oov_lm_score`` (the cost of a word the LM does not know), or the LM's ``<unk>`` score
when it replaces a ``<unk>`` arc; such arcs are marked (``oov_lm_arcs``) and
``apply_scores`` gives them the config's ``oov_lm_score``, so it is tuned on dev like the
scales, without redoing the recovery. Which arcs get alternatives (posteriors from the
decoder's scores alone, ``awe_scale`` 0, scaled by ``posterior_scale``; spans are the
distinct feature-frame spans that get embedded):

- every ``<unk>`` arc: every distinct span of a ``<unk>`` arc always counts;
- word arcs with posterior below ``oov_posterior_threshold`` ("weak" arcs), on at most
  ``oov_max_spans`` of their distinct spans per lattice: the spans with the largest
  *uncertain mass*, the summed posterior of the weak arcs with exactly that span (ties:
  the earlier span), i.e. the probability the decoder gives to unsure words on that
  segment. The spans with the *smallest* mass or total posterior are not the ones: in
  the synthetic CTC/HLG dev lattices those are segments almost no path uses (median
  total posterior ~4e-8 for the 32 weakest), where a candidate can never reach the best
  path, while the 32 largest-mass spans hold nearly every unsure word of the 1-best.

Abstention (``oov_margin`` not None; None keeps the rule above unchanged, for comparison).
Recovery should only replace what the audio contradicts, so a proposal is added only when

- its cosine beats the arc's own embedding score on the same span (the cosine with the
  arc's word's spelling; ``unk_awe_score`` for ``<unk>``), or with ``oov_rival="lexicon"``
  the best cosine of any other word of the lattice's symbol table (the decoder's lexicon)
  on that span, whichever is higher, by at least
  ``oov_margin + oov_margin_per_doubling * max(0, log2(list size / 1000))``: the more
  spellings are searched, the higher the best wrong one scores by chance (on the
  synthetic embedder the best impostor's cosine rises 0.024 per doubling from 1k to 103k
  words: ``benchmarks/oov_margin_growth.py``, ``results/oov_margin_growth.json``);
- the arc is not protected: spans shorter than ``oov_min_span_seconds`` and arcs of
  English function words (``rescorer.text.FUNCTION_WORDS``, with
  ``oov_protect_function_words``) get no proposals at all;
- the proposed word has at least ``oov_min_letters`` letters (short words fire falsely).

Each added arc records its evidence (``oov_advantage``: cosine minus the arc's own; -inf
for guarded proposals) and the lattice its list's size (``meta["oov_word_list_size"]``).
For tuning, ``embedding_scores(..., abstain_at_decoding=True)`` keeps every proposal and
``apply_scores`` drops those below each config's required advantage (score -inf), so the
margin is tuned on dev with the scales, and decoding a prepared lattice under a margin
gives what a fresh recovery under it gives (tested).

Duplicates are not added: a candidate equal to the arc's own word, or whose (src, dst,
word) is already in the lattice, is dropped; when several weak arcs between the same
states (other spans, other acoustic scores) propose one word, the proposal with the
best score under the recovery config (am, LM and embedding parts; ties: arc order, then
rank; a guarded proposal only when no other proposes that word there) becomes the one
new arc, and abstention applies after that choice. The lattice package does the editing
(``rescorer.lattice.edit.add_arcs``); the input lattice and its symbol table are never
modified: the result uses a table extended by the word list's missing words (built once
per input table; ids of existing words unchanged). Each distinct span is
embedded once per utterance for recovery and scoring together (``SpanCache``;
``rescore``, ``embedding_scores`` and ``evaluation.rescoring`` do it).

Usage from a decode script (a few lines)::

    from rescorer.rescore import Rescorer
    rescorer = Rescorer.from_dir("exp/awe")                 # trained embedder + tuned scales
    result = rescorer.rescore(lattice, feats)                # WordLattice, fbank [T, 80] at 10 ms
    print(result.hypothesis.text, result.confidences)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from rescorer.formats.contract import FBANK, SAMPLE_RATE, UNK, FeatureSpec
from rescorer.decoding.ctc_scores import NORMS
from rescorer.lattice.edit import add_arcs, added_words_on_path, extend_table, new_arc_mask, with_table
from rescorer.lattice.scores import Scales, combine, with_scores
from rescorer.lattice.word_lattice import arc_posteriors, best_path_hypothesis, validate, word_confidences
from rescorer.models.checkpoint import load_embedder
from rescorer.models.precision import resolve_compute_type
from rescorer.ops import NearestIndex, arc_similarity
from rescorer.formats.word_list import WordList, is_word_list_file, read_word_list
from rescorer.text import FUNCTION_WORDS, NotAWordError, normalize_word
from rescorer.utils import atomic_write_text

CONFIG_FILE = "rescorer.json"


class RescoreError(ValueError):
    """Input that cannot be rescored (the message names the utterance and the problem)."""


OOV_RIVALS = ("arc", "lexicon")  # RescoreConfig.oov_rival
# where tuning abstained from recovery, a recovered or spotted arc is priced out with these: the
# lattices then decode as if nothing was added (RescoreConfig.recovery_abstained)
NO_RECOVERY_LM_SCORE = -1.0e4
NO_RECOVERY_MARGIN = 1.0e4


@dataclass
class RescoreConfig:
    awe_scale: float = 1.0  # lambda: weight of the embedding similarity
    am_scale: float = 1.0
    lm_scale: float = 1.0
    word_insertion_penalty: float = 0.0
    unk_awe_score: float = 0.0  # embedding score of <unk> arcs (no spelling to compare)
    oov_posterior_threshold: float = 0.5  # arcs below this posterior get alternatives
    oov_topk: int = 5
    oov_lm_score: float = -10.0  # natural-log LM score of a recovered word the LM lacks
    oov_min_similarity: float = 0.3  # candidates below this cosine are not added
    oov_max_spans: int = 32  # at most this many weak word spans per lattice get candidates (<unk> spans always)
    # abstention (module doc): a proposal must beat the replaced arc's own similarity by the margin,
    # which grows by oov_margin_per_doubling per doubling of the word list beyond 1000 words;
    # None: the rule before abstention (no margin, no guards)
    oov_margin: Optional[float] = 0.1
    oov_margin_per_doubling: float = 0.025  # measured: results/oov_margin_growth.json (0.024)
    # what a proposal must beat by the margin: "arc", the replaced arc's own word; "lexicon", the best
    # word of the lattice's symbol table (the decoder's lexicon, the arc's word included; the proposal
    # itself excluded) on the same span: a word the decoder knows that explains the audio better wins
    oov_rival: str = "arc"
    oov_min_letters: int = 4  # proposals with fewer letters (a-z) are not added
    oov_min_span_seconds: float = 0.1  # arcs on shorter spans get no proposals
    oov_protect_function_words: bool = True  # arcs of rescorer.text.FUNCTION_WORDS get no proposals
    posterior_scale: float = 1.0
    batch_size: int = 256
    ctc_scale: float = 0.0  # weight of the CTC spelling score (rescorer.rescore_ctc; 0: not used)
    # the CTC spelling score's normalisation (decoding.ctc_scores.NORMS) and its log-probs' temperature,
    # as awe_ctc_rescore tuned them (rescorer rescore --ctc-model-dir; None: not tuned for the fusion)
    ctc_norm: Optional[str] = None
    ctc_temperature: float = 1.0
    # a second recogniser's list words (rescorer.transcript_hits, rescorer rescore --transcripts): the least
    # embedder cosine and the least recogniser confidence a hit needs (None: no threshold), as tuned on dev;
    # transcript_abstain: dev tuning found that the hits do not help, so none is added
    transcript_min_cosine: Optional[float] = None
    transcript_min_confidence: Optional[float] = None
    transcript_abstain: bool = False
    # or the least probability of being right by a model of all a hit's evidence (transcript_hits.HitModel,
    # fitted on dev's hits; kept here as its to_dict())
    transcript_min_probability: Optional[float] = None
    transcript_hit_model: Optional[dict] = None
    # the word LM of each hit's lm_gain (transcript_hits.load_hit_lm): "pocketsphinx", the bundled
    # general-English trigram; a path, an ARPA or pocketsphinx binary LM; None: no LM evidence
    transcript_hit_lm: Optional[str] = "pocketsphinx"
    # the other way round (decoding.transcript_vote, rescorer rescore --transcript-mode vote): the
    # rescored 1-best's word replaces the transcript's where the transcript's confidence is below
    # vote_max_confidence and the 1-best word's posterior at least vote_min_posterior, and a
    # transcript word facing nothing on the 1-best is dropped below vote_max_drop_confidence, as
    # tuned on dev (whisper_lattice_vote); None: not tuned, or dev abstained (the transcript is kept)
    vote_max_confidence: Optional[float] = None
    vote_min_posterior: Optional[float] = None
    vote_max_drop_confidence: Optional[float] = None
    # ... voting with the 1-best after the transcript's list words that this gate keeps are spotted
    # into it (a transcript_hits.HitGate row, as tuned on dev; None: the 1-best as it is)
    vote_spot_gate: Optional[dict] = None

    def __post_init__(self):
        if self.ctc_norm is not None and self.ctc_norm not in NORMS:
            raise ValueError(f"ctc_norm must be one of {', '.join(NORMS)} or null, not {self.ctc_norm!r}")
        if not (isinstance(self.ctc_temperature, (int, float)) and math.isfinite(self.ctc_temperature)
                and self.ctc_temperature > 0):
            raise ValueError(f"ctc_temperature must be a positive number, not {self.ctc_temperature!r}")
        if self.oov_rival not in OOV_RIVALS:
            raise ValueError(f"oov_rival must be one of {', '.join(OOV_RIVALS)}, not {self.oov_rival!r}")
        if self.transcript_min_probability is not None:
            from rescorer.transcript_hits import HitModel

            if self.transcript_hit_model is None:
                raise ValueError("transcript_min_probability needs transcript_hit_model (the model it thresholds)")
            HitModel.from_dict(self.transcript_hit_model)  # a malformed model is named here, not mid-run
        if self.transcript_hit_lm is not None and not (isinstance(self.transcript_hit_lm, str) and self.transcript_hit_lm):
            raise ValueError(f"transcript_hit_lm must be \"pocketsphinx\", an LM file's path or null, not {self.transcript_hit_lm!r}")
        if self.vote_spot_gate is not None:
            self.vote_spot_hit_gate()  # likewise a malformed gate
        needing_lm = self.hit_models_weighing_lm() if self.transcript_hit_lm is None else []
        if needing_lm:
            raise ValueError(f"{needing_lm[0]}'s hit model weighs lm_gain, which needs transcript_hit_lm (the LM it "
                             "was fitted with; \"pocketsphinx\" for the bundled trigram)")

    def hit_models_weighing_lm(self) -> List[str]:
        """Which tuned hit models (``transcript_hit_model``, ``vote_spot_gate``) read ``lm_gain``: spotting
        needs ``transcript_hit_lm`` for them, and for nothing else."""
        from rescorer.transcript_hits import weighs_lm

        names = []
        if self.transcript_min_probability is not None and weighs_lm(self.transcript_gate().model):
            names.append("transcript_hit_model")
        if self.vote_spot_gate is not None and weighs_lm(self.vote_spot_hit_gate().model):
            names.append("vote_spot_gate")
        return names

    def recovery_abstained(self) -> bool:
        """Whether every recovered or spotted arc is priced out (dev tuning abstained from recovery)."""
        return float(self.oov_lm_score) <= NO_RECOVERY_LM_SCORE

    def lattice_fields(self) -> dict:
        """The options lattice rescoring itself reads (the second recogniser's ``transcript_*`` and
        ``vote_*`` left out): what a lattice method's tuned row records as its scales."""
        from dataclasses import asdict

        return {k: v for k, v in asdict(self).items() if not k.startswith(("transcript_", "vote_"))}

    def transcript_gate(self):
        """The gate on a second recogniser's list words (``transcript_hits.HitGate``) that dev tuning chose."""
        from rescorer.transcript_hits import HitGate, HitModel

        model = HitModel.from_dict(self.transcript_hit_model) if self.transcript_hit_model is not None else None
        return HitGate(self.transcript_min_cosine, self.transcript_min_confidence, self.transcript_min_probability, model)

    def vote_spot_hit_gate(self):
        """The gate on the transcript's list words spotted into the 1-best before the vote (None: no spotting)."""
        from rescorer.transcript_hits import HitGate

        return None if self.vote_spot_gate is None else HitGate.from_row(self.vote_spot_gate)

    @classmethod
    def from_dict(cls, d: dict) -> "RescoreConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown rescoring options {sorted(unknown)}")
        return cls(**d)

    def oov_required_advantage(self, list_size: Optional[int]) -> Optional[float]:
        """How much a proposal's cosine must exceed the replaced arc's own for a list of
        ``list_size`` words: ``oov_margin + oov_margin_per_doubling * max(0, log2(size / 1000))``
        (None: no abstention, ``oov_margin`` None)."""
        if self.oov_margin is None:
            return None
        doublings = max(0.0, math.log2(list_size / 1000.0)) if list_size else 0.0
        return float(self.oov_margin) + float(self.oov_margin_per_doubling) * doublings


@dataclass
class RescoreResult:
    lattice: object  # WordLattice with awe_scores and rescored scores
    hypothesis: object  # word_lattice.Hypothesis (words with spans)
    confidences: List[float] = field(default_factory=list)  # arc posterior of each 1-best word
    # OOV recovery: (word, start, end) of each 1-best word that recovery added (a word + span the input lattice lacks)
    recovered: List[Tuple[str, float, float]] = field(default_factory=list)


def tuned_config_path(model_dir, config_name: str = CONFIG_FILE) -> Path:
    """Where a model's tuned scales live: ``config_name`` in the model directory (beside the
    checkpoint file where ``model_dir`` names one)."""
    model_dir = Path(model_dir)
    return model_dir / config_name if model_dir.is_dir() else model_dir.parent / config_name


def save_rescore_config(model_dir, config: RescoreConfig, extra: Optional[dict] = None, name: Optional[str] = None) -> Path:
    """Write ``config`` to ``model_dir/name`` (default ``rescorer.json``), which ``Rescorer.from_dir`` reads."""
    path = Path(model_dir) / (name or CONFIG_FILE)
    atomic_write_text(path, json.dumps({"config": asdict(config), **(extra or {})}, indent=1, sort_keys=True))
    return path


def spans_in_feature_frames(start_frame: torch.Tensor, end_frame: torch.Tensor, lattice_frame_shift: float, num_frames: int,
                            feature_frame_shift: float = FBANK.frame_shift):
    """Lattice frames -> [start, end) in feature frames (of the embedder's frontend), clipped to the features."""
    r = lattice_frame_shift / feature_frame_shift
    s = torch.round(start_frame.double() * r).long().clamp(0, num_frames)
    e = torch.round(end_frame.double() * r).long().clamp(0, num_frames)
    return s, e


def nonempty_spans(s: torch.Tensor, e: torch.Tensor, frames):
    """The one rule for an arc's feature-frame span: [s, e) clipped into [0, frames), at least one
    frame long (``frames``: the utterance's feature frames, an int or one per span)."""
    frames = torch.as_tensor(frames)
    s, e = torch.minimum(s.clamp(min=0), frames), torch.minimum(e.clamp(min=0), frames)
    e = torch.maximum(e, torch.minimum(s + 1, frames))
    return torch.minimum(s, e - 1).clamp(min=0), e


def distinct_arc_spans(lat, arcs: torch.Tensor, num_frames: int, feature_frame_shift: float = FBANK.frame_shift):
    """Feature-frame spans of ``arcs`` (each at least one frame, inside the features).

    Returns (distinct spans [S, 2], index of each arc's span [len(arcs)]), so every distinct
    span is embedded once.
    """
    s, e = spans_in_feature_frames(lat.fsa.start_frame[arcs], lat.fsa.end_frame[arcs], lat.frame_shift, num_frames,
                                   feature_frame_shift)
    s, e = nonempty_spans(s, e, num_frames)
    # one integer key per span: a 1-D unique (unique over rows is ~10x slower), same (start, end) order
    keys, inverse = torch.unique(s * (num_frames + 1) + e, return_inverse=True)
    return torch.stack([torch.div(keys, num_frames + 1, rounding_mode="floor"), keys % (num_frames + 1)], 1), inverse


class SpanCache:
    """Embeddings of one utterance's feature-frame spans ``[start, end)``, each computed once.

    ``rescore`` and ``embedding_scores`` use one per call, so the spans that OOV recovery
    embeds are not embedded again for the arc scores. Callers of ``recover_oov`` and
    ``awe_scores`` can pass the same cache to both. A cache belongs to one utterance:
    using it with features of another length is an error (features of another utterance
    with the same length would get stale embeddings: make a new cache per utterance).
    """

    def __init__(self) -> None:
        self.num_frames: Optional[int] = None
        self.keys = torch.empty(0, dtype=torch.long)  # sorted; start * (num_frames + 1) + end
        self.embeddings: Optional[torch.Tensor] = None  # [len(keys), D], in key order
        self.encoded = 0  # spans embedded through this cache

    def __len__(self) -> int:
        return int(self.keys.numel())

    def _find(self, keys: torch.Tensor):
        if self.keys.numel() == 0:
            return torch.zeros_like(keys), torch.zeros(keys.shape, dtype=torch.bool)
        pos = torch.searchsorted(self.keys, keys).clamp(max=self.keys.numel() - 1)
        return pos, self.keys[pos] == keys

    def lookup(self, rescorer: "Rescorer", feats: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
        """[len(spans), D] on the rescorer's device; spans not cached yet are embedded (once each)."""
        T = int(feats.shape[0])
        if self.num_frames is None:
            self.num_frames = T
        elif self.num_frames != T:
            raise RescoreError(
                f"this SpanCache holds spans of a {self.num_frames}-frame utterance, not of these {T}-frame "
                "features (use one cache per utterance)"
            )
        if spans.numel() == 0:
            return torch.empty(0, rescorer.acoustic.dim, device=rescorer.device)
        keys = spans[:, 0] * (T + 1) + spans[:, 1]
        pos, hit = self._find(keys)
        if not bool(hit.all()):
            new = torch.unique(keys[~hit])
            emb = rescorer.span_embeddings(feats, list(zip((new // (T + 1)).tolist(), (new % (T + 1)).tolist())))
            self.encoded += int(new.numel())
            self._insert(new, emb)
            pos, _ = self._find(keys)
        return self.embeddings[pos.to(self.embeddings.device)]

    def add(self, num_frames: int, spans: torch.Tensor, embeddings: torch.Tensor) -> None:
        """Store embeddings computed elsewhere (e.g. pooled for a batch of utterances at once)
        of distinct spans [S, 2] of this cache's ``num_frames``-frame utterance."""
        if self.num_frames is None:
            self.num_frames = int(num_frames)
        elif self.num_frames != int(num_frames):
            raise RescoreError(f"this SpanCache holds spans of a {self.num_frames}-frame utterance, not of a "
                               f"{num_frames}-frame one (use one cache per utterance)")
        if spans.numel() == 0:
            return
        keys = spans[:, 0].long() * (self.num_frames + 1) + spans[:, 1].long()
        _, hit = self._find(keys)
        self.encoded += int((~hit).sum())
        self._insert(keys[~hit], embeddings[~hit.to(embeddings.device)])

    def _insert(self, keys: torch.Tensor, emb: torch.Tensor) -> None:
        all_keys = torch.cat([self.keys, keys])
        all_emb = emb if self.embeddings is None else torch.cat([self.embeddings, emb.to(self.embeddings.device)])
        order = torch.argsort(all_keys)
        self.keys, self.embeddings = all_keys[order], all_emb[order.to(all_emb.device)]


def select_oov_spans(post: torch.Tensor, span_of_arc: torch.Tensor, is_unk: torch.Tensor, is_weak: torch.Tensor,
                     num_spans: int, max_spans: int) -> torch.Tensor:
    """Which distinct spans get OOV candidates (bool [num_spans]); the rule is in the module doc.

    Arguments are over the word arcs (label > 0, ``<unk>`` included): their posterior, the
    index of their distinct span, whether the word is ``<unk>``, whether the arc is weak
    (``<unk>`` or posterior below the threshold). Every span of a ``<unk>`` arc is chosen;
    of the other spans with a weak arc, the ``max_spans`` with the largest uncertain mass
    (summed posterior of their weak arcs); ties go to the earlier span.
    """
    chosen = torch.zeros(num_spans, dtype=torch.bool)
    chosen[span_of_arc[is_unk]] = True
    weak = is_weak & ~is_unk
    mass = torch.zeros(num_spans, dtype=torch.float64).index_add_(0, span_of_arc[weak], post[weak].double())
    has_weak = torch.zeros(num_spans, dtype=torch.bool)
    has_weak[span_of_arc[weak]] = True
    cand = (has_weak & ~chosen).nonzero().flatten()
    if max_spans > 0 and cand.numel():
        order = torch.sort(mass[cand], descending=True, stable=True).indices[:max_spans]
        chosen[cand[order]] = True
    return chosen


def _finite(x: torch.Tensor, dim: Optional[int] = None):
    """``torch.isfinite(x).all()`` (or ``.all(dim)``, a bool tensor): through numpy for CPU
    tensors, ~20x faster than torch 1.13's check (on speechocean762 dev it was most of the
    per-utterance input check); torch elsewhere and for dtypes numpy lacks (bfloat16)."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64, torch.float16):
        ok = np.isfinite(x.detach().numpy())
        return bool(ok.all()) if dim is None else torch.from_numpy(ok.all(dim))
    ok = torch.isfinite(x)
    return bool(ok.all()) if dim is None else ok.all(dim)


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length; rows of zero or non-finite norm become 0 (cosine 0, as in ``ops``)."""
    n = x.norm(dim=1, keepdim=True)
    ok = (n > 0) & torch.isfinite(n)
    return torch.where(ok, x / torch.where(ok, n, torch.ones_like(n)), torch.zeros_like(x))


SPAN_ENCODINGS = ("auto", "one_pass", "isolated")


def can_encode_in_one_pass(acoustic) -> bool:
    """Whether an acoustic encoder runs once per utterance and pools spans (``utterance_states``
    + ``pool_spans``: the state-pooling encoder, the conv encoder)."""
    return callable(getattr(acoustic, "utterance_states", None)) and callable(getattr(acoustic, "pool_spans", None))


class Rescorer:
    """A trained embedder + scales; rescoring keeps a cache of spelling embeddings.

    ``span_encoding``: how lattice spans are embedded. ``one_pass``: the encoder runs once
    per utterance (batched across utterances) and every span is pooled from that pass;
    ``isolated``: each distinct span's frames are encoded as a separate segment, as in
    training (the conv encoder's old path; for the state-pooling encoder both give the
    same embeddings); ``auto``: one pass where it equals the isolated segments
    (``one_pass_exact`` encoders: state pooling), isolated otherwise. For the conv encoder
    the two differ (context through the receptive field): ``benchmarks/rescore_cost.py``
    measures both, cost and WER; on synthetic test one pass cost 9x less and 0.45 WER
    points more, so ``auto`` keeps the conv encoder isolated and ``one_pass`` is a choice.

    ``compute_type``: the one-pass frame layers' precision (``models.precision``):
    ``float32``, ``bfloat16`` (encoders with ``set_compute_dtype``), or ``auto``
    (bfloat16 where the device runs it natively, else float32).
    """

    def __init__(self, acoustic, letters, config: Optional[RescoreConfig] = None, device: Optional[str] = None,
                 span_encoding: str = "auto", compute_type: str = "float32"):
        if span_encoding not in SPAN_ENCODINGS:
            raise ValueError(f"span_encoding must be one of {', '.join(SPAN_ENCODINGS)}, not {span_encoding!r}")
        if span_encoding == "one_pass" and not can_encode_in_one_pass(acoustic):
            raise ValueError(f"{type(acoustic).__name__} cannot encode spans in one pass per utterance "
                             "(no utterance_states/pool_spans): use span_encoding='isolated'")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.acoustic = acoustic.to(self.device).eval()
        dtype = resolve_compute_type(compute_type, self.device)
        if dtype != torch.float32 and not callable(getattr(acoustic, "set_compute_dtype", None)):
            if compute_type != "auto":
                raise ValueError(f"{type(acoustic).__name__} runs in float32 only (compute_type={compute_type!r})")
            dtype = torch.float32
        if callable(getattr(acoustic, "set_compute_dtype", None)):
            acoustic.set_compute_dtype(dtype)
        self.compute_dtype = dtype
        self.letters = letters.to(self.device).eval()
        self.config = config or RescoreConfig()
        # auto: one pass only where it computes what training learnt (state pooling: exact, tested); the conv
        # encoder's one pass is another function and lost 0.45 WER points on synthetic test (results/rescore_cost.json)
        self.one_pass = span_encoding == "one_pass" or (
            span_encoding == "auto" and can_encode_in_one_pass(acoustic) and bool(getattr(acoustic, "one_pass_exact", False)))
        # the frames the embedder reads (its frontend): spans and features are checked in its units
        recorded = getattr(acoustic, "feature_spec", None)
        self.feature_spec = FeatureSpec.from_json(recorded) if recorded else FBANK
        self.frame_shift = float(getattr(acoustic, "frame_shift", self.feature_spec.frame_shift))
        self._spelling_row: Dict[str, int] = {}  # word -> row of _spelling_matrix
        self._table_rows: Optional[tuple] = None  # (symbol table, its size, row of each word id or -1)
        self._spelling_matrix = torch.empty(0, int(getattr(acoustic, "dim", 0) or 0), device=self.device)
        self._word_list: Optional[WordListIndex] = None  # OOV recovery's word list (set_vocabulary)
        self._lexicon: Optional[tuple] = None  # (table, its size, ids, index): oov_rival="lexicon"'s words

    def features(self, samples: np.ndarray, sampling_rate: int = SAMPLE_RATE, whisper_model: Optional[str] = None) -> torch.Tensor:
        """The frames this rescorer's embedder reads (its frontend: fbank or Whisper states), from audio."""
        return features_from_audio(samples, sampling_rate, self.feature_spec, whisper_model)

    # ------------------------------------------------------------ loading / saving

    @classmethod
    def from_dir(cls, model_dir, device: Optional[str] = None, config: Optional[RescoreConfig] = None,
                 config_name: str = CONFIG_FILE, span_encoding: str = "auto", compute_type: str = "float32") -> "Rescorer":
        """Load ``model_dir`` (an embedder run: best.pt/last.pt) and its scales (``rescorer.json``;
        ``config_name="rescorer_pocketsphinx.json"`` for those tuned on pocketsphinx lattices).
        Without ``rescorer.json`` the default scales apply; a missing other name is an error."""
        model_dir = Path(model_dir)
        if not model_dir.exists():
            raise FileNotFoundError(f"no rescorer model at {model_dir}")
        acoustic, letters, _ = load_embedder(str(model_dir))
        if config is None:
            cfg_path = tuned_config_path(model_dir, config_name)
            if config_name != CONFIG_FILE and not cfg_path.exists():
                raise FileNotFoundError(f"{cfg_path}: no such tuned configuration")
            config = RescoreConfig.from_dict(json.loads(cfg_path.read_text())["config"]) if cfg_path.exists() else RescoreConfig()
        return cls(acoustic, letters, config, device, span_encoding=span_encoding, compute_type=compute_type)

    def save_config(self, model_dir, extra: Optional[dict] = None, name: Optional[str] = None) -> Path:
        """Write the scales to ``model_dir/rescorer.json`` (or ``name``: e.g. scales tuned for another decoder's lattices)."""
        return save_rescore_config(model_dir, self.config, extra, name)

    # ------------------------------------------------------------ embeddings

    @torch.no_grad()
    def spelling_embeddings(self, words: Sequence[str]) -> torch.Tensor:
        """[len(words), D] on the device; each distinct word is embedded once per Rescorer
        (kept as rows of one matrix, so a lattice's words are one gather)."""
        rows = self._spelling_rows(words)  # first: it may grow the matrix
        return self._spelling_matrix[rows]

    @torch.no_grad()  # inference: the spelling matrix (and every score from it) carries no autograd graph
    def _spelling_rows(self, words: Sequence[str]) -> torch.Tensor:
        todo = sorted({w for w in words if w not in self._spelling_row})
        if todo:
            emb = self.letters.encode_words(todo).float().to(self.device)
            if self._spelling_matrix.shape[1] != emb.shape[1]:
                self._spelling_matrix = self._spelling_matrix.new_empty(0, emb.shape[1])
            base = self._spelling_matrix.shape[0]
            self._spelling_matrix = torch.cat([self._spelling_matrix, emb])
            self._spelling_row.update({w: base + i for i, w in enumerate(todo)})
        return torch.tensor([self._spelling_row[w] for w in words], dtype=torch.long, device=self.device)

    @torch.no_grad()
    def span_embeddings(self, feats: torch.Tensor, spans: Sequence[Tuple[int, int]]) -> torch.Tensor:
        """Embed feature-frame spans [start, end) of one utterance: [len(spans), D]."""
        if not spans:
            return torch.empty(0, self.acoustic.dim, device=self.device)
        return self._encode_spans([feats], [torch.tensor(spans, dtype=torch.long).reshape(-1, 2)])[0]

    @torch.no_grad()
    def _encode_spans(self, feats: Sequence[torch.Tensor], spans: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Spans [S_i, 2] of several utterances -> their embeddings [S_i, D] on the device.

        One pass: the encoder runs once over the utterances (``utterance_states``) and every
        span is pooled from its utterance's states. Isolated: every span is cut
        out and all of them are encoded as segments in length-sorted batches.
        """
        counts = [int(x.shape[0]) for x in spans]
        if sum(counts) == 0:
            return [torch.empty(0, self.acoustic.dim, device=self.device) for _ in spans]
        if self.one_pass:
            keep = [i for i, n in enumerate(counts) if n]
            states = self.acoustic.utterance_states([feats[i] for i in keep])
            rows = torch.cat([torch.full((counts[i],), j, dtype=torch.long) for j, i in enumerate(keep)])
            allspans = torch.cat([spans[i] for i in keep]).long()
            emb = self.acoustic.pool_spans(states, rows, allspans[:, 0], allspans[:, 1])
        else:
            segs = [f[int(a):int(b)] for f, sp in zip(feats, spans) for a, b in sp.tolist()]
            emb = self.acoustic.encode_segments(segs, batch_size=self.config.batch_size, device=self.device)
        return list(emb.to(self.device).split(counts))

    @torch.no_grad()
    def embed_spans(self, feats: torch.Tensor, spans: torch.Tensor, cache: Optional[SpanCache] = None) -> torch.Tensor:
        """Embeddings [S, D] of feature-frame spans (integer [S, 2]); with ``cache``, each span once."""
        spans = torch.as_tensor(spans).long().reshape(-1, 2)
        if cache is None:
            return self.span_embeddings(feats, [tuple(p) for p in spans.tolist()])
        return cache.lookup(self, feats, spans)

    def set_vocabulary(self, words, chunk: int = 65536) -> None:
        """The word list that OOV recovery searches (embedded once, in chunks).

        ``words``: a sequence of words (normalised; non-words dropped, duplicates once), a
        ``formats.word_list.WordList``, or the path of a word-list file (read and checked by
        ``read_word_list``: the same files ``rescorer rescore/tune --word-list`` take).
        """
        if is_word_list_file(words):
            words = read_word_list(words)
        if isinstance(words, WordList):
            clean = list(words.words)
        else:
            clean = []
            for w in words:
                try:
                    clean.append(normalize_word(w))
                except NotAWordError:
                    continue
            clean = list(dict.fromkeys(clean))
        if not clean:
            raise RescoreError("the word list for OOV recovery holds no words")
        self._word_list = WordListIndex(clean, self._embed_list(clean, chunk).to(self.device))

    @torch.no_grad()
    def _embed_list(self, words: Sequence[str], chunk: int = 65536) -> torch.Tensor:
        """Spelling embeddings [len(words), D] of a long list (a word list, a lexicon), in chunks."""
        return torch.cat([self.letters.encode_words(list(words[i:i + chunk])).float() for i in range(0, len(words), chunk)])

    def word_list_table(self, base):
        """``base`` extended by the word list's words (the table recovered lattices get; built once
        per input table and shared): a lattice moved onto it can take arcs of any listed word."""
        self._need_vocabulary()
        return self._word_list.table_for(base)

    # ------------------------------------------------------------ scoring

    def _check(self, lat, feats: torch.Tensor) -> torch.Tensor:
        uid = getattr(lat, "utterance_id", "") or "?"
        if not isinstance(feats, torch.Tensor):
            feats = torch.as_tensor(np.asarray(feats))
        bins = getattr(self.acoustic, "feature_dim", None) or getattr(self.acoustic, "config", {}).get("num_mel_bins")
        if feats.dim() != 2 or (bins is not None and feats.shape[1] != bins):
            raise RescoreError(
                f"utterance {uid}: features must be [frames, {bins or 'dim'}] ({self.feature_spec.name} every "
                f"{self.frame_shift * 1000:g} ms, the embedder's frontend), got {tuple(feats.shape)}"
            )
        if feats.shape[0] == 0:
            raise RescoreError(f"utterance {uid}: no feature frames")
        if not _finite(feats):
            raise RescoreError(f"utterance {uid}: features contain NaN or inf")
        validate(lat)
        end_sec = float(lat.fsa.end_frame.max()) * lat.frame_shift if lat.num_arcs else 0.0
        if end_sec > feats.shape[0] * self.frame_shift + 0.1:
            raise RescoreError(
                f"utterance {uid}: the lattice reaches {end_sec:.2f} s but the features cover "
                f"{feats.shape[0] * self.frame_shift:.2f} s (wrong features for this lattice?)"
            )
        return feats.float()

    def awe_scores(self, lat, feats: torch.Tensor, span_cache: Optional[SpanCache] = None) -> torch.Tensor:
        """Per-arc embedding similarity (float32 [A]); 0 on filler/final arcs, unk_awe_score on <unk>.

        ``span_cache``: spans already embedded for this utterance (e.g. by ``recover_oov``)
        are taken from it, new ones added to it.
        """
        return self._awe_scores(lat, self._check(lat, feats), span_cache)

    def _awe_scores(self, lat, feats: torch.Tensor, cache: Optional[SpanCache], arc_spans=None) -> torch.Tensor:
        """``arc_spans``: (scored arcs, their distinct spans, each arc's span) when already
        computed (``_scored_arc_spans``) for this lattice and these features."""
        arc_spans = arc_spans or self._scored_arc_spans(lat, feats.shape[0])
        return self._batch_awe_scores([lat], [arc_spans], [self.embed_spans(feats, arc_spans[1], cache)])[0]

    def _batch_awe_scores(self, lats: Sequence, arc_spans: Sequence[tuple], embedded: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """``_awe_scores`` of a batch of lattices whose distinct spans are embedded (``embedded``,
        one [S_i, D] per lattice, the spans of ``_scored_arc_spans``): the cosine of every
        distinct (span, word) pair of the batch in one ``ops.arc_similarity`` call (the CUDA
        kernel on GPU), then one gather (per-utterance calls cost more in dispatch than in
        arithmetic). ``_awe_scores`` is this for one lattice; batched equals one by one (tested)."""
        outs, span_rows, word_rows, counts = [], [], [], []
        base = 0
        for lat, (idx, uniq, span_of_arc), emb in zip(lats, arc_spans, embedded):
            labels = lat.fsa.labels.long()
            unk = lat.words.get(UNK) if UNK in lat.words else -100
            out = torch.zeros(labels.shape[0], dtype=torch.float32)
            out[labels == unk] = self.config.unk_awe_score
            outs.append(out)
            counts.append(int(idx.numel()))
            if idx.numel():
                span_rows.append(span_of_arc + base)
                word_rows.append(self._spelling_table_rows(lat.words, labels[idx]))
            base += int(emb.shape[0])
        if not span_rows:
            return outs
        A = torch.cat(list(embedded)).float()
        words, word_of_arc = torch.unique(torch.cat(word_rows), return_inverse=True)
        W = self._spelling_matrix[words.to(self.device)].float()
        # arcs repeat (span, word) pairs (one per LM state): each pair's cosine once, then a gather
        pairs, pair_of_arc = torch.unique(torch.cat(span_rows) * len(words) + word_of_arc, return_inverse=True)
        span_of = torch.div(pairs, len(words), rounding_mode="floor").to(A.device)
        word_of = (pairs % len(words)).to(W.device)
        sim = arc_similarity(A, W, torch.stack([span_of, word_of.to(A.device)], 1), metric="cosine").float().cpu()
        # the arcs that read a non-finite embedding get NaN whatever the kernel makes of it (named below)
        bad = ~_finite(A, 1).to(span_of.device)[span_of] | ~_finite(W, 1).to(word_of.device)[word_of]
        sim[bad.cpu()] = float("nan")
        sim = sim[pair_of_arc]
        for lat, (idx, _, _), out, part in zip(lats, arc_spans, outs, sim.split(counts)):
            if not _finite(part):
                raise RescoreError(f"utterance {lat.utterance_id}: non-finite embedding similarity (NaN in the model?)")
            out[idx] = part
        return outs

    def _scored_arc_spans(self, lat, num_frames: int, with_unk: bool = False):
        """(word arcs that get an embedding score, their distinct feature-frame spans [S, 2]
        (``distinct_arc_spans``), each arc's span index); ``with_unk``: ``<unk>`` arcs too (OOV
        recovery embeds their spans). ``_scored_arc_spans_batch`` of one lattice."""
        return self._scored_arc_spans_batch([lat], [num_frames], with_unk)[0]

    def _scored_arc_spans_batch(self, lats: Sequence, num_frames: Sequence[int], with_unk: bool = False) -> List[tuple]:
        """``_scored_arc_spans`` of several lattices in one set of tensor operations over all their
        arcs (per-lattice calls on ~100 arcs cost mostly torch's per-call overhead); each lattice's
        spans are ``distinct_arc_spans``' (tested)."""
        if not lats:
            return []
        fsas = [lat.fsa for lat in lats]
        counts = torch.tensor([int(f.labels.shape[0]) for f in fsas])
        lat_of = torch.repeat_interleave(torch.arange(len(lats)), counts)
        labels = torch.cat([f.labels for f in fsas]).long()
        unk = torch.tensor([int(lat.words.get(UNK)) if UNK in lat.words else -100 for lat in lats])
        scored = (labels > 0) if with_unk else (labels > 0) & (labels != unk[lat_of])
        arcs = scored.nonzero().flatten()
        owner = lat_of[arcs]
        ratio = torch.tensor([float(lat.frame_shift) / self.frame_shift for lat in lats], dtype=torch.float64)[owner]
        frames = torch.tensor([int(n) for n in num_frames])[owner]
        s = torch.round(torch.cat([f.start_frame for f in fsas])[arcs].double() * ratio).long()
        e = torch.round(torch.cat([f.end_frame for f in fsas])[arcs].double() * ratio).long()
        s, e = nonempty_spans(s, e, frames)
        m = int(max(num_frames)) + 1
        keys, inverse = torch.unique((owner * m + s) * m + e, return_inverse=True)  # by lattice, start, end
        key_owner = torch.div(keys, m * m, rounding_mode="floor")
        key_counts = torch.bincount(key_owner, minlength=len(lats)).tolist()
        key_first = torch.cumsum(torch.tensor([0] + key_counts[:-1]), 0)
        spans = torch.stack([torch.div(keys, m, rounding_mode="floor") % m, keys % m], 1)
        first_arc = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), counts[:-1]]), 0)
        local = arcs - first_arc[owner]
        inverse = inverse - key_first[owner]
        arc_counts = torch.bincount(owner, minlength=len(lats)).tolist()
        return list(zip(local.split(arc_counts), spans.split(key_counts), inverse.split(arc_counts)))

    def _spelling_table_rows(self, table, word_ids: torch.Tensor) -> torch.Tensor:
        """Rows of the spelling matrix of a lattice's word ids (CPU long). Each id's row in the
        spelling matrix is looked up once per symbol table (lattices of one decoder share
        one), so later lattices need no string look-ups."""
        known = self._table_rows
        if known is None or known[0] is not table or known[1] != len(table):
            known = (table, len(table), torch.full((max(len(table), 1),), -1, dtype=torch.long))
            self._table_rows = known
        rows = known[2]
        if int(word_ids.max()) >= rows.numel():  # ids beyond the table's size (sparse ids)
            rows = torch.cat([rows, torch.full((int(word_ids.max()) + 1 - rows.numel(),), -1, dtype=torch.long)])
            self._table_rows = known = (table, len(table), rows)
        missing = word_ids[rows[word_ids] < 0]
        if missing.numel():
            rows[missing] = self._spelling_rows([table.get(int(w)) for w in missing]).cpu()
        return rows[word_ids]

    def _prefill_spellings(self, lats: Sequence) -> None:
        """Embed the spellings of a batch's lattice words not cached yet in one call per symbol
        table (not one per lattice: each call costs more than the words it embeds)."""
        by_table: Dict[int, tuple] = {}
        for lat in lats:
            labels = lat.fsa.labels
            unk = lat.words.get(UNK) if UNK in lat.words else -100  # <unk> has no spelling
            entry = by_table.setdefault(id(lat.words), (lat.words, []))
            entry[1].append(labels[(labels > 0) & (labels != unk)])
        for table, ids in by_table.values():
            ids = torch.unique(torch.cat(ids)).long()
            if ids.numel():
                self._spelling_table_rows(table, ids)

    def apply_scores(self, lat, awe: torch.Tensor, config: Optional[RescoreConfig] = None,
                     ctc: Optional[torch.Tensor] = None):
        """Set ``awe_scores`` and the combined ``scores`` (``lattice.scores.with_scores``: the
        config's scales, and its ``oov_lm_score`` on recovered arcs) on a copy of the lattice;
        ``ctc``: per-arc CTC spelling scores, weighted by the config's ``ctc_scale``."""
        c = config or self.config
        required = c.oov_required_advantage(lat.meta.get("oov_word_list_size"))
        return with_scores(lat, Scales.of(c), awe, c.oov_lm_score, ctc, min_oov_advantage=required)

    def best_words_batch(self, batch, config: Optional[RescoreConfig] = None) -> List[List[str]]:
        """The best path's words of every lattice of a ``lattice.batch.LatticeBatch`` (lattices
        with their awe scores) under the config: what ``apply_scores`` + ``best_path_hypothesis``
        give one lattice at a time, for all at once (a tuning grid decodes one batch per point)."""
        c = config or self.config
        required = [c.oov_required_advantage(lat.meta.get("oov_word_list_size")) for lat in batch.lattices]
        return batch.best_words(Scales.of(c), c.oov_lm_score, required)

    def embedding_scores(self, lat, feats, config: Optional[RescoreConfig] = None, recover: bool = False,
                         abstain_at_decoding: bool = False):
        """(lattice, awe scores [A], recovered): the work ``rescore`` does before decoding.

        The lattice and features are checked once; with ``recover``, OOV arcs are added first
        (the returned lattice is the recovered one) and every distinct span is embedded once
        for both steps. ``apply_scores(lattice, awe, config)`` then decodes under any scales.
        ``abstain_at_decoding``: keep every proposal, guarded ones too, with its evidence
        (``oov_advantage``), so that ``apply_scores`` abstains under each config's margin
        (tuning the margin on dev without redoing the recovery; module doc).
        """
        return self.embedding_scores_batch([lat], [feats], config, recover, abstain_at_decoding)[0]

    def embedding_scores_batch(self, lats: Sequence, feats: Sequence, config: Optional[RescoreConfig] = None,
                               recover: bool = False, abstain_at_decoding: bool = False) -> List[tuple]:
        """``embedding_scores`` of several utterances at once: [(lattice, awe, recovered)], in order.

        Every distinct span any step can need (the spans of all word arcs; recovered arcs
        reuse their arc's span) is embedded up front for the whole batch: in one encoder pass
        over the padded utterances (``one_pass``) or as one list of segments. The results
        equal those of one utterance at a time (tested). The caller sizes the batch
        (``batches_by_frames``); a bad lattice or features raise before anything is embedded.
        """
        c = config or self.config
        if recover:
            self._need_vocabulary()
        if len(lats) != len(feats):
            raise ValueError(f"{len(lats)} lattices but {len(feats)} feature matrices")
        checked = [self._check(lat, f) for lat, f in zip(lats, feats)]
        arc_spans = self._scored_arc_spans_batch(lats, [f.shape[0] for f in checked], with_unk=recover)
        self._prefill_spellings(lats)
        spans = [a[1] for a in arc_spans]
        embedded = self._encode_spans(checked, spans)
        if not recover:  # every score at once: one gather and row-wise dot product for the whole batch
            return [(lat, awe, []) for lat, awe in zip(lats, self._batch_awe_scores(lats, arc_spans, embedded))]
        caches = [SpanCache() for _ in lats]
        for cache, f, sp, emb in zip(caches, checked, spans, embedded):
            cache.add(f.shape[0], sp, emb)
        out = []
        for lat, f, cache, a in zip(lats, checked, caches, arc_spans):
            recovered: List[Tuple[str, float, float]] = []
            if recover:  # new lattice, new arcs (on spans already in the cache)
                lat, recovered = self._recover(lat, f, c, cache, keep_all=abstain_at_decoding)
                a = None
            out.append((lat, self._awe_scores(lat, f, cache, a), recovered))
        return out

    def rescore(self, lat, feats, config: Optional[RescoreConfig] = None, recover: bool = False) -> RescoreResult:
        """Embedding scores on every arc, combined; best path and word confidences.

        ``feats``: the utterance's 80-bin fbank at 10 ms ([T, 80]; rescorer.segments'
        extractor); use ``features_from_audio`` for raw audio. With ``recover=True``,
        OOV recovery (see module doc) runs first; it needs ``set_vocabulary``.
        """
        c = config or self.config
        return self.result(lat, *self.embedding_scores(lat, feats, c, recover), c)

    def rescore_batch(self, lats: Sequence, feats: Sequence, config: Optional[RescoreConfig] = None,
                      recover: bool = False) -> List[RescoreResult]:
        """``rescore`` of several utterances, their spans embedded together
        (``embedding_scores_batch``); the results equal ``rescore`` one by one."""
        c = config or self.config
        out = []
        for given, (lat, awe, recovered) in zip(lats, self.embedding_scores_batch(lats, feats, c, recover)):
            out.append(self.result(given, lat, awe, recovered, c))
        return out

    def result(self, given, lat, awe, recovered, c: RescoreConfig, ctc: Optional[torch.Tensor] = None) -> RescoreResult:
        """The ``RescoreResult`` of a prepared lattice (``lat``, with its ``awe`` and, for the CTC
        fusion, ``ctc`` per-arc scores) under ``c``; ``given``: the lattice before recovery added
        ``recovered`` (word, start, end) arcs, so the result names the added words on its path."""
        scored = self.apply_scores(lat, awe, c, ctc)
        hyp = best_path_hypothesis(scored)
        conf = word_confidences(scored, hyp.words, scale=c.posterior_scale) if hyp.words else []
        return RescoreResult(scored, hyp, conf, added_words_on_path(given, hyp.words, recovered))

    # ------------------------------------------------------------ OOV recovery

    def _need_vocabulary(self) -> None:
        if self._word_list is None:
            raise RescoreError("OOV recovery needs a word list: call set_vocabulary(words) first")

    def recover_oov(self, lat, feats, config: Optional[RescoreConfig] = None, span_cache: Optional[SpanCache] = None):
        """Add nearest-spelling alternatives for <unk> and weak arcs (rule in the module doc).

        Returns (lattice, added): a new lattice (the input and its symbol table are not
        modified) on the extended symbol table (``WordListIndex.table_for``), and (word,
        start_sec, end_sec) of every added arc. ``span_cache``: share it with a following
        ``awe_scores`` call on the returned lattice so spans are embedded once.
        """
        c = config or self.config
        self._need_vocabulary()
        return self._recover(lat, self._check(lat, feats), c, span_cache)

    def _recover(self, lat, feats: torch.Tensor, c: RescoreConfig, cache: Optional[SpanCache], keep_all: bool = False):
        word_list = self._word_list
        table, vocab_ids = word_list.table_for(lat.words)
        unchanged = with_table(lat, table)
        k = min(int(c.oov_topk), len(word_list))
        fsa = lat.fsa
        labels = fsa.labels.long()
        if k <= 0:
            return unchanged, []
        unk = int(lat.words.get(UNK)) if UNK in lat.words else -100
        base = self.apply_scores(lat, torch.zeros(labels.shape[0]), replace(c, awe_scale=0.0))
        post = arc_posteriors(base, scale=c.posterior_scale).float().cpu()
        words = (labels > 0).nonzero().flatten()  # word arcs, <unk> included
        if words.numel() == 0:
            return unchanged, []
        is_unk = labels[words] == unk
        is_weak = is_unk | (post[words] < c.oov_posterior_threshold)
        spans, span_of = distinct_arc_spans(lat, words, feats.shape[0], self.frame_shift)
        chosen = select_oov_spans(post[words], span_of, is_unk, is_weak, spans.shape[0], int(c.oov_max_spans))
        guards = keep_all or c.oov_margin is not None
        protected = self._protected_arcs(lat, words, c) if guards else torch.zeros(words.shape[0], dtype=torch.bool)
        pick = is_weak & chosen[span_of]
        if not keep_all:
            pick &= ~protected  # abstaining: a protected arc's span is not even searched for it
        arcs, arc_span, arc_protected = words[pick], span_of[pick], protected[pick]  # in arc order
        if arcs.numel() == 0:
            return unchanged, []
        qspans, qrow = torch.unique(arc_span, return_inverse=True)
        Q = self.embed_spans(feats, spans[qspans], cache)
        vals, ids = word_list.nearest(Q, k)
        vals, ids = vals.cpu()[qrow], ids.cpu()[qrow]  # [arcs, k], best first
        cand = vocab_ids[ids.clamp(min=0)]
        ok = (ids >= 0) & torch.isfinite(vals) & (vals >= c.oov_min_similarity) & (cand != labels[arcs][:, None])
        # the evidence for each proposal: its cosine minus the arc's own (a <unk> arc's is unk_awe_score);
        # -inf where a guard forbids it (a protected arc, a word shorter than oov_min_letters)
        rival = self._own_similarity(lat, arcs, Q, qrow, unk, c)[:, None]
        if c.oov_rival == "lexicon":
            rival = torch.maximum(rival, self._lexicon_rival(lat.words, Q, qrow, cand))
        advantage = vals - rival
        if guards:
            short = word_list.letters[ids.clamp(min=0)] < int(c.oov_min_letters)
            advantage = advantage.masked_fill(arc_protected[:, None] | short, float("-inf"))
        from_arc = arcs[:, None].expand_as(ids)[ok]  # row-major: arc order, then rank
        new_label, new_vocab, advantage = cand[ok], ids[ok], advantage[ok]
        old3 = fsa.arcs.values()[:, :3].long()
        rows = torch.stack([old3[from_arc, 0], old3[from_arc, 1], new_label], 1)
        am = fsa.am_scores[from_arc]
        # a recovered <unk> keeps the LM's <unk> score; another word gets the OOV cost
        lm = torch.where(labels[from_arc] == unk, fsa.lm_scores[from_arc], torch.full_like(am, c.oov_lm_score))
        # several weak arcs between the same states may propose the same word (from other spans,
        # with other acoustic scores): the proposal that scores best under this config is kept,
        # a guarded one only when no other proposes that word there (so abstaining after this
        # choice, at any margin, keeps what abstaining before it would)
        score = combine(Scales.of(c), am, lm, new_label, vals[ok])
        if guards:
            score = score.masked_fill(torch.isinf(advantage), float("-inf"))
        keep = new_arc_mask(old3, rows, int(fsa.shape[0]), priority=score)
        required = c.oov_required_advantage(len(word_list))
        if not keep_all and required is not None:
            keep &= advantage >= required
        rows, from_arc, new_vocab, am, lm, advantage = (
            rows[keep], from_arc[keep], new_vocab[keep], am[keep], lm[keep], advantage[keep])
        if rows.shape[0] == 0:
            return unchanged, []
        sf, ef = fsa.start_frame[from_arc], fsa.end_frame[from_arc]
        attrs = {"start_frame": sf, "end_frame": ef, "am_scores": am, "lm_scores": lm,
                 "oov_lm_arcs": labels[from_arc] != unk, "oov_advantage": advantage}
        fs = lat.frame_shift
        added = [(word_list.words[i], s * fs, e * fs) for i, s, e in zip(new_vocab.tolist(), sf.tolist(), ef.tolist())]
        out = add_arcs(lat, rows, attrs, table)
        out.meta["oov_word_list_size"] = len(word_list)
        return out, added

    def _lexicon_rival(self, table, Q: torch.Tensor, qrow: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """float32 [arcs, k]: for each proposal (``cand``: symbol ids [arcs, k], on spans ``Q[qrow]``),
        the best cosine of any other word of ``table`` (the decoder's lexicon) on its span."""
        ids, index = self.spelling_index(table)
        if len(index) == 0:
            return torch.full(cand.shape, float("-inf"))
        vals, rows = index.search(Q.to(index.vocab.device), min(2, len(index)))
        vals, best = vals.cpu()[qrow], ids[rows.cpu()][qrow]  # [arcs, 2]: the two best lexicon words
        if vals.shape[1] == 1:
            return torch.where(best[:, :1] == cand, torch.tensor(float("-inf")), vals[:, :1])
        return torch.where(best[:, :1] == cand, vals[:, 1:2], vals[:, :1])

    def spelling_index(self, table):
        """(symbol ids [V], ``ops.NearestIndex`` of their spellings) of the words of a symbol table,
        built once per table (its special symbols and non-words left out)."""
        hit = self._lexicon
        if hit is not None and hit[0] is table and hit[1] == len(table):
            return hit[2], hit[3]
        ids, words = [], []
        for sym in table.symbols:
            try:
                w = normalize_word(sym)
            except NotAWordError:
                continue
            if w == sym:
                ids.append(int(table.get(sym)))
                words.append(w)
        emb = self._embed_list(words) if words else torch.zeros(0, max(1, self._spelling_matrix.shape[1]))
        index = NearestIndex(_unit_rows(emb.to(self.device)), metric="cosine")
        self._lexicon = (table, len(table), torch.tensor(ids, dtype=torch.long), index)
        return self._lexicon[2], index

    def _protected_arcs(self, lat, arcs: torch.Tensor, c: RescoreConfig) -> torch.Tensor:
        """bool [len(arcs)]: arcs recovery may not replace (span shorter than
        ``oov_min_span_seconds``; a function word, with ``oov_protect_function_words``)."""
        fsa = lat.fsa
        seconds = (fsa.end_frame[arcs] - fsa.start_frame[arcs]).double() * lat.frame_shift
        out = seconds < float(c.oov_min_span_seconds) - 1e-9
        if c.oov_protect_function_words:
            labels = fsa.labels[arcs].long()
            ids = torch.unique(labels)
            fw = torch.tensor([lat.words.get(int(i)) in FUNCTION_WORDS for i in ids.tolist()], dtype=torch.bool)
            out |= fw[torch.searchsorted(ids, labels)]
        return out

    def _own_similarity(self, lat, arcs: torch.Tensor, Q: torch.Tensor, qrow: torch.Tensor, unk: int,
                        c: RescoreConfig) -> torch.Tensor:
        """float32 [len(arcs)]: each arc's own embedding score on its span (what ``awe_scores``
        gives it: the cosine with its word's spelling; ``unk_awe_score`` for ``<unk>``)."""
        labels = lat.fsa.labels[arcs].long()
        own = torch.full((arcs.numel(),), float(c.unk_awe_score), dtype=torch.float32)
        known = labels != unk
        if bool(known.any()):
            uw, w_of = torch.unique(labels[known], return_inverse=True)
            W = self.spelling_embeddings([lat.words.get(int(x)) for x in uw])
            pairs = torch.stack([qrow[known], w_of], 1).to(self.device)
            own[known] = arc_similarity(Q, W, pairs, metric="cosine").float().cpu()
        return own


class WordListIndex:
    """OOV recovery's word list: its words, one ``ops.NearestIndex`` of their spelling
    embeddings (cosine; the CUDA kernel on GPU, the torch reference on CPU), and the
    symbol table that extends a lattice's table by the list's words.

    The extended table is built once per input table (the last one asked for is kept, with
    its size: one table per corpus in practice), so recovered lattices of lattices that
    share a table share one table and can be saved in one shard.
    """

    def __init__(self, words: Sequence[str], embeddings: torch.Tensor):
        if len(words) != embeddings.shape[0]:
            raise ValueError(f"{len(words)} words but {embeddings.shape[0]} spelling embeddings")
        self.words = list(words)
        self.index = NearestIndex(_unit_rows(embeddings.float()), metric="cosine")
        # letters a-z of each word (apostrophes not counted): the oov_min_letters guard
        self.letters = torch.tensor([sum(ch.isalpha() for ch in w) for w in self.words], dtype=torch.long)
        self._table: Optional[tuple] = None  # (base table, its size, extended table, word ids, its size)

    def __len__(self) -> int:
        return len(self.words)

    @torch.no_grad()
    def nearest(self, queries: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(cosine [N, k], word-list index [N, k]) of each query's k nearest spellings, best first."""
        return self.index.search(queries.to(self.index.vocab.device), k)

    def table_for(self, base):
        """(table, ids): ``base`` extended by the list's missing words (``lattice.edit.extend_table``),
        and each listed word's id in it; ``base`` itself is never modified."""
        hit = self._table
        if hit is not None and (hit[0] is base and hit[1] == len(base) or hit[2] is base and len(hit[2]) == hit[4]):
            return hit[2], hit[3]  # base is the last table asked for, or the extension made for it
        table, ids = extend_table(base, self.words)
        self._table = (base, len(base), table, ids, len(table))
        return table, ids


def features_from_audio(samples: np.ndarray, sampling_rate: int = SAMPLE_RATE, spec: FeatureSpec = FBANK,
                        whisper_model: Optional[str] = None) -> torch.Tensor:
    """The frames of frontend ``spec`` (80-bin fbank at 10 ms by default; ``Rescorer.features``
    passes its embedder's) from audio, with the extractor training used."""
    from rescorer.frontends import extractor_for_spec

    if samples is None or len(samples) == 0:
        raise RescoreError("empty audio")
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if sampling_rate != SAMPLE_RATE:
        from rescorer.corpora.tts.base import resample_to_16k

        x = resample_to_16k(x[0], sampling_rate)[None, :]
    return torch.from_numpy(np.asarray(extractor_for_spec(spec, whisper_model).extract(x, SAMPLE_RATE), dtype=np.float32))
