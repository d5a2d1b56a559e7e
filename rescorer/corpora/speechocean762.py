"""speechocean762 (real non-native read speech) as lhotse manifests with word alignments.

Reads the Kaldi-style directory shipped in ``shared/data/speechocean762``: ``train/wav.scp``,
``text``, ``utt2spk``, ``spk2gender``, ``spk2age``, ``words.ctm`` (machine forced
alignments) and ``words.ctm.failed`` (utterances the aligner could not align). Those
stay in the manifests for ASR, with no word alignment, and are counted.

Speakers are split (seeded) into disjoint train and dev sets. Corpus: Zhang et al.,
Interspeech 2021, Apache-2.0 (see the data folder's README for attribution).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from rescorer.corpora.errors import CorpusError
from rescorer.text import NotAWordError, normalize_word
from rescorer.utils import atomic_path

log = logging.getLogger(__name__)


def _read_table(path: Path, min_fields: int = 2, sep=None) -> Dict[str, List[str]]:
    if not path.is_file():
        raise CorpusError(f"missing file {path}")
    out: Dict[str, List[str]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(sep) if sep else line.split()
        if len(parts) < min_fields:
            raise CorpusError(f"{path}:{n}: expected at least {min_fields} fields, got {line!r}")
        out[parts[0]] = parts[1:]
    return out


def read_ctm(path: Path) -> Dict[str, List[Tuple[str, float, float]]]:
    """utt -> [(word, start, duration)] from a CTM file (``utt channel start duration WORD``)."""
    out: Dict[str, List[Tuple[str, float, float]]] = defaultdict(list)
    if not path.is_file():
        raise CorpusError(f"missing word alignment file {path}")
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) < 5:
            raise CorpusError(f"{path}:{n}: CTM lines need 'utt channel start duration word', got {line!r}")
        try:
            start, dur = float(parts[2]), float(parts[3])
        except ValueError:
            raise CorpusError(f"{path}:{n}: start/duration are not numbers in {line!r}") from None
        if not (np.isfinite(start) and np.isfinite(dur)) or start < 0 or dur <= 0:
            raise CorpusError(f"{path}:{n}: bad time (start {start}, duration {dur}) for utterance {parts[0]}")
        out[parts[0]].append((parts[4], start, dur))
    return out


def prepare_speechocean762(
    corpus_dir,
    output_dir=None,
    dev_speaker_fraction: float = 0.2,
    seed: int = 0,
    check_audio: bool = True,
) -> Dict[str, Dict[str, object]]:
    """Manifests {train, dev} -> {recordings, supervisions, cuts}; speaker-disjoint, seeded.

    Bad input raises CorpusError naming the file and utterance: a missing or unreadable
    audio file, empty text, a token that is not a word, or alignment words that do not
    match the transcript. ``meta`` in the result counts utterances without alignments.
    """
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
    from lhotse.supervision import AlignmentItem

    corpus_dir = Path(corpus_dir)
    data = corpus_dir / "train"
    wav = _read_table(data / "wav.scp")
    text = _read_table(data / "text", min_fields=1)
    utt2spk = _read_table(data / "utt2spk")
    gender = {k: v[0] for k, v in _read_table(data / "spk2gender").items()} if (data / "spk2gender").exists() else {}
    age = {k: v[0] for k, v in _read_table(data / "spk2age").items()} if (data / "spk2age").exists() else {}
    ctm = read_ctm(data / "words.ctm")
    failed_path = data / "words.ctm.failed"
    failed = set(failed_path.read_text().split()) if failed_path.exists() else set()

    recs, sups = [], []
    unaligned = 0
    for utt in sorted(wav):
        audio = corpus_dir / wav[utt][0]
        if not audio.is_file():
            raise CorpusError(f"utterance {utt}: audio file {audio} is missing (listed in {data / 'wav.scp'})")
        if utt not in text or not text[utt]:
            raise CorpusError(f"utterance {utt}: empty or missing transcript in {data / 'text'}")
        try:
            words = [normalize_word(t) for t in text[utt]]
        except NotAWordError as e:
            raise CorpusError(f"utterance {utt} in {data / 'text'}: {e}") from None
        if utt not in utt2spk:
            raise CorpusError(f"utterance {utt}: no speaker in {data / 'utt2spk'}")
        try:
            rec = Recording.from_file(str(audio.resolve()), recording_id=utt) if check_audio else None
        except Exception as e:
            raise CorpusError(f"utterance {utt}: cannot read audio file {audio}: {e}") from None
        if rec is not None and rec.num_samples == 0:
            raise CorpusError(f"utterance {utt}: audio file {audio} is empty")
        alignment = None
        if utt in ctm:
            ali_words = [w for w, _, _ in ctm[utt]]
            try:
                ali_norm = [normalize_word(w) for w in ali_words]
            except NotAWordError as e:
                raise CorpusError(f"utterance {utt} in {data / 'words.ctm'}: {e}") from None
            if ali_norm != words:
                raise CorpusError(
                    f"utterance {utt}: words.ctm words {ali_words} do not match the transcript {text[utt]} "
                    f"({data / 'words.ctm'})"
                )
            items = [AlignmentItem(symbol=w, start=round(s, 3), duration=round(d, 3)) for w, (_, s, d) in zip(words, ctm[utt])]
            if rec is not None and items[-1].end > rec.duration + 0.05:
                raise CorpusError(
                    f"utterance {utt}: alignment ends at {items[-1].end:.2f} s but {audio} lasts {rec.duration:.2f} s"
                )
            alignment = {"word": items}
        else:
            unaligned += 1
            if utt not in failed:
                log.warning("utterance %s has no word alignment and is not listed in %s", utt, failed_path)
        spk = utt2spk[utt][0]
        recs.append(rec)
        sups.append(
            SupervisionSegment(
                id=utt, recording_id=utt, start=0.0, duration=rec.duration, channel=0, text=" ".join(words),
                language="English", speaker=f"so762-{spk}", gender=gender.get(spk), alignment=alignment,
                custom={"age": int(age[spk])} if spk in age else None,
            )
        )
    extra = set(ctm) - set(wav)
    if extra:
        raise CorpusError(f"{data / 'words.ctm'} aligns utterances not in wav.scp: {sorted(extra)[:5]}")

    speakers = sorted({s.speaker for s in sups})
    rng = np.random.default_rng(seed)
    n_dev = max(1, int(round(dev_speaker_fraction * len(speakers))))
    dev_spk = set(rng.choice(speakers, size=n_dev, replace=False).tolist())
    manifests: Dict[str, Dict[str, object]] = {}
    for split in ("train", "dev"):
        keep = [i for i, s in enumerate(sups) if (s.speaker in dev_spk) == (split == "dev")]
        recordings = RecordingSet.from_recordings([recs[i] for i in keep])
        supervisions = SupervisionSet.from_segments([sups[i] for i in keep])
        cuts = CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
        manifests[split] = {"recordings": recordings, "supervisions": supervisions, "cuts": cuts}
        if output_dir is not None:
            for kind in ("recordings", "supervisions", "cuts"):
                with atomic_path(Path(output_dir) / "manifests" / f"speechocean762_{kind}_{split}.jsonl.gz") as tmp:
                    manifests[split][kind].to_file(str(tmp))
    manifests["meta"] = {"unaligned_utterances": unaligned, "dev_speakers": sorted(dev_spk)}
    return manifests
