"""benchmarks/rescore_cost.py: the decoder that made the lattices is timed in the same run,
interleaved with the rescoring variants, and the ratio divides by that figure; the
decoder's metrics.json figure stays beside it, and is the marked fallback without a model.

A tiny recipe: a random tiny CTC model (exp/ctc) decoded with k2 through `rescorer decode`
into exp/decode_dev_ctc (word lattices and metrics.json, with non-default beams), and an
untrained tiny embedder (exp/embeddings)."""

import json
import sys

import pytest
import torch

from conftest import REPO, needs_k2

pytestmark = [needs_k2, pytest.mark.usefixtures("one_thread")]

LM_TEXT = [s.split() for s in [
    "the cat sat", "the dog sat on the mat", "a cat ran", "the cat ran on the mat", "a dog sat", "cat sat",
]]
DECODE_BEAMS = ["--search-beam", "12", "--output-beam", "5", "--max-active-states", "2000"]


def _utterances(path, n, seed, speakers):
    from rescorer.formats.contract import FBANK
    from rescorer.formats.utterances import UtteranceFeatures, write_utterance_features

    g = torch.Generator().manual_seed(seed)
    lengths = [60 + 12 * i for i in range(n)]
    feats = torch.randn(sum(lengths), 80, generator=g)
    offsets = torch.tensor([0] + lengths).cumsum(0)
    texts = [" ".join(LM_TEXT[i % len(LM_TEXT)]) for i in range(n)]
    ids = [f"utt{i:02d}" for i in range(n)]
    write_utterance_features(path, UtteranceFeatures(feats, offsets, texts, ids, [speakers[i % len(speakers)] for i in range(n)], FBANK))


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    from rescorer.decoding import decode as D
    from rescorer.decoding.graphs import build_lang_dir
    from rescorer.models import AcousticWordEncoder, LetterNgramEncoder
    from rescorer.models.checkpoint import save_asr_model, save_embedder
    from rescorer.models.ctc import ENCODER_PRESETS, CtcModel

    root = tmp_path_factory.mktemp("recipe")
    exp = root / "exp"
    build_lang_dir(LM_TEXT, exp / "lang", order=3, source="test")
    torch.manual_seed(0)
    ctc = CtcModel(**ENCODER_PRESETS["tiny"]).eval()
    ctc.set_feature_stats(torch.zeros(80), torch.ones(80))
    save_asr_model(exp / "ctc" / "best.pt", ctc)
    (exp / "asr_data").mkdir(parents=True)
    _utterances(exp / "asr_data" / "dev.pt", 6, seed=1, speakers=["s1", "s2", "s3", "s4"])
    _utterances(exp / "asr_data" / "train.pt", 4, seed=2, speakers=["t1"])
    rc = D.main(["--model-dir", str(exp / "ctc"), "--data", str(exp / "asr_data" / "dev.pt"), "--lang-dir",
                 str(exp / "lang"), "--out", str(exp / "decode_dev_ctc"), "--methods", "hlg_1best", "--word-lattices",
                 "--train-data", str(exp / "asr_data" / "train.pt")] + DECODE_BEAMS)
    assert rc == 0
    acoustic = AcousticWordEncoder(num_mel_bins=80, dim=16, channels=16, num_blocks=2, max_frames=100).eval()
    acoustic.set_feature_stats(torch.zeros(80), torch.ones(80))
    letters = LetterNgramEncoder(dim=16, num_buckets=1024, ngram_dim=16, hidden=32).eval()
    save_embedder(exp / "embeddings" / "best.pt", acoustic, letters)
    return root


def _bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import rescore_cost

    return rescore_cost


def _args(root, out, *extra):
    return ["--workdir", str(root), "--corpus", "toy", "--lattice-source", "ctc", "--cross-validate",
            "--variant", "one_pass=exp/embeddings:one_pass", "--variant", "isolated=exp/embeddings:isolated",
            "--dev-lattices", "exp/decode_dev_ctc/word_lattices.pt", "--dev-features", "exp/asr_data/dev.pt",
            "--train-data", "exp/asr_data/train.pt", "--awe-scales", "0,1", "--lm-scales", "1", "--wips", "0",
            "--out", str(out), *extra]


