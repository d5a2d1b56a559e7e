"""The ``rescorer`` command line: thin wrappers over the package's functions."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _load_yaml(path):
    import yaml

    if path is None:
        return {}
    d = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(d, dict):
        raise click.BadParameter(f"{path} must hold a mapping of options")
    return d


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """Lattice rescoring with acoustic word embeddings."""
    _setup_logging(verbose)


# ------------------------------------------------------------------ prepare


@main.group()
def prepare() -> None:
    """Make lhotse manifests (recordings, supervisions with word alignments, cuts)."""


@prepare.command("synthetic")
@click.argument("output_dir", type=click.Path(file_okay=False))
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="YAML with SyntheticConfig fields.")
@click.option("--train-utterances", type=int)
@click.option("--dev-utterances", type=int)
@click.option("--test-utterances", type=int)
@click.option("--engines", help="Comma-separated engines (espeak,flite,festival).")
@click.option("--engine-weights", help="Comma-separated sampling weights, one per engine.")
@click.option("--held-out-words", type=int, help="Word types reserved for dev/test (never in train).")
@click.option("--oov-token-rate", type=float, help="Share of dev/test tokens unseen in train.")
@click.option("--augment-prob", type=float)
@click.option("--seed", type=int)
@click.option("-j", "--num-jobs", type=int, default=2, show_default=True)
def prepare_synthetic_cmd(output_dir, config, num_jobs, **opts):
    """Generate the synthetic word-aligned corpus into OUTPUT_DIR (resumable)."""
    from rescorer.corpora.synthetic import SyntheticConfig, prepare_synthetic

    d = _load_yaml(config)
    d = d.get("synthetic", d)
    for k, v in opts.items():
        if v is None:
            continue
        if k in ("engines", "engine_weights"):
            v = [x.strip() for x in v.split(",")]
            if k == "engine_weights":
                v = [float(x) for x in v]
        d[k] = v
    cfg = SyntheticConfig.from_dict(d)
    m = prepare_synthetic(output_dir, cfg, num_jobs=num_jobs)
    for split in ("train", "dev", "test"):
        c = m[split]["cuts"]
        click.echo(f"{split}: {len(c)} utterances, {sum(x.duration for x in c) / 3600:.2f} h")


@prepare.command("speechocean762")
@click.argument("corpus_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("output_dir", type=click.Path(file_okay=False))
@click.option("--dev-speaker-fraction", type=float, default=0.2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def prepare_speechocean762_cmd(corpus_dir, output_dir, dev_speaker_fraction, seed):
    """Read the speechocean762 Kaldi directory + words.ctm into manifests (speaker-disjoint train/dev)."""
    from rescorer.corpora.speechocean762 import prepare_speechocean762

    m = prepare_speechocean762(corpus_dir, output_dir, dev_speaker_fraction=dev_speaker_fraction, seed=seed)
    for split in ("train", "dev"):
        click.echo(f"{split}: {len(m[split]['cuts'])} utterances")
    click.echo(f"utterances without word alignment (kept for ASR): {m['meta']['unaligned_utterances']}")


@prepare.command("librispeech")
@click.argument("corpus_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("output_dir", type=click.Path(file_okay=False))
@click.option("--alignments-dir", type=click.Path(exists=True, file_okay=False), help="Word alignments (default: CORPUS_DIR).")
@click.option("--parts", default="auto", show_default=True, help="Comma-separated parts, each its own split (without --train/--dev/--test).")
@click.option("--train", "train_parts", help="Parts merged into the train split, e.g. train-clean-100,train-clean-360.")
@click.option("--dev", "dev_parts", help="Parts merged into the dev split, e.g. dev-clean.")
@click.option("--test", "test_parts", help="Parts merged into the test split, e.g. test-clean.")
@click.option("-j", "--num-jobs", type=int, default=2, show_default=True)
def prepare_librispeech_cmd(corpus_dir, output_dir, alignments_dir, parts, train_parts, dev_parts, test_parts, num_jobs):
    """LibriSpeech + its public word alignments, via lhotse's recipe.

    With --train/--dev/--test the manifests are librispeech_*_{train,dev,test}.jsonl.gz,
    the split names every recipe stage reads; otherwise one split per part.
    """
    from rescorer.corpora.errors import CorpusError
    from rescorer.corpora.librispeech import prepare_librispeech

    def comma(v):
        return [x.strip() for x in v.split(",") if x.strip()]

    splits = {n: comma(v) for n, v in (("train", train_parts), ("dev", dev_parts), ("test", test_parts)) if v}
    parts = parts if parts == "auto" else comma(parts)
    try:
        m = prepare_librispeech(corpus_dir, alignments_dir, output_dir, dataset_parts=parts, num_jobs=num_jobs,
                                splits=splits or None)
    except CorpusError as e:
        raise click.ClickException(str(e)) from e
    meta = m.pop("meta")
    for split, d in m.items():
        click.echo(f"{split} ({'+'.join(meta['parts'][split])}): {len(d['cuts'])} utterances, "
                   f"{meta['unaligned_utterances'][split]} without word alignment (kept for ASR)")


@main.group()
def download() -> None:
    """Fetch public corpora (needs network access)."""


@download.command("librispeech")
@click.argument("target_dir", type=click.Path(file_okay=False))
@click.option("--parts", default="train-clean-100,dev-clean,test-clean", show_default=True)
@click.option("--alignments/--no-alignments", default=True, show_default=True, help="Also the public word alignments.")
def download_librispeech_cmd(target_dir, parts, alignments):
    """LibriSpeech parts into TARGET_DIR/LibriSpeech (resumable; lhotse's downloader)."""
    from rescorer.corpora.errors import CorpusError
    from rescorer.corpora.librispeech import download_librispeech

    try:
        d = download_librispeech(target_dir, [p.strip() for p in parts.split(",") if p.strip()], alignments)
    except CorpusError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"LibriSpeech in {d}")


