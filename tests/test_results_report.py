"""RESULTS.md and the WER tables from results/*.json (no k2, no torch needed)."""

import json

import pytest
from click.testing import CliRunner

from rescorer.cli import main
from rescorer.results_report import format_wer_table, wer_rows, write_results_md

pytest.importorskip("matplotlib")

WER_DOC = {
    "collected": {"command": "python benchmarks/collect_wer.py --corpus toy", "machine": "x86_64, 2 cores, no GPU",
                  "date": "2026-01-02"},
    "rescoring_runs": {"toy:ctc": {"command": "python benchmarks/rescore_wer.py --corpus toy", "date": "2026-01-03",
                                   "machine": "x86_64, 2 cores (no GPU)", "protocol": "scales tuned on dev, reported on test",
                                   "note": "first 3 utterances"}},
    "decoding_runs": {"toy:exp/metrics.json": {"model": {"model_dir": "exp/ctc", "parameters": 1234}, "data": "test.pt",
                                               "audio_seconds": 12.0, "settings": {"methods": "ctc_greedy,lattice_oracle"}}},
    "corpora": {
        "toy": {
            "lattice_oracle": {"wer": 0.28305681246857717, "iv_wer": 0.25, "oov_wer": 0.75, "utterances": 4,
                               "substitutions": 3, "deletions": 2, "insertions": 0, "rtf": 0.3286},
            "my_new_method": {"wer": 0.5},
            "awe_rescore": {"wer": 0.6501516683518705, "iv_wer": 0.6192017259978425, "oov_wer": 1.1129032258064515,
                            "substitutions": 446, "deletions": 153, "insertions": 44, "utterances": 3,
                            "oov_tokens": 62, "oov_tokens_recovered": 1, "iv_tokens_broken": 31,
                            "rescoring_seconds_per_decode_second": 1.852,
                            "scales": [{"awe_scale": 8.0, "lm_scale": 1.0, "batch_size": 256}]},
            "ctc_greedy": {"wer": 0.9416792357968828, "rtf": 0.008340912982962757, "utterances": 4},
            "a_first_unknown": {"iv_wer": 0.1},
            "pocketsphinx_awe_rescore": {"wer": 0.7},
            "baseline_tuned": {"wer": 0.69, "note": "decoder scores only, same grid"},
            "awe_plus_attention": {"wer": 0.6, "attention_scales": [{"attention_scale": 0.5}, {"attention_scale": 1.0}]},
        },
        "toy_dev_cv": {"awe_rescore": {"wer": 0.73, "iv_wer": 0.7, "oov_wer": 1.15}},
        "toy_dev": {"pocketsphinx_lattice_oracle": {"wer": 0.43, "wer_unpruned_slf": 0.35}},
    },
}

EMB_DOC = {
    "description": "Embedding metrics.",
    "toy": {"iv_p_at_1": 0.5650776647027317, "oov_p_at_1": 0.2479, "p_at_1_10x_vocab": 0.48, "acoustic_ap": 0.5248,
            "train_segments_per_s": 56.70617662011978, "split": "test",
            "counts": {"iv_segments": 10, "oov_segments": 2},
            "training": {"command": "python -m rescorer.training.train_embeddings --out exp/emb"},
            "evaluation": {"command": "python benchmarks/eval_embeddings.py --corpus toy",
                           "device": {"device": "cpu", "torch": "1.13.1"}},
            "date": "2026-01-01T00:00:00Z"},
}

CORPORA_DOC = {
    "command": "rescorer report corpora toy=data/toy --out results/corpora.json", "machine": "x86_64", "date": "2026-01-01",
    "corpora": {"toy": {"test": {"hours": 0.1674, "utterances": 250, "speakers": 21, "oov_token_rate": 0.0608},
                        "train": {"hours": 1.5078, "utterances": 1999, "speakers": 67, "oov_token_rate": 0.0}}},
}

