"""Stage: the word lists OOV recovery is measured with, written as files (``rescorer word-lists``).

From the acoustic training utterances and the utterances of the splits to evaluate
(``rescorer.utterances`` files, as ``export-asr`` writes them), in ``out_dir``:

- ``large.txt``: the large list (``rescorer.corpora.word_lists.large_list``): the Debian
  word list plus every word of the given transcripts;
- ``context_<split>.txt`` for each split: that split's OOV words plus ten times as many
  matched distractors (``context_list_for_split``);
- ``word_lists.json``: sizes, sources, seed, each split's OOV words and their distractors.

The lists are plain word-list files (``rescorer.formats.word_list``, a ``#`` header saying
how they were made), read by ``rescorer tune --word-list/--context-list``, ``rescorer
rescore --word-list`` and ``Rescorer.set_vocabulary``. Each context list belongs to its
split (a session's list names that session's rare words): tune with the dev list, report
with the test list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Sequence

from rescorer.corpora.text_sources import TextSourceError
from rescorer.corpora.word_lists import DEFAULT_SOURCES, DISTRACTOR_RATIO, context_list_for_split, large_list
from rescorer.formats.utterances import read_utterance_features
from rescorer.formats.word_list import write_word_list
from rescorer.stages import StageError
from rescorer.utils import atomic_write_text


def _texts(path) -> list:
    if not Path(path).is_file():
        raise StageError(f"{path}: no such utterance file")
    return list(read_utterance_features(path, expect=None).texts)


def build_word_lists(train_data, splits: Dict[str, str], out_dir, sources: Sequence[str] = DEFAULT_SOURCES,
                     ratio: int = DISTRACTOR_RATIO, seed: int = 0, command: Optional[str] = None) -> dict:
    """Write the large list and one context list per split (module doc); returns the summary."""
    if not splits:
        raise StageError("no split to build a context list for (give --split NAME=UTTERANCES.pt)")
    bad = [n for n in splits if not n or "/" in n]
    if bad:
        raise StageError(f"bad split name(s) {bad}")
    out = Path(out_dir)
    train = _texts(train_data)
    texts = {name: _texts(path) for name, path in splits.items()}
    words = [w for t in train + [t for ts in texts.values() for t in ts] for w in t.split()]
    try:
        big = large_list(words, sources)
    except TextSourceError as e:
        raise StageError(str(e)) from e
    made_by = f"made by: {command}" if command else "made by rescorer.stages.word_lists"
    write_word_list(out / "large.txt", big, [
        f"large word list: {', '.join(sources)} + the words of the transcripts of {', '.join(['train'] + list(splits))}",
        f"{len(big)} words, normalised (rescorer.text.normalize_word), distinct", made_by,
    ])
    summary = {"large": {"path": str(out / "large.txt"), "words": len(big), "sources": list(sources)},
               "context": {}, "ratio": ratio, "seed": seed, "command": command}
    for name, ts in texts.items():
        try:
            ctx = context_list_for_split(ts, train, big, ratio=ratio, seed=seed)
        except (ValueError, TextSourceError) as e:
            raise StageError(f"context list for {name}: {e}") from e
        path = out / f"context_{name}.txt"
        write_word_list(path, ctx.words, [
            f"context list of split {name}: its {len(ctx.targets)} OOV words (not in the training transcripts) "
            f"+ {ratio} distractors each (same length, near Zipf frequency, seed {seed})",
            f"{len(ctx.words)} words, sorted", made_by,
        ])
        summary["context"][name] = {"path": str(path), "words": len(ctx.words), "oov_words": ctx.targets,
                                    "distractors": ctx.distractors}
    atomic_write_text(out / "word_lists.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return summary
