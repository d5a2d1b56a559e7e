"""Cost of embedding rescoring on CPU against decoding, old and new span encoders, one run.

For one corpus and lattice source (a recipe's outputs: embedder run(s), word lattices,
features, the ASR model and lang directory that decoded them, the decoder's metrics.json)
and each encoder variant
``LABEL=MODEL_DIR:SPAN_ENCODING[:COMPUTE_TYPE]`` (``isolated``: every distinct span encoded
as its own segment, the old path; ``one_pass``: the encoder run once per batch of utterances
and every span pooled from it; ``COMPUTE_TYPE``: float32 (default), bfloat16 or auto, the
one-pass frame layers' precision, ``rescorer.models.precision``), measured in this process
one after the other:

- rescoring seconds per decoding second at the default pruning (posterior 1e-4): pruning,
  embedding scores (``evaluation.rescoring.prepare_all``, batched) and the best path at
  the tuned scales, over the decoder's time for the same utterances. With
  ``--decode-model-dir`` and ``--decode-lang-dir`` the decoder runs in this process too
  (``rescorer.decoding.timed_decode``: CTC forward, HLG search, 1-best, word lattices
  and writing them, with the beams its metrics.json recorded), once before the variants
  and once after them; the mean of the two is the divisor, and the metrics.json figure
  (another run, another load) is kept beside it. Without them the metrics.json figure is
  the divisor (marked as such in the entry and in RESULTS.md);
- spans/s (distinct spans embedded per second of span encoding) and arcs/s (lattice arcs
  per rescoring second), and where the time goes (span encoding, the rest of the
  embedding scores, pruning, best path);
- with ``--frontend-cuts`` (the evaluated split's lhotse cuts), the input frontend timed in
  this run too (``rescorer.frontends.extractor_for_spec``: the frames the models read, made
  from the audio: cheap for fbank, the Whisper encoder for Whisper states): its real-time
  factor on those cuts' audio, times the evaluated utterances' audio, added to the decoder's
  seconds for a second ratio, ``rescoring_seconds_per_decode_second_from_audio``: a decoder
  that starts from audio pays for its frontend, and the embedder reuses the same frames;
- the ``awe_rescore`` WER beside it: scales tuned on dev (grid below), WER on test, or
  2-fold cross-validation over dev speakers when there is no test split.

Timings on a shared machine are noisy; the ratios between variants of one run are what
counts. Usage (synthetic recipe outputs; paths relative to --workdir)::

    python benchmarks/rescore_cost.py --workdir /work/runs/syn_after --corpus synthetic --lattice-source ctc \\
        --variant conv_isolated=exp/embeddings:isolated --variant conv_one_pass=exp/embeddings:one_pass \\
        --dev-lattices exp/decode_dev_ctc/word_lattices.pt --dev-features exp/asr_data/dev.pt \\
        --test-lattices exp/decode_test_ctc/word_lattices.pt --test-features exp/asr_data/test.pt \\
        --decode-metrics exp/decode_test_ctc/metrics.json --decode-model-dir exp/ctc --decode-lang-dir exp/lang \\
        --out results/rescore_cost.json

speechocean762 with the Whisper frontend (only a dev split: ``--cross-validate``). The
recipe trains the state-pooling embedder (exp/embeddings); the conv embedder on the same
Whisper-state segments is trained with (run in the recipe's WORKDIR)::

    rescorer train embeddings --train data/speechocean762/segments/train.pt \\
        --dev data/speechocean762/segments/dev.pt --out exp/embeddings_conv --resume \\
        --acoustic-encoder conv --channels 256 --max-frames 100 --epochs 20 --batch-size 128 \\
        --sparse-ngrams --hard-negatives 8 --no-progress

    python benchmarks/rescore_cost.py --workdir /work/runs/so762_whisper --corpus speechocean762_dev \\
        --lattice-source ctc --cross-validate \\
        --variant conv_isolated=exp/embeddings_conv:isolated --variant conv_one_pass=exp/embeddings_conv:one_pass \\
        --variant state_pooling_one_pass=exp/embeddings:one_pass \\
        --dev-lattices exp/decode_dev_ctc/word_lattices.pt --dev-features exp/asr_data/dev.pt \\
        --decode-metrics exp/decode_dev_ctc/metrics.json --decode-model-dir exp/ctc --decode-lang-dir exp/lang \\
        --out results/rescore_cost.json

Results for several corpora or lattice sources are merged into one ``--out`` file (one
entry per ``corpus/lattice_source``), each with its command, machine and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rescorer.decoding.timed_decode import LatticeDecoder, decode_settings, mean_seconds, metrics_decode_seconds  # noqa: E402
from rescorer.evaluation.rescoring import evaluate, prepare_all, tune  # noqa: E402
from rescorer.formats.utterances import read_utterance_features  # noqa: E402
from rescorer.lattice.word_lattice import best_path_hypothesis, load_word_lattices, prune  # noqa: E402
from rescorer.models.precision import COMPUTE_TYPES  # noqa: E402
from rescorer.rescore import Rescorer  # noqa: E402
from rescorer.wer import compute_wer  # noqa: E402


def _floats(text):
    return [float(x) for x in text.split(",") if x.strip()]


def _variant(text):
    """LABEL=MODEL_DIR:SPAN_ENCODING[:COMPUTE_TYPE] -> (label, model dir, span encoding, compute type)."""
    label, _, rest = text.partition("=")
    compute = "float32"
    model, _, mode = rest.rpartition(":")
    if mode in COMPUTE_TYPES:
        compute = mode
        model, _, mode = model.rpartition(":")
    if not label or not model or mode not in ("one_pass", "isolated", "auto"):
        raise argparse.ArgumentTypeError(f"--variant {text!r}: expected LABEL=MODEL_DIR:one_pass|isolated|auto"
                                         f"[:{'|'.join(COMPUTE_TYPES)}]")
    return label, model, mode, compute


def _split(path, spec, max_utts, prune_posterior):
    """(pruned lattices, prune seconds, arcs as stored) of a split."""
    lats = load_word_lattices(path)
    if max_utts:
        lats = {u: lats[u] for u in sorted(lats)[:max_utts]}
    stored_arcs = sum(int(l.num_arcs) for l in lats.values())
    t0 = time.perf_counter()
    if prune_posterior:
        lats = {u: prune(l, prune_posterior) for u, l in lats.items()}
    seconds = time.perf_counter() - t0
    return lats, seconds, stored_arcs


class _Timer:
    """Wraps a method and adds up the seconds spent in it."""

    def __init__(self, obj, name):
        self.seconds, self.calls = 0.0, 0
        inner = getattr(obj, name)

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1

        setattr(obj, name, timed)


def _count_spans(rescorer, lats, feats):
    """Distinct spans that get embedded, and word arcs scored, over the lattices."""
    spans = arcs = 0
    for u, lat in lats.items():
        idx, uniq, _ = rescorer._scored_arc_spans(lat, int(feats[u].shape[0]))
        spans += int(uniq.shape[0])
        arcs += int(idx.numel())
    return spans, arcs


def time_frontend(cuts_path, spec, max_cuts: int = 0):
    """(seconds per second of audio, audio seconds, cuts) of the frontend that makes ``spec``'s
    frames, over the cuts' audio (loaded before the clock starts), in this process."""
    from lhotse import load_manifest

    from rescorer.frontends import extractor_for_spec

    cuts = list(load_manifest(cuts_path))
    if max_cuts:
        cuts = cuts[:max_cuts]
    extractor = extractor_for_spec(spec)
    audio = [(c.load_audio()[0], c.sampling_rate) for c in cuts]
    extractor.extract(audio[0][0], audio[0][1])  # the model loaded, outside the clock
    t0 = time.perf_counter()
    for samples, sr in audio:
        extractor.extract(samples, sr)
    seconds = time.perf_counter() - t0
    total = sum(len(x) / sr for x, sr in audio)
    return seconds / total, total, len(cuts)