KERNEL_ROWS = [
    {"kernel": "topk_nearest[cuda]", "N": 1024, "V": 100000, "D": 256, "k": 10, "dtype": "fp16", "ms": 0.5,
     "torch_ms": 2.0, "floor_ms": 0.25, "device": "NVIDIA H100", "date": "2026-02-01"},
    {"kernel": "arc_similarity[cuda]", "N": 1000, "V": 5000, "D": 256, "k": None, "dtype": "fp32", "ms": 12.345,
     "torch_ms": None, "floor_ms": 10.0, "device": "NVIDIA H100", "date": "2026-02-01"},
]


def _results(tmp_path, kernels=None):
    d = tmp_path / "results"
    d.mkdir()
    (d / "wer.json").write_text(json.dumps(WER_DOC))
    (d / "embeddings.json").write_text(json.dumps(EMB_DOC))
    (d / "corpora.json").write_text(json.dumps(CORPORA_DOC))
    (d / "rescore_tuning_toy_lattices.json").write_text(json.dumps(
        {"awe_rescore_fold0": [{"awe_scale": 0.0, "lm_scale": 1.0, "wer": 0.8},
                               {"awe_scale": 8.0, "lm_scale": 1.0, "wer": 0.731}]}))
    (d / "rescore_tuning_toy_lattices.png").write_bytes(b"\x89PNG fake")
    (d / "embeddings_toy.png").write_bytes(b"\x89PNG fake")
    if kernels is not None:
        (d / "kernels.json").write_text(json.dumps(kernels))
    return d


def test_rows_follow_the_canonical_order_then_unknown_methods_alphabetically():
    rows = wer_rows(WER_DOC, "toy")
    assert [r["method"] for r in rows] == [
        "ctc_greedy", "baseline_tuned", "awe_rescore", "awe_plus_attention", "lattice_oracle", "pocketsphinx_awe_rescore",
        "a_first_unknown", "my_new_method"]
    labels = {r["method"]: r["label"] for r in rows}
    assert labels["ctc_greedy"] == "CTC greedy" and labels["awe_rescore"] == "embedding rescoring"
    assert labels["lattice_oracle"] == "lattice oracle" and labels["my_new_method"] == "my_new_method"
    assert labels["pocketsphinx_awe_rescore"].startswith("pocketsphinx") and "embedding" in labels["pocketsphinx_awe_rescore"]
    assert rows[2]["wer"] == WER_DOC["corpora"]["toy"]["awe_rescore"]["wer"]
    with pytest.raises(KeyError, match="no corpus 'nope'"):
        wer_rows(WER_DOC, "nope")


def test_markdown_table_formats_numbers_and_missing_values():
    table = format_wer_table(wer_rows(WER_DOC, "toy"), markdown=True)
    lines = table.splitlines()
    assert lines[0].startswith("| Method") and "WER %" in lines[0] and "OOV recovered" in lines[0]
    assert set(lines[1]) <= set("|-: ") and lines[1].count(":") == 9  # numbers right-aligned
    assert len(lines) == 2 + 8
    awe = next(line for line in lines if line.startswith("| embedding rescoring "))
    cells = [c.strip() for c in awe.strip("|").split("|")]
    assert cells == ["embedding rescoring", "65.0", "61.9", "111.3", "446/153/44", "3", "1 of 62", "31", "–", "1.85"]
    ctc = [c.strip() for c in lines[2].strip("|").split("|")]
    assert ctc == ["CTC greedy", "94.2", "–", "–", "–", "4", "–", "–", "0.008", "–"]
    oracle = next(line for line in lines if "lattice oracle" in line)
    assert "28.3" in oracle and "3/2/0" in oracle and "0.329" in oracle
    assert len({len(line) for line in lines}) == 1  # padded


