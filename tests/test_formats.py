"""The file layer: feature contract, tagged files, safe loading, every format's round trip."""

from __future__ import annotations

import json
import os

import pytest
import torch

from rescorer.formats.contract import FBANK, FeatureSpec, FeatureSpecError, check_frame_shift, check_spec
from rescorer.formats.tagged import FormatError, UnsafeFileError, load_plain, read_tagged, write_tagged
from rescorer.formats.utterances import UtteranceFeatures, read_utterance_features, write_utterance_features
from rescorer.formats.word_segments import read_word_segments, write_word_segments
from rescorer.formats.word_lattices import LatticeRecord, WordLatticeShard, read_word_lattices, write_word_lattices
from tests.conftest import HAVE_K2, needs_k2

WHISPER_LIKE = FeatureSpec("whisper", 384, 0.02)


class _RunsCode:
    """Pickles as a call of ``os.system``: what a crafted file would hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(path, marker, tag):
    """A torch file with the right format tag whose unpickling would run a shell command."""
    torch.save({"format": tag, "tensors": {}, "meta": _RunsCode(marker)}, str(path))
    return path


def _utterances(spec=FBANK, n=3):
    lengths = [9, 12, 7][:n]
    offsets = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist())
    feats = torch.randn(int(offsets[-1]), spec.dim).half()
    return UtteranceFeatures(feats, offsets, ["the cat", "a dog", "on"][:n], [f"u{i}" for i in range(n)], ["s1", "s2", "s1"][:n], spec)


def _segments():
    offsets = torch.tensor([0, 4, 9, 12])
    return {
        "feats": torch.randn(12, 80).half(), "offsets": offsets, "word_ids": torch.tensor([1, 0, 1]), "words": ["a", "cat"],
        "speaker_ids": torch.tensor([0, 1, 0]), "speakers": ["s1", "s2"], "utterance_ids": ["u1", "u1", "u2"],
        "starts": torch.tensor([0.1, 0.5, 0.0]), "feature_spec": FBANK.to_json(), "stats": {"too_long": 2},
    }


def _record(uid="u1", num_arcs=5, big=False):
    g = torch.Generator().manual_seed(len(uid))
    src = torch.arange(num_arcs, dtype=torch.int32)
    labels = torch.randint(1, 70000 if big else 50, (num_arcs,), generator=g, dtype=torch.int32)
    labels[-1] = -1
    arcs = torch.stack([src, src + 1, labels], 1)
    sf = torch.arange(num_arcs, dtype=torch.int32) * 3
    return LatticeRecord(uid, num_arcs + 1, arcs, sf, sf + 3, torch.randn(num_arcs, generator=g),
                         torch.randn(num_arcs, generator=g) * 20, 0.04, {"scales": [1.0, 0.5, 0.0], "source": "test"})


# ---------------------------------------------------------------- the feature contract


def test_the_contract_declares_fbank_at_10_ms_and_the_lattice_rate_from_the_subsampling():
    assert (FBANK.name, FBANK.dim, FBANK.frame_shift) == ("fbank", 80, 0.01)
    from rescorer.formats.contract import LATTICE_FRAME_SHIFT, SAMPLE_RATE, SUBSAMPLING_FACTOR, UNK

    assert SAMPLE_RATE == 16000 and SUBSAMPLING_FACTOR == 4 and UNK == "<unk>"
    assert LATTICE_FRAME_SHIFT == pytest.approx(0.04) and FBANK.frames(1.234) == 123
    assert FeatureSpec.from_json(WHISPER_LIKE.to_json()) == WHISPER_LIKE
    with pytest.raises(FeatureSpecError):
        FeatureSpec("fbank", 80, 0.0)


def test_a_frame_rate_or_frontend_mismatch_raises_and_names_the_source():
    check_spec(FeatureSpec("fbank", 80, 0.010000000001), FBANK, "x")  # float noise is the same rate
    check_spec(None, FBANK, "x")  # nothing recorded (an old file): the consumer's spec
    with pytest.raises(FeatureSpecError, match=r"feats\.pt: 'whisper' features.*384-dim.*every 20 ms, expected every 10 ms"):
        check_spec(WHISPER_LIKE, FBANK, "feats.pt")
    with pytest.raises(FeatureSpecError, match="every 20 ms, expected every 10 ms"):
        check_spec(FeatureSpec("fbank", 80, 0.02), FBANK, "x")
    with pytest.raises(FeatureSpecError, match="lats.pt: a frame every 40 ms, expected every 20 ms"):
        check_frame_shift(0.04, 0.02, "lats.pt")


def test_features_of_another_frontend_are_refused_by_a_consumer_expecting_fbank(tmp_path):
    write_utterance_features(tmp_path / "w.pt", _utterances(WHISPER_LIKE))
    with pytest.raises(FeatureSpecError, match="'whisper' features"):
        read_utterance_features(tmp_path / "w.pt")
    assert read_utterance_features(tmp_path / "w.pt", expect=WHISPER_LIKE).spec == WHISPER_LIKE
    seg = {**_segments(), "feats": torch.randn(12, 80).half(), "feature_spec": FeatureSpec("fbank", 80, 0.02).to_json()}
    write_word_segments(tmp_path / "s.pt", seg)
    with pytest.raises(FeatureSpecError, match="every 20 ms"):
        read_word_segments(tmp_path / "s.pt")


# ---------------------------------------------------------------- tagged files


def test_tagged_files_are_plain_data_that_weights_only_loading_reads(tmp_path):
    p = write_tagged(tmp_path / "t.pt", "rescorer.test", 3, {"x": torch.arange(4)}, {"shift": 0.01, "ids": ["a"]})
    raw = torch.load(str(p), weights_only=True)  # torch 1.13 refuses Python floats here: they are in JSON text
    assert raw["format"] == "rescorer.test/3" and json.loads(raw["meta"]) == {"ids": ["a"], "shift": 0.01}
    tf = read_tagged(p, "rescorer.test", versions=(3,))
    assert tf.version == 3 and torch.equal(tf.tensors["x"], torch.arange(4)) and tf.meta["shift"] == 0.01
    with pytest.raises(FormatError, match="not a rescorer.other file"):
        read_tagged(p, "rescorer.other", versions=(1,))
    with pytest.raises(FormatError, match="rescorer.test/3 is not a version this code reads"):
        read_tagged(p, "rescorer.test", versions=(4,))
    with pytest.raises(TypeError, match="belong in meta"):
        write_tagged(tmp_path / "u.pt", "rescorer.test", 1, {"x": 1.5}, {})
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(FormatError, match="junk.pt: not a rescorer.test file"):
        read_tagged(tmp_path / "junk.pt", "rescorer.test", versions=(3,))
    with pytest.raises(FormatError, match="no such file"):
        read_tagged(tmp_path / "missing.pt", "rescorer.test", versions=(3,))


def test_a_failed_write_leaves_the_previous_file(tmp_path):
    p = write_tagged(tmp_path / "t.pt", "rescorer.test", 1, {"x": torch.zeros(2)}, {})
    before = p.read_bytes()
    with pytest.raises(ValueError):  # NaN is not JSON: fails before anything replaces the file
        write_tagged(p, "rescorer.test", 1, {"x": torch.ones(2)}, {"bad": float("nan")})
    assert p.read_bytes() == before and sorted(x.name for x in tmp_path.iterdir()) == ["t.pt"]


def test_plain_data_from_before_the_tagged_layout_still_loads_python_floats_included(tmp_path):
    """Version-1 files hold Python floats, which torch 1.13's weights-only loader refuses."""
    base = torch.arange(24.0).reshape(4, 6)
    tensors = {str(d): torch.arange(5).to(d) for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                                        torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)}
    torch.save({"format": "rescorer.x/1", "frame_shift": 0.01, "t": tensors, "view": base[1:, ::2], "base": base,
                "empty": torch.zeros(0, 80), "d": {"a": [1.5, None, True]}}, str(tmp_path / "v1.pt"))
    obj = load_plain(tmp_path / "v1.pt", "rescorer.x")
    assert obj["frame_shift"] == 0.01 and obj["d"] == {"a": [1.5, None, True]}
    assert all(obj["t"][k].dtype == v.dtype and torch.equal(obj["t"][k], v) for k, v in tensors.items())
    assert torch.equal(obj["view"], base[1:, ::2]) and torch.equal(obj["base"], base) and obj["empty"].shape == (0, 80)


