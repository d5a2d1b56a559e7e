"""ASR data (export, checks, batching, SpecAugment) and training (overfit, runs, resume, DDP)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rescorer.formats.contract import FBANK
from rescorer.formats.utterances import read_utterance_features
from rescorer.models.ctc import ENCODER_PRESETS, CtcModel, ctc_greedy_decode, ctc_loss
from rescorer.tokens import TokenError, pad_token_ids, token_ids_to_words
from rescorer.models.checkpoint import checkpoint_path, load_asr_model
from rescorer.training.asr_data import (
    FORMAT,
    FrameBatchSampler,
    export_utterances,
    load_utterances,
    spec_augment,
    utterances_from_dict,
)
from rescorer.training.train_asr import AsrTrainConfig, evaluate, parse_args, train
from conftest import lhotse_or_k2_imported_by, run_torchrun
from synthetic_data import make_synthetic_utterances, random_sentences, write_synthetic_utterances

VOCAB = ["cat", "dog", "bird", "fish", "tree", "house", "red", "blue", "green", "big", "small", "runs", "it's"]
TINY = dict(size="tiny", batch_frames=2000, lr=5e-3, progress=False, device="cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("utterances")
    write_synthetic_utterances(d / "train.pt", random_sentences(64, 1, VOCAB), seed=1)
    write_synthetic_utterances(d / "dev.pt", random_sentences(16, 2, VOCAB), seed=2)
    return d


# ---------------------------------------------------------------- export and checks


def _cut(cid, text, frames, speaker="spk"):
    feats = np.random.default_rng(0).standard_normal((frames, 80)).astype(np.float32)
    return SimpleNamespace(
        id=cid, has_features=True, supervisions=[SimpleNamespace(text=text, speaker=speaker)],
        load_features=lambda: feats,
    )  # fmt: skip


def test_export_roundtrip_normalises_text(tmp_path):
    cuts = [_cut("u1", "Hello, World!", 30, "s1"), _cut("u2", "It\u2019s a Caf\u00e9-bar", 12, "s2")]
    path = export_utterances(cuts, tmp_path / "x.pt", progress=False)
    assert torch.load(path, weights_only=True)["format"] == FORMAT  # plain tensors + JSON text
    raw = read_utterance_features(path)
    assert raw.feats.dtype == torch.float16 and raw.spec == FBANK and raw.spec.frame_shift == 0.01
    assert raw.offsets.tolist() == [0, 30, 42] and raw.speakers == ["s1", "s2"]
    assert raw.texts == ["hello world", "it's a cafe bar"]
    data = load_utterances(path)
    assert len(data) == 2 and data.utterance_id(1) == "u2"
    assert token_ids_to_words(data.token_ids[1]) == ["it's", "a", "cafe", "bar"]
    assert torch.allclose(data.features(0).float(), torch.from_numpy(cuts[0].load_features()).half().float())


def test_export_errors_name_the_utterance(tmp_path):
    with pytest.raises(TokenError, match=r"utterance u7.*'3'"):
        export_utterances([_cut("u1", "fine", 20), _cut("u7", "route 3 north", 20)], tmp_path / "a.pt", progress=False)
    with pytest.raises(TokenError, match=r"utterance u8.*'\$'"):
        export_utterances([_cut("u8", "pay $ now", 20)], tmp_path / "b.pt", progress=False)
    with pytest.raises(ValueError, match="utterance u9: empty audio"):
        export_utterances([_cut("u9", "hello", 0)], tmp_path / "c.pt", progress=False)
    assert not (tmp_path / "a.pt").exists()


def test_load_checks_name_the_utterance():
    good = make_synthetic_utterances(["cat dog", "red fish", "big tree"], seed=0)
    n = good["offsets"].tolist()
    # empty audio: utterance 1 has 0 frames
    empty = dict(good, offsets=torch.tensor([0, n[1], n[1], n[3]]))
    with pytest.raises(ValueError, match="utt0001 has empty audio"):
        utterances_from_dict(empty)
    with pytest.raises(TokenError, match=r"utt0002.*'#'"):
        utterances_from_dict(dict(good, texts=["cat dog", "red fish", "big #tree"]))
    with pytest.raises(ValueError, match="format"):
        utterances_from_dict(dict(good, format="rescorer.word_segments/1"))
    short = dict(good, offsets=torch.tensor([0, 5, n[2], n[3]]))
    with pytest.raises(ValueError, match="utt0000 has 5 frames"):
        utterances_from_dict(short)
    # too long: skipped and counted, or refused
    longest = max(b - a for a, b in zip(n, n[1:]))
    data = utterances_from_dict(good, max_frames=longest - 1)
    assert len(data) + len(data.skipped_too_long) == 3 and len(data.skipped_too_long) >= 1
    with pytest.raises(ValueError, match="more than max_frames"):
        utterances_from_dict(good, max_frames=longest - 1, too_long="error")


def test_batch_and_feature_stats(data_dir):
    data = load_utterances(data_dir / "train.pt")
    feats, lens, toks = data.batch([3, 0, 9])
    for row, i in enumerate([3, 0, 9]):
        n = int(lens[row])
        assert torch.equal(feats[row, :n], data.features(i).float())
        assert float(feats[row, n:].abs().sum()) == 0.0
        assert token_ids_to_words(toks[row]) == data.text(i).split()
    mean, std = data.feature_stats()
    assert torch.allclose(mean.double(), data.feats.double().mean(0), atol=1e-4)
    assert torch.allclose(std.double(), data.feats.double().std(0, unbiased=False), atol=1e-3)
    padded, plens = pad_token_ids([[3, 4], [5]])
    assert padded.tolist() == [[3, 4], [5, 0]] and plens.tolist() == [2, 1]


def test_frame_sampler_covers_everything_respects_budget_and_shards():
    lengths = torch.randint(10, 300, (157,), generator=torch.Generator().manual_seed(0))
    s = FrameBatchSampler(lengths, batch_frames=1000, seed=3, pool_size=40)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(157))
    assert all(len(b) * int(lengths[b].max()) <= 1000 for b in batches)
    again = FrameBatchSampler(lengths, batch_frames=1000, seed=3, pool_size=40)
    assert list(again) == batches
    again.set_epoch(1)
    assert again.batches() != batches
    shards = [FrameBatchSampler(lengths, 1000, seed=3, pool_size=40, num_replicas=2, rank=r) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1])
    assert {i for sh in shards for b in sh for i in b} == set(range(157))
    # resume mid-epoch
    it = iter(s)
    s.set_epoch(2)
    it = iter(s)
    first = [next(it) for _ in range(3)]
    state = s.state_dict()
    rest = list(it)
    t = FrameBatchSampler(lengths, batch_frames=1000, seed=3, pool_size=40)
    t.load_state_dict(state)
    assert list(t) == rest and first + rest == s.batches()


def test_spec_augment_masks_inside_utterances_only():
    feats = torch.randn(3, 400, 80)
    lens = torch.tensor([400, 250, 100])
    feats[1, 250:] = 0
    feats[2, 100:] = 0
    fill = torch.full((80,), 7.0)
    a = spec_augment(feats, lens, torch.Generator().manual_seed(1), fill=fill)
    b = spec_augment(feats, lens, torch.Generator().manual_seed(1), fill=fill)
    assert torch.equal(a, b) and not torch.equal(a, feats)
    changed = a != feats
    assert bool((a[changed] == 7.0).all())
    # frames past the end are only touched by frequency masks (whole bins), never time masks
    for i, n in enumerate(lens.tolist()):
        pad = changed[i, n:]
        if pad.numel():
            assert bool((pad == pad[:1]).all())
    assert float(changed.float().mean()) < 0.5


# ---------------------------------------------------------------- learning


def test_tiny_ctc_model_overfits_four_utterances():
    texts = ["cat dog", "red fish runs", "big green tree", "it's a house"]
    data = utterances_from_dict(make_synthetic_utterances(texts, seed=5))
    feats, lens, toks = data.batch(range(4))
    targets, target_lens = pad_token_ids(toks)
    torch.manual_seed(0)
    model = CtcModel(**{**ENCODER_PRESETS["tiny"], "d_model": 48, "ffn_dim": 96, "num_layers": 2})
    model.set_feature_stats(*data.feature_stats())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(100):
        log_probs, out_lens = model(feats, lens)
        loss = ctc_loss(log_probs, out_lens, targets, target_lens) / int(target_lens.sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.1 * losses[0], losses[::25]
    model.eval()
    with torch.no_grad():
        hyps = ctc_greedy_decode(*model(feats, lens))
    assert [" ".join(token_ids_to_words(h)) for h in hyps] == texts


def test_ctc_training_run_learns_and_best_reproduces(data_dir, tmp_path):
    out = tmp_path / "ctc"
    cfg = AsrTrainConfig(model="ctc", train=str(data_dir / "train.pt"), dev=str(data_dir / "dev.pt"), out=str(out),
                         epochs=10, spec_augment=False, **{**TINY, "lr": 1e-2})  # fmt: skip
    assert train(cfg) == out
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, 11))
    assert log[-1]["loss"] < 0.6 * log[0]["loss"]
    assert min(r["dev_wer"] for r in log) < 0.9 and min(r["dev_cer"] for r in log) < 0.5
    assert all(r["frames_per_s"] > 0 for r in log)
    assert {p.name for p in out.iterdir()} == {"best.pt", "best_loss.pt", "last.pt", "log.jsonl", "config.json"}
    model, config = load_asr_model(out)
    assert config["model"] == "ctc" and not model.training
    dev = load_utterances(data_dir / "dev.pt")
    best = torch.load(out / "best.pt")
    again = evaluate(model, dev)
    assert again["dev_cer"] == best["dev"]["dev_cer"] == min(r["dev_cer"] for r in log)
    assert again["dev_wer"] == best["dev"]["dev_wer"]
    mean, _ = load_utterances(data_dir / "train.pt").feature_stats()
    assert torch.allclose(model.encoder.feat_mean, mean)
    # beside best.pt (by CER), the checkpoint of lowest dev loss: the first epoch that reached it
    losses = [r["dev_loss"] for r in log]
    kept = torch.load(out / "best_loss.pt")
    assert kept["epoch"] == losses.index(min(losses)) + 1 and kept["dev"]["dev_loss"] == min(losses)
    scorer, _ = load_asr_model(out, which="best_loss")
    assert evaluate(scorer, dev)["dev_loss"] == pytest.approx(min(losses), rel=1e-6)
    assert checkpoint_path(out, "best_loss") == out / "best_loss.pt"


def test_best_loss_checkpoint_of_a_run_selected_by_loss_is_its_best(data_dir, tmp_path):
    out = train(AsrTrainConfig(model="ctc", train=str(data_dir / "train.pt"), dev=str(data_dir / "dev.pt"),
                               out=str(tmp_path / "ctc"), epochs=2, select_by="loss", **TINY))
    assert not (out / "best_loss.pt").exists()  # best.pt is that checkpoint already
    assert checkpoint_path(out, "best_loss") == out / "best.pt"
    (out / "config.json").write_text(json.dumps({"select_by": "cer"}))
    with pytest.raises(FileNotFoundError, match="lowest dev loss"):  # e.g. a run from before best_loss.pt was kept
        checkpoint_path(out, "best_loss")
    with pytest.raises(ValueError, match="best_loss"):
        checkpoint_path(out, "newest")


def test_a_file_that_is_not_a_checkpoint_is_refused_by_name(data_dir, tmp_path):
    from types import SimpleNamespace

    from rescorer.models.checkpoint import CheckpointError
    from rescorer.stages import StageError
    from rescorer.stages.rescore import _ctc_fusion

    junk = tmp_path / "notes.txt"
    junk.write_text("not a model\n")
    with pytest.raises(CheckpointError, match="notes.txt"):
        load_asr_model(junk)
    out = train(AsrTrainConfig(model="ctc", train=str(data_dir / "train.pt"), dev=str(data_dir / "dev.pt"),
                               out=str(tmp_path / "ctc"), epochs=1, **TINY))
    cut = tmp_path / "cut.pt"
    cut.write_bytes((out / "best_loss.pt").read_bytes()[:1000])  # an interrupted copy
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_asr_model(cut)
    rescorer = SimpleNamespace(config=SimpleNamespace(ctc_norm="token"))
    for bad in (junk, cut):  # rescorer rescore --ctc-model-dir FILE: a stage error, not a traceback
        with pytest.raises(StageError, match=bad.name):
            _ctc_fusion(rescorer, tmp_path, str(bad), None, None, "rescorer_ctc_fusion.json", "cpu", False)


def test_the_fusion_refuses_a_ctc_checkpoint_other_than_the_one_it_was_tuned_with(data_dir, tmp_path):
    """A fusion config records its CTC checkpoint's digest (rescorer tune --save-config); rescorer
    rescore with the run's best.pt for scales tuned on its best_loss.pt is refused by name."""
    from types import SimpleNamespace

    from rescorer.models.checkpoint import checkpoint_sha256
    from rescorer.stages import StageError
    from rescorer.stages.rescore import _check_tuned_checkpoint, _ctc_fusion

    out = train(AsrTrainConfig(model="ctc", train=str(data_dir / "train.pt"), dev=str(data_dir / "dev.pt"),
                               out=str(tmp_path / "ctc"), epochs=3, **TINY))
    model_dir = tmp_path / "embedder"
    model_dir.mkdir()
    tuned = checkpoint_sha256(out / "best_loss.pt")
    (model_dir / "rescorer_ctc_fusion.json").write_text(json.dumps(
        {"config": {}, "ctc_model_dir": str(out / "best_loss.pt"), "ctc_model_sha256": tuned}))
    rescorer = SimpleNamespace(config=SimpleNamespace(ctc_norm="token"))
    (out / "best.pt").write_bytes((out / "last.pt").read_bytes())  # a checkpoint that differs from best_loss.pt
    with pytest.raises(StageError, match="tuned with the CTC checkpoint .*best_loss.pt .* not .*ctc"):
        _ctc_fusion(rescorer, model_dir, str(out), None, None, "rescorer_ctc_fusion.json", "cpu", False)
    saved = json.loads((model_dir / "rescorer_ctc_fusion.json").read_text())
    _check_tuned_checkpoint("rescorer_ctc_fusion.json", saved, out / "best_loss.pt", tuned)  # the same one: fine
    _check_tuned_checkpoint("rescorer_ctc_fusion.json", saved, out, None)  # nothing to compare: fine
    # tuned before digests: fine
    _check_tuned_checkpoint("rescorer_ctc_fusion.json", {"config": {}}, out, checkpoint_sha256(out))


