"""Small helpers for work that must not be lost: atomic writes."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    The temporary name keeps the suffixes (``x.jsonl.gz`` -> ``.x.tmp1234.jsonl.gz``) so
    writers that pick a format by extension still do.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffixes = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    tmp = path.with_name(f".{stem}.tmp{os.getpid()}{suffixes}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
