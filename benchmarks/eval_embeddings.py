"""Evaluate trained word embeddings on one corpus split and merge the figures into a JSON file.

    python benchmarks/eval_embeddings.py --corpus synthetic \
        --segments-dir recipes/synthetic/data/synthetic/segments --model-dir exp/embeddings/synthetic \
        --out results/embeddings.json [--split test] [--train .../train.pt] [--figure results/embeddings_synthetic.png]

Measures (definitions in ``rescorer.evaluation.embeddings``): word identification
P@1/P@10 for in-vocabulary and OOV segments against the split's vocabulary, P@1 against a
10x larger candidate list, same-different AP of the audio embeddings and cross-view AP
(audio vs spelling), for all, IV and OOV segments; training throughput comes from the
run's ``log.jsonl``. The entry ``--name`` (default ``--corpus``) in ``--out`` is replaced,
other entries are kept, so an ablation writes one row per configuration; each row's
``config`` names what the model was (spelling view, frontend, encoders, near negatives,
training and evaluation data), read from the checkpoint. The entry records the training command (rebuilt from the run's
``config.json``), this command, the machine and the date. A figure (nearest spellings of
OOV audio, 2-D PCA of the space) goes to ``results/embeddings_<corpus>.png``.

The default split is ``test`` when the segments directory has one (synthetic: held-out
voices), else ``dev`` (speechocean762: held-out speakers). IV/OOV is decided by the
model's own training vocabulary (stored in its checkpoint), or by ``--train`` if given.

Holding out speakers of a training split for checkpoint selection (speechocean762 has no
dev split of its own besides the evaluation one):

    python benchmarks/eval_embeddings.py holdout --train D/train.pt --out-dir exp/x/holdout --fraction 0.1
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fcntl
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from rescorer.evaluation import embeddings as ev  # noqa: E402
from rescorer.formats.word_segments import write_word_segments  # noqa: E402
from rescorer.models.checkpoint import load_embedder  # noqa: E402
from rescorer.training.train_embeddings import training_command  # noqa: E402

TOP_KEYS = (
    "iv_p_at_1", "iv_p_at_10", "oov_p_at_1", "oov_p_at_10", "p_at_1_10x_vocab",
    "acoustic_ap", "crossview_ap", "train_segments_per_s",
)  # fmt: skip


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: torch.device) -> Dict[str, Any]:
    d: Dict[str, Any] = {
        "device": str(device),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        d["gpu"] = torch.cuda.get_device_name(device)
    return d


def training_summary(model_dir: str, info: Dict[str, Any], python: str) -> Dict[str, Any]:
    """Throughput and timing from log.jsonl, plus the command that trained the model."""
    log_dir = Path(model_dir) if Path(model_dir).is_dir() else Path(model_dir).parent
    log = ev.read_training_log(str(log_dir))
    config = dict(info["config"] or {})  # the configuration of the last (resumed) run
    first: Dict[str, Any] = {}
    config_path = log_dir / "config.json"
    if config_path.is_file():  # written when the run started; a resumption may change epochs
        first = json.loads(config_path.read_text())
        config = config or first
    changed = {k: [first[k], config.get(k)] for k in first if k in config and first[k] != config.get(k)
               and k not in ("resume", "stop_after_epoch", "progress")}  # fmt: skip
    rates = [r["segments_per_s"] for r in log if "segments_per_s" in r]
    return {
        "command": training_command(config, python=python) if config else None,
        "first_command": training_command(first, python=python) if changed else None,
        "changed_on_resume": changed or None,
        "config": config,
        "epochs_run": len(log),
        "checkpoint": info["path"],
        "checkpoint_epoch": info["epoch"],
        "selection": "best dev P@1 of the --dev split (each dev segment vs the dev vocabulary)",
        "selection_dev_p_at_1": info["dev_p@1"],
        "segments_per_s_per_epoch": [round(r, 1) for r in rates],
        "segments_per_s": statistics.median(rates) if rates else None,
        "train_seconds": round(sum(r.get("train_seconds", 0.0) for r in log), 1),
        "dev_p_at_1_per_epoch": [round(r["dev_p@1"], 4) for r in log if "dev_p@1" in r],
        "world_size": log[-1].get("world_size") if log else None,
    }


def merge_json(path: Path, corpus: str, entry: Dict[str, Any]) -> None:
    """Replace ``corpus``'s entry in ``path`` (locked read-modify-write, atomic replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # the lock lives outside the results directory, so it never gets committed
    import hashlib
    import tempfile

    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    lock = Path(tempfile.gettempdir()) / f"rescorer-eval-{digest}.lock"
    with open(lock, "w") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        data: Dict[str, Any] = {}
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise SystemExit(f"error: {path} is not valid JSON ({e}); fix or remove it") from e
        data.setdefault("description", DESCRIPTION)
        data[corpus] = entry
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(ev.dumps(data))
        os.replace(tmp, path)


