"""The decoder's word-lattice path, timed stage by stage, for cost comparisons made in one process.

``rescorer decode`` records its seconds in metrics.json, but a benchmark that divides its
own seconds by that figure compares two runs at two machine loads. ``LatticeDecoder``
runs the path by which ``decode_main`` makes word lattices, with the same functions and
the settings the decode run recorded, on chosen utterances:

- forward: the ASR model on the features (``decode_main``'s length batches);
- hlg_lattices: ``get_lattices`` (k2 HLG search, connect, frames);
- one_best: the lattice's best path (what ``hlg_1best`` adds to its lattice time);
- word_lattices: ``word_lattices_of`` (token lattices to word lattices with spans);
- write: ``save_word_lattices`` pruned at the recorded ``word_lattice_prune``.

It returns seconds per stage, so the caller can interleave decoding with what it measures
against it. Model, lang directory and features are loaded once and not timed (the
decoder does not time them either); padding the feature batches is not timed, as there.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from rescorer.decoding.decode import (
    DecodeInputError, _model_output, build_parser, check_utterance, get_lattices, length_batches,
    load_utterance_data, one_best, padded_batch, word_lattices_of,
)
from rescorer.decoding.graphs import load_lang_dir
from rescorer.formats.contract import FBANK, SUBSAMPLING_FACTOR, FeatureSpec, check_spec
from rescorer.lattice.word_lattice import load_word_lattices, save_word_lattices
from rescorer.models.checkpoint import load_asr_model

# the decode options that shape the lattices and their cost
DECODE_SETTINGS = ("search_beam", "output_beam", "min_active_states", "max_active_states", "max_batch_frames",
                   "max_frames", "word_lattice_prune")
STAGES = ("forward", "hlg_lattices", "one_best", "word_lattices", "write")


def decode_settings(metrics_path=None) -> Dict[str, float]:
    """``rescorer decode``'s defaults, overlaid by the settings a decode run recorded in its
    metrics.json (so the timed decode searches with the beams that made the lattices)."""
    defaults = vars(build_parser().parse_args(["--model-dir", "-", "--data", "-", "--out", "-"]))
    settings = {k: defaults[k] for k in DECODE_SETTINGS}
    if metrics_path:
        recorded = _read_metrics(metrics_path).get("settings") or {}
        settings.update({k: recorded[k] for k in DECODE_SETTINGS if recorded.get(k) is not None})
    return settings


def metrics_decode_seconds(metrics_path, utterances: int) -> Tuple[Optional[float], str]:
    """(seconds, what they cover) a decode run recorded for the stages ``LatticeDecoder``
    times, scaled from its utterance count to ``utterances``; seconds None when it has none."""
    m = _read_metrics(metrics_path)
    total = m.get("utterances")
    fraction = utterances / total if total else 1.0
    hlg = (m.get("methods") or {}).get("hlg_1best") or {}
    forward, lattices, words = m.get("forward_seconds"), hlg.get("decode_seconds"), m.get("word_lattice_seconds")
    if forward is None or lattices is None:
        return None, f"{metrics_path}: no forward_seconds / methods.hlg_1best.decode_seconds"
    what = "forward + HLG lattices + 1-best"
    seconds = float(forward) + float(lattices)
    if words is not None:
        seconds += float(words)
        what += " + word lattices"
    else:
        what += " (no word_lattice_seconds recorded)"
    return seconds * fraction, f"{what}, scaled from {total} to {utterances} utterances"


def _read_metrics(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DecodeInputError(f"{path}: no such decode metrics file")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DecodeInputError(f"{path}: not JSON ({e})") from None
    if not isinstance(m, dict):
        raise DecodeInputError(f"{path}: not a decode metrics object")
    return m


class LatticeDecoder:
    """One ASR model, lang directory and features file, decoded to word lattices on demand."""

    def __init__(self, model_dir, lang_dir, data_path, settings: Optional[Dict[str, float]] = None):
        self.settings = dict(settings or decode_settings())
        data = load_utterance_data(data_path)
        self.model, _ = load_asr_model(model_dir)
        self.model.eval()
        spec = FeatureSpec.from_json(data["feature_spec"])
        trained_on = getattr(getattr(self.model, "encoder", None), "feature_spec", None)
        check_spec(spec, FeatureSpec.from_json(trained_on) if trained_on else FBANK, f"{data_path} (model {model_dir})")
        sub = int(getattr(self.model, "subsampling_factor", SUBSAMPLING_FACTOR))
        self.frame_shift = spec.subsampled(sub)
        self.input_frame_shift = spec.frame_shift
        model_max = getattr(self.model, "max_input_frames", None)
        max_frames = int(self.settings["max_frames"])
        self.max_frames = min(max_frames, int(model_max)) if model_max else max_frames
        self.lang = load_lang_dir(lang_dir)
        self.id2word = self.lang.id2word
        self.feats = data["feats"]
        self.offsets = data["offsets"].tolist()
        self.index = {u: i for i, u in enumerate(data["utterance_ids"])}
        self.data_path = str(data_path)

    def decode(self, utterance_ids: Sequence[str], out_dir) -> dict:
        """Decode ``utterance_ids`` to ``out_dir/word_lattices.pt``; seconds per stage (``STAGES``
        and their total), utterances decoded, skipped ones, those without a complete path,
        and the arcs written (counted after the timing)."""
        missing = [u for u in utterance_ids if u not in self.index]
        if missing:
            raise DecodeInputError(f"{len(missing)} utterance(s) are not in {self.data_path}: {', '.join(missing[:5])}")
        s, offsets = self.settings, self.offsets
        keep, skipped = [], {}
        for uid in utterance_ids:
            u = self.index[uid]
            why = check_utterance(offsets[u + 1] - offsets[u], uid, self.max_frames, self.input_frame_shift)
            if why:
                skipped[uid] = why
            else:
                keep.append(u)
        seconds = dict.fromkeys(STAGES, 0.0)
        uid_of = {u: uid for uid, u in self.index.items()}
        lattices: Dict[str, object] = {}
        with torch.no_grad():
            for batch in length_batches(offsets, keep, int(s["max_batch_frames"])):
                feats, lens = padded_batch(self.feats, offsets, batch)
                t0 = time.perf_counter()
                log_probs, out_lens = _model_output(self.model, feats, lens)
                t1 = time.perf_counter()
                lats = get_lattices(log_probs, out_lens, self.lang.HLG, s["search_beam"], s["output_beam"],
                                    int(s["min_active_states"]), int(s["max_active_states"]))
                t2 = time.perf_counter()
                for lat in lats:
                    one_best(lat, self.id2word, self.frame_shift)
                t3 = time.perf_counter()
                seconds["forward"] += t1 - t0
                seconds["hlg_lattices"] += t2 - t1
                seconds["one_best"] += t3 - t2
                lattices.update((uid_of[u], lat) for u, lat in zip(batch, lats))
        order = [u for u in utterance_ids if u in lattices]
        t0 = time.perf_counter()
        wls, no_lattice = word_lattices_of(lattices, order, self.lang, self.frame_shift)
        t1 = time.perf_counter()
        path = Path(out_dir) / "word_lattices.pt"
        if wls:
            save_word_lattices(path, wls, min_posterior=s["word_lattice_prune"] or None)
        t2 = time.perf_counter()
        seconds["word_lattices"] = t1 - t0
        seconds["write"] = t2 - t1
        seconds["total"] = sum(seconds[k] for k in STAGES)
        arcs = sum(int(w.num_arcs) for w in load_word_lattices(path).values()) if wls else 0
        return {"seconds": {k: round(v, 3) for k, v in seconds.items()}, "utterances": len(keep),
                "skipped": sorted(skipped), "no_lattice": no_lattice, "word_lattice_arcs": arcs}


def mean_seconds(passes: List[dict]) -> Dict[str, float]:
    """Per stage (and total), the mean seconds of several ``decode`` results."""
    keys = list(STAGES) + ["total"]
    return {k: round(sum(p["seconds"][k] for p in passes) / len(passes), 3) for k in keys}
