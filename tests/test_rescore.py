"""Rescoring on hand-built lattices with stub encoders whose answers are known.

The stub acoustic encoder reads a word's identity from the features (each word's frames
carry a one-hot pattern over 80 bins); the stub letter encoder maps a spelling to the
same one-hot. So the embedding similarity is 1 for the spoken word and 0 otherwise.
"""

import pytest
import torch

from tests.conftest import needs_k2

pytestmark = [needs_k2, pytest.mark.lattice]

VOCAB = ["cat", "cap", "sat", "mat", "zebra", "zebras", "on", "the"]


def _code(word):
    return VOCAB.index(word) if word in VOCAB else len(VOCAB)


class StubAcoustic(torch.nn.Module):
    dim = 16
    config = {"num_mel_bins": 80}

    def encode_segments(self, segs, batch_size=256, device=None):
        self.calls = getattr(self, "calls", 0) + len(segs)
        out = torch.zeros(len(segs), self.dim)
        for i, s in enumerate(segs):
            out[i, int(s[:, :16].mean(0).argmax())] = 1.0
        return out


class StubLetters(torch.nn.Module):
    def encode_words(self, words, chunk_size=16384, normalize=True):
        self.calls = getattr(self, "calls", 0) + len(words)
        out = torch.zeros(len(words), 16)
        for i, w in enumerate(words):
            out[i, _code(w)] = 1.0
        return out


def _feats(spoken, frames_per_word=20):
    """Fbank-like features where word k of ``spoken`` occupies frames [20k, 20k+20)."""
    f = torch.zeros(frames_per_word * len(spoken), 80)
    for k, w in enumerate(spoken):
        f[k * frames_per_word : (k + 1) * frames_per_word, _code(w)] = 5.0
    return f


def _lattice(arcs, words=VOCAB, frame_shift=0.04, uid="u1"):
    from rescorer.lattice.word_lattice import build_word_lattice, make_word_table

    return build_word_lattice(arcs, make_word_table(words), frame_shift=frame_shift, utterance_id=uid)


def _rescorer(**cfg):
    from rescorer.rescore import RescoreConfig, Rescorer

    return Rescorer(StubAcoustic(), StubLetters(), RescoreConfig(**cfg), device="cpu")


def test_embedding_score_flips_a_close_decision():
    # "the cat sat": 20 feature frames per word = 5 lattice frames at 0.04 s
    arcs = [
        (0, 1, "the", 0, 5, -1.0, -1.0),
        (1, 2, "cap", 5, 10, -1.0, -1.0),  # the decoder slightly prefers "cap"
        (1, 2, "cat", 5, 10, -1.2, -1.0),
        (2, 3, "sat", 10, 15, -1.0, -1.0),
    ]
    lat = _lattice(arcs)
    feats = _feats(["the", "cat", "sat"])
    base = _rescorer(awe_scale=0.0).rescore(lat, feats)
    assert base.hypothesis.text == "the cap sat"
    r = _rescorer(awe_scale=1.0)
    res = r.rescore(lat, feats)
    assert res.hypothesis.text == "the cat sat"
    assert [round(w.start, 2) for w in res.hypothesis.words] == [0.0, 0.2, 0.4]
    awe = res.lattice.fsa.awe_scores
    labels = res.lattice.fsa.labels
    cap = lat.words.get("cap")
    assert float(awe[labels == cap][0]) == pytest.approx(0.0)
    assert float(awe[labels == lat.words.get("cat")][0]) == pytest.approx(1.0)
    assert all(0.0 <= c <= 1.0 for c in res.confidences) and len(res.confidences) == 3


def test_each_distinct_span_and_word_is_embedded_once():
    arcs = [(0, 1, "cat", 0, 5, -1.0, -1.0), (0, 1, "cap", 0, 5, -1.0, -1.0), (0, 1, "mat", 0, 5, -1.0, -1.0),
            (1, 2, "sat", 5, 10, -1.0, -1.0), (1, 2, "cat", 5, 10, -1.0, -1.0)]
    r = _rescorer()
    lat = _lattice(arcs)
    r.rescore(lat, _feats(["cat", "sat"]))
    assert r.acoustic.calls == 2  # two distinct spans
    assert r.letters.calls == 4  # cat, cap, mat, sat
    r.rescore(lat, _feats(["cat", "sat"]))
    assert r.letters.calls == 4  # spellings are cached