@pytest.mark.parametrize("tag", ["rescorer.word_lattices/2", "rescorer.word_lattices/1", "anything"])
def test_a_planted_pickle_is_refused_and_runs_nothing(tmp_path, tag):
    marker = tmp_path / "ran"
    evil = _plant(tmp_path / "word_lattices.pt", marker, tag)
    with pytest.raises(UnsafeFileError, match=r"word_lattices.pt is not a rescorer.word_lattices file: it holds objects "
                                              r"that plain loading refuses \(.*system\); refusing to unpickle it"):
        read_word_lattices(evil)
    assert not marker.exists()


def test_every_user_file_loader_refuses_a_planted_pickle(tmp_path):
    marker = tmp_path / "ran"
    loaders = {
        "rescorer.utterances": read_utterance_features,
        "rescorer.word_segments": read_word_segments,
        "rescorer.word_lattices": read_word_lattices,
    }
    from rescorer.decoding.decode import load_utterance_data
    from rescorer.evaluation.embeddings import load_segments
    from rescorer.training.asr_data import load_utterances
    from rescorer.formats.word_segments import load_word_segments

    loaders.update({"decode utterances": load_utterance_data, "training utterances": load_utterances,
                    "training segments": load_word_segments, "evaluation segments": load_segments})
    if HAVE_K2:
        from rescorer.formats.token_lattices import load_lattices
        from rescorer.lattice.word_lattice import load_word_lattices

        loaders.update({"rescorer.token_lattices": load_lattices, "word lattices": load_word_lattices})
    for name, load in loaders.items():
        family = name if name.startswith("rescorer.") else "rescorer.utterances" if "utterances" in name else (
            "rescorer.word_segments" if "segments" in name else "rescorer.word_lattices")
        evil = _plant(tmp_path / f"{name.replace(' ', '_')}.pt", marker, f"{family}/2")
        with pytest.raises(UnsafeFileError, match="refusing to unpickle it"):
            load(evil)
        assert not marker.exists(), name
    if HAVE_K2:  # a directory of shards, as pocketsphinx lattices come
        (tmp_path / "shards").mkdir()
        _plant(tmp_path / "shards" / "u1.pt", marker, "rescorer.word_lattices/2")
        with pytest.raises(UnsafeFileError):
            load_word_lattices(tmp_path / "shards")
        assert not marker.exists()


