"""LatticeBatch: many lattices decoded together under many score combinations must give
exactly what ``with_scores`` + ``best_path_hypothesis`` give one lattice at a time."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest

from tests.conftest import HAVE_K2

pytestmark = [pytest.mark.lattice, pytest.mark.skipif(not HAVE_K2, reason="k2 not installed (reference environment only)")]

if HAVE_K2:
    import torch

    from rescorer.lattice import Scales, best_path_hypothesis, build_word_lattice, make_word_table, with_scores
    from rescorer.lattice.batch import LatticeBatch

WORDS = ["a", "b", "c", "d", "e"]


def _random_lattices(seed, n=7, recovered=(1, 4)):
    """Random acyclic lattices; those in ``recovered`` carry OOV-recovery columns
    (``oov_lm_arcs``, ``oov_advantage``, the list size in meta) like recovered lattices."""
    rng = random.Random(seed)
    table = make_word_table(WORDS)
    lats, awe = [], []
    for i in range(n):
        states = rng.randint(3, 8)
        arcs = [(s, t, rng.choice(WORDS + [None]), s, t, rng.uniform(-5, 0), rng.uniform(-3, 0))
                for s in range(states) for t in range(s + 1, states) if rng.random() < 0.6]
        arcs += [(s, s + 1, "a", s, s + 1, -2.0, -1.0) for s in range(states - 1)]  # a path to the end
        lat = build_word_lattice(arcs, table, frame_shift=0.01, final_states=[states - 1], utterance_id=f"u{i}")
        a = lat.num_arcs
        if i in recovered:
            g = torch.Generator().manual_seed(seed * 100 + i)
            lat.fsa.oov_lm_arcs = torch.rand(a, generator=g) < 0.3
            lat.fsa.oov_advantage = (torch.rand(a, generator=g) - 0.3).to(torch.float32)
            lat.meta["oov_word_list_size"] = 1000 * (i + 1)
        lats.append(lat)
        awe.append(torch.rand(a, generator=torch.Generator().manual_seed(seed + i)) * 2 - 1)
    return lats, awe


def _required(margin, size):
    if margin is None:
        return None
    return margin + 0.025 * max(0.0, math.log2(size / 1000.0)) if size else margin


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_scores_and_best_paths_equal_one_lattice_at_a_time(seed):
    lats, awe = _random_lattices(seed)
    batch = LatticeBatch(lats, awe)
    grid = [(Scales(1.0, 1.0, 0.0, 0.0), None, None), (Scales(1.0, 2.0, -1.0, 4.0), -2.0, 0.1),
            (Scales(0.5, 1.0, 1.0, 16.0), -10.0, 0.0), (Scales(1.0, 0.5, 0.0, 8.0), -0.5, None)]
    for scales, oov_lm, margin in grid * 2:  # the second round reuses the batch's k2 topology
        required = [_required(margin, lat.meta.get("oov_word_list_size")) for lat in lats]
        one = [with_scores(lat, scales, a, oov_lm, min_oov_advantage=r) for lat, a, r in zip(lats, awe, required)]
        assert torch.equal(batch.scores(scales, oov_lm, required), torch.cat([x.fsa.scores for x in one]))
        want = [[w.word for w in best_path_hypothesis(x).words] for x in one]
        assert batch.best_words(scales, oov_lm, required) == want
        for x, arcs in zip(one, batch.best_arcs(batch.scores(scales, oov_lm, required))):
            assert float(x.fsa.scores[arcs].double().sum()) == pytest.approx(best_path_hypothesis(x).score)
    # the margin does drop arcs here: some arc of a recovered lattice gets -inf under 0.1, none without one
    s = batch.scores(Scales(), None, [0.1] * len(lats))
    assert bool(torch.isinf(s).any()) and not bool(torch.isinf(batch.scores(Scales())).any())


def test_batch_checks_its_input():
    lats, awe = _random_lattices(0, n=2, recovered=())
    with pytest.raises(ValueError, match="at least one lattice"):
        LatticeBatch([])
    with pytest.raises(ValueError, match="2 lattices but 1 awe"):
        LatticeBatch(lats, awe[:1])
    with pytest.raises(ValueError, match="arcs but 3 awe scores"):
        LatticeBatch(lats, [awe[0], torch.zeros(3)])
    batch = LatticeBatch(lats)  # no awe: decoder scores only
    assert batch.best_words(Scales()) == [[w.word for w in best_path_hypothesis(x).words] for x in lats]


def test_decode_all_equals_prepared_decode_with_recovery_and_margins():
    from rescorer.evaluation.rescoring import decode_all, decode_batch, prepare_all
    from tests.test_rescore import CAP_WORDS, _cap_lattice, _cap_rescorer, _feats, _lattice

    r = _cap_rescorer(awe_scale=2.0, oov_lm_score=-5.0, oov_margin=0.1)
    arcs = [(0, 1, "the", 0, 5, 0.0, 0.0), (1, 2, "cat", 5, 10, -1.0, -1.0), (1, 2, "cap", 5, 10, -1.1, -1.0)]
    lats = {"u1": _cap_lattice(uid="u1"), "u2": _lattice(arcs, words=CAP_WORDS, uid="u2")}
    feats = {"u1": _feats(["the", "zebra", "on", "on"]), "u2": _feats(["the", "zebra"])}
    prepared = prepare_all(r, lats, feats, recover=True, progress=False)
    assert any(getattr(p.lattice.fsa, "oov_advantage", None) is not None for p in prepared.values())
    batch = decode_batch(prepared)
    for cfg in (r.config, replace(r.config, oov_lm_score=-1.0), replace(r.config, oov_margin=None, awe_scale=8.0),
                replace(r.config, oov_margin=0.5, lm_scale=2.0, word_insertion_penalty=1.0)):
        want = {u: p.decode(r, cfg) for u, p in prepared.items()}
        assert decode_all(r, prepared, cfg) == want == decode_all(r, prepared, cfg, batch)
    assert decode_all(r, {}, r.config) == {}
    with pytest.raises(ValueError, match="a batch of 2 lattices for 1"):
        decode_all(r, {"u1": prepared["u1"]}, r.config, batch)
