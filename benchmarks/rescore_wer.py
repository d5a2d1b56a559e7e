"""Rescoring benchmark: tune on dev, report on held-out data, merge into results/wer.json.

  python benchmarks/rescore_wer.py --corpus synthetic --model-dir EMBEDDER_DIR \\
      --train-data exp/asr_data/train.pt \\
      --dev-lattices exp/decode_dev_ctc/word_lattices.pt --dev-features exp/asr_data/dev.pt \\
      --test-lattices exp/decode_test_ctc/word_lattices.pt --test-features exp/asr_data/test.pt \\
      --decode-metrics exp/decode_test_ctc/metrics.json --prefix "" --out results/wer.json

Protocol. The scales (embedding weight, LM scale, word insertion penalty) are chosen on
the dev lattices only and then applied to the test lattices. Without a test split (e.g.
speechocean762, which has only a dev split here) pass ``--cross-validate``: dev speakers
are split in two halves (seeded); each half is decoded with the scales tuned on the other
half, and the pooled result is reported, so no reported hypothesis was tuned on itself.

Methods written (under ``<prefix>``): ``awe_rescore`` (embedding scores on every arc),
``awe_rescore_oov_recovery`` (plus nearest-spelling alternatives from a large word list),
``awe_plus_attention`` (with ``--attention-model-dir``: the embedding-rescored lattice's
n-best rescored by an attention decoder, ``rescorer.second_pass``; weight tuned on dev),
each with wer, iv_wer, oov_wer, oov_tokens_recovered, iv_tokens_broken and
rescoring_seconds_per_decode_second; and ``<prefix>baseline_tuned`` (same scales grid,
embedding weight 0) so the gain is measured against an equally tuned decoder.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("rescore_wer")


def _features(path):
    from rescorer.training.asr_data import load_utterances

    u = load_utterances(path, max_frames=None)
    feats = {u.utterance_id(i): u.features(i).float() for i in range(len(u))}
    texts = {u.utterance_id(i): u.text(i).split() for i in range(len(u))}
    speakers = {u.utterance_id(i): u.speakers[int(u.keep[i])] for i in range(len(u))}
    return feats, texts, speakers


def _train_vocab(path):
    from rescorer.training.asr_data import load_utterances

    u = load_utterances(path, max_frames=None)
    return {w for i in range(len(u)) for w in u.text(i).split()}


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
    from rescorer.lattice.word_lattice import prune

    if not min_posterior:
        return lattices, 0.0
    t0 = time.perf_counter()
    before = sum(l.num_arcs for l in lattices.values())
    out = {u: prune(l, min_posterior, scale=scale) for u, l in lattices.items()}
    seconds = time.perf_counter() - t0
    log.info("pruned %d lattices at posterior %g: %d -> %d arcs (%.1f s)", len(out), min_posterior, before,
             sum(l.num_arcs for l in out.values()), seconds)
    return out, seconds


def _load_lattices(path, args):
    """The first --max-utterances lattices of a split (sorted ids), pruned; returns (lattices, prune seconds)."""
    from rescorer.lattice.word_lattice import load_word_lattices

    lats = load_word_lattices(path)
    if args.max_utterances:
        lats = {u: lats[u] for u in sorted(lats)[: args.max_utterances]}
    return _prune_all(lats, args.prune_posterior, args.prune_scale)


def _missing_lattices(metrics_path, lattices, args):
    """Utterances the decoder could make no word lattice for (decode metrics' ``no_lattice``),
    within the --max-utterances window: they count as empty hypotheses (all deletions), as
    in the decoder's own WER, so every method is scored on the same utterances."""
    if not metrics_path or not Path(metrics_path).exists():
        return []
    missing = sorted(json.loads(Path(metrics_path).read_text()).get("no_lattice", []))
    if args.max_utterances and lattices:
        last = max(lattices)
        missing = [u for u in missing if u <= last]
    return [u for u in missing if u not in lattices]


def _grid(args):
    return dict(
        awe_scales=[float(x) for x in args.awe_scales.split(",")],
        lm_scales=[float(x) for x in args.lm_scales.split(",")],
        word_insertion_penalties=[float(x) for x in args.wips.split(",")],
    )


def _attention_second_pass(rescorer, attention, awe_config, prep_tune, prep_eval, tune_feats, eval_feats, tune_refs, train_vocab, args):
    """awe_plus_attention: n-best of the embedding-rescored lattices, rescored by the attention
    decoder; its weight is tuned on the tuning lattices only. Returns ({"words", "seconds"}
    for the evaluated lattices, the chosen attention_scale)."""
    from rescorer.second_pass import attention_candidates, pick_best
    from rescorer.wer import compute_wer

    def candidates(prep, feats):
        out = {}
        for u in sorted(prep):
            t0 = time.perf_counter()
            scored = rescorer.apply_scores(prep[u].lattice, prep[u].awe, awe_config)
            hyps, att = attention_candidates(attention, scored, feats[u], n=args.attention_nbest)
            out[u] = (hyps, att, time.perf_counter() - t0)
        return out

    cand_tune = candidates(prep_tune, tune_feats)
    uids = sorted(cand_tune)
    best_scale, best_wer = 0.0, None
    for scale in [float(x) for x in args.attention_scales.split(",")]:
        hyps = [pick_best(cand_tune[u][0], cand_tune[u][1], scale) for u in uids]
        w = compute_wer([tune_refs[u] for u in uids], hyps, train_vocab)["wer"]
        if best_wer is None or w < best_wer - 1e-12:
            best_scale, best_wer = scale, w
    cand_eval = cand_tune if prep_eval is prep_tune else candidates(prep_eval, eval_feats)
    words = {u: pick_best(h, a, best_scale) for u, (h, a, _) in cand_eval.items() if u in prep_eval}
    return {"words": words, "seconds": {u: cand_eval[u][2] for u in words}}, best_scale


def run(args):
    """Returns (results by method, the Rescorer with the scales chosen on dev)."""
    from rescorer.corpora.text_sources import large_word_list
    from rescorer.evaluation.rescoring import evaluate, plot_tuning_curve, prepare_all, tune
    from rescorer.lattice.word_lattice import best_path_hypothesis
    from rescorer.rescore import Rescorer

    torch.manual_seed(0)
    rescorer = Rescorer.from_dir(args.model_dir, device=args.device)
    base_cfg = replace(rescorer.config, am_scale=args.am_scale)
    rescorer.config = base_cfg
    train_vocab = _train_vocab(args.train_data)
    grid = _grid(args)
    dev_lats, dev_prune_seconds = _load_lattices(args.dev_lattices, args)
    dev_feats, dev_refs, dev_spk = _features(args.dev_features)
    if args.cross_validate:
        speakers = sorted({dev_spk[u] for u in dev_lats})
        rng = np.random.default_rng(args.seed)
        half = set(rng.permutation(speakers)[: len(speakers) // 2].tolist())
        folds = [
            ({u: l for u, l in dev_lats.items() if dev_spk[u] in half}, {u: l for u, l in dev_lats.items() if dev_spk[u] not in half}),
            ({u: l for u, l in dev_lats.items() if dev_spk[u] not in half}, {u: l for u, l in dev_lats.items() if dev_spk[u] in half}),
        ]
        test_feats, test_refs = dev_feats, dev_refs
    else:
        test_lats, test_prune_seconds = _load_lattices(args.test_lattices, args)
        test_feats, test_refs, _ = _features(args.test_features)
        folds = [(dev_lats, test_lats)]
    prune_seconds = dev_prune_seconds if args.cross_validate else test_prune_seconds  # of the evaluated lattices
    missing = [u for u in _missing_lattices(args.decode_metrics, dev_lats if args.cross_validate else test_lats, args)
               if u in test_refs]
    if missing:
        log.warning("%d utterance(s) without a lattice count as empty hypotheses: %s", len(missing), ", ".join(missing[:5]))
    n_eval = sum(len(f[1]) for f in folds)
    total_utts = None
    if args.decode_metrics and Path(args.decode_metrics).exists():
        total_utts = json.loads(Path(args.decode_metrics).read_text()).get("utterances")
    # decoding time of the utterances that are rescored (a subset with --max-utterances)
    decode_seconds = _decode_seconds(args.decode_metrics, n_eval / total_utts if total_utts else 1.0)

    results, curves, chosen_by_method = {}, {}, {}
    wanted = args.methods.split(",")
    attention = None
    if "awe_plus_attention" in wanted and args.attention_model_dir:
        from rescorer.second_pass import AttentionScorer

        attention = AttentionScorer.from_dir(args.attention_model_dir, device=args.device)
    for method, recover in (("awe_rescore", False), ("awe_rescore_oov_recovery", True)):
        if method not in wanted:
            continue
        if recover:
            log.info("embedding a %d-word list for OOV recovery", args.word_list_size)
            rescorer.set_vocabulary(large_word_list(args.word_list_size))
        pooled_refs, pooled_base, pooled_hyps, seconds, chosen = [], [], [], prune_seconds, []
        pooled_base_tuned = []
        pooled_att, att_seconds, att_chosen = [], 0.0, []
        with_attention = not recover and "awe_plus_attention" in wanted and args.attention_model_dir
        # embedding scores are computed once per lattice and shared by the folds
        prep_dev = prepare_all(rescorer, dev_lats, dev_feats, recover=recover)
        prep_test = prep_dev if args.cross_validate else prepare_all(rescorer, folds[0][1], test_feats, recover=recover)
        for k, (tune_lats, eval_lats) in enumerate(folds):
            prep_tune = {u: prep_dev[u] for u in tune_lats}
            oov_grid = [float(x) for x in args.oov_lm_scores.split(",")] if recover and args.oov_lm_scores else None
            best, curve = tune(rescorer, prep_tune, dev_refs, train_vocab=train_vocab, oov_lm_scores=oov_grid, **grid)
            base_best, _ = tune(rescorer, prep_tune, dev_refs, awe_scales=[0.0], lm_scales=grid["lm_scales"],
                                word_insertion_penalties=grid["word_insertion_penalties"], train_vocab=train_vocab)
            curves[f"{method}_fold{k}"] = curve
            chosen.append(asdict(best))
            prep_eval = {u: prep_test[u] for u in eval_lats}
            base = {u: [w.word for w in best_path_hypothesis(lat).words] for u, lat in eval_lats.items()}
            m = evaluate(rescorer, prep_eval, test_refs, base, train_vocab, best)
            mb = evaluate(rescorer, prep_eval, test_refs, base, train_vocab, base_best)
            seconds += m["rescoring_seconds"]  # preparation of the evaluated lattices + their decoding
            if with_attention:
                t0 = time.perf_counter()
                att_hyps, att_scale = _attention_second_pass(
                    rescorer, attention, best, prep_tune, prep_eval, dev_feats, test_feats, dev_refs, train_vocab, args
                )
                att_seconds += sum(t for u, t in att_hyps["seconds"].items())
                att_chosen.append(att_scale)
                log.info("fold %d: attention_scale %.2f (%.1f s)", k, att_scale, time.perf_counter() - t0)
            for u in sorted(prep_eval):
                pooled_refs.append(test_refs[u])
                pooled_base.append(base[u])
                pooled_hyps.append(m["hypotheses"][u].split())
                pooled_base_tuned.append(mb["hypotheses"][u].split())
                if with_attention:
                    pooled_att.append(att_hyps["words"][u])
        for u in missing:  # no lattice: every method's hypothesis is empty
            pooled_refs.append(test_refs[u])
            for hyps in (pooled_base, pooled_hyps, pooled_base_tuned) + ((pooled_att,) if with_attention else ()):
                hyps.append([])
        from rescorer.evaluation.rescoring import recovery_counts
        from rescorer.wer import compute_wer

        def summarise(hyps, extra=None):
            w = compute_wer(pooled_refs, hyps, train_vocab)
            out = {k: w[k] for k in ("wer", "iv_wer", "oov_wer", "substitutions", "deletions", "insertions", "ref_words", "utterances")}
            out.update(recovery_counts(pooled_refs, pooled_base, hyps, train_vocab))
            if extra:
                out.update(extra)
            return out

        chosen_by_method[method] = chosen
        extra = {"rescoring_seconds": round(seconds, 2), "scales": chosen}
        if decode_seconds:
            extra["rescoring_seconds_per_decode_second"] = round(seconds / decode_seconds, 4)
        results[args.prefix + method] = summarise(pooled_hyps, extra)
        if with_attention:
            extra_att = {"rescoring_seconds": round(seconds + att_seconds, 2), "scales": chosen, "attention_scales": att_chosen,
                         "attention_model_dir": args.attention_model_dir}
            if decode_seconds:
                extra_att["rescoring_seconds_per_decode_second"] = round((seconds + att_seconds) / decode_seconds, 4)
            results[args.prefix + "awe_plus_attention"] = summarise(pooled_att, extra_att)
        if not recover:
            results[args.prefix + "baseline_tuned"] = summarise(pooled_base_tuned, {"note": "decoder scores only, same grid"})
            results[args.prefix + "lattice_1best"] = summarise(pooled_base, {"note": "the lattice's own best path"})
        log.info("%s: %s", method, {k: results[args.prefix + method][k] for k in ("wer", "iv_wer", "oov_wer")})

    # tuning curve: committed as JSON + a plot
    res_dir = Path(args.out).parent
    tag = f"{args.corpus}_{args.prefix.rstrip('_') or 'lattices'}"
    res_dir.mkdir(parents=True, exist_ok=True)
    curve_path = res_dir / f"rescore_tuning_{tag}.json"
    if curve_path.exists():  # another run's methods (e.g. OOV recovery run separately) are kept
        curves = {**json.loads(curve_path.read_text()), **curves}
    curve_path.write_text(json.dumps(curves, indent=1, sort_keys=True))
    key = "awe_rescore_fold0" if "awe_rescore_fold0" in curves else next(k for k in sorted(curves) if k.endswith("fold0"))
    plot_tuning_curve(curves[key], res_dir / f"rescore_tuning_{tag}.png", f"{args.corpus}: dev WER vs embedding weight")
    # the chosen scales (fold 0, or the only fold) travel with the model
    chosen = chosen_by_method.get("awe_rescore") or next(iter(chosen_by_method.values()))
    rescorer.config = replace(rescorer.config, **{k: chosen[0][k] for k in ("awe_scale", "lm_scale", "word_insertion_penalty")})
    return results, rescorer


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--train-data", required=True, help="acoustic training utterances (for IV/OOV)")
    p.add_argument("--dev-lattices", required=True)
    p.add_argument("--dev-features", required=True)
    p.add_argument("--test-lattices")
    p.add_argument("--test-features")
    p.add_argument("--cross-validate", action="store_true", help="no test split: 2-fold over dev speakers")
    p.add_argument("--decode-metrics", help="the decoder's metrics.json (for rescoring cost relative to decoding)")
    p.add_argument("--prefix", default="", help="method name prefix, e.g. pocketsphinx_")
    p.add_argument("--methods", default="awe_rescore,awe_rescore_oov_recovery,awe_plus_attention",
                   help="awe_plus_attention needs --attention-model-dir")
    p.add_argument("--awe-scales", default="0,1,2,4,8,16,32")
    p.add_argument("--lm-scales", default="0.5,1,2")
    p.add_argument("--wips", default="-2,0,2")
    p.add_argument("--oov-lm-scores", default=None,
                   help="OOV recovery: LM costs (natural log) of a recovered word to tune on dev, e.g. -10,-7,-5,-3 "
                        "(default: the rescorer config's oov_lm_score)")
    p.add_argument("--am-scale", type=float, default=1.0)
    p.add_argument("--word-list-size", type=int, default=200000)
    p.add_argument("--attention-model-dir", help="joint CTC/attention model for awe_plus_attention (n-best second pass)")
    p.add_argument("--attention-scales", default="0,0.02,0.05,0.1,0.2,0.5,1")
    p.add_argument("--attention-nbest", type=int, default=10)
    p.add_argument("--prune-posterior", type=float, default=1e-4,
                   help="drop lattice arcs below this posterior before rescoring (0: keep all; timed as rescoring)")
    p.add_argument("--prune-scale", type=float, default=1.0,
                   help="scale of the lattice scores for those posteriors (e.g. 0.1 for pocketsphinx's large acoustic scores)")
    p.add_argument("--max-utterances", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/wer.json")
    p.add_argument("--save-config", action="store_true",
                   help="write the tuned scales to MODEL_DIR/rescorer.json (rescorer_<prefix>.json with --prefix)")
    args = p.parse_args(argv)
    if not args.cross_validate and not (args.test_lattices and args.test_features):
        p.error("--test-lattices and --test-features are needed (or --cross-validate)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    t0 = time.time()
    results, rescorer = run(args)
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {}
    entry = doc.setdefault("corpora", {}).setdefault(args.corpus, {})
    entry.update(results)
    run_key = f"{args.corpus}:{args.prefix or 'ctc'}:{args.methods}"  # one record per run, so none is lost
    doc.setdefault("rescoring_runs", {})[run_key] = {
        "command": "python benchmarks/rescore_wer.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (no GPU)" if not torch.cuda.is_available() else torch.cuda.get_device_name(0),
        "date": datetime.date.today().isoformat(),
        "cwd": os.path.relpath(os.getcwd(), Path(__file__).resolve().parents[1]),
        "wall_seconds": round(time.time() - t0, 1),
        "protocol": "2-fold cross-validation over dev speakers" if args.cross_validate else "scales tuned on dev, reported on test",
    }
    out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    if args.save_config:
        # the lattices' own decoder's scales: rescorer.json for ours, rescorer_<prefix>.json for others
        name = f"rescorer_{args.prefix.rstrip('_')}.json" if args.prefix else None
        path = rescorer.save_config(args.model_dir, {"tuned_by": doc["rescoring_runs"][run_key]}, name=name)
        log.info("tuned scales saved to %s", path)
    print(json.dumps({m: {k: r.get(k) for k in ("wer", "iv_wer", "oov_wer", "oov_tokens_recovered")} for m, r in results.items()}, indent=1))


if __name__ == "__main__":
    main()
