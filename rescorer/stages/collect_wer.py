"""Stage: merge decoder results into a WER file (results/wer.json), with model size, config, machine and date.

Each decode metrics file is a ``rescorer decode`` metrics.json; its methods (ctc_greedy,
hlg_1best, attention_beam, hlg_attention_rescore, lattice_oracle) are written with wer,
iv_wer, oov_wer, S/D/I and rtf. A pocketsphinx summary (``rescorer lattices
pocketsphinx``'s summary.json) adds ``pocketsphinx_1best`` and the oracle WER of its
lattices. Other corpora's entries and the rescoring results of the same corpus are kept.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path
from typing import Optional, Sequence

from rescorer.models.checkpoint import BEST, load_checkpoint
from rescorer.stages import StageError

KEYS = ("wer", "iv_wer", "oov_wer", "substitutions", "deletions", "insertions", "ref_words", "utterances", "rtf",
        "oov_ref_words", "oov_ref_rate")
REPO = Path(__file__).resolve().parents[2]


def _model_info(model_dir: str) -> dict:
    cfg_path = Path(model_dir) / "config.json"
    info = {"model_dir": model_dir}
    if cfg_path.exists():
        info["config"] = json.loads(cfg_path.read_text())
    best = Path(model_dir) / BEST
    if best.exists():
        try:
            ckpt = load_checkpoint(best)
            state = ckpt.get("model") or ckpt.get("state_dict") or {}
            info["parameters"] = int(sum(v.numel() for v in state.values() if hasattr(v, "numel")))
        except Exception as e:  # the size is informative; a failure to read it is reported, not fatal
            info["parameters_error"] = str(e)
    return info


def _read_json(path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise StageError(f"{path}: no such {what}") from e
    except json.JSONDecodeError as e:
        raise StageError(f"{path}: not a JSON {what} ({e})") from e


def collect_wer(
    corpus: str,
    decode_metrics: Sequence[str] = (),
    pocketsphinx_summary: Optional[str] = None,
    out="results/wer.json",
    command: str = "rescorer wer collect",
) -> dict:
    """Merge the results into ``out`` under ``corpus``; returns the corpus's entry."""
    out = Path(out)
    doc = json.loads(out.read_text()) if out.exists() else {}
    entry = doc.setdefault("corpora", {}).setdefault(corpus, {})
    runs = doc.setdefault("decoding_runs", {})
    for path in decode_metrics:
        m = _read_json(path, "decode metrics file")
        if not isinstance(m.get("methods"), dict):
            raise StageError(f"{path}: no 'methods' in this decode metrics file")
        for method, r in m["methods"].items():
            entry[method] = {k: r[k] for k in KEYS if k in r}
            entry[method]["source"] = path
        runs[f"{corpus}:{path}"] = {
            "model": _model_info(m.get("model_dir", "")) if m.get("model_dir") else None,
            "data": m.get("data"),
            "audio_seconds": m.get("audio_seconds"),
            "settings": m.get("settings"),
            "lm_oov": m.get("lm_oov"),
        }
    if pocketsphinx_summary:
        s = _read_json(pocketsphinx_summary, "pocketsphinx summary")
        entry["pocketsphinx_1best"] = {
            "wer": s["wer_1best"], "substitutions": s["sub"], "deletions": s["del"], "insertions": s["ins"],
            "ref_words": s["ref_words"], "utterances": s["utterances"], "rtf": s["rtf"],
            "note": "iv/oov split not applicable: pocketsphinx's acoustic model was not trained on this corpus",
        }
        entry["pocketsphinx_lattice_oracle"] = {"wer": s["oracle_wer"], "wer_unpruned_slf": s["oracle_wer_slf"]}
        runs[f"{corpus}:{pocketsphinx_summary}"] = {
            "model": "pocketsphinx 5.x bundled en-us acoustic model and trigram LM",
            "audio_seconds": s.get("audio_seconds"),
            "decode_seconds": s.get("decode_seconds"),
        }
    collected = doc.get("collected")
    if not isinstance(collected, dict) or "command" in collected:  # one provenance record per corpus
        collected = {}
    collected[corpus] = {
        "command": command,
        "cwd": os.path.relpath(os.getcwd(), REPO),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
        "date": datetime.date.today().isoformat(),
    }
    doc["collected"] = collected
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return entry


def merge_wer(src, out="results/wer.json", rename: Optional[dict] = None, run: Optional[str] = None,
              fields: Optional[dict] = None) -> dict:
    """Copy a recipe run's WER file (its exp/wer.json) into ``out``: every corpus entry, its
    provenance (``collected``) and its decoding/rescoring runs, a corpus renamed by ``rename``
    (e.g. speechocean762_dev -> speechocean762_dev/whisper, so runs of another frontend or
    config sit beside the default's), every row given ``fields`` (e.g. frontend) and every
    provenance record the recipe command ``run``. Entries of other corpora in ``out`` are kept;
    a renamed corpus's entry is replaced whole. Returns {new corpus name: number of rows}."""
    src_doc = _read_json(src, "WER file")
    if not isinstance(src_doc.get("corpora"), dict) or not src_doc["corpora"]:
        raise StageError(f"{src}: no 'corpora' in this WER file")
    rename = dict(rename or {})
    unknown = sorted(set(rename) - set(src_doc["corpora"]))
    if unknown:
        raise StageError(f"{src}: no corpus {', '.join(unknown)} (it has {', '.join(sorted(src_doc['corpora']))})")
    out = Path(out)
    doc = json.loads(out.read_text()) if out.exists() else {}
    merged = {}
    for corpus, rows in src_doc["corpora"].items():
        new = rename.get(corpus, corpus)
        doc.setdefault("corpora", {})[new] = {m: {**r, **(fields or {})} for m, r in rows.items()}
        merged[new] = len(rows)
        prov = dict((src_doc.get("collected") or {}).get(corpus) or {})
        prov.update(merged_from=str(src), **({"recipe": run} if run else {}))
        doc.setdefault("collected", {})[new] = prov
        for kind in ("decoding_runs", "rescoring_runs"):
            for key, value in (src_doc.get(kind) or {}).items():
                if key.split(":", 1)[0] == corpus:
                    rec = dict(value) if isinstance(value, dict) else {"value": value}
                    if run:
                        rec["recipe"] = run
                    doc.setdefault(kind, {})[new + key[len(corpus):]] = rec
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return merged
