"""Attention n-best rescoring of a (rescored) word lattice, with a stub attention model."""

import pytest
import torch

from tests.conftest import needs_k2


class StubAttention(torch.nn.Module):
    """Scores a token sequence by how many of its tokens match a target sentence's."""

    def __init__(self, target_words):
        super().__init__()
        from rescorer.tokens import words_to_token_ids

        self.target = words_to_token_ids(target_words)
        self.seen = []

    def encode(self, x, lens):
        return x, lens

    def score_token_sequences(self, enc, seqs):
        self.seen += [list(s) for s in seqs]
        return torch.tensor([-float(sum(a != b for a, b in zip(s, self.target)) + abs(len(s) - len(self.target))) for s in seqs])


def test_pick_best_trades_lattice_score_against_attention():
    from rescorer.lattice.word_lattice import Hypothesis, WordSpan
    from rescorer.second_pass import pick_best

    h1 = Hypothesis([WordSpan("cat", 0, 1)], score=-1.0, am_score=-1.0, lm_score=0.0)
    h2 = Hypothesis([WordSpan("cap", 0, 1)], score=-2.0, am_score=-2.0, lm_score=0.0)
    att = torch.tensor([-5.0, -1.0])
    assert pick_best([h1, h2], att, 0.0) == ["cat"]
    assert pick_best([h1, h2], att, 1.0) == ["cap"]  # -1-5 < -2-1
    assert pick_best([], torch.zeros(0), 1.0) == []
    with pytest.raises(ValueError, match="2 hypotheses"):
        pick_best([h1, h2], torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        pick_best([h1, h2], torch.tensor([float("nan"), 0.0]), 1.0)


def test_scorer_skips_unk_and_rejects_ctc_only_models():
    from rescorer.second_pass import AttentionScorer
    from rescorer.tokens import words_to_token_ids

    model = StubAttention(["the", "cat"])
    s = AttentionScorer(model, device="cpu")
    att = s.score(torch.zeros(5, 4), [["the", "cat"], ["the", "<unk>", "cat"], ["a", "cat"]])
    assert att.tolist()[0] == 0.0 and att.tolist()[1] == 0.0 and att.tolist()[2] < 0
    assert model.seen[1] == words_to_token_ids(["the", "cat"])
    with pytest.raises(ValueError, match="CTC-only"):
        AttentionScorer(torch.nn.Linear(2, 2), device="cpu")


@needs_k2
@pytest.mark.lattice
def test_attention_picks_the_sentence_it_prefers_from_the_lattice_nbest():
    from rescorer.lattice.word_lattice import build_word_lattice, make_word_table
    from rescorer.second_pass import AttentionScorer, attention_candidates, pick_best

    # two competing words for the second span; the lattice prefers "cap"
    arcs = [(0, 1, "the", 0, 10, -1.0, -1.0), (1, 2, "cap", 10, 20, -1.0, -1.0), (1, 2, "cat", 10, 20, -1.5, -1.0)]
    lat = build_word_lattice(arcs, make_word_table(["the", "cat", "cap"]), frame_shift=0.04, final_states={2: (0.0, 0.0)})
    s = AttentionScorer(StubAttention(["the", "cat"]), device="cpu")
    hyps, att = attention_candidates(s, lat, torch.zeros(20, 80), n=5)
    assert [[w.word for w in h.words] for h in hyps] == [["the", "cap"], ["the", "cat"]]
    assert att.tolist() == s.score(s.encode(torch.zeros(20, 80)), [["the", "cap"], ["the", "cat"]]).tolist()
    assert att[1] > att[0]  # the stub prefers its own sentence
    assert pick_best(hyps, att, 0.0) == ["the", "cap"]
    assert pick_best(hyps, att, 1.0) == ["the", "cat"]


def test_the_scorer_reads_its_own_frontend_s_frames():
    from rescorer.formats.contract import FBANK, FeatureSpec
    from rescorer.models.attention import AttentionModel
    from rescorer.second_pass import AttentionScorer

    stacked = FeatureSpec("whisper-1a5afae0-L3-4", 16, 0.02)
    model = AttentionModel(num_mel_bins=16, d_model=16, num_layers=1, num_heads=2, ffn_dim=32, decoder_layers=1,
                           decoder_ffn_dim=32, subsampling="conv1d_x2", feature_spec=stacked.to_json())
    assert AttentionScorer(model, device="cpu").feature_spec == stacked  # tune reads these frames for it
    assert AttentionScorer(StubAttention(["the"]), device="cpu").feature_spec == FBANK
