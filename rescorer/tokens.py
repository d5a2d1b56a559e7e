"""The ASR token set: letters, so a word's spelling is its pronunciation.

Tokens: ``<blk>`` (CTC blank, id 0), ``|`` (word boundary, id 1), the apostrophe and
a-z. Any normalised word (rescorer.text) is spelled with them, so the lexicon needs no
dictionary and covers every word, including those the acoustic model never heard. The
boundary token ends every word (``cat`` -> ``c a t |``): CTC greedy output then splits
into words without a lexicon, and in the lexicon each word's letters are followed by it.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

BLANK = "<blk>"
WORD_BOUNDARY = "|"
TOKENS: List[str] = [BLANK, WORD_BOUNDARY, "'"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
TOKEN_ID = {t: i for i, t in enumerate(TOKENS)}
BLANK_ID = 0
BOUNDARY_ID = 1


class TokenError(ValueError):
    """Text with characters outside the token set."""


def words_to_token_ids(words: Sequence[str]) -> List[int]:
    out: List[int] = []
    for w in words:
        for c in w:
            if c not in TOKEN_ID or c in (BLANK, WORD_BOUNDARY):
                raise TokenError(f"character {c!r} of word {w!r} is not in the token set (a-z and apostrophe)")
        out += [TOKEN_ID[c] for c in w] + [BOUNDARY_ID]
    return out


def token_ids_to_words(ids: Sequence[int]) -> List[str]:
    """Collapse a (de-duplicated, blank-free) token sequence into words at boundaries."""
    words, cur = [], []
    for i in ids:
        if i == BLANK_ID:
            continue
        if i == BOUNDARY_ID:
            if cur:
                words.append("".join(cur))
                cur = []
            continue
        cur.append(TOKENS[i])
    if cur:
        words.append("".join(cur))
    return words


def ctc_greedy_collapse(ids: Sequence[int]) -> List[int]:
    """Standard CTC collapse: merge repeats, then drop blanks."""
    out, prev = [], None
    for i in ids:
        if i != prev and i != BLANK_ID:
            out.append(i)
        prev = i
    return out


def pad_token_ids(seqs: Sequence[Sequence[int]], pad: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """[B, L_max] int64 (``pad`` beyond each length) and lengths [B]: CTC and attention targets."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), max(1, int(lengths.max()) if len(seqs) else 1)), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out, lengths
