"""Evaluate a trained embedder on one word-segment split, as a recipe step (``rescorer evaluate embeddings``).

The metrics are ``rescorer.evaluation.embeddings.evaluate_embeddings``'s (IV/OOV P@1 and
P@10 against the split vocabulary, P@1 against a 10x list, same-different and cross-view
AP); IV/OOV follows the model's own training vocabulary (stored in its checkpoint) unless
``train_segments`` is given. The entry goes under ``name`` in ``out`` (other entries kept),
with the model, the segments, the command, machine and date. A fine-tuned model
(``train embeddings --init-from``) keeps the n-gram rows of every spelling it was trained
on, its pretraining's included.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from rescorer.stages import StageError

HEADLINE = ("iv_p_at_1", "oov_p_at_1", "p_at_1_10x_vocab", "acoustic_ap", "crossview_ap")


def evaluate_embedder(
    model_dir: str,
    segments: str,
    out: str,
    name: str,
    train_segments: Optional[str] = None,
    command: Optional[str] = None,
    echo: Callable[[str], None] = print,
    note: Optional[str] = None,
) -> Dict[str, Any]:
    """Evaluate ``model_dir`` (best.pt) on ``segments``; merge the entry into ``out`` under ``name``."""
    from rescorer.evaluation import embeddings as ev
    from rescorer.formats.contract import FeatureSpec
    from rescorer.models.checkpoint import load_embedder
    from rescorer.utils import atomic_write_text

    try:
        info = ev.read_checkpoint_info(model_dir)
        acoustic, letters, train_config = load_embedder(info["path"])
        recorded = getattr(acoustic, "feature_spec", None)
        data = ev.load_segments(segments, FeatureSpec.from_json(recorded) if recorded else None)
        ev.check_compatible(acoustic, data, source=segments)
        vocab, vocab_source = info["train_vocabulary"], f"training vocabulary stored in {info['path']}"
        if train_segments:
            vocab, vocab_source = ev.load_segments(train_segments).words, train_segments
        if not vocab:
            raise StageError(f"{info['path']} stores no training vocabulary: give the training segments")
        if info["trained_spellings"]:
            letters.zero_untrained_buckets_(info["trained_spellings"])  # as training does; idempotent
        result = ev.evaluate_embeddings(acoustic, letters, data, vocab)
    except ev.EvaluationError as e:
        raise StageError(str(e)) from None
    entry: Dict[str, Any] = {k: result.metrics.get(k) for k in HEADLINE}
    config = ev.embedder_configuration(acoustic, letters, train_config, data=str(segments))
    config["init_from"] = (train_config or {}).get("init_from")  # pretrained, then fine-tuned?
    entry.update(
        more={k: v for k, v in result.metrics.items() if k not in HEADLINE and k != "counts"},
        counts=result.metrics["counts"],
        config=config,
        model=info["path"],
        segments=str(segments),
        iv_oov_by=vocab_source,
        command=command,
        machine=f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    if note:
        entry["note"] = note
    split = Path(segments).stem
    if split in ("train", "dev", "test"):
        entry["split"] = split
    run_dir = Path(info["path"]).parent
    rates = [r["segments_per_s"] for r in ev.read_training_log(str(run_dir)) if "segments_per_s" in r]
    if rates:  # the run's median training throughput (its log.jsonl)
        entry["train_segments_per_s"] = statistics.median(rates)
    path = Path(out)
    doc = json.loads(path.read_text()) if path.is_file() else {}
    doc[name] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, ev.dumps(doc))
    echo(f"{name}: " + ", ".join(f"{k} {entry[k]:.3f}" for k in HEADLINE if isinstance(entry[k], float))
         + f" ({entry['counts']['segments']} segments, {entry['counts']['oov_segments']} OOV) -> {path}")
    return entry