def test_a_batch_embeds_its_new_spellings_in_one_call_and_scores_as_one_at_a_time():
    a = [(0, 1, "cat", 0, 5, -1.0, -1.0), (0, 1, "cap", 0, 5, -1.0, -1.0), (1, 2, "<unk>", 5, 10, -1.0, -1.0)]
    b = [(0, 1, "mat", 0, 5, -1.0, -1.0), (0, 1, "cat", 0, 5, -1.0, -1.0), (1, 2, "sat", 5, 10, -1.0, -1.0)]
    from rescorer.lattice.word_lattice import build_word_lattice, make_word_table

    table = make_word_table(VOCAB)  # one decoder's lattices share one table
    lats = [build_word_lattice(arcs, table, frame_shift=0.04, utterance_id=u) for arcs, u in ((a, "u1"), (b, "u2"))]
    feats = [_feats(["cat", "sat"]), _feats(["mat", "sat"])]
    r = _rescorer(unk_awe_score=-0.5)
    calls = []
    encode = r.letters.encode_words
    r.letters.encode_words = lambda words, **kw: calls.append(sorted(words)) or encode(words, **kw)
    batched = r.embedding_scores_batch(lats, feats)
    assert calls == [["cap", "cat", "mat", "sat"]]  # one call for both lattices, no <unk>
    one = [_rescorer(unk_awe_score=-0.5).embedding_scores(lat, f) for lat, f in zip(lats, feats)]
    for (_, awe, _), (_, want, _) in zip(batched, one):
        assert torch.equal(awe, want)
    assert float(batched[0][1][2]) == -0.5 and not batched[0][1].requires_grad


def test_awe_scores_survive_k2_operations():
    import k2

    arcs = [(0, 1, "the", 0, 5, -1.0, -1.0), (1, 2, "cat", 5, 10, -1.0, -1.0), (1, 2, "cap", 5, 10, -0.5, -1.0)]
    res = _rescorer(awe_scale=2.0).rescore(_lattice(arcs), _feats(["the", "cat"]))
    best = k2.shortest_path(k2.create_fsa_vec([res.lattice.fsa]), use_double_scores=True)
    assert hasattr(best, "awe_scores")
    assert float(best.awe_scores.sum()) == pytest.approx(2.0)


def test_oov_recovery_proposes_the_spoken_word():
    # "the zebra": the decoder has only <unk> for the second word
    words = ["the", "cat"]
    arcs = [(0, 1, "the", 0, 5, -1.0, -1.0), (1, 2, "<unk>", 5, 10, -2.0, -3.0), (1, 2, "cat", 5, 10, -2.5, -1.5)]
    lat = _lattice(arcs, words=words)
    r = _rescorer(awe_scale=3.0, oov_topk=2, oov_lm_score=-3.0, oov_min_similarity=0.5)
    r.set_vocabulary(VOCAB)
    feats = _feats(["the", "zebra"])
    plain = r.rescore(lat, feats)
    assert plain.hypothesis.text in ("the cat", "the <unk>")
    res = r.rescore(lat, feats, recover=True)
    assert res.hypothesis.text == "the zebra"
    assert res.recovered and res.recovered[0][0] == "zebra"
    assert res.lattice.meta["oov_recovery_arcs"] >= 1
    # the input lattice is not modified
    assert "zebra" not in [lat.words.get(int(l)) for l in lat.fsa.labels if l > 0]


def test_recovery_without_vocabulary_is_a_clear_error():
    from rescorer.rescore import RescoreError

    lat = _lattice([(0, 1, "cat", 0, 5, -1.0, -1.0)])
    with pytest.raises(RescoreError, match="set_vocabulary"):
        _rescorer().rescore(lat, _feats(["cat"]), recover=True)


@pytest.mark.parametrize(
    "feats, match",
    [
        (torch.zeros(0, 80), "no feature frames"),
        (torch.zeros(40, 40), r"features must be \[frames, 80\]"),
        (torch.full((40, 80), float("nan")), "NaN or inf"),
        (torch.zeros(40, 80).index_put_((torch.tensor([39]), torch.tensor([79])), torch.tensor(float("inf"))), "NaN or inf"),
        (torch.zeros(40, 80, dtype=torch.float16).index_put_((torch.tensor([7]), torch.tensor([3])),
                                                             torch.tensor(float("nan"), dtype=torch.float16)), "NaN or inf"),
        (torch.zeros(4, 80), "wrong features for this lattice"),
    ],
)
def test_bad_features_are_named(feats, match):
    from rescorer.rescore import RescoreError

    lat = _lattice([(0, 1, "cat", 0, 5, -1.0, -1.0), (1, 2, "sat", 5, 10, -1.0, -1.0)])
    with pytest.raises(RescoreError, match=match):
        _rescorer().rescore(lat, feats)


