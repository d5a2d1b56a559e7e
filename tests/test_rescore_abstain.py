"""OOV recovery that abstains: the margin over the arc's own similarity, the guards (function
words, short spans, short words), the margin's growth with the list size, and tuning the
margin at decoding. Stub encoders with graded similarities: the audio of a word is the
one-hot of test_rescore's code, a spelling any unit vector we choose."""

import math
from dataclasses import replace

import pytest
import torch

from tests.conftest import needs_k2
from tests.test_rescore import VOCAB, StubAcoustic, _code, _feats, _lattice

pytestmark = [needs_k2, pytest.mark.lattice]

ZEBRA = _code("zebra")


def _mix(cos_with_zebra: float, other: int) -> torch.Tensor:
    """A unit spelling vector whose cosine with the audio of "zebra" is ``cos_with_zebra``."""
    v = torch.zeros(16)
    v[ZEBRA] = cos_with_zebra
    v[other] = math.sqrt(1.0 - cos_with_zebra ** 2)
    return v


SPELLINGS = {
    "zebras": _mix(0.7, 9),  # the lattice's word: near the audio, not it
    "zebrine": _mix(0.75, 10),  # a proposal only 0.05 better than "zebras"
    "zeb": _mix(1.0, 11),  # a perfect but 3-letter proposal
}


class GradedLetters(torch.nn.Module):
    def encode_words(self, words, chunk_size=16384, normalize=True):
        out = torch.zeros(len(words), 16)
        for i, w in enumerate(words):
            if w in SPELLINGS:
                out[i] = SPELLINGS[w]
            else:
                out[i, min(_code(w), 15)] = 1.0
        return out


WORDS = VOCAB + ["there", "zebrine", "zeb"]


def _rescorer(words=("zebra", "zebrine", "cat"), **cfg):
    from rescorer.rescore import RescoreConfig, Rescorer

    base = dict(oov_topk=3, oov_min_similarity=0.5, oov_posterior_threshold=1.01, oov_lm_score=-1.0, awe_scale=4.0,
                oov_margin=0.2, oov_margin_per_doubling=0.02)
    r = Rescorer(StubAcoustic(), GradedLetters(), RescoreConfig(**{**base, **cfg}), device="cpu")
    r.set_vocabulary(list(words))
    return r


def _proposed(lat, rec):
    before = {tuple(x) for x in lat.fsa.arcs.values()[:, :3].tolist()}
    return sorted(rec.words.get(l) for s, d, l in rec.fsa.arcs.values()[:, :3].tolist() if (s, d, l) not in before)


def _the_zebras(span=(5, 10), word="zebras"):
    # "the zebra" is spoken; the decoder has "the <word>" on the second span
    return _lattice([(0, 1, "the", 0, 5, 0.0, 0.0), (1, 2, word, span[0], span[1], 0.0, 0.0)], words=WORDS)


@pytest.mark.parametrize("margin, expected", [(None, ["zebra", "zebrine"]), (0.0, ["zebra", "zebrine"]),
                                              (0.2, ["zebra"]), (0.29, ["zebra"]), (0.31, [])])
def test_a_proposal_is_added_only_when_it_beats_the_arcs_own_similarity_by_the_margin(margin, expected):
    # zebra: cosine 1.0, zebrine 0.75; the arc's own word zebras 0.7: advantages 0.3 and 0.05
    lat = _the_zebras()
    r = _rescorer(oov_margin=margin)
    rec, added = r.recover_oov(lat, _feats(["the", "zebra"]))
    assert _proposed(lat, rec) == expected and sorted(a[0] for a in added) == expected
    if expected:
        adv = rec.fsa.oov_advantage[rec.fsa.labels == rec.words["zebra"]]
        assert float(adv) == pytest.approx(0.3, abs=1e-5)
        assert rec.meta["oov_word_list_size"] == 3