def test_plain_table_is_aligned_text():
    text = format_wer_table(wer_rows(WER_DOC, "toy"), markdown=False)
    lines = text.splitlines()
    assert "|" not in text and lines[0].startswith("Method") and set(lines[1]) == {"-", " "}
    end = lines[0].index("WER %") + len("WER %")
    assert lines[0][end] == " " and lines[2][end - 4:end] == "94.2"
    assert any(line.startswith("embedding rescoring") and "65.0" in line for line in lines)


def test_results_md_has_tables_plots_links_and_is_reproducible(tmp_path):
    results = _results(tmp_path)
    out = tmp_path / "RESULTS.md"
    plots = results / "plots"
    assert write_results_md(results, out, plots) == out
    md = out.read_text()
    assert md.splitlines()[0].startswith("<!-- Generated by `rescorer report results`") and "do not edit" in md.splitlines()[0]
    for corpus in ("toy", "toy_dev", "toy_dev_cv"):
        assert f"### {corpus}\n" in md
        assert (plots / f"wer_{corpus}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"](results/plots/wer_{corpus}.png)" in md
    assert "Cross-validation" in md.split("### toy_dev_cv")[1] and "Development split" in md.split("### toy_dev\n")[1]
    assert "Cross-validation" not in md.split("### toy\n")[1].split("###")[0]
    toy = md.split("### toy\n")[1].split("### ")[0]
    assert "| embedding rescoring" in toy and "65.0" in toy and "different numbers of utterances (3, 4)" in toy
    assert "decoder scores only, same grid" in toy and "awe_scale 8, lm_scale 1" in toy and "batch_size" not in toy
    assert "scales tuned on dev, reported on test" in toy
    assert "tuned attention scales of the 2 folds: attention_scale 0.5; attention_scale 1." in toy
    assert "wer_unpruned_slf 35.0%" in md
    # embeddings, tuning, kernels, corpora, provenance
    assert "| toy    | test  |" in md and "0.565" in md and "56.7" in md and "10/2" in md
    assert "](results/embeddings_toy.png)" in md and "](results/rescore_tuning_toy_lattices.png)" in md
    assert "best WER 73.1% at awe_scale 8, lm_scale 1" in md
    assert "GPU measurements are pending" in md
    corpora = md.split("## Corpora")[1].split("\n## ")[0]
    assert "1999" in corpora and "6.1" in corpora
    assert corpora.index("| toy    | train |") < corpora.index("| toy    | test  |")
    prov = md.split("## Provenance")[1]
    assert "python benchmarks/collect_wer.py --corpus toy" in prov and "2026-01-02" in prov
    assert "python benchmarks/rescore_wer.py --corpus toy" in prov and "model `exp/ctc` (1,234 parameters)" in prov
    assert "train_embeddings" in prov and "rescorer report corpora" in prov
    # the same JSON gives the same bytes
    pngs = {p.name: p.read_bytes() for p in plots.glob("*.png")}
    write_results_md(results, out, plots)
    assert out.read_text() == md
    assert {p.name: p.read_bytes() for p in plots.glob("*.png")} == pngs


@pytest.mark.parametrize("wrapped", [False, True])
def test_kernel_table_from_rows_or_document(tmp_path, wrapped):
    kernels = {"command": "python benchmarks/bench_kernels.py", "device": "NVIDIA H100", "date": "2026-02-01",
               "rows": KERNEL_ROWS} if wrapped else KERNEL_ROWS
    results = _results(tmp_path, kernels=kernels)
    md = write_results_md(results, tmp_path / "RESULTS.md", results / "plots").read_text()
    section = md.split("## CUDA kernels")[1].split("\n## ")[0]
    assert "pending" not in section
    top = next(line for line in section.splitlines() if line.startswith("| topk_nearest[cuda]"))
    cells = [c.strip() for c in top.strip("|").split("|")]
    assert cells == ["topk_nearest[cuda]", "fp16", "1024", "100000", "256", "10", "0.500", "2.00", "0.250", "4.00", "2.00"]
    arc = [c.strip() for c in next(line for line in section.splitlines() if "arc_similarity" in line).strip("|").split("|")]
    assert arc[5:] == ["–", "12.3", "–", "10.0", "–", "1.23"]
    if wrapped:
        assert "python benchmarks/bench_kernels.py" in md.split("## Provenance")[1]


