"""Word-segment data, batching, the ranking loss and the training entry point (CPU, tiny)."""

import json

import pytest
import torch

from rescorer.training.ranking import JointEmbeddingModel, joint_ranking_loss, mine_hard_negatives
from rescorer.models.checkpoint import load_embedder
from rescorer.training.train_embeddings import TrainConfig, evaluate, parse_args, train
from rescorer.formats.word_segments import load_word_segments, word_segments_from_dict
from rescorer.training.word_data import LengthBucketBatchSampler
from rescorer.models import AcousticWordEncoder, LetterNgramEncoder
from conftest import TINY_EMBEDDER, lhotse_or_k2_imported_by, run_torchrun
from synthetic_data import make_synthetic_word_segments, random_words, write_synthetic_word_segments

TINY = TINY_EMBEDDER


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("segments")
    train_words = random_words(120, seed=1)
    dev_words = random_words(30, seed=2, exclude=train_words)
    write_synthetic_word_segments(str(d / "train.pt"), train_words, segments_per_word=4, seed=1)
    write_synthetic_word_segments(str(d / "dev.pt"), dev_words, segments_per_word=3, seed=2)
    small = random_words(40, seed=3)
    write_synthetic_word_segments(str(d / "small.pt"), small, segments_per_word=4, seed=3)
    return d


# ---------------------------------------------------------------- data


def test_synthetic_file_roundtrip_and_batch(data_dir):
    ds = load_word_segments(str(data_dir / "train.pt"))
    assert len(ds) == 480 and len(ds.words) == 120 and ds.feats.dtype == torch.float16
    assert ds.words == sorted(ds.words)
    feats, lengths, word_ids = ds.batch([5, 0, 17])
    for row, i in enumerate([5, 0, 17]):
        n = int(lengths[row])
        assert torch.equal(feats[row, :n], ds.segment(i).float())
        assert float(feats[row, n:].abs().sum()) == 0.0
        assert int(word_ids[row]) == int(ds.word_ids[i])
    mean, std = ds.feature_stats()
    all_frames = ds.feats.double()
    assert torch.allclose(mean.double(), all_frames.mean(0), atol=1e-4)
    assert torch.allclose(std.double(), all_frames.std(0, unbiased=False), atol=1e-3)


def test_batch_center_crops_long_segments():
    data = make_synthetic_word_segments(["abcdefg"], segments_per_word=1, frames_per_letter=(5, 5))
    ds = word_segments_from_dict(data)
    feats, lengths, _ = ds.batch([0], max_frames=20)  # 35 frames -> frames 7..27
    assert lengths.tolist() == [20]
    assert torch.equal(feats[0], ds.segment(0)[7:27].float())


def test_invalid_files_are_rejected():
    good = make_synthetic_word_segments(["ab", "cd"], segments_per_word=2)
    with pytest.raises(ValueError, match="format"):
        word_segments_from_dict({**good, "format": "other/1"})
    with pytest.raises(ValueError, match="offsets"):
        word_segments_from_dict({**good, "offsets": good["offsets"][:-1]})
    with pytest.raises(ValueError, match="word_ids"):
        word_segments_from_dict({**good, "word_ids": good["word_ids"] + 5})


