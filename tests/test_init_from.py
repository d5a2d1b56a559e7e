"""`train embeddings --init-from`: pretrain, then fine-tune from those weights (CPU, tiny)."""

import json

import pytest
import torch

from conftest import TINY_EMBEDDER as TINY
from rescorer.formats.contract import FeatureSpec, FeatureSpecError
from rescorer.formats.word_segments import write_word_segments
from rescorer.models.checkpoint import CheckpointError, load_checkpoint, load_embedder
from rescorer.training.train_embeddings import TrainConfig, parse_args, train
from synthetic_data import make_synthetic_word_segments, random_words, write_synthetic_word_segments

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A run pretrained on 120 words (letter sounds shared by all words), and a fine-tuning
    set of 40 other words and a dev set of 30 words seen by neither."""
    d = tmp_path_factory.mktemp("init_from")
    pre_words = random_words(120, seed=1)
    fine_words = random_words(40, seed=3, exclude=pre_words)
    dev_words = random_words(30, seed=2, exclude=pre_words + fine_words)
    write_synthetic_word_segments(str(d / "pre.pt"), pre_words, segments_per_word=4, seed=1)
    write_synthetic_word_segments(str(d / "fine.pt"), fine_words, segments_per_word=4, seed=3)
    write_synthetic_word_segments(str(d / "dev.pt"), dev_words, segments_per_word=3, seed=2)
    train(TrainConfig(train=str(d / "pre.pt"), dev=str(d / "dev.pt"), out=str(d / "pre"), epochs=8, **TINY))
    return d


def test_init_from_loads_both_encoders_and_keeps_pretrained_spellings(pretrained, tmp_path):
    d = pretrained
    out = tmp_path / "fine"
    # lr 0: the fine-tuning run changes no weight, so what it saves is what it loaded
    train(TrainConfig(train=str(d / "fine.pt"), dev=str(d / "dev.pt"), out=str(out), epochs=1, init_from=str(d / "pre"),
                      **{**TINY, "lr": 0.0}))
    pre = load_checkpoint(d / "pre" / "best.pt")
    fine = load_checkpoint(out / "last.pt")
    for part in ("acoustic", "letters"):
        for name, value in pre[part].items():
            if name in ("feat_mean", "feat_std"):
                continue  # the input normalisation is the fine-tuning split's own
            assert torch.equal(fine[part][name], value), f"{part}.{name} not loaded"
    assert not torch.equal(fine["acoustic"]["feat_mean"], pre["acoustic"]["feat_mean"])
    # the pretrained spellings' n-gram rows survive the zeroing of untrained rows
    assert fine["init_vocabulary"] == sorted(pre["train_vocabulary"])
    assert set(fine["train_vocabulary"]).isdisjoint(fine["init_vocabulary"])
    assert fine["config"]["init_from"] == str(d / "pre")
    # a run initialised from the fine-tuned one carries both vocabularies on
    out2 = tmp_path / "fine2"
    train(TrainConfig(train=str(d / "fine.pt"), dev=str(d / "dev.pt"), out=str(out2), epochs=1, init_from=str(out),
                      **{**TINY, "lr": 0.0}))
    again = load_checkpoint(out2 / "last.pt")
    assert again["init_vocabulary"] == sorted(set(pre["train_vocabulary"]) | set(fine["train_vocabulary"]))


def test_pretrained_start_beats_training_from_scratch_on_unseen_words(pretrained, tmp_path):
    d = pretrained
    common = dict(train=str(d / "fine.pt"), dev=str(d / "dev.pt"), epochs=2, **TINY)
    train(TrainConfig(out=str(tmp_path / "scratch"), **common))
    train(TrainConfig(out=str(tmp_path / "tuned"), init_from=str(d / "pre"), **common))

    def best(run):
        return max(json.loads(line)["dev_p@1"] for line in (run / "log.jsonl").read_text().splitlines())

    assert best(tmp_path / "tuned") >= best(tmp_path / "scratch") + 0.1


def test_init_from_refuses_another_architecture_or_frontend(pretrained, tmp_path):
    d = pretrained
    common = dict(train=str(d / "fine.pt"), dev=str(d / "dev.pt"), epochs=1, init_from=str(d / "pre"))
    with pytest.raises(CheckpointError, match=r"acoustic encoder differs in channels \(40 there, 48 here\)"):
        train(TrainConfig(out=str(tmp_path / "a"), **{**common, **TINY, "channels": 48}))
    with pytest.raises(CheckpointError, match=r"spelling encoder differs in num_buckets"):
        train(TrainConfig(out=str(tmp_path / "b"), **{**common, **TINY, "num_buckets": 2048}))
    with pytest.raises(CheckpointError, match=r"acoustic encoder: 'conv' there, 'state_pooling' here"):
        train(TrainConfig(out=str(tmp_path / "c"), **{**common, **TINY, "acoustic_encoder": "state_pooling"}))
    # segments of another frontend (48-dim states every 20 ms): the feature spec differs
    spec = FeatureSpec("whisper-0000abcd-L3", 48, 0.02)
    words = random_words(20, seed=7)
    for name in ("t", "v"):
        seg = make_synthetic_word_segments(words, segments_per_word=2, seed=4, num_mel_bins=48)
        write_word_segments(tmp_path / f"{name}.pt", {**seg, "feature_spec": spec.to_json(), "frame_shift": 0.02})
    with pytest.raises(FeatureSpecError, match=r"t.pt: 'whisper-0000abcd-L3' features, expected 'fbank'; 48-dim frames"):
        train(TrainConfig(train=str(tmp_path / "t.pt"), dev=str(tmp_path / "v.pt"), out=str(tmp_path / "d"), epochs=1,
                          init_from=str(d / "pre"), **TINY))
    with pytest.raises(FileNotFoundError, match="no embedder checkpoint"):
        train(TrainConfig(out=str(tmp_path / "e"), **{**common, **TINY, "init_from": str(tmp_path / "none")}))
    assert not (tmp_path / "a" / "last.pt").exists()


def test_fine_tuning_on_stacked_layers_reads_the_layers_the_initial_model_knows(tmp_path):
    l3 = FeatureSpec("whisper-0000abcd-L3", 48, 0.02)
    l34 = FeatureSpec("whisper-0000abcd-L3-4", 96, 0.02)
    words = random_words(20, seed=7)
    for name, spec, seed in (("pre", l3, 4), ("dev3", l3, 5), ("fine", l34, 6), ("dev34", l34, 5)):
        seg = make_synthetic_word_segments(words, segments_per_word=2, seed=seed, num_mel_bins=48)
        if spec is l34:  # layer 3 as pretrained, then a layer 4 of noise
            seg["feats"] = torch.cat([seg["feats"], torch.randn_like(seg["feats"].float()).half()], 1)
        write_word_segments(tmp_path / f"{name}.pt", {**seg, "feature_spec": spec.to_json(), "frame_shift": 0.02})
    cfg = {**TINY, "acoustic_encoder": "state_pooling"}
    train(TrainConfig(train=str(tmp_path / "pre.pt"), dev=str(tmp_path / "dev3.pt"), out=str(tmp_path / "pre"), epochs=1, **cfg))
    train(TrainConfig(train=str(tmp_path / "fine.pt"), dev=str(tmp_path / "dev34.pt"), out=str(tmp_path / "fine"), epochs=1,
                      init_from=str(tmp_path / "pre"), **cfg))
    acoustic, _, _ = load_embedder(str(tmp_path / "fine"))
    assert FeatureSpec.from_json(acoustic.feature_spec) == l3 and acoustic.feature_dim == 48
    # from scratch, the same stacked file trains a model of both layers, or of the layers asked for
    train(TrainConfig(train=str(tmp_path / "fine.pt"), dev=str(tmp_path / "dev34.pt"), out=str(tmp_path / "both"), epochs=1,
                      **cfg))
    assert load_embedder(str(tmp_path / "both"))[0].feature_dim == 96
    train(TrainConfig(train=str(tmp_path / "fine.pt"), dev=str(tmp_path / "dev34.pt"), out=str(tmp_path / "l4"), epochs=1,
                      input_layers="4", **cfg))
    l4 = load_embedder(str(tmp_path / "l4"))[0]
    assert FeatureSpec.from_json(l4.feature_spec) == FeatureSpec("whisper-0000abcd-L4", 48, 0.02)
    with pytest.raises(FeatureSpecError, match=r"layers \[2\] are not a subset"):
        train(TrainConfig(train=str(tmp_path / "fine.pt"), dev=str(tmp_path / "dev34.pt"), out=str(tmp_path / "l2"),
                          epochs=1, input_layers="2", **cfg))


def test_init_from_is_a_command_line_option():
    cfg = parse_args(["--train", "t.pt", "--dev", "d.pt", "--out", "o", "--init-from", "exp/pre"])
    assert cfg.init_from == "exp/pre"
    assert parse_args(["--train", "t.pt", "--dev", "d.pt", "--out", "o"]).init_from is None


@pytest.mark.parametrize("sparse", [False, True])
def test_spelling_lr_scale_slows_or_freezes_the_spelling_encoder(pretrained, tmp_path, sparse):
    """Fine-tuning with --spelling-lr-scale 0 leaves every spelling weight as loaded while the
    acoustic side trains; a scale in (0, 1) moves the spelling side less than scale 1 does."""
    d = pretrained
    common = dict(train=str(d / "fine.pt"), dev=str(d / "dev.pt"), epochs=1, init_from=str(d / "pre"),
                  **{**TINY, "sparse_ngrams": sparse, "zero_untrained_ngrams": False})
    pre = load_checkpoint(d / "pre" / "best.pt")

    def moved(run):
        ck = load_checkpoint(run / "last.pt")
        return {part: sum(float((ck[part][k].float() - v.float()).abs().sum()) for k, v in pre[part].items()
                          if k not in ("feat_mean", "feat_std")) for part in ("acoustic", "letters")}

    for scale in (0.0, 0.1, 1.0):
        train(TrainConfig(out=str(tmp_path / f"s{scale}"), spelling_lr_scale=scale, **common))
    frozen, slow, full = (moved(tmp_path / f"s{s}") for s in (0.0, 0.1, 1.0))
    assert frozen["letters"] == 0.0 and frozen["acoustic"] > 0
    assert 0 < slow["letters"] < full["letters"]
    with pytest.raises(ValueError, match="give --init-from"):
        train(TrainConfig(out=str(tmp_path / "x"), spelling_lr_scale=0.0, **{k: v for k, v in common.items() if k != "init_from"}))
    with pytest.raises(ValueError, match=">= 0"):
        train(TrainConfig(out=str(tmp_path / "y"), spelling_lr_scale=-1.0, **common))
