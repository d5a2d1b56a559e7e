"""CTC fusion on hand-built lattices: arc CTC scores, spotted words as arcs, the fused decision."""

import pytest
import torch

from tests.conftest import needs_k2
from tests.test_rescore import _feats, _lattice, _rescorer
from tests.test_word_spotting import planted, spell

pytestmark = [needs_k2, pytest.mark.lattice]


class StubPosteriors:
    frame_shift = 0.04


def _the_cat_or_zebra(frame_shift=0.04, scale=1):
    # the [0, 10) then cat (am -1) or zebra (am -3) over [10, 20), in 40 ms frames (x scale for 10 ms)
    s = scale
    return _lattice([(0, 1, "the", 0, 10 * s, -1.0, -1.0), (1, 2, "cat", 10 * s, 20 * s, -1.0, -1.0),
                     (1, 2, "zebra", 10 * s, 20 * s, -3.0, -1.0), (2, 3, "on", 20 * s, 25 * s, -1.0, -1.0)],
                    frame_shift=frame_shift)


def _log_probs():
    zebra = [(10 + i, c) for i, c in enumerate("zebra")] + [(19, "|")]
    return planted(25, spell("the", 0) + zebra + spell("on", 20, 1))


def test_arc_ctc_scores_equal_the_span_scorer_and_pocketsphinx_frames_give_the_same():
    from rescorer.decoding.ctc_scores import SpanScorer, arc_ctc_scores

    lp = _log_probs()
    lat = _the_cat_or_zebra()
    got = arc_ctc_scores(lat, SpanScorer(lp), 0.04)
    labels = lat.fsa.labels.long()
    words = [lat.words.get(int(w)) if w > 0 else None for w in labels]
    for i, w in enumerate(words):
        if labels[i] > 0:
            s, e = int(lat.fsa.start_frame[i]), int(lat.fsa.end_frame[i])
            ll, fr, tok = SpanScorer(lp).scores(torch.tensor([[s, e]]), [w])
            assert float(got["none"][i]) == pytest.approx(float(ll[0]), rel=1e-5)
            assert float(got["token"][i]) == pytest.approx(float(ll[0]) / int(tok[0]), rel=1e-5)
            assert float(got["frame"][i]) == pytest.approx(float(ll[0]) / int(fr[0]), rel=1e-5)
        else:
            assert float(got["none"][i]) == 0.0
    assert got["none"][words.index("zebra")] > got["none"][words.index("cat")] + 10
    ps = _the_cat_or_zebra(frame_shift=0.01, scale=4)  # the same lattice in 10 ms frames
    assert torch.equal(arc_ctc_scores(ps, SpanScorer(lp), 0.04)["none"], got["none"])


def test_the_ctc_score_flips_the_decision_to_the_spelled_word():
    from rescorer.decoding.ctc_scores import SpanScorer, arc_ctc_scores
    from rescorer.rescore import RescoreConfig
    from rescorer.lattice.word_lattice import best_path_hypothesis

    r = _rescorer(awe_scale=0.0)
    lat = _the_cat_or_zebra()
    ctc = arc_ctc_scores(lat, SpanScorer(_log_probs()), 0.04)["token"]
    awe = r.awe_scores(lat, _feats(["the", "zebra", "on"], frames_per_word=40)[:100])
    pick = lambda k: best_path_hypothesis(r.apply_scores(lat, awe, RescoreConfig(awe_scale=0.0, ctc_scale=k), ctc)).word_sequence
    assert pick(0.0) == ["the", "cat", "on"]
    assert pick(1.0) == ["the", "zebra", "on"]


