"""A second recogniser's list words spotted into a hypothesis: the replacement rule, the
embedder's gate, the keep-or-abstain tuning, the transcript file, and `rescorer tune`'s
awe_whisper_* methods end to end (stub embedder: the audio names its word)."""

import json
import math

import pytest

from rescorer.lattice.paths import WordSpan as W
from tests.conftest import needs_k2


def _hyp(words, dur=0.2):
    return [W(w, i * dur, (i + 1) * dur) for i, w in enumerate(words)]


# ------------------------------------------------------------------ the rule

def test_a_list_word_replaces_the_words_it_faces_and_the_extra_ones_beside_it():
    from rescorer.decoding.transcript_spotting import apply_hits, spot_transcript

    hyp = _hyp(["the", "cat", "a", "man", "sailed"])
    hits = spot_transcript(hyp, "the catamaran sailed".split(), {"catamaran"})
    assert [(h.word, h.first, h.last) for h in hits] == [("catamaran", 1, 4)]
    assert hits[0].start == pytest.approx(0.2) and hits[0].end == pytest.approx(0.8)  # "cat a man"'s span
    words, added = apply_hits(hyp, hits)
    assert [w.word for w in words] == ["the", "catamaran", "sailed"]
    assert added == [("catamaran", pytest.approx(0.2), pytest.approx(0.8))]


def test_only_list_words_the_hypothesis_lacks_with_enough_letters_are_hits():
    from rescorer.decoding.transcript_spotting import spot_transcript

    hyp = _hyp(["the", "cap", "sat", "down"])
    # "zebra" is not on the list; "sat" is, but the hypothesis has it; "ox" is too short
    assert spot_transcript(hyp, "the zebra sat down".split(), {"sat", "down"}) == []
    assert spot_transcript(hyp, "the ox sat down".split(), {"ox"}, min_letters=4) == []
    assert [h.word for h in spot_transcript(hyp, "the ox sat down".split(), {"ox"}, min_letters=2)] == ["ox"]
    assert spot_transcript(hyp, [], {"zebra"}) == []


def test_an_inserted_list_word_spans_the_gap_between_its_neighbours():
    from rescorer.decoding.transcript_spotting import apply_hits, spot_transcript

    hyp = [W("the", 0.0, 0.2), W("sat", 0.5, 0.7)]
    hits = spot_transcript(hyp, "the zebra sat".split(), {"zebra"})
    assert [(h.word, h.first, h.last, h.start, h.end) for h in hits] == [("zebra", 1, 1, 0.2, 0.5)]
    assert [w.word for w in apply_hits(hyp, hits)[0]] == ["the", "zebra", "sat"]


def test_two_hits_do_not_overlap_and_overlapping_hits_are_refused():
    from rescorer.decoding.transcript_spotting import TranscriptHit, apply_hits, spot_transcript

    hyp = _hyp(["cat", "a", "man", "hard", "bore"])
    hits = spot_transcript(hyp, "catamaran harbour".split(), {"catamaran", "harbour"})
    assert [h.word for h in hits] == ["catamaran", "harbour"]
    assert all(a.last <= b.first for a, b in zip(hits, hits[1:]))
    assert [w.word for w in apply_hits(hyp, hits)[0]] == ["catamaran", "harbour"]
    with pytest.raises(ValueError, match="overlap"):
        apply_hits(hyp, [TranscriptHit("x", 0, 1, 0, 3), TranscriptHit("y", 0, 1, 2, 4)])


# ------------------------------------------------------------------ gate and tuning

def test_the_gate_keeps_hits_by_the_embedders_cosine_and_the_recognisers_confidence():
    from rescorer.decoding.transcript_spotting import TranscriptHit
    from rescorer.transcript_hits import HitGate, SpottedUtterance

    u = SpottedUtterance(_hyp(["the", "cap", "sat", "mat"]),
                         [TranscriptHit("zebra", 0.2, 0.4, 1, 2), TranscriptHit("zebras", 0.6, 0.8, 3, 4)], [0.9, 0.1],
                         [0.3, 0.95])
    assert u.words(HitGate()) == ["the", "zebra", "sat", "zebras"]
    assert u.words(HitGate(0.5)) == ["the", "zebra", "sat", "mat"]
    assert u.words(HitGate(0.95)) == ["the", "cap", "sat", "mat"]
    assert u.words(HitGate(None, 0.5)) == ["the", "cap", "sat", "zebras"]  # the recogniser is sure of "zebras" only
    assert u.words(HitGate(0.5, 0.5)) == ["the", "cap", "sat", "mat"]  # both must agree
    # an unknown confidence fails any confidence gate, and passes none
    unknown = SpottedUtterance(u.hyp, u.hits, u.cosines, [float("nan"), 0.95])
    assert unknown.words(HitGate(None, 0.0)) == ["the", "cap", "sat", "zebras"]
    assert unknown.words(HitGate()) == u.words(HitGate())


def test_each_hit_takes_the_confidence_of_its_own_transcript_word():
    from rescorer.decoding.transcript_spotting import spot_transcript
    from rescorer.transcript_hits import spot_all

    hyp = _hyp(["the", "cat", "a", "man", "hard", "bore"])
    transcript = "the catamaran in harbour".split()
    assert [h.source for h in spot_transcript(hyp, transcript, {"catamaran", "harbour"})] == [1, 3]

    class NoSpans:  # every hit lacks a span long enough to embed: cosines -inf, no embedder needed
        frame_shift = 10.0

    spotted = spot_all(NoSpans(), {"u": hyp}, {"u": transcript}, {"catamaran", "harbour"}, {"u": _feats(1)},
                       confidences={"u": [0.99, 0.2, 0.9, 0.7]})
    assert [h.word for h in spotted["u"].hits] == ["catamaran", "harbour"]
    assert spotted["u"].confidences == [0.2, 0.7]


def _feats(n):
    import torch

    return torch.zeros(n, 4)


def _spotted():
    from rescorer.decoding.transcript_spotting import TranscriptHit
    from rescorer.transcript_hits import SpottedUtterance

    right = SpottedUtterance(_hyp(["the", "cap", "sat"]), [TranscriptHit("zebra", 0.2, 0.4, 1, 2)], [0.9], [0.4])
    wrong = SpottedUtterance(_hyp(["the", "mat", "sat"]), [TranscriptHit("zebras", 0.2, 0.4, 1, 2)], [0.1], [0.3])
    return {"u1": right, "u2": wrong}, {"u1": ["the", "zebra", "sat"], "u2": ["the", "mat", "sat"]}


def test_tuning_keeps_a_gate_only_where_dev_gains_else_abstains():
    from rescorer.evaluation.transcript_spotting import tune_gate
    from rescorer.transcript_hits import HitGate

    spotted, refs = _spotted()
    vocab = {"the", "cap", "sat", "mat"}
    gate, rows = tune_gate(spotted, refs, [None, 0.5], vocab)
    assert gate == HitGate(0.5, None)  # every hit: one right, one wrong (no gain); 0.5 keeps the right one
    assert rows[0]["gate"] == "off" and rows[0]["wer"] == pytest.approx(1 / 6)
    assert rows[1]["wer"] == pytest.approx(1 / 6) and rows[2]["wer"] == 0.0 and rows[2]["chosen"]
    assert rows[2]["added_oov_recovered"] == 1 and rows[2]["added_oov_precision"] == 1.0
    # only the wrong hit's utterance: no gate lowers the WER, so nothing is added
    gate, rows = tune_gate({"u2": spotted["u2"]}, refs, [None, 0.05], vocab)
    assert gate == "abstained" and rows[0]["chosen"]
    # a precision target no gate meets also abstains
    gate, _ = tune_gate(spotted, refs, [None], vocab, min_precision=0.8)
    assert gate == "abstained"


def test_hit_evidence_says_which_evidence_parts_right_hits_from_wrong():
    from rescorer.evaluation.transcript_spotting import hit_evidence

    spotted, refs = _spotted()  # the right hit: cosine 0.9, confidence 0.4; the wrong: 0.1, 0.3
    ev = hit_evidence([spotted], refs)
    assert ev == {"hits": 2, "right": 1, "cosine_roc_auc": 1.0, "cosine_ap": 1.0,
                  "confidence_roc_auc": 1.0, "confidence_ap": 1.0}
    spotted["u1"].confidences = [float("nan")]  # unknown ranks last
    assert hit_evidence([spotted], refs)["confidence_roc_auc"] == 0.0
    assert hit_evidence([{"u1": spotted["u1"]}], refs)["cosine_roc_auc"] is None  # no wrong hit: undefined


