"""Embedding evaluation (rescorer.evaluation.embeddings, benchmarks/eval_embeddings.py): tiny data, CPU."""

import json
import sys
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rescorer.evaluation import embeddings as ev
from rescorer.models.checkpoint import load_embedder, save_embedder
from rescorer.training.train_embeddings import TrainConfig, train
from rescorer.formats.word_segments import load_word_segments, word_segments_from_dict
from rescorer.models import AcousticWordEncoder, LetterNgramEncoder
from conftest import REPO, TINY_EMBEDDER
from synthetic_data import make_synthetic_word_segments, random_words, write_synthetic_word_segments

sys.path.insert(0, str(REPO / "benchmarks"))
import eval_embeddings as script  # noqa: E402

TINY = TINY_EMBEDDER


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """train (60 words), test = 20 of those words + 15 unseen ones, as segment files."""
    d = tmp_path_factory.mktemp("eval_segments")
    train_words = random_words(60, seed=11)
    oov_words = random_words(15, seed=12, exclude=train_words)
    test_words = train_words[:20] + oov_words
    write_synthetic_word_segments(str(d / "train.pt"), train_words, segments_per_word=4, seed=11)
    write_synthetic_word_segments(str(d / "dev.pt"), train_words[20:40] + oov_words[:5], segments_per_word=2, seed=13)
    write_synthetic_word_segments(str(d / "test.pt"), test_words, segments_per_word=3, seed=14)
    return d, train_words, oov_words


def distractor_list(n=2000):
    return random_words(n, seed=99, min_len=4, max_len=9)


# ---------------------------------------------------------------- stubs


def word_vector(word: str, dim: int = 80) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(word.encode()))
    return torch.randn(dim, generator=g)


class MeanAcoustic(nn.Module):
    """'Perfect' acoustic stub: the mean frame of a segment, normalised."""

    def __init__(self, dim=80):
        super().__init__()
        self.dim, self.feature_dim, self.max_frames = dim, dim, 200
        self.config = {"num_mel_bins": dim}
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, feats, lengths):
        mask = (torch.arange(feats.shape[1])[None, :] < lengths[:, None]).float()[:, :, None]
        return F.normalize((feats * mask).sum(1) / lengths[:, None].float(), dim=-1)


class RandomAcoustic(MeanAcoustic):
    def forward(self, feats, lengths):
        return F.normalize(torch.randn(len(lengths), self.dim), dim=-1)


class VectorLetters(nn.Module):
    dim = 80

    def encode_words(self, words):
        return F.normalize(torch.stack([word_vector(w) for w in words]), dim=-1)


def word_vector_segments(words, per_word=3):
    """Segments whose frames are the word's vector (plus small noise): the MeanAcoustic stub reads them."""
    d = make_synthetic_word_segments(words, segments_per_word=per_word, seed=5)
    data = word_segments_from_dict(d)
    feats = d["feats"].float()
    for i in range(len(data)):
        a, b = int(data.offsets[i]), int(data.offsets[i + 1])
        feats[a:b] = word_vector(data.words[int(data.word_ids[i])]) + 0.01 * torch.randn(b - a, 80)
    d["feats"] = feats.half()
    return word_segments_from_dict(d)


# ---------------------------------------------------------------- logic


def test_iv_oov_masks_follow_the_training_vocabulary(corpus):
    d, train_words, oov_words = corpus
    test = load_word_segments(str(d / "test.pt"))
    iv, oov = ev.iv_oov_masks(test, train_words)
    words = ev.segment_words(test)
    assert iv.dtype == torch.bool and bool((iv ^ oov).all())
    assert [w for w, m in zip(words, iv.tolist()) if m] == [w for w in words if w in set(train_words)]
    assert {w for w, m in zip(words, oov.tolist()) if m} == set(oov_words)
    assert int(oov.sum()) == 15 * 3 and int(iv.sum()) == 20 * 3


def test_larger_candidate_list_contains_vocab_has_10x_size_and_no_duplicates():
    vocab = ["cat", "dog", "emu", "cat"]
    distractors = ["dog", "the", "of", "the", "and"] + [f"w{i}" for i in range(100)]
    cands = ev.larger_candidate_list(vocab, distractors, factor=10)
    assert len(cands) == 30 and len(set(cands)) == 30
    assert cands[:3] == ["cat", "dog", "emu"]  # the vocabulary first, in order
    assert cands[3:6] == ["the", "of", "and"]  # then distractors in their (frequency) order
    with pytest.raises(ev.EvaluationError, match="distractors"):
        ev.larger_candidate_list(vocab, ["x", "y"], factor=10)


