"""CTC acoustic model over letter tokens (``rescorer.tokens``): a compact conformer encoder.

Interface (the k2 decoding code relies on it exactly)::

    model(feats [B, T, 80] float32, feat_lens [B] int64) -> (ctc_log_probs [B, T', 29], out_lens [B])
    model.subsampling_factor == 4        # output frame shift 0.04 s

Architecture (``ConformerEncoder``, shared with the attention model):

- global feature normalisation: mean/std buffers set from the training data
  (``set_feature_stats``), so they travel with the checkpoint;
- subsampling x4: two stride-2 convolutions of kernel 3 without padding (ReLU), then a
  linear layer to ``d_model``: T' = ((T - 1) // 2 - 1) // 2 (inputs need >= 7 frames).
  ``Conv2dSubsampling`` (3x3 over time and frequency, icefall style; ``large``) or the
  cheaper ``Conv1dSubsampling`` (over time, mel bins as channels; ``small``). Without
  padding, a valid output frame only ever sees valid input frames;
- sinusoidal absolute positions (computed on the fly: no length limit);
- ``num_layers`` conformer blocks (Gulati et al. 2020, macaron): half FFN (SiLU) ->
  multi-head self-attention with key padding mask -> convolution module (pointwise +
  GLU, depthwise conv over time on the masked input, LayerNorm, SiLU, pointwise) ->
  half FFN -> LayerNorm. LayerNorm instead of BatchNorm in the conv module and masking
  before every time convolution make an utterance's output independent of the padding
  and of the rest of the batch (tested);
- CTC head: linear to the 29 tokens, ``log_softmax`` in float32.

Presets: see ``ENCODER_PRESETS`` (``small``: 1.6 M parameters, for CPU; ``large``: 19 M,
for one GPU). Plain torch 1.13-2.x; no k2, no lhotse.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from rescorer.formats.contract import MIN_INPUT_FRAMES, SUBSAMPLING_FACTOR
from rescorer.models.registry import ASR_MODELS
from rescorer.tokens import TOKENS, ctc_greedy_collapse

NUM_TOKENS = len(TOKENS)  # 29

ENCODER_PRESETS: Dict[str, Dict[str, object]] = {
    # unit tests
    "tiny": dict(
        d_model=32, num_layers=1, num_heads=2, ffn_dim=64, conv_kernel=7, subsampling_channels=32, dropout=0.0,
        subsampling="conv1d",
    ),
    # CPU demo scale (~1.7 M parameters with the CTC head; ~2.3 M with the attention decoder).
    # No dropout: at CPU budgets (a few epochs) the model underfits.
    "small": dict(
        d_model=128, num_layers=4, num_heads=4, ffn_dim=512, conv_kernel=15, subsampling_channels=128, dropout=0.0,
        subsampling="conv1d",
    ),
    # one GPU (19 M parameters; 25 M with the 6-layer attention decoder)
    "large": dict(
        d_model=256, num_layers=12, num_heads=4, ffn_dim=1024, conv_kernel=31, subsampling_channels=128, dropout=0.1,
        subsampling="conv2d",
    ),
}


def subsampled_lengths(lengths: torch.Tensor, factor: int = SUBSAMPLING_FACTOR) -> torch.Tensor:
    """Output lengths of the subsampling: ((T - 1) // 2 - 1) // 2 for x4, (T - 1) // 2 for x2."""
    out = torch.div(lengths - 1, 2, rounding_mode="floor")
    return torch.div(out - 1, 2, rounding_mode="floor") if factor == 4 else out


def min_input_frames(factor: int) -> int:
    """Fewest input frames that give one output frame."""
    return MIN_INPUT_FRAMES if factor == 4 else 3


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B, T] bool, True at real frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def sinusoidal_positions(length: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[length, dim] sinusoidal position encoding (Vaswani et al.)."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return pe.to(dtype)


def _contiguous_grad(x: torch.Tensor) -> torch.Tensor:
    """Make the gradient that reaches ``x`` contiguous (torch 1.13 CPU activation backward
    kernels can mis-handle non-contiguous incoming gradients; see models/acoustic.py)."""
    if x.requires_grad:
        x.register_hook(lambda g: g.contiguous())
    return x


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (also under autocast; torch 1.13's CPU autocast would
    otherwise feed bfloat16 inputs to float32 weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with boolean masks (True = may attend); plain torch 1.13-2.x.

    Uses ``F.scaled_dot_product_attention`` where it exists (torch >= 2.0), else the
    explicit softmax. Every query row must have at least one allowed key.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, kv_dim: Optional[int] = None):
        super().__init__()
        if d_model % num_heads:
            raise ValueError("d_model must be divisible by num_heads")
        self.h = num_heads
        self.dk = d_model // num_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(kv_dim or d_model, d_model)
        self.v = nn.Linear(kv_dim or d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def project_kv(self, key: torch.Tensor, value: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [B, H, Tk, dk] (cacheable: they depend on key/value only)."""
        B, Tk = key.shape[0], key.shape[1]
        k = self.k(key).view(B, Tk, self.h, self.dk).transpose(1, 2)
        v = self.v(value).view(B, Tk, self.h, self.dk).transpose(1, 2)
        return k, v

    def forward(
        self,
        query: torch.Tensor,
        key: Optional[torch.Tensor],
        value: Optional[torch.Tensor],
        mask: torch.Tensor,
        kv: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """query [B, Tq, D], key/value [B, Tk, *] (or ``kv`` from ``project_kv``), mask
        broadcastable to [B, 1 or H, Tq, Tk] (bool)."""
        B, Tq, _ = query.shape
        q = self.q(query).view(B, Tq, self.h, self.dk).transpose(1, 2)
        k, v = kv if kv is not None else self.project_kv(key, value)
        p = self.dropout if self.training else 0.0
        sdpa = getattr(F, "scaled_dot_product_attention", None)
        if sdpa is not None:
            ctx = sdpa(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.dk)
            scores = scores.masked_fill(~mask, float("-inf"))
            attn = torch.softmax(scores.float(), dim=-1).to(q.dtype)
            if p > 0:
                attn = F.dropout(attn, p)
            ctx = torch.matmul(attn, v)
        ctx = ctx.transpose(1, 2).reshape(B, Tq, self.h * self.dk)
        return self.out(ctx)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.norm = LayerNorm(d_model)
        self.lin1 = nn.Linear(d_model, ffn_dim)
        self.lin2 = nn.Linear(ffn_dim, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.lin2(self.dropout(F.silu(self.lin1(self.norm(x))))))


class ConvModule(nn.Module):
    """Conformer convolution module with LayerNorm (batch- and padding-independent)."""

    def __init__(self, d_model: int, kernel_size: int, dropout: float):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("conv_kernel must be odd")
        self.norm = LayerNorm(d_model)
        self.pw1 = nn.Linear(d_model, 2 * d_model)
        self.dw = nn.Conv1d(d_model, d_model, kernel_size, padding=kernel_size // 2, groups=d_model)
        self.dw_norm = LayerNorm(d_model)
        self.pw2 = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, D], mask [B, T, 1] (float/bool)."""
        y = F.glu(self.pw1(self.norm(x)), dim=-1)
        y = _contiguous_grad(y * mask)
        y = self.dw(y.transpose(1, 2)).transpose(1, 2)
        y = F.silu(self.dw_norm(y))
        return self.dropout(self.pw2(y))


class ConformerBlock(nn.Module):
    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, conv_kernel: int, dropout: float):
        super().__init__()
        self.ff1 = FeedForward(d_model, ffn_dim, dropout)
        self.attn_norm = LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.conv = ConvModule(d_model, conv_kernel, dropout)
        self.ff2 = FeedForward(d_model, ffn_dim, dropout)
        self.out_norm = LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ff1(x)
        y = self.attn_norm(x)
        x = x + self.dropout(self.attn(y, y, y, attn_mask))
        x = x + self.conv(x, mask)
        x = x + 0.5 * self.ff2(x)
        return self.out_norm(x)


class Conv2dSubsampling(nn.Module):
    """[B, T, F] -> [B, ((T-1)//2-1)//2, d_model]: two 3x3 stride-2 convs (no padding), ReLU, linear."""

    def __init__(self, num_mel_bins: int, d_model: int, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=2)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2)
        f = ((num_mel_bins - 1) // 2 - 1) // 2
        self.proj = nn.Linear(channels * f, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x.unsqueeze(1)))
        x = F.relu(self.conv2(x))  # [B, C, T', F']
        B, C, T, Fr = x.shape
        return self.proj(x.permute(0, 2, 1, 3).reshape(B, T, C * Fr))


class Conv1dSubsampling2(nn.Module):
    """[B, T, F] -> [B, (T-1)//2, d_model]: one kernel-3 stride-2 conv over time (no padding),
    ReLU, linear. For a 20 ms frontend (e.g. Whisper's states), whose x2 gives the same 40 ms
    output frames as x4 over 10 ms fbank."""

    factor = 2

    def __init__(self, num_mel_bins: int, d_model: int, channels: int):
        super().__init__()
        self.conv = nn.Conv1d(num_mel_bins, d_model, 3, stride=2)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _contiguous_grad(F.relu(self.conv(x.transpose(1, 2))))
        return self.proj(x.transpose(1, 2))


class Conv1dSubsampling(nn.Module):
    """[B, T, F] -> [B, ((T-1)//2-1)//2, d_model]: two kernel-3 stride-2 convs over time (no
    padding), ReLU, linear. Much cheaper than ``Conv2dSubsampling`` on CPU; same lengths."""

    def __init__(self, num_mel_bins: int, d_model: int, channels: int):
        super().__init__()
        self.conv1 = nn.Conv1d(num_mel_bins, channels, 3, stride=2)
        self.conv2 = nn.Conv1d(channels, d_model, 3, stride=2)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x.transpose(1, 2)))
        x = _contiguous_grad(F.relu(self.conv2(x)))
        return self.proj(x.transpose(1, 2))


