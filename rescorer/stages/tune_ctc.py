"""The CTC methods of ``rescorer tune``: CTC word spotting and embedding + CTC fusion.

Called by ``stages.tune`` with the splits and folds it has already made, so the protocol
is the same (tuned on dev or on one half of the dev speakers, reported on the other data):

- ``ctc_word_spotting``: the CTC model's greedy 1-best with the word list's words spotted
  into it (``decoding.word_spotting``, the anchor of Andrusenko et al. 2024); the bonus and
  hit threshold are tuned on dev for the lowest WER, as published, or, with
  ``--oov-min-precision``, by the precision-target rule of the other methods (abstaining, the
  greedy output, where dev meets it nowhere), so all are compared at one precision. Its OOV
  recall / precision / IV tokens broken are counted against the CTC greedy 1-best it edits
  (``base: ctc_greedy`` in the row).
- ``lattice_ctc_word_spotting``: the same spotting (same hits accepted) merged instead into
  each lattice's 1-best under the decoder's LM scale and insertion penalty tuned on the fold's
  dev (the ``baseline_tuned`` path; ``decoder_scales`` in the row): CTC-WS added to the decoder
  whose lattices are rescored (an HLG decoder, pocketsphinx) as its user would run it, the
  anchor the lattice methods are compared with on the same lattices. Its OOV counts are
  against the lattice's own 1-best, like theirs; ``added_*``, against the 1-best it edits.
- ``awe_ctc_rescore``: the lattices' arcs scored by the embedder and by the CTC spelling
  score, weights and normalisation tuned on dev (``rescore_ctc``); with ``--word-list``
  OOV recovery adds the embedding's nearest spellings and the spotter's hits as arcs.
  Counted against the lattice's own 1-best, like the embedding methods. With ``awe_rescore``
  among the methods, the fusion starts from the embedding, LM and insertion scales that
  method chose on the fold and tunes only the CTC weight and normalisation (and recovery's
  step 2) on top (``base_scales: awe_rescore`` in the row): a CTC weight of 0 is then
  awe_rescore itself, so the fusion is never tuned on a coarser grid than the method it
  extends. Without it, the fusion searches the whole grid (``base_scales: grid``).

With ``ctc_temperatures`` a grid, the fusion's log-probs are recalibrated first on each fold
(``decoding.ctc_scores.fit_temperature``: the temperature of lowest CTC loss on the fold's dev
transcripts, ``ctc_temperature`` in its row; one value: that temperature, 1 the model's own
log-probs): its spelling scores are weighed against the embedding's and the LM's, so their
calibration matters. It costs a division per frame, and spares a second, better-calibrated
model. CTC word spotting keeps the model's log-probs, as published (its bonus and threshold
are tuned in their units).

Costs: the CTC forward pass (``ctc_forward_seconds``, shared by both; none where the decoder's
stored log-probs are given, ``--dev-ctc-log-probs``: the row's ``ctc_log_probs`` names them), spotting, and the
fused lattices' preparation and decoding, each over the evaluated utterances; relative to
the decoder's time (``rescoring_seconds_per_decode_second``; ``spotting_seconds_per_decode_second``
for the spotting alone).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Dict, List, Optional

import torch

from rescorer.decoding.ctc_scores import CtcPosteriors, CtcScoreError, fit_temperature, with_temperature
from rescorer.decoding.word_spotting import SpellingTrie, SpottingConfig, base_words, greedy_words
from rescorer.formats.ctc_log_probs import read_ctc_log_probs
from rescorer.formats.tagged import FormatError
from rescorer.formats.word_list import read_word_list
from rescorer.evaluation.ctc_rescoring import prepare_fused_all, spot_all, tune_fused, tune_spotting
from rescorer.evaluation.rescoring import PreparedLattice, abstained, added_counts, recovery_counts, recovery_off, tune
from rescorer.formats.utterances import read_utterance_features
from rescorer.lattice.word_lattice import best_path_hypothesis
from rescorer.rescore_ctc import CtcFusion, EvidenceGate, FusionConfig
from rescorer.stages import StageError
from rescorer.wer import compute_wer

log = logging.getLogger(__name__)

CTC_METHODS = ("ctc_word_spotting", "lattice_ctc_word_spotting", "awe_ctc_rescore")


def summary_row(refs, base, hyps, train_vocab, extra: dict) -> dict:
    """A method's row: WER figures, recovery counts against ``base`` (what the method edits), ``extra``."""
    w = compute_wer(refs, hyps, train_vocab)
    out = {k: w[k] for k in ("wer", "iv_wer", "oov_wer", "substitutions", "deletions", "insertions", "ref_words", "utterances")}
    out.update(recovery_counts(refs, base, hyps, train_vocab))
    out.update(extra)
    return out


