"""LibriSpeech with its public word alignments, through lhotse's LibriSpeech recipe.

For users who have LibriSpeech (``<corpus_dir>/<part>/<spk>/<chapter>/*.flac`` and
``*.trans.txt``) and the word alignments of Lugosch et al./CorentinJ
(``<alignments_dir>/<part>/<spk>/<chapter>/<spk>-<chapter>.alignment.txt``). lhotse parses
both; here the alignments are cleaned to our word convention: silence items (empty
symbols) dropped, words normalised (rescorer.text), and checked against the transcript.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Union

from rescorer.corpora.errors import CorpusError
from rescorer.text import NotAWordError, normalize_word
from rescorer.utils import atomic_path


def prepare_librispeech(
    corpus_dir,
    alignments_dir=None,
    output_dir=None,
    dataset_parts: Union[str, Sequence[str]] = "auto",
    num_jobs: int = 1,
) -> Dict[str, Dict[str, object]]:
    """Manifests {part: {recordings, supervisions, cuts}} with normalised word alignments."""
    from lhotse import CutSet, SupervisionSet
    from lhotse.recipes.librispeech import prepare_librispeech as lhotse_prepare
    from lhotse.supervision import AlignmentItem

    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise CorpusError(f"LibriSpeech directory {corpus_dir} does not exist")
    raw = lhotse_prepare(corpus_dir, alignments_dir=alignments_dir, dataset_parts=dataset_parts, num_jobs=num_jobs)
    if not raw:
        raise CorpusError(f"no LibriSpeech parts found in {corpus_dir}")
    out: Dict[str, Dict[str, object]] = {}
    for part, m in raw.items():
        sups = []
        for s in m["supervisions"]:
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
            sups.append(
                type(s)(
                    id=s.id, recording_id=s.recording_id, start=s.start, duration=s.duration, channel=s.channel,
                    text=" ".join(words), language=s.language, speaker=f"ls-{s.speaker}", alignment=alignment,
                )
            )
        supervisions = SupervisionSet.from_segments(sups)
        cuts = CutSet.from_manifests(recordings=m["recordings"], supervisions=supervisions)
        out[part] = {"recordings": m["recordings"], "supervisions": supervisions, "cuts": cuts}
        if output_dir is not None:
            for kind in ("recordings", "supervisions", "cuts"):
                with atomic_path(Path(output_dir) / "manifests" / f"librispeech_{kind}_{part}.jsonl.gz") as tmp:
                    out[part][kind].to_file(str(tmp))
    return out