def test_attention_training_run_and_init_from_ctc(data_dir, tmp_path):
    common = dict(train=str(data_dir / "train.pt"), dev=str(data_dir / "dev.pt"), **TINY)
    ctc_dir = train(AsrTrainConfig(model="ctc", out=str(tmp_path / "ctc"), epochs=2, **common))
    out = train(AsrTrainConfig(model="attention", out=str(tmp_path / "att"), epochs=2, init_from=str(ctc_dir), **common))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {"dev_ctc", "dev_attention", "dev_loss", "ctc", "attention"} <= set(log[-1])
    model, _ = load_asr_model(out, which="last")
    ctc_model, _ = load_asr_model(ctc_dir, which="last")
    assert model.model_type == "attention"
    dev = load_utterances(data_dir / "dev.pt")
    feats, lens, _ = dev.batch([0, 1])
    nbest = model.beam_search(feats, lens, beam=3)
    assert len(nbest) == 2 and all(len(n) >= 1 for n in nbest)
    # the CTC run's encoder was the starting point: a fresh model started from it
    fresh = train(AsrTrainConfig(model="attention", out=str(tmp_path / "att0"), epochs=1, stop_after_epoch=1,
                                 init_from=str(ctc_dir), lr=1e-12, **{k: v for k, v in common.items() if k != "lr"}))  # fmt: skip
    m0, _ = load_asr_model(fresh, which="last")
    assert torch.allclose(m0.ctc_head.weight, ctc_model.ctc_head.weight, atol=1e-6)


