"""Joint CTC / attention model (icefall ``conformer_ctc`` style) over letter tokens.

A ``ConformerEncoder`` (see ``rescorer.models.ctc``) feeds two heads:

- a CTC head (linear to the 29 tokens) -- ``forward`` returns its outputs with exactly the
  CTC model's interface, so the k2 decoding code treats both models alike;
- a transformer decoder (pre-LayerNorm; causal self-attention, cross-attention to the
  encoder output, SiLU FFN) over the 29 tokens plus ``SOS_EOS`` (id 29, used both to
  start and to end a sequence, as in icefall). Training minimises
  ``ctc_weight * CTC + (1 - ctc_weight) * label-smoothed CE`` (``joint_loss``).

Interface used by rescoring::

    encode(feats, lens) -> (encoder_out [B, T', C], out_lens)
    beam_search(feats, lens, beam=8, max_len_ratio=1.0, nbest=None)
        -> List[List[(token ids without sos/eos, log-prob)]], best first
    score_token_sequences(encoder_out [T', C] or [n, T', C], token_seqs[, enc_lens]) -> Tensor[n]

Scores are sums of the decoder's log-probabilities of every token and the final eos,
with no length normalisation; ``beam_search``'s scores equal ``score_token_sequences``'s
for the same sequences (up to float rounding). Both use the module's current mode: call
``eval()`` first (``load_asr_model`` returns models in eval mode).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from rescorer.models.ctc import (
    NUM_TOKENS,
    CtcModel,
    FeedForward,
    LayerNorm,
    MultiHeadAttention,
    ctc_loss,
    length_mask,
    sinusoidal_positions,
)
from rescorer.models.ctc_prefix import CtcPrefixScorer
from rescorer.models.registry import ASR_MODELS
from rescorer.tokens import pad_token_ids

SOS_EOS = NUM_TOKENS  # 29
DECODER_VOCAB = NUM_TOKENS + 1
DECODER_PRESETS: Dict[str, Dict[str, object]] = {
    "tiny": dict(decoder_layers=1, decoder_ffn_dim=64),
    "small": dict(decoder_layers=2, decoder_ffn_dim=512),
    "large": dict(decoder_layers=6, decoder_ffn_dim=1024),
}


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_norm = LayerNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.src_norm = LayerNorm(d_model)
        self.src_attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.ff = FeedForward(d_model, ffn_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, self_mask, memory, memory_mask):
        y = self.self_norm(x)
        x = x + self.dropout(self.self_attn(y, y, y, self_mask))
        y = self.src_norm(x)
        x = x + self.dropout(self.src_attn(y, memory, memory, memory_mask))
        return x + self.ff(x)

    def step(self, x, cache, memory_kv, memory_mask):
        """One new position x [N, 1, D]; ``cache`` (keys, values) of the earlier positions or
        None. Returns (output [N, 1, D], updated cache)."""
        y = self.self_norm(x)
        k, v = self.self_attn.project_kv(y, y)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        everything = torch.ones(1, 1, 1, k.shape[2], dtype=torch.bool, device=x.device)
        x = x + self.dropout(self.self_attn(y, None, None, everything, kv=(k, v)))
        y = self.src_norm(x)
        x = x + self.dropout(self.src_attn(y, None, None, memory_mask, kv=memory_kv))
        return x + self.ff(x), (k, v)


class TransformerDecoder(nn.Module):
    """Token prefixes [B, L] + encoder output -> next-token logits [B, L, 30]."""

    def __init__(self, d_model: int, num_heads: int, num_layers: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.d_model = d_model
        self.embed = nn.Embedding(DECODER_VOCAB, d_model)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList([DecoderLayer(d_model, num_heads, ffn_dim, dropout) for _ in range(num_layers)])
        self.norm = LayerNorm(d_model)
        self.out = nn.Linear(d_model, DECODER_VOCAB)

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor, memory_lens: torch.Tensor) -> torch.Tensor:
        B, L = tokens.shape
        x = self.embed(tokens) * (self.d_model**0.5) + sinusoidal_positions(L, self.d_model, tokens.device, memory.dtype)
        x = self.dropout(x)
        causal = torch.ones(L, L, dtype=torch.bool, device=tokens.device).tril()[None, None]
        memory_mask = length_mask(memory_lens.to(tokens.device), memory.shape[1])[:, None, None, :]
        for layer in self.layers:
            x = layer(x, causal, memory, memory_mask)
        return self.out(self.norm(x))

    def memory_kv(self, memory: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Cross-attention keys/values of every layer, computed once per utterance."""
        return [layer.src_attn.project_kv(memory, memory) for layer in self.layers]

    def step(self, last_tokens, position, memory_kv, memory_mask, cache):
        """Incremental decoding: logits [N, 30] after the token ``last_tokens`` [N] at
        ``position`` (0 for sos), given the per-layer caches of the earlier positions."""
        pe = sinusoidal_positions(position + 1, self.d_model, last_tokens.device)[position]
        x = self.embed(last_tokens[:, None]) * (self.d_model**0.5) + pe
        new_cache = []
        for i, layer in enumerate(self.layers):
            x, c = layer.step(x, None if cache is None else cache[i], memory_kv[i], memory_mask)
            new_cache.append(c)
        return self.out(self.norm(x))[:, 0], new_cache


