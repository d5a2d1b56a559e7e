"""benchmarks/recipe_wall_time.py: a recipe's stage times from its console log."""

import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import recipe_wall_time as script  # noqa: E402

LOG = """Sat Dec  5 23:59:00 UTC 2026
[setup] ready
23:59:30 [synthetic] stage 0: synthesize the corpus (data/synthetic)
synthesizing: 100%
00:01:30 [synthetic] stage 1: features
00:05:00 [synthetic] stage 2: results
table
real	7m0.5s
user	9m1.000s
"""


def test_each_stage_lasts_until_the_next_and_the_last_until_the_run_ends():
    t = script.stage_times(LOG)
    assert t["wall_seconds"] == 420.5 and t["setup_seconds"] == 30.0  # set-up: before stage 0
    assert t["setup_seconds"] + sum(t["stages"].values()) == pytest.approx(t["wall_seconds"])
    assert t["stages"] == {"0: synthesize the corpus (data/synthetic)": 120.0,  # across midnight
                           "1: features": 210.0, "2: results": 60.5}


def test_a_log_without_its_start_end_or_stages_is_named():
    with pytest.raises(script.LogError, match="first line must be `date`"):
        script.stage_times(LOG.split("\n", 1)[1])
    with pytest.raises(script.LogError, match="no `real` line"):
        script.stage_times(LOG.replace("real", "unreal"))
    with pytest.raises(script.LogError, match="no stage lines"):
        script.stage_times("\n".join(x for x in LOG.splitlines() if "stage" not in x))
