"""Near-spelling / near-pronunciation negatives: the deletion index, the table, the loss's use of it."""

import random
import time

import kaldialign
import pytest
import torch

from rescorer.models import AcousticWordEncoder, LetterNgramEncoder
from rescorer.training.near_negatives import deletion_keys, edit_neighbours, near_negative_table
from rescorer.training.ranking import JointEmbeddingModel


def test_deletion_keys():
    assert deletion_keys("cat", 1) == {"cat", "at", "ct", "ca"}
    assert deletion_keys("ab", 2) == {"ab", "a", "b", ""}


def test_neighbours_of_cat():
    words = ["cat", "cap", "cut", "cart", "at", "dog", "dot", "scatter", "planet", "plant", "plans", "cats"]
    nb = edit_neighbours(words)
    near = {words[i]: {words[j] for j in row} for i, row in enumerate(nb)}
    assert near["cat"] == {"cap", "cut", "cart", "at", "cats"}  # not "dot": 3 letters, 2 edits
    assert "cat" in near["cap"] and "cat" in near["cart"]  # symmetric
    assert near["planet"] >= {"plant", "plans"}  # "plans" is 2 edits away, allowed for 5+ letters
    assert near["dog"] == {"dot"}


def test_index_finds_exactly_the_pairs_a_full_comparison_finds():
    rng = random.Random(0)
    words = sorted({"".join(rng.choice("abcde") for _ in range(rng.randint(2, 7))) for _ in range(400)})
    nb = edit_neighbours(words)
    for i, a in enumerate(words):
        expect = []
        for j, b in enumerate(words):
            if i == j:
                continue
            limit = 2 if min(len(a), len(b)) >= 4 else 1
            if kaldialign.edit_distance(a, b)["total"] <= limit:
                expect.append(j)
        assert nb[i] == expect, a


def test_phone_neighbours_and_homophones():
    words = ["cat", "kit", "to", "too", "two", "tea", "knight", "night", "nine"]
    phones = [("K", "AE", "T"), ("K", "IH", "T"), ("T", "UW"), ("T", "UW"), ("T", "UW"), ("T", "IY"),
              ("N", "AY", "T"), ("N", "AY", "T"), ("N", "AY", "N")]  # fmt: skip
    table = near_negative_table(words, phones)
    near = {words[i]: {words[j] for j in row} for i, row in enumerate(table)}
    assert near["cat"] == {"kit"}  # by phones (K AE T / K IH T); their letters are 2 edits apart
    assert near["to"] == {"tea"}  # "too" (letters 1 edit) and "two" sound the same: never negatives
    assert "night" not in near["knight"] and near["knight"] >= {"nine"}  # homophones out, N AY N in
    with pytest.raises(ValueError, match="2 pronunciations for 9 words"):
        near_negative_table(words, phones[:2])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="sequence 1 is empty"):
        edit_neighbours(["cat", ""])
    with pytest.raises(ValueError, match="max_distance must be >= 1"):
        edit_neighbours(["cat"], max_distance=0)


def test_fast_on_thousands_of_words():
    rng = random.Random(1)
    letters = "etaoinshrdlucmfwypvbgk"
    words = sorted({"".join(rng.choice(letters) for _ in range(rng.randint(3, 10))) for _ in range(5000)})
    t0 = time.process_time()
    nb = edit_neighbours(words)
    assert time.process_time() - t0 < 20  # ~1 s on one core; a V^2 comparison would take minutes
    assert len(nb) == len(words)


def test_the_ranking_loss_gets_near_negatives_of_the_batch_words():
    words = ["cat", "cap", "cut", "dog", "dot", "zebra", "planet", "plant"]
    torch.manual_seed(0)
    model = JointEmbeddingModel(
        AcousticWordEncoder(dim=16, channels=24, num_blocks=2),
        LetterNgramEncoder(dim=16, num_buckets=1024, ngram_dim=16, hidden=32),
        words, hard_negatives=0, near_negatives=2,
        near_table=near_negative_table(words),
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    near = model.near_negatives_of(torch.tensor([0, 3]), g)  # cat: cap, cut (2 of 2); dog: dot
    assert sorted(near.tolist()) == [1, 2, 4]
    feats = torch.randn(2, 20, 80)
    out = model(feats, torch.tensor([20, 20]), torch.tensor([0, 5]), mining_seed=3)
    # batch words cat, zebra + near negatives cap, cut (zebra has none); no mined ones (hard_negatives=0)
    assert float(out["num_candidates"]) == 4 and float(out["num_near_negatives"]) == 2
    out["loss"].backward()
    model.zero_grad()
    off = JointEmbeddingModel(model.acoustic, model.letters, words, hard_negatives=0)
    assert float(off(feats, torch.tensor([20, 20]), torch.tensor([0, 5]))["num_candidates"]) == 2
    with pytest.raises(ValueError, match="near_negatives must be >= 0"):
        JointEmbeddingModel(model.acoustic, model.letters, words, near_negatives=-1)


def test_near_negatives_chosen_with_a_seed_and_capped():
    words = ["cat", "cap", "cut", "cot", "can", "car", "bat"]
    model = JointEmbeddingModel(
        AcousticWordEncoder(dim=16, channels=24, num_blocks=2),
        LetterNgramEncoder(dim=16, num_buckets=1024, ngram_dim=16, hidden=32),
        words, near_negatives=2, near_table=near_negative_table(words),
    )  # fmt: skip
    a = model.near_negatives_of(torch.tensor([0]), torch.Generator().manual_seed(5))
    b = model.near_negatives_of(torch.tensor([0]), torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and len(a) == 2 and set(a.tolist()) <= {1, 2, 3, 4, 5, 6}
