"""Word normalisation and letter n-grams, shared by corpora, the letter encoder and lattices.

One spelling convention everywhere, so that a word from a transcript, a lattice
symbol table or a big word list maps to the same letter-n-gram embedding:

- lower case (Unicode case folding, then NFKD with accents stripped: "Café" -> "cafe");
- letters a-z and the apostrophe are kept; typographic apostrophes become "'";
- leading/trailing apostrophes and hyphens are stripped ("'em" -> "em"); an inner
  hyphen splits a token into words at the transcript level (``split_words``);
- a token that still contains anything else (digits, symbols) is not a word:
  ``normalize_word`` raises ``NotAWordError`` naming it. Transcripts with digits are
  excluded from synthetic text rather than guessed at ("1984" has several readings).
"""

from __future__ import annotations

import re
import unicodedata
from typing import List

BOW = "<"  # begin-of-word mark in letter n-grams
EOW = ">"  # end-of-word mark
LETTERS = "abcdefghijklmnopqrstuvwxyz'"
_WORD_RE = re.compile(r"^[a-z']+$")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})


class NotAWordError(ValueError):
    """A token that cannot be spelled with the letter alphabet (digits, symbols, empty)."""


def normalize_word(token: str) -> str:
    """Return the canonical spelling of one word token, or raise NotAWordError."""
    if not isinstance(token, str):
        raise NotAWordError(f"word must be a string, got {type(token).__name__}")
    t = unicodedata.normalize("NFKD", token.translate(_APOSTROPHES).casefold())
    t = "".join(c for c in t if not unicodedata.combining(c))
    t = t.strip("'-")
    if not t:
        raise NotAWordError(f"empty word (token {token!r})")
    if not _WORD_RE.match(t):
        raise NotAWordError(f"token {token!r} has characters outside a-z and apostrophe")
    return t


def is_word(token: str) -> bool:
    try:
        normalize_word(token)
        return True
    except NotAWordError:
        return False


def split_words(text: str) -> List[str]:
    """Split a transcript into normalised words; raises NotAWordError on non-word tokens.

    Hyphens and whitespace separate words; sentence punctuation (.,;:!?"()) is dropped.
    """
    text = text.translate(_APOSTROPHES)
    text = re.sub(r'[.,;:!?"()\[\]{}]', " ", text)
    tokens = [t for t in re.split(r"[\s\-\u2013\u2014/]+", text) if t.strip("'")]
    if not tokens:
        raise NotAWordError(f"transcript has no words: {text!r}")
    return [normalize_word(t) for t in tokens]


def letter_ngrams(word: str, n_min: int = 1, n_max: int = 5) -> List[str]:
    """Letter n-grams of ``<word>`` for n in [n_min, n_max], with begin/end marks.

    The bare marks themselves are not n-grams: for "he" and n<=3 this gives
    h, e, <h, he, e>, <he, he> (and <he> for n=4).
    """
    w = BOW + word + EOW
    grams = []
    for n in range(n_min, n_max + 1):
        for i in range(len(w) - n + 1):
            g = w[i : i + n]
            if g in (BOW, EOW):
                continue
            grams.append(g)
    return grams
