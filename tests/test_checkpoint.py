"""Checkpoints of both model families: model types recorded and chosen through the
registry, old embedder checkpoints, best/last lookup, refusal of foreign pickles."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rescorer.models import AcousticWordEncoder, LetterNgramEncoder
from rescorer.models.checkpoint import (
    ASR_FORMAT,
    EMBEDDER_FORMAT,
    CheckpointError,
    checkpoint_path,
    load_asr_model,
    load_checkpoint,
    load_embedder,
    save_asr_model,
    save_checkpoint,
    save_embedder,
)
from rescorer.models.ctc import CtcModel
from rescorer.models.interfaces import AcousticEncoder, SpellingEncoder
from rescorer.models.registry import ACOUSTIC_ENCODERS, ASR_MODELS, UnknownModelTypeError
from rescorer.training.train_embeddings import TrainConfig, build_encoders
from conftest import TINY_EMBEDDER, PlantedCode


def _small_pair():
    torch.manual_seed(0)
    acoustic = AcousticWordEncoder(dim=16, channels=24, num_blocks=2)
    acoustic.set_feature_stats(torch.randn(80), torch.rand(80) + 0.5)
    letters = LetterNgramEncoder(dim=16, num_buckets=1024, ngram_dim=8, hidden=16)
    return acoustic.eval(), letters.eval()


class MeanPoolEncoder(nn.Module):
    """A second acoustic encoder, for the tests only: mean of the frames, projected."""

    frame_shift = 0.01

    def __init__(self, num_mel_bins: int = 80, dim: int = 16, max_frames: int = 200, **_unused):
        super().__init__()
        self.config = dict(num_mel_bins=num_mel_bins, dim=dim, max_frames=max_frames)
        self.dim, self.feature_dim, self.max_frames = dim, num_mel_bins, max_frames
        self.register_buffer("feat_mean", torch.zeros(num_mel_bins))
        self.register_buffer("feat_std", torch.ones(num_mel_bins))
        self.proj = nn.Linear(num_mel_bins, dim)

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def set_feature_stats(self, mean, std):
        self.feat_mean.copy_(mean)
        self.feat_std.copy_(std)

    def forward(self, feats, lengths):
        mask = (torch.arange(feats.shape[1])[None, :] < lengths[:, None]).unsqueeze(-1)
        x = ((feats - self.feat_mean) / self.feat_std) * mask
        return F.normalize(self.proj(x.sum(1) / lengths[:, None]), dim=-1)

    @torch.no_grad()
    def encode_segments(self, segments, batch_size=256, device=None):
        return torch.cat([self(s[None].float(), torch.tensor([len(s)])) for s in segments])


@pytest.fixture
def private_acoustic_registry(monkeypatch):
    """Registrations made by a test stay in that test."""
    monkeypatch.setattr(ACOUSTIC_ENCODERS, "classes", dict(ACOUSTIC_ENCODERS.classes))
    return ACOUSTIC_ENCODERS


def test_embedder_checkpoint_records_both_model_types(tmp_path):
    acoustic, letters = _small_pair()
    save_embedder(tmp_path / "best.pt", acoustic, letters, {"note": 1})
    ckpt = torch.load(tmp_path / "best.pt")
    assert ckpt["format"] == EMBEDDER_FORMAT
    assert (ckpt["acoustic_type"], ckpt["spelling_type"]) == ("conv", "letter_ngram")
    a2, l2, config = load_embedder(tmp_path)
    assert type(a2) is AcousticWordEncoder and type(l2) is LetterNgramEncoder and config == {"note": 1}
    assert isinstance(a2, AcousticEncoder) and isinstance(l2, SpellingEncoder)
    assert (a2.feature_dim, a2.frame_shift, a2.max_frames) == (80, 0.01, 200)


def test_old_embedder_checkpoint_without_types_loads_as_conv_and_letter_ngram(tmp_path):
    acoustic, letters = _small_pair()
    state = {  # the layout written before the model types were recorded
        "format": EMBEDDER_FORMAT,
        "config": {"dim": 16},
        "acoustic_config": dict(acoustic.config),
        "letters_config": dict(letters.config),
        "acoustic": acoustic.state_dict(),
        "letters": letters.state_dict(),
    }
    torch.save(state, tmp_path / "old.pt")
    a2, l2, _ = load_embedder(tmp_path / "old.pt")
    assert type(a2) is AcousticWordEncoder and type(l2) is LetterNgramEncoder
    segs = [torch.randn(12, 80), torch.randn(30, 80)]
    assert torch.equal(a2.encode_segments(segs), acoustic.encode_segments(segs))
    with torch.no_grad():
        assert torch.equal(l2.encode_words(["cat", "zebra"]), letters.encode_words(["cat", "zebra"]))


def test_a_registered_encoder_is_built_by_training_and_chosen_by_the_loader(tmp_path, private_acoustic_registry):
    private_acoustic_registry.register("mean_pool")(MeanPoolEncoder)
    assert MeanPoolEncoder.model_type == "mean_pool"
    config = TrainConfig(train="-", dev="-", out="-", **{**TINY_EMBEDDER, "acoustic_encoder": "mean_pool"})
    acoustic, letters = build_encoders(config)
    assert type(acoustic) is MeanPoolEncoder and type(letters) is LetterNgramEncoder
    acoustic.set_feature_stats(torch.randn(80), torch.rand(80) + 0.5)
    save_embedder(tmp_path / "emb.pt", acoustic.eval(), letters.eval(), {})
    assert torch.load(tmp_path / "emb.pt")["acoustic_type"] == "mean_pool"
    loaded, _, _ = load_embedder(tmp_path / "emb.pt")
    assert type(loaded) is MeanPoolEncoder
    segs = [torch.randn(7, 80)]
    assert torch.equal(loaded.encode_segments(segs), acoustic.encode_segments(segs))


def test_unknown_or_incomplete_model_types_are_named(tmp_path, private_acoustic_registry):
    acoustic, letters = _small_pair()
    save_embedder(tmp_path / "emb.pt", acoustic, letters, {})
    ckpt = torch.load(tmp_path / "emb.pt")
    ckpt["acoustic_type"] = "whisper_tiny"
    torch.save(ckpt, tmp_path / "newer.pt")
    with pytest.raises(UnknownModelTypeError, match="'whisper_tiny'.*registered: conv"):
        load_embedder(tmp_path / "newer.pt")

    class NoEncode(nn.Module):
        @classmethod
        def from_config(cls, config):
            return cls()

        def set_feature_stats(self, mean, std):
            pass

    with pytest.raises(TypeError, match="encode_segments"):
        private_acoustic_registry.register("broken")(NoEncode)
    with pytest.raises(ValueError, match="already registered"):
        private_acoustic_registry.register("conv")(MeanPoolEncoder)
    assert "broken" not in private_acoustic_registry.names()


def test_best_falls_back_to_last_and_missing_is_named(tmp_path):
    model = CtcModel(**dict(d_model=16, num_layers=1, num_heads=2, ffn_dim=16, conv_kernel=3))
    with pytest.raises(FileNotFoundError, match="no model checkpoint at"):
        checkpoint_path(tmp_path)
    save_asr_model(tmp_path / "last.pt", model, {"epoch": 1})
    assert checkpoint_path(tmp_path) == tmp_path / "last.pt"
    save_asr_model(tmp_path / "best.pt", model, {"epoch": 2})
    assert checkpoint_path(tmp_path) == tmp_path / "best.pt"
    assert checkpoint_path(tmp_path, "last") == tmp_path / "last.pt"
    assert load_asr_model(tmp_path)[1] == {"epoch": 2} and load_asr_model(tmp_path, "last")[1] == {"epoch": 1}
    assert type(load_asr_model(tmp_path)[0]) is ASR_MODELS.get("ctc")
    with pytest.raises(ValueError, match="one of best, last, best_loss"):
        checkpoint_path(tmp_path, "newest")
    with pytest.raises(CheckpointError, match="not an embedder checkpoint"):
        load_embedder(tmp_path)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left


def test_a_checkpoint_holding_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "run").mkdir()
    torch.save({"format": EMBEDDER_FORMAT, "config": PlantedCode(marker)}, tmp_path / "run" / "best.pt")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_embedder(tmp_path / "run")
    # on torch 1.13 too: its weights-only loader refuses the file for a float or an object alike,
    # and the fallback must not be full unpickling
    torch.save({"format": ASR_FORMAT, "lr": 2e-3, "state": PlantedCode(marker)}, tmp_path / "run" / "last.pt")
    with pytest.raises(CheckpointError, match=r"last.pt is not a checkpoint file: .*mkdir.*refusing to unpickle"):
        load_asr_model(tmp_path / "run", "last")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_checkpoint(tmp_path / "run" / "last.pt", map_location=torch.device("cpu"))
    assert not marker.exists()
    # plain data (what this project writes, floats included) loads without unpickling objects
    save_checkpoint({"lr": 2e-3, "history": [{"loss": 0.5}], "w": torch.ones(2)}, tmp_path / "plain.pt")
    assert load_checkpoint(tmp_path / "plain.pt")["lr"] == 2e-3
