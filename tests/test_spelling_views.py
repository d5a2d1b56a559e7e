"""The spelling encoder's views (letters, phones, letters+phones): bags, checkpoints, training config."""

import warnings

import pytest
import torch

from rescorer.models import AcousticWordEncoder, LetterNgramEncoder
from rescorer.models.checkpoint import load_embedder, read_embedder_checkpoint, save_embedder
from rescorer.models.letters import (
    MAX_PHONE_N,
    PHONE_SYMBOLS,
    phone_ngram_ids,
    phone_rows,
    select_bags,
    tokenize_words,
)
from rescorer.pronunciation import PronunciationMismatchWarning, get_pronouncer
from rescorer.text import letter_ngrams
from rescorer.training.train_embeddings import TrainConfig, build_encoders, parse_args
from conftest import needs_espeak

SMALL = dict(dim=16, num_buckets=1024, ngram_dim=16, hidden=32)


def _encoder(view, seed=0):
    torch.manual_seed(seed)
    return LetterNgramEncoder(**SMALL, spelling_views=view).eval()


def test_phone_ngram_rows_are_distinct_and_inside_the_block():
    import itertools

    # every trigram over a few symbols gets its own row
    rows = {phone_ngram_ids(g, 3, 3)[0] for g in itertools.product(PHONE_SYMBOLS[2:8], repeat=1)}
    assert len(rows) == 6
    seen = {}
    # every n-gram of a few words: equal n-grams share a row, different ones never do
    words = [("K", "AE", "T"), ("K", "AE", "P"), ("T", "AE", "K"), ("AE",), ("S", "T", "R", "IY", "T")]
    for phones in words:
        seq = ["<", *phones, ">"]
        grams = [tuple(seq[i : i + n]) for n in range(1, 4) for i in range(len(seq) - n + 1)
                 if not (n == 1 and seq[i] in "<>")]  # fmt: skip
        ids = phone_ngram_ids(phones)
        assert len(ids) == len(grams)
        for g, i in zip(grams, ids):
            assert seen.setdefault(g, i) == i
            assert 0 <= i < phone_rows()
    assert len(set(seen.values())) == len(seen)
    assert phone_rows() == 41 + 41**2 + 41**3
    with pytest.raises(ValueError, match="'QQ' is not an ARPAbet phone"):
        phone_ngram_ids(["K", "QQ"])


def test_views_change_the_bags_as_expected():
    words = ["cat", "there"]
    letters, lo = tokenize_words(words, 1024)
    phones, po = tokenize_words(words, 1024, views="phones")
    both, bo = tokenize_words(words, 1024, views="letters+phones")
    p = get_pronouncer()
    assert int(lo[1]) == len(letter_ngrams("cat")) and int(po[1]) == len(phone_ngram_ids(p.pronounce("cat")))
    assert (phones < phone_rows()).all()  # phones alone: the table is the phone block only
    for v in range(2):
        l_ids = letters[lo[v] : lo[v + 1]]
        p_ids = phones[po[v] : po[v + 1]]
        b_ids = both[bo[v] : bo[v + 1]]
        # letters+phones = the letter bag, then the phone bag moved past the 1024 letter buckets
        assert torch.equal(b_ids, torch.cat([l_ids, p_ids + 1024]))
        assert (l_ids < 1024).all() and (b_ids[len(l_ids) :] >= 1024).all()
    with pytest.raises(ValueError, match="unknown spelling view 'sounds'.*letters, phones, letters\\+phones"):
        tokenize_words(words, 1024, views="sounds")
    with pytest.raises(ValueError, match="unknown spelling view"):
        LetterNgramEncoder(**SMALL, spelling_views="phonemes")


def test_homophones_meet_in_the_phone_view():
    """"their" / "there" have the same phones: equal embeddings in the phone view (any
    initialisation), and with letters+phones their bags overlap far more than by letters."""
    with torch.no_grad():
        e = _encoder("phones").encode_words(["their", "there", "banana"])
    assert torch.allclose(e[0], e[1]) and float(e[0] @ e[2]) < 0.99

    def overlap(view):
        ids, off = tokenize_words(["their", "there"], 1024, views=view)
        a, b = set(ids[off[0] : off[1]].tolist()), set(ids[off[1] : off[2]].tolist())
        return len(a & b) / len(a | b)

    assert overlap("phones") == 1.0
    assert overlap("letters+phones") > overlap("letters") + 0.1  # 0.45 against 0.29


