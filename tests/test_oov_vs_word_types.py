"""benchmarks/oov_vs_word_types.py: equal-size subsets by word-type count, and the whole
experiment on a tiny word-rich corpus (espeak, one epoch of a tiny model)."""

import json
import os
import sys

import pytest
import torch

from conftest import HAVE_ESPEAK, HAVE_LHOTSE, REPO, TINY_EMBEDDER
from rescorer.formats.word_segments import word_segments_from_dict
from synthetic_data import make_synthetic_word_segments

sys.path.insert(0, str(REPO / "benchmarks"))
import oov_vs_word_types as script  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _segments(counts):
    """Segments of words w0, w1, ... with counts[i] segments of word i."""
    words = [f"w{i}" for i in range(len(counts))]
    d = make_synthetic_word_segments(["ab"] * 1, segments_per_word=1)
    data = word_segments_from_dict(d)
    idx = [0] * sum(counts)
    base = data.select(idx)
    ids = torch.tensor([i for i, c in enumerate(counts) for _ in range(c)])
    return word_segments_from_dict({**base.to_dict(), "words": words, "word_ids": ids})


def test_subsets_have_equal_sizes_nested_words_and_skip_short_words():
    data = _segments([4, 4, 1, 4, 2, 2, 2, 2, 1, 1])  # ranks 0..9
    ranked = [f"w{i}" for i in range(10)]
    idx, info = script.choose_subset(data, ranked, n_types=2, per_type=4, seed=0)
    assert sorted({data.words[data.word_ids[i]] for i in idx}) == ["w0", "w1"] and len(idx) == 8
    idx, info = script.choose_subset(data, ranked, n_types=4, per_type=2, seed=0)
    # w2 has one segment: skipped for w4
    assert sorted({data.words[data.word_ids[i]] for i in idx}) == ["w0", "w1", "w3", "w4"] and len(idx) == 8
    assert info == {"word_types": 4, "segments_per_type": 2, "words_skipped": 1, "last_rank_used": 5}
    again, _ = script.choose_subset(data, ranked, n_types=4, per_type=2, seed=0)
    other, _ = script.choose_subset(data, ranked, n_types=4, per_type=2, seed=1)
    assert again == idx and other != idx  # seeded choice of each word's segments
    with pytest.raises(script.ExperimentError, match="only 3 of the ranked words have 4 or more"):
        script.choose_subset(data, ranked, n_types=4, per_type=4)
    plan = {"config": {"type_tiers": [[2, 4], [4, 2], [8, 1]]}}
    assert script.default_budget(plan, [2, 4, 8]) == 8
    with pytest.raises(script.ExperimentError, match="asks for more"):
        script.default_budget(plan, [9])


def test_select_copies_the_chosen_segments():
    d = make_synthetic_word_segments(["abc", "de", "fgh"], segments_per_word=3, seed=2)
    data = word_segments_from_dict(d)
    sub = data.select([7, 1, 4])
    assert len(sub) == 3 and sub.words == sorted({data.words[data.word_ids[i]] for i in (7, 1, 4)})
    for k, i in enumerate([7, 1, 4]):
        assert torch.equal(sub.segment(k), data.segment(i))
        assert sub.words[sub.word_ids[k]] == data.words[data.word_ids[i]]
        assert sub.utterance_ids[k] == data.utterance_ids[i]


@pytest.mark.pipeline
@pytest.mark.tts
@pytest.mark.skipif(not (HAVE_ESPEAK and HAVE_LHOTSE and os.path.isfile("/usr/share/dict/american-english")),
                    reason="needs espeak-ng, lhotse and the Debian word list")
def test_experiment_on_a_tiny_word_rich_corpus(tmp_path, monkeypatch, capsys):
    from rescorer.corpora.wordrich import WordRichConfig, prepare_wordrich
    from rescorer.evaluation import embeddings as ev
    from rescorer.stages.segments import compute_segments

    data = tmp_path / "wr"
    cfg = WordRichConfig(type_tiers=((8, 4), (16, 2), (32, 1)), held_out_dev_types=5, held_out_test_types=6,
                         train_fortunes=2, dev_fortunes=1, test_fortunes=1, engines=("espeak",), engine_weights=(1.0,),
                         seed=1)
    prepare_wordrich(data, cfg, num_jobs=1, progress=False)
    compute_segments(data, "wordrich", num_jobs=1, echo=lambda s: None)
    monkeypatch.setattr(ev, "default_distractors", lambda: [f"zq{chr(97 + i)}{chr(97 + j)}" for i in range(26)
                                                           for j in range(26)])
    out = tmp_path / "results" / "embeddings.json"
    tiny = ["--epochs", "1", "--dim", "32", "--channels", "40", "--num-blocks", "2", "--num-buckets", "4096",
            "--ngram-dim", "32", "--letter-hidden", "64", "--batch-size", "16", "--device", "cpu", "--no-progress"]
    argv = ["--data", str(data), "--work", str(tmp_path / "work"), "--types", "8,16,32", "--out", str(out), "--", *tiny]
    assert script.main(argv) == 0
    doc = json.loads(out.read_text())
    rows = {n: doc[f"wordrich_types_{n}"] for n in (8, 16, 32)}
    for n, row in rows.items():
        c = row["config"]
        assert c["word_types"] == n and c["budget_segments"] == 32
        assert c["training_segments"] == c["segments_per_type"] * n == 32 - 32 % n
        assert c["training_hours"] > 0
        assert row["counts"]["oov_types"] == 6 and row["counts"]["oov_segments"] == 12  # held-out test words x 2
        assert row["counts"]["train_vocabulary"] == n
        assert row["counts"]["iv_segments"] == 12  # first-tier words, in every condition's training set
        assert row["oov_p_at_1"] is not None and 0.0 <= row["oov_p_at_1"] <= 1.0
        assert row["training"]["command"].startswith("python -m rescorer.training.train_embeddings --train")
        assert row["evaluation"]["command"].startswith("python benchmarks/oov_vs_word_types.py --data")
    # the same evaluation words for every count
    assert len({json.dumps(r["counts"]["ap_pairs"]) for r in rows.values()}) == 1
    assert (out.parent / script.FIGURE).is_file()
    # resumed: evaluated again, nothing retrained
    logs = {n: (tmp_path / "work" / f"types_{n}" / "embeddings" / "log.jsonl").read_text() for n in rows}
    assert script.main(argv) == 0
    assert logs == {n: (tmp_path / "work" / f"types_{n}" / "embeddings" / "log.jsonl").read_text() for n in rows}
    # counts the plan cannot fill, or that one budget cannot balance, are refused with the reason
    assert script.main([*argv[:5], "64", *argv[6:]]) == 2
    capsys.readouterr()
    assert script.main([*argv[:5], "2,32", *argv[6:]]) == 2  # budget min(2 x 4, 32 x 1) = 8 < 32 types
    assert "8 training segments per condition cannot hold 32 word types" in capsys.readouterr().err
