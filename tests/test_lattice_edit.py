"""Lattice editing (rescorer.lattice.edit) and the score combination (rescorer.lattice.scores)."""

import json

import pytest
import torch

from tests.conftest import needs_k2

WORDS = ["the", "cat", "cap", "sat", "zebra"]
ARCS = [(0, 1, "the", 0, 5, -0.5, -1.5), (1, 2, "cat", 5, 10, -1.0, -2.0), (1, 2, "cap", 5, 10, -1.5, -2.5),
        (2, 3, None, 10, 12, -0.25, 0.0), (3, 4, "sat", 12, 15, -2.0, -3.0)]


def _lat(**scales):
    from rescorer.lattice.word_lattice import build_word_lattice, make_word_table

    return build_word_lattice(ARCS, make_word_table(WORDS), frame_shift=0.04, utterance_id="u", **scales)


def _snapshot(lat):
    f = lat.fsa
    names = [n for n in ("scores", "start_frame", "end_frame", "am_scores", "lm_scores", "awe_scores", "oov_lm_arcs")
             if hasattr(f, n)]
    return f.arcs.values().clone(), {n: getattr(f, n).clone() for n in names}, dict(lat.meta), list(lat.words.symbols)


def _same(lat, snap):
    arcs, attrs, meta, symbols = snap
    f = lat.fsa
    return (torch.equal(f.arcs.values(), arcs) and all(torch.equal(getattr(f, n), v) for n, v in attrs.items())
            and lat.meta == meta and list(lat.words.symbols) == symbols
            and all(hasattr(f, n) == (n in attrs) for n in ("awe_scores", "oov_lm_arcs")))


def test_scales_serialise_as_a_dict_and_old_lists_still_read():
    from rescorer.lattice.scores import Scales

    s = Scales(0.5, 2.0, -1.0, 3.0)
    assert s.to_dict() == {"am_scale": 0.5, "lm_scale": 2.0, "word_insertion_penalty": -1.0, "awe_scale": 3.0}
    assert Scales.from_meta({"scales": s.to_dict()}) == s
    assert Scales.from_meta({"scales": [0.5, 2.0, -1.0]}) == Scales(0.5, 2.0, -1.0, 0.0)
    assert Scales.from_meta({}) == Scales()
    with pytest.raises(ValueError, match="unknown names"):
        Scales.from_meta({"scales": {"am_scale": 1.0, "acscale": 2.0}})
    with pytest.raises(ValueError, match=r"\[am, lm, wip\]"):
        Scales.from_meta({"scales": [1.0, 2.0]})


@needs_k2
def test_with_scores_is_the_explicit_formula_and_leaves_the_input_alone():
    from rescorer.lattice.scores import Scales, with_scores

    lat = _lat()
    snap = _snapshot(lat)
    awe = torch.tensor([0.1, 0.9, -0.2, 0.0, 0.4, 0.0])[: lat.num_arcs]
    s = Scales(am_scale=0.7, lm_scale=1.3, word_insertion_penalty=-0.4, awe_scale=2.5)
    out = with_scores(lat, s, awe)
    f = out.fsa
    for k in range(lat.num_arcs):
        word = 1.0 if int(f.labels[k]) > 0 else 0.0
        expect = 0.7 * float(f.am_scores[k]) + 1.3 * float(f.lm_scores[k]) - 0.4 * word + 2.5 * float(awe[k])
        assert float(f.scores[k]) == pytest.approx(expect, abs=1e-6), k
    assert torch.equal(f.awe_scores, awe) and out.meta["scales"] == s.to_dict()
    assert _same(lat, snap)
    # without embedding scores: no embedding term, whatever awe_scale says
    plain = with_scores(lat, s)
    assert not hasattr(plain.fsa, "awe_scores")
    assert torch.allclose(plain.fsa.scores, f.scores - (2.5 * awe).float(), atol=1e-6)


