#!/usr/bin/env python
"""Do Whisper's int8 transcripts depend on the CPU? The same cuts transcribed by ``rescorer
transcribe`` under CTranslate2's default kernels and under each forced instruction set
(``CT2_FORCE_CPU_ISA``, read when the library loads, so each run is its own process).

    python benchmarks/whisper_isa_agreement.py --cuts CUTS.jsonl.gz --max-utterances 60 \\
        --out results/whisper_isa_agreement.json

Why: Whisper tiny.en alone scored 28.7% and 29.4% on speechocean762 dev in two runs of the same
recipe on two machines with the same code, model and audio; this says whether the CPU's kernels
alone move transcripts, i.e. how far apart figures from different machines may be without meaning
anything. Writes, per pair of settings, how many utterances' words differ (with examples), and
each setting's WER against the cuts' texts; with the command, machine and date.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _cpu_flags() -> list:
    try:
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f.startswith(("avx", "fma", "sse4")))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cuts", required=True, help="a lhotse cuts manifest with supervision texts")
    p.add_argument("--max-utterances", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--isas", default="default,AVX2,AVX512", help="default: CTranslate2's own choice")
    p.add_argument("--out", default=str(REPO / "results" / "whisper_isa_agreement.json"))
    a = p.parse_args(argv)
    from lhotse import load_manifest

    from rescorer.formats.transcripts import read_transcripts
    from rescorer.text import words_of
    from rescorer.wer import compute_wer

    refs = {c.id: words_of(" ".join(s.text or "" for s in c.supervisions)) for c in load_manifest(a.cuts)}
    words, wer = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for isa in a.isas.split(","):
            env = {k: v for k, v in os.environ.items() if k != "CT2_FORCE_CPU_ISA"}
            if isa != "default":
                env["CT2_FORCE_CPU_ISA"] = isa
            out = Path(tmp) / f"{isa}.jsonl"
            cmd = [sys.executable, "-m", "rescorer", "transcribe", a.cuts, str(out), "--threads", str(a.threads),
                   "--max-utterances", str(a.max_utterances), "--no-progress"]
            print("+", f"CT2_FORCE_CPU_ISA={isa}" if isa != "default" else "", " ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, check=True, env={**env, "PYTHONPATH": str(REPO)})
            words[isa] = read_transcripts(str(out)).words
            uids = sorted(words[isa])
            wer[isa] = round(compute_wer([refs[u] for u in uids], [words[isa][u] for u in uids])["wer"], 4)
    pairs = {}
    for x, y in itertools.combinations(words, 2):
        diff = [u for u in sorted(words[x]) if words[x][u] != words[y].get(u)]
        pairs[f"{x}_vs_{y}"] = {"utterances_differing": len(diff), "utterances": len(words[x]),
                                "examples": [{"id": u, x: " ".join(words[x][u]), y: " ".join(words[y][u])}
                                             for u in diff[:5]]}
    doc = {"pairs": pairs, "wer": wer, "threads": a.threads, "cuts": a.cuts,
           "command": " ".join(["python", "benchmarks/whisper_isa_agreement.py"] + (argv or sys.argv[1:])),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU flags {' '.join(_cpu_flags())}",
           "date": _dt.date.today().isoformat()}
    Path(a.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(pairs, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
