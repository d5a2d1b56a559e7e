"""The one way in, `rescorer <verb>`: every verb answers --help, the recipes call only it,
and the stages run through it (segments, reports)."""

import json
import re
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from rescorer.cli import main
from tests.conftest import REPO, lhotse_or_k2_imported_by, needs_espeak, needs_k2, needs_lhotse

def _verbs(group=main, path=()):
    """Every leaf command of the app, as its word path, e.g. ("train", "asr")."""
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _verbs(cmd, path + (name,))
        else:
            yield path + (name,)


# options each pass-through verb's help must show: the program's own parser answers
PROGRAM_OPTIONS = {
    ("train", "embeddings"): ["--hard-negatives", "--resume"],
    ("train", "asr"): ["--model", "--select-by", "--init-from"],
    ("graphs",): ["--synthetic-plan", "--arpa"],
    ("decode",): ["--word-lattices", "--beam-ctc-weight"],
}


def test_every_verb_answers_help_with_its_real_options():
    verbs = list(_verbs())
    for v in [("tune",), ("wer", "collect"), ("lattices", "pocketsphinx"), ("config-flags",), *PROGRAM_OPTIONS]:
        assert v in verbs, f"rescorer {' '.join(v)} is missing"
    runner = CliRunner()
    for v in verbs:
        r = runner.invoke(main, [*v, "--help"])
        assert r.exit_code == 0, f"rescorer {' '.join(v)} --help: {r.output}"
        assert "usage:" in r.output.lower()
        for opt in PROGRAM_OPTIONS.get(v, []):
            assert opt in r.output, f"rescorer {' '.join(v)} --help does not show {opt}"
        if v in PROGRAM_OPTIONS:
            assert f"rescorer {' '.join(v)}" in r.output  # the program names itself as the verb
    r = runner.invoke(main, ["tune", "--help"])
    assert "--cross-validate" in r.output and "--save-config" in r.output


def test_the_tune_verbs_hit_model_choices_are_the_librarys():
    # the CLI lists them as literals (importing the constants would load torch at start-up):
    # a form or a hit pool the library gains must reach the command line too
    pytest.importorskip("torch")
    from rescorer.stages.tune import HIT_MODEL_HITS
    from rescorer.transcript_hits import HIT_MODEL_FORMS

    options = {o.name: o for o in main.commands["tune"].params}
    assert tuple(options["hit_model_form"].type.choices) == tuple(HIT_MODEL_FORMS)
    assert tuple(options["hit_model_hits"].type.choices) == tuple(HIT_MODEL_HITS)


def test_a_pass_through_verb_returns_its_programs_exit_status(tmp_path):
    # graphs refuses a call without an LM source: argparse's error, exit status 2
    r = CliRunner().invoke(main, ["graphs", "--out", str(tmp_path / "lang")])
    assert r.exit_code == 2


def test_the_command_line_loads_without_k2_or_lhotse():
    assert lhotse_or_k2_imported_by("rescorer.cli", "rescorer.stages.tune", "rescorer.stages.rescore",
                                    "rescorer.stages.word_lists") == ""
    r = subprocess.run([sys.executable, "-m", "rescorer", "--help"], capture_output=True, text=True, timeout=120,
                       cwd=REPO)
    assert r.returncode == 0 and r.stdout.startswith("Usage: rescorer ")


def _recipe_scripts():
    return sorted(REPO.glob("recipes/*.sh")) + sorted(REPO.glob("recipes/*/*.sh"))


def test_recipes_call_the_package_only_through_rescorer_verbs():
    scripts = _recipe_scripts()
    assert len(scripts) >= 4  # lib.sh + one run.sh per corpus
    verbs = set(_verbs())
    used = set()
    for path in scripts:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = re.sub(r"(^|\s)#.*", "", line)  # comments out; ${#array[@]} stays
            where = f"{path.relative_to(REPO)}:{n}: {line.strip()}"
            assert "benchmarks/" not in code, where
            assert not re.search(r"python\S*\s+(-m\s+)?\S*rescorer[./]", code), where
            # the interpreter runs only inside the one `rescorer` function
            if '"$PY"' in code:
                assert code.strip() == 'rescorer() { "$PY" -m rescorer "$@"; }', where
            for m in re.finditer(r"(?:^|[;&|(]\s*|\s)rescorer\s+([a-z][a-z0-9-]*)(?:\s+([a-z][a-z0-9-]*))?", code):
                first, second = m.group(1), m.group(2)
                verb = (first, second) if (first, second) in verbs else (first,)
                assert verb in verbs, f"{where}: no such verb"
                used.add(verb)
    # every stage the recipes run goes through its verb
    for v in [("segments",), ("export-asr",), ("graphs",), ("train", "embeddings"), ("train", "asr"), ("decode",),
              ("tune",), ("wer", "collect"), ("config-flags",), ("lattices", "pocketsphinx"), ("word-lists",)]:
        assert v in used, f"no recipe runs rescorer {' '.join(v)}"


