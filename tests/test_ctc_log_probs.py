"""The decoder's stored CTC log-probs (formats.ctc_log_probs): the file, and their reuse by the CTC methods."""

from __future__ import annotations

import pytest
import torch

from rescorer.decoding.ctc_scores import CtcPosteriors, CtcScoreError
from rescorer.formats.ctc_log_probs import CtcLogProbs, CtcLogProbsError, read_ctc_log_probs, write_ctc_log_probs
from rescorer.formats.tagged import UnsafeFileError
from rescorer.models.checkpoint import save_asr_model
from rescorer.models.ctc import CtcModel
from rescorer.tokens import TOKENS
from tests.test_formats import _RunsCode

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(d_model=16, num_layers=1, num_heads=2, ffn_dim=16, conv_kernel=3)


def _log_probs(frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(frames, len(TOKENS), generator=g), dim=-1)


def test_round_trip_keeps_every_value_and_what_made_them(tmp_path):
    lp = {"u2": _log_probs(7), "u1": _log_probs(3, seed=1)}
    write_ctc_log_probs(tmp_path / "lp.pt", CtcLogProbs(lp, list(TOKENS), 0.04, "ab" * 32))
    back = read_ctc_log_probs(tmp_path / "lp.pt")
    assert list(back.log_probs) == ["u2", "u1"] and back.frame_shift == 0.04 and back.model_sha256 == "ab" * 32
    assert all(torch.equal(back.log_probs[u], lp[u]) for u in lp)
    only = read_ctc_log_probs(tmp_path / "lp.pt", ["u1"])
    assert list(only.log_probs) == ["u1"]
    with pytest.raises(CtcLogProbsError, match="no log-probs for 1 utterance.*u9"):
        read_ctc_log_probs(tmp_path / "lp.pt", ["u1", "u9"])


def test_bad_values_and_crafted_files_are_refused_by_name(tmp_path):
    bad = _log_probs(4)
    bad[2, 3] = float("nan")
    with pytest.raises(CtcLogProbsError, match="u1 has non-finite"):
        write_ctc_log_probs(tmp_path / "nan.pt", CtcLogProbs({"u1": bad}, list(TOKENS), 0.04, "0" * 64))
    with pytest.raises(CtcLogProbsError, match=r"must be \[frames, 29\]"):
        write_ctc_log_probs(tmp_path / "w.pt", CtcLogProbs({"u1": _log_probs(4)[:, :5]}, list(TOKENS), 0.04, "0" * 64))
    assert not (tmp_path / "nan.pt").exists() and not (tmp_path / "w.pt").exists()
    marker = tmp_path / "ran"
    torch.save({"format": "rescorer.ctc_log_probs/1", "tensors": {}, "meta": _RunsCode(marker)}, str(tmp_path / "evil.pt"))
    with pytest.raises(UnsafeFileError, match="refusing to unpickle"):
        read_ctc_log_probs(tmp_path / "evil.pt")
    assert not marker.exists()
    # a file edited after writing: NaN inside is still caught on reading
    write_ctc_log_probs(tmp_path / "ok.pt", CtcLogProbs({"u1": _log_probs(4)}, list(TOKENS), 0.04, "0" * 64))
    obj = torch.load(str(tmp_path / "ok.pt"))
    obj["tensors"]["log_probs"][1, 1] = float("inf")
    torch.save(obj, str(tmp_path / "edited.pt"))
    with pytest.raises(CtcLogProbsError, match="non-finite"):
        read_ctc_log_probs(tmp_path / "edited.pt")


def _model_dir(path, seed):
    torch.manual_seed(seed)
    model = CtcModel(**TINY).eval()
    path.mkdir()
    save_asr_model(path / "best.pt", model)
    return path


def test_stored_log_probs_stand_in_for_the_forward_pass_of_that_model_only(tmp_path, monkeypatch):
    posteriors = CtcPosteriors.from_dir(_model_dir(tmp_path / "ctc", 0))
    g = torch.Generator().manual_seed(3)
    feats = {"u1": torch.randn(60, 80, generator=g), "u2": torch.randn(45, 80, generator=g)}
    computed = posteriors.reuse_or_compute(feats)
    assert posteriors.seconds > 0 and [computed[u].shape[0] for u in feats] == [posteriors.output_frames(60),
                                                                              posteriors.output_frames(45)]
    write_ctc_log_probs(tmp_path / "lp.pt", CtcLogProbs(computed, list(TOKENS), posteriors.frame_shift,
                                                        posteriors.model_sha256))
    stored = read_ctc_log_probs(tmp_path / "lp.pt")

    calls = []
    real = posteriors.batch_log_probs
    monkeypatch.setattr(posteriors, "batch_log_probs", lambda fs: calls.append(len(fs)) or real(fs))
    reused = posteriors.reuse_or_compute(feats, stored)
    assert calls == [] and all(torch.equal(reused[u], computed[u]) for u in feats)  # no forward pass at all
    # a file with one utterance: the model runs for the other only, results as computed
    write_ctc_log_probs(tmp_path / "one.pt", CtcLogProbs({"u2": computed["u2"]}, list(TOKENS), posteriors.frame_shift,
                                                         posteriors.model_sha256))
    part = posteriors.reuse_or_compute(feats, read_ctc_log_probs(tmp_path / "one.pt"))
    assert calls == [1] and list(part) == ["u1", "u2"]
    assert all(torch.allclose(part[u], computed[u], atol=1e-5) for u in feats)
    # log-probs of other audio (frame counts differ) are refused
    with pytest.raises(CtcScoreError, match="u1 has .* log-prob frames.*other audio"):
        posteriors.reuse_or_compute({"u1": feats["u1"][:40], "u2": feats["u2"]}, stored)
    # another checkpoint (retrained weights) refuses them, naming both digests
    other = CtcPosteriors.from_dir(_model_dir(tmp_path / "ctc2", 1))
    with pytest.raises(CtcLogProbsError, match="another CTC model"):
        other.reuse_or_compute(feats, stored)


def test_tune_reads_the_stored_file_or_stops_with_its_problem(tmp_path):
    from rescorer.stages import StageError
    from rescorer.stages.tune_ctc import _log_probs as tune_log_probs

    posteriors = CtcPosteriors.from_dir(_model_dir(tmp_path / "ctc", 0))
    feats = {"u1": torch.randn(60, 80)}
    lp = posteriors.reuse_or_compute(feats)
    write_ctc_log_probs(tmp_path / "lp.pt", CtcLogProbs(lp, list(TOKENS), posteriors.frame_shift, posteriors.model_sha256))
    out, forward = tune_log_probs(posteriors, feats, str(tmp_path / "lp.pt"))
    assert forward == 0 and torch.equal(out["u1"], lp["u1"])
    torch.save({"format": "rescorer.ctc_log_probs/1", "tensors": {}, "meta": _RunsCode(tmp_path / "ran")},
               str(tmp_path / "evil.pt"))
    with pytest.raises(StageError, match="evil.pt"):
        tune_log_probs(posteriors, feats, str(tmp_path / "evil.pt"))
    write_ctc_log_probs(tmp_path / "fast.pt", CtcLogProbs(lp, list(TOKENS), 0.02, posteriors.model_sha256))
    with pytest.raises(StageError, match="0.02 s per frame"):
        tune_log_probs(posteriors, feats, str(tmp_path / "fast.pt"))