def test_a_proposal_below_the_margin_cannot_win_even_when_kept_for_tuning():
    from rescorer.evaluation.rescoring import prepare_all, tune

    feats = _feats(["the", "zebra"])
    r = _rescorer(oov_margin=0.31)
    # tuning keeps every proposal, with its evidence; decoding under a margin drops the weak ones
    prepared = prepare_all(r, {"u1": _the_zebras()}, {"u1": feats}, recover=True, progress=False)
    assert _proposed(_the_zebras(), prepared["u1"].lattice) == ["zebra", "zebrine"]
    for margin, words in ((0.31, ["the", "zebras"]), (0.2, ["the", "zebra"]), (None, ["the", "zebra"])):
        cfg = replace(r.config, oov_margin=margin)
        assert prepared["u1"].decode(r, cfg) == words, margin
        # what a fresh recovery under that margin decodes to
        fresh = _rescorer(oov_margin=margin).rescore(_the_zebras(), feats, recover=True)
        assert fresh.hypothesis.text.split() == words, margin
    # even a huge embedding weight does not let a dropped proposal in
    assert prepared["u1"].decode(r, replace(r.config, awe_scale=1000.0)) == ["the", "zebras"]
    # the margin is tuned on dev with the scales: 0.2 lets the right word in, 0.31 does not
    best, curve = tune(r, prepared, {"u1": ["the", "zebra"]}, [4.0], [1.0], [0.0], oov_margins=[0.31, 0.2, None])
    assert [row["oov_margin"] for row in curve] == [0.31, 0.2, None] and [row["wer"] for row in curve] == [0.5, 0.0, 0.0]
    assert best.oov_margin == 0.2  # equal WER keeps the earlier grid point


@pytest.mark.parametrize("word", ["there", "the"])
def test_a_function_word_arc_is_never_replaced(word):
    lat = _lattice([(0, 1, word, 0, 5, 0.0, 0.0)], words=WORDS)
    feats = _feats(["zebra"])  # the audio is far from the function word: zebra's advantage is 1.0
    r = _rescorer(oov_margin=0.0)
    rec, added = r.recover_oov(lat, feats)
    assert added == [] and _proposed(lat, rec) == []
    assert getattr(r.acoustic, "calls", 0) == 0  # its span is not even searched
    # the guard can be switched off, and the rule before abstention had none
    unguarded = _rescorer(oov_margin=0.0, oov_protect_function_words=False).recover_oov(lat, feats)[1]
    assert sorted(a[0] for a in unguarded) == ["zebra", "zebrine"]
    assert sorted(a[0] for a in _rescorer(oov_margin=None).recover_oov(lat, feats)[1]) == ["zebra", "zebrine"]
    # kept for tuning, its proposal never wins under a margin
    from rescorer.evaluation.rescoring import prepare_all

    prepared = prepare_all(r, {"u1": lat}, {"u1": feats}, recover=True, progress=False)["u1"]
    assert prepared.decode(r, replace(r.config, awe_scale=100.0)) == [word]
    assert prepared.decode(r, replace(r.config, awe_scale=100.0, oov_margin=None)) == ["zebra"]


def test_short_spans_and_short_words_are_guarded():
    feats = _feats(["the", "zebra"])
    # a 2-frame span (0.08 s) is under oov_min_span_seconds 0.1
    short = _the_zebras(span=(5, 7), word="cat")
    assert _rescorer(oov_margin=0.0).recover_oov(short, feats)[1] == []
    got = _rescorer(oov_margin=0.0, oov_min_span_seconds=0.05).recover_oov(short, feats)[1]
    assert sorted(a[0] for a in got) == ["zebra", "zebrine"]
    # "zeb" matches the audio perfectly, but has 3 letters
    lat = _the_zebras(word="cat")
    assert [a[0] for a in _rescorer(("zeb", "zebrine"), oov_margin=0.0).recover_oov(lat, feats)[1]] == ["zebrine"]
    got = _rescorer(("zeb", "zebrine"), oov_margin=0.0, oov_min_letters=3).recover_oov(lat, feats)[1]
    assert sorted(a[0] for a in got) == ["zeb", "zebrine"]


def _letters_words(n):
    """``n`` distinct filler words (spelled far from every audio: the stub's unknown code)."""
    import itertools

    return ["q" + "".join(t) for t in itertools.islice(itertools.product("bcdfghjklmnpqrstvwxz", repeat=4), n)]