# ------------------------------------------------------------------ features / segments


@main.command("segments")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--corpus", required=True, help="Manifest prefix, e.g. synthetic, speechocean762.")
@click.option("--splits", default=None, help="Comma-separated splits (default: all found).")
@click.option("--max-frames", type=int, default=200, show_default=True)
@click.option("--min-frames", type=int, default=3, show_default=True)
@click.option("-j", "--num-jobs", type=int, default=2, show_default=True)
def segments_cmd(data_dir, corpus, splits, max_frames, min_frames, num_jobs):
    """Fbank features for every cut, then word segments exported as plain torch files.

    Writes DATA_DIR/manifests/{corpus}_cuts_{split}_fbank.jsonl.gz, DATA_DIR/segments/{split}.pt
    (+ .stats.json and word-level cuts). Each split is skipped when its outputs exist.
    """
    from lhotse import CutSet

    from rescorer.corpora.report import corpus_splits
    from rescorer.segments import compute_features, export_word_segments, extract_word_segments, word_segment_cuts
    from rescorer.utils import atomic_path, atomic_write_text

    data = Path(data_dir)
    todo = splits.split(",") if splits else corpus_splits(data, corpus)
    if not todo:
        raise click.ClickException(f"no {corpus} manifests in {data / 'manifests'}")
    for split in todo:
        src = data / "manifests" / f"{corpus}_cuts_{split}.jsonl.gz"
        if not src.exists():
            raise click.ClickException(f"missing manifest {src}")
        pt = data / "segments" / f"{split}.pt"
        stats_path = data / "segments" / f"{split}.stats.json"
        if pt.exists() and stats_path.exists():
            click.echo(f"{split}: word segments already exported ({pt})")
            continue
        click.echo(f"{split}: features")
        cuts = compute_features(
            CutSet.from_file(src), data / "fbank", data / "manifests" / f"{corpus}_cuts_{split}_fbank.jsonl.gz", num_jobs
        )
        segs = extract_word_segments(cuts, max_frames=max_frames, min_frames=min_frames)
        with atomic_path(data / "segments" / f"word_cuts_{split}.jsonl.gz") as tmp:
            word_segment_cuts(cuts, max_frames, min_frames).to_file(str(tmp))
        export_word_segments(segs, pt)
        st = segs.stats
        atomic_write_text(
            stats_path,
            json.dumps(
                {"word_segments": st.word_segments, "too_long": st.too_long, "too_short": st.too_short,
                 "unaligned_utterances": st.unaligned_utterances, "max_frames": max_frames, "min_frames": min_frames},
                indent=1,
            ),
        )
        click.echo(f"{split}: {st.word_segments} word segments, dropped {st.segments_dropped} "
                   f"({st.too_long} > {max_frames} frames, {st.too_short} < {min_frames})")


