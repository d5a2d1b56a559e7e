"""WordLattice: building, validation, best path, n-best, posteriors, oracle, shards."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import HAVE_K2

pytestmark = [pytest.mark.lattice, pytest.mark.skipif(not HAVE_K2, reason="k2 not installed (reference environment only)")]

if HAVE_K2:
    import torch

    from rescorer.lattice import (
        WordLatticeError,
        arc_posteriors,
        best_path,
        best_path_hypothesis,
        build_word_lattice,
        contains_path,
        load_word_lattices,
        make_word_table,
        nbest,
        oracle_path,
        rescale,
        save_word_lattices,
        word_confidences,
    )


def _table():
    return make_word_table(["a", "b", "c", "d"])


# 0 -eps-> 1, then "a c" / "b c" / "d"; frames are 10 ms
ARCS = [
    (0, 1, "<eps>", 0, 10, -1.0, 0.0),
    (1, 2, "a", 10, 20, -2.0, -1.0),
    (1, 2, "b", 10, 22, -3.0, -0.5),
    (2, 3, "c", 20, 30, -1.0, -1.0),
    (1, 3, "d", 10, 30, -5.0, -1.0),
]


def _lat(**kw):
    return build_word_lattice(ARCS, _table(), frame_shift=0.01, utterance_id="u1", **kw)


def test_build_structure_and_attributes():
    lat = _lat()
    assert lat.num_states == 5  # 4 + the super-final state
    assert lat.num_arcs == 6
    f = lat.fsa
    assert f.labels.tolist()[-1] == -1
    assert f.start_frame.dtype == torch.int32 and f.am_scores.dtype == torch.float32
    # final arc: zero length at the last frame
    assert (int(f.start_frame[-1]), int(f.end_frame[-1])) == (30, 30)
    # combined scores under default scales = am + lm
    assert torch.allclose(f.scores, f.am_scores + f.lm_scores)


def test_best_path_known_answer_and_rescale():
    lat = _lat()
    hyp = best_path_hypothesis(lat)
    assert [w.word for w in hyp.words] == ["a", "c"]
    assert hyp.score == pytest.approx(-6.0) and hyp.am_score == pytest.approx(-4.0) and hyp.lm_score == pytest.approx(-2.0)
    assert hyp.words[0].start == pytest.approx(0.10) and hyp.words[0].end == pytest.approx(0.20)
    # a heavy LM weight prefers "d" (lm -1 in total) over "a c" (lm -2)
    assert [w.word for w in best_path(rescale(lat, 1.0, 10.0, 0.0))] == ["d"]
    # a word insertion bonus prefers two words again, and then "b c" (lm -1.5) beats "a c" (lm -2)
    assert [w.word for w in best_path(rescale(lat, 1.0, 10.0, 20.0))] == ["b", "c"]
    r = rescale(lat, 0.5, 2.0, -1.0)
    assert r.meta["scales"] == {"am_scale": 0.5, "lm_scale": 2.0, "word_insertion_penalty": -1.0, "awe_scale": 0.0}
    assert float(r.fsa.scores[1]) == pytest.approx(0.5 * -2.0 + 2.0 * -1.0 - 1.0)
    assert float(r.fsa.scores[0]) == pytest.approx(-0.5)  # epsilon arc: no penalty


def test_nbest_distinct_sorted_with_exact_scores():
    hyps = nbest(_lat(), n=5, num_paths=50)
    assert [h.text for h in hyps] == ["a c", "b c", "d"]
    assert [h.score for h in hyps] == pytest.approx([-6.0, -6.5, -7.0])
    assert hyps[1].words[0].end == pytest.approx(0.22)


def test_arc_posteriors_known_values():
    lat = _lat()
    post = arc_posteriors(lat)
    z = math.log(math.exp(-6.0) + math.exp(-6.5) + math.exp(-7.0))
    labels = lat.fsa.labels.tolist()
    words = [lat.words.get(l) if l > 0 else None for l in labels]
    assert float(post[words.index("a")]) == pytest.approx(math.exp(-6.0 - z), rel=1e-5)
    assert float(post[words.index("c")]) == pytest.approx(math.exp(-6.0 - z) + math.exp(-6.5 - z), rel=1e-5)
    assert float(post[0]) == pytest.approx(1.0, rel=1e-5)
    # sharper with a larger scale
    assert float(arc_posteriors(lat, 3.0)[words.index("a")]) > float(post[words.index("a")])
    conf = word_confidences(lat, best_path(lat))
    assert conf[1] == pytest.approx(math.exp(-6.0 - z) + math.exp(-6.5 - z), rel=1e-5)


def test_oracle_and_contains_path():
    lat = _lat()
    assert oracle_path(lat, ["b", "c"])[0] == 0
    assert [w.word for w in oracle_path(lat, ["b", "c"])[1]] == ["b", "c"]
    assert oracle_path(lat, ["d"])[0] == 0
    errs, words = oracle_path(lat, ["x", "d", "c"])  # unknown word, 2 edits from either "d" or "a c"
    assert errs == 2
    errs, words = oracle_path(lat, [])  # the fewest insertions: the 1-word path "d"
    assert errs == 1 and [w.word for w in words] == ["d"]
    assert oracle_path(lat, ["a", "b", "c", "d"])[0] == 2
    assert contains_path(lat, ["b", "c"]) and contains_path(lat, ["d"])
    assert not contains_path(lat, ["b"]) and not contains_path(lat, ["c", "a"]) and not contains_path(lat, ["zzz"])


def test_shard_round_trip(tmp_path):
    lat = _lat(am_scale=1.0, lm_scale=2.0)
    lat2 = build_word_lattice(ARCS[:2] + [(2, 3, "c", 20, 30, -1.0, -1.0)], lat.words, frame_shift=0.04, utterance_id="u2")
    p = save_word_lattices(tmp_path / "shard.pt", [lat, lat2])
    raw = torch.load(p, weights_only=True)  # plain tensors + JSON text
    assert raw["format"] == "rescorer.word_lattices/2" and json.loads(raw["meta"])["utterance_ids"] == ["u1", "u2"]
    assert raw["tensors"]["src"].dtype == torch.int16 and raw["tensors"]["am_scores"].dtype == torch.float32
    assert "scores" not in raw["tensors"]  # am/lm under the meta scales: recomputed on loading
    back = load_word_lattices(p, lat.words)
    b = back["u1"]
    assert torch.equal(b.fsa.arcs.values(), lat.fsa.arcs.values())
    for name in ("start_frame", "end_frame", "am_scores", "lm_scores", "scores"):
        assert torch.equal(getattr(b.fsa, name), getattr(lat.fsa, name)), name
    assert b.meta["scales"] == {"am_scale": 1.0, "lm_scale": 2.0, "word_insertion_penalty": 0.0, "awe_scale": 0.0}
    assert back["u2"].frame_shift == 0.04
    assert best_path(b) == best_path(lat)
    # without a table: the stored one is used
    assert [w.word for w in best_path(load_word_lattices(p)["u2"])] == ["a", "c"]


def test_wrong_symbol_table_on_load(tmp_path):
    p = save_word_lattices(tmp_path / "s.pt", [_lat()])
    with pytest.raises(WordLatticeError, match="symbol table mismatch.*id 2"):
        load_word_lattices(p, make_word_table(["aa", "b", "c", "d"]))
    q = save_word_lattices(tmp_path / "nowords.pt", [_lat()], include_words=False)
    assert json.loads(torch.load(q, weights_only=True)["meta"])["words"] is None
    assert best_path(load_word_lattices(q, _table())["u1"]) == best_path(_lat())
    with pytest.raises(WordLatticeError, match="stores no symbol table"):
        load_word_lattices(q)
    with pytest.raises(WordLatticeError, match="symbol table mismatch"):
        load_word_lattices(q, make_word_table(["aa", "b", "c", "d"]))
    torch.save({"format": "something/else"}, tmp_path / "x.pt")
    with pytest.raises(WordLatticeError, match="not a rescorer.word_lattices file"):
        load_word_lattices(tmp_path / "x.pt")


@pytest.mark.parametrize(
    "arcs,match",
    [
        ([], "empty lattice"),
        ([(0, 1, "a", None, 5, 0.0, 0.0)], "no frame information"),
        ([(0, 1, "zebra", 0, 5, 0.0, 0.0)], "not in the symbol table"),
        ([(0, 1, 99, 0, 5, 0.0, 0.0)], "not in the symbol table"),
        ([(0, 1, "a", 0, 5, float("nan"), 0.0)], "NaN"),
        ([(0, 1, "a", 6, 5, 0.0, 0.0)], "ends before it starts"),
        ([(0, 1, "a", 0, 5, 0.0, 0.0), (1, 0, "b", 5, 6, 0.0, 0.0), (1, 2, "c", 5, 6, 0.0, 0.0)], "cycle"),
        ([(0, 1, "a", 0, 5)], "must be"),
    ],
)
def test_validation_errors(arcs, match):
    with pytest.raises(WordLatticeError, match=match):
        build_word_lattice(arcs, _table(), frame_shift=0.01, utterance_id="bad")


def test_no_path_to_final_is_empty():
    with pytest.raises(WordLatticeError, match="empty lattice"):
        build_word_lattice([(0, 1, "a", 0, 5, 0.0, 0.0)], _table(), frame_shift=0.01, final_states=[7])


def test_zero_length_spans_widened_or_rejected():
    arcs = [(0, 1, "a", 5, 5, 0.0, 0.0), (1, 2, None, 5, 5, 0.0, 0.0)]
    lat = build_word_lattice(arcs, _table(), frame_shift=0.01)
    assert lat.meta["widened_spans"] == 1
    assert (int(lat.fsa.start_frame[0]), int(lat.fsa.end_frame[0])) == (5, 6)
    assert int(lat.fsa.end_frame[1]) == 5  # filler arcs may have zero length
    with pytest.raises(WordLatticeError, match="zero-length"):
        build_word_lattice(arcs, _table(), frame_shift=0.01, zero_length="error")


def test_final_scores_and_dead_states_dropped():
    arcs = ARCS + [(1, 9, "a", 10, 12, 0.0, 0.0)]  # state 9 is a dead end when finals are explicit
    lat = build_word_lattice(arcs, _table(), frame_shift=0.01, final_states={3: (0.0, -0.25)})
    assert lat.num_arcs == 6
    assert float(lat.fsa.lm_scores[-1]) == pytest.approx(-0.25)
    assert best_path_hypothesis(lat).score == pytest.approx(-6.25)


def test_from_k2_checks_attributes():
    import k2

    from rescorer.lattice import from_k2

    lat = _lat()
    again = from_k2(lat.fsa, lat.words, 0.01, "u1")
    assert best_path(again) == best_path(lat)
    bare = k2.Fsa.from_str("0 1 2 -1\n1 2 -1 0\n2")
    with pytest.raises(WordLatticeError, match="no 'start_frame' attribute"):
        from_k2(bare, lat.words, 0.01)


def test_oracle_matches_brute_force_on_random_lattices():
    import random

    def edit(a, b):
        d = list(range(len(b) + 1))
        for i, x in enumerate(a, 1):
            prev, d[0] = d[0], i
            for j, y in enumerate(b, 1):
                prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
        return d[-1]

    table = _table()
    vocab = ["a", "b", "c", "d", None]
    rng = random.Random(1)
    for _ in range(30):
        n = 6
        arcs = [(s, t, rng.choice(vocab), s, t, -1.0, 0.0) for s in range(n) for t in range(s + 1, n) if rng.random() < 0.5]
        arcs.append((0, 1, "a", 0, 1, 0.0, 0.0))
        arcs += [(s, s + 1, "b", s, s + 1, 0.0, 0.0) for s in range(1, n - 1)]
        lat = build_word_lattice(arcs, table, frame_shift=0.01, final_states=[n - 1])
        # all word sequences of the lattice by path enumeration
        out = {}
        for s, t, w, *_ in arcs:
            out.setdefault(s, []).append((t, w))
        seqs, stack = set(), [(0, ())]
        while stack:
            s, seq = stack.pop()
            if s == n - 1:
                seqs.add(seq)
            for t, w in out.get(s, []):
                stack.append((t, seq + ((w,) if w else ())))
        for _ in range(3):
            ref = [rng.choice("abcdx") for _ in range(rng.randint(0, 5))]
            errs, words = oracle_path(lat, ref)
            assert errs == min(edit(ref, list(q)) for q in seqs), (ref, seqs)
            assert edit(ref, [w.word for w in words]) == errs
            assert tuple(w.word for w in words) in seqs


def test_prune_drops_unlikely_arcs_and_keeps_the_best_path_and_attributes():
    from rescorer.lattice.word_lattice import best_path_hypothesis, build_word_lattice, make_word_table, prune

    arcs = [(0, 1, "the", 0, 10, -1.0, -1.0), (1, 2, "cat", 10, 20, -1.0, -1.0),
            (1, 2, "cap", 11, 20, -1.2, -1.0), (1, 2, "mat", 10, 19, -30.0, -1.0)]
    lat = build_word_lattice(arcs, make_word_table(["the", "cat", "cap", "mat"]), frame_shift=0.04)
    p = prune(lat, 1e-3)
    words = sorted(lat.words.get(int(l)) for l in p.fsa.labels.tolist() if l > 0)
    assert words == ["cap", "cat", "the"]  # "mat" (posterior ~e-29) is gone
    assert best_path_hypothesis(p).text == best_path_hypothesis(lat).text == "the cat"
    cap = [i for i, l in enumerate(p.fsa.labels.tolist()) if l > 0 and lat.words.get(l) == "cap"][0]
    assert (int(p.fsa.start_frame[cap]), int(p.fsa.end_frame[cap])) == (11, 20)
    assert float(p.fsa.am_scores[cap]) == pytest.approx(-1.2) and float(p.fsa.scores[cap]) == pytest.approx(-2.2)
    assert prune(lat, 0.0) is lat


def test_a_directory_of_shards_loads_with_the_table_beside_it(tmp_path):
    from rescorer.lattice.word_lattice import (
        WordLatticeError, build_word_lattice, load_word_lattices, make_word_table, save_word_lattices,
    )

    words = make_word_table(["the", "cat"])
    (tmp_path / "lattices").mkdir()
    for uid in ("u1", "u2"):
        lat = build_word_lattice([(0, 1, "the", 0, 5, -1.0, -1.0), (1, 2, "cat", 5, 9, -1.0, -1.0)], words,
                                 frame_shift=0.04, utterance_id=uid)
        save_word_lattices(tmp_path / "lattices" / f"{uid}.pt", [lat], include_words=False)
    with pytest.raises(WordLatticeError, match="no symbol table"):
        load_word_lattices(tmp_path / "lattices")
    (tmp_path / "words.txt").write_text(words.to_str())
    lats = load_word_lattices(tmp_path / "lattices")
    assert sorted(lats) == ["u1", "u2"] and lats["u2"].words.get(2) == words.get(2)
    with pytest.raises(WordLatticeError, match="no word-lattice shards"):
        load_word_lattices(tmp_path)  # words.txt only


def test_validate_names_the_arc_and_the_problem_of_an_edited_lattice():
    """validate (run on every lattice rescoring reads) on per-arc attributes changed after building."""
    from rescorer.lattice.word_lattice import validate

    arcs = [(0, 1, "a", 0, 5, -1.0, -1.0), (1, 2, "b", 5, 9, -1.0, -1.0), (2, 3, "c", 9, 12, -1.0, -1.0)]

    def edited(attr, index, value):
        lat = build_word_lattice(arcs, _table(), frame_shift=0.01, utterance_id="u7")
        t = getattr(lat.fsa, attr).clone()
        t[index] = value
        setattr(lat.fsa, attr, t)
        return lat

    validate(build_word_lattice(arcs, _table(), frame_shift=0.01, utterance_id="u7"))
    for attr, index, value, match in [
        ("lm_scores", 1, float("nan"), "utterance 'u7', arc 1: NaN in lm_scores"),
        ("am_scores", 2, float("nan"), "utterance 'u7', arc 2: NaN in am_scores"),
        ("start_frame", 1, 10, r"utterance 'u7', arc 1: span ends before it starts \(\[10, 9\)\)"),
        ("end_frame", 2, 9, "utterance 'u7', arc 2: zero-length span for word id"),
    ]:
        with pytest.raises(WordLatticeError, match=match):
            validate(edited(attr, index, value))
