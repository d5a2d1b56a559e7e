import numpy as np
import pytest

from rescorer.corpora.errors import CorpusError
from tests.conftest import needs_lhotse

pytestmark = needs_lhotse


def _tiny_librispeech(tmp_path, bad_alignment=False):
    """dev-clean with one chapter of two utterances, plus alignments in the public format."""
    import soundfile as sf

    root = tmp_path / "LibriSpeech"
    chap = root / "dev-clean" / "84" / "121123"
    chap.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines, ali = [], []
    for i, text in enumerate(["GO DO YOU HEAR", "BUT IN LESS THAN FIVE MINUTES"]):
        uid = f"84-121123-{i:04d}"
        sf.write(str(chap / f"{uid}.flac"), (0.05 * rng.standard_normal(16000 * 3)).astype(np.float32), 16000)
        lines.append(f"{uid} {text}")
        words = text.split()
        if bad_alignment and i == 1:
            words[2] = "MORE"
        # silence items are empty words, as in the public alignments
        toks = [""] + words + [""]
        ends = [0.3 + 0.3 * k for k in range(len(toks))]
        ali.append(f'{uid} ",{",".join(words)}," "{",".join(f"{e:.3f}" for e in ends)}"')
    (chap / "84-121123.trans.txt").write_text("\n".join(lines) + "\n")
    (chap / "84-121123.alignment.txt").write_text("\n".join(ali) + "\n")
    return root


def test_librispeech_with_word_alignments(tmp_path):
    from rescorer.corpora.librispeech import prepare_librispeech

    m = prepare_librispeech(_tiny_librispeech(tmp_path), output_dir=tmp_path / "out")
    cuts = m["dev-clean"]["cuts"]
    assert len(cuts) == 2
    c = cuts[0]
    sup = c.supervisions[0]
    assert sup.text == "go do you hear" and sup.speaker == "ls-84"
    ali = sup.alignment["word"]
    assert [a.symbol for a in ali] == ["go", "do", "you", "hear"]
    assert ali[0].start == pytest.approx(0.3) and ali[0].end == pytest.approx(0.6)
    assert (tmp_path / "out" / "manifests" / "librispeech_cuts_dev-clean.jsonl.gz").exists()


def test_librispeech_alignment_mismatch_is_named(tmp_path):
    from rescorer.corpora.librispeech import prepare_librispeech

    with pytest.raises(CorpusError, match=r"utterance 84-121123-0001: alignment words .* do not match"):
        prepare_librispeech(_tiny_librispeech(tmp_path, bad_alignment=True))


def _add_part(root, part, spk, chapter, texts):
    import soundfile as sf

    chap = root / part / str(spk) / str(chapter)
    chap.mkdir(parents=True)
    rng = np.random.default_rng(spk)
    lines = []
    for i, text in enumerate(texts):
        uid = f"{spk}-{chapter}-{i:04d}"
        sf.write(str(chap / f"{uid}.flac"), (0.05 * rng.standard_normal(16000)).astype(np.float32), 16000)
        lines.append(f"{uid} {text}")
    (chap / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")


def test_parts_are_merged_into_the_recipe_splits(tmp_path):
    from rescorer.corpora.librispeech import prepare_librispeech

    root = _tiny_librispeech(tmp_path)  # dev-clean, aligned
    _add_part(root, "dev-other", 700, 1, ["IT'S A TEST", "ONE MORE"])  # no alignments
    _add_part(root, "test-clean", 800, 2, ["THE END"])
    m = prepare_librispeech(root, output_dir=tmp_path / "out",
                            splits={"train": ["dev-clean", "dev-other"], "test": "test-clean"})
    assert sorted(k for k in m if k != "meta") == ["test", "train"]
    assert len(m["train"]["cuts"]) == 4 and len(m["test"]["cuts"]) == 1
    assert m["meta"]["unaligned_utterances"] == {"train": 2, "test": 1}
    texts = sorted(s.text for s in m["train"]["supervisions"])
    assert "it's a test" in texts
    man = tmp_path / "out" / "manifests"
    assert (man / "librispeech_cuts_train.jsonl.gz").exists() and (man / "librispeech_supervisions_test.jsonl.gz").exists()
    assert not (man / "librispeech_cuts_dev-clean.jsonl.gz").exists()


def test_a_missing_part_is_named(tmp_path):
    from rescorer.corpora.librispeech import prepare_librispeech

    with pytest.raises(CorpusError, match=r"part\(s\) train-clean-100 not found in .* \(found: dev-clean\)"):
        prepare_librispeech(_tiny_librispeech(tmp_path), splits={"train": ["train-clean-100"], "dev": ["dev-clean"]})
