"""Acoustic word encoder: log-mel frames of one word segment -> L2-normalised D-dim vector.

Architecture (defaults): global feature normalisation (mean/std buffers taken from the
training data, so they travel with the checkpoint) -> 1-D conv stem (80 -> 384 channels,
kernel 5) -> 4 residual conv blocks (kernel 5, LayerNorm over channels, GELU) with a
stride-2 conv after blocks 0 and 2 (``downsample_after``; 200 frames -> 50) -> masked
mean + masked max pooling over time -> LayerNorm -> linear projection to D -> L2
normalisation. About 4.8M parameters.

Why these choices:

- LayerNorm normalises each frame over its channels, so it never mixes time steps or
  batch items: padding cannot leak into real frames, and the output of a segment does
  not depend on what else is in the batch (BatchNorm would, in training mode).
- Every conv input is multiplied by the padding mask first. With "same" zero padding
  this makes a padded segment see exactly what it would see alone, so embeddings are
  independent of padding (tested). Stride-2 convs map length L to ceil(L / 2).
- Mean pooling summarises the whole word, max pooling keeps short salient events
  (a stop burst, a fricative); together they are cheap and robust to duration.

Embedding size D = 256 (configurable). Rescoring ranks a lattice arc's segment against
a vocabulary of 10^5-10^6 spellings by dot products, i.e. a [N, D] x [D, V] matmul plus
top-k: its time and the fp16 vocabulary matrix (V * D * 2 bytes = 512 MB for 1M words
at D = 256) grow linearly in D, so D = 512 doubles both. Bengio & Heigold used embeddings
of the order of a hundred dimensions; here the vocabularies are larger and mostly unseen
in training, so a spelling must stay separable from many more near-homophones, which
argues for some headroom above that. 256 is that compromise, and a multiple of 64 (tensor-core tiles).
It is a default, not a measured optimum: ``--dim`` changes it.

Inputs longer than ``max_frames`` (200 = 2 s) are center-cropped: frames
``[(L - max_frames) // 2, (L - max_frames) // 2 + max_frames)`` are kept. A segment that
long is usually a word plus alignment slack at its edges, so the middle is the part to
keep; cropping also bounds the cost per segment.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from rescorer.models.registry import ACOUSTIC_ENCODERS

DEFAULT_MAX_FRAMES = 200
FBANK_FRAME_SHIFT = 0.01  # seconds per input frame: the fbank of ``rescorer.segments``


def center_crop(
    feats: torch.Tensor, lengths: torch.Tensor, max_frames: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Crop each padded sequence longer than ``max_frames`` to its middle ``max_frames``.

    feats [B, T, F], lengths [B]. Returns feats [B, min(T, max_frames), F] and clamped
    lengths. Sequences already short enough keep their frames (start 0).
    """
    if feats.shape[1] <= max_frames:
        return feats, lengths
    lengths = lengths.to(feats.device)
    start = (lengths - max_frames).clamp(min=0) // 2
    index = start[:, None] + torch.arange(max_frames, device=feats.device)[None, :]
    index = index.clamp(max=feats.shape[1] - 1)
    cropped = feats.gather(1, index[:, :, None].expand(-1, -1, feats.shape[2]))
    return cropped, lengths.clamp(max=max_frames)


