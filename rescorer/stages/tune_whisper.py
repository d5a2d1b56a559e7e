"""The second-recogniser methods of ``rescorer tune``: Whisper's list words spotted into the
embedding-rescored 1-best (``evaluation.transcript_spotting``).

Called by ``stages.tune`` after ``awe_rescore``, with its prepared lattices and the scales it
chose per fold, so the hits land on exactly the hypotheses that method reports:

- ``awe_whisper_context_list``: the context list's words (``--context-list`` on dev,
  ``--test-context-list`` on test) that the transcript (``rescorer transcribe``) writes;
- ``awe_whisper_oov_recovery``: the same with the large list (recovery's ``--word-list``);
- ``whisper_transcript``: the transcript itself as a system, the anchor these two add to;
- ``whisper_lattice_vote``: the other way round, the transcript as the base and
  ``awe_rescore``'s word taken where Whisper is unsure and the lattice sure, and Whisper's unsure
  words that face nothing on the path dropped (``decoding.transcript_vote``; the thresholds,
  ``--whisper-vote-confidences``, ``--whisper-vote-posteriors`` and
  ``--whisper-vote-drop-confidences``, tuned on dev; abstaining leaves the transcript). With
  ``awe_whisper_oov_recovery`` in the same run, dev may also take the path with that method's
  kept hits in place as the lattice's side (``VoteSide``).

The gate on the hits, a least embedder cosine (``--whisper-gates``) and a least Whisper word
confidence (``--whisper-confidence-gates``, from the transcripts), or a least probability of being
right (``--whisper-probability-gates``) by a model of all the evidence fitted on the fold's dev
hits (of every list this run spots: ``--hit-model-hits``; linear or quadratic: ``--hit-model-form``;
``evaluation.transcript_spotting.fit_hit_model``),
is tuned on dev and kept only where dev shows a gain (or ``--oov-min-precision`` is met), else
the method abstains. ``heldout_hit_evidence`` ranks the held-out hits by each piece of
evidence and by the model fitted on the other speakers. Rows count
OOV recall / precision / IV tokens broken against the lattice's 1-best like the embedding
methods, and ``added_*`` against ``awe_rescore``'s hypotheses; the transcription's cost
(the file's recorded seconds) is reported relative to decoding.
"""

from __future__ import annotations

import logging
import time
from typing import Dict, List, NamedTuple, Optional

from rescorer.decoding.transcript_vote import vote
from rescorer.evaluation.rescoring import added_counts, choose_recovery
from rescorer.evaluation.transcript_spotting import fit_hit_model, hit_evidence, tune_gate
from rescorer.transcript_hits import SpottedUtterance, check_confidences, load_hit_lm, spot_all
from rescorer.formats.transcripts import TranscriptError, read_transcripts
from rescorer.lattice.paths import WordSpan
from rescorer.lattice.word_lattice import best_path_hypothesis, word_confidences
from rescorer.stages import StageError
from rescorer.stages.tune_ctc import summary_row
from rescorer.wer import compute_wer

log = logging.getLogger(__name__)

class BestPaths(NamedTuple):
    """One fold's ``awe_rescore`` best paths by utterance (words with spans) and, where the gates or
    the vote need them, each path word's lattice posterior."""
    words: Dict[str, List[WordSpan]]
    posteriors: Dict[str, List[float]]


WHISPER_METHODS = ("awe_whisper_context_list", "awe_whisper_oov_recovery")  # list words into the lattice's path
VOTE_METHODS = ("whisper_lattice_vote",)  # the lattice's words into the transcript


def _read(path: Optional[str], uids, split: str):
    try:
        t = read_transcripts(path)
    except TranscriptError as e:
        raise StageError(str(e)) from e
    missing = sorted(set(uids) - set(t.words))
    if missing and len(missing) == len(set(uids)):
        raise StageError(f"{path} has none of the {split} utterances (e.g. {missing[0]}): transcripts of another split?")
    if missing:
        log.warning("%s lacks %d %s utterance(s) (no hits there; empty for whisper_transcript): %s", path, len(missing),
                    split, ", ".join(missing[:5]))
    return t


