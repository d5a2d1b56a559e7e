"""``rescorer transcribe``: Whisper's 1-best for every cut of a manifest, with each word's
confidence (``WhisperTextScorer.transcribe_with_confidence``), as a transcript file
(``formats.transcripts``), for the second-recogniser methods of ``rescorer tune``.

Resumable: utterances already in the output (written with the same model, beam and prompt) are
skipped, and each one is flushed as soon as it is done, so an interrupted run loses at
most the utterance in hand. A cut whose audio cannot be read or is longer than Whisper's
30 s window is an error naming the cut; what was written before it is kept.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Callable, Optional

from rescorer.stages import StageError

log = logging.getLogger(__name__)


def transcribe(cuts_path: str, out: str, whisper_model: Optional[str] = None, beam_size: int = 5, threads: int = 2,
               max_utterances: int = 0, progress: bool = True, echo: Callable[[str], None] = print,
               prompt_list: Optional[str] = None) -> dict:
    """Transcribe the cuts of ``cuts_path`` into ``out``; returns a summary. ``prompt_list``: a
    word list (``formats.word_list``) given to Whisper as its previous text for every cut, the
    way its users bias it toward names and terms (``WhisperTextScorer.prompt_tokens``); a list
    longer than Whisper's prompt holds is an error, not silently cut. The header records its
    size and digest, so a file is never resumed under another prompt."""
    from lhotse import load_manifest
    from tqdm import tqdm

    from rescorer.formats.transcripts import TranscriptError, TranscriptWriter
    from rescorer.models.whisper import SAMPLING_RATE, WhisperModelError, resolve_model_dir
    from rescorer.models.whisper_text import DECODING, WhisperTextScorer
    from rescorer.utils import file_sha256

    try:
        model_dir = resolve_model_dir(whisper_model)
        scorer = WhisperTextScorer(model_dir, threads=threads)
    except (WhisperModelError, ImportError) as e:
        raise StageError(str(e)) from e
    try:
        cuts = load_manifest(cuts_path)
    except Exception as e:  # lhotse raises many kinds for a bad manifest
        raise StageError(f"{cuts_path}: not a readable lhotse manifest ({type(e).__name__}: {e})") from e
    cuts = sorted(cuts, key=lambda c: c.id)
    if max_utterances > 0:
        cuts = cuts[:max_utterances]
    meta = {"recogniser": "whisper", "model_sha256": file_sha256(model_dir / "model.bin"), "beam_size": int(beam_size),
            "compute_type": "int8", "word_confidence": "min_token_prob", "decoding": DECODING}
    prompt = _prompt_words(scorer, prompt_list) if prompt_list else []
    if prompt:  # only then: files written without a prompt keep their header
        meta["prompt"] = {"words": len(prompt), "sha256": hashlib.sha256("\n".join(prompt).encode()).hexdigest()}
    try:
        writer = TranscriptWriter(out, meta)
    except TranscriptError as e:
        raise StageError(str(e)) from e
    todo = [c for c in cuts if c.id not in writer.done]
    if len(todo) < len(cuts):
        echo(f"{out}: {len(cuts) - len(todo)} of {len(cuts)} utterances already transcribed; resuming")
    audio_seconds, t_all = 0.0, time.perf_counter()
    with writer:
        for c in tqdm(todo, desc="whisper transcripts", disable=not progress):
            try:
                if c.sampling_rate != SAMPLING_RATE:
                    c = c.resample(SAMPLING_RATE)
                samples = c.load_audio()
            except Exception as e:
                raise StageError(f"cut {c.id}: its audio cannot be read ({type(e).__name__}: {e})") from e
            if samples.ndim == 2:
                samples = samples.mean(axis=0)
            t0 = time.perf_counter()
            try:
                words, confidences = scorer.transcribe_with_confidence(scorer.encode(samples, c.sampling_rate),
                                                                       beam_size=beam_size, prompt=prompt)
            except ValueError as e:
                raise StageError(f"cut {c.id}: {e}") from e
            writer.add(c.id, words, seconds=time.perf_counter() - t0, confidences=confidences)
            audio_seconds += c.duration
    wall = time.perf_counter() - t_all
    summary = {"out": out, "utterances": len(cuts), "transcribed_now": len(todo), "seconds": round(wall, 1),
               "real_time_factor": round(wall / audio_seconds, 4) if audio_seconds else None, **meta}
    echo(f"{out}: {len(todo)} utterance(s) transcribed in {wall:.1f} s"
         + (f" (RTF {summary['real_time_factor']})" if audio_seconds else ""))
    return summary


def _prompt_words(scorer, path: str) -> list:
    """The words of the prompt list at ``path``, in its order; StageError where it cannot be read
    or does not fit Whisper's prompt (``WhisperTextScorer.prompt_tokens``)."""
    from rescorer.formats.word_list import WordListError, read_word_list

    try:
        words = list(read_word_list(path))
        scorer.prompt_tokens(words, cut=False)
    except ValueError as e:  # WordListError is one
        raise StageError(f"--prompt-list {path}: {e}" + ("" if isinstance(e, WordListError) else
                                                          ": give the few dozen names that matter most")) from e
    except OSError as e:
        raise StageError(f"--prompt-list {path}: {e}") from e
    return words