def run_variant(label, model_dir, mode, compute, a, dev, test, feats, refs, spk, train_vocab):
    torch.manual_seed(0)
    rescorer = Rescorer.from_dir(model_dir, device="cpu", span_encoding=mode, compute_type=compute)
    rescorer.config = replace(rescorer.config, am_scale=a.am_scale)
    grid = dict(awe_scales=_floats(a.awe_scales), lm_scales=_floats(a.lm_scales), word_insertion_penalties=_floats(a.wips))
    dev_lats, dev_prune_s, _ = dev
    prep_dev = prepare_all(rescorer, dev_lats, feats["dev"], recover=False, progress=False, batch_frames=a.batch_frames)
    enc_timer = _Timer(rescorer, "_encode_spans")
    if a.cross_validate:  # the evaluated lattices are all of dev: its preparation is timed (a second time, warm)
        eval_lats, eval_prune_s, eval_feats, eval_refs = dev_lats, dev_prune_s, feats["dev"], refs["dev"]
        speakers = sorted({spk[u] for u in dev_lats})
        half = set(np.random.default_rng(a.seed).permutation(speakers)[: len(speakers) // 2].tolist())
        folds = [([u for u in dev_lats if spk[u] in half], [u for u in dev_lats if spk[u] not in half]),
                 ([u for u in dev_lats if spk[u] not in half], [u for u in dev_lats if spk[u] in half])]
    else:
        eval_lats, eval_prune_s, _ = test
        eval_feats, eval_refs = feats["test"], refs["test"]
        folds = [(list(dev_lats), list(eval_lats))]
    t0 = time.perf_counter()
    prep_eval = prepare_all(rescorer, eval_lats, eval_feats, recover=False, progress=False, batch_frames=a.batch_frames)
    prepare_s = time.perf_counter() - t0
    hyps, chosen, decode_best_s = {}, [], 0.0
    for tune_ids, eval_ids in folds:
        best, _ = tune(rescorer, {u: prep_dev[u] for u in tune_ids}, refs["dev"], train_vocab=train_vocab, **grid)
        chosen.append({k: getattr(best, k) for k in ("awe_scale", "lm_scale", "word_insertion_penalty")})
        t0 = time.perf_counter()
        m = evaluate(rescorer, {u: prep_eval[u] for u in eval_ids}, eval_refs,
                     {u: [] for u in eval_ids}, train_vocab, best)
        decode_best_s += time.perf_counter() - t0
        hyps.update({u: m["hypotheses"][u].split() for u in eval_ids})
    uids = sorted(hyps)
    w = compute_wer([eval_refs[u] for u in uids], [hyps[u] for u in uids], train_vocab)
    spans, word_arcs = _count_spans(rescorer, eval_lats, eval_feats)
    arcs = sum(int(l.num_arcs) for l in eval_lats.values())
    total = eval_prune_s + prepare_s + decode_best_s
    row = {
        "variant": label, "model_dir": str(model_dir), "span_encoding": mode,
        "compute_type": compute, "compute_dtype": str(rescorer.compute_dtype).replace("torch.", ""),
        "acoustic_encoder": type(rescorer.acoustic).__name__, "one_pass": rescorer.one_pass,
        "utterances": len(uids), "arcs": arcs, "word_arcs_scored": word_arcs, "distinct_spans": spans,
        "wer": w["wer"], "iv_wer": w.get("iv_wer"), "oov_wer": w.get("oov_wer"), "scales": chosen,
        "seconds": {"prune": round(eval_prune_s, 3), "span_encoding": round(enc_timer.seconds, 3),
                    "embedding_scores_other": round(prepare_s - enc_timer.seconds, 3),
                    "best_path": round(decode_best_s, 3), "total": round(total, 3)},
        "spans_per_second": round(spans / enc_timer.seconds, 1) if enc_timer.seconds else None,
        "arcs_per_second": round(arcs / total, 1) if total else None,
    }
    return row


def _ratio(seconds, decode_seconds):
    return round(seconds / decode_seconds, 4) if decode_seconds else None


def _timed_decode(decoder, utterance_ids, after):
    """One pass of the decoder over the rescored utterances (its lattices written to a scratch directory)."""
    with tempfile.TemporaryDirectory(prefix="rescore_cost_decode_") as scratch:
        result = decoder.decode(utterance_ids, scratch)
    result["after"] = after
    print(json.dumps({"decode_pass": result}), flush=True)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=".", help="Recipe output directory; the other paths are relative to it.")
    p.add_argument("--corpus", required=True)
    p.add_argument("--lattice-source", default="ctc", help="Name of the lattices' decoder (e.g. ctc).")
    p.add_argument("--variant", action="append", type=_variant, required=True, help="LABEL=MODEL_DIR:one_pass|isolated")
    p.add_argument("--dev-lattices", required=True)
    p.add_argument("--dev-features", required=True)
    p.add_argument("--test-lattices")
    p.add_argument("--test-features")
    p.add_argument("--cross-validate", action="store_true", help="No test split: 2-fold over dev speakers.")
    p.add_argument("--train-data", default="exp/asr_data/train.pt", help="Acoustic training utterances (IV words).")
    p.add_argument("--decode-metrics", help="The decoder's metrics.json: its settings, and its seconds (beside the "
                   "ones measured here, or the divisor without --decode-model-dir).")
    p.add_argument("--decode-model-dir", help="The ASR model that decoded the lattices (exp/ctc): time decoding in this run.")
    p.add_argument("--decode-lang-dir", help="Its lang directory with HLG (exp/lang).")
    p.add_argument("--decode-data", help="Features it decoded (default: the evaluated split's --test-features, or "
                   "--dev-features with --cross-validate).")
    p.add_argument("--frontend-cuts", help="lhotse cuts of the evaluated split's audio: time the input frontend on "
                   "them in this run (a second ratio, decoding from audio).")
    p.add_argument("--frontend-max-cuts", type=int, default=0, help="Time the frontend on the first N cuts (0: all).")
    p.add_argument("--prune-posterior", type=float, default=1e-4)
    p.add_argument("--awe-scales", default="0,1,2,4,8,16")
    p.add_argument("--lm-scales", default="0.5,1,2")
    p.add_argument("--wips", default="-2,0,2")
    p.add_argument("--am-scale", type=float, default=1.0)
    p.add_argument("--batch-frames", type=int, default=20000)
    p.add_argument("--max-utterances", type=int, default=0, help="The first N lattices of each split (0: all).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: one core, as measured).")
    p.add_argument("--out", default=str(REPO / "results" / "rescore_cost.json"))
    a = p.parse_args(argv)
    if not a.cross_validate and not (a.test_lattices and a.test_features):
        p.error("--test-lattices and --test-features are needed (or --cross-validate)")
    if bool(a.decode_model_dir) != bool(a.decode_lang_dir):
        p.error("--decode-model-dir and --decode-lang-dir go together")
    if not (a.decode_model_dir or a.decode_metrics):
        p.error("--decode-model-dir with --decode-lang-dir (decoding timed in this run), or --decode-metrics, is needed")
    out = Path(a.out).resolve()
    command = "python benchmarks/rescore_cost.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    os.chdir(a.workdir)
    torch.set_num_threads(a.threads)
    t_start = time.time()

    spec = Rescorer.from_dir(a.variant[0][1], device="cpu").feature_spec
    feats, refs, spk = {}, {}, {}
    for split, path in (("dev", a.dev_features), ("test", a.test_features)):
        if path:
            u = read_utterance_features(path, expect=spec)
            feats[split] = u.by_id()
            refs[split] = {i: t.split() for i, t in zip(u.utterance_ids, u.texts)}
            spk.update(zip(u.utterance_ids, u.speakers))
    train_vocab = {w for t in read_utterance_features(a.train_data, expect=None).texts for w in t.split()}
    dev = _split(a.dev_lattices, spec, a.max_utterances, a.prune_posterior)
    test = None if a.cross_validate else _split(a.test_lattices, spec, a.max_utterances, a.prune_posterior)
    evaluated = dev[0] if a.cross_validate else test[0]
    stored_arcs = dev[2] if a.cross_validate else test[2]
    metrics_s, metrics_what = metrics_decode_seconds(a.decode_metrics, len(evaluated)) if a.decode_metrics else (None, None)
    decoder = None
    if a.decode_model_dir:
        data = a.decode_data or (a.dev_features if a.cross_validate else a.test_features)
        decoder = LatticeDecoder(a.decode_model_dir, a.decode_lang_dir, data, decode_settings(a.decode_metrics))
    base = {u: [w.word for w in best_path_hypothesis(l).words] for u, l in evaluated.items()}
    eval_refs = refs["dev" if a.cross_validate else "test"]
    base_wer = compute_wer([eval_refs[u] for u in sorted(base)], [base[u] for u in sorted(base)], train_vocab)["wer"]

    utterance_ids = sorted(evaluated)
    passes = [_timed_decode(decoder, utterance_ids, after=None)] if decoder else []
    rows = []
    for label, model, mode, compute in a.variant:
        row = run_variant(label, model, mode, compute, a, dev, test, feats, refs, spk, train_vocab)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if decoder:  # interleaved: decode, the variants, decode again
        passes.append(_timed_decode(decoder, utterance_ids, after=rows[-1]["variant"]))
        decode = {"source": "measured in this run", "seconds": mean_seconds(passes)["total"],
                  "mean_seconds": mean_seconds(passes), "passes": passes,
                  "schedule": ", ".join(["decode"] + [r["variant"] for r in rows] + ["decode"]),
                  "model_dir": a.decode_model_dir, "lang_dir": a.decode_lang_dir, "data": decoder.data_path,
                  "settings": decoder.settings, "stored_word_lattice_arcs": stored_arcs}
    else:
        decode = {"source": "metrics.json (fallback: not measured in this run; another run at another machine load)",
                  "seconds": round(metrics_s, 3) if metrics_s else None}
    if a.frontend_cuts:
        rtf, audio_s, n_cuts = time_frontend(a.frontend_cuts, spec, a.frontend_max_cuts)
        eval_feats = feats["dev" if a.cross_validate else "test"]
        evaluated_audio = sum(int(eval_feats[u].shape[0]) for u in utterance_ids) * spec.frame_shift
        decode["frontend"] = {"name": spec.name, "cuts": a.frontend_cuts, "timed_cuts": n_cuts,
                              "timed_audio_seconds": round(audio_s, 1), "real_time_factor": round(rtf, 4),
                              "evaluated_audio_seconds": round(evaluated_audio, 1),
                              "seconds": round(rtf * evaluated_audio, 3)}
        decode["seconds_from_audio"] = round(decode["seconds"] + rtf * evaluated_audio, 3) if decode["seconds"] else None
    decode.update({"metrics_json": a.decode_metrics, "metrics_json_seconds": round(metrics_s, 3) if metrics_s else None,
                   "metrics_json_covers": metrics_what})
    for row in rows:
        total = row["seconds"]["total"]
        row["decode_seconds"] = decode["seconds"]
        row["rescoring_seconds_per_decode_second"] = _ratio(total, decode["seconds"])
        row["decode_seconds_metrics_json"] = decode["metrics_json_seconds"]
        row["rescoring_seconds_per_decode_second_metrics_json"] = _ratio(total, decode["metrics_json_seconds"])
        if decode.get("seconds_from_audio"):
            row["decode_seconds_from_audio"] = decode["seconds_from_audio"]
            row["rescoring_seconds_per_decode_second_from_audio"] = _ratio(total, decode["seconds_from_audio"])

    entry = {
        "corpus": a.corpus, "lattice_source": a.lattice_source, "workdir": a.workdir,
        "protocol": "2-fold cross-validation over dev speakers" if a.cross_validate else "scales tuned on dev, WER on test",
        "prune_posterior": a.prune_posterior, "batch_frames": a.batch_frames, "threads": a.threads,
        "decode": decode,
        "lattice_1best_wer": base_wer, "rows": rows,
        "command": command,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {a.threads} thread(s), shared with other jobs",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "wall_seconds": round(time.time() - t_start, 1),
    }
    doc = json.loads(out.read_text()) if out.exists() else {}
    doc.setdefault("runs", {})[f"{a.corpus}/{a.lattice_source}"] = entry
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
