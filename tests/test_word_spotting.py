"""CTC word spotting and CTC spelling scores on planted log-probs (no model, no k2)."""

import math

import pytest
import torch
import torch.nn.functional as F

from rescorer.tokens import BLANK_ID, TOKEN_ID, words_to_token_ids


def planted(T, emissions, peak=-0.05, floor=-9.0, probs=None):
    """[T, 29] log-probs: blank everywhere except the (frame, token) emissions."""
    lp = torch.full((T, 29), floor)
    lp[:, BLANK_ID] = 0.0
    for t, tok in emissions:
        lp[t] = floor
        lp[t, TOKEN_ID[tok]] = 0.0
    return lp.log_softmax(1)


def spell(word, start, step=2):
    """Emissions spelling ``word`` then | from ``start``, one token every ``step`` frames."""
    return [(start + i * step, c) for i, c in enumerate(list(word) + ["|"])]


def test_spotting_finds_a_planted_word_with_its_frames():
    from rescorer.decoding.word_spotting import SpellingTrie, spot

    lp = planted(40, spell("the", 1) + spell("zebra", 12))
    hits = spot(lp, SpellingTrie(["zebra", "zeal", "bra"]))
    assert [(h.word, h.start, h.end) for h in hits] == [("zebra", 12, 23)]
    h = hits[0]
    assert h.score == pytest.approx(h.log_prob + 3.0 * 6)  # bonus per token: 5 letters + |
    assert h.log_prob < 0 and h.log_prob > -1.0


def test_a_near_miss_below_the_threshold_is_not_spotted():
    from rescorer.decoding.word_spotting import SpellingTrie, SpottingConfig, spot

    # "zebro": the last letter is o, so "zebra" can only be spelled through a very unlikely a
    lp = planted(30, spell("zebro", 2))
    trie = SpellingTrie(["zebra"])
    hit = SpottingConfig(bonus=0.5, threshold=-5.0)  # log-prob about -9, + 6 tokens x 0.5 = -6
    assert spot(lp, trie, hit) == []
    # the same word, correctly spelled, passes the same threshold
    assert [h.word for h in spot(planted(30, spell("zebra", 2)), trie, hit)] == ["zebra"]


def test_repeated_letters_need_a_blank_between_them():
    from rescorer.decoding.word_spotting import SpellingTrie, spot

    trie = SpellingTrie(["add"])
    # a d held over two frames (no blank between): one d, so "add" is not there
    lp = planted(20, [(2, "a"), (4, "d"), (5, "d"), (7, "|")])
    assert spot(lp, trie) == []
    lp = planted(20, [(2, "a"), (4, "d"), (6, "d"), (8, "|")])
    assert [h.word for h in spot(lp, trie)] == ["add"]


def test_replacement_only_when_the_hit_beats_the_greedy_path():
    from rescorer.decoding.word_spotting import SpellingTrie, SpottingConfig, ctc_word_spotting

    # greedy hears "zebro" but "zebra" is nearly as likely at the a/o frame
    lp = planted(30, spell("the", 0) + spell("zebro", 10))
    lp[18, TOKEN_ID["a"]] = lp[18, TOKEN_ID["o"]] - 0.5
    lp = lp.log_softmax(1)
    trie = SpellingTrie(["zebra"])
    r = ctc_word_spotting(lp, trie, SpottingConfig(bonus=1.0, token_weight=0.5))
    assert [w.word for w in r.greedy] == ["the", "zebro"]
    assert r.word_sequence == ["the", "zebra"] and [h.word for h in r.accepted] == ["zebra"]
    # the same hit with no bonus cannot beat the greedy path over its frames: nothing replaced
    r = ctc_word_spotting(lp, trie, SpottingConfig(bonus=0.0, threshold=-50.0, token_weight=0.5))
    assert [h.word for h in r.hits] == ["zebra"] and r.accepted == []
    assert r.word_sequence == ["the", "zebro"]


