"""The word-type-rich TTS corpus: type counts by tier, held-out words and voices, determinism,
and list-word alignments checked against the words spoken on their own."""

from __future__ import annotations

import functools
import json
import os
import numpy as np
import pytest

from tests.conftest import HAVE_ESPEAK, needs_espeak, needs_lhotse
from tests.test_tts_flite_festival import HAVE_FESTIVAL, HAVE_FLITE

pytestmark = [
    pytest.mark.skipif(not os.path.isfile("/usr/share/dict/american-english"), reason="needs the Debian word list (wamerican)"),
]

VOICES = {"espeak": [f"en-us+m{i}" for i in range(1, 8)] + ["en+f1", "en+f2", "en+f3"],
          "flite": ["kal", "kal16", "awb", "rms", "slt"]}


def tiny_config(**over):
    from rescorer.corpora.wordrich import WordRichConfig

    d = dict(type_tiers=[[20, 4], [60, 2], [150, 1]], held_out_dev_types=12, held_out_test_types=16,
             train_fortunes=8, dev_fortunes=2, test_fortunes=2, engines=("espeak", "flite"),
             engine_weights=(0.6, 0.4), seed=5)
    d.update(over)
    return WordRichConfig.from_dict(d)


def _plan(**over):
    from rescorer.corpora.wordrich import make_plan

    cfg = tiny_config(**over)
    return make_plan(cfg, {e: VOICES[e] for e in cfg.engines})


@functools.lru_cache(maxsize=1)
def _default_plan():
    return _plan()  # several tests read the same plan: drawn once (reading fortunes takes seconds)


def test_plan_speaks_the_configured_word_types_in_tiers():
    from rescorer.corpora.wordrich import list_word_tokens, plan_summary

    plan = _default_plan()
    counts = list_word_tokens(plan, "train")
    assert len(counts) == 150 and len(plan.train_types) == 150
    # rank r is spoken as often as its tier says: 4 (first 20), 2 (up to 60), 1 (up to 150)
    assert [counts[w] for w in plan.train_types] == [4] * 20 + [2] * 40 + [1] * 90
    s = plan_summary(plan)
    assert s["train"]["list_word_types"] == 150 and s["train"]["list_word_tokens"] == 80 + 80 + 90
    assert s["train"]["word_types"] >= 150 + 8  # list words + carrier and fortunes words
    # the first 20, 60 or 150 types each have at least 4, 2 or 1 tokens
    for types, per_type in ((20, 4), (60, 2), (150, 1)):
        assert all(counts[w] >= per_type for w in plan.train_types[:types])
    # list words are their own types: never a carrier word or a word of a fortunes sentence
    fortunes_words = {w for u in plan.utterances if not set(u.words) & set(counts) for w in u.words}
    assert not fortunes_words & set(plan.train_types)
    # every utterance holds min..max list words (list utterances) or is a fortunes sentence
    n_list = [sum(w in counts for w in u.words) for u in plan.utterances if u.split == "train"]
    assert n_list[-8:] == [0] * 8  # the fortunes sentences come after the list utterances
    assert all(4 <= n <= 7 for n in n_list[:-9]) and 1 <= n_list[-9] <= 7  # the last list may be short


def test_held_out_words_and_voices_never_in_train():
    from rescorer.corpora.wordrich import list_word_tokens

    plan = _default_plan()
    train_words = {w for u in plan.utterances if u.split == "train" for w in u.words}
    for split in ("dev", "test"):
        held = set(plan.held_out[split])
        assert len(held) == {"dev": 12, "test": 16}[split]
        assert not held & train_words
        counts = list_word_tokens(plan, split)
        assert all(counts[w] == 2 for w in held)  # held_out_repeats
        # the other list words of dev/test are first-tier train words (IV for every type subset)
        iv = set(counts) - held
        assert iv and iv <= set(plan.train_types[:20]) and iv <= set(plan.eval_iv_types)
        assert sum(counts[w] for w in iv) == len(held) * 2  # eval_iv_share 0.5
    assert not set(plan.held_out["dev"]) & set(plan.held_out["test"])
    for engine in plan.voices:
        used = {s: {u.voice for u in plan.utterances if u.engine == engine and u.split == s} for s in ("train", "dev", "test")}
        assert not used["train"] & used["dev"] and not used["train"] & used["test"] and not used["dev"] & used["test"]