def test_beam_ctc_weight_curve_section(tmp_path):
    import json

    from rescorer.results_report import ResultsError

    results = _results(tmp_path)
    curve = [{"ctc_weight": w, "wer": e, "substitutions": 1, "deletions": 2, "insertions": 3, "rtf": 0.04}
             for w, e in ((0.0, 1.25), (0.7, 0.888))]
    (results / "tuning_beam_ctc_weight.json").write_text(json.dumps(
        {"synthetic_dev": {"curve": curve, "chosen_ctc_weight": 0.7, "command": "python benchmarks/tune_beam_ctc_weight.py",
                           "machine": "x86_64", "date": "2026-11-24"}}))
    md = write_results_md(results, tmp_path / "RESULTS.md", results / "plots").read_text()
    section = md.split("## Joint CTC/attention beam search")[1].split("\n## ")[0]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("|")]
    rows = [r for r in cells if r[0][:1].isdigit()]
    assert rows == [["0", "125.0", "1/2/3", "0.040"], ["0.7", "88.8", "1/2/3", "0.040"]]
    assert "Chosen: 0.7" in section
    (results / "tuning_beam_ctc_weight.json").write_text(json.dumps({"synthetic_dev": {"chosen_ctc_weight": 0.7}}))
    with pytest.raises(ResultsError, match="tuning_beam_ctc_weight.json: entry 'synthetic_dev' has no 'curve'"):
        write_results_md(results, tmp_path / "RESULTS.md", results / "plots")


def test_prune_sweep_section_reads_one_run_per_threshold(tmp_path):
    import json

    results = _results(tmp_path)
    for thr, dev, awe, cost in (("0.0001", 0.70, 0.646, 1.4), ("0.01", 0.71, 0.650, 0.12)):
        d = results / "rescore_prune" / f"p{thr}"
        d.mkdir(parents=True)
        (d / "wer.json").write_text(json.dumps({
            "corpora": {"synthetic": {"awe_rescore": {"wer": awe, "rescoring_seconds_per_decode_second": cost},
                                      "baseline_tuned": {"wer": 0.717}}},
            "rescoring_runs": {"synthetic:ctc:awe_rescore": {"command": f"python benchmarks/rescore_wer.py --prune-posterior {thr}",
                                                             "machine": "x86_64", "date": "2026-11-24"}}}))
        (d / "rescore_tuning_synthetic_lattices.json").write_text(json.dumps(
            {"awe_rescore_fold0": [{"awe_scale": 0, "wer": dev + 0.1}, {"awe_scale": 4, "wer": dev}]}))
    md = write_results_md(results, tmp_path / "RESULTS.md", results / "plots").read_text()
    section = md.split("## Rescoring cost against lattice pruning")[1].split("\n## ")[0]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| synthetic")]
    assert cells == [["synthetic", "0.0001", "70.0", "71.7", "64.6", "1.40"], ["synthetic", "0.01", "71.0", "71.7", "65.0", "0.12"]]
    assert "--prune-posterior 0.01" in section


