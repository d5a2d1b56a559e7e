"""espeak-ng through its C API, with word times from its synthesis events.

Why the C API: the command line and the PyPI wrappers give no word events. With
phoneme events on, the synth callback receives WORD events (text position of the
word, sample index where it starts) and PHONEME events; a word ends where the
next word or a pause phoneme starts. espeak sometimes emits one WORD event for a
pair of short words ("of a", "in the"); such a span is split between the words
at phoneme boundaries in proportion to their letters' phoneme counts.

Voices are ``<accent>+<variant>`` (e.g. ``en-us+f3``): 8 English accents times the
formant variants that ship with espeak-ng. Audio comes at 22.05 kHz and is resampled
to 16 kHz. The library keeps global state, so each process owns one instance.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
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

ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")

# espeak_EVENT_TYPE
_EV_TERMINATED, _EV_WORD, _EV_SENTENCE, _EV_MARK, _EV_PLAY, _EV_END, _EV_MSG_TERMINATED, _EV_PHONEME = range(8)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4
_DEFAULT_RATE, _DEFAULT_PITCH, _DEFAULT_RANGE = 175, 50, 50


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


def _is_pause(phoneme: str) -> bool:
    return phoneme.startswith("_") or phoneme == ""


class _Espeak:
    """One process-wide handle on libespeak-ng (the library is not reentrant)."""

    _instance: Optional["_Espeak"] = None
    _lock = threading.Lock()

    @classmethod
    def get(cls) -> "_Espeak":
        with cls._lock:
            if cls._instance is None or cls._instance.pid != os.getpid():
                cls._instance = cls()
            return cls._instance

    def __init__(self) -> None:
        path = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self.lib = ctypes.CDLL(path)
        except OSError as e:
            raise SynthesisError(f"espeak-ng library not found ({e}); install the Debian package libespeak-ng1") from e
        self.pid = os.getpid()
        lib = self.lib
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]
        self.rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INIT_PHONEME_EVENTS | _INIT_DONT_EXIT)
        if self.rate <= 0:
            raise SynthesisError(f"espeak_Initialize failed (returned {self.rate})")
        self._chunks: List[np.ndarray] = []
        self._events: List[Tuple[int, int, int, int, str]] = []
        self._cb = _CALLBACK(self._on_synth)  # keep a reference: the library holds only the pointer
        lib.espeak_SetSynthCallback(self._cb)
        self._voice: Optional[str] = None
        self._phonemes: Dict[Tuple[str, str], int] = {}

    def _on_synth(self, wav, n, events) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while True:
            ev = events[i]
            if ev.type == _EV_TERMINATED:
                break
            name = ev.id.string.decode("ascii", "replace") if ev.type == _EV_PHONEME else ""
            self._events.append((ev.type, ev.text_position, ev.length, ev.sample, name))
            i += 1
        return 0

    def phoneme_count(self, word: str, accent: str) -> int:
        """Phonemes espeak says for ``word`` alone in ``accent`` (cached)."""
        key = (accent, word)
        if key not in self._phonemes:
            _, events = self.synth(word, accent, _DEFAULT_RATE, _DEFAULT_PITCH, _DEFAULT_RANGE)
            self._phonemes[key] = sum(1 for t, *_r, ph in events if t == _EV_PHONEME and not _is_pause(ph))
        return self._phonemes[key]

    def synth(self, text: str, voice: str, rate: int, pitch: int, rng: int):
        """Synthesize in a forked child of this (never used) instance.

        espeak-ng carries state from one utterance to the next (intonation and noise
        generators), so the same input gives different audio depending on what was said
        before. A child forked from the pristine instance starts from the same state every
        time, which makes each utterance a pure function of its inputs (the same audio as
        the espeak-ng command line). Costs a few milliseconds per utterance.
        """
        import pickle

        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: synthesize, send the result, exit without cleanup handlers
            code = 0
            try:
                os.close(r)
                try:
                    res = ("ok", self._synth_here(text, voice, rate, pitch, rng))
                except BaseException as e:  # noqa: BLE001 - forwarded to the parent
                    res = ("error", f"{type(e).__name__}: {e}")
                data = pickle.dumps(res, protocol=pickle.HIGHEST_PROTOCOL)
                with os.fdopen(w, "wb") as f:
                    f.write(data)
            except BaseException:  # noqa: BLE001
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            data = f.read()
        _, status = os.waitpid(pid, 0)
        if not data:
            raise SynthesisError(f"espeak-ng child process died (status {status}) for voice {voice!r} text {text!r}")
        kind, payload = pickle.loads(data)
        if kind == "error":
            raise SynthesisError(payload)
        return payload

    def _synth_here(self, text: str, voice: str, rate: int, pitch: int, rng: int):
        # espeak-ng's noise sources draw from libc rand(), whose state the child inherits
        # from whatever the parent process did; srand(1) is the state a fresh process starts
        # in (the command line's), so the audio cannot depend on the parent's history.
        ctypes.CDLL(None).srand(1)
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise SynthesisError(f"espeak-ng: unknown voice {voice!r}")
        self._voice = voice
        for p, v in ((_PARAM_RATE, rate), (_PARAM_PITCH, pitch), (_PARAM_RANGE, rng), (_PARAM_VOLUME, 100)):
            self.lib.espeak_SetParameter(p, int(v), 0)
        self._chunks, self._events = [], []
        data = text.encode("utf-8") + b"\0"
        buf = ctypes.create_string_buffer(data)
        err = self.lib.espeak_Synth(buf, len(data), 0, 1, 0, _CHARS_UTF8 | _ENDPAUSE, None, None)
        if err != 0:
            raise SynthesisError(f"espeak-ng: espeak_Synth error {err} for voice {voice!r} text {text!r}")
        self.lib.espeak_Synchronize()
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return audio, list(self._events)


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
        es = _Espeak.get()
        rate = int(np.clip(_DEFAULT_RATE * prosody.rate, 80, 450))
        pitch = int(np.clip(_DEFAULT_PITCH * prosody.pitch, 0, 99))
        rng = int(np.clip(_DEFAULT_RANGE * prosody.pitch_range, 0, 99))
        audio, events = es.synth(" ".join(words), voice, rate, pitch, rng)
        if len(audio) == 0:
            raise SynthesisError(f"espeak-ng voice {voice!r}: no audio for {' '.join(words)!r}")
        accent = voice.split("+")[0]
        spans = word_spans_from_events(
            words, events, len(audio), lambda w: es.phoneme_count(w, accent)
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
