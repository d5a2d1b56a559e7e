import pytest

from tests.conftest import needs_k2
from tests.test_rescore import _feats, _lattice, _rescorer

pytestmark = [needs_k2, pytest.mark.lattice]


def test_recovery_counts_recovered_and_broken():
    from rescorer.evaluation.rescoring import recovery_counts

    refs = [["the", "zebra", "sat"], ["a", "cat"]]
    base = [["the", "<unk>", "sat"], ["a", "cat"]]
    new = [["the", "zebra", "sat"], ["a", "cap"]]
    c = recovery_counts(refs, base, new, train_vocab={"the", "sat", "a", "cat"})
    assert c == {"oov_tokens_recovered": 1, "iv_tokens_broken": 1, "oov_tokens": 1, "oov_recall": 1.0,
                 "oov_tokens_proposed": 2, "oov_precision": 0.5}  # "zebra" right, "cap" (not in vocab) wrong


def test_recovery_counts_precision_counts_only_changed_oov_words():
    from rescorer.evaluation.rescoring import recovery_counts

    refs = [["the", "zebra", "sat", "down"]]
    base = [["the", "zebu", "sat", "down"]]  # "zebu": an OOV word the decoder already had
    new = [["the", "zebu", "sat", "gown"]]  # the method changed only "down" -> "gown"
    c = recovery_counts(refs, base, new, train_vocab={"the", "sat", "down"})
    assert c["oov_tokens_proposed"] == 1 and c["oov_precision"] == 0.0
    assert c["oov_recall"] == 0.0 and c["iv_tokens_broken"] == 1
    none = recovery_counts(refs, base, base, train_vocab={"the", "sat", "down"})
    assert none["oov_tokens_proposed"] == 0 and none["oov_precision"] is None


def _corpus():
    # two utterances: the decoder prefers the wrong middle word; audio says otherwise
    lats, feats, refs = {}, {}, {}
    for uid, spoken, wrong in (("u1", ["the", "cat", "sat"], "cap"), ("u2", ["the", "mat", "sat"], "cat")):
        arcs = [(0, 1, "the", 0, 5, -1.0, -1.0), (1, 2, wrong, 5, 10, -1.0, -1.0),
                (1, 2, spoken[1], 5, 10, -1.3, -1.0), (2, 3, "sat", 10, 15, -1.0, -1.0)]
        lats[uid] = _lattice(arcs, uid=uid)
        feats[uid] = _feats(spoken)
        refs[uid] = spoken
    return lats, feats, refs


def test_tune_picks_a_scale_that_lowers_wer_and_evaluate_reports_it():
    from rescorer.evaluation.rescoring import decode_all, evaluate, prepare_all, tune

    lats, feats, refs = _corpus()
    r = _rescorer(awe_scale=0.0)
    prepared = prepare_all(r, lats, feats, recover=False, progress=False)
    base = decode_all(r, prepared, r.config)
    assert base["u1"] == ["the", "cap", "sat"]
    best, curve = tune(r, prepared, refs, awe_scales=[0.0, 0.5, 1.0], lm_scales=[1.0], word_insertion_penalties=[0.0],
                       train_vocab={"the", "cat", "sat", "mat", "cap"})
    assert len(curve) == 3 and curve[0]["wer"] == pytest.approx(2 / 6)
    assert best.awe_scale > 0 and min(c["wer"] for c in curve) == 0.0
    m = evaluate(r, prepared, refs, base, {"the", "cat", "sat", "mat", "cap"}, best, decode_seconds=10.0)
    assert m["wer"] == 0.0 and m["iv_tokens_broken"] == 0
    assert m["hypotheses"]["u2"] == "the mat sat"
    assert 0 < m["rescoring_seconds_per_decode_second"] < 1


def test_missing_features_are_reported():
    from rescorer.evaluation.rescoring import prepare_all

    lats, feats, _ = _corpus()
    del feats["u2"]
    with pytest.raises(KeyError, match="no features for 1 lattices"):
        prepare_all(_rescorer(), lats, feats, recover=False, progress=False)


def test_utterances_without_a_lattice_are_scored_as_deletions(tmp_path):
    """The tune stage counts the decoder's no_lattice utterances (in the evaluated window) as empty hypotheses."""
    import json

    from rescorer.stages.tune import missing_lattices

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"no_lattice": ["u2", "u9"]}))
    lats = {"u1": object(), "u3": object()}
    assert missing_lattices(str(metrics), lats, max_utterances=0) == ["u2", "u9"]
    # with max_utterances only the ids up to the last loaded lattice belong to the window
    assert missing_lattices(str(metrics), lats, max_utterances=2) == ["u2"]
    assert missing_lattices(None, lats, max_utterances=0) == []


