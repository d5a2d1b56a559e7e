"""Pronunciations: CMUdict lookups, espeak-ng G2P mapped to ARPAbet, provenance, bad input."""

import random
import warnings

import kaldialign
import numpy as np
import pytest

from rescorer.pronunciation import (
    PHONES,
    LexiconError,
    Pronouncer,
    PronunciationError,
    PronunciationMismatchWarning,
    UnmappedPhonemeError,
    espeak_to_arpabet,
    get_pronouncer,
    load_lexicon,
    parse_lexicon,
)
from rescorer.pronunciation.arpabet import ESPEAK_TO_ARPABET, PHONE_SET
from rescorer.text import NotAWordError
from conftest import needs_espeak

TINY_DICT = """\
;;; a comment line
cat K AE1 T
read R EH1 D
read(3) R EH2 D
read(2) R IY1 D
a.m. EY2 EH1 M
'bout B AW1 T
aalborg AO1 L B AO0 R G # place, danish
"""


def test_parse_strips_stress_keeps_alternates_in_order_and_skips_non_words():
    lex = parse_lexicon(TINY_DICT)
    assert lex["cat"] == [("K", "AE", "T")]
    # read(2) before read(3), and read(3) equals read once stress is gone: kept once
    assert lex["read"] == [("R", "EH", "D"), ("R", "IY", "D")]
    assert lex["aalborg"] == [("AO", "L", "B", "AO", "R", "G")]  # comment dropped
    assert "a.m." not in lex and "'bout" not in lex and "bout" not in lex


def test_parse_names_the_line_of_a_bad_phone():
    with pytest.raises(LexiconError, match=r"dict.txt:2: 'dog' has phones outside ARPAbet: QQ"):
        parse_lexicon("cat K AE T\ndog D QQ G\n", "dict.txt")
    with pytest.raises(LexiconError, match="no phones"):
        parse_lexicon("cat\n", "dict.txt")


def test_cmudict_hit_normalised_and_without_stress():
    p = get_pronouncer()
    assert len(p.lexicon) > 120_000  # the pocketsphinx (or cmudict package) dictionary
    assert p.pronounce("Cat") == ("K", "AE", "T")
    assert p.pronounce("it\u2019s") == p.pronounce("it's")
    assert p.pronunciations("read")[:2] == [("R", "EH", "D"), ("R", "IY", "D")]
    for readings in list(p.lexicon.entries.values())[:5000]:
        for r in readings:
            assert PHONE_SET.issuperset(r)


def test_bad_words_and_missing_lexicon_are_named(tmp_path):
    p = get_pronouncer()
    with pytest.raises(NotAWordError, match="empty"):
        p.pronounce("")
    with pytest.raises(NotAWordError, match="1984"):
        p.pronounce("1984")
    with pytest.raises(LexiconError, match="not found: .*nowhere.dict"):
        Pronouncer(str(tmp_path / "nowhere.dict"))
    (tmp_path / "empty.dict").write_text(";;; nothing\n")
    with pytest.raises(LexiconError, match="no entries"):
        Pronouncer(str(tmp_path / "empty.dict"))
    with pytest.raises(ValueError, match="g2p must be one of"):
        Pronouncer(g2p="festival")


def test_without_g2p_an_unknown_word_is_an_error_naming_it(tmp_path):
    (tmp_path / "tiny.dict").write_text(TINY_DICT)
    p = Pronouncer(str(tmp_path / "tiny.dict"), g2p="none")
    assert p.pronounce_many(["cat", "read"]) == [("K", "AE", "T"), ("R", "EH", "D")]
    with pytest.raises(PronunciationError, match="'zorblaxian'.*g2p='none'|g2p='none'.*'zorblaxian'"):
        p.pronounce("zorblaxian")


def test_mapping_table_sanity():
    assert len(PHONES) == 39 and len(PHONE_SET) == 39
    for mnemonic, phones in ESPEAK_TO_ARPABET.items():
        assert PHONE_SET.issuperset(phones), mnemonic
    assert espeak_to_arpabet(["k", "'a", "t"]) == ["K", "AE", "T"]
    assert espeak_to_arpabet(["k", "'A@"]) == ["K", "AA", "R"]  # r-coloured vowel: vowel + R
    assert espeak_to_arpabet(["h", "'3:", "r", "i"]) == ["HH", "ER", "IY"]  # no R after ER (CMUdict "hurry")
    assert espeak_to_arpabet(["b", "'V", "?", "n-"]) == ["B", "AH", "T", "AH", "N"]  # CMUdict "button"
    with pytest.raises(UnmappedPhonemeError, match="'Q!' .*'zz'"):
        espeak_to_arpabet(["k", "Q!"], word="zz")


@needs_espeak
def test_g2p_fallback_for_a_made_up_word_is_deterministic():
    p = get_pronouncer()
    assert "zorblaxian" not in p.lexicon and "snorbing" not in p.lexicon
    phones = p.pronounce("zorblaxian")
    assert phones[0] == "Z" and PHONE_SET.issuperset(phones) and len(phones) >= 8
    assert p.pronounce("Snorbing")[-2:] == ("IH", "NG")
    fresh = Pronouncer()  # a new instance (own cache) and a new espeak-ng child give the same phones
    assert fresh.pronounce("zorblaxian") == phones
    src = p.source()
    assert src["g2p"] == "espeak" and src["espeak_ng_version"] and len(src["lexicon_sha256"]) == 64


@needs_espeak
def test_mapped_g2p_agrees_with_cmudict_on_dictionary_words():
    """Phone error rate of mapped espeak-ng output against CMUdict's closest reading, 300 words
    (benchmarks/g2p_agreement.py measures 3000: about 0.10)."""
    p = get_pronouncer()
    words = sorted(random.Random(0).sample(sorted(w for w in p.lexicon.entries if "'" not in w), 300))
    hyps = p._g2p(words)
    errors = refs = 0
    for w, hyp in zip(words, hyps):
        best = min(p.lexicon.entries[w], key=lambda r: kaldialign.edit_distance(list(r), list(hyp))["total"])
        errors += kaldialign.edit_distance(list(best), list(hyp))["total"]
        refs += len(best)
    assert errors / refs < 0.2
    assert p._g2p(["cat", "church", "sing"]) == [("K", "AE", "T"), ("CH", "ER", "CH"), ("S", "IH", "NG")]


def test_a_different_recorded_source_is_warned_about():
    p = get_pronouncer()
    recorded = {**p.source(), "lexicon_sha256": "0" * 64, "lexicon": "/elsewhere/cmudict.dict"}
    with pytest.warns(PronunciationMismatchWarning, match="pronunciation lexicon"):
        problems = p.check_source(recorded)
    assert len(problems) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert p.check_source({**p.source(), "lexicon": "/elsewhere/cmudict.dict"}) == []  # the path may differ


def test_lexicon_is_parsed_once_per_process():
    assert load_lexicon() is load_lexicon() is get_pronouncer().lexicon


@needs_espeak
def test_g2p_does_not_change_the_audio_of_a_later_synthesis():
    """One binding for TTS and G2P: G2P runs in a forked child, so the process-wide instance
    that synthesis forks from stays pristine."""
    from rescorer.espeak_ng import EspeakLibrary

    lib = EspeakLibrary.get()
    before, _ = lib.synth("hello there", "en-us+f3", 175, 50, 50)
    Pronouncer().pronounce_many(["quixotry", "blanderous", "zorblaxian"])
    after, _ = lib.synth("hello there", "en-us+f3", 175, 50, 50)
    assert np.array_equal(before, after)
