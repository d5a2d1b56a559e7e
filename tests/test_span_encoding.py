"""One encoder pass per utterance (and per batch of utterances): spans pooled from it.

The conv encoder's one pass must equal encoding a segment alone where nothing outside the
segment can reach it (the whole utterance as one span), and pooling must not depend on
padding or batching. The rescorer's batched embedding scores must equal one utterance at
a time, for every span encoding."""

import pytest
import torch

from rescorer.models.acoustic import AcousticWordEncoder, ConvUtteranceStates
from rescorer.models.state_pooling import StatePoolingEncoder, part_bounds, part_means, span_means


def _conv(max_frames=200):
    torch.manual_seed(0)
    enc = AcousticWordEncoder(num_mel_bins=12, dim=8, channels=16, max_frames=max_frames).eval()
    enc.set_feature_stats(torch.randn(12), torch.rand(12) + 0.5)
    return enc


def test_conv_one_pass_over_a_whole_segment_equals_encoding_it():
    enc = _conv()
    for length in (1, 3, 4, 37, 80):
        x = torch.randn(length, 12)
        alone = enc(x[None], torch.tensor([length]))
        assert torch.allclose(enc.encode_spans(x, torch.tensor([[0, length]])), alone, atol=1e-5), length


def test_conv_span_pooling_equals_pooling_the_same_output_frames_by_hand():
    enc = _conv(max_frames=24)
    x = torch.randn(50, 12)
    states = enc.utterance_states([x])
    frames = states.frames[0]  # [13, C]: every 4th input frame
    spans = torch.tensor([[0, 8], [4, 5], [8, 21], [40, 50], [48, 80], [0, 50]])
    got = enc.encode_spans(x, spans)
    # by hand: output frames whose centre (4j) lies in the span; the 50-frame span keeps its middle 24 (13..37)
    for (s, e), row in zip([(0, 2), (1, 2), (2, 6), (10, 13), (12, 13), (4, 10)], got):
        want = enc._project(frames[s:e].mean(0, keepdim=True), frames[s:e].amax(0, keepdim=True))[0]
        assert torch.allclose(row, want, atol=1e-5)
    assert torch.allclose(got.norm(dim=1), torch.ones(len(spans)), atol=1e-5)


def test_span_means_and_part_means_equal_slicing_and_refuse_empty_spans():
    torch.manual_seed(2)
    frames = torch.randn(300, 7)
    starts = torch.tensor([0, 5, 5, 299, 100, 17, 40, 60])
    ends = torch.tensor([1, 6, 250, 300, 300, 18, 42, 63])  # lengths 1, 2 and 3: thirds overlap or are single frames
    got = span_means(frames, starts, ends)
    want = torch.stack([frames[s:e].mean(0) for s, e in zip(starts.tolist(), ends.tolist())])
    assert torch.allclose(got, want, atol=1e-6)
    assert span_means(frames, starts[:0], ends[:0]).shape == (0, 7)
    with pytest.raises(ValueError, match="at least one frame"):
        span_means(frames, torch.tensor([4]), torch.tensor([4]))
    s, e = part_bounds(starts, ends)
    means = part_means(frames, starts, ends)
    for i in range(len(starts)):
        for p in range(4):
            assert torch.allclose(means[i, p], frames[int(s[i, p]):int(e[i, p])].mean(0), atol=1e-5), (i, p)


def test_state_pooling_chunked_frame_layers_give_the_same_states():
    enc = StatePoolingEncoder(feature_dim=12, dim=8, hidden=16, max_frames=30).eval()
    utts = [torch.randn(n, 12) for n in (41, 17, 64)]
    whole = enc.utterance_states(utts)
    enc.chunk_frames = 10  # chunks cut across utterances
    chunked = enc.utterance_states(utts)
    assert torch.allclose(whole.frames, chunked.frames, atol=1e-6)
    assert whole.offsets.tolist() == [0, 41, 58] and whole.frames.shape[0] == 122