def test_spotted_words_become_arcs_over_their_spans():
    from rescorer.decoding.word_spotting import SpottedWord
    from rescorer.rescore_ctc import add_spotted_arcs

    lat = _lattice([(0, 1, "the", 0, 10, -1.0, -1.0), (1, 2, "cat", 10, 15, -2.0, -1.0),
                    (2, 3, "sat", 15, 20, -0.5, -1.0), (1, 3, "mat", 10, 20, -4.0, -1.0), (3, 4, "on", 20, 25, -1.0, -1.0)])
    hits = [SpottedWord("pachyderm", 10, 20, 5.0, -1.0), SpottedWord("zebra", 40, 50, 5.0, -1.0)]
    out, n = add_spotted_arcs(lat, hits, 0.04, oov_lm_score=-7.0)
    assert n == 1  # the second hit lies past the lattice: no states near its ends
    assert "pachyderm" in out.words and "pachyderm" not in lat.words  # the input table is left alone
    new = (out.fsa.labels == out.words["pachyderm"]).nonzero().flatten()
    assert new.numel() == 1
    i = int(new[0])
    arc = out.fsa.arcs.values()[i, :3].tolist()
    assert arc[:2] == [1, 3]
    assert float(out.fsa.am_scores[i]) == pytest.approx(-2.5)  # cat + sat beats mat
    assert float(out.fsa.lm_scores[i]) == -7.0 and bool(out.fsa.oov_lm_arcs[i])
    assert (int(out.fsa.start_frame[i]), int(out.fsa.end_frame[i])) == (10, 20)
    again, m = add_spotted_arcs(out, hits[:1], 0.04, oov_lm_score=-7.0)
    assert m == 0  # already there


def test_fusion_recovers_a_spotted_oov_word():
    from rescorer.decoding.ctc_scores import CtcPosteriors
    from rescorer.decoding.word_spotting import SpottingConfig
    from rescorer.rescore import RescoreConfig
    from rescorer.rescore_ctc import CtcFusion, FusionConfig

    r = _rescorer(awe_scale=0.0, oov_topk=0)
    lat = _lattice([(0, 1, "the", 0, 10, -1.0, -1.0), (1, 2, "cat", 10, 20, -1.0, -1.0), (2, 3, "on", 20, 25, -1.0, -1.0)])
    fusion = CtcFusion(r, StubPosteriors(), ["zebra", "giraffe"], FusionConfig(spotting=SpottingConfig(bonus=2.0)))
    feats = _feats(["the", "zebra", "on"], frames_per_word=40)[:100]
    fused = fusion.prepare(lat, feats, _log_probs(), recover=True)
    assert [h.word for h in fused.hits] == ["zebra"] and fused.hit_arcs == 1
    cfg = RescoreConfig(awe_scale=0.0, ctc_scale=1.0, oov_lm_score=-3.0)
    assert fused.decode(r, cfg, "token") == ["the", "zebra", "on"]
    assert fused.decode(r, RescoreConfig(awe_scale=0.0, ctc_scale=0.0, oov_lm_score=-3.0), "token") == ["the", "cat", "on"]


def test_a_batch_is_prepared_as_its_utterances_one_by_one():
    from rescorer.decoding.word_spotting import SpottingConfig
    from rescorer.rescore import RescoreConfig
    from rescorer.rescore_ctc import CtcFusion, FusionConfig

    r = _rescorer(awe_scale=1.0, oov_topk=2, oov_min_similarity=0.5)
    fusion = CtcFusion(r, StubPosteriors(), ["zebra", "giraffe"], FusionConfig(spotting=SpottingConfig(bonus=2.0)))
    lats = [_lattice([(0, 1, "the", 0, 10, -1.0, -1.0), (1, 2, "cat", 10, 20, -1.0, -1.0), (2, 3, "on", 20, 25, -1.0, -1.0)]),
            _the_cat_or_zebra()]
    feats = [_feats(["the", "zebra", "on"], frames_per_word=40)[:100], _feats(["the", "cat", "on"], frames_per_word=40)[:100]]
    lps = [_log_probs(), _log_probs()]
    batch = fusion.prepare_batch(lats, feats, lps, recover=True)
    cfg = RescoreConfig(awe_scale=1.0, ctc_scale=1.0, oov_lm_score=-3.0)
    for lat, f, lp, b in zip(lats, feats, lps, batch):
        one = fusion.prepare(lat, f, lp, recover=True)
        assert torch.allclose(one.awe, b.awe) and one.hit_arcs == b.hit_arcs and one.hits == b.hits
        assert all(torch.allclose(one.ctc[k], b.ctc[k]) for k in one.ctc)
        assert one.decode(r, cfg, "token") == b.decode(r, cfg, "token")
    assert batch[0].decode(r, cfg, "token") == ["the", "zebra", "on"]


