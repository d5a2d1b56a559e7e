"""Festival 2.5: many sentences per festival process, word times from festival's segment times.

For a batch, one Scheme script is written and run by ONE ``festival --batch`` process.  For
each sentence it selects the voice (once per run of sentences with the same voice; the batch is
grouped by voice and the results put back in input order), sets the prosody knobs, synthesizes
``(Utterance Text "...")``, saves the waveform as RIFF and prints, for every item of the
``Token`` relation (one per whitespace-separated input word), how many Word items the text front
end made of it and the first segment start / last segment end of those words:

* start: ``daughter1.R:SylStructure.daughter1.daughter1.R:Segment.segment_start``
* end:   ``daughtern.R:SylStructure.daughtern.daughtern.R:Segment.end``

Pause segments ("pau") are not in any word's syllable structure, so word spans never include
them.  A token that yields several words (a spelled-out "nbc") is one input word spanning all of
them; a token that yields none, or a token count different from the word count, is a
SynthesisError for that sentence.  Every sentence runs inside ``unwind-protect``, so a Scheme
error fails only that sentence.

Prosody mapping:

* diphone voices (kal_diphone, ked_diphone): rate -> ``Duration_Stretch = default / rate``;
  pitch and pitch_range -> ``int_lr_params``: ``target_f0_mean = default * pitch`` and
  ``target_f0_std = default * pitch * pitch_range``;
* HTS voices (cmu_us_slt_arctic_hts): durations and F0 come from the HTS engine, so rate ->
  the engine's ``-r`` (speech speed).  Festival 2.5's HTS module passes only ``-m`` and ``-r``
  on to hts_engine (``-fm`` and the like are silently dropped; measured: no F0 change), so pitch
  and pitch_range are ignored for HTS voices.  ``prosody_support(voice)`` says which apply.

Segment times of the diphone voices are the target times of the prosody module; the waveform
follows them to within a pitch period.  HTS voices write their generated durations back into the
segments (5 ms frames).  Audio is resampled to 16 kHz (the HTS voice runs at a higher rate).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from rescorer.corpora.tts.base import Prosody, SynthesisError, Synthesized, TTSEngine
from rescorer.corpora.tts.flite import check_words, finish

_PRELUDE = r"""
(define (rs_voice name)
  (set! rs_lr nil)
  (set! rs_hts nil)
  (eval (list (intern (string-append "voice_" name))))
  (set! rs_stretch (Parameter.get 'Duration_Stretch))
  (if (not rs_stretch) (set! rs_stretch 1.0))
  (set! rs_lr int_lr_params)
  (if (string-equal (Parameter.get 'Synth_Method) "HTS") (set! rs_hts hts_engine_params))
  (format t "@@VOICE %s\n" name))

(define (rs_scale_lr params key factor)
  (mapcar
   (lambda (p) (if (string-equal (car p) key) (list (car p) (* factor (cadr p))) p))
   params))

(define (rs_prosody rate pitch range)
  (Parameter.set 'Duration_Stretch (/ rs_stretch rate))
  (if rs_lr
      (set! int_lr_params
            (rs_scale_lr (rs_scale_lr rs_lr "target_f0_mean" pitch)
                         "target_f0_std" (* pitch range))))
  (if rs_hts
      (set! hts_engine_params
            (append rs_hts (list (list "-r" rate))))))

(define (rs_has_segments w)
  (not (string-equal (item.feat w "R:SylStructure.daughter1.daughter1.R:Segment.name") "0")))

;; A token's words may include ones with no segments of their own (festival gives
;; "woman's" the words "woman" + "'s", and the z sound belongs to "woman"): take the
;; first and last words of the token that do have segments.
(define (rs_token idx tok)
  (let ((first nil) (last nil))
    (mapcar (lambda (w) (if (rs_has_segments w) (begin (if (not first) (set! first w)) (set! last w))))
            (item.daughters tok))
    (if first
        (format t "@@T %d %d %s %s %s %s\n" idx
                (length (item.daughters tok))
                (item.feat first "R:SylStructure.daughter1.daughter1.R:Segment.name")
                (item.feat last "R:SylStructure.daughtern.daughtern.R:Segment.name")
                (item.feat first "R:SylStructure.daughter1.daughter1.R:Segment.segment_start")
                (item.feat last "R:SylStructure.daughtern.daughtern.R:Segment.end"))
        (format t "@@T %d %d 0 0 0 0\n" idx (length (item.daughters tok))))))

(define (rs_synth idx text wavfile)
  (format t "@@BEGIN %d\n" idx)
  (unwind-protect
   (let ((utt (utt.synth (eval (list 'Utterance 'Text text)))))
     (utt.save.wave utt wavfile 'riff)
     (let ((tok (utt.relation.first utt 'Token)))
       (while tok
         (rs_token idx tok)
         (set! tok (item.next tok))))
     (format t "@@OK %d\n" idx))
   (format t "@@ERR %d\n" idx)))
"""

_SEARCH_DIRS = ("/usr/share/festival/voices", "/usr/local/share/festival/voices")


def _scheme_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _read_wav(path: str) -> Tuple[np.ndarray, int]:
    import soundfile as sf

    data, rate = sf.read(path, dtype="float32", always_2d=True)
    return data[:, 0].copy(), int(rate)


class FestivalEngine(TTSEngine):
    name = "festival"

    def __init__(self, binary: str = "festival", timeout_s: float = 60.0, per_sentence_s: float = 5.0) -> None:
        self.binary = binary
        self.timeout_s = timeout_s
        self.per_sentence_s = per_sentence_s
        self._voices: Optional[List[str]] = None

    def _exe(self) -> str:
        path = shutil.which(self.binary)
        if path is None:
            raise SynthesisError(f"festival: binary {self.binary!r} not found (install the Debian package 'festival')")
        return path

    def voices(self) -> List[str]:
        """Festival's ``(voice.list)``, e.g. kal_diphone, ked_diphone, cmu_us_slt_arctic_hts."""
        if self._voices is None:
            with tempfile.TemporaryDirectory(prefix="rescorer-festival-") as tmp:
                script = os.path.join(tmp, "voices.scm")
                with open(script, "w") as f:
                    f.write('(format t "@@V %l\\n" (voice.list))\n')
                proc = subprocess.run(
                    [self._exe(), "--batch", script], capture_output=True, text=True, timeout=self.timeout_s, cwd=tmp
                )
            names: List[str] = []
            for line in proc.stdout.splitlines():
                if line.startswith("@@V "):
                    names = line[4:].strip().strip("()").split()
            if not names:
                raise SynthesisError(f"festival: could not list voices (rc {proc.returncode}): {proc.stderr[-500:]}")
            self._voices = sorted(names)
        return list(self._voices)

    @staticmethod
    def prosody_support(voice: str) -> Tuple[str, ...]:
        """The Prosody fields that change this voice's output (the others are ignored)."""
        if FestivalEngine._voice_name(voice).endswith("_hts"):
            return ("rate",)
        return ("rate", "pitch", "pitch_range")

    @staticmethod
    def _voice_name(voice: str) -> str:
        return voice[len("voice_"):] if voice.startswith("voice_") else voice

    def synthesize(self, words: Sequence[str], voice: str, prosody: Prosody = Prosody()) -> Synthesized:
        out = self.synthesize_many([(words, voice, prosody)], errors="raise")
        return out[0]  # type: ignore[return-value]

    def synthesize_many(
        self, items: Sequence[Tuple[Sequence[str], str, Prosody]], errors: str = "raise"
    ) -> List[Union[Synthesized, SynthesisError]]:
        """Synthesize many (words, voice, prosody) sentences in ONE festival process.

        Results come back in input order.  errors="raise": the first failed sentence (in input
        order) raises its SynthesisError; errors="return": a failed sentence's place holds its
        SynthesisError and the others are returned normally.
        """
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
        items = [(list(w), self._voice_name(v), p) for w, v, p in items]
        results: List[Union[Synthesized, SynthesisError, None]] = [None] * len(items)
        todo: List[int] = []
        known = None
        for i, (words, voice, prosody) in enumerate(items):
            ctx = f"{self.name} voice {voice!r} text {' '.join(words)!r}"
            try:
                check_words(self.name, voice, words)
                if not (prosody.rate > 0 and prosody.pitch > 0 and prosody.pitch_range > 0):
                    raise SynthesisError(f"{ctx}: prosody factors must be positive: {prosody}")
                if known is None:
                    known = set(self.voices())
                if voice not in known:
                    raise SynthesisError(f"{ctx}: unknown voice; installed: {', '.join(sorted(known))}")
                todo.append(i)
            except SynthesisError as e:
                results[i] = e
        if todo:
            self._run_batch(items, todo, results)
        final: List[Union[Synthesized, SynthesisError]] = []
        for i, r in enumerate(results):
            if r is None:  # cannot happen: _run_batch fills every index it was given
                words, voice, _ = items[i]
                r = SynthesisError(f"{self.name} voice {voice!r} text {' '.join(words)!r}: no result")
            if isinstance(r, SynthesisError) and errors == "raise":
                raise r
            final.append(r)
        return final

    def _run_batch(self, items, todo: List[int], results: list) -> None:
        order = sorted(todo, key=lambda i: (items[i][1], i))  # group by voice, keep order within
        with tempfile.TemporaryDirectory(prefix="rescorer-festival-") as tmp:
            lines = [_PRELUDE]
            current = None
            for i in order:
                words, voice, p = items[i]
                if voice != current:
                    lines.append(f"(rs_voice {_scheme_string(voice)})")
                    current = voice
                lines.append(f"(rs_prosody {float(p.rate)!r} {float(p.pitch)!r} {float(p.pitch_range)!r})")
                wav = os.path.join(tmp, f"{i}.wav")
                lines.append(f"(rs_synth {i} {_scheme_string(' '.join(words))} {_scheme_string(wav)})")
            script = os.path.join(tmp, "batch.scm")
            with open(script, "w") as f:
                f.write("\n".join(lines) + "\n")
            timeout = self.timeout_s + self.per_sentence_s * len(order)
            try:
                proc = subprocess.run(
                    [self._exe(), "--batch", script], capture_output=True, text=True, timeout=timeout, cwd=tmp
                )
                stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
            except subprocess.TimeoutExpired as e:
                stdout = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
                stderr, rc = f"timed out after {timeout:.0f} s", None
            except OSError as e:
                stdout, stderr, rc = "", f"could not run festival: {e}", None
            parsed = self._parse(stdout)
            for i in order:
                words, voice, _ = items[i]
                ctx = f"{self.name} voice {voice!r} text {' '.join(words)!r}"
                status, toks = parsed.get(i, (None, []))
                try:
                    if status != "OK":
                        why = "Scheme error" if status == "ERR" else f"festival exited (rc {rc})"
                        tail = " ".join(stderr.strip().splitlines()[-3:])
                        raise SynthesisError(f"{ctx}: {why}: {tail}")
                    results[i] = self._assemble(ctx, words, voice, toks, os.path.join(tmp, f"{i}.wav"))
                except SynthesisError as e:
                    results[i] = e

    @staticmethod
    def _parse(stdout: str) -> Dict[int, Tuple[Optional[str], List[List[str]]]]:
        parsed: Dict[int, Tuple[Optional[str], List[List[str]]]] = {}
        for line in stdout.splitlines():
            # a Scheme error message can be glued to the front of our line: find the marker
            k = line.find("@@")
            if k < 0:
                continue
            f = line[k:].split()
            try:
                if f[0] == "@@BEGIN":
                    parsed[int(f[1])] = (None, [])
                elif f[0] == "@@T" and len(f) == 7:
                    parsed[int(f[1])][1].append(f[2:])
                elif f[0] in ("@@OK", "@@ERR"):
                    i = int(f[1])
                    parsed[i] = (f[0][2:], parsed.get(i, (None, []))[1])
            except (ValueError, KeyError, IndexError):
                continue
        return parsed

    def _assemble(self, ctx: str, words: List[str], voice: str, toks: List[List[str]], wav: str) -> Synthesized:
        if len(toks) != len(words):
            raise SynthesisError(f"{ctx}: festival made {len(toks)} tokens of {len(words)} words")
        times = []
        for k, (n_words, first, last, start, end) in enumerate(toks):
            if int(n_words) < 1 or first in ("0", "pau") or last in ("0", "pau"):
                raise SynthesisError(f"{ctx}: word {words[k]!r} produced no segments in festival")
            times.append((float(start), float(end)))
        if not os.path.exists(wav):
            raise SynthesisError(f"{ctx}: festival wrote no waveform")
        samples, rate = _read_wav(wav)
        return finish(self.name, voice, words, samples, rate, times)
