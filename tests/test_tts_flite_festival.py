"""The flite (ctypes) and festival (batch process) engines: contract, word-boundary energy, rate, batching."""

from __future__ import annotations

import multiprocessing
import shutil
import subprocess

import numpy as np
import pytest

from rescorer.corpora.tts.base import SAMPLE_RATE, Prosody, SynthesisError, Synthesized, check_word_times
from rescorer.corpora.tts.flite import FliteEngine, _find_library

pytestmark = pytest.mark.tts

HAVE_FLITE = _find_library("flite") is not None and _find_library("flite_cmu_us_kal16") is not None
HAVE_FESTIVAL = shutil.which("festival") is not None

needs_flite = pytest.mark.skipif(not HAVE_FLITE, reason="libflite / flite voices not installed")
needs_festival = pytest.mark.skipif(not HAVE_FESTIVAL, reason="festival not installed")

# Every word starts and ends with a voiceless stop, so every word boundary lies in a stop
# closure (near silence) while every word's middle is a vowel: wrong word times put a
# boundary into a vowel or a word centre into a closure, and the energy checks below fail.
STOPS = ["cat", "took", "pick", "tap", "kit", "top"]
SENTENCE = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]


def _rms(x: np.ndarray, t: float, half: float = 0.01) -> float:
    a = max(0, int(round((t - half) * SAMPLE_RATE)))
    b = min(len(x), int(round((t + half) * SAMPLE_RATE)))
    return float(np.sqrt(np.mean(x[a:b] ** 2) + 1e-12))


def _assert_contract(out: Synthesized, words) -> None:
    assert out.sampling_rate == SAMPLE_RATE
    assert out.samples.dtype == np.float32 and out.samples.ndim == 1
    assert np.abs(out.samples).max() <= 1.0
    assert [w.word for w in out.words] == list(words)
    prev = 0.0
    for w in out.words:
        assert prev <= w.start < w.end <= out.duration + 1e-6
        prev = w.end
    check_word_times("test", "v", words, out)


def _assert_boundaries_in_low_energy(out: Synthesized) -> None:
    x, ws = out.samples, out.words
    centres = np.array([_rms(x, (w.start + w.end) / 2) for w in ws])
    med = float(np.median(centres))
    assert med > 1e-3, "no speech"
    # every word's centre is speech
    assert (centres > 0.2 * med).all(), centres / med
    # every boundary between two words lies in a low-energy stop closure
    bnd = np.array([_rms(x, ws[i].end) for i in range(len(ws) - 1)]) / med
    assert (bnd < 0.3).all(), bnd
    # the same check would fail for times shifted by 40% of a word (the test can fail)
    shifted = np.array([_rms(x, ws[i].end - 0.4 * ws[i].duration) for i in range(len(ws) - 1)]) / med
    assert np.median(shifted) > 0.3, shifted
    # almost no speech energy lies outside all word spans (leading/trailing silence, pauses)
    inside = np.zeros(len(x), bool)
    for w in ws:
        inside[int(w.start * SAMPLE_RATE) : int(np.ceil(w.end * SAMPLE_RATE))] = True
    e = x.astype(np.float64) ** 2
    assert e[~inside].sum() < 0.02 * e.sum()


def _speech_span(out: Synthesized) -> float:
    return out.words[-1].end - out.words[0].start


# ----------------------------------------------------------------------------- flite


@pytest.fixture(scope="module")
def flite():
    return FliteEngine()


@needs_flite
def test_flite_voices(flite):
    vs = flite.voices()
    assert "kal16" in vs
    assert set(vs) <= {"kal", "kal16", "awb", "rms", "slt"}


@needs_flite
@pytest.mark.parametrize("voice", ["kal", "kal16", "awb", "rms", "slt"])
def test_flite_contract_and_boundaries(flite, voice):
    if voice not in flite.voices():
        pytest.skip(f"flite voice {voice} not installed")
    out = flite.synthesize(STOPS, voice)
    _assert_contract(out, STOPS)
    _assert_boundaries_in_low_energy(out)


@needs_flite
@pytest.mark.parametrize("voice", ["kal16", "awb"])
def test_flite_rate(flite, voice):
    base = flite.synthesize(SENTENCE, voice)
    fast = flite.synthesize(SENTENCE, voice, Prosody(rate=1.5))
    _assert_contract(fast, SENTENCE)
    assert 1.3 < base.duration / fast.duration < 1.7
    assert 1.3 < _speech_span(base) / _speech_span(fast) < 1.7
    # the knob is set afresh on every call: default prosody again gives the default audio
    again = flite.synthesize(SENTENCE, voice)
    assert len(again.samples) == len(base.samples)
    assert [w.end for w in again.words] == [w.end for w in base.words]


@needs_flite
def test_flite_pitch(flite):
    def f0(x):
        fl, hop, out = 640, 160, []
        thr = 0.3 * np.sqrt(np.mean(x**2))
        for i in range(0, len(x) - fl, hop):
            fr = x[i : i + fl] - x[i : i + fl].mean()
            if np.sqrt(np.mean(fr**2)) < thr:
                continue
            ac = np.correlate(fr, fr, "full")[fl - 1 :]
            k = 35 + int(np.argmax(ac[35:260]))
            if ac[k] > 0.5 * ac[0]:
                out.append(SAMPLE_RATE / k)
        return float(np.median(out))

    base = f0(flite.synthesize(SENTENCE, "kal16").samples)
    high = f0(flite.synthesize(SENTENCE, "kal16", Prosody(pitch=1.5)).samples)
    assert 1.3 < high / base < 1.7


