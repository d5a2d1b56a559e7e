"""WER collection (rescorer.stages.collect_wer, `rescorer wer collect`)."""

import json

import pytest

from click.testing import CliRunner

from rescorer.cli import main


def _inputs(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({
        "data": "test.pt", "audio_seconds": 10.0,
        "methods": {"hlg_1best": {"wer": 0.5, "iv_wer": 0.4, "oov_wer": 0.9, "rtf": 0.2, "substitutions": 3,
                                  "deletions": 1, "insertions": 1, "ref_words": 10, "utterances": 2, "hyp": "dropped"}},
    }))
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"wer_1best": 0.9, "sub": 5, "del": 2, "ins": 2, "ref_words": 10, "utterances": 2,
                                   "rtf": 0.8, "oracle_wer": 0.4, "oracle_wer_slf": 0.3}))
    return metrics, summary


def test_merges_decoder_and_pocketsphinx_results_keeping_other_entries(tmp_path):
    from rescorer.stages.collect_wer import collect_wer

    metrics, summary = _inputs(tmp_path)
    out = tmp_path / "wer.json"
    out.write_text(json.dumps({"corpora": {"other": {"x": {"wer": 0.1}}}}))
    collect_wer("c", [str(metrics)], str(summary), out, command="rescorer wer collect --corpus c")
    doc = json.loads(out.read_text())
    c = doc["corpora"]["c"]
    assert c["hlg_1best"]["wer"] == 0.5 and c["hlg_1best"]["oov_wer"] == 0.9 and "hyp" not in c["hlg_1best"]
    assert c["pocketsphinx_1best"]["wer"] == 0.9 and c["pocketsphinx_lattice_oracle"]["wer"] == 0.4
    assert doc["corpora"]["other"]["x"]["wer"] == 0.1  # other corpora are kept
    assert {"command", "machine", "date"} <= set(doc["collected"]["c"])  # provenance per corpus
    assert doc["collected"]["c"]["command"] == "rescorer wer collect --corpus c"


def test_cli_collects_and_prints_the_entry_and_names_a_bad_metrics_file(tmp_path):
    metrics, summary = _inputs(tmp_path)
    out = tmp_path / "res" / "wer.json"
    runner = CliRunner()
    r = runner.invoke(main, ["wer", "collect", "--corpus", "c", "--decode", str(metrics), "--pocketsphinx", str(summary),
                             "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["hlg_1best"]["wer"] == 0.5
    assert json.loads(out.read_text())["corpora"]["c"]["pocketsphinx_1best"]["rtf"] == 0.8
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = runner.invoke(main, ["wer", "collect", "--corpus", "c", "--decode", str(bad), "--out", str(out)])
    assert r.exit_code != 0 and "bad.json: not a JSON decode metrics file" in r.output
    bad.write_text(json.dumps({"data": "x"}))
    r = runner.invoke(main, ["wer", "collect", "--corpus", "c", "--decode", str(bad), "--out", str(out)])
    assert r.exit_code != 0 and "no 'methods'" in r.output


def test_merge_copies_a_run_under_a_new_name_with_its_provenance(tmp_path):
    import json

    from rescorer.stages import StageError
    from rescorer.stages.collect_wer import merge_wer

    src = tmp_path / "exp_wer.json"
    src.write_text(json.dumps({
        "corpora": {"so_dev": {"hlg_1best": {"wer": 0.5}, "awe_rescore": {"wer": 0.4}}},
        "collected": {"so_dev": {"command": "rescorer wer collect", "date": "2026-12-02"}},
        "decoding_runs": {"so_dev:exp/decode/metrics.json": {"settings": {}}},
        "rescoring_runs": {"so_dev:ctc:awe_rescore": {"command": "rescorer tune"}, "other:ctc:x": {}},
    }))
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"corpora": {"so_dev": {"hlg_1best": {"wer": 0.7}}}}))
    assert merge_wer(src, out, {"so_dev": "so_dev/whisper"}, "CONFIG=w.yaml run.sh", {"frontend": "whisper"}) == \
        {"so_dev/whisper": 2}
    doc = json.loads(out.read_text())
    assert doc["corpora"]["so_dev"] == {"hlg_1best": {"wer": 0.7}}  # the default run is kept
    assert doc["corpora"]["so_dev/whisper"]["awe_rescore"] == {"wer": 0.4, "frontend": "whisper"}
    assert doc["collected"]["so_dev/whisper"]["recipe"] == "CONFIG=w.yaml run.sh"
    assert "so_dev/whisper:ctc:awe_rescore" in doc["rescoring_runs"]
    assert "so_dev/whisper:ctc:x" not in doc["rescoring_runs"] and "other:ctc:x" not in doc["rescoring_runs"]
    with pytest.raises(StageError, match="no corpus nope"):
        merge_wer(src, out, {"nope": "x"})
