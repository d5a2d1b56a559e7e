import gzip
import json
import os

import numpy as np
import pytest

from rescorer.corpora import augment
from tests.conftest import needs_espeak, needs_lhotse, tiny_synthetic_config

pytestmark = [pytest.mark.tts]


def _words(cuts):
    return [w for c in cuts for s in c.supervisions for w in s.text.split()]


def test_manifests_validate_and_alignments_match_text(tiny_synthetic):
    from lhotse import validate

    out, m = tiny_synthetic
    for split in ("train", "dev", "test"):
        cuts = m[split]["cuts"]
        assert len(cuts) >= 20
        validate(cuts, read_data=False)
        for c in cuts:
            sup = c.supervisions[0]
            ali = sup.alignment["word"]
            assert [a.symbol for a in ali] == sup.text.split()
            assert all(0 <= a.start and a.end <= c.duration + 1e-3 and a.duration > 0 for a in ali)
            assert all(ali[i].end <= ali[i + 1].start + 1e-3 for i in range(len(ali) - 1))
        assert (out / "manifests" / f"synthetic_cuts_{split}.jsonl.gz").exists()


def test_splits_disjoint_voices_and_held_out_words(tiny_synthetic):
    out, m = tiny_synthetic
    spk = {s: {c.supervisions[0].speaker for c in m[s]["cuts"]} for s in m}
    assert not spk["train"] & spk["dev"] and not spk["train"] & spk["test"] and not spk["dev"] & spk["test"]
    plan = json.loads((out / "plan.json").read_text())
    train_vocab = set(_words(m["train"]["cuts"]))
    held = set(plan["held_out"]["dev"]) | set(plan["held_out"]["test"])
    assert held and not held & train_vocab
    assert not set(plan["held_out"]["dev"]) & set(_words(m["test"]["cuts"]))
    # held-out words do occur in their split
    assert set(plan["held_out"]["test"]) & set(_words(m["test"]["cuts"]))


def test_oov_token_rate_as_configured(tiny_synthetic):
    out, m = tiny_synthetic
    train_vocab = set(_words(m["train"]["cuts"]))
    target = tiny_synthetic_config().oov_token_rate
    for split in ("dev", "test"):
        ws = _words(m[split]["cuts"])
        rate = sum(w not in train_vocab for w in ws) / len(ws)
        # within one sentence's worth of tokens of the target
        assert abs(rate - target) < 16 / len(ws), (split, rate)


def test_segment_durations_match_alignment_and_boundaries_are_quiet(tiny_synthetic):
    out, m = tiny_synthetic
    ratios = []
    for c in list(m["test"]["cuts"])[:10]:
        x = c.load_audio()[0]
        sr = c.sampling_rate
        assert abs(len(x) / sr - c.duration) < 1e-3
        ali = c.supervisions[0].alignment["word"]
        e = np.convolve(x.astype(np.float64) ** 2, np.ones(160) / 160, mode="same")
        inside = np.median([e[int((a.start + a.duration / 2) * sr)] for a in ali])
        gaps = [e[int(a.start * sr)] for a in ali[1:]]
        ratios.append(np.median(gaps) / inside)
    # a word boundary is quieter than a word centre (noise augmentation raises the floor)
    assert np.median(ratios) < 0.6, ratios


def test_same_seed_same_manifests_and_resume_skips_done_work(tiny_synthetic, tmp_path):
    from rescorer.corpora.synthetic import prepare_synthetic

    out, _ = tiny_synthetic
    cfg = tiny_synthetic_config()
    # resume: remove one utterance; a second run remakes only that one
    flacs = sorted((out / "audio" / "train").glob("*.flac"))
    victim = flacs[3]
    (victim.with_suffix(".json")).unlink()
    victim.unlink()
    mtimes = {f: f.stat().st_mtime_ns for f in flacs if f != victim}
    before = gzip.open(out / "manifests" / "synthetic_supervisions_train.jsonl.gz").read()
    prepare_synthetic(out, cfg, num_jobs=1, progress=False)
    assert victim.exists()
    assert all(f.stat().st_mtime_ns == t for f, t in mtimes.items())
    assert gzip.open(out / "manifests" / "synthetic_supervisions_train.jsonl.gz").read() == before
    # a different config for the same directory is refused, naming the problem
    with pytest.raises(ValueError, match="different synthetic config"):
        prepare_synthetic(out, tiny_synthetic_config(seed=4), num_jobs=1, progress=False)


def test_same_seed_gives_identical_plan_and_audio(tmp_path):
    from rescorer.corpora.synthetic import _plan_to_json, make_plan

    voices = {"espeak": [f"v{i}" for i in range(10)]}
    a = _plan_to_json(make_plan(tiny_synthetic_config(), voices))
    b = _plan_to_json(make_plan(tiny_synthetic_config(), voices))
    c = _plan_to_json(make_plan(tiny_synthetic_config(seed=4), voices))
    assert a == b and a != c


@needs_espeak
@needs_lhotse
def test_identical_corpora_from_the_same_seed_in_two_directories(tmp_path):
    from rescorer.corpora.synthetic import prepare_synthetic

    cfg = tiny_synthetic_config(train_utterances=8, dev_utterances=4, test_utterances=4, held_out_words=10, oov_token_rate=0.1)
    m1 = prepare_synthetic(tmp_path / "a", cfg, num_jobs=2, progress=False)
    m2 = prepare_synthetic(tmp_path / "b", cfg, num_jobs=1, progress=False)
    for split in ("train", "dev", "test"):
        s1 = [s.to_dict() for s in m1[split]["supervisions"]]
        s2 = [s.to_dict() for s in m2[split]["supervisions"]]
        assert s1 == s2
        for r1, r2 in zip(m1[split]["recordings"], m2[split]["recordings"]):
            assert np.array_equal(r1.load_audio(), r2.load_audio())


def test_speed_augmentation_scales_times():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(16000).astype(np.float32)
    y, scale = augment.apply(x, augment.AugmentSpec(speed=1.1), rng)
    assert scale == pytest.approx(1 / 1.1)
    assert abs(len(y) - 16000 / 1.1) <= 2
    z, s2 = augment.apply(x, augment.AugmentSpec(rt60=0.3, noise="pink", snr_db=10.0), rng)
    assert s2 == 1.0 and len(z) == len(x)
    # noise at 10 dB SNR: residual power about a tenth of the signal's
    r = augment.add_noise(x, "white", 10.0, np.random.default_rng(1)) - x
    assert 0.07 < np.mean(r**2) / np.mean(x**2) < 0.13


def test_config_errors_are_clear():
    from rescorer.corpora.synthetic import SyntheticConfig

    with pytest.raises(ValueError, match="unknown synthetic corpus options"):
        SyntheticConfig.from_dict({"trian_utterances": 3})
    with pytest.raises(ValueError, match="oov_token_rate"):
        SyntheticConfig(oov_token_rate=0.9)