def test_sampler_covers_everything_once_and_shards_evenly():
    lengths = torch.randint(1, 200, (103,))
    single = LengthBucketBatchSampler(lengths, batch_size=8, seed=4, pool_batches=3)
    seen = sorted(i for b in single for i in b)
    assert seen == list(range(103)) and len(single) == 13
    # batches are length-sorted inside pools: little padding
    ranks = [LengthBucketBatchSampler(lengths, 8, seed=4, num_replicas=2, rank=r, pool_batches=3) for r in range(2)]
    shards = [list(s) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == len(ranks[0]) == 7
    assert {i for s in shards for b in s for i in b} == set(range(103))
    # same epoch -> same batches; next epoch -> another order
    again = LengthBucketBatchSampler(lengths, 8, seed=4, pool_batches=3)
    assert list(again) == single.batches()
    again.set_epoch(1)
    assert again.batches() != single.batches()


def test_sampler_state_resumes_mid_epoch():
    lengths = torch.randint(1, 50, (40,))
    s = LengthBucketBatchSampler(lengths, batch_size=4, seed=1)
    s.set_epoch(2)
    it = iter(s)
    first = [next(it) for _ in range(3)]
    state = s.state_dict()
    rest = list(it)
    t = LengthBucketBatchSampler(lengths, batch_size=4, seed=1)
    t.load_state_dict(state)
    assert list(t) == rest and first + rest == s.batches()


# ---------------------------------------------------------------- loss


def _reference_a2s(audio, spell, audio_words, spell_words, margin):
    total = 0.0
    for b in range(len(audio)):
        pos = [float(audio[b] @ spell[u]) for u in range(len(spell)) if spell_words[u] == audio_words[b]][0]
        hinges = [
            max(0.0, margin - pos + float(audio[b] @ spell[u]))
            for u in range(len(spell))
            if spell_words[u] != audio_words[b]
        ]
        active = [h for h in hinges if h > 0]
        total += sum(active) / max(1, len(active))
    return total / len(audio)


def test_ranking_loss_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    audio = torch.nn.functional.normalize(torch.randn(10, 8, generator=g), dim=1)
    spell = torch.nn.functional.normalize(torch.randn(7, 8, generator=g), dim=1)
    spell_words = torch.tensor([3, 9, 4, 1, 0, 8, 6])
    audio_words = torch.tensor([3, 3, 9, 4, 1, 0, 8, 6, 6, 6])  # duplicates of 3 and 6
    out = joint_ranking_loss(audio, spell, audio_words, spell_words, margin=0.4)
    assert float(out["audio_to_spelling"]) == pytest.approx(
        _reference_a2s(audio, spell, audio_words.tolist(), spell_words.tolist(), 0.4), abs=1e-6
    )
    assert float(out["spelling_to_audio"]) > 0


def test_same_word_segments_are_not_negatives():
    # word 0: two identical segments, spelling equal to them; word 1 orthogonal.
    e = torch.eye(4)
    audio = torch.stack([e[0], e[0], e[1]])
    spell = torch.stack([e[0], e[1]])
    out = joint_ranking_loss(audio, spell, torch.tensor([0, 0, 1]), torch.tensor([0, 1]), margin=0.5)
    assert float(out["audio_to_spelling"]) == 0.0
    assert float(out["spelling_to_audio"]) == 0.0  # would be > 0 if segment 1 were a negative for 0
    with pytest.raises(ValueError, match="missing"):
        joint_ranking_loss(audio, spell[:1], torch.tensor([0, 0, 1]), torch.tensor([0]))


def test_hard_negative_mining_excludes_the_true_word():
    pool = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.8, 0.3]]), dim=1)
    audio = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mined = mine_hard_negatives(audio, torch.tensor([10, 12]), pool, torch.tensor([10, 11, 12, 13]), k=2)
    assert mined.tolist() == [[11, 13], [13, 11]]
    assert mine_hard_negatives(audio, torch.tensor([10, 12]), pool, torch.tensor([10, 11, 12, 13]), k=9).shape == (2, 3)


def _tiny_joint_model(words, **kwargs):
    """A seeded 16-dimensional joint model with 3 hard negatives and the auxiliary loss."""
    torch.manual_seed(0)
    return JointEmbeddingModel(
        AcousticWordEncoder(dim=16, channels=24, num_blocks=2),
        LetterNgramEncoder(dim=16, num_buckets=1024, ngram_dim=16, hidden=32),
        words,
        hard_negatives=3,
        aux_weight=0.5,
        **kwargs,
    )


def test_joint_model_step_reaches_both_encoders_and_aux(data_dir):
    ds = load_word_segments(str(data_dir / "small.pt"))
    model = _tiny_joint_model(ds.words, mining_pool=10)
    feats, lengths, word_ids = ds.batch(list(range(12)))
    out = model(feats, lengths, word_ids, mining_seed=1)
    out["loss"].backward()
    assert set(out) >= {"loss", "audio_to_spelling", "spelling_to_audio", "word_classification"}
    assert out["num_candidates"] > len(torch.unique(word_ids))  # mined words joined the batch words
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.acoustic.stem.conv.weight.grad.abs().sum() > 0
    assert model.letters.ngrams.weight.grad.abs().sum() > 0
    again = model(feats, lengths, word_ids, mining_seed=1)
    assert float(again["loss"].detach()) == pytest.approx(float(out["loss"].detach()))


