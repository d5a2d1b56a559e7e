"""Utterance-level ASR data: export from lhotse cuts, loading, batching, SpecAugment.

The file format (``rescorer.utterances``, one file per split: fbank frames, offsets,
transcripts, speakers, the recorded feature spec) is ``rescorer.formats.utterances``;
this module exports cuts to it and adds what training needs on top of it.

Bad input, by rule:

- an utterance with no frames (empty audio) -> ``ValueError`` naming the utterance
  (at export and at load);
- an utterance shorter than ``MIN_FRAMES`` (7 frames = 70 ms; the x4 subsampling needs
  7 frames for one output frame) -> ``ValueError`` naming it, at load;
- a transcript with characters outside the token set (digits, symbols) ->
  ``rescorer.tokens.TokenError`` naming the utterance and the character;
- an utterance longer than ``max_frames`` (default 3000 = 30 s) is, at load, skipped
  and counted (``Utterances.skipped_too_long``, logged) with ``too_long="skip"``
  (the default), or rejected with a ``ValueError`` naming it with ``too_long="error"``.

Only ``export_utterances`` touches lhotse (lazily, through the cuts it is given);
everything else is plain torch, for training machines without lhotse or k2.
"""

from __future__ import annotations

import logging
import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from rescorer.formats.contract import FBANK, MIN_INPUT_FRAMES, SUBSAMPLING_FACTOR, FeatureSpec
from rescorer.formats.frames import feature_stats, gather_padded
from rescorer.formats.utterances import (
    FORMAT,
    UtteranceFeatures,
    read_utterance_features,
    utterance_features_from_dict,
    write_utterance_features,
)
from rescorer.models.ctc import subsampled_lengths
from rescorer.text import LETTERS, NotAWordError, split_words
from rescorer.tokens import TokenError, words_to_token_ids
from rescorer.training.common import ShardedBucketSampler

log = logging.getLogger(__name__)

NUM_MEL_BINS = FBANK.dim
MIN_FRAMES = MIN_INPUT_FRAMES
DEFAULT_MAX_FRAMES = 3000


# ---------------------------------------------------------------- text


def _offending_character(text: str) -> Optional[str]:
    """First character of ``text`` that normalisation cannot turn into a-z / apostrophe."""
    for ch in text:
        if ch.isspace() or ch in ".,;:!?\"()[]{}-\u2013\u2014/\u2019\u2018\u02bc`":
            continue
        folded = unicodedata.normalize("NFKD", ch.casefold())
        folded = "".join(c for c in folded if not unicodedata.combining(c))
        if not folded or any(c not in LETTERS for c in folded):
            return ch
    return None


def normalize_transcript(text: str, utterance_id: str) -> str:
    """Normalised words joined by spaces; ``TokenError`` names the utterance and character."""
    try:
        words = split_words(text or "")
    except NotAWordError as e:
        bad = _offending_character(text or "")
        if bad is None:
            raise TokenError(f"utterance {utterance_id}: transcript {text!r} has no words ({e})") from e
        raise TokenError(
            f"utterance {utterance_id}: character {bad!r} in transcript {text!r} is not in the token set "
            f"(a-z and apostrophe)"
        ) from e
    return " ".join(words)


def transcript_token_ids(text: str, utterance_id: str) -> List[int]:
    """Token ids (letters + word boundaries) of a normalised transcript, errors naming the utterance."""
    try:
        return words_to_token_ids(text.split())
    except TokenError as e:
        bad = _offending_character(text)
        raise TokenError(f"utterance {utterance_id}: {e}" + (f" (character {bad!r})" if bad else "")) from e


# ---------------------------------------------------------------- export (lhotse bridge)


def export_utterances(cuts: Iterable, path, progress: bool = True, spec: FeatureSpec = FBANK) -> Path:
    """Write cuts with features to the format ``rescorer.utterances`` (atomically).

    ``cuts``: lhotse cuts with computed features (or anything with ``id``, ``supervisions``
    and ``load_features()``). The transcript is all supervisions' texts joined, normalised.
    """
    import numpy as np
    from tqdm import tqdm

    chunks, offsets, texts, ids, speakers = [], [0], [], [], []
    for cut in tqdm(cuts, desc="utterances", unit="utt", disable=not progress):
        if not getattr(cut, "has_features", True):
            raise ValueError(f"utterance {cut.id}: no features (compute fbank first)")
        raw = " ".join(s.text or "" for s in cut.supervisions)
        text = normalize_transcript(raw, cut.id)
        feats = np.asarray(cut.load_features(), dtype=np.float32)
        if feats.ndim != 2 or feats.shape[0] == 0:
            raise ValueError(f"utterance {cut.id}: empty audio (0 feature frames)")
        if feats.shape[1] != spec.dim:
            raise ValueError(f"utterance {cut.id}: {feats.shape[1]} feature values per frame, expected {spec.dim} ({spec.name})")
        chunks.append(feats.astype(np.float16))
        offsets.append(offsets[-1] + feats.shape[0])
        texts.append(text)
        ids.append(cut.id)
        sup_speakers = [s.speaker for s in cut.supervisions if getattr(s, "speaker", None)]
        speakers.append(sup_speakers[0] if sup_speakers else cut.id)
    if not ids:
        raise ValueError(f"export_utterances({path}): no cuts")
    utts = UtteranceFeatures(
        torch.from_numpy(np.concatenate(chunks)), torch.tensor(offsets, dtype=torch.int64), texts, ids, speakers, spec
    )
    path = write_utterance_features(path, utts)
    log.info("exported %d utterances (%.2f h) to %s", len(ids), offsets[-1] * spec.frame_shift / 3600, path)
    return path


