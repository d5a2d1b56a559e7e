"""The LibriSpeech recipe end to end, on a LibriSpeech-shaped corpus spoken by espeak-ng.

The real corpus cannot be downloaded here, so the test writes the layout the recipe reads
(``<part>/<spk>/<chapter>/*.flac``, ``*.trans.txt`` and the public ``*.alignment.txt`` word
alignments), runs every stage with tiny models, then runs the early stages again to check
that they resume instead of redoing work. This also covers the stages every recipe shares
(recipes/lib.sh).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, needs_espeak, needs_k2, needs_lhotse

pytestmark = [pytest.mark.lattice, pytest.mark.tts, pytest.mark.slow, needs_espeak, needs_k2, needs_lhotse]

# part -> (speakers, utterances per speaker)
PARTS = {"train-clean-100": (3, 14), "dev-clean": (1, 8), "test-clean": (1, 8)}

TINY_CONFIG = """
librispeech:
  train: [train-clean-100]
  dev: [dev-clean]
  test: [test-clean]
lang:
  order: 2
embeddings:
  dim: 32
  channels: 32
  num_blocks: 2
  num_buckets: 4096
  ngram_dim: 32
  letter_hidden: 64
  epochs: 1
  batch_size: 32
  progress: false
ctc:
  size: tiny
  epochs: 1
  batch_frames: 4000
  progress: false
attention:
  size: tiny
  init_from: exp/ctc
  epochs: 1
  batch_frames: 4000
  progress: false
decode:
  search_beam: 15
  output_beam: 5
  max_active_states: 2000
rescore:
  methods: [awe_rescore]
  awe_scales: [0, 1]
  lm_scales: [1]
  wips: [0]
"""


def _write_librispeech(root: Path) -> None:
    """LibriSpeech's layout and file formats, with espeak-ng speech and its word times."""
    import soundfile as sf

    from rescorer.corpora.text_sources import fortune_sentences
    from rescorer.corpora.tts.espeak import EspeakEngine

    engine = EspeakEngine()
    voices = engine.voices()
    sentences = iter(s for s in fortune_sentences(min_words=3, max_words=7))
    spk = 100
    for part, (speakers, per_speaker) in PARTS.items():
        for _ in range(speakers):
            spk += 1
            chapter = spk * 10
            d = root / part / str(spk) / str(chapter)
            d.mkdir(parents=True)
            trans, ali = [], []
            for i in range(per_speaker):
                words = next(sentences)
                out = engine.synthesize(words, voices[spk % len(voices)])
                uid = f"{spk}-{chapter}-{i:04d}"
                sf.write(str(d / f"{uid}.flac"), out.samples, out.sampling_rate)
                trans.append(f"{uid} {' '.join(words).upper()}")
                # public alignment format: words with "" for silence, and each item's end time
                symbols, ends, t = [], [], 0.0
                for wt in out.words:
                    if wt.start > t + 1e-3:
                        symbols.append("")
                        ends.append(wt.start)
                    symbols.append(wt.word.upper())
                    ends.append(wt.end)
                    t = wt.end
                symbols.append("")
                ends.append(out.duration)
                ali.append(f'{uid} "{",".join(symbols)}" "{",".join(f"{e:.3f}" for e in ends)}"')
            (d / f"{spk}-{chapter}.trans.txt").write_text("\n".join(trans) + "\n")
            (d / f"{spk}-{chapter}.alignment.txt").write_text("\n".join(ali) + "\n")


def _run(workdir: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, WORKDIR=str(workdir), CONFIG=str(workdir / "config.yaml"),
               LIBRISPEECH_DIR=str(workdir / "LibriSpeech"), DEV_UTTERANCES="0", OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(REPO / "recipes" / "librispeech" / "run.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_librispeech_recipe_end_to_end_and_resumable(tmp_path):
    _write_librispeech(tmp_path / "LibriSpeech")
    (tmp_path / "config.yaml").write_text(TINY_CONFIG)

    r = _run(tmp_path, "-j", "1")
    assert r.returncode == 0, f"recipe failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"

    man = tmp_path / "data" / "librispeech" / "manifests"
    for split in ("train", "dev", "test"):
        assert (man / f"librispeech_cuts_{split}.jsonl.gz").exists()
    stats = json.loads((tmp_path / "data" / "librispeech" / "segments" / "train.stats.json").read_text())
    assert stats["word_segments"] > 150 and stats["unaligned_utterances"] == 0
    lang = json.loads((tmp_path / "exp" / "lang" / "lang.json").read_text())
    assert "librispeech train transcripts" in lang["text_source"]

    doc = json.loads((tmp_path / "exp" / "wer.json").read_text())
    methods = doc["corpora"]["librispeech"]
    for m in ("ctc_greedy", "hlg_1best", "lattice_oracle", "attention_beam", "hlg_attention_rescore", "awe_rescore"):
        assert m in methods, f"{m} missing from exp/wer.json ({sorted(methods)})"
        assert 0.0 <= methods[m]["wer"] < 5.0
    assert methods["lattice_oracle"]["wer"] <= methods["hlg_1best"]["wer"]
    assert (tmp_path / "exp" / "embeddings" / "rescorer.json").exists()
    assert "awe_rescore" in r.stdout and "hlg_1best" in r.stdout  # the printed WER table

    # resumable: the early stages find their outputs and skip the work
    before = (tmp_path / "exp" / "lang" / "HLG.pt").stat().st_mtime
    r2 = _run(tmp_path, "--stage", "0", "--stop-stage", "3", timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "manifests exist; skipping" in r2.stderr and "exp/lang exists; skipping" in r2.stderr
    assert "already exported" in r2.stdout
    assert (tmp_path / "exp" / "lang" / "HLG.pt").stat().st_mtime == before
