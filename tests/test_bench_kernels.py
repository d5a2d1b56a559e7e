"""benchmarks/bench_kernels.py: the rows carry the keys results/kernels.json is specified with,
and are written as they are measured (a run cut short keeps them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIRED = {"kernel", "N", "V", "D", "k", "dtype", "ms", "torch_ms", "floor_ms", "device", "date"}


def test_cpu_run_writes_specified_rows(tmp_path):
    out = tmp_path / "kernels.json"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_kernels.py"), "--device", "cpu",
                          "--V", "3000", "--min-time-ms", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    assert doc["device"] == "cpu" and "bench_kernels.py" in doc["command"] and doc["date"]
    kinds = {r["kernel"].split("[")[0] for r in doc["rows"]}
    assert kinds == {"topk_nearest", "arc_similarity"}
    for row in doc["rows"]:
        assert REQUIRED <= set(row), REQUIRED - set(row)
        assert row["ms"] > 0 and row["floor_ms"] > 0
    topk = next(r for r in doc["rows"] if r["kernel"].startswith("topk"))
    assert topk["gemm_ms"] > 0 and topk["index_ms"] > 0 and topk["V"] == 3000
    # every printed row is in the file
    printed = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == len(doc["rows"])