def whisper_methods(s, rescorer, train_vocab, lists: Dict[str, dict], awe_configs: List, prep_dev, prep_test, folds,
                    dev_feats, dev_refs, test_feats, test_refs, missing: List[str], decode_seconds: Optional[float],
                    awe_seconds: float = 0.0):
    """Results by method name (with ``s.prefix``) and tuning curves of ``WHISPER_METHODS`` in
    ``s.methods`` (and the ``whisper_transcript`` row). ``lists``: each method's word lists
    (``{"dev", "test", "dev_name", "test_name"}``); ``awe_configs``: ``awe_rescore``'s config per fold;
    ``awe_seconds``: its rescoring time, part of these methods' cost (``rescoring_seconds``: that,
    the transcription and the spotting)."""
    wanted = [m for m in s.methods if m in WHISPER_METHODS]
    voting = any(m in VOTE_METHODS for m in s.methods)
    dev = _read(s.dev_transcripts, list(prep_dev), "dev")
    test = dev if s.cross_validate else _read(s.test_transcripts, [u for _, ev in folds for u in ev], "test")
    meta = {"dev_transcripts": s.dev_transcripts, **({} if s.cross_validate else {"test_transcripts": s.test_transcripts}),
            "transcriber": test.meta}
    gates, conf_gates = list(s.whisper_gates), list(s.whisper_confidence_gates)
    prob_gates = [p for p in s.whisper_probability_gates if p is not None]
    for t in (dev, test):
        try:
            check_confidences(t, any(q is not None for q in conf_gates), "pass --whisper-confidence-gates none")
            check_confidences(t, voting, "whisper_lattice_vote weighs them: leave it out")
        except ValueError as e:
            raise StageError(str(e)) from e
    dev_paths, eval_paths = [], []  # per fold: awe_rescore's best paths
    t_hyp = 0.0

    def paths(prep, uids, cfg) -> BestPaths:
        out = BestPaths({}, {})
        for u in uids:
            scored = rescorer.apply_scores(prep[u].lattice, prep[u].awe, cfg)
            out.words[u] = best_path_hypothesis(scored).words
            if (prob_gates or voting) and out.words[u]:
                out.posteriors[u] = word_confidences(scored, out.words[u], scale=cfg.posterior_scale)
        return out

    for k, (tune_lats, eval_lats) in enumerate(folds):
        dev_paths.append(paths(prep_dev, tune_lats, awe_configs[k]))
        t0 = time.perf_counter()
        eval_paths.append(paths(prep_test, eval_lats, awe_configs[k]))
        t_hyp += time.perf_counter() - t0
    eval_uids = [u for _, ev in folds for u in sorted(ev)]
    base = [[w.word for w in best_path_hypothesis(ev[u]).words] for _, ev in folds for u in sorted(ev)]
    refs = [test_refs[u] for u in eval_uids] + [test_refs[u] for u in missing]
    base += [[] for _ in missing]
    transcribe_seconds = sum(test.seconds.get(u, 0.0) for u in eval_uids)
    cost = {"transcribe_seconds": round(transcribe_seconds, 2)}
    if decode_seconds and len(test.seconds) >= len(eval_uids):
        cost["transcribe_seconds_per_decode_second"] = round(transcribe_seconds / decode_seconds, 4)

    def summary(hyps, extra):
        return summary_row(refs, base, hyps, train_vocab, extra)

    results, curves = {}, {}
    whisper_hyps = [test.words.get(u, []) for u in eval_uids] + [[] for _ in missing]
    transcript_cost = dict(cost)
    if "transcribe_seconds_per_decode_second" in cost:  # the table's cost column: what it takes beside decoding
        transcript_cost["rescoring_seconds_per_decode_second"] = cost["transcribe_seconds_per_decode_second"]
    results[s.prefix + "whisper_transcript"] = summary(whisper_hyps, {**meta, **transcript_cost, "note": "the transcript alone"})
    try:  # the LM of each hit's lm_gain
        hit_lm = load_hit_lm(rescorer.config.transcript_hit_lm)
    except (OSError, ValueError) as e:
        raise StageError(str(e)) from e
    large_list_spots = []  # per fold: (gate, its row, dev hits, held-out hits) of the large list's words, for the vote
    large_list_seconds = 0.0
    # every list's dev hits per fold first: a list's hit model is fitted on the other lists' too
    dev_spots = {m: [spot_all(rescorer, dev_paths[k].words, dev.words, lists[m]["dev"], dev_feats,
                              rescorer.config.oov_min_letters, dev.confidences, dev_paths[k].posteriors, hit_lm)
                     for k in range(len(folds))] for m in wanted}
    for method in wanted:
        lst = lists[method]
        hyps, without, chosen, hits, seconds, dev_spotted = [], [], [], 0, t_hyp, []
        eval_spotted, models = [], []
        for k, (tune_lats, eval_lats) in enumerate(folds):
            spotted = dev_spots[method][k]
            pool = [dev_spots[m][k] for m in wanted if m != method] if s.hit_model_hits == "all_lists" else []
            model = fit_hit_model(spotted, dev_refs, pool=pool, form=s.hit_model_form) if prob_gates else None
            gate, curve = tune_gate(spotted, dev_refs, gates, train_vocab, s.oov_min_precision, s.oov_max_sign_p,
                                    conf_gates, prob_gates, model, s.oov_min_precision_z)
            curves[f"{method}_fold{k}"] = curve
            dev_spotted.append(spotted)
            models.append(model)
            chosen.append({"gate": gate} if gate == "abstained" else {
                **gate.as_row(), **({"hit_model": gate.model.to_dict()} if gate.model is not None else {})})
            if gate == "abstained":
                log.warning("%s, fold %d: Whisper's list words do not %s on dev: none is added", method, k,
                            s.abstain_reason())
            t0 = time.perf_counter()
            ev = spot_all(rescorer, eval_paths[k].words, test.words, lst["test"], test_feats,
                          rescorer.config.oov_min_letters, test.confidences, eval_paths[k].posteriors, hit_lm)
            seconds += time.perf_counter() - t0
            eval_spotted.append(ev)
            if method == "awe_whisper_oov_recovery":
                large_list_spots.append((gate, chosen[-1], spotted, ev))
            for u in sorted(eval_lats):
                without.append([w.word for w in ev[u].hyp])
                hyps.append(without[-1] if gate == "abstained" else ev[u].words(gate))
                hits += 0 if gate == "abstained" else len(ev[u].kept(gate))
        hyps += [[] for _ in missing]
        without += [[] for _ in missing]
        total = awe_seconds + transcribe_seconds + seconds
        extra = {"scales": chosen, "word_list": lst["dev_name"], "word_list_size": len(lst["dev"]), **meta,
                 "hits_added": hits,
                 **({"hit_model_hits": s.hit_model_hits, "hit_model_form": s.hit_model_form} if prob_gates else {}),
                 "dev_hit_evidence": hit_evidence(dev_spotted, dev_refs),
                 "heldout_hit_evidence": hit_evidence(eval_spotted, test_refs, models if prob_gates else None),
                 "spotting_seconds": round(seconds, 2), **cost, "rescoring_seconds": round(total, 2),
                 **added_counts(refs, without, hyps, train_vocab)}
        if "transcribe_seconds_per_decode_second" in cost:
            extra["rescoring_seconds_per_decode_second"] = round(total / decode_seconds, 4)
        if lst["test"] is not lst["dev"] and not s.cross_validate:
            extra.update(test_word_list=lst["test_name"], test_word_list_size=len(lst["test"]))
        extra.update(s.keep_rule())
        results[s.prefix + method] = summary(hyps, extra)
        log.info("%s: %s", method, {k: results[s.prefix + method][k] for k in ("wer", "oov_recall", "oov_precision")})
        if method == "awe_whisper_oov_recovery":
            large_list_seconds = seconds - t_hyp
    if voting:
        sides = [VoteSide("path", dev_paths, eval_paths, [None] * len(folds), 0.0)]
        if len(large_list_spots) == len(folds):  # the path with the large list's words the fold's gate keeps
            spotted_dev, spotted_eval, spot_rows = [], [], []
            for gate, gate_row, dev_hits, eval_hits in large_list_spots:  # an abstained fold: the path alone
                ok = gate != "abstained"
                spotted_dev.append(_spotted_paths(dev_hits, gate) if ok else None)
                spotted_eval.append(_spotted_paths(eval_hits, gate) if ok else None)
                spot_rows.append(gate_row if ok else None)
            sides.append(VoteSide("spotted", spotted_dev, spotted_eval, spot_rows, large_list_seconds))
        row, vote_curves = _vote_method(s, dev, test, sides, folds, dev_refs, refs,
                                        whisper_hyps, train_vocab, missing, {**meta, **cost}, summary,
                                        awe_seconds + transcribe_seconds + t_hyp, decode_seconds)
        results[s.prefix + "whisper_lattice_vote"] = row
        curves.update(vote_curves)
    return results, curves


