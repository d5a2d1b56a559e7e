#!/usr/bin/env python
"""How much several trained embedders gain together: the mean of their cosines as one score.

    python benchmarks/embedder_ensemble.py --segments D/dev.pt --train-segments D/train.pt \\
        --member l3=exp/embeddings_l3 --member l34=exp/embeddings --name speechocean762/whisper/ensemble_l3+l34 \\
        --out results/embeddings.json

Why: embedders trained on different inputs (e.g. Whisper layer 3 alone, and layers 3+4)
make different mistakes, so the mean of their cosines may separate words better than either;
this measures it before the product pays for a second encoder pass. Each member's unit
vectors are concatenated and scaled by 1/sqrt(M), so a dot product of two such vectors is
the mean of the members' cosines and every metric of ``rescorer.evaluation.embeddings``
(IV/OOV P@1, acoustic and cross-view AP) applies unchanged. Each member reads its own view
of the segments' frames (``formats.contract.layer_view``: e.g. layer 3 of stacked layers
3+4). The row ``--name`` in ``--out`` gets the ensemble's figures and, under ``members``,
each member's own, measured the same way, with command, machine and date.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402

FIGURES = ("iv_p_at_1", "oov_p_at_1", "acoustic_ap", "crossview_ap")


class EnsembleError(ValueError):
    """Members that cannot be scored together (the message says why)."""


class MeanCosineAcoustic(nn.Module):
    """Members' acoustic encoders side by side; each reads its columns of the frames."""

    def __init__(self, members: Sequence[nn.Module], columns: Sequence[torch.Tensor], feature_dim: int):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.columns = list(columns)
        self.feature_dim = feature_dim
        self.dim = sum(int(m.dim) for m in members)
        self.max_frames = max(int(m.max_frames) for m in members)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        outs = [nn.functional.normalize(m(feats[..., c], lengths).float(), dim=-1)
                for m, c in zip(self.members, self.columns)]
        return torch.cat(outs, -1) / math.sqrt(len(outs))


class MeanCosineSpelling(nn.Module):
    """Members' spelling encoders side by side (unit vectors concatenated, / sqrt(M))."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.dim = sum(int(m.dim) for m in members)

    def encode_words(self, words: Sequence[str]) -> torch.Tensor:
        outs = [nn.functional.normalize(m.encode_words(list(words)).float(), dim=-1) for m in self.members]
        return torch.cat(outs, -1) / math.sqrt(len(outs))


def member_columns(recorded, spec, name: str) -> torch.Tensor:
    """The columns of the segments' frames that member ``name`` reads (all of them when its spec is theirs)."""
    from rescorer.formats.contract import layer_view

    if spec == recorded:
        return torch.arange(recorded.dim)
    cols = layer_view(recorded, spec)
    if cols is None:
        raise EnsembleError(f"member {name} reads {spec.name} ({spec.dim} values every {spec.frame_shift} s); "
                            f"the segments hold {recorded.name} ({recorded.dim} values), not a view of it")
    return torch.tensor(cols)


def build(members: List[Tuple[str, str]], recorded) -> Tuple[MeanCosineAcoustic, MeanCosineSpelling, Dict[str, nn.Module]]:
    """(ensemble acoustic, ensemble spelling, {name: (acoustic, spelling)}) of the member run directories."""
    from rescorer.formats.contract import FBANK, FeatureSpec
    from rescorer.models.checkpoint import load_embedder

    acoustic, spelling, columns, single = [], [], [], {}
    for name, model_dir in members:
        a, s, _ = load_embedder(model_dir)
        spec = FeatureSpec.from_json(a.feature_spec) if getattr(a, "feature_spec", None) else FBANK
        columns.append(member_columns(recorded, spec, name))
        acoustic.append(a)
        spelling.append(s)
        single[name] = (a, s, columns[-1])
    return MeanCosineAcoustic(acoustic, columns, recorded.dim).eval(), MeanCosineSpelling(spelling).eval(), single


def measure(a) -> dict:
    from rescorer.evaluation.embeddings import evaluate_embeddings, load_segments
    from rescorer.formats.word_segments import read_word_segments, spec_of

    torch.set_num_threads(a.threads)
    members = []
    for m in a.member:
        name, sep, model_dir = m.partition("=")
        if not sep or not name or not model_dir:
            raise EnsembleError(f"--member takes NAME=DIR, got {m!r}")
        members.append((name, model_dir))
    if len(members) < 2:
        raise EnsembleError("an ensemble needs at least two --member")
    recorded = spec_of(read_word_segments(a.segments, expect=None))
    data = load_segments(a.segments)
    train_words = list(load_segments(a.train_segments).words)
    acoustic, spelling, single = build(members, recorded)
    common = dict(distractors=list(data.words), factor=1) if a.no_distractors else {}

    def figures(ac, sp) -> Dict[str, float]:
        r = evaluate_embeddings(ac, sp, data, train_words, **common)
        return {k: round(float(r.metrics[k]), 4) for k in FIGURES if r.metrics.get(k) is not None}

    row = {"figures": figures(acoustic, spelling), "members": {}}
    for name, (ac, sp, cols) in single.items():
        row["members"][name] = {"model_dir": dict(members)[name], "figures": figures(MeanCosineAcoustic([ac], [cols], recorded.dim).eval(),
                                                                                     MeanCosineSpelling([sp]).eval())}
    row.update({k: row["figures"][k] for k in row["figures"]})
    row.update(segments=a.segments, iv_oov_by=a.train_segments, counts={"segments": len(data)})
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--segments", required=True, help="evaluation word segments (.pt)")
    p.add_argument("--train-segments", required=True, help="training segments: their words are in-vocabulary")
    p.add_argument("--member", action="append", default=[], help="NAME=DIR: a trained embedder run (two or more)")
    p.add_argument("--name", required=True, help="row name in --out")
    p.add_argument("--out", required=True)
    p.add_argument("--no-distractors", action="store_true", help="skip the 10x candidate list (its figure is not reported)")
    p.add_argument("--note", default=None, help="where the members came from (recorded in the row)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    try:
        row = measure(a)
    except EnsembleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    row.update(command="python benchmarks/embedder_ensemble.py " + " ".join(sys.argv[1:] if argv is None else argv),
               machine=f"{platform.machine()}, {os.cpu_count()} cores", date=_dt.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
               workdir=os.getcwd())
    if a.note:
        row["note"] = a.note
    out = Path(a.out)
    data = json.loads(out.read_text()) if out.exists() else {}
    data[a.name] = row
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps({"ensemble": row["figures"], **{k: v["figures"] for k, v in row["members"].items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