class ConformerEncoder(nn.Module):
    """fbank [B, T, 80] + lengths -> (encoder_out [B, T', d_model], out_lens [B])."""

    subsampling_factor = SUBSAMPLING_FACTOR

    def __init__(
        self,
        num_mel_bins: int = 80,
        d_model: int = 144,
        num_layers: int = 6,
        num_heads: int = 4,
        ffn_dim: int = 576,
        conv_kernel: int = 15,
        subsampling_channels: int = 32,
        dropout: float = 0.1,
        subsampling: str = "conv2d",
        feature_spec: Optional[Dict[str, object]] = None,
        whisper_tail: Optional[Dict[str, object]] = None,
    ):
        super().__init__()
        self.feature_spec = feature_spec  # the frontend it was trained on (FeatureSpec.to_json); None: fbank
        self.config: Dict[str, object] = dict(
            num_mel_bins=num_mel_bins,
            d_model=d_model,
            num_layers=num_layers,
            num_heads=num_heads,
            ffn_dim=ffn_dim,
            conv_kernel=conv_kernel,
            subsampling_channels=subsampling_channels,
            dropout=dropout,
            subsampling=subsampling,
        )
        if feature_spec is not None:
            self.config["feature_spec"] = dict(feature_spec)
        # the top Whisper block(s) fine-tuned over stored lower-layer states (models.whisper.WhisperTail)
        self.whisper_tail = None
        if whisper_tail is not None:
            from rescorer.models.whisper import WhisperTail

            self.whisper_tail = WhisperTail(**whisper_tail)
            self.config["whisper_tail"] = dict(self.whisper_tail.config)
        self.d_model = d_model
        self.register_buffer("feat_mean", torch.zeros(num_mel_bins))
        self.register_buffer("feat_std", torch.ones(num_mel_bins))
        subs = {"conv2d": Conv2dSubsampling, "conv1d": Conv1dSubsampling, "conv1d_x2": Conv1dSubsampling2}
        if subsampling not in subs:
            raise ValueError(f"subsampling must be one of {', '.join(subs)}, got {subsampling!r}")
        self.subsampling = subs[subsampling](num_mel_bins, d_model, subsampling_channels)
        self.subsampling_factor = getattr(self.subsampling, "factor", SUBSAMPLING_FACTOR)
        self.input_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            [ConformerBlock(d_model, num_heads, ffn_dim, conv_kernel, dropout) for _ in range(num_layers)]
        )

    @torch.no_grad()
    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feat_mean.copy_(mean.to(self.feat_mean))
        self.feat_std.copy_(std.to(self.feat_std).clamp(min=1e-5))

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if feats.dim() != 3 or feats.shape[2] != self.feat_mean.numel():
            raise ValueError(f"expected feats [B, T, {self.feat_mean.numel()}], got {tuple(feats.shape)}")
        feat_lens = feat_lens.to(device=feats.device, dtype=torch.long)
        need = min_input_frames(self.subsampling_factor)
        if bool((feat_lens < need).any()):
            raise ValueError(f"every input needs at least {need} frames (x{self.subsampling_factor} subsampling)")
        if bool((feat_lens > feats.shape[1]).any()):
            raise ValueError("a length exceeds the padded time dimension")
        in_mask = length_mask(feat_lens, feats.shape[1])[:, :, None]
        if self.whisper_tail is not None:
            feats = self.whisper_tail(feats.float(), feat_lens)
        x = ((feats.float() - self.feat_mean) / self.feat_std) * in_mask
        x = self.subsampling(x)
        out_lens = subsampled_lengths(feat_lens, self.subsampling_factor)
        x = x + sinusoidal_positions(x.shape[1], self.d_model, x.device, x.dtype)
        x = self.input_dropout(x)
        valid = length_mask(out_lens, x.shape[1])
        mask = valid[:, :, None].to(x.dtype)
        attn_mask = valid[:, None, None, :]  # [B, 1, 1, T'] keys
        for layer in self.layers:
            x = layer(x, mask, attn_mask)
        return x, out_lens