def test_fusion_with_added_words_is_tuned_in_two_steps():
    """Scales (and the CTC normalisation) first with every added arc priced out, then the
    added words' LM cost at those scales; the chosen cost recovers the spotted word."""
    from rescorer.decoding.word_spotting import SpottingConfig
    from rescorer.evaluation.ctc_rescoring import tune_fused
    from rescorer.rescore_ctc import CtcFusion, FusionConfig

    r = _rescorer(awe_scale=0.0, oov_topk=0)
    lat = _lattice([(0, 1, "the", 0, 10, -1.0, -1.0), (1, 2, "cat", 10, 20, -1.0, -1.0), (2, 3, "on", 20, 25, -1.0, -1.0)])
    fusion = CtcFusion(r, StubPosteriors(), ["zebra", "giraffe"], FusionConfig(spotting=SpottingConfig(bonus=2.0)))
    fused = fusion.prepare(lat, _feats(["the", "zebra", "on"], frames_per_word=40)[:100], _log_probs(), recover=True)
    refs = {"u": ["the", "zebra", "on"]}
    best, norm, curve, gate = tune_fused(r, {"u": fused}, refs, [0.0], [0.0, 1.0], ["frame", "token"], [1.0], [0.0],
                                         oov_lm_scores=[-30.0, -3.0], recovered=True)
    assert gate is None  # no gates asked
    steps = [row["step"] for row in curve]
    assert steps == ["scales"] * 3 + ["recovery"] * 6  # ctc 0 (one norm) + ctc 1 x 2 norms; then x 2 LM costs
    assert all(row["oov_lm_score"] < -1e3 for row in curve[:3])
    assert curve[0]["ctc_scale"] == 0.0 and all(row["wer"] == curve[0]["wer"] for row in curve[:3])  # zebra unreachable
    assert best.oov_lm_score == -3.0 and best.ctc_scale == 1.0 and fused.decode(r, best, norm) == ["the", "zebra", "on"]
    # without added words: one grid over everything
    _, _, joint, _ = tune_fused(r, {"u": fused}, refs, [0.0], [0.0, 1.0], ["frame", "token"], [1.0], [0.0],
                                oov_lm_scores=[-30.0, -3.0])
    assert len(joint) == 6 and "step" not in joint[0]


def test_fusion_adds_no_word_where_dev_shows_no_gain_or_misses_the_precision_target():
    """The spotted "zebra" is wrong for this reference: step 2 cannot lower the dev WER, so the
    tuned fusion prices every added arc out (step 1's point, the decoder's words stay); when it
    is right, a precision target of 0.8 keeps it."""
    from rescorer.decoding.word_spotting import SpottingConfig
    from rescorer.evaluation.ctc_rescoring import tune_fused
    from rescorer.evaluation.rescoring import abstained
    from rescorer.rescore_ctc import CtcFusion, FusionConfig

    r = _rescorer(awe_scale=0.0, oov_topk=0)
    lat = _lattice([(0, 1, "the", 0, 10, -1.0, -1.0), (1, 2, "cat", 10, 20, -1.0, -1.0), (2, 3, "on", 20, 25, -1.0, -1.0)])
    fusion = CtcFusion(r, StubPosteriors(), ["zebra", "giraffe"], FusionConfig(spotting=SpottingConfig(bonus=2.0)))
    fused = fusion.prepare(lat, _feats(["the", "zebra", "on"], frames_per_word=40)[:100], _log_probs(), recover=True)
    for ref, target, adds in ((["the", "cat", "on"], None, False), (["the", "zebra", "on"], 0.8, True)):
        best, norm, curve, gate = tune_fused(r, {"u": fused}, {"u": ref}, [0.0], [0.0, 1.0], ["token"], [1.0], [0.0],
                                             oov_lm_scores=[-30.0, -3.0], recovered=True,
                                             train_vocab={"the", "cat", "on"}, min_precision=target)
        assert abstained(best) is not adds
        assert fused.decode(r, best, norm, gate) == (["the", "zebra", "on"] if adds else ["the", "cat", "on"])
        assert [row["step"] for row in curve if row.get("chosen")] == (["recovery"] if adds else ["scales"])


