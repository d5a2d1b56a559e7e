"""benchmarks/recovery_precision_target.py: one `rescorer tune` per precision target and
section, the recovery rows kept with their abstained folds, and the JSON's provenance."""

import json
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import recovery_precision_target as script  # noqa: E402


def _tune_output(target):
    """A `rescorer tune` output as the recovery methods write it: a strict target abstains."""
    abstain = target is not None and target >= 0.8
    scale = {"awe_scale": 4.0, **({"oov_recovery": "abstained"} if abstain else {})}
    row = {"wer": 0.40 if abstain else 0.38, "oov_recall": 0.0 if abstain else 0.2, "oov_precision": 0.5,
           "added_oov_recovered": 0 if abstain else 3, "scales": [scale, dict(scale)], "utterances": 9}
    return {"corpora": {"syn/x": {"awe_rescore_context_list": row, "awe_ctc_rescore": dict(row),
                                  "awe_rescore": {"wer": 0.41, "scales": [scale]}}}}


def test_every_target_runs_each_section_and_keeps_the_recovery_rows(tmp_path, monkeypatch):
    calls = []

    def fake_run(corpus, flags, target, out, ctc):
        calls.append((target, ctc, tuple(flags)))
        out.write_text(json.dumps(_tune_output(target)))

    monkeypatch.setattr(script, "_flags", lambda config, section: [f"--from-{section}"])
    monkeypatch.setattr(script, "_run", fake_run)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.json"
    script.main(["--workdir", str(tmp_path), "--config", "c.yaml", "--corpus", "syn/x", "--targets", "none,0.8",
                 "--out", str(out)])
    # two targets x two sections; the fusion gets the gate grids and the CTC model (the decoder's by default)
    assert [(t, c) for t, c, _ in calls] == [(None, False), (None, "exp/ctc"), (0.8, False), (0.8, "exp/ctc")]
    fusion_flags = calls[1][2]
    assert "--oov-min-posteriors=0.5,0.2,0.1,0.05,none" in fusion_flags and "--methods" in fusion_flags
    assert "--from-rescore_oov" in calls[0][2] and "--word-list" in calls[0][2]
    doc = json.loads(out.read_text())["syn/x"]
    assert set(doc["targets"]) == {"lowest_wer", "precision_0.8"}
    assert set(doc["targets"]["lowest_wer"]) == {"awe_rescore_context_list", "awe_ctc_rescore"}  # not awe_rescore
    strict = doc["targets"]["precision_0.8"]["awe_rescore_context_list"]
    assert strict["folds_abstained"] == 2 and strict["folds"] == 2 and strict["added_oov_recovered"] == 0
    assert "utterances" not in strict and "scales" not in strict
    assert doc["targets"]["lowest_wer"]["awe_ctc_rescore"]["folds_abstained"] == 0
    assert doc["protocol"] == "tuned on dev, reported on test"
    assert {"command", "machine", "date"} <= set(doc)


def test_cross_validation_uses_dev_only(tmp_path):
    args = script._split_args(cross_validate=True, ctc=False)
    assert "--cross-validate" in args and not any("test" in a for a in args)


def test_the_decoders_stored_log_probs_serve_only_its_own_ctc_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp" / "decode_dev_ctc").mkdir(parents=True)
    (tmp_path / "exp" / "decode_dev_ctc" / "ctc_log_probs.pt").write_bytes(b"")
    assert "--dev-ctc-log-probs=exp/decode_dev_ctc/ctc_log_probs.pt" in script._split_args(True, True)
    assert not any("log-probs" in a for a in script._split_args(True, True, stored_log_probs=False))


def _one_section_at_0_8(tmp_path, monkeypatch, section, rows):
    """Run the script for ``section`` at precision 0.8 (cross-validated) against a `rescorer tune`
    that writes ``rows``; returns (the flags it was given, the output's rows for that target)."""
    calls = []

    def fake_run(corpus, flags, target, out, ctc):
        calls.append(tuple(flags))
        out.write_text(json.dumps({"corpora": {"so/x": rows}}))

    monkeypatch.setattr(script, "_flags", lambda config, section: [f"--from-{section}"])
    monkeypatch.setattr(script, "_run", fake_run)
    out = tmp_path / "out.json"
    script.main(["--workdir", str(tmp_path), "--config", "c.yaml", "--corpus", "so/x", "--targets", "0.8",
                 "--sections", section, "--cross-validate", "--out", str(out)])
    (flags,) = calls
    return flags, json.loads(out.read_text())["so/x"]["targets"]["precision_0.8"]