def test_spans_longer_than_the_window_and_short_spans_are_scored():
    # a 3 s span (300 feature frames) is centre-cropped by the encoder, a 1-frame span widened
    arcs = [(0, 1, "cat", 0, 75, -1.0, -1.0), (1, 2, "sat", 75, 76, -1.0, -1.0)]
    feats = _feats(["cat"], frames_per_word=300)
    feats = torch.cat([feats, _feats(["sat"], frames_per_word=4)])
    res = _rescorer().rescore(_lattice(arcs), feats)
    assert res.hypothesis.text == "cat sat"
    assert float(res.lattice.fsa.awe_scores[0]) == pytest.approx(1.0)


# ---------------------------------------------------------------- OOV recovery: span choice, caching, the new Fsa

CAP_WORDS = ["the", "cat", "cap", "sat", "mat"]  # "zebra" and "on" are not in the lattice's table


def _cap_lattice(**kw):
    """"the zebra on": <unk>/cat on [5,10); three weak branches on distinct spans after state 2.

    Posteriors (a sausage and a fan, so they are the normalised exp-scores): the 1.0,
    <unk> 0.6, cat 0.4 (the <unk> span), cap 0.4 on [10,15), sat 0.35 on [10,14), mat 0.25
    on [11,15). In feature frames (x4) the <unk> span holds "zebra", the others "on".
    """
    import math

    ln = math.log
    arcs = [(0, 1, "the", 0, 5, 0.0, 0.0),
            (1, 2, "<unk>", 5, 10, ln(0.6), 0.0), (1, 2, "cat", 5, 10, ln(0.4), 0.0),
            (2, 3, "cap", 10, 15, ln(0.4), 0.0), (2, 4, "sat", 10, 14, ln(0.35), 0.0), (2, 5, "mat", 11, 15, ln(0.25), 0.0)]
    return _lattice(arcs, words=CAP_WORDS, **kw)


def _cap_rescorer(**cfg):
    """A rescorer with the rule before abstention (``oov_margin`` None: no margin, no guards):
    these tests are about which spans get proposals, caching and the new arcs, and propose
    short words ("on") that the guards would hold back. Abstention: test_rescore_abstain.py."""
    r = _rescorer(**{"oov_topk": 2, "oov_min_similarity": 0.5, "oov_margin": None, **cfg})
    r.set_vocabulary(VOCAB)
    return r


def _rows(lat):
    return [tuple(r) for r in lat.fsa.arcs.values()[:, :3].tolist()]


def _added_arcs(lat, rec):
    """(src, dst, word, start_frame, end_frame, lm) of the arcs ``rec`` has beyond ``lat``."""
    before = set(_rows(lat))
    f = rec.fsa
    out = []
    for k, (s, d, l) in enumerate(_rows(rec)):
        if (s, d, l) not in before:
            out.append((s, d, rec.words.get(l), int(f.start_frame[k]), int(f.end_frame[k]), float(f.lm_scores[k])))
    return sorted(out)


@pytest.mark.parametrize(
    "max_spans, expected",
    [
        (0, [(1, 2, "zebra", 5, 10)]),  # only the <unk> span
        (1, [(1, 2, "zebra", 5, 10), (2, 3, "on", 10, 15)]),  # + the largest uncertain mass (cap, 0.4)
        (2, [(1, 2, "zebra", 5, 10), (2, 3, "on", 10, 15), (2, 4, "on", 10, 14)]),
        (32, [(1, 2, "zebra", 5, 10), (2, 3, "on", 10, 15), (2, 4, "on", 10, 14), (2, 5, "on", 11, 15)]),
    ],
)
def test_oov_candidates_go_to_unk_spans_and_the_capped_weak_spans(max_spans, expected):
    lat = _cap_lattice()
    r = _cap_rescorer(oov_max_spans=max_spans, oov_lm_score=-7.0)
    rec, added = r.recover_oov(lat, _feats(["the", "zebra", "on"]))
    got = _added_arcs(lat, rec)
    assert [g[:5] for g in got] == expected
    assert r.acoustic.calls == 1 + min(max_spans, 3)  # only the chosen spans are embedded for recovery
    assert sorted(a[0] for a in added) == sorted(e[2] for e in expected)
    assert rec.meta["oov_recovery_arcs"] == len(expected)
    # <unk> and cat both propose zebra on (1, 2): one arc, from the better-scoring <unk> (keeps its LM score)
    assert got[0][5] == pytest.approx(0.0)
    assert all(g[5] == pytest.approx(-7.0) for g in got[1:])
    rows = _rows(rec)
    assert len(rows) == len(set(rows))  # no duplicate (src, dst, word)