def pad_segments(
    segments: Sequence[torch.Tensor], max_frames: Optional[int] = DEFAULT_MAX_FRAMES
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack [T_i, F] segments into a zero-padded float32 [B, T_max, F] batch and lengths.

    Segments longer than ``max_frames`` are center-cropped (same rule as the encoder).
    """
    if len(segments) == 0:
        raise ValueError("pad_segments: no segments")
    lengths = []
    kept = []
    for seg in segments:
        length = int(seg.shape[0])
        if length == 0:
            raise ValueError("pad_segments: empty segment (0 frames)")
        if max_frames is not None and length > max_frames:
            start = (length - max_frames) // 2
            seg = seg[start : start + max_frames]
            length = max_frames
        kept.append(seg)
        lengths.append(length)
    num_bins = int(kept[0].shape[1])
    out = torch.zeros(len(kept), max(lengths), num_bins, dtype=torch.float32)
    for i, seg in enumerate(kept):
        out[i, : seg.shape[0]] = seg.float()
    return out, torch.tensor(lengths, dtype=torch.long)


def _length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B, T, 1] float mask: 1 at real frames, 0 at padding."""
    steps = torch.arange(max_len, device=lengths.device)
    return (steps[None, :] < lengths[:, None]).unsqueeze(-1)


def _gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU whose backward always receives a contiguous gradient.

    torch 1.13's CPU GELU backward returns wrong values (garbage, then inf/NaN) when the
    incoming gradient is non-contiguous, which is the case here: the next conv sees the
    activations transposed. Fixed in torch 2.x; the hook costs one copy.
    """
    y = F.gelu(x)
    if y.requires_grad:
        y.register_hook(lambda g: g.contiguous())
    return y


class _MaskedConv(nn.Module):
    """Conv1d over [B, T, C] (time-major) with masked input, then LayerNorm and GELU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2
        )
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x * mask  # padding is zero, like the conv's own zero padding at the edges
        y = self.conv(x.transpose(1, 2)).transpose(1, 2).contiguous()
        return _gelu(self.norm(y.float()))  # LayerNorm in float32, also under autocast


