"""Merge decoder results into results/wer.json, with model size, config, machine and date.

  python benchmarks/collect_wer.py --corpus synthetic \\
      --decode recipes/synthetic/exp/decode_test_ctc/metrics.json [--decode ...] \\
      [--pocketsphinx recipes/speechocean762/exp/pocketsphinx/summary.json] --out results/wer.json

Each ``--decode`` is a ``rescorer.decoding.decode`` metrics.json; its methods (ctc_greedy,
hlg_1best, attention_beam, hlg_attention_rescore, lattice_oracle) are written with wer,
iv_wer, oov_wer, S/D/I and rtf. ``--pocketsphinx`` adds ``pocketsphinx_1best`` (and the
oracle WER of its lattices) from rescorer.lattice.pocketsphinx's summary.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

KEYS = ("wer", "iv_wer", "oov_wer", "substitutions", "deletions", "insertions", "ref_words", "utterances", "rtf",
        "oov_ref_words", "oov_ref_rate")


def _model_info(model_dir: str) -> dict:
    cfg_path = Path(model_dir) / "config.json"
    info = {"model_dir": model_dir}
    if cfg_path.exists():
        info["config"] = json.loads(cfg_path.read_text())
    best = Path(model_dir) / "best.pt"
    if best.exists():
        try:
            import torch

            ckpt = torch.load(str(best), map_location="cpu")
            state = ckpt.get("model") or ckpt.get("state_dict") or {}
            info["parameters"] = int(sum(v.numel() for v in state.values() if hasattr(v, "numel")))
        except Exception as e:  # the size is informative; a failure to read it is reported, not fatal
            info["parameters_error"] = str(e)
    return info


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True)
    p.add_argument("--decode", action="append", default=[], help="decode metrics.json (repeatable)")
    p.add_argument("--pocketsphinx", help="pocketsphinx summary.json")
    p.add_argument("--out", default="results/wer.json")
    args = p.parse_args(argv)
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {}
    entry = doc.setdefault("corpora", {}).setdefault(args.corpus, {})
    runs = doc.setdefault("decoding_runs", {})
    for path in args.decode:
        m = json.loads(Path(path).read_text())
        for method, r in m["methods"].items():
            entry[method] = {k: r[k] for k in KEYS if k in r}
            entry[method]["source"] = path
        runs[f"{args.corpus}:{path}"] = {
            "model": _model_info(m.get("model_dir", "")) if m.get("model_dir") else None,
            "data": m.get("data"),
            "audio_seconds": m.get("audio_seconds"),
            "settings": m.get("settings"),
            "lm_oov": m.get("lm_oov"),
        }
    if args.pocketsphinx:
        s = json.loads(Path(args.pocketsphinx).read_text())
        entry["pocketsphinx_1best"] = {
            "wer": s["wer_1best"], "substitutions": s["sub"], "deletions": s["del"], "insertions": s["ins"],
            "ref_words": s["ref_words"], "utterances": s["utterances"], "rtf": s["rtf"],
            "note": "iv/oov split not applicable: pocketsphinx's acoustic model was not trained on this corpus",
        }
        entry["pocketsphinx_lattice_oracle"] = {"wer": s["oracle_wer"], "wer_unpruned_slf": s["oracle_wer_slf"]}
        runs[f"{args.corpus}:{args.pocketsphinx}"] = {
            "model": "pocketsphinx 5.x bundled en-us acoustic model and trigram LM",
            "audio_seconds": s.get("audio_seconds"),
            "decode_seconds": s.get("decode_seconds"),
        }
    collected = doc.get("collected")
    if not isinstance(collected, dict) or "command" in collected:  # one provenance record per corpus
        collected = {}
    collected[args.corpus] = {
        "command": "python benchmarks/collect_wer.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "cwd": os.path.relpath(os.getcwd(), Path(__file__).resolve().parents[1]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
        "date": datetime.date.today().isoformat(),
    }
    doc["collected"] = collected
    out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(json.dumps(entry, indent=1)[:2000])


if __name__ == "__main__":
    main()
