"""The state-pooling word encoder: spans pooled from one utterance pass equal the same
frames encoded as isolated segments (training and rescoring compute one function)."""

import pytest
import torch

from rescorer.models.checkpoint import load_embedder, save_embedder
from rescorer.models.letters import LetterNgramEncoder
from rescorer.models.registry import ACOUSTIC_ENCODERS
from rescorer.models.state_pooling import StatePoolingEncoder, part_bounds


def test_parts_cover_the_span_and_are_never_empty():
    s, e = part_bounds(torch.tensor([0, 5, 7, 0]), torch.tensor([1, 7, 16, 3]))
    assert (e > s).all()
    assert s[:, 0].tolist() == [0, 5, 7, 0] and e[:, 0].tolist() == [1, 7, 16, 3]
    assert s[2, 1:].tolist() == [7, 10, 13] and e[2, 1:].tolist() == [10, 13, 16]


@pytest.mark.parametrize("parts", [1, 5])
def test_other_part_counts_pool_the_same_in_one_pass_and_as_segments(parts):
    s, e = part_bounds(torch.tensor([7, 0]), torch.tensor([17, 3]), parts)
    assert s.shape == (2, 1 + parts) and (e > s).all()
    assert e[0, 1:].tolist() == [7 + (i + 1) * 10 // parts for i in range(parts)]  # equal parts, end to end
    torch.manual_seed(0)
    enc = StatePoolingEncoder(feature_dim=16, dim=8, hidden=32, max_frames=10, parts=parts)
    assert enc.head[0].in_features == (1 + parts) * 32 and enc.config["parts"] == parts
    utt = torch.randn(30, 16)
    spans = torch.tensor([[0, 5], [3, 4], [10, 30]])
    isolated = enc.encode_segments([utt[0:5], utt[3:4], utt[10:30]])
    assert torch.allclose(enc.encode_spans(utt, spans), isolated, atol=1e-5)
    assert "parts" not in StatePoolingEncoder(feature_dim=16, dim=8, hidden=32).config  # thirds: as before
    with pytest.raises(ValueError, match="parts"):
        StatePoolingEncoder(feature_dim=16, parts=0)


def test_spans_of_one_utterance_pass_equal_isolated_segments():
    torch.manual_seed(0)
    enc = StatePoolingEncoder(feature_dim=16, dim=8, hidden=32, max_frames=10)
    enc.set_feature_stats(torch.randn(16), torch.rand(16) + 0.5)
    utt = torch.randn(40, 16)
    spans = torch.tensor([[0, 5], [3, 4], [10, 30], [38, 40], [5, 5], [35, 60]])
    pooled = enc.encode_spans(utt, spans)
    segments = [utt[0:5], utt[3:4], utt[10:30], utt[38:40], utt[5:6], utt[35:40]]
    isolated = enc.encode_segments(segments)
    assert pooled.shape == (6, 8) and torch.allclose(pooled, isolated, atol=1e-5)
    assert torch.allclose(pooled.norm(dim=1), torch.ones(6), atol=1e-5)
    # long spans keep their middle max_frames frames, as the conv encoder does
    assert torch.allclose(pooled[2], enc.encode_segments([utt[15:25]])[0], atol=1e-5)
    assert enc.training  # encoding leaves the training mode as it was
    with pytest.raises(ValueError, match="16-dim frames"):
        enc.encode_spans(torch.randn(5, 12), spans[:1])


def test_gradients_reach_the_frame_layers_in_training():
    enc = StatePoolingEncoder(feature_dim=8, dim=4, hidden=16)
    out = enc(torch.randn(3, 7, 8), torch.tensor([7, 2, 5]))
    out.sum().backward()
    assert enc.frame[0].weight.grad.abs().sum() > 0


def test_checkpoint_round_trip_picks_the_class(tmp_path):
    assert ACOUSTIC_ENCODERS.get("state_pooling") is StatePoolingEncoder
    enc = StatePoolingEncoder(feature_dim=8, dim=16, hidden=16, feature_spec={"name": "whisper-1a5afae0-L3", "dim": 8, "frame_shift": 0.02}).eval()
    letters = LetterNgramEncoder(dim=16, num_buckets=1024, ngram_dim=16, hidden=32).eval()
    save_embedder(tmp_path / "best.pt", enc, letters, {"note": "test"})
    acoustic, spelling, _ = load_embedder(tmp_path)
    assert isinstance(acoustic, StatePoolingEncoder) and acoustic.feature_spec["name"] == "whisper-1a5afae0-L3"
    x = torch.randn(30, 8)
    spans = torch.tensor([[0, 4], [4, 20]])
    assert torch.allclose(acoustic.encode_spans(x, spans), enc.encode_spans(x, spans))
    # a part count other than thirds is recorded and rebuilt
    enc5 = StatePoolingEncoder(feature_dim=8, dim=16, hidden=16, parts=5).eval()
    save_embedder(tmp_path / "five" / "best.pt", enc5, letters, {"note": "test"})
    acoustic5, _, _ = load_embedder(tmp_path / "five")
    assert acoustic5.parts == 5 and torch.allclose(acoustic5.encode_spans(x, spans), enc5.encode_spans(x, spans))
