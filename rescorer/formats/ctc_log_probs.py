"""CTC log-probs as the decoder computed them: kept so that rescoring does not run the model again.

Why: the embedding + CTC fusion and CTC word spotting score spellings with the CTC model's
log-probs, which the decoder had already computed to build its lattices; running the
model a second time was about half of the fusion's cost. ``rescorer decode
--save-ctc-log-probs`` writes them beside the lattices; ``rescorer tune --dev-ctc-log-probs``
reads them back.

Format ``rescorer.ctc_log_probs/1`` (a tagged file, ``rescorer.formats.tagged``):

- tensors: ``log_probs`` float32 [T_total, V] (utterance i is ``log_probs[offsets[i]:offsets[i + 1]]``),
  ``offsets`` int64 [U + 1];
- meta: ``utterance_ids``, ``tokens`` (the output symbols, in order), ``frame_shift`` (seconds
  per output frame, as JSON text), ``model_sha256`` (the checkpoint file that produced them).

Log-probs of another model, of another token set or with non-finite values are refused,
each with a message naming the file and the problem (``CtcLogProbsError``), so a stale
file is never used silently.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from rescorer.formats.tagged import FormatError, read_tagged, require, write_tagged
from rescorer.utils import PathLike

FAMILY = "rescorer.ctc_log_probs"
VERSION = 1


class CtcLogProbsError(FormatError):
    """Stored log-probs that cannot stand in for the model's (the message names the file)."""


@dataclass
class CtcLogProbs:
    """One split's per-utterance CTC log-probs and what produced them."""

    log_probs: Dict[str, torch.Tensor]  # utterance id -> float32 [T', V]
    tokens: List[str]
    frame_shift: float
    model_sha256: str
    source: str = "<memory>"

    def check_model(self, model_sha256: str, tokens: Sequence[str], frame_shift: float) -> None:
        """CtcLogProbsError unless these log-probs came from that checkpoint, tokens and frame rate."""
        if self.model_sha256 != model_sha256:
            raise CtcLogProbsError(
                f"{self.source}: log-probs of another CTC model (checkpoint sha256 {self.model_sha256[:12]}..., "
                f"this model's {model_sha256[:12]}...): decode again with this model, or leave the file out")
        if list(self.tokens) != list(tokens):
            raise CtcLogProbsError(f"{self.source}: log-probs over another token set ({len(self.tokens)} tokens, "
                                   f"the model has {len(tokens)})")
        if not math.isclose(self.frame_shift, frame_shift, rel_tol=1e-6):
            raise CtcLogProbsError(f"{self.source}: log-probs at {self.frame_shift} s per frame, the model's are "
                                   f"{frame_shift} s")


def _check(log_probs: Dict[str, torch.Tensor], num_tokens: int, source: str) -> None:
    for uid, lp in log_probs.items():
        if lp.dim() != 2 or lp.shape[1] != num_tokens:
            raise CtcLogProbsError(f"{source}: utterance {uid}: log-probs must be [frames, {num_tokens}], "
                                   f"got {tuple(lp.shape)}")
        if lp.shape[0] == 0:
            raise CtcLogProbsError(f"{source}: utterance {uid} has no frames")
        if not bool(torch.isfinite(lp).all()):
            raise CtcLogProbsError(f"{source}: utterance {uid} has non-finite log-probs (NaN or inf)")


def write_ctc_log_probs(path: PathLike, logp: CtcLogProbs) -> None:
    """Write ``logp`` as ``rescorer.ctc_log_probs/1`` (atomically), after validating it."""
    _check(logp.log_probs, len(logp.tokens), str(path))
    if not logp.log_probs:
        raise CtcLogProbsError(f"{path}: no utterances to write")
    ids = list(logp.log_probs)
    lengths = torch.tensor([0] + [int(logp.log_probs[u].shape[0]) for u in ids])
    write_tagged(
        path, FAMILY, VERSION,
        {"log_probs": torch.cat([logp.log_probs[u].float() for u in ids]), "offsets": lengths.cumsum(0)},
        {"utterance_ids": ids, "tokens": list(logp.tokens), "frame_shift": json.dumps(float(logp.frame_shift)),
         "model_sha256": str(logp.model_sha256)},
    )


def read_ctc_log_probs(path: PathLike, utterance_ids: Optional[Sequence[str]] = None) -> CtcLogProbs:
    """Read and validate a file (only ``utterance_ids`` of it, when given: every one must be there)."""
    tf = read_tagged(path, FAMILY, versions=(VERSION,))
    require(tf, ("log_probs", "offsets"), ("utterance_ids", "tokens", "frame_shift", "model_sha256"))
    lp, offsets, ids = tf.tensors["log_probs"], tf.tensors["offsets"].long(), list(tf.meta["utterance_ids"])
    if lp.dim() != 2 or lp.dtype != torch.float32:
        raise CtcLogProbsError(f"{path}: log_probs must be float32 [T_total, V], got {lp.dtype} {tuple(lp.shape)}")
    if (offsets.dim() != 1 or len(offsets) != len(ids) + 1 or int(offsets[0]) != 0 or int(offsets[-1]) != lp.shape[0]
            or bool((offsets[1:] < offsets[:-1]).any())):
        raise CtcLogProbsError(f"{path}: offsets must rise from 0 to len(log_probs), one entry per utterance + 1")
    if len(set(ids)) != len(ids):
        raise CtcLogProbsError(f"{path}: an utterance id occurs twice")
    try:
        frame_shift = float(json.loads(tf.meta["frame_shift"]))
    except (TypeError, ValueError):
        raise CtcLogProbsError(f"{path}: frame_shift is not a number ({tf.meta['frame_shift']!r})") from None
    index = {u: i for i, u in enumerate(ids)}
    wanted = ids if utterance_ids is None else list(utterance_ids)
    missing = [u for u in wanted if u not in index]
    if missing:
        raise CtcLogProbsError(f"{path}: no log-probs for {len(missing)} utterance(s), e.g. {', '.join(missing[:3])}")
    out = {u: lp[int(offsets[index[u]]):int(offsets[index[u] + 1])] for u in wanted}
    tokens = [str(t) for t in tf.meta["tokens"]]
    _check(out, len(tokens), str(path))
    return CtcLogProbs(out, tokens, frame_shift, str(tf.meta["model_sha256"]), str(path))
