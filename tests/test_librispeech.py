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
