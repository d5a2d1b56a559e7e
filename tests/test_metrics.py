"""Embedding metrics against brute-force references and cases with known answers."""

import numpy as np
import pytest
import torch

from rescorer.metrics import (
    NoPositivePairsError,
    average_precision,
    crossview_ap,
    precision_at_k,
    same_different_ap,
)


def _unit_np(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _ap_reference(scores, positive):
    """Each positive gets the precision among items scoring >= its score; mean over positives."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    precisions = []
    for s in scores[positive]:
        above = scores >= s
        precisions.append(positive[above].sum() / above.sum())
    return float(np.mean(precisions))


def _same_different_reference(emb, labels):
    e = _unit_np(emb)
    scores, pos = [], []
    for i in range(len(e)):
        for j in range(i + 1, len(e)):
            scores.append(float(np.float32(e[i] @ e[j])))
            pos.append(labels[i] == labels[j])
    return _ap_reference(scores, pos)


def _quantised(x, step=0.5):
    """Coarse values so that many pair scores tie exactly (tests the tie handling)."""
    return torch.round(x / step) * step


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_different_ap_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 6, (40,), generator=g)
    emb = torch.randn(40, 5, generator=g) + 0.8 * torch.nn.functional.one_hot(labels, 6)[:, :5].float()
    got = same_different_ap(emb, labels)
    assert got == pytest.approx(_same_different_reference(emb.numpy(), labels.tolist()), abs=1e-6)


def test_same_different_ap_with_ties_matches_brute_force():
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 3, (30,), generator=g)
    emb = _quantised(torch.randn(30, 2, generator=g) + labels[:, None].float())
    emb[emb.norm(dim=1) == 0] = 1.0
    e = torch.nn.functional.normalize(emb, dim=1)
    sims = (e @ e.T).numpy()
    iu = np.triu_indices(30, 1)
    pos = (labels[:, None] == labels[None, :]).numpy()[iu]
    assert len(np.unique(sims[iu])) < len(sims[iu]) / 2  # many ties indeed
    assert same_different_ap(emb, labels) == pytest.approx(_ap_reference(sims[iu], pos), abs=1e-6)


def test_same_different_ap_perfect_separation_is_one():
    labels = ["cat", "cat", "dog", "dog", "dog", "emu"]
    centers = {"cat": [1.0, 0, 0], "dog": [0, 1.0, 0], "emu": [0, 0, 1.0]}
    emb = torch.tensor([centers[w] for w in labels]) + 0.01 * torch.randn(6, 3)
    assert same_different_ap(emb, labels) == pytest.approx(1.0)


def test_same_different_ap_inverted_ranking_known_value():
    # pairs: (0,1) same label but orthogonal (score 0); (0,2), (1,2) different, score > 0.
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # ranking: two negatives (0.707) then the positive (0): precision 1/3
    assert same_different_ap(emb, [7, 7, 8]) == pytest.approx(1 / 3)


def test_same_different_ap_without_positive_pairs_raises():
    with pytest.raises(NoPositivePairsError, match="no positive pairs"):
        same_different_ap(torch.randn(4, 3), [0, 1, 2, 3])
    with pytest.raises(NoPositivePairsError):
        same_different_ap(torch.randn(1, 3), [0])


def test_average_precision_ties_credit_the_whole_group():
    # one positive and one negative tied at the top: precision 1/2 for that positive
    assert average_precision(torch.tensor([0.5, 0.5, 0.1]), torch.tensor([True, False, True])) == pytest.approx(
        (0.5 + 2 / 3) / 2
    )
    with pytest.raises(NoPositivePairsError):
        average_precision(torch.tensor([0.3]), torch.tensor([False]))


def test_crossview_ap_matches_brute_force_with_string_labels():
    g = torch.Generator().manual_seed(3)
    words = ["ab", "cd", "ef", "gh", "ij"]
    audio_labels = [words[i] for i in torch.randint(0, 5, (25,), generator=g).tolist()]
    audio = torch.randn(25, 4, generator=g)
    word_emb = torch.randn(5, 4, generator=g)
    a, w = _unit_np(audio.numpy()), _unit_np(word_emb.numpy())
    scores = [float(np.float32(a[i] @ w[j])) for i in range(25) for j in range(5)]
    pos = [audio_labels[i] == words[j] for i in range(25) for j in range(5)]
    assert crossview_ap(audio, audio_labels, word_emb, words) == pytest.approx(_ap_reference(scores, pos), abs=1e-6)


def test_crossview_ap_perfect_and_no_positive():
    word_emb = torch.eye(4)
    audio_labels = [0, 1, 2, 3, 3, 1]
    audio = word_emb[audio_labels] + 0.05 * torch.rand(6, 4)
    assert crossview_ap(audio, audio_labels, word_emb, [0, 1, 2, 3]) == pytest.approx(1.0)
    with pytest.raises(NoPositivePairsError):
        crossview_ap(audio, audio_labels, word_emb, [10, 11, 12, 13])


def _p_at_k_reference(audio, ids, vocab, k):
    sims = _unit_np(audio) @ _unit_np(vocab).T
    ranks = np.argsort(-sims, axis=1)[:, :k]
    return float(np.mean([ids[i] in ranks[i] for i in range(len(ids))]))


def test_precision_at_k_matches_brute_force_and_chunking():
    g = torch.Generator().manual_seed(11)
    vocab = torch.randn(50, 8, generator=g)
    ids = torch.randint(0, 50, (200,), generator=g)
    audio = vocab[ids] + 0.9 * torch.randn(200, 8, generator=g)
    got = precision_at_k(audio, ids, vocab, ks=(1, 5, 10))
    chunked = precision_at_k(audio, ids, vocab, ks=(1, 5, 10), chunk_size=7)
    assert got == chunked
    for k in (1, 5, 10):
        assert got[k] == pytest.approx(_p_at_k_reference(audio.numpy(), ids.tolist(), vocab.numpy(), k))
    assert 0.0 < got[1] < got[5] <= got[10] <= 1.0


def test_precision_at_k_known_cases():
    vocab = torch.eye(3)
    assert precision_at_k(3.0 * vocab, torch.arange(3), vocab, ks=(1,)) == {1: 1.0}  # scale-invariant
    audio = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.5], [0.5, 0.0, 1.0]])
    # rankings: row 0 -> 0,1,2; row 1 -> 1,2,0; row 2 -> 2,0,1
    truth = torch.tensor([1, 0, 1])  # ranks 2, 3, 3
    assert precision_at_k(audio, truth, vocab, ks=(1, 2, 10)) == {1: 0.0, 2: pytest.approx(1 / 3), 10: 1.0}
    with pytest.raises(ValueError):
        precision_at_k(vocab, torch.tensor([0, 1, 3]), vocab)


def test_roc_auc_matches_pair_counting_with_ties():
    from rescorer.metrics import roc_auc

    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, size=40).astype(float)  # many ties
    positive = rng.random(40) < 0.4
    p, n = scores[positive], scores[~positive]
    brute = ((p[:, None] > n[None, :]).sum() + 0.5 * (p[:, None] == n[None, :]).sum()) / (len(p) * len(n))
    assert roc_auc(scores, positive) == pytest.approx(brute)
    assert roc_auc([3.0, 2.0, 1.0], [True, True, False]) == 1.0
    assert roc_auc([1.0, 2.0, 3.0], [True, True, False]) == 0.0
    assert roc_auc([1.0, 1.0], [True, False]) == 0.5
    with pytest.raises(NoPositivePairsError):
        roc_auc([1.0, 2.0], [True, True])
