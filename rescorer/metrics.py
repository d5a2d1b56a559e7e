"""Embedding metrics: precision@k against a vocabulary and same-different average precision.

All similarities are cosines (embeddings are L2-normalised here, whatever the input).

- ``precision_at_k``: for each audio segment, rank a candidate vocabulary of spellings;
  P@k is the fraction of segments whose true word is among the top k. This is what
  rescoring needs: the right word must beat its competitors.
- ``same_different_ap``: the standard acoustic-word-embedding evaluation (Carlin et al.
  2011; Kamper et al. 2016): every pair of segments is scored by cosine, a pair is
  positive when both segments are the same word, and the average precision of that
  ranking of all N(N-1)/2 pairs is reported.
- ``crossview_ap``: the same over all (audio segment, spelling) pairs: positive when the
  segment is an instance of the spelling.
- ``roc_auc``: how well a score parts right items from wrong ones, whatever their shares
  (e.g. the evidence for a recogniser's proposed words).

Average precision is computed from one sort, tie-aware: pairs with equal scores form one
threshold, and each positive is credited with the precision at its score's threshold,
(positives scoring >= s) / (pairs scoring >= s). This equals sklearn's
``average_precision_score`` without depending on it.
"""

from __future__ import annotations

from typing import Dict, Hashable, Iterable, List, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

Labels = Union[torch.Tensor, np.ndarray, Sequence[Hashable]]


class NoPositivePairsError(ValueError):
    """Average precision is undefined: no pair of items shares a label."""


def _as_label_ids(*label_lists: Labels) -> List[torch.Tensor]:
    """Map labels of any hashable kind (ints, spellings) to shared int64 ids."""
    table: Dict[Hashable, int] = {}
    out = []
    for labels in label_lists:
        if isinstance(labels, torch.Tensor):
            labels = labels.tolist()
        elif isinstance(labels, np.ndarray):
            labels = labels.tolist()
        out.append(torch.tensor([table.setdefault(x, len(table)) for x in labels], dtype=torch.long))
    return out


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(torch.as_tensor(x).float(), dim=-1)