# ---------------------------------------------------------------- loading


@dataclass
class Utterances:
    """One split in memory. Indices 0..len-1 address the kept utterances (too-long ones skipped)."""

    feats: torch.Tensor  # float16 [T_total, 80]
    offsets: torch.Tensor  # int64 [U + 1], all utterances of the file
    texts: List[str]
    utterance_ids: List[str]
    speakers: List[str]
    token_ids: List[List[int]]  # per kept utterance
    keep: torch.Tensor  # int64 [N]: file index of each kept utterance
    skipped_too_long: List[str] = field(default_factory=list)
    frame_shift: float = FBANK.frame_shift
    spec: FeatureSpec = FBANK  # the frontend of ``feats`` (any: the model adapts its input side)

    def __post_init__(self) -> None:
        all_lengths = self.offsets[1:] - self.offsets[:-1]
        self.lengths = all_lengths[self.keep]
        self.starts = self.offsets[:-1][self.keep]
        self.num_tokens = torch.tensor([len(t) for t in self.token_ids], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.keep)

    def utterance_id(self, i: int) -> str:
        return self.utterance_ids[int(self.keep[i])]

    def text(self, i: int) -> str:
        return self.texts[int(self.keep[i])]

    def features(self, i: int) -> torch.Tensor:
        j = int(self.keep[i])
        return self.feats[int(self.offsets[j]) : int(self.offsets[j + 1])]

    @property
    def hours(self) -> float:
        return float(self.lengths.sum()) * self.frame_shift / 3600

    def batch(self, indices: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor, List[List[int]]]:
        """float32 feats [B, T, 80] (zero padding), lengths [B], token id lists of ``indices``."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        lengths = self.lengths[idx]
        feats = gather_padded(self.feats, self.starts[idx], lengths)
        return feats, lengths, [self.token_ids[int(i)] for i in idx]

    def feature_stats(self, chunk_frames: int = 1 << 20) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-bin mean and standard deviation over all frames of the file (float64 sums)."""
        return feature_stats(self.feats, chunk_frames)

    def ctc_infeasible(self, subsampling_factor: int = SUBSAMPLING_FACTOR) -> int:
        """Utterances whose token sequence (plus repeats) cannot fit the subsampled frames."""
        out_lens = subsampled_lengths(self.lengths, subsampling_factor)
        need = []
        for toks in self.token_ids:
            need.append(len(toks) + sum(1 for a, b in zip(toks, toks[1:]) if a == b))
        return int((torch.tensor(need, dtype=torch.long) > out_lens).sum())


def utterances_from_dict(
    data,
    source: str = "<dict>",
    max_frames: Optional[int] = DEFAULT_MAX_FRAMES,
    too_long: str = "skip",
) -> Utterances:
    """Validate a split (``UtteranceFeatures`` or its flat dict) for training and wrap it;
    every error names the file and the utterance."""
    if too_long not in ("skip", "error"):
        raise ValueError(f"too_long must be 'skip' or 'error', got {too_long!r}")
    u = data if isinstance(data, UtteranceFeatures) else utterance_features_from_dict(data, source)
    feats, offsets, ids, texts, speakers = u.feats, u.offsets, u.utterance_ids, u.texts, u.speakers
    n = len(ids)
    lengths = offsets[1:] - offsets[:-1]
    keep, skipped, token_ids = [], [], []
    for i in range(n):
        length = int(lengths[i])
        if length <= 0:
            raise ValueError(f"{source}: utterance {ids[i]} has empty audio (0 frames)")
        if length < MIN_FRAMES:
            raise ValueError(
                f"{source}: utterance {ids[i]} has {length} frames; at least {MIN_FRAMES} "
                f"({MIN_FRAMES * u.spec.frame_shift * 1000:g} ms) are needed"
            )
        toks = transcript_token_ids(texts[i], ids[i])
        if not toks:
            raise ValueError(f"{source}: utterance {ids[i]} has an empty transcript")
        if max_frames is not None and length > max_frames:
            if too_long == "error":
                raise ValueError(
                    f"{source}: utterance {ids[i]} has {length} frames, more than max_frames={max_frames}"
                )
            skipped.append(ids[i])
            continue
        keep.append(i)
        token_ids.append(toks)
    if not keep:
        raise ValueError(f"{source}: every utterance is longer than max_frames={max_frames}")
    if skipped:
        log.warning("%s: skipped %d utterances longer than %d frames", source, len(skipped), max_frames)
    return Utterances(
        feats=feats,
        offsets=offsets,
        texts=texts,
        utterance_ids=ids,
        speakers=speakers,
        token_ids=token_ids,
        keep=torch.tensor(keep, dtype=torch.long),
        skipped_too_long=skipped,
        frame_shift=u.spec.frame_shift,
        spec=u.spec,
    )