@needs_espeak
@needs_lhotse
@pytest.mark.tts
def test_prepare_segments_report_end_to_end_and_resume(tmp_path):
    runner = CliRunner()
    data = tmp_path / "syn"
    args = ["prepare", "synthetic", str(data), "--train-utterances", "12", "--dev-utterances", "5", "--test-utterances", "5",
            "--engines", "espeak", "--engine-weights", "1", "--held-out-words", "10", "--oov-token-rate", "0.1", "-j", "1"]
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["segments", str(data), "--corpus", "synthetic", "-j", "1"])
    assert r.exit_code == 0, r.output
    assert (data / "segments" / "train.pt").exists()
    # resumed: nothing is redone
    mtime = (data / "segments" / "train.pt").stat().st_mtime_ns
    r = runner.invoke(main, ["segments", str(data), "--corpus", "synthetic"])
    assert r.exit_code == 0 and "already exported" in r.output
    assert (data / "segments" / "train.pt").stat().st_mtime_ns == mtime
    out = tmp_path / "corpora.json"
    r = runner.invoke(main, ["report", "corpora", f"synthetic={data}", "--out", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    test = doc["corpora"]["synthetic"]["test"]
    for key in ("hours", "utterances", "speakers", "vocabulary", "oov_token_rate", "word_segments", "segments_dropped"):
        assert key in test
    assert test["utterances"] == 5 and test["oov_token_rate"] > 0
    assert doc["corpora"]["synthetic"]["train"]["oov_token_rate"] == 0
    assert "command" in doc and "date" in doc


@needs_lhotse
def test_segments_on_missing_manifests_is_a_clear_error(tmp_path):
    (tmp_path / "manifests").mkdir()
    r = CliRunner().invoke(main, ["segments", str(tmp_path), "--corpus", "synthetic"])
    assert r.exit_code != 0 and "no synthetic manifests" in r.output


@needs_k2
@pytest.mark.lattice
@pytest.mark.slow
def test_rescore_shards_under_torchrun_and_rank_0_merges(tmp_path):
    """`torchrun -m rescorer rescore`: each rank rescores every other utterance, rank 0 merges."""
    import torch

    from rescorer.lattice.word_lattice import save_word_lattices
    from rescorer.models.checkpoint import save_embedder
    from rescorer.training.train_embeddings import TrainConfig, build_encoders
    from tests.conftest import TINY_EMBEDDER, run_torchrun
    from tests.test_rescore import _feats, _lattice

    torch.manual_seed(0)
    model = tmp_path / "emb"
    model.mkdir()
    save_embedder(str(model / "best.pt"), *build_encoders(TrainConfig(train="-", dev="-", out="-", **TINY_EMBEDDER)), {})
    arcs = [(0, 1, "the", 0, 5, -1.0, -1.0), (1, 2, "cat", 5, 10, -1.0, -1.0), (2, 3, "sat", 10, 15, -1.0, -1.0)]
    uids = ["u1", "u2", "u3"]
    save_word_lattices(tmp_path / "lats.pt", [_lattice(arcs, uid=u) for u in uids])
    f = _feats(["the", "cat", "sat"])
    torch.save({"format": "rescorer.utterances/1", "feats": torch.cat([f] * 3).half(),
                "offsets": torch.arange(4) * f.shape[0], "texts": ["the cat sat"] * 3, "utterance_ids": uids,
                "speakers": ["s"] * 3}, tmp_path / "feats.pt")
    out = tmp_path / "out"
    proc = run_torchrun(["-m", "rescorer", "rescore", "--model-dir", str(model), "--lattices", str(tmp_path / "lats.pt"),
                         "--features", str(tmp_path / "feats.pt"), "--out", str(out), "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "hyps.0.txt").read_text().splitlines() == ["u1\tthe cat sat", "u3\tthe cat sat"]
    assert (out / "hyps.1.txt").read_text().splitlines() == ["u2\tthe cat sat"]
    assert (out / "hyps.txt").read_text() == "".join(f"{u}\tthe cat sat\n" for u in uids)
    assert (out / "rescored.0.pt").exists() and (out / "rescored.1.pt").exists()
