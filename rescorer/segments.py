"""Word segments: fbank frames of each aligned word, stored for fast training.

Pipeline: utterance cuts -> 80-bin log-mel fbank (lhotse ``Fbank``, 25 ms window,
10 ms shift, stored with lilcom) -> one segment per aligned word -> a plain torch file
per split (``export_word_segments``) that training reads without lhotse.

Segment rule (documented, counted): a word spans frames
``[round(start / 0.01), round(end / 0.01))`` of its utterance. Segments longer than
``max_frames`` (200 = 2 s; nearly always alignment errors or very slow speech) and
shorter than ``min_frames`` (3 = 30 ms; too short to carry a word) are dropped from
the segment set and counted as ``segments_dropped`` (split into ``too_long`` and
``too_short``). At rescoring time, spans longer than the encoder window are
centre-cropped instead (the lattice must still get a score).

The export is a ``rescorer.word_segments`` file (``rescorer.formats.word_segments``:
float16 frames, offsets, word and speaker ids, the feature spec), which training reads
without lhotse.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from rescorer.formats.contract import FBANK, SAMPLE_RATE, FeatureSpec
from rescorer.formats.word_segments import FORMAT as SEGMENTS_FORMAT  # noqa: F401  (the export's tag)
from rescorer.formats.word_segments import write_word_segments
from rescorer.utils import atomic_path

log = logging.getLogger(__name__)

FRAME_SHIFT = FBANK.frame_shift
NUM_MEL_BINS = FBANK.dim
MAX_FRAMES = 200
MIN_FRAMES = 3


def fbank_extractor():
    from lhotse import Fbank, FbankConfig

    return Fbank(FbankConfig(num_mel_bins=FBANK.dim, frame_shift=FBANK.frame_shift, sampling_rate=SAMPLE_RATE))


def compute_features(cuts, storage_dir, manifest_path, num_jobs: int = 1, extractor=None):
    """Features for ``cuts`` (fbank, or ``extractor``: a frontend of ``rescorer.frontends``)
    stored under ``storage_dir``; resumable per manifest.

    If ``manifest_path`` exists (a previous run finished) it is loaded instead.
    """
    from lhotse import CutSet

    manifest_path = Path(manifest_path)
    if manifest_path.exists():
        log.info("features already computed: %s", manifest_path)
        return CutSet.from_file(manifest_path)
    storage = Path(storage_dir)
    storage.mkdir(parents=True, exist_ok=True)
    stem = manifest_path.name.split(".")[0]
    import torch

    threads = torch.get_num_threads()
    if num_jobs > 1:  # worker processes + intra-op threads can deadlock (lhotse warns about it)
        torch.set_num_threads(1)
    try:
        with_feats = _compute(cuts, storage, stem, num_jobs, extractor)
    finally:
        torch.set_num_threads(threads)
    with_feats = CutSet.from_cuts(sorted(with_feats, key=lambda c: c.id))
    with atomic_path(manifest_path) as tmp:
        with_feats.to_file(str(tmp))
    return with_feats


def _compute(cuts, storage: Path, stem: str, num_jobs: int, extractor=None):
    from lhotse import LilcomChunkyWriter, NumpyFilesWriter

    # lilcom's lossy log-domain compression suits log-mel energies, not a network's states
    writer = LilcomChunkyWriter if extractor is None or extractor.name == "kaldi-fbank" else NumpyFilesWriter
    return cuts.compute_and_store_features(
        extractor=extractor or fbank_extractor(),
        storage_path=str(storage / stem),
        num_jobs=num_jobs,
        storage_type=writer,
        progress_bar=True,
    )


@dataclass
class SegmentStats:
    word_segments: int = 0
    too_long: int = 0
    too_short: int = 0
    unaligned_utterances: int = 0

    @property
    def segments_dropped(self) -> int:
        return self.too_long + self.too_short


@dataclass
class WordSegments:
    """All word segments of one split, in memory, in the export format's layout."""

    feats: "np.ndarray"  # float16 [T_total, 80]
    offsets: "np.ndarray"  # int64 [S+1]
    words: List[str]  # per segment spelling
    speakers: List[str]  # per segment
    utterance_ids: List[str]
    starts: List[float] = field(default_factory=list)  # seconds, within the utterance
    stats: SegmentStats = field(default_factory=SegmentStats)
    spec: FeatureSpec = FBANK  # the frontend of ``feats``

    def __len__(self) -> int:
        return len(self.words)

    def segment(self, i: int) -> np.ndarray:
        return self.feats[self.offsets[i] : self.offsets[i + 1]]