# ---------------------------------------------------------------- training runs


def test_training_raises_dev_precision_well_above_chance(data_dir, tmp_path):
    out = tmp_path / "exp"
    config = TrainConfig(
        train=str(data_dir / "train.pt"), dev=str(data_dir / "dev.pt"), out=str(out), epochs=8, **TINY
    )
    assert train(config) == out
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, 9))
    chance = 1 / 30
    best = max(r["dev_p@1"] for r in log)
    assert best >= 0.2, f"dev P@1 {best} (chance {chance:.3f})"
    assert log[-1]["dev_p@10"] >= 0.6  # chance 10/30
    assert log[-1]["loss"] < log[0]["loss"]
    assert all(r["segments_per_s"] > 0 for r in log)
    assert {p.name for p in out.iterdir()} == {"best.pt", "last.pt", "log.jsonl", "config.json"}
    # best.pt reproduces the logged dev P@1 exactly
    acoustic, letters, cfg = load_embedder(str(out))
    assert cfg["dim"] == 32 and not acoustic.training
    p = evaluate(acoustic, letters, load_word_segments(str(data_dir / "dev.pt")))
    assert p[1] == best
    # the feature normalisation travels with the model
    mean, _ = load_word_segments(str(data_dir / "train.pt")).feature_stats()
    assert torch.allclose(acoustic.feat_mean, mean)


def _states_equal(a, b):
    for key in ("acoustic", "letters"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    assert torch.equal(a["aux_classes"], b["aux_classes"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])


def test_resume_after_interruption_gives_identical_weights(data_dir, tmp_path):
    common = dict(
        TINY,
        train=str(data_dir / "small.pt"),
        dev=str(data_dir / "dev.pt"),
        epochs=3,
        hard_negatives=4,
        mining_pool=16,
        aux_weight=0.1,
    )
    full = train(TrainConfig(out=str(tmp_path / "full"), **common))
    part = tmp_path / "part"
    train(TrainConfig(out=str(part), stop_after_epoch=1, **common))
    assert torch.load(part / "last.pt")["epoch"] == 1
    with pytest.raises(ValueError, match="differs"):
        train(TrainConfig(out=str(part), resume=True, **{**common, "lr": 1e-3}))
    train(TrainConfig(out=str(part), resume=True, **common))
    a, b = torch.load(full / "last.pt"), torch.load(part / "last.pt")
    assert a["epoch"] == b["epoch"] == 3 and a["global_step"] == b["global_step"]
    _states_equal(a, b)
    assert [r["dev_p@1"] for r in a["history"]] == [r["dev_p@1"] for r in b["history"]]
    assert len((part / "log.jsonl").read_text().splitlines()) == 3


def test_cli_arguments_map_to_config():
    cfg = parse_args(
        ["--train", "t.pt", "--dev", "d.pt", "--out", "o", "--dim", "64", "--amp", "--hard-negatives", "3",
         "--aux-weight", "0.2", "--resume", "--no-progress", "--lr", "1e-3"]
    )
    assert (cfg.dim, cfg.amp, cfg.hard_negatives, cfg.aux_weight, cfg.resume, cfg.progress, cfg.lr) == (
        64, True, 3, 0.2, True, False, 1e-3
    )


def test_training_path_imports_neither_lhotse_nor_k2():
    bad = lhotse_or_k2_imported_by(
        "rescorer.training.train_embeddings", "rescorer.training.ranking", "rescorer.training.word_data",
        "rescorer.models", "rescorer.metrics",
    )  # fmt: skip
    assert bad == "", f"imported: {bad}"


def test_torchrun_two_processes_on_gloo(data_dir, tmp_path):
    out = tmp_path / "ddp"
    proc = run_torchrun([
        "-m", "rescorer.training.train_embeddings",
        "--train", str(data_dir / "small.pt"), "--dev", str(data_dir / "dev.pt"), "--out", str(out),
        "--epochs", "2", "--batch-size", "16", "--dim", "16", "--channels", "24", "--num-blocks", "2",
        "--num-buckets", "1024", "--ngram-dim", "16", "--letter-hidden", "32", "--hard-negatives", "2",
        "--device", "cpu", "--no-progress",
    ])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]  # rank 0 alone writes
    assert all(r["world_size"] == 2 for r in log)
    # 160 segments in batches of 16 = 10 batches, 5 per rank per epoch
    assert log[-1]["step"] == 10
    acoustic, letters, cfg = load_embedder(str(out), which="last")
    assert acoustic.dim == 16 and cfg["epochs"] == 2


