"""OOV recovery pieces that need no lattice (run without k2): the span cache, the choice of
spans, the duplicate filter. The lattice-level tests are in test_rescore.py."""

import pytest
import torch

from tests.test_rescore import StubAcoustic, _feats, _rescorer


def test_span_cache_embeds_each_span_once_and_returns_rows_in_query_order():
    from rescorer.rescore import SpanCache

    r = _rescorer()
    feats = _feats(["the", "cat", "sat"])
    cache = SpanCache()
    a = r.embed_spans(feats, torch.tensor([[20, 40], [0, 20], [20, 40]]), cache)
    assert r.acoustic.calls == 2 and cache.encoded == 2 and len(cache) == 2
    b = r.embed_spans(feats, torch.tensor([[40, 60], [20, 40], [0, 20]]), cache)
    assert r.acoustic.calls == 3 and len(cache) == 3
    cat, the, sat = 0, 7, 2  # stub codes (VOCAB order)
    assert [int(x.argmax()) for x in a] == [cat, the, cat]
    assert [int(x.argmax()) for x in b] == [sat, cat, the]
    # without a cache every span is embedded, duplicates included (the old behaviour)
    assert torch.equal(r.embed_spans(feats, torch.tensor([[0, 20], [0, 20]])), torch.stack([a[1], a[1]]))
    assert r.acoustic.calls == 5
    assert r.embed_spans(feats, torch.empty(0, 2, dtype=torch.long), cache).shape == (0, StubAcoustic.dim)


def test_span_cache_refuses_features_of_another_length():
    from rescorer.rescore import RescoreError, SpanCache

    r = _rescorer()
    cache = SpanCache()
    r.embed_spans(_feats(["the", "cat"]), torch.tensor([[0, 20]]), cache)
    with pytest.raises(RescoreError, match="one cache per utterance"):
        r.embed_spans(_feats(["the", "cat", "sat"]), torch.tensor([[0, 20]]), cache)


def _select(post, span, unk, threshold=0.5, max_spans=32, num_spans=None):
    from rescorer.rescore import select_oov_spans

    post = torch.tensor(post, dtype=torch.float32)
    unk = torch.tensor(unk, dtype=torch.bool)
    span = torch.tensor(span)
    weak = unk | (post < threshold)
    n = num_spans if num_spans is not None else int(span.max()) + 1
    return select_oov_spans(post, span, unk, weak, n, max_spans).nonzero().flatten().tolist()


def test_unk_spans_always_count_and_weak_spans_are_capped_by_uncertain_mass():
    # span: 0 <unk> (strong) | 1 one weak arc 0.3 | 2 two weak arcs 0.2 + 0.25 | 3 strong 0.9 + weak 0.05
    # | 4 a dead segment 1e-9 | 5 only a strong arc
    post = [0.9, 0.3, 0.2, 0.25, 0.9, 0.05, 1e-9, 0.99]
    span = [0, 1, 2, 2, 3, 3, 4, 5]
    unk = [True, False, False, False, False, False, False, False]
    assert _select(post, span, unk, max_spans=0) == [0]
    assert _select(post, span, unk, max_spans=1) == [0, 2]  # mass 0.45
    assert _select(post, span, unk, max_spans=2) == [0, 1, 2]  # then 0.3
    assert _select(post, span, unk, max_spans=3) == [0, 1, 2, 3]  # then 0.05; the dead segment last
    assert _select(post, span, unk, max_spans=32) == [0, 1, 2, 3, 4]  # never a span without a weak arc
    # a span with both <unk> and a weak word counts as a <unk> span, not against the cap
    assert _select([0.4, 0.3, 0.1], [0, 0, 1], [True, False, False], max_spans=1) == [0, 1]
    # equal mass: the earlier span first
    assert _select([0.2, 0.2, 0.2], [2, 0, 1], [False] * 3, max_spans=2) == [0, 1]
    # more <unk> spans than the cap: all of them
    assert _select([0.9] * 4, [0, 1, 2, 3], [True] * 4, max_spans=1) == [0, 1, 2, 3]


def test_duplicate_arcs_are_dropped_keeping_the_first_proposal():
    from rescorer.lattice.edit import new_arc_mask

    old = torch.tensor([[0, 1, 5], [0, 1, 6], [1, 2, -1]])
    new = torch.tensor([[0, 1, 5],  # already in the lattice
                        [0, 1, 7],  # new
                        [0, 1, 7],  # a repeat of the previous proposal
                        [1, 0, 7],  # other states (the key is the ordered pair)
                        [0, 2, 7],
                        [0, 1, 6],  # already in the lattice
                        [1, 2, 7]])
    assert new_arc_mask(old, new, num_states=3).tolist() == [False, True, False, True, True, False, True]
    assert new_arc_mask(old, torch.empty(0, 3, dtype=torch.long), 3).tolist() == []
    # with priorities the best of the repeats is kept (equal priority: the earliest)
    rep = torch.tensor([[0, 1, 7], [0, 1, 7], [0, 1, 7], [0, 2, 7], [0, 2, 7], [0, 1, 5]])
    pr = torch.tensor([0.1, 0.5, 0.3, 0.2, 0.2, 9.0])
    assert new_arc_mask(old, rep, 3, priority=pr).tolist() == [False, True, False, True, False, False]


@pytest.mark.parametrize("n, v, k", [(3, 5000, 4), (2, 2500, 2500), (7, 40, 40), (0, 100, 3)])
def test_word_list_search_matches_ops_topk_nearest(n, v, k):
    from rescorer.ops import topk_nearest
    from rescorer.rescore import WordListIndex

    g = torch.Generator().manual_seed(n * 7 + v)
    vocab = torch.randn(v, 16, generator=g)
    vocab[5] = vocab[3]  # a duplicate row: equal cosines, the smaller index first
    vocab[7] = 0.0  # a zero row (no spelling signal): cosine 0, not NaN
    q = torch.randn(n, 16, generator=g)
    if n:
        q[0] = vocab[3] * 2
    index = WordListIndex([f"w{i}" for i in range(v)], vocab)
    got_v, got_i = index.nearest(q, k)
    ref_v, ref_i = topk_nearest(q, vocab, k, metric="cosine")
    assert got_v.shape == ref_v.shape == (n, k)
    assert torch.equal(got_i, ref_i)
    assert torch.allclose(got_v, ref_v, atol=1e-5)
    if n:
        assert got_i[0, :2].tolist() == [3, 5]


def test_set_vocabulary_keeps_one_index_of_the_normalised_distinct_words():
    from rescorer.rescore import RescoreError

    r = _rescorer()
    with pytest.raises(RescoreError, match="set_vocabulary"):
        r.recover_oov(None, torch.zeros(1, 80))
    r.set_vocabulary(["Cat", "cat", "zebra", "x-1"])  # "x-1" is not a word
    assert r._word_list.words == ["cat", "zebra"] and len(r._word_list.index) == 2
    vals, ids = r._word_list.nearest(r.spelling_embeddings(["zebra"]), 1)
    assert ids.tolist() == [[1]] and vals.item() == pytest.approx(1.0)