def _write_utterances(path, spoken_by_uid, speakers):
    """A rescorer.utterances/1 file of the corpus's features and transcripts."""
    import torch

    from tests.test_rescore import _feats

    uids = sorted(spoken_by_uid)
    feats = [_feats(spoken_by_uid[u]) for u in uids]
    offsets = torch.tensor([0] + [f.shape[0] for f in feats]).cumsum(0)
    torch.save({"format": "rescorer.utterances/1", "feats": torch.cat(feats).half(), "offsets": offsets,
                "texts": [" ".join(spoken_by_uid[u]) for u in uids], "utterance_ids": uids,
                "speakers": [speakers[u] for u in uids]}, path)


def test_rescorer_tune_cross_validates_reports_and_keeps_the_scales_with_the_model(tmp_path, monkeypatch):
    """`rescorer tune` on the corpus above (one speaker per utterance, 2 folds): each fold's
    scales come from the other utterance, every method lands in the WER file, the tuning
    curve beside it, and the chosen scales in the model's rescorer.json."""
    import json

    from click.testing import CliRunner

    from rescorer.cli import main
    from rescorer.lattice.word_lattice import save_word_lattices
    from rescorer.rescore import Rescorer

    lats, _, refs = _corpus()
    save_word_lattices(tmp_path / "dev_lattices.pt", [lats[u] for u in sorted(lats)])
    _write_utterances(tmp_path / "dev.pt", refs, {"u1": "spk1", "u2": "spk2"})
    model = tmp_path / "model"
    model.mkdir()
    # the stub encoders of test_rescore: the audio names its word, so the embedding weight must win
    monkeypatch.setattr(Rescorer, "from_dir", classmethod(lambda cls, model_dir, device=None, **kw: _rescorer()))
    out = tmp_path / "results" / "wer.json"
    args = ["tune", "--corpus", "toy", "--model-dir", str(model), "--train-data", str(tmp_path / "dev.pt"),
            "--dev-lattices", str(tmp_path / "dev_lattices.pt"), "--dev-features", str(tmp_path / "dev.pt"),
            "--cross-validate", "--methods", "awe_rescore", "--awe-scales", "0,1", "--lm-scales", "1", "--wips=0",
            "--out", str(out), "--device", "cpu"]
    r = CliRunner().invoke(main, args + ["--save-config"])
    assert r.exit_code == 0, r.output
    printed = json.loads(r.output[r.output.index("{"):])
    assert printed["awe_rescore"]["wer"] == 0.0
    doc = json.loads(out.read_text())
    toy = doc["corpora"]["toy"]
    assert toy["awe_rescore"]["wer"] == 0.0 and toy["awe_rescore"]["utterances"] == 2
    assert [s["awe_scale"] for s in toy["awe_rescore"]["scales"]] == [1.0, 1.0]  # one choice per fold
    assert toy["lattice_1best"]["wer"] == pytest.approx(2 / 6) and toy["baseline_tuned"]["wer"] == pytest.approx(2 / 6)
    run = doc["rescoring_runs"]["toy:ctc:awe_rescore"]
    assert run["protocol"] == "2-fold cross-validation over dev speakers" and run["command"].startswith("rescorer ")
    curve = json.loads((out.parent / "rescore_tuning_toy_lattices.json").read_text())
    assert set(curve) == {"awe_rescore_fold0", "awe_rescore_fold1"} and len(curve["awe_rescore_fold0"]) == 2
    assert (out.parent / "rescore_tuning_toy_lattices.png").stat().st_size > 0
    saved = json.loads((model / "rescorer.json").read_text())
    assert saved["config"]["awe_scale"] == 1.0 and saved["tuned_by"]["command"] == run["command"]

    # a second decoder's lattices keep their own scales file and their own entries
    r = CliRunner().invoke(main, args + ["--prefix", "other_", "--save-config"])
    assert r.exit_code == 0, r.output
    assert (model / "rescorer_other.json").exists() and "other_awe_rescore" in json.loads(out.read_text())["corpora"]["toy"]

    # the attention second pass re-ranks each fold's n-best with a weight tuned on the other fold
    import torch

    from rescorer.second_pass import AttentionScorer

    class NeutralAttention:  # scores every hypothesis alike: the embedding-rescored best stays
        def encode(self, feats):
            return feats

        def score(self, encoder_out, word_sequences):
            return torch.zeros(len(word_sequences), dtype=torch.float64)

    monkeypatch.setattr(AttentionScorer, "from_dir", classmethod(lambda cls, model_dir, device=None: NeutralAttention()))
    att_args = [a if a != "awe_rescore" else "awe_rescore,awe_plus_attention" for a in args]
    r = CliRunner().invoke(main, att_args + ["--prefix", "att_", "--attention-model-dir", str(model),
                                             "--attention-scales", "0.5,1"])
    assert r.exit_code == 0, r.output
    att = json.loads(out.read_text())["corpora"]["toy"]["att_awe_plus_attention"]
    assert att["wer"] == 0.0 and att["attention_scales"] == [0.5, 0.5] and att["attention_model_dir"] == str(model)


