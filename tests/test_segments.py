import json
import subprocess
import sys

import numpy as np
import pytest

from rescorer.segments import FRAME_SHIFT, SEGMENTS_FORMAT, word_frame_span


def test_word_frame_span_rounding_and_clipping():
    assert word_frame_span(0.123, 0.2, 1000) == (12, 32)
    assert word_frame_span(9.99, 0.5, 1000) == (999, 1000)


@pytest.fixture(scope="module")
def featurized(tiny_synthetic, tmp_path_factory):
    from lhotse import CutSet

    from rescorer.segments import compute_features

    out, m = tiny_synthetic
    work = tmp_path_factory.mktemp("feats")
    return compute_features(m["dev"]["cuts"], work / "fbank", work / "dev_fbank.jsonl.gz", num_jobs=1), work


def test_segments_match_alignment_durations(featurized):
    from rescorer.segments import extract_word_segments

    cuts, _ = featurized
    segs = extract_word_segments(cuts, progress=False)
    n_ali = sum(len(c.supervisions[0].alignment["word"]) for c in cuts)
    assert len(segs) + segs.stats.segments_dropped == n_ali
    by_cut = {c.id: c for c in cuts}
    for i in range(0, len(segs), 7):
        c = by_cut[segs.utterance_ids[i]]
        item = next(a for a in c.supervisions[0].alignment["word"] if abs(a.start - segs.starts[i]) < 1e-3)
        assert item.symbol == segs.words[i]
        assert abs(segs.segment(i).shape[0] * FRAME_SHIFT - item.duration) <= FRAME_SHIFT + 1e-6
        full = c.load_features()
        a = int(round(item.start / FRAME_SHIFT))
        np.testing.assert_allclose(segs.segment(i).astype(np.float32), full[a : a + segs.segment(i).shape[0]], atol=2e-2, rtol=1e-2)


def test_long_and_short_words_are_dropped_and_counted(featurized):
    from rescorer.segments import extract_word_segments

    cuts, _ = featurized
    full = extract_word_segments(cuts, progress=False)
    lens = np.diff(full.offsets)
    strict = extract_word_segments(cuts, max_frames=int(np.percentile(lens, 75)), min_frames=int(np.percentile(lens, 25)), progress=False)
    assert strict.stats.too_long > 0 and strict.stats.too_short > 0
    assert len(strict) + strict.stats.segments_dropped == len(full) + full.stats.segments_dropped
    assert np.diff(strict.offsets).max() <= np.percentile(lens, 75)


def test_export_loads_with_plain_torch_and_without_lhotse(featurized, tmp_path):
    from rescorer.formats.word_segments import read_word_segments
    from rescorer.segments import export_word_segments, extract_word_segments

    cuts, _ = featurized
    segs = extract_word_segments(cuts, progress=False)
    path = export_word_segments(segs, tmp_path / "dev.pt")
    obj = read_word_segments(path)
    assert obj["format"] == SEGMENTS_FORMAT
    assert obj["feats"].shape[0] == obj["offsets"][-1].item()
    assert [obj["words"][i] for i in obj["word_ids"].tolist()] == segs.words
    code = (
        "import sys, torch; sys.modules['lhotse'] = None; sys.modules['k2'] = None\n"
        "from rescorer.formats.word_segments import read_word_segments\n"
        f"o = read_word_segments({str(path)!r}); print(o['feats'].shape[0], len(o['word_ids']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[1]) == len(segs)


def test_wrong_file_is_refused(tmp_path):
    import torch

    from rescorer.formats.word_segments import read_word_segments

    torch.save({"feats": torch.zeros(2, 80)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a rescorer.word_segments file"):
        read_word_segments(tmp_path / "x.pt")


def test_corpus_splits_ignore_feature_manifests_of_any_frontend(tmp_path):
    from rescorer.corpora.report import corpus_splits

    (tmp_path / "manifests").mkdir()
    for name in ("train", "dev", "train_fbank", "dev_whisper", "train_whisper"):
        (tmp_path / "manifests" / f"so_cuts_{name}.jsonl.gz").write_bytes(b"")
    assert corpus_splits(tmp_path, "so") == ["train", "dev"]
