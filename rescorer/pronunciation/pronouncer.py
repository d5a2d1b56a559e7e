"""Phones for any word, offline and deterministic: CMUdict first, espeak-ng G2P for the rest.

``Pronouncer.pronounce(word)`` gives one ARPAbet phone sequence per word: the first
CMUdict entry when the dictionary has the word, else espeak-ng's pronunciation (en-us)
mapped to ARPAbet (``rescorer.pronunciation.arpabet``). One reading per word, not all
alternates: espeak gives one, so dictionary words and G2P words are treated alike (an
encoder bag of one reading), and CMUdict lists the most common reading first. All
alternates stay available from ``pronunciations``.

Fast for long word lists: dictionary lookups are dict reads (the file is parsed once per
process), G2P results are cached, and the words a list lacks go to espeak-ng in one batch
(one forked child; ``rescorer.espeak_ng``).

What a model records (``source()``): the dictionary's sha256 and size, espeak-ng's version
and voice, and a digest of the mnemonic table; ``check_source(recorded)`` lists what
differs, so that rescoring with other phones than training is reported.
"""

from __future__ import annotations

import hashlib
import json
import threading
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

from rescorer.pronunciation.arpabet import ESPEAK_TO_ARPABET, PHONES, espeak_to_arpabet
from rescorer.pronunciation.lexicon import Lexicon, load_lexicon
from rescorer.text import normalize_word

G2P_ENGINES = ("espeak", "none")
Pronunciation = Tuple[str, ...]


class PronunciationError(ValueError):
    """A word that gets no phones (no dictionary entry and no G2P, or G2P said nothing)."""


class PronunciationMismatchWarning(UserWarning):
    """A model's recorded pronunciation source differs from the one available now."""


def mapping_digest() -> str:
    """sha256 (first 16 hex digits) of the espeak -> ARPAbet table and phone set."""
    text = json.dumps({"phones": PHONES, "espeak": sorted(ESPEAK_TO_ARPABET.items())}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Pronouncer:
    """word -> ARPAbet phones; see the module docstring."""

    def __init__(self, lexicon: Optional[str] = None, g2p: str = "espeak", voice: str = "en-us"):
        if g2p not in G2P_ENGINES:
            raise ValueError(f"g2p must be one of {', '.join(G2P_ENGINES)}, got {g2p!r}")
        self.lexicon: Lexicon = load_lexicon(lexicon)
        self.g2p = g2p
        self.voice = voice
        self._g2p_cache: Dict[str, Pronunciation] = {}
        self._espeak_version: Optional[str] = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ provenance

    def espeak_version(self) -> Optional[str]:
        if self.g2p != "espeak":
            return None
        if self._espeak_version is None:
            from rescorer.espeak_ng import EspeakLibrary

            self._espeak_version = EspeakLibrary.get().version()
        return self._espeak_version

    def source(self) -> Dict[str, Any]:
        """What decides the phones, for a checkpoint: dictionary identity, G2P engine and version."""
        return {
            "lexicon": self.lexicon.path,
            "lexicon_sha256": self.lexicon.sha256,
            "lexicon_words": len(self.lexicon),
            "g2p": self.g2p,
            "espeak_ng_version": self.espeak_version(),
            "espeak_voice": self.voice if self.g2p == "espeak" else None,
            "mapping": mapping_digest(),
        }

    def check_source(self, recorded: Optional[Dict[str, Any]], warn: bool = True) -> List[str]:
        """Differences between ``recorded`` (a ``source()`` saved with a model) and this one.

        Each difference is a sentence; with ``warn`` they are issued as one
        PronunciationMismatchWarning. The lexicon's path is not compared (machines differ).
        """
        if not recorded:
            return []
        now = self.source()
        problems = []
        for key, what in (("lexicon_sha256", "pronunciation lexicon (sha256)"), ("g2p", "G2P engine"),
                          ("espeak_ng_version", "espeak-ng version"), ("espeak_voice", "espeak-ng voice"),
                          ("mapping", "espeak -> ARPAbet table")):  # fmt: skip
            if key in recorded and recorded[key] != now[key]:
                problems.append(f"{what}: trained with {recorded[key]!r}, now {now[key]!r}")
        if problems and warn:
            warnings.warn(
                "phones differ from the ones the model was trained with (some words will embed differently): "
                + "; ".join(problems),
                PronunciationMismatchWarning,
                stacklevel=2,
            )
        return problems

    # ------------------------------------------------------------ phones

    def pronunciations(self, word: str) -> List[Pronunciation]:
        """Every dictionary reading of ``word`` (normalised), or the one G2P reading."""
        w = normalize_word(word)
        if w in self.lexicon.entries:
            return list(self.lexicon.entries[w])
        return [self.pronounce(w)]

    def pronounce(self, word: str) -> Pronunciation:
        """The phones of one word (normalised with ``normalize_word``; NotAWordError for non-words)."""
        return self.pronounce_many([word])[0]

    def pronounce_many(self, words: Sequence[str], normalize: bool = True) -> List[Pronunciation]:
        """Phones of every word; the ones neither the dictionary nor the cache has go to G2P in one batch."""
        clean = [normalize_word(w) for w in words] if normalize else list(words)
        entries = self.lexicon.entries
        with self._lock:
            missing = sorted({w for w in clean if w not in entries and w not in self._g2p_cache})
            if missing:
                self._g2p_cache.update(zip(missing, self._g2p(missing)))
            cache = self._g2p_cache
            return [entries[w][0] if w in entries else cache[w] for w in clean]

    def _g2p(self, words: List[str]) -> List[Pronunciation]:
        if self.g2p == "none":
            shown = ", ".join(repr(w) for w in words[:5]) + (" ..." if len(words) > 5 else "")
            raise PronunciationError(
                f"{len(words)} words are not in {self.lexicon.path} and G2P is off (g2p='none'): {shown}"
            )
        from rescorer.espeak_ng import EspeakLibrary

        out = []
        for word, mnemonics in zip(words, EspeakLibrary.get().text_to_phonemes(words, self.voice)):
            phones = tuple(espeak_to_arpabet(mnemonics, word))
            if not phones:
                raise PronunciationError(f"espeak-ng gives no phones for {word!r}")
            out.append(phones)
        return out


_SHARED: Dict[Tuple[Optional[str], str, str], Pronouncer] = {}
_SHARED_LOCK = threading.Lock()


def get_pronouncer(lexicon: Optional[str] = None, g2p: str = "espeak", voice: str = "en-us") -> Pronouncer:
    """A process-wide Pronouncer per (lexicon, g2p, voice), so its caches are shared by every user."""
    key = (lexicon or None, g2p, voice)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = Pronouncer(lexicon, g2p, voice)
        return _SHARED[key]