def test_perfect_embedder_gets_p_at_1_of_one():
    words = random_words(40, seed=3)
    data = word_vector_segments(words)
    res = ev.evaluate_embeddings(MeanAcoustic(), VectorLetters(), data, words[:30], distractors=distractor_list())
    m = res.metrics
    for key in ("p_at_1", "iv_p_at_1", "oov_p_at_1", "iv_p_at_10", "oov_p_at_10", "p_at_1_10x_vocab"):
        assert m[key] == 1.0, key
    assert m["acoustic_ap"] > 0.99 and m["crossview_ap"] > 0.99 and m["oov_to_iv_p_at_1"] == 1.0
    c = m["counts"]
    assert (c["segments"], c["iv_segments"], c["oov_segments"], c["vocabulary"]) == (120, 90, 30, 40)
    assert (c["iv_types"], c["oov_types"], c["candidates_10x"]) == (30, 10, 400)


def test_random_embedder_is_near_chance():
    torch.manual_seed(0)
    words = random_words(50, seed=4)
    data = word_vector_segments(words, per_word=6)
    m = ev.evaluate_embeddings(RandomAcoustic(), VectorLetters(), data, words, distractors=distractor_list()).metrics
    assert m["p_at_1"] < 0.08  # chance 1/50
    assert m["p_at_10"] < 0.4  # chance 10/50
    assert m["p_at_1_10x_vocab"] < 0.02
    assert m["acoustic_ap"] < 0.2 and m["oov_p_at_1"] is None  # every word is in vocabulary


def test_pca_and_speaker_holdout(corpus):
    x = torch.randn(30, 8).numpy()
    x[:, 0] *= 10
    xy = ev.pca_2d(x)
    assert xy.shape == (30, 2) and xy[:, 0].var() > xy[:, 1].var()
    d, _, _ = corpus
    data = load_word_segments(str(d / "train.pt"))
    fit, held = ev.split_by_speaker(data, 0.34, seed=0)
    fit, held = word_segments_from_dict(fit), word_segments_from_dict(held)
    assert len(fit) + len(held) == len(data)
    assert not set(fit.speaker_ids.tolist()) & set(held.speaker_ids.tolist())
    # frames and words survive the re-indexing
    j = 0
    orig = {u: i for i, u in enumerate(data.utterance_ids)}
    for part in (fit, held):
        for k in range(len(part)):
            i = orig[part.utterance_ids[k]]
            assert torch.equal(part.segment(k), data.segment(i))
            assert part.words[int(part.word_ids[k])] == data.words[int(data.word_ids[i])]
            j += 1
    assert j == len(data)


# ---------------------------------------------------------------- the script


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    d, _, _ = corpus
    out = tmp_path_factory.mktemp("exp") / "emb"
    train(TrainConfig(train=str(d / "train.pt"), dev=str(d / "dev.pt"), out=str(out), epochs=2,
                      sparse_ngrams=True, **TINY))  # fmt: skip
    return out


