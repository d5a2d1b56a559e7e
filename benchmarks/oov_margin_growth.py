#!/usr/bin/env python
"""How fast the best wrong spelling's cosine rises with the word list's size: the
measurement behind ``RescoreConfig.oov_margin_per_doubling`` (OOV recovery's margin grows by
it per doubling of the list beyond 1000 words).

    python benchmarks/oov_margin_growth.py --model-dir recipes/synthetic/exp/embeddings \\
        --segments recipes/synthetic/data/synthetic/segments/dev.pt --word-list recipes/synthetic/exp/word_lists/large.txt

For ``--segments`` word segments (seeded sample of ``--num-segments``) it embeds the audio
and every spelling of the list, and for random sub-lists of 1k, 2k, ... words up to the
whole list (``--repeats`` draws each) averages the best cosine of a spelling that is not
the segment's word (an impostor, what a proposal next to a right word would be). The
slope of that mean against log2(list size) is the margin growth per doubling. It also
reports the segments' own-word cosine and how often the own word beats every impostor of
the whole list. Writes ``--out`` (results/oov_margin_growth.json) with command, machine, date.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measure(model_dir, segments, word_list, num_segments=400, repeats=5, seed=0) -> dict:
    import numpy as np
    import torch

    from rescorer.formats.word_list import read_word_list
    from rescorer.formats.word_segments import load_word_segments
    from rescorer.models.checkpoint import load_embedder

    acoustic, letters, _ = load_embedder(str(model_dir))
    acoustic.eval()
    letters.eval()
    seg = load_word_segments(str(segments), expect=None)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(seg), min(num_segments, len(seg)), replace=False)
    words = [seg.words[int(seg.word_ids[i])] for i in idx]
    vocab = read_word_list(word_list).words
    with torch.no_grad():
        A = torch.nn.functional.normalize(
            acoustic.encode_segments([seg.segment(int(i)).float() for i in idx], batch_size=64).float(), dim=1)
        W = torch.nn.functional.normalize(
            torch.cat([letters.encode_words(vocab[i:i + 20000]).float() for i in range(0, len(vocab), 20000)]), dim=1)
    pos = {w: i for i, w in enumerate(vocab)}
    true = torch.tensor([pos.get(w, -1) for w in words])
    S = A @ W.t()
    listed = true >= 0
    own = S[torch.arange(len(idx))[listed], true[listed]]
    S[torch.arange(len(idx))[listed], true[listed]] = -2.0  # impostors only
    sizes = [1000 * 2 ** k for k in range(20) if 1000 * 2 ** k < len(vocab)] + [len(vocab)]
    rows = []
    for v in sizes:
        means = [float(S[:, torch.from_numpy(rng.choice(len(vocab), v, replace=False))].max(1).values.mean())
                 for _ in range(repeats)]
        rows.append({"list_size": v, "best_impostor_cosine": round(float(np.mean(means)), 4)})
    slope = float(np.polyfit(np.log2(sizes), [r["best_impostor_cosine"] for r in rows], 1)[0])
    return {
        "segments": len(idx), "segments_whose_word_is_listed": int(listed.sum()),
        "own_word_cosine_mean": round(float(own.mean()), 4), "own_word_cosine_median": round(float(own.median()), 4),
        "own_word_beats_every_impostor_of_the_list": round(float((own > S[listed].max(1).values).float().mean()), 4),
        "by_list_size": rows, "best_impostor_cosine_per_doubling": round(slope, 4),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--segments", required=True, help="word segments (rescorer.word_segments), e.g. a dev split's")
    ap.add_argument("--word-list", required=True, help="a word-list file, e.g. rescorer word-lists' large.txt")
    ap.add_argument("--num-segments", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "results" / "oov_margin_growth.json"))
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    result = measure(a.model_dir, a.segments, a.word_list, a.num_segments, a.repeats, a.seed)
    result.update(
        inputs={"model_dir": a.model_dir, "segments": a.segments, "word_list": a.word_list},
        command="python " + " ".join([os.path.relpath(__file__, REPO)] + (argv if argv is not None else sys.argv[1:])),
        machine=f"{platform.machine()}, {os.cpu_count()} cores", date=_dt.date.today().isoformat(),
    )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("best_impostor_cosine_per_doubling", "own_word_cosine_median")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
