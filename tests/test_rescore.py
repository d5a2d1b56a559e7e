"""Rescoring on hand-built lattices with stub encoders whose answers are known.

The stub acoustic encoder reads a word's identity from the features (each word's frames
carry a one-hot pattern over 80 bins); the stub letter encoder maps a spelling to the
same one-hot. So the embedding similarity is 1 for the spoken word and 0 otherwise.
"""

import pytest
import torch

from tests.conftest import needs_k2

pytestmark = [needs_k2, pytest.mark.lattice]

VOCAB = ["cat", "cap", "sat", "mat", "zebra", "zebras", "on", "the"]


def _code(word):
    return VOCAB.index(word) if word in VOCAB else len(VOCAB)


class StubAcoustic(torch.nn.Module):
    dim = 16
    config = {"num_mel_bins": 80}

    def encode_segments(self, segs, batch_size=256, device=None):
        self.calls = getattr(self, "calls", 0) + len(segs)
        out = torch.zeros(len(segs), self.dim)
        for i, s in enumerate(segs):
            out[i, int(s[:, :16].mean(0).argmax())] = 1.0
        return out


class StubLetters(torch.nn.Module):
    def encode_words(self, words, chunk_size=16384, normalize=True):
        self.calls = getattr(self, "calls", 0) + len(words)
        out = torch.zeros(len(words), 16)
        for i, w in enumerate(words):
            out[i, _code(w)] = 1.0
        return out


def _feats(spoken, frames_per_word=20):
    """Fbank-like features where word k of ``spoken`` occupies frames [20k, 20k+20)."""
    f = torch.zeros(frames_per_word * len(spoken), 80)
    for k, w in enumerate(spoken):
        f[k * frames_per_word : (k + 1) * frames_per_word, _code(w)] = 5.0
    return f


def _lattice(arcs, words=VOCAB, frame_shift=0.04, uid="u1"):
    from rescorer.lattice.word_lattice import build_word_lattice, make_word_table

    return build_word_lattice(arcs, make_word_table(words), frame_shift=frame_shift, utterance_id=uid)


def _rescorer(**cfg):
    from rescorer.rescore import RescoreConfig, Rescorer

    return Rescorer(StubAcoustic(), StubLetters(), RescoreConfig(**cfg), device="cpu")


def test_embedding_score_flips_a_close_decision():
    # "the cat sat": 20 feature frames per word = 5 lattice frames at 0.04 s
    arcs = [
        (0, 1, "the", 0, 5, -1.0, -1.0),
        (1, 2, "cap", 5, 10, -1.0, -1.0),  # the decoder slightly prefers "cap"
        (1, 2, "cat", 5, 10, -1.2, -1.0),
        (2, 3, "sat", 10, 15, -1.0, -1.0),
    ]
    lat = _lattice(arcs)
    feats = _feats(["the", "cat", "sat"])
    base = _rescorer(awe_scale=0.0).rescore(lat, feats)
    assert base.hypothesis.text == "the cap sat"
    r = _rescorer(awe_scale=1.0)
    res = r.rescore(lat, feats)
    assert res.hypothesis.text == "the cat sat"
    assert [round(w.start, 2) for w in res.hypothesis.words] == [0.0, 0.2, 0.4]
    awe = res.lattice.fsa.awe_scores
    labels = res.lattice.fsa.labels
    cap = lat.words.get("cap")
    assert float(awe[labels == cap][0]) == pytest.approx(0.0)
    assert float(awe[labels == lat.words.get("cat")][0]) == pytest.approx(1.0)
    assert all(0.0 <= c <= 1.0 for c in res.confidences) and len(res.confidences) == 3


