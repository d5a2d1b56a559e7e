"""Word segments exported by the corpus code: loading and batching by length.

One file per split (format ``rescorer.word_segments``, ``rescorer.formats.word_segments``):
all segments' float16 log-mel frames concatenated in ``feats`` [T_total, 80], segment s
being ``feats[offsets[s]:offsets[s + 1]]`` (1-200 frames), with its word
(``word_ids`` into the sorted, normalised spellings ``words``), speaker and utterance.
Splits have their own word lists; code that compares splits maps words by spelling.

Everything here is plain torch + numpy: the training path must not import lhotse or k2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from rescorer.formats.contract import FBANK, FeatureSpec
from rescorer.formats.word_segments import FORMAT, read_word_segments, word_segments_record, write_word_segments
from rescorer.training.common import ShardedBucketSampler, feature_stats, gather_padded


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
            "feature_spec": FeatureSpec(FBANK.name, self.num_mel_bins, self.frame_shift).to_json(),
        }


def word_segments_from_dict(data: Dict[str, object], source: str = "<dict>") -> WordSegments:
    """Validate an exported dict (``rescorer.formats.word_segments``) and wrap it; errors
    name the file and the problem."""
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
