"""CTC and joint CTC/attention ASR models: interface, padding invariance, beam search, scoring."""

import pytest
import torch

from rescorer.models.attention import SOS_EOS, AttentionModel
from rescorer.models.ctc import ENCODER_PRESETS, CtcModel, ctc_greedy_decode, subsampled_lengths
from rescorer.tokens import TOKENS, words_to_token_ids
from rescorer.models.checkpoint import load_asr_model, save_asr_model

TINY = dict(ENCODER_PRESETS["tiny"])


pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(lengths, seed=0, extra=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths, dtype=torch.long)
    feats = torch.randn(len(lengths), max(lengths) + extra, 80, generator=g)
    return feats, lens


def _models(seed=0):
    torch.manual_seed(seed)
    ctc = CtcModel(**TINY).eval()
    torch.manual_seed(seed)
    att = AttentionModel(decoder_layers=2, decoder_ffn_dim=64, **TINY).eval()
    for m in (ctc, att):
        m.set_feature_stats(torch.full((80,), 0.5), torch.full((80,), 2.0))
    return ctc, att


@pytest.mark.parametrize("subsampling", ["conv1d", "conv2d"])
def test_ctc_interface_shapes_and_lengths(subsampling):
    model = CtcModel(**{**TINY, "subsampling": subsampling}).eval()
    assert model.subsampling_factor == 4 and len(TOKENS) == 29
    feats, lens = _inputs([50, 7, 33])
    log_probs, out_lens = model(feats, lens)
    assert log_probs.shape == (3, subsampled_lengths(torch.tensor(50)).item(), 29)
    assert log_probs.dtype == torch.float32
    assert out_lens.tolist() == [((n - 1) // 2 - 1) // 2 for n in (50, 7, 33)] == [11, 1, 7]
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(3, log_probs.shape[1]), atol=1e-5)
    with pytest.raises(ValueError, match="at least 7 frames"):
        model(*_inputs([6]))
    with pytest.raises(ValueError, match="80"):
        model(torch.zeros(1, 20, 40), torch.tensor([20]))


def test_x2_subsampling_for_20ms_frontends():
    """A 20 ms frontend (Whisper states) subsampled x2 gives the 40 ms frames of x4 over fbank."""
    model = CtcModel(**{**TINY, "num_mel_bins": 384, "subsampling": "conv1d_x2"}).eval()
    assert model.subsampling_factor == 2
    feats = torch.randn(3, 25, 384)
    log_probs, out_lens = model(feats, torch.tensor([25, 3, 12]))
    assert out_lens.tolist() == [12, 1, 5] and log_probs.shape == (3, 12, 29)
    with pytest.raises(ValueError, match="at least 3 frames"):
        model(torch.randn(1, 2, 384), torch.tensor([2]))
    with pytest.raises(ValueError, match="subsampling must be one of"):
        CtcModel(**{**TINY, "subsampling": "conv3d"})


@pytest.mark.parametrize("subsampling", ["conv1d", "conv2d", "conv1d_x2"])
def test_padding_does_not_change_outputs(subsampling):
    torch.manual_seed(0)
    model = CtcModel(**{**TINY, "num_layers": 2, "subsampling": subsampling}).eval()
    feats, lens = _inputs([41, 90], seed=1, extra=37)
    feats[0, 41:] = 1e3  # garbage in the padding
    alone, alone_lens = model(feats[:1, :41], lens[:1])
    batched, batched_lens = model(feats, lens)
    n = int(alone_lens[0])
    assert int(batched_lens[0]) == n
    assert torch.allclose(batched[0, :n], alone[0, :n], atol=1e-4)


def test_attention_model_forward_matches_ctc_interface_and_encode():
    _, att = _models()
    feats, lens = _inputs([60, 30])
    log_probs, out_lens = att(feats, lens)
    enc, enc_lens = att.encode(feats, lens)
    assert log_probs.shape == (2, 14, 29) and enc.shape == (2, 14, TINY["d_model"])
    assert torch.equal(out_lens, enc_lens) and out_lens.tolist() == [14, 6]
    assert att.subsampling_factor == 4 and att.sos_id == att.eos_id == SOS_EOS == 29


def test_beam_search_is_sorted_and_agrees_with_score_token_sequences():
    _, att = _models(seed=3)
    feats, lens = _inputs([80, 45, 60], seed=2)
    results = att.beam_search(feats, lens, beam=4, max_len_ratio=0.5)
    enc, enc_lens = att.encode(feats, lens)
    assert len(results) == 3
    for b, nbest in enumerate(results):
        assert 1 <= len(nbest) <= 4
        scores = [s for _, s in nbest]
        assert scores == sorted(scores, reverse=True)
        seqs = [h for h, _ in nbest]
        assert len({tuple(s) for s in seqs}) == len(seqs)
        max_len = max(1, int(0.5 * int(enc_lens[b])))
        assert all(len(s) <= max_len and all(0 <= t < 29 for t in s) for s in seqs)
        # one utterance, all hypotheses
        rescored = att.score_token_sequences(enc[b, : enc_lens[b]], seqs)
        assert torch.allclose(rescored, torch.tensor(scores), atol=1e-4), (rescored, scores)
        # batched form: row i of encoder_out for sequence i (padded encoder output + lengths)
        rows = enc[b : b + 1].expand(len(seqs), -1, -1)
        rescored2 = att.score_token_sequences(rows, seqs, enc_lens=enc_lens[b].repeat(len(seqs)))
        assert torch.allclose(rescored2, rescored, atol=1e-4)
    # batched search gives each utterance what it gets alone
    alone = att.beam_search(feats[1:2, :45], lens[1:2], beam=4, max_len_ratio=0.5)
    assert [h for h, _ in alone[0]] == [h for h, _ in results[1]]
    assert [s for _, s in alone[0]] == pytest.approx([s for _, s in results[1]], abs=1e-4)


def test_score_token_sequences_is_a_proper_log_likelihood():
    _, att = _models(seed=4)
    feats, lens = _inputs([40])
    enc, _ = att.encode(feats, lens)
    seqs = [words_to_token_ids(["ab"]), words_to_token_ids(["ab", "c"]), []]
    scores = att.score_token_sequences(enc[0], seqs).detach()
    assert scores.shape == (3,) and bool((scores < 0).all())
    # the empty sequence scores log P(eos | sos)
    logp = att.decoder_log_probs(enc, torch.tensor([enc.shape[1]]), torch.tensor([[SOS_EOS]])).detach()
    assert float(scores[2]) == pytest.approx(float(logp[0, 0, SOS_EOS]), abs=1e-5)
    assert att.score_token_sequences(enc[0], []).shape == (0,)


def test_save_load_reproduces_outputs(tmp_path):
    ctc, att = _models(seed=5)
    feats, lens = _inputs([30, 55], seed=6)
    for model in (ctc, att):
        path = save_asr_model(tmp_path / f"{model.model_type}.pt", model, {"note": "x"})
        loaded, cfg = load_asr_model(path)
        assert cfg == {"note": "x"} and not loaded.training and type(loaded) is type(model)
        a, la = model(feats, lens)
        b, lb = loaded(feats, lens)
        assert torch.equal(la, lb) and torch.allclose(a, b, atol=0, rtol=0)
        assert torch.equal(loaded.encoder.feat_std, torch.full((80,), 2.0))
    with pytest.raises(ValueError, match="not an ASR checkpoint"):
        torch.save({"format": "other"}, tmp_path / "bad.pt")
        load_asr_model(tmp_path / "bad.pt")


def test_ctc_greedy_decode_collapses():
    lp = torch.full((1, 6, 29), -10.0)
    for t, tok in enumerate([5, 5, 0, 5, 1, 0]):
        lp[0, t, tok] = 0.0
    assert ctc_greedy_decode(lp, torch.tensor([6])) == [[5, 5, 1]]
    assert ctc_greedy_decode(lp, torch.tensor([2])) == [[5]]


def test_mixed_precision_forward_backward_is_finite():
    """The autocast code paths (CUDA float16 in training), exercised with CPU bfloat16."""
    torch.manual_seed(0)
    att = AttentionModel(decoder_layers=1, decoder_ffn_dim=32, **TINY)
    feats, lens = _inputs([50, 40])
    seqs = [words_to_token_ids(["hi", "there"]), words_to_token_ids(["ok"])]
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = att.joint_loss(feats, lens, seqs)
    out["loss"].backward()
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    assert all(torch.isfinite(p.grad).all() for p in att.parameters() if p.grad is not None)


def test_joint_ctc_attention_search_follows_the_ctc_head_and_the_audio_length():
    """With ctc_weight 1 the search is a CTC prefix beam search: its best hypothesis scores
    the CTC log-likelihood, and it never ends before the frames could emit it."""
    _, att = _models(seed=5)
    feats, lens = _inputs([64, 40], seed=6)
    enc, enc_lens = att.encode(feats, lens)
    lp = att.ctc_log_probs(enc)
    for w in (0.3, 1.0):
        results = att.beam_search(feats, lens, beam=4, ctc_weight=w)
        assert len(results) == 2
        for b, nbest in enumerate(results):
            scores = [s for _, s in nbest]
            assert scores == sorted(scores, reverse=True)
            for seq, s in nbest:
                nll = torch.nn.functional.ctc_loss(
                    lp[b, : int(enc_lens[b])][:, None], torch.tensor([seq or [1]])[:, : len(seq)],
                    enc_lens[b : b + 1], torch.tensor([len(seq)]), reduction="sum",
                )
                att_score = float(att.score_token_sequences(enc[b, : enc_lens[b]], [seq])[0])
                assert s == pytest.approx((1 - w) * att_score - w * float(nll), abs=1e-3), (w, b, seq)
    # ctc_weight 0 is the attention decoder's own search
    plain = att.beam_search(feats, lens, beam=4)
    assert plain == att.beam_search(feats, lens, beam=4, ctc_weight=0.0)
    with pytest.raises(ValueError, match="ctc_weight"):
        att.beam_search(feats, lens, ctc_weight=1.5)
