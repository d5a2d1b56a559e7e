"""OOV P@1 against the number of word types the embedder trained on (word-rich TTS corpus).

    python benchmarks/oov_vs_word_types.py --data recipes/wordrich/data/wordrich --work exp/oov_vs_types \
        --types 2000,8000,32000 --out results/embeddings.json -- --epochs 10 --channels 256 --sparse-ngrams
    python benchmarks/oov_vs_word_types.py --config recipes/wordrich/whisper_types.yaml \
        --data $WR/data/wordrich --work $WR/exp/oov_vs_types --out results/embeddings.json

``--config``: the word-rich recipe config that made the corpus; its ``oov_vs_word_types`` section
gives this program's options and ``oov_vs_word_types_train`` the training options (both before
any given on the command line, which win).

For each count T, the embedder is trained (``rescorer.training.train_embeddings``; the options
after ``--`` are its own) on list-word segments of the word-rich train split restricted to the
first T list words in the plan's rank order (``plan.json``: ``train_types``), ``budget // T``
segments of each, picked seeded at random among that word's segments. With the corpus's
nested tiers (default 2k x 16, 8k x 4, 32k x 1 tokens) every count gets the same number of
segments (32,000), so conditions differ in word types, not in hours; the hours of each are
recorded (they differ only by the words' lengths). A word with fewer segments than its quota
(an utterance that failed to synthesize, a segment dropped as too short) is skipped for the
next one in rank order, and counted.

Evaluation is the same for every count (``rescorer.evaluation.embeddings.evaluate_embeddings``):
the list-word segments of the test split, spoken by held-out voices: the held-out test words
(OOV for every count: never in train) and first-tier train words (IV for every count), each
ranked against that split vocabulary; dev (the same kind of segments of the dev split, other
held-out words and voices) selects each run's checkpoint. Carrier and fortunes words are in
neither training nor evaluation here: they would make the type counts inexact.

Each count becomes one row of ``--out`` (``results/embeddings.json``, key
``wordrich_types_<T>``) with a ``config`` field (type count, segments per type, segments,
hours, skipped words), the training and evaluation commands, machine and date; the figure
``embeddings_oov_vs_word_types.png`` beside it plots P@1 and cross-view AP against T.
Resumable: a finished run (``<work>/types_<T>/.done``) is evaluated again, not retrained.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import torch  # noqa: E402

from eval_embeddings import TOP_KEYS, device_description, merge_json, training_summary  # noqa: E402
from rescorer.evaluation import embeddings as ev  # noqa: E402
from rescorer.formats.word_segments import WordSegments, load_word_segments, write_word_segments  # noqa: E402
from rescorer.models.checkpoint import load_embedder  # noqa: E402
from rescorer.training.train_embeddings import parse_args as train_parse_args  # noqa: E402
from rescorer.training.train_embeddings import train  # noqa: E402

RESULT_KEY = "wordrich_types_{}"
FIGURE = "embeddings_oov_vs_word_types.png"


class ExperimentError(ValueError):
    """Inputs the experiment cannot use (missing files, too few segments for a condition)."""


# ---------------------------------------------------------------- subsets


def segments_by_word(data: WordSegments) -> Dict[str, List[int]]:
    out: Dict[str, List[int]] = {}
    for i, w in enumerate(data.word_ids.tolist()):
        out.setdefault(data.words[w], []).append(i)
    return out


def choose_subset(
    data: WordSegments, ranked_words: Sequence[str], n_types: int, per_type: int, seed: int = 0
) -> Tuple[List[int], Dict[str, Any]]:
    """Segment indices of the first ``n_types`` words of ``ranked_words`` that have at least
    ``per_type`` segments, ``per_type`` of each (seeded choice); and what was skipped."""
    if n_types < 1 or per_type < 1:
        raise ExperimentError(f"need n_types >= 1 and per_type >= 1, got {n_types}, {per_type}")
    by_word = segments_by_word(data)
    g = torch.Generator().manual_seed(seed)
    chosen: List[int] = []
    taken = skipped = 0
    for w in ranked_words:
        if taken == n_types:
            break
        segs = by_word.get(w, [])
        if len(segs) < per_type:
            skipped += 1
            continue
        pick = torch.randperm(len(segs), generator=g)[:per_type].tolist()
        chosen += [segs[k] for k in pick]
        taken += 1
    if taken < n_types:
        raise ExperimentError(
            f"only {taken} of the ranked words have {per_type} or more segments; {n_types} are needed "
            f"(a smaller type count, or a smaller --budget)"
        )
    return sorted(chosen), {"word_types": n_types, "segments_per_type": per_type, "words_skipped": skipped,
                            "last_rank_used": taken + skipped}


def default_budget(plan: Dict[str, Any], counts: Sequence[int]) -> int:
    """Segments per condition the plan's tiers allow for all ``counts``: min over T of T x the
    tokens planned for the T-th ranked word."""
    tiers = plan["config"]["type_tiers"]
    def planned(rank: int) -> int:
        for types, repeats in tiers:
            if rank < types:
                return repeats
        raise ExperimentError(f"the plan has {tiers[-1][0]} train list words; a count of {rank + 1} asks for more")
    return min(t * planned(t - 1) for t in counts)


def list_word_split(data: WordSegments, words: set) -> WordSegments:
    """The segments of ``words`` only (list words; carrier and fortunes words dropped)."""
    keep = [i for i, w in enumerate(data.word_ids.tolist()) if data.words[w] in words]
    if not keep:
        raise ExperimentError("no list-word segments in the evaluation split")
    return data.select(keep)


def hours(data: WordSegments) -> float:
    return float(data.lengths.sum()) * data.frame_shift / 3600.0


# ---------------------------------------------------------------- one condition


def run_condition(args, plan, train_data, dev_path: Path, eval_data: WordSegments, n_types: int, budget: int,
                  train_argv: List[str], distractors: List[str]) -> Dict[str, Any]:
    work = Path(args.work) / f"types_{n_types}"
    work.mkdir(parents=True, exist_ok=True)
    per_type = budget // n_types
    idx, info = choose_subset(train_data, plan["train_types"], n_types, per_type, seed=args.seed)
    subset = train_data.select(idx)
    subset_path = work / "train.pt"
    if not subset_path.exists():
        write_word_segments(subset_path, subset.to_dict())
    run_dir = work / "embeddings"
    config = train_parse_args(["--train", str(subset_path), "--dev", str(dev_path), "--out", str(run_dir), *train_argv])
    if not (work / ".done").exists():
        config.resume = True
        t0 = time.time()
        train(config)
        (work / ".done").write_text(f"{time.time() - t0:.1f} s\n")
    acoustic, letters, train_config = load_embedder(run_dir)
    result = ev.evaluate_embeddings(acoustic, letters, eval_data, subset.words, distractors=distractors,
                                    max_ap_segments=args.max_ap_segments, seed=args.seed)
    m = result.metrics
    training = training_summary(str(run_dir), ev.read_checkpoint_info(str(run_dir)), "python")
    entry: Dict[str, Any] = {k: m.get(k) for k in TOP_KEYS}
    entry["train_segments_per_s"] = training["segments_per_s"]
    entry["more"] = {k: v for k, v in m.items() if k not in TOP_KEYS and k != "counts"}
    entry["counts"] = m["counts"]
    entry["config"] = {
        **ev.embedder_configuration(acoustic, letters, train_config, data=str(Path(args.data) / "segments" / "test.pt")),
        **info,
        "training_segments": len(subset),
        "training_hours": round(hours(subset), 4),
        "budget_segments": budget,
        "corpus": str(args.data),
        "selection": "list-word segments of the first word_types train list words (plan rank order), "
                     "segments_per_type of each; carrier and fortunes words excluded",
    }
    entry.update(
        split="test, list words",
        note=(f"word-types experiment (benchmarks/oov_vs_word_types.py): trained on {n_types} list words, "
              f"{per_type} segments each ({len(subset)} segments, {hours(subset):.2f} h); evaluated on the test "
              f"split's list words, held-out voices: held-out words (OOV) and first-tier train words (IV)."),
        segments=str(Path(args.data) / "segments" / "test.pt"),
        iv_oov_by=f"the vocabulary of {subset_path}",
        training=training,
        evaluation={"command": args.command_line, "device": device_description(torch.device("cpu")),
                    "max_ap_segments": args.max_ap_segments, "seed": args.seed},
        date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    return entry


def plot(rows: Dict[int, Dict[str, Any]], path: Path) -> Optional[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    xs = sorted(rows)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for key, label in (("oov_p_at_1", "OOV P@1 (held-out words)"), ("iv_p_at_1", "IV P@1 (first-tier words)"),
                       ("crossview_ap", "cross-view AP")):
        ys = [rows[x].get(key) for x in xs]
        if any(y is not None for y in ys):
            ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", label=label)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{x:,}" for x in xs])
    ax.set_xlabel("training word types (equal segments per condition)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Word-rich TTS corpus: embeddings vs training word types", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- command line


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, List[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_argv: List[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, train_argv = argv[:cut], argv[cut + 1 :]
    config = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if "--config" in argv[:-1]:
        config = argv[argv.index("--config") + 1]
    if config:  # the recipe config's sections first: the command line's options win
        from rescorer.recipe_config import load_section, to_args

        argv = to_args(load_section(config, "oov_vs_word_types")) + argv
        train_argv = to_args(load_section(config, "oov_vs_word_types_train")) + train_argv
    p = argparse.ArgumentParser(prog="python benchmarks/oov_vs_word_types.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="word-rich recipe config with oov_vs_word_types(_train) sections")
    p.add_argument("--data", required=True, help="word-rich corpus directory (plan.json, segments/{train,dev,test}.pt)")
    p.add_argument("--work", required=True, help="directory for the subsets and the training runs")
    p.add_argument("--types", default="2000,8000,32000", help="comma-separated training word-type counts")
    p.add_argument("--budget", type=int, default=None,
                   help="training segments per condition (default: the most the plan's tiers allow for every count)")
    p.add_argument("--out", default="results/embeddings.json")
    p.add_argument("--figure", default=None, help=f"PNG (default: <out dir>/{FIGURE})")
    p.add_argument("--max-ap-segments", type=int, default=6000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = p.parse_args(argv)
    args.command_line = "python benchmarks/oov_vs_word_types.py " + " ".join(
        shlex.quote(a) for a in argv + (["--"] + train_argv if train_argv else []))
    return args, train_argv


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, train_argv = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        counts = sorted({int(x) for x in args.types.split(",") if x.strip()})
        data = Path(args.data)
        for need in ("plan.json", "segments/train.pt", "segments/dev.pt", "segments/test.pt"):
            if not (data / need).is_file():
                raise ExperimentError(f"{data / need} not found (prepare the word-rich corpus and its segments first)")
        plan = json.loads((data / "plan.json").read_text())
        if plan.get("format") != "rescorer.wordrich_plan/1":
            raise ExperimentError(f"{data / 'plan.json'} is not a word-rich corpus plan")
        budget = args.budget or default_budget(plan, counts)
        if budget < counts[-1]:
            raise ExperimentError(
                f"{budget} training segments per condition cannot hold {counts[-1]} word types (one segment each at "
                f"least); the plan's tiers {plan['config']['type_tiers']} do not balance the counts {counts}: "
                f"choose counts they balance, or a --budget of {counts[-1]} or more"
            )
        train_data = load_word_segments(str(data / "segments" / "train.pt"), expect=None)
        list_words = set(plan["train_types"]) | set(plan["held_out"]["dev"]) | set(plan["held_out"]["test"])
        dev = list_word_split(load_word_segments(str(data / "segments" / "dev.pt"), expect=train_data.spec), list_words)
        dev_path = Path(args.work) / "dev_list_words.pt"
        Path(args.work).mkdir(parents=True, exist_ok=True)
        write_word_segments(dev_path, dev.to_dict())
        test = list_word_split(load_word_segments(str(data / "segments" / "test.pt"), expect=train_data.spec),
                               list_words)
        distractors = ev.default_distractors()
        rows: Dict[int, Dict[str, Any]] = {}
        for n in counts:
            rows[n] = run_condition(args, plan, train_data, dev_path, test, n, budget, train_argv, distractors)
            merge_json(Path(args.out), RESULT_KEY.format(n), rows[n])
            r = rows[n]
            print(f"types {n:>6}: {r['config']['training_segments']} segments ({r['config']['training_hours']:.2f} h), "
                  f"OOV P@1 {r['oov_p_at_1']}, IV P@1 {r['iv_p_at_1']}, cross-view AP {r['crossview_ap']}")
    except (ExperimentError, ev.EvaluationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    figure = plot(rows, Path(args.figure or Path(args.out).parent / FIGURE))
    print(f"results -> {args.out}" + (f", figure -> {figure}" if figure else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
