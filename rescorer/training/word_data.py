"""Word segments exported by the corpus code: loading and batching by length.

One file per split, written with ``torch.save`` (format "rescorer.word_segments/1"):
all segments' float16 log-mel frames concatenated in ``feats`` [T_total, 80], segment s
being ``feats[offsets[s]:offsets[s + 1]]`` (1-200 frames), with its word
(``word_ids`` into the sorted, normalised spellings ``words``), speaker and utterance.
Splits have their own word lists; code that compares splits maps words by spelling.

Everything here is plain torch + numpy: the training path must not import lhotse or k2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch

from rescorer.training.common import ShardedBucketSampler, feature_stats, gather_padded

FORMAT = "rescorer.word_segments/1"
_REQUIRED = ("feats", "offsets", "word_ids", "words", "speaker_ids", "speakers", "utterance_ids")


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
    num_mel_bins: int = 80
    frame_shift: float = 0.01

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
            "num_mel_bins": self.num_mel_bins,
            "frame_shift": self.frame_shift,
        }


def word_segments_from_dict(data: Dict[str, object], source: str = "<dict>") -> WordSegments:
    """Validate an exported dict and wrap it; errors name the file and the problem."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{source}: not a word-segment file (format {got!r}, expected {FORMAT!r})")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ValueError(f"{source}: missing fields {missing}")
    ds = WordSegments(
        feats=data["feats"],
        offsets=data["offsets"],
        word_ids=data["word_ids"],
        words=list(data["words"]),
        speaker_ids=data["speaker_ids"],
        speakers=list(data["speakers"]),
        utterance_ids=list(data["utterance_ids"]),
        num_mel_bins=int(data.get("num_mel_bins", data["feats"].shape[1])),
        frame_shift=float(data.get("frame_shift", 0.01)),
    )
    n = len(ds.word_ids)
    if ds.feats.dim() != 2 or ds.feats.shape[1] != ds.num_mel_bins:
        raise ValueError(f"{source}: feats must be [T_total, {ds.num_mel_bins}], got {tuple(ds.feats.shape)}")
    if len(ds.offsets) != n + 1 or int(ds.offsets[0]) != 0 or int(ds.offsets[-1]) != len(ds.feats):
        raise ValueError(f"{source}: offsets must have S + 1 entries from 0 to len(feats)")
    if n == 0:
        raise ValueError(f"{source}: no segments")
    if bool((ds.lengths < 1).any()):
        raise ValueError(f"{source}: a segment has no frames")
    if int(ds.word_ids.min()) < 0 or int(ds.word_ids.max()) >= len(ds.words):
        raise ValueError(f"{source}: word_ids out of range of words")
    if len(ds.speaker_ids) != n or len(ds.utterance_ids) != n:
        raise ValueError(f"{source}: speaker_ids and utterance_ids need one entry per segment")
    return ds


def load_word_segments(path: str) -> WordSegments:
    """Load and validate one split written by the corpus export (or ``write_synthetic``)."""
    return word_segments_from_dict(torch.load(path, map_location="cpu"), source=str(path))


# ---------------------------------------------------------------- batching by length


class LengthBucketBatchSampler(ShardedBucketSampler):
    """Seeded batches of similar-length segments, sharded over distributed ranks.

    Each epoch: a seeded permutation of all segments is cut into pools of
    ``batch_size * pool_batches`` segments; each pool is sorted by length and cut into
    batches (little padding), and the batch order is shuffled. Every rank computes the
    same list and takes every ``num_replicas``-th batch; the list is padded by repeating
    batches from its start so all ranks run the same number of steps (DDP requires it).

    The state (epoch, batches consumed) is saved in checkpoints: ``load_state_dict``
    then iteration resumes where the run stopped. (Shared logic:
    ``rescorer.training.common.ShardedBucketSampler``.)
    """

    def __init__(
        self,
        lengths: torch.Tensor,
        batch_size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        pool_batches: int = 50,
        shuffle: bool = True,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        super().__init__(lengths, seed, num_replicas, rank, shuffle)
        self.batch_size = batch_size
        self.pool_batches = pool_batches

    def _pool_len(self) -> int:
        return self.batch_size * self.pool_batches

    def _cut_pool(self, chunk: torch.Tensor) -> List[List[int]]:
        return [chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.lengths) / self.batch_size) / self.num_replicas)