def test_absent_files_are_reported_not_fatal(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    md = write_results_md(results, tmp_path / "RESULTS.md", results / "plots").read_text()
    assert "No WER results yet" in md and "pending" in md and "No corpus statistics yet" in md


def test_cli_report_results_and_wer(tmp_path):
    results = _results(tmp_path)
    runner = CliRunner()
    out, plots = tmp_path / "docs" / "RESULTS.md", tmp_path / "plots"
    r = runner.invoke(main, ["report", "results", "--results-dir", str(results), "--out", str(out), "--plots-dir", str(plots)])
    assert r.exit_code == 0, r.output
    assert out.exists() and (plots / "wer_toy.png").exists()
    assert "](../plots/wer_toy.png)" in out.read_text()

    r = runner.invoke(main, ["report", "wer", str(results / "wer.json"), "--corpus", "toy_dev_cv", "--corpus", "toy"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == "toy_dev_cv" and lines[1].startswith("Method") and "toy" in lines
    assert lines.index("toy") > lines.index("toy_dev_cv") and "|" not in r.output
    r = runner.invoke(main, ["report", "wer", str(results / "wer.json")])
    assert r.exit_code == 0 and [x for x in r.output.splitlines() if x.startswith("toy")] == ["toy", "toy_dev", "toy_dev_cv"]

    r = runner.invoke(main, ["report", "wer", str(results / "wer.json"), "--corpus", "nope"])
    assert r.exit_code != 0 and "no corpus nope" in r.output and "toy_dev" in r.output


@pytest.mark.parametrize("content", ['{"corpora": [1, 2]}', '{"corpora": {"toy": {"m": 0.5}}}', "{not json"])
def test_malformed_wer_json_is_a_clear_error_naming_the_file(tmp_path, content):
    results = _results(tmp_path)
    (results / "wer.json").write_text(content)
    runner = CliRunner()
    r = runner.invoke(main, ["report", "results", "--results-dir", str(results), "--out", str(tmp_path / "R.md"),
                             "--plots-dir", str(tmp_path / "plots")])
    assert r.exit_code == 1 and "Error:" in r.output and "wer.json" in r.output, r.output
    assert not isinstance(r.exception, (KeyError, TypeError, AttributeError))
    assert not (tmp_path / "R.md").exists()
    r = runner.invoke(main, ["report", "wer", str(results / "wer.json")])
    assert r.exit_code == 1 and "Error:" in r.output and "wer.json" in r.output, r.output


def test_rescore_cost_section_has_one_table_per_run_with_its_command(tmp_path):
    import json

    from rescorer.results_report import ResultsError

    results = _results(tmp_path)
    row = {"variant": "conv_one_pass", "acoustic_encoder": "AcousticWordEncoder", "span_encoding": "one_pass",
           "utterances": 250, "arcs": 709000, "distinct_spans": 30000, "rescoring_seconds_per_decode_second": 0.0412,
           "spans_per_second": 5123.4, "arcs_per_second": 98765.4, "decode_seconds": 121.1, "wer": 0.65,
           "seconds": {"span_encoding": 3.0, "embedding_scores_other": 1.5, "best_path": 0.5, "total": 5.0}}
    doc = {"runs": {"synthetic/ctc": {"rows": [row], "protocol": "scales tuned on dev, WER on test",
                                      "lattice_1best_wer": 0.733, "command": "python benchmarks/rescore_cost.py --corpus synthetic",
                                      "machine": "x86_64", "date": "2026-12-02"}}}
    (results / "rescore_cost.json").write_text(json.dumps(doc))
    md = write_results_md(results, tmp_path / "RESULTS.md", results / "plots").read_text()
    section = md.split("## Rescoring cost on CPU: span encoders")[1].split("\n## ")[0]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("|")]
    # a row without compute_dtype (runs before --compute-type) reads float32
    assert ["conv_one_pass", "AcousticWordEncoder", "one_pass", "float32", "0.041", "5123", "98765", "3.00", "1.50", "0.50",
            "65.0", "–", "–"] in cells
    assert "### synthetic/ctc" in section and "`python benchmarks/rescore_cost.py --corpus synthetic`" in section
    assert "lattice 1-best WER 73.3%" in section
    # an entry without the decoder timed in the run is marked as divided by the metrics.json figure
    assert "decoding 121.1 s from the decoder's metrics.json (fallback: not measured in this run" in section

    # decoding timed in the run: its mean and passes, the metrics.json figure and ratio beside
    timed = dict(row, decode_seconds=50.0, rescoring_seconds_per_decode_second=0.1, decode_seconds_metrics_json=125.0,
                 rescoring_seconds_per_decode_second_metrics_json=0.04)
    passes = [{"seconds": {"total": 48.0}}, {"seconds": {"total": 52.0}}]
    decode = {"source": "measured in this run", "seconds": 50.0, "passes": passes,
              "mean_seconds": {"forward": 2.0, "hlg_lattices": 20.0, "one_best": 1.0, "word_lattices": 25.0, "write": 2.0,
                               "total": 50.0},
              "schedule": "decode, conv_one_pass, decode", "metrics_json_seconds": 125.0,
              "metrics_json_covers": "forward + HLG lattices + 1-best + word lattices"}
    doc["runs"]["synthetic/ctc"].update(rows=[timed], decode=decode)
    (results / "rescore_cost.json").write_text(json.dumps(doc))
    md = write_results_md(results, tmp_path / "RESULTS.md", results / "plots").read_text()
    section = md.split("## Rescoring cost on CPU: span encoders")[1].split("\n## ")[0]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("|")]
    assert ["conv_one_pass", "AcousticWordEncoder", "one_pass", "float32", "0.100", "5123", "98765", "3.00", "1.50", "0.50", "65.0",
            "0.040", "–"] in cells
    assert ("decoding 50.0 s measured in this run (decode, conv_one_pass, decode; mean of 2 passes: 48.0, 52.0 s; "
            "CTC forward 2.0, HLG search 20.0, 1-best 1.0, word lattices 25.0, writing 2.0), beside 125.0 s from the "
            "decoder's metrics.json (forward + HLG lattices + 1-best + word lattices)") in section
    assert "fallback" not in section.split("### synthetic/ctc")[1]
    # the frontend timed on the audio: its line and the from-audio ratio
    decode.update(frontend={"name": "whisper-1a5afae0-L3", "timed_cuts": 150, "real_time_factor": 0.0073, "seconds": 15.0},
                  seconds_from_audio=65.0)
    doc["runs"]["synthetic/ctc"].update(rows=[dict(timed, rescoring_seconds_per_decode_second_from_audio=0.0769)],
                                        decode=decode)
    (results / "rescore_cost.json").write_text(json.dumps(doc))
    section = write_results_md(results, tmp_path / "RESULTS.md", results / "plots").read_text().split(
        "## Rescoring cost on CPU: span encoders")[1].split("\n## ")[0]
    assert "The frontend (whisper-1a5afae0-L3), timed in the same run on 150 cuts" in section
    assert "real-time factor 0.0073, 15.0 s for the evaluated audio" in section and "from audio, 65.0 s." in section
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("|")]
    assert cells[-1][-2:] == ["0.040", "0.077"]
    (results / "rescore_cost.json").write_text(json.dumps({"runs": {"synthetic/ctc": {"rows": []}}}))
    with pytest.raises(ResultsError, match="rescore_cost.json: run 'synthetic/ctc' has no 'rows' list"):
        write_results_md(results, tmp_path / "RESULTS.md", results / "plots")