def test_replace_greedy_keeps_words_outside_the_hit():
    from rescorer.decoding.word_spotting import GreedyWord, SpottedWord, replace_greedy

    greedy = [GreedyWord("a", 0, 4), GreedyWord("b", 4, 8), GreedyWord("c", 8, 12), GreedyWord("d", 12, 16)]
    hit = SpottedWord("x", 4, 12, 1.0, -1.0)
    words, acc = replace_greedy(greedy, [hit], lambda s, e: 0.0)
    assert [w.word for w in words] == ["a", "x", "d"] and acc == [hit]
    words, acc = replace_greedy(greedy, [hit], lambda s, e: 2.0)  # greedy scores better: kept
    assert [w.word for w in words] == ["a", "b", "c", "d"] and acc == []


def test_spotted_words_merge_into_another_decoders_1best_on_ctc_frames():
    """CTC-WS as an add-on to any decoder: the same hits are accepted (against the CTC model's
    best path), and they replace the words of the 1-best given, placed on CTC frames by time."""
    from rescorer.decoding.word_spotting import SpellingTrie, SpottingConfig, base_words, ctc_word_spotting

    lp = planted(30, spell("the", 0) + spell("zebro", 10))
    lp[18, TOKEN_ID["a"]] = lp[18, TOKEN_ID["o"]] - 0.5
    lp = lp.log_softmax(1)
    trie, cfg = SpellingTrie(["zebra"]), SpottingConfig(bonus=1.0, token_weight=0.5)
    # pocketsphinx-like 1-best with its own words and times (seconds; 40 ms CTC frames)
    base = base_words([("a", 0.0, 0.16), ("cap", 0.4, 0.6), ("sad", 0.6, 0.8), ("now", 0.8, 1.0)], 0.04, 30)
    assert [(w.start, w.end) for w in base] == [(0, 4), (10, 15), (15, 20), (20, 25)]
    greedy = ctc_word_spotting(lp, trie, cfg)
    r = ctc_word_spotting(lp, trie, cfg, base=base)
    assert [(h.word, h.start, h.end) for h in r.accepted] == [(h.word, h.start, h.end) for h in greedy.accepted]
    assert r.greedy == base
    # the hit spans frames 10-21: "cap" and "sad" lie inside it, "now" keeps 4 of its 5 frames
    assert r.word_sequence == ["a", "zebra", "now"]
    assert greedy.word_sequence == ["the", "zebra"]
    # a hit that does not beat the CTC best path edits nothing, whatever the base
    assert ctc_word_spotting(lp, trie, SpottingConfig(bonus=0.0, threshold=-50.0), base=base).word_sequence == \
        ["a", "cap", "sad", "now"]
    # times clip to the utterance and keep at least a frame; a word without times cannot be placed
    assert base_words([("x", 1.15, 1.3), ("y", 0.5, 0.5)], 0.04, 30) == [("x", 29, 30), ("y", 12, 13)]
    with pytest.raises(ValueError, match="'uh' has no time span"):
        base_words([("uh", math.nan, math.nan)], 0.04, 30)
    with pytest.raises(ValueError, match="2 base word sequences for 1 utterances"):
        from rescorer.decoding.word_spotting import ctc_word_spotting_batch

        ctc_word_spotting_batch([lp], trie, cfg, bases=[base, base])


def test_overlapping_hits_keep_the_best():
    from rescorer.decoding.word_spotting import SpellingTrie, spot

    lp = planted(30, spell("cat", 2))
    hits = spot(lp, SpellingTrie(["cat", "at"]))
    assert [h.word for h in hits] == ["cat"]  # "at" (frames 4-8) lies inside cat's frames and scores lower


def test_bad_word_lists_give_clear_errors(tmp_path):
    from rescorer.decoding.word_spotting import SpellingTrie
    from rescorer.formats.word_list import WordListError, read_word_list

    p = tmp_path / "words.txt"
    p.write_text("zebra\n\n# a comment\nZebra\ncafé\n")
    assert list(read_word_list(p)) == ["zebra", "cafe"]
    p.write_text("zebra\nnew york\n")
    with pytest.raises(WordListError, match=r"words.txt: 1 lines are not words.*line 2"):
        read_word_list(p, strict=True)
    with pytest.raises(WordListError, match="'zeb-ra'.*tokens"):
        SpellingTrie(["zeb-ra"])
    with pytest.raises(WordListError, match="empty"):
        SpellingTrie([])


