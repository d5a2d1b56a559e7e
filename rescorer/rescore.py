"""Rescoring word lattices with acoustic word embeddings: the plugin API.

For every word arc of a lattice, the audio of its span and the spelling of its word
are embedded into the same space; their cosine similarity (``awe_scores``, a per-arc
attribute that k2 operations carry along) is mixed with the decoder's scores::

    score(arc) = am_scale * am + lm_scale * lm + wip * [word arc] + awe_scale * awe

Every distinct span is encoded once (in length-sorted batches) and every distinct
word's spelling once (cached across lattices); the per-arc similarities come from
``rescorer.ops.arc_similarity`` (the CUDA kernel on GPU, the torch reference on CPU).
``<unk>`` arcs have no spelling: they get ``unk_awe_score``. Filler arcs (label 0)
and final arcs get no embedding score.

OOV recovery (``recover_oov``): arcs whose word is ``<unk>`` or whose posterior is below
``oov_posterior_threshold`` get up to ``oov_topk`` parallel arcs (same states, same span,
same acoustic score) for the nearest spellings of their audio in a large word list
(``ops.topk_nearest``), with LM score ``oov_lm_score`` (the cost of a word the LM does
not know) and their embedding score; then the lattice is decoded again.

Usage from a decode script (a few lines)::

    from rescorer.rescore import Rescorer
    rescorer = Rescorer.from_dir("exp/awe")                 # trained embedder + tuned scales
    result = rescorer.rescore(lattice, feats)                # WordLattice, fbank [T, 80] at 10 ms
    print(result.hypothesis.text, result.confidences)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

FEATURE_FRAME_SHIFT = 0.01  # the embedder's input: 80-bin fbank at 10 ms (rescorer.segments)
CONFIG_FILE = "rescorer.json"


class RescoreError(ValueError):
    """Input that cannot be rescored (the message names the utterance and the problem)."""


@dataclass
class RescoreConfig:
    awe_scale: float = 1.0  # lambda: weight of the embedding similarity
    am_scale: float = 1.0
    lm_scale: float = 1.0
    word_insertion_penalty: float = 0.0
    unk_awe_score: float = 0.0  # embedding score of <unk> arcs (no spelling to compare)
    oov_posterior_threshold: float = 0.5  # arcs below this posterior get alternatives
    oov_topk: int = 5
    oov_lm_score: float = -10.0  # natural-log LM score of a recovered word the LM lacks
    oov_min_similarity: float = 0.3  # candidates below this cosine are not added
    posterior_scale: float = 1.0
    batch_size: int = 256

    @classmethod
    def from_dict(cls, d: dict) -> "RescoreConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown rescoring options {sorted(unknown)}")
        return cls(**d)


@dataclass
class RescoreResult:
    lattice: object  # WordLattice with awe_scores and rescored scores
    hypothesis: object  # word_lattice.Hypothesis (words with spans)
    confidences: List[float] = field(default_factory=list)  # arc posterior of each 1-best word
    recovered: List[Tuple[str, float, float]] = field(default_factory=list)  # OOV recovery: (word, start, end)


def spans_in_feature_frames(start_frame: torch.Tensor, end_frame: torch.Tensor, lattice_frame_shift: float, num_frames: int):
    """Lattice frames -> [start, end) in 10 ms feature frames, clipped to the features."""
    r = lattice_frame_shift / FEATURE_FRAME_SHIFT
    s = torch.round(start_frame.double() * r).long().clamp(0, num_frames)
    e = torch.round(end_frame.double() * r).long().clamp(0, num_frames)
    return s, e


def distinct_arc_spans(lat, arcs: torch.Tensor, num_frames: int):
    """Feature-frame spans of ``arcs`` (each at least one frame, inside the features).

    Returns (distinct spans [S, 2], index of each arc's span [len(arcs)]), so every distinct
    span is embedded once.
    """
    s, e = spans_in_feature_frames(lat.fsa.start_frame[arcs], lat.fsa.end_frame[arcs], lat.frame_shift, num_frames)
    e = torch.maximum(e, torch.minimum(s + 1, torch.tensor(num_frames)))
    s = torch.minimum(s, e - 1).clamp(min=0)
    return torch.unique(torch.stack([s, e], 1), dim=0, return_inverse=True)


class Rescorer:
    """A trained embedder + scales; rescoring keeps a cache of spelling embeddings."""

    def __init__(self, acoustic, letters, config: Optional[RescoreConfig] = None, device: Optional[str] = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.acoustic = acoustic.to(self.device).eval()
        self.letters = letters.to(self.device).eval()
        self.config = config or RescoreConfig()
        self._spelling: Dict[str, torch.Tensor] = {}
        self._vocab: Optional[Tuple[List[str], torch.Tensor]] = None

    # ------------------------------------------------------------ loading / saving

    @classmethod
    def from_dir(cls, model_dir, device: Optional[str] = None, config: Optional[RescoreConfig] = None) -> "Rescorer":
        """Load ``model_dir`` (an embedder run: best.pt/last.pt) and its ``rescorer.json`` scales."""
        from rescorer.training.train_embeddings import load_embedder

        model_dir = Path(model_dir)
        if not model_dir.exists():
            raise FileNotFoundError(f"no rescorer model at {model_dir}")
        acoustic, letters, _ = load_embedder(str(model_dir))
        if config is None:
            cfg_path = model_dir / CONFIG_FILE if model_dir.is_dir() else model_dir.parent / CONFIG_FILE
            config = RescoreConfig.from_dict(json.loads(cfg_path.read_text())["config"]) if cfg_path.exists() else RescoreConfig()
        return cls(acoustic, letters, config, device)

    def save_config(self, model_dir, extra: Optional[dict] = None) -> Path:
        from rescorer.utils import atomic_write_text

        path = Path(model_dir) / CONFIG_FILE
        atomic_write_text(path, json.dumps({"config": asdict(self.config), **(extra or {})}, indent=1, sort_keys=True))
        return path

    # ------------------------------------------------------------ embeddings

    @torch.no_grad()
    def spelling_embeddings(self, words: Sequence[str]) -> torch.Tensor:
        """[len(words), D] on the device; each distinct word is embedded once per Rescorer."""
        todo = sorted({w for w in words if w not in self._spelling})
        if todo:
            emb = self.letters.encode_words(todo).float()
            for w, e in zip(todo, emb):
                self._spelling[w] = e
        if not words:
            return torch.empty(0, self.acoustic.dim, device=self.device)
        return torch.stack([self._spelling[w] for w in words]).to(self.device)

    @torch.no_grad()
    def span_embeddings(self, feats: torch.Tensor, spans: Sequence[Tuple[int, int]]) -> torch.Tensor:
        """Embed feature-frame spans [start, end) of one utterance: [len(spans), D]."""
        segs = [feats[s:e] for s, e in spans]
        if not segs:
            return torch.empty(0, self.acoustic.dim, device=self.device)
        return self.acoustic.encode_segments(segs, batch_size=self.config.batch_size, device=self.device).to(self.device)

    def set_vocabulary(self, words: Sequence[str], chunk: int = 65536) -> None:
        """The large word list that OOV recovery searches (embedded once, in chunks)."""
        from rescorer.text import NotAWordError, normalize_word

        clean = []
        for w in words:
            try:
                clean.append(normalize_word(w))
            except NotAWordError:
                continue
        clean = list(dict.fromkeys(clean))
        with torch.no_grad():
            emb = torch.cat([self.letters.encode_words(clean[i : i + chunk]).float() for i in range(0, len(clean), chunk)])
        self._vocab = (clean, emb.to(self.device))

    # ------------------------------------------------------------ scoring

    def _check(self, lat, feats: torch.Tensor) -> torch.Tensor:
        from rescorer.lattice.word_lattice import validate

        uid = getattr(lat, "utterance_id", "") or "?"
        if not isinstance(feats, torch.Tensor):
            feats = torch.as_tensor(np.asarray(feats))
        bins = getattr(self.acoustic, "config", {}).get("num_mel_bins")
        if feats.dim() != 2 or (bins is not None and feats.shape[1] != bins):
            raise RescoreError(
                f"utterance {uid}: features must be [frames, {bins or 'mel bins'}] fbank at 10 ms, got {tuple(feats.shape)}"
            )
        if feats.shape[0] == 0:
            raise RescoreError(f"utterance {uid}: no feature frames")
        if not torch.isfinite(feats).all():
            raise RescoreError(f"utterance {uid}: features contain NaN or inf")
        validate(lat)
        end_sec = float(lat.fsa.end_frame.max()) * lat.frame_shift if lat.num_arcs else 0.0
        if end_sec > feats.shape[0] * FEATURE_FRAME_SHIFT + 0.1:
            raise RescoreError(
                f"utterance {uid}: the lattice reaches {end_sec:.2f} s but the features cover "
                f"{feats.shape[0] * FEATURE_FRAME_SHIFT:.2f} s (wrong features for this lattice?)"
            )
        return feats.float()

    def awe_scores(self, lat, feats: torch.Tensor) -> torch.Tensor:
        """Per-arc embedding similarity (float32 [A]); 0 on filler/final arcs, unk_awe_score on <unk>."""
        from rescorer.ops import arc_similarity

        feats = self._check(lat, feats)
        fsa = lat.fsa
        labels = fsa.labels.long()
        unk = lat.words.get("<unk>") if "<unk>" in lat.words else -100
        is_word = (labels > 0) & (labels != unk)
        out = torch.zeros(labels.shape[0], dtype=torch.float32)
        out[labels == unk] = self.config.unk_awe_score
        idx = torch.nonzero(is_word).flatten()
        if idx.numel() == 0:
            return out
        uniq_spans, span_of_arc = distinct_arc_spans(lat, idx, feats.shape[0])
        wids = labels[idx]
        uniq_words, word_of_arc = torch.unique(wids, return_inverse=True)
        words = [lat.words.get(int(w)) for w in uniq_words]
        A = self.span_embeddings(feats, [tuple(map(int, p)) for p in uniq_spans])
        W = self.spelling_embeddings(words)
        arcs = torch.stack([span_of_arc, word_of_arc], 1).to(self.device)
        sim = arc_similarity(A, W, arcs, metric="cosine").float().cpu()
        if not torch.isfinite(sim).all():
            raise RescoreError(f"utterance {lat.utterance_id}: non-finite embedding similarity (NaN in the model?)")
        out[idx] = sim
        return out

    def apply_scores(self, lat, awe: torch.Tensor, config: Optional[RescoreConfig] = None):
        """Set ``awe_scores`` and the combined ``scores`` on (a copy of) the lattice."""
        from rescorer.lattice.word_lattice import WordLattice

        c = config or self.config
        fsa = lat.fsa.clone()
        fsa.awe_scores = awe.to(fsa.scores.device)
        word = (fsa.labels > 0).to(torch.float32)
        fsa.scores = (c.am_scale * fsa.am_scores + c.lm_scale * fsa.lm_scores + c.word_insertion_penalty * word
                      + c.awe_scale * fsa.awe_scores).to(torch.float32)
        meta = dict(lat.meta)
        meta["scales"] = {"am_scale": c.am_scale, "lm_scale": c.lm_scale, "word_insertion_penalty": c.word_insertion_penalty,
                          "awe_scale": c.awe_scale}
        return WordLattice(fsa, lat.frame_shift, lat.words, lat.utterance_id, meta)

    def rescore(self, lat, feats, config: Optional[RescoreConfig] = None, recover: bool = False) -> RescoreResult:
        """Embedding scores on every arc, combined; best path and word confidences.

        ``feats``: the utterance's 80-bin fbank at 10 ms ([T, 80]; rescorer.segments'
        extractor); use ``features_from_audio`` for raw audio. With ``recover=True``,
        OOV recovery (see module doc) runs first; it needs ``set_vocabulary``.
        """
        from rescorer.lattice.word_lattice import best_path_hypothesis, word_confidences

        c = config or self.config
        recovered: List[Tuple[str, float, float]] = []
        if recover:
            lat, recovered = self.recover_oov(lat, feats, c)
        awe = self.awe_scores(lat, feats)
        scored = self.apply_scores(lat, awe, c)
        hyp = best_path_hypothesis(scored)
        conf = word_confidences(scored, hyp.words, scale=c.posterior_scale) if hyp.words else []
        best = {w.word for w in hyp.words}
        return RescoreResult(scored, hyp, conf, [r for r in recovered if r[0] in best])

    # ------------------------------------------------------------ OOV recovery

    def recover_oov(self, lat, feats, config: Optional[RescoreConfig] = None):
        """Add nearest-spelling alternatives for <unk> and low-posterior arcs; returns (lattice, added)."""
        from rescorer.lattice.word_lattice import WordLattice, arc_posteriors
        from rescorer.ops import topk_nearest

        c = config or self.config
        if self._vocab is None:
            raise RescoreError("OOV recovery needs a word list: call set_vocabulary(words) first")
        feats = self._check(lat, feats)
        vocab_words, vocab_emb = self._vocab
        fsa = lat.fsa
        labels = fsa.labels.long()
        unk = lat.words.get("<unk>") if "<unk>" in lat.words else -100
        base = self.apply_scores(lat, torch.zeros(labels.shape[0]), RescoreConfig(**{**asdict(c), "awe_scale": 0.0}))
        post = arc_posteriors(base, scale=c.posterior_scale).float().cpu()
        weak = ((labels == unk) | ((labels > 0) & (post < c.oov_posterior_threshold))).nonzero().flatten()
        if weak.numel() == 0:
            return lat, []
        uniq, inv = distinct_arc_spans(lat, weak, feats.shape[0])
        Q = self.span_embeddings(feats, [tuple(map(int, p)) for p in uniq])
        k = min(c.oov_topk, len(vocab_words))
        vals, ids = topk_nearest(Q, vocab_emb, k, metric="cosine")
        vals, ids = vals.cpu(), ids.cpu()
        # new arcs: copies of the weak arcs with candidate words
        words_table = lat.words
        arcs_all = fsa.arcs.values()[:, :3].long()
        new_rows, new_attr = [], {k_: [] for k_ in ("start_frame", "end_frame", "am_scores", "lm_scores")}
        added = []
        existing = {(int(a), int(b), int(l)) for a, b, l in arcs_all.tolist()}
        for j, arc in enumerate(weak.tolist()):
            src, dst, lab = arcs_all[arc].tolist()
            for v, i in zip(vals[inv[j]].tolist(), ids[inv[j]].tolist()):
                if i < 0 or not math.isfinite(v) or v < c.oov_min_similarity:
                    continue
                w = vocab_words[i]
                if w not in words_table:
                    words_table.add(w)
                wid = words_table.get(w)
                if wid == lab or (src, dst, wid) in existing:
                    continue
                existing.add((src, dst, wid))
                new_rows.append((src, dst, wid))
                new_attr["start_frame"].append(int(fsa.start_frame[arc]))
                new_attr["end_frame"].append(int(fsa.end_frame[arc]))
                new_attr["am_scores"].append(float(fsa.am_scores[arc]))
                lm = float(fsa.lm_scores[arc]) if lab == unk else c.oov_lm_score
                new_attr["lm_scores"].append(lm)
                added.append((w, float(fsa.start_frame[arc]) * lat.frame_shift, float(fsa.end_frame[arc]) * lat.frame_shift))
        if not new_rows:
            return lat, []
        return _with_extra_arcs(lat, new_rows, new_attr, words_table), added


def _with_extra_arcs(lat, rows, attrs, words_table):
    """A new lattice with extra arcs between existing states; per-arc attributes kept.

    States keep their numbers (so topological order and the final state are unchanged);
    arcs are re-sorted by source state as k2 requires.
    """
    import k2

    from rescorer.lattice.word_lattice import WordLattice

    fsa = lat.fsa
    allarcs = torch.cat([fsa.arcs.values()[:, :3].long(), torch.tensor(rows, dtype=torch.long)])
    order = torch.sort(allarcs[:, 0], stable=True).indices
    allarcs = allarcs[order]
    cols = {
        name: torch.cat([getattr(fsa, name).to(torch.int32), torch.tensor(attrs[name], dtype=torch.int32)])[order]
        for name in ("start_frame", "end_frame")
    }
    for name in ("am_scores", "lm_scores"):
        cols[name] = torch.cat([getattr(fsa, name).float(), torch.tensor(attrs[name], dtype=torch.float32)])[order]
    final = int(fsa.shape[0]) - 1
    text = "\n".join(f"{a} {b} {l} 0" for a, b, l in allarcs.tolist()) + f"\n{final}"
    new_fsa = k2.Fsa.from_str(text)
    for name, col in cols.items():
        setattr(new_fsa, name, col)
    meta = dict(lat.meta)
    meta["oov_recovery_arcs"] = meta.get("oov_recovery_arcs", 0) + len(rows)
    return WordLattice(new_fsa, lat.frame_shift, words_table, lat.utterance_id, meta)


def features_from_audio(samples: np.ndarray, sampling_rate: int = 16000) -> torch.Tensor:
    """80-bin fbank at 10 ms, the embedder's input (lhotse's extractor, as for training)."""
    from rescorer.segments import fbank_extractor

    if samples is None or len(samples) == 0:
        raise RescoreError("empty audio")
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if sampling_rate != 16000:
        from rescorer.corpora.tts.base import resample_to_16k

        x = resample_to_16k(x[0], sampling_rate)[None, :]
    return torch.from_numpy(fbank_extractor().extract(x, 16000))