def test_each_distinct_span_and_word_is_embedded_once():
    arcs = [(0, 1, "cat", 0, 5, -1.0, -1.0), (0, 1, "cap", 0, 5, -1.0, -1.0), (0, 1, "mat", 0, 5, -1.0, -1.0),
            (1, 2, "sat", 5, 10, -1.0, -1.0), (1, 2, "cat", 5, 10, -1.0, -1.0)]
    r = _rescorer()
    lat = _lattice(arcs)
    r.rescore(lat, _feats(["cat", "sat"]))
    assert r.acoustic.calls == 2  # two distinct spans
    assert r.letters.calls == 4  # cat, cap, mat, sat
    r.rescore(lat, _feats(["cat", "sat"]))
    assert r.letters.calls == 4  # spellings are cached


def test_awe_scores_survive_k2_operations():
    import k2

    arcs = [(0, 1, "the", 0, 5, -1.0, -1.0), (1, 2, "cat", 5, 10, -1.0, -1.0), (1, 2, "cap", 5, 10, -0.5, -1.0)]
    res = _rescorer(awe_scale=2.0).rescore(_lattice(arcs), _feats(["the", "cat"]))
    best = k2.shortest_path(k2.create_fsa_vec([res.lattice.fsa]), use_double_scores=True)
    assert hasattr(best, "awe_scores")
    assert float(best.awe_scores.sum()) == pytest.approx(2.0)


def test_oov_recovery_proposes_the_spoken_word():
    # "the zebra": the decoder has only <unk> for the second word
    words = ["the", "cat"]
    arcs = [(0, 1, "the", 0, 5, -1.0, -1.0), (1, 2, "<unk>", 5, 10, -2.0, -3.0), (1, 2, "cat", 5, 10, -2.5, -1.5)]
    lat = _lattice(arcs, words=words)
    r = _rescorer(awe_scale=3.0, oov_topk=2, oov_lm_score=-3.0, oov_min_similarity=0.5)
    r.set_vocabulary(VOCAB)
    feats = _feats(["the", "zebra"])
    plain = r.rescore(lat, feats)
    assert plain.hypothesis.text in ("the cat", "the <unk>")
    res = r.rescore(lat, feats, recover=True)
    assert res.hypothesis.text == "the zebra"
    assert res.recovered and res.recovered[0][0] == "zebra"
    assert res.lattice.meta["oov_recovery_arcs"] >= 1
    # the input lattice is not modified
    assert "zebra" not in [lat.words.get(int(l)) for l in lat.fsa.labels if l > 0]


def test_recovery_without_vocabulary_is_a_clear_error():
    from rescorer.rescore import RescoreError

    lat = _lattice([(0, 1, "cat", 0, 5, -1.0, -1.0)])
    with pytest.raises(RescoreError, match="set_vocabulary"):
        _rescorer().rescore(lat, _feats(["cat"]), recover=True)


@pytest.mark.parametrize(
    "feats, match",
    [
        (torch.zeros(0, 80), "no feature frames"),
        (torch.zeros(40, 40), r"features must be \[frames, 80\]"),
        (torch.full((40, 80), float("nan")), "NaN or inf"),
        (torch.zeros(4, 80), "wrong features for this lattice"),
    ],
)
def test_bad_features_are_named(feats, match):
    from rescorer.rescore import RescoreError

    lat = _lattice([(0, 1, "cat", 0, 5, -1.0, -1.0), (1, 2, "sat", 5, 10, -1.0, -1.0)])
    with pytest.raises(RescoreError, match=match):
        _rescorer().rescore(lat, feats)


def test_spans_longer_than_the_window_and_short_spans_are_scored():
    # a 3 s span (300 feature frames) is centre-cropped by the encoder, a 1-frame span widened
    arcs = [(0, 1, "cat", 0, 75, -1.0, -1.0), (1, 2, "sat", 75, 76, -1.0, -1.0)]
    feats = _feats(["cat"], frames_per_word=300)
    feats = torch.cat([feats, _feats(["sat"], frames_per_word=4)])
    res = _rescorer().rescore(_lattice(arcs), feats)
    assert res.hypothesis.text == "cat sat"
    assert float(res.lattice.fsa.awe_scores[0]) == pytest.approx(1.0)