def load_utterances(path, max_frames: Optional[int] = DEFAULT_MAX_FRAMES, too_long: str = "skip") -> Utterances:
    """Load and validate one exported split (see the module doc for the bad-input rules)."""
    utts = read_utterance_features(path, expect=None)  # any frontend: the model is built for it
    return utterances_from_dict(utts, source=str(path), max_frames=max_frames, too_long=too_long)


# ---------------------------------------------------------------- batching by total frames


class FrameBatchSampler(ShardedBucketSampler):
    """Seeded batches of similar-length utterances holding at most ``batch_frames`` padded frames.

    Each epoch: a seeded permutation is cut into pools of ``pool_size`` utterances; each
    pool is sorted by length and cut greedily into batches with
    ``batch_size * longest <= batch_frames`` (a longer single utterance forms its own
    batch); batch order is shuffled. Every rank computes the same list and takes every
    ``num_replicas``-th batch; the list is padded by repeating batches from its start so
    all ranks run the same number of steps (DDP). ``state_dict`` (epoch, position) makes
    iteration resumable mid-epoch. (Shared logic: ``rescorer.training.common.ShardedBucketSampler``.)
    """

    def __init__(
        self,
        lengths: torch.Tensor,
        batch_frames: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        pool_size: int = 1000,
        shuffle: bool = True,
        max_batch_size: Optional[int] = None,
    ):
        if batch_frames < 1:
            raise ValueError("batch_frames must be >= 1")
        super().__init__(lengths, seed, num_replicas, rank, shuffle)
        self.batch_frames = batch_frames
        self.pool_size = pool_size
        self.max_batch_size = max_batch_size
        self._cache: Optional[Tuple[int, List[List[int]]]] = None

    def _pool_len(self) -> int:
        return self.pool_size

    def _cut_pool(self, chunk: torch.Tensor) -> List[List[int]]:
        batches: List[List[int]] = []
        cur: List[int] = []
        longest = 0
        for i in chunk.tolist():
            length = int(self.lengths[i])
            new_longest = max(longest, length)
            too_many = self.max_batch_size is not None and len(cur) >= self.max_batch_size
            if cur and (new_longest * (len(cur) + 1) > self.batch_frames or too_many):
                batches.append(cur)
                cur, new_longest = [], length
            cur.append(i)
            longest = new_longest
        if cur:
            batches.append(cur)
        return batches

    def _all_batches(self) -> List[List[int]]:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        batches = super()._all_batches()
        self._cache = (self.epoch, batches)
        return batches


# ---------------------------------------------------------------- SpecAugment


def spec_augment(
    feats: torch.Tensor,
    lengths: torch.Tensor,
    generator: torch.Generator,
    fill: Optional[torch.Tensor] = None,
    num_freq_masks: int = 2,
    max_freq_width: int = 15,
    time_masks_per_second: float = 0.5,
    max_time_masks: int = 10,
    max_time_width: int = 40,
    max_time_fraction: float = 0.2,
) -> torch.Tensor:
    """Time and frequency masking (Park et al. 2019) of a padded batch, on a copy.

    Masked bins/frames get ``fill`` (per-bin [F], e.g. the feature mean, so that they
    are zero after normalisation; default 0). Time masks stay inside each utterance:
    ``ceil(time_masks_per_second * seconds)`` masks (at most ``max_time_masks``), each
    at most ``min(max_time_width, max_time_fraction * length)`` frames. Frequency masks:
    ``num_freq_masks`` bands of up to ``max_freq_width`` bins. Seeded by ``generator``
    (CPU); runs on the tensors' device.
    """
    B, T, F = feats.shape
    out = feats.clone()
    device = feats.device
    fill_v = torch.zeros(F, dtype=feats.dtype, device=device) if fill is None else fill.to(device, feats.dtype)
    bins = torch.arange(F)
    frames = torch.arange(T)
    fmask = torch.zeros(B, F, dtype=torch.bool)
    tmask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        for _ in range(num_freq_masks):
            w = int(torch.randint(0, max_freq_width + 1, (1,), generator=generator))
            if w == 0:
                continue
            f0 = int(torch.randint(0, max(1, F - w + 1), (1,), generator=generator))
            fmask[b] |= (bins >= f0) & (bins < f0 + w)
        length = int(lengths[b])
        n_masks = min(max_time_masks, math.ceil(time_masks_per_second * length / 100))
        width_cap = min(max_time_width, int(max_time_fraction * length))
        for _ in range(n_masks):
            if width_cap < 1:
                break
            w = int(torch.randint(0, width_cap + 1, (1,), generator=generator))
            if w == 0:
                continue
            t0 = int(torch.randint(0, max(1, length - w + 1), (1,), generator=generator))
            tmask[b] |= (frames >= t0) & (frames < t0 + w)
    mask = fmask.to(device)[:, None, :] | tmask.to(device)[:, :, None]
    return torch.where(mask, fill_v.expand(B, T, F), out)