def test_view_and_pronunciation_source_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    acoustic = AcousticWordEncoder(dim=16, channels=24, num_blocks=2).eval()
    letters = _encoder("letters+phones")
    save_embedder(tmp_path / "best.pt", acoustic, letters, {"spelling_views": "letters+phones"})
    _, ckpt = read_embedder_checkpoint(tmp_path)
    recorded = ckpt["letters_config"]
    assert recorded["spelling_views"] == "letters+phones"
    assert recorded["pronunciation"]["lexicon_sha256"] == get_pronouncer().lexicon.sha256
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same source: no warning
        _, loaded, _ = load_embedder(tmp_path)
    assert loaded.spelling_views == "letters+phones"
    words = ["cat", "there", "o'clock"]
    with torch.no_grad():
        assert torch.equal(loaded.encode_words(words), letters.encode_words(words))
    # a checkpoint trained with other phones: loading warns
    ckpt["letters_config"]["pronunciation"] = {**recorded["pronunciation"], "lexicon_sha256": "f" * 64}
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.warns(PronunciationMismatchWarning, match="trained with 'ffff"):
        load_embedder(tmp_path / "other.pt")


def test_letters_configs_are_unchanged_so_old_checkpoints_load_as_letters(tmp_path):
    letters = _encoder("letters")
    assert "spelling_views" not in letters.config and letters.ngrams.num_embeddings == 1024
    acoustic = AcousticWordEncoder(dim=16, channels=24, num_blocks=2).eval()
    save_embedder(tmp_path / "best.pt", acoustic, letters)
    _, loaded, _ = load_embedder(tmp_path)
    assert loaded.spelling_views == "letters" and loaded.pronouncer is None


def test_training_config_and_cli_choose_the_view():
    cfg = parse_args(["--train", "a.pt", "--dev", "b.pt", "--out", "o", "--spelling-views", "letters+phones",
                      "--near-negatives", "3", "--dim", "16", "--num-buckets", "1024", "--ngram-dim", "8",
                      "--letter-hidden", "16", "--channels", "8", "--num-blocks", "1"])  # fmt: skip
    assert cfg.spelling_views == "letters+phones" and cfg.near_negatives == 3
    _, letters = build_encoders(cfg)
    assert letters.spelling_views == "letters+phones"
    assert letters.ngrams.num_embeddings == 1024 + phone_rows()
    with pytest.raises(SystemExit):
        parse_args(["--train", "a", "--dev", "b", "--out", "o", "--spelling-views", "sounds"])
    assert TrainConfig(train="", dev="", out="").spelling_views == "letters"


def test_zeroing_untrained_rows_keeps_the_phone_rows_of_the_vocabulary():
    enc = _encoder("letters+phones")
    kept = enc.zero_untrained_buckets_(["cat", "cap"])
    ids, _ = enc.tokenize(["cat", "cap"])
    assert kept == len(set(ids.tolist()))
    rows = enc.ngrams.weight.detach().abs().sum(1) > 0
    assert rows[ids].all() and int(rows.sum()) == kept


def test_selected_bags_equal_tokenizing_the_words_again():
    enc = _encoder("letters+phones")
    vocab = ["cat", "there", "their", "banana", "ghost"]
    ids, offsets = enc.tokenize(vocab)
    pick = torch.tensor([3, 1])
    with torch.no_grad():
        assert torch.allclose(enc(*select_bags(ids, offsets, pick)), enc.encode_words(["banana", "there"]))


@needs_espeak
def test_a_phone_view_run_with_near_negatives_trains_records_and_rescoring_embeds_the_same(tmp_path):
    """Made-up training words (G2P pronounces them); the checkpoint holds the view, and the
    loaded encoder (what Rescorer and the evaluation use) embeds words like training did."""
    import json

    from conftest import TINY_EMBEDDER
    from synthetic_data import random_words, write_synthetic_word_segments
    from rescorer.training.train_embeddings import train

    words = ["cat", "cap", "cut", "cot", "bat", "dog", "dot", "dig", "planet", "plant", "there", "their"]
    words += random_words(20, seed=1)  # made-up words: pronounced by G2P
    write_synthetic_word_segments(str(tmp_path / "train.pt"), words, segments_per_word=3, seed=1)
    write_synthetic_word_segments(str(tmp_path / "dev.pt"), words[:20], segments_per_word=2, seed=2)
    out = tmp_path / "exp"
    config = TrainConfig(train=str(tmp_path / "train.pt"), dev=str(tmp_path / "dev.pt"), out=str(out), epochs=1,
                         spelling_views="letters+phones", near_negatives=2, **TINY_EMBEDDER)  # fmt: skip
    train(config)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["num_near_negatives"] > 0
    _, letters, cfg = load_embedder(out)
    assert cfg["spelling_views"] == "letters+phones" and letters.spelling_views == "letters+phones"
    assert letters.config["pronunciation"]["g2p"] == "espeak"
    from rescorer.rescore import Rescorer

    rescorer = Rescorer.from_dir(out, device="cpu")
    with torch.no_grad():
        assert torch.allclose(rescorer.spelling_embeddings(words[:3]).cpu(), letters.encode_words(words[:3]))
    ids, _ = letters.tokenize(words[:3])
    assert (ids >= config.num_buckets).any()  # phone rows in the bags of made-up words