def test_the_required_margin_grows_with_the_list_size():
    from rescorer.rescore import RescoreConfig

    c = RescoreConfig(oov_margin=0.2, oov_margin_per_doubling=0.02)
    assert c.oov_required_advantage(500) == pytest.approx(0.2)  # never below the margin
    assert c.oov_required_advantage(1000) == pytest.approx(0.2)
    assert c.oov_required_advantage(4000) == pytest.approx(0.24)
    assert c.oov_required_advantage(128000) == pytest.approx(0.34)
    assert RescoreConfig(oov_margin=None).oov_required_advantage(10 ** 6) is None
    # zebra's advantage 0.3 clears 0.2 + 0.02 * log2(V / 1000) up to V = 32,000 words, not beyond
    lat, feats = _the_zebras(), _feats(["the", "zebra"])
    small = _rescorer(["zebra"] + _letters_words(16_000 - 1))
    big = _rescorer(["zebra"] + _letters_words(64_000 - 1))
    assert [a[0] for a in small.recover_oov(lat, feats)[1]] == ["zebra"]
    assert big.recover_oov(lat, feats)[1] == []
    # the lattice records its list's size, so tuning applies the same rule at decoding
    from rescorer.evaluation.rescoring import prepare_all

    prepared = prepare_all(big, {"u1": lat}, {"u1": feats}, recover=True, progress=False)["u1"]
    assert prepared.lattice.meta["oov_word_list_size"] == 64_000
    assert prepared.decode(big, big.config) == ["the", "zebras"]
    assert prepared.decode(big, replace(big.config, oov_margin_per_doubling=0.0)) == ["the", "zebra"]


def test_set_vocabulary_takes_a_word_list_file(tmp_path):
    from rescorer.formats.word_list import WordListError

    path = tmp_path / "list.txt"
    path.write_text("# my list\nZebra\nzebrine\n\nx-1\nzebra\n")
    r = _rescorer()
    r.set_vocabulary(path)
    assert r._word_list.words == ["zebra", "zebrine"]
    r.set_vocabulary(str(path))
    assert len(r._word_list) == 2
    with pytest.raises(WordListError, match="no such word list"):
        r.set_vocabulary(tmp_path / "missing.txt")


def test_with_the_lexicon_as_rival_a_known_word_that_explains_the_span_better_blocks_the_proposal():
    # "zeb" (3 letters, cosine 1.0 with the spoken zebra) is a word of the decoder's lexicon
    lat = _the_zebras()
    feats = _feats(["the", "zebra"])
    rec, _ = _rescorer(oov_rival="arc").recover_oov(lat, feats)
    assert _proposed(lat, rec) == ["zebra"]  # beats the arc's own "zebras" by 0.3
    r = _rescorer(oov_rival="lexicon")
    rec, added = r.recover_oov(lat, feats)
    assert _proposed(lat, rec) == [] and added == []
    # kept for tuning: its evidence is measured against "zeb" (1.0), not "zebras" (0.7)
    rec, _ = r.embedding_scores(lat, feats, recover=True, abstain_at_decoding=True)[:2]
    adv = rec.fsa.oov_advantage[rec.fsa.labels == rec.words["zebra"]]
    assert float(adv) == pytest.approx(0.0, abs=1e-5)
    # without "zeb" in the lexicon the best other known word on the span is the arc's own: as "arc"
    lex = _lattice([(0, 1, "the", 0, 5, 0.0, 0.0), (1, 2, "zebras", 5, 10, 0.0, 0.0)], words=VOCAB)
    rec, _ = _rescorer(oov_rival="lexicon").recover_oov(lex, feats)
    assert _proposed(lex, rec) == ["zebra"]
    # the proposal itself, a lexicon word, is not its own rival (zebra is in VOCAB)
    assert float(rec.fsa.oov_advantage[rec.fsa.labels == rec.words["zebra"]]) == pytest.approx(0.3, abs=1e-5)


def test_an_unknown_rival_is_named():
    from rescorer.rescore import RescoreConfig

    with pytest.raises(ValueError, match="oov_rival must be one of arc, lexicon"):
        RescoreConfig(oov_rival="list")
