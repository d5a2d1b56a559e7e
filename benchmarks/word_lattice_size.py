#!/usr/bin/env python
"""Bytes per arc of word-lattice shards: the version-1 layout against the compact one.

    python benchmarks/word_lattice_size.py --lattices recipes/synthetic/exp/decode_dev_ctc/word_lattices.pt
    python benchmarks/word_lattice_size.py            # lattices made here (see below) -> results/word_lattice_size.json

For the same lattices it writes, in memory or to a temporary directory:

- ``v1``: the layout before ``rescorer.word_lattices/2`` (one record per utterance: int32
  arcs [A, 3], int32 spans, float32 am / lm / combined scores, Python floats and meta);
- ``v2``: ``save_word_lattices`` without pruning (narrowest exact integer columns, combined
  scores recomputed on loading instead of stored);
- ``v2_pruned``: ``save_word_lattices(..., min_posterior)``, what the decoder now writes
  (arcs below the posterior rescoring prunes at are dropped at writing time).

Bytes per arc are always over the arcs the decoder made (``arcs``), so pruning shows as
fewer bytes per decoded arc; ``stored_arcs`` is what the pruned file keeps. It also
measures why am/lm scores stay float32: the largest rounding error float16 would add.

Without ``--lattices`` it builds lattices shaped like decoder output (per utterance a
chain of word slots with a long tail of unlikely alternatives, spans of 3-12 frames at
40 ms, a 20k-word table) from a seed; the result records which lattices were measured.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import json
import math
import os
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402


def version1_bytes(lattices) -> int:
    """Size of the version-1 shard of ``lattices`` (its writer's layout, rebuilt here to measure it)."""
    from rescorer.lattice.word_lattice import table_digest, table_items

    words = next(iter(lattices.values())).words
    recs = {}
    for uid, lat in lattices.items():
        f = lat.fsa
        recs[uid] = {
            "num_states": lat.num_states, "arcs": f.arcs.values()[:, :3].clone().to(torch.int32),
            "start_frame": f.start_frame.clone().to(torch.int32), "end_frame": f.end_frame.clone().to(torch.int32),
            "am_scores": f.am_scores.clone().float(), "lm_scores": f.lm_scores.clone().float(),
            "scores": f.scores.clone().float(), "frame_shift": float(lat.frame_shift), "meta": dict(lat.meta),
        }
    buf = io.BytesIO()
    torch.save({"format": "rescorer.word_lattices/1", "words": [list(x) for x in table_items(words)],
                "words_digest": table_digest(words), "lattices": recs}, buf)
    return len(buf.getvalue())


def made_lattices(utterances: int, seed: int):
    """Decoder-shaped word lattices: word slots, each with one likely word and many unlikely ones."""
    from rescorer.lattice.word_lattice import from_arrays, make_word_table

    g = torch.Generator().manual_seed(seed)
    vocab = [f"w{i:05d}" for i in range(20000)]
    table = make_word_table(vocab)
    out = {}
    for u in range(utterances):
        slots = int(torch.randint(8, 25, (1,), generator=g))
        src, dst, lab, sf, ef, am, lm = [], [], [], [], [], [], []
        t = 0
        for s in range(slots):
            dur = int(torch.randint(3, 13, (1,), generator=g))
            alts = int(torch.randint(20, 400, (1,), generator=g))
            for k in range(alts):
                src.append(s), dst.append(s + 1)
                lab.append(int(torch.randint(2, len(vocab) + 2, (1,), generator=g)))
                shift = int(torch.randint(-1, 2, (1,), generator=g)) if k else 0
                sf.append(max(0, t + shift)), ef.append(t + dur)
                am.append(-float(torch.rand(1, generator=g)) * (1 if k == 0 else 25.0) - (0 if k == 0 else 3.0))
                lm.append(-float(torch.rand(1, generator=g)) * 12.0)
            t += dur
        src.append(slots), dst.append(slots + 1), lab.append(-1), sf.append(t), ef.append(t), am.append(0.0), lm.append(-2.0)
        uid = f"utt{u:04d}"
        out[uid] = from_arrays(src, dst, lab, sf, ef, am, lm, table, frame_shift=0.04, utterance_id=uid,
                               meta={"source": "benchmarks/word_lattice_size.py made lattices"})
    return out


def float16_error(lattices) -> dict:
    """Largest |x - float16(x)| over the am and lm scores (nats)."""
    out = {}
    for name in ("am_scores", "lm_scores"):
        x = torch.cat([getattr(l.fsa, name) for l in lattices.values()]).double()
        x = x[torch.isfinite(x)]
        out[name] = {"max_abs_error_nats": float((x - x.half().double()).abs().max()), "max_abs_value": float(x.abs().max())}
    return out


def measure(lattices, min_posterior: float) -> dict:
    from rescorer.lattice.word_lattice import load_word_lattices, save_word_lattices

    arcs = sum(l.num_arcs for l in lattices.values())
    v1 = version1_bytes(lattices)
    with tempfile.TemporaryDirectory() as td:
        v2 = save_word_lattices(Path(td) / "v2.pt", lattices.values()).stat().st_size
        pp = save_word_lattices(Path(td) / "p.pt", lattices.values(), min_posterior=min_posterior)
        pruned = pp.stat().st_size
        stored = sum(l.num_arcs for l in load_word_lattices(pp).values())
    return {
        "utterances": len(lattices), "arcs": arcs, "stored_arcs_pruned": stored, "min_posterior": min_posterior,
        "bytes": {"v1": v1, "v2": v2, "v2_pruned": pruned},
        "bytes_per_arc": {"v1": v1 / arcs, "v2": v2 / arcs, "v2_pruned": pruned / arcs,
                          "v2_pruned_per_stored_arc": pruned / max(1, stored)},
        "reduction": {"v2": v1 / v2, "v2_pruned": v1 / pruned},
        "float16_would_add": float16_error(lattices),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lattices", help="a word_lattices.pt (or a directory of shards); default: lattices made here")
    ap.add_argument("--utterances", type=int, default=100, help="made lattices: how many")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-posterior", type=float, default=1e-4)
    ap.add_argument("--out", default=str(REPO / "results" / "word_lattice_size.json"))
    a = ap.parse_args(argv)
    from rescorer.lattice.word_lattice import load_word_lattices

    if a.lattices:
        lattices, source = load_word_lattices(a.lattices), a.lattices
    else:
        lattices, source = made_lattices(a.utterances, a.seed), f"made by this script (seed {a.seed}, {a.utterances} utterances)"
    doc = {
        "command": "python " + " ".join([os.path.relpath(__file__, REPO)] + (argv if argv is not None else sys.argv[1:])),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lattices": source,
        **measure(lattices, a.min_posterior),
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    b = doc["bytes_per_arc"]
    print(f"{doc['arcs']} arcs: {b['v1']:.1f} bytes/arc (v1) -> {b['v2']:.1f} (v2) -> {b['v2_pruned']:.2f} "
          f"(v2 pruned at {a.min_posterior:g}, {doc['stored_arcs_pruned']} arcs kept); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
