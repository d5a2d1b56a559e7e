"""The one ctypes binding to libespeak-ng, shared by speech synthesis and G2P.

Two users: the synthetic corpus (``rescorer.corpora.tts.espeak``: audio plus word and
phoneme events) and pronunciations of words no dictionary has
(``rescorer.pronunciation``: ``espeak_TextToPhonemes``, phoneme mnemonics without
audio). Both go through ``EspeakLibrary``, which loads the library once per process.

The library keeps global state between calls (intonation and noise generators, the
translator's flags), so the process-wide instance is never used for work: every call
runs in a child forked from it (``run_forked``), which starts from the same pristine
state each time. That makes synthesis a pure function of its inputs, and a G2P call
cannot change the audio of a later synthesis in the same process. A child costs a few
milliseconds, so G2P sends a whole batch of words to one child.

Sits in the lowest layer: it imports nothing from the package.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pickle
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

# espeak_EVENT_TYPE
EV_TERMINATED, EV_WORD, EV_SENTENCE, EV_MARK, EV_PLAY, EV_END, EV_MSG_TERMINATED, EV_PHONEME = range(8)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
PARAM_RATE, PARAM_VOLUME, PARAM_PITCH, PARAM_RANGE = 1, 2, 3, 4
# espeak_TextToPhonemes phoneme mode: ASCII mnemonics (bit 1 clear), "_" between phonemes (bits 8-23)
_MNEMONICS_SEPARATED = ord("_") << 8

Event = Tuple[int, int, int, int, str]  # (type, text position, length, sample, phoneme name)


class EspeakError(RuntimeError):
    """libespeak-ng is missing, failed, or refused its input (e.g. an unknown voice)."""


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


def run_forked(fn: Callable[..., Any], *args: Any, what: str = "espeak-ng") -> Any:
    """``fn(*args)`` in a forked child; its result (or its exception, as EspeakError) comes back pickled."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: compute, send the result, exit without cleanup handlers
        code = 0
        try:
            os.close(r)
            try:
                res = ("ok", fn(*args))
            except BaseException as e:  # noqa: BLE001 - forwarded to the parent
                res = ("error", str(e) if isinstance(e, EspeakError) else f"{type(e).__name__}: {e}")
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
        raise EspeakError(f"espeak-ng child process died (status {status}) during {what}")
    kind, payload = pickle.loads(data)
    if kind == "error":
        raise EspeakError(payload)
    return payload


class EspeakLibrary:
    """One process-wide handle on libespeak-ng (the library is not reentrant)."""

    _instance: Optional["EspeakLibrary"] = None
    _lock = threading.Lock()

    @classmethod
    def get(cls) -> "EspeakLibrary":
        with cls._lock:
            if cls._instance is None or cls._instance.pid != os.getpid():
                cls._instance = cls()
            return cls._instance

    def __init__(self) -> None:
        path = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self.lib = ctypes.CDLL(path)
        except OSError as e:
            raise EspeakError(f"espeak-ng library not found ({e}); install the Debian package libespeak-ng1") from e
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
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        self.rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INIT_PHONEME_EVENTS | _INIT_DONT_EXIT)
        if self.rate <= 0:
            raise EspeakError(f"espeak_Initialize failed (returned {self.rate})")
        self._chunks: List[np.ndarray] = []
        self._events: List[Event] = []
        self._cb = _CALLBACK(self._on_synth)  # keep a reference: the library holds only the pointer
        lib.espeak_SetSynthCallback(self._cb)

    def version(self) -> str:
        """The library's version string (e.g. "1.51"); G2P output is recorded with it."""
        data_path = ctypes.c_char_p()
        return (self.lib.espeak_Info(ctypes.byref(data_path)) or b"").decode("ascii", "replace")

    # ------------------------------------------------------------ synthesis

    def _on_synth(self, wav, n, events) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while True:
            ev = events[i]
            if ev.type == EV_TERMINATED:
                break
            name = ev.id.string.decode("ascii", "replace") if ev.type == EV_PHONEME else ""
            self._events.append((ev.type, ev.text_position, ev.length, ev.sample, name))
            i += 1
        return 0

    def synth(self, text: str, voice: str, rate: int, pitch: int, rng: int) -> Tuple[np.ndarray, List[Event]]:
        """(int16 samples at ``self.rate``, events) of ``text``, synthesized in a forked child.

        espeak-ng carries state from one utterance to the next (intonation and noise
        generators), so the same input gives different audio depending on what was said
        before. A child forked from the pristine instance starts from the same state every
        time, which makes each utterance a pure function of its inputs (the same audio as
        the espeak-ng command line).
        """
        return run_forked(self._synth_here, text, voice, rate, pitch, rng, what=f"synthesis of {text!r} ({voice})")

    def _set_voice(self, voice: str) -> None:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EspeakError(f"espeak-ng: unknown voice {voice!r}")

    def _synth_here(self, text: str, voice: str, rate: int, pitch: int, rng: int):
        # espeak-ng's noise sources draw from libc rand(), whose state the child inherits
        # from whatever the parent process did; srand(1) is the state a fresh process starts
        # in (the command line's), so the audio cannot depend on the parent's history.
        ctypes.CDLL(None).srand(1)
        self._set_voice(voice)
        for p, v in ((PARAM_RATE, rate), (PARAM_PITCH, pitch), (PARAM_RANGE, rng), (PARAM_VOLUME, 100)):
            self.lib.espeak_SetParameter(p, int(v), 0)
        self._chunks, self._events = [], []
        data = text.encode("utf-8") + b"\0"
        buf = ctypes.create_string_buffer(data)
        err = self.lib.espeak_Synth(buf, len(data), 0, 1, 0, _CHARS_UTF8 | _ENDPAUSE, None, None)
        if err != 0:
            raise EspeakError(f"espeak-ng: espeak_Synth error {err} for voice {voice!r} text {text!r}")
        self.lib.espeak_Synchronize()
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return audio, list(self._events)

    # ------------------------------------------------------------ phonemes (G2P)

    def text_to_phonemes(self, words: Sequence[str], voice: str = "en-us") -> List[List[str]]:
        """espeak's phoneme mnemonics of each word said alone ("cat" -> ["k", "'a", "t"]).

        Stress marks stay attached to the phoneme they precede; the caller maps mnemonics
        to its phone set. All words go to one forked child.
        """
        words = list(words)
        if not words:
            return []
        return run_forked(self._phonemes_here, words, voice, what=f"G2P of {len(words)} words ({voice})")

    def _phonemes_here(self, words: List[str], voice: str) -> List[List[str]]:
        self._set_voice(voice)
        out: Dict[str, List[str]] = {}
        result = []
        for word in words:
            if word not in out:
                buf = ctypes.create_string_buffer(word.encode("utf-8") + b"\0")
                ptr = ctypes.c_void_p(ctypes.addressof(buf))
                phones: List[str] = []
                while ptr.value:  # one clause per call; a word is one clause
                    chunk = self.lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, _MNEMONICS_SEPARATED)
                    if chunk:
                        phones += [p for p in chunk.decode("utf-8", "replace").replace(" ", "_").split("_") if p]
                out[word] = phones
            result.append(out[word])
        return result