@main.command("export-asr")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--corpus", required=True, help="Manifest prefix, e.g. synthetic, speechocean762.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for <split>.pt files.")
@click.option("--splits", default=None, help="Comma-separated splits (default: all with features).")
def export_asr_cmd(data_dir, corpus, out, splits):
    """Export utterance features + transcripts (rescorer.utterances/1) for ASR training and rescoring.

    Reads DATA_DIR/manifests/{corpus}_cuts_{split}_fbank.jsonl.gz (made by `rescorer segments`);
    a split whose output exists is skipped.
    """
    from lhotse import CutSet

    from rescorer.corpora.report import corpus_splits
    from rescorer.training.asr_data import export_utterances

    data, outdir = Path(data_dir), Path(out)
    todo = splits.split(",") if splits else corpus_splits(data, corpus)
    for split in todo:
        src = data / "manifests" / f"{corpus}_cuts_{split}_fbank.jsonl.gz"
        dst = outdir / f"{split}.pt"
        if dst.exists():
            click.echo(f"{split}: already exported ({dst})")
            continue
        if not src.exists():
            raise click.ClickException(f"missing {src}: run `rescorer segments {data} --corpus {corpus}` first")
        export_utterances(CutSet.from_file(src), dst)
        click.echo(f"{split}: wrote {dst}")


# ------------------------------------------------------------------ rescore


@main.command("rescore")
@click.option("--model-dir", required=True, type=click.Path(exists=True), help="Trained embedder (+ rescorer.json scales).")
@click.option("--lattices", required=True, type=click.Path(exists=True),
              help="Word-lattice shard (rescorer.word_lattices/1), or a directory of shards + words.txt (pocketsphinx's output).")
@click.option("--features", required=True, type=click.Path(exists=True, dir_okay=False), help="Utterance features (rescorer.utterances/1).")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--recover-oov/--no-recover-oov", default=False, show_default=True, help="Propose words from a large word list.")
@click.option("--word-list-size", type=int, default=200000, show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: cuda if available).")
@click.option("--prune-posterior", type=float, default=1e-4, show_default=True,
              help="Drop arcs below this posterior before embedding their spans (0: keep all); the cost of rescoring "
                   "falls with it (RESULTS.md, 'Rescoring cost against lattice pruning').")
@click.option("--prune-scale", type=float, default=1.0, show_default=True,
              help="Scale on the lattice scores for those posteriors (0.1 for pocketsphinx's large acoustic scores).")
@click.option("--config-name", default="rescorer.json", show_default=True,
              help="Tuned scales in MODEL_DIR to use, e.g. rescorer_pocketsphinx.json.")
def rescore_cmd(model_dir, lattices, features, out, recover_oov, word_list_size, device, prune_posterior, prune_scale,
                config_name):
    """Rescore lattices with word embeddings; writes rescored lattices and 1-best texts.

    Runs sharded under torchrun (each rank takes every WORLD_SIZE-th utterance and writes
    its own part; rank 0 then merges the texts). Utterances already in an output part are skipped.
    """
    import os

    from tqdm import tqdm

    from rescorer.lattice.word_lattice import load_word_lattices, prune, save_word_lattices
    from rescorer.rescore import Rescorer
    from rescorer.training.asr_data import load_utterances
    from rescorer.utils import atomic_write_text

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    lats = load_word_lattices(lattices)
    utts = load_utterances(features, max_frames=None)
    feats = {utts.utterance_id(i): utts.features(i).float() for i in range(len(utts))}
    try:
        rescorer = Rescorer.from_dir(model_dir, device=device, config_name=config_name)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from e
    if recover_oov:
        from rescorer.corpora.text_sources import large_word_list

        rescorer.set_vocabulary(large_word_list(word_list_size))
    part_txt = outdir / f"hyps.{rank}.txt"
    done = {}
    if part_txt.exists():
        done = dict(line.split("\t", 1) for line in part_txt.read_text().splitlines() if "\t" in line)
    mine = [u for k, u in enumerate(sorted(lats)) if k % world == rank]
    rescored, errors = [], {}
    for uid in tqdm(mine, desc=f"rescoring (rank {rank})", disable=rank != 0):
        if uid in done:
            continue
        if uid not in feats:
            errors[uid] = "no features for this utterance"
            continue
        try:
            res = rescorer.rescore(prune(lats[uid], prune_posterior, scale=prune_scale), feats[uid], recover=recover_oov)
        except ValueError as e:  # a bad lattice costs that utterance only
            errors[uid] = str(e)
            continue
        rescored.append(res.lattice)
        done[uid] = res.hypothesis.text
        atomic_write_text(part_txt, "".join(f"{u}\t{t}\n" for u, t in sorted(done.items())))
    if rescored:
        save_word_lattices(outdir / f"rescored.{rank}.pt", rescored)
    if errors:
        atomic_write_text(outdir / f"errors.{rank}.json", json.dumps(errors, indent=1))
        click.echo(f"rank {rank}: {len(errors)} utterances not rescored (see errors.{rank}.json)", err=True)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        dist.barrier()
    if rank == 0:
        lines = []
        for r in range(world):
            p = outdir / f"hyps.{r}.txt"
            if p.exists():
                lines += p.read_text().splitlines()
        atomic_write_text(outdir / "hyps.txt", "\n".join(sorted(lines)) + "\n")
        click.echo(f"wrote {outdir / 'hyps.txt'} ({len(lines)} utterances)")


