import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("collect_wer", REPO / "benchmarks" / "collect_wer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_merges_decoder_and_pocketsphinx_results_keeping_other_entries(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({
        "data": "test.pt", "audio_seconds": 10.0,
        "methods": {"hlg_1best": {"wer": 0.5, "iv_wer": 0.4, "oov_wer": 0.9, "rtf": 0.2, "substitutions": 3,
                                  "deletions": 1, "insertions": 1, "ref_words": 10, "utterances": 2, "hyp": "dropped"}},
    }))
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"wer_1best": 0.9, "sub": 5, "del": 2, "ins": 2, "ref_words": 10, "utterances": 2,
                                   "rtf": 0.8, "oracle_wer": 0.4, "oracle_wer_slf": 0.3}))
    out = tmp_path / "wer.json"
    out.write_text(json.dumps({"corpora": {"other": {"x": {"wer": 0.1}}}}))
    _load().main(["--corpus", "c", "--decode", str(metrics), "--pocketsphinx", str(summary), "--out", str(out)])
    doc = json.loads(out.read_text())
    c = doc["corpora"]["c"]
    assert c["hlg_1best"]["wer"] == 0.5 and c["hlg_1best"]["oov_wer"] == 0.9 and "hyp" not in c["hlg_1best"]
    assert c["pocketsphinx_1best"]["wer"] == 0.9 and c["pocketsphinx_lattice_oracle"]["wer"] == 0.4
    assert doc["corpora"]["other"]["x"]["wer"] == 0.1  # other corpora are kept
    assert {"command", "machine", "date"} <= set(doc["collected"]["c"])  # provenance per corpus
