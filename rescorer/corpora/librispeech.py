"""LibriSpeech with its public word alignments, through lhotse's LibriSpeech recipe.

For users who have LibriSpeech (``<corpus_dir>/<part>/<spk>/<chapter>/*.flac`` and
``*.trans.txt``) and the word alignments of Lugosch et al./CorentinJ
(``<alignments_dir>/<part>/<spk>/<chapter>/<spk>-<chapter>.alignment.txt``; lhotse's
``download_librispeech(alignments=True)`` fetches both). lhotse parses them; here the
alignments are cleaned to our word convention: silence items (empty symbols) dropped,
words normalised (rescorer.text), and checked against the transcript. Utterances
without an alignment stay in the manifests for ASR and are counted.

``splits`` maps the recipe's split names to LibriSpeech parts (``{"train":
["train-clean-100"], "dev": ["dev-clean"], "test": ["test-clean"]}``), so that the
shared stages (segments, ASR export, training, decoding) see the same ``train``/``dev``/
``test`` as on the other corpora; without it each part is its own split.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Union

from rescorer.corpora.errors import CorpusError
from rescorer.text import NotAWordError, normalize_word
from rescorer.utils import atomic_path

log = logging.getLogger(__name__)


def _clean_supervisions(part: str, supervisions):
    """Normalised transcripts and word alignments; returns (supervisions, unaligned count)."""
    from lhotse.supervision import AlignmentItem

    sups, unaligned = [], 0
    for s in supervisions:
        try:
            words = [normalize_word(t) for t in s.text.split()]
        except NotAWordError as e:
            raise CorpusError(f"LibriSpeech {part} utterance {s.id}: {e}") from None
        alignment = None
        if s.alignment and "word" in s.alignment:
            items = [a for a in s.alignment["word"] if a.symbol.strip()]
            try:
                ali_words = [normalize_word(a.symbol) for a in items]
            except NotAWordError as e:
                raise CorpusError(f"LibriSpeech {part} utterance {s.id} alignment: {e}") from None
            if ali_words != words:
                raise CorpusError(
                    f"LibriSpeech {part} utterance {s.id}: alignment words {ali_words} do not match the "
                    f"transcript {words}"
                )
            alignment = {
                "word": [AlignmentItem(symbol=w, start=a.start, duration=a.duration) for w, a in zip(words, items)]
            }
        else:
            unaligned += 1
        sups.append(
            type(s)(
                id=s.id, recording_id=s.recording_id, start=s.start, duration=s.duration, channel=s.channel,
                text=" ".join(words), language=s.language, speaker=f"ls-{s.speaker}", alignment=alignment,
            )
        )
    return sups, unaligned


def prepare_librispeech(
    corpus_dir,
    alignments_dir=None,
    output_dir=None,
    dataset_parts: Union[str, Sequence[str]] = "auto",
    num_jobs: int = 1,
    splits: Optional[Mapping[str, Sequence[str]]] = None,
) -> Dict[str, Dict[str, object]]:
    """Manifests {split: {recordings, supervisions, cuts}} with normalised word alignments,
    plus ``meta`` ({"unaligned_utterances": {split: n}, "parts": {split: [parts]}}).

    With ``splits``, the parts each split names are read and merged (``dataset_parts`` is
    ignored); a part missing from ``corpus_dir`` is an error naming it.
    """
    from lhotse import CutSet, RecordingSet, SupervisionSet
    from lhotse.recipes.librispeech import prepare_librispeech as lhotse_prepare

    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise CorpusError(f"LibriSpeech directory {corpus_dir} does not exist")
    if splits is not None:
        splits = {name: [parts] if isinstance(parts, str) else list(parts) for name, parts in splits.items()}
        for name, parts in splits.items():
            if not parts:
                raise CorpusError(f"LibriSpeech split {name!r} names no parts")
        wanted = sorted({p for parts in splits.values() for p in parts})
        missing = [p for p in wanted if not (corpus_dir / p).is_dir()]
        if missing:
            found = sorted(d.name for d in corpus_dir.iterdir() if d.is_dir())
            raise CorpusError(
                f"LibriSpeech part(s) {', '.join(missing)} not found in {corpus_dir} (found: {', '.join(found) or 'none'})"
            )
        dataset_parts = wanted
    raw = lhotse_prepare(corpus_dir, alignments_dir=alignments_dir, dataset_parts=dataset_parts, num_jobs=num_jobs)
    if not raw:
        raise CorpusError(f"no LibriSpeech parts found in {corpus_dir}")
    if splits is None:
        splits = {part: [part] for part in raw}
    missing = sorted({p for parts in splits.values() for p in parts} - set(raw))
    if missing:
        raise CorpusError(f"lhotse found no utterances in LibriSpeech part(s) {', '.join(missing)} of {corpus_dir}")

    cleaned, unaligned_per_part = {}, {}
    for part, m in raw.items():
        sups, unaligned = _clean_supervisions(part, m["supervisions"])
        cleaned[part] = (m["recordings"], sups)
        unaligned_per_part[part] = unaligned
        if alignments_dir is not None and unaligned == len(sups):
            log.warning("LibriSpeech %s: no word alignments found under %s", part, alignments_dir)

    out: Dict[str, Dict[str, object]] = {}
    for name, parts in splits.items():
        recordings = RecordingSet.from_recordings(r for p in parts for r in cleaned[p][0])
        supervisions = SupervisionSet.from_segments(s for p in parts for s in cleaned[p][1])
        cuts = CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
        out[name] = {"recordings": recordings, "supervisions": supervisions, "cuts": cuts}
        if output_dir is not None:
            for kind in ("recordings", "supervisions", "cuts"):
                with atomic_path(Path(output_dir) / "manifests" / f"librispeech_{kind}_{name}.jsonl.gz") as tmp:
                    out[name][kind].to_file(str(tmp))
    out["meta"] = {
        "unaligned_utterances": {n: sum(unaligned_per_part[p] for p in parts) for n, parts in splits.items()},
        "parts": splits,
    }
    return out


def download_librispeech(target_dir, parts: Sequence[str], alignments: bool = True) -> Path:
    """Fetch LibriSpeech parts (and the public word alignments) with lhotse's downloader;
    returns the corpus directory (``target_dir/LibriSpeech``). Parts already unpacked are
    skipped, so an interrupted download resumes."""
    from lhotse.recipes.librispeech import download_librispeech as lhotse_download

    if alignments:
        try:
            import gdown  # noqa: F401  (lhotse fetches the alignments from Google Drive with it)
        except ImportError:
            raise CorpusError(
                "downloading the LibriSpeech word alignments needs the gdown package (pip install gdown), "
                "or unpack them yourself into the LibriSpeech directory (or pass --alignments-dir)"
            ) from None
    try:
        return Path(lhotse_download(target_dir, dataset_parts=list(parts), alignments=alignments))
    except OSError as e:  # no network, disk full, ...
        raise CorpusError(f"downloading LibriSpeech {', '.join(parts)} into {target_dir} failed: {e}") from e
