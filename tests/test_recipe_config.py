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
    """Every committed config's `ctc`, `ctc_scorer` and `attention` sections are valid `train asr`
    options (a misspelt key, e.g. of the Whisper fine-tuning options, fails here, not hours into a run)."""
    import yaml

    from rescorer.recipe_config import load_section, to_args
    from rescorer.training.train_asr import parse_args

    doc = yaml.safe_load(path.read_text()) or {}
    for section, model in (("ctc", "ctc"), ("ctc_scorer", "ctc"), ("attention", "attention")):
        if section in doc:
            cfg = parse_args(["--model", model, "--train", "t.pt", "--dev", "d.pt", "--out", "o",
                              *to_args(load_section(str(path), section))])
            assert cfg.model == model
            if section == "ctc_scorer":  # the CTC methods' scorer: kept by its dev loss
                assert cfg.select_by == "loss"
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
