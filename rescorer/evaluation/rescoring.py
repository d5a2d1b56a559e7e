"""Rescoring a whole split: tuning the scales on dev, evaluating on test, WER accounting.

The expensive part (span and spelling embeddings, OOV candidate search) is done once
per lattice; a grid over (awe_scale, lm_scale, word_insertion_penalty) then only
recombines per-arc scores and re-runs the best path, so tuning is cheap: all lattices at
once, one k2 FsaVec built once for the whole grid (``decode_batch``, ``lattice.batch``). Tuning uses the
dev split only; the chosen scales are written to the model's ``rescorer.json`` and the
whole curve is returned for plotting and committing.

Accounting beyond WER (``rescorer.wer``), in ``recovery_counts``: OOV recall (reference
tokens whose word is absent from the acoustic training transcripts, right after the
method and wrong in the decoder's own 1-best), OOV precision (of the OOV words the
method put on the path, the share that are right) and the in-vocabulary tokens the
method broke (the false alarms it causes).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import asdict, replace
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from rescorer.lattice.word_lattice import best_path_hypothesis
from rescorer.rescore import NO_RECOVERY_LM_SCORE, NO_RECOVERY_MARGIN
from rescorer.wer import align, compute_wer, edit_distance

log = logging.getLogger(__name__)


def correct_ref_positions(ref: Sequence[str], hyp: Sequence[str]) -> List[bool]:
    """For each reference token, whether the alignment pairs it with an identical word."""
    out = []
    for r, h in align(list(ref), list(hyp)):
        if r is not None:
            out.append(h == r)
    return out


def _changed_tokens(base: Sequence[str], new: Sequence[str]) -> List[bool]:
    """For each token of ``new``, whether the alignment with ``base`` pairs it with a different word (or none)."""
    return [b != n for b, n in align(list(base), list(new)) if n is not None]


def _correct_hyp_positions(ref: Sequence[str], hyp: Sequence[str]) -> List[bool]:
    """For each hypothesis token, whether the alignment with ``ref`` pairs it with an identical word."""
    return [r == h for r, h in align(list(ref), list(hyp)) if h is not None]


def recovery_counts(refs, base_hyps, new_hyps, train_vocab) -> Dict[str, float]:
    """What a method changed on the decoder's 1-best, for OOV words and against IV words.

    - ``oov_tokens_recovered``: OOV reference tokens (word not in ``train_vocab``) the
      method gets right and the 1-best did not; ``oov_recall`` = that over ``oov_tokens``.
    - ``oov_tokens_proposed``: hypothesis tokens the method put on the path (not paired with
      the same word in the 1-best) whose word is not in ``train_vocab``;
      ``oov_precision`` = the share of those the reference alignment pairs with the same
      word (None when the method proposed none).
    - ``iv_tokens_broken``: IV reference tokens the 1-best had right and the method not.
    """
    rec = broken = oov_total = proposed = proposed_right = 0
    for ref, b, n in zip(refs, base_hyps, new_hyps):
        cb, cn = correct_ref_positions(ref, b), correct_ref_positions(ref, n)
        for w, x, y in zip(ref, cb, cn):
            if w not in train_vocab:
                oov_total += 1
                rec += int(y and not x)
            else:
                broken += int(x and not y)
        for w, changed, right in zip(n, _changed_tokens(b, n), _correct_hyp_positions(ref, n)):
            if changed and w not in train_vocab:
                proposed += 1
                proposed_right += int(right)
    return {"oov_tokens_recovered": rec, "iv_tokens_broken": broken, "oov_tokens": oov_total,
            "oov_recall": rec / oov_total if oov_total else None,
            "oov_tokens_proposed": proposed,
            "oov_precision": proposed_right / proposed if proposed else None}


_UNSET = object()  # a grid without the margin: the rescorer's own


def _hyp_words(hyp) -> List[str]:
    return [w.word for w in hyp.words]


class PreparedLattice:
    """A lattice with its embedding scores computed once (and, optionally, OOV arcs added).

    ``seconds``: its share of the preparation time (a batch's time split evenly over its
    utterances)."""

    def __init__(self, lattice, awe, recovered, seconds: float):
        self.lattice, self.awe, self.recovered, self.seconds = lattice, awe, recovered, seconds

    @classmethod
    def compute(cls, rescorer, lat, feats, recover: bool) -> "PreparedLattice":
        t0 = time.perf_counter()
        # one check of the lattice, each distinct span embedded once for recovery and scoring;
        # every OOV proposal is kept with its evidence, so each config abstains at decoding
        lattice, awe, recovered = rescorer.embedding_scores(lat, feats, recover=recover, abstain_at_decoding=recover)
        return cls(lattice, awe, recovered, time.perf_counter() - t0)

    def decode(self, rescorer, config) -> List[str]:
        return _hyp_words(best_path_hypothesis(rescorer.apply_scores(self.lattice, self.awe, config)))


def prepare_all(rescorer, lattices: Dict[str, object], feats: Dict[str, torch.Tensor], recover: bool, progress: bool = True,
                batch_frames: int = 20000):
    """Embedding scores of every lattice, computed in batches of utterances (at most
    ``batch_frames`` padded feature frames each; 0: one utterance at a time): the encoder
    runs once per batch (``Rescorer.embedding_scores_batch``). The results do not depend on
    the batching."""
    from tqdm import tqdm

    from rescorer.formats.frames import batches_by_frames

    out = {}
    missing = [u for u in lattices if u not in feats]
    if missing:
        raise KeyError(f"no features for {len(missing)} lattices, e.g. {missing[:3]}")
    batches = batches_by_frames({u: int(feats[u].shape[0]) for u in lattices}, batch_frames) if batch_frames > 0 \
        else [[u] for u in sorted(lattices)]
    bar = tqdm(total=len(lattices), desc="embedding scores" + (" + OOV recovery" if recover else ""), disable=not progress)
    for batch in batches:
        t0 = time.perf_counter()
        results = rescorer.embedding_scores_batch([lattices[u] for u in batch], [feats[u] for u in batch], recover=recover,
                                                  abstain_at_decoding=recover)
        share = (time.perf_counter() - t0) / len(batch)
        for uid, (lat, awe, recovered) in zip(batch, results):
            out[uid] = PreparedLattice(lat, awe, recovered, share)
        bar.update(len(batch))
    bar.close()
    return {u: out[u] for u in sorted(out)}


def decode_batch(prepared: Dict[str, PreparedLattice]):
    """The prepared lattices (with their awe scores) as one ``lattice.batch.LatticeBatch``, in
    ``prepared``'s order: build it once, decode it under every grid point (``decode_all``)."""
    from rescorer.lattice.batch import LatticeBatch

    return LatticeBatch([p.lattice for p in prepared.values()], [p.awe for p in prepared.values()])


