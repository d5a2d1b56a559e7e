"""The score combination of a word lattice, written once.

Every arc's combined score is::

    score = am_scale * am + lm_scale * lm + word_insertion_penalty * [label > 0] + awe_scale * awe
            + ctc_scale * ctc

(natural-log scores; the penalty on word arcs only; ``awe`` the embedding similarity the
rescorer attaches as the per-arc attribute ``awe_scores``, absent before rescoring;
``ctc`` the CTC spelling score of the arc's word over its span, ``ctc_scores``, attached
only by CTC fusion, ``rescorer.rescore_ctc``). Arcs
that OOV recovery added with the LM cost of a word the LM lacks (per-arc ``oov_lm_arcs``)
take their LM score from the caller at combination time, so that cost is tuned like
the scales without redoing the recovery; likewise arcs whose recovery evidence
(``oov_advantage``) is below the caller's required margin are dropped (score -inf) there.

``Scales`` is the one representation of the weights; a lattice records the ones its
``scores`` were combined with in ``meta["scales"]`` as a dict (``Scales.to_dict``).
Lattices written before this module recorded a list ``[am, lm, wip]``; ``Scales.from_meta``
still reads it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

import torch


@dataclass(frozen=True)
class Scales:
    """The weights of the score combination (module doc)."""

    am_scale: float = 1.0
    lm_scale: float = 1.0
    word_insertion_penalty: float = 0.0
    awe_scale: float = 0.0
    ctc_scale: float = 0.0

    def to_dict(self) -> dict:
        """The scales as a dict (``ctc_scale`` only when set, so files without CTC fusion read as before)."""
        return {k: float(v) for k, v in asdict(self).items() if k != "ctc_scale" or v}

    @classmethod
    def of(cls, config: Any) -> "Scales":
        """The scales of anything with these attribute names (e.g. a ``RescoreConfig``); ``ctc_scale``
        may be absent (0)."""
        return cls(*(float(getattr(config, k) if k != "ctc_scale" else getattr(config, k, 0.0))
                     for k in cls.__dataclass_fields__))

    @classmethod
    def from_meta(cls, meta: Mapping) -> "Scales":
        """The scales recorded in ``meta["scales"]``: a dict, or the old list ``[am, lm, wip]``
        (no embedding weight); default ``Scales()`` when none are recorded."""
        s = meta.get("scales")
        if s is None:
            return cls()
        if isinstance(s, Mapping):
            unknown = set(s) - set(cls.__dataclass_fields__)
            if unknown:
                raise ValueError(f"meta['scales'] has unknown names {sorted(unknown)}")
            return cls(**{k: float(v) for k, v in s.items()})
        if isinstance(s, (list, tuple)) and len(s) == 3:
            return cls(float(s[0]), float(s[1]), float(s[2]))
        raise ValueError(f"meta['scales'] must be a dict of scales or [am, lm, wip], got {s!r}")


def combine(scales: Scales, am: torch.Tensor, lm: torch.Tensor, labels: torch.Tensor,
            awe: Optional[torch.Tensor] = None, ctc: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The combined score (float64, one per arc) of arcs with these am / lm scores and labels;
    ``awe`` None: no embedding term (arcs not scored by the embedder); ``ctc`` None: no CTC term."""
    s = scales.am_scale * am.double() + scales.lm_scale * lm.double()
    s = s + scales.word_insertion_penalty * (labels > 0).double()
    if awe is not None:
        s = s + scales.awe_scale * awe.double().to(s.device)
    if ctc is not None:
        s = s + scales.ctc_scale * ctc.double().to(s.device)
    return s


def oov_lm_arcs(fsa) -> Optional[torch.Tensor]:
    """Bool mask of the arcs OOV recovery added with the OOV LM cost (None: the lattice has none)."""
    mask = getattr(fsa, "oov_lm_arcs", None)
    return None if mask is None else mask.bool()


def arc_scores(scales: Scales, am: torch.Tensor, lm: torch.Tensor, labels: torch.Tensor,
               awe: Optional[torch.Tensor] = None, ctc: Optional[torch.Tensor] = None,
               oov_lm: Optional[torch.Tensor] = None, oov_lm_score: Optional[float] = None,
               advantage: Optional[torch.Tensor] = None, min_advantage=None) -> torch.Tensor:
    """The float32 ``scores`` of arcs (``with_scores`` per lattice, ``batch.LatticeBatch`` for
    many at once: one function, so both give the same bits).

    ``oov_lm`` (bool per arc) marks the arcs whose LM score becomes ``oov_lm_score``;
    arcs whose ``advantage`` is below ``min_advantage`` (a number, or one per arc of
    ``advantage``'s dtype; -inf drops none) get -inf.
    """
    if oov_lm is not None and oov_lm_score is not None:
        lm = torch.where(oov_lm, torch.full_like(lm, float(oov_lm_score)), lm)
    scores = combine(scales, am, lm, labels, awe, ctc)
    if advantage is not None and min_advantage is not None:
        if not isinstance(min_advantage, torch.Tensor):
            min_advantage = float(min_advantage)
        scores = scores.masked_fill(advantage.to(scores.device) < min_advantage, float("-inf"))
    return scores.to(torch.float32)


def with_scores(lat, scales: Scales, awe: Optional[torch.Tensor] = None, oov_lm_score: Optional[float] = None,
                ctc: Optional[torch.Tensor] = None, min_oov_advantage: Optional[float] = None):
    """A copy of ``lat`` whose ``scores`` are combined under ``scales`` (recorded in ``meta``).

    ``awe``: per-arc embedding scores, set as ``awe_scores`` and weighted by
    ``scales.awe_scale`` (None: no embedding term). ``oov_lm_score``: the LM score of the
    arcs recovery marked (``oov_lm_arcs``), written into their ``lm_scores`` first.
    ``ctc``: per-arc CTC spelling scores, set as ``ctc_scores`` and weighted by ``scales.ctc_scale``.
    ``min_oov_advantage``: arcs whose ``oov_advantage`` (recovery's evidence) is below it
    get score -inf, i.e. no path takes them (recovery abstains there; None: none dropped).
    The input lattice is not modified.
    """
    from rescorer.lattice.word_lattice import WordLattice

    fsa = lat.fsa.clone()
    if awe is not None:
        fsa.awe_scores = awe.to(device=fsa.scores.device, dtype=torch.float32)
    oov = oov_lm_arcs(fsa)
    if oov is not None and oov_lm_score is not None:
        fsa.lm_scores = torch.where(oov, torch.full_like(fsa.lm_scores, float(oov_lm_score)), fsa.lm_scores)
    if ctc is not None:
        fsa.ctc_scores = ctc.to(device=fsa.scores.device, dtype=torch.float32)
    fsa.scores = arc_scores(scales, fsa.am_scores, fsa.lm_scores, fsa.labels, None if awe is None else fsa.awe_scores,
                            None if ctc is None else fsa.ctc_scores, advantage=getattr(fsa, "oov_advantage", None),
                            min_advantage=min_oov_advantage)
    meta = dict(lat.meta)
    meta["scales"] = scales.to_dict()
    return WordLattice(fsa, lat.frame_shift, lat.words, lat.utterance_id, meta)
