"""Stage: tune the rescoring scales on dev, report on held-out data, keep the scales with the model.

Protocol. The scales (embedding weight, LM scale, word insertion penalty) are chosen on
the dev lattices only and then applied to the test lattices. Without a test split (e.g.
speechocean762, which has only a dev split here) ``cross_validate``: dev speakers are
split into ``folds`` groups (seeded; two halves by default); each group is decoded with the
scales tuned on all the others, and the pooled result is reported, so no reported hypothesis
was tuned on itself. More folds tune each on more of dev (4/5 of it with 5, against half),
for methods whose dev evidence is thin (a few dozen right hits).

Methods written (under ``prefix``): ``awe_rescore`` (embedding scores on every arc),
``awe_rescore_oov_recovery`` (plus nearest-spelling alternatives from a large word list:
``word_list``, a word-list file such as ``rescorer word-lists``' large.txt, or else the
first ``word_list_size`` words of ``large_word_list``), ``awe_rescore_context_list`` (the
same from a context list: ``context_list`` for dev, ``test_context_list`` for test, each
split's own OOV words among distractors), ``awe_plus_attention`` (with ``attention_model_dir``: the embedding-rescored lattice's
n-best rescored by an attention decoder, ``rescorer.second_pass``; weight tuned on dev),
``ctc_word_spotting``, ``lattice_ctc_word_spotting`` and ``awe_ctc_rescore`` (with ``ctc_model_dir``;
``rescorer.stages.tune_ctc``: CTC word spotting over ``word_list`` into the CTC greedy 1-best or into
the lattice's, and embedding + CTC spelling scores with recovery from both),
each with wer, iv_wer, oov_wer, the OOV accounting of ``recovery_counts`` (oov_recall,
oov_precision, oov_tokens_proposed, iv_tokens_broken: against the lattice's 1-best; for the
recovery methods also ``added_counts``, what recovery itself changed against the same scales
without it: added_oov_recovered, added_oov_proposed, added_oov_precision, added_iv_broken), rescoring_seconds_per_decode_second
and, for the two recovery methods, the list (``word_list``, ``word_list_size``) and the
chosen abstention margin in ``scales`` (tuned on dev with ``oov_margins``, None being the
rule before abstention, with the scales and ``oov_lm_scores``; ``"oov_recovery": "abstained"`` on
a fold where dev showed no gain from recovery, or missed ``oov_min_precision``:
``evaluation.rescoring.choose_recovery``); and ``<prefix>baseline_tuned`` (same scales grid,
embedding weight 0) so the gain is measured against an equally tuned decoder, and
``<prefix>lattice_1best`` (the lattice's own best path).

Outputs: the methods merged into the WER file ``out`` (with one provenance record per
corpus, prefix and methods), the dev tuning curve beside it
(``rescore_tuning_<corpus>_<prefix or lattices>.json`` + .png), and with ``save_config``
the chosen scales in the model directory (``rescorer.json``, or
``rescorer_<prefix>.json`` for another decoder's lattices), which ``Rescorer.from_dir`` reads:
``awe_rescore``'s scales and the recovery methods' margin and OOV LM cost (the large list's
if both ran; not where it abstained). A run of recovery methods alone keeps the scales that file already holds.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import platform
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from rescorer.corpora.text_sources import large_word_list
from rescorer.evaluation.rescoring import (abstained, added_counts, decode_all, evaluate, plot_tuning_curve, prepare_all,
                                          recovery_counts, recovery_off, tune, tune_recovery)
from rescorer.formats.utterances import read_utterance_features
from rescorer.formats.word_list import WordListError, read_word_list
from rescorer.lattice.word_lattice import best_path_hypothesis, load_word_lattices, prune
from rescorer.rescore import Rescorer, save_rescore_config
from rescorer.second_pass import AttentionScorer, attention_candidates, pick_best
from rescorer.stages import StageError
from rescorer.stages.tune_ctc import CTC_METHODS, ctc_methods, fusion_config
from rescorer.stages.tune_whisper import VOTE_METHODS, WHISPER_METHODS, whisper_methods
from rescorer.transcript_hits import HIT_MODEL_FORMS
from rescorer.wer import compute_wer

log = logging.getLogger(__name__)

METHODS = ("awe_rescore", "awe_rescore_oov_recovery", "awe_rescore_context_list", "awe_plus_attention",
           "ctc_word_spotting", "lattice_ctc_word_spotting", "awe_ctc_rescore") + WHISPER_METHODS + VOTE_METHODS
RECOVERY_METHODS = ("awe_rescore_oov_recovery", "awe_rescore_context_list")
HIT_MODEL_HITS = ("all_lists", "own")  # which dev hits a Whisper list's hit model is fitted on
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class TuneSettings:
    """Inputs, grids and outputs of one tuning run: the options of ``rescorer tune``, whose
    defaults are the defaults (here only "absent" has one)."""

    corpus: str  # entry name in the WER file
    model_dir: str
    train_data: str  # acoustic training utterances: their words are in-vocabulary
    dev_lattices: str
    dev_features: str
    awe_scales: Tuple[float, ...]
    lm_scales: Tuple[float, ...]
    wips: Tuple[float, ...]  # word insertion penalties
    am_scale: float
    attention_scales: Tuple[float, ...]
    attention_nbest: int
    prune_posterior: float  # drop arcs below this posterior before rescoring (0: keep all)
    prune_scale: float  # scale of the lattice scores for those posteriors
    word_list_size: int  # OOV recovery: words of the large word list searched
    max_utterances: int  # the first N lattices of each split (0: all)
    seed: int  # the speaker halves of cross-validation
    out: str  # the WER file results are merged into
    test_lattices: Optional[str] = None
    test_features: Optional[str] = None
    cross_validate: bool = False  # no test split: cross-validation over dev speakers
    folds: int = 2  # ... in this many speaker groups
    decode_metrics: Optional[str] = None  # the decoder's metrics.json: rescoring cost relative to decoding
    prefix: str = ""  # method name prefix, e.g. pocketsphinx_
    methods: Optional[Tuple[str, ...]] = None  # None: the embedding methods of METHODS (not the CTC ones)
    oov_lm_scores: Optional[Tuple[float, ...]] = None  # OOV recovery: LM costs of a recovered word to tune
    oov_margins: Optional[Tuple[Optional[float], ...]] = None  # OOV recovery: abstention margins to tune (None: old rule)
    word_list: Optional[str] = None  # awe_rescore_oov_recovery's list file (default: large_word_list(word_list_size));
    # also the words ctc_word_spotting spots and awe_ctc_rescore's recovery searches (on dev)
    recovery_tuning: str = "two_step"  # recovery methods: two_step (scales, then recovery's settings) or joint
    test_word_list: Optional[str] = None  # the CTC methods' list on test (default: word_list), e.g. context_test.txt
    context_list: Optional[str] = None  # awe_rescore_context_list's list file for dev
    test_context_list: Optional[str] = None  # ... for test (default: context_list)
    attention_model_dir: Optional[str] = None  # joint CTC/attention model for awe_plus_attention
    device: Optional[str] = None
    save_config: bool = False
    batch_frames: int = 20000  # utterances whose spans are embedded in one encoder pass (padded frames)
    span_encoding: str = "auto"  # Rescorer's span_encoding: auto, one_pass, isolated
    compute_type: str = "float32"  # one-pass frame layers' precision: float32, bfloat16, auto (models.precision)
    oov_rival: str = "arc"  # recovery: what a proposal must beat by the margin (RescoreConfig.oov_rival)
    # recovery methods (two-step tuning) and awe_ctc_rescore: a precision target for the recovered
    # words on dev (evaluation.rescoring.choose_recovery); None: the lowest dev WER. Either way
    # recovery abstains on a fold where dev does not show what is asked
    oov_min_precision: Optional[float] = None
    # how many standard errors below its dev precision a point's must still meet oov_min_precision
    # (evaluation.rescoring.choose_recovery; 0: its dev precision itself)
    oov_min_precision_z: float = 0.0
    # ... and a significance level: the added words must help more dev utterances than they hurt,
    # by a one-sided sign test at this p (evaluation.rescoring.paired_sign_test); None: not asked
    oov_max_sign_p: Optional[float] = None
    # CTC methods (rescorer.stages.tune_ctc)
    ctc_model_dir: Optional[str] = None  # the CTC model whose log-probs are spotted / score spellings
    dev_ctc_log_probs: Optional[str] = None  # its log-probs as the decoder stored them (decode --save-ctc-log-probs)
    # awe_ctc_rescore's evidence gate on added arcs (rescore_ctc.EvidenceGate), tuned with the LM cost;
    # None in a grid: that view not asked. Both (None,): no gate, no evidence computed
    oov_min_posteriors: Tuple[Optional[float], ...] = (None,)
    oov_min_ctc_margins: Tuple[Optional[float], ...] = (None,)
    test_ctc_log_probs: Optional[str] = None
    ctc_scales: Tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0)
    ctc_norms: Tuple[str, ...] = ("none", "frame", "token")
    # awe_ctc_rescore's CTC log-prob temperature; a grid: fitted per fold on dev transcripts (tune_ctc)
    ctc_temperatures: Tuple[float, ...] = (1.0,)
    ws_bonuses: Tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)  # ctc_word_spotting: per-token bonus grid
    ws_thresholds: Tuple[float, ...] = (-5.0,)  # ctc_word_spotting: hit threshold grid
    ws_bonus: float = 3.0  # awe_ctc_rescore's spotter (fixed: its lattices are prepared once)
    ws_threshold: float = -5.0
    ws_beam: float = 7.0
    ws_token_weight: float = 0.5
    # second-recogniser methods (rescorer.stages.tune_whisper): `rescorer transcribe`'s files, and
    # the embedder's gates on the hits to tune (None in the grid: every hit)
    dev_transcripts: Optional[str] = None
    test_transcripts: Optional[str] = None
    whisper_gates: Tuple[Optional[float], ...] = (None, 0.0, 0.2, 0.4)
    whisper_confidence_gates: Tuple[Optional[float], ...] = (None, 0.2, 0.4, 0.6, 0.8)
    whisper_probability_gates: Tuple[Optional[float], ...] = ()  # least probability of a hit model (none: not asked)
    # the word LM of each hit's lm_gain (transcript_hits.load_hit_lm; None: none), saved with the tuned config
    hit_lm: Optional[str] = "pocketsphinx"
    # the dev hits a list's hit model is fitted on: "all_lists", its own and the other lists' of the
    # same run on the same paths (evaluation.transcript_spotting.fit_hit_model), or "own"
    hit_model_hits: str = "all_lists"
    # that model's form (transcript_hits.HIT_MODEL_FORMS): "linear", or "quadratic", which also weighs
    # the products of two pieces of evidence
    hit_model_form: str = "linear"
    # whisper_lattice_vote (decoding.transcript_vote): the lattice's word replaces Whisper's where
    # Whisper's confidence is below one of these and the lattice's posterior at least one of those;
    # and Whisper's word facing nothing on the path is dropped below one of the last (None: never)
    whisper_vote_confidences: Tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    whisper_vote_posteriors: Tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95)
    whisper_vote_drop_confidences: Tuple[Optional[float], ...] = (None, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

    def abstain_reason(self) -> str:
        """Why recovery abstained, for a log line ("... does not <reason> on dev")."""
        margin = f" ({self.oov_min_precision_z:g} standard errors down)" if self.oov_min_precision_z else ""
        why = "lower the WER" if self.oov_min_precision is None else \
            f"reach precision {self.oov_min_precision}{margin} without raising the WER"
        if self.oov_max_sign_p is not None:
            why += f" on more utterances than it hurts (sign test p <= {self.oov_max_sign_p})"
        return why

    def keep_rule(self) -> dict:
        """The row fields naming the keep-or-abstain rule dev applied (none: the default)."""
        return {k: v for k, v in (("oov_min_precision", self.oov_min_precision), ("oov_max_sign_p", self.oov_max_sign_p),
                                  ("oov_min_precision_z", self.oov_min_precision_z or None))
                if v is not None}

    def __post_init__(self):
        if self.methods is None:  # every method whose inputs are given (the CTC and Whisper methods when asked for)
            object.__setattr__(self, "methods", tuple(m for m in METHODS if m not in CTC_METHODS + WHISPER_METHODS
                                                      + VOTE_METHODS and (m != "awe_rescore_context_list" or self.context_list)))
        if not self.cross_validate and not (self.test_lattices and self.test_features):
            raise StageError("test lattices and test features are needed (or cross-validation over dev speakers)")
        if self.folds < 2:
            raise StageError(f"cross-validation needs at least 2 folds, not {self.folds}")
        if self.hit_model_hits not in HIT_MODEL_HITS:
            raise StageError(f"hit_model_hits must be one of {', '.join(HIT_MODEL_HITS)}, not {self.hit_model_hits!r}")
        if self.hit_model_form not in HIT_MODEL_FORMS:
            raise StageError(f"hit_model_form must be one of {', '.join(HIT_MODEL_FORMS)}, not {self.hit_model_form!r}")
        if self.folds != 2 and not self.cross_validate:
            raise StageError("--folds is the number of speaker folds of --cross-validate: add it, or leave --folds out")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise StageError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        if "awe_plus_attention" in self.methods and "awe_rescore" not in self.methods:
            raise StageError("awe_plus_attention rescores awe_rescore's lattices: add awe_rescore to the methods")
        if not self.methods:
            raise StageError(f"no method to tune; choose from {', '.join(METHODS)}")
        ctc = [m for m in self.methods if m in CTC_METHODS]
        if ctc and not self.ctc_model_dir:
            raise StageError(f"{', '.join(ctc)} need the CTC model (--ctc-model-dir exp/ctc)")
        spotting = [m for m in self.methods if m in ("ctc_word_spotting", "lattice_ctc_word_spotting")]
        if spotting and not self.word_list:
            raise StageError(f"{', '.join(spotting)} need{'s' if len(spotting) == 1 else ''} a word list "
                             "(--word-list FILE, one word per line)")
        whisper = [m for m in self.methods if m in WHISPER_METHODS + VOTE_METHODS]
        if whisper and "awe_rescore" not in self.methods:
            raise StageError(f"{', '.join(whisper)} combine Whisper's words with awe_rescore's hypotheses: add awe_rescore "
                             "to the methods")
        if whisper and not (self.dev_transcripts and (self.cross_validate or self.test_transcripts)):
            raise StageError(f"{', '.join(whisper)} need the transcripts (--dev-transcripts, --test-transcripts; "
                             "from rescorer transcribe)")
        if self.test_transcripts and self.cross_validate:
            raise StageError("cross-validation over dev speakers reads dev only: drop --test-transcripts")
        if "awe_whisper_context_list" in self.methods and not self.context_list:
            raise StageError("awe_whisper_context_list needs a context list (--context-list FILE)")
        if "awe_rescore_context_list" in self.methods and not self.context_list:
            raise StageError("awe_rescore_context_list needs a context list (--context-list FILE, e.g. from rescorer word-lists)")
        if self.test_context_list and self.cross_validate:
            raise StageError("cross-validation over dev speakers uses the dev context list only: drop --test-context-list")
        if self.oov_min_precision is not None and not 0.0 < self.oov_min_precision <= 1.0:
            raise StageError(f"--oov-min-precision must be in (0, 1], got {self.oov_min_precision}")
        if not (math.isfinite(self.oov_min_precision_z) and self.oov_min_precision_z >= 0):
            raise StageError(f"--oov-min-precision-z must be a number of standard errors >= 0, got {self.oov_min_precision_z}")
        if self.oov_min_precision_z and self.oov_min_precision is None:
            raise StageError("--oov-min-precision-z is a margin on --oov-min-precision: give the target too")
        if self.oov_max_sign_p is not None and not 0.0 < self.oov_max_sign_p <= 1.0:
            raise StageError(f"--oov-max-sign-p must be in (0, 1], got {self.oov_max_sign_p}")
        if self.oov_max_sign_p is not None and self.recovery_tuning != "two_step":
            raise StageError("--oov-max-sign-p judges recovery's step 2 in the two-step tuning: drop --recovery-tuning joint")
        if self.oov_min_precision is not None and self.recovery_tuning != "two_step":
            raise StageError("--oov-min-precision chooses recovery's settings in the two-step tuning: drop --recovery-tuning joint")
        if self.recovery_tuning not in ("two_step", "joint"):
            raise StageError(f"recovery tuning must be two_step or joint, got {self.recovery_tuning!r}")
        if (self.dev_ctc_log_probs or self.test_ctc_log_probs) and not ctc:
            raise StageError("--dev/test-ctc-log-probs serve the CTC methods: add ctc_word_spotting or awe_ctc_rescore")
        if self.test_ctc_log_probs and self.cross_validate:
            raise StageError("cross-validation over dev speakers reads dev only: drop --test-ctc-log-probs")
        if self.test_word_list and self.cross_validate:
            raise StageError("cross-validation over dev speakers uses the dev word list only: drop --test-word-list")
        if not self.ctc_temperatures or not all(math.isfinite(t) and t > 0 for t in self.ctc_temperatures):
            raise StageError(f"--ctc-temperatures must be positive numbers, got {list(self.ctc_temperatures)}")
        if self.ctc_temperatures != (1.0,) and "awe_ctc_rescore" not in self.methods:
            raise StageError("--ctc-temperatures recalibrates awe_ctc_rescore's CTC log-probs: add that method")
        if self.test_word_list and not self.word_list:
            raise StageError("--test-word-list is the CTC methods' list on test: give --word-list for dev too")


def _features(path, spec):
    """(frames by utterance, reference words, speakers) of a split; frames of ``spec`` (the embedder's frontend)."""
    u = read_utterance_features(path, expect=spec)
    texts = {uid: t.split() for uid, t in zip(u.utterance_ids, u.texts)}
    return u.by_id(), texts, dict(zip(u.utterance_ids, u.speakers))


def _train_vocab(path):
    return {w for t in read_utterance_features(path, expect=None).texts for w in t.split()}


def _decode_seconds(metrics_path, n_utts_fraction=1.0):
    """Decoding time of the decoder whose lattices are rescored (from its metrics.json)."""
    if not metrics_path or not Path(metrics_path).exists():
        return None
    m = json.loads(Path(metrics_path).read_text())
    for key in ("lattice_seconds", "decode_seconds"):
        if key in m:
            return float(m[key]) * n_utts_fraction
    audio = m.get("audio_seconds")
    rtf = (m.get("methods", {}).get("hlg_1best") or m.get("hlg_1best") or {}).get("rtf") if isinstance(m, dict) else None
    if audio and rtf:
        return float(audio) * float(rtf) * n_utts_fraction
    return None


def _prune_all(lattices, min_posterior, scale=1.0):
    """Posterior-prune every lattice (word_lattice.prune, posteriors of scores x scale); returns (lattices, seconds)."""
    if not min_posterior:
        return lattices, 0.0
    t0 = time.perf_counter()
    before = sum(l.num_arcs for l in lattices.values())
    out = {u: prune(l, min_posterior, scale=scale) for u, l in lattices.items()}
    seconds = time.perf_counter() - t0
    log.info("pruned %d lattices at posterior %g: %d -> %d arcs (%.1f s)", len(out), min_posterior, before,
             sum(l.num_arcs for l in out.values()), seconds)
    return out, seconds


def _load_lattices(path, s: TuneSettings):
    """The first ``max_utterances`` lattices of a split (sorted ids), pruned; returns (lattices, prune seconds)."""
    lats = load_word_lattices(path)
    if s.max_utterances:
        lats = {u: lats[u] for u in sorted(lats)[: s.max_utterances]}
    return _prune_all(lats, s.prune_posterior, s.prune_scale)


def missing_lattices(metrics_path, lattices, max_utterances: int = 0) -> List[str]:
    """Utterances the decoder could make no word lattice for (decode metrics' ``no_lattice``),
    within the ``max_utterances`` window: they count as empty hypotheses (all deletions), as
    in the decoder's own WER, so every method is scored on the same utterances."""
    if not metrics_path or not Path(metrics_path).exists():
        return []
    missing = sorted(json.loads(Path(metrics_path).read_text()).get("no_lattice", []))
    if max_utterances and lattices:
        last = max(lattices)
        missing = [u for u in missing if u <= last]
    return [u for u in missing if u not in lattices]


def _attention_second_pass(rescorer, attention, awe_config, prep_tune, prep_eval, tune_feats, eval_feats, tune_refs,
                           train_vocab, s: TuneSettings):
    """awe_plus_attention: n-best of the embedding-rescored lattices, rescored by the attention
    decoder; its weight is tuned on the tuning lattices only. Returns ({"words", "seconds"}
    for the evaluated lattices, the chosen attention_scale)."""
    def candidates(prep, feats):
        out = {}
        for u in sorted(prep):
            t0 = time.perf_counter()
            scored = rescorer.apply_scores(prep[u].lattice, prep[u].awe, awe_config)
            hyps, att = attention_candidates(attention, scored, feats[u], n=s.attention_nbest)
            out[u] = (hyps, att, time.perf_counter() - t0)
        return out

    cand_tune = candidates(prep_tune, tune_feats)
    uids = sorted(cand_tune)
    best_scale, best_wer = 0.0, None
    for scale in (float(x) for x in s.attention_scales):
        hyps = [pick_best(cand_tune[u][0], cand_tune[u][1], scale) for u in uids]
        w = compute_wer([tune_refs[u] for u in uids], hyps, train_vocab)["wer"]
        if best_wer is None or w < best_wer - 1e-12:
            best_scale, best_wer = scale, w
    cand_eval = cand_tune if prep_eval is prep_tune else candidates(prep_eval, eval_feats)
    words = {u: pick_best(h, a, best_scale) for u, (h, a, _) in cand_eval.items() if u in prep_eval}
    return {"words": words, "seconds": {u: cand_eval[u][2] for u in words}}, best_scale


def tuning_curve_tag(corpus: str, prefix: str = "") -> str:
    """The file-name part of a run's tuning curve: corpus names such as ``speechocean762_dev/whisper``
    name a results key, not a directory, so path separators become ``_``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", corpus).strip("_") or "corpus"
    return f"{safe}_{prefix.rstrip('_') or 'lattices'}"


def _tune_and_evaluate(s: TuneSettings):
    """Returns (results by method, the Rescorer with the scales chosen on dev)."""
    torch.manual_seed(0)
    try:
        rescorer = Rescorer.from_dir(s.model_dir, device=s.device, span_encoding=s.span_encoding,
                                     compute_type=s.compute_type)
    except FileNotFoundError as e:
        raise StageError(str(e)) from e
    lm_fields = {}
    if rescorer.config.transcript_hit_lm != s.hit_lm:  # hit models fitted with another LM's evidence no longer apply
        lm_fields = dict(transcript_hit_lm=s.hit_lm, transcript_min_probability=None, transcript_hit_model=None,
                         vote_spot_gate=None)
    rescorer.config = replace(rescorer.config, am_scale=s.am_scale, oov_rival=s.oov_rival, **lm_fields)
    train_vocab = _train_vocab(s.train_data)
    grid = dict(awe_scales=[float(x) for x in s.awe_scales], lm_scales=[float(x) for x in s.lm_scales],
                word_insertion_penalties=[float(x) for x in s.wips])
    dev_lats, dev_prune_seconds = _load_lattices(s.dev_lattices, s)
    dev_feats, dev_refs, dev_spk = _features(s.dev_features, rescorer.feature_spec)
    if s.cross_validate:
        folds = speaker_folds(dev_lats, dev_spk, s.folds, s.seed)
        test_feats, test_refs = dev_feats, dev_refs
    else:
        test_lats, test_prune_seconds = _load_lattices(s.test_lattices, s)
        test_feats, test_refs, _ = _features(s.test_features, rescorer.feature_spec)
        folds = [(dev_lats, test_lats)]
    prune_seconds = dev_prune_seconds if s.cross_validate else test_prune_seconds  # of the evaluated lattices
    missing = [u for u in missing_lattices(s.decode_metrics, dev_lats if s.cross_validate else test_lats, s.max_utterances)
               if u in test_refs]
    if missing:
        log.warning("%d utterance(s) without a lattice count as empty hypotheses: %s", len(missing), ", ".join(missing[:5]))
    n_eval = sum(len(f[1]) for f in folds)
    total_utts = None
    if s.decode_metrics and Path(s.decode_metrics).exists():
        total_utts = json.loads(Path(s.decode_metrics).read_text()).get("utterances")
    # decoding time of the utterances that are rescored (a subset with max_utterances)
    decode_seconds = _decode_seconds(s.decode_metrics, n_eval / total_utts if total_utts else 1.0)

    results, curves, chosen_by_method = {}, {}, {}
    awe_state = {}  # awe_rescore's prepared lattices and per-fold configs, for the CTC and Whisper methods
    wanted = list(s.methods)
    attention = None
    if "awe_plus_attention" in wanted and s.attention_model_dir:
        attention = AttentionScorer.from_dir(s.attention_model_dir, device=s.device)
        # its own frames: the whole features where the embedder reads a layer view of them
        att_dev_feats, att_test_feats = dev_feats, test_feats
        att_spec = getattr(attention, "feature_spec", rescorer.feature_spec)  # a scorer without one reads the embedder's
        if att_spec != rescorer.feature_spec:
            att_dev_feats = _features(s.dev_features, att_spec)[0]
            att_test_feats = att_dev_feats if s.cross_validate else _features(s.test_features, att_spec)[0]
    for method in ("awe_rescore",) + RECOVERY_METHODS:
        if method not in wanted:
            continue
        recover = method in RECOVERY_METHODS
        lists = _word_lists(method, s) if recover else None
        if recover:
            log.info("%s: embedding the %d-word list %s", method, len(lists["dev"]), lists["dev_name"])
            rescorer.set_vocabulary(lists["dev"])
        pooled_refs, pooled_base, pooled_hyps, seconds, chosen = [], [], [], prune_seconds, []
        pooled_base_tuned, pooled_without = [], []  # decoder scales only; recovery's scales without recovery
        pooled_att, att_seconds, att_chosen = [], 0.0, []
        with_attention = not recover and attention is not None
        # embedding scores are computed once per lattice and shared by the folds
        prep_dev = prepare_all(rescorer, dev_lats, dev_feats, recover=recover, batch_frames=s.batch_frames)
        if recover and not s.cross_validate and lists["test"] is not lists["dev"]:
            log.info("%s: embedding the %d-word list %s for test", method, len(lists["test"]), lists["test_name"])
            rescorer.set_vocabulary(lists["test"])
        prep_test = prep_dev if s.cross_validate else prepare_all(rescorer, folds[0][1], test_feats, recover=recover,
                                                                  batch_frames=s.batch_frames)
        for k, (tune_lats, eval_lats) in enumerate(folds):
            prep_tune = {u: prep_dev[u] for u in tune_lats}
            oov_grid = [float(x) for x in s.oov_lm_scores] if recover and s.oov_lm_scores else None
            margins = list(s.oov_margins) if recover and s.oov_margins else None
            if recover and s.recovery_tuning == "two_step":
                best, curve = tune_recovery(rescorer, prep_tune, dev_refs, train_vocab=train_vocab, oov_lm_scores=oov_grid,
                                            oov_margins=margins, min_precision=s.oov_min_precision,
                                            max_p=s.oov_max_sign_p, precision_z=s.oov_min_precision_z, **grid)
            else:
                best, curve = tune(rescorer, prep_tune, dev_refs, train_vocab=train_vocab, oov_lm_scores=oov_grid,
                                   oov_margins=margins, **grid)
            base_best, _ = tune(rescorer, prep_tune, dev_refs, awe_scales=[0.0], lm_scales=grid["lm_scales"],
                                word_insertion_penalties=grid["word_insertion_penalties"], train_vocab=train_vocab)
            curves[f"{method}_fold{k}"] = curve
            chosen.append(best.lattice_fields())
            if method == "awe_rescore":
                awe_state.setdefault("configs", []).append(best)
                awe_state.update(prep_dev=prep_dev, prep_test=prep_test)
            if recover and abstained(best):
                chosen[-1]["oov_recovery"] = "abstained"
                log.warning("%s, fold %d: recovery does not %s on dev: it abstains (the scales of the rescoring "
                            "it extends)", method, k, s.abstain_reason())
            prep_eval = {u: prep_test[u] for u in eval_lats}
            base = {u: [w.word for w in best_path_hypothesis(lat).words] for u, lat in eval_lats.items()}
            m = evaluate(rescorer, prep_eval, test_refs, base, train_vocab, best)
            mb = evaluate(rescorer, prep_eval, test_refs, base, train_vocab, base_best)
            # what recovery itself changed: the same scales without it (an abstained fold is that already)
            if recover and not abstained(best):
                without = decode_all(rescorer, prep_eval, recovery_off(best))
            else:
                without = {u: h.split() for u, h in m["hypotheses"].items()} if recover else {}
            seconds += m["rescoring_seconds"]  # preparation of the evaluated lattices + their decoding
            if with_attention:
                t0 = time.perf_counter()
                att_hyps, att_scale = _attention_second_pass(
                    rescorer, attention, best, prep_tune, prep_eval, att_dev_feats, att_test_feats, dev_refs, train_vocab, s
                )
                att_seconds += sum(t for u, t in att_hyps["seconds"].items())
                att_chosen.append(att_scale)
                log.info("fold %d: attention_scale %.2f (%.1f s)", k, att_scale, time.perf_counter() - t0)
            for u in sorted(prep_eval):
                pooled_refs.append(test_refs[u])
                pooled_base.append(base[u])
                pooled_hyps.append(m["hypotheses"][u].split())
                pooled_base_tuned.append(mb["hypotheses"][u].split())
                pooled_without.append(without.get(u, []))
                if with_attention:
                    pooled_att.append(att_hyps["words"][u])
        for u in missing:  # no lattice: every method's hypothesis is empty
            pooled_refs.append(test_refs[u])
            for hyps in (pooled_base, pooled_hyps, pooled_base_tuned, pooled_without) + ((pooled_att,) if with_attention else ()):
                hyps.append([])

        def summarise(hyps, extra=None):
            w = compute_wer(pooled_refs, hyps, train_vocab)
            out = {k: w[k] for k in ("wer", "iv_wer", "oov_wer", "substitutions", "deletions", "insertions", "ref_words", "utterances")}
            out.update(recovery_counts(pooled_refs, pooled_base, hyps, train_vocab))
            if extra:
                out.update(extra)
            return out

        chosen_by_method[method] = chosen
        extra = {"rescoring_seconds": round(seconds, 2), "scales": chosen}
        if recover:  # the keep rule, and what recovery itself changed against the same scales without it
            extra.update(s.keep_rule())
            extra.update(added_counts(pooled_refs, pooled_without, pooled_hyps, train_vocab))
            extra.update(word_list=lists["dev_name"], word_list_size=len(lists["dev"]))
            if not s.cross_validate and lists["test"] is not lists["dev"]:
                extra.update(test_word_list=lists["test_name"], test_word_list_size=len(lists["test"]))
        if decode_seconds:
            extra["rescoring_seconds_per_decode_second"] = round(seconds / decode_seconds, 4)
        results[s.prefix + method] = summarise(pooled_hyps, extra)
        if with_attention:
            extra_att = {"rescoring_seconds": round(seconds + att_seconds, 2), "scales": chosen, "attention_scales": att_chosen,
                         "attention_model_dir": s.attention_model_dir}
            if decode_seconds:
                extra_att["rescoring_seconds_per_decode_second"] = round((seconds + att_seconds) / decode_seconds, 4)
            results[s.prefix + "awe_plus_attention"] = summarise(pooled_att, extra_att)
        if not recover:
            results[s.prefix + "baseline_tuned"] = summarise(pooled_base_tuned, {"note": "decoder scores only, same grid"})
            results[s.prefix + "lattice_1best"] = summarise(pooled_base, {"note": "the lattice's own best path"})
        log.info("%s: %s", method, {k: results[s.prefix + method][k] for k in ("wer", "iv_wer", "oov_wer")})

    if any(m in CTC_METHODS for m in wanted):  # CTC word spotting and fusion: rescorer.stages.tune_ctc
        # the fusion adds the CTC score to awe_rescore's tuned scales where that method ran too
        ctc_results, ctc_curves = ctc_methods(s, rescorer, train_vocab, grid, dev_lats, dev_feats, dev_refs, folds,
                                              test_feats, test_refs, missing, decode_seconds, prune_seconds,
                                              awe_configs=awe_state.get("configs"))
        results.update(ctc_results)
        curves.update(ctc_curves)
    if any(m in WHISPER_METHODS + VOTE_METHODS for m in wanted):  # Whisper's words: rescorer.stages.tune_whisper
        lists = {m: _word_lists("awe_rescore_context_list" if m == "awe_whisper_context_list" else "awe_rescore_oov_recovery", s)
                 for m in wanted if m in WHISPER_METHODS}
        w_results, w_curves = whisper_methods(s, rescorer, train_vocab, lists, awe_state["configs"], awe_state["prep_dev"],
                                              awe_state["prep_test"], folds, dev_feats, dev_refs, test_feats, test_refs,
                                              missing, decode_seconds,
                                              awe_seconds=results[s.prefix + "awe_rescore"].get("rescoring_seconds", 0.0))
        results.update(w_results)
        curves.update(w_curves)

    # tuning curve: committed as JSON + a plot
    res_dir = Path(s.out).parent
    tag = tuning_curve_tag(s.corpus, s.prefix)
    res_dir.mkdir(parents=True, exist_ok=True)
    curve_path = res_dir / f"rescore_tuning_{tag}.json"
    if curve_path.exists():  # another run's methods (e.g. OOV recovery run separately) are kept
        curves = {**json.loads(curve_path.read_text()), **curves}
    curve_path.write_text(json.dumps(curves, indent=1, sort_keys=True))
    key = "awe_rescore_fold0" if "awe_rescore_fold0" in curves else next(
        (k for k in sorted(curves) if k.endswith("fold0") and curves[k] and "awe_scale" in curves[k][0]), None)
    if key is not None:
        plot_tuning_curve(curves[key], res_dir / f"rescore_tuning_{tag}.png", f"{s.corpus}: dev WER vs embedding weight")
    # the chosen scales (fold 0, or the only fold) travel with the model: awe_rescore's; a run of
    # recovery methods alone keeps the scales already tuned for the model (or, if none, takes its own)
    chosen = chosen_by_method.get("awe_rescore")
    if chosen is None:
        tuned = _tuned_config_path(s)
        chosen = [json.loads(tuned.read_text())["config"]] if tuned.exists() else next(iter(chosen_by_method.values()), None)
    if chosen:
        rescorer.config = replace(rescorer.config, **{k: chosen[0][k] for k in ("awe_scale", "lm_scale", "word_insertion_penalty")})
    # and recovery's own choices (its abstention margin and LM cost), from the large list's run if there was one
    # (none where dev abstained: the saved config keeps its own recovery settings)
    recovery = next((chosen_by_method[m] for m in RECOVERY_METHODS if m in chosen_by_method), None)
    if recovery and recovery[0].get("oov_recovery") != "abstained":
        rescorer.config = replace(rescorer.config, **{k: recovery[0][k] for k in ("oov_margin", "oov_lm_score")})
    # the lattice's words voted into a second recogniser's transcript (rescorer rescore --transcript-mode vote)
    voted = results.get(s.prefix + "whisper_lattice_vote", {}).get("scales", [None])[0]
    if voted is not None:
        rescorer.config = replace(rescorer.config, vote_max_confidence=voted.get("max_confidence"),
                                  vote_min_posterior=voted.get("min_posterior"),
                                  vote_max_drop_confidence=voted.get("max_drop_confidence"),
                                  vote_spot_gate=voted.get("spot_gate"))
    # and the gate on a second recogniser's list words (rescorer rescore --transcripts): the context list's, else the large list's
    spotted = next((results[s.prefix + m]["scales"][0] for m in WHISPER_METHODS if s.prefix + m in results), None)
    if spotted is not None:
        abstain = spotted.get("gate") == "abstained"
        rescorer.config = replace(rescorer.config, transcript_abstain=abstain,
                                  transcript_min_cosine=None if abstain else spotted.get("gate"),
                                  transcript_min_confidence=None if abstain else spotted.get("confidence_gate"),
                                  transcript_min_probability=None if abstain else spotted.get("probability_gate"),
                                  transcript_hit_model=None if abstain else spotted.get("hit_model"))
    return results, rescorer


def speaker_folds(lattices: Dict[str, object], speaker_of: Dict[str, str], k: int, seed: int):
    """[(the lattices to tune on, the lattices to report), ...] for ``k``-fold cross-validation
    over speakers: the speakers, sorted and permuted by ``seed``, cut into ``k`` contiguous groups;
    fold i reports group (i + 1) mod k and tunes on the rest (for k = 2: tune on the first half,
    report the second, then the other way round). A StageError if there are fewer speakers than folds."""
    speakers = sorted({speaker_of[u] for u in lattices})
    if len(speakers) < k:
        raise StageError(f"{k}-fold cross-validation over speakers needs at least {k} dev speakers; "
                         f"the dev lattices have {len(speakers)}")
    order = np.random.default_rng(seed).permutation(speakers).tolist()
    bounds = [len(order) * i // k for i in range(k + 1)]
    groups = [set(order[bounds[i]:bounds[i + 1]]) for i in range(k)]
    folds = []
    for i in range(k):
        held = groups[(i + 1) % k]
        folds.append(({u: l for u, l in lattices.items() if speaker_of[u] not in held},
                      {u: l for u, l in lattices.items() if speaker_of[u] in held}))
    return folds


def _tuned_config_path(s: TuneSettings) -> Path:
    """The model's tuned scales for these lattices: rescorer.json, or rescorer_<prefix>.json."""
    return Path(s.model_dir) / (f"rescorer_{s.prefix.rstrip('_')}.json" if s.prefix else "rescorer.json")


def _word_lists(method: str, s: TuneSettings) -> dict:
    """The lists a recovery method searches: {"dev", "test": word lists, "dev_name", "test_name"}."""
    try:
        if method == "awe_rescore_oov_recovery":
            if s.word_list:
                words = read_word_list(s.word_list)
                return {"dev": words, "test": words, "dev_name": s.word_list, "test_name": s.word_list}
            words = large_word_list(s.word_list_size)
            name = f"large_word_list({s.word_list_size})"
            return {"dev": words, "test": words, "dev_name": name, "test_name": name}
        dev = read_word_list(s.context_list)
        test = read_word_list(s.test_context_list) if s.test_context_list else dev
        return {"dev": dev, "test": test, "dev_name": s.context_list, "test_name": s.test_context_list or s.context_list}
    except WordListError as e:
        raise StageError(str(e)) from e


def tune_rescoring(settings: TuneSettings, command: str = "rescorer tune") -> Dict[str, dict]:
    """Run the protocol, merge the results into ``settings.out`` and (``save_config``) keep
    the tuned scales with the model. ``command`` is recorded as the run's provenance.
    Returns the results by method name."""
    s = settings
    t0 = time.time()
    results, rescorer = _tune_and_evaluate(s)
    out = Path(s.out)
    doc = json.loads(out.read_text()) if out.exists() else {}
    entry = doc.setdefault("corpora", {}).setdefault(s.corpus, {})
    entry.update(results)
    run_key = f"{s.corpus}:{s.prefix or 'ctc'}:{','.join(s.methods)}"  # one record per run, so none is lost
    doc.setdefault("rescoring_runs", {})[run_key] = {
        "command": command,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (no GPU)" if not torch.cuda.is_available() else torch.cuda.get_device_name(0),
        "date": datetime.date.today().isoformat(),
        "cwd": os.path.relpath(os.getcwd(), REPO),
        "wall_seconds": round(time.time() - t0, 1),
        "protocol": f"{s.folds}-fold cross-validation over dev speakers" if s.cross_validate else "scales tuned on dev, reported on test",
    }
    out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    if s.save_config and any(m not in CTC_METHODS for m in s.methods):
        # the lattices' own decoder's scales: rescorer.json for ours, rescorer_<prefix>.json for others
        path = rescorer.save_config(s.model_dir, {"tuned_by": doc["rescoring_runs"][run_key]},
                                    name=_tuned_config_path(s).name)
        log.info("tuned scales saved to %s", path)
    fused = results.get(s.prefix + "awe_ctc_rescore")
    if s.save_config and fused is not None:  # the fusion's own: rescorer[_<prefix>]_ctc_fusion.json
        config = fusion_config(fused)
        if config is None:
            log.warning("awe_ctc_rescore chose an evidence gate, which rescorer rescore does not apply: its scales "
                        "are not saved")
        else:
            name = _tuned_config_path(s).stem + "_ctc_fusion.json"
            spotting = {"beam": s.ws_beam, "bonus": s.ws_bonus, "threshold": s.ws_threshold,
                        "token_weight": s.ws_token_weight}  # the fusion's spotter, as it ran here
            path = save_rescore_config(s.model_dir, config, {"tuned_by": doc["rescoring_runs"][run_key],
                                                             "ctc_model_dir": s.ctc_model_dir,
                                                             "ctc_model_sha256": fused.get("ctc_model_sha256"),
                                                             "ctc_spotting": spotting}, name=name)
            log.info("the fusion's tuned scales saved to %s (rescorer rescore --ctc-model-dir %s --config-name %s)",
                     path, s.ctc_model_dir, name)
    return results