def decode_all(rescorer, prepared: Dict[str, PreparedLattice], config, batch=None) -> Dict[str, List[str]]:
    """Each prepared lattice's best words under ``config`` (equal to ``PreparedLattice.decode``
    one by one); all lattices decoded together, in ``batch`` (``decode_batch(prepared)``) when given."""
    if not prepared:
        return {}
    batch = batch if batch is not None else decode_batch(prepared)
    if len(batch) != len(prepared):
        raise ValueError(f"a batch of {len(batch)} lattices for {len(prepared)} prepared ones")
    return dict(zip(prepared, rescorer.best_words_batch(batch, config)))


def tune(
    rescorer,
    prepared: Dict[str, PreparedLattice],
    refs: Dict[str, List[str]],
    awe_scales: Iterable[float],
    lm_scales: Iterable[float],
    word_insertion_penalties: Iterable[float],
    train_vocab: Optional[set] = None,
    oov_lm_scores: Optional[Iterable[float]] = None,
    oov_margins: Optional[Iterable[Optional[float]]] = None,
    base_hyps: Optional[Dict[str, List[str]]] = None,
) -> Tuple[object, List[dict]]:
    """Grid search on dev; returns (best RescoreConfig, curve rows {awe_scale, lm_scale, wip, wer}).

    ``oov_lm_scores`` (for lattices with recovered arcs) adds the LM cost of a recovered
    word to the grid (rows then carry ``oov_lm_score``); default: the rescorer's own.
    ``oov_margins`` likewise adds recovery's abstention margin (``RescoreConfig.oov_margin``;
    None in the grid: the rule before abstention), applied at decoding to lattices
    prepared with every proposal (rows carry ``oov_margin``). Ties keep the earlier grid point.
    With ``base_hyps`` (recovery's step 1: the same rescoring without recovery) rows also carry
    ``added_counts`` against them (what ``choose_recovery`` reads).
    """
    uids = sorted(prepared)
    batch = decode_batch(prepared) if prepared else None  # built once, decoded at every grid point
    curve, best = [], None
    oov_grid = [None] if oov_lm_scores is None else [float(x) for x in oov_lm_scores]
    margin_grid = [_UNSET] if oov_margins is None else [None if x is None else float(x) for x in oov_margins]
    for a, l, w, o, mg in itertools.product(list(awe_scales), list(lm_scales), list(word_insertion_penalties), oov_grid,
                                            margin_grid):
        cfg = replace(rescorer.config, awe_scale=float(a), lm_scale=float(l), word_insertion_penalty=float(w))
        if o is not None:
            cfg = replace(cfg, oov_lm_score=o)
        if mg is not _UNSET:
            cfg = replace(cfg, oov_margin=mg)
        hyps = decode_all(rescorer, prepared, cfg, batch)
        m = compute_wer([refs[u] for u in uids], [hyps[u] for u in uids], train_vocab)
        row = {"awe_scale": a, "lm_scale": l, "word_insertion_penalty": w, "wer": m["wer"],
               "iv_wer": m.get("iv_wer"), "oov_wer": m.get("oov_wer")}
        if o is not None:
            row["oov_lm_score"] = o
        if mg is not _UNSET:
            row["oov_margin"] = mg
        if base_hyps is not None:
            row.update(added_counts([refs[u] for u in uids], [base_hyps[u] for u in uids], [hyps[u] for u in uids],
                                    train_vocab))
        curve.append(row)
        if best is None or m["wer"] < best[0] - 1e-12:
            best = (m["wer"], cfg)
    return best[1], curve


