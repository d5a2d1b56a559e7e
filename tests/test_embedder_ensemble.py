"""benchmarks/embedder_ensemble.py: the mean of several embedders' cosines, measured like one embedder."""

import json
import sys

import torch

from conftest import REPO
from tests.test_eval_embeddings import corpus, distractor_list, trained  # noqa: F401  (fixtures)
from rescorer.evaluation import embeddings as ev
from rescorer.evaluation.embeddings import evaluate_embeddings, load_segments
from rescorer.models.checkpoint import load_embedder

sys.path.insert(0, str(REPO / "benchmarks"))
import embedder_ensemble as script  # noqa: E402


def test_a_member_alone_is_scored_as_evaluate_scores_it_and_twins_change_nothing(corpus, trained, tmp_path, monkeypatch):
    d, _, _ = corpus
    monkeypatch.setattr(ev, "default_distractors", lambda: distractor_list())
    out = tmp_path / "e.json"
    out.write_text(json.dumps({"other": {"kept": True}}))
    args = ["--segments", str(d / "test.pt"), "--train-segments", str(d / "train.pt"), "--member", f"a={trained}",
            "--member", f"b={trained}", "--name", "tiny/twins", "--out", str(out), "--threads", "1"]
    assert script.main(args) == 0
    doc = json.loads(out.read_text())
    row = doc["tiny/twins"]
    assert doc["other"] == {"kept": True} and row["command"].startswith("python benchmarks/embedder_ensemble.py")
    a, s, _ = load_embedder(trained)
    data = load_segments(str(d / "test.pt"))
    direct = evaluate_embeddings(a, s, data, list(load_segments(str(d / "train.pt")).words)).metrics
    for k in script.FIGURES:
        if direct.get(k) is None:
            continue
        assert abs(row["members"]["a"]["figures"][k] - direct[k]) < 1e-3, k
        # the same model twice: the mean of two equal cosines is that cosine
        assert abs(row["figures"][k] - direct[k]) < 1e-3, k
        assert row[k] == row["figures"][k]


def test_members_that_cannot_read_the_segments_or_too_few_are_refused(corpus, trained, tmp_path, capsys):
    from rescorer.formats.contract import FBANK, FeatureSpec

    d, _, _ = corpus
    out = tmp_path / "e.json"
    base = ["--segments", str(d / "test.pt"), "--train-segments", str(d / "train.pt"), "--name", "x", "--out", str(out)]
    assert script.main(base + ["--member", f"a={trained}"]) == 2
    assert "at least two" in capsys.readouterr().err
    assert script.main(base + ["--member", f"a={trained}", "--member", "nodir"]) == 2
    assert "NAME=DIR" in capsys.readouterr().err
    other = FeatureSpec("whisper-abc-L3", 384, 0.02)
    try:
        script.member_columns(FBANK, other, "w")
    except script.EnsembleError as e:
        assert "not a view" in str(e)
    else:
        raise AssertionError("an fbank file is no view of Whisper states")
    stacked = FeatureSpec("whisper-abc-L3-4", 768, 0.02)
    assert torch.equal(script.member_columns(stacked, other, "w"), torch.arange(384))
    assert not out.exists()
