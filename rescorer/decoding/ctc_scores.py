"""CTC log-probs of an utterance, computed once, and the CTC spelling score of word spans.

``CtcPosteriors`` runs a CTC (or joint CTC/attention) model over an utterance's features
(checked against the frontend the model was trained on) and gives its log-probs
``[T', V]`` and their frame shift (the features' shift x the model's subsampling).

``SpanScorer`` holds one utterance's log-probs and scores (span, word) pairs: the CTC
log-likelihood of the word's spelling (letters then ``|``, ``word_spotting.spelling``)
over frames ``[start, end)``, ``log P(spelling | frames)`` summed over all alignments
(batched ``torch.nn.functional.ctc_loss``), each pair computed once (cached). A span
shorter than its spelling needs (tokens + repeated letters, each repeat needs a blank)
cannot emit it: it gets a finite floor, ``floor_per_token`` x tokens, never -inf/NaN.
``<unk>`` has no spelling: its score is the best unconstrained path over the span (the
per-frame best log-probs summed), with the greedy tokens there as its token count.

``fit_temperature`` recalibrates a model's log-probs for scoring: ``softmax(log_probs / T)``
with the T of lowest CTC loss on dev transcripts. A CTC model kept by its greedy error rate
was trained past its lowest dev loss and is overconfident (T > 1 flattens it); the argmax,
so the greedy output, does not change, and stored log-probs need no second model.

Normalisations (``NORMS``): ``none`` (the log-likelihood), ``frame`` (per frame of the
span), ``token`` (per token of the spelling). Lattice spans are converted from the
lattice's frames to the CTC frames by time (``lattice_spans``): our own lattices are
already at the CTC model's frame rate; pocketsphinx lattices are at 10 ms.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from rescorer.decoding.word_spotting import spelling
from rescorer.formats.contract import FBANK, UNK, FeatureSpec, check_spec
from rescorer.formats.ctc_log_probs import CtcLogProbs
from rescorer.tokens import BLANK_ID, TOKENS, TokenError, words_to_token_ids

NORMS = ("none", "frame", "token")


class CtcScoreError(ValueError):
    """Input the CTC scorer cannot use (wrong features, bad spans, unknown normalisation)."""


class CtcPosteriors:
    """A CTC model's log-probs for whole utterances (``from_dir``: a ``rescorer train asr`` run)."""

    def __init__(self, model, device: Optional[str] = None, model_sha256: Optional[str] = None):
        self.device = torch.device(device or "cpu")
        self.model = model.to(self.device).eval()
        self.model_sha256 = model_sha256  # the checkpoint file's digest (from_dir): stored log-probs must match it
        recorded = getattr(getattr(model, "encoder", None), "feature_spec", None)
        self.feature_spec = FeatureSpec.from_json(recorded) if recorded else FBANK
        self.subsampling_factor = int(getattr(model, "subsampling_factor", 4))
        self.frame_shift = self.feature_spec.subsampled(self.subsampling_factor)
        self.seconds = 0.0  # forward time spent so far

    @classmethod
    def from_dir(cls, model_dir, device: Optional[str] = None) -> "CtcPosteriors":
        from rescorer.models.checkpoint import checkpoint_sha256, load_asr_model

        if not Path(model_dir).exists():
            raise FileNotFoundError(f"no CTC model at {model_dir}")
        model, _ = load_asr_model(model_dir)
        return cls(model, device, checkpoint_sha256(model_dir, kind="ASR"))

    def check_features(self, spec: Optional[FeatureSpec], source: str) -> None:
        check_spec(spec, self.feature_spec, f"{source} (CTC model)")

    def reuse_or_compute(self, feats_by_id: Dict[str, torch.Tensor], stored: Optional["CtcLogProbs"] = None
                         ) -> Dict[str, torch.Tensor]:
        """Log-probs of every utterance of ``feats_by_id``: the decoder's (``stored``, a
        ``formats.ctc_log_probs`` file of this very checkpoint) where it has them, the model's
        forward pass for the others (counted in ``seconds``). Stored log-probs must have the
        frame count the features give this model (else they are of other audio)."""
        out: Dict[str, torch.Tensor] = {}
        if stored is not None:
            if self.model_sha256 is None:
                raise CtcScoreError(f"{stored.source}: stored log-probs need the CTC model's checkpoint digest "
                                    f"(CtcPosteriors.from_dir) to be checked against")
            stored.check_model(self.model_sha256, TOKENS, self.frame_shift)
            for uid, lp in stored.log_probs.items():
                if uid not in feats_by_id:
                    continue
                want = self.output_frames(int(feats_by_id[uid].shape[0]))
                if int(lp.shape[0]) != want:
                    raise CtcScoreError(f"{stored.source}: utterance {uid} has {lp.shape[0]} log-prob frames, its "
                                        f"features give {want}: log-probs of other audio")
                out[uid] = lp
        todo = [u for u in feats_by_id if u not in out]
        if todo:
            out.update(zip(todo, self.batch_log_probs([feats_by_id[u] for u in todo])))
        return {u: out[u] for u in feats_by_id}

    def output_frames(self, num_frames: int) -> int:
        """Output frames of the model for ``num_frames`` input frames."""
        from rescorer.models.ctc import subsampled_lengths

        return int(subsampled_lengths(torch.tensor([num_frames]), self.subsampling_factor)[0])

    @torch.no_grad()
    def log_probs(self, feats: torch.Tensor) -> torch.Tensor:
        """[T', V] float32 on the CPU for one utterance's features [T, D]."""
        return self.batch_log_probs([feats])[0]

    @torch.no_grad()
    def batch_log_probs(self, feats: Sequence[torch.Tensor], max_batch_frames: int = 20000) -> List[torch.Tensor]:
        """Log-probs of several utterances, batched by length (results in input order)."""
        import time

        dim = int(self.model.encoder.feat_mean.numel()) if hasattr(self.model, "encoder") else None
        for f in feats:
            if f.dim() != 2 or (dim is not None and f.shape[1] != dim):
                raise CtcScoreError(f"features must be [frames, {dim}] for this CTC model, got {tuple(f.shape)}")
        t0 = time.perf_counter()
        out: List[Optional[torch.Tensor]] = [None] * len(feats)
        order = sorted(range(len(feats)), key=lambda i: feats[i].shape[0])
        batch: List[int] = []

        def run(ids):
            lens = torch.tensor([feats[i].shape[0] for i in ids])
            x = torch.zeros(len(ids), int(lens.max()), feats[ids[0]].shape[1])
            for j, i in enumerate(ids):
                x[j, : lens[j]] = feats[i].float()
            res = self.model(x.to(self.device), lens.to(self.device))
            lp, out_lens = res[0].float().cpu(), res[1].cpu()
            if lp.shape[-1] != len(TOKENS):
                raise CtcScoreError(f"the model outputs {lp.shape[-1]} classes, the token set has {len(TOKENS)}")
            for j, i in enumerate(ids):
                out[i] = lp[j, : int(out_lens[j])].contiguous()

        for i in order:
            n = feats[i].shape[0]
            if batch and (len(batch) + 1) * n > max_batch_frames:
                run(batch)
                batch = []
            batch.append(i)
        if batch:
            run(batch)
        self.seconds += time.perf_counter() - t0
        return out  # type: ignore[return-value]


