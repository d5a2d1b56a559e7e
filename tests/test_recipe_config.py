"""Recipe config sections -> command-line options (`rescorer config-flags`)."""

import pytest
from click.testing import CliRunner

from rescorer.cli import main
from rescorer.recipe_config import RecipeConfigError, load_section, to_args
from tests.conftest import REPO


def test_options_become_flags(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("ctc:\n  epochs: 4\n  spec_augment: true\n  amp: false\n  methods: [a, b]\n  skip: null\n  wips: [-2, 0]\nempty:\n")
    args = to_args(load_section(cfg, "ctc"))
    assert args == ["--epochs=4", "--spec-augment", "--no-amp", "--methods=a,b", "--wips=-2,0"]
    import argparse  # negative values survive argparse (the programs' parsers)

    p = argparse.ArgumentParser()
    p.add_argument("--wips")
    assert p.parse_known_args(args)[0].wips == "-2,0"
    assert load_section(cfg, "missing") == {} and load_section(cfg, "empty") == {}
    r = CliRunner().invoke(main, ["config-flags", str(cfg), "ctc"])
    assert r.exit_code == 0 and r.output.splitlines() == args
    r = CliRunner().invoke(main, ["config-flags", str(cfg), "missing"])
    assert r.exit_code == 0 and r.output == ""


def test_bad_configs_are_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ctc: 3\n")
    with pytest.raises(RecipeConfigError, match="section 'ctc' must be a mapping"):
        load_section(cfg, "ctc")
    with pytest.raises(RecipeConfigError, match="no such config"):
        load_section(tmp_path / "nope.yaml", "ctc")
    with pytest.raises(RecipeConfigError, match="nested"):
        to_args({"a": {"b": 1}})
    r = CliRunner().invoke(main, ["config-flags", str(cfg), "ctc"])
    assert r.exit_code == 1 and "must be a mapping" in r.output
    cfg.write_text("ctc:\n  note: \"two\\nlines\"\n")
    r = CliRunner().invoke(main, ["config-flags", str(cfg), "ctc"])
    assert r.exit_code == 1 and "spans lines" in r.output


ASR_CONFIGS = sorted((REPO / "recipes").glob("*/*.yaml"))


@pytest.mark.parametrize("path", ASR_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_asr_sections_of_every_recipe_config_parse(path):
    """Every committed config's `ctc` and `attention` sections are valid `train asr` options (a
    misspelt key, e.g. of the Whisper fine-tuning options, fails here, not hours into a run), and
    a `ctc_scorer` section asks for what recipes/lib.sh reads: the CTC run's best-loss checkpoint,
    which a CTC run selected by anything but the loss keeps."""
    import yaml

    from rescorer.recipe_config import load_section, to_args
    from rescorer.training.train_asr import parse_args

    doc = yaml.safe_load(path.read_text()) or {}
    if "ctc_scorer" in doc:
        assert doc["ctc_scorer"] == {"checkpoint": "best_loss"} and "ctc" in doc
        assert doc["ctc"].get("select_by", "cer") != "loss"  # else best.pt is that checkpoint: no scorer section needed
    for section, model in (("ctc", "ctc"), ("attention", "attention")):
        if section in doc:
            cfg = parse_args(["--model", model, "--train", "t.pt", "--dev", "d.pt", "--out", "o",
                              *to_args(load_section(str(path), section))])
            assert cfg.model == model
            if section == "ctc" and "whisper_finetune_blocks" in doc[section]:
                assert cfg.whisper_finetune_blocks == doc[section]["whisper_finetune_blocks"] >= 1


@pytest.mark.parametrize("path", sorted(str(p) for p in (REPO / "recipes").glob("*/*.yaml")))
def test_tune_and_transcribe_sections_name_options_that_exist(path):
    """Every key of a committed config's `rescore*` sections is a `rescorer tune` option, and of
    its `transcribe` section a `rescorer transcribe` option (a typo would fail hours into a run)."""
    import yaml

    from rescorer.cli import main

    doc = yaml.safe_load(open(path)) or {}
    options = {name: {p.name for p in main.commands[name].params} for name in ("tune", "transcribe")}
    for section, body in doc.items():
        command = "tune" if section.startswith("rescore") else "transcribe" if section == "transcribe" else None
        if command is None or not isinstance(body, dict):
            continue
        unknown = sorted(k for k in body if k.replace("-", "_") not in options[command])
        assert not unknown, f"{path}: section {section}: no `rescorer {command}` option for {unknown}"


@pytest.mark.parametrize("path", sorted(str(p) for p in (REPO / "recipes").glob("*/*.yaml")))
def test_the_whisper_section_rescores_on_the_rescore_sections_grid(path):
    """The recipes save the Whisper tuning's choices with the model (`--save-config`), which also
    re-chooses awe_rescore's scales there: on the rescore section's grid they are the same ones."""
    import yaml

    doc = yaml.safe_load(open(path)) or {}
    if not isinstance(doc.get("rescore_whisper"), dict):
        pytest.skip("no Whisper section")
    keys = ("awe_scales", "lm_scales", "wips", "prune_posterior", "prune_scale", "am_scale", "posterior_scale")
    assert {k: doc["rescore_whisper"].get(k) for k in keys} == {k: doc["rescore"].get(k) for k in keys}


def _ctc_scorer_args(tmp_path, config_lines, splits=("dev",)):
    """recipes/lib.sh's ctc_scorer_args alone (its functions cut out of the file; cfg and log stubbed)
    in a workdir ``tmp_path``, for a config whose ctc_scorer section gives ``config_lines``."""
    import subprocess

    lib = REPO / "recipes" / "lib.sh"
    script = f"""
set -euo pipefail
log() {{ echo "LOG: $*" >&2; }}
cfg() {{ CFG=({' '.join(config_lines)}); }}
source <(sed -n '/^stored_log_probs() {{/,/^}}/p;/^ctc_scorer_args() {{/,/^}}/p' {lib})
args="$(ctc_scorer_args {' '.join(splits)})"
echo "$args"
"""
    return subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True)


def test_recipes_score_spellings_with_the_ctc_runs_best_loss_checkpoint_where_the_config_asks(tmp_path):
    (tmp_path / "exp" / "ctc").mkdir(parents=True)
    (tmp_path / "exp" / "decode_dev_ctc").mkdir()
    (tmp_path / "exp" / "decode_dev_ctc" / "ctc_log_probs.pt").write_bytes(b"")
    r = _ctc_scorer_args(tmp_path, [])  # no section: the decoder's model and its stored log-probs
    assert r.returncode == 0 and r.stdout.split() == ["--ctc-model-dir=exp/ctc",
                                                     "--dev-ctc-log-probs=exp/decode_dev_ctc/ctc_log_probs.pt"]
    r = _ctc_scorer_args(tmp_path, ["--checkpoint=best_loss"])  # asked for, but the run predates best_loss.pt
    assert r.returncode != 0 and "no best_loss.pt" in r.stderr
    (tmp_path / "exp" / "ctc" / "best_loss.pt").write_bytes(b"")
    r = _ctc_scorer_args(tmp_path, ["--checkpoint=best_loss"])  # no stored log-probs: they are best.pt's
    assert r.returncode == 0 and r.stdout.split() == ["--ctc-model-dir=exp/ctc/best_loss.pt"]
    r = _ctc_scorer_args(tmp_path, ["--size=small", "--epochs=8"])  # an old scorer-training section
    assert r.returncode != 0 and "expected only 'checkpoint: best_loss'" in r.stderr


@pytest.mark.parametrize("recipe", sorted(p.parent.name for p in (REPO / "recipes").glob("*/run.sh")))
def test_every_recipe_runs_a_committed_config_by_default(recipe, tmp_path):
    """The config a recipe reads without CONFIG (lib.sh's CONFIG line, with the DEFAULT_CONFIG its
    run.sh sets before sourcing lib.sh) is a committed file with an embeddings section: renaming or
    removing it would break the plain `bash recipes/<corpus>/run.sh`. speechocean762 defaults
    to Whisper layers 3+4, whose CTC model learns from scratch (fbank.yaml's needs the
    synthetic recipe's fbank model first)."""
    import os
    import subprocess
    from pathlib import Path

    import yaml

    run_sh, lib = REPO / "recipes" / recipe / "run.sh", REPO / "recipes" / "lib.sh"
    script = f"""
set -euo pipefail
CALLER_DIR="$PWD"
from_caller() {{ case "$1" in /*) echo "$1" ;; *) echo "$CALLER_DIR/$1" ;; esac; }}
RECIPE_DIR={run_sh.parent}
eval "$(grep '^DEFAULT_CONFIG=' {run_sh} || true)"
eval "$(grep '^CONFIG=' {lib})"
echo "$CONFIG"
"""
    r = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "CONFIG"})
    assert r.returncode == 0, r.stderr
    config = Path(r.stdout.strip())
    assert config.parent == run_sh.parent and config.is_file(), config
    assert isinstance((yaml.safe_load(config.read_text()) or {}).get("embeddings"), dict)
    if recipe == "speechocean762":
        assert config.name == "whisper_l34.yaml"
