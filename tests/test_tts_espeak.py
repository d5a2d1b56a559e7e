import numpy as np
import pytest

from rescorer.corpora.tts.base import Prosody, SynthesisError
from rescorer.corpora.tts.espeak import _EV_PHONEME, _EV_WORD, EspeakEngine, word_spans_from_events
from tests.conftest import needs_espeak

pytestmark = pytest.mark.tts


def _rms(x, a, b):
    seg = x[max(0, a) : max(a + 1, b)]
    return float(np.sqrt(np.mean(seg.astype(np.float64) ** 2)))


def test_merged_word_event_is_split_by_phoneme_counts():
    # espeak emits one WORD event for "from the": 6 phonemes, "from" has 4, "the" 2
    words = ["came", "from", "the", "north"]
    ev = [(_EV_WORD, 1, 4, 0, "")] + [(_EV_PHONEME, 1, 0, s, p) for s, p in [(10, "k"), (20, "eI"), (30, "m")]]
    ev += [(_EV_WORD, 6, 4, 40, "")] + [(_EV_PHONEME, 6, 0, s, p) for s, p in [(40, "f"), (50, "r"), (60, "V"), (70, "m"), (80, "D"), (90, "@")]]
    ev += [(_EV_WORD, 15, 5, 100, "")] + [(_EV_PHONEME, 15, 0, s, p) for s, p in [(100, "n"), (110, "O@"), (120, "T"), (130, "_:")]]
    counts = {"from": 4, "the": 2}
    spans = word_spans_from_events(words, ev, 200, lambda w: counts[w])
    assert spans == [(0, 40), (40, 80), (80, 100), (100, 130)]  # "north" ends at the pause phoneme


def test_word_without_event_is_an_error():
    # only "b" (text position 3) has an event and no speech precedes it: "a" is unaccounted for
    ev = [(_EV_WORD, 3, 1, 0, ""), (_EV_PHONEME, 3, 0, 0, "b")]
    with pytest.raises(SynthesisError, match=r"no word event for \['a'\]"):
        word_spans_from_events(["a", "b"], ev, 10)
    # a split that would need more words than phonemes is refused
    ev = [(_EV_WORD, 1, 1, 0, ""), (_EV_PHONEME, 1, 0, 0, "a")]
    with pytest.raises(SynthesisError, match="cannot split"):
        word_spans_from_events(["a", "b"], ev, 10)


@needs_espeak
def test_contract_and_boundaries_in_low_energy():
    eng = EspeakEngine()
    # words that start and end with stop consonants: boundaries sit in closures
    words = "cat took pick tap kit top".split()
    out = eng.synthesize(words, "en-us+m3", Prosody(rate=0.9))
    assert [w.word for w in out.words] == words
    x = out.samples
    sr = out.sampling_rate
    centres = [_rms(x, int((w.start + w.duration / 2) * sr) - 160, int((w.start + w.duration / 2) * sr) + 160) for w in out.words]
    bounds = [_rms(x, int(w.start * sr) - 160, int(w.start * sr) + 160) for w in out.words[1:]]
    assert max(bounds) < 0.5 * np.median(centres), (bounds, centres)
    # nearly all energy lies inside word spans
    inside = np.zeros(len(x), bool)
    for w in out.words:
        inside[int(w.start * sr) : int(w.end * sr)] = True
    e = x.astype(np.float64) ** 2
    assert e[~inside].sum() < 0.03 * e.sum()


@needs_espeak
def test_rate_changes_duration_and_voices_differ():
    eng = EspeakEngine()
    words = "the weather will be fine tomorrow morning".split()
    slow = eng.synthesize(words, "en+m1", Prosody(rate=0.8))
    fast = eng.synthesize(words, "en+m1", Prosody(rate=1.4))
    assert 1.3 < slow.words[-1].end / fast.words[-1].end < 2.2
    other = eng.synthesize(words, "en-gb-scotland+f3", Prosody(rate=0.8))
    n = min(len(slow.samples), len(other.samples))
    assert not np.allclose(slow.samples[:n], other.samples[:n], atol=1e-3)


@needs_espeak
def test_unknown_voice_names_the_voice():
    with pytest.raises(SynthesisError, match="no-such-voice"):
        EspeakEngine().synthesize(["hello"], "no-such-voice")


@needs_espeak
def test_audio_does_not_depend_on_the_parents_libc_random_state():
    """espeak-ng's noise comes from libc rand(): a parent that consumed random numbers (any
    library may) must not change the audio of the next utterance (was a flaky corpus test)."""
    import ctypes

    from rescorer.corpora.tts.espeak import _Espeak

    engine = _Espeak.get()
    voice = "en-gb-x-gbcwmd+f3"  # a variant with breath noise
    first, _ = engine.synth("hello there friends of mine", voice, 175, 50, 50)
    libc = ctypes.CDLL(None)
    for _ in range(3):
        libc.rand()
    second, _ = engine.synth("hello there friends of mine", voice, 175, 50, 50)
    assert np.array_equal(first, second)