@ASR_MODELS.register("ctc")
class CtcModel(nn.Module):
    """Conformer encoder + linear CTC head over the 29 letter tokens (blank = 0)."""

    subsampling_factor = SUBSAMPLING_FACTOR

    def __init__(self, **encoder_config):
        super().__init__()
        self.encoder = ConformerEncoder(**encoder_config)
        self.config: Dict[str, object] = dict(self.encoder.config)
        self.ctc_head = nn.Linear(self.encoder.d_model, NUM_TOKENS)
        self.num_tokens = NUM_TOKENS
        self.subsampling_factor = self.encoder.subsampling_factor

    @classmethod
    def from_config(cls, config: Dict[str, object]) -> "CtcModel":
        return cls(**config)

    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.encoder.set_feature_stats(mean, std)

    def encode(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(feats, feat_lens)

    def ctc_log_probs(self, encoder_out: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.ctc_head(encoder_out).float(), dim=-1)

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        enc, out_lens = self.encode(feats, feat_lens)
        return self.ctc_log_probs(enc), out_lens


def ctc_loss(
    log_probs: torch.Tensor, out_lens: torch.Tensor, targets: torch.Tensor, target_lens: torch.Tensor
) -> torch.Tensor:
    """Summed CTC loss (blank 0, ``zero_infinity=True``) over the batch; float32.

    log_probs [B, T', V], targets [B, L] padded, lengths on any device.
    """
    return F.ctc_loss(
        log_probs.float().transpose(0, 1),
        targets,
        out_lens,
        target_lens,
        blank=0,
        reduction="sum",
        zero_infinity=True,
    )


def ctc_greedy_decode(log_probs: torch.Tensor, out_lens: torch.Tensor):
    """Best-path token ids per utterance (repeats merged, blanks dropped)."""
    best = log_probs.argmax(-1).cpu()
    return [ctc_greedy_collapse(best[b, : int(out_lens[b])].tolist()) for b in range(best.shape[0])]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
