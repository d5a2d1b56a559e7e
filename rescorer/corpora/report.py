"""Corpus statistics (hours, speakers, vocabulary, OOV rate, word segments) per split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

SPLIT_ORDER = ("train", "dev", "test")


def corpus_splits(data_dir, corpus: str) -> List[str]:
    found = [p.name[len(f"{corpus}_cuts_") : -len(".jsonl.gz")] for p in (Path(data_dir) / "manifests").glob(f"{corpus}_cuts_*.jsonl.gz")]
    # feature manifests are {split}_{frontend} beside {split}: a name extending another is not a split
    found = [s for s in found if not s.endswith("_fbank") and not any(s.startswith(t + "_") for t in found)]
    return sorted(found, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else 99, s))


def split_stats(cuts, train_vocab: Optional[set], segment_stats: Optional[dict]) -> Dict[str, object]:
    words: List[str] = []
    speakers = set()
    seconds = 0.0
    n = 0
    for c in cuts:
        n += 1
        seconds += c.duration
        for s in c.supervisions:
            words.extend((s.text or "").split())
            speakers.add(s.speaker)
    vocab = set(words)
    oov = sum(w not in train_vocab for w in words) / len(words) if (train_vocab is not None and words) else 0.0
    out = {
        "hours": round(seconds / 3600, 4),
        "utterances": n,
        "speakers": len(speakers),
        "tokens": len(words),
        "vocabulary": len(vocab),
        "oov_token_rate": round(oov, 4),
    }
    if segment_stats is not None:
        out["word_segments"] = segment_stats["word_segments"]
        out["segments_dropped"] = segment_stats["too_long"] + segment_stats["too_short"]
        out["segments_dropped_too_long"] = segment_stats["too_long"]
        out["segments_dropped_too_short"] = segment_stats["too_short"]
        out["unaligned_utterances"] = segment_stats["unaligned_utterances"]
    return out


def corpus_report(data_dir, corpus: str, train_split: str = "train") -> Dict[str, Dict[str, object]]:
    """Stats for every split of ``corpus`` found in ``data_dir``; OOV relative to ``train_split``."""
    from lhotse import CutSet

    data_dir = Path(data_dir)
    splits = corpus_splits(data_dir, corpus)
    if not splits:
        raise FileNotFoundError(f"no {corpus} manifests in {data_dir / 'manifests'}")
    cuts = {s: CutSet.from_file(data_dir / "manifests" / f"{corpus}_cuts_{s}.jsonl.gz") for s in splits}
    train_vocab = None
    if train_split in cuts:
        train_vocab = {w for c in cuts[train_split] for s in c.supervisions for w in (s.text or "").split()}
    report = {}
    for s in splits:
        stats_path = data_dir / "segments" / f"{s}.stats.json"
        seg = json.loads(stats_path.read_text()) if stats_path.exists() else None
        report[s] = split_stats(cuts[s], train_vocab, seg)
    return report


def format_report(reports: Dict[str, Dict[str, Dict[str, object]]]) -> str:
    cols = ["hours", "utterances", "speakers", "vocabulary", "oov_token_rate", "word_segments", "segments_dropped"]
    lines = [f"{'corpus/split':28s}" + "".join(f"{c:>17s}" for c in cols)]
    for corpus, splits in reports.items():
        for split, st in splits.items():
            cells = []
            for c in cols:
                v = st.get(c, "-")
                cells.append(f"{v:>17.3f}" if isinstance(v, float) else f"{v!s:>17s}")
            lines.append(f"{corpus + '/' + split:28s}" + "".join(cells))
    return "\n".join(lines)