def test_tuning_searches_the_cosine_and_confidence_gates_jointly():
    from rescorer.evaluation.transcript_spotting import tune_gate
    from rescorer.transcript_hits import HitGate

    spotted, refs = _spotted()
    vocab = {"the", "cap", "sat", "mat"}
    # the cosine alone cannot part them here; the confidence can
    spotted["u2"].cosines[0] = 0.9
    gate, rows = tune_gate(spotted, refs, [None, 0.5], vocab, confidence_gates=[None, 0.35, 0.5])
    assert gate == HitGate(None, 0.35)
    assert [(r["gate"], r["confidence_gate"]) for r in rows] == [
        ("off", "off"), (None, None), (0.5, None), (None, 0.35), (0.5, 0.35), (None, 0.5), (0.5, 0.5)]
    assert [r["wer"] for r in rows[1:]] == pytest.approx([1 / 6, 1 / 6, 0.0, 0.0, 1 / 6, 1 / 6])


# ------------------------------------------------------------------ transcript files

def test_transcript_files_round_trip_resume_and_keep_their_writer(tmp_path):
    from rescorer.formats.transcripts import TranscriptError, TranscriptWriter, read_transcripts

    p = tmp_path / "t.jsonl"
    meta = {"recogniser": "whisper", "beam_size": 5}
    with TranscriptWriter(p, meta) as w:
        w.add("u1", ["The", "Zebra"], seconds=0.5, confidences=[0.9, float("nan")])
        w.add("u2", [])
        with pytest.raises(TranscriptError, match="1 confidences for 2 words"):
            w.add("u9", ["a", "b"], confidences=[0.5])
    t = read_transcripts(p)
    assert t.words == {"u1": ["the", "zebra"], "u2": []} and t.seconds == {"u1": 0.5} and t.meta == meta
    assert list(t.confidences) == ["u1"] and t.confidences["u1"][0] == 0.9 and math.isnan(t.confidences["u1"][1])
    # a run killed mid-line: the cut-off utterance is dropped, the rest resumes
    p.write_text(p.read_text() + '{"id": "u3", "wor')
    t = read_transcripts(p)
    assert set(t.words) == {"u1", "u2"}
    with TranscriptWriter(p, meta) as w:
        assert set(w.done) == {"u1", "u2"}
        w.add("u3", ["sat"])
        assert read_transcripts(p).confidences["u1"][0] == 0.9  # the resumed file keeps what was written
        with pytest.raises(TranscriptError, match="already written"):
            w.add("u1", ["x"])
    assert read_transcripts(p).words["u3"] == ["sat"]
    with pytest.raises(TranscriptError, match="written with"):
        TranscriptWriter(p, {**meta, "beam_size": 1})


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("not json\n", "not a rescorer-transcripts header"),
    ('{"format": "other"}\n', "not a rescorer-transcripts file"),
    ('{"format": "rescorer-transcripts", "version": 9}\n', "version 9"),
    ('{"format": "rescorer-transcripts", "version": 1, "meta": {}}\nnot json\n{"id": "u", "words": []}\n', "line 2: not JSON"),
    ('{"format": "rescorer-transcripts", "version": 1, "meta": {}}\n{"id": 3, "words": []}\n', "line 2: expected"),
    ('{"format": "rescorer-transcripts", "version": 1, "meta": {}}\n{"id": "u", "words": []}\n{"id": "u", "words": []}\n',
     "given twice"),
    ('{"format": "rescorer-transcripts", "version": 1, "meta": {}}\n{"id": "u", "words": ["4x4"]}\n', "line 2 \\(u\\)"),
    ('{"format": "rescorer-transcripts", "version": 1, "meta": {}}\n{"id": "u", "words": ["Cat"]}\n', "canonical"),
    ('{"format": "rescorer-transcripts", "version": 1, "meta": {}}\n{"id": "u", "words": [], "seconds": NaN}\n', "seconds"),
    ('{"format": "rescorer-transcripts", "version": 1, "meta": {}}\n{"id": "u", "words": ["a"], "confidences": [1.5]}\n',
     "confidences must be one number in \\[0, 1\\]"),
    ('{"format": "rescorer-transcripts", "version": 1, "meta": {}}\n{"id": "u", "words": ["a"], "confidences": []}\n',
     "per word \\(1 words\\)"),
    ('{"format": "rescorer-transcripts", "version": 1, "meta": {}}\n{"id": "u", "words": ["a"], "confidences": ["x"]}\n',
     "confidences"),
])
def test_bad_transcript_files_are_named_errors(tmp_path, text, message):
    from rescorer.formats.transcripts import TranscriptError, read_transcripts

    p = tmp_path / "t.jsonl"
    p.write_text(text)
    with pytest.raises(TranscriptError, match=message):
        read_transcripts(p)
    p.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(TranscriptError, match="not UTF-8"):
        read_transcripts(p)
    with pytest.raises(TranscriptError, match="does not exist"):
        read_transcripts(tmp_path / "none.jsonl")


def test_words_of_free_text_spells_numbers_and_drops_what_is_not_a_word():
    """A recogniser's numbers are spelled as said (references spell them: speechocean762's
    "fourteen fifteen eighteen hours a day" came back from Whisper as "14, 15, 18 hours a day",
    and all three words were lost); symbols and mixed tokens are still left out."""
    from rescorer.text import split_words, words_of

    assert words_of(" It's 3 well-known \"cats\", OK.") == ["it's", "three", "well", "known", "cats", "ok"]
    assert words_of("14, 15, 18 hours a day.") == ["fourteen", "fifteen", "eighteen", "hours", "a", "day"]
    assert words_of("In 1990 I paid $5 for 3.5% of 1,500 cows on the 21st") == (
        "in nineteen ninety i paid five dollars for three point five percent of one thousand five hundred cows "
        "on the twenty first").split()
    assert words_of("the 1990s, $1 and 10:30") == "the nineteen nineties one dollar and ten thirty".split()
    assert words_of("Call 555-1234 or 0351.") == "call five five five one two three four or zero three five one".split()
    assert words_of("from 1990-1995") == "from nineteen ninety to nineteen ninety five".split()
    assert words_of("abc1 x2 # & " + "9" * 40) == []
    assert words_of("") == []
    with pytest.raises(ValueError, match="outside a-z"):  # references stay strict: no reading is guessed
        split_words("I have 3 cats")


# ------------------------------------------------------------------ rescorer tune end to end

def _write_toy_dev(tmp_path, refs, lattice_word, train_words):
    """Four dev utterances of two speakers (a, b: the two folds), each lattice one path "the <word> sat"
    (dev_lattices.pt, dev.pt), and a training split of ``train_words`` (train.pt)."""
    from rescorer.lattice.word_lattice import save_word_lattices
    from tests.test_rescore import _lattice
    from tests.test_rescoring_eval import _write_utterances

    lats = [_lattice([(0, 1, "the", 0, 5, -1.0, -1.0), (1, 2, lattice_word[u], 5, 10, -1.0, -1.0),
                      (2, 3, "sat", 10, 15, -1.0, -1.0)], uid=u) for u in sorted(refs)]
    save_word_lattices(tmp_path / "dev_lattices.pt", lats)
    _write_utterances(tmp_path / "dev.pt", refs, {"u1": "a", "u2": "a", "u3": "b", "u4": "b"})
    _write_utterances(tmp_path / "train.pt", {"t": train_words}, {"t": "t"})


def _write_zebra_dev(tmp_path, list_name, confidences=None):
    """``_write_toy_dev`` with "the zebra sat" said where the lattice has "cap" and "the mat sat"
    where it has "mat" (right), Whisper's transcript dev.jsonl writing "zebra" (right) and
    "zebras" (wrong) there (each word with ``confidences``, if given), and the list of both
    (``list_name``). Returns (refs, each utterance's lattice word)."""
    from rescorer.formats.transcripts import TranscriptWriter

    refs = {"u1": ["the", "zebra", "sat"], "u2": ["the", "mat", "sat"], "u3": ["the", "zebra", "sat"],
            "u4": ["the", "mat", "sat"]}
    lattice_word = {"u1": "cap", "u2": "mat", "u3": "cap", "u4": "mat"}
    _write_toy_dev(tmp_path, refs, lattice_word, ["the", "cap", "mat", "sat"])
    with TranscriptWriter(tmp_path / "dev.jsonl", {"recogniser": "test"}) as w:
        for u in sorted(refs):
            w.add(u, ["the", "zebra" if lattice_word[u] == "cap" else "zebras", "sat"], seconds=0.1,
                  confidences=confidences)
    (tmp_path / list_name).write_text("zebra\nzebras\n")
    return refs, lattice_word


def _toy_tune_args(tmp_path, monkeypatch):
    """(model dir, WER file, ``rescorer tune`` arguments) over ``_write_toy_dev``'s files, 2-fold, with
    ``Rescorer.from_dir`` giving the test rescorer."""
    from rescorer.rescore import Rescorer
    from tests.test_rescore import _rescorer

    model = tmp_path / "model"
    model.mkdir()
    monkeypatch.setattr(Rescorer, "from_dir", classmethod(lambda cls, model_dir, device=None, **kw: _rescorer()))
    out = tmp_path / "wer.json"
    return model, out, ["tune", "--corpus", "toy", "--model-dir", str(model), "--train-data", str(tmp_path / "train.pt"),
                        "--dev-lattices", str(tmp_path / "dev_lattices.pt"), "--dev-features", str(tmp_path / "dev.pt"),
                        "--cross-validate", "--awe-scales", "0,1", "--lm-scales", "1", "--wips=0", "--out", str(out),
                        "--device", "cpu"]