def test_init_from_a_run_of_another_frontend_is_refused_by_name(data_dir, tmp_path):
    """Initialising from an ASR run trained on other frames (fbank here, 20 ms Whisper-like states
    there) would copy only the weights whose shapes happen to match: it is an error naming the
    checkpoint and both frontends, before any training."""
    from dataclasses import replace

    from rescorer.formats.contract import FeatureSpec, FeatureSpecError
    from rescorer.formats.utterances import write_utterance_features

    common = dict(epochs=1, stop_after_epoch=1, **TINY)
    ctc_dir = train(AsrTrainConfig(model="ctc", train=str(data_dir / "train.pt"), dev=str(data_dir / "dev.pt"),
                                   out=str(tmp_path / "fbank_ctc"), **common))
    spec = FeatureSpec("whisper-0000abcd-L3", 80, 0.02)
    for split in ("train", "dev"):
        write_utterance_features(tmp_path / f"w_{split}.pt", replace(read_utterance_features(data_dir / f"{split}.pt"), spec=spec))
    out = tmp_path / "whisper_ctc"
    with pytest.raises(FeatureSpecError, match=r"init_from .*fbank_ctc.*: trained on 'fbank' frames \(80 values every "
                                               r"10 ms\), but this run reads 'whisper-0000abcd-L3' frames \(80 every 20 ms\)"):
        train(AsrTrainConfig(model="ctc", train=str(tmp_path / "w_train.pt"), dev=str(tmp_path / "w_dev.pt"),
                             out=str(out), init_from=str(ctc_dir), **common))
    assert not list(out.glob("*.pt"))  # refused before any training
    # the same frontend still initialises
    ok = train(AsrTrainConfig(model="ctc", train=str(tmp_path / "w_train.pt"), dev=str(tmp_path / "w_dev.pt"),
                              out=str(tmp_path / "w0"), **common))
    train(AsrTrainConfig(model="ctc", train=str(tmp_path / "w_train.pt"), dev=str(tmp_path / "w_dev.pt"),
                         out=str(tmp_path / "w1"), init_from=str(ok), **common))