def test_oov_evidence_section_has_a_row_per_rule_and_names_a_bad_file(tmp_path):
    import json

    from rescorer.results_report import ResultsError

    results = _results(tmp_path)
    rule = {"auc": 0.8343, "average_precision": 0.0451, "precision_at_10": 0.4, "precision_at_50": 0.08,
            "right_kept_at_precision_0.8": 0, "right_kept_at_precision_0.5": 2}
    (results / "oov_proposals.json").write_text(json.dumps({"speechocean762_dev/x": {
        "proposals": 100, "right_proposals": 9, "right_in_lexicon": 7, "lexicon_size": 50, "word_list_size": 20,
        "oov_tokens": 30, "oov_tokens_proposed": 10, "rules": {"cosine": rule, "posterior_0.05": rule},
        "command": "python benchmarks/oov_proposal_evidence.py", "machine": "x86_64", "date": "2026-12-03"}}))
    md = write_results_md(results, tmp_path / "RESULTS.md", results / "plots").read_text()
    section = md.split("## OOV recovery: how well each rule separates right proposals")[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("|")][2:]
    assert rows == [["cosine", "0.834", "0.045", "0.40", "0.08", "0", "2"],
                    ["softmax over lexicon + list, t = 0.05", "0.834", "0.045", "0.40", "0.08", "0", "2"]]
    assert "ceiling 10 of 30 OOV tokens" in section and "7 of them words the decoder's 50-word lexicon has" in section
    (results / "oov_proposals.json").write_text(json.dumps({"speechocean762_dev/x": {"proposals": 1}}))
    with pytest.raises(ResultsError, match="oov_proposals.json: speechocean762_dev/x: no 'rules' mapping"):
        write_results_md(results, tmp_path / "RESULTS.md", results / "plots")


