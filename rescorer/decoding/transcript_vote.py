"""Two recognisers' 1-bests voted word by word: a second recogniser's transcript (Whisper's)
as the base, the embedding-rescored lattice's word taken where the transcript's word is unsure
and the lattice's is sure.

Why: on real non-native speech Whisper tiny.en alone is the better system (speechocean762 dev:
28.7% against embedding rescoring's 38.8%), so spotting Whisper's words into the lattice's path
(``transcript_spotting``) starts from the weaker side. Where Whisper doubts a word, though, the
rescored lattice (its own acoustic model, the LM and the embedder) is often right. This is ROVER
(Fiscus, 1997) for two systems with their confidences: align the two word strings (kaldialign,
the transcript as the reference side) and, where they disagree on a word, take the lattice's
when Whisper's confidence in its own is below one threshold and the lattice's posterior of its
word at least another. A word of Whisper's that faces nothing on the lattice's path is dropped
when Whisper's confidence in it is below a third threshold: on speechocean762 dev Whisper inserts
three times as many words as it deletes (170 against 56), mostly unsure ones where the speaker
said nothing the lattice could find. The lattice's extra words are dropped (inserting the sure
ones gave more insertions than it removed deletions on dev). The thresholds are tuned on dev
(``stages.tune_whisper``, method ``whisper_lattice_vote``).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

from rescorer.wer import align


def vote(transcript: Sequence[str], confidences: Optional[Sequence[float]], path: Sequence[str],
         posteriors: Optional[Sequence[float]], max_confidence: float, min_posterior: float,
         max_drop_confidence: Optional[float] = None) -> List[str]:
    """The transcript's words, each replaced by the path's word it faces where the two differ,
    the transcript's confidence in its word is below ``max_confidence`` (an unknown one, NaN or
    no list, never is) and the path word's posterior is at least ``min_posterior``; a word that
    faces no path word is left out where its confidence is below ``max_drop_confidence`` (None:
    never)."""
    transcript, path = list(transcript), list(path)
    if confidences is not None and len(confidences) != len(transcript):
        raise ValueError(f"{len(confidences)} confidences for {len(transcript)} transcript words")
    if posteriors is not None and len(posteriors) != len(path):
        raise ValueError(f"{len(posteriors)} posteriors for {len(path)} path words")
    out, i, j = [], 0, 0
    for w, p in align(transcript, path):
        if w is not None:
            q = confidences[i] if confidences is not None else math.nan
            post = posteriors[j] if posteriors is not None and p is not None else math.nan
            unsure = math.isfinite(q) and q < max_confidence
            if p is None:
                if not (max_drop_confidence is not None and math.isfinite(q) and q < max_drop_confidence):
                    out.append(w)
            else:
                out.append(p if p != w and unsure and post >= min_posterior else w)
        i += w is not None
        j += p is not None
    return out
