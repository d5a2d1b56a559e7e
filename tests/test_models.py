"""Acoustic and letter-n-gram encoders: masking, cropping, determinism, stable hashing."""

import os
import subprocess
import sys
import time
import zlib

import pytest
import torch

from rescorer.models import AcousticWordEncoder, LetterNgramEncoder, center_crop, pad_segments
from rescorer.models.checkpoint import load_embedder, save_embedder
from rescorer.models.letters import ngram_bucket, select_bags, tokenize_words
from rescorer.text import NotAWordError, letter_ngrams
from synthetic_data import random_words

SMALL = dict(dim=32, channels=40, num_blocks=3)


def _segments(n=6, seed=0, lo=3, hi=60):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(int(torch.randint(lo, hi, (1,), generator=g)), 80, generator=g) for _ in range(n)]


def test_acoustic_output_is_unit_vectors():
    torch.manual_seed(0)
    enc = AcousticWordEncoder(**SMALL)
    feats, lengths = pad_segments(_segments())
    out = enc(feats, lengths)
    assert out.shape == (6, 32)
    assert torch.allclose(out.norm(dim=1), torch.ones(6), atol=1e-5)


@pytest.mark.parametrize("train_mode", [False, True])
def test_acoustic_padding_does_not_change_embeddings(train_mode):
    torch.manual_seed(0)
    enc = AcousticWordEncoder(**SMALL).train(train_mode)
    segs = _segments(seed=1)
    feats, lengths = pad_segments(segs)
    base = enc(feats, lengths)
    # pad with 37 more frames of large garbage: masked positions must not matter
    garbage = 100 * torch.randn(feats.shape[0], 37, 80)
    padded = torch.cat([feats, garbage], dim=1)
    for b, n in enumerate(lengths.tolist()):
        padded[b, n:] = 100 * torch.randn(padded.shape[1] - n, 80)
    assert torch.allclose(enc(padded, lengths), base, atol=1e-5)
    # each segment alone (no padding at all) gives the batch result
    alone = torch.cat([enc(s[None], torch.tensor([len(s)])) for s in segs])
    assert torch.allclose(alone, base, atol=1e-5)


def test_acoustic_padded_frames_get_no_gradient():
    torch.manual_seed(0)
    enc = AcousticWordEncoder(**SMALL)
    feats, lengths = pad_segments(_segments(seed=2))
    feats.requires_grad_(True)
    enc(feats, lengths).sum().backward()
    for b, n in enumerate(lengths.tolist()):
        assert float(feats.grad[b, n:].abs().sum()) == 0.0
        assert float(feats.grad[b, :n].abs().sum()) > 0.0


def test_acoustic_batch_gradients_equal_sum_of_single_segment_gradients():
    """Catches wrong backward kernels (torch 1.13 CPU GELU with non-contiguous grads)."""
    torch.manual_seed(0)
    enc = AcousticWordEncoder(**SMALL)
    segs = _segments(seed=7)
    target = torch.randn(len(segs), 32)
    feats, lengths = pad_segments(segs)
    batch_grads = torch.autograd.grad((enc(feats, lengths) * target).sum(), list(enc.parameters()))
    single = [torch.zeros_like(p) for p in enc.parameters()]
    for i, seg in enumerate(segs):
        out = enc(seg[None], torch.tensor([len(seg)]))
        for acc, g in zip(single, torch.autograd.grad((out * target[i]).sum(), list(enc.parameters()))):
            acc += g
    for b, s in zip(batch_grads, single):
        assert torch.isfinite(b).all()
        assert torch.allclose(b, s, rtol=1e-3, atol=1e-4)


def test_acoustic_center_crop_rule():
    torch.manual_seed(0)
    enc = AcousticWordEncoder(**SMALL, max_frames=50)
    long = torch.randn(71, 80)
    short = torch.randn(20, 80)
    middle = long[10:60]  # (71 - 50) // 2 = 10
    feats = torch.zeros(2, 71, 80)
    feats[0], feats[1, :20] = long, short
    out = enc(feats, torch.tensor([71, 20]))
    ref = enc(middle[None], torch.tensor([50]))
    assert torch.allclose(out[0], ref[0], atol=1e-5)
    assert torch.allclose(out[1], enc(short[None], torch.tensor([20]))[0], atol=1e-5)
    cropped, lens = center_crop(feats, torch.tensor([71, 20]), 50)
    assert cropped.shape == (2, 50, 80) and lens.tolist() == [50, 20]
    padded, plens = pad_segments([long, short], max_frames=50)
    assert plens.tolist() == [50, 20] and torch.equal(padded[0], middle)


def test_acoustic_is_deterministic_for_a_seed():
    feats, lengths = pad_segments(_segments(seed=3))
    outs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        outs.append(AcousticWordEncoder(**SMALL)(feats, lengths))
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])


def test_acoustic_rejects_bad_config_and_lengths():
    with pytest.raises(ValueError):
        AcousticWordEncoder(num_blocks=2, downsample_after=(3,))
    enc = AcousticWordEncoder(**SMALL)
    with pytest.raises(ValueError):
        enc(torch.zeros(1, 5, 80), torch.tensor([0]))
    with pytest.raises(ValueError):
        enc(torch.zeros(1, 5, 80), torch.tensor([6]))