def min_frames(tokens: Sequence[int]) -> int:
    """Fewest CTC frames that can emit ``tokens``: one each, plus a blank between repeats."""
    return len(tokens) + sum(1 for a, b in zip(tokens, tokens[1:]) if a == b)


def normalise(log_lik: torch.Tensor, frames: torch.Tensor, tokens: torch.Tensor, norm: str) -> torch.Tensor:
    """The score under one of ``NORMS``."""
    if norm == "none":
        return log_lik
    if norm == "frame":
        return log_lik / frames.clamp(min=1)
    if norm == "token":
        return log_lik / tokens.clamp(min=1)
    raise CtcScoreError(f"unknown CTC score normalisation {norm!r}; choose from {', '.join(NORMS)}")


class SpanScorer:
    """CTC spelling scores of (span, word) pairs over one utterance's log-probs, each computed once."""

    def __init__(self, log_probs: torch.Tensor, floor_per_token: float = -20.0, batch_size: int = 512):
        if log_probs.dim() != 2 or log_probs.shape[1] != len(TOKENS):
            raise CtcScoreError(f"CTC log-probs must be [frames, {len(TOKENS)}], got {tuple(log_probs.shape)}")
        if not math.isfinite(floor_per_token):
            raise CtcScoreError("floor_per_token must be finite")
        self.log_probs = log_probs.detach().float().cpu()
        self.num_frames = int(self.log_probs.shape[0])
        self.floor_per_token = float(floor_per_token)
        self.batch_size = batch_size
        self._cache: Dict[Tuple[int, int, str], Tuple[float, int]] = {}  # -> (log-likelihood, tokens)
        self.computed = 0  # pairs scored by ctc_loss (cache misses that were feasible)
        best = self.log_probs.max(1)
        self._best_prefix = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(best.values.double(), 0)])
        arg = best.indices
        starts = (arg != BLANK_ID) & torch.cat([torch.ones(1, dtype=torch.bool), arg[1:] != arg[:-1]])
        self._token_prefix = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(starts.long(), 0)])

    def __len__(self) -> int:
        return len(self._cache)

    def _check_spans(self, spans: torch.Tensor) -> torch.Tensor:
        spans = torch.as_tensor(spans, dtype=torch.long).reshape(-1, 2)
        if spans.numel() and (int(spans.min()) < 0 or int(spans[:, 1].max()) > self.num_frames
                              or bool((spans[:, 1] < spans[:, 0]).any())):
            raise CtcScoreError(f"spans must satisfy 0 <= start <= end <= {self.num_frames} (the CTC frames)")
        return spans

    def scores(self, spans, words: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-likelihood, frames, tokens) per pair, float64 / long / long; ``words[i]`` over ``spans[i]``."""
        spans = self._check_spans(spans)
        if len(words) != spans.shape[0]:
            raise CtcScoreError(f"{spans.shape[0]} spans but {len(words)} words")
        keys = [(int(s), int(e), w) for (s, e), w in zip(spans.tolist(), words)]
        todo = [k for k in dict.fromkeys(keys) if k not in self._cache]
        self._fill(todo)
        vals = [self._cache[k] for k in keys]
        ll = torch.tensor([v[0] for v in vals], dtype=torch.float64)
        tok = torch.tensor([v[1] for v in vals], dtype=torch.long)
        return ll, (spans[:, 1] - spans[:, 0]), tok

    def _fill(self, todo: List[Tuple[int, int, str]]) -> None:
        feasible = []
        for k in todo:
            s, e, w = k
            if w == UNK:  # no spelling: the best unconstrained path over the span
                n_tok = int(self._token_prefix[e] - self._token_prefix[s])
                self._cache[k] = (float(self._best_prefix[e] - self._best_prefix[s]), max(1, n_tok))
                continue
            toks = spelling(w)
            if e - s < min_frames(toks):
                self._cache[k] = (self.floor_per_token * len(toks), len(toks))
            else:
                feasible.append((k, toks))
        for i in range(0, len(feasible), self.batch_size):
            chunk = feasible[i : i + self.batch_size]
            lens = torch.tensor([k[1] - k[0] for k, _ in chunk])
            x = torch.zeros(int(lens.max()), len(chunk), len(TOKENS))
            for j, ((s, e, _), _) in enumerate(chunk):
                x[: e - s, j] = self.log_probs[s:e]
            targets = torch.cat([torch.tensor(t) for _, t in chunk])
            tlens = torch.tensor([len(t) for _, t in chunk])
            nll = F.ctc_loss(x, targets, lens, tlens, blank=BLANK_ID, reduction="none", zero_infinity=False)
            for ((k, toks), v) in zip(chunk, (-nll.double()).tolist()):
                self._cache[k] = (v if math.isfinite(v) else self.floor_per_token * len(toks), len(toks))
            self.computed += len(chunk)


def lattice_spans(start_frame: torch.Tensor, end_frame: torch.Tensor, lattice_frame_shift: float,
                  ctc_frame_shift: float, num_frames: int) -> torch.Tensor:
    """Lattice frames -> CTC frames [start, end) by time (rounded), clipped to the utterance. Our own lattices
    are at the CTC frame rate (identity); pocketsphinx's 10 ms frames are divided by 4 for 40 ms CTC frames."""
    r = float(lattice_frame_shift) / float(ctc_frame_shift)
    s = torch.round(start_frame.double() * r).long().clamp(0, num_frames)
    e = torch.round(end_frame.double() * r).long().clamp(0, num_frames)
    return torch.stack([s, torch.maximum(s, e)], 1)


