"""Flite 2.2 through ctypes: 16 kHz audio with word times read from flite's own segment times.

The Debian ``flite`` package ships ``libflite.so.1`` and one shared library per voice
(``libflite_cmu_us_<voice>.so.1``) but no headers, so the few structures and functions used
here are declared by hand (flite 2.x layout):

* ``register_cmu_us_<voice>(NULL)`` returns a ``cst_voice*`` whose second field is the
  voice's feature list (where prosody knobs are set);
* ``flite_synth_text(text, voice)`` returns a ``cst_utterance*``; its ``Token`` relation holds
  one item per whitespace-separated input word, whose daughters are the ``Word`` items the
  text front end made of it (one, or several when a token is spelled out, e.g. "nbc");
* word times: the token's first word's first segment start
  (``daughter1.R:SylStructure.daughter1.daughter1.R:Segment.p.end``) and its last word's last
  segment end (``daughtern.R:SylStructure.daughtern.daughtern.R:Segment.end``).  Pauses
  ("pau") are not inside any word's syllable structure, so they are never part of a word;
* ``utt_wave(utt)`` returns a ``cst_wave*`` (16-bit samples at the voice's rate).

Prosody mapping (checked on flite 2.2, see tests/test_tts_flite_festival.py):

* rate: ``duration_stretch = voice default / rate`` (all voices);
* pitch: ``f0_shift = pitch`` (kal, kal16, awb, slt; measured: F0 median scales by the factor);
  the rms voice ignores every F0 knob flite has (f0_shift, int_f0_target_mean/stddev), so
  pitch has no effect there;
* pitch_range: ``int_f0_target_stddev = default * pitch * pitch_range`` on the diphone voices
  (kal, kal16); the clustergen voices (awb, rms, slt) take their F0 from their own model and
  ignore it, so pitch_range has no effect there.
``FliteEngine.prosody_support(voice)`` says which Prosody fields apply to a voice.

All native state is created lazily, per process (engines are used from worker processes).
Caveat: flite reports internal errors by calling ``exit()`` unless the caller has installed a
``setjmp`` handler, which ctypes cannot do; inputs are restricted to lowercase a-z/apostrophe
words, for which flite's front end has no failing path we know of.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

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

# flite's English voices (the Debian package's libflite_cmu_us_*.so.1); awb_time is a
# limited-domain voice that can only say the time, so it is not offered.
KNOWN_VOICES = ("kal", "kal16", "awb", "rms", "slt")
DIPHONE_VOICES = ("kal", "kal16")
PROSODY_SUPPORT = {
    "kal": ("rate", "pitch", "pitch_range"),
    "kal16": ("rate", "pitch", "pitch_range"),
    "awb": ("rate", "pitch"),
    "rms": ("rate",),
    "slt": ("rate", "pitch"),
}

_WORD_RE = re.compile(r"^[a-z']*[a-z][a-z']*$")
# A word end may exceed the (resampled) audio by rounding; more than this is an error.
_END_TOLERANCE_S = 0.05


class _CstVoice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("features", ctypes.c_void_p),
        ("ffunctions", ctypes.c_void_p),
        ("utt_init", ctypes.c_void_p),
    ]


class _CstWave(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_char_p),
        ("sample_rate", ctypes.c_int),
        ("num_samples", ctypes.c_int),
        ("num_channels", ctypes.c_int),
        ("samples", ctypes.POINTER(ctypes.c_short)),
    ]


def _find_library(name: str) -> Optional[str]:
    """The loadable file name of ``lib<name>`` (soname .so.1 as Debian ships it), or None."""
    found = ctypes.util.find_library(name)
    if found:
        return found
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib", "/usr/local/lib"):
        for suffix in (".so.1", ".so"):
            p = os.path.join(d, f"lib{name}{suffix}")
            if os.path.exists(p):
                return p
    return None


class _Flite:
    """The loaded library and the voices registered so far (one per process)."""

    def __init__(self) -> None:
        path = _find_library("flite")
        if path is None:
            raise SynthesisError("flite: libflite.so.1 not found (install the Debian package 'flite')")
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        vp, cp = ctypes.c_void_p, ctypes.c_char_p
        sigs = {
            "flite_init": (ctypes.c_int, []),
            "flite_synth_text": (vp, [cp, vp]),
            "utt_relation": (vp, [vp, cp]),
            "relation_head": (vp, [vp]),
            "item_next": (vp, [vp]),
            "item_daughter": (vp, [vp]),
            "ffeature_float": (ctypes.c_float, [vp, cp]),
            "ffeature_string": (cp, [vp, cp]),
            "utt_wave": (ctypes.POINTER(_CstWave), [vp]),
            "delete_utterance": (None, [vp]),
            "feat_set_float": (None, [vp, cp, ctypes.c_float]),
            "get_param_float": (ctypes.c_float, [vp, cp, ctypes.c_float]),
        }
        for fname, (res, args) in sigs.items():
            fn = getattr(lib, fname)
            fn.restype = res
            fn.argtypes = args
        lib.flite_init()
        self.lib = lib
        self.voices: Dict[str, Tuple[ctypes.c_void_p, int, Dict[str, float]]] = {}

    def voice(self, name: str) -> Tuple[ctypes.c_void_p, int, Dict[str, float]]:
        """(cst_voice*, features*, default prosody features) for a voice, registered once."""
        if name in self.voices:
            return self.voices[name]
        path = _find_library(f"flite_cmu_us_{name}")
        if path is None:
            raise SynthesisError(f"flite voice {name!r}: libflite_cmu_us_{name}.so.1 not found")
        vlib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        reg = getattr(vlib, f"register_cmu_us_{name}")
        reg.restype = ctypes.POINTER(_CstVoice)
        reg.argtypes = [ctypes.c_char_p]
        vox = reg(None)
        if not vox:
            raise SynthesisError(f"flite voice {name!r}: register_cmu_us_{name} returned NULL")
        feats = vox.contents.features
        g = self.lib.get_param_float
        defaults = {
            "duration_stretch": float(g(feats, b"duration_stretch", 1.0)) or 1.0,
            "int_f0_target_stddev": float(g(feats, b"int_f0_target_stddev", 0.0)),
        }
        entry = (ctypes.cast(vox, ctypes.c_void_p), feats, defaults)
        self.voices[name] = entry
        return entry


_STATE: Dict[int, _Flite] = {}  # pid -> library state; filled on first use, never at import


def _flite() -> _Flite:
    pid = os.getpid()
    st = _STATE.get(pid)
    if st is None:
        _STATE.clear()  # inherited from a parent through fork: make our own
        st = _Flite()
        _STATE[pid] = st
    return st


def _token_times(lib, utt, n_words: int, ctx: str) -> List[Tuple[float, float]]:
    times: List[Tuple[float, float]] = []
    tok = lib.relation_head(lib.utt_relation(utt, b"Token"))
    while tok:
        if not lib.item_daughter(tok):
            raise SynthesisError(f"{ctx}: token {len(times) + 1} produced no words")
        first = lib.ffeature_string(tok, b"daughter1.R:SylStructure.daughter1.daughter1.R:Segment.name")
        last = lib.ffeature_string(tok, b"daughtern.R:SylStructure.daughtern.daughtern.R:Segment.name")
        if first in (None, b"0", b"pau") or last in (None, b"0", b"pau"):
            raise SynthesisError(f"{ctx}: token {len(times) + 1} has no segments")
        start = float(lib.ffeature_float(tok, b"daughter1.R:SylStructure.daughter1.daughter1.R:Segment.p.end"))
        end = float(lib.ffeature_float(tok, b"daughtern.R:SylStructure.daughtern.daughtern.R:Segment.end"))
        times.append((start, end))
        tok = lib.item_next(tok)
    if len(times) != n_words:
        raise SynthesisError(f"{ctx}: flite made {len(times)} tokens of {n_words} words")
    return times


def finish(engine: str, voice: str, words: Sequence[str], samples: np.ndarray, rate: int,
           times: Sequence[Tuple[float, float]]) -> Synthesized:
    """Resample to 16 kHz, attach word times (clipped by at most rounding), validate."""
    ctx = f"{engine} voice {voice!r} text {' '.join(words)!r}"
    audio = resample_to_16k(samples, rate)
    dur = len(audio) / SAMPLE_RATE
    out_words: List[WordTime] = []
    prev = 0.0
    for w, (s, e) in zip(words, times):
        if e > dur + _END_TOLERANCE_S:
            raise SynthesisError(f"{ctx}: word {w!r} ends at {e:.3f} s after the audio ({dur:.3f} s)")
        s, e = max(s, prev, 0.0), min(e, dur)
        if not s < e:
            raise SynthesisError(f"{ctx}: empty time span for word {w!r}: [{s:.3f}, {e:.3f}]")
        out_words.append(WordTime(w, round(s, 6), round(e, 6)))
        prev = e
    return check_word_times(engine, voice, words, Synthesized(audio, SAMPLE_RATE, out_words))


def check_words(engine: str, voice: str, words: Sequence[str]) -> None:
    words = list(words)
    if not words:
        raise SynthesisError(f"{engine} voice {voice!r}: no words to synthesize")
    bad = [w for w in words if not isinstance(w, str) or not _WORD_RE.match(w)]
    if bad:
        raise SynthesisError(
            f"{engine} voice {voice!r} text {' '.join(map(str, words))!r}: "
            f"not normalised words (a-z and apostrophe): {bad[:5]!r}"
        )


class FliteEngine(TTSEngine):
    name = "flite"

    def voices(self) -> List[str]:
        """Voices whose libraries are installed (no native state is created)."""
        return [v for v in KNOWN_VOICES if _find_library(f"flite_cmu_us_{v}") is not None]

    @staticmethod
    def prosody_support(voice: str) -> Tuple[str, ...]:
        """The Prosody fields that change this voice's output (the others are ignored)."""
        return PROSODY_SUPPORT.get(voice, ())

    def synthesize(self, words: Sequence[str], voice: str, prosody: Prosody = Prosody()) -> Synthesized:
        words = list(words)
        check_words(self.name, voice, words)
        ctx = f"{self.name} voice {voice!r} text {' '.join(words)!r}"
        if voice not in KNOWN_VOICES:
            raise SynthesisError(f"{ctx}: unknown voice; known: {', '.join(KNOWN_VOICES)}")
        if not (prosody.rate > 0 and prosody.pitch > 0 and prosody.pitch_range > 0):
            raise SynthesisError(f"{ctx}: prosody factors must be positive: {prosody}")
        try:
            st = _flite()
            vox, feats, defaults = st.voice(voice)
        except SynthesisError as e:
            raise SynthesisError(f"{ctx}: {e}") from None
        lib = st.lib
        # Absolute values every call, so one sentence's prosody never leaks into the next.
        lib.feat_set_float(feats, b"duration_stretch", defaults["duration_stretch"] / prosody.rate)
        lib.feat_set_float(feats, b"f0_shift", prosody.pitch)
        if voice in DIPHONE_VOICES and defaults["int_f0_target_stddev"] > 0:
            lib.feat_set_float(
                feats, b"int_f0_target_stddev", defaults["int_f0_target_stddev"] * prosody.pitch * prosody.pitch_range
            )
        utt = lib.flite_synth_text(" ".join(words).encode("ascii"), vox)
        if not utt:
            raise SynthesisError(f"{ctx}: flite_synth_text returned NULL")
        try:
            times = _token_times(lib, utt, len(words), ctx)
            wp = lib.utt_wave(utt)
            if not wp or wp.contents.num_samples <= 0:
                raise SynthesisError(f"{ctx}: no waveform")
            w = wp.contents
            if w.num_channels != 1:
                raise SynthesisError(f"{ctx}: {w.num_channels} channels")
            pcm = np.ctypeslib.as_array(w.samples, shape=(w.num_samples,)).astype(np.float32) / 32768.0
            rate = int(w.sample_rate)
        finally:
            lib.delete_utterance(utt)
        return finish(self.name, voice, words, pcm, rate, times)

    def synthesize_many(
        self, items: Sequence[Tuple[Sequence[str], str, Prosody]], errors: str = "raise"
    ) -> List[Union[Synthesized, SynthesisError]]:
        """``synthesize`` for each (words, voice, prosody); flite is in-process, so a loop.

        errors="raise": the first failure raises; errors="return": a failed item's place in
        the list holds its SynthesisError and the others are still synthesized.
        """
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
        out: List[Union[Synthesized, SynthesisError]] = []
        for words, voice, prosody in items:
            try:
                out.append(self.synthesize(words, voice, prosody))
            except SynthesisError as e:
                if errors == "raise":
                    raise
                out.append(e)
        return out