def test_trie_shares_prefixes_and_enumerates_children():
    from rescorer.decoding.word_spotting import SpellingTrie

    t = SpellingTrie(["cat", "car", "cat"])
    assert t.words == ["cat", "car"]
    assert len(t) == 1 + 2 + 2 + 2  # root, c a, t |, r |
    row, ch = t.expand(torch.tensor([0, 2]))  # root -> c; a -> t, r
    assert row.tolist() == [0, 1, 1]
    assert sorted(t.token[ch[1:]].tolist()) == sorted([TOKEN_ID["t"], TOKEN_ID["r"]])


def test_arc_ctc_scores_equal_a_direct_ctc_loss_and_are_cached():
    from rescorer.decoding.ctc_scores import SpanScorer

    torch.manual_seed(0)
    lp = torch.randn(50, 29).log_softmax(1)
    sc = SpanScorer(lp)
    spans = torch.tensor([[0, 10], [5, 20], [0, 10], [30, 50]])
    words = ["cat", "zebra", "cat", "add"]
    ll, frames, tokens = sc.scores(spans, words)
    for (s, e), w, v in zip(spans.tolist(), words, ll.tolist()):
        t = torch.tensor(words_to_token_ids([w]))
        ref = -F.ctc_loss(lp[s:e, None], t[None], torch.tensor([e - s]), torch.tensor([len(t)]), blank=0,
                          reduction="sum")
        assert v == pytest.approx(float(ref), rel=1e-5)
    assert frames.tolist() == [10, 15, 10, 20] and tokens.tolist() == [4, 6, 4, 4]
    assert sc.computed == 3 and len(sc) == 3  # the repeated (span, word) once
    sc.scores(spans[:2], words[:2])
    assert sc.computed == 3  # cached


def test_short_spans_get_a_finite_floor_and_norms_divide():
    from rescorer.decoding.ctc_scores import CtcScoreError, SpanScorer, min_frames, normalise

    lp = torch.randn(20, 29).log_softmax(1)
    sc = SpanScorer(lp, floor_per_token=-20.0)
    assert min_frames(words_to_token_ids(["add"])) == 5  # a d d | + a blank between the d's
    ll, frames, tokens = sc.scores(torch.tensor([[0, 4], [3, 3], [0, 5]]), ["add", "add", "add"])
    assert ll[:2].tolist() == [-80.0, -80.0] and torch.isfinite(ll).all() and ll[2] > -80
    assert normalise(ll, frames, tokens, "token")[0] == -20.0
    assert normalise(ll, frames, tokens, "frame")[1] == -80.0  # zero frames: divided by 1
    with pytest.raises(CtcScoreError, match="normalisation"):
        normalise(ll, frames, tokens, "word")
    with pytest.raises(CtcScoreError, match="spans must"):
        sc.scores(torch.tensor([[0, 30]]), ["add"])


def test_unk_scores_the_best_path_over_its_span():
    from rescorer.decoding.ctc_scores import SpanScorer

    lp = planted(20, spell("cat", 2))
    ll, _, tokens = SpanScorer(lp).scores(torch.tensor([[2, 9]]), ["<unk>"])
    assert float(ll[0]) == pytest.approx(float(lp[2:9].max(1).values.sum()))
    assert int(tokens[0]) == 4


def test_pocketsphinx_frames_convert_to_ctc_frames_by_time():
    from rescorer.decoding.ctc_scores import lattice_spans
    from rescorer.formats.contract import FBANK, LATTICE_FRAME_SHIFT

    # 10 ms lattice frames -> 40 ms CTC frames; our own 40 ms lattices map to themselves
    s = lattice_spans(torch.tensor([0, 38, 101]), torch.tensor([41, 80, 400]), FBANK.frame_shift, LATTICE_FRAME_SHIFT, 50)
    assert s.tolist() == [[0, 10], [10, 20], [25, 50]]
    s = lattice_spans(torch.tensor([3]), torch.tensor([9]), LATTICE_FRAME_SHIFT, LATTICE_FRAME_SHIFT, 50)
    assert s.tolist() == [[3, 9]]


