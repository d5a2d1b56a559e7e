"""CTC prefix scores (joint CTC/attention search): against a float64 loop and torch's CTC loss."""

import pytest
import torch

from rescorer.models.ctc_prefix import CtcPrefixScorer, ctc_prefix_score_reference

pytestmark = pytest.mark.usefixtures("one_thread")


def _log_probs(B, T, V, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(2.0 * torch.randn(B, T, V, generator=g), dim=-1)


def _score_prefixes(scorer, utt, prefixes):
    """Extend each prefix token by token through the batched scorer; its psi and end score."""
    r, psi_prev = scorer.initial_state(utt)
    psis = [0.0] * len(prefixes)
    ends = None
    for step in range(max(len(p) for p in prefixes) + 1):
        last = torch.tensor([p[step - 1] if step > 0 and step <= len(p) else 0 for p in prefixes])
        empty = torch.tensor([step == 0] * len(prefixes))
        psi, new_r, psi_end = scorer.extend(utt, r, last, empty)
        if ends is None:
            ends = [None] * len(prefixes)
        for i, p in enumerate(prefixes):
            if step == len(p):
                ends[i] = float(psi_end[i])
        if step == max(len(p) for p in prefixes):
            break
        col = torch.tensor([p[step] if step < len(p) else 1 for p in prefixes])
        for i, p in enumerate(prefixes):
            if step < len(p):
                psis[i] = float(psi[i, col[i]])
        r = new_r[torch.arange(len(prefixes)), :, col]
    return psis, ends


def test_prefix_scores_match_the_reference_and_end_scores_the_ctc_loss():
    V, T = 6, 12
    lp = _log_probs(2, T, V, seed=1)
    lens = torch.tensor([T, 9])
    scorer = CtcPrefixScorer(lp, lens)
    prefixes = [[1], [2, 2], [3, 1, 3], [4, 5, 4, 5], [1, 2, 3], [5, 5, 5]]
    for b in range(2):
        utt = torch.full((len(prefixes),), b)
        psis, ends = _score_prefixes(scorer, utt, prefixes)
        for p, psi, end in zip(prefixes, psis, ends):
            ref = ctc_prefix_score_reference(lp[b, : int(lens[b])], p)
            assert psi == pytest.approx(ref, abs=1e-4), (b, p)
            # ending: the full CTC log-likelihood of the sequence (padding frames ignored)
            nll = torch.nn.functional.ctc_loss(
                lp[b, : int(lens[b])].double()[:, None], torch.tensor([p]), torch.tensor([int(lens[b])]),
                torch.tensor([len(p)]), reduction="sum", zero_infinity=False,
            )
            assert end == pytest.approx(-float(nll), abs=1e-4), (b, p)


def test_impossible_prefixes_and_blank_score_minus_infinity():
    lp = _log_probs(1, 3, 5, seed=2)
    scorer = CtcPrefixScorer(lp, torch.tensor([3]))
    utt = torch.zeros(1, dtype=torch.long)
    psis, ends = _score_prefixes(scorer, utt, [[1, 1, 1]])  # needs 5 frames (blanks between repeats)
    assert psis[0] == float("-inf") and ends[0] == float("-inf")
    r, _ = scorer.initial_state(utt)
    psi, _, _ = scorer.extend(utt, r, torch.zeros(1, dtype=torch.long), torch.ones(1, dtype=torch.bool))
    assert psi[0, 0] == float("-inf")  # blank is never a token
    # the empty prefix ends with the all-blank path
    _, _, end = scorer.extend(utt, r, torch.zeros(1, dtype=torch.long), torch.ones(1, dtype=torch.bool))
    assert float(end[0]) == pytest.approx(float(lp[0, :, 0].sum()), abs=1e-5)