def _states_equal(a, b):
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])


def test_resume_after_interruption_gives_identical_weights(data_dir, tmp_path):
    common = dict(model="attention", train=str(data_dir / "train.pt"), dev=str(data_dir / "dev.pt"), epochs=3, **TINY)
    full = train(AsrTrainConfig(out=str(tmp_path / "full"), **common))
    part = tmp_path / "part"
    train(AsrTrainConfig(out=str(part), stop_after_epoch=1, **common))
    assert torch.load(part / "last.pt")["epoch"] == 1
    with pytest.raises(ValueError, match="differs"):
        train(AsrTrainConfig(out=str(part), resume=True, **{**common, "lr": 1e-3}))
    train(AsrTrainConfig(out=str(part), resume=True, **common))
    a, b = torch.load(full / "last.pt"), torch.load(part / "last.pt")
    assert a["epoch"] == b["epoch"] == 3 and a["global_step"] == b["global_step"]
    _states_equal(a, b)
    assert [r["dev_wer"] for r in a["history"]] == [r["dev_wer"] for r in b["history"]]
    assert len((part / "log.jsonl").read_text().splitlines()) == 3
    # the best-loss checkpoint is judged over the whole history, also across the interruption
    assert torch.load(full / "best_loss.pt")["epoch"] == torch.load(part / "best_loss.pt")["epoch"]


