"""Word-list files: the lists users hand to OOV recovery (``rescorer rescore --word-list``,
``rescorer tune --word-list / --context-list``, ``Rescorer.set_vocabulary``).

Format: UTF-8 text, one word per line. Blank lines and lines starting with ``#`` (the
header ``write_word_list`` puts first: where the list came from) are ignored. A word is
kept in its canonical spelling (``rescorer.text.normalize_word``: lower case, accents
stripped), so "Café" and "cafe" are one entry; later duplicates are dropped and counted.

Lists come from users, so reading checks what it gets and says what is wrong, naming the
file: no such file, an empty file (or one with comments only), a binary file (a NUL byte
or bytes that are not UTF-8, with the offset), and lines that are not words (digits,
symbols, several words on a line). Non-words are skipped, counted and reported with their
line numbers (``WordList.skipped``; ``strict=True`` makes them an error); a file in which
no line is a word is an error.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

from rescorer.text import NotAWordError, normalize_word
from rescorer.utils import atomic_write_text

log = logging.getLogger(__name__)

COMMENT = "#"
_SHOWN = 5  # line numbers quoted in messages


class WordListError(ValueError):
    """A word-list file that cannot be used (the message names the file and the problem)."""


@dataclass
class WordList:
    """The distinct normalised words of a list file, in file order, and what was left out."""

    words: List[str]
    path: Optional[str] = None
    skipped: List[Tuple[int, str]] = field(default_factory=list)  # (line number, text) of lines that are not words
    duplicates: int = 0  # lines whose word (normalised) came earlier

    def __len__(self) -> int:
        return len(self.words)

    def __iter__(self) -> Iterator[str]:
        return iter(self.words)

    def summary(self) -> str:
        parts = [f"{len(self.words)} words"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} non-word lines skipped ({_lines(self.skipped)})")
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicates dropped")
        return f"{self.path or 'word list'}: " + ", ".join(parts)


def _lines(skipped: Sequence[Tuple[int, str]]) -> str:
    shown = ", ".join(f"line {n}: {t!r}" for n, t in skipped[:_SHOWN])
    return shown + (f", and {len(skipped) - _SHOWN} more" if len(skipped) > _SHOWN else "")


def _decode(path: Path, data: bytes) -> str:
    nul = data.find(b"\0")
    if nul >= 0:
        raise WordListError(f"{path}: not a text word list (a NUL byte at offset {nul}: a binary file?)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise WordListError(f"{path}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}): "
                            "save the list as UTF-8, one word per line") from None


def parse_word_list(lines: Iterable[str], source: str = "word list", strict: bool = False) -> WordList:
    """A ``WordList`` from lines of text (``read_word_list`` without the file checks)."""
    words: List[str] = []
    seen = set()
    skipped: List[Tuple[int, str]] = []
    duplicates = 0
    for n, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text.startswith(COMMENT):
            continue
        try:
            w = normalize_word(text)
        except NotAWordError:
            skipped.append((n, text[:60]))
            continue
        if w in seen:
            duplicates += 1
            continue
        seen.add(w)
        words.append(w)
    out = WordList(words, source, skipped, duplicates)
    if skipped and (strict or not words):
        what = "no line is a word" if not words else f"{len(skipped)} lines are not words"
        raise WordListError(f"{source}: {what} (one word per line, letters a-z and apostrophes): {_lines(skipped)}")
    if not words:
        raise WordListError(f"{source}: holds no words (empty, or comments only)")
    if skipped:
        log.warning("%s", out.summary())
    return out


def read_word_list(path, strict: bool = False) -> WordList:
    """Read and check a word-list file (module doc); raises ``WordListError`` naming the problem."""
    p = Path(path)
    if not p.exists():
        raise WordListError(f"{p}: no such word list")
    if p.is_dir():
        raise WordListError(f"{p}: is a directory, not a word-list file")
    data = p.read_bytes()
    if not data.strip():
        raise WordListError(f"{p}: empty word list")
    return parse_word_list(_decode(p, data).splitlines(), str(p), strict)


def write_word_list(path, words: Sequence[str], header: Sequence[str] = ()) -> Path:
    """Write ``words`` (already normalised and distinct: checked) one per line, after
    ``header`` lines as ``#`` comments; atomic."""
    bad = []
    for w in words:
        try:
            if normalize_word(w) != w:
                bad.append(w)
        except NotAWordError:
            bad.append(w)
    if bad:
        raise WordListError(f"{path}: not normalised words: {bad[:_SHOWN]}")
    if len(set(words)) != len(words):
        raise WordListError(f"{path}: {len(words) - len(set(words))} duplicate words")
    if not words:
        raise WordListError(f"{path}: no words to write")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{COMMENT} {part}".rstrip() for h in header for part in h.splitlines()]
    atomic_write_text(p, "\n".join(lines + list(words)) + "\n")
    return p


def is_word_list_file(x) -> bool:
    """Whether ``x`` names a file (a str or path), as opposed to a sequence of words."""
    return isinstance(x, (str, os.PathLike))
