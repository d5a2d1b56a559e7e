"""List words that a second recogniser writes, spotted into a hypothesis.

Why: a pretrained recogniser (Whisper, ``models.whisper_text``) spells words the lattice's
decoder never learnt, and when one of them is on the user's list it is a proposal with
far better odds than a nearest spelling found by embedding alone (``results/oov_proposals.json``).
The rule is the CTC word spotter's (``decoding.word_spotting``), with the second
recogniser's transcript in place of the spotted frames: the two word sequences are
aligned by edit distance (kaldialign); each list word of the transcript that the
hypothesis lacks there, with at least ``min_letters`` letters, replaces the hypothesis
words aligned to it and the hypothesis words beside it that the transcript has nothing
for (``cat a man`` against ``catamaran``), or is inserted between its neighbours when it
faces none. The replaced words' times give the new word's span, so a caller can check it
against the audio (``transcript_hits`` gates each hit on the embedder's
cosine over that span).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, List, Sequence, Tuple

from rescorer.lattice.paths import WordSpan

EPS = "<eps>"


@dataclass(frozen=True)
class TranscriptHit:
    word: str
    start: float  # seconds: the replaced words' span, or the gap between the neighbours of an insertion
    end: float
    first: int  # hypothesis words [first, last) are replaced (first == last: an insertion before ``first``)
    last: int
    source: int = -1  # the word's position in the transcript (its confidence there), -1: unknown


def _letters(word: str) -> int:
    return sum(c.isalpha() for c in word)


def spot_transcript(hyp: Sequence[WordSpan], transcript: Sequence[str], words: Collection[str],
                    min_letters: int = 4) -> List[TranscriptHit]:
    """The hits of ``transcript``'s list words (``words``) on ``hyp``, in order, non-overlapping."""
    import kaldialign

    h = [w.word for w in hyp]
    if not transcript:
        return []
    pairs = kaldialign.align(h, list(transcript), EPS)
    hyp_index, i = [], 0  # the hypothesis position of each pair (the next hypothesis word for an insertion)
    source, k = [], 0  # the transcript position of each pair's transcript word
    for a, b in pairs:
        hyp_index.append(i)
        source.append(k)
        i += a != EPS
        k += b != EPS
    present = set(h)
    hits: List[TranscriptHit] = []
    taken = -1  # last pair used by a hit
    for j, (a, b) in enumerate(pairs):
        if b == EPS or a == b or b not in words or b in present or _letters(b) < min_letters or j <= taken:
            continue
        lo = j
        while lo - 1 > taken and pairs[lo - 1][1] == EPS:
            lo -= 1
        hi = j
        while hi + 1 < len(pairs) and pairs[hi + 1][1] == EPS:
            hi += 1
        first = hyp_index[lo]
        last = hyp_index[hi] + (pairs[hi][0] != EPS)
        if last > first:
            start, end = hyp[first].start, hyp[last - 1].end
        else:  # an insertion: between its neighbours
            start = hyp[first - 1].end if first > 0 else (hyp[first].start if first < len(hyp) else 0.0)
            end = hyp[first].start if first < len(hyp) else start
        hits.append(TranscriptHit(b, float(start), float(max(start, end)), first, last, source[j]))
        taken = hi
    return hits


def apply_hits(hyp: Sequence[WordSpan], hits: Sequence[TranscriptHit]) -> Tuple[List[WordSpan], List[Tuple[str, float, float]]]:
    """(the hypothesis with ``hits`` in place, (word, start, end) of each added word)."""
    out: List[WordSpan] = []
    added = []
    i = 0
    for hit in sorted(hits, key=lambda x: (x.first, x.last)):
        if hit.first < i:
            raise ValueError(f"hits overlap at hypothesis word {hit.first}")
        out.extend(hyp[i:hit.first])
        out.append(WordSpan(hit.word, hit.start, hit.end))
        added.append((hit.word, hit.start, hit.end))
        i = hit.last
    out.extend(hyp[i:])
    return out, added