def test_one_arc_per_proposed_word_and_state_pair_the_best_scoring_proposal():
    # cat, cap and mat connect the same states on different spans / acoustic scores, all weak,
    # and all hear "zebra": one zebra arc, from cap (the best acoustic score), with cap's span
    arcs = [(0, 1, "the", 0, 5, 0.0, 0.0), (1, 2, "cat", 5, 10, -3.0, 0.0), (1, 2, "cap", 5, 9, -1.0, 0.0),
            (1, 2, "mat", 6, 10, -1.0, 0.0)]
    lat = _lattice(arcs, words=CAP_WORDS)
    r = _cap_rescorer(oov_lm_score=-4.0)
    rec, added = r.recover_oov(lat, _feats(["the", "zebra"]))
    assert _added_arcs(lat, rec) == [(1, 2, "zebra", 5, 9, -4.0)]
    assert added == [("zebra", pytest.approx(0.2), pytest.approx(0.36))]
    k = _rows(rec).index((1, 2, rec.words["zebra"]))
    assert float(rec.fsa.am_scores[k]) == -1.0


def test_recovery_leaves_the_input_lattice_and_its_table_alone_and_shares_one_extended_table(tmp_path):
    from rescorer.lattice.word_lattice import (
        build_word_lattice, load_word_lattices, make_word_table, save_word_lattices, table_items,
    )

    table = make_word_table(CAP_WORDS)
    items = table_items(table)
    lat = build_word_lattice([(0, 1, "the", 0, 5, 0.0, 0.0), (1, 2, "<unk>", 5, 10, -1.0, -1.0)], table, frame_shift=0.04,
                             utterance_id="a")
    confident = build_word_lattice([(0, 1, "the", 0, 5, 0.0, 0.0), (1, 2, "cat", 5, 10, 0.0, 0.0)], table, frame_shift=0.04,
                                   utterance_id="b")
    snap = {n: getattr(lat.fsa, n).clone() for n in ("scores", "start_frame", "end_frame", "am_scores", "lm_scores")}
    arcs = lat.fsa.arcs.values().clone()
    r = _cap_rescorer()
    rec_a, added = r.recover_oov(lat, _feats(["the", "zebra"]))
    rec_b, none = r.recover_oov(confident, _feats(["the", "cat"]))
    assert [a[0] for a in added] == ["zebra"] and none == []
    # the inputs: same arcs, attributes and table (no new words)
    assert torch.equal(lat.fsa.arcs.values(), arcs)
    assert all(torch.equal(getattr(lat.fsa, n), v) for n, v in snap.items())
    assert table_items(table) == items and "zebra" not in table
    # both results use one extended table (existing ids kept), so they can be saved together
    assert rec_a.words is rec_b.words and rec_a.words is not table
    assert all(rec_a.words[s] == i for s, i in items)
    assert rec_b.fsa is confident.fsa  # nothing added: the same arcs, on the shared extended table
    save_word_lattices(tmp_path / "rec.pt", [rec_a, rec_b])
    back = load_word_lattices(tmp_path / "rec.pt")
    assert "zebra" in back["a"].words and back["a"].num_arcs == rec_a.num_arcs
    # a new word's id does not depend on which lattices were recovered before
    r2 = _cap_rescorer()
    assert r2.recover_oov(lat, _feats(["the", "zebra"]))[0].words["zebra"] == rec_a.words["zebra"]