def test_script_writes_metrics_json_and_figure(corpus, trained, tmp_path, monkeypatch):
    d, train_words, _ = corpus
    monkeypatch.setattr(ev, "default_distractors", lambda: distractor_list())
    out = tmp_path / "results" / "embeddings.json"
    out.parent.mkdir()
    out.write_text(json.dumps({"other": {"kept": True}}))
    rc = script.main(["--corpus", "tiny", "--segments-dir", str(d), "--model-dir", str(trained),
                      "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["other"] == {"kept": True} and "description" in data
    e = data["tiny"]
    for key in script.TOP_KEYS:
        assert key in e, key
        assert e[key] is None or 0.0 <= e[key] <= 1.0 or key == "train_segments_per_s"
    assert e["train_segments_per_s"] > 0 and e["split"] == "test"
    assert e["counts"]["oov_segments"] == 45 and e["counts"]["candidates_10x"] == 350
    assert e["training"]["command"].startswith("python -m rescorer.training.train_embeddings --train")
    assert "--sparse-ngrams" in e["training"]["command"]
    assert e["evaluation"]["command"].startswith("python benchmarks/eval_embeddings.py --corpus tiny")
    assert {"device", "cpu", "torch"} <= set(e["evaluation"]["device"])
    assert e["date"].endswith("Z")
    fig = out.parent / "embeddings_tiny.png"
    assert fig.is_file() and fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and fig.stat().st_size > 10_000
    assert e["config"]["spelling_view"] == "letters" and e["config"]["frontend"] == "fbank"
    assert e["config"]["data"].endswith("test.pt") and e["config"]["corpus"] == "tiny"
    # one row per configuration: --name keys the entry, the first one stays
    rc = script.main(["--corpus", "tiny", "--name", "tiny/fbank/letters", "--segments-dir", str(d),
                      "--model-dir", str(trained), "--out", str(out), "--no-progress"])  # fmt: skip
    data = json.loads(out.read_text())
    assert rc == 0 and {"tiny", "tiny/fbank/letters"} <= set(data)
    assert (out.parent / "embeddings_tiny_fbank_letters.png").is_file()


def test_holdout_writes_training_readable_files_with_the_frontend(corpus, tmp_path):
    d, _, _ = corpus
    script.main(["holdout", "--train", str(d / "train.pt"), "--out-dir", str(tmp_path / "h"), "--fraction", "0.25"])
    fit = load_word_segments(str(tmp_path / "h" / "fit.pt"))
    held = load_word_segments(str(tmp_path / "h" / "heldout.pt"))
    whole = load_word_segments(str(d / "train.pt"))
    assert len(fit) + len(held) == len(whole) and fit.spec == held.spec == whole.spec


def test_script_errors_are_clear(corpus, trained, tmp_path, capsys, monkeypatch):
    d, _, _ = corpus
    monkeypatch.setattr(ev, "default_distractors", lambda: distractor_list())
    out = str(tmp_path / "e.json")
    rc = script.main(["--corpus", "x", "--segments-dir", str(tmp_path / "nope"), "--model-dir", str(trained), "--out", out])
    assert rc == 2 and "segments directory not found" in capsys.readouterr().err
    rc = script.main(["--corpus", "x", "--segments-dir", str(d), "--model-dir", str(tmp_path), "--out", out])
    assert rc == 2 and "no embedder checkpoint" in capsys.readouterr().err
    rc = script.main(["--corpus", "x", "--segments-dir", str(d), "--split", "eval", "--model-dir", str(trained), "--out", out])
    assert rc == 2 and "word segments not found" in capsys.readouterr().err
    # a model trained on 40-dim features against 80-dim segments
    small = tmp_path / "m40.pt"
    save_embedder(str(small), AcousticWordEncoder(num_mel_bins=40, dim=16, channels=16, num_blocks=1),
                  LetterNgramEncoder(dim=16, num_buckets=256, ngram_dim=8, hidden=8))  # fmt: skip
    rc = script.main(["--corpus", "x", "--segments-dir", str(d), "--model-dir", str(small), "--out", out,
                      "--train", str(d / "train.pt")])  # fmt: skip
    assert rc == 2 and "feature dimension mismatch" in capsys.readouterr().err
    assert not Path(out).exists()


def test_sparse_ngram_training_resumes_identically(corpus, tmp_path):
    d, _, _ = corpus
    common = dict(TINY, train=str(d / "train.pt"), dev=str(d / "dev.pt"), epochs=2, sparse_ngrams=True,
                  hard_negatives=4, mining_pool=16)  # fmt: skip
    full = train(TrainConfig(out=str(tmp_path / "full"), **common))
    part = tmp_path / "part"
    train(TrainConfig(out=str(part), stop_after_epoch=1, **common))
    train(TrainConfig(out=str(part), resume=True, **common))
    a, b = torch.load(full / "last.pt"), torch.load(part / "last.pt")
    for key in ("acoustic", "letters"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    assert a["sparse_optimizer"] is not None
    acoustic, letters, _ = load_embedder(str(full), which="last")
    assert not letters.ngrams.sparse  # inference model is the ordinary dense one


def test_zero_untrained_buckets_keeps_training_spellings():
    torch.manual_seed(0)
    letters = LetterNgramEncoder(dim=16, num_buckets=512, ngram_dim=8, hidden=16).eval()
    train_words = ["cat", "cats", "dog"]
    before = letters.encode_words(train_words).detach()
    kept = letters.zero_untrained_buckets_(train_words)
    ids, _ = letters.tokenize(train_words)
    assert kept == len(set(ids.tolist())) < 512
    assert torch.allclose(letters.encode_words(train_words), before)
    unseen, _ = letters.tokenize(["zyx"])
    fresh = [i for i in unseen.tolist() if i not in set(ids.tolist())]
    assert fresh and bool((letters.ngrams.weight[fresh] == 0).all())