@ACOUSTIC_ENCODERS.register("conv")
class AcousticWordEncoder(nn.Module):
    """Conv network: fbank [B, T, num_mel_bins] + lengths [B] -> unit vectors [B, dim].

    Implements ``rescorer.models.interfaces.AcousticEncoder`` (registry name ``"conv"``).
    """

    frame_shift = FBANK_FRAME_SHIFT
    one_pass_exact = False  # its one pass lets a span see its neighbours: not the function trained on segments

    def __init__(
        self,
        num_mel_bins: int = 80,
        dim: int = 256,
        channels: int = 384,
        num_blocks: int = 4,
        kernel_size: int = 5,
        downsample_after: Optional[Iterable[int]] = None,
        max_frames: int = DEFAULT_MAX_FRAMES,
        frame_shift: float = FBANK_FRAME_SHIFT,
        feature_spec: Optional[Dict[str, object]] = None,
    ):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("kernel_size must be odd (same padding keeps frames aligned)")
        if downsample_after is None:  # after the first and the middle block: (0, 2) for 4 blocks
            downsample_after = sorted({0, num_blocks // 2}) if num_blocks > 1 else [0]
        downsample_after = tuple(sorted({int(i) for i in downsample_after}))
        if num_blocks < 1 or any(not 0 <= i < num_blocks for i in downsample_after):
            raise ValueError(f"downsample_after {downsample_after} must index blocks 0..{num_blocks - 1}")
        self.config: Dict[str, object] = dict(
            num_mel_bins=num_mel_bins,
            dim=dim,
            channels=channels,
            num_blocks=num_blocks,
            kernel_size=kernel_size,
            downsample_after=list(downsample_after),
            max_frames=max_frames,
        )
        if feature_spec is not None:  # another frontend than 10 ms fbank (recorded: inference computes the same)
            self.config.update(frame_shift=frame_shift, feature_spec=dict(feature_spec))
        self.frame_shift = frame_shift
        self.feature_spec = feature_spec
        self.dim = dim
        self.feature_dim = num_mel_bins
        self.max_frames = max_frames
        # Global normalisation of the input features, set from training data statistics.
        self.register_buffer("feat_mean", torch.zeros(num_mel_bins))
        self.register_buffer("feat_std", torch.ones(num_mel_bins))
        self.stem = _MaskedConv(num_mel_bins, channels, kernel_size)
        self.blocks = nn.ModuleList(
            [_MaskedConv(channels, channels, kernel_size) for _ in range(num_blocks)]
        )
        self.downsample = nn.ModuleDict(
            {str(i): _MaskedConv(channels, channels, kernel_size, stride=2) for i in downsample_after}
        )
        self.pool_norm = nn.LayerNorm(2 * channels)
        self.proj = nn.Linear(2 * channels, dim)

    @classmethod
    def from_config(cls, config: Dict[str, object]) -> "AcousticWordEncoder":
        return cls(**config)

    @torch.no_grad()
    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the global feature mean/std (from the training split) in the model."""
        self.feat_mean.copy_(mean.to(self.feat_mean))
        self.feat_std.copy_(std.to(self.feat_std).clamp(min=1e-5))

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """feats [B, T, F] (any float dtype, zero or garbage beyond lengths), lengths [B]."""
        if feats.dim() != 3:
            raise ValueError(f"expected feats [B, T, F], got shape {tuple(feats.shape)}")
        lengths = lengths.to(device=feats.device, dtype=torch.long)
        if bool((lengths < 1).any()):
            raise ValueError("every segment needs at least one frame")
        if bool((lengths > feats.shape[1]).any()):
            raise ValueError("a length exceeds the padded time dimension")
        feats, lengths = center_crop(feats, lengths, self.max_frames)
        x, mask, lengths = self._conv_stack(feats, lengths)
        return self._pool_and_project(x, mask, lengths)

    def _conv_stack(self, feats: torch.Tensor, lengths: torch.Tensor):
        """Normalisation and the conv layers: (frames [B, T', C] every ``stride`` input frames, mask, lengths)."""
        x = (feats.float() - self.feat_mean) / self.feat_std
        mask = _length_mask(lengths, x.shape[1])
        x = self.stem(x, mask)
        for i, block in enumerate(self.blocks):
            x = x + block(x, mask)
            key = str(i)
            if key in self.downsample:
                x = self.downsample[key](x, mask)
                lengths = (lengths + 1) // 2  # conv stride 2, padding k//2: ceil(L / 2)
                mask = _length_mask(lengths, x.shape[1])
        return x, mask, lengths

    @property
    def stride(self) -> int:
        """Input frames per output frame of the conv stack (2 per stride-2 conv)."""
        return 2 ** len(self.downsample)

    def _pool_and_project(
        self, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        mean = (x * mask).sum(dim=1) / lengths[:, None].to(x.dtype)
        neg = torch.finfo(x.dtype).min
        maxed = x.masked_fill(~mask, neg).amax(dim=1)
        return self._project(mean, maxed)

    def _project(self, mean: torch.Tensor, maxed: torch.Tensor) -> torch.Tensor:
        pooled = self.pool_norm(torch.cat([mean, maxed], dim=-1))
        return F.normalize(self.proj(pooled).float(), dim=-1)

    # ------------------------------------------------------------ one pass per utterance

    @torch.no_grad()
    def utterance_states(self, utterances: Sequence[torch.Tensor]) -> "ConvUtteranceStates":
        """The conv stack run ONCE over whole utterances ([T_i, F] each; zero-padded into one
        batch here), ready to pool any number of spans (``pool_spans``).

        Not the function training learnt: a span's frames see their neighbours through the
        convolutions' receptive field (isolated segments see zeros there). Whether that costs
        quality is measured (``benchmarks/rescore_cost.py``); padding does not leak (masked
        convs), so a batch gives each utterance what it gets alone.
        """
        dev = self.feat_mean.device
        lengths = torch.tensor([int(u.shape[0]) for u in utterances], dtype=torch.long, device=dev)
        feats = torch.zeros(len(utterances), int(lengths.max()), int(utterances[0].shape[1]), device=dev)
        for i, u in enumerate(utterances):
            feats[i, : u.shape[0]] = u.to(dev)
        x, _, out_lengths = self._conv_stack(feats, lengths)
        return ConvUtteranceStates(x, lengths, out_lengths, self.stride)

    @torch.no_grad()
    def pool_spans(self, states: "ConvUtteranceStates", rows: torch.Tensor, starts: torch.Tensor,
                   ends: torch.Tensor) -> torch.Tensor:
        """Spans (utterance row, start, end input frames) -> unit vectors [N, dim] on the CPU.

        Spans are clipped to their utterance (at least one frame) and centre-cropped to
        ``max_frames`` like segments; then mapped to the output frames whose centre lies
        in the span (a span starting on the stride grid gets exactly as many frames as the
        segment would), and mean- and max-pooled from prefix sums and a range-max table.
        """
        dev = states.frames.device
        rows, starts, ends = rows.to(dev).long(), starts.to(dev).long(), ends.to(dev).long()
        T = states.lengths[rows]
        starts = torch.minimum(starts.clamp(min=0), (T - 1).clamp(min=0))
        ends = torch.maximum(torch.minimum(ends, T), starts + 1)
        over = (ends - starts - self.max_frames).clamp(min=0)
        starts = starts + torch.div(over, 2, rounding_mode="floor")
        ends = torch.minimum(ends, starts + self.max_frames)
        q = states.stride
        s = torch.div(starts + q - 1, q, rounding_mode="floor")
        e = torch.div(ends + q - 1, q, rounding_mode="floor")
        limit = states.out_lengths[rows]
        s = torch.minimum(s, limit - 1)
        e = torch.maximum(torch.minimum(e, limit), s + 1)
        mean = (states.prefix[rows, e] - states.prefix[rows, s]) / (e - s).unsqueeze(-1).to(states.prefix.dtype)
        return self._project(mean.to(states.frames.dtype), states.range_max(rows, s, e)).cpu()

    @torch.no_grad()
    def encode_spans(self, feats: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
        """One utterance's frames [T, F] and spans [N, 2] -> [N, dim]: one conv pass, spans pooled."""
        was = self.training
        self.eval()
        try:
            dev = self.feat_mean.device
            states = self.utterance_states([feats])
            spans = spans.long().reshape(-1, 2)
            return self.pool_spans(states, torch.zeros(len(spans), dtype=torch.long), spans[:, 0], spans[:, 1])
        finally:
            self.train(was)

    @torch.no_grad()
    def encode_segments(
        self,
        segments: Sequence[torch.Tensor],
        batch_size: int = 256,
        device: Optional[torch.device] = None,
    ) -> torch.Tensor:
        """Embed a list of [T_i, F] segments (no grad), batching by length; [N, dim] on CPU.

        Segments are sorted by length so batches carry little padding; the result is in
        the input order. Switch the module to eval() first (the model has no dropout or
        batch statistics, so this only matters for subclasses).
        """
        device = device or next(self.parameters()).device
        order = sorted(range(len(segments)), key=lambda i: int(segments[i].shape[0]))
        out = torch.empty(len(segments), self.dim)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            feats, lengths = pad_segments([segments[i] for i in idx], self.max_frames)
            emb = self(feats.to(device), lengths.to(device))
            out[torch.tensor(idx)] = emb.float().cpu()
        return out


class ConvUtteranceStates:
    """The conv stack's output frames of a batch of utterances, with what span pooling
    needs: prefix sums (means in O(1)) and a sparse table of maxima (range maxima in O(1):
    level k holds the max over 2^k frames)."""

    def __init__(self, frames: torch.Tensor, lengths: torch.Tensor, out_lengths: torch.Tensor, stride: int):
        self.frames, self.lengths, self.out_lengths, self.stride = frames, lengths, out_lengths, stride
        mask = _length_mask(out_lengths, frames.shape[1])
        self.prefix = F.pad((frames * mask).double().cumsum(1), (0, 0, 1, 0))
        neg = torch.finfo(frames.dtype).min
        level = frames.masked_fill(~mask, neg)
        levels = [level]
        width = 1
        while 2 * width <= frames.shape[1]:
            level = torch.maximum(level, F.pad(level[:, width:], (0, 0, 0, width), value=neg))
            levels.append(level)
            width *= 2
        self.table = torch.stack(levels)  # [K, B, T', C]

    def range_max(self, rows: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """Max over frames [start, end) (non-empty) of each row: [N, C]."""
        length = ends - starts
        k = torch.floor(torch.log2(length.double())).long().clamp(max=self.table.shape[0] - 1)
        # two overlapping windows of 2^k frames cover the range
        return torch.maximum(self.table[k, rows, starts], self.table[k, rows, ends - 2 ** k])