def test_rescorer_tune_names_bad_input(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from rescorer.cli import main
    from rescorer.lattice.word_lattice import save_word_lattices

    lats, _, refs = _corpus()
    save_word_lattices(tmp_path / "lats.pt", [lats[u] for u in sorted(lats)])
    _write_utterances(tmp_path / "dev.pt", refs, {"u1": "a", "u2": "b"})
    base = ["tune", "--corpus", "toy", "--model-dir", str(tmp_path), "--train-data", str(tmp_path / "dev.pt"),
            "--dev-lattices", str(tmp_path / "lats.pt"), "--dev-features", str(tmp_path / "dev.pt")]
    r = CliRunner().invoke(main, base)
    assert r.exit_code != 0 and "test lattices and test features are needed" in r.output
    r = CliRunner().invoke(main, base + ["--cross-validate", "--methods", "awe_rescore,nbest"])
    assert r.exit_code != 0 and "unknown method(s) nbest" in r.output
    r = CliRunner().invoke(main, base + ["--cross-validate", "--awe-scales", "0,x"])
    assert r.exit_code != 0 and "--awe-scales" in r.output and "comma-separated numbers" in r.output
    from rescorer.rescore import Rescorer

    monkeypatch.setattr(Rescorer, "from_dir", classmethod(lambda cls, model_dir, device=None, **kw: _rescorer()))
    r = CliRunner().invoke(main, base + ["--cross-validate", "--folds", "3"])
    assert r.exit_code != 0 and "3-fold cross-validation over speakers needs at least 3 dev speakers" in r.output
    r = CliRunner().invoke(main, base + ["--folds", "3", "--test-lattices", str(tmp_path / "lats.pt"),
                                         "--test-features", str(tmp_path / "dev.pt")])
    assert r.exit_code != 0 and "--folds is the number of speaker folds of --cross-validate" in r.output
    r = CliRunner().invoke(main, base + ["--cross-validate", "--folds", "1"])
    assert r.exit_code != 0 and "at least 2 folds" in r.output


def test_speaker_folds_report_every_utterance_once_tuned_on_other_speakers():
    from rescorer.stages.tune import speaker_folds

    speaker_of = {f"u{i}": f"s{i % 7}" for i in range(30)}  # 7 speakers
    lats = {u: object() for u in speaker_of}
    for k in (2, 3, 5, 7):
        folds = speaker_folds(lats, speaker_of, k, seed=0)
        assert len(folds) == k
        reported = [u for _, held in folds for u in held]
        assert sorted(reported) == sorted(lats)  # each utterance reported exactly once
        for tune, held in folds:
            assert set(tune) | set(held) == set(lats)
            assert not {speaker_of[u] for u in tune} & {speaker_of[u] for u in held}  # no speaker on both sides
        sizes = sorted(len({speaker_of[u] for u in held}) for _, held in folds)
        assert sizes[-1] - sizes[0] <= 1  # speaker groups as even as they can be
    # two folds: halves of the permuted speakers, the first half tuned on first (the protocol of every committed 2-fold figure)
    import numpy as np

    order = np.random.default_rng(0).permutation(sorted(set(speaker_of.values()))).tolist()
    (tune0, held0), (tune1, held1) = speaker_folds(lats, speaker_of, 2, seed=0)
    assert {speaker_of[u] for u in tune0} == set(order[:3]) == {speaker_of[u] for u in held1}
    assert speaker_folds(lats, speaker_of, 3, seed=1) != speaker_folds(lats, speaker_of, 3, seed=0)


def test_a_corpus_name_with_a_slash_names_a_tuning_curve_file_not_a_directory():
    from rescorer.stages.tune import tuning_curve_tag

    assert tuning_curve_tag("speechocean762_dev/whisper_wordrich") == "speechocean762_dev_whisper_wordrich_lattices"
    assert tuning_curve_tag("synthetic", "pocketsphinx_") == "synthetic_pocketsphinx"
    assert "/" not in tuning_curve_tag("../a/b", "x") and tuning_curve_tag("///") == "corpus_lattices"


def test_recovery_is_kept_only_for_a_dev_gain_or_a_met_precision_target():
    from rescorer.evaluation.rescoring import choose_recovery

    off = {"wer": 0.30}
    rows = [{"wer": 0.31, "added_oov_recovered": 6, "added_oov_precision": 0.5},
            {"wer": 0.30, "added_oov_recovered": 3, "added_oov_precision": 0.9},
            {"wer": 0.29, "added_oov_recovered": 2, "added_oov_precision": 0.8},
            {"wer": 0.29, "added_oov_recovered": 1, "added_oov_precision": 1.0}]
    assert choose_recovery(off, rows) == 2  # the lowest dev WER, the first of equals
    assert choose_recovery({"wer": 0.29}, rows) is None  # no gain over rescoring alone: abstain
    assert choose_recovery(off, rows, min_precision=0.8) == 1  # most recovered at >= 0.8, WER not raised
    assert choose_recovery(off, rows, min_precision=0.95) == 3
    assert choose_recovery(off, rows, min_precision=0.4) == 1  # row 0 raises the WER
    assert choose_recovery({"wer": 0.2}, rows, min_precision=0.5) is None  # every point raises the WER
    assert choose_recovery(off, [{"wer": 0.2, "added_oov_recovered": 0, "added_oov_precision": None}], 0.5) is None


def _recovery_corpus():
    """u1: the audio says "zebra" and so does the reference; u2: the audio says "zebra" but the
    reference says "cat" (recovery's word is wrong there). The decoder has "cat" on both."""
    from tests.test_rescore import CAP_WORDS

    arcs = [(0, 1, "the", 0, 5, 0.0, 0.0), (1, 2, "cat", 5, 10, -1.0, -1.0), (1, 2, "cap", 5, 10, -1.1, -1.0),
            (1, 2, "mat", 5, 10, -1.2, -1.0)]
    lats = {u: _lattice(arcs, words=CAP_WORDS, uid=u) for u in ("u1", "u2")}
    feats = {u: _feats(["the", "zebra"]) for u in lats}
    refs = {"u1": ["the", "zebra"], "u2": ["the", "cat"]}
    return lats, feats, refs


@pytest.mark.parametrize("utts, min_precision, recovers", [
    (["u1"], None, True),     # recovery lowers the dev WER
    (["u2"], None, False),    # it only adds a wrong word: abstain
    (["u1", "u2"], None, False),  # one right, one wrong: no WER gain, abstain
    (["u1", "u2"], 0.5, True),    # ... but a precision target of 0.5 is met without raising the WER
    (["u1", "u2"], 0.8, False),   # ... and one of 0.8 is not
])
def test_two_step_recovery_abstains_unless_dev_shows_what_is_asked(utts, min_precision, recovers):
    from rescorer.evaluation.rescoring import abstained, decode_all, prepare_all, tune_recovery
    from tests.test_rescore import _cap_rescorer

    lats, feats, refs = _recovery_corpus()
    lats = {u: lats[u] for u in utts}
    r = _cap_rescorer(awe_scale=2.0)
    prepared = prepare_all(r, lats, feats, recover=True, progress=False)
    best, curve = tune_recovery(r, prepared, refs, [2.0], [1.0], [0.0], train_vocab={"the", "cat", "cap", "mat"},
                                oov_lm_scores=[-5.0, -2.0], min_precision=min_precision)
    assert abstained(best) is not recovers
    assert sum(bool(row.get("chosen")) for row in curve) == 1
    chosen = next(row for row in curve if row.get("chosen"))
    assert chosen["step"] == ("recovery" if recovers else "scales")
    hyps = decode_all(r, prepared, best)
    assert hyps["u1" if "u1" in utts else "u2"] == (["the", "zebra"] if recovers else ["the", "cat"])
    assert all("added_oov_precision" in row and "added_iv_broken" in row for row in curve if row["step"] == "recovery")


def test_sign_test_counts_utterances_made_better_and_worse():
    from rescorer.evaluation.rescoring import paired_sign_test

    refs = [["a", "zebra"], ["a", "cat"], ["the", "ox"], ["x"]]
    without = [["a", "cap"], ["a", "cat"], ["the", "ax"], ["x"]]
    with_ = [["a", "zebra"], ["a", "cab"], ["the", "ox"], ["x"]]  # two better, one worse, one unchanged
    t = paired_sign_test(refs, without, with_)
    assert (t["added_utterances_better"], t["added_utterances_worse"]) == (2, 1)
    assert t["added_sign_test_p"] == pytest.approx(4 / 8)  # P(X >= 2 | n = 3, 1/2)
    assert paired_sign_test(refs, without, without)["added_sign_test_p"] == 1.0
    ten = paired_sign_test([["a"]] * 10, [["b"]] * 10, [["a"]] * 10)
    assert ten["added_sign_test_p"] == pytest.approx(1 / 1024, abs=1e-6)  # rounded to 6 places


def test_choose_recovery_with_a_sign_test_keeps_only_gains_spread_over_utterances():
    from rescorer.evaluation.rescoring import choose_recovery

    off = {"wer": 0.50}
    lucky = {"wer": 0.49, "added_sign_test_p": 0.5, "added_oov_precision": 0.6, "added_oov_recovered": 3}
    spread = {"wer": 0.495, "added_sign_test_p": 0.01, "added_oov_precision": 0.9, "added_oov_recovered": 2}
    assert choose_recovery(off, [lucky, spread]) == 0  # the lowest dev WER
    assert choose_recovery(off, [lucky, spread], max_p=0.05) == 1  # the one whose gain is significant
    assert choose_recovery(off, [lucky], max_p=0.05) is None  # none: abstain
    assert choose_recovery(off, [lucky, spread], min_precision=0.5, max_p=0.05) == 1


def test_a_precision_target_with_a_margin_asks_a_few_added_words_for_more_than_many():
    from rescorer.evaluation.rescoring import choose_recovery, precision_lower_bound

    assert precision_lower_bound(8, 10, 0.0) == pytest.approx(0.8)
    assert precision_lower_bound(3, 3, 1.0) == pytest.approx(0.75)  # below 1 with all right: not the normal bound's 1
    # the same precision is surer the more words it rests on
    assert precision_lower_bound(8, 10, 1.0) < precision_lower_bound(80, 100, 1.0) < 0.8
    assert precision_lower_bound(0, 0, 1.0) == 0.0
    off = {"wer": 0.30}
    rows = [{"wer": 0.28, "added_oov_recovered": 8, "added_oov_proposed": 10, "added_oov_precision": 0.8},
            {"wer": 0.29, "added_oov_recovered": 6, "added_oov_proposed": 6, "added_oov_precision": 1.0}]
    assert choose_recovery(off, rows, min_precision=0.8) == 0  # the most OOV words at the target
    assert choose_recovery(off, rows, min_precision=0.8, precision_z=1.0) == 1  # 8 of 10 may well be 0.7
    assert choose_recovery(off, rows[:1], min_precision=0.8, precision_z=1.0) is None  # none such: abstain


def test_tune_settings_check_the_sign_test_level():
    from rescorer.stages import StageError
    from rescorer.stages.tune import TuneSettings

    base = dict(corpus="c", model_dir="m", train_data="t", dev_lattices="d", dev_features="f", awe_scales=(0,),
                lm_scales=(1,), wips=(0,), am_scale=1.0, attention_scales=(0,), attention_nbest=1, prune_posterior=0,
                prune_scale=1, word_list_size=10, max_utterances=0, seed=0, out="o", cross_validate=True)
    with pytest.raises(StageError, match="--oov-max-sign-p must be in"):
        TuneSettings(**base, oov_max_sign_p=0.0)
    with pytest.raises(StageError, match="two-step"):
        TuneSettings(**base, oov_max_sign_p=0.05, recovery_tuning="joint")
    s = TuneSettings(**base, oov_max_sign_p=0.05)
    assert s.keep_rule() == {"oov_max_sign_p": 0.05} and "sign test p <= 0.05" in s.abstain_reason()
    with pytest.raises(StageError, match="hit_model_hits must be one of all_lists, own, not 'every'"):
        TuneSettings(**base, hit_model_hits="every")
    with pytest.raises(StageError, match="hit_model_form must be one of linear, quadratic, not 'cubic'"):
        TuneSettings(**base, hit_model_form="cubic")
    with pytest.raises(StageError, match="margin on --oov-min-precision: give the target"):
        TuneSettings(**base, oov_min_precision_z=1.0)
    with pytest.raises(StageError, match="standard errors >= 0"):
        TuneSettings(**base, oov_min_precision=0.8, oov_min_precision_z=-1.0)
    s = TuneSettings(**base, oov_min_precision=0.8, oov_min_precision_z=1.0)
    assert s.keep_rule() == {"oov_min_precision": 0.8, "oov_min_precision_z": 1.0}
    assert "reach precision 0.8 (1 standard errors down) without raising the WER" in s.abstain_reason()
