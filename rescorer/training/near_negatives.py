"""Near-spelling and near-pronunciation negatives: vocabulary words one or two edits apart.

Mining by embedding similarity finds the spellings the model already confuses; these are
the ones it must learn to tell apart because they look or sound almost alike ("cat" /
"cap", "bat" / "pat"), which teaches the spelling side what each letter and phone is
worth. For every training-vocabulary word, its neighbours are the other vocabulary words
within Levenshtein distance 1-2 of its letters, or of its phones (ARPAbet, from
``rescorer.pronunciation``). Words with the same phones (homophones: "to" / "too") are
never neighbours: no audio could tell them apart.

Found with a deletion-neighbourhood index (as in SymSpell): every string is stored under
each string obtained by deleting up to ``d`` of its symbols; two strings within distance
``d`` always share such a key, so the candidates of a word are the members of its keys'
buckets, each then checked with an exact edit distance (kaldialign). No O(V^2) pass:
work grows with the buckets, which stay small. Short strings (under ``min_length_for_2``
symbols) only get distance-1 neighbours: two edits leave a 3-letter word almost nothing.
"""

from __future__ import annotations

from typing import Dict, Hashable, List, Optional, Sequence, Set

import kaldialign


def deletion_keys(s: str, depth: int) -> Set[str]:
    """``s`` and every string made by deleting up to ``depth`` of its characters."""
    out = {s}
    frontier = {s}
    for _ in range(depth):
        frontier = {x[:i] + x[i + 1 :] for x in frontier for i in range(len(x))}
        out |= frontier
    return out


def _as_strings(sequences: Sequence[Sequence[Hashable]]) -> List[str]:
    """Sequences of any symbols (phones) as strings, one character per distinct symbol."""
    if all(isinstance(s, str) for s in sequences):
        return list(sequences)  # type: ignore[arg-type]
    code: Dict[Hashable, str] = {}
    return ["".join(code.setdefault(x, chr(0x4E00 + len(code))) for x in s) for s in sequences]


def edit_neighbours(
    sequences: Sequence[Sequence[Hashable]], max_distance: int = 2, min_length_for_2: int = 4
) -> List[List[int]]:
    """For each sequence, the indices of the others within edit distance 1..max_distance.

    Pairs where either sequence is shorter than ``min_length_for_2`` count only at distance 1.
    Equal sequences (distance 0) are not neighbours. Sorted index lists.
    """
    if max_distance < 1:
        raise ValueError(f"max_distance must be >= 1, got {max_distance}")
    strings = _as_strings(sequences)
    for i, s in enumerate(strings):
        if not s:
            raise ValueError(f"sequence {i} is empty: no edit neighbours for nothing")

    def depth(s: str) -> int:
        return max_distance if len(s) >= min_length_for_2 else 1

    buckets: Dict[str, List[int]] = {}
    keys_of: List[Set[str]] = []
    for i, s in enumerate(strings):
        keys = deletion_keys(s, depth(s))
        keys_of.append(keys)
        for k in keys:
            buckets.setdefault(k, []).append(i)
    out: List[List[int]] = [[] for _ in strings]
    for i, s in enumerate(strings):  # each pair checked once, from its lower index
        candidates = {j for k in keys_of[i] for j in buckets[k] if j > i}
        for j in candidates:
            t = strings[j]
            limit = min(depth(s), depth(t))
            if abs(len(s) - len(t)) > limit or s == t:
                continue
            if kaldialign.edit_distance(s, t)["total"] <= limit:
                out[i].append(j)
                out[j].append(i)
    return [sorted(x) for x in out]


def near_negative_table(
    vocabulary: Sequence[str],
    pronunciations: Optional[Sequence[Sequence[str]]] = None,
    max_distance: int = 2,
    min_length_for_2: int = 4,
) -> List[List[int]]:
    """For each vocabulary word, the other words near it in letters or (when given) in phones.

    ``pronunciations[i]`` are word i's phones; words with equal phones are never each
    other's neighbours. Returns sorted index lists.
    """
    if pronunciations is not None and len(pronunciations) != len(vocabulary):
        raise ValueError(f"{len(pronunciations)} pronunciations for {len(vocabulary)} words")
    by_letters = edit_neighbours(vocabulary, max_distance, min_length_for_2)
    if pronunciations is None:
        return by_letters
    by_phones = edit_neighbours([tuple(p) for p in pronunciations], max_distance, min_length_for_2)
    return [
        sorted(j for j in set(a) | set(b) if tuple(pronunciations[i]) != tuple(pronunciations[j]))
        for i, (a, b) in enumerate(zip(by_letters, by_phones))
    ]