def average_precision(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Tie-aware average precision of a ranking by ``scores`` (descending) of items.

    scores [N] float, positive [N] bool. Raises NoPositivePairsError without positives.
    """
    scores = scores.reshape(-1).float()
    positive = positive.reshape(-1).bool()
    num_pos = int(positive.sum())
    if num_pos == 0:
        raise NoPositivePairsError("average precision: there are no positive items")
    order = torch.argsort(scores, descending=True)
    s = scores[order]
    tp = torch.cumsum(positive[order].long(), 0)
    # last index of each run of equal scores: precision is evaluated at group ends
    is_end = torch.ones_like(s, dtype=torch.bool)
    is_end[:-1] = s[1:] != s[:-1]
    ends = torch.nonzero(is_end).reshape(-1)
    tp_end = tp[ends]
    precision = tp_end.double() / (ends + 1).double()
    new_pos = torch.diff(tp_end, prepend=torch.zeros(1, dtype=torch.long)).double()
    return float((new_pos * precision).sum() / num_pos)


def roc_auc(scores, positive) -> float:
    """Tie-aware area under the ROC curve: the chance that a random positive item scores above a
    random negative one (ties count half). Why beside ``average_precision``: AP moves with the
    share of positives, AUC does not, so two evidences over different item sets compare by AUC.
    Raises NoPositivePairsError without positives or without negatives."""
    s = torch.as_tensor(scores).reshape(-1).double()
    pos = torch.as_tensor(positive).reshape(-1).bool()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise NoPositivePairsError("ROC AUC needs both positive and negative items")
    order = torch.argsort(s)
    sorted_s = s[order]
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, s.numel() + 1, dtype=torch.float64)
    # equal scores share their mean rank
    _, inverse, counts = torch.unique_consecutive(sorted_s, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks[order] = mean_rank[inverse]
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def precision_at_k(
    audio_emb: torch.Tensor,
    word_ids: torch.Tensor,
    vocab_emb: torch.Tensor,
    ks: Iterable[int] = (1, 10),
    chunk_size: int = 4096,
) -> Dict[int, float]:
    """Fraction of segments whose true word ranks in the top k of ``vocab_emb`` by cosine.

    audio_emb [N, D], word_ids [N] (row of the true spelling in vocab_emb), vocab_emb [V, D].
    Returns {k: P@k}. k larger than V counts as V (always a hit). A tie with the true
    word counts in its favour only as far as ``torch.topk`` orders it, which for
    continuous scores does not matter.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError("ks must be positive integers")
    audio = _unit(audio_emb)
    vocab = _unit(vocab_emb).to(audio.device)
    targets = torch.as_tensor(word_ids, dtype=torch.long).to(audio.device)
    if len(targets) != len(audio):
        raise ValueError("word_ids must have one entry per audio embedding")
    if len(audio) == 0:
        raise ValueError("precision_at_k: no audio embeddings")
    if bool(((targets < 0) | (targets >= len(vocab))).any()):
        raise ValueError("word_ids must index rows of vocab_emb")
    kmax = min(max(ks), len(vocab))
    hits = {k: 0 for k in ks}
    for start in range(0, len(audio), chunk_size):
        sims = audio[start : start + chunk_size] @ vocab.T
        top = sims.topk(kmax, dim=1).indices
        match = top == targets[start : start + chunk_size, None]
        for k in ks:
            hits[k] += int(match[:, : min(k, kmax)].any(dim=1).sum())
    return {k: hits[k] / len(audio) for k in ks}


def same_different_ap(embeddings: torch.Tensor, labels: Labels) -> float:
    """Same-different AP over all unordered pairs of segments (cosine similarity).

    embeddings [N, D]; labels: N word labels (ints or strings). Memory is O(N^2) for the
    pair scores (N = 10k: 50M pairs, about 2 GB at the peak); subsample larger sets. Raises
    NoPositivePairsError when no two segments share a label.
    """
    emb = _unit(embeddings)
    (lab,) = _as_label_ids(labels)
    if len(lab) != len(emb):
        raise ValueError("labels must have one entry per embedding")
    if len(emb) < 2:
        raise NoPositivePairsError("same-different AP needs at least two segments")
    upper = torch.ones(len(emb), len(emb), dtype=torch.bool).triu(diagonal=1)
    lab = lab.to(emb.device)
    positive = (lab[:, None] == lab[None, :])[upper.to(emb.device)]
    if not bool(positive.any()):
        raise NoPositivePairsError(
            "same-different AP: no two segments share a label, so there are no positive pairs"
        )
    scores = (emb @ emb.T)[upper.to(emb.device)]
    return average_precision(scores.cpu(), positive.cpu())


def crossview_ap(
    audio_emb: torch.Tensor, audio_labels: Labels, word_emb: torch.Tensor, word_labels: Labels
) -> float:
    """AP over all (audio segment, spelling) pairs; positive when the labels match.

    audio_emb [N, D] with N labels, word_emb [V, D] with V labels (e.g. the spellings
    themselves). Memory O(N * V). Raises NoPositivePairsError when no segment's label is
    among the word labels.
    """
    audio = _unit(audio_emb)
    words = _unit(word_emb).to(audio.device)
    a_lab, w_lab = _as_label_ids(audio_labels, word_labels)
    if len(a_lab) != len(audio) or len(w_lab) != len(words):
        raise ValueError("one label per embedding is needed on both sides")
    positive = a_lab[:, None] == w_lab[None, :]
    if not bool(positive.any()):
        raise NoPositivePairsError("cross-view AP: no audio label occurs among the word labels")
    sims = (audio @ words.T).cpu()
    return average_precision(sims, positive)
