"""Acoustic word encoder over a pretrained frontend's contextual states (e.g. Whisper's):
frame-local layers, then pooling over the word's span.

Why this shape: the frontend's states already carry context, so the encoder needs no
convolution over time; and because every layer before the pooling is frame-local, the
states of a whole utterance can be transformed ONCE and any number of spans pooled from
one sparse product (``encode_spans``): a lattice's thousands of overlapping spans
cost one pass over the utterance. Training on isolated word segments (``forward``) and
rescoring spans of an utterance compute exactly the same function (tested).

Pooling: the mean over the whole span and over its ``parts`` equal parts (three by default,
each at least one frame), so the order of the word's sounds is kept coarsely; then an MLP to
``dim``, unit length.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rescorer.models.registry import ACOUSTIC_ENCODERS

PARTS = 3  # default: the whole span + three thirds
# torch 2 asks whether to check a CSR matrix's invariants: ours holds by construction (rows in
# order, columns ascending within each row, all inside), so no check
_CSR_OPTIONS = {"check_invariants": False} if int(torch.__version__.split(".")[0]) >= 2 else {}


def part_bounds(starts: torch.Tensor, ends: torch.Tensor, parts: int = PARTS):
    """[N, 1 + parts] start and end frames of the whole span and of its ``parts`` equal parts
    (each non-empty)."""
    length = (ends - starts).clamp(min=1)
    cuts = [starts + torch.div(i * length, parts, rounding_mode="floor") for i in range(parts + 1)]
    s = [starts] + [torch.minimum(cuts[i], ends - 1) for i in range(parts)]
    e = [starts + length] + [torch.maximum(cuts[i + 1], s[i + 1] + 1) for i in range(parts)]
    return torch.stack(s, 1), torch.stack(e, 1)


@ACOUSTIC_ENCODERS.register("state_pooling")
class StatePoolingEncoder(nn.Module):
    """Contextual frame states [T, feature_dim] of a word -> unit vector [dim]."""

    one_pass_exact = True  # spans pooled from one utterance pass equal isolated segments (tested)

    def __init__(
        self,
        feature_dim: int = 384,
        frame_shift: float = 0.02,
        dim: int = 256,
        hidden: int = 512,
        max_frames: int = 100,
        dropout: float = 0.1,
        feature_spec: Optional[Dict[str, Any]] = None,
        parts: int = PARTS,
    ):
        super().__init__()
        if int(parts) < 1:
            raise ValueError(f"parts must be at least 1, got {parts}")
        self.config: Dict[str, Any] = dict(
            feature_dim=feature_dim, frame_shift=frame_shift, dim=dim, hidden=hidden, max_frames=max_frames,
            dropout=dropout, feature_spec=feature_spec,
        )
        if int(parts) != PARTS:  # recorded when not the default (checkpoints before it had thirds)
            self.config["parts"] = int(parts)
        self.parts = int(parts)
        self.feature_dim, self.frame_shift, self.dim, self.max_frames = feature_dim, frame_shift, dim, max_frames
        self.feature_spec = feature_spec  # the frontend that makes its input (FeatureSpec.to_json)
        self.chunk_frames = 4096  # rows per frame-layer call in utterance_states (cache-sized; any value gives the same)
        self._inference_layers: list = []  # lower-precision copies of ``frame`` and ``head`` (set_compute_dtype); not parameters
        self.register_buffer("feat_mean", torch.zeros(feature_dim))
        self.register_buffer("feat_std", torch.ones(feature_dim))
        self.frame = nn.Sequential(nn.Linear(feature_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.GELU())
        self.head = nn.Sequential(nn.Linear((1 + self.parts) * hidden, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "StatePoolingEncoder":
        return cls(**config)

    @torch.no_grad()
    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feat_mean.copy_(mean.to(self.feat_mean))
        self.feat_std.copy_(std.to(self.feat_std).clamp(min=1e-5))

    def frame_states(self, feats: torch.Tensor) -> torch.Tensor:
        """The frame-local part: [..., T, feature_dim] -> [..., T, hidden]."""
        if feats.shape[-1] != self.feature_dim:
            raise ValueError(f"expected {self.feature_dim}-dim frames, got {tuple(feats.shape)}")
        return self.frame((feats.float() - self.feat_mean) / self.feat_std)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self._inference_layers[0][0].weight.dtype if self._inference_layers else torch.float32

    @torch.no_grad()
    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        """Precision of one-pass inference (``utterance_states`` and ``pool_spans``): float32,
        or bfloat16 matrix products from a copy of the trained weights (``models.precision``;
        the span means and the final normalisation stay float32). Training and ``forward``
        stay float32. Call it after moving the module to its device (the copy is made where
        the weights are)."""
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"compute dtype must be float32 or bfloat16, not {dtype}")
        if dtype == torch.float32:
            self._inference_layers = []
            return
        frame = copy.deepcopy(self.frame).eval()
        # the feature normalisation folded into the first layer (computed in float32, then cast):
        # W (x - m) / s + b = (W / s) x + (b - (W / s) m), one pass over the frames fewer
        first = frame[0]
        first.weight.div_(self.feat_std)
        first.bias.sub_(first.weight @ self.feat_mean)
        self._inference_layers = [frame.to(dtype), copy.deepcopy(self.head).eval().to(dtype)]

    def _inference_frame_states(self, feats: torch.Tensor) -> torch.Tensor:
        if not self._inference_layers:
            return self.frame_states(feats)
        if feats.shape[-1] != self.feature_dim:
            raise ValueError(f"expected {self.feature_dim}-dim frames, got {tuple(feats.shape)}")
        layers = self._inference_layers[0]  # normalisation folded in (set_compute_dtype)
        return layers(feats.to(layers[0].weight.dtype)).float()

    def _inference_head(self, means: torch.Tensor) -> torch.Tensor:
        if not self._inference_layers:
            return self.head(means)
        head = self._inference_layers[1]
        return head(means.to(head[0].weight.dtype)).float()

    def _pool_and_project(self, prefix: torch.Tensor, rows: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """prefix [R, T+1, H] cumulative sums; spans (row, start, end) -> unit vectors [N, dim]."""
        s, e = part_bounds(starts, ends, self.parts)
        r = rows[:, None].expand_as(s)
        sums = prefix[r, e] - prefix[r, s]
        means = sums / (e - s).unsqueeze(-1).to(sums.dtype)
        return F.normalize(self.head(means.flatten(1)), dim=-1)

    def _crop(self, starts: torch.Tensor, ends: torch.Tensor):
        """Spans longer than ``max_frames`` keep their middle ``max_frames`` (the conv encoder's rule)."""
        over = (ends - starts - self.max_frames).clamp(min=0)
        starts = starts + torch.div(over, 2, rounding_mode="floor")
        return starts, torch.minimum(ends, starts + self.max_frames)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Word segments feats [B, T, feature_dim], lengths [B] -> [B, dim] (training, batched)."""
        h = self.frame_states(feats)
        prefix = F.pad(h.cumsum(1), (0, 0, 1, 0))
        lengths = lengths.to(h.device).long().clamp(min=1, max=h.shape[1])
        starts, ends = self._crop(torch.zeros_like(lengths), lengths)
        return self._pool_and_project(prefix, torch.arange(len(h), device=h.device), starts, ends)

    @torch.no_grad()
    def utterance_states(self, utterances: Sequence[torch.Tensor]) -> "PooledStates":
        """The frame-local layers run ONCE over whole utterances ([T_i, feature_dim] each),
        packed end to end (no padding frames are computed) in groups of about ``chunk_frames``;
        spans are then pooled from them (``pool_spans``)."""
        dev = self.feat_mean.device
        lengths = torch.tensor([int(u.shape[0]) for u in utterances], dtype=torch.long)
        for u in utterances:
            if u.dim() != 2 or u.shape[-1] != self.feature_dim:
                raise ValueError(f"expected {self.feature_dim}-dim frames ([frames, {self.feature_dim}] utterances), "
                                 f"got {tuple(u.shape)}")
        h = torch.empty(int(lengths.sum()), self.frame[-2].out_features, device=dev)  # float32 (span means)
        group, start, size = [], 0, 0
        for i, u in enumerate(utterances):  # groups of whole utterances, about chunk_frames rows each
            group.append(u)
            size += int(u.shape[0])
            if size >= self.chunk_frames or i == len(utterances) - 1:
                x = group[0] if len(group) == 1 else torch.cat(group)
                h[start:start + size] = self._inference_frame_states(x.to(dev))
                group, start, size = [], start + size, 0
        return PooledStates(h, lengths.to(dev))

    @torch.no_grad()
    def pool_spans(self, states: "PooledStates", rows: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """Spans (utterance row, start, end frames) -> unit vectors [N, dim] on the CPU.

        Spans are clipped to their utterance; an empty span takes one frame; long ones keep
        their middle ``max_frames`` frames, as segments do in training. The part means are one
        sparse (spans x frames) product with the packed states (``part_means``): exact sums,
        no prefix-sum cancellation, and the cost of the frames the spans cover.
        """
        dev = states.frames.device
        rows, starts, ends = rows.to(dev).long(), starts.to(dev).long(), ends.to(dev).long()
        T = states.lengths[rows]
        starts = torch.minimum(starts.clamp(min=0), (T - 1).clamp(min=0))
        ends = torch.maximum(torch.minimum(ends, T), starts + 1)
        starts, ends = self._crop(starts, ends)
        base = states.offsets[rows]
        means = part_means(states.frames, starts + base, ends + base, self.parts)
        return F.normalize(self._inference_head(means.reshape(len(rows), -1)), dim=-1).cpu()

    @torch.no_grad()
    def encode_spans(self, states: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
        """One utterance's states [T, feature_dim] and spans [N, 2] (start, end frames) -> [N, dim].

        The frame-local layers run once over the utterance; the spans are pooled from them. Spans are clipped to the utterance; an empty span takes one frame.
        """
        was = self.training
        self.eval()
        try:
            pooled = self.utterance_states([states])
            spans = spans.long().reshape(-1, 2)
            return self.pool_spans(pooled, torch.zeros(len(spans), dtype=torch.long), spans[:, 0], spans[:, 1])
        finally:
            self.train(was)

    @torch.no_grad()
    def encode_segments(self, segments: Sequence[torch.Tensor], batch_size: int = 256,
                        device: Optional[torch.device] = None) -> torch.Tensor:
        """A list of [T_i, feature_dim] segments -> [N, dim] on the CPU, in input order."""
        was = self.training
        self.eval()
        try:
            dev = device or self.feat_mean.device
            out = []
            for i in range(0, len(segments), batch_size):
                chunk = segments[i:i + batch_size]
                lengths = torch.tensor([max(1, s.shape[0]) for s in chunk])
                x = torch.zeros(len(chunk), int(lengths.max()), self.feature_dim)
                for j, s in enumerate(chunk):
                    x[j, : s.shape[0]] = s
                out.append(self(x.to(dev), lengths.to(dev)).cpu())
        finally:
            self.train(was)
        return torch.cat(out) if out else torch.zeros(0, self.dim)


class PooledStates:
    """A batch of utterances' frame-local states packed end to end [sum T_i, hidden] (what
    ``StatePoolingEncoder.pool_spans`` reads), their lengths [B] and start offsets [B]."""

    def __init__(self, frames: torch.Tensor, lengths: torch.Tensor):
        self.frames, self.lengths = frames, lengths
        self.offsets = F.pad(lengths.cumsum(0), (1, 0))[:-1]


def span_means(frames: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Means of frames[start:end] for each (start, end) (each non-empty): [N, hidden].

    One sparse matrix (a row per span, 1/length on its frames) times the frames: the work
    is the number of frames the spans cover, and each mean is summed directly (no prefix
    sums, whose float32 differences lose precision over long packed batches; and torch's
    CPU cumsum over frames is slower than this product).
    """
    lengths = (ends - starts).long()
    if lengths.numel() == 0:
        return frames.new_zeros(0, frames.shape[1])
    if int(lengths.min()) < 1:
        raise ValueError("span_means: every span needs at least one frame")
    crow = F.pad(lengths.cumsum(0), (1, 0))
    total = int(crow[-1])
    cols = torch.arange(total, device=frames.device) - torch.repeat_interleave(crow[:-1] - starts, lengths)
    vals = torch.repeat_interleave(1.0 / lengths.to(frames.dtype), lengths)
    with warnings.catch_warnings():  # torch 1.13 calls sparse CSR "beta"; the product is exact and tested
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        weights = torch.sparse_csr_tensor(crow, cols, vals, (lengths.numel(), frames.shape[0]), **_CSR_OPTIONS)
    return weights @ frames


def part_means(frames: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, parts: int = PARTS) -> torch.Tensor:
    """Means [N, 1 + parts, hidden] of the parts (``part_bounds``) of spans [start, end) of
    ``frames`` (spans non-empty and inside): one ``span_means`` over all parts. (Summing only
    the thirds and adding them up for the whole span measured slower: the product is bound
    by its output, not by the frames it reads.)"""
    s, e = part_bounds(starts, ends, parts)
    return span_means(frames, s.flatten(), e.flatten()).view(starts.numel(), 1 + parts, frames.shape[1])