@needs_k2
@pytest.mark.lattice
def test_rescorer_tune_spots_whisper_list_words_tuned_on_dev(tmp_path, monkeypatch):
    """Two speakers (the two folds), each with an utterance where the transcript has the right
    list word the lattice lacks and one where it has a wrong list word: each fold's dev picks the
    gate that keeps only the word the audio supports, and test gets it."""
    from click.testing import CliRunner

    from rescorer.cli import main
    from rescorer.rescore import Rescorer
    from tests.test_rescore import _rescorer

    refs, lattice_word = _write_zebra_dev(tmp_path, "context.txt")
    from rescorer.formats.transcripts import TranscriptWriter

    model, out, args = _toy_tune_args(tmp_path, monkeypatch)
    args += ["--context-list", str(tmp_path / "context.txt")]
    r = CliRunner().invoke(main, args + ["--methods", "awe_whisper_context_list"])
    assert r.exit_code != 0 and "add awe_rescore" in r.output
    r = CliRunner().invoke(main, args + ["--oov-min-precision-z", "1"])  # a margin without its target
    assert r.exit_code != 0 and "give the target too" in r.output
    r = CliRunner().invoke(main, args + ["--methods", "awe_rescore,awe_whisper_context_list"])
    assert r.exit_code != 0 and "--dev-transcripts" in r.output
    # transcripts without word confidences cannot feed a confidence gate: named, with the way out
    r = CliRunner().invoke(main, args + ["--methods", "awe_rescore,awe_whisper_context_list", "--dev-transcripts",
                                         str(tmp_path / "dev.jsonl"), "--whisper-gates", "none,0.5"])
    assert r.exit_code != 0 and "no word confidences" in r.output and "--whisper-confidence-gates none" in r.output
    # Whisper is surer of its wrong words here: only the embedder's cosine parts them
    with TranscriptWriter(tmp_path / "dev_conf.jsonl", {"recogniser": "test"}) as w:
        for u in sorted(refs):
            right = lattice_word[u] == "cap"
            w.add(u, ["the", "zebra" if right else "zebras", "sat"], seconds=0.1,
                  confidences=[0.99, 0.3 if right else 0.9, 0.99])
    r = CliRunner().invoke(main, args + ["--methods", "awe_rescore,awe_whisper_context_list", "--dev-transcripts",
                                         str(tmp_path / "dev_conf.jsonl"), "--whisper-gates", "none,0.5"])
    assert r.exit_code == 0, r.output
    toy = json.loads(out.read_text())["corpora"]["toy"]
    assert toy["awe_rescore"]["wer"] == pytest.approx(2 / 12)  # "cap" stays: the lattice has nothing else
    # a lattice method's row records the scales it tuned, not the Whisper methods' options
    assert not [k for k in toy["awe_rescore"]["scales"][0] if k.startswith(("transcript_", "vote_"))]
    assert toy["awe_rescore"]["scales"][0]["awe_scale"] is not None
    row = toy["awe_whisper_context_list"]
    assert row["wer"] == 0.0 and row["scales"] == [{"gate": 0.5, "confidence_gate": None}] * 2
    assert row["added_oov_recovered"] == 2 and row["added_oov_precision"] == 1.0 and row["added_iv_broken"] == 0
    assert row["transcriber"] == {"recogniser": "test"} and row["transcribe_seconds"] == pytest.approx(0.4)
    # on dev, the cosine parts right hits from wrong ones and Whisper's confidence inverts them
    assert row["dev_hit_evidence"]["cosine_roc_auc"] == 1.0 and row["dev_hit_evidence"]["confidence_roc_auc"] == 0.0
    # its cost: awe_rescore's, the transcription's and the spotting's
    assert row["rescoring_seconds"] >= row["transcribe_seconds"] + toy["awe_rescore"]["rescoring_seconds"] - 0.01
    assert toy["whisper_transcript"]["wer"] == pytest.approx(2 / 12)  # the transcript alone: its two wrong words
    curves = json.loads((tmp_path / "rescore_tuning_toy_lattices.json").read_text())
    assert [(r_["gate"], r_["confidence_gate"]) for r_ in curves["awe_whisper_context_list_fold0"]][:5] == [
        ("off", "off"), (None, None), (0.5, None), (None, 0.2), (0.5, 0.2)]

    # the tuned gate travels with the model, and `rescorer rescore --transcripts` applies it
    def from_dir(cls, model_dir, device=None, **kw):
        saved = model / "rescorer.json"
        return _rescorer(**(json.loads(saved.read_text())["config"] if saved.exists() else {}))

    monkeypatch.setattr(Rescorer, "from_dir", classmethod(from_dir))
    r = CliRunner().invoke(main, args + ["--methods", "awe_rescore,awe_whisper_context_list", "--dev-transcripts",
                                         str(tmp_path / "dev_conf.jsonl"), "--whisper-gates", "none,0.5",
                                         "--save-config"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((model / "rescorer.json").read_text())["config"]
    assert (cfg["transcript_min_cosine"], cfg["transcript_min_confidence"], cfg["transcript_abstain"]) == (0.5, None, False)
    assert cfg["transcript_hit_lm"] == "pocketsphinx"  # the LM of the hits' lm_gain travels with the gate
    r = CliRunner().invoke(main, args + ["--methods", "awe_rescore,awe_whisper_context_list", "--dev-transcripts",
                                         str(tmp_path / "dev_conf.jsonl"), "--hit-lm", str(tmp_path / "missing.arpa")])
    assert r.exit_code != 0 and "no LM file" in r.output and "missing.arpa" in r.output
    # without an LM the hit model leaves lm_gain out, so the saved config runs without one
    r = CliRunner().invoke(main, args + ["--methods", "awe_rescore,awe_whisper_context_list,whisper_lattice_vote",
                                         "--dev-transcripts", str(tmp_path / "dev_conf.jsonl"), "--hit-lm", "none",
                                         "--whisper-probability-gates", "0.5,0.9", "--save-config"])
    assert r.exit_code == 0, r.output
    no_lm = json.loads((model / "rescorer.json").read_text())["config"]
    assert no_lm["transcript_hit_lm"] is None
    assert json.loads(out.read_text())["corpora"]["toy"]["awe_whisper_context_list"]["hit_model_hits"] == "all_lists"
    assert "lm_gain" not in (no_lm["transcript_hit_model"] or {}).get("features", [])
    r = CliRunner().invoke(main, args + ["--methods", "awe_rescore,awe_whisper_context_list", "--dev-transcripts",
                                         str(tmp_path / "dev_conf.jsonl"), "--hit-lm", "none", "--hit-model-form",
                                         "quadratic", "--whisper-probability-gates", "0.5,0.9"])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["corpora"]["toy"]["awe_whisper_context_list"]["hit_model_form"] == "quadratic"
    r = CliRunner().invoke(main, args + ["--methods", "awe_rescore,awe_whisper_context_list", "--dev-transcripts",
                                         str(tmp_path / "dev_conf.jsonl"), "--hit-model-form", "cubic"])
    assert r.exit_code != 0 and "'cubic' is not one of 'linear', 'quadratic'" in r.output
    rescore = ["rescore", "--model-dir", str(model), "--lattices", str(tmp_path / "dev_lattices.pt"), "--features",
               str(tmp_path / "dev.pt"), "--device", "cpu", "--transcripts", str(tmp_path / "dev_conf.jsonl")]
    r = CliRunner().invoke(main, rescore + ["--out", str(tmp_path / "r0")])
    assert r.exit_code != 0 and "--transcript-list" in r.output  # which words may be added must be said
    r = CliRunner().invoke(main, rescore + ["--out", str(tmp_path / "r1"), "--transcript-list",
                                            str(tmp_path / "context.txt")])
    assert r.exit_code == 0, r.output
    hyps = dict(line.split("\t") for line in (tmp_path / "r1" / "hyps.txt").read_text().splitlines())
    assert hyps == {u: " ".join(w) for u, w in refs.items()}  # the right words in, the wrong ones kept out
    hits = json.loads((tmp_path / "r1" / "transcript_hits.0.json").read_text())
    assert [h[0] for h in hits["u1"]] == ["zebra"] and hits["u2"] == []
    # a confidence gate on transcripts without confidences: named
    cfg["transcript_min_confidence"] = 0.5
    (model / "rescorer.json").write_text(json.dumps({"config": cfg}))
    r = CliRunner().invoke(main, ["rescore", "--model-dir", str(model), "--lattices", str(tmp_path / "dev_lattices.pt"),
                                  "--features", str(tmp_path / "dev.pt"), "--device", "cpu", "--out", str(tmp_path / "r2"),
                                  "--transcripts", str(tmp_path / "dev.jsonl"), "--transcript-list",
                                  str(tmp_path / "context.txt")])
    assert r.exit_code != 0 and "no word confidences" in r.output

    # the evidence weighed by a model fitted on each fold's dev: it learns the cosine, and travels too
    cfg["transcript_min_confidence"] = None
    (model / "rescorer.json").write_text(json.dumps({"config": cfg}))
    r = CliRunner().invoke(main, args + ["--methods", "awe_rescore,awe_whisper_context_list", "--dev-transcripts",
                                         str(tmp_path / "dev_conf.jsonl"), "--whisper-gates", "none",
                                         "--whisper-confidence-gates", "none", "--whisper-probability-gates", "0.5",
                                         "--save-config"])
    assert r.exit_code == 0, r.output
    row = json.loads(out.read_text())["corpora"]["toy"]["awe_whisper_context_list"]
    assert row["wer"] == 0.0 and [s_["probability_gate"] for s_ in row["scales"]] == [0.5, 0.5]
    assert row["heldout_hit_evidence"]["model_roc_auc"] == 1.0  # each fold's model on the other speaker's hits
    cfg = json.loads((model / "rescorer.json").read_text())["config"]
    m = cfg["transcript_hit_model"]
    assert cfg["transcript_min_probability"] == 0.5 and m["weights"][m["features"].index("cosine")] > 0
    assert cfg["transcript_hit_lm"] == "pocketsphinx" and "lm_gain" in m["features"]  # rescore below computes it
    r = CliRunner().invoke(main, rescore + ["--out", str(tmp_path / "r3"), "--transcript-list",
                                            str(tmp_path / "context.txt")])
    assert r.exit_code == 0, r.output
    hyps = dict(line.split("\t") for line in (tmp_path / "r3" / "hyps.txt").read_text().splitlines())
    assert hyps == {u: " ".join(w) for u, w in refs.items()}
    r = CliRunner().invoke(main, args + ["--methods", "awe_rescore,awe_whisper_context_list", "--dev-transcripts",
                                         str(tmp_path / "dev_conf.jsonl"), "--whisper-probability-gates", "1.5"])
    assert r.exit_code != 0 and "strictly between 0 and 1" in r.output

    # transcripts of other utterances: a named error, not an empty method
    with TranscriptWriter(tmp_path / "other.jsonl", {"recogniser": "test"}) as w:
        w.add("x1", ["zebra"])
    r = CliRunner().invoke(main, args + ["--methods", "awe_rescore,awe_whisper_context_list", "--dev-transcripts",
                                         str(tmp_path / "other.jsonl")])
    assert r.exit_code != 0 and "another split" in r.output


# ------------------------------------------------------------------ the evidence weighed together

def _five_hits():
    """Five utterances, one "zebra" hit each over "cap": right ones with (cosine, confidence)
    (0.9, 0.3) and (0.3, 0.9), wrong ones with (0.4, 0.4), (0.5, 0.2), (0.2, 0.5): neither piece
    alone parts them; their sum does."""
    from rescorer.decoding.transcript_spotting import TranscriptHit
    from rescorer.transcript_hits import SpottedUtterance

    evidence = {"r1": (0.9, 0.3), "r2": (0.3, 0.9), "w1": (0.4, 0.4), "w2": (0.5, 0.2), "w3": (0.2, 0.5)}
    spotted = {u: SpottedUtterance(_hyp(["the", "cap", "sat"]), [TranscriptHit("zebra", 0.2, 0.4, 1, 2)], [c], [q])
               for u, (c, q) in evidence.items()}
    refs = {u: ["the", "zebra" if u.startswith("r") else "cap", "sat"] for u in evidence}
    return spotted, refs


def test_hit_features_measure_the_margin_over_the_replaced_words_and_their_shared_spelling():
    from rescorer.decoding.transcript_spotting import TranscriptHit
    from rescorer.transcript_hits import hit_features

    hyp = _hyp(["the", "gift", "sat"])
    sub = TranscriptHit("gifts", 0.2, 0.4, 1, 2)
    conf, cos, margin, overlap, post, gain, letters = hit_features(sub, hyp, 0.7, 0.9, 0.5, [1.0, 0.6, 0.9], 2.5)
    assert letters == 5 and hit_features(TranscriptHit("anne's", 0.2, 0.4, 1, 2), hyp, 0.7, 0.9, 0.5)[6] == 5
    assert gain == 2.5 and hit_features(sub, hyp, 0.7, 0.9, 0.5, None, math.nan)[5] == 0.0  # NaN: no evidence
    assert (conf, cos, margin, post) == pytest.approx((0.9, 0.7, 0.2, 0.6)) and overlap == pytest.approx(1 - 1 / 5)
    assert hit_features(sub, hyp, 0.7, 0.9, 0.5)[4] == 0.0  # no posteriors known
    ins = TranscriptHit("zebra", 0.4, 0.4, 1, 1)  # an insertion replaces nothing
    assert hit_features(ins, hyp, -math.inf, math.nan, math.nan, [1.0, 0.6, 0.9]) == (0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 5.0)
    two = TranscriptHit("catamaran", 0.0, 0.6, 0, 3)
    f = hit_features(two, _hyp(["cat", "a", "man"]), 0.5, 0.5, 0.1, [0.2, 0.7, 0.4])
    assert f[3] == pytest.approx(1 - 2 / 9) and f[4] == pytest.approx(0.7)  # "cataman"; the surest replaced word
    # <unk> has no spelling: it shares none with the hit, as the cosine finds no rival in it
    assert hit_features(two, _hyp(["cat", "<unk>", "man"]), 0.5, 0.5, 0.1)[3] == pytest.approx(1 - 3 / 9)  # "catman"
    assert hit_features(sub, _hyp(["the", "<unk>", "sat"]), 0.7, 0.9, math.nan)[2:4] == (0.0, 0.0)


class _BigramLM:
    """A tiny LM where "he opens" is likely and "he open" is not; other words get log-zero."""

    TABLE = {("he", "<s>"): -1.0, ("opens", "he"): -1.0, ("open", "he"): -6.0, ("the", "opens"): -0.5,
             ("the", "open"): -0.5, ("door", "the"): -1.0, ("</s>", "door"): -0.5}

    def logprob(self, word, history=()):
        return self.TABLE.get((word, history[0] if history else None), -1000.0)


def test_lm_gain_prefers_the_path_the_lm_finds_likelier_and_floors_unknown_words():
    from rescorer.decoding.transcript_spotting import TranscriptHit
    from rescorer.transcript_hits import LM_FLOOR, LM_GAIN_CLIP, lm_gain

    lm = _BigramLM()
    hyp = _hyp(["he", "open", "the", "door"])
    right = TranscriptHit("opens", 0.2, 0.4, 1, 2)
    assert lm_gain(lm, hyp, right) == pytest.approx(5.0)  # -1 against -6 after "he"
    assert lm_gain(None, hyp, right) == 0.0  # no LM, no evidence
    # a word the LM lacks costs LM_FLOOR per term (not log-zero), so its context still decides
    odd = TranscriptHit("zorba", 0.2, 0.4, 1, 2)
    assert lm_gain(lm, hyp, odd) == pytest.approx(max(-LM_GAIN_CLIP, 2 * LM_FLOOR - (-6.0 - 0.5)))
    assert lm_gain(lm, _hyp(["he", "open", "<unk>", "the", "door"]), right) == pytest.approx(5.0)  # <unk> left out


def test_the_bundled_trigram_prefers_the_grammatical_word_form():
    pytest.importorskip("pocketsphinx")
    from rescorer.decoding.transcript_spotting import TranscriptHit
    from rescorer.transcript_hits import HIT_LM_BUNDLED, lm_gain, load_hit_lm

    lm = load_hit_lm(HIT_LM_BUNDLED)
    assert load_hit_lm(None) is None
    assert lm_gain(lm, _hyp(["she", "open", "the", "door"]), TranscriptHit("opens", 0.2, 0.4, 1, 2)) > 1.0
    assert lm_gain(lm, _hyp(["she", "opens", "the", "door"]), TranscriptHit("open", 0.2, 0.4, 1, 2)) < -1.0


def test_a_hit_lm_file_that_is_missing_or_not_an_lm_is_named(tmp_path):
    pytest.importorskip("pocketsphinx")
    from rescorer.transcript_hits import load_hit_lm

    with pytest.raises(FileNotFoundError, match="no LM file"):
        load_hit_lm(str(tmp_path / "missing.arpa"))
    bad = tmp_path / "bad.arpa"
    bad.write_bytes(b"\\data\\\nngram 1=2\n\n\\1-grams:\n-1.0 hello\n")  # truncated
    with pytest.raises(ValueError, match="not an LM pocketsphinx can read"):
        load_hit_lm(str(bad))


def test_a_hit_model_fitted_before_lm_gain_reads_the_features_it_names():
    from rescorer.transcript_hits import HIT_FEATURES, HitModel

    old = HitModel((1.0, 0.0, 0.0, 0.0, 0.0), 0.0, (0.5,) * 5, (1.0,) * 5, HIT_FEATURES[:5])
    assert HitModel.from_dict(old.to_dict()) == old
    x = (0.9, 0.1, 0.0, 0.0, 0.0, 25.0, 7.0)
    assert old.probability(x) == pytest.approx(1 / (1 + math.exp(-0.4)))  # the LM's gain and the letters are not read
    lm_only = HitModel((1.0,), 0.0, (0.0,), (10.0,), ("lm_gain",))
    assert lm_only.probability(x) == pytest.approx(1 / (1 + math.exp(-2.5)))
    six = HitModel((0.0,) * 5 + (1.0,), 0.0, (0.0,) * 6, (10.0,) * 6, HIT_FEATURES[:6])  # fitted before the letters
    assert HitModel.from_dict(six.to_dict()) == six and six.probability(x) == pytest.approx(lm_only.probability(x))
    with pytest.raises(ValueError, match="expected the 7 HIT_FEATURES"):
        old.probability(x[:6])


def test_hit_cosines_also_give_the_replaced_words_best_cosine_on_the_same_span():
    import torch

    from rescorer.decoding.transcript_spotting import TranscriptHit
    from rescorer.transcript_hits import hit_cosines

    class Stub:  # every span sounds like "zebra"; "cat" is halfway there
        frame_shift = 0.01
        table = {"zebra": [1.0, 0.0], "cat": [1.0, 1.0], "a": [0.0, 1.0], "man": [-1.0, 0.0]}

        def span_embeddings(self, feats, spans):
            return torch.tensor([[1.0, 0.0]] * len(spans))

        def spelling_embeddings(self, words):
            return torch.tensor([self.table[w] for w in words])

    hyp = _hyp(["cat", "a", "man"])
    hits = [TranscriptHit("zebra", 0.0, 0.6, 0, 3), TranscriptHit("zebra", 0.6, 0.6, 3, 3)]
    cos, rivals = hit_cosines(Stub(), torch.zeros(100, 2), hits, hyp)
    assert cos[0] == pytest.approx(1.0) and rivals[0] == pytest.approx(math.sqrt(0.5))  # "cat", the best of the three
    assert cos[1] == -math.inf and math.isnan(rivals[1])  # an empty insertion: nothing measured, nothing replaced
    alone, no_rivals = hit_cosines(Stub(), torch.zeros(100, 2), hits)  # without the hypothesis: no rivals
    assert alone == cos and all(math.isnan(r) for r in no_rivals)
    # a replaced <unk> has no spelling: not embedded, and with nothing else replaced there is no rival
    unk = _hyp(["<unk>", "a"])
    cos, rivals = hit_cosines(Stub(), torch.zeros(100, 2), [TranscriptHit("zebra", 0.0, 0.2, 0, 1),
                                                           TranscriptHit("zebra", 0.0, 0.4, 0, 2)], unk)
    assert cos == pytest.approx([1.0, 1.0]) and math.isnan(rivals[0]) and rivals[1] == pytest.approx(0.0)


def test_a_hit_model_fitted_on_dev_parts_hits_that_no_single_threshold_can():
    from rescorer.evaluation.transcript_spotting import fit_hit_model, hit_evidence, tune_gate
    from rescorer.transcript_hits import HitGate

    spotted, refs = _five_hits()
    model = fit_hit_model(spotted, refs)
    p = {u: model.probability(su.features()[0]) for u, su in spotted.items()}
    assert min(p["r1"], p["r2"]) > max(p["w1"], p["w2"], p["w3"])
    # features constant on dev (no LM gains, posteriors or rivals; one spelling) stay out of the model, so a
    # model fitted without an LM runs where there is none
    assert model.features == ("confidence", "cosine")
    from rescorer.rescore import RescoreConfig

    RescoreConfig(transcript_min_probability=0.5, transcript_hit_model=model.to_dict(), transcript_hit_lm=None)
    for u, gain in zip(sorted(spotted), (3.0, 2.0, -1.0, -2.0, 0.5)):
        spotted[u].lm_gains = [gain]
    assert "lm_gain" in fit_hit_model(spotted, refs).features
    assert hit_evidence([spotted], refs)["lm_gain_roc_auc"] == 1.0  # reported beside the cosine and confidence
    assert hit_evidence([spotted], refs, [model])["model_roc_auc"] == 1.0
    assert hit_evidence([spotted], refs)["cosine_roc_auc"] < 1.0  # the cosine alone cannot
    assert "lm_gain_roc_auc" not in hit_evidence([_five_hits()[0]], refs)  # no LM, no row for it
    vocab = {"the", "cap", "sat"}
    grid = [None, 0.25, 0.35, 0.45, 0.6]
    gate, rows = tune_gate(spotted, refs, grid, vocab, confidence_gates=grid)
    assert all(r["wer"] > 0 for r in rows[1:])  # no pair of thresholds adds both right hits and no wrong one
    gate, rows = tune_gate(spotted, refs, grid, vocab, confidence_gates=grid, probability_gates=[0.5], hit_model=model)
    assert gate == HitGate(None, None, 0.5, model) and rows[-1]["chosen"] and rows[-1]["wer"] == 0.0
    assert rows[-1]["probability_gate"] == 0.5 and "probability_gate" not in rows[1]
    # all right or all wrong: nothing to fit, no probability rows
    assert fit_hit_model({u: spotted[u] for u in ("r1", "r2")}, refs) is None
    _, rows = tune_gate({u: spotted[u] for u in ("w1", "w2")}, refs, [None], vocab, probability_gates=[0.5])
    assert len(rows) == 2


def test_a_lists_hit_model_is_fitted_on_the_other_lists_hits_too_each_shared_hit_once():
    from rescorer.decoding.transcript_spotting import TranscriptHit
    from rescorer.evaluation.transcript_spotting import fit_hit_model, hit_labels
    from rescorer.transcript_hits import SpottedUtterance

    spotted, refs = _five_hits()
    context = {u: spotted[u] for u in ("r1", "r2")}  # the context list's own hits: all right, nothing to fit
    assert fit_hit_model(context, refs) is None
    # the large list's spotting over the same paths holds those hits too, and the wrong ones
    x, y = hit_labels(context, refs, [spotted])
    assert len(x) == 5 and sum(y) == 2  # r1's and r2's hits counted once, not twice
    model = fit_hit_model(context, refs, pool=[spotted])
    assert model is not None and model == fit_hit_model(spotted, refs)
    p = {u: model.probability(su.features()[0]) for u, su in spotted.items()}
    assert min(p["r1"], p["r2"]) > max(p["w1"], p["w2"], p["w3"])
    # the same word on the same span from another transcript position is another hit
    other = {"r1": SpottedUtterance(spotted["r1"].hyp, [TranscriptHit("zebra", 0.2, 0.4, 1, 2, source=3)], [0.1], [0.1])}
    assert len(hit_labels(context, refs, [other])[0]) == 3
    # hits on another path (another fold's, another rescoring's) are not pooled
    moved = {"r1": SpottedUtterance(_hyp(["a", "cap", "sat"]), spotted["r1"].hits, [0.9], [0.3])}
    with pytest.raises(ValueError, match="r1 lie on another path"):
        fit_hit_model(context, refs, pool=[moved])


def _agreeing_hits():
    """160 utterances, one "zebra" hit each over "cap": right where the cosine and the confidence
    agree (both high or both low), wrong where they disagree. No weighted sum of the two parts
    them; their product does."""
    from rescorer.decoding.transcript_spotting import TranscriptHit
    from rescorer.transcript_hits import SpottedUtterance

    spotted, refs = {}, {}
    for i in range(160):
        c, q = 0.2 + 0.6 * (i % 2) + 0.01 * (i % 7), 0.2 + 0.6 * ((i // 2) % 2) + 0.01 * (i % 5)
        u = f"u{i:03d}"
        spotted[u] = SpottedUtterance(_hyp(["the", "cap", "sat"]), [TranscriptHit("zebra", 0.2, 0.4, 1, 2)], [c], [q])
        refs[u] = ["the", "zebra" if (c > 0.5) == (q > 0.5) else "cap", "sat"]
    return spotted, refs


def test_a_quadratic_hit_model_weighs_one_piece_of_evidence_by_another():
    from rescorer.evaluation.transcript_spotting import QUADRATIC_L2, fit_hit_model, hit_labels
    from rescorer.metrics import roc_auc
    from rescorer.rescore import RescoreConfig
    from rescorer.transcript_hits import HitModel, feature_pairs

    spotted, refs = _agreeing_hits()
    x, y = hit_labels(spotted, refs)
    linear = fit_hit_model(spotted, refs)
    quadratic = fit_hit_model(spotted, refs, form="quadratic")
    assert linear.form == "linear" and not linear.pair_weights and "pair_weights" not in linear.to_dict()
    assert quadratic.form == "quadratic" and len(quadratic.pair_weights) == 3  # cosine², cosine x confidence, confidence²
    assert roc_auc([linear.probability(f) for f in x], y) < 0.6  # a weighted sum cannot part them
    assert roc_auc([quadratic.probability(f) for f in x], y) == 1.0  # the product can, under the default penalty
    assert all((quadratic.probability(f) > 0.5) == right for f, right in zip(x, y))  # a gate at 0.5 parts them
    # the penalty is the form's own unless asked: a far stronger one holds every weight near zero
    assert QUADRATIC_L2 > 1
    held = fit_hit_model(spotted, refs, l2=1e6, form="quadratic")
    assert all(abs(held.probability(f) - 0.5) < 0.01 for f in x)
    # z = (x - mean) / scale; logit = bias + weights . z + pair_weights . (z_i z_j, i <= j)
    f = x[0]
    z = [(f[{"confidence": 0, "cosine": 1}[n]] - m) / s for n, m, s in zip(quadratic.features, quadratic.mean, quadratic.scale)]
    logit = (quadratic.bias + sum(w * v for w, v in zip(quadratic.weights, z))
             + sum(w * z[i] * z[j] for w, (i, j) in zip(quadratic.pair_weights, feature_pairs(2))))
    assert quadratic.probability(f) == pytest.approx(1 / (1 + math.exp(-logit)))
    # it travels as JSON with the tuned config, and the gate reads it at inference
    d = json.loads(json.dumps(quadratic.to_dict()))
    back = HitModel.from_dict(d)
    assert back.form == "quadratic" and back.probability(f) == pytest.approx(quadratic.probability(f), abs=1e-5)
    gate = RescoreConfig(transcript_min_probability=0.5, transcript_hit_model=d, transcript_hit_lm=None).transcript_gate()
    right = next(u for u in sorted(refs) if "zebra" in refs[u])
    wrong = next(u for u in sorted(refs) if "zebra" not in refs[u])
    assert spotted[right].words(gate) == ["the", "zebra", "sat"] and spotted[wrong].words(gate) == ["the", "cap", "sat"]
    with pytest.raises(ValueError, match="pair_weights: expected 3 finite numbers"):
        HitModel.from_dict({**d, "pair_weights": d["pair_weights"][:2]})
    with pytest.raises(ValueError, match="pair_weights: expected 3 finite numbers"):
        HitModel.from_dict({**d, "pair_weights": [1.0, float("nan"), 0.0]})
    with pytest.raises(ValueError, match="pair_weights: expected a list"):
        HitModel.from_dict({**d, "pair_weights": "1,2,3"})
    with pytest.raises(ValueError, match="expected keys features, weights, bias, mean, scale"):
        HitModel.from_dict({**d, "pairs": [1.0]})
    with pytest.raises(ValueError, match="hit model form 'cubic'"):
        fit_hit_model(spotted, refs, form="cubic")


def test_a_hit_model_travels_as_json_and_a_malformed_one_is_named():
    from rescorer.rescore import RescoreConfig
    from rescorer.evaluation.transcript_spotting import fit_hit_model
    from rescorer.transcript_hits import HIT_FEATURES, HitModel

    spotted, refs = _five_hits()
    model = fit_hit_model(spotted, refs)
    d = json.loads(json.dumps(model.to_dict()))
    back = HitModel.from_dict(d)
    x = spotted["r1"].features()[0]
    assert back.probability(x) == pytest.approx(model.probability(x), abs=1e-5)
    cfg = RescoreConfig(transcript_min_probability=0.5, transcript_hit_model=d)
    gate = cfg.transcript_gate()
    assert gate.probability == 0.5 and gate.model == back
    assert spotted["r1"].words(gate) == ["the", "zebra", "sat"] and spotted["w1"].words(gate) == ["the", "cap", "sat"]
    with pytest.raises(ValueError, match="needs transcript_hit_model"):
        RescoreConfig(transcript_min_probability=0.5)
    with pytest.raises(ValueError, match="this version computes"):
        RescoreConfig(transcript_min_probability=0.5, transcript_hit_model={**d, "features": ["cosine"] * len(HIT_FEATURES)})
    with pytest.raises(ValueError, match="this version computes"):
        HitModel.from_dict({**d, "features": ["whisper_margin"] + list(HIT_FEATURES[1:])})
    # a model weighing the LM's evidence cannot run without the LM
    with pytest.raises(ValueError, match="needs transcript_hit_lm"):
        RescoreConfig(transcript_min_probability=0.5, transcript_hit_lm=None,
                      transcript_hit_model=HitModel((1.0,), 0.0, (0.0,), (1.0,), ("lm_gain",)).to_dict())
    with pytest.raises(ValueError, match="transcript_hit_lm must be"):
        RescoreConfig(transcript_hit_lm=3)
    with pytest.raises(ValueError, match="finite numbers"):
        HitModel.from_dict({**d, "weights": [float("nan")] + d["weights"][1:]})
    with pytest.raises(ValueError, match="expected keys"):
        HitModel.from_dict({**d, "code": "import os"})
    with pytest.raises(ValueError, match="needs a hit model"):
        from rescorer.transcript_hits import HitGate

        spotted["r1"].words(HitGate(None, None, 0.5))


def test_a_hit_without_times_gets_no_cosine_and_no_gate_keeps_it():
    import math

    import torch

    from rescorer.decoding.transcript_spotting import TranscriptHit
    from rescorer.transcript_hits import HitGate, SpottedUtterance, hit_cosines

    class Stub:
        frame_shift = 0.01

        def span_embeddings(self, feats, spans):
            return torch.ones(len(spans), 4)

        def spelling_embeddings(self, words):
            return torch.ones(len(words), 4)

    hits = [TranscriptHit("zebra", math.nan, math.nan, 1, 2), TranscriptHit("zebra", 0.2, 0.4, 1, 2),
            TranscriptHit("zebra", 0.4, 0.4, 1, 1)]
    c, _ = hit_cosines(Stub(), torch.zeros(100, 4), hits)
    assert c[0] == -math.inf and c[1] == pytest.approx(1.0) and c[2] == -math.inf  # no span, a span, an empty one
    u = SpottedUtterance(_hyp(["the", "cap"]), hits[:1], c[:1])
    assert u.words(HitGate(0.0)) == ["the", "cap"] and u.words(HitGate()) == ["the", "zebra"]


@needs_k2
@pytest.mark.lattice
def test_the_fusion_builds_on_the_scales_awe_rescore_chose_on_each_fold(tmp_path, monkeypatch):
    """With awe_rescore among the methods, awe_ctc_rescore starts from that method's per-fold
    scales and tunes only the CTC terms on top: with a CTC model that knows nothing (uniform
    log-probs) it gives awe_rescore's hypotheses; without awe_rescore it searches the grid."""
    import torch
    from click.testing import CliRunner

    from rescorer.cli import main
    from rescorer.formats.contract import FBANK
    from rescorer.lattice.word_lattice import save_word_lattices
    from rescorer.rescore import Rescorer
    from rescorer.stages import tune_ctc
    from rescorer.tokens import TOKENS
    from tests.test_rescore import _lattice, _rescorer
    from tests.test_rescoring_eval import _write_utterances

    refs = {"u1": ["the", "cat", "sat"], "u2": ["the", "mat", "sat"], "u3": ["the", "cat", "sat"],
            "u4": ["the", "mat", "sat"]}
    wrong = {"cat": "cap", "mat": "cap"}
    lats = [_lattice([(0, 1, "the", 0, 5, -1.0, -1.0), (1, 2, wrong[refs[u][1]], 5, 10, -1.0, -1.0),
                      (1, 2, refs[u][1], 5, 10, -1.3, -1.0), (2, 3, "sat", 10, 15, -1.0, -1.0)], uid=u)
            for u in sorted(refs)]
    save_word_lattices(tmp_path / "dev_lattices.pt", lats)
    _write_utterances(tmp_path / "dev.pt", refs, {"u1": "a", "u2": "a", "u3": "b", "u4": "b"})
    _write_utterances(tmp_path / "train.pt", {"t": ["the", "cap", "cat", "mat", "sat"]}, {"t": "t"})

    class UniformCtc:  # a CTC model with no opinion: every spelling scores alike per token
        feature_spec, frame_shift, seconds = FBANK, 0.04, 0.0

        def reuse_or_compute(self, feats_by_id, stored=None):
            return {u: torch.full((f.shape[0] // 4, len(TOKENS)), -math.log(len(TOKENS))) for u, f in feats_by_id.items()}

    monkeypatch.setattr(Rescorer, "from_dir", classmethod(lambda cls, model_dir, device=None, **kw: _rescorer()))
    monkeypatch.setattr(tune_ctc.CtcPosteriors, "from_dir", classmethod(lambda cls, d, device=None: UniformCtc()))
    (tmp_path / "model").mkdir()
    (tmp_path / "ctc").mkdir()
    out = tmp_path / "wer.json"
    args = ["tune", "--corpus", "toy", "--model-dir", str(tmp_path / "model"), "--train-data", str(tmp_path / "train.pt"),
            "--dev-lattices", str(tmp_path / "dev_lattices.pt"), "--dev-features", str(tmp_path / "dev.pt"),
            "--cross-validate", "--awe-scales", "0,0.5,4", "--lm-scales", "0.5,1", "--wips=0,1", "--out", str(out),
            "--device", "cpu", "--ctc-model-dir", str(tmp_path / "ctc"), "--ctc-scales", "0,1", "--ctc-norms", "token"]
    r = CliRunner().invoke(main, args + ["--methods", "awe_rescore,awe_ctc_rescore"])
    assert r.exit_code == 0, r.output
    toy = json.loads(out.read_text())["corpora"]["toy"]
    awe, fused = toy["awe_rescore"], toy["awe_ctc_rescore"]
    assert fused["base_scales"] == "awe_rescore" and fused["wer"] == awe["wer"] == 0.0
    keys = ("awe_scale", "lm_scale", "word_insertion_penalty")
    assert [{k: c[k] for k in keys} for c in fused["scales"]] == [{k: c[k] for k in keys} for c in awe["scales"]]
    r = CliRunner().invoke(main, args + ["--methods", "awe_ctc_rescore"])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["corpora"]["toy"]["awe_ctc_rescore"]["base_scales"] == "grid"
    # CTC word spotting for a precision target dev cannot meet: each fold keeps the greedy output
    (tmp_path / "list.txt").write_text("zebra\ncatamaran\n")
    r = CliRunner().invoke(main, args + ["--methods", "ctc_word_spotting", "--word-list", str(tmp_path / "list.txt"),
                                         "--ws-bonuses", "0,3", "--ws-thresholds=-50", "--oov-min-precision", "0.9"])
    assert r.exit_code == 0, r.output
    ws = json.loads(out.read_text())["corpora"]["toy"]["ctc_word_spotting"]
    assert ws["spotting"] == ["abstained", "abstained"] and ws["oov_tokens_proposed"] == 0
    assert ws["oov_min_precision"] == 0.9 and ws["accepted_hits"] == 0


# ------------------------------------------------------------------ the lattice's words voted into the transcript

def test_vote_takes_the_lattice_word_only_where_the_transcript_is_unsure_and_the_lattice_sure():
    from rescorer.decoding.transcript_vote import vote

    whisper, conf = ["the", "cut", "sat", "down"], [0.9, 0.3, 0.9, 0.2]
    path, post = ["the", "cat", "sat", "town", "now"], [1.0, 0.95, 1.0, 0.4, 0.99]
    assert vote(whisper, conf, path, post, 0.5, 0.9) == ["the", "cat", "sat", "down"]  # "town": the lattice unsure
    assert vote(whisper, conf, path, post, 0.5, 0.3) == ["the", "cat", "sat", "town"]  # the path's extra "now": dropped
    assert vote(whisper, conf, path, post, 0.25, 0.3) == ["the", "cut", "sat", "town"]  # Whisper sure enough of "cut"
    assert vote(whisper, [0.9, math.nan, 0.9, 0.2], path, post, 0.5, 0.9) == whisper  # an unknown confidence: kept
    assert vote(whisper, None, path, post, 0.5, 0.9) == whisper
    assert vote([], [], path, post, 0.5, 0.0) == [] and vote(whisper, conf, [], [], 0.5, 0.0) == whisper
    with pytest.raises(ValueError, match="3 confidences for 4 transcript words"):
        vote(whisper, conf[:3], path, post, 0.5, 0.9)


def test_vote_drops_the_transcripts_unsure_words_that_face_nothing_on_the_path():
    from rescorer.decoding.transcript_vote import vote

    whisper, conf = ["so", "the", "cat", "um", "sat", "there"], [0.3, 0.9, 0.9, 0.1, 0.9, 0.6]
    path, post = ["the", "cat", "sat"], [1.0, 1.0, 1.0]
    assert vote(whisper, conf, path, post, 0.5, 0.9) == whisper  # no drop threshold: Whisper's extra words kept
    assert vote(whisper, conf, path, post, 0.5, 0.9, 0.2) == ["so", "the", "cat", "sat", "there"]
    assert vote(whisper, conf, path, post, 0.5, 0.9, 0.5) == ["the", "cat", "sat", "there"]  # "there": sure enough
    assert vote(whisper, conf, path, post, 0.0, 0.9, 0.7) == ["the", "cat", "sat"]  # apart from the replacing threshold
    nan = [math.nan] * len(whisper)
    assert vote(whisper, nan, path, post, 0.5, 0.9, 0.7) == whisper  # unknown confidences: never dropped
    assert vote(whisper, conf, [], [], 0.5, 0.9, 0.7) == ["the", "cat", "sat"]  # an empty path drops every unsure word


@needs_k2
@pytest.mark.lattice
def test_rescorer_tune_votes_the_lattice_words_into_whispers_transcript_tuned_on_dev(tmp_path, monkeypatch):
    """Two speakers (the two folds): Whisper unsure and wrong where the lattice is right, sure and
    right where the lattice is wrong; each fold's dev finds thresholds that take only the former,
    and the held-out speaker gets them: no error left, where each system alone has two (Whisper
    four: it also adds an unsure word the lattice lacks, which the fold's dev learns to drop)."""
    from click.testing import CliRunner

    from rescorer.cli import main
    from rescorer.formats.transcripts import TranscriptWriter
    from rescorer.rescore import Rescorer
    from tests.test_rescore import _rescorer

    refs = {"u1": ["the", "cat", "sat"], "u2": ["the", "mat", "sat"], "u3": ["the", "cat", "sat"],
            "u4": ["the", "mat", "sat"]}
    lattice_word = {"u1": "cat", "u2": "cap", "u3": "cat", "u4": "cap"}
    _write_toy_dev(tmp_path, refs, lattice_word, ["the", "cat", "cap", "mat", "sat"])
    with TranscriptWriter(tmp_path / "dev.jsonl", {"recogniser": "test"}) as w:
        for u in sorted(refs):
            right = lattice_word[u] == "cap"  # Whisper right where the lattice is wrong
            if right:
                w.add(u, ["the", "mat", "sat"], seconds=0.1, confidences=[0.9, 0.9, 0.9])
            else:  # ... and unsure and wrong where it is right, with an unsure word of its own after "sat"
                w.add(u, ["the", "cut", "sat", "so"], seconds=0.1, confidences=[0.9, 0.3, 0.9, 0.2])
    with TranscriptWriter(tmp_path / "bare.jsonl", {"recogniser": "test"}) as w:
        for u in sorted(refs):
            w.add(u, ["the", "cut", "sat"], seconds=0.1)
    model, out, args = _toy_tune_args(tmp_path, monkeypatch)
    args += ["--dev-transcripts"]
    r = CliRunner().invoke(main, args + [str(tmp_path / "dev.jsonl"), "--methods", "whisper_lattice_vote"])
    assert r.exit_code != 0 and "add awe_rescore" in r.output
    r = CliRunner().invoke(main, args + [str(tmp_path / "bare.jsonl"), "--methods", "awe_rescore,whisper_lattice_vote",
                                         "--whisper-confidence-gates", "none"])
    assert r.exit_code != 0 and "no word confidences" in r.output and "whisper_lattice_vote" in r.output
    r = CliRunner().invoke(main, args + [str(tmp_path / "dev.jsonl"), "--methods", "awe_rescore,whisper_lattice_vote"])
    assert r.exit_code == 0, r.output
    toy = json.loads(out.read_text())["corpora"]["toy"]
    assert toy["awe_rescore"]["wer"] == pytest.approx(2 / 12) and toy["whisper_transcript"]["wer"] == pytest.approx(4 / 12)
    row = toy["whisper_lattice_vote"]
    assert row["wer"] == 0.0
    assert row["scales"] == [{"max_confidence": 0.4, "min_posterior": 0.5, "max_drop_confidence": 0.3}] * 2
    assert row["added_utterances_better"] == 2 and row["added_utterances_worse"] == 0  # against Whisper alone
    assert row["rescoring_seconds"] >= row["transcribe_seconds"]
    curves = json.loads((tmp_path / "rescore_tuning_toy_lattices.json").read_text())["whisper_lattice_vote_fold0"]
    assert curves[0]["max_confidence"] == "off" and sum(bool(c.get("chosen")) for c in curves) == 1
    # the tuned thresholds travel with the model, and `rescorer rescore --transcript-mode vote` applies them
    def from_dir(cls, model_dir, device=None, **kw):
        saved = model / "rescorer.json"
        return _rescorer(**(json.loads(saved.read_text())["config"] if saved.exists() else {}))

    monkeypatch.setattr(Rescorer, "from_dir", classmethod(from_dir))
    r = CliRunner().invoke(main, args + [str(tmp_path / "dev.jsonl"), "--methods", "awe_rescore,whisper_lattice_vote",
                                         "--save-config"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((model / "rescorer.json").read_text())["config"]
    assert (cfg["vote_max_confidence"], cfg["vote_min_posterior"], cfg["vote_max_drop_confidence"]) == (0.4, 0.5, 0.3)
    rescore = ["rescore", "--model-dir", str(model), "--lattices", str(tmp_path / "dev_lattices.pt"), "--features",
               str(tmp_path / "dev.pt"), "--device", "cpu", "--transcript-mode", "vote"]
    r = CliRunner().invoke(main, rescore + ["--out", str(tmp_path / "v0")])
    assert r.exit_code != 0 and "give --transcripts" in r.output
    r = CliRunner().invoke(main, rescore + ["--out", str(tmp_path / "v1"), "--transcripts", str(tmp_path / "bare.jsonl")])
    assert r.exit_code != 0 and "no word confidences" in r.output
    r = CliRunner().invoke(main, rescore + ["--out", str(tmp_path / "v2"), "--transcripts", str(tmp_path / "dev.jsonl")])
    assert r.exit_code == 0, r.output
    hyps = dict(line.split("\t") for line in (tmp_path / "v2" / "hyps.txt").read_text().splitlines())
    assert hyps == {u: " ".join(w) for u, w in refs.items()}  # Whisper's sure words, the lattice's where it doubts
    # thresholds that take nothing on dev: the method abstains and keeps the transcript
    r = CliRunner().invoke(main, args + [str(tmp_path / "dev.jsonl"), "--methods", "awe_rescore,whisper_lattice_vote",
                                         "--whisper-vote-confidences", "0.1", "--whisper-vote-drop-confidences", "none",
                                         "--save-config"])
    assert r.exit_code == 0, r.output
    row = json.loads(out.read_text())["corpora"]["toy"]["whisper_lattice_vote"]
    assert row["scales"] == [{"vote": "abstained"}] * 2 and row["wer"] == pytest.approx(4 / 12)
    r = CliRunner().invoke(main, rescore + ["--out", str(tmp_path / "v3"), "--transcripts", str(tmp_path / "dev.jsonl")])
    assert r.exit_code == 0, r.output
    hyps = dict(line.split("\t") for line in (tmp_path / "v3" / "hyps.txt").read_text().splitlines())
    assert hyps["u1"] == "the cut sat so" and hyps["u2"] == "the mat sat"  # the transcripts as they are


@needs_k2
@pytest.mark.lattice
def test_the_vote_may_take_its_lattice_side_with_whispers_confirmed_list_words_spotted_in(tmp_path, monkeypatch):
    """Whisper unsure of a right list word the lattice lacks ("zebra" for "cap") and of a wrong one
    where the lattice is right ("zebras" for "mat"): the plain vote cannot tell them apart (both
    unsure, the lattice sure of both), but with the large list's words that the audio confirms
    spotted into the path first, "zebra" stands on both sides and only "zebras" is outvoted. Each
    fold's dev picks that side; the tuned gate travels with the model, and `rescorer rescore
    --transcript-mode vote` spots before it votes (and names the list it needs)."""
    from click.testing import CliRunner

    from rescorer.cli import main
    from rescorer.rescore import Rescorer
    from tests.test_rescore import _rescorer

    refs, _ = _write_zebra_dev(tmp_path, "large.txt", confidences=[0.9, 0.3, 0.9])
    model, out, args = _toy_tune_args(tmp_path, monkeypatch)
    args += ["--dev-transcripts", str(tmp_path / "dev.jsonl"), "--word-list", str(tmp_path / "large.txt"),
             "--whisper-gates", "none,0.5", "--whisper-confidence-gates", "none"]
    r = CliRunner().invoke(main, args + ["--methods", "awe_rescore,whisper_lattice_vote"])
    assert r.exit_code == 0, r.output
    row = json.loads(out.read_text())["corpora"]["toy"]["whisper_lattice_vote"]
    assert row["scales"] == [{"vote": "abstained"}] * 2 and row["wer"] == pytest.approx(2 / 12)  # the plain path: no gain

    def from_dir(cls, model_dir, device=None, **kw):
        saved = model / "rescorer.json"
        return _rescorer(**(json.loads(saved.read_text())["config"] if saved.exists() else {}))

    monkeypatch.setattr(Rescorer, "from_dir", classmethod(from_dir))
    r = CliRunner().invoke(main, args + ["--methods", "awe_rescore,awe_whisper_oov_recovery,whisper_lattice_vote",
                                         "--save-config"])
    assert r.exit_code == 0, r.output
    toy = json.loads(out.read_text())["corpora"]["toy"]
    row = toy["whisper_lattice_vote"]
    gate = {"gate": 0.5, "confidence_gate": None}
    assert row["wer"] == 0.0 and toy["whisper_transcript"]["wer"] == pytest.approx(2 / 12)
    assert row["scales"] == [{"max_confidence": 0.4, "min_posterior": 0.5, "max_drop_confidence": None,
                              "spot_gate": gate}] * 2
    curves = json.loads((tmp_path / "rescore_tuning_toy_lattices.json").read_text())["whisper_lattice_vote_fold0"]
    assert {c["lattice_side"] for c in curves} == {"off", "path", "spotted"}
    assert min(c["wer"] for c in curves if c["lattice_side"] == "path") > 0  # the plain path never gets there
    cfg = json.loads((model / "rescorer.json").read_text())["config"]
    assert cfg["vote_spot_gate"] == gate and cfg["vote_max_confidence"] == 0.4
    rescore = ["rescore", "--model-dir", str(model), "--lattices", str(tmp_path / "dev_lattices.pt"), "--features",
               str(tmp_path / "dev.pt"), "--device", "cpu", "--transcript-mode", "vote",
               "--transcripts", str(tmp_path / "dev.jsonl")]
    r = CliRunner().invoke(main, rescore + ["--out", str(tmp_path / "v0")])
    assert r.exit_code != 0 and "vote_spot_gate" in r.output and "--transcript-list" in r.output
    r = CliRunner().invoke(main, rescore + ["--out", str(tmp_path / "v1"), "--transcript-list", str(tmp_path / "large.txt")])
    assert r.exit_code == 0, r.output
    hyps = dict(line.split("\t") for line in (tmp_path / "v1" / "hyps.txt").read_text().splitlines())
    assert hyps == {u: " ".join(w) for u, w in refs.items()}


def test_a_spotted_path_keeps_the_paths_posteriors_and_a_gate_reads_back_from_its_row():
    from rescorer.decoding.transcript_spotting import TranscriptHit
    from rescorer.lattice.paths import WordSpan
    from rescorer.rescore import RescoreConfig
    from rescorer.transcript_hits import HitGate, SpottedUtterance

    hyp = [WordSpan("the", 0.0, 0.2), WordSpan("cap", 0.2, 0.5), WordSpan("sat", 0.5, 0.8)]
    hit = TranscriptHit("zebra", 0.2, 0.5, 1, 2, 1)
    su = SpottedUtterance(hyp, [hit], [0.9], [0.3], [math.nan], [1.0, 0.8, 0.7])
    words, post = su.spotted_path(HitGate(0.5, None))
    assert [w.word for w in words] == ["the", "zebra", "sat"] and post[0] == 1.0 and math.isnan(post[1]) and post[2] == 0.7
    words, post = su.spotted_path(HitGate(0.95, None))  # the gate keeps nothing: the path as it was
    assert [w.word for w in words] == ["the", "cap", "sat"] and post == [1.0, 0.8, 0.7]
    assert SpottedUtterance(hyp, [hit], [0.9], [0.3]).spotted_path(HitGate(0.5, None))[1] is None  # unknown posteriors
    gate = HitGate(0.2, 0.4)
    assert HitGate.from_row(gate.as_row()) == gate
    for bad, why in (({"gate": 0.2}, "expected keys"), ({"gate": "x", "confidence_gate": None}, "finite number"),
                     ({"gate": None, "confidence_gate": None, "probability_gate": 0.5}, "needs its hit_model")):
        with pytest.raises(ValueError, match=why):
            HitGate.from_row(bad)
    with pytest.raises(ValueError, match="expected keys"):
        RescoreConfig(vote_spot_gate={"cosine": 0.2})  # a malformed gate in a saved config is named on load
