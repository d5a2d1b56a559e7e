"""Word lists as users give them: reading and checking list files, the large list, the
context list (OOV words + matched distractors), and ``rescorer word-lists``. No k2."""

import json
import os

import pytest

from rescorer.corpora.word_lists import context_list, context_list_for_split, large_list, oov_words
from rescorer.formats.word_list import WordListError, read_word_list, write_word_list

# ---------------------------------------------------------------- list files


def test_a_list_file_is_normalised_deduplicated_and_its_non_words_reported(tmp_path, caplog):
    p = tmp_path / "names.txt"
    p.write_text("# our product names\n\nCafé\nzebra\n  Zebra  \nx-ray\nr2d2\nnew york\nO'Brien\ncafe\n")
    with caplog.at_level("WARNING"):
        wl = read_word_list(p)
    assert wl.words == ["cafe", "zebra", "o'brien"]
    assert wl.duplicates == 2
    assert wl.skipped == [(6, "x-ray"), (7, "r2d2"), (8, "new york")]
    assert "3 non-word lines skipped (line 6: 'x-ray', line 7: 'r2d2', line 8: 'new york')" in caplog.text
    assert len(wl) == 3 and list(wl) == wl.words
    with pytest.raises(WordListError, match=r"names.txt: 3 lines are not words .*line 6: 'x-ray'"):
        read_word_list(p, strict=True)


@pytest.mark.parametrize("content, match", [
    (b"", "empty word list"),
    (b"  \n\n", "empty word list"),
    (b"# only a header\n\n", "holds no words"),
    (b"\x7fELF\x02\x01\x01\x00\x00\x00junk", "a NUL byte at offset 7"),
    (b"caf\xe9\nzebra\n", r"not UTF-8 text \(byte 0xe9 at offset 3\)"),
    (b"123\n4.5\n$$\n", r"no line is a word .*line 1: '123', line 2: '4.5', line 3: '\$\$'"),
])
def test_bad_list_files_are_named(tmp_path, content, match):
    p = tmp_path / "list.txt"
    p.write_bytes(content)
    with pytest.raises(WordListError, match=match) as e:
        read_word_list(p)
    assert str(p) in str(e.value)


def test_missing_list_and_directory_are_named(tmp_path):
    with pytest.raises(WordListError, match="no such word list"):
        read_word_list(tmp_path / "nope.txt")
    with pytest.raises(WordListError, match="is a directory"):
        read_word_list(tmp_path)


def test_utf8_with_a_byte_order_mark_reads(tmp_path):
    p = tmp_path / "bom.txt"
    p.write_bytes("\ufeffZürich\nnaïve\n".encode("utf-8"))
    assert read_word_list(p).words == ["zurich", "naive"]


def test_write_then_read_round_trips_and_refuses_unnormalised_words(tmp_path):
    p = write_word_list(tmp_path / "sub" / "l.txt", ["zebra", "cafe"], header=["made here", "two lines"])
    assert p.read_text().splitlines()[:2] == ["# made here", "# two lines"]
    assert read_word_list(p).words == ["zebra", "cafe"]
    with pytest.raises(WordListError, match="not normalised"):
        write_word_list(tmp_path / "x.txt", ["Zebra"])
    with pytest.raises(WordListError, match="duplicate"):
        write_word_list(tmp_path / "x.txt", ["a", "a"])


# ---------------------------------------------------------------- context lists

CANDIDATES = [f"{a}{b}{c}{d}" for a in "bcdf" for b in "aeiou" for c in "lmnr" for d in "stxz"]  # 320 four-letter words
CANDIDATES += [w + "er" for w in CANDIDATES[:120]] + [w + "'s" for w in CANDIDATES[:40]]


def _freq(words):
    """A deterministic stand-in for Zipf frequencies: a function of the letters."""
    return {w: (sum(map(ord, w)) % 17) / 4.0 for w in words}


def test_context_list_holds_every_oov_word_and_ten_matched_distractors_each():
    targets = ["bamz", "cilt", "bamzer", "gnus", "qomz's"]
    exclude = ["bals", "bams", "dolt"]  # spoken words may not be distractors
    c = context_list(targets, CANDIDATES, frequency=_freq, ratio=10, seed=0, exclude=exclude)
    assert c.targets == sorted(targets)
    assert set(targets) <= set(c.words) and len(c.words) == len(targets) * 11 == len(set(c.words))
    assert c.words == sorted(c.words)
    f = _freq(CANDIDATES + targets)
    for t in targets:
        d = c.distractors[t]
        assert len(d) == 10 and not set(d) & (set(exclude) | set(targets))
        assert all(("'" in w) == ("'" in t) for w in d)  # apostrophe or not, alike
        assert all(len(w) == len(t) for w in d), (t, d)  # enough of each length here
        # drawn from the 30 candidates nearest in frequency of that form
        same = sorted((abs(f[w] - f[t]), w) for w in CANDIDATES if len(w) == len(t) and ("'" in w) == ("'" in t)
                      and w not in exclude and w not in targets)
        assert max(abs(f[w] - f[t]) for w in d) <= same[29][0]
    # distractors are not shared between OOV words; function words never appear
    assert sum(len(d) for d in c.distractors.values()) == len({w for d in c.distractors.values() for w in d})


