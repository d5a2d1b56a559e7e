"""Word error rate with an in-vocabulary / OOV split (kaldialign alignments).

Definitions (all counts over reference words; every result is a JSON-able dict):

- Alignment: a minimum-edit-distance alignment from ``kaldialign.align`` (unit costs;
  a pure-Python Levenshtein with the same costs is used where kaldialign is missing).
  The hypothesis word ``<unk>`` never equals a reference word (it is a substitution).
- ``wer`` = (S + D + I) / N, N = number of reference words; with N = 0 the WER is
  reported as ``None`` when there are insertions and 0.0 otherwise.
- OOV reference words: words not in the given training vocabulary (the words the
  acoustic model was trained on). Substitutions and deletions count for the class of
  the reference word they are aligned to. An insertion counts for OOV when the nearest
  reference word before it or the nearest after it in the alignment is OOV (an OOV
  word decoded as several words yields S + I, both OOV errors), otherwise for IV; an
  insertion in an utterance with no reference words counts for IV. So
  ``iv_errors + oov_errors == errors``.
- ``iv_wer`` = IV errors / IV reference words; ``oov_wer`` = OOV errors / OOV reference
  words (``None`` when that class has no reference words).
- Oracle WER of a lattice: rescorer.decoding.decode.lattice_oracle (exact, over all
  lattice paths); pass its hypotheses here.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

EPS = "*"
_EPS_TOKEN = "<<eps>>"


def _align_py(ref: Sequence[str], hyp: Sequence[str]) -> List[Tuple[Optional[str], Optional[str]]]:
    n, m = len(ref), len(hyp)
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = i
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]))
    out = []
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and d[i][j] == d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            out.append((ref[i - 1], hyp[j - 1]))
            i, j = i - 1, j - 1
        elif i > 0 and d[i][j] == d[i - 1][j] + 1:
            out.append((ref[i - 1], None))
            i -= 1
        else:
            out.append((None, hyp[j - 1]))
            j -= 1
    return out[::-1]


def align(ref: Sequence[str], hyp: Sequence[str]) -> List[Tuple[Optional[str], Optional[str]]]:
    """Pairs (ref word or None, hyp word or None)."""
    try:
        import kaldialign
    except ImportError:
        return _align_py(ref, hyp)
    ali = kaldialign.align(list(ref), list(hyp), _EPS_TOKEN)
    return [(None if r == _EPS_TOKEN else r, None if h == _EPS_TOKEN else h) for r, h in ali]


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1), from ``align``."""
    return sum(1 for r, h in align(ref, hyp) if r != h)


def error_counts(refs: Sequence[Sequence[str]], hyps: Sequence[Sequence[str]]) -> Tuple[int, int]:
    """(total edit distance, total reference length) over pairs: WER or, over characters, CER."""
    errors = sum(edit_distance(r, h) for r, h in zip(refs, hyps))
    return errors, sum(len(r) for r in refs)


def utterance_errors(ref: Sequence[str], hyp: Sequence[str], train_vocab: Optional[set] = None) -> Dict[str, int]:
    """Counts for one utterance: ref words, S, D, I, and the IV/OOV split."""
    ali = align(ref, hyp)
    oov = [r is not None and train_vocab is not None and r not in train_vocab for r, _ in ali]
    c = dict(ref_words=0, sub=0, dele=0, ins=0, iv_ref=0, oov_ref=0, iv_errors=0, oov_errors=0, correct=0)
    ref_pos = [k for k, (r, _) in enumerate(ali) if r is not None]
    for k, (r, h) in enumerate(ali):
        if r is not None:
            c["ref_words"] += 1
            c["oov_ref" if oov[k] else "iv_ref"] += 1
            if h is None:
                c["dele"] += 1
            elif h != r:
                c["sub"] += 1
            else:
                c["correct"] += 1
                continue
            c["oov_errors" if oov[k] else "iv_errors"] += 1
        else:
            c["ins"] += 1
            before = [p for p in ref_pos if p < k]
            after = [p for p in ref_pos if p > k]
            neighbours = ([before[-1]] if before else []) + ([after[0]] if after else [])
            c["oov_errors" if any(oov[p] for p in neighbours) else "iv_errors"] += 1
    return c


def _rate(num: int, den: int) -> Optional[float]:
    if den == 0:
        return 0.0 if num == 0 else None
    return num / den


def compute_wer(
    refs: Sequence[Sequence[str]], hyps: Sequence[Sequence[str]], train_vocab: Optional[Iterable[str]] = None
) -> Dict[str, object]:
    """Corpus WER; with ``train_vocab`` also IV/OOV WER (see module doc)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    vocab = set(train_vocab) if train_vocab is not None else None
    tot: Dict[str, int] = {}
    for r, h in zip(refs, hyps):
        for k, v in utterance_errors(list(r), list(h), vocab).items():
            tot[k] = tot.get(k, 0) + v
    if not tot:
        tot = dict(ref_words=0, sub=0, dele=0, ins=0, iv_ref=0, oov_ref=0, iv_errors=0, oov_errors=0, correct=0)
    errors = tot["sub"] + tot["dele"] + tot["ins"]
    out: Dict[str, object] = {
        "wer": _rate(errors, tot["ref_words"]),
        "errors": errors,
        "ref_words": tot["ref_words"],
        "substitutions": tot["sub"],
        "deletions": tot["dele"],
        "insertions": tot["ins"],
        "utterances": len(refs),
    }
    if vocab is not None:
        out.update(
            iv_wer=_rate(tot["iv_errors"], tot["iv_ref"]) if tot["iv_ref"] else None,
            oov_wer=_rate(tot["oov_errors"], tot["oov_ref"]) if tot["oov_ref"] else None,
            iv_errors=tot["iv_errors"], oov_errors=tot["oov_errors"],
            iv_ref_words=tot["iv_ref"], oov_ref_words=tot["oov_ref"],
            oov_ref_rate=tot["oov_ref"] / tot["ref_words"] if tot["ref_words"] else 0.0,
        )
    return out


def real_time_factor(processing_seconds: float, audio_seconds: float) -> Optional[float]:
    """Processing time / audio duration (None for no audio)."""
    return processing_seconds / audio_seconds if audio_seconds > 0 else None