@needs_flite
def test_flite_apostrophes_and_errors(flite):
    words = ["i", "don't", "know", "o'clock", "rock'n'roll", "nbc"]
    try:
        out = flite.synthesize(words, "kal16")
    except SynthesisError as e:  # allowed, but it must say what failed
        assert "flite" in str(e) and "kal16" in str(e) and "o'clock" in str(e)
    else:
        _assert_contract(out, words)
    with pytest.raises(SynthesisError, match=r"flite.*kal16.*not normalised"):
        flite.synthesize(["hello", "'"], "kal16")
    with pytest.raises(SynthesisError, match=r"flite.*'nosuchvoice'.*hello world"):
        flite.synthesize(["hello", "world"], "nosuchvoice")
    res = flite.synthesize_many(
        [(["hello"], "kal16", Prosody()), (["Bad!"], "kal16", Prosody()), (["world"], "kal16", Prosody())],
        errors="return",
    )
    assert isinstance(res[0], Synthesized) and isinstance(res[1], SynthesisError) and isinstance(res[2], Synthesized)


def _worker(words):
    out = FliteEngine().synthesize(words, "kal16")
    return [w.word for w in out.words], len(out.samples)


@needs_flite
def test_flite_in_forked_worker(flite):
    parent = flite.synthesize(["hello", "world"], "kal16")  # parent has loaded the library
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        words, n = pool.apply(_worker, (["hello", "world"],))
    assert words == ["hello", "world"] and n == len(parent.samples)


# -------------------------------------------------------------------------- festival


@pytest.fixture(scope="module")
def festival():
    from rescorer.corpora.tts.festival import FestivalEngine

    return FestivalEngine()


@pytest.fixture(scope="module")
def festival_runs(festival):
    """One festival process for the contract/boundary/rate checks of every voice."""
    voices = festival.voices()
    items = []
    for v in voices:
        items += [(STOPS, v, Prosody()), (SENTENCE, v, Prosody()), (SENTENCE, v, Prosody(rate=1.5))]
    outs = festival.synthesize_many(items)
    return {v: outs[3 * k : 3 * k + 3] for k, v in enumerate(voices)}


@needs_festival
def test_festival_voices(festival):
    vs = festival.voices()
    assert vs and "kal_diphone" in vs
    assert all(v and " " not in v for v in vs)


@needs_festival
def test_festival_contract_boundaries_rate(festival_runs):
    for voice, (stops, base, fast) in festival_runs.items():
        _assert_contract(stops, STOPS)
        _assert_boundaries_in_low_energy(stops)
        _assert_contract(base, SENTENCE)
        _assert_contract(fast, SENTENCE)
        assert 1.3 < base.duration / fast.duration < 1.7, voice
        assert 1.3 < _speech_span(base) / _speech_span(fast) < 1.7, voice


@needs_festival
def test_festival_single_call(festival):
    out = festival.synthesize(["hello", "world"], "voice_kal_diphone")  # "voice_" prefix accepted
    _assert_contract(out, ["hello", "world"])


@needs_festival
def test_festival_batch_is_one_process_and_matches_singles(festival, monkeypatch):
    sentences = [["hello", "world"], ["a", "quick", "test", "of", "batching"], ["nbc", "news", "at", "ten"]]
    singles = [festival.synthesize(s, "kal_diphone") for s in sentences]
    calls = []
    real_run = subprocess.run

    def counting_run(*a, **k):
        calls.append(a)
        return real_run(*a, **k)

    monkeypatch.setattr(subprocess, "run", counting_run)
    batch = festival.synthesize_many([(s, "kal_diphone", Prosody()) for s in sentences])
    assert len(calls) == 1
    assert [len(b.words) for b in batch] == [len(s.words) for s in singles] == [len(s) for s in sentences]
    for b, s in zip(batch, singles):
        assert np.allclose([w.end for w in b.words], [w.end for w in s.words], atol=1e-3)


@needs_festival
def test_festival_apostrophes_and_errors(festival):
    words = ["i", "don't", "know", "o'clock", "rock'n'roll"]
    items = [
        (words, "kal_diphone", Prosody()),
        (["hello", "'"], "kal_diphone", Prosody()),
        (["hello", "world"], "nosuchvoice", Prosody()),
        (["good", "night"], "kal_diphone", Prosody(rate=0.8, pitch=1.2, pitch_range=1.5)),
    ]
    res = festival.synthesize_many(items, errors="return")
    if isinstance(res[0], SynthesisError):  # allowed, but it must say what failed
        assert "festival" in str(res[0]) and "kal_diphone" in str(res[0]) and "o'clock" in str(res[0])
    else:
        _assert_contract(res[0], words)
    assert isinstance(res[1], SynthesisError) and "not normalised" in str(res[1])
    assert isinstance(res[2], SynthesisError) and "nosuchvoice" in str(res[2]) and "hello world" in str(res[2])
    _assert_contract(res[3], ["good", "night"])
    with pytest.raises(SynthesisError, match="nosuchvoice"):
        festival.synthesize_many(items[2:], errors="raise")
