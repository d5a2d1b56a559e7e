#!/usr/bin/env python
"""How long a recipe run took, stage by stage, from its console log (the README's quick-start
budget: the main command must fit about 30 minutes on 2 cores).

    (date; time bash recipes/synthetic/run.sh) > run.log 2>&1
    python benchmarks/recipe_wall_time.py run.log --name synthetic/whisper_l34_run8 \\
        --command "bash recipes/synthetic/run.sh (fresh clone, run alone)" --out results/recipe_wall_time.json

The log must start with ``date``'s output (when the run began, set-up included), hold the
recipe's stage lines (``HH:MM:SS [recipe] stage N: ...``, from ``recipes/lib.sh log``) and end
with ``time``'s ``real`` line. Each stage lasts until the next one starts; the last until the
run's end (its start + ``real``); ``setup`` is what came before stage 0's line. Runs that shared
the cores with other jobs are not comparable: say so in ``--command``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import Dict

STAGE = re.compile(r"^(\d\d):(\d\d):(\d\d) \[[^\]]+\] stage (\d+): (.*)$")
REAL = re.compile(r"^real\s+(?:(\d+)h)?(\d+)m([\d.]+)s$")
DATE = "%a %b %d %H:%M:%S %Z %Y"


class LogError(ValueError):
    """A console log this script cannot read (the message says what is missing)."""


def stage_times(text: str) -> Dict[str, object]:
    """{"wall_seconds", "setup_seconds", "stages": {"N: title": seconds}} from a console log (module doc)."""
    lines = text.splitlines()
    if not lines:
        raise LogError("empty log")
    try:
        start = _dt.datetime.strptime(lines[0].strip(), DATE)
    except ValueError:
        raise LogError(f"the log's first line must be `date`'s output, got {lines[0][:80]!r}") from None
    reals = [REAL.match(x.strip()) for x in lines]
    reals = [m for m in reals if m]
    if not reals:
        raise LogError("no `real` line from `time`: run the recipe under `time`")
    m = reals[-1]
    wall = int(m.group(1) or 0) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    end = start + _dt.timedelta(seconds=wall)
    stages = []
    for x in lines:
        s = STAGE.match(x.strip())
        if s:
            t = start.replace(hour=int(s.group(1)), minute=int(s.group(2)), second=int(s.group(3)), microsecond=0)
            if t < start:  # past midnight
                t += _dt.timedelta(days=1)
            stages.append((f"{s.group(4)}: {s.group(5)}", t))
    if not stages:
        raise LogError("no stage lines (`HH:MM:SS [recipe] stage N: ...`) in the log")
    out = {}
    for (name, t), (_, t_next) in zip(stages, stages[1:] + [(None, end)]):
        out[name] = round((t_next - t).total_seconds(), 1)
    return {"wall_seconds": round(wall, 1), "setup_seconds": round((stages[0][1] - start).total_seconds(), 1),
            "stages": out}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log", help="the run's console log (module doc)")
    p.add_argument("--name", required=True, help="the entry name in --out (e.g. the run's name in results/wer.json)")
    p.add_argument("--command", required=True, help="the command the log is of, and how it ran (alone, fresh clone)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "recipe_wall_time.json"))
    a = p.parse_args(argv)
    times = stage_times(Path(a.log).read_text(errors="replace"))
    out = Path(a.out)
    doc = json.loads(out.read_text()) if out.exists() else {}
    doc[a.name] = {**times, "command": a.command, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                   "date": _dt.date.today().isoformat(),
                   "measured_by": " ".join(["python", "benchmarks/recipe_wall_time.py"] + (argv or sys.argv[1:]))}
    out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(json.dumps(doc[a.name], indent=1))


if __name__ == "__main__":
    main()
