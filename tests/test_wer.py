"""WER with the IV/OOV split, against hand-computed examples."""

from __future__ import annotations

import pytest

from rescorer import wer as W


def test_overall_counts():
    r = W.compute_wer([["a", "b", "c", "d"]], [["a", "x", "c", "d", "e"]])
    assert (r["substitutions"], r["deletions"], r["insertions"]) == (1, 0, 1)
    assert r["wer"] == pytest.approx(2 / 4)
    r = W.compute_wer([["a", "b", "c"], ["d"]], [["a", "c"], []])
    assert (r["substitutions"], r["deletions"], r["insertions"], r["ref_words"]) == (0, 2, 0, 4)
    assert r["wer"] == pytest.approx(0.5)


def test_iv_oov_split_and_insertions():
    vocab = {"the", "cat", "sat", "on", "mat"}
    # "zebra" is OOV: decoded as two words -> S (zebra->ze) + I (bra), both OOV errors;
    # "mat" -> "map" is an IV substitution.
    ref = ["the", "zebra", "sat", "on", "the", "mat"]
    hyp = ["the", "ze", "bra", "sat", "on", "the", "map"]
    r = W.compute_wer([ref], [hyp], vocab)
    assert (r["substitutions"], r["insertions"], r["deletions"]) == (2, 1, 0)
    assert r["oov_ref_words"] == 1 and r["iv_ref_words"] == 5
    assert r["oov_errors"] == 2 and r["iv_errors"] == 1
    assert r["oov_wer"] == pytest.approx(2.0) and r["iv_wer"] == pytest.approx(1 / 5)
    assert r["iv_errors"] + r["oov_errors"] == r["errors"] == 3


def test_insertion_between_iv_words_is_iv_and_unk_is_error():
    vocab = {"a", "b"}
    r = W.compute_wer([["a", "b"]], [["a", "x", "b"]], vocab)
    assert r["iv_errors"] == 1 and r["oov_errors"] == 0 and r["oov_wer"] is None
    r = W.compute_wer([["a", "qq"]], [["a", "<unk>"]], vocab)
    assert r["oov_errors"] == 1 and r["oov_wer"] == pytest.approx(1.0)
    # insertion at the start attributes to the following word (OOV here)
    r = W.compute_wer([["qq", "a"]], [["x", "qq", "a"]], vocab)
    assert r["oov_errors"] == 1 and r["iv_errors"] == 0


def test_empty_reference_and_python_fallback_agree():
    r = W.compute_wer([[]], [["a"]])
    assert r["wer"] is None and r["insertions"] == 1
    assert W.compute_wer([[]], [[]])["wer"] == 0.0
    ref, hyp = "a b c d e f".split(), "a x c e f g h".split()
    py = W._align_py(ref, hyp)
    errs = sum(r != h for r, h in py)
    assert errs == sum(r != h for r, h in W.align(ref, hyp)) == 4
    with pytest.raises(ValueError, match="references"):
        W.compute_wer([["a"]], [])


def test_rtf():
    assert W.real_time_factor(1.0, 4.0) == 0.25
    assert W.real_time_factor(1.0, 0.0) is None


@pytest.mark.parametrize("use_kaldialign", [True, False])
def test_edit_distance_and_error_counts(monkeypatch, use_kaldialign):
    if not use_kaldialign:  # the pure-Python alignment, as on a training machine without kaldialign
        monkeypatch.setattr(W, "align", W._align_py)
    assert W.edit_distance(list("kitten"), list("sitting")) == 3
    assert W.edit_distance([], ["a", "b"]) == 2 and W.edit_distance(["a"], []) == 1
    assert W.edit_distance(["the", "cat"], ["the", "cat"]) == 0
    refs, hyps = [["a", "b", "c"], list("flaw")], [["a", "c"], list("lawn")]
    assert W.error_counts(refs, hyps) == (1 + 2, 3 + 4)
