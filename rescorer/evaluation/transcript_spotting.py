"""Whisper's list words in the rescored 1-best, tuned on dev: the gate's choice and the evidence
behind it (``rescorer tune --methods awe_whisper_context_list,...``; the hits themselves and
the gate are ``rescorer.transcript_hits``).

``tune_gate`` picks the gate on dev by the keep-or-abstain rule of the other recovery
methods (``evaluation.rescoring.choose_recovery``): the hits must lower the dev WER against
the same rescoring without them (or, with ``min_precision``, reach that precision without
raising it), else the method abstains and adds nothing. ``hit_evidence`` says how well each
piece of evidence (embedder cosine, recogniser confidence) parts right hits from wrong ones.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch

from rescorer.evaluation.rescoring import added_counts, choose_recovery
from rescorer.metrics import NoPositivePairsError, average_precision, roc_auc
from rescorer.transcript_hits import HitGate, SpottedUtterance
from rescorer.wer import compute_wer


def tune_gate(spotted: Dict[str, SpottedUtterance], refs: Dict[str, List[str]], gates: Sequence[Optional[float]],
              train_vocab=None, min_precision: Optional[float] = None, max_p: Optional[float] = None,
              confidence_gates: Sequence[Optional[float]] = (None,)):
    """(the chosen ``HitGate``, or ``"abstained"``; curve rows): one row per pair of a cosine
    gate (``gates``) and a confidence gate (``confidence_gates``), with WER and ``added_counts``
    against the hypotheses without hits, then the choice by ``choose_recovery`` against the
    row without hits (``gate: "off"``; ``max_p``: its sign test over dev utterances)."""
    uids = sorted(spotted)
    r = [refs[u] for u in uids]
    without = [[w.word for w in spotted[u].hyp] for u in uids]
    off = compute_wer(r, without, train_vocab)
    base_row = {"gate": "off", "confidence_gate": "off", "wer": off["wer"], "iv_wer": off.get("iv_wer"), "oov_wer": off.get("oov_wer")}
    rows, grid = [], [HitGate(g, q) for q in confidence_gates for g in gates]
    for gate in grid:
        hyps = [spotted[u].words(gate) for u in uids]
        m = compute_wer(r, hyps, train_vocab)
        rows.append({**gate.as_row(), "wer": m["wer"], "iv_wer": m.get("iv_wer"), "oov_wer": m.get("oov_wer"),
                     **added_counts(r, without, hyps, train_vocab)})
    pick = choose_recovery(base_row, rows, min_precision, max_p)
    if pick is None:
        base_row["chosen"] = True
        return "abstained", [base_row] + rows
    rows[pick]["chosen"] = True
    return grid[pick], [base_row] + rows


def hit_evidence(spotted_sets: Sequence[Dict[str, SpottedUtterance]], refs: Dict[str, List[str]]) -> dict:
    """How well each piece of evidence parts right hits from wrong ones, over every hit of
    ``spotted_sets`` (e.g. each fold's dev): a hit is right when its word is among its
    utterance's reference words. ROC AUC and average precision of the embedder's cosine and of
    the recogniser's confidence (unknown ones rank last); None where undefined."""
    cos, conf, right = [], [], []
    for spotted in spotted_sets:
        for u, su in spotted.items():
            ref = set(refs.get(u, ()))
            q = su.confidences or [math.nan] * len(su.hits)
            for h, c, k in zip(su.hits, su.cosines, q):
                cos.append(c)
                conf.append(-math.inf if math.isnan(k) else k)
                right.append(h.word in ref)
    out = {"hits": len(right), "right": int(sum(right))}
    pos = torch.tensor(right, dtype=torch.bool)
    for name, vals in (("cosine", cos), ("confidence", conf)):
        x = torch.tensor(vals, dtype=torch.float64).clamp(min=-1e30)  # -inf ranks last, without inf arithmetic
        try:
            out[f"{name}_roc_auc"] = round(roc_auc(x, pos), 4)
            out[f"{name}_ap"] = round(average_precision(x, pos), 4)
        except NoPositivePairsError:
            out[f"{name}_roc_auc"] = out[f"{name}_ap"] = None
    return out