def _per_decode(seconds: float, decode_seconds: Optional[float]) -> Optional[float]:
    return round(seconds / decode_seconds, 4) if decode_seconds else None


def _log_probs(posteriors: CtcPosteriors, feats_by_id, stored_path: Optional[str]):
    """(utterance id -> log-probs, forward seconds): the decoder's stored ones where given
    (checked against the model), the model's forward pass for the rest."""
    stored = None
    if stored_path:
        try:
            stored = read_ctc_log_probs(stored_path)
        except FormatError as e:
            raise StageError(str(e)) from e
    t0 = posteriors.seconds
    try:
        out = posteriors.reuse_or_compute(feats_by_id, stored)
    except (FormatError, CtcScoreError) as e:
        raise StageError(str(e)) from e
    return out, posteriors.seconds - t0


def tune_decoder_scales(rescorer, lats, refs, grid, train_vocab):
    """The LM scale and insertion penalty (no embedding term) of lowest WER on ``lats``: the decoder
    as its user would tune it, whose 1-best ``lattice_ctc_word_spotting`` edits."""
    prepared = {u: PreparedLattice(lat, torch.zeros(lat.fsa.labels.shape[0]), None, 0.0) for u, lat in sorted(lats.items())}
    best, _ = tune(rescorer, prepared, refs, awe_scales=[0.0], lm_scales=grid["lm_scales"],
                   word_insertion_penalties=grid["word_insertion_penalties"], train_vocab=train_vocab)
    return best


def lattice_bases(lats, log_probs, ctc_frame_shift: float, rescorer=None, config=None) -> Dict[str, list]:
    """Each lattice's 1-best words (under ``config``'s scales where given) on its CTC frames."""
    out = {}
    for u, lat in lats.items():
        path = lat if config is None else rescorer.apply_scores(lat, None, config)
        words = best_path_hypothesis(path).words
        try:
            out[u] = base_words([(w.word, w.start, w.end) for w in words], ctc_frame_shift, int(log_probs[u].shape[0]))
        except ValueError as e:
            raise StageError(f"utterance {u}: {e}") from e
    return out


def _fold_temperatures(s, lp_dev, dev_refs, folds) -> List[float]:
    """Each fold's CTC temperature: the one given, or of a grid the one of lowest CTC loss on the
    fold's tuning utterances' transcripts (``decoding.ctc_scores.fit_temperature``)."""
    grid = [float(t) for t in s.ctc_temperatures]
    if len(grid) == 1:
        return grid * len(folds)
    out = []
    for k, (tune_lats, _) in enumerate(folds):
        try:
            t, losses = fit_temperature({u: lp_dev[u] for u in tune_lats}, dev_refs, grid)
        except CtcScoreError as e:
            raise StageError(f"fitting the CTC temperature on fold {k}'s dev: {e}") from e
        log.info("fold %d: CTC temperature %g (dev CTC loss per token %s)", k, t,
                 ", ".join(f"{x:g}: {v:.4f}" for x, v in losses.items()))
        out.append(t)
    return out