class VoteSide(NamedTuple):
    """A lattice side the vote may take words from, per fold: ``path``, awe_rescore's best paths, or
    ``spotted``, those paths with the large list's words that the fold's tuned gate keeps
    (``awe_whisper_oov_recovery``), where Whisper's words the audio confirms stand on both sides
    and so are never outvoted; ``gates``: that gate's row per fold (None, with no paths, where the
    fold's dev abstained: the side is the plain path there and is not voted twice);
    ``seconds``: what building it cost on the held-out utterances."""
    name: str
    dev: List[Optional[BestPaths]]
    held_out: List[Optional[BestPaths]]
    gates: List[Optional[dict]]
    seconds: float


def _spotted_paths(spotted: Dict[str, SpottedUtterance], gate) -> BestPaths:
    """Each utterance's path with the hits ``gate`` keeps in place, and their posteriors (NaN for a hit)."""
    out = BestPaths({}, {})
    for u, su in spotted.items():
        out.words[u], post = su.spotted_path(gate)
        if post is not None:
            out.posteriors[u] = post
    return out


def _vote_method(s, dev, test, sides: List[VoteSide], folds, dev_refs, refs, whisper_hyps,
                 train_vocab, missing, extra, summary, seconds, decode_seconds):
    """``whisper_lattice_vote``'s row and dev curves: per fold, each (lattice side, confidence,
    posterior, drop confidence) point of the grid voted on the fold's dev utterances, the one chosen
    by ``choose_recovery`` against the transcript alone (the keep-or-abstain rule of every
    added-word method), applied to its held-out utterances."""
    def voted(transcripts, paths: BestPaths, uids, point):  # point None: the transcripts as they are
        if point is None:
            return [transcripts.words.get(u, []) for u in uids]
        return [vote(transcripts.words.get(u, []), transcripts.confidences.get(u), [w.word for w in paths.words[u]],
                     paths.posteriors.get(u), *point) for u in uids]

    grid = [(side, (q, p, d)) for side in sides for q in s.whisper_vote_confidences for p in s.whisper_vote_posteriors
            for d in s.whisper_vote_drop_confidences]
    hyps, chosen, curves = [], [], {}
    for k, (tune_lats, eval_lats) in enumerate(folds):
        uids = sorted(tune_lats)
        r = [dev_refs[u] for u in uids]
        alone = voted(dev, sides[0].dev[k], uids, None)
        base_row = {"lattice_side": "off", "max_confidence": "off", "min_posterior": "off", "max_drop_confidence": "off",
                    "wer": compute_wer(r, alone, train_vocab)["wer"]}
        fold_grid = [(side, point) for side, point in grid if side is sides[0] or side.gates[k] is not None]
        rows = []
        for side, point in fold_grid:
            h = voted(dev, side.dev[k], uids, point)
            rows.append({"lattice_side": side.name, **_vote_point(point), "wer": compute_wer(r, h, train_vocab)["wer"],
                         **added_counts(r, alone, h, train_vocab)})
        pick = choose_recovery(base_row, rows, s.oov_min_precision, s.oov_max_sign_p, s.oov_min_precision_z)
        (rows[pick] if pick is not None else base_row)["chosen"] = True
        curves[f"whisper_lattice_vote_fold{k}"] = [base_row] + rows
        side, point = fold_grid[pick] if pick is not None else (sides[0], None)
        spot_gate = side.gates[k]
        chosen.append({"vote": "abstained"} if point is None else
                      {**_vote_point(point), **({"spot_gate": spot_gate} if spot_gate is not None else {})})
        if spot_gate is not None:
            seconds += side.seconds / len(folds)  # a share of spotting the held-out paths
        if point is None:
            log.warning("whisper_lattice_vote, fold %d: the lattice's words do not %s on dev: the transcript is kept",
                        k, s.abstain_reason())
        t0 = time.perf_counter()
        hyps += voted(test, side.held_out[k], sorted(eval_lats), point)
        seconds += time.perf_counter() - t0
    hyps += [[] for _ in missing]
    row_extra = {"scales": chosen, **extra, "rescoring_seconds": round(seconds, 2),
                 **added_counts(refs, whisper_hyps, hyps, train_vocab), **s.keep_rule(),
                 "note": "Whisper's transcript, awe_rescore's word where Whisper is unsure and the lattice sure"}
    if decode_seconds:
        row_extra["rescoring_seconds_per_decode_second"] = round(seconds / decode_seconds, 4)
    row = summary(hyps, row_extra)
    log.info("whisper_lattice_vote: %s", {k: row[k] for k in ("wer", "oov_recall", "oov_precision")})
    return row, curves


def _vote_point(point) -> dict:
    """A (confidence, posterior, drop confidence) point of the vote's grid as a row's fields."""
    return dict(zip(("max_confidence", "min_posterior", "max_drop_confidence"), point))
