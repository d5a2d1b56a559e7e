"""The word lists OOV recovery is measured with, built the way users would give them.

- **Large list** (``large_list``): a general dictionary plus the corpus's own words.
  By default the Debian word list (``/usr/share/dict/american-english``, package
  ``wamerican``, ~102k entries after normalisation) through
  ``text_sources.large_word_list``, plus every word of the given transcripts, so every
  spoken word can be found; normalised with ``rescorer.text.normalize_word`` (non-words
  dropped) and deduplicated, the dictionary's words first. A user's "all the words I
  know" list: 100k+ entries.
- **Context list** (``context_list``): a split's OOV words (words of its transcripts that
  the acoustic training transcripts lack) plus ``ratio`` (10) distractors per OOV word, as
  a user's list of names and terms for one session holds the few that are said among many
  that are not (the protocol of context-biasing evaluations). Distractors are words of
  the large list that are not in the split's transcripts, not in the training
  transcripts and not function words, matched to their OOV word in form and frequency:
  same length (then one letter longer or shorter, and so on, only when the length runs
  out), apostrophe or not alike, and the closest Zipf frequency (``wordfreq``, the large
  list's frequency source; 0 for words it does not know): each OOV word draws its
  ``ratio`` distractors, seeded, from the ``3 * ratio`` unused candidates of its length
  nearest in frequency; no candidate serves two OOV words. OOV words are taken in
  sorted order, so the list is a function of (transcripts, candidates, ratio, seed). The
  list is written sorted, so its order does not tell targets from distractors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from rescorer.corpora.text_sources import TextSourceError, large_word_list
from rescorer.text import FUNCTION_WORDS, NotAWordError, normalize_word

DEFAULT_SOURCES = ("wamerican",)
DISTRACTOR_RATIO = 10


def _normalised(words: Iterable[str]) -> List[str]:
    out = []
    for w in words:
        try:
            out.append(normalize_word(w))
        except NotAWordError:
            continue
    return out


def large_list(corpus_words: Iterable[str] = (), sources: Sequence[str] = DEFAULT_SOURCES) -> List[str]:
    """The dictionary's words (``large_word_list(sources=...)``) then the corpus's words it lacks
    (sorted), normalised and distinct."""
    base = large_word_list(sources=tuple(sources))
    known = set(base)
    extra = sorted(set(_normalised(corpus_words)) - known)
    return base + extra


def zipf_frequencies(words: Sequence[str]) -> Dict[str, float]:
    """Zipf frequency (log10 of occurrences per billion words, to 2 decimals; 0 for words it
    lacks) of each word in English, from ``wordfreq``'s frequency table: what
    ``wordfreq.zipf_frequency`` returns for a normalised word, 15x faster for 100k words."""
    try:
        from wordfreq import get_frequency_dict
    except ImportError as e:  # pinned in requirements/*.txt
        raise TextSourceError("context lists need word frequencies: install wordfreq (requirements/k2.txt)") from e
    table = get_frequency_dict("en", wordlist="best")
    return {w: round(math.log10(table[w] * 1e9), 2) if table.get(w, 0) > 0 else 0.0 for w in words}


@dataclass
class ContextList:
    """A context list: its words (sorted), the OOV words it was built for and each one's distractors."""

    words: List[str]
    targets: List[str]
    distractors: Dict[str, List[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.words)


def context_list(targets: Iterable[str], candidates: Sequence[str], frequency: Callable[[Sequence[str]], Dict[str, float]] = zipf_frequencies,
                 ratio: int = DISTRACTOR_RATIO, seed: int = 0, exclude: Iterable[str] = ()) -> ContextList:
    """The targets plus ``ratio`` matched distractors each, drawn from ``candidates`` (module doc).

    ``exclude``: words that may not be distractors (the split's and the training
    transcripts' words); targets and function words are excluded too. ``frequency`` maps
    words to a frequency score (default: Zipf frequencies from wordfreq).
    """
    if ratio < 0:
        raise ValueError(f"ratio must be >= 0, got {ratio}")
    tgt = sorted(set(_normalised(targets)))
    if not tgt:
        raise ValueError("no OOV words to build a context list for")
    if ratio == 0:
        return ContextList(list(tgt), tgt, {t: [] for t in tgt})
    banned = set(_normalised(exclude)) | set(tgt) | FUNCTION_WORDS
    pool = sorted(set(_normalised(candidates)) - banned)
    need = ratio * len(tgt)
    if len(pool) < need:
        raise ValueError(f"{len(pool)} candidate distractors for {len(tgt)} OOV words x {ratio}: give a larger candidate list")
    freq = frequency(tgt + pool)
    cand_len = np.array([len(w) for w in pool])
    cand_apos = np.array(["'" in w for w in pool])
    cand_freq = np.array([freq.get(w, 0.0) for w in pool], dtype=np.float64)
    used = np.zeros(len(pool), dtype=bool)
    rng = np.random.default_rng(seed)
    chosen: Dict[str, List[str]] = {}
    longest = int(cand_len.max())
    for t in tgt:
        # rings of the same form (apostrophe alike) by length difference, nearest first: a ring
        # with more than enough candidates gives its 3 x needed nearest in frequency (ties:
        # alphabetical) to a seeded draw; a smaller ring is taken whole, and the next one fills up
        f_t, need, picked = freq.get(t, 0.0), ratio, []
        for width in range(longest + 1):
            ring = np.flatnonzero(~used & (cand_apos == ("'" in t)) & (np.abs(cand_len - len(t)) == width))
            if ring.size >= need:
                near = ring[np.argsort(np.abs(cand_freq[ring] - f_t), kind="stable")[: 3 * need]]
                ring = rng.choice(near, size=need, replace=False)
            used[ring] = True
            picked.extend(int(i) for i in ring)
            need -= ring.size
            if need == 0:
                break
        if need:  # the form cannot be matched any more: the nearest in frequency of any unused candidate
            rest = np.flatnonzero(~used)
            take = rest[np.argsort(np.abs(cand_freq[rest] - f_t), kind="stable")[:need]]
            used[take] = True
            picked.extend(int(i) for i in take)
        chosen[t] = sorted(pool[i] for i in picked)
    words = sorted(set(tgt) | {w for ds in chosen.values() for w in ds})
    return ContextList(words, tgt, chosen)


def oov_words(split_texts: Iterable[str], train_texts: Iterable[str]) -> List[str]:
    """Distinct words of ``split_texts`` absent from ``train_texts`` (transcripts, space-separated words), sorted."""
    train = {w for t in train_texts for w in t.split()}
    return sorted({w for t in split_texts for w in t.split() if w not in train})


def context_list_for_split(split_texts: Sequence[str], train_texts: Sequence[str], candidates: Sequence[str],
                           ratio: int = DISTRACTOR_RATIO, seed: int = 0,
                           frequency: Optional[Callable[[Sequence[str]], Dict[str, float]]] = None) -> ContextList:
    """``context_list`` of a split: its OOV words, distractors excluding every word either transcript set holds."""
    spoken = {w for t in list(split_texts) + list(train_texts) for w in t.split()}
    return context_list(oov_words(split_texts, train_texts), candidates, frequency or zipf_frequencies, ratio, seed, spoken)