def test_the_decoder_is_timed_in_the_run_between_the_variants_and_divides_the_rescoring_time(recipe, tmp_path, monkeypatch):
    from rescorer.decoding.timed_decode import LatticeDecoder

    bench = _bench()
    calls = []
    real_decode, real_variant = LatticeDecoder.decode, bench.run_variant

    def decode(self, ids, out_dir):
        calls.append("decode")
        return real_decode(self, ids, out_dir)

    def variant(label, *a, **k):
        calls.append(label)
        return real_variant(label, *a, **k)

    monkeypatch.setattr(LatticeDecoder, "decode", decode)
    monkeypatch.setattr(bench, "run_variant", variant)
    monkeypatch.chdir(tmp_path)  # main changes to --workdir
    out = tmp_path / "rescore_cost.json"
    bench.main(_args(recipe, out, "--decode-metrics", "exp/decode_dev_ctc/metrics.json",
                     "--decode-model-dir", "exp/ctc", "--decode-lang-dir", "exp/lang"))
    assert calls == ["decode", "one_pass", "isolated", "decode"]

    entry = json.loads(out.read_text())["runs"]["toy/ctc"]
    dec = entry["decode"]
    assert dec["source"] == "measured in this run" and dec["schedule"] == "decode, one_pass, isolated, decode"
    # the beams the decode run recorded, not the decoder's defaults
    assert dec["settings"]["output_beam"] == 5.0 and dec["settings"]["max_active_states"] == 2000
    passes = dec["passes"]
    assert [p["after"] for p in passes] == [None, "isolated"]
    for p in passes:
        sec = p["seconds"]
        assert all(sec[k] > 0 for k in ("forward", "hlg_lattices", "word_lattices", "write"))
        assert sec["total"] == pytest.approx(sum(sec[k] for k in ("forward", "hlg_lattices", "one_best", "word_lattices", "write")), abs=0.01)
        assert p["utterances"] == 6 and p["no_lattice"] == [] and p["skipped"] == []
        # the same lattices the recipe's decode wrote: same model, beams and pruning
        assert p["word_lattice_arcs"] == dec["stored_word_lattice_arcs"] > 0
    assert dec["seconds"] == pytest.approx((passes[0]["seconds"]["total"] + passes[1]["seconds"]["total"]) / 2, abs=0.001)

    metrics = json.loads((recipe / "exp" / "decode_dev_ctc" / "metrics.json").read_text())
    recorded = metrics["forward_seconds"] + metrics["methods"]["hlg_1best"]["decode_seconds"] + metrics["word_lattice_seconds"]
    assert dec["metrics_json_seconds"] == pytest.approx(recorded, abs=0.001)
    assert "word lattices" in dec["metrics_json_covers"]
    assert [r["variant"] for r in entry["rows"]] == ["one_pass", "isolated"]
    for row in entry["rows"]:
        assert row["decode_seconds"] == dec["seconds"]
        assert row["rescoring_seconds_per_decode_second"] == pytest.approx(row["seconds"]["total"] / dec["seconds"], abs=1e-4)
        assert row["decode_seconds_metrics_json"] == dec["metrics_json_seconds"]
        assert row["rescoring_seconds_per_decode_second_metrics_json"] == pytest.approx(
            row["seconds"]["total"] / dec["metrics_json_seconds"], abs=1e-4)


def test_without_a_model_the_metrics_json_figure_divides_and_is_marked(recipe, tmp_path, monkeypatch):
    bench = _bench()
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "rescore_cost.json"
    bench.main(_args(recipe, out, "--decode-metrics", "exp/decode_dev_ctc/metrics.json"))
    entry = json.loads(out.read_text())["runs"]["toy/ctc"]
    dec = entry["decode"]
    assert dec["source"].startswith("metrics.json (fallback: not measured in this run") and "passes" not in dec
    assert dec["seconds"] == dec["metrics_json_seconds"] > 0
    for row in entry["rows"]:
        assert row["rescoring_seconds_per_decode_second"] == row["rescoring_seconds_per_decode_second_metrics_json"]


def test_decoder_options_are_checked(recipe, tmp_path, monkeypatch, capsys):
    bench = _bench()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        bench.main(_args(recipe, tmp_path / "x.json", "--decode-model-dir", "exp/ctc"))
    assert "--decode-model-dir and --decode-lang-dir go together" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(_args(recipe, tmp_path / "x.json"))
    assert "or --decode-metrics, is needed" in capsys.readouterr().err


def test_the_frontend_is_timed_on_the_audio_and_gives_the_from_audio_ratio(recipe, tmp_path, monkeypatch):
    import numpy as np
    import soundfile as sf
    from lhotse import CutSet, Recording, RecordingSet

    bench = _bench()
    recs = []
    for i in range(2):
        path = tmp_path / f"a{i}.wav"
        sf.write(str(path), (0.1 * np.sin(np.arange(16000 * (i + 1)) / 7.0)).astype(np.float32), 16000)
        recs.append(Recording.from_file(str(path), recording_id=f"r{i}"))
    cuts = tmp_path / "cuts.jsonl.gz"
    CutSet.from_manifests(recordings=RecordingSet.from_recordings(recs)).to_file(cuts)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "rescore_cost.json"
    bench.main(_args(recipe, out, "--decode-metrics", "exp/decode_dev_ctc/metrics.json", "--frontend-cuts", str(cuts)))
    dec = json.loads(out.read_text())["runs"]["toy/ctc"]["decode"]
    fe = dec["frontend"]
    assert fe["name"] == "fbank" and fe["timed_cuts"] == 2 and fe["timed_audio_seconds"] == pytest.approx(3.0)
    assert fe["real_time_factor"] > 0
    # the evaluated utterances' audio: their frames x 10 ms (6 toy utterances of 60 + 12 i frames)
    assert fe["evaluated_audio_seconds"] == pytest.approx(sum(60 + 12 * i for i in range(6)) * 0.01, abs=0.05)
    assert dec["seconds_from_audio"] == pytest.approx(dec["seconds"] + fe["seconds"], abs=0.002)
    for row in json.loads(out.read_text())["runs"]["toy/ctc"]["rows"]:
        assert row["rescoring_seconds_per_decode_second_from_audio"] == pytest.approx(
            row["seconds"]["total"] / dec["seconds_from_audio"], abs=1e-4)
        assert row["rescoring_seconds_per_decode_second_from_audio"] < row["rescoring_seconds_per_decode_second"]


def test_a_variant_names_its_span_encoding_and_optionally_its_compute_type():
    import argparse

    bench = _bench()
    assert bench._variant("old=exp/e:isolated") == ("old", "exp/e", "isolated", "float32")
    assert bench._variant("bf=dir:with:colons:one_pass:bfloat16") == ("bf", "dir:with:colons", "one_pass", "bfloat16")
    for bad in ("x=exp/e:fast", "x=exp/e:one_pass:fp8", "=exp/e:one_pass", "x=:one_pass"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected LABEL=MODEL_DIR"):
            bench._variant(bad)