def test_added_arcs_carry_both_views_evidence_and_a_gate_abstains_on_them():
    """The spotted word that the audio and the letters both back gets a high embedding posterior
    and a positive CTC margin; the decoder's own arcs get none (+inf: no gate drops them). A gate
    above its evidence takes the word out of every path (the decoder's word stays), one below
    keeps it; tuning picks the gate that recovers the reference's word."""
    from rescorer.decoding.word_spotting import SpottingConfig
    from rescorer.evaluation.ctc_rescoring import tune_fused
    from rescorer.lattice.scores import oov_lm_arcs
    from rescorer.rescore import RescoreConfig
    from rescorer.rescore_ctc import CtcFusion, EvidenceGate, FusionConfig

    r = _rescorer(awe_scale=0.0, oov_topk=0)
    lat = _lattice([(0, 1, "the", 0, 10, -1.0, -1.0), (1, 2, "cat", 10, 20, -1.0, -1.0), (2, 3, "on", 20, 25, -1.0, -1.0)])
    cfg = FusionConfig(spotting=SpottingConfig(bonus=2.0), evidence=True, evidence_rivals=3)
    fusion = CtcFusion(r, StubPosteriors(), ["zebra", "giraffe"], cfg)
    fused = fusion.prepare(lat, _feats(["the", "zebra", "on"], frames_per_word=40)[:100], _log_probs(), recover=True)
    added = oov_lm_arcs(fused.lattice.fsa)
    assert int(added.sum()) == 1
    post, margin = fused.evidence["posterior"], fused.evidence["ctc_margin"]
    assert torch.isinf(post[~added]).all() and torch.isinf(margin[~added]).all()
    p, m = float(post[added]), float(margin[added])
    assert 0.5 < p <= 1.0 and m > 0  # the audio says zebra, and so do its letters, ahead of "cat" and the others
    rc = RescoreConfig(awe_scale=0.0, ctc_scale=1.0, oov_lm_score=-3.0)
    assert fused.decode(r, rc, "token") == ["the", "zebra", "on"]
    assert fused.decode(r, rc, "token", EvidenceGate(min_posterior=p - 0.01, min_ctc_margin=m - 0.01)) == ["the", "zebra", "on"]
    assert fused.decode(r, rc, "token", EvidenceGate(min_ctc_margin=m + 0.01)) == ["the", "cat", "on"]
    assert fused.decode(r, rc, "token", EvidenceGate(min_posterior=min(1.0, p + 1e-3) + 1e-3)) == ["the", "cat", "on"]
    # tuned with the strictest gate first: the one that still recovers zebra wins
    gates = [EvidenceGate(min_ctc_margin=m + 1.0), EvidenceGate(min_ctc_margin=m - 0.5), None]
    best, norm, curve, gate = tune_fused(r, {"u": fused}, {"u": ["the", "zebra", "on"]}, [0.0], [1.0], ["token"], [1.0],
                                         [0.0], oov_lm_scores=[-3.0], recovered=True, gates=gates)
    assert gate == gates[1] and fused.decode(r, best, norm, gate) == ["the", "zebra", "on"]
    assert [row.get("oov_min_ctc_margin") for row in curve if row.get("step") == "recovery"] == [m + 1.0, m - 0.5, None]
    # a gate without the evidence computed is a clear error
    plain = CtcFusion(r, StubPosteriors(), ["zebra", "giraffe"], FusionConfig(spotting=SpottingConfig(bonus=2.0)))
    unproven = plain.prepare(lat, _feats(["the", "zebra", "on"], frames_per_word=40)[:100], _log_probs(), recover=True)
    with pytest.raises(ValueError, match="evidence"):
        unproven.decode(r, rc, "token", EvidenceGate(min_posterior=0.1))


