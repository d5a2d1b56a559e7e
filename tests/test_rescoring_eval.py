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
    assert c == {"oov_tokens_recovered": 1, "iv_tokens_broken": 1, "oov_tokens": 1}


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
    """rescore_wer counts the decoder's no_lattice utterances (in the evaluated window) as empty hypotheses."""
    import importlib.util
    import json
    from types import SimpleNamespace

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("rescore_wer", REPO / "benchmarks" / "rescore_wer.py")
    rw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rw)
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"no_lattice": ["u2", "u9"]}))
    lats = {"u1": object(), "u3": object()}
    assert rw._missing_lattices(str(metrics), lats, SimpleNamespace(max_utterances=0)) == ["u2", "u9"]
    # with --max-utterances only the ids up to the last loaded lattice belong to the window
    assert rw._missing_lattices(str(metrics), lats, SimpleNamespace(max_utterances=2)) == ["u2"]
    assert rw._missing_lattices(None, lats, SimpleNamespace(max_utterances=0)) == []
