"""Stacked layers: one features file of Whisper layers 3-4 serves a model trained on layer 3
(or 4) as a column view; other models, rates or layers are still refused (formats.contract)."""

import pytest
import torch

from rescorer.formats.contract import FeatureSpec, FeatureSpecError, check_spec_or_view, layer_view

L34 = FeatureSpec("whisper-1a5afae0-L3-4", 8, 0.02)
L3 = FeatureSpec("whisper-1a5afae0-L3", 4, 0.02)
L4 = FeatureSpec("whisper-1a5afae0-L4", 4, 0.02)


def test_a_subset_of_the_stacked_layers_is_a_column_view():
    assert layer_view(L34, L3) == [0, 1, 2, 3]
    assert layer_view(L34, L4) == [4, 5, 6, 7]
    assert layer_view(FeatureSpec("whisper-1a5afae0-L4-2-3", 12, 0.02), FeatureSpec("whisper-1a5afae0-L3-4", 8, 0.02)) \
        == [8, 9, 10, 11, 0, 1, 2, 3]
    assert layer_view(L34, L34) is None  # the same frames: no view


@pytest.mark.parametrize("want", [
    FeatureSpec("whisper-deadbeef-L3", 4, 0.02),  # another model
    FeatureSpec("whisper-1a5afae0-L2", 4, 0.02),  # a layer not recorded
    FeatureSpec("whisper-1a5afae0-L3", 4, 0.01),  # another frame rate
    FeatureSpec("whisper-1a5afae0-L3", 5, 0.02),  # another width
    FeatureSpec("fbank", 80, 0.01),
])
def test_anything_else_is_still_refused_by_name(want):
    assert layer_view(L34, want) is None
    with pytest.raises(FeatureSpecError, match="features of another frontend"):
        check_spec_or_view(L34, want, "dev.pt")
    assert layer_view(L3, L34) is None  # a superset cannot be made from a subset


def test_readers_give_the_view_of_a_stacked_file(tmp_path):
    from rescorer.formats.utterances import UtteranceFeatures, read_utterance_features, write_utterance_features
    from rescorer.formats.word_segments import load_word_segments, write_word_segments

    feats = torch.arange(5 * 8, dtype=torch.float32).reshape(5, 8)
    write_utterance_features(tmp_path / "u.pt", UtteranceFeatures(feats, torch.tensor([0, 2, 5]), ["a b", "c"], ["u1", "u2"],
                                                                   ["s1", "s2"], L34))
    u3 = read_utterance_features(tmp_path / "u.pt", expect=L3)
    assert u3.spec == L3 and torch.equal(u3.feats, feats[:, :4]) and torch.equal(u3.by_id()["u2"], feats[2:, :4])
    assert torch.equal(read_utterance_features(tmp_path / "u.pt", expect=L4).feats, feats[:, 4:])
    assert torch.equal(read_utterance_features(tmp_path / "u.pt", expect=L34).feats, feats)
    with pytest.raises(FeatureSpecError, match="u.pt"):
        read_utterance_features(tmp_path / "u.pt", expect=FeatureSpec("whisper-1a5afae0-L2", 4, 0.02))
    write_word_segments(tmp_path / "s.pt", {
        "feats": feats.half(), "offsets": torch.tensor([0, 2, 5]), "word_ids": torch.tensor([0, 1]), "words": ["a", "b"],
        "speaker_ids": torch.tensor([0, 0]), "speakers": ["s1"], "utterance_ids": ["u1", "u1"],
        "feature_spec": L34.to_json()})
    s4 = load_word_segments(str(tmp_path / "s.pt"), expect=L4)
    assert s4.spec == L4 and s4.num_mel_bins == 4 and torch.equal(s4.feats.float(), feats[:, 4:])


def test_embedding_evaluation_reads_the_model_s_layers_of_stacked_segments(tmp_path):
    from rescorer.evaluation.embeddings import load_segments
    from rescorer.formats.word_segments import write_word_segments

    feats = torch.arange(5 * 8, dtype=torch.float32).reshape(5, 8)
    write_word_segments(tmp_path / "s.pt", {
        "feats": feats.half(), "offsets": torch.tensor([0, 2, 5]), "word_ids": torch.tensor([0, 1]), "words": ["a", "b"],
        "speaker_ids": torch.tensor([0, 0]), "speakers": ["s1"], "utterance_ids": ["u1", "u1"],
        "feature_spec": L34.to_json()})
    assert load_segments(str(tmp_path / "s.pt")).feats.shape[1] == 8
    assert torch.equal(load_segments(str(tmp_path / "s.pt"), L3).feats.float(), feats[:, :4])
