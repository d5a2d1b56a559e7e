"""A split through CTC word spotting or CTC fusion: prepare once, tune on dev, decode.

- ``spot_all`` / ``tune_spotting``: CTC-WS (``decoding.word_spotting.ctc_word_spotting``)
  over utterances' CTC log-probs, editing the CTC greedy 1-best or another decoder's; the per-token bonus (and the hit threshold) are tuned on
  dev by WER (or for a precision target on the words it adds); since the spotter's beam
  compares bonus-weighted scores the spotting is rerun for each grid point (it costs a small
  fraction of decoding).
- ``prepare_fused_all`` / ``tune_fused``: ``rescore_ctc.CtcFusion`` per lattice, then a
  grid over (awe_scale, ctc_scale, CTC normalisation, lm_scale, wip[, oov_lm_score]) that
  only recombines per-arc scores.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import replace
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from rescorer.decoding.word_spotting import (GreedyWord, SpellingTrie, SpottingConfig, SpottingResult,
                                             ctc_word_spotting_batch)
from rescorer.evaluation.rescoring import NO_RECOVERY_LM_SCORE, added_counts, choose_recovery, recovery_off
from rescorer.wer import compute_wer


def spot_all(log_probs: Dict[str, torch.Tensor], trie: SpellingTrie, config: SpottingConfig,
             bases: Optional[Dict[str, List[GreedyWord]]] = None) -> Tuple[Dict[str, SpottingResult], float]:
    """(result by utterance, seconds spent spotting and merging); ``bases``: the words each
    utterance's hits replace (another decoder's 1-best on CTC frames), else the CTC greedy 1-best."""
    t0 = time.perf_counter()
    uids = list(log_probs)
    if bases is not None:
        missing = [u for u in uids if u not in bases]
        if missing:
            raise KeyError(f"no base words for {len(missing)} utterances, e.g. {missing[:3]}")
    out = dict(zip(uids, ctc_word_spotting_batch([log_probs[u] for u in uids], trie, config,
                                                 bases=None if bases is None else [bases[u] for u in uids])))
    return out, time.perf_counter() - t0


def tune_spotting(log_probs: Dict[str, torch.Tensor], trie: SpellingTrie, refs: Dict[str, List[str]],
                  bonuses: Iterable[float], thresholds: Iterable[float], base: SpottingConfig = SpottingConfig(),
                  train_vocab: Optional[set] = None, min_precision: Optional[float] = None,
                  max_p: Optional[float] = None, precision_z: float = 0.0,
                  bases: Optional[Dict[str, List[GreedyWord]]] = None) -> Tuple[Optional[SpottingConfig], List[dict]]:
    """Grid on the given (dev) utterances; returns (chosen config, curve rows). By default the
    point of lowest WER, the anchor as published (tuned for WER, kept even where it raises it).
    With ``min_precision``: the rule every recovery method follows for a precision target
    (``choose_recovery`` against the greedy output, ``max_p`` its sign test, ``precision_z`` its
    margin for dev's optimism); None where no
    point meets it (the method abstains: the greedy output). Curve rows carry ``added_counts``
    against the greedy output. ``bases`` (``spot_all``): the words edited instead of the greedy ones."""
    uids = sorted(log_probs)
    r = [refs[u] for u in uids]
    edited = None  # the words spotting edits: the greedy output, or the bases
    configs, curve = [], []
    for b, th in itertools.product([float(x) for x in bonuses], [float(x) for x in thresholds]):
        cfg = replace(base, bonus=b, threshold=th)
        res, seconds = spot_all({u: log_probs[u] for u in uids}, trie, cfg, bases)
        if edited is None:
            edited = [[w.word for w in res[u].greedy] for u in uids]
        hyps = [res[u].word_sequence for u in uids]
        m = compute_wer(r, hyps, train_vocab)
        configs.append(cfg)
        curve.append({"bonus": b, "threshold": th, "wer": m["wer"], "iv_wer": m.get("iv_wer"),
                      "oov_wer": m.get("oov_wer"), "accepted": sum(len(x.accepted) for x in res.values()),
                      "seconds": round(seconds, 3), **added_counts(r, edited, hyps, train_vocab)})
    if not curve:
        raise ValueError("CTC word spotting: an empty grid of bonuses and thresholds")
    if min_precision is None:
        return configs[min(range(len(curve)), key=lambda i: (curve[i]["wer"], i))], curve
    no_spotting = {"wer": compute_wer(r, edited, train_vocab)["wer"]}
    best = choose_recovery(no_spotting, curve, min_precision, max_p, precision_z)
    return (None if best is None else configs[best]), curve


def prepare_fused_all(fusion, lattices: Dict[str, object], feats: Dict[str, torch.Tensor],
                      log_probs: Dict[str, torch.Tensor], recover: bool, progress: bool = True,
                      batch_frames: int = 20000):
    """``CtcFusion.prepare_batch`` over a split, in batches of at most ``batch_frames`` feature frames."""
    from tqdm import tqdm

    from rescorer.formats.frames import batches_by_frames

    missing = [u for u in lattices if u not in feats or u not in log_probs]
    if missing:
        raise KeyError(f"no features for {len(missing)} lattices, e.g. {missing[:3]}")
    desc = "embedding + CTC scores" + (" + recovery (embedding and CTC-WS)" if recover else "")
    uids = sorted(lattices)
    out = {}
    with tqdm(total=len(uids), desc=desc, disable=not progress) as bar:
        for us in batches_by_frames({u: feats[u].shape[0] for u in uids}, batch_frames):
            done = fusion.prepare_batch([lattices[u] for u in us], [feats[u] for u in us], [log_probs[u] for u in us],
                                        recover)
            out.update(zip(us, done))
            bar.update(len(us))
    return out


def _fused_grid(rescorer, prepared, refs, uids, points, train_vocab, step: Optional[str] = None, base_hyps=None):
    """(best config, its normalisation, curve rows, its gate, the configs in curve order)."""
    curve, best, configs = [], None, []
    for n, a, k, l, w, o, g in points:
        cfg = replace(rescorer.config, awe_scale=a, ctc_scale=k, lm_scale=l, word_insertion_penalty=w)
        if o is not None:
            cfg = recovery_off(cfg) if o <= NO_RECOVERY_LM_SCORE else replace(cfg, oov_lm_score=o)
        hyps = {u: prepared[u].decode(rescorer, cfg, n, g) for u in uids}
        m = compute_wer([refs[u] for u in uids], [hyps[u] for u in uids], train_vocab)
        row = {"ctc_norm": n, "awe_scale": a, "ctc_scale": k, "lm_scale": l, "word_insertion_penalty": w,
               "wer": m["wer"], "iv_wer": m.get("iv_wer"), "oov_wer": m.get("oov_wer")}
        if o is not None:
            row["oov_lm_score"] = o
        if g is not None:
            row.update(g.to_dict())
        if base_hyps is not None:
            row.update(added_counts([refs[u] for u in uids], [base_hyps[u] for u in uids], [hyps[u] for u in uids],
                                    train_vocab))
        if step:
            row["step"] = step
        curve.append(row)
        configs.append((cfg, n, g))
        if best is None or m["wer"] < best[0] - 1e-12:
            best = (m["wer"], cfg, n, g)
    return best[1], best[2], curve, best[3], configs


def tune_fused(rescorer, prepared: Dict[str, object], refs: Dict[str, List[str]], awe_scales: Iterable[float],
               ctc_scales: Iterable[float], norms: Sequence[str], lm_scales: Iterable[float],
               word_insertion_penalties: Iterable[float], train_vocab: Optional[set] = None,
               oov_lm_scores: Optional[Iterable[float]] = None, recovered: bool = False,
               gates: Sequence[object] = (None,), min_precision: Optional[float] = None,
               max_p: Optional[float] = None, precision_z: float = 0.0) -> Tuple[object, str, List[dict], object]:
    """Grid search on dev; returns (best RescoreConfig, best normalisation, curve rows, best gate).

    ``gates``: ``rescore_ctc.EvidenceGate`` s for the added arcs, tried in step 2 with the LM cost
    (None: every added arc stays). The first of equal dev WER wins: list the strictest first, so
    that a tie keeps the gate that adds fewer words.

    With ``recovered`` lattices (recovery's and the spotter's arcs added), in two steps, as
    for embedding recovery (``evaluation.rescoring.tune_recovery``): the scales and the
    normalisation with every added arc priced out, then, at those embedding, LM and insertion
    scales, the LM cost of an added word (``oov_lm_scores``, default the rescorer's own) with
    the CTC weight and normalisation again; step 2's rows carry ``added_counts`` against step
    1's hypotheses. Step 2's point is kept only as ``evaluation.rescoring.choose_recovery``
    allows (a lower dev WER than step 1's, or the ``min_precision`` target for the added
    words, ``precision_z`` standard errors down; with ``max_p``, a significant sign test over
    dev utterances too), else step 1's
    point is returned, every added arc priced out. The chosen row says ``"chosen": true``."""
    uids = sorted(prepared)
    ctc_scales = [float(x) for x in ctc_scales]
    scales = [(n, a, k, l, w) for n, a, k, l, w in itertools.product(
        list(norms), [float(x) for x in awe_scales], ctc_scales, [float(x) for x in lm_scales],
        [float(x) for x in word_insertion_penalties]) if not (k == 0 and n != norms[0])]  # no CTC term: norm moot
    oov_grid = [None] if oov_lm_scores is None else [float(x) for x in oov_lm_scores]
    if not recovered:
        best, norm, curve, gate, _ = _fused_grid(rescorer, prepared, refs, uids,
                                                 [p + (o, None) for p in scales for o in oov_grid], train_vocab)
        return best, norm, curve, gate
    base, norm, first, _, _ = _fused_grid(rescorer, prepared, refs, uids,
                                          [p + (NO_RECOVERY_LM_SCORE, None) for p in scales], train_vocab, "scales")
    without = {u: prepared[u].decode(rescorer, base, norm) for u in uids}
    # step 2 also revisits the CTC weight: with the added arcs priced out it only re-ranked the
    # decoder's own words, while it is much of the evidence for an added one
    ctc_points = list(dict.fromkeys((n, k) for n, _, k, _, _ in scales))
    second_points = [(n, base.awe_scale, k, base.lm_scale, base.word_insertion_penalty, o, g)
                     for n, k in ctc_points for o in oov_grid for g in gates]
    _, _, second, _, configs = _fused_grid(rescorer, prepared, refs, uids, second_points, train_vocab, "recovery",
                                           without)
    i0 = min(range(len(first)), key=lambda i: (first[i]["wer"], i))
    pick = choose_recovery(first[i0], second, min_precision, max_p, precision_z)
    if pick is None:
        first[i0]["chosen"] = True
        return base, norm, first + second, None
    second[pick]["chosen"] = True
    cfg, n, g = configs[pick]
    return cfg, n, first + second, g