def test_spotting_cost_grows_with_active_states_not_the_list():
    """A 5k-word list on 200 frames stays fast: the frontier is pruned, not the whole tree."""
    import random
    import time

    from rescorer.decoding.word_spotting import SpellingTrie, spot

    rng = random.Random(0)
    words = {"".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(5000)}
    trie = SpellingTrie(sorted(words) + ["zebra"])
    lp = planted(200, spell("zebra", 100))
    t0 = time.perf_counter()
    hits = spot(lp, trie)
    assert "zebra" in [h.word for h in hits]
    assert time.perf_counter() - t0 < 10.0


def test_tune_settings_name_what_the_ctc_methods_need():
    from rescorer.stages import StageError
    from rescorer.stages.tune import TuneSettings

    base = dict(corpus="c", model_dir="m", train_data="t", dev_lattices="d", dev_features="f", awe_scales=(0,),
                lm_scales=(1,), wips=(0,), am_scale=1.0, attention_scales=(0,), attention_nbest=1, prune_posterior=0,
                prune_scale=1.0, word_list_size=10, max_utterances=0, seed=0, out="o", cross_validate=True)
    assert "awe_ctc_rescore" not in TuneSettings(**base).methods  # the default stays the embedding methods
    with pytest.raises(StageError, match="--ctc-model-dir"):
        TuneSettings(**base, methods=("awe_ctc_rescore",))
    with pytest.raises(StageError, match="--word-list"):
        TuneSettings(**base, methods=("ctc_word_spotting",), ctc_model_dir="exp/ctc")
    TuneSettings(**base, methods=("awe_ctc_rescore",), ctc_model_dir="exp/ctc")
    with pytest.raises(StageError, match="--ctc-temperatures must be positive"):
        TuneSettings(**base, methods=("awe_ctc_rescore",), ctc_model_dir="exp/ctc", ctc_temperatures=(1.0, -2.0))
    with pytest.raises(StageError, match="add that method"):
        TuneSettings(**base, ctc_temperatures=(1.0, 2.0))
    # test's own list (a context list per split) needs dev's, and a test split to apply it to
    with pytest.raises(StageError, match="dev word list only"):
        TuneSettings(**base, methods=("ctc_word_spotting",), ctc_model_dir="exp/ctc", word_list="d.txt",
                     test_word_list="t.txt")
    split = {**base, "cross_validate": False, "test_lattices": "tl", "test_features": "tf"}
    with pytest.raises(StageError, match="give --word-list for dev too"):
        TuneSettings(**split, methods=("awe_ctc_rescore",), ctc_model_dir="exp/ctc", test_word_list="t.txt")
    assert TuneSettings(**split, methods=("ctc_word_spotting",), ctc_model_dir="exp/ctc", word_list="d.txt",
                        test_word_list="t.txt").test_word_list == "t.txt"


def test_batched_spotting_equals_the_reference_utterance_by_utterance():
    """spot_batch (one frame loop for many utterances, beam per utterance) gives spot's hits,
    on planted words and on noisy log-probs of different lengths; so does the merge."""
    from rescorer.decoding.word_spotting import (SpellingTrie, SpottingConfig, ctc_word_spotting,
                                                 ctc_word_spotting_batch, spot, spot_batch)

    trie = SpellingTrie(["zebra", "zeal", "bra", "the", "then", "cat", "cab", "abba", "ab"])
    g = torch.Generator().manual_seed(3)
    lps = [planted(40, spell("the", 1) + spell("zebra", 12)), planted(9, spell("ab", 1))]
    for T in (60, 7, 130, 1, 45):
        x = torch.randn(T, 29, generator=g) * 3
        x[:, BLANK_ID] += 2.0
        lps.append(x.log_softmax(1))
    cfg = SpottingConfig(bonus=3.0, threshold=-8.0, beam=6.0)
    ref = [spot(lp, trie, cfg) for lp in lps]
    assert sum(map(len, ref)) >= 5 and ref[0] and [h.word for h in ref[0]] == ["the", "zebra"]
    fast = spot_batch(lps, trie, cfg)
    assert len(fast) == len(lps)
    for a, b in zip(ref, fast):
        assert [(h.word, h.start, h.end) for h in a] == [(h.word, h.start, h.end) for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)
    # an utterance's hits do not depend on its batch-mates, nor on the batch's frame budget
    assert [(h.word, h.start) for h in spot_batch(lps[:1], trie, cfg)[0]] == [(h.word, h.start) for h in ref[0]]
    merged = ctc_word_spotting_batch(lps, trie, cfg, batch_frames=100)
    assert [m.word_sequence for m in merged] == [ctc_word_spotting(lp, trie, cfg).word_sequence for lp in lps]
    assert spot_batch([], trie, cfg) == []