def test_context_list_is_deterministic_and_seeded():
    targets = ["bamz", "cilt", "gnus"]
    a = context_list(targets, CANDIDATES, frequency=_freq, seed=3)
    assert context_list(targets, list(reversed(CANDIDATES)), frequency=_freq, seed=3).words == a.words
    assert context_list(targets, CANDIDATES, frequency=_freq, seed=4).words != a.words


def test_lengths_widen_when_a_length_runs_out_and_errors_are_clear():
    # one 9-letter candidate only: the others come from the nearest lengths
    c = context_list(["abcdefghi"], CANDIDATES + ["bbbbbbbbb"], frequency=_freq, ratio=10)
    lengths = sorted(len(w) for w in c.distractors["abcdefghi"])
    assert lengths[-1] == 9 and all(n >= 6 for n in lengths)
    with pytest.raises(ValueError, match="candidate distractors"):
        context_list(["bamz"], CANDIDATES[:5], frequency=_freq)
    with pytest.raises(ValueError, match="no OOV words"):
        context_list([], CANDIDATES, frequency=_freq)


def test_a_splits_oov_words_are_those_training_lacks():
    train = ["the cat sat", "a dog"]
    dev = ["the zebra sat", "a gnu and a cat"]
    assert oov_words(dev, train) == ["and", "gnu", "zebra"]
    c = context_list_for_split(dev, train, CANDIDATES + ["and", "zebra", "cat", "dogs"], ratio=2, frequency=_freq)
    assert c.targets == ["and", "gnu", "zebra"] and len(c.words) == 9
    assert not {"the", "cat", "sat", "dog", "a"} & {w for d in c.distractors.values() for w in d}


needs_wamerican = pytest.mark.skipif(not os.path.isfile("/usr/share/dict/american-english"),
                                     reason="needs the Debian word list (package wamerican)")


def test_zipf_frequencies_are_wordfreqs():
    wordfreq = pytest.importorskip("wordfreq")
    from rescorer.corpora.word_lists import zipf_frequencies

    words = ["the", "zebra", "aardvark's", "qwxzzyq"]
    assert zipf_frequencies(words) == {w: wordfreq.zipf_frequency(w, "en") for w in words}


@needs_wamerican
def test_large_list_is_the_debian_list_plus_the_corpus_words():
    words = large_list(["Zyzzogeton", "cat", "qwxzzy", "r2d2"])
    assert len(words) > 100_000 and len(words) == len(set(words))
    assert words[-2:] == ["qwxzzy", "zyzzogeton"] or {"qwxzzy", "zyzzogeton"} <= set(words)
    assert "cat" in words and "r2d2" not in words


# ---------------------------------------------------------------- rescorer word-lists


def _utterances(path, texts):
    import torch

    from rescorer.formats.contract import FBANK
    from rescorer.formats.utterances import UtteranceFeatures, write_utterance_features

    n = len(texts)
    write_utterance_features(path, UtteranceFeatures(
        feats=torch.zeros(4 * n, 80, dtype=torch.float16), offsets=torch.arange(0, 4 * n + 1, 4),
        texts=list(texts), utterance_ids=[f"u{i}" for i in range(n)], speakers=["s"] * n, spec=FBANK))


@needs_wamerican
def test_word_lists_cli_writes_both_lists(tmp_path):
    from click.testing import CliRunner

    from rescorer.cli import main

    _utterances(tmp_path / "train.pt", ["the cat sat on the mat", "a dog ran"])
    _utterances(tmp_path / "dev.pt", ["the zebra sat", "a gazelle ran on the mat"])
    _utterances(tmp_path / "test.pt", ["the aardvark sat"])
    out = tmp_path / "lists"
    args = ["word-lists", "--train-data", str(tmp_path / "train.pt"), "--split", f"dev={tmp_path / 'dev.pt'}",
            "--split", f"test={tmp_path / 'test.pt'}", "--out-dir", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    large = read_word_list(out / "large.txt")
    assert len(large) > 100_000 and {"zebra", "gazelle", "aardvark", "cat"} <= set(large.words)
    dev = read_word_list(out / "context_dev.txt")
    assert {"zebra", "gazelle"} <= set(dev.words) and len(dev) == 22
    assert not {"the", "cat", "sat", "mat", "dog", "ran", "aardvark"} & set(dev.words) - {"zebra", "gazelle"}
    test = read_word_list(out / "context_test.txt")
    assert "aardvark" in test.words and len(test) == 11
    summary = json.loads((out / "word_lists.json").read_text())
    assert summary["context"]["dev"]["oov_words"] == ["gazelle", "zebra"] and summary["large"]["words"] == len(large)
    assert (out / "context_dev.txt").read_text().startswith("# context list of split dev")
    # the same inputs give the same files
    before = (out / "context_dev.txt").read_text().splitlines()[2:]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert (out / "context_dev.txt").read_text().splitlines()[2:] == before
    r = CliRunner().invoke(main, args[:3] + ["--split", "dev", "--out-dir", str(out)])
    assert r.exit_code != 0 and "NAME=UTTERANCES.pt" in r.output
