"""The feature contract, declared once: what the models read and what the files record.

- ``FBANK``: 80-bin log-mel fbank every 10 ms (25 ms window; lhotse ``Fbank``), computed
  from audio at ``SAMPLE_RATE`` (16 kHz; other rates are resampled first). The embedder
  and the ASR models read it.
- ``SUBSAMPLING_FACTOR``: the ASR models' x4 subsampling (two stride-2 convolutions), so
  their lattices have one frame every 40 ms (``FBANK.subsampled(4)``); ``MIN_INPUT_FRAMES``
  (7) input frames give one output frame.
- ``UNK``: the word the decoder emits for words outside its LM (``<unk>``).

Frame rates are values that files record (``FeatureSpec.to_json`` in the metadata of
every features, segments and lattice file) and readers check (``check_spec``): a
frontend at 20 ms (e.g. Whisper's encoder states) and 10 ms fbank are never mixed up
silently.

Stacked layers: a frontend whose frames concatenate several layers of one model names them
``<model>-L<a>-<b>...`` (e.g. ``whisper-1a5afae0-L3-4``, layers 3 and 4, equal widths, in
that order). Frames of a subset of those layers of the same model are a column view of
them (``layer_view``), so one features file serves a model trained on layers 3-4 and one
trained on layer 3; readers take that view where they are asked for the subset.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

SAMPLE_RATE = 16000
SUBSAMPLING_FACTOR = 4
MIN_INPUT_FRAMES = 7  # ((T - 1) // 2 - 1) // 2 >= 1 under the x4 subsampling
UNK = "<unk>"


class FeatureSpecError(ValueError):
    """Features (or frames) of one kind handed to a consumer that expects another."""


@dataclass(frozen=True)
class FeatureSpec:
    """What one frame is: ``name`` (e.g. "fbank"), ``dim`` values, every ``frame_shift`` seconds."""

    name: str
    dim: int
    frame_shift: float

    def __post_init__(self) -> None:
        if not self.name or self.dim < 1 or not (self.frame_shift > 0 and math.isfinite(self.frame_shift)):
            raise FeatureSpecError(f"invalid feature spec {self}")

    def subsampled(self, factor: int) -> float:
        """Seconds per output frame of a model that subsamples these frames ``factor`` times."""
        return self.frame_shift * factor

    def frames(self, seconds: float) -> int:
        """The frame holding time ``seconds`` (rounded to the nearest frame boundary)."""
        return int(round(seconds / self.frame_shift))

    def to_json(self) -> Dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "frame_shift": self.frame_shift}

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "FeatureSpec":
        return cls(str(d["name"]), int(d["dim"]), float(d["frame_shift"]))


FBANK = FeatureSpec("fbank", 80, 0.01)
LATTICE_FRAME_SHIFT = FBANK.subsampled(SUBSAMPLING_FACTOR)  # 0.04 s: the ASR models' output frames


def same_frame_shift(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)


def check_spec(recorded: Optional[FeatureSpec], expected: FeatureSpec, source: str) -> None:
    """Raise ``FeatureSpecError`` naming ``source`` when its recorded spec is not ``expected``.

    ``recorded`` None (a file from before specs were recorded) is accepted as ``expected``.
    """
    if recorded is None:
        return
    problems = []
    if recorded.name != expected.name:
        problems.append(f"{recorded.name!r} features, expected {expected.name!r}")
    if recorded.dim != expected.dim:
        problems.append(f"{recorded.dim}-dim frames, expected {expected.dim}")
    if not same_frame_shift(recorded.frame_shift, expected.frame_shift):
        problems.append(f"a frame every {recorded.frame_shift * 1000:g} ms, expected every {expected.frame_shift * 1000:g} ms")
    if problems:
        raise FeatureSpecError(f"{source}: {'; '.join(problems)} (features of another frontend?)")


def check_frame_shift(recorded: float, expected: float, source: str) -> None:
    """Raise ``FeatureSpecError`` when two frame rates (seconds per frame) differ."""
    if not same_frame_shift(recorded, expected):
        raise FeatureSpecError(
            f"{source}: a frame every {float(recorded) * 1000:g} ms, expected every {float(expected) * 1000:g} ms"
        )


_STACKED = re.compile(r"(?P<model>.+)-L(?P<layers>\d+(?:-\d+)*)")


def stacked_layers(spec: FeatureSpec):
    """(model name, layers, values per layer) of stacked-layer frames; None for other frames."""
    m = _STACKED.fullmatch(spec.name)
    if not m:
        return None
    layers = [int(k) for k in m.group("layers").split("-")]
    if len(set(layers)) != len(layers) or spec.dim % len(layers):
        return None
    return m.group("model"), layers, spec.dim // len(layers)


def layer_view(recorded: FeatureSpec, expected: FeatureSpec) -> Optional[List[int]]:
    """The columns of ``recorded`` frames that are ``expected`` frames, when ``expected`` is a
    subset of the stacked layers of the same model at the same frame rate (module doc);
    None otherwise (including when they are equal: no view needed)."""
    if recorded == expected or not same_frame_shift(recorded.frame_shift, expected.frame_shift):
        return None
    have, want = stacked_layers(recorded), stacked_layers(expected)
    if have is None or want is None or have[0] != want[0] or have[2] != want[2]:
        return None
    width = have[2]
    if not set(want[1]) <= set(have[1]):
        return None
    return [have[1].index(k) * width + c for k in want[1] for c in range(width)]


def layer_subset(spec: FeatureSpec, layers) -> FeatureSpec:
    """The spec of ``layers`` (a subset, in the order given) of ``spec``'s stacked layers."""
    stacked = stacked_layers(spec)
    if stacked is None:
        raise FeatureSpecError(f"{spec.name!r} frames are not stacked layers (<model>-L<a>-<b>...)")
    model, have, width = stacked
    missing = [k for k in layers if k not in have]
    if not layers or missing or len(set(layers)) != len(layers):
        raise FeatureSpecError(f"layers {list(layers)} are not a subset of {spec.name!r}'s layers {have}")
    return FeatureSpec(f"{model}-L{'-'.join(str(k) for k in layers)}", width * len(layers), spec.frame_shift)


def check_spec_or_view(recorded: Optional[FeatureSpec], expected: FeatureSpec, source: str) -> Optional[List[int]]:
    """``check_spec``, except that a layer view (``layer_view``) of the recorded frames is accepted:
    returns its columns (None: the frames are ``expected`` as they are)."""
    if recorded is not None:
        cols = layer_view(recorded, expected)
        if cols is not None:
            return cols
    check_spec(recorded, expected, source)
    return None
