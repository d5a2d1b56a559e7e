"""Whisper's list words in the rescored 1-best, tuned on dev: the gate's choice and the evidence
behind it (``rescorer tune --methods awe_whisper_context_list,...``; the hits themselves and
the gate are ``rescorer.transcript_hits``).

``tune_gate`` picks the gate on dev by the keep-or-abstain rule of the other recovery
methods (``evaluation.rescoring.choose_recovery``): the hits must lower the dev WER against
the same rescoring without them (or, with ``min_precision``, reach that precision without
raising it), else the method abstains and adds nothing. ``fit_hit_model`` weighs the pieces
of evidence together (``transcript_hits.HitModel``, fitted on dev's hits) for the gates that ask
for a least probability of being right. ``hit_evidence`` says how well each piece of evidence
(embedder cosine, recogniser confidence, the fitted model) parts right hits from wrong ones.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch

from rescorer.evaluation.rescoring import added_counts, choose_recovery
from rescorer.metrics import NoPositivePairsError, average_precision, roc_auc
from rescorer.transcript_hits import HIT_FEATURES, HIT_MODEL_FORMS, HitGate, HitModel, SpottedUtterance, feature_pairs
from rescorer.wer import compute_wer


LINEAR_L2 = 1.0
# the quadratic form's penalty: the middle of 10, 30 and 100, tried on speechocean762 dev in probes
# (README, "A second-order hit model")
QUADRATIC_L2 = 30.0


def hit_labels(spotted: Dict[str, SpottedUtterance], refs: Dict[str, List[str]],
               pool: Sequence[Dict[str, SpottedUtterance]] = ()):
    """(each hit's features, whether it is right): right when its word is among its utterance's
    reference words. ``pool``: more spottings over the same paths (other word lists' hits on the
    same fold's dev); a hit two of them share (same word, replaced words and transcript position)
    counts once. ValueError where a pooled spotting's path differs from ``spotted``'s."""
    x, y, seen = [], [], set()
    for k, sets in enumerate([spotted, *pool]):
        for u in sorted(sets):
            su = sets[u]
            if k and u in spotted and [w.word for w in su.hyp] != [w.word for w in spotted[u].hyp]:
                raise ValueError(f"pooled hits of {u} lie on another path than the list's own: pool only the "
                                 f"spottings of one fold's paths")
            ref = set(refs.get(u, ()))
            for h, f in zip(su.hits, su.features()):
                key = (u, h.word, h.first, h.last, h.source)
                if key in seen:
                    continue
                seen.add(key)
                x.append(f)
                y.append(h.word in ref)
    return x, y


def fit_hit_model(spotted: Dict[str, SpottedUtterance], refs: Dict[str, List[str]],
                  l2: Optional[float] = None, pool: Sequence[Dict[str, SpottedUtterance]] = (),
                  form: str = "linear") -> Optional[HitModel]:
    """A logistic ``HitModel`` of dev's hits being right (L2 penalty ``l2`` on the weights of the
    standardised features, as one more example's worth of evidence: small dev sets stay stable);
    None where dev has no right hit or no wrong one, or no feature that varies. ``form``:
    ``"linear"``, or ``"quadratic"``, which also weighs every product of two features (squares
    included: 28 more weights for seven features), under a stronger default penalty
    (``QUADRATIC_L2``) that holds those weights near zero unless a few hundred dev hits agree on
    them. ``pool``: other
    word lists' hits on the same paths, fitted on too (``hit_labels``): what a hit's evidence
    says of it does not depend on which list made it a hit, and a context list's few dozen dev
    hits fit a model that ranks its held-out hits worse than one fitted on the large list's
    hundreds as well (``results/recovery_precision_target.json``); the gate's threshold is still
    tuned on the list's own hits, which carry its prior."""
    if form not in HIT_MODEL_FORMS:
        raise ValueError(f"hit model form {form!r}: expected one of {', '.join(HIT_MODEL_FORMS)}")
    if l2 is None:
        l2 = QUADRATIC_L2 if form == "quadratic" else LINEAR_L2
    x, y = hit_labels(spotted, refs, pool)
    if not x or all(y) or not any(y):
        return None
    X = torch.tensor(x, dtype=torch.float64)
    t = torch.tensor(y, dtype=torch.float64)
    # a feature constant on dev (lm_gain without an LM, a posterior never known) carries no
    # evidence: it stays out of the model, which names only the features it weighs
    keep = X.std(0, unbiased=False) > 1e-6
    if not bool(keep.any()):
        return None
    names = tuple(f for f, k in zip(HIT_FEATURES, keep.tolist()) if k)
    X = X[:, keep]
    mean = X.mean(0)
    scale = X.std(0, unbiased=False)
    Z = (X - mean) / scale
    pairs = feature_pairs(Z.shape[1]) if form == "quadratic" else []
    if pairs:
        Z = torch.cat([Z, torch.stack([Z[:, i] * Z[:, j] for i, j in pairs], 1)], 1)
    w = torch.zeros(Z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        v = torch.nn.functional.binary_cross_entropy_with_logits(Z @ w + b, t, reduction="sum") + 0.5 * l2 * (w * w).sum()
        v.backward()
        return v

    opt.step(loss)
    w = w.detach().tolist()
    n = len(names)
    return HitModel(tuple(w[:n]), float(b.detach()), tuple(mean.tolist()), tuple(scale.tolist()), names, tuple(w[n:]))


def tune_gate(spotted: Dict[str, SpottedUtterance], refs: Dict[str, List[str]], gates: Sequence[Optional[float]],
              train_vocab=None, min_precision: Optional[float] = None, max_p: Optional[float] = None,
              confidence_gates: Sequence[Optional[float]] = (None,), probability_gates: Sequence[float] = (),
              hit_model: Optional[HitModel] = None, precision_z: float = 0.0):
    """(the chosen ``HitGate``, or ``"abstained"``; curve rows): one row per pair of a cosine
    gate (``gates``) and a confidence gate (``confidence_gates``), and one per least probability
    (``probability_gates``) of ``hit_model`` (default: one fitted on these hits; no rows where they
    are all right or all wrong), with WER and ``added_counts`` against the hypotheses without hits, then the
    choice by ``choose_recovery`` against the row without hits (``gate: "off"``; ``max_p``: its
    sign test over dev utterances; ``precision_z``: its margin on ``min_precision``)."""
    uids = sorted(spotted)
    r = [refs[u] for u in uids]
    without = [[w.word for w in spotted[u].hyp] for u in uids]
    off = compute_wer(r, without, train_vocab)
    base_row = {"gate": "off", "confidence_gate": "off", "wer": off["wer"], "iv_wer": off.get("iv_wer"), "oov_wer": off.get("oov_wer")}
    rows, grid = [], [HitGate(g, q) for q in confidence_gates for g in gates]
    model = (hit_model or fit_hit_model(spotted, refs)) if probability_gates else None
    if model is not None:
        grid += [HitGate(None, None, p, model) for p in probability_gates]
    for gate in grid:
        hyps = [spotted[u].words(gate) for u in uids]
        m = compute_wer(r, hyps, train_vocab)
        rows.append({**gate.as_row(), "wer": m["wer"], "iv_wer": m.get("iv_wer"), "oov_wer": m.get("oov_wer"),
                     **added_counts(r, without, hyps, train_vocab)})
    pick = choose_recovery(base_row, rows, min_precision, max_p, precision_z)
    if pick is None:
        base_row["chosen"] = True
        return "abstained", [base_row] + rows
    rows[pick]["chosen"] = True
    return grid[pick], [base_row] + rows


def _ranking(vals, pos) -> dict:
    x = torch.tensor(vals, dtype=torch.float64).clamp(min=-1e30)  # -inf ranks last, without inf arithmetic
    try:
        return {"roc_auc": round(roc_auc(x, pos), 4), "ap": round(average_precision(x, pos), 4)}
    except NoPositivePairsError:
        return {"roc_auc": None, "ap": None}


def hit_evidence(spotted_sets: Sequence[Dict[str, SpottedUtterance]], refs: Dict[str, List[str]],
                 models: Optional[Sequence[Optional[HitModel]]] = None) -> dict:
    """How well each piece of evidence parts right hits from wrong ones, over every hit of
    ``spotted_sets`` (e.g. each fold's dev): a hit is right when its word is among its
    utterance's reference words. ROC AUC and average precision of the embedder's cosine, of
    the recogniser's confidence (unknown ones rank last) and, where the hits have them, of the LM's
    gain (``lm_gain``), and with ``models`` (one per set, e.g.
    each fold's fitted on the other fold's dev) of the model's probability; None where undefined
    (or, for the model, where a set has none)."""
    cos, conf, right, prob, gains = [], [], [], [], []
    for k, spotted in enumerate(spotted_sets):
        model = models[k] if models is not None else None
        for u in sorted(spotted):
            su = spotted[u]
            ref = set(refs.get(u, ()))
            q = su.confidences or [math.nan] * len(su.hits)
            feats = su.features() if model is not None else [None] * len(su.hits)  # only the model reads them
            gains += su.lm_gains if su.lm_gains else [None] * len(su.hits)
            for h, c, v, f in zip(su.hits, su.cosines, q, feats):
                cos.append(c)
                conf.append(-math.inf if math.isnan(v) else v)
                right.append(h.word in ref)
                prob.append(None if model is None else model.probability(f))
    out = {"hits": len(right), "right": int(sum(right))}
    pos = torch.tensor(right, dtype=torch.bool)
    pieces = [("cosine", cos), ("confidence", conf)] + ([("lm_gain", gains)] if gains and None not in gains else [])
    for name, vals in pieces:
        for key, v in _ranking(vals, pos).items():
            out[f"{name}_{key}"] = v
    if models is not None:
        ok = None not in prob
        for key, v in (_ranking(prob, pos) if ok else {"roc_auc": None, "ap": None}).items():
            out[f"model_{key}"] = v
    return out
