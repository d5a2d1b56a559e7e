import json

import pytest
from click.testing import CliRunner

from rescorer.cli import main
from tests.conftest import needs_espeak, needs_lhotse

pytestmark = [needs_espeak, needs_lhotse, pytest.mark.tts]


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


def test_segments_on_missing_manifests_is_a_clear_error(tmp_path):
    (tmp_path / "manifests").mkdir()
    r = CliRunner().invoke(main, ["segments", str(tmp_path), "--corpus", "synthetic"])
    assert r.exit_code != 0 and "no synthetic manifests" in r.output
