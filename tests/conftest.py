"""Shared fixtures: tiny corpora made in the tests (no downloads)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SO762 = REPO.parent / "shared" / "data" / "speechocean762"

HAVE_ESPEAK = shutil.which("espeak-ng") is not None
HAVE_LHOTSE = importlib.util.find_spec("lhotse") is not None
HAVE_K2 = importlib.util.find_spec("k2") is not None

needs_espeak = pytest.mark.skipif(not HAVE_ESPEAK, reason="espeak-ng not installed (scripts/setup.sh installs it)")
needs_lhotse = pytest.mark.skipif(not HAVE_LHOTSE, reason="lhotse not installed")
needs_k2 = pytest.mark.skipif(not HAVE_K2, reason="k2 not installed (reference environment only)")


def tiny_synthetic_config(**over):
    from rescorer.corpora.synthetic import SyntheticConfig

    d = dict(
        train_utterances=60, dev_utterances=24, test_utterances=24, engines=("espeak",), engine_weights=(1.0,),
        held_out_words=40, oov_token_rate=0.1, seed=3,
    )
    d.update(over)
    return SyntheticConfig(**d)


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """A 108-utterance espeak corpus with features and word segments (about 10 s to make)."""
    if not (HAVE_ESPEAK and HAVE_LHOTSE):
        pytest.skip("needs espeak-ng and lhotse")
    from rescorer.corpora.synthetic import prepare_synthetic

    out = tmp_path_factory.mktemp("tiny_synthetic")
    manifests = prepare_synthetic(out, tiny_synthetic_config(), num_jobs=1, progress=False)
    return out, manifests
