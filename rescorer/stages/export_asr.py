"""Stage: utterance features + transcripts (rescorer.utterances) for ASR training and rescoring."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Sequence

from rescorer.corpora.report import corpus_splits
from rescorer.stages import StageError
from rescorer.training.asr_data import export_utterances


def export_asr(
    data_dir, corpus: str, out_dir, splits: Optional[Sequence[str]] = None, echo: Callable[[str], None] = print
) -> List[Path]:
    """Write OUT_DIR/<split>.pt from DATA_DIR/manifests/{corpus}_cuts_{split}_fbank.jsonl.gz.

    The fbank manifests are made by the segments stage; a split whose output exists is
    skipped. Returns the output paths of all handled splits.
    """
    from lhotse import CutSet  # lhotse only where manifests are read

    data, outdir = Path(data_dir), Path(out_dir)
    todo = list(splits) if splits else corpus_splits(data, corpus)
    written = []
    for split in todo:
        src = data / "manifests" / f"{corpus}_cuts_{split}_fbank.jsonl.gz"
        dst = outdir / f"{split}.pt"
        written.append(dst)
        if dst.exists():
            echo(f"{split}: already exported ({dst})")
            continue
        if not src.exists():
            raise StageError(f"missing {src}: run `rescorer segments {data} --corpus {corpus}` first")
        export_utterances(CutSet.from_file(src), dst)
        echo(f"{split}: wrote {dst}")
    return written