def test_cli_arguments_map_to_config():
    cfg = parse_args(["--model", "attention", "--train", "t.pt", "--dev", "d.pt", "--out", "o", "--size", "large",
                      "--d-model", "64", "--amp", "--no-spec-augment", "--resume", "--lr", "1e-3", "--epochs", "3"])  # fmt: skip
    assert (cfg.model, cfg.size, cfg.d_model, cfg.amp, cfg.spec_augment, cfg.resume, cfg.lr, cfg.epochs) == (
        "attention", "large", 64, True, False, True, 1e-3, 3
    )
    assert cfg.num_layers is None and cfg.batch_frames == AsrTrainConfig().batch_frames


def test_asr_training_path_imports_neither_lhotse_nor_k2():
    bad = lhotse_or_k2_imported_by(
        "rescorer.training.train_asr", "rescorer.training.asr_data", "rescorer.training.common",
        "rescorer.models.ctc", "rescorer.models.attention",
    )  # fmt: skip
    assert bad == "", f"imported: {bad}"


def test_torchrun_two_processes_on_gloo(data_dir, tmp_path):
    out = tmp_path / "ddp"
    proc = run_torchrun([
        "-m", "rescorer.training.train_asr", "--model", "attention",
        "--train", str(data_dir / "train.pt"), "--dev", str(data_dir / "dev.pt"), "--out", str(out),
        "--size", "tiny", "--epochs", "2", "--batch-frames", "2000", "--device", "cpu", "--no-progress",
    ])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all(r["world_size"] == 2 for r in log)
    single = FrameBatchSampler(load_utterances(data_dir / "train.pt").lengths, 2000, seed=0)
    assert log[-1]["step"] == 2 * ((len(single) + 1) // 2)  # each rank runs half the batches
    model, cfg = load_asr_model(out, which="last")
    assert cfg["epochs"] == 2 and model.model_type == "attention"