def test_plan_is_deterministic_and_seeded():
    from rescorer.corpora.wordrich import plan_to_json

    a, b, c = _default_plan(), _plan(), _plan(seed=6)
    assert plan_to_json(a) == plan_to_json(b)
    assert a.train_types != c.train_types


def test_plan_round_trips_and_bad_configs_name_the_problem(tmp_path):
    from rescorer.corpora.wordrich import WordRichConfig, load_plan, plan_to_json

    plan = _default_plan()
    path = tmp_path / "plan.json"
    path.write_text(plan_to_json(plan))
    again = load_plan(path)
    assert plan_to_json(again) == plan_to_json(plan)
    with pytest.raises(ValueError, match="increasing"):
        WordRichConfig(type_tiers=[[100, 2], [50, 1]])
    with pytest.raises(ValueError, match="exactly one"):
        WordRichConfig(carriers=("say the word",))
    with pytest.raises(ValueError, match="unknown word-rich corpus options"):
        WordRichConfig.from_dict({"held_out_words": 3})
    with pytest.raises(ValueError, match=r"the config needs 1000000"):
        _plan(type_tiers=[[1000000 - 28, 1]])
    (tmp_path / "bad.json").write_text(json.dumps({"format": "rescorer.synthetic_plan/1"}))
    with pytest.raises(ValueError, match="not a word-rich corpus plan"):
        load_plan(tmp_path / "bad.json")


@needs_lhotse
def test_excluded_words_are_never_spoken(tmp_path):
    """A real corpus's dev OOV words (its dev words minus its train words) stay out of the
    corpus: not list words, not inside any fortunes sentence; kept words are not excluded."""
    from lhotse import SupervisionSegment, SupervisionSet

    from rescorer.corpora.text_sources import TextSourceError

    base = _default_plan()
    spoken = [w for u in base.utterances for w in u.words]
    list_words = base.train_types[:3] + base.held_out["test"][:2]
    fortune_word = next(w for u in base.utterances if u.split == "train" and not set(u.words) & set(base.train_types)
                        for w in u.words if len(w) > 4 and w not in {"please", "repeat"})
    kept = base.train_types[3]
    dev = SupervisionSet.from_segments([
        SupervisionSegment(id=f"d{i}", recording_id=f"r{i}", start=0, duration=1, text=t)
        for i, t in enumerate([" ".join(list_words).upper(), f"{fortune_word} {kept}", ""])
    ])
    dev.to_file(tmp_path / "dev_sups.jsonl.gz")
    (tmp_path / "train_words.txt").write_text(f"# the real corpus's train words\n{kept}\n")
    (tmp_path / "dev_oov.txt").write_text("\n".join(list_words + [fortune_word]) + "\n")
    plan = _plan(exclude_words_of=[str(tmp_path / "dev_sups.jsonl.gz")], keep_words_of=[str(tmp_path / "train_words.txt")])
    now = {w for u in plan.utterances for w in u.words}
    gone = set(list_words) | {fortune_word}
    assert gone <= set(spoken) and not gone & now
    # a kept word is not excluded: the same plan as excluding the dev OOV words alone
    from rescorer.corpora.wordrich import plan_to_json

    alone = _plan(exclude_words_of=[str(tmp_path / "dev_oov.txt")])
    strip = lambda p: {k: v for k, v in json.loads(plan_to_json(p)).items() if k != "config"}
    assert strip(alone) == strip(plan)
    assert len(plan.train_types) == 150 and len(plan.held_out["test"]) == 16  # sizes still as configured
    with pytest.raises(TextSourceError, match="nope.txt not found"):
        _plan(exclude_words_of=[str(tmp_path / "nope.txt")])
    (tmp_path / "carrier.txt").write_text("words\n")
    with pytest.raises(ValueError, match=r"carrier words \['words'\]"):
        _plan(exclude_words_of=[str(tmp_path / "carrier.txt")])


# ---------------------------------------------------------------- synthesis and alignments


def _log_mel(x: np.ndarray):
    from lhotse.features import Fbank, FbankConfig

    m = np.asarray(Fbank(FbankConfig(num_mel_bins=40, dither=0.0)).extract(x, 16000))
    return m - m.mean(0)