@pytest.mark.parametrize("max_spans", [0, 32])
def test_recovery_and_scoring_embed_each_distinct_span_once(max_spans):
    from rescorer.evaluation.rescoring import prepare_all

    feats = _feats(["the", "zebra", "on"])
    r = _cap_rescorer(oov_max_spans=max_spans)
    res = r.rescore(_cap_lattice(), feats, recover=True)
    assert r.acoustic.calls == 5  # [0,5) [5,10) [10,15) [10,14) [11,15): each once, whichever step needs it
    assert res.lattice.meta["oov_recovery_arcs"] >= 1
    # the evaluation path (recover, then score every arc) too
    r = _cap_rescorer(oov_max_spans=max_spans)
    prepared = prepare_all(r, {"u1": _cap_lattice()}, {"u1": feats}, recover=True, progress=False)
    assert r.acoustic.calls == 5
    assert torch.allclose(prepared["u1"].awe, res.lattice.fsa.awe_scores)
    # and the cached embeddings give the scores a fresh computation gives
    fresh = _cap_rescorer(oov_max_spans=max_spans).awe_scores(prepared["u1"].lattice, feats)
    assert torch.equal(fresh, prepared["u1"].awe)


def test_span_cache_shared_by_recover_oov_and_awe_scores():
    from rescorer.rescore import SpanCache

    feats = _feats(["the", "zebra", "on"])
    r = _cap_rescorer(oov_max_spans=1)
    cache = SpanCache()
    rec, _ = r.recover_oov(_cap_lattice(), feats, span_cache=cache)
    assert r.acoustic.calls == 2 and len(cache) == 2
    r.awe_scores(rec, feats, span_cache=cache)
    assert r.acoustic.calls == 5 and cache.encoded == 5
    r.awe_scores(rec, feats)  # without a cache: embeds again, as before
    assert r.acoustic.calls == 10


def test_rescore_with_recovery_validates_the_lattice_once(monkeypatch):
    import rescorer.lattice.word_lattice as wl
    import rescorer.rescore as rs

    lat, r, calls = _cap_lattice(), _cap_rescorer(), []
    real = wl.validate
    counted = lambda lat: (calls.append(lat.utterance_id), real(lat))[1]  # noqa: E731
    monkeypatch.setattr(wl, "validate", counted)  # wherever it is called from
    monkeypatch.setattr(rs, "validate", counted)
    res = r.rescore(lat, _feats(["the", "zebra", "on"]), recover=True)
    assert calls == ["u1"] and res.lattice.num_arcs > lat.num_arcs


@pytest.mark.parametrize("oov_lm, wins", [(-2.0, True), (-5.0, False)])
def test_a_recovered_word_wins_a_weak_word_arc_when_the_lm_cost_allows(oov_lm, wins):
    # three weak words on the second span (posteriors ~0.37, 0.33, 0.30); the audio says zebra
    arcs = [(0, 1, "the", 0, 5, 0.0, 0.0), (1, 2, "cat", 5, 10, -1.0, -1.0), (1, 2, "cap", 5, 10, -1.1, -1.0),
            (1, 2, "mat", 5, 10, -1.2, -1.0)]
    lat = _lattice(arcs, words=CAP_WORDS)
    r = _cap_rescorer(awe_scale=2.0, oov_lm_score=oov_lm)
    res = r.rescore(lat, _feats(["the", "zebra"]), recover=True)
    # zebra: am -1 (cat's), lm oov_lm, awe 2 x 1; cat: -1 - 1 + 2 x 0 = -2
    assert res.hypothesis.text == ("the zebra" if wins else "the cat")
    assert [w[0] for w in res.recovered] == (["zebra"] if wins else [])