def test_rescorer_tune_spots_words_into_the_lattices_1best_as_well_as_the_greedy_one(tmp_path, monkeypatch):
    """`lattice_ctc_word_spotting`: CTC-WS with the same hits, merged into each lattice's 1-best
    under the decoder's scales tuned on dev, instead of the CTC greedy 1-best: here the lattice
    heard "sat" (at a higher LM weight than its own) that the CTC greedy output drops, so only
    the tuned lattice's edit is right."""
    import json

    from click.testing import CliRunner

    from rescorer.cli import main
    from rescorer.formats.contract import FBANK
    from rescorer.lattice.word_lattice import save_word_lattices
    from rescorer.rescore import Rescorer
    from rescorer.stages import tune_ctc
    from rescorer.tokens import TOKEN_ID
    from tests.test_rescoring_eval import _write_utterances

    refs = {u: ["the", "zebra", "sat"] for u in ("u1", "u2", "u3", "u4")}
    # "mat" wins at the lattice's own LM weight (1), "sat" at twice it
    lats = [_lattice([(0, 1, "the", 0, 5, -1.0, -1.0), (1, 2, "cap", 5, 10, -1.0, -1.0),
                      (2, 3, "mat", 10, 15, -1.0, -1.0), (2, 3, "sat", 10, 15, -1.6, -0.5)], uid=u)
            for u in sorted(refs)]
    save_word_lattices(tmp_path / "dev_lattices.pt", lats)
    _write_utterances(tmp_path / "dev.pt", refs, {"u1": "a", "u2": "a", "u3": "b", "u4": "b"})
    _write_utterances(tmp_path / "train.pt", {"t": ["the", "cap", "cat", "sat"]}, {"t": "t"})
    lp = planted(20, spell("the", 0, step=1) + spell("zebro", 5, step=1))  # greedy: "the zebro", no "sat"
    lp[9, TOKEN_ID["a"]] = lp[9, TOKEN_ID["o"]] - 0.5
    lp = lp.log_softmax(1)

    class PlantedCtc:  # at the lattices' frame rate, so a lattice frame is a CTC frame
        feature_spec, frame_shift, seconds = FBANK, 0.04, 0.0

        def reuse_or_compute(self, feats_by_id, stored=None):
            return {u: lp.clone() for u in feats_by_id}

    monkeypatch.setattr(Rescorer, "from_dir", classmethod(lambda cls, model_dir, device=None, **kw: _rescorer()))
    monkeypatch.setattr(tune_ctc.CtcPosteriors, "from_dir", classmethod(lambda cls, d, device=None: PlantedCtc()))
    (tmp_path / "model").mkdir()
    (tmp_path / "ctc").mkdir()
    (tmp_path / "list.txt").write_text("zebra\ncatamaran\n")
    out = tmp_path / "wer.json"
    r = CliRunner().invoke(main, args := [
        "tune", "--corpus", "toy", "--model-dir", str(tmp_path / "model"), "--train-data", str(tmp_path / "train.pt"),
        "--dev-lattices", str(tmp_path / "dev_lattices.pt"), "--dev-features", str(tmp_path / "dev.pt"),
        "--cross-validate", "--out", str(out), "--device", "cpu", "--ctc-model-dir", str(tmp_path / "ctc"),
        "--methods", "ctc_word_spotting,lattice_ctc_word_spotting", "--word-list", str(tmp_path / "list.txt"),
        "--ws-bonuses", "0,1", "--ws-thresholds=-50", "--prefix", "ps_"])
    assert r.exit_code == 0, r.output
    toy = json.loads(out.read_text())["corpora"]["toy"]
    on_lattice, on_greedy = toy["ps_lattice_ctc_word_spotting"], toy["ps_ctc_word_spotting"]
    assert on_lattice["base"] == "lattice_1best" and on_greedy["base"] == "ctc_greedy"
    assert on_lattice["wer"] == 0.0 and on_lattice["oov_recall"] == 1.0 and on_lattice["accepted_hits"] == 4
    assert on_greedy["wer"] == pytest.approx(1 / 3) and on_greedy["oov_recall"] == 1.0
    assert [c["bonus"] for c in on_lattice["spotting"]] == [1.0, 1.0]
    assert [d["lm_scale"] for d in on_lattice["decoder_scales"]] == [2.0, 2.0] and on_lattice["edits"] == "baseline_tuned"
    # counted against the lattice's own 1-best ("the cap mat"), added against the tuned one ("the cap sat")
    assert on_lattice["iv_tokens_broken"] == 0 and on_lattice["added_oov_recovered"] == 4
    # the fusion's log-probs at a temperature fitted on each fold's dev transcripts; spotting keeps the model's
    both = "lattice_ctc_word_spotting,awe_ctc_rescore"
    r = CliRunner().invoke(main, [both if a.startswith("ctc_word_spotting,") else a for a in args]
                           + ["--ctc-scales", "0,1", "--ctc-norms", "token", "--ctc-temperatures", "1,3"])
    assert r.exit_code == 0, r.output
    toy = json.loads(out.read_text())["corpora"]["toy"]
    fitted = toy["ps_awe_ctc_rescore"]["ctc_temperature"]
    assert len(fitted) == 2 and set(fitted) <= {1.0, 3.0}
    assert "ctc_temperature" not in toy["ps_lattice_ctc_word_spotting"]
    assert toy["ps_lattice_ctc_word_spotting"]["wer"] == 0.0