# NO_RECOVERY_LM_SCORE / NO_RECOVERY_MARGIN (rescorer.rescore): an LM cost no recovered arc
# survives, and a margin no proposal clears (cosines differ by at most 2; it also drops the words
# recovered in place of <unk>, which keep the decoder's <unk> LM score): recovered lattices then
# decode as if nothing was added


def recovery_off(config):
    """``config`` with every recovered or spotted arc priced out (what ``abstained`` detects)."""
    return replace(config, oov_lm_score=NO_RECOVERY_LM_SCORE, oov_margin=NO_RECOVERY_MARGIN)


def added_counts(refs, without, with_recovery, train_vocab) -> dict:
    """What recovery itself changed: ``recovery_counts`` of the hypotheses ``with_recovery``
    against the same rescoring ``without`` it (not against the decoder's 1-best, which also
    counts what rescoring alone changed), as ``added_oov_recovered``, ``added_oov_proposed``,
    ``added_oov_precision`` (None: nothing added) and ``added_iv_broken``; and whether the
    change helps utterance by utterance (``paired_sign_test``: ``added_utterances_better``,
    ``added_utterances_worse``, ``added_sign_test_p``)."""
    c = recovery_counts(refs, without, with_recovery, train_vocab or set())
    return {"added_oov_recovered": c["oov_tokens_recovered"], "added_oov_proposed": c["oov_tokens_proposed"],
            "added_oov_precision": c["oov_precision"], "added_iv_broken": c["iv_tokens_broken"],
            **paired_sign_test(refs, without, with_recovery)}