def test_the_oov_lm_cost_is_set_at_decoding_so_it_tunes_without_redoing_recovery():
    from dataclasses import replace

    from rescorer.evaluation.rescoring import prepare_all, tune

    arcs = [(0, 1, "the", 0, 5, 0.0, 0.0), (1, 2, "cat", 5, 10, -1.0, -1.0), (1, 2, "cap", 5, 10, -1.1, -1.0),
            (1, 2, "mat", 5, 10, -1.2, -1.0)]
    r = _cap_rescorer(awe_scale=2.0, oov_lm_score=-5.0)  # recovery done once, at a cost where zebra loses
    feats = _feats(["the", "zebra"])
    prepared = prepare_all(r, {"u1": _lattice(arcs, words=CAP_WORDS)}, {"u1": feats}, recover=True, progress=False)
    lat, awe = prepared["u1"].lattice, prepared["u1"].awe
    assert int(lat.fsa.oov_lm_arcs.sum()) >= 1 and int(lat.fsa.oov_lm_arcs[: len(arcs)].sum()) == 0
    assert prepared["u1"].decode(r, r.config) == ["the", "cat"]
    # the same prepared lattice under a cheaper OOV cost: what a fresh recovery at that cost gives
    cheap = replace(r.config, oov_lm_score=-2.0)
    assert prepared["u1"].decode(r, cheap) == ["the", "zebra"]
    fresh = _cap_rescorer(awe_scale=2.0, oov_lm_score=-2.0).rescore(_lattice(arcs, words=CAP_WORDS), feats, recover=True)
    assert fresh.hypothesis.text == "the zebra"
    scored = r.apply_scores(lat, awe, cheap)
    assert torch.allclose(scored.fsa.lm_scores[lat.fsa.oov_lm_arcs.bool()], torch.tensor(-2.0))
    # tuning picks it up from dev
    best, curve = tune(r, prepared, {"u1": ["the", "zebra"]}, [2.0], [1.0], [0.0], oov_lm_scores=[-5.0, -2.0])
    assert best.oov_lm_score == -2.0 and [row["oov_lm_score"] for row in curve] == [-5.0, -2.0]
    assert [row["wer"] for row in curve] == [0.5, 0.0]


def _reference_with_extra_arcs(lat, rows, attrs):
    """The former construction (k2 text format), kept here to check the tensor one against."""
    import k2

    fsa = lat.fsa
    allarcs = torch.cat([fsa.arcs.values()[:, :3].long(), torch.tensor(rows, dtype=torch.long)])
    order = torch.sort(allarcs[:, 0], stable=True).indices
    allarcs = allarcs[order]
    cols = {n: torch.cat([getattr(fsa, n).to(torch.int32), torch.tensor(attrs[n], dtype=torch.int32)])[order]
            for n in ("start_frame", "end_frame")}
    for n in ("am_scores", "lm_scores"):
        cols[n] = torch.cat([getattr(fsa, n).float(), torch.tensor(attrs[n], dtype=torch.float32)])[order]
    text = "\n".join(f"{a} {b} {l} 0" for a, b, l in allarcs.tolist()) + f"\n{int(fsa.shape[0]) - 1}"
    new = k2.Fsa.from_str(text)
    for n, c in cols.items():
        setattr(new, n, c)
    return new


def test_tensor_built_fsa_matches_the_text_built_one_and_keeps_attributes_aligned():
    from rescorer.lattice.word_lattice import build_word_lattice, make_word_table, validate
    from rescorer.lattice.edit import add_arcs

    table = make_word_table(VOCAB)
    arcs = [(0, 1, "the", 0, 5, -0.5, -1.5), (1, 2, "cat", 5, 10, -1.0, -2.0), (1, 3, "cap", 5, 9, -1.5, -2.5),
            (2, 4, "sat", 10, 15, -2.0, -3.0), (3, 4, "sat", 9, 15, -2.5, -3.5)]
    lat = build_word_lattice(arcs, table, frame_shift=0.04, am_scale=0.5, lm_scale=2.0, word_insertion_penalty=-1.0)
    # new arcs from late and early states, in no particular order; distinct attributes
    rows = [(3, 4, table["mat"]), (0, 1, table["zebra"]), (1, 2, table["on"]), (1, 3, table["mat"]), (2, 4, table["on"])]
    attrs = {"start_frame": [9, 0, 5, 5, 10], "end_frame": [15, 5, 10, 9, 15], "am_scores": [-7.0, -1.0, -3.0, -5.0, -4.0],
             "lm_scores": [-17.0, -11.0, -13.0, -15.0, -14.0]}
    new = add_arcs(lat, rows, attrs, table)
    ref = _reference_with_extra_arcs(lat, rows, attrs)
    assert torch.equal(new.fsa.arcs.values()[:, :3], ref.arcs.values()[:, :3])
    assert new.fsa.shape == ref.shape and new.num_states == lat.num_states
    for n in ("start_frame", "end_frame", "am_scores", "lm_scores"):
        assert torch.equal(getattr(new.fsa, n), getattr(ref, n)), n
    validate(new)
    # every arc's attributes belong to it: old arcs keep theirs (and their scores), new arcs get theirs
    def attrs_of(fsa, k):
        return tuple(float(getattr(fsa, n)[k]) for n in ("start_frame", "end_frame", "am_scores", "lm_scores", "scores"))

    expect = {row: attrs_of(lat.fsa, k) for k, row in enumerate(_rows(lat))}
    for j, row in enumerate(rows):
        am, lm = attrs["am_scores"][j], attrs["lm_scores"][j]
        expect[row] = (attrs["start_frame"][j], attrs["end_frame"][j], am, lm, 0.5 * am + 2.0 * lm - 1.0)
    g = new.fsa
    got = {row: attrs_of(g, k) for k, row in enumerate(_rows(new))}
    assert got.keys() == expect.keys()
    for key, v in expect.items():
        assert got[key] == pytest.approx(v), key
    # arcs are sorted by source state, each state's old arcs before its new ones; the final state is the last
    src = g.arcs.values()[:, 0]
    assert torch.equal(src, torch.sort(src).values)
    assert [r for r in _rows(new) if r[0] == 1] == [(1, 2, table["cat"]), (1, 3, table["cap"]), (1, 2, table["on"]),
                                                    (1, 3, table["mat"])]
    assert int((g.labels == -1).sum()) == 1 and int(g.arcs.values()[g.labels == -1][0, 1]) == new.num_states - 1