def _spotting_method(s, method, rescorer, grid, trie, test_trie, train_vocab, folds, lp_dev, lp_test, dev_refs,
                     test_refs, missing, on_lattice: bool, ctc_frame_shift, fixed, lists, forward, decode_seconds):
    """(row, curve per fold) of CTC-WS editing the CTC greedy 1-best, or (``on_lattice``) each
    lattice's 1-best under the decoder's scales tuned on the fold's dev (``tune_decoder_scales``).
    The lattice variant's OOV counts are against the lattice's own 1-best, like every lattice
    method's; what the spotting changed in the 1-best it edits is in the ``added_*`` counts."""
    refs, base, edited, hyps, chosen, curves, decoder = [], [], [], [], [], [], []
    spot_seconds, accepted, hits = 0.0, 0, 0
    for k, (tune_lats, eval_lats) in enumerate(folds):
        dev_bases = eval_bases = None
        if on_lattice:
            scales = tune_decoder_scales(rescorer, tune_lats, dev_refs, grid, train_vocab)
            decoder.append({"lm_scale": scales.lm_scale, "word_insertion_penalty": scales.word_insertion_penalty})
            dev_bases = lattice_bases(tune_lats, lp_dev, ctc_frame_shift, rescorer, scales)
            eval_bases = lattice_bases(eval_lats, lp_test, ctc_frame_shift, rescorer, scales)
        best, curve = tune_spotting({u: lp_dev[u] for u in tune_lats}, trie, dev_refs, s.ws_bonuses,
                                    s.ws_thresholds, fixed, train_vocab, s.oov_min_precision,
                                    s.oov_max_sign_p if s.oov_min_precision is not None else None,
                                    s.oov_min_precision_z, bases=dev_bases)
        curves.append(curve)
        chosen.append("abstained" if best is None else asdict(best))
        if best is None:  # the edited output, no spotting
            log.warning("%s, fold %d: the spotted words do not %s on dev: the %s is kept", method, k,
                        s.abstain_reason(), "tuned lattice 1-best" if on_lattice else "greedy output")
            res = None
        else:
            res, sec = spot_all({u: lp_test[u] for u in eval_lats}, test_trie, best, eval_bases)
            spot_seconds += sec
        for u in sorted(eval_lats):
            refs.append(test_refs[u])
            if res is None:
                words = [w.word for w in (eval_bases[u] if on_lattice else greedy_words(lp_test[u])[0])]
                edited.append(words)
                hyps.append(words)
            else:
                edited.append([w.word for w in res[u].greedy])
                hyps.append(res[u].word_sequence)
                accepted += len(res[u].accepted)
                hits += len(res[u].hits)
            base.append([w.word for w in best_path_hypothesis(eval_lats[u]).words] if on_lattice else edited[-1])
    for u in missing:  # as for every method: utterances without a lattice count as empty
        refs.append(test_refs[u])
        for x in (base, edited, hyps):
            x.append([])
    extra = {"base": "lattice_1best" if on_lattice else "ctc_greedy", "spotting": chosen, **lists, "hits": hits,
             "accepted_hits": accepted, **(s.keep_rule() if s.oov_min_precision is not None else {}),
             "spotting_seconds": round(spot_seconds, 3), "ctc_forward_seconds": round(forward, 3),
             "rescoring_seconds": round(spot_seconds + forward, 3)}
    if on_lattice:  # what the spotting changed in the tuned 1-best it edits
        extra.update(edits="baseline_tuned", decoder_scales=decoder, **added_counts(refs, edited, hyps, train_vocab))
    for key, sec in (("spotting_seconds_per_decode_second", spot_seconds),
                     ("rescoring_seconds_per_decode_second", spot_seconds + forward)):
        v = _per_decode(sec, decode_seconds)
        if v is not None:
            extra[key] = v
    row = summary_row(refs, base, hyps, train_vocab, extra)
    log.info("%s: %s", method, {k: row[k] for k in ("wer", "oov_recall", "oov_precision")})
    return row, curves


