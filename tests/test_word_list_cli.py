"""``--word-list`` end to end: ``rescorer rescore`` and ``rescorer tune`` with users' list
files on tiny lattices (the stub encoders of test_rescore: the audio names its word)."""

import json

import pytest
import torch

from tests.conftest import needs_k2
from tests.test_rescore import _feats, _lattice, _rescorer
from tests.test_rescoring_eval import _write_utterances

pytestmark = [needs_k2, pytest.mark.lattice]

WORDS = ["the", "cat", "sat"]  # the decoder's vocabulary: zebra is not in it


def _unk_lattice(uid):
    # "the zebra sat" spoken; the decoder has <unk> or cat in the middle
    arcs = [(0, 1, "the", 0, 5, 0.0, -1.0), (1, 2, "<unk>", 5, 10, -1.0, -3.0), (1, 2, "cat", 5, 10, -1.5, -1.0),
            (2, 3, "sat", 10, 15, 0.0, -1.0)]
    return _lattice(arcs, words=WORDS, uid=uid)


def _unk_mat_lattice(uid):
    # as _unk_lattice, and the decoder prefers "mat" to the spoken "sat": the embedding weight that
    # fixes it is tuned before recovery (which then needs that weight to beat cat with zebra)
    arcs = [(0, 1, "the", 0, 5, 0.0, -1.0), (1, 2, "<unk>", 5, 10, -1.0, -3.0), (1, 2, "cat", 5, 10, -1.5, -1.0),
            (2, 3, "sat", 10, 15, 0.0, -1.0), (2, 3, "mat", 10, 15, 0.0, -0.5)]
    return _lattice(arcs, words=WORDS + ["mat"], uid=uid)


@pytest.fixture
def stub_model(tmp_path, monkeypatch):
    from rescorer.rescore import Rescorer

    model = tmp_path / "model"
    model.mkdir()
    made = []

    def from_dir(cls, model_dir, device=None, **kw):
        made.append(_rescorer(awe_scale=4.0, oov_lm_score=-1.0, oov_min_similarity=0.5, oov_topk=2))
        return made[-1]

    monkeypatch.setattr(Rescorer, "from_dir", classmethod(from_dir))
    return model, made


