"""Stage: utterance features + transcripts (rescorer.utterances) for ASR training and rescoring."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Sequence

import json

from rescorer.corpora.report import corpus_splits
from rescorer.formats.contract import FBANK, FeatureSpec
from rescorer.formats.utterances import read_utterance_features
from rescorer.stages import StageError
from rescorer.stages.segments import frontend_spec_path
from rescorer.training.asr_data import export_utterances


def export_asr(
    data_dir, corpus: str, out_dir, splits: Optional[Sequence[str]] = None, echo: Callable[[str], None] = print,
    frontend: str = "fbank",
) -> List[Path]:
    """Write OUT_DIR/<split>.pt from DATA_DIR/manifests/{corpus}_cuts_{split}_{frontend}.jsonl.gz.

    The feature manifests (and the frontend's spec) are made by the segments stage; a split
    whose output exists, of the same frontend, is skipped. Returns the output paths of all
    handled splits.
    """
    from lhotse import CutSet  # lhotse only where manifests are read

    data, outdir = Path(data_dir), Path(out_dir)
    spec_file = frontend_spec_path(data, corpus, frontend)
    if frontend == "fbank" and not spec_file.exists():
        spec = FBANK
    elif spec_file.exists():
        spec = FeatureSpec.from_json(json.loads(spec_file.read_text()))
    else:
        raise StageError(f"missing {spec_file}: run `rescorer segments {data} --corpus {corpus} --frontend {frontend}` first")
    todo = list(splits) if splits else corpus_splits(data, corpus)
    written = []
    for split in todo:
        src = data / "manifests" / f"{corpus}_cuts_{split}_{frontend}.jsonl.gz"
        dst = outdir / f"{split}.pt"
        written.append(dst)
        if dst.exists():
            read_utterance_features(dst, expect=spec)  # never another frontend's frames for this one's
            echo(f"{split}: already exported ({dst})")
            continue
        if not src.exists():
            raise StageError(f"missing {src}: run `rescorer segments {data} --corpus {corpus}` first")
        export_utterances(CutSet.from_file(src), dst, spec=spec)
        echo(f"{split}: wrote {dst}")
    return written