def ctc_methods(s, rescorer, train_vocab, grid, dev_lats, dev_feats, dev_refs, folds, test_feats, test_refs,
                missing: List[str], decode_seconds: Optional[float], prune_seconds: float,
                awe_configs: Optional[List] = None):
    """Results by method name (with ``s.prefix``) and tuning curves of the CTC methods in ``s.methods``;
    ``awe_configs``: awe_rescore's config per fold, the fusion's base scales (module doc)."""
    wanted = [m for m in s.methods if m in CTC_METHODS]
    try:
        posteriors = CtcPosteriors.from_dir(s.ctc_model_dir, device=s.device)
    except (FileNotFoundError, ValueError) as e:  # no checkpoint there, or a file that is not one
        raise StageError(str(e)) from e
    words = list(read_word_list(s.word_list)) if s.word_list else None
    trie = SpellingTrie(words) if words else None
    if words:
        log.info("word list %s: %d words, %d tree nodes", s.word_list, len(words), len(trie))
    # test's own list (a context list names its session's words): tuned with dev's, applied with test's
    test_words, test_trie = words, trie
    if s.test_word_list and s.test_word_list != s.word_list:
        test_words = list(read_word_list(s.test_word_list))
        test_trie = SpellingTrie(test_words)
        log.info("test word list %s: %d words", s.test_word_list, len(test_words))
    lists = {"word_list": s.word_list, "word_list_size": len(words) if words else 0}
    if test_words is not words:
        lists.update(test_word_list=s.test_word_list, test_word_list_size=len(test_words))
    if posteriors.feature_spec == rescorer.feature_spec:  # the embedder's frames serve: not read again
        dev_ctc, test_ctc = dev_feats, test_feats
    else:
        dev_ctc = read_utterance_features(s.dev_features, expect=posteriors.feature_spec).by_id()
        test_ctc = dev_ctc if s.cross_validate else read_utterance_features(s.test_features,
                                                                            expect=posteriors.feature_spec).by_id()
    eval_uids = sorted(u for _, ev in folds for u in ev)
    lp_dev, dev_forward = _log_probs(posteriors, {u: dev_ctc[u] for u in sorted(dev_lats)}, s.dev_ctc_log_probs)
    if s.cross_validate:
        lp_test, forward = lp_dev, dev_forward
    else:
        lp_test, forward = _log_probs(posteriors, {u: test_ctc[u] for u in eval_uids}, s.test_ctc_log_probs)
    log.info("CTC log-probs: %.1f s of forward passes for the %d evaluated utterances%s", forward, len(eval_uids),
             " (the rest stored by the decoder)" if (s.test_ctc_log_probs or s.cross_validate and s.dev_ctc_log_probs) else "")
    test_stored = s.dev_ctc_log_probs if s.cross_validate else s.test_ctc_log_probs
    # where the evaluated utterances' log-probs came from: the decoder's file costs no forward pass
    lists["ctc_log_probs"] = test_stored or "computed (ctc_model_dir)"
    at_temperature = {}  # temperature -> (dev log-probs, test log-probs) at it

    def log_probs_at(t: float):
        if t not in at_temperature:
            d = {u: with_temperature(lp, t) for u, lp in lp_dev.items()}
            at_temperature[t] = (d, d if lp_test is lp_dev else {u: with_temperature(lp, t) for u, lp in lp_test.items()})
        return at_temperature[t]

    results: Dict[str, dict] = {}
    curves: Dict[str, list] = {}
    fixed = SpottingConfig(beam=s.ws_beam, bonus=s.ws_bonus, threshold=s.ws_threshold, token_weight=s.ws_token_weight)

    for method in ("ctc_word_spotting", "lattice_ctc_word_spotting"):
        if method in wanted:
            on_lattice = method == "lattice_ctc_word_spotting"
            results[s.prefix + method], curve_by_fold = _spotting_method(
                s, method, rescorer, grid, trie, test_trie, train_vocab, folds, lp_dev, lp_test,
                dev_refs, test_refs, missing, on_lattice, posteriors.frame_shift, fixed, lists, forward, decode_seconds)
            for k, curve in enumerate(curve_by_fold):
                curves[f"{method}_spotting{k}"] = curve

    if "awe_ctc_rescore" in wanted:
        recover = words is not None
        if recover:
            log.info("embedding the %d-word list for OOV recovery", len(words))
        gates = [EvidenceGate(p, m) for p in s.oov_min_posteriors for m in s.oov_min_ctc_margins]
        gated = recover and any(g.active for g in gates)
        fcfg = FusionConfig(spotting=fixed, norms=tuple(s.ctc_norms), evidence=gated)
        temps = _fold_temperatures(s, lp_dev, dev_refs, folds)
        # dev's lattices first, all of them: a CtcFusion sets the rescorer's recovery list (test's own after)
        fusion = CtcFusion(rescorer, posteriors, words, fcfg)
        prep_by_t = {t: prepare_fused_all(fusion, dev_lats, dev_feats, log_probs_at(t)[0], recover)
                     for t in dict.fromkeys(temps)}
        if not s.cross_validate:
            test_fusion = fusion if test_words is words else CtcFusion(rescorer, posteriors, test_words, fcfg)
            prepared = {t: (p, prepare_fused_all(test_fusion, folds[0][1], test_feats, log_probs_at(t)[1], recover))
                        for t, p in prep_by_t.items()}
        else:
            prepared = {t: (p, p) for t, p in prep_by_t.items()}
        refs, base, hyps, chosen, without = [], [], [], [], []
        seconds, hit_arcs = prune_seconds + forward, 0
        oov_grid = [float(x) for x in s.oov_lm_scores] if recover and s.oov_lm_scores else None
        for k, (tune_lats, eval_lats) in enumerate(folds):
            prep_dev, prep_test = prepared[temps[k]]
            if awe_configs:  # awe_rescore's point on this fold; only the CTC terms are tuned on top
                a = awe_configs[k]
                awe_grid, lm_grid, wip_grid = [a.awe_scale], [a.lm_scale], [a.word_insertion_penalty]
            else:
                awe_grid, lm_grid, wip_grid = grid["awe_scales"], grid["lm_scales"], grid["word_insertion_penalties"]
            best, norm, curve, gate = tune_fused(rescorer, {u: prep_dev[u] for u in tune_lats}, dev_refs,
                                                 awe_grid, s.ctc_scales, s.ctc_norms, lm_grid, wip_grid,
                                                 train_vocab, oov_grid,
                                                 recovered=recover, gates=gates if gated else (None,),
                                                 min_precision=s.oov_min_precision if recover else None,
                                                 max_p=s.oov_max_sign_p if recover else None,
                                                 precision_z=s.oov_min_precision_z)
            curves[f"awe_ctc_rescore_fold{k}"] = curve
            chosen.append({**best.lattice_fields(), "ctc_norm": norm, "ctc_temperature": temps[k],
                           **(gate.to_dict() if gate is not None else {})})
            if recover and abstained(best):
                chosen[-1]["oov_recovery"] = "abstained"
                log.warning("awe_ctc_rescore, fold %d: the added words do not %s on dev: none is added", k,
                            s.abstain_reason())
            t0 = time.perf_counter()
            for u in sorted(eval_lats):
                p = prep_test[u]
                refs.append(test_refs[u])
                base.append([w.word for w in best_path_hypothesis(eval_lats[u]).words])
                hyps.append(p.decode(rescorer, best, norm, gate))
                seconds += p.seconds
                hit_arcs += p.hit_arcs
            seconds += time.perf_counter() - t0
            if recover and abstained(best):  # nothing added: the fold's hypotheses are that already
                without += hyps[len(hyps) - len(eval_lats):]
            elif recover:  # not timed: the same scales without the added words, for what they changed
                off = recovery_off(best)
                without += [prep_test[u].decode(rescorer, off, norm) for u in sorted(eval_lats)]
        for u in missing:
            refs.append(test_refs[u])
            base.append([])
            hyps.append([])
            without.append([])
        extra = {"scales": chosen, "base_scales": "awe_rescore" if awe_configs else "grid",
                 "ctc_model_dir": s.ctc_model_dir, "ctc_model_sha256": getattr(posteriors, "model_sha256", None),
                 "oov_recovery": recover,
                 **(s.keep_rule() if recover else {}),
                 "spotted_arcs_added": hit_arcs, "ctc_forward_seconds": round(forward, 3),
                 "rescoring_seconds": round(seconds, 2), "ctc_log_probs": lists["ctc_log_probs"],
                 "ctc_temperature": temps}
        if words:
            extra.update(lists)
        if recover:
            extra.update(added_counts(refs, without, hyps, train_vocab))
        v = _per_decode(seconds, decode_seconds)
        if v is not None:
            extra["rescoring_seconds_per_decode_second"] = v
        results[s.prefix + "awe_ctc_rescore"] = summary_row(refs, base, hyps, train_vocab, extra)
        log.info("awe_ctc_rescore: %s", {k: results[s.prefix + "awe_ctc_rescore"][k] for k in ("wer", "oov_recall", "oov_precision")})
    return results, curves


def fusion_config(row: dict):
    """The config ``rescorer rescore --ctc-model-dir`` applies: an ``awe_ctc_rescore`` row's first
    fold's scales (as the embedding methods keep theirs); None where that fold chose an evidence
    gate, which rescoring does not apply."""
    from dataclasses import fields

    from rescorer.rescore import RescoreConfig

    first = row["scales"][0]
    if any(first.get(k) is not None for k in ("min_posterior", "min_ctc_margin")):
        return None
    names = {f.name for f in fields(RescoreConfig)}
    return RescoreConfig(**{k: v for k, v in first.items() if k in names})