def test_rescore_takes_a_word_list_file(tmp_path, stub_model):
    from click.testing import CliRunner

    from rescorer.cli import main
    from rescorer.lattice.word_lattice import save_word_lattices

    model, made = stub_model
    save_word_lattices(tmp_path / "lats.pt", [_unk_lattice("u1")])
    _write_utterances(tmp_path / "feats.pt", {"u1": ["the", "zebra", "sat"]}, {"u1": "s"})
    base = ["rescore", "--model-dir", str(model), "--lattices", str(tmp_path / "lats.pt"),
            "--features", str(tmp_path / "feats.pt"), "--device", "cpu", "--prune-posterior", "0"]
    runner = CliRunner()
    r = runner.invoke(main, base + ["--out", str(tmp_path / "plain")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "plain" / "hyps.txt").read_text() == "u1\tthe cat sat\n"
    lst = tmp_path / "names.txt"
    lst.write_text("# names for this meeting\nZebra\ngazelle\nr2d2\n")
    r = runner.invoke(main, base + ["--out", str(tmp_path / "listed"), "--word-list", str(lst)])  # implies recovery
    assert r.exit_code == 0, r.output
    assert (tmp_path / "listed" / "hyps.txt").read_text() == "u1\tthe zebra sat\n"
    assert made[-1]._word_list.words == ["zebra", "gazelle"]  # normalised, the non-word skipped
    # bad lists are named before any work
    for content, match in ((b"", "empty word list"), (b"\x00\x01\x02", "NUL byte"), (b"42\n", "no line is a word")):
        lst.write_bytes(content)
        r = runner.invoke(main, base + ["--out", str(tmp_path / "bad"), "--word-list", str(lst)])
        assert r.exit_code != 0 and match in r.output and str(lst) in r.output, r.output
        assert not (tmp_path / "bad" / "hyps.txt").exists()
    r = runner.invoke(main, base + ["--out", str(tmp_path / "bad"), "--word-list", str(tmp_path / "none.txt")])
    assert r.exit_code != 0 and "no such word list" in r.output


def test_tune_reports_both_recovery_methods_with_their_lists(tmp_path, stub_model):
    from click.testing import CliRunner

    from rescorer.cli import main
    from rescorer.lattice.word_lattice import save_word_lattices

    model, _ = stub_model
    save_word_lattices(tmp_path / "dev.pt", [_unk_mat_lattice("u1"), _unk_mat_lattice("u2")])
    spoken = {"u1": ["the", "zebra", "sat"], "u2": ["the", "zebra", "sat"]}
    _write_utterances(tmp_path / "feats.pt", spoken, {"u1": "a", "u2": "b"})
    _write_utterances(tmp_path / "train.pt", {"t1": ["the", "cat", "sat"]}, {"t1": "a"})
    (tmp_path / "large.txt").write_text("cat\ncap\nmat\nzebra\nzebras\non\nthe\n")
    (tmp_path / "context.txt").write_text("zebra\nmat\n")
    out = tmp_path / "wer.json"
    args = ["tune", "--corpus", "toy", "--model-dir", str(model), "--train-data", str(tmp_path / "train.pt"),
            "--dev-lattices", str(tmp_path / "dev.pt"), "--dev-features", str(tmp_path / "feats.pt"), "--cross-validate",
            "--methods", "awe_rescore,awe_rescore_oov_recovery,awe_rescore_context_list", "--awe-scales", "0,4",
            "--lm-scales", "1", "--wips=0", "--oov-margins", "0.5,none", "--word-list", str(tmp_path / "large.txt"),
            "--context-list", str(tmp_path / "context.txt"), "--out", str(out), "--device", "cpu", "--save-config"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    toy = json.loads(out.read_text())["corpora"]["toy"]
    for method, size, path in (("awe_rescore_oov_recovery", 7, "large.txt"), ("awe_rescore_context_list", 2, "context.txt")):
        row = toy[method]
        assert row["wer"] == 0.0 and row["oov_recall"] == 1.0 and row["oov_precision"] == 1.0, method
        assert row["iv_tokens_broken"] == 0 and row["oov_tokens_proposed"] == 2
        # recovery's own part, against the same scales without it: both zebras, nothing broken
        assert (row["added_oov_recovered"], row["added_oov_precision"], row["added_iv_broken"]) == (2, 1.0, 0)
        assert row["word_list_size"] == size and row["word_list"].endswith(path)
        assert [s["oov_margin"] for s in row["scales"]] == [0.5, 0.5]  # both folds: the first of equal WERs
    assert toy["awe_rescore"]["oov_recall"] == 0.0
    curve = json.loads((tmp_path / "rescore_tuning_toy_lattices.json").read_text())
    rows = curve["awe_rescore_context_list_fold0"]
    assert {r["oov_margin"] for r in rows if r["step"] == "recovery"} == {0.5, None}
    # two steps: the scales with recovered arcs priced out (2 awe scales), then the 2 margins at them
    assert [r["step"] for r in rows] == ["scales"] * 2 + ["recovery"] * 2
    assert all(r["oov_lm_score"] <= -1e3 for r in rows[:2]) and rows[0]["wer"] > 0  # no recovery: zebra missed
    assert {r["awe_scale"] for r in rows[2:]} == {toy["awe_rescore_context_list"]["scales"][0]["awe_scale"]}
    saved = json.loads((model / "rescorer.json").read_text())["config"]
    assert saved["oov_margin"] == 0.5 and saved["awe_scale"] == toy["awe_rescore"]["scales"][0]["awe_scale"]
    # a run of a recovery method alone adds its settings to the scales the model already has
    (model / "rescorer.json").write_text(json.dumps({"config": {**saved, "awe_scale": 7.0, "oov_margin": None}}))
    only = [a if a != "awe_rescore,awe_rescore_oov_recovery,awe_rescore_context_list" else "awe_rescore_context_list"
            for a in args]
    assert CliRunner().invoke(main, only).exit_code == 0
    again = json.loads((model / "rescorer.json").read_text())["config"]
    assert again["awe_scale"] == 7.0 and again["oov_margin"] == 0.5
    # the context list is required for its method (and, by default, used when given); a bad list is named
    r = CliRunner().invoke(main, [a for a in args if a not in ("--context-list", str(tmp_path / "context.txt"))])
    assert r.exit_code != 0 and "needs a context list" in r.output
    (tmp_path / "context.txt").write_bytes(b"\xff\xfe z")
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0 and "not UTF-8" in r.output
    r = CliRunner().invoke(main, args[:-3] + ["--oov-margins", "0.1,x"])
    assert r.exit_code != 0 and "--oov-margins" in r.output
