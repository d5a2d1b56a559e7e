"""espeak-ng through its C API, with word times from its synthesis events.

Why the C API: the command line and the PyPI wrappers give no word events. With
phoneme events on, the synth callback receives WORD events (text position of the
word, sample index where it starts) and PHONEME events; a word ends where the
next word or a pause phoneme starts. espeak sometimes emits one WORD event for a
pair of short words ("of a", "in the"); such a span is split between the words
at phoneme boundaries in proportion to their letters' phoneme counts.

The ctypes binding itself is ``rescorer.espeak_ng`` (shared with G2P); this module turns
its events into word times. Voices are ``<accent>+<variant>`` (e.g. ``en-us+f3``): 8 English accents times the
formant variants that ship with espeak-ng. Audio comes at 22.05 kHz and is resampled
to 16 kHz. The library keeps global state, so each process owns one instance, and
every utterance is synthesized in a child forked from it.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from rescorer.corpora.tts.base import (
    SAMPLE_RATE,
    Prosody,
    SynthesisError,
    Synthesized,
    TTSEngine,
    WordTime,
    check_word_times,
    resample_to_16k,
)
from rescorer.espeak_ng import EV_PHONEME as _EV_PHONEME
from rescorer.espeak_ng import EV_WORD as _EV_WORD
from rescorer.espeak_ng import EspeakError, EspeakLibrary

# the binding lives in rescorer.espeak_ng (G2P uses it too); this name stays for callers
_Espeak = EspeakLibrary

ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")

_DEFAULT_RATE, _DEFAULT_PITCH, _DEFAULT_RANGE = 175, 50, 50


def _is_pause(phoneme: str) -> bool:
    return phoneme.startswith("_") or phoneme == ""


_PHONEME_COUNTS: Dict[Tuple[str, str], int] = {}


def phoneme_count(word: str, accent: str) -> int:
    """Phonemes espeak says for ``word`` alone in ``accent`` (cached per process)."""
    key = (accent, word)
    if key not in _PHONEME_COUNTS:
        _, events = EspeakLibrary.get().synth(word, accent, _DEFAULT_RATE, _DEFAULT_PITCH, _DEFAULT_RANGE)
        _PHONEME_COUNTS[key] = sum(1 for t, *_r, ph in events if t == _EV_PHONEME and not _is_pause(ph))
    return _PHONEME_COUNTS[key]


def word_spans_from_events(
    words: Sequence[str],
    events: Sequence[Tuple[int, int, int, int, str]],
    num_samples: int,
    phoneme_count: Optional[Callable[[str], int]] = None,
) -> List[Tuple[int, int]]:
    """Sample spans [start, end) per input word from espeak events.

    ``events`` are (type, text_position, length, sample, phoneme) in emission order;
    text positions are 1-based character offsets into ``" ".join(words)``. A WORD
    event owns the input words that start before the next WORD event; when it owns
    several, its phonemes are divided between them by ``phoneme_count(word)`` (each
    word's phoneme count when said alone), or by letters if that is not given.
    """
    starts, pos = [], 1
    for w in words:
        starts.append(pos)
        pos += len(w) + 1
    groups: List[Tuple[int, int, List[Tuple[int, str]]]] = []  # (text_pos, sample, phonemes)
    for typ, tpos, _length, sample, ph in events:
        if typ == _EV_WORD and tpos > 0:
            groups.append((tpos, sample, []))
        elif typ == _EV_PHONEME:
            if not groups:  # speech before any WORD event belongs to the first word(s)
                groups.append((1, sample, []))
            groups[-1][2].append((sample, ph))
    spans: List[Optional[Tuple[int, int]]] = [None] * len(words)
    for g, (tpos, sample, phones) in enumerate(groups):
        next_tpos = groups[g + 1][0] if g + 1 < len(groups) else 1 << 30
        end = groups[g + 1][1] if g + 1 < len(groups) else num_samples
        spoke = False  # the word ends at the first pause phoneme after some speech
        for s, ph in phones:
            if _is_pause(ph):
                if spoke:
                    end = min(end, s)
                    break
            else:
                spoke = True
        covered = [i for i, st in enumerate(starts) if tpos <= st < next_tpos and spans[i] is None]
        if not covered:
            continue
        if len(covered) == 1:
            spans[covered[0]] = (sample, end)
            continue
        speech = [s for s, ph in phones if not _is_pause(ph) and s < end]
        weights = np.array(
            [max(1, phoneme_count(words[i])) if phoneme_count else len(words[i]) for i in covered], float
        )
        nseg = len(speech)
        if nseg < len(covered):
            raise SynthesisError(f"espeak-ng: cannot split {[words[i] for i in covered]} over {nseg} phonemes")
        bounds = speech + [end]
        cut_idx = np.round(np.cumsum(weights)[:-1] / weights.sum() * nseg).astype(int)
        cut_idx = np.clip(cut_idx, np.arange(1, len(covered)), nseg - len(covered) + np.arange(1, len(covered)))
        edges = [sample] + [bounds[c] for c in cut_idx] + [end]
        for k, i in enumerate(covered):
            spans[i] = (edges[k], edges[k + 1])
    missing = [words[i] for i, s in enumerate(spans) if s is None]
    if missing:
        raise SynthesisError(f"espeak-ng gave no word event for {missing} in {' '.join(words)!r}")
    return spans  # type: ignore[return-value]


class EspeakEngine(TTSEngine):
    name = "espeak"

    def voices(self) -> List[str]:
        return [f"{a}+{v}" for a in ACCENTS for v in VARIANTS]

    def synthesize(self, words: Sequence[str], voice: str, prosody: Prosody = Prosody()) -> Synthesized:
        words = list(words)
        if not words:
            raise SynthesisError(f"espeak-ng voice {voice!r}: no words to say")
        try:
            return self._synthesize(words, voice, prosody)
        except EspeakError as e:
            raise SynthesisError(str(e)) from e

    def _synthesize(self, words: List[str], voice: str, prosody: Prosody) -> Synthesized:
        es = EspeakLibrary.get()
        rate = int(np.clip(_DEFAULT_RATE * prosody.rate, 80, 450))
        pitch = int(np.clip(_DEFAULT_PITCH * prosody.pitch, 0, 99))
        rng = int(np.clip(_DEFAULT_RANGE * prosody.pitch_range, 0, 99))
        audio, events = es.synth(" ".join(words), voice, rate, pitch, rng)
        if len(audio) == 0:
            raise SynthesisError(f"espeak-ng voice {voice!r}: no audio for {' '.join(words)!r}")
        accent = voice.split("+")[0]
        spans = word_spans_from_events(
            words, events, len(audio), lambda w: phoneme_count(w, accent)
        )
        scale = SAMPLE_RATE / es.rate
        samples = resample_to_16k(audio.astype(np.float32) / 32768.0, es.rate)
        n = len(samples)
        times = []
        for w, (s, e) in zip(words, spans):
            s16, e16 = min(int(round(s * scale)), n), min(int(round(e * scale)), n)
            if e16 <= s16:
                raise SynthesisError(f"espeak-ng voice {voice!r}: empty span for {w!r} in {' '.join(words)!r}")
            times.append(WordTime(w, s16 / SAMPLE_RATE, e16 / SAMPLE_RATE))
        return check_word_times(self.name, voice, words, Synthesized(samples, SAMPLE_RATE, times))
