"""The engine interface: words in, 16 kHz audio with one (start, end) per word out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence

import numpy as np

from rescorer.formats.contract import SAMPLE_RATE  # noqa: F401  (engines deliver audio at the features' rate)


class SynthesisError(RuntimeError):
    """An engine failed, or returned timings that do not match the words it was given."""


@dataclass(frozen=True)
class WordTime:
    word: str
    start: float  # seconds from the start of the returned audio
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Prosody:
    """Engine-neutral prosody controls; each engine maps them to its own knobs.

    rate: speaking-rate factor (1.0 = the voice's default; 1.3 = 30% faster);
    pitch: pitch factor (1.0 = default); pitch_range: intonation range factor.
    """

    rate: float = 1.0
    pitch: float = 1.0
    pitch_range: float = 1.0


@dataclass
class Synthesized:
    samples: np.ndarray  # float32 mono in [-1, 1], SAMPLE_RATE Hz
    sampling_rate: int
    words: List[WordTime] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sampling_rate


class TTSEngine:
    """Base class. Subclasses implement ``voices()`` and ``synthesize()``.

    Contract for ``synthesize(words, voice, prosody)``:
    - ``words`` are normalised words (rescorer.text.normalize_word), spoken as one sentence;
    - returns 16 kHz float32 audio and exactly one WordTime per input word, in order,
      with the input spelling, 0 <= start < end <= duration and non-overlapping;
    - raises SynthesisError with the engine, voice and text in the message otherwise.
    Engines must be usable from worker processes (create native state lazily).
    """

    name: str = "base"

    def voices(self) -> List[str]:
        raise NotImplementedError

    def synthesize(self, words: Sequence[str], voice: str, prosody: Prosody = Prosody()) -> Synthesized:
        raise NotImplementedError


def check_word_times(engine: str, voice: str, words: Sequence[str], out: Synthesized) -> Synthesized:
    """Validate an engine's output against the contract; raise SynthesisError if broken."""
    ctx = f"{engine} voice {voice!r} text {' '.join(words)!r}"
    if out.sampling_rate != SAMPLE_RATE:
        raise SynthesisError(f"{ctx}: sampling rate {out.sampling_rate}, expected {SAMPLE_RATE}")
    if len(out.samples) == 0 or not np.isfinite(out.samples).all():
        raise SynthesisError(f"{ctx}: empty or non-finite audio")
    if [w.word for w in out.words] != list(words):
        raise SynthesisError(f"{ctx}: word timings {[w.word for w in out.words]} do not match the words")
    prev_end = 0.0
    dur = out.duration + 1e-6
    for w in out.words:
        if not (prev_end - 1e-6 <= w.start < w.end <= dur):
            raise SynthesisError(f"{ctx}: bad time for {w.word!r}: [{w.start:.3f}, {w.end:.3f}] (audio {dur:.3f} s)")
        prev_end = w.end
    return out


def resample_to_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """Band-limited resampling to 16 kHz (polyphase), float32."""
    if rate == SAMPLE_RATE:
        return samples.astype(np.float32, copy=False)
    from math import gcd

    from scipy.signal import resample_poly  # scipy comes with lhotse's stack

    g = gcd(rate, SAMPLE_RATE)
    return resample_poly(samples.astype(np.float64), SAMPLE_RATE // g, rate // g).astype(np.float32)