def test_the_tuned_fusion_travels_with_the_model_and_rescorer_rescore_applies_it(tmp_path, monkeypatch, caplog):
    """`rescorer tune --save-config` with awe_ctc_rescore keeps the fusion's scales, CTC
    normalisation and temperature beside the embedder (rescorer[_prefix]_ctc_fusion.json, not
    the embedding methods' file); `rescorer rescore --ctc-model-dir` applies them, recovering the
    spotted word on new lattices as tuning did; a config without them is refused by name."""
    import json

    from click.testing import CliRunner

    from rescorer.cli import main
    from rescorer.formats.contract import FBANK
    from rescorer.lattice.word_lattice import save_word_lattices
    from rescorer.rescore import Rescorer
    from rescorer.stages import tune_ctc
    from rescorer.tokens import TOKEN_ID
    from tests.test_rescoring_eval import _write_utterances

    refs = {u: ["the", "zebra", "sat"] for u in ("u1", "u2", "u3", "u4")}
    lats = [_lattice([(0, 1, "the", 0, 5, -1.0, -1.0), (1, 2, "cap", 5, 10, -1.0, -1.0),
                      (2, 3, "sat", 10, 15, -1.0, -1.0)], uid=u) for u in sorted(refs)]
    save_word_lattices(tmp_path / "dev_lattices.pt", lats)
    _write_utterances(tmp_path / "dev.pt", refs, {"u1": "a", "u2": "a", "u3": "b", "u4": "b"})
    _write_utterances(tmp_path / "train.pt", {"t": ["the", "cap", "cat", "sat"]}, {"t": "t"})
    lp = planted(20, spell("the", 0, step=1) + spell("zebra", 5, step=1) + spell("sat", 11, step=1))

    class PlantedCtc:
        feature_spec, frame_shift, seconds, model_sha256 = FBANK, 0.04, 0.0, None

        def reuse_or_compute(self, feats_by_id, stored=None):
            return {u: lp.clone() for u in feats_by_id}

    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "ctc").mkdir()

    def from_dir(cls, model_dir, device=None, config_name="rescorer.json", **kw):
        saved = model / config_name
        return _rescorer(**(json.loads(saved.read_text())["config"] if saved.exists() else {}))

    monkeypatch.setattr(Rescorer, "from_dir", classmethod(from_dir))
    monkeypatch.setattr(tune_ctc.CtcPosteriors, "from_dir", classmethod(lambda cls, d, device=None: PlantedCtc()))
    (tmp_path / "list.txt").write_text("zebra\ncatamaran\n")
    out = tmp_path / "wer.json"
    r = CliRunner().invoke(main, [
        "tune", "--corpus", "toy", "--model-dir", str(model), "--train-data", str(tmp_path / "train.pt"),
        "--dev-lattices", str(tmp_path / "dev_lattices.pt"), "--dev-features", str(tmp_path / "dev.pt"),
        "--cross-validate", "--out", str(out), "--device", "cpu", "--ctc-model-dir", str(tmp_path / "ctc"),
        "--methods", "awe_ctc_rescore", "--word-list", str(tmp_path / "list.txt"), "--awe-scales", "0",
        "--ctc-scales", "0,1", "--ctc-norms", "token", "--ctc-temperatures", "1,2", "--oov-lm-scores=-1",
        "--prefix", "ps_", "--save-config"])
    assert r.exit_code == 0, r.output
    row = json.loads(out.read_text())["corpora"]["toy"]["ps_awe_ctc_rescore"]
    assert row["wer"] == 0.0  # the spotted "zebra" replaces "cap" on every held-out speaker
    assert not (model / "rescorer_ps.json").exists()  # no embedding method tuned: its scales left alone
    saved = json.loads((model / "rescorer_ps_ctc_fusion.json").read_text())
    cfg = saved["config"]
    first = row["scales"][0]
    assert (cfg["ctc_scale"], cfg["ctc_norm"], cfg["ctc_temperature"]) == (first["ctc_scale"], "token", row["ctc_temperature"][0])
    assert saved["ctc_model_dir"] == str(tmp_path / "ctc")
    assert saved["ctc_spotting"] == {"beam": 7.0, "bonus": 3.0, "threshold": -5.0, "token_weight": 0.5}

    rescore = ["rescore", "--model-dir", str(model), "--lattices", str(tmp_path / "dev_lattices.pt"), "--features",
               str(tmp_path / "dev.pt"), "--device", "cpu", "--ctc-model-dir", str(tmp_path / "ctc"),
               "--word-list", str(tmp_path / "list.txt")]
    r = CliRunner().invoke(main, rescore + ["--out", str(tmp_path / "r1"), "--config-name", "rescorer_ps_ctc_fusion.json"])
    assert r.exit_code == 0, r.output
    hyps = dict(line.split("\t") for line in (tmp_path / "r1" / "hyps.txt").read_text().splitlines())
    assert hyps == {u: "the zebra sat" for u in refs}
    # embedding rescoring alone keeps "cap": the word came from the CTC word spotter
    r = CliRunner().invoke(main, rescore[:-4] + ["--out", str(tmp_path / "r2")])
    assert r.exit_code == 0, r.output
    assert "zebra" not in (tmp_path / "r2" / "hyps.txt").read_text()
    # the fusion under a config it was not tuned with: named, nothing written
    r = CliRunner().invoke(main, rescore + ["--out", str(tmp_path / "r3")])
    assert r.exit_code != 0 and "not tuned for the CTC fusion" in r.output and "rescorer_ctc_fusion.json" in r.output
    assert not (tmp_path / "r3" / "hyps.txt").exists()
    # the spotter as tuned: a threshold no hit clears takes the spotted word away again
    fused = model / "rescorer_ps_ctc_fusion.json"
    doc = json.loads(fused.read_text())
    fused.write_text(json.dumps({**doc, "ctc_spotting": {**doc["ctc_spotting"], "threshold": 1000.0}}))
    r = CliRunner().invoke(main, rescore + ["--out", str(tmp_path / "r4"), "--config-name", fused.name])
    assert r.exit_code == 0, r.output
    assert "zebra" not in (tmp_path / "r4" / "hyps.txt").read_text()
    # a fusion whose recovery abstained on dev prices every added word out: rescoring skips the search
    fused.write_text(json.dumps({**doc, "config": {**doc["config"], "oov_lm_score": -1.0e4, "oov_margin": 1.0e4}}))
    r = CliRunner().invoke(main, rescore + ["--out", str(tmp_path / "r6"), "--config-name", fused.name])
    assert r.exit_code == 0, r.output
    assert "abstained from OOV recovery" in caplog.text
    assert (tmp_path / "r6" / "hyps.txt").read_text() == (tmp_path / "r2" / "hyps.txt").read_text()
    fused.write_text(json.dumps({**doc, "ctc_spotting": {"beam": "wide"}}))
    r = CliRunner().invoke(main, rescore + ["--out", str(tmp_path / "r5"), "--config-name", fused.name])
    assert r.exit_code != 0 and "ctc_spotting" in r.output and fused.name in r.output
