"""A recipe's one config file -> command-line options, so run.sh stays free of logic.

Each section of ``recipes/<corpus>/config.yaml`` maps option names to values for one
program (``embeddings`` -> rescorer.training.train_embeddings, ``ctc`` / ``attention`` ->
train_asr, ``decode`` -> rescorer.decoding.decode, ``rescore`` ->
benchmarks/rescore_wer.py, ...). ``python -m rescorer.recipe_config CONFIG SECTION``
prints one argument per line (``--key`` then its value; true -> ``--key``, false ->
``--no-key``, lists -> comma-joined), for ``mapfile -t args < <(...)`` in bash. Values
are attached with ``=`` (``--wips=-2,0,2``) so that negative numbers are not read as flags.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List


class RecipeConfigError(ValueError):
    pass


def load_section(path, section: str) -> Dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise RecipeConfigError(f"{p}: no such config file")
    doc = yaml.safe_load(p.read_text()) or {}
    if not isinstance(doc, dict):
        raise RecipeConfigError(f"{p}: the config must be a mapping of sections")
    sec = doc.get(section, {})
    if sec is None:
        return {}
    if not isinstance(sec, dict):
        raise RecipeConfigError(f"{p}: section {section!r} must be a mapping of options, got {type(sec).__name__}")
    return sec


def to_args(options: Dict[str, Any]) -> List[str]:
    out: List[str] = []
    for key, value in options.items():
        flag = "--" + str(key).replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            out.append(f"{flag}={','.join(str(v) for v in value)}")
        elif isinstance(value, dict):
            raise RecipeConfigError(f"option {key!r}: nested mappings are not command-line options")
        else:
            out.append(f"{flag}={value}")
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m rescorer.recipe_config CONFIG SECTION", file=sys.stderr)
        return 2
    try:
        args = to_args(load_section(argv[0], argv[1]))
    except RecipeConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for a in args:
        if "\n" in a:
            print(f"error: option value {a!r} spans lines", file=sys.stderr)
            return 1
        print(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