def test_acoustic_encode_segments_keeps_order():
    torch.manual_seed(0)
    enc = AcousticWordEncoder(**SMALL).eval()
    segs = _segments(n=9, seed=4)
    out = enc.encode_segments(segs, batch_size=4)
    for i, s in enumerate(segs):
        assert torch.allclose(out[i], enc(s[None], torch.tensor([len(s)]))[0], atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_acoustic_cuda_matches_cpu():
    torch.manual_seed(0)
    enc = AcousticWordEncoder(**SMALL).eval()
    feats, lengths = pad_segments(_segments(seed=5))
    cpu = enc(feats, lengths)
    gpu = enc.cuda()(feats.cuda(), lengths.cuda()).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-3)


# ---------------------------------------------------------------- letters


def test_ngram_hash_is_crc32_and_pinned():
    assert ngram_bucket("<ca") == zlib.crc32(b"<ca") % 2**18
    # pinned values: changing the hash silently would invalidate every trained model
    assert [ngram_bucket(g) for g in ("a", "<ca", "afe>")] == [
        zlib.crc32(b"a") % 2**18,
        zlib.crc32(b"<ca") % 2**18,
        zlib.crc32(b"afe>") % 2**18,
    ]
    assert ngram_bucket("a") == 245315


_CROSS_PROCESS = """
import torch, sys
from rescorer.models import LetterNgramEncoder
torch.manual_seed(0)
enc = LetterNgramEncoder(dim=16, num_buckets=4096, ngram_dim=16, hidden=32)
ids, offsets = enc.tokenize(["cafe", "zyzzyva", "o'clock"])
with torch.no_grad():
    out = enc.encode_words(["cafe", "zyzzyva", "o'clock"])
torch.save({"ids": ids, "out": out}, sys.argv[1])
"""


def test_letter_encoder_identical_across_processes(tmp_path):
    results = []
    for hash_seed in ("1", "987654"):
        path = tmp_path / f"out{hash_seed}.pt"
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, OMP_NUM_THREADS="1")
        subprocess.run([sys.executable, "-c", _CROSS_PROCESS, str(path)], check=True, env=env, timeout=120)
        results.append(torch.load(path))
    torch.manual_seed(0)
    enc = LetterNgramEncoder(dim=16, num_buckets=4096, ngram_dim=16, hidden=32)
    with torch.no_grad():
        here = enc.encode_words(["cafe", "zyzzyva", "o'clock"])
    assert torch.equal(results[0]["ids"], results[1]["ids"])
    assert torch.equal(results[0]["out"], results[1]["out"])
    assert torch.allclose(results[0]["out"], here, atol=1e-6)


def test_letter_encoder_normalises_and_embeds_oov():
    torch.manual_seed(0)
    enc = LetterNgramEncoder(dim=16, num_buckets=4096, ngram_dim=16, hidden=32)
    with torch.no_grad():
        out = enc.encode_words(["Café", "CAFE", "cafe", "qxzvbw", "it\u2019s", "it's"])
    assert torch.allclose(out.norm(dim=1), torch.ones(6), atol=1e-5)
    assert torch.equal(out[0], out[2]) and torch.equal(out[1], out[2])
    assert torch.equal(out[4], out[5])
    assert not torch.allclose(out[2], out[3])
    with pytest.raises(NotAWordError):
        enc.encode_words(["1984"])
    ids, offsets = enc.tokenize(["cafe"])
    assert len(ids) == len(letter_ngrams("cafe", 1, 5)) == int(offsets[-1])


def test_letter_encoder_chunking_and_select_bags_agree():
    torch.manual_seed(0)
    enc = LetterNgramEncoder(dim=16, num_buckets=4096, ngram_dim=16, hidden=32)
    words = random_words(50, seed=9)
    with torch.no_grad():
        whole = enc.encode_words(words)
        chunked = enc.encode_words(words, chunk_size=7)
        ids, offsets = tokenize_words(words, 4096)
        pick = torch.tensor([3, 0, 49, 3])
        sub = enc(*select_bags(ids, offsets, pick))
    assert torch.allclose(whole, chunked, atol=1e-6)
    assert torch.allclose(sub, whole[pick], atol=1e-6)
    assert enc.encode_words([]).shape == (0, 16)


def test_letter_encoder_20k_words_default_size_is_fast():
    torch.manual_seed(0)
    enc = LetterNgramEncoder()  # default: 2^18 buckets, D = 256
    words = random_words(20000, seed=10, max_len=10)
    start = time.perf_counter()
    with torch.no_grad():
        out = enc.encode_words(words, chunk_size=8192)
    elapsed = time.perf_counter() - start
    assert out.shape == (20000, 256)
    assert elapsed < 15, f"encoding 20k words took {elapsed:.1f} s"


def test_checkpoint_roundtrip_reproduces_embeddings_exactly(tmp_path):
    torch.manual_seed(0)
    acoustic = AcousticWordEncoder(**SMALL)
    acoustic.set_feature_stats(torch.randn(80), torch.rand(80) + 0.5)
    letters = LetterNgramEncoder(dim=32, num_buckets=4096, ngram_dim=16, hidden=32)
    path = save_embedder(str(tmp_path / "emb.pt"), acoustic.eval(), letters.eval(), {"note": "test"})
    acoustic2, letters2, config = load_embedder(str(path))
    feats, lengths = pad_segments(_segments(seed=6))
    words = ["cafe", "zebra", "rescoring"]
    with torch.no_grad():
        assert torch.equal(acoustic(feats, lengths), acoustic2(feats, lengths))
        assert torch.equal(letters.encode_words(words), letters2.encode_words(words))
    assert torch.equal(acoustic2.feat_mean, acoustic.feat_mean) and config == {"note": "test"}
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left