def test_range_max_table_equals_brute_force():
    torch.manual_seed(1)
    frames = torch.randn(2, 23, 5)
    st = ConvUtteranceStates(frames, torch.tensor([92, 60]), torch.tensor([23, 15]), 4)
    for row, limit in ((0, 23), (1, 15)):
        for s in range(limit):
            for e in range(s + 1, limit + 1):
                got = st.range_max(torch.tensor([row]), torch.tensor([s]), torch.tensor([e]))[0]
                assert torch.equal(got, frames[row, s:e].amax(0))


@pytest.mark.parametrize("make", [_conv, lambda: StatePoolingEncoder(feature_dim=12, dim=8, hidden=16, max_frames=30).eval()])
def test_a_batch_of_utterances_pools_what_each_gets_alone(make):
    enc = make()
    utts = [torch.randn(n, 12) for n in (41, 17, 64)]
    spans = [torch.tensor([[0, 8], [8, 40]]), torch.tensor([[4, 17], [0, 3]]), torch.tensor([[20, 64], [60, 61]])]
    states = enc.utterance_states(utts)
    rows = torch.tensor([0, 0, 1, 1, 2, 2])
    allspans = torch.cat(spans)
    batched = enc.pool_spans(states, rows, allspans[:, 0], allspans[:, 1])
    alone = torch.cat([enc.encode_spans(u, s) for u, s in zip(utts, spans)])
    assert torch.allclose(batched, alone, atol=1e-5)


def test_one_pass_is_refused_for_an_encoder_that_cannot_and_unknown_modes_are_named():
    from rescorer.rescore import Rescorer
    from tests.test_rescore import StubAcoustic, StubLetters

    with pytest.raises(ValueError, match="cannot encode spans in one pass"):
        Rescorer(StubAcoustic(), StubLetters(), device="cpu", span_encoding="one_pass")
    with pytest.raises(ValueError, match="span_encoding must be one of"):
        Rescorer(StubAcoustic(), StubLetters(), device="cpu", span_encoding="fast")
    assert not Rescorer(StubAcoustic(), StubLetters(), device="cpu").one_pass
    # auto: one pass only where it equals isolated segments (state pooling), not for the conv encoder
    assert not Rescorer(_conv(), StubLetters(), device="cpu").one_pass
    assert Rescorer(_conv(), StubLetters(), device="cpu", span_encoding="one_pass").one_pass
    assert Rescorer(StatePoolingEncoder(feature_dim=80, dim=16), StubLetters(), device="cpu").one_pass


def test_batches_by_frames_bound_the_padded_size_and_keep_every_utterance():
    from rescorer.formats.frames import batches_by_frames

    lengths = {"a": 100, "b": 300, "c": 120, "d": 5000, "e": 90}
    batches = batches_by_frames(lengths, 400)
    assert sorted(u for b in batches for u in b) == sorted(lengths)
    assert all(len(b) == 1 or len(b) * max(lengths[u] for u in b) <= 400 for b in batches)
    assert ["d"] in batches  # longer than the budget: alone


def _random_lattice(rng, uid, num_frames_lattice, words):
    """A small word lattice over ``num_frames_lattice`` 40 ms frames: three parallel arcs per word slot."""
    from tests.test_rescore import _lattice

    arcs, t, state = [], 0, 0
    while t < num_frames_lattice:
        d = int(rng.integers(2, 8))
        end = min(num_frames_lattice, t + d)
        for k in range(3):
            e2 = min(num_frames_lattice, end + int(rng.integers(0, 2)))
            arcs.append((state, state + 1, words[int(rng.integers(len(words)))], t, max(e2, t + 1),
                         float(-rng.random() * 3), float(-rng.random() * 3)))
        state += 1
        t = end
    return _lattice(arcs, words=words, uid=uid)


WORDS = ["the", "cat", "sat", "on", "mat", "<unk>"]


