"""benchmarks/whisper_prompt_bias.py: which list words a prompt source offers Whisper, and how
its transcript's list words are counted."""

import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import whisper_prompt_bias as script  # noqa: E402


class _Record:
    """Two arcs: "cat" over frames 0-10, "<unk>" over 10-20."""
    start_frame = torch.tensor([0, 10], dtype=torch.int32)
    end_frame = torch.tensor([10, 20], dtype=torch.int32)
    arcs = torch.tensor([[0, 1, 1], [1, 2, 2]], dtype=torch.int32)
    frame_shift = 0.02


class _Rescorer:
    """The first span sounds like "zebra", the second like "yak"; "cat" is half of the first."""
    frame_shift = 0.02
    table = {"zebra": [1.0, 0.0, 0.0], "cat": [1.0, 1.0, 0.0], "yak": [0.0, 0.0, 1.0], "ant": [0.0, 1.0, 0.0]}

    def span_embeddings(self, feats, spans):
        return torch.tensor([[1.0, 0.0, 0.0] if a == 0 else [0.0, 0.0, 1.0] for a, _ in spans])

    def spelling_embeddings(self, words):
        return torch.tensor([self.table[w] for w in words])


def test_the_margin_source_offers_only_list_words_that_beat_the_arcs_own_word():
    words = ["zebra", "yak", "ant"]
    vocab = torch.nn.functional.normalize(torch.tensor([_Rescorer.table[w] for w in words]), dim=-1)
    id2word = {1: "cat", 2: "<unk>"}
    feats = torch.zeros(20, 3)
    # "zebra" leads "cat" by 1 - 0.71 on the first span; "yak" faces only <unk> (no spelling, no
    # rival) on the second: no arc word to beat there, so it is not offered
    got = script.margin_candidates(_Rescorer(), feats, _Record(), id2word, words, vocab, k=3, margin=0.1)
    assert got == ["zebra"]
    assert script.margin_candidates(_Rescorer(), feats, _Record(), id2word, words, vocab, k=3, margin=0.5) == []
    assert script.margin_candidates(_Rescorer(), feats, _Record(), id2word, words, vocab, k=0, margin=0.1) == []


def test_prompted_list_words_are_counted_right_wrong_and_new():
    ref = ["the", "zebra", "ran"]
    # the unprompted transcript had none of them: every copy is new, one "zebra" right, the rest wrong
    c = script.count(["the", "zebra", "zebra", "yakked"], ref, ["the", "zebras"], {"zebra", "yakked"}, 4)
    assert c == {"right": 1, "wrong": 2, "new_right": 1, "new_wrong": 2}
    # had it already written "zebra" right, the prompt added only a wrong copy
    c = script.count(["the", "zebra", "zebra"], ref, ["the", "zebra"], {"zebra"}, 4)
    assert c == {"right": 1, "wrong": 1, "new_right": 0, "new_wrong": 1}
    # words under the least letters are not counted
    assert script.count(["yak"], ["yak"], [], {"yak"}, 4) == {}


def _planted(T, spelled):
    """[T, 29] CTC log-probs: blank everywhere but the words of ``spelled`` ({word: first frame}),
    one letter every other frame, then |."""
    from rescorer.tokens import BLANK_ID, TOKEN_ID

    lp = torch.full((T, 29), -9.0)
    lp[:, BLANK_ID] = 0.0
    for word, start in spelled.items():
        for i, tok in enumerate(list(word) + ["|"]):
            lp[start + 2 * i] = -9.0
            lp[start + 2 * i, TOKEN_ID[tok]] = 0.0
    return lp.log_softmax(1)


def test_the_ctc_source_offers_the_spotted_list_words_best_first():
    from rescorer.decoding.word_spotting import SpellingTrie

    trie = SpellingTrie(["zebra", "yak", "ant", "koala"])
    lp = _planted(60, {"yak": 2, "zebra": 20})
    # both spoken list words, the longer first (the spotter's score adds a bonus per token);
    # "ant" and "koala" were not said
    assert script.ctc_candidates(lp, trie, 5) == ["zebra", "yak"]
    assert script.ctc_candidates(lp, trie, 1) == ["zebra"]
    assert script.ctc_candidates(_planted(60, {}), trie, 5) == []