def test_the_whisper_section_reads_the_transcripts_and_keeps_each_folds_gate(tmp_path, monkeypatch):
    gates = [{"gate": "abstained"}, {"gate": 0.2, "confidence_gate": 0.6},
             {"gate": None, "confidence_gate": None, "probability_gate": 0.7, "hit_model": {"weights": [1.0]}}]
    evidence = {"hits": 9, "right": 6, "model_auc": 0.81, "cosine_auc": 0.7}
    flags, rows = _one_section_at_0_8(tmp_path, monkeypatch, "rescore_whisper", {"awe_whisper_context_list": {
        "wer": 0.36, "oov_recall": 0.4, "scales": gates, "heldout_hit_evidence": evidence,
        "dev_hit_evidence": {"hits": 20}}})
    assert "--from-rescore_whisper" in flags and "--dev-transcripts" in flags and "--test-transcripts" not in flags
    row = rows["awe_whisper_context_list"]
    assert row["folds_abstained"] == 1 and row["gates"] == [{"gate": "abstained", "confidence_gate": None},
                                                            {"gate": 0.2, "confidence_gate": 0.6},
                                                            {"gate": None, "confidence_gate": None, "probability_gate": 0.7}]
    assert row["folds"] == 3
    # the held-out ranking of each piece of evidence and of the fitted model stays; dev's does not
    assert row["heldout_hit_evidence"] == evidence and "dev_hit_evidence" not in row


def test_the_pocketsphinx_whisper_section_reads_pocketsphinx_lattices_and_keeps_its_prefixed_rows(tmp_path, monkeypatch):
    row = {"wer": 0.5, "oov_recall": 0.3, "scales": [{"gate": None, "confidence_gate": 0.8}] * 2}
    flags, rows = _one_section_at_0_8(tmp_path, monkeypatch, "rescore_whisper_pocketsphinx", {
        "pocketsphinx_awe_whisper_context_list": row, "pocketsphinx_awe_rescore": {"wer": 0.7},
        "pocketsphinx_whisper_transcript": {"wer": 0.3}})
    assert "--from-rescore_whisper_pocketsphinx" in flags and "--dev-transcripts" in flags
    assert flags[flags.index("--prefix") + 1] == "pocketsphinx_"
    assert flags[flags.index("--dev-lattices") + 1] == "exp/pocketsphinx/lattices"
    assert set(rows) == {"pocketsphinx_awe_whisper_context_list"}  # the recovery row, not the rescoring or anchor
    assert rows["pocketsphinx_awe_whisper_context_list"]["folds"] == 2


def test_ctc_word_spotting_is_compared_at_the_same_target_counted_against_its_greedy_output(tmp_path, monkeypatch):
    """The anchor runs in the CTC section with the fusion; its row's own counts (against the
    greedy output it edits) fill the added columns, and a fold that abstained is counted."""
    ws = {"wer": 0.70, "oov_recall": 0.01, "oov_precision": 0.25, "oov_tokens_recovered": 1, "oov_tokens_proposed": 4,
          "iv_tokens_broken": 2, "base": "ctc_greedy", "spotting": ["abstained", {"bonus": 1.0, "threshold": -3.0}]}
    fused = {"wer": 0.38, "oov_precision": 0.5, "added_oov_recovered": 0, "scales": [{"awe_scale": 4.0}]}
    on_lattice = {**ws, "wer": 0.40, "oov_tokens_recovered": 3, "oov_precision": 0.6, "base": "lattice_1best",
                  "spotting": [{"bonus": 2.0, "threshold": -3.0}] * 2, "added_oov_recovered": 2,
                  "added_oov_proposed": 5, "edits": "baseline_tuned"}
    flags, rows = _one_section_at_0_8(tmp_path, monkeypatch, "rescore_ctc",
                                      {"ctc_word_spotting": ws, "lattice_ctc_word_spotting": on_lattice,
                                       "awe_ctc_rescore": fused, "awe_rescore": {"wer": 0.39}})
    assert flags[flags.index("--methods") + 1] == "awe_rescore,ctc_word_spotting,lattice_ctc_word_spotting,awe_ctc_rescore"
    spot = rows["ctc_word_spotting"]
    assert (spot["added_oov_recovered"], spot["added_oov_proposed"], spot["added_oov_precision"],
            spot["added_iv_broken"]) == (1, 4, 0.25, 2)
    assert spot["folds_abstained"] == 1 and spot["folds"] == 2
    # the anchor on the lattice's tuned 1-best: its added words are its own counts against it
    assert (rows["lattice_ctc_word_spotting"]["added_oov_recovered"], rows["lattice_ctc_word_spotting"]["added_oov_proposed"],
            rows["lattice_ctc_word_spotting"]["oov_tokens_recovered"]) == (2, 5, 3)
    assert set(rows) == {"ctc_word_spotting", "lattice_ctc_word_spotting", "awe_ctc_rescore"}


def test_an_ablations_tune_args_reach_every_run_and_the_recorded_command(tmp_path, monkeypatch):
    calls = []

    def fake_run(corpus, flags, target, out, ctc):
        calls.append(tuple(flags))
        out.write_text(json.dumps(_tune_output(target)))

    monkeypatch.setattr(script, "_flags", lambda config, section: [f"--from-{section}"])
    monkeypatch.setattr(script, "_run", fake_run)
    out = tmp_path / "out.json"
    script.main(["--workdir", str(tmp_path), "--config", "c.yaml", "--corpus", "syn/x", "--targets", "0.8",
                 "--tune-args", "--hit-model-hits own", "--out", str(out)])
    assert len(calls) == 2 and all(c[-2:] == ("--hit-model-hits", "own") for c in calls)
    assert "--tune-args '--hit-model-hits own'" in json.loads(out.read_text())["syn/x"]["command"]  # re-runnable as written
