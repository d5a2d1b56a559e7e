"""Second pass over a rescored word lattice: attention-decoder n-best rescoring.

``awe_plus_attention``: the embedding-rescored lattice (decoder + embedding scores) gives
its n best word sequences; an attention (encoder-decoder) model scores each one by
teacher forcing (the letters of its words, ``|`` after each word), and the sequence with
the best ``lattice score + attention_scale * attention log-likelihood`` wins, as
icefall's attention-decoder rescoring does for HLG lattices. The attention model may be
a different model from the one that made the lattice (e.g. the joint CTC/attention model
rescoring the CTC model's lattices, or pocketsphinx's).

``<unk>`` words have no spelling, so they contribute no letters to the attention input
(the decoder sees the other words); the embedding score already judges their audio.

Usage::

    scorer = AttentionScorer.from_dir("exp/attention")
    hyps, att = attention_candidates(scorer, scored_lattice, feats, n=10)   # after Rescorer.apply_scores
    best = pick_best(hyps, att, attention_scale=0.5)                      # any scale, no model call
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from rescorer.formats.contract import FBANK, UNK, FeatureSpec
from rescorer.lattice.paths import Hypothesis, best_with_attention
from rescorer.lattice.word_lattice import nbest
from rescorer.models.checkpoint import load_asr_model
from rescorer.tokens import words_to_token_ids


class AttentionScorer:
    """An attention ASR model (``rescorer.models.attention``) used as a sequence scorer."""

    def __init__(self, model, device: Optional[str] = None):
        if not hasattr(model, "score_token_sequences"):
            raise ValueError("attention rescoring needs an encoder-decoder model (a CTC-only model has no decoder)")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        # the frames its encoder reads (its frontend; they may differ from the embedder's)
        recorded = getattr(getattr(model, "encoder", None), "feature_spec", None)
        self.feature_spec = FeatureSpec.from_json(recorded) if recorded else FBANK

    @classmethod
    def from_dir(cls, model_dir, device: Optional[str] = None) -> "AttentionScorer":
        model, _ = load_asr_model(model_dir)
        return cls(model, device)

    @torch.no_grad()
    def encode(self, feats: torch.Tensor) -> torch.Tensor:
        """Encoder output [T', C] for one utterance's frames [T, feature_spec.dim]."""
        x = torch.as_tensor(feats).float().to(self.device)[None]
        enc, lens = self.model.encode(x, torch.tensor([x.shape[1]], device=self.device))
        return enc[0, : int(lens[0])]

    @torch.no_grad()
    def score(self, encoder_out: torch.Tensor, word_sequences: Sequence[Sequence[str]]) -> torch.Tensor:
        """Attention log-likelihood (float64 [n]) of each word sequence given the encoder output."""
        seqs = [words_to_token_ids([w for w in ws if w != UNK]) for ws in word_sequences]
        if not seqs:
            return torch.zeros(0, dtype=torch.float64)
        return torch.as_tensor(self.model.score_token_sequences(encoder_out, seqs)).double().cpu()


def attention_candidates(scorer: AttentionScorer, scored_lattice, feats: torch.Tensor, n: int = 10,
                         num_paths: int = 100, nbest_scale: float = 0.5, seed: int = 0):
    """(hypotheses, attention scores float64 [n]): the scored lattice's n best distinct word
    sequences (``word_lattice.nbest``, best first) and the attention log-likelihood of each,
    to re-rank with ``pick_best`` under any ``attention_scale`` (e.g. while tuning it)."""
    if scored_lattice.num_arcs == 0:
        return [], torch.zeros(0, dtype=torch.float64)
    hyps = nbest(scored_lattice, n=n, num_paths=num_paths, nbest_scale=nbest_scale, seed=seed)
    return hyps, scorer.score(scorer.encode(feats), [h.word_sequence for h in hyps])


def pick_best(hyps: Sequence[Hypothesis], attention_scores: torch.Tensor, attention_scale: float) -> List[str]:
    """Words of the hypothesis with the best lattice score + attention_scale * attention
    (``paths.best_with_attention``)."""
    if not hyps:
        return []
    k, _ = best_with_attention([h.score for h in hyps], attention_scores, attention_scale)
    return hyps[k].word_sequence