# ------------------------------------------------------------------ kernels


@main.command("kernels")
@click.option("--emulator-check", is_flag=True,
              help="Also run both kernels once on the CPU emulator and compare with the torch reference.")
def kernels_cmd(emulator_check: bool) -> None:
    """Which similarity backend runs where: the CUDA kernel library (path, ABI, why not),
    the torch reference, and the CPU-emulated build the tests use."""
    import torch

    from rescorer import ops

    found = ops.backends()
    cuda = f"available: {found.cuda_device}" if found.cuda_device is not None else "not available"
    click.echo(f"torch {torch.__version__}; CUDA {cuda}")
    click.echo(f"CUDA kernel library: {found.kernel_library or 'not loaded: ' + found.kernel_error}")
    click.echo(f"CPU emulator library: {found.emulator_library or 'not loaded: ' + found.emulator_error}")
    click.echo(f"dispatch: {found.dispatch}")
    if emulator_check:
        try:
            same, err = ops.emulator_check()
        except RuntimeError as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"emulator check: top-k indices agree {100 * same:.1f}%, arc similarity max error {err:.1e}")
        if same < 1.0 or err > 1e-5:
            raise click.ClickException("the emulated kernels disagree with the torch reference")


# ------------------------------------------------------------------ report


@main.group()
def report() -> None:
    """Reports over prepared data and results."""


@report.command("corpora")
@click.argument("entries", nargs=-1, required=True)
@click.option("--out", type=click.Path(dir_okay=False), help="Write/merge the JSON report here.")
@click.option("--command", "command_line", default=None, help="Command line to record (default: this one).")
def report_corpora_cmd(entries, out, command_line):
    """Corpus statistics. ENTRIES are CORPUS=DATA_DIR pairs, e.g. synthetic=data/synthetic."""
    import datetime
    import platform

    from rescorer.corpora.report import corpus_report, format_report

    reports = {}
    for e in entries:
        if "=" not in e:
            raise click.BadParameter(f"expected CORPUS=DATA_DIR, got {e!r}")
        corpus, d = e.split("=", 1)
        reports[corpus] = corpus_report(d, corpus)
    click.echo(format_report(reports))
    if out:
        from rescorer.utils import atomic_write_text

        path = Path(out)
        doc = json.loads(path.read_text()) if path.exists() else {}
        doc.setdefault("corpora", {}).update(reports)
        doc["command"] = command_line or " ".join(["rescorer"] + sys.argv[1:])
        doc["machine"] = f"{platform.machine()}, {__import__('os').cpu_count()} cores, {platform.system()}"
        doc["date"] = datetime.date.today().isoformat()
        atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
        click.echo(f"wrote {path}")


@report.command("results")
@click.option("--results-dir", default="results", show_default=True, type=click.Path(exists=True, file_okay=False),
              help="Directory holding wer.json, embeddings.json, corpora.json, kernels.json, rescore_tuning_*.")
@click.option("--out", default="RESULTS.md", show_default=True, type=click.Path(dir_okay=False))
@click.option("--plots-dir", default="results/plots", show_default=True, type=click.Path(file_okay=False))
def report_results_cmd(results_dir, out, plots_dir):
    """Write RESULTS.md (tables, plots, provenance) from RESULTS_DIR/*.json."""
    from rescorer.results_report import ResultsError, write_results_md

    try:
        path = write_results_md(results_dir, out, plots_dir)
    except ResultsError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"wrote {path}")


@report.command("wer")
@click.argument("wer_json", type=click.Path(exists=True, dir_okay=False))
@click.option("--corpus", "corpora", multiple=True, help="Corpus to show (repeatable; default: all).")
def report_wer_cmd(wer_json, corpora):
    """Print the WER table of each corpus in WER_JSON (results/wer.json) as plain text."""
    from rescorer.results_report import ResultsError, format_wer_table, load_wer_doc, wer_rows

    try:
        doc = load_wer_doc(wer_json)
    except ResultsError as e:
        raise click.ClickException(str(e)) from e
    have = sorted(doc.get("corpora", {}))
    missing = [c for c in corpora if c not in have]
    if missing:
        raise click.ClickException(f"{wer_json}: no corpus {', '.join(missing)} (have: {', '.join(have) or 'none'})")
    names = list(corpora) or have
    if not names:
        click.echo(f"{wer_json}: no WER results yet")
    for i, corpus in enumerate(names):
        if i:
            click.echo("")
        click.echo(corpus)
        click.echo(format_wer_table(wer_rows(doc, corpus), markdown=False))


if __name__ == "__main__":
    main()
