#!/usr/bin/env python
"""OOV recovery tuned for a precision target instead of the lowest WER: what each target keeps
on held-out data (``rescorer tune --oov-min-precision``, ``evaluation.rescoring.choose_recovery``).

    python benchmarks/recovery_precision_target.py --workdir /path/to/synthetic_run \\
        --config recipes/synthetic/config.yaml --corpus synthetic/whisper_l34_main \\
        --targets none,0.5,0.8 --out results/recovery_precision_target.json

For each target, runs the recipe's recovery tunings on its lattices (the config sections
``rescore_oov``: ``awe_rescore_oov_recovery`` and ``awe_rescore_context_list``; ``rescore_ctc``:
``awe_ctc_rescore`` and the anchors it is compared with, ``ctc_word_spotting`` and
``lattice_ctc_word_spotting``: the first's words are counted against the CTC greedy output it
edits, the second's added words against the tuned lattice 1-best it edits), as the recipe's stage 6 does, with
``--oov-min-precision`` (none: the lowest dev WER, recovery kept only when it lowers it; CTC
word spotting then tuned for WER alone, as published) and, for the fusion, the evidence gate
grid ``--gate-posteriors`` x ``--gate-ctc-margins`` (strict points a precision target can
choose); with ``--sections rescore_whisper``, Whisper's list words (``awe_whisper_*``, the
recipe's transcripts and its gate grids of embedder cosine x Whisper confidence); with
``rescore_whisper_pocketsphinx``, the same on pocketsphinx's lattices of dev (speechocean762,
``--cross-validate``; rows ``pocketsphinx_awe_whisper_*``). Rows per target and method: ``wer``, ``oov_recall``, ``oov_precision``,
``oov_tokens_recovered``, ``oov_tokens_proposed``, ``iv_tokens_broken``, the folds where
recovery abstained (Whisper's list words: also each fold's gate and ``heldout_hit_evidence``, how
well each piece of evidence and the fitted hit model rank the held-out hits); with the command, machine and date. Dev tunes, test reports (or
cross-validation over dev speakers with ``--cross-validate [--folds K]``, for corpora without a test split).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
KEEP = ("wer", "oov_recall", "oov_precision", "oov_tokens_recovered", "oov_tokens_proposed", "oov_tokens",
        "iv_tokens_broken", "added_oov_recovered", "added_oov_proposed", "added_oov_precision", "added_iv_broken",
        "word_list_size", "test_word_list_size",
        "heldout_hit_evidence")  # Whisper's list words: how well each piece of evidence, and the fitted hit model, rank held-out hits
RECOVERY_METHODS = ("awe_rescore_oov_recovery", "awe_rescore_context_list", "ctc_word_spotting",
                    "lattice_ctc_word_spotting", "awe_ctc_rescore",
                    "awe_whisper_context_list", "awe_whisper_oov_recovery")


def _flags(config: str, section: str) -> List[str]:
    out = subprocess.run([sys.executable, "-m", "rescorer", "config-flags", config, section], check=True,
                         capture_output=True, text=True, cwd=REPO).stdout
    return [x for x in out.splitlines() if x]


def _split_args(cross_validate: bool, ctc: bool, folds: int = 2, stored_log_probs: bool = True) -> List[str]:
    args = ["--dev-lattices", "exp/decode_dev_ctc/word_lattices.pt", "--dev-features", "exp/asr_data/dev.pt"]
    if cross_validate:
        args += ["--cross-validate", f"--folds={folds}", "--decode-metrics", "exp/decode_dev_ctc/metrics.json"]
    else:
        args += ["--test-lattices", "exp/decode_test_ctc/word_lattices.pt", "--test-features", "exp/asr_data/test.pt",
                 "--decode-metrics", "exp/decode_test_ctc/metrics.json"]
    if ctc and stored_log_probs:  # the decoder's log-probs, which only its own CTC model may stand in for
        for split in ("dev",) if cross_validate else ("dev", "test"):
            stored = Path(f"exp/decode_{split}_ctc/ctc_log_probs.pt")
            if stored.exists():
                args.append(f"--{split}-ctc-log-probs={stored}")
    return args


def _transcript_args(cross_validate: bool) -> List[str]:
    args = ["--dev-transcripts", "exp/whisper/transcripts_dev.jsonl"]
    return args if cross_validate else args + ["--test-transcripts", "exp/whisper/transcripts_test.jsonl"]


def _run(corpus: str, flags: List[str], target: Optional[float], out: Path, ctc) -> None:
    """One ``rescorer tune``; ``ctc``: the CTC model directory of the CTC methods (falsy: none)."""
    cmd = [sys.executable, "-m", "rescorer", "tune", "--corpus", corpus, "--model-dir", "exp/embeddings",
           "--train-data", "exp/asr_data/train.pt", "--out", str(out)] + flags
    if ctc:
        cmd += ["--ctc-model-dir", ctc if isinstance(ctc, str) else "exp/ctc"]
    if target is not None:
        cmd += ["--oov-min-precision", str(target)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def measure(a) -> Dict[str, dict]:
    os.chdir(a.workdir)
    targets = [None if t.strip().lower() == "none" else float(t) for t in a.targets.split(",")]
    oov_list = ["--word-list", "exp/word_lists/large.txt", "--context-list", "exp/word_lists/context_dev.txt"]
    if not a.cross_validate:
        oov_list += ["--test-context-list", "exp/word_lists/context_test.txt"]
    gates = [f"--oov-min-posteriors={a.gate_posteriors}", f"--oov-min-ctc-margins={a.gate_ctc_margins}"]
    runs = [("rescore_oov", _flags(a.config, "rescore_oov") + oov_list + _split_args(a.cross_validate, False, a.folds), False),
            ("rescore_ctc", _flags(a.config, "rescore_ctc") + gates
             + _split_args(a.cross_validate, True, a.folds, stored_log_probs=a.ctc_model_dir == "exp/ctc")
             + ["--methods", "awe_rescore,ctc_word_spotting,lattice_ctc_word_spotting,awe_ctc_rescore"],
             a.ctc_model_dir),  # the fusion on awe_rescore's scales
            ("rescore_whisper", _flags(a.config, "rescore_whisper") + _split_args(a.cross_validate, False, a.folds)
             + _transcript_args(a.cross_validate), False),
            # pocketsphinx's lattices of dev (the speechocean762 recipe's stage 6), rows pocketsphinx_*
            ("rescore_whisper_pocketsphinx", _flags(a.config, "rescore_whisper_pocketsphinx")
             + ["--prefix", "pocketsphinx_", "--dev-lattices", "exp/pocketsphinx/lattices", "--dev-features",
                "exp/asr_data/dev.pt", "--cross-validate", f"--folds={a.folds}", "--decode-metrics", "exp/pocketsphinx/summary.json"]
             + _transcript_args(True), False)]
    out: Dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for target in targets:
            key = "lowest_wer" if target is None else f"precision_{target:g}"
            wer_file = Path(tmp) / f"{key}.json"
            for section, flags, ctc in runs:
                if section not in a.sections.split(","):
                    continue
                _run(a.corpus, flags + shlex.split(a.tune_args), target, wer_file, ctc)
            out[key] = summarise(json.loads(wer_file.read_text())["corpora"][a.corpus])
            for method, row in out[key].items():
                print(key, method, row, flush=True)
    return out


def summarise(rows: Dict[str, dict]) -> Dict[str, dict]:
    """The recovery methods' rows of one ``rescorer tune`` output, cut to what a target moves,
    with how many folds abstained (``"oov_recovery": "abstained"`` in their scales)."""
    out = {}
    for method, r in sorted(rows.items()):
        if method.removeprefix("pocketsphinx_") not in RECOVERY_METHODS:  # also another decoder's rows
            continue
        row = {k: r[k] for k in KEEP if k in r}
        if "spotting" in r:  # CTC word spotting; into the greedy output, all it changes is added to it
            if r.get("base") == "ctc_greedy":
                row.update(added_oov_recovered=r.get("oov_tokens_recovered"), added_oov_proposed=r.get("oov_tokens_proposed"),
                           added_oov_precision=r.get("oov_precision"), added_iv_broken=r.get("iv_tokens_broken"))
            folds = r.get("spotting", [])
            row.update(folds_abstained=folds.count("abstained"), folds=len(folds))
            out[method] = row
            continue
        scales = r.get("scales", [])
        row["folds_abstained"] = sum(1 for s in scales if "abstained" in (s.get("oov_recovery"), s.get("gate")))
        if any("gate" in s for s in scales):  # Whisper's list words: the gate each fold chose
            row["gates"] = [{k: s.get(k) for k in ("gate", "confidence_gate", "probability_gate")
                             if k != "probability_gate" or k in s} for s in scales]
        row["folds"] = len(scales)
        out[method] = row
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a recipe run's directory (exp/ with lattices, models, word lists)")
    p.add_argument("--config", required=True, help="that recipe's config (its rescore_oov / rescore_ctc grids)")
    p.add_argument("--corpus", required=True, help="the entry name in --out")
    p.add_argument("--targets", default="none,0.5,0.8", help="precision targets; none: the lowest dev WER")
    p.add_argument("--sections", default="rescore_oov,rescore_ctc", help="which tunings to run")
    p.add_argument("--gate-posteriors", default="0.5,0.2,0.1,0.05,none", help="the fusion's evidence gate grid")
    p.add_argument("--gate-ctc-margins", default="1,0.5,0,none", help="... and its CTC margin thresholds")
    p.add_argument("--ctc-model-dir", default="exp/ctc", help="the CTC methods' model, under --workdir (exp/ctc, "
                                                             "the decoder's, with its stored log-probs; or e.g. "
                                                             "exp/ctc/best_loss.pt)")
    p.add_argument("--cross-validate", action="store_true", help="cross-validation over dev speakers (no test split)")
    p.add_argument("--folds", type=int, default=2, help="... in this many speaker folds")
    p.add_argument("--tune-args", default="", help="more options for every rescorer tune run, e.g. an ablation's "
                                                   "\"--hit-model-hits own\" (recorded in the row's command)")
    p.add_argument("--out", default=str(REPO / "results" / "recovery_precision_target.json"))
    a = p.parse_args(argv)
    a.config = str(Path(a.config).resolve())
    out_path = Path(a.out).resolve()
    result = measure(a)
    doc = json.loads(out_path.read_text()) if out_path.exists() else {}
    doc[a.corpus] = {
        "targets": result,
        "protocol": f"{a.folds}-fold cross-validation over dev speakers" if a.cross_validate else "tuned on dev, reported on test",
        "command": shlex.join(["python", "benchmarks/recovery_precision_target.py"] + (argv or sys.argv[1:])),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": _dt.date.today().isoformat(),
    }
    out_path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
