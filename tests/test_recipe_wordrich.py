"""recipes/wordrich: its configs are valid for their programs, and every stage runs (tiny corpus,
a speechocean762-shaped fixture, one-epoch tiny models), resuming without redoing work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import HAVE_ESPEAK, HAVE_LHOTSE, REPO
from tests.test_speechocean762 import _fixture_corpus

CONFIGS = sorted((REPO / "recipes" / "wordrich").glob("*.yaml"))
# configs that speak another config's corpus (same seed and plan: one synthesis serves both)
SAME_CORPUS = {"whisper.yaml": "config.yaml", "whisper_32k_l34.yaml": "whisper_32k.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_recipe_configs_are_valid_for_their_programs(path):
    import sys

    from rescorer.corpora.wordrich import WordRichConfig
    from rescorer.recipe_config import load_section, to_args
    from rescorer.training.train_embeddings import parse_args

    doc = yaml.safe_load(path.read_text())
    cfg = WordRichConfig.from_dict(doc["wordrich"])
    for section in ("embeddings", "finetune", "oov_vs_word_types_train"):
        if section in doc:
            parse_args(["--train", "t.pt", "--dev", "d.pt", "--out", "o", *to_args(load_section(str(path), section))])
    if "embeddings" in doc and "finetune" in doc:
        # pretraining and fine-tuning build the same encoders (--init-from checks it)
        pre, fine = doc["embeddings"], doc["finetune"]
        for key in ("acoustic_encoder", "channels", "dim", "num_blocks", "max_frames", "num_buckets"):
            assert pre.get(key) == fine.get(key), key
    if "oov_vs_word_types" in doc:
        # stage 7's benchmark: its options parse, and the tiers give every type count the same tokens
        sys.path.insert(0, str(REPO / "benchmarks"))
        from oov_vs_word_types import parse_args as bench_args

        args, _ = bench_args(["--data", "d", "--work", "w", *to_args(load_section(str(path), "oov_vs_word_types"))])
        counts = [int(t) for t in args.types.split(",")]
        assert len(counts) >= 3 and max(counts) >= 8 * min(counts)
        assert len({t * cfg.tokens_per_rank()[t - 1] for t in counts}) == 1
    else:
        assert cfg.train_types >= 30000  # the point of the corpus
    if path.name in ("config.yaml", "whisper.yaml"):
        # the tiers give every experiment count (2k, 8k, 32k) the same number of tokens
        assert {t * cfg.tokens_per_rank()[t - 1] for t in (2000, 8000, 32000)} == {32000}
    assert doc["features"]["frontend"] == ("whisper" if path.name.startswith("whisper") else "fbank")
    if path.name in SAME_CORPUS:
        assert doc["wordrich"] == yaml.safe_load((path.parent / SAME_CORPUS[path.name]).read_text())["wordrich"]


TINY = """
wordrich:
  type_tiers: [[8, 4], [16, 2], [32, 1]]
  held_out_dev_types: 5
  held_out_test_types: 6
  train_fortunes: 2
  dev_fortunes: 1
  test_fortunes: 1
  engines: [espeak]
  engine_weights: [1.0]
  seed: 2
features:
  frontend: fbank
embeddings: &tiny
  dim: 32
  channels: 40
  num_blocks: 2
  num_buckets: 4096
  ngram_dim: 32
  letter_hidden: 64
  batch_size: 16
  epochs: 1
  device: cpu
  progress: false
finetune: *tiny
oov_vs_word_types:
  types: "8,16,32"
oov_vs_word_types_train: *tiny
"""


def _run(workdir: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, WORKDIR=str(workdir), CONFIG=str(workdir / "config.yaml"), SO762_DIR=str(workdir / "so"),
               OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(REPO / "recipes" / "wordrich" / "run.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.pipeline
@pytest.mark.tts
@pytest.mark.slow
@pytest.mark.skipif(not (HAVE_ESPEAK and HAVE_LHOTSE and os.path.isfile("/usr/share/dict/american-english")),
                    reason="needs espeak-ng, lhotse and the Debian word list")
def test_wordrich_recipe_end_to_end_and_resumable(tmp_path):
    _fixture_corpus(tmp_path, n=16, speakers=4)
    (tmp_path / "config.yaml").write_text(TINY)
    r = _run(tmp_path, "-j", "1")
    assert r.returncode == 0, f"recipe failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    plan = json.loads((tmp_path / "data" / "wordrich" / "plan.json").read_text())
    assert len(plan["train_types"]) == 32
    fine = tmp_path / "exp" / "embeddings_so762_finetuned"
    assert json.loads((fine / "config.json").read_text())["init_from"] == "exp/embeddings_wordrich"
    doc = json.loads((tmp_path / "exp" / "embeddings.json").read_text())
    assert set(doc) == {"wordrich_test_pretrained", "so762_dev_pretrained_only", "so762_dev_finetuned",
                        "so762_dev_scratch"}
    e = doc["wordrich_test_pretrained"]
    assert e["counts"]["oov_types"] >= 6 and e["oov_p_at_1"] is not None  # the held-out test words
    assert e["command"].startswith("rescorer evaluate embeddings --model-dir exp/embeddings_wordrich")
    assert {doc[k]["counts"]["train_vocabulary"] for k in doc if k.startswith("so762")} == {4}  # WE CALL IT BEAR
    assert doc["so762_dev_finetuned"]["config"]["init_from"] == "exp/embeddings_wordrich"
    assert doc["so762_dev_scratch"]["config"]["init_from"] is None
    assert e["split"] == "test" and doc["so762_dev_finetuned"]["split"] == "dev"  # from the segments file
    assert all(doc[k]["train_segments_per_s"] > 0 for k in doc)  # the run's median throughput
    # resumable: nothing is synthesized or trained again
    stamp = (fine / "best.pt").stat().st_mtime_ns
    r2 = _run(tmp_path, "--stage", "0", "--stop-stage", "5", "-j", "1", timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "is trained; skipping" in r2.stderr and "already exported" in r2.stdout
    assert (fine / "best.pt").stat().st_mtime_ns == stamp
    # OOV P@1 against training word types over this corpus, options from the config's sections:
    # one row a type count, each trained on the same number of list-word segments
    out = tmp_path / "types.json"
    r3 = subprocess.run([sys.executable, str(REPO / "benchmarks" / "oov_vs_word_types.py"), "--config",
                         str(tmp_path / "config.yaml"), "--data", str(tmp_path / "data" / "wordrich"),
                         "--work", str(tmp_path / "exp" / "oov_vs_types"), "--out", str(out), "--threads", "1"],
                        capture_output=True, text=True, timeout=600)
    assert r3.returncode == 0, r3.stderr[-3000:]
    types = {k: v for k, v in json.loads(out.read_text()).items() if k.startswith("wordrich_types_")}
    assert set(types) == {"wordrich_types_8", "wordrich_types_16", "wordrich_types_32"}
    assert all(28 <= t["config"]["training_segments"] <= 32 for t in types.values())  # 32, less a failed word
    assert all(t["oov_p_at_1"] is not None for t in types.values())
    assert "--config" in json.dumps(types["wordrich_types_8"])  # the command, recorded