def paired_sign_test(refs, without, with_recovery) -> dict:
    """A one-sided sign test over utterances: of those whose errors (edit distance to the
    reference) recovery changed, how many it made better and worse, and the chance of at
    least that many better ones if better and worse were equally likely. Why: a dev gain of
    a word or two, from one or two utterances, did not hold on test; a gain spread over
    many utterances is one to keep (``choose_recovery``'s ``max_p``)."""
    better = worse = 0
    for r, a, b in zip(refs, without, with_recovery):
        if list(a) == list(b):
            continue
        ea, eb = edit_distance(r, a), edit_distance(r, b)
        better += eb < ea
        worse += eb > ea
    n = better + worse
    p = sum(math.comb(n, k) for k in range(better, n + 1)) / 2 ** n if n else 1.0
    return {"added_utterances_better": better, "added_utterances_worse": worse, "added_sign_test_p": round(p, 6)}


def precision_lower_bound(right: int, n: int, z: float) -> float:
    """The Wilson score lower bound of a precision of ``right`` in ``n``, ``z`` standard errors
    down (0: ``right / n`` itself). Why Wilson: it stays below 1 for 3 right of 3, where the
    normal approximation's standard error is 0."""
    if n <= 0:
        return 0.0
    p, zz = right / n, z * z
    centre = p + zz / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + zz / (4 * n * n))
    return (centre - spread) / (1 + zz / n)


def choose_recovery(no_recovery: dict, rows: Sequence[dict], min_precision: Optional[float] = None,
                    max_p: Optional[float] = None, precision_z: float = 0.0) -> Optional[int]:
    """Which recovery grid point to use, by its dev row; None: abstain, recovery off.

    ``no_recovery`` is the row of the same rescoring with every added word priced out.
    Recovery must earn its place on dev: by default the point of lowest WER (the first of
    equals), only if that WER is below ``no_recovery``'s. With ``min_precision`` (rows with
    ``added_counts`` against the no-recovery hypotheses), a user's precision target: among the
    points whose added OOV words are right at least that often and that do not raise the WER,
    the one that recovers the most OOV tokens (then the lowest WER); none such, abstain.
    With ``max_p``, only points whose change is also significant utterance by utterance
    (``added_sign_test_p`` at most ``max_p``: ``paired_sign_test``) are candidates. With
    ``precision_z``, a point's precision must meet the target ``precision_z`` standard errors
    down (``precision_lower_bound`` of its added OOV words): the point chosen is the best of many
    on dev, so its own dev precision overstates what new speakers get (README, "Ask a few
    hundredths above"), and by more where dev added few words.
    """
    eps = 1e-12
    candidates = [i for i, r in enumerate(rows) if max_p is None or r.get("added_sign_test_p", 1.0) <= max_p + eps]
    if min_precision is None:
        best = min(candidates, key=lambda i: (rows[i]["wer"], i), default=None)
        return best if best is not None and rows[best]["wer"] < no_recovery["wer"] - eps else None
    def meets_target(r: dict) -> bool:
        if r.get("added_oov_precision") is None or not r.get("added_oov_recovered", 0) > 0:
            return False
        precision = r["added_oov_precision"] if not precision_z else \
            precision_lower_bound(r["added_oov_recovered"], r["added_oov_proposed"], precision_z)
        return precision >= min_precision - eps and r["wer"] <= no_recovery["wer"] + eps

    ok = [i for i in candidates if meets_target(rows[i])]
    return min(ok, key=lambda i: (-rows[i]["added_oov_recovered"], rows[i]["wer"], i), default=None)


