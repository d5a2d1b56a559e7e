"""A recipe's one config file -> command-line options, so run.sh stays free of logic.

Each section of ``recipes/<corpus>/config.yaml`` maps option names to values for one
verb (``embeddings`` -> ``rescorer train embeddings``, ``ctc`` / ``attention`` ->
``rescorer train asr``, ``decode`` -> ``rescorer decode``, ``rescore`` -> ``rescorer tune``,
...). ``rescorer config-flags CONFIG SECTION`` prints one argument per line (true ->
``--key``, false -> ``--no-key``, lists -> comma-joined), for ``mapfile`` in bash. Values
are attached with ``=`` (``--wips=-2,0,2``) so that negative numbers are not read as flags.
"""

from __future__ import annotations

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