def test_mixed_precision_forward_backward_is_finite(data_dir):
    """The autocast code paths (CUDA float16 in training), exercised with CPU bfloat16."""
    ds = load_word_segments(str(data_dir / "small.pt"))
    model = _tiny_joint_model(ds.words)
    feats, lengths, word_ids = ds.batch(list(range(16)))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = model(feats, lengths, word_ids)
        audio = model.acoustic(feats, lengths)
    out["loss"].backward()
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert torch.allclose(audio, model.acoustic(feats, lengths), atol=0.1)


def test_state_pooling_encoder_trains_on_a_20ms_frontend_and_records_it(tmp_path):
    """Segments of another frontend (20 ms, 48-dim, a Whisper-like spec): training builds the
    encoder for them, learns, records the spec; the rescorer then reads spans at 20 ms and
    refuses frames of another dimension."""
    from rescorer.formats.contract import FeatureSpec
    from rescorer.formats.word_segments import write_word_segments
    from rescorer.rescore import RescoreError, Rescorer

    spec = FeatureSpec("whisper-0000abcd-L3", 48, 0.02)
    words = random_words(30, seed=5)
    for name, seed, per in (("train", 1, 4), ("dev", 2, 3)):
        d = make_synthetic_word_segments(words, segments_per_word=per, seed=seed, num_mel_bins=48)
        write_word_segments(tmp_path / f"{name}.pt", {**d, "feature_spec": spec.to_json(), "frame_shift": 0.02})
    out = tmp_path / "exp"
    config = TrainConfig(train=str(tmp_path / "train.pt"), dev=str(tmp_path / "dev.pt"), out=str(out), epochs=8,
                         **{**TINY, "acoustic_encoder": "state_pooling", "channels": 64, "max_frames": 100})
    train(config)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert max(r["dev_p@1"] for r in log) >= 0.2  # chance 1/30
    acoustic, letters, _ = load_embedder(str(out))
    assert acoustic.model_type == "state_pooling" and acoustic.feature_spec == spec.to_json()
    assert acoustic.feature_dim == 48 and acoustic.frame_shift == 0.02
    rescorer = Rescorer(acoustic, letters, device="cpu")
    assert rescorer.feature_spec == spec and rescorer.frame_shift == 0.02
    with pytest.raises(RescoreError, match=r"features must be \[frames, 48\] \(whisper-0000abcd-L3 every 20 ms"):
        rescorer._check(type("L", (), {"utterance_id": "u1"})(), torch.zeros(50, 80))
    # segments of another frontend are refused as dev data of this run
    with pytest.raises(Exception, match="fbank"):
        write_synthetic_word_segments(str(tmp_path / "fbank_dev.pt"), words, segments_per_word=2, seed=3, num_mel_bins=48)
        train(TrainConfig(train=str(tmp_path / "train.pt"), dev=str(tmp_path / "fbank_dev.pt"), out=str(tmp_path / "x"),
                          epochs=1, **{**TINY, "acoustic_encoder": "state_pooling", "channels": 64}))