def test_rescore_reports_each_recovered_word_of_the_best_path_once():
    # "the the": the second word is <unk> in the lattice; recovery proposes "the" there. Only that
    # one is recovered (not the first "the", nor once per added arc)
    arcs = [(0, 1, "the", 0, 5, 0.0, 0.0), (1, 2, "<unk>", 5, 10, -1.0, -1.0), (1, 2, "cat", 5, 10, -1.5, -1.0),
            (1, 3, "<unk>", 5, 9, -1.2, -1.0), (3, 2, None, 9, 10, 0.0, 0.0)]
    lat = _lattice(arcs, words=CAP_WORDS)
    r = _cap_rescorer(awe_scale=2.0)
    res = r.rescore(lat, _feats(["the", "the"]), recover=True)
    assert res.hypothesis.text == "the the"
    assert res.recovered == [("the", pytest.approx(0.2), pytest.approx(0.4))]
    assert res.lattice.meta["oov_recovery_arcs"] == 2  # on (1, 2) and (1, 3)


def test_rescore_cli_prunes_uses_the_named_tuned_scales_names_bad_input_and_resumes(tmp_path):
    """`rescorer rescore`: the command users run on their own lattices."""
    import json

    from click.testing import CliRunner

    from rescorer.cli import main
    from rescorer.lattice.word_lattice import load_word_lattices, save_word_lattices
    from rescorer.models.checkpoint import save_embedder
    from rescorer.training.train_embeddings import TrainConfig, build_encoders
    from tests.conftest import TINY_EMBEDDER

    torch.manual_seed(0)
    acoustic, letters = build_encoders(TrainConfig(train="-", dev="-", out="-", **TINY_EMBEDDER))
    model = tmp_path / "emb"
    model.mkdir()
    save_embedder(str(model / "best.pt"), acoustic, letters, {})
    (model / "rescorer_pocketsphinx.json").write_text(json.dumps({"config": {"awe_scale": 0.0}}))
    arcs = [(0, 1, "the", 0, 5, -1.0, -1.0), (1, 2, "cap", 5, 10, -1.0, -1.0), (1, 2, "cat", 5, 10, -1.2, -1.0),
            (1, 2, "sat", 5, 10, -40.0, -1.0),  # posterior ~1e-17: pruned before its span is embedded
            (2, 3, "sat", 10, 15, -1.0, -1.0)]
    save_word_lattices(tmp_path / "lats.pt", [_lattice(arcs, uid="u1"), _lattice(arcs, uid="u2")])
    f = _feats(["the", "cat", "sat"])
    torch.save({"format": "rescorer.utterances/1", "feats": f.half(), "offsets": torch.tensor([0, f.shape[0]]),
                "texts": ["the cat sat"], "utterance_ids": ["u1"], "speakers": ["s"]}, tmp_path / "feats.pt")
    base = ["rescore", "--model-dir", str(model), "--lattices", str(tmp_path / "lats.pt"),
            "--features", str(tmp_path / "feats.pt"), "--device", "cpu"]
    runner = CliRunner()

    r = runner.invoke(main, base + ["--out", str(tmp_path / "a"), "--config-name", "rescorer_pocketsphinx.json"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a" / "hyps.txt").read_text() == "u1\tthe cap sat\n"  # awe_scale 0: the decoder's choice
    assert "no features" in json.loads((tmp_path / "a" / "errors.0.json").read_text())["u2"]
    back = load_word_lattices(tmp_path / "a" / "rescored.0.pt")["u1"]  # rescored lattices load again
    assert back.num_arcs == len(arcs) - 1 + 1  # pruned; + the final arc
    assert back.meta["scales"]["awe_scale"] == 0.0 and back.meta["pruned_min_posterior"] == 1e-4
    # resumed: u1 is not rescored again
    r = runner.invoke(main, base + ["--out", str(tmp_path / "a"), "--config-name", "rescorer_pocketsphinx.json"])
    assert r.exit_code == 0 and "(1 utterances)" in r.output
    # no pruning: every arc is kept
    r = runner.invoke(main, base + ["--out", str(tmp_path / "b"), "--prune-posterior", "0"])
    assert r.exit_code == 0, r.output
    assert load_word_lattices(tmp_path / "b" / "rescored.0.pt")["u1"].num_arcs == len(arcs) + 1
    # a directory of shards (as rescorer.lattice.pocketsphinx writes them)
    (tmp_path / "shards").mkdir()
    for uid in ("u1", "u2"):
        save_word_lattices(tmp_path / "shards" / f"{uid}.pt", [_lattice(arcs, uid=uid)])
    dir_args = [a if a != str(tmp_path / "lats.pt") else str(tmp_path / "shards") for a in base]
    r = runner.invoke(main, dir_args + ["--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "d" / "hyps.txt").read_text().startswith("u1\t")
    r = runner.invoke(main, base + ["--out", str(tmp_path / "c"), "--config-name", "rescorer_other.json"])
    assert r.exit_code != 0 and "rescorer_other.json: no such tuned configuration" in r.output


@pytest.mark.parametrize("with_unk", [False, True])
def test_batched_arc_spans_equal_one_lattice_at_a_time(with_unk):
    """The spans every word arc is scored on, computed for a batch at once, equal the
    per-lattice ones: lattices of other frame shifts, <unk> arcs, arcs past the features'
    end, a lattice with no word arc at all, repeated spans."""
    rs = _rescorer()
    lats = [
        _lattice([(0, 1, "the", 0, 5, -1.0, -1.0), (0, 1, "on", 0, 5, -2.0, -1.0), (1, 2, "cat", 5, 10, -1.0, -1.0),
                  (1, 2, "<unk>", 4, 11, -1.0, -1.0)], uid="u1"),
        _lattice([(0, 1, None, 0, 3, -1.0, 0.0)], uid="u2"),  # no word arc
        _lattice([(0, 1, "sat", 0, 40, -1.0, -1.0), (1, 2, "mat", 40, 99, -1.0, -1.0)], frame_shift=0.01, uid="u3"),
        _lattice([(0, 1, "cat", 2, 3, -1.0, -1.0), (1, 2, "<unk>", 3, 9, -1.0, -1.0)], uid="u4"),
    ]
    from rescorer.rescore import distinct_arc_spans

    def one_lattice(lat, n):  # the reference: the arcs scored, and distinct_arc_spans of them
        labels = lat.fsa.labels.long()
        idx = ((labels > 0) & ((labels != lat.words.get("<unk>")) | with_unk)).nonzero().flatten()
        if idx.numel() == 0:
            return idx, torch.empty(0, 2, dtype=torch.long), idx
        return (idx, *distinct_arc_spans(lat, idx, n, rs.frame_shift))

    frames = [40, 12, 60, 33]
    batch = rs._scored_arc_spans_batch(lats, frames, with_unk=with_unk)
    assert len(batch) == len(lats)
    for lat, n, got in zip(lats, frames, batch):
        want = one_lattice(lat, n)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and torch.equal(g, w)
        assert all(torch.equal(a, b) for a, b in zip(rs._scored_arc_spans(lat, n, with_unk=with_unk), want))
    assert batch[1][0].numel() == 0 and batch[1][1].shape == (0, 2)
    assert int(batch[2][1][:, 1].max()) == 60  # the arc past the features ends at their end
