"""Transcript files: another recogniser's 1-best words per utterance (``rescorer transcribe``,
read by ``rescorer tune --dev-transcripts / --test-transcripts``).

Format: UTF-8 JSON lines. The first line is the header, ``{"format": "rescorer-transcripts",
"version": 1, "meta": {...}}`` (``meta``: who wrote the words, e.g. the Whisper model's
sha256 and beam size); every other line is ``{"id": <utterance id>, "words": [<word>, ...]}``
with words in their canonical spelling (``text.normalize_word``) and, optionally,
``"seconds"``: what transcribing it cost (the method's cost is reported from them), and
``"confidences"``: one number in [0, 1] per word, how sure the recogniser was of it (``null``
where it cannot say; the header's ``meta["word_confidence"]`` names the measure), which
``rescorer tune --whisper-confidence-gates`` gates hits on.

Why a file of its own: transcribing is the slow part (a recogniser's beam search per
utterance), done once by its stage and resumed where it stopped; tuning then reads it as
it reads lattices. Reading is plain JSON (no code runs) and checks every line: a missing
or foreign header, a line that is not a JSON object, an id given twice, words that are not
words, confidences that are not one probability per word, each named with the file and line. A last line cut off mid-write (a killed run) is
dropped with a warning, so a resumed run redoes that utterance and loses nothing else.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

from rescorer.text import NotAWordError, normalize_word

log = logging.getLogger(__name__)

FORMAT = "rescorer-transcripts"
VERSION = 1


class TranscriptError(ValueError):
    """A transcript file that cannot be used (the message names the file, the line and the problem)."""


@dataclass
class Transcripts:
    meta: dict
    words: Dict[str, List[str]] = field(default_factory=dict)  # utterance id -> words
    path: str = ""
    seconds: Dict[str, float] = field(default_factory=dict)  # utterance id -> transcription time, where recorded
    confidences: Dict[str, List[float]] = field(default_factory=dict)  # utterance id -> per word (NaN: unknown), where recorded

    def __len__(self) -> int:
        return len(self.words)


def _header(meta: dict) -> str:
    return json.dumps({"format": FORMAT, "version": VERSION, "meta": meta}, sort_keys=True)


def read_transcripts(path: Union[str, Path]) -> Transcripts:
    p = Path(path)
    if not p.is_file():
        raise TranscriptError(f"transcript file {p} does not exist")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise TranscriptError(f"{p} is not UTF-8 text (byte {e.start}): not a transcript file") from e
    lines = text.split("\n")
    complete = text.endswith("\n")
    if not lines or not lines[0].strip():
        raise TranscriptError(f"{p} is empty: no {FORMAT} header")
    try:
        head = json.loads(lines[0])
    except json.JSONDecodeError as e:
        raise TranscriptError(f"{p}, line 1: not a {FORMAT} header (not JSON: {e.msg})") from e
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise TranscriptError(f"{p}, line 1: not a {FORMAT} file (header {str(head)[:80]!r})")
    if head.get("version") != VERSION:
        raise TranscriptError(f"{p}: {FORMAT} version {head.get('version')!r}; this reader knows version {VERSION}")
    meta = head.get("meta", {})
    if not isinstance(meta, dict):
        raise TranscriptError(f"{p}, line 1: the header's meta must be an object")
    out = Transcripts(meta=meta, path=str(p))
    body = lines[1:]
    last = len(body) - 1
    for i, line in enumerate(body):
        n = i + 2
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == last and not complete:  # cut off mid-write: that utterance is redone on resume
                log.warning("%s, line %d: incomplete last line dropped (an interrupted run)", p, n)
                break
            raise TranscriptError(f"{p}, line {n}: not JSON ({e.msg})") from e
        if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not isinstance(row.get("words"), list):
            raise TranscriptError(f'{p}, line {n}: expected {{"id": string, "words": [strings]}}')
        uid = row["id"]
        if uid in out.words:
            raise TranscriptError(f"{p}, line {n}: utterance {uid!r} given twice")
        try:
            words = [normalize_word(w) for w in row["words"]]
        except NotAWordError as e:
            raise TranscriptError(f"{p}, line {n} ({uid}): {e}") from e
        if words != row["words"]:
            raise TranscriptError(f"{p}, line {n} ({uid}): words must be in canonical spelling (lower case a-z and ')")
        sec = row.get("seconds")
        if sec is not None:
            if isinstance(sec, bool) or not isinstance(sec, (int, float)) or not 0 <= sec < float("inf"):
                raise TranscriptError(f"{p}, line {n} ({uid}): seconds must be a non-negative number, got {sec!r}")
            out.seconds[uid] = float(sec)
        conf = row.get("confidences")
        if conf is not None:
            if (not isinstance(conf, list) or len(conf) != len(words)
                    or not all(c is None or (not isinstance(c, bool) and isinstance(c, (int, float)) and 0 <= c <= 1)
                               for c in conf)):
                raise TranscriptError(f"{p}, line {n} ({uid}): confidences must be one number in [0, 1] (or null) "
                                      f"per word ({len(words)} words)")
            out.confidences[uid] = [float("nan") if c is None else float(c) for c in conf]
        out.words[uid] = words
    return out


class TranscriptWriter:
    """Appends utterances to a transcript file, resuming one written with the same ``meta``
    (``done`` holds the ids it already has); a file written with other meta (another model
    or beam) is an error rather than a silent mix."""

    def __init__(self, path: Union[str, Path], meta: dict):
        self.path = Path(path)
        self.meta = json.loads(json.dumps(meta, sort_keys=True))
        self.done: Dict[str, List[str]] = {}
        self._seconds: Dict[str, float] = {}
        self._confidences: Dict[str, List[float]] = {}
        if self.path.exists() and self.path.stat().st_size > 0:
            old = read_transcripts(self.path)
            if old.meta != self.meta:
                raise TranscriptError(f"{self.path} was written with {old.meta}, not {self.meta}: remove it or write elsewhere")
            self.done, self._seconds, self._confidences = old.words, old.seconds, old.confidences
            self._rewrite(old.words)  # drops a cut-off last line
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._rewrite({})
        self._f = self.path.open("a", encoding="utf-8")

    def _rewrite(self, words: Dict[str, List[str]]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join([_header(self.meta) + "\n"] + [_row(u, w, self._seconds.get(u), self._confidences.get(u))
                                                                for u, w in words.items()]), encoding="utf-8")
        tmp.replace(self.path)

    def add(self, uid: str, words: List[str], seconds: Optional[float] = None,
            confidences: Optional[List[float]] = None) -> None:
        if uid in self.done:
            raise TranscriptError(f"{self.path}: utterance {uid!r} is already written")
        words = [normalize_word(w) for w in words]
        if confidences is not None and (len(confidences) != len(words)
                                        or any(not (0 <= c <= 1) for c in confidences if not math.isnan(c))):
            raise TranscriptError(f"{self.path}: utterance {uid!r}: {len(confidences)} confidences for {len(words)} "
                                  "words, or one outside [0, 1]")
        self._f.write(_row(uid, words, seconds, confidences))
        self._f.flush()
        self.done[uid] = words

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "TranscriptWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _row(uid: str, words: List[str], seconds: Optional[float] = None,
         confidences: Optional[List[float]] = None) -> str:
    row = {"id": uid, "words": words}
    if seconds is not None:
        row["seconds"] = round(float(seconds), 4)
    if confidences is not None:
        row["confidences"] = [None if math.isnan(c) else round(float(c), 4) for c in confidences]
    return json.dumps(row, allow_nan=False) + "\n"