def test_footnotes_say_where_recovery_abstained_and_its_precision_target():
    from rescorer.results_report import _method_footnotes

    rows = [{"method": "awe_ctc_rescore", "label": "fusion", "oov_min_precision": 0.8,
             "scales": [{"awe_scale": 8.0, "oov_recovery": "abstained"}, {"awe_scale": 4.0}]},
            {"method": "awe_rescore_oov_recovery", "label": "recovery", "scales": [{"awe_scale": 8.0, "oov_recovery": "abstained"}],
             "added_oov_recovered": 3, "added_oov_proposed": 4, "added_oov_precision": 0.75, "added_iv_broken": 1},
            {"method": "awe_rescore", "label": "plain", "scales": [{"awe_scale": 8.0}]},
            {"method": "awe_whisper_context_list", "label": "whisper",
             "scales": [{"gate": 0.2, "confidence_gate": 0.6}, {"gate": None, "confidence_gate": None},
                        {"gate": "abstained"}, {"gate": None, "confidence_gate": None, "probability_gate": 0.7,
                                                "hit_model": {"weights": [1.0]}}]},
            {"method": "whisper_lattice_vote", "label": "vote", "scales": [{"max_confidence": 0.6, "min_posterior": 0.9},
                                                                         {"vote": "abstained"},
                                                                         {"max_confidence": 0.5, "min_posterior": 0.7,
                                                                          "max_drop_confidence": 0.8}],
             "added_oov_recovered": 0, "added_oov_proposed": 0, "added_oov_precision": None, "added_iv_broken": 4}]
    notes = _method_footnotes(rows)
    assert "precision at least 0.8" in notes[0] and "abstained in 1 of 2 folds (precision target not met)" in notes[0]
    assert "abstained on dev (no dev WER gain)" in notes[1]
    assert "3 OOV tokens recovered, 4 OOV words added (precision 0.75), 1 IV tokens broken" in notes[1]
    assert "abstained" not in notes[2]
    assert "gate on the hits chosen on dev: cosine ≥ 0.2 and confidence ≥ 0.6, none (every hit), abstained, model probability ≥ 0.7" in notes[3]
    assert ("Whisper's confidence < 0.6 and the lattice's posterior >= 0.9, abstained (Whisper's transcript kept), "
            "Whisper's confidence < 0.5 and the lattice's posterior >= 0.7 (Whisper's words the path lacks dropped below 0.8)"
            in notes[4] and "(against Whisper's transcript alone): 0 OOV tokens recovered" in notes[4])


