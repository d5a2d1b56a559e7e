"""Pure torch helpers on concatenated frames (``feats`` [N, F] holding many segments or
utterances back to back), shared by the in-memory data sets of training and evaluation."""

from __future__ import annotations

from typing import Tuple

import torch


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