def _tiny_rescorer(encoder, config, **kw):
    """A Rescorer of untrained tiny encoders: the conv encoder or the state-pooling one on 80-dim frames."""
    from rescorer.models.letters import LetterNgramEncoder
    from rescorer.rescore import Rescorer

    torch.manual_seed(0)
    acoustic = (AcousticWordEncoder(num_mel_bins=80, dim=16, channels=16) if encoder == "conv"
                else StatePoolingEncoder(feature_dim=80, frame_shift=0.01, dim=16, hidden=16))
    letters = LetterNgramEncoder(dim=16, num_buckets=1024, ngram_dim=16, hidden=32)
    return Rescorer(acoustic, letters, config, device="cpu", **kw)


@pytest.mark.lattice
@pytest.mark.parametrize("encoder, span_encoding", [("conv", "one_pass"), ("conv", "isolated"), ("pool", "auto")])
@pytest.mark.parametrize("recover", [False, True])
def test_batched_embedding_scores_and_rescoring_equal_one_utterance_at_a_time(encoder, span_encoding, recover):
    pytest.importorskip("k2")
    import numpy as np

    from rescorer.evaluation.rescoring import prepare_all
    from rescorer.rescore import RescoreConfig

    words = WORDS
    r = _tiny_rescorer(encoder, RescoreConfig(awe_scale=2.0, oov_topk=2, oov_min_similarity=-1.0),
                       span_encoding=span_encoding)
    r.set_vocabulary(["zebra", "cap", "hat", "cat"])
    rng = np.random.default_rng(0)
    lats, feats = {}, {}
    for i, n in enumerate((9, 23, 14, 30)):
        lats[f"u{i}"] = _random_lattice(rng, f"u{i}", n, words)
        feats[f"u{i}"] = torch.randn(4 * n + 3, 80)
    uids = sorted(lats)
    batched = r.embedding_scores_batch([lats[u] for u in uids], [feats[u] for u in uids], recover=recover)
    for u, (lat, awe, rec) in zip(uids, batched):
        lat1, awe1, rec1 = r.embedding_scores(lats[u], feats[u], recover=recover)
        assert lat.num_arcs == lat1.num_arcs and rec == rec1
        assert torch.allclose(awe, awe1, atol=1e-5)
    for res, u in zip(r.rescore_batch([lats[u] for u in uids], [feats[u] for u in uids], recover=recover), uids):
        assert res.hypothesis.text == r.rescore(lats[u], feats[u], recover=recover).hypothesis.text
    one = prepare_all(r, lats, feats, recover=recover, progress=False, batch_frames=0)
    together = prepare_all(r, lats, feats, recover=recover, progress=False, batch_frames=10000)
    assert list(one) == list(together) == uids
    for u in uids:
        assert torch.allclose(one[u].awe, together[u].awe, atol=1e-5)


@pytest.mark.lattice
def test_state_pooling_scores_are_the_same_in_one_pass_and_as_isolated_segments():
    pytest.importorskip("k2")
    import numpy as np

    from rescorer.models.letters import LetterNgramEncoder
    from rescorer.rescore import Rescorer

    torch.manual_seed(0)
    acoustic = StatePoolingEncoder(feature_dim=80, frame_shift=0.01, dim=16, hidden=16)
    letters = LetterNgramEncoder(dim=16, num_buckets=1024, ngram_dim=16, hidden=32)
    lat = _random_lattice(np.random.default_rng(1), "u", 25, ["the", "cat", "sat", "on"])
    feats = torch.randn(100, 80)
    one = Rescorer(acoustic, letters, device="cpu", span_encoding="one_pass").awe_scores(lat, feats)
    iso = Rescorer(acoustic, letters, device="cpu", span_encoding="isolated").awe_scores(lat, feats)
    assert torch.allclose(one, iso, atol=1e-5) and bool((one != 0).any())