def test_recovery_target_section_has_a_row_per_target_and_method(tmp_path):
    import json

    from rescorer.results_report import ResultsError

    results = _results(tmp_path)
    kept = {"wer": 0.4711, "oov_recall": 0.25, "added_oov_recovered": 5, "added_oov_proposed": 8, "added_oov_precision": 0.625,
            "added_iv_broken": 2, "folds_abstained": 0, "folds": 1}
    off = {"wer": 0.4766, "oov_recall": 0.0, "added_oov_recovered": 0, "added_oov_proposed": 0, "added_oov_precision": None,
           "added_iv_broken": 0, "folds_abstained": 1, "folds": 1}
    (results / "recovery_precision_target.json").write_text(json.dumps({"synthetic/x": {
        "targets": {"lowest_wer": {"awe_ctc_rescore": kept},
                    "precision_0.8": {"awe_rescore_context_list": off, "pocketsphinx_awe_whisper_context_list": kept}},
        "protocol": "tuned on dev, reported on test", "command": "python benchmarks/recovery_precision_target.py",
        "machine": "x86_64", "date": "2026-12-04"}}))
    md = write_results_md(results, tmp_path / "RESULTS.md", results / "plots").read_text()
    section = md.split("## OOV recovery for a precision target")[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("|")][2:]
    assert rows == [["lowest WER", "embedding + CTC fusion", "47.1", "25.0", "5 / 8", "0.62", "2", "0 of 1"],
                    ["precision ≥ 0.8", "recovery, context list", "47.7", "0.0", "0 / 0", "–", "0", "1 of 1"],
                    ["precision ≥ 0.8", "pocketsphinx, Whisper's words, context list", "47.1", "25.0", "5 / 8", "0.62",
                     "2", "0 of 1"]]
    assert "**synthetic/x** (tuned on dev, reported on test)" in section
    (results / "recovery_precision_target.json").write_text(json.dumps({"synthetic/x": {"command": "x"}}))
    with pytest.raises(ResultsError, match="recovery_precision_target.json: synthetic/x: no 'targets' mapping"):
        write_results_md(results, tmp_path / "RESULTS.md", results / "plots")


def test_tuning_section_says_where_recovery_abstained_or_chose_another_point(tmp_path):
    import json

    results = _results(tmp_path)
    off = [{"awe_scale": 4.0, "wer": 0.45, "step": "scales", "chosen": True},
           {"awe_scale": 4.0, "oov_lm_score": -10.0, "wer": 0.46, "step": "recovery"}]
    target = [{"awe_scale": 4.0, "wer": 0.45, "step": "scales"},
              {"awe_scale": 4.0, "wer": 0.44, "step": "recovery"},
              {"awe_scale": 8.0, "wer": 0.449, "step": "recovery", "chosen": True}]
    unsure = [{"awe_scale": 4.0, "wer": 0.45, "step": "scales", "chosen": True},
              {"awe_scale": 4.0, "wer": 0.449, "step": "recovery", "added_sign_test_p": 0.4}]
    whisper = [{"gate": "off", "wer": 0.45, "chosen": True}, {"gate": None, "wer": 0.46},
               {"gate": 0.2, "confidence_gate": 0.6, "wer": 0.455}]
    (results / "rescore_tuning_rec_lattices.json").write_text(json.dumps({"off_fold0": off, "target_fold0": target,
                                                                          "unsure_fold0": unsure, "whisper_fold0": whisper}))
    md = write_results_md(results, tmp_path / "RESULTS.md", results / "plots").read_text()
    assert ("`unsure_fold0`: 2 grid points, best WER 44.9% at awe_scale 4; recovery abstains (1 point(s) of step 2 "
            "lower step 1's 45.0%, none passing the keep rule, e.g. the sign test).") in md
    assert "`whisper_fold0`: 3 grid points, best WER 45.0% at no hits; the hits abstain (no gate lowers 45.0% without them)." in md
    assert "`off_fold0`: 2 grid points, best WER 45.0% at awe_scale 4; recovery abstains (no point of step 2 lowers step 1's 45.0%)." in md
    assert "`target_fold0`: 3 grid points, best WER 44.0% at awe_scale 4; chosen 44.9% at awe_scale 8." in md
