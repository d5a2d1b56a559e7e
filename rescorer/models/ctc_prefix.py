"""CTC prefix scores for joint CTC/attention beam search (Watanabe et al., 2017).

The attention decoder alone ends hypotheses too early or loops ("he he he"), because
nothing ties its output to the audio's length. The CTC head does: the prefix score
``log p_ctc(g...)`` of a prefix ``g`` is the log-probability, under the CTC posteriors,
of every label sequence that starts with ``g``; adding a token that the frames do not
support, or ending (eos) before the frames are covered, costs a lot.

For a prefix ``g`` the scorer keeps, per frame t, the log-probabilities that frames
0..t emit exactly ``g`` and end in a non-blank (``r_n``) or a blank (``r_b``). Extending
``g`` by token ``c``::

    phi_t   = r_b[t] (+) (r_n[t] unless c repeats g's last token)
    r_n'[t] = (r_n'[t-1] (+) phi[t-1]) + x_t(c)          r_n'[0] = x_0(c) if g is empty
    r_b'[t] = (r_b'[t-1] (+) r_n'[t-1]) + x_t(blank)
    psi(gc) = (+)_t phi[t-1] + x_t(c)                     (+ x_0(c) if g is empty)

and ending is ``psi(g eos) = r_n[T-1] (+) r_b[T-1]``, the full CTC likelihood of ``g``
(``(+)`` is log-add). Every candidate token of every hypothesis is scored at once
([hypotheses, T, tokens] tensors, one loop over frames). Frames past an utterance's
length get blank log-prob 0 and token log-prob -inf, so padded batches score exactly.
"""

from __future__ import annotations

from typing import Tuple

import torch

NEG_INF = float("-inf")


class CtcPrefixScorer:
    """Prefix scores for hypotheses over one batch of CTC log-probs.

    ``log_probs`` [B, T, V] (V tokens, ``blank`` among them), ``lens`` [B]. A state is the
    pair (``r`` [N, T, 2] with r_n, r_b; ``psi`` [N]) of N hypotheses, each belonging to
    utterance ``utt[i]``.
    """

    def __init__(self, log_probs: torch.Tensor, lens: torch.Tensor, blank: int = 0):
        B, T, V = log_probs.shape
        x = log_probs.float().clone()
        pad = torch.arange(T, device=x.device)[None, :] >= lens.to(x.device)[:, None]  # [B, T]
        x[pad] = NEG_INF
        x[..., blank] = x[..., blank].masked_fill(pad, 0.0)
        self.x, self.lens, self.blank, self.T, self.V = x, lens, blank, T, V

    def initial_state(self, utt: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """State of the empty prefix for hypotheses of utterances ``utt`` [N]."""
        x = self.x[utt]
        r = torch.full((len(utt), self.T, 2), NEG_INF, device=x.device)
        r[:, :, 1] = torch.cumsum(x[:, :, self.blank], dim=1)
        return r, torch.zeros(len(utt), device=x.device)

    def extend(
        self, utt: torch.Tensor, r: torch.Tensor, last: torch.Tensor, empty: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Score every token as the next one of each hypothesis.

        ``utt`` [N] utterance of each hypothesis, ``r`` [N, T, 2] its state, ``last`` [N]
        its last token (any value when ``empty``), ``empty`` [N] bool: the prefix is empty.
        Returns ``(psi [N, V], r_new [N, T, V, 2], psi_end [N])``: the prefix score of the
        hypothesis extended by each token (the blank column is -inf), the states of those
        extensions, and the score of ending the hypothesis here.
        """
        x = self.x[utt]  # [N, T, V]
        N, T, V = x.shape
        r_n, r_b = r[:, :, 0], r[:, :, 1]
        # phi[t, c]: g emitted by frame t, so that c can start at frame t + 1
        phi = r_b[:, :, None].expand(N, T, V).clone()
        repeat = torch.zeros(N, V, dtype=torch.bool, device=x.device)
        repeat[torch.arange(N), last.clamp(0, V - 1)] = ~empty
        phi = torch.where(repeat[:, None, :], phi, torch.logaddexp(phi, r_n[:, :, None]))
        new = torch.full((N, T, V, 2), NEG_INF, device=x.device)
        start = torch.where(empty[:, None], x[:, 0], torch.full_like(x[:, 0], NEG_INF))
        new[:, 0, :, 0] = start
        psi = start.clone()
        for t in range(1, T):
            entered = phi[:, t - 1] + x[:, t]  # c starts at frame t
            new[:, t, :, 0] = torch.logaddexp(new[:, t - 1, :, 0] + x[:, t], entered)
            new[:, t, :, 1] = torch.logaddexp(new[:, t - 1, :, 1], new[:, t - 1, :, 0]) + x[:, t, self.blank, None]
            psi = torch.logaddexp(psi, entered)
        psi[:, self.blank] = NEG_INF
        psi_end = torch.logaddexp(r_n[:, -1], r_b[:, -1])
        return psi, new, psi_end


def ctc_prefix_score_reference(log_probs: torch.Tensor, prefix, blank: int = 0) -> float:
    """log-prob under CTC posteriors ``log_probs`` [T, V] of all label sequences starting
    with ``prefix`` (a plain float64 loop over frames; for tests of CtcPrefixScorer)."""
    import math

    lp = log_probs.double().tolist()
    T = len(lp)

    def lse(a: float, b: float) -> float:
        if a == NEG_INF:
            return b
        if b == NEG_INF:
            return a
        m = max(a, b)
        return m + math.log(math.exp(a - m) + math.exp(b - m))

    # alpha over the extended label sequence (blank-separated) of the prefix; the prefix
    # score sums, over t, the mass of paths that emit the prefix's last label first at t
    if not prefix:
        return 0.0
    ext = [blank]
    for c in prefix:
        ext += [c, blank]
    S = len(ext)
    alpha = [NEG_INF] * S
    alpha[0] = lp[0][blank]
    alpha[1] = lp[0][ext[1]]
    total = alpha[S - 2] if S - 2 == 1 else NEG_INF  # prefix of one label, first emitted at 0
    for t in range(1, T):
        prev = alpha
        alpha = [NEG_INF] * S
        for s in range(S):
            a = prev[s]
            if s >= 1:
                a = lse(a, prev[s - 1])
            if s >= 2 and ext[s] != blank and ext[s] != ext[s - 2]:
                a = lse(a, prev[s - 2])
            alpha[s] = a + lp[t][ext[s]]
        # first emission of the last label at t: arrive at s = S-2 from s-1 or s-2 (not from itself)
        s = S - 2
        entered = prev[s - 1]
        if s >= 2 and ext[s] != ext[s - 2]:
            entered = lse(entered, prev[s - 2])
        total = lse(total, entered + lp[t][ext[s]])
    return total
