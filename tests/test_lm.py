"""The n-gram estimator, ARPA validation, ARPA -> G conversion and the LM texts."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from rescorer.decoding import lm as L

HAVE_KALDILM = importlib.util.find_spec("kaldilm") is not None
needs_kaldilm = pytest.mark.skipif(not HAVE_KALDILM, reason="kaldilm not installed (reference environment only)")

SENTS = [s.split() for s in [
    "the cat sat", "the dog sat on the mat", "a cat ran", "the cat ran on the mat", "a dog sat",
    "the cat sat on a mat", "dogs and cats", "the the the",
]]


def _max_deviation(lm: L.NgramLM) -> float:
    vocab = [w for w in lm.vocabulary if w != L.BOS]
    return max(abs(sum(lm.prob(w, h) for w in vocab) - 1.0) for h in lm.histories() + [("zzz", "cat"), ("cat", "zzz")])


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_every_history_sums_to_one(order, tmp_path):
    lm = L.estimate_kneser_ney(SENTS, order)
    assert _max_deviation(lm) < 1e-9
    lm.write_arpa(tmp_path / "lm.arpa")
    back = L.read_arpa(tmp_path / "lm.arpa")
    assert back.num_ngrams() == lm.num_ngrams()
    assert _max_deviation(back) < 1e-5  # 7 decimals in the file


def test_kneser_ney_basics():
    lm = L.estimate_kneser_ney(SENTS, 3)
    assert lm.probs[0][(L.BOS,)] == L.LOG10_ZERO
    assert 0 < lm.prob(L.UNK) < lm.prob("mat")
    # an unknown word gets the <unk> probability
    assert lm.prob("zebra", ["the"]) == pytest.approx(lm.prob(L.UNK, ["the"]))
    # seen continuations beat unseen ones
    assert lm.prob("sat", ["the", "cat"]) > lm.prob("dog", ["the", "cat"])
    # continuation counts: "the" follows many words, "cats" one
    assert (L.BOS,) in lm.backoffs[0] and ("the", "cat") in lm.backoffs[1]
    with pytest.raises(L.LmError, match="no sentences"):
        L.estimate_kneser_ney([[]], 3)
    with pytest.raises(L.LmError, match="reserved"):
        L.estimate_kneser_ney([["a", "<unk>"]], 3)


BAD_ARPAS = {
    "no header": ("hello\n", "no \\\\data\\\\ header"),
    "bad number": ("\\data\\\nngram 1=2\n\n\\1-grams:\n-1.0\ta\nxx\tb\n\\end\\\n", "not a number"),
    "count mismatch": ("\\data\\\nngram 1=3\n\n\\1-grams:\n-1.0\ta\n-1.0\tb\n\\end\\\n", "declares 3"),
    "positive prob": ("\\data\\\nngram 1=1\n\n\\1-grams:\n0.5\ta\n\\end\\\n", "> 0"),
    "truncated": ("\\data\\\nngram 1=1\n\n\\1-grams:\n-1.0\ta\n", "no \\\\end"),
    "missing prefix": ("\\data\\\nngram 1=1\nngram 2=1\n\n\\1-grams:\n-1.0\ta\t-0.1\n\n\\2-grams:\n-0.5\tb a\n\\end\\\n", "prefix"),
    "too many fields": ("\\data\\\nngram 1=1\n\n\\1-grams:\n-1.0\ta\t-0.1\n\\end\\\n", "1-gram line"),
}


@pytest.mark.parametrize("name", sorted(BAD_ARPAS))
def test_malformed_arpa_is_a_clear_error(name, tmp_path):
    text, pattern = BAD_ARPAS[name]
    p = tmp_path / "bad.arpa"
    p.write_text(text)
    with pytest.raises(L.ArpaError, match=pattern) as e:
        L.read_arpa(p)
    assert str(p) in str(e.value)


def _words_txt(tmp_path, lm) -> Path:
    from rescorer.decoding.lexicon import word_table, write_symbol_table

    return write_symbol_table(tmp_path / "words.txt", word_table(lm.vocabulary))


@needs_kaldilm
def test_arpa_to_fst_and_bad_arpa_does_not_kill_the_process(tmp_path, monkeypatch):
    lm = L.estimate_kneser_ney(SENTS, 3)
    arpa = lm.write_arpa(tmp_path / "lm.arpa")
    words = _words_txt(tmp_path, lm)
    g = L.arpa_to_fst_text(arpa, words, tmp_path / "G.fst.txt")
    assert len(g.read_text().splitlines()) > 10
    # a word outside the symbol table: caught before kaldilm sees it
    bad = tmp_path / "bad.arpa"
    bad.write_text(arpa.read_text().replace("\tmat", "\tmatt"))
    with pytest.raises(L.ArpaError, match="not in the word symbol table"):
        L.arpa_to_fst_text(bad, words, tmp_path / "G2.fst.txt")
    # a file the validator lets through but kaldilm aborts on: the child dies, we do not
    monkeypatch.setattr(L, "read_arpa", lambda *a, **k: lm)
    bad.write_text("\\data\\\nngram 1=1\n\n\\1-grams:\nnot-a-number\tcat\n\\end\\\n")
    with pytest.raises(L.ArpaError, match="kaldilm arpa2fst failed"):
        L.arpa_to_fst_text(bad, words, tmp_path / "G3.fst.txt")


def test_synthetic_lm_text_excludes_dev_and_test_sentences(tmp_path):
    from rescorer.corpora.synthetic import PLAN_FORMAT, SyntheticConfig

    fdir = tmp_path / "fortunes"
    fdir.mkdir()
    fortunes = [
        "The cat sat on the mat.", "A dog ran in the park.", "The zebra ate some grass.",
        "Every zebra has stripes today.", "Nobody knows the answer here.",
    ]
    (fdir / "fortunes").write_text("\n%\n".join(fortunes) + "\n")
    cfg = SyntheticConfig(text_dir=str(fdir), train_utterances=1, dev_utterances=1, test_utterances=1)
    utt = lambda split, words: {  # noqa: E731
        "id": f"u-{split}", "split": split, "words": words, "engine": "espeak", "voice": "v", "prosody": {},
        "augment": {}, "seed": 0,
    }
    plan = {
        "format": PLAN_FORMAT, "config": asdict(cfg), "held_out": {"dev": [], "test": ["zebra"]}, "voices": {},
        "utterances": [
            utt("train", "the cat sat on the mat".split()), utt("dev", "a dog ran in the park".split()),
            utt("test", "the zebra ate some grass".split()),
        ],
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    sents = [" ".join(s) for s in L.synthetic_lm_sentences(tmp_path / "plan.json")]
    assert "a dog ran in the park" not in sents and "the zebra ate some grass" not in sents
    assert "the cat sat on the mat" in sents  # train sentences stay
    assert "every zebra has stripes today" in sents  # the held-out word stays known to the LM
    cov = L.lm_oov_rate({w for s in sents for w in s.split()}, "the zebra ate some grass".split())
    assert cov["missing_types"] == 3 and cov["type_oov_rate"] == pytest.approx(3 / 5)


def test_speechocean762_lm_text_excludes_dev_sentences(tmp_path):
    import gzip

    fdir = tmp_path / "fortunes"
    fdir.mkdir()
    (fdir / "fortunes").write_text("The cat sat on the mat.\n%\nWe read books every day.\n")
    man = tmp_path / "so" / "manifests"
    man.mkdir(parents=True)
    for split, texts in (("train", ["we call it bear", "i like apples"]), ("dev", ["i like apples", "we read books every day"])):
        with gzip.open(man / f"speechocean762_supervisions_{split}.jsonl.gz", "wt") as f:
            for i, t in enumerate(texts):
                f.write(json.dumps({"id": f"{split}{i}", "text": t}) + "\n")
    sents = [" ".join(s) for s in L.speechocean762_lm_sentences(tmp_path / "so", text_dir=str(fdir))]
    assert sents == ["the cat sat on the mat", "we call it bear"]
    with pytest.raises(L.LmError, match="missing"):
        L.speechocean762_lm_sentences(tmp_path / "nowhere", text_dir=str(fdir))


def _write_supervisions(data_dir, corpus, split_texts):
    import gzip

    man = data_dir / "manifests"
    man.mkdir(parents=True, exist_ok=True)
    for split, texts in split_texts.items():
        with gzip.open(man / f"{corpus}_supervisions_{split}.jsonl.gz", "wt") as f:
            for i, t in enumerate(texts):
                f.write(json.dumps({"id": f"{split}{i}", "text": t}) + "\n")


def test_corpus_lm_text_is_train_plus_extra_minus_dev_and_test(tmp_path):
    _write_supervisions(tmp_path, "librispeech", {
        "train": ["he hoped there would be stew", "stuff it into you"],
        "dev": ["stuff it into you"], "test": ["after early nightfall"],
    })
    extra = [s.split() for s in ["after early nightfall", "the yellow lamps would light up"]]
    sents = [" ".join(s) for s in L.corpus_lm_sentences(tmp_path, "librispeech", ("dev", "test"), extra)]
    assert sents == ["the yellow lamps would light up", "he hoped there would be stew"]
    with pytest.raises(L.LmError, match="librispeech_supervisions_dev.jsonl.gz: missing"):
        L.corpus_lm_sentences(tmp_path / "x", "librispeech")


def test_an_existing_upper_case_arpa_is_normalised_to_our_spelling(tmp_path):
    lm = L.estimate_kneser_ney([s.upper().split() for s in ["don't stop now", "stop it now", "it is now"]], 2)
    lm.write_arpa(tmp_path / "upper.arpa")
    norm = L.normalize_lm_words(L.read_arpa(tmp_path / "upper.arpa"))
    assert {"don't", "stop", "now", L.BOS, L.EOS, L.UNK} <= set(norm.vocabulary)
    assert not any(w.isupper() for w in norm.vocabulary)
    # the same model, only respelled
    assert norm.log10_prob("now", ["stop"]) == pytest.approx(lm.log10_prob("NOW", ["STOP"]), abs=1e-6)
    clash = L.estimate_kneser_ney([["Cat", "cat"]], 1)
    with pytest.raises(L.LmError, match="'Cat' and 'cat' both normalise to 'cat'"):
        L.normalize_lm_words(clash)
    with pytest.raises(L.LmError, match="'r2d2' cannot be spelled"):
        L.normalize_lm_words(L.estimate_kneser_ney([["r2d2", "lives"]], 1))


@needs_kaldilm
def test_lang_dir_from_transcripts_or_an_arpa(tmp_path):
    from rescorer.decoding.graphs import main

    _write_supervisions(tmp_path / "ls", "librispeech", {
        "train": ["he hoped there would be stew", "stuff it into you"], "dev": ["stuff it into you"],
        "test": ["after early nightfall"],
    })
    extra = tmp_path / "more.txt"
    extra.write_text("the yellow lamps would light up\n")
    assert main(["--transcripts", str(tmp_path / "ls"), "--corpus", "librispeech", "--lm-text", str(extra),
                 "--out", str(tmp_path / "lang1"), "--order", "2", "--no-hlg"]) == 0
    cfg = json.loads((tmp_path / "lang1" / "lang.json").read_text())
    assert cfg["lm_sentences"] == 2 and "minus dev/test" in cfg["text_source"]
    # several texts, as a recipe config's list arrives (comma-joined)
    extra2 = tmp_path / "more2.txt"
    extra2.write_text("lamps and stew\n")
    assert main(["--lm-text", f"{extra},{extra2}", "--out", str(tmp_path / "lang0"), "--order", "2", "--no-hlg"]) == 0
    assert json.loads((tmp_path / "lang0" / "lang.json").read_text())["lm_sentences"] == 2
    words = (tmp_path / "lang1" / "words.txt").read_text().split()
    assert "lamps" in words and "stew" in words and "nightfall" not in words

    L.estimate_kneser_ney([s.upper().split() for s in ["don't stop now", "stop it now"]], 2).write_arpa(tmp_path / "up.arpa")
    assert main(["--arpa", str(tmp_path / "up.arpa"), "--out", str(tmp_path / "lang2"), "--no-hlg"]) == 0
    words = (tmp_path / "lang2" / "words.txt").read_text().split()
    assert "don't" in words and "DON'T" not in words
    assert (tmp_path / "lang2" / "G.fst.txt").stat().st_size > 0
    # one LM source only
    with pytest.raises(SystemExit):
        main(["--arpa", str(tmp_path / "up.arpa"), "--lm-text", str(extra), "--out", str(tmp_path / "lang3")])
