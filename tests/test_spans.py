"""Word spans from hand-built k2 token lattices with known answers."""

from __future__ import annotations

import pytest

from tests.conftest import HAVE_K2

pytestmark = [pytest.mark.lattice, pytest.mark.skipif(not HAVE_K2, reason="k2 not installed (reference environment only)")]

if HAVE_K2:
    import k2
    import torch

    from rescorer.lattice import WordLatticeError, best_path_hypothesis, make_word_table, nbest
    from rescorer.lattice.spans import word_lattice_from_token_lattice
    from rescorer.tokens import TOKEN_ID as T

B = 0


def token_lattice(arcs, final_state):
    """arcs: (src, dst, token, word_id, frame, am[, lm]) -> k2 Fsa with the agreed attributes."""
    arcs = sorted(arcs, key=lambda a: a[0])
    text = "\n".join(f"{a[0]} {a[1]} {a[2]} {a[3]} 0" for a in arcs) + f"\n{final_state}"
    fsa = k2.Fsa.from_str(text, aux_label_names=["aux_labels"])
    fsa.frames = torch.tensor([a[4] for a in arcs], dtype=torch.int32)
    fsa.am_scores = torch.tensor([float(a[5]) for a in arcs])
    fsa.lm_scores = torch.tensor([float(a[6]) if len(a) > 6 else 0.0 for a in arcs])
    fsa.scores = fsa.am_scores + fsa.lm_scores
    return fsa


def _words():
    return make_word_table(["cat", "at", "a", "sat"])


def _two_paths(w):
    cat = int(w["cat"])
    return token_lattice(
        [
            # path A: blank c a t | blank -> cat = [1, 5), score -6
            (0, 1, B, 0, 0, -1), (1, 2, T["c"], cat, 1, -1), (2, 3, T["a"], 0, 2, -1), (3, 4, T["t"], 0, 3, -1),
            (4, 5, T["|"], 0, 4, -1), (5, 6, B, 0, 5, -1),
            # path B: c a t | blank blank -> cat = [0, 4), score -7
            (0, 7, T["c"], cat, 0, -2), (7, 8, T["a"], 0, 1, -1), (8, 9, T["t"], 0, 2, -1), (9, 10, T["|"], 0, 3, -1),
            (10, 11, B, 0, 4, -1), (11, 6, B, 0, 5, -1),
            (6, 12, -1, 0, 6, 0),
        ],
        12,
    )


def _word_arcs(lat):
    f = lat.fsa
    return sorted(
        (lat.words.get(l), s, e, round(a, 4))
        for l, s, e, a in zip(f.labels.tolist(), f.start_frame.tolist(), f.end_frame.tolist(), f.am_scores.tolist())
        if l > 0
    )


def test_same_word_two_spans_last_token_rule():
    w = _words()
    lat = word_lattice_from_token_lattice(_two_paths(w), w, frame_shift=0.04, utterance_id="u")
    # two "cat" arcs with the spans of their own paths; the blank before A's "c" is an epsilon arc
    assert _word_arcs(lat) == [("cat", 0, 4, -7.0), ("cat", 1, 5, -5.0)]
    hyp = best_path_hypothesis(lat)
    assert [x.word for x in hyp.words] == ["cat"] and hyp.score == pytest.approx(-6.0)
    assert (hyp.words[0].start, hyp.words[0].end) == pytest.approx((0.04, 0.20))
    assert [h.score for h in nbest(lat, 5)] == pytest.approx([-6.0])  # one distinct word sequence


def test_next_word_rule():
    w = _words()
    lat = word_lattice_from_token_lattice(_two_paths(w), w, frame_shift=0.04, end_rule="next_word")
    # the last word ends at the final arc's frame on both paths
    assert _word_arcs(lat) == [("cat", 0, 6, -7.0), ("cat", 1, 6, -5.0)]


