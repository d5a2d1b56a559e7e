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


# ---------------------------------------------------------------- shared by the training tests
# (test_training, test_asr_training, test_eval_embeddings, test_asr_models)


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is ~10x faster than two.

    Use per module with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# a tiny embedder training configuration (TrainConfig fields) for CPU tests
TINY_EMBEDDER = dict(
    dim=32, channels=40, num_blocks=2, num_buckets=4096, ngram_dim=32, letter_hidden=64,
    batch_size=32, lr=5e-3, progress=False, device="cpu",
)  # fmt: skip


def run_torchrun(module_args, nproc: int = 2, timeout: float = 240):
    """``python -m torch.distributed.run --standalone`` with ``nproc`` processes, OMP_NUM_THREADS=1."""
    import os
    import subprocess
    import sys

    import torch

    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
    launcher.append(f"--nproc_per_node={nproc}")
    if int(torch.__version__.split(".")[0]) < 2:
        # torch 1.13's torchrun cannot parse its default "--redirects 0 --tee 0" on Python 3.11
        # (Flag enums no longer iterate their zero member); any non-zero value works.
        launcher += ["--redirects", "2", "--tee", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(launcher + list(module_args), capture_output=True, text=True, env=env, timeout=timeout)


_IMPORT_CHECK = """
import sys
for name in sys.argv[1:]:
    __import__(name)
print(",".join(sorted(m for m in sys.modules if m.split(".")[0] in ("lhotse", "k2", "_k2"))))
"""


def lhotse_or_k2_imported_by(*modules: str) -> str:
    """Comma-separated lhotse/k2 modules that importing ``modules`` in a fresh interpreter loads ("" if none)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK, *modules], capture_output=True, text=True, check=True, timeout=120
    )
    return out.stdout.strip()


class PlantedCode:
    """Pickles as a call of ``os.mkdir(marker)``: what a crafted file would hold (unpickling it
    runs code; the marker directory shows whether it ran)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))