def _dtw(a: np.ndarray, b: np.ndarray) -> float:
    """Length-normalised DTW distance of two frame sequences (Euclidean frame cost)."""
    cost = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    acc = np.full((len(a) + 1, len(b) + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            acc[i, j] = cost[i - 1, j - 1] + min(acc[i - 1, j], acc[i, j - 1], acc[i - 1, j - 1])
    return float(acc[-1, -1] / (len(a) + len(b)))


ENGINE_AVAILABLE = {"espeak": HAVE_ESPEAK, "flite": HAVE_FLITE, "festival": HAVE_FESTIVAL}


@needs_lhotse
@pytest.mark.tts
@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["espeak", "flite", "festival"])
def test_list_word_spans_hold_their_own_words(tmp_path, engine_name):
    """Each list word's aligned span sounds like that word said alone (same voice and prosody),
    more than like the other list words of its utterance: the spans are the right words."""
    if not ENGINE_AVAILABLE[engine_name]:
        pytest.skip(f"{engine_name} not installed")
    import soundfile as sf

    from rescorer.corpora.tts import Prosody, get_engine
    from rescorer.corpora.wordrich import list_word_tokens, load_plan, prepare_wordrich

    cfg = tiny_config(type_tiers=[[6, 1]], held_out_dev_types=4, held_out_test_types=4, train_fortunes=1,
                      dev_fortunes=0, test_fortunes=0, engines=(engine_name,), engine_weights=(1.0,),
                      augment_prob=0.0)
    m = prepare_wordrich(tmp_path / "wr", cfg, num_jobs=1, progress=False)
    plan = load_plan(tmp_path / "wr" / "plan.json")
    list_words = set(list_word_tokens(plan, "train")) | set(list_word_tokens(plan, "test"))
    engine = get_engine(engine_name)
    by_id = {u.id: u for u in plan.utterances}
    right = total = 0
    for split in ("train", "test"):
        for sup in m[split]["supervisions"]:
            u = by_id[sup.id]
            audio, sr = sf.read(m[split]["recordings"][sup.recording_id].sources[0].source, dtype="float32")
            assert sr == 16000
            ali = sup.alignment["word"]
            assert [a.symbol for a in ali] == u.words
            spoken = [a for a in ali if a.symbol in list_words]
            if len(spoken) < 2:
                continue
            alone = {}
            for a in spoken:  # the word said on its own, cut to its own span (no surrounding silence)
                said = engine.synthesize([a.symbol], u.voice, Prosody(**u.prosody))
                t = said.words[0]
                alone[a.symbol] = _log_mel(said.samples[int(t.start * sr) : int(t.end * sr)])
            for a in spoken:
                span = _log_mel(audio[int(a.start * sr) : int(a.end * sr)])
                d = {w: _dtw(span, ref) for w, ref in alone.items()}
                right += min(d, key=d.get) == a.symbol
                total += 1
    assert total >= 10
    assert right / total >= 0.9, f"{right}/{total} list-word spans closest to their own word"


@needs_espeak
@needs_lhotse
@pytest.mark.tts
def test_cli_prepares_resumes_and_refuses_another_config(tmp_path):
    import yaml
    from click.testing import CliRunner

    from rescorer.cli import main

    conf = dict(type_tiers=[[5, 2], [12, 1]], held_out_dev_types=3, held_out_test_types=3, train_fortunes=2,
                dev_fortunes=1, test_fortunes=1, engines=["espeak"], engine_weights=[1.0])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"wordrich": conf}))
    out = tmp_path / "wr"
    r = CliRunner().invoke(main, ["prepare", "wordrich", str(out), "--config", str(path), "-j", "1"])
    assert r.exit_code == 0, r.output
    assert any(line.startswith("train:") and "12 list words" in line for line in r.output.splitlines()), r.output
    flacs = sorted(out.glob("audio/*/*.flac"))
    stamps = [p.stat().st_mtime_ns for p in flacs]
    r = CliRunner().invoke(main, ["prepare", "wordrich", str(out), "--config", str(path), "-j", "1"])
    assert r.exit_code == 0, r.output
    assert [p.stat().st_mtime_ns for p in flacs] == stamps  # nothing made twice
    r = CliRunner().invoke(main, ["prepare", "wordrich", str(out), "--config", str(path), "--seed", "9"])
    assert r.exit_code == 1 and "different word-rich config" in r.output