def test_two_words_with_lm_and_branching_ends():
    """'a' then 'at' or 'sat'; 'a' ends at frame 2 or 3 depending on the path (a repeated token)."""
    w = _words()
    a, at, sat = int(w["a"]), int(w["at"]), int(w["sat"])
    lat_t = token_lattice(
        [
            (0, 1, T["a"], a, 0, -1, -1.0),
            (1, 2, T["|"], 0, 1, -1),  # "a |" ends at frame 2 ...
            (1, 3, T["|"], 0, 1, -1),
            (3, 2, T["|"], 0, 2, -0.5),  # ... or the boundary is held one more frame: ends at 3
            (2, 4, T["a"], at, 3, -1, -2.0),
            (2, 5, T["s"], sat, 3, -3, -1.0),
            (4, 6, T["t"], 0, 4, -1), (6, 7, B, 0, 5, -1),
            (5, 8, T["a"], 0, 4, -1), (8, 7, T["t"], 0, 5, -1),
            (7, 9, -1, 0, 6, 0),
        ],
        9,
    )
    lat = word_lattice_from_token_lattice(lat_t, w, frame_shift=0.01, utterance_id="u2")
    arcs = _word_arcs(lat)
    assert ("a", 0, 2, -2.0) in arcs and ("a", 0, 3, -2.5) in arcs
    assert ("at", 3, 5, -3.0) in arcs and ("sat", 3, 6, -5.0) in arcs
    f = lat.fsa
    k = [lat.words.get(l) if l > 0 else None for l in f.labels.tolist()].index("at")
    assert float(f.lm_scores[k]) == pytest.approx(-2.0)
    hyp = best_path_hypothesis(lat)
    # a|at: am -1-1 + -1-1-1 = -5, lm -3 -> -8 ; a|sat: am -2 + -5 = -7, lm -2 -> -9
    assert [x.word for x in hyp.words] == ["a", "at"] and hyp.score == pytest.approx(-8.0)
    assert hyp.am_score == pytest.approx(-5.0) and hyp.lm_score == pytest.approx(-3.0)
    # agrees with the token lattice's own best path
    tok_best = k2.shortest_path(k2.create_fsa_vec([k2.top_sort(lat_t)]), use_double_scores=True)
    assert float(tok_best.scores.sum()) == pytest.approx(hyp.score)
    # with a heavy LM weight "sat" (lm -1) wins over "at" (lm -2)
    lat2 = word_lattice_from_token_lattice(lat_t, w, frame_shift=0.01, lm_scale=5.0)
    assert [x.word for x in best_path_hypothesis(lat2).words] == ["a", "sat"]
    hyps = nbest(lat, 5)
    assert [h.text for h in hyps] == ["a at", "a sat"]


def test_leading_silence_epsilon_and_no_word_path():
    w = _words()
    cat = int(w["cat"])
    lat_t = token_lattice(
        [(0, 1, B, 0, 0, -1), (1, 2, B, 0, 1, -1), (2, 3, T["c"], cat, 2, -1), (3, 4, -1, 0, 3, 0), (1, 4, -1, 0, 2, -9)],
        4,
    )
    lat = word_lattice_from_token_lattice(lat_t, w, frame_shift=0.01)
    f = lat.fsa
    eps = sorted((s, e) for l, s, e in zip(f.labels.tolist(), f.start_frame.tolist(), f.end_frame.tolist()) if l == 0)
    assert eps == [(0, 2), (0, 2)]  # blanks before "cat" [0, 2), and the word-less path to the end
    assert _word_arcs(lat) == [("cat", 2, 3, -1.0)]
    assert [x.word for x in best_path_hypothesis(lat).words] == ["cat"]


def test_random_token_lattices_best_path_preserved():
    """On random acyclic token lattices the word lattice's best score equals the token lattice's."""
    import random

    w = _words()
    ids = [int(w[x]) for x in ("cat", "at", "a", "sat")]
    rng = random.Random(0)
    for _ in range(15):
        n, arcs = 8, []
        for s in range(n - 1):
            for d in rng.sample(range(s + 1, n), k=min(2, n - 1 - s)):
                tok = rng.choice([B, T["a"], T["t"], T["|"]])
                word = rng.choice(ids) if tok != B and rng.random() < 0.4 else 0
                arcs.append((s, d, tok, word, s, rng.uniform(-3, 0), rng.uniform(-1, 0)))
        arcs.append((n - 1, n, -1, 0, n - 1, 0.0))
        lat_t = token_lattice(arcs, n)
        lat = word_lattice_from_token_lattice(lat_t, w, frame_shift=0.01)
        tok_best = k2.shortest_path(k2.create_fsa_vec([lat_t]), use_double_scores=True)
        assert best_path_hypothesis(lat).score == pytest.approx(float(tok_best.scores.double().sum()), abs=1e-4)
        words_tok = [lat.words.get(x) for x in tok_best.aux_labels.tolist() if x > 0]
        assert [x.word for x in best_path_hypothesis(lat).words] == words_tok


def test_errors():
    w = _words()
    lat_t = _two_paths(w)
    del lat_t.frames
    with pytest.raises(WordLatticeError, match="no 'frames' attribute"):
        word_lattice_from_token_lattice(lat_t, w, frame_shift=0.04)
    lat_t = token_lattice([(0, 1, T["c"], 99, 0, -1), (1, 2, -1, 0, 1, 0)], 2)
    with pytest.raises(WordLatticeError, match="not in the symbol table"):
        word_lattice_from_token_lattice(lat_t, w, frame_shift=0.04)
    with pytest.raises(WordLatticeError, match="search steps"):
        word_lattice_from_token_lattice(_two_paths(w), w, frame_shift=0.04, max_expansions=3)


def test_fsa_vec_wrapper():
    from rescorer.lattice.spans import word_lattices_from_token_lattices

    w = _words()
    vec = k2.create_fsa_vec([_two_paths(w), _two_paths(w)])
    lats = word_lattices_from_token_lattices(vec, w, frame_shift=0.04, utterance_ids=["x", "y"])
    assert [l.utterance_id for l in lats] == ["x", "y"]
    assert all(_word_arcs(l) == [("cat", 0, 4, -7.0), ("cat", 1, 5, -5.0)] for l in lats)
    with pytest.raises(WordLatticeError, match="2 utterance ids for 1"):
        word_lattices_from_token_lattices(_two_paths(w), w, frame_shift=0.04, utterance_ids=["x", "y"])
