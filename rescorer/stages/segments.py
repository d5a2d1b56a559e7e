"""Stage: frontend features for every cut (fbank, or Whisper states), then the word segments
as plain torch files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from rescorer.corpora.report import corpus_splits
from rescorer.formats.contract import FBANK, FeatureSpec
from rescorer.segments import compute_features, export_word_segments, extract_word_segments, word_segment_cuts
from rescorer.stages import StageError
from rescorer.utils import atomic_path, atomic_write_text


def frontend_spec_path(data_dir, corpus: str, frontend: str) -> Path:
    """Where the segments stage records the spec of the frontend it computed (read by export-asr)."""
    return Path(data_dir) / "manifests" / f"{corpus}_{frontend}.spec.json"


def compute_segments(
    data_dir,
    corpus: str,
    splits: Optional[Sequence[str]] = None,
    max_frames: int = 200,
    min_frames: int = 3,
    num_jobs: int = 2,
    echo: Callable[[str], None] = print,
    frontend: str = "fbank",
    frontend_options: Optional[Dict[str, Any]] = None,
) -> List[str]:
    """Features and word segments of each split (all splits found when ``splits`` is None).

    Writes DATA_DIR/manifests/{corpus}_cuts_{split}_{frontend}.jsonl.gz, DATA_DIR/segments/{split}.pt
    (+ .stats.json and word-level cuts). A split whose outputs exist is skipped, so the
    stage resumes; segments of another frontend are never taken for this one's.
    ``max_frames``/``min_frames`` count 10 ms frames; a 20 ms frontend halves them.
    Returns the splits handled; ``echo`` receives one line per step.
    """
    from lhotse import CutSet  # lhotse only where manifests are read

    from rescorer.frontends import frontend_extractor

    extractor, spec = frontend_extractor(frontend, frontend_options)
    max_frames = int(round(max_frames * FBANK.frame_shift / spec.frame_shift))
    min_frames = max(1, int(round(min_frames * FBANK.frame_shift / spec.frame_shift)))
    data = Path(data_dir)
    atomic_write_text(frontend_spec_path(data, corpus, frontend), json.dumps(spec.to_json()))
    todo = list(splits) if splits else corpus_splits(data, corpus)
    if not todo:
        raise StageError(f"no {corpus} manifests in {data / 'manifests'}")
    for split in todo:
        src = data / "manifests" / f"{corpus}_cuts_{split}.jsonl.gz"
        if not src.exists():
            raise StageError(f"missing manifest {src}")
        pt = data / "segments" / f"{split}.pt"
        stats_path = data / "segments" / f"{split}.stats.json"
        if pt.exists() and stats_path.exists():
            done = FeatureSpec.from_json(json.loads(stats_path.read_text()).get("feature_spec", FBANK.to_json()))
            if done != spec:
                raise StageError(f"{pt} holds {done.name} segments, not {spec.name}: use another data directory")
            echo(f"{split}: word segments already exported ({pt})")
            continue
        echo(f"{split}: {frontend} features")
        cuts = compute_features(
            CutSet.from_file(src), data / frontend, data / "manifests" / f"{corpus}_cuts_{split}_{frontend}.jsonl.gz",
            num_jobs, None if frontend == "fbank" else extractor,
        )
        segs = extract_word_segments(cuts, max_frames=max_frames, min_frames=min_frames, spec=spec)
        with atomic_path(data / "segments" / f"word_cuts_{split}.jsonl.gz") as tmp:
            word_segment_cuts(cuts, max_frames, min_frames).to_file(str(tmp))
        export_word_segments(segs, pt)
        st = segs.stats
        atomic_write_text(
            stats_path,
            json.dumps(
                {"word_segments": st.word_segments, "too_long": st.too_long, "too_short": st.too_short,
                 "unaligned_utterances": st.unaligned_utterances, "max_frames": max_frames, "min_frames": min_frames,
                 "feature_spec": spec.to_json()},
                indent=1,
            ),
        )
        echo(f"{split}: {st.word_segments} word segments, dropped {st.segments_dropped} "
             f"({st.too_long} > {max_frames} frames, {st.too_short} < {min_frames})")
    return todo