def arc_ctc_scores(lat, scorer: SpanScorer, ctc_frame_shift: float, norms: Sequence[str] = NORMS) -> Dict[str, torch.Tensor]:
    """Per-arc CTC spelling score (float32 [A]) under each normalisation; 0 on filler and final arcs."""
    for n in norms:
        if n not in NORMS:
            raise CtcScoreError(f"unknown CTC score normalisation {n!r}; choose from {', '.join(NORMS)}")
    labels = lat.fsa.labels.long()
    out = {n: torch.zeros(labels.shape[0], dtype=torch.float32) for n in norms}
    idx = (labels > 0).nonzero().flatten()
    if idx.numel() == 0:
        return out
    spans = lattice_spans(lat.fsa.start_frame[idx], lat.fsa.end_frame[idx], lat.frame_shift, ctc_frame_shift,
                          scorer.num_frames)
    words = [lat.words.get(int(w)) for w in labels[idx].tolist()]
    ll, frames, tokens = scorer.scores(spans, words)
    for n in norms:
        out[n][idx] = normalise(ll, frames, tokens, n).float()
    return out


def with_temperature(log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log_softmax(log_probs / temperature)``: the same argmax, flatter (T > 1) or sharper."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise CtcScoreError(f"CTC temperature must be a positive number, got {temperature}")
    return log_probs if temperature == 1.0 else (log_probs / temperature).log_softmax(-1)


def ctc_loss_per_token(log_probs: Dict[str, torch.Tensor], transcripts: Dict[str, Sequence[str]],
                       temperature: float = 1.0, batch: int = 64) -> Tuple[float, int]:
    """(CTC loss per target token, utterances used) of the transcripts under the log-probs at a
    temperature; utterances whose words have no spelling in the tokens, or too short for theirs, are left out."""
    items = []
    for u in sorted(log_probs):
        try:
            target = words_to_token_ids(list(transcripts.get(u, ())))
        except TokenError:
            continue
        if target and min_frames(target) <= log_probs[u].shape[0]:
            items.append((log_probs[u], target))
    if not items:
        raise CtcScoreError("no utterance with a transcript the CTC log-probs can score")
    total, tokens = 0.0, 0
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        lps = [with_temperature(lp.float(), temperature) for lp, _ in chunk]
        x = torch.nn.utils.rnn.pad_sequence(lps)  # [T, B, V]
        y = torch.cat([torch.tensor(t) for _, t in chunk])
        loss = F.ctc_loss(x, y, torch.tensor([lp.shape[0] for lp in lps]), torch.tensor([len(t) for _, t in chunk]),
                          blank=BLANK_ID, reduction="sum", zero_infinity=True)
        total += float(loss)
        tokens += sum(len(t) for _, t in chunk)
    return total / tokens, len(items)


def fit_temperature(log_probs: Dict[str, torch.Tensor], transcripts: Dict[str, Sequence[str]],
                    temperatures: Sequence[float]) -> Tuple[float, Dict[float, float]]:
    """(the temperature of lowest CTC loss per token on these utterances' transcripts, the loss at each)."""
    if not temperatures:
        raise CtcScoreError("an empty grid of CTC temperatures")
    losses = {float(t): ctc_loss_per_token(log_probs, transcripts, float(t))[0] for t in temperatures}
    return min(losses, key=lambda t: (losses[t], abs(t - 1.0))), losses