def test_spotting_tuned_for_a_precision_target_abstains_where_dev_falls_short():
    """By default the grid point of lowest WER (the anchor as published); with a precision
    target, the rule of every recovery method: the spotted words must be right that often."""
    from rescorer.decoding.word_spotting import SpellingTrie, SpottingConfig
    from rescorer.evaluation.ctc_rescoring import tune_spotting

    lp = planted(30, spell("the", 0) + spell("zebro", 10))  # greedy hears "zebro", "zebra" a close second
    lp[18, TOKEN_ID["a"]] = lp[18, TOKEN_ID["o"]] - 0.5
    lp = lp.log_softmax(1)
    log_probs = {"a": lp, "b": lp.clone(), "c": lp.clone()}
    refs = {"a": ["the", "zebra"], "b": ["the", "zebra"], "c": ["the", "zebro"]}  # c said what greedy heard
    args = (log_probs, SpellingTrie(["zebra"]), refs, [0.0, 1.0], [-50.0], SpottingConfig(token_weight=0.5), {"the"})
    best, curve = tune_spotting(*args)
    assert best.bonus == 1.0  # 1 error in 6 words against greedy's 2
    assert [r["added_oov_proposed"] for r in curve] == [0, 3]
    assert curve[1]["added_oov_recovered"] == 2 and curve[1]["added_oov_precision"] == pytest.approx(2 / 3)
    assert tune_spotting(*args, min_precision=0.8)[0] is None  # 2 of 3 right: short of 0.8, the greedy output
    assert tune_spotting(*args, min_precision=0.6)[0].bonus == 1.0
    with pytest.raises(ValueError, match="empty grid"):
        tune_spotting(log_probs, SpellingTrie(["zebra"]), refs, [], [-50.0])


def test_a_temperature_fitted_on_transcripts_flattens_an_overconfident_model():
    """A model sure of a wrong letter ("zebro" for "zebra") pays a huge CTC loss; a temperature
    above 1 spreads its mass (the greedy output unchanged), too high a one spreads it everywhere:
    the fitted temperature lies between, and is the grid's lowest loss."""
    from rescorer.decoding.ctc_scores import CtcScoreError, ctc_loss_per_token, fit_temperature, with_temperature

    sure = planted(30, spell("the", 0) + spell("zebro", 10), floor=-30.0)
    flat = with_temperature(sure, 3.0)
    assert torch.equal(flat.argmax(1), sure.argmax(1))
    assert torch.allclose(flat.exp().sum(1), torch.ones(30), atol=1e-5)
    assert with_temperature(sure, 1.0) is sure
    lps, texts = {"a": sure, "b": sure.clone()}, {"a": ["the", "zebra"], "b": ["the", "zebro"]}
    grid = [1.0, 2.0, 4.0, 8.0, 16.0, 64.0]
    t, losses = fit_temperature(lps, texts, grid)
    assert 1.0 < t < 64.0 and losses[t] == min(losses.values())
    assert losses[1.0] > 2 * losses[t]
    # utterances whose transcript the tokens cannot spell are left out; none left: a named error
    loss, used = ctc_loss_per_token({**lps, "c": sure}, {**texts, "c": ["naïve"]})
    assert used == 2 and loss == pytest.approx(ctc_loss_per_token(lps, texts)[0])
    with pytest.raises(CtcScoreError, match="no utterance with a transcript"):
        ctc_loss_per_token({"c": sure}, {"c": ["naïve"]})
    with pytest.raises(CtcScoreError, match="positive number"):
        with_temperature(sure, 0.0)