def test_acoustic_dropout_reaches_the_state_pooling_encoder_and_is_refused_elsewhere():
    """--acoustic-dropout sets the state-pooling encoder's dropout (its constructor config, so
    the checkpoint records it); out of [0, 1), or for the conv encoder (no dropout), it is an error."""
    from torch import nn

    from rescorer.formats.contract import FeatureSpec
    from rescorer.training.train_embeddings import build_encoders

    spec = FeatureSpec("whisper-0000abcd-L3", 48, 0.02)
    base = dict(train="", dev="", out="", acoustic_encoder="state_pooling", channels=32)
    acoustic, _ = build_encoders(TrainConfig(**base, acoustic_dropout=0.3), spec)
    rates = [m.p for m in acoustic.modules() if isinstance(m, nn.Dropout)]
    assert rates == [0.3, 0.3] and acoustic.config["dropout"] == 0.3
    default, _ = build_encoders(TrainConfig(**base), spec)
    assert default.config["dropout"] == 0.1  # what checkpoints before the option hold
    with pytest.raises(ValueError, match=r"acoustic_dropout must be in \[0, 1\)"):
        build_encoders(TrainConfig(**base, acoustic_dropout=1.0), spec)
    with pytest.raises(ValueError, match="state_pooling option"):
        build_encoders(TrainConfig(train="", dev="", out="", acoustic_dropout=0.3))


def test_epoch_average_is_the_running_mean_and_swaps_back():
    from rescorer.training.common import EpochAverage

    net = torch.nn.Linear(3, 2)
    seen = []
    avg = EpochAverage(net)
    with torch.no_grad():
        for k in range(4):
            net.weight.fill_(float(k * k))
            net.bias.fill_(-float(k))
            seen.append({n: p.clone() for n, p in net.named_parameters()})
            avg.add()
    assert avg.count == 4
    with avg.swapped_in():
        assert torch.allclose(net.weight, torch.full((2, 3), (0 + 1 + 4 + 9) / 4))
        assert torch.allclose(net.bias, torch.full((2,), -1.5))
    assert torch.equal(net.weight, seen[-1]["weight"]) and torch.equal(net.bias, seen[-1]["bias"])  # training's weights back
    other = EpochAverage(torch.nn.Linear(3, 2))
    other.load_state_dict(avg.state_dict())
    assert other.count == 4 and torch.equal(other.mean["weight"], avg.mean["weight"])
    with pytest.raises(RuntimeError, match="before any epoch"):
        with EpochAverage(net).swapped_in():
            pass


def test_average_weights_keeps_the_best_mean_of_epochs_and_resumes_identically(data_dir, tmp_path):
    common = dict(TINY, train=str(data_dir / "small.pt"), dev=str(data_dir / "dev.pt"), epochs=3, hard_negatives=4,
                  mining_pool=16, average_weights=True)
    full = tmp_path / "full"
    train(TrainConfig(out=str(full), **common))
    log = [json.loads(line) for line in (full / "log.jsonl").read_text().splitlines()]
    assert [r["averaged_epochs"] for r in log] == [1, 2, 3]
    assert log[0]["dev_p@1"] == log[0]["dev_p@1_epoch"]  # the mean of one epoch is that epoch
    # best.pt holds the mean of the first k epochs for the k of best dev P@1, and reproduces it
    best = torch.load(full / "best.pt")
    k = max(range(3), key=lambda i: (log[i]["dev_p@1"], -i))
    assert best["averaged_epochs"] == k + 1 and best["dev_p@1"] == log[k]["dev_p@1"]
    acoustic, letters, _ = load_embedder(str(full))
    assert evaluate(acoustic, letters, load_word_segments(str(data_dir / "dev.pt")))[1] == log[k]["dev_p@1"]
    # last.pt keeps the epoch's own weights (training goes on from them) and the running mean
    last = torch.load(full / "last.pt")
    mean = last["weights_average"]
    assert mean["count"] == 3
    name = next(n for n in last["acoustic"] if n.endswith("weight") and last["acoustic"][n].dim() > 1)
    assert not torch.equal(mean["mean"]["acoustic." + name], last["acoustic"][name])
    # interrupted after epoch 1 and resumed: the same mean, the same best.pt
    part = tmp_path / "part"
    train(TrainConfig(out=str(part), stop_after_epoch=1, **common))
    with pytest.raises(ValueError, match="differs"):
        train(TrainConfig(out=str(part), resume=True, **{**common, "average_weights": False}))
    train(TrainConfig(out=str(part), resume=True, **common))
    b = torch.load(part / "last.pt")["weights_average"]
    assert b["count"] == 3 and all(torch.equal(b["mean"][n], mean["mean"][n]) for n in mean["mean"])
    pb = torch.load(part / "best.pt")
    assert all(torch.equal(pb["acoustic"][n], best["acoustic"][n]) for n in best["acoustic"])
