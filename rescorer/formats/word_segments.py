"""Word segments: the frames of every aligned word of a split, for embedder training and evaluation.

Format ``rescorer.word_segments/2`` (a tagged file, ``rescorer.formats.tagged``):

- tensors: ``feats`` float16 [T_total, dim] (segment s is ``feats[offsets[s]:offsets[s + 1]]``),
  ``offsets`` int64 [S + 1], ``word_ids`` int64 [S] into ``words``, ``speaker_ids``
  int64 [S] into ``speakers``, optionally ``starts`` float32 [S] (seconds in the utterance);
- meta: ``words`` (sorted spellings), ``speakers``, ``utterance_ids`` (one per segment),
  ``feature_spec`` (``FeatureSpec.to_json``), optionally ``stats`` (segment counts).

Version 1 (one flat dict with ``num_mel_bins`` and ``frame_shift``) is still read. Both
read into the same flat dict (version-1 field names plus ``feature_spec``), which
``word_segments_record`` validates; ``WordSegments`` (``load_word_segments``) holds one
split in memory for embedder training and evaluation alike. (Not
``rescorer.segments.WordSegments``: that is the extraction result from lhotse cuts.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from rescorer.formats.contract import FBANK, FeatureSpec, check_spec_or_view, layer_view
from rescorer.formats.frames import feature_stats, gather_padded
from rescorer.formats.tagged import FormatError, read_tagged, require, split_tag, write_tagged
from rescorer.utils import PathLike

FAMILY = "rescorer.word_segments"
VERSION = 2
FORMAT = f"{FAMILY}/{VERSION}"
_REQUIRED = ("feats", "offsets", "word_ids", "words", "speaker_ids", "speakers", "utterance_ids")
_TENSORS = ("feats", "offsets", "word_ids", "speaker_ids")


def spec_of(data: Dict[str, Any]) -> FeatureSpec:
    """The feature spec a flat dict records (version 1: ``num_mel_bins`` and ``frame_shift``)."""
    if "feature_spec" in data:
        return FeatureSpec.from_json(data["feature_spec"])
    return FeatureSpec(FBANK.name, int(data.get("num_mel_bins", data["feats"].shape[-1])), float(data.get("frame_shift", FBANK.frame_shift)))


def word_segments_record(data: Any, source: str = "<dict>") -> Dict[str, Any]:
    """Validate a flat word-segment dict; returns it with ``feature_spec``, ``num_mel_bins``
    and ``frame_shift`` filled in. Every error names ``source`` and the problem."""
    family = split_tag(data.get("format"))[0] if isinstance(data, dict) else None
    if family != FAMILY:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise FormatError(f"{source}: not a word-segment file (format {got!r}, expected {FORMAT!r})")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise FormatError(f"{source}: missing fields {missing}")
    spec = spec_of(data)
    feats, offsets = data["feats"], torch.as_tensor(data["offsets"]).long()
    word_ids, speaker_ids = torch.as_tensor(data["word_ids"]).long(), torch.as_tensor(data["speaker_ids"]).long()
    n = len(word_ids)
    if feats.dim() != 2 or feats.shape[1] != spec.dim:
        raise FormatError(f"{source}: feats must be [T_total, {spec.dim}], got {tuple(feats.shape)}")
    if len(offsets) != n + 1 or int(offsets[0]) != 0 or int(offsets[-1]) != len(feats):
        raise FormatError(f"{source}: offsets must have S + 1 entries from 0 to len(feats)")
    if n == 0:
        raise FormatError(f"{source}: no segments")
    if bool(((offsets[1:] - offsets[:-1]) < 1).any()):
        raise FormatError(f"{source}: a segment has no frames")
    if int(word_ids.min()) < 0 or int(word_ids.max()) >= len(data["words"]):
        raise FormatError(f"{source}: word_ids out of range of words")
    if len(speaker_ids) != n or len(data["utterance_ids"]) != n:
        raise FormatError(f"{source}: speaker_ids and utterance_ids need one entry per segment")
    if n and (int(speaker_ids.min()) < 0 or int(speaker_ids.max()) >= len(data["speakers"])):
        raise FormatError(f"{source}: speaker_ids out of range of speakers")
    return {
        **data, "offsets": offsets, "word_ids": word_ids, "speaker_ids": speaker_ids,
        "words": list(data["words"]), "speakers": list(data["speakers"]), "utterance_ids": list(data["utterance_ids"]),
        "feature_spec": spec.to_json(), "num_mel_bins": spec.dim, "frame_shift": spec.frame_shift,
    }


def write_word_segments(path: PathLike, data: Dict[str, Any]) -> Path:
    """Write a flat word-segment dict as ``rescorer.word_segments/2`` (atomically), after validating it."""
    rec = word_segments_record({**data, "format": FORMAT}, source=str(path))
    tensors = {
        "feats": rec["feats"].to(torch.float16), "offsets": rec["offsets"], "word_ids": rec["word_ids"],
        "speaker_ids": rec["speaker_ids"],
    }
    if rec.get("starts") is not None:
        tensors["starts"] = torch.as_tensor(rec["starts"], dtype=torch.float32)
    meta = {k: rec[k] for k in ("words", "speakers", "utterance_ids", "feature_spec")}
    if rec.get("stats") is not None:
        meta["stats"] = dict(rec["stats"])
    return write_tagged(path, FAMILY, VERSION, tensors, meta)


def read_word_segments(path: PathLike, expect: Optional[FeatureSpec] = FBANK) -> Dict[str, Any]:
    """Read and validate a split -> the flat dict; with ``expect``, its feature spec must match (or
    hold ``expect``'s layers among its stacked layers: those columns, ``contract.layer_view``)."""
    tf = read_tagged(path, FAMILY, versions=(VERSION,), legacy_versions=(1,))
    if tf.legacy is not None:
        rec = word_segments_record(tf.legacy, source=tf.path)
    else:
        require(tf, _TENSORS, ("words", "speakers", "utterance_ids", "feature_spec"))
        rec = word_segments_record({"format": FORMAT, **tf.tensors, **tf.meta}, source=tf.path)
    if expect is not None:
        check_spec_or_view(spec_of(rec), expect, tf.path)
        rec = record_view(rec, expect)
    return rec


def record_view(rec: Dict[str, Any], expect: FeatureSpec) -> Dict[str, Any]:
    """A flat record's frames as ``expect``'s, when those are a subset of its stacked layers
    (``formats.contract.layer_view``: those columns); the record unchanged otherwise."""
    cols = layer_view(spec_of(rec), expect)
    if cols is None:
        return rec
    return {**rec, "feats": rec["feats"][:, cols].contiguous(), "feature_spec": expect.to_json(), "num_mel_bins": expect.dim}


# ---------------------------------------------------------------- one split in memory


@dataclass
class WordSegments:
    """One split of word segments held in memory (frames stay float16 until batched)."""

    feats: torch.Tensor
    offsets: torch.Tensor
    word_ids: torch.Tensor
    words: List[str]
    speaker_ids: torch.Tensor
    speakers: List[str]
    utterance_ids: List[str]
    num_mel_bins: int = FBANK.dim
    frame_shift: float = FBANK.frame_shift
    spec: FeatureSpec = FBANK  # the frontend of ``feats``

    def __post_init__(self) -> None:
        self.offsets = self.offsets.long()
        self.word_ids = self.word_ids.long()
        self.speaker_ids = self.speaker_ids.long()
        self.lengths = self.offsets[1:] - self.offsets[:-1]

    def __len__(self) -> int:
        return len(self.word_ids)

    def segment(self, index: int) -> torch.Tensor:
        """Frames [T, F] of one segment (float16 view into ``feats``)."""
        return self.feats[int(self.offsets[index]) : int(self.offsets[index + 1])]

    def segments(self) -> List[torch.Tensor]:
        return [self.segment(i) for i in range(len(self))]

    def batch(
        self, indices: Sequence[int], max_frames: int = 200
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """float32 feats [B, T, F] (zero-padded), lengths [B], word_ids [B] of ``indices``.

        One vectorised gather, no Python loop over segments. Segments longer than
        ``max_frames`` are center-cropped, the encoder's rule.
        """
        idx = torch.as_tensor(indices, dtype=torch.long)
        lengths = self.lengths[idx]
        start = self.offsets[idx] + (lengths - max_frames).clamp(min=0) // 2
        lengths = lengths.clamp(max=max_frames)
        return gather_padded(self.feats, start, lengths), lengths, self.word_ids[idx]

    def feature_stats(self, chunk_frames: int = 1 << 20) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-bin mean and standard deviation over all frames (float64 accumulation)."""
        return feature_stats(self.feats, chunk_frames)

    def select(self, indices: Sequence[int]) -> "WordSegments":
        """The segments ``indices`` (in that order) as a split of their own: frames copied,
        the vocabulary reduced to their words (sorted, as every exported split), speakers kept."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        lengths = self.lengths[idx]
        offsets = torch.zeros(len(idx) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(lengths, 0)
        # frame k of the new split comes from offsets[idx[s]] + (k - new offset of s), s its segment
        seg_of_frame = torch.repeat_interleave(torch.arange(len(idx)), lengths)
        frame_idx = self.offsets[idx][seg_of_frame] + torch.arange(int(offsets[-1])) - offsets[:-1][seg_of_frame]
        old_words = self.word_ids[idx].tolist()
        vocab = sorted({self.words[i] for i in old_words})
        new_id = {w: i for i, w in enumerate(vocab)}
        return WordSegments(
            feats=self.feats[frame_idx],
            offsets=offsets,
            word_ids=torch.tensor([new_id[self.words[i]] for i in old_words], dtype=torch.long),
            words=vocab,
            speaker_ids=self.speaker_ids[idx].clone(),
            speakers=list(self.speakers),
            utterance_ids=[self.utterance_ids[i] for i in idx.tolist()],
            num_mel_bins=self.num_mel_bins,
            frame_shift=self.frame_shift,
            spec=self.spec,
        )

    def to_dict(self) -> Dict[str, object]:
        return {
            "format": FORMAT,
            "feats": self.feats,
            "offsets": self.offsets,
            "word_ids": self.word_ids,
            "words": list(self.words),
            "speaker_ids": self.speaker_ids,
            "speakers": list(self.speakers),
            "utterance_ids": list(self.utterance_ids),
            "feature_spec": self.spec.to_json(),
        }


def word_segments_from_dict(data: Dict[str, object], source: str = "<dict>") -> WordSegments:
    """Validate a flat word-segment dict and wrap it; errors name the file and the problem."""
    rec = word_segments_record(data, source)
    return WordSegments(
        feats=rec["feats"],
        offsets=rec["offsets"],
        word_ids=rec["word_ids"],
        words=rec["words"],
        speaker_ids=rec["speaker_ids"],
        speakers=rec["speakers"],
        utterance_ids=rec["utterance_ids"],
        num_mel_bins=int(rec["num_mel_bins"]),
        frame_shift=float(rec["frame_shift"]),
        spec=FeatureSpec.from_json(rec["feature_spec"]),
    )


def load_word_segments(path: str, expect: Optional[FeatureSpec] = FBANK) -> WordSegments:
    """Load and validate one split written by the corpus export (or ``write_synthetic``);
    ``expect`` None takes any frontend's frames (training builds its encoder for them)."""
    return word_segments_from_dict(read_word_segments(path, expect), source=str(path))
