"""Utterance features: one file per split, read by ASR training, decoding and rescoring.

Format ``rescorer.utterances/2`` (a tagged file, ``rescorer.formats.tagged``):

- tensors: ``feats`` float16 [T_total, dim], every utterance's frames concatenated
  (utterance u is ``feats[offsets[u]:offsets[u + 1]]``); ``offsets`` int64 [U + 1];
- meta: ``utterance_ids``, ``texts`` (normalised words joined by spaces), ``speakers``
  (one per utterance), ``feature_spec`` (``FeatureSpec.to_json``: 80-bin fbank, 10 ms).

Version 1 (before this layout: the same fields in one flat dict, with ``num_mel_bins``
and ``frame_shift``) is still read. The in-memory flat dict (``to_dict``) keeps the
version-1 field names, so code that builds one by hand (tests, converters) goes through
``utterance_features_from_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from rescorer.formats.contract import FBANK, FeatureSpec, check_spec_or_view
from rescorer.formats.tagged import FormatError, read_tagged, require, split_tag, write_tagged
from rescorer.utils import PathLike

FAMILY = "rescorer.utterances"
VERSION = 2
FORMAT = f"{FAMILY}/{VERSION}"
_FIELDS = ("feats", "offsets", "texts", "utterance_ids", "speakers")


@dataclass
class UtteranceFeatures:
    """One split's features and transcripts, as stored (every utterance of the file)."""

    feats: torch.Tensor  # float16 [T_total, dim]
    offsets: torch.Tensor  # int64 [U + 1]
    texts: List[str]
    utterance_ids: List[str]
    speakers: List[str]
    spec: FeatureSpec = FBANK

    def __len__(self) -> int:
        return len(self.utterance_ids)

    def features(self, i: int) -> torch.Tensor:
        """Frames [T, dim] of the i-th utterance of the file (a float16 view)."""
        return self.feats[int(self.offsets[i]) : int(self.offsets[i + 1])]

    def by_id(self) -> Dict[str, torch.Tensor]:
        """utterance id -> float32 frames [T, dim]."""
        return {u: self.features(i).float() for i, u in enumerate(self.utterance_ids)}

    def to_dict(self) -> Dict[str, Any]:
        """The flat in-memory layout (version-1 field names plus ``feature_spec``)."""
        return {
            "format": FORMAT, "feats": self.feats, "offsets": self.offsets, "texts": list(self.texts),
            "utterance_ids": list(self.utterance_ids), "speakers": list(self.speakers),
            "num_mel_bins": self.spec.dim, "frame_shift": self.spec.frame_shift, "feature_spec": self.spec.to_json(),
        }


def utterance_features_from_dict(data: Any, source: str = "<dict>") -> UtteranceFeatures:
    """Validate a flat dict (``to_dict`` or a version-1 file) and wrap it; errors name ``source``."""
    family = split_tag(data.get("format"))[0] if isinstance(data, dict) else None
    if family != FAMILY:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise FormatError(f"{source}: not an utterance file (format {got!r}, expected {FORMAT!r})")
    missing = [k for k in _FIELDS if k not in data]
    if missing:
        raise FormatError(f"{source}: missing fields {missing}")
    feats = data["feats"]
    if "feature_spec" in data:
        spec = FeatureSpec.from_json(data["feature_spec"])
    else:  # version 1 recorded only these two
        spec = FeatureSpec(FBANK.name, int(data.get("num_mel_bins", feats.shape[-1])), float(data.get("frame_shift", FBANK.frame_shift)))
    out = UtteranceFeatures(
        feats, torch.as_tensor(data["offsets"]).long(), list(data["texts"]), list(data["utterance_ids"]),
        list(data["speakers"]), spec,
    )
    _validate(out, source)
    return out


def _validate(u: UtteranceFeatures, source: str) -> None:
    n = len(u.utterance_ids)
    if u.feats.dim() != 2 or u.feats.shape[1] != u.spec.dim:
        raise FormatError(f"{source}: feats must be [T_total, {u.spec.dim}], got {tuple(u.feats.shape)}")
    if len(u.offsets) != n + 1 or int(u.offsets[0]) != 0 or int(u.offsets[-1]) != len(u.feats):
        raise FormatError(f"{source}: offsets must have U + 1 entries from 0 to len(feats)")
    if len(u.texts) != n or len(u.speakers) != n:
        raise FormatError(f"{source}: texts and speakers need one entry per utterance")
    if n == 0:
        raise FormatError(f"{source}: no utterances")
    if bool((u.offsets[1:] < u.offsets[:-1]).any()):
        raise FormatError(f"{source}: offsets must not decrease")


def write_utterance_features(path: PathLike, utts: UtteranceFeatures) -> Path:
    """Write ``utts`` as ``rescorer.utterances/2`` (atomically), after validating it."""
    _validate(utts, str(path))
    return write_tagged(
        path, FAMILY, VERSION,
        {"feats": utts.feats.to(torch.float16), "offsets": utts.offsets.to(torch.int64)},
        {"utterance_ids": list(utts.utterance_ids), "texts": list(utts.texts), "speakers": list(utts.speakers),
         "feature_spec": utts.spec.to_json()},
    )


def read_utterance_features(path: PathLike, expect: Optional[FeatureSpec] = FBANK) -> UtteranceFeatures:
    """Read and validate a split; with ``expect``, its recorded feature spec must match (or hold
    ``expect``'s layers among its stacked layers: those columns are returned, ``contract.layer_view``)."""
    tf = read_tagged(path, FAMILY, versions=(VERSION,), legacy_versions=(1,))
    if tf.legacy is not None:
        utts = utterance_features_from_dict(tf.legacy, source=tf.path)
    else:
        require(tf, ("feats", "offsets"), ("utterance_ids", "texts", "speakers", "feature_spec"))
        m = tf.meta
        utts = UtteranceFeatures(
            tf.tensors["feats"], tf.tensors["offsets"].long(), list(m["texts"]), list(m["utterance_ids"]),
            list(m["speakers"]), FeatureSpec.from_json(m["feature_spec"]),
        )
        _validate(utts, tf.path)
    if expect is not None:
        cols = check_spec_or_view(utts.spec, expect, tf.path)
        if cols is not None:  # a subset of the stacked layers recorded (formats.contract.layer_view)
            utts = replace(utts, feats=utts.feats[:, cols].contiguous(), spec=expect)
    return utts