def _decoder_io(token_seqs: Sequence[Sequence[int]], device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``sos + seq`` (padded with eos) and targets ``seq + eos`` (padded with -1)."""
    L = max(len(s) for s in token_seqs) + 1
    ys_in = torch.full((len(token_seqs), L), SOS_EOS, dtype=torch.long)
    ys_out = torch.full((len(token_seqs), L), -1, dtype=torch.long)
    for i, s in enumerate(token_seqs):
        s = list(s)
        if s:
            ys_in[i, 1 : len(s) + 1] = torch.tensor(s)
            ys_out[i, : len(s)] = torch.tensor(s)
        ys_out[i, len(s)] = SOS_EOS
    return ys_in.to(device), ys_out.to(device)


@ASR_MODELS.register("attention")
class AttentionModel(CtcModel):
    """Conformer encoder + CTC head (inherited from CtcModel) + transformer attention decoder."""

    def __init__(self, decoder_layers: int = 2, decoder_ffn_dim: int = 576, **encoder_config):
        super().__init__(**encoder_config)
        self.config.update(decoder_layers=decoder_layers, decoder_ffn_dim=decoder_ffn_dim)
        d = self.encoder.d_model
        self.decoder = TransformerDecoder(
            d, int(self.encoder.config["num_heads"]), decoder_layers, decoder_ffn_dim, float(self.encoder.config["dropout"])
        )
        self.sos_id = self.eos_id = SOS_EOS

    # ------------------------------------------------------------ decoder

    def decoder_log_probs(
        self, encoder_out: torch.Tensor, enc_lens: torch.Tensor, ys_in: torch.Tensor
    ) -> torch.Tensor:
        """[B, L, 30] float32 log-probs of the next token after each prefix of ``ys_in``."""
        return F.log_softmax(self.decoder(ys_in, encoder_out, enc_lens).float(), dim=-1)

    def attention_loss(
        self,
        encoder_out: torch.Tensor,
        enc_lens: torch.Tensor,
        token_seqs: Sequence[Sequence[int]],
        label_smoothing: float = 0.1,
    ) -> torch.Tensor:
        """Summed label-smoothed cross-entropy over all target tokens (each sequence + eos)."""
        ys_in, ys_out = _decoder_io(token_seqs, encoder_out.device)
        logits = self.decoder(ys_in, encoder_out, enc_lens).float()
        return F.cross_entropy(
            logits.reshape(-1, DECODER_VOCAB),
            ys_out.reshape(-1),
            ignore_index=-1,
            label_smoothing=label_smoothing,
            reduction="sum",
        )

    def joint_loss(
        self,
        feats: torch.Tensor,
        feat_lens: torch.Tensor,
        token_seqs: Sequence[Sequence[int]],
        ctc_weight: float = 0.3,
        label_smoothing: float = 0.1,
    ) -> Dict[str, torch.Tensor]:
        """Summed losses: ``loss = ctc_weight * ctc + (1 - ctc_weight) * attention``."""
        enc, out_lens = self.encode(feats, feat_lens)
        targets, target_lens = pad_token_ids(token_seqs)
        ctc = ctc_loss(self.ctc_log_probs(enc), out_lens, targets.to(enc.device), target_lens.to(enc.device))
        att = self.attention_loss(enc, out_lens, token_seqs, label_smoothing)
        return {"loss": ctc_weight * ctc + (1 - ctc_weight) * att, "ctc": ctc, "attention": att}

    def score_token_sequences(
        self,
        encoder_out: torch.Tensor,
        token_seqs: Sequence[Sequence[int]],
        enc_lens: Optional[torch.Tensor] = None,
        batch_size: int = 256,
    ) -> torch.Tensor:
        """Teacher-forced log-likelihood (sum over tokens + eos) of each sequence; Tensor[n] float32.

        ``encoder_out``: [T', C] (one utterance; every sequence is scored against it) or
        [n, T', C] (sequence i against row i; ``enc_lens`` [n] gives the valid frames,
        default all). Sequences are token ids without sos/eos.
        """
        n = len(token_seqs)
        if n == 0:
            return torch.zeros(0)
        single = encoder_out.dim() == 2
        if single:
            T = encoder_out.shape[0]
            lens_all = torch.full((n,), T, dtype=torch.long, device=encoder_out.device) if enc_lens is None else None
            if enc_lens is not None:
                lens_all = torch.as_tensor(enc_lens, device=encoder_out.device).reshape(-1).expand(n)
        else:
            if encoder_out.shape[0] != n:
                raise ValueError(f"encoder_out has {encoder_out.shape[0]} rows for {n} sequences")
            lens_all = (
                torch.full((n,), encoder_out.shape[1], dtype=torch.long, device=encoder_out.device)
                if enc_lens is None
                else torch.as_tensor(enc_lens, device=encoder_out.device)
            )
        out = []
        for start in range(0, n, batch_size):
            seqs = token_seqs[start : start + batch_size]
            mem = (
                encoder_out[None].expand(len(seqs), -1, -1)
                if single
                else encoder_out[start : start + len(seqs)]
            )
            ys_in, ys_out = _decoder_io(seqs, encoder_out.device)
            logp = self.decoder_log_probs(mem, lens_all[start : start + len(seqs)], ys_in)
            gathered = logp.gather(2, ys_out.clamp(min=0)[:, :, None]).squeeze(2)
            out.append((gathered * (ys_out >= 0)).sum(1))
        return torch.cat(out)

    @torch.no_grad()
    def beam_search(
        self,
        feats: torch.Tensor,
        feat_lens: torch.Tensor,
        beam: int = 8,
        max_len_ratio: float = 1.0,
        nbest: Optional[int] = None,
        ctc_weight: float = 0.0,
    ) -> List[List[Tuple[List[int], float]]]:
        """Batched beam search with the attention decoder (joint with the CTC head when
        ``ctc_weight`` > 0).

        Returns, per utterance, up to ``nbest`` (default ``beam``) hypotheses
        ``(token ids without sos/eos, score)``, best first. The score is the decoder's total
        log-prob incl. eos, or with ``ctc_weight`` = w, ``(1 - w) * that + w * CTC log-prob``
        of the tokens (prefix scores, rescorer.models.ctc_prefix: they stop the decoder from
        ending early or looping). A hypothesis has at most ``max(1, int(max_len_ratio * T'))``
        tokens (letters + boundaries per encoder frame; CTC allows at most 1); hypotheses
        still open at that length are closed with eos.
        """
        enc, enc_lens = self.encode(feats, feat_lens)
        return self.beam_search_encoded(
            enc, enc_lens, beam=beam, max_len_ratio=max_len_ratio, nbest=nbest, ctc_weight=ctc_weight
        )

    @torch.no_grad()
    def beam_search_encoded(
        self,
        enc: torch.Tensor,
        enc_lens: torch.Tensor,
        beam: int = 8,
        max_len_ratio: float = 1.0,
        nbest: Optional[int] = None,
        ctc_weight: float = 0.0,
    ) -> List[List[Tuple[List[int], float]]]:
        if not 0.0 <= ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {ctc_weight}")
        B, T, C = enc.shape
        K = beam
        nbest = nbest or beam
        device = enc.device
        max_lens = [max(1, int(max_len_ratio * int(enc_lens[b]))) for b in range(B)]
        # live hypotheses: B*K rows of equal length (all start with sos); incremental decoding
        # with cached self-attention keys/values and cross-attention keys/values of the encoder
        tokens = torch.full((B * K, 1), SOS_EOS, dtype=torch.long, device=device)
        scores = torch.full((B, K), float("-inf"), device=device)  # joint scores
        scores[:, 0] = 0.0
        prefix = None
        if ctc_weight > 0:
            utt = torch.arange(B, device=device).repeat_interleave(K)
            prefix = CtcPrefixScorer(self.ctc_log_probs(enc), enc_lens)
            ctc_r, ctc_scores = prefix.initial_state(utt)
        memory_kv = [
            (k.repeat_interleave(K, dim=0), v.repeat_interleave(K, dim=0)) for k, v in self.decoder.memory_kv(enc)
        ]
        memory_mask = length_mask(enc_lens.to(device), T).repeat_interleave(K, dim=0)[:, None, None, :]
        cache = None
        finished: List[List[Tuple[List[int], float]]] = [[] for _ in range(B)]
        done = [False] * B
        step = 0
        while not all(done):
            logits, cache = self.decoder.step(tokens[:, -1], step, memory_kv, memory_mask, cache)
            logp = F.log_softmax(logits.float(), dim=-1)  # [B*K, 30]
            if prefix is None:
                joint = scores.view(B * K, 1) + logp
            else:
                empty = torch.full_like(utt, step == 0, dtype=torch.bool)
                psi, new_r, psi_end = prefix.extend(utt, ctc_r, tokens[:, -1], empty)
                ctc_next = torch.cat([psi, psi_end[:, None]], dim=1) - ctc_scores[:, None]  # tokens + eos
                joint = scores.view(B * K, 1) + (1 - ctc_weight) * logp + ctc_weight * ctc_next
                joint = joint.masked_fill(torch.isnan(joint), float("-inf"))  # -inf - -inf on dead rows
            step += 1
            cand = joint.view(B, K * DECODER_VOCAB)
            top_scores, top_idx = cand.topk(min(2 * K, K * DECODER_VOCAB), dim=1)
            top_scores, top_idx = top_scores.cpu(), top_idx.cpu()
            eos_scores = joint[:, SOS_EOS].view(B, K).cpu()
            new_rows, new_tokens, new_scores = [], [], []
            for b in range(B):
                rows_b, toks_b, sc_b = [], [], []
                if not done[b]:
                    last = step >= max_lens[b] + 1  # hypotheses already hold max_len tokens
                    for s, idx in zip(top_scores[b].tolist(), top_idx[b].tolist()):
                        if s == float("-inf"):
                            break
                        k, tok = divmod(idx, DECODER_VOCAB)
                        if tok == SOS_EOS:
                            if not last:
                                finished[b].append((tokens[b * K + k, 1:].tolist(), s))
                        elif not last and len(rows_b) < K:
                            rows_b.append(b * K + k)
                            toks_b.append(tok)
                            sc_b.append(s)
                    if last:  # close every live hypothesis with eos
                        for k in range(K):
                            s = float(eos_scores[b, k])
                            if s != float("-inf"):
                                finished[b].append((tokens[b * K + k, 1:].tolist(), s))
                        rows_b = []
                    finished[b].sort(key=lambda h: -h[1])
                    best_live = max(sc_b) if sc_b else float("-inf")
                    if not rows_b or (len(finished[b]) >= nbest and finished[b][nbest - 1][1] >= best_live):
                        done[b] = True
                        rows_b, toks_b, sc_b = [], [], []
                while len(rows_b) < K:  # pad the beam with dead rows
                    rows_b.append(b * K)
                    toks_b.append(SOS_EOS)
                    sc_b.append(float("-inf"))
                new_rows += rows_b
                new_tokens += toks_b
                new_scores += sc_b
            rows = torch.tensor(new_rows, dtype=torch.long, device=device)
            toks = torch.tensor(new_tokens, dtype=torch.long, device=device)
            tokens = torch.cat([tokens[rows], toks[:, None]], dim=1)
            scores = torch.tensor(new_scores, device=device).view(B, K)
            cache = [(k[rows], v[rows]) for k, v in cache]
            if prefix is not None:
                col = toks.clamp(max=SOS_EOS - 1)  # dead rows carry eos: any column will do
                ctc_r = new_r[rows, :, col]
                ctc_scores = psi[rows, col]
        return [sorted(f, key=lambda h: -h[1])[:nbest] for f in finished]
