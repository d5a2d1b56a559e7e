"""Pronunciations (ARPAbet phones) for any word, offline: CMUdict, then espeak-ng G2P.

Below the models layer, so a spelling encoder can derive phones from a spelling.
"""

from rescorer.pronunciation.arpabet import PHONES, UnmappedPhonemeError, espeak_to_arpabet, strip_stress
from rescorer.pronunciation.lexicon import Lexicon, LexiconError, default_lexicon_path, load_lexicon, parse_lexicon
from rescorer.pronunciation.pronouncer import (
    Pronouncer,
    PronunciationError,
    PronunciationMismatchWarning,
    get_pronouncer,
    mapping_digest,
)

__all__ = [
    "PHONES", "Lexicon", "LexiconError", "Pronouncer", "PronunciationError", "PronunciationMismatchWarning",
    "UnmappedPhonemeError", "default_lexicon_path", "espeak_to_arpabet", "get_pronouncer", "load_lexicon",
    "mapping_digest", "parse_lexicon", "strip_stress",
]  # fmt: skip