def word_frame_span(start: float, duration: float, num_frames: int, frame_shift: float = FRAME_SHIFT) -> tuple:
    """[first, last) frame of a word at ``start`` lasting ``duration`` seconds."""
    a = int(round(start / frame_shift))
    b = int(round((start + duration) / frame_shift))
    return max(0, min(a, num_frames)), max(0, min(b, num_frames))


def extract_word_segments(cuts, max_frames: int = MAX_FRAMES, min_frames: int = MIN_FRAMES, progress: bool = True,
                          spec: FeatureSpec = FBANK) -> WordSegments:
    """Slice each aligned word's frames out of its utterance's features (see module rule);
    the features are frames of ``spec`` (10 ms fbank, or another frontend's)."""
    from tqdm import tqdm

    chunks, offsets, words, speakers, utts, starts = [], [0], [], [], [], []
    stats = SegmentStats()
    for cut in tqdm(cuts, desc="word segments", unit="utt", disable=not progress):
        sups = [s for s in cut.supervisions if s.alignment and s.alignment.get("word")]
        if not sups:
            stats.unaligned_utterances += 1
            continue
        if not cut.has_features:
            raise ValueError(f"cut {cut.id} has no features: run compute_features first")
        feats = cut.load_features()
        if feats.ndim != 2 or feats.shape[1] != spec.dim:
            raise ValueError(f"cut {cut.id}: features of {feats.shape[-1]} values, expected {spec.dim} ({spec.name})")
        for sup in sups:
            for item in sup.alignment["word"]:
                a, b = word_frame_span(sup.start + item.start, item.duration, feats.shape[0], spec.frame_shift)
                n = b - a
                if n > max_frames:
                    stats.too_long += 1
                    continue
                if n < min_frames:
                    stats.too_short += 1
                    continue
                chunks.append(feats[a:b].astype(np.float16))
                offsets.append(offsets[-1] + n)
                words.append(item.symbol)
                speakers.append(sup.speaker or cut.id)
                utts.append(cut.id)
                starts.append(round(sup.start + item.start, 4))
    stats.word_segments = len(words)
    all_feats = np.concatenate(chunks) if chunks else np.zeros((0, spec.dim), np.float16)
    return WordSegments(all_feats, np.asarray(offsets, np.int64), words, speakers, utts, starts, stats, spec)


def export_word_segments(segs: WordSegments, path) -> Path:
    """Write the export (format ``rescorer.word_segments``) atomically."""
    import torch

    vocab = sorted(set(segs.words))
    wid = {w: i for i, w in enumerate(vocab)}
    spk = sorted(set(segs.speakers))
    sid = {s: i for i, s in enumerate(spk)}
    return write_word_segments(path, {
        "feats": torch.from_numpy(np.ascontiguousarray(segs.feats, dtype=np.float16)),
        "offsets": torch.from_numpy(segs.offsets.astype(np.int64)),
        "word_ids": torch.tensor([wid[w] for w in segs.words], dtype=torch.int64),
        "words": vocab,
        "speaker_ids": torch.tensor([sid[s] for s in segs.speakers], dtype=torch.int64),
        "speakers": spk,
        "utterance_ids": list(segs.utterance_ids),
        "starts": torch.tensor(segs.starts, dtype=torch.float32),
        "feature_spec": segs.spec.to_json(),
        "stats": {
            "word_segments": segs.stats.word_segments,
            "too_long": segs.stats.too_long,
            "too_short": segs.stats.too_short,
            "unaligned_utterances": segs.stats.unaligned_utterances,
        },
    })


def word_segment_cuts(cuts, max_frames: int = MAX_FRAMES, min_frames: int = MIN_FRAMES):
    """The same segments as a lazy-friendly lhotse CutSet of word-level cuts (for lhotse users)."""
    from lhotse import CutSet, SupervisionSegment
    from lhotse.utils import fastcopy

    out = []
    for cut in cuts:
        for sup in cut.supervisions:
            if not (sup.alignment and sup.alignment.get("word")):
                continue
            for k, item in enumerate(sup.alignment["word"]):
                a, b = word_frame_span(sup.start + item.start, item.duration, 1 << 30)
                if not (min_frames <= b - a <= max_frames):
                    continue
                start = min(a * FRAME_SHIFT, cut.duration)
                dur = min((b - a) * FRAME_SHIFT, cut.duration - start)
                if dur <= 0:
                    continue
                wc = cut.truncate(offset=start, duration=dur, keep_excessive_supervisions=False, preserve_id=False)
                wid = f"{cut.id}_w{k:03d}"
                out.append(
                    fastcopy(
                        wc,
                        id=wid,
                        supervisions=[
                            SupervisionSegment(
                                id=wid, recording_id=cut.recording_id, start=0.0, duration=dur, channel=sup.channel,
                                text=item.symbol, speaker=sup.speaker,
                            )
                        ]
                    )
                )
    return CutSet.from_cuts(out)