def tune_recovery(
    rescorer,
    prepared: Dict[str, PreparedLattice],
    refs: Dict[str, List[str]],
    awe_scales: Iterable[float],
    lm_scales: Iterable[float],
    word_insertion_penalties: Iterable[float],
    train_vocab: Optional[set] = None,
    oov_lm_scores: Optional[Iterable[float]] = None,
    oov_margins: Optional[Iterable[Optional[float]]] = None,
    min_precision: Optional[float] = None,
    max_p: Optional[float] = None,
    precision_z: float = 0.0,
) -> Tuple[object, List[dict]]:
    """OOV recovery tuned in two steps on dev: the scales first, with every recovered arc
    priced out (``recovery_off``: the rescoring that recovery adds to, as ``awe_rescore``
    tunes it), then recovery's own settings (LM cost, margin) at those scales. Recovery is
    thus judged against the same rescoring it extends, and the grid costs the sum of the
    two grids' decodes, not their product. Curve rows say their step; step 2's rows carry
    ``added_counts`` against step 1's hypotheses.

    Step 2's point is kept only as ``choose_recovery`` allows (``min_precision``: a precision
    target for the added words, ``precision_z`` standard errors down; ``max_p``: a significant
    sign test over dev utterances);
    otherwise the returned config is step 1's, recovery priced out (``abstained``). The chosen row says ``"chosen": true`` either way."""
    base, first = tune(rescorer, prepared, refs, awe_scales, lm_scales, word_insertion_penalties, train_vocab,
                       oov_lm_scores=[NO_RECOVERY_LM_SCORE], oov_margins=[NO_RECOVERY_MARGIN])
    without = decode_all(rescorer, prepared, base)
    _, second = tune(rescorer, prepared, refs, [base.awe_scale], [base.lm_scale], [base.word_insertion_penalty],
                     train_vocab, oov_lm_scores=oov_lm_scores, oov_margins=oov_margins, base_hyps=without)
    first = [{**r, "step": "scales"} for r in first]
    second = [{**r, "step": "recovery"} for r in second]
    i0 = min(range(len(first)), key=lambda i: (first[i]["wer"], i))
    pick = choose_recovery(first[i0], second, min_precision, max_p, precision_z)
    if pick is None:
        first[i0]["chosen"] = True
        return base, first + second
    second[pick]["chosen"] = True
    row = second[pick]
    return replace(base, oov_lm_score=row.get("oov_lm_score", rescorer.config.oov_lm_score),
                   oov_margin=row.get("oov_margin", rescorer.config.oov_margin)), first + second


def abstained(config) -> bool:
    """Whether a tuned config prices every recovered arc out (``tune_recovery`` abstained)."""
    return float(getattr(config, "oov_lm_score", 0.0)) <= NO_RECOVERY_LM_SCORE


def evaluate(
    rescorer,
    prepared: Dict[str, PreparedLattice],
    refs: Dict[str, List[str]],
    base_hyps: Dict[str, List[str]],
    train_vocab: set,
    config=None,
    decode_seconds: Optional[float] = None,
) -> dict:
    """WER (+IV/OOV), recovery counts and cost of rescoring relative to decoding."""
    uids = sorted(prepared)
    t0 = time.perf_counter()
    hyps = decode_all(rescorer, prepared, config or rescorer.config)
    seconds = sum(p.seconds for p in prepared.values()) + (time.perf_counter() - t0)
    m = compute_wer([refs[u] for u in uids], [hyps[u] for u in uids], train_vocab)
    m.update(recovery_counts([refs[u] for u in uids], [base_hyps[u] for u in uids], [hyps[u] for u in uids], train_vocab))
    m["rescoring_seconds"] = round(seconds, 3)
    if decode_seconds:
        m["rescoring_seconds_per_decode_second"] = round(seconds / decode_seconds, 4)
    m["hypotheses"] = {u: " ".join(hyps[u]) for u in uids}
    return m


def plot_tuning_curve(curve: List[dict], path, title: str) -> None:
    """WER against awe_scale (at the best lm_scale/wip for each awe_scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_a: Dict[float, float] = {}
    for r in curve:
        by_a[r["awe_scale"]] = min(by_a.get(r["awe_scale"], 1e9), r["wer"])
    xs = sorted(by_a)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(xs, [100 * by_a[x] for x in xs], marker="o")
    ax.set_xlabel("embedding weight (awe_scale)")
    ax.set_ylabel("dev WER (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
