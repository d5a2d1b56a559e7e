"""The layering, checked by import-linter's contracts in pyproject.toml ([tool.importlinter]):
inference does not import training, models do not import data pipelines (nor frontends),
the lattice package does not import rescoring, the lowest layer (text, tokens, utils, the
file formats) imports nothing above it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run the env's ``lint-imports`` on the package under ``root`` with ``root``'s pyproject.toml."""
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} missing: import-linter is part of both environments (requirements/)")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )


def test_the_import_contracts_hold():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    "module, source, edge",
    [
        # an import inside a function body counts: lazy imports are imports too
        ("rescorer/lattice/planted.py", "def f():\n    from rescorer.training import common\n",
         "rescorer.lattice.planted -> rescorer.training.common"),
        ("rescorer/models/planted.py", "import rescorer.corpora.report\n",
         "rescorer.models.planted -> rescorer.corpora.report"),
        ("rescorer/lattice/planted.py", "from rescorer.rescore import Rescorer\n",
         "rescorer.lattice.planted -> rescorer.rescore"),
        ("rescorer/tokens.py", "from rescorer.models import ctc\n", "rescorer.tokens -> rescorer.models.ctc"),
        ("rescorer/formats/planted.py", "from rescorer.training import word_data\n",
         "rescorer.formats.planted -> rescorer.training.word_data"),
        ("rescorer/models/planted.py", "import rescorer.frontends\n", "rescorer.models.planted -> rescorer.frontends"),
        ("rescorer/rescore.py", "def f():\n    from rescorer.stages import tune\n", "rescorer.rescore -> rescorer.stages.tune"),
    ],
)
def test_a_planted_forbidden_import_is_reported(tmp_path, module, source, edge):
    shutil.copytree(REPO / "rescorer", tmp_path / "rescorer", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text((target.read_text() if target.exists() else "") + "\n" + source)
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert edge in result.stdout, result.stdout + result.stderr
