import pytest

from rescorer.text import NotAWordError, letter_ngrams, normalize_word, split_words


def test_normalize_word_case_accents_apostrophes():
    assert normalize_word("Café") == "cafe"
    assert normalize_word("DON\u2019T") == "don't"
    assert normalize_word("'em") == "em"
    assert normalize_word("rock'n'roll") == "rock'n'roll"


@pytest.mark.parametrize("bad", ["", "1984", "a1", "c++", "'", "--", "x_y"])
def test_non_words_are_rejected_with_the_token_named(bad):
    with pytest.raises(NotAWordError) as e:
        normalize_word(bad)
    assert repr(bad) in str(e.value) or "empty" in str(e.value)


def test_split_words_punctuation_and_hyphens():
    assert split_words("Well-known, isn't it?") == ["well", "known", "isn't", "it"]
    with pytest.raises(NotAWordError):
        split_words("chapter 12")
    with pytest.raises(NotAWordError):
        split_words(" ... ")


def test_letter_ngrams_marks_and_orders():
    g = letter_ngrams("he", 1, 3)
    assert sorted(g) == sorted(["h", "e", "<h", "he", "e>", "<he", "he>"])
    g5 = letter_ngrams("running")
    assert "<runn" in g5 and "ning>" in g5 and "ing>" in g5
    assert max(len(x) for x in g5) == 5
    # every n-gram of a word is a substring of the marked word
    assert all(x in "<running>" for x in g5)