DESCRIPTION = (
    "Acoustic word embeddings (rescorer.models) evaluated by benchmarks/eval_embeddings.py; definitions in "
    "rescorer/evaluation/embeddings.py. P@k: each segment ranks the split's whole vocabulary by cosine; "
    "iv_/oov_: segments whose word is / is not in the model's training vocabulary. p_at_1_10x_vocab: all "
    "segments against the split vocabulary plus the most frequent distinct words of large_word_list() up to "
    "10x its size. acoustic_ap: same-different AP over segment pairs; crossview_ap: AP over (segment, "
    "spelling) pairs. train_segments_per_s: median per-epoch training throughput from the run's log.jsonl. "
    + ev.PAPER_NOTE + "."
)


def evaluate_command(args: argparse.Namespace) -> Dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    seg_dir = Path(args.segments_dir)
    if not seg_dir.is_dir():
        raise ev.EvaluationError(f"segments directory not found: {seg_dir}")
    split = args.split or ("test" if (seg_dir / "test.pt").is_file() else "dev")
    eval_path = seg_dir / f"{split}.pt"
    info = ev.read_checkpoint_info(args.model_dir, args.which)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.time()
    acoustic, letters, train_config = load_embedder(info["path"], map_location="cpu")
    acoustic.to(device)
    letters.to(device)
    data = ev.load_segments(str(eval_path))
    ev.check_compatible(acoustic, data, source=str(eval_path))
    kept_rows = None
    if not args.keep_untrained_ngrams and info["trained_spellings"]:
        # what training does after every epoch (--zero-untrained-ngrams; a fine-tuned model keeps
        # the rows of the spellings it was pretrained on too); idempotent
        kept_rows = letters.zero_untrained_buckets_(info["trained_spellings"])

    train_vocab = info["train_vocabulary"]
    vocab_source = f"training vocabulary stored in {info['path']}"
    if args.train:
        train_data = ev.load_segments(args.train)
        ev.check_compatible(acoustic, train_data, source=args.train)
        if train_vocab is not None and sorted(set(train_vocab)) != sorted(set(train_data.words)):
            print(
                f"warning: {args.train} has a different vocabulary from the model's training run "
                f"({len(set(train_data.words))} vs {len(set(train_vocab))} words); IV/OOV follows --train",
                file=sys.stderr,
            )
        train_vocab = train_data.words
        vocab_source = args.train
    if train_vocab is None:
        raise ev.EvaluationError(f"{info['path']} stores no training vocabulary: pass --train")

    distractors = ev.default_distractors()
    result = ev.evaluate_embeddings(
        acoustic, letters, data, train_vocab, distractors=distractors, factor=args.factor,
        max_ap_segments=args.max_ap_segments, seed=args.seed, batch_size=args.batch_size,
        progress=not args.no_progress,
    )  # fmt: skip
    m = result.metrics
    training = training_summary(args.model_dir, info, python=args.python_label)
    m["train_segments_per_s"] = training["segments_per_s"]

    held_out_planned = None
    if args.plan:
        plan = json.loads(Path(args.plan).read_text())
        planned = set(plan.get("held_out", {}).get(split, []))
        held_out_planned = sum(1 for w, o in zip(result.words, result.oov.tolist()) if o and w in planned)

    figure_name = (args.name or args.corpus).replace("/", "_")
    figure = Path(args.figure or (Path(args.out).parent / f"embeddings_{figure_name}.png"))
    ev.plot_embeddings(result, str(figure), title=f"{args.corpus} {split}: acoustic word embeddings", seed=args.seed)

    entry: Dict[str, Any] = {k: m.get(k) for k in TOP_KEYS}
    entry["more"] = {k: v for k, v in m.items() if k not in TOP_KEYS and k != "counts"}
    entry["counts"] = m["counts"]
    if held_out_planned is not None:
        entry["counts"]["oov_segments_of_planned_held_out_words"] = held_out_planned
    entry.update(
        split=split,
        segments=str(eval_path),
        iv_oov_by=vocab_source,
        candidates=(
            f"(a)/(b): the {split} split's vocabulary ({m['counts']['vocabulary']} words, IV and OOV together); "
            f"(c): that vocabulary + the most frequent distinct words of large_word_list() up to "
            f"{args.factor}x ({len(result.candidates)} words)"
        ),
        targets={
            "oov_p_at_1 >= 0.8 * iv_p_at_1": (m["oov_to_iv_p_at_1"] or 0) >= 0.8,
            "acoustic_ap >= 0.8 (synthetic test)": (m["acoustic_ap"] or 0) >= 0.8,
        },
        training=training,
        evaluation={
            "command": args.command_line,
            "device": device_description(device),
            "seconds": round(time.time() - t0, 1),
            "figure": str(figure),
            "max_ap_segments": args.max_ap_segments,
            "untrained_ngram_rows": "kept" if kept_rows is None else f"zeroed ({kept_rows} rows used by training spellings kept)",
            "seed": args.seed,
        },
        date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    entry["config"] = ev.embedder_configuration(acoustic, letters, train_config, data=str(eval_path))
    entry["config"]["corpus"] = args.corpus
    if args.note:
        entry["note"] = args.note
    merge_json(Path(args.out), args.name or args.corpus, entry)
    return entry


def holdout_command(args: argparse.Namespace) -> None:
    data = ev.load_segments(args.train)
    fit, held = ev.split_by_speaker(data, args.fraction, args.seed)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, obj in (("fit", fit), ("heldout", held)):
        write_word_segments(out / f"{name}.pt", obj)  # the tagged format training reads (atomic)
    summary = {
        "source": args.train, "fraction": args.fraction, "seed": args.seed,
        "fit_segments": len(fit["word_ids"]), "heldout_segments": len(held["word_ids"]),
        "heldout_speakers": sorted({data.speakers[i] for i in held["speaker_ids"].tolist()}),
    }  # fmt: skip
    (out / "holdout.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "heldout_speakers"}))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["holdout"]:
        p = argparse.ArgumentParser(prog="eval_embeddings.py holdout", description="hold out speakers of a training split")
        p.add_argument("--train", required=True, help="training word segments (.pt)")
        p.add_argument("--out-dir", required=True, help="writes fit.pt, heldout.pt, holdout.json")
        p.add_argument("--fraction", type=float, default=0.1, help="share of speakers held out (default 0.1)")
        p.add_argument("--seed", type=int, default=0)
        args = p.parse_args(argv[1:])
        args.mode = "holdout"
        return args
    p = argparse.ArgumentParser(
        prog="python benchmarks/eval_embeddings.py",
        description="Evaluate acoustic word embeddings (word identification, AP) and merge results into a JSON file.",
    )
    p.add_argument("--corpus", required=True, help="the corpus (synthetic, speechocean762, ...); the entry name by default")
    p.add_argument("--name", default=None,
                   help="entry name in the JSON, one per configuration (e.g. speechocean762/whisper/phones); "
                        "default: --corpus. Each entry's 'config' names its spelling view, frontend and data")
    p.add_argument("--segments-dir", required=True, help="directory with <split>.pt word segments")
    p.add_argument("--model-dir", required=True, help="training run directory (best.pt / last.pt) or a checkpoint")
    p.add_argument("--split", default=None, help="split to evaluate (default: test if present, else dev)")
    p.add_argument("--train", default=None, help="training segments defining IV/OOV (default: the model's own)")
    p.add_argument("--which", choices=("best", "last"), default="best")
    p.add_argument("--out", default="results/embeddings.json")
    p.add_argument("--figure", default=None, help="PNG path (default: <out dir>/embeddings_<corpus>.png)")
    p.add_argument("--plan", default=None, help="synthetic plan.json: count OOV segments of planned held-out words")
    p.add_argument("--factor", type=int, default=10, help="size of the larger candidate list / split vocabulary")
    p.add_argument("--max-ap-segments", type=int, default=6000, help="subsample larger splits for same-different AP")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", default=None, help="free text stored with the entry")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--keep-untrained-ngrams", action="store_true",
        help="do not zero n-gram rows unused by the training vocabulary (training zeroes them by default)",
    )
    args = p.parse_args(argv)
    args.mode = "evaluate"
    args.python_label = "python"
    args.command_line = "python benchmarks/eval_embeddings.py " + " ".join(shlex.quote(a) for a in argv)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        if args.mode == "holdout":
            holdout_command(args)
            return 0
        entry = evaluate_command(args)
    except ev.EvaluationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # malformed segment files name themselves
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows: List[str] = [f"{args.name or args.corpus} ({entry['split']}, {entry['counts']['segments']} segments):"]
    for k in TOP_KEYS:
        v = entry[k]
        rows.append(f"  {k:24s} {v:.4f}" if isinstance(v, float) else f"  {k:24s} {v}")
    rows.append(f"  results -> {args.out}, figure -> {entry['evaluation']['figure']}")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
