import shutil
from pathlib import Path

import numpy as np
import pytest

from rescorer.corpora.errors import CorpusError
from tests.conftest import SO762, needs_lhotse

pytestmark = needs_lhotse


def _fixture_corpus(tmp_path: Path, n=6, speakers=3) -> Path:
    """A tiny Kaldi-style corpus in speechocean762's layout, with noise as audio."""
    import soundfile as sf

    root = tmp_path / "so"
    (root / "train").mkdir(parents=True)
    wav, text, u2s, ctm = [], [], [], []
    rng = np.random.default_rng(0)
    for i in range(n):
        spk = f"{i % speakers + 1:04d}"
        utt = f"{spk}{i:05d}"
        path = root / "audio" / f"SPEAKER{spk}" / f"{utt}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
        wav.append(f"{utt}\taudio/SPEAKER{spk}/{utt}.flac")
        text.append(f"{utt}\tWE CALL IT BEAR")
        u2s.append(f"{utt} {spk}")
        ctm += [f"{utt} 1 {0.1 + 0.2 * k:.2f} 0.15 {w}" for k, w in enumerate("WE CALL IT BEAR".split())]
    for name, lines in (("wav.scp", wav), ("text", text), ("utt2spk", u2s), ("words.ctm", ctm)):
        (root / "train" / name).write_text("\n".join(lines) + "\n")
    (root / "train" / "spk2gender").write_text("".join(f"{s + 1:04d} m\n" for s in range(speakers)))
    return root


def _edit(root: Path, name: str, old: str, new: str) -> None:
    p = root / "train" / name
    p.write_text(p.read_text().replace(old, new, 1))


@pytest.mark.skipif(not SO762.is_dir(), reason="shared speechocean762 data not present")
def test_real_corpus_speaker_disjoint_and_unaligned_counted(tmp_path):
    from lhotse import validate

    from rescorer.corpora.speechocean762 import prepare_speechocean762

    m = prepare_speechocean762(SO762, tmp_path)
    train, dev = m["train"]["cuts"], m["dev"]["cuts"]
    assert len(train) + len(dev) == 2500
    spk_t = {c.supervisions[0].speaker for c in train}
    spk_d = {c.supervisions[0].speaker for c in dev}
    assert not spk_t & spk_d and len(spk_t) + len(spk_d) == 125
    assert m["meta"]["unaligned_utterances"] == 50
    validate(dev, read_data=False)
    aligned = [c for c in dev if c.supervisions[0].alignment]
    for c in aligned[:50]:
        ali = c.supervisions[0].alignment["word"]
        assert [a.symbol for a in ali] == c.supervisions[0].text.split()
        assert ali[-1].end <= c.duration + 0.05
    # seeded: the same seed gives the same split, another seed another one
    m2 = prepare_speechocean762(SO762, None, seed=0, check_audio=True)
    assert [c.id for c in m2["dev"]["cuts"]] == [c.id for c in dev]


def test_fixture_prepares(tmp_path):
    from rescorer.corpora.speechocean762 import prepare_speechocean762

    m = prepare_speechocean762(_fixture_corpus(tmp_path), tmp_path / "out", dev_speaker_fraction=0.34)
    assert len(m["train"]["cuts"]) == 4 and len(m["dev"]["cuts"]) == 2
    assert (tmp_path / "out" / "manifests" / "speechocean762_cuts_dev.jsonl.gz").exists()


@pytest.mark.parametrize(
    "breakage, match",
    [
        (lambda r: next((r / "audio").rglob("*00002.flac")).unlink(), r"utterance 000300002: audio file .*00002.flac is missing"),
        (lambda r: next((r / "audio").rglob("*00001.flac")).write_bytes(b"not audio at all"), r"utterance 000200001: cannot read audio file .*00001.flac"),
        (lambda r: _edit(r, "text", "000100000\tWE CALL IT BEAR", "000100000\t"), r"utterance 000100000: empty or missing transcript"),
        (lambda r: _edit(r, "text", "000100003\tWE CALL IT BEAR", "000100003\tWE CALL 1T BEAR"), r"utterance 000100003 in .*text: token '1T'"),
        (lambda r: _edit(r, "words.ctm", "000200004 1 0.30 0.15 CALL", "000200004 1 0.30 0.15 FALL"), r"utterance 000200004: words.ctm words .*FALL.* do not match"),
        (lambda r: _edit(r, "words.ctm", "000300005 1 0.50 0.15 IT", "000300005 1 0.50 abc IT"), r"words.ctm:\d+: start/duration are not numbers"),
    ],
    ids=["missing-audio", "unreadable-audio", "empty-text", "non-letter-token", "alignment-mismatch", "malformed-ctm"],
)
def test_bad_input_names_file_and_utterance(tmp_path, breakage, match):
    from rescorer.corpora.speechocean762 import prepare_speechocean762

    root = _fixture_corpus(tmp_path)
    breakage(root)
    with pytest.raises(CorpusError, match=match):
        prepare_speechocean762(root)
