"""Synthetic data for the tests: utterance-feature and word-segment files whose audio
spells their text letter by letter, so small models learn from them in seconds.
(Fixtures belong to the tests, not to the library modules whose formats they write.)"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from rescorer.formats.contract import FBANK
from rescorer.formats.utterances import FORMAT as UTTERANCES_FORMAT
from rescorer.formats.utterances import utterance_features_from_dict, write_utterance_features
from rescorer.formats.word_segments import FORMAT as SEGMENTS_FORMAT
from rescorer.formats.word_segments import write_word_segments

NUM_MEL_BINS, FRAME_SHIFT = FBANK.dim, FBANK.frame_shift

# ---------------------------------------------------------------- utterances (ASR)


def make_synthetic_utterances(
    texts: Sequence[str],
    seed: int = 0,
    frames_per_letter: Tuple[int, int] = (4, 7),
    gap_frames: Tuple[int, int] = (2, 5),
    noise: float = 0.3,
    speakers: Optional[Sequence[str]] = None,
) -> Dict[str, object]:
    """An export-format dict whose audio spells the texts: each letter is a fixed random
    80-bin pattern held for a few frames (plus noise), words separated by silence-like gaps.
    """
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(12345)  # the letter patterns are the same for every seed
    patterns = torch.randn(27, NUM_MEL_BINS, generator=g) * 2.0
    silence = torch.full((NUM_MEL_BINS,), -1.0)
    noise_g = torch.Generator().manual_seed(seed)
    chunks, offsets = [], [0]
    for text in texts:
        frames = []
        for _ in range(rng.randint(*gap_frames)):
            frames.append(silence)
        for word in text.split():
            for ch in word:
                k = 26 if ch == "'" else ord(ch) - ord("a")
                frames.extend([patterns[k]] * rng.randint(*frames_per_letter))
            frames.extend([silence] * rng.randint(*gap_frames))
        x = torch.stack(frames)
        x = x + noise * torch.randn(x.shape, generator=noise_g)
        chunks.append(x.half())
        offsets.append(offsets[-1] + len(x))
    return {
        "format": UTTERANCES_FORMAT,
        "feats": torch.cat(chunks),
        "offsets": torch.tensor(offsets, dtype=torch.long),
        "texts": list(texts),
        "utterance_ids": [f"utt{i:04d}" for i in range(len(texts))],
        "speakers": list(speakers) if speakers is not None else [f"spk{i % 3}" for i in range(len(texts))],
        "num_mel_bins": NUM_MEL_BINS,
        "frame_shift": FRAME_SHIFT,
    }


def random_sentences(count: int, seed: int, vocabulary: Sequence[str], min_words: int = 2, max_words: int = 5) -> List[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(min_words, max_words))) for _ in range(count)]


def write_synthetic_utterances(path, texts: Sequence[str], seed: int = 0, **kwargs) -> Path:
    return write_utterance_features(path, utterance_features_from_dict(make_synthetic_utterances(texts, seed=seed, **kwargs)))


# ---------------------------------------------------------------- word segments (embeddings)

SYNTHETIC_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def random_words(
    count: int, seed: int, min_len: int = 3, max_len: int = 7, exclude: Sequence[str] = ()
) -> List[str]:
    """``count`` distinct random lowercase strings (sorted), none of them in ``exclude``."""
    rng = random.Random(seed)
    taken = set(exclude)
    words: List[str] = []
    while len(words) < count:
        w = "".join(rng.choice(SYNTHETIC_LETTERS) for _ in range(rng.randint(min_len, max_len)))
        if w not in taken:
            taken.add(w)
            words.append(w)
    return sorted(words)


def make_synthetic_word_segments(
    words: Sequence[str],
    segments_per_word: int = 4,
    seed: int = 0,
    num_speakers: int = 3,
    num_mel_bins: int = 80,
    noise: float = 0.5,
    frames_per_letter: Tuple[int, int] = (2, 5),
    sound_seed: int = 1234,
) -> Dict[str, object]:
    """A word-segment dict (the export format) rendered from spellings with random data.

    Each letter has a fixed random "sound" (an 80-dim frame pattern, the same in every
    split because it depends only on ``sound_seed``); a segment of a word plays its
    letters' sounds for 2-5 frames each, adds a per-speaker offset and Gaussian noise.
    Audio and spelling are therefore related letter by letter, so a model trained on
    some words can recognise unseen ones, which is what dev P@1 measures.
    """
    words = sorted(set(words))
    sound_gen = torch.Generator().manual_seed(sound_seed)
    letter_sound = {
        c: torch.randn(num_mel_bins, generator=sound_gen) * 2.0 - 4.0 for c in SYNTHETIC_LETTERS + "'"
    }
    gen = torch.Generator().manual_seed(seed)
    speaker_shift = torch.randn(num_speakers, num_mel_bins, generator=gen) * 0.3
    lo, hi = frames_per_letter
    chunks, word_ids, speaker_ids, utts = [], [], [], []
    for wi, word in enumerate(words):
        for k in range(segments_per_word):
            spk = int(torch.randint(num_speakers, (1,), generator=gen))
            frames = []
            for c in word:
                reps = int(torch.randint(lo, hi + 1, (1,), generator=gen))
                frames.append(letter_sound[c].expand(reps, -1))
            seg = torch.cat(frames)[:200] + speaker_shift[spk]
            seg = seg + noise * torch.randn(seg.shape, generator=gen)
            chunks.append(seg)
            word_ids.append(wi)
            speaker_ids.append(spk)
            utts.append(f"synth-{seed}-{wi}-{k}")
    lengths = torch.tensor([len(c) for c in chunks])
    offsets = torch.zeros(len(chunks) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(lengths, 0)
    return {
        "format": SEGMENTS_FORMAT,
        "feats": torch.cat(chunks).to(torch.float16),
        "offsets": offsets,
        "word_ids": torch.tensor(word_ids, dtype=torch.long),
        "words": list(words),
        "speaker_ids": torch.tensor(speaker_ids, dtype=torch.long),
        "speakers": [f"synth-speaker-{i}" for i in range(num_speakers)],
        "utterance_ids": utts,
        "num_mel_bins": num_mel_bins,
        "frame_shift": FRAME_SHIFT,
    }


def write_synthetic_word_segments(path: str, words: Sequence[str], **kwargs) -> str:
    """Write ``make_synthetic_word_segments(words, **kwargs)`` to ``path``; returns path."""
    write_word_segments(path, make_synthetic_word_segments(words, **kwargs))
    return str(path)