@needs_k2
def test_a_lattice_saved_with_list_scales_still_loads(tmp_path):
    from rescorer.lattice.word_lattice import load_word_lattices, save_word_lattices

    lat = _lat(am_scale=0.5, lm_scale=2.0, word_insertion_penalty=-1.0)
    p = save_word_lattices(tmp_path / "new.pt", [lat])
    raw = torch.load(p, weights_only=True)
    meta = json.loads(raw["meta"])
    meta["lattice_meta"][0]["scales"] = [0.5, 2.0, -1.0]  # as files written before Scales record them
    raw["meta"] = json.dumps(meta)
    torch.save(raw, tmp_path / "old.pt")
    back = load_word_lattices(tmp_path / "old.pt")["u"]
    assert back.meta["scales"] == {"am_scale": 0.5, "lm_scale": 2.0, "word_insertion_penalty": -1.0, "awe_scale": 0.0}
    assert torch.equal(back.fsa.scores, lat.fsa.scores)


@needs_k2
def test_added_arcs_carry_their_attributes_and_the_input_is_untouched():
    from rescorer.lattice.edit import add_arcs, extend_table
    from rescorer.lattice.scores import Scales, with_scores

    lat = _lat(am_scale=0.5, lm_scale=2.0, word_insertion_penalty=-1.0)
    snap = _snapshot(lat)
    table, ids = extend_table(lat.words, ["zebra", "zebu"])
    assert ids.tolist() == [lat.words["zebra"], max(lat.words.ids) + 1] and "zebu" not in lat.words
    rows = [(1, 2, int(table["zebu"])), (0, 1, int(table["cat"]))]
    attrs = {"start_frame": [5, 0], "end_frame": [10, 5], "am_scores": [-3.0, -4.0], "lm_scores": [-10.0, -20.0],
             "oov_lm_arcs": [True, False]}
    out = add_arcs(lat, rows, attrs, table)
    assert _same(lat, snap) and out.words is table and out.num_states == lat.num_states
    assert out.num_arcs == lat.num_arcs + 2 and out.meta["oov_recovery_arcs"] == 2
    f = out.fsa
    got = {tuple(r): k for k, r in enumerate(f.arcs.values()[:, :3].tolist())}
    for j, row in enumerate(rows):
        k = got[row]
        assert (int(f.start_frame[k]), int(f.end_frame[k])) == (attrs["start_frame"][j], attrs["end_frame"][j])
        assert (float(f.am_scores[k]), float(f.lm_scores[k])) == (attrs["am_scores"][j], attrs["lm_scores"][j])
        assert bool(f.oov_lm_arcs[k]) == attrs["oov_lm_arcs"][j]
        # the lattice's own scales (0.5, 2.0, -1.0) combine a new arc's score
        assert float(f.scores[k]) == pytest.approx(0.5 * attrs["am_scores"][j] + 2.0 * attrs["lm_scores"][j] - 1.0)
    assert int(f.oov_lm_arcs.sum()) == 1
    # the OOV LM cost is applied when the lattice is scored, to the marked arc only
    scored = with_scores(out, Scales(), oov_lm_score=-7.0)
    assert float(scored.fsa.lm_scores[got[rows[0]]]) == -7.0 and float(scored.fsa.lm_scores[got[rows[1]]]) == -20.0
    # bad edits are named
    with pytest.raises(ValueError, match="no \\['lm_scores'\\]"):
        add_arcs(lat, rows, {k: v for k, v in attrs.items() if k != "lm_scores"})
    with pytest.raises(ValueError, match="one value per new arc"):
        add_arcs(lat, rows, dict(attrs, am_scores=[-1.0]))
    with pytest.raises(ValueError, match="existing non-final states"):
        add_arcs(lat, [(0, lat.num_states - 1, 1)], {k: v[:1] for k, v in attrs.items()})


@needs_k2
def test_extend_table_keeps_the_base_table_and_its_ids():
    from rescorer.lattice.edit import extend_table

    base = _lat().words
    items = [(s, base[s]) for s in base.symbols]
    same, ids = extend_table(base, ["cat", "the"])
    assert same is base and ids.tolist() == [base["cat"], base["the"]]
    ext, ids = extend_table(base, ["yak", "cat", "emu"])
    assert ext is not base and [(s, base[s]) for s in base.symbols] == items and "yak" not in base
    assert all(ext[s] == i for s, i in items)
    top = max(base.ids)
    assert ids.tolist() == [top + 1, base["cat"], top + 2]
