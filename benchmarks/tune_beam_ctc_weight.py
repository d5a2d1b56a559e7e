"""Tune the CTC weight of joint CTC/attention beam search (``attention_beam``) on a dev set.

  python benchmarks/tune_beam_ctc_weight.py --model-dir recipes/synthetic/exp/attention \\
      --data recipes/synthetic/exp/asr_data/dev.pt --lang-dir recipes/synthetic/exp/lang \\
      --train-data recipes/synthetic/exp/asr_data/train.pt --work-dir recipes/synthetic/exp/tune_beam_ctc \\
      --weights 0,0.3,0.5,0.7,0.9,1 --out results/tuning_beam_ctc_weight.json

Runs ``rescorer decode --methods attention_beam --beam-ctc-weight W`` for each
weight (a weight whose metrics.json exists is not decoded again) and writes WER, S/D/I and
real-time factor per weight, the chosen (lowest dev WER) weight, the command, machine and
date. The chosen weight goes into the recipes' ``decode.beam_ctc_weight``; test sets are
never decoded here.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--data", required=True, help="dev utterances (.pt)")
    p.add_argument("--lang-dir", required=True)
    p.add_argument("--train-data", required=True)
    p.add_argument("--work-dir", required=True, help="one decode directory per weight")
    p.add_argument("--weights", default="0,0.3,0.5,0.7,0.9,1")
    p.add_argument("--beam-size", type=int, default=8)
    p.add_argument("--out", required=True)
    p.add_argument("--label", default=None, help="key in --out (default: the --data path)")
    a = p.parse_args(argv)
    rows = []
    for w in [float(x) for x in a.weights.split(",")]:
        out = Path(a.work_dir) / f"w{w:g}"
        if not (out / "metrics.json").exists():
            cmd = [sys.executable, "-m", "rescorer", "decode", "--model-dir", a.model_dir, "--data", a.data,
                   "--lang-dir", a.lang_dir, "--train-data", a.train_data, "--out", str(out), "--methods",
                   "attention_beam", "--beam-ctc-weight", str(w), "--beam-size", str(a.beam_size)]
            print(f"ctc weight {w:g}: decoding into {out}", file=sys.stderr)
            r = subprocess.run(cmd, stdout=subprocess.DEVNULL)
            if r.returncode != 0:
                print(f"error: decoding with ctc weight {w:g} failed (exit {r.returncode})", file=sys.stderr)
                return 1
        m = json.loads((out / "metrics.json").read_text())
        res = m["methods"]["attention_beam"]
        rows.append({"ctc_weight": w, **{k: res.get(k) for k in ("wer", "iv_wer", "oov_wer", "substitutions",
                                                                  "deletions", "insertions", "ref_words", "rtf")}})
        print(f"ctc weight {w:g}: WER {100 * res['wer']:.1f}%", file=sys.stderr)
    best = min(rows, key=lambda r: r["wer"])
    path = Path(a.out)
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc[a.label or a.data] = {
        "curve": rows, "chosen_ctc_weight": best["ctc_weight"], "model_dir": a.model_dir, "beam_size": a.beam_size,
        "command": " ".join(["python", "benchmarks/tune_beam_ctc_weight.py"] + (argv if argv is not None else sys.argv[1:])),
        "cwd": os.getcwd(), "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
        "date": datetime.date.today().isoformat(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(json.dumps({"chosen_ctc_weight": best["ctc_weight"], "dev_wer": best["wer"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
