"""Pure torch helpers on concatenated frames (``feats`` [N, F] holding many segments or
utterances back to back), shared by the in-memory data sets of training and evaluation, and
the frame-budget batching that decoding and rescoring share."""

from __future__ import annotations

from typing import Dict, List, Tuple, TypeVar

import torch

K = TypeVar("K")


def feature_stats(feats: torch.Tensor, chunk_frames: int = 1 << 20) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-bin mean and standard deviation over all frames of ``feats`` [N, F] (float64 sums)."""
    total = torch.zeros(feats.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, len(feats), chunk_frames):
        chunk = feats[start : start + chunk_frames].double()
        total += chunk.sum(0)
        total_sq += (chunk * chunk).sum(0)
    n = max(len(feats), 1)
    mean = total / n
    var = (total_sq / n - mean * mean).clamp(min=0)
    return mean.float(), var.sqrt().float()


def gather_padded(feats: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """float32 [B, max(lengths), F]: rows ``starts[b] .. starts[b] + lengths[b]`` of ``feats``, zero-padded.

    One vectorised gather, no Python loop over items.
    """
    steps = torch.arange(int(lengths.max()))
    mask = steps[None, :] < lengths[:, None]
    frame = (starts[:, None] + steps[None, :]).clamp(max=len(feats) - 1)
    return feats[frame].float() * mask[:, :, None]


def batches_by_frames(lengths: Dict[K, int], max_frames: int) -> List[List[K]]:
    """Utterance keys in batches whose padded size (utterances x longest) stays within
    ``max_frames`` (one utterance per batch at least); shortest first (ties by key), so
    similar lengths go together and little is padded. Shared by decoding and rescoring."""
    order = sorted(lengths, key=lambda u: (lengths[u], u))
    batches: List[List[K]] = []
    cur: List[K] = []
    for u in order:
        if cur and (len(cur) + 1) * lengths[u] > max_frames:
            batches.append(cur)
            cur = []
        cur.append(u)
    if cur:
        batches.append(cur)
    return batches
