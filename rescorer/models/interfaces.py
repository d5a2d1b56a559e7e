"""The written interfaces of the embedding models, so that inference depends on these and
not on one class: a new acoustic word encoder, input frontend or spelling view is one
class that satisfies one of them, registered under a name (``rescorer.models.registry``)
that training records in the checkpoint and the loader reads back.

Both interfaces are ``typing.Protocol``s: a class satisfies one by having the members,
no inheritance needed; ``isinstance`` checks that the members exist (the registry does
so when a class is registered).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class AcousticEncoder(Protocol):
    """Frames of one word's audio -> one unit vector in the joint embedding space.

    What the rescorer, the evaluation and training rely on:

    - ``model_type``: its registry name, written into checkpoints;
    - ``config``: constructor arguments (JSON-like), so ``from_config(config)`` rebuilds it;
    - ``dim``: embedding size (equal to the spelling encoder's);
    - ``feature_dim`` and ``frame_shift`` (seconds): the input features it consumes
      (80-bin fbank every 10 ms for the conv encoder); spans in lattice frames are
      converted to input frames with ``frame_shift``;
    - ``max_frames``: longer inputs are centre-cropped to this many frames;
    - ``set_feature_stats(mean, std)``: the training split's global feature statistics,
      stored in the model so that they travel with the checkpoint;
    - ``forward(feats [B, T, feature_dim], lengths [B]) -> [B, dim]`` (training, batched);
    - ``encode_segments(segments, batch_size, device) -> [N, dim]`` (inference: a list of
      [T_i, feature_dim] segments, no gradient, result on the CPU in input order).
    """

    model_type: str
    config: Dict[str, Any]
    dim: int
    feature_dim: int
    frame_shift: float
    max_frames: int

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "AcousticEncoder": ...

    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None: ...

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor: ...

    def encode_segments(
        self, segments: Sequence[torch.Tensor], batch_size: int = 256, device: Optional[torch.device] = None
    ) -> torch.Tensor: ...


@runtime_checkable
class SpellingEncoder(Protocol):
    """Spellings (any word, unseen ones included) -> unit vectors in the joint space.

    ``model_type``, ``config``, ``from_config`` and ``dim`` as for ``AcousticEncoder``;
    ``encode_words(words) -> [V, dim]`` on the encoder's device (gradients flow when grad
    mode is on). A view other than letters (e.g. phones) is another class with these members.
    """

    model_type: str
    config: Dict[str, Any]
    dim: int

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "SpellingEncoder": ...

    def encode_words(self, words: Sequence[str]) -> torch.Tensor: ...