def test_bfloat16_frame_layers_stay_close_to_float32_and_leave_training_alone():
    torch.manual_seed(3)
    enc = StatePoolingEncoder(feature_dim=12, dim=8, hidden=32, max_frames=30).eval()
    utts = [torch.randn(n, 12) for n in (41, 17, 64)]
    rows, starts, ends = torch.tensor([0, 1, 2, 2]), torch.tensor([0, 3, 10, 50]), torch.tensor([20, 17, 40, 64])
    want = enc.pool_spans(enc.utterance_states(utts), rows, starts, ends)
    keys = set(enc.state_dict())
    enc.set_compute_dtype(torch.bfloat16)
    assert enc.compute_dtype == torch.bfloat16
    assert set(enc.state_dict()) == keys  # the low-precision copy is not saved with the model
    got = enc.pool_spans(enc.utterance_states(utts), rows, starts, ends)
    assert got.dtype == torch.float32
    assert (got * want).sum(1).min() > 0.99 and not torch.equal(got, want)
    segment = utts[0][:20][None]
    assert enc(segment, torch.tensor([20])).dtype == torch.float32  # training's forward stays float32
    enc.set_compute_dtype(torch.float32)
    assert torch.equal(enc.pool_spans(enc.utterance_states(utts), rows, starts, ends), want)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        enc.set_compute_dtype(torch.float16)


def test_compute_type_names_auto_follows_the_hardware_and_float32_only_encoders(monkeypatch):
    from rescorer.models import precision
    from rescorer.rescore import Rescorer
    from tests.test_rescore import StubLetters

    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="compute_type must be one of"):
        precision.resolve_compute_type("fp8", cpu)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert precision.resolve_compute_type("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2"}))
    assert precision.resolve_compute_type("auto", cpu) == torch.float32
    assert precision.resolve_compute_type("bfloat16", cpu) == torch.bfloat16  # asked for: given, if slow
    with pytest.raises(ValueError, match="float32 only"):
        Rescorer(_conv(), StubLetters(), device="cpu", compute_type="bfloat16")
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert Rescorer(_conv(), StubLetters(), device="cpu", compute_type="auto").compute_dtype == torch.float32
    pooled = StatePoolingEncoder(feature_dim=80, dim=16)
    assert Rescorer(pooled, StubLetters(), device="cpu", compute_type="auto").compute_dtype == torch.bfloat16
    assert pooled.compute_dtype == torch.bfloat16


@pytest.mark.lattice
@pytest.mark.parametrize("encoder", ["conv", "pool"])
def test_batched_scores_equal_the_per_lattice_awe_scores_and_name_a_nan_utterance(encoder):
    pytest.importorskip("k2")
    import numpy as np

    from rescorer.rescore import RescoreConfig, RescoreError

    words = WORDS
    r = _tiny_rescorer(encoder, RescoreConfig(unk_awe_score=-0.25))
    acoustic = r.acoustic
    rng = np.random.default_rng(1)
    lats = [_random_lattice(rng, f"u{i}", n, words) for i, n in enumerate((9, 23, 14))]
    feats = [torch.randn(4 * n + 3, 80) for n in (9, 23, 14)]
    batched = r.embedding_scores_batch(lats, feats)
    for lat, f, (_, awe, rec) in zip(lats, feats, batched):
        assert rec == []
        assert torch.allclose(awe, r.awe_scores(lat, f), atol=1e-5)  # the per-lattice path (matrix + gather)
        labels = lat.fsa.labels.long()
        assert torch.all(awe[labels == lat.words.get("<unk>")] == -0.25) and torch.all(awe[labels <= 0] == 0)
        assert awe[(labels > 0) & (labels != lat.words.get("<unk>"))].abs().max() > 0
    with torch.no_grad():
        next(acoustic.parameters()).fill_(float("nan"))
    with pytest.raises(RescoreError, match="utterance u0: non-finite embedding similarity"):
        r.embedding_scores_batch(lats, feats)