@needs_k2
@pytest.mark.lattice
def test_rescore_cli_refuses_a_planted_lattice_file_and_runs_nothing(tmp_path):
    from click.testing import CliRunner

    from rescorer.cli import main

    marker = tmp_path / "ran"
    evil = _plant(tmp_path / "evil.pt", marker, "rescorer.word_lattices/2")
    write_utterance_features(tmp_path / "feats.pt", _utterances())
    (tmp_path / "model").mkdir()
    r = CliRunner().invoke(main, ["rescore", "--model-dir", str(tmp_path / "model"), "--lattices", str(evil),
                                  "--features", str(tmp_path / "feats.pt"), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert r.exit_code != 0
    assert "evil.pt is not a rescorer.word_lattices file" in r.output and "refusing to unpickle it" in r.output
    assert "Traceback" not in r.output
    assert not marker.exists() and not any((tmp_path / "out").glob("*"))
    # features of another frontend are refused the same way
    from tests.test_rescore import _lattice

    from rescorer.lattice.word_lattice import save_word_lattices

    from rescorer.models import AcousticWordEncoder, LetterNgramEncoder
    from rescorer.models.checkpoint import save_embedder
    from rescorer.rescore import Rescorer

    acoustic = AcousticWordEncoder(dim=16, channels=16, num_blocks=1)  # an fbank embedder
    letters = LetterNgramEncoder(dim=16, num_buckets=256, ngram_dim=8, hidden=16)
    save_embedder(tmp_path / "model" / "best.pt", acoustic, letters, {})
    Rescorer(acoustic, letters, device="cpu").save_config(tmp_path / "model")
    save_word_lattices(tmp_path / "lats.pt", [_lattice([(0, 1, "the", 0, 5, -1.0, -1.0)], uid="u0")])
    write_utterance_features(tmp_path / "whisper.pt", _utterances(WHISPER_LIKE))
    r = CliRunner().invoke(main, ["rescore", "--model-dir", str(tmp_path / "model"), "--lattices", str(tmp_path / "lats.pt"),
                                  "--features", str(tmp_path / "whisper.pt"), "--out", str(tmp_path / "out2"), "--device", "cpu"])
    assert r.exit_code != 0 and "'whisper' features" in r.output and "Traceback" not in r.output


# ---------------------------------------------------------------- round trips


def test_utterance_features_round_trip_and_version_1_files(tmp_path):
    u = _utterances()
    write_utterance_features(tmp_path / "u.pt", u)
    back = read_utterance_features(tmp_path / "u.pt")
    assert torch.equal(back.feats, u.feats) and torch.equal(back.offsets, u.offsets) and back.spec == FBANK
    assert (back.texts, back.utterance_ids, back.speakers) == (u.texts, u.utterance_ids, u.speakers)
    assert torch.equal(back.by_id()["u1"], u.feats[9:21].float())
    v1 = {"format": "rescorer.utterances/1", "feats": u.feats, "offsets": u.offsets, "texts": u.texts,
          "utterance_ids": u.utterance_ids, "speakers": u.speakers, "num_mel_bins": 80, "frame_shift": 0.01}
    torch.save(v1, str(tmp_path / "v1.pt"))
    old = read_utterance_features(tmp_path / "v1.pt")
    assert torch.equal(old.feats, u.feats) and old.spec == FBANK and old.texts == u.texts
    torch.save({**v1, "frame_shift": 0.02}, str(tmp_path / "v1_20ms.pt"))
    with pytest.raises(FeatureSpecError, match="every 20 ms"):
        read_utterance_features(tmp_path / "v1_20ms.pt")
    with pytest.raises(FormatError, match="offsets"):
        write_utterance_features(tmp_path / "bad.pt", UtteranceFeatures(u.feats, u.offsets[:-1], u.texts, u.utterance_ids, u.speakers))


def test_word_segments_round_trip_and_version_1_files(tmp_path):
    seg = _segments()
    write_word_segments(tmp_path / "s.pt", seg)
    back = read_word_segments(tmp_path / "s.pt")
    for k in ("feats", "offsets", "word_ids", "speaker_ids", "starts"):
        assert torch.equal(back[k], seg[k].to(back[k].dtype)), k
    assert (back["words"], back["speakers"], back["utterance_ids"]) == (seg["words"], seg["speakers"], seg["utterance_ids"])
    assert back["frame_shift"] == 0.01 and back["num_mel_bins"] == 80 and back["stats"] == {"too_long": 2}
    v1 = {k: v for k, v in seg.items() if k not in ("feature_spec", "stats")}
    torch.save({**v1, "format": "rescorer.word_segments/1", "num_mel_bins": 80, "frame_shift": 0.01}, str(tmp_path / "v1.pt"))
    assert torch.equal(read_word_segments(tmp_path / "v1.pt")["feats"], seg["feats"])
    with pytest.raises(FormatError, match="word_ids out of range"):
        write_word_segments(tmp_path / "bad.pt", {**seg, "word_ids": torch.tensor([1, 0, 2])})


def test_word_lattice_records_round_trip_in_the_narrowest_exact_dtypes(tmp_path):
    recs = [_record("u1"), _record("u22", 7, big=True)]
    recs[1].scores, recs[0].scores = torch.randn(7), torch.randn(5)
    recs[0].awe_scores, recs[1].awe_scores = torch.rand(5), torch.rand(7)
    p = write_word_lattices(tmp_path / "w.pt", WordLatticeShard(recs, [("<eps>", 0), ("a", 1)], "abc", {"min_posterior": 1e-4, "scale": 1.0}))
    raw = torch.load(str(p), weights_only=True)["tensors"]
    assert raw["src"].dtype == torch.int16 and raw["labels"].dtype == torch.int32  # a word id above 32767
    shard = read_word_lattices(p)
    assert shard.words == [("<eps>", 0), ("a", 1)] and shard.words_digest == "abc" and shard.prune["min_posterior"] == 1e-4
    for a, b in zip(recs, shard.records):
        assert (a.utterance_id, a.num_states, a.frame_shift, a.meta) == (b.utterance_id, b.num_states, b.frame_shift, b.meta)
        for k in ("arcs", "start_frame", "end_frame", "am_scores", "lm_scores", "scores", "awe_scores"):
            assert getattr(b, k).dtype == getattr(a, k).dtype and torch.equal(getattr(b, k), getattr(a, k)), k
    plain = write_word_lattices(tmp_path / "p.pt", WordLatticeShard([_record()], None, "abc"))
    raw = torch.load(str(plain), weights_only=True)["tensors"]
    assert "scores" not in raw and "awe_scores" not in raw and read_word_lattices(plain).records[0].scores is None


# ---------------------------------------------------------------- word lattices through the lattice package (k2)


@needs_k2
@pytest.mark.lattice
def test_version_1_word_lattice_shards_still_load(tmp_path):
    from tests.test_rescore import _lattice

    from rescorer.lattice.word_lattice import load_word_lattices, table_digest, table_items

    lat = _lattice([(0, 1, "the", 0, 5, -1.0, -2.0), (1, 2, "cat", 5, 10, -1.5, -1.0)])
    f = lat.fsa
    v1 = {"format": "rescorer.word_lattices/1", "words": [list(x) for x in table_items(lat.words)],
          "words_digest": table_digest(lat.words), "lattices": {"u1": {
              "num_states": lat.num_states, "arcs": f.arcs.values()[:, :3].clone(), "start_frame": f.start_frame.clone(),
              "end_frame": f.end_frame.clone(), "am_scores": f.am_scores.clone(), "lm_scores": f.lm_scores.clone(),
              "scores": f.scores.clone(), "frame_shift": 0.04, "meta": dict(lat.meta)}}}
    torch.save(v1, str(tmp_path / "v1.pt"))
    back = load_word_lattices(tmp_path / "v1.pt")["u1"]
    assert torch.equal(back.fsa.scores, f.scores) and torch.equal(back.fsa.arcs.values(), f.arcs.values())
    assert back.frame_shift == 0.04 and back.meta == lat.meta


@needs_k2
@pytest.mark.lattice
def test_rescoring_a_stored_and_reloaded_lattice_gives_the_same_result(tmp_path):
    from tests.test_rescore import _cap_lattice, _cap_rescorer, _feats

    from rescorer.lattice.word_lattice import load_word_lattices, prune, save_word_lattices

    lat = _cap_lattice(uid="u1")
    feats = _feats(["the", "zebra", "on"])
    for recover in (False, True):
        direct = _cap_rescorer(awe_scale=1.5).rescore(prune(lat, 1e-4), feats, recover=recover)
        save_word_lattices(tmp_path / "l.pt", [lat], min_posterior=1e-4)  # what the decoder writes
        stored = load_word_lattices(tmp_path / "l.pt")["u1"]
        assert prune(stored, 1e-4) is stored  # already pruned so: rescoring does not prune again
        again = _cap_rescorer(awe_scale=1.5).rescore(prune(stored, 1e-4), feats, recover=recover)
        assert again.hypothesis == direct.hypothesis and again.confidences == direct.confidences
        for k in ("scores", "awe_scores", "am_scores", "lm_scores", "start_frame", "end_frame"):
            assert torch.equal(getattr(again.lattice.fsa, k), getattr(direct.lattice.fsa, k)), k
        # a rescored lattice (scores not recomputable from am/lm) keeps its scores and awe scores
        save_word_lattices(tmp_path / "r.pt", [direct.lattice])
        back = load_word_lattices(tmp_path / "r.pt")["u1"]
        assert torch.equal(back.fsa.scores, direct.lattice.fsa.scores)
        assert torch.equal(back.fsa.awe_scores, direct.lattice.fsa.awe_scores) and back.meta["scales"]["awe_scale"] == 1.5


@needs_k2
@pytest.mark.lattice
def test_the_writer_prunes_when_asked_and_records_it(tmp_path):
    import math

    from tests.test_rescore import _lattice

    from rescorer.lattice.word_lattice import load_word_lattices, save_word_lattices

    arcs = [(0, 1, "the", 0, 5, 0.0, 0.0), (1, 2, "cat", 5, 10, 0.0, 0.0), (1, 2, "sat", 5, 10, math.log(1e-6), 0.0)]
    lat = _lattice(arcs)
    save_word_lattices(tmp_path / "all.pt", [lat])
    save_word_lattices(tmp_path / "pruned.pt", [lat], min_posterior=1e-4)
    assert load_word_lattices(tmp_path / "all.pt")["u1"].num_arcs == 4
    assert load_word_lattices(tmp_path / "pruned.pt")["u1"].num_arcs == 3
    assert read_word_lattices(tmp_path / "pruned.pt").prune == {"min_posterior": 1e-4, "scale": 1.0}
    assert read_word_lattices(tmp_path / "all.pt").prune is None


@needs_k2
@pytest.mark.lattice
def test_the_size_benchmark_reports_bytes_per_arc_before_and_after(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "word_lattice_size.py"
    spec = importlib.util.spec_from_file_location("word_lattice_size", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--utterances", "3", "--out", str(tmp_path / "size.json")]) == 0
    doc = json.loads((tmp_path / "size.json").read_text())
    b = doc["bytes_per_arc"]
    assert {"command", "machine", "date", "lattices"} <= set(doc)
    assert b["v2_pruned"] < b["v2"] < b["v1"] and doc["stored_arcs_pruned"] < doc["arcs"]
