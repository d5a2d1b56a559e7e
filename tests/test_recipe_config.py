"""Recipe config sections -> command-line options."""

import pytest

from rescorer.recipe_config import RecipeConfigError, load_section, main, to_args


def test_options_become_flags(tmp_path, capsys):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("ctc:\n  epochs: 4\n  spec_augment: true\n  amp: false\n  methods: [a, b]\n  skip: null\n  wips: [-2, 0]\nempty:\n")
    args = to_args(load_section(cfg, "ctc"))
    assert args == ["--epochs=4", "--spec-augment", "--no-amp", "--methods=a,b", "--wips=-2,0"]
    import argparse  # negative values survive argparse (the programs' parsers)

    p = argparse.ArgumentParser()
    p.add_argument("--wips")
    assert p.parse_known_args(args)[0].wips == "-2,0"
    assert load_section(cfg, "missing") == {} and load_section(cfg, "empty") == {}
    assert main([str(cfg), "ctc"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "--epochs=4"


def test_bad_configs_are_named(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ctc: 3\n")
    with pytest.raises(RecipeConfigError, match="section 'ctc' must be a mapping"):
        load_section(cfg, "ctc")
    with pytest.raises(RecipeConfigError, match="no such config"):
        load_section(tmp_path / "nope.yaml", "ctc")
    with pytest.raises(RecipeConfigError, match="nested"):
        to_args({"a": {"b": 1}})
    assert main([str(cfg), "ctc"]) == 1 and "must be a mapping" in capsys.readouterr().err
