"""Word segments exported by the corpus code, batched by length for embedder training.

One file per split (format ``rescorer.word_segments``, ``rescorer.formats.word_segments``):
all segments' float16 log-mel frames concatenated in ``feats`` [T_total, 80], segment s
being ``feats[offsets[s]:offsets[s + 1]]`` (1-200 frames), with its word
(``word_ids`` into the sorted, normalised spellings ``words``), speaker and utterance.
Splits have their own word lists; code that compares splits maps words by spelling.
The in-memory split (``WordSegments``, ``load_word_segments``) lives in
``rescorer.formats.word_segments`` since evaluation reads it too; this module adds the
training sampler.

Everything here is plain torch + numpy: the training path must not import lhotse or k2.
"""

from __future__ import annotations

import math
from typing import List

import torch

from rescorer.formats.word_segments import WordSegments, load_word_segments, word_segments_from_dict  # noqa: F401
from rescorer.training.common import ShardedBucketSampler


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
