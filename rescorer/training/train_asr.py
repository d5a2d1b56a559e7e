"""Train the CTC or the joint CTC/attention letter ASR model on exported utterances.

    rescorer train asr --model ctc|attention --train train.pt --dev dev.pt --out exp/ctc \
        [--size small|large --epochs 30 --batch-frames 6000 --lr 2e-3 --seed 0 --amp --resume \
         --d-model 128 --num-layers 4 ... --ctc-weight 0.3 --no-spec-augment --num-threads 1 \
         --select-by cer|wer|loss --init-from exp/ctc --max-frames 3000 --too-long skip|error]
    torchrun --nproc_per_node=4 -m rescorer train asr ...          # DDP

(torch 1.13's torchrun fails on Python 3.11 with "'NoneType' object has no attribute
'get'" unless given ``--redirects 2 --tee 2``: it cannot parse its own default "0".)

Input files: ``rescorer.utterances`` exports (``rescorer.formats.utterances``).
Python API: ``train(AsrTrainConfig(...)) -> out dir``; ``rescorer.models.checkpoint.load_asr_model(out_dir)``
loads the result. ``--model`` is a registry name (``rescorer.models.registry.ASR_MODELS``).

Sizes (``--size``; any ``--d-model`` etc. overrides the preset):

- ``small`` (CPU demo): conformer d=128, 4 layers, 4 heads, FFN 512, conv kernel 15,
  conv1d subsampling, no dropout; 1.6 M parameters (CTC), 2.2 M with the 2-layer
  attention decoder. Measured on a shared 2-core CPU with ``--num-threads 1``: 3,500-5,400
  input frames/s (CTC), 2,600-4,200 (attention), i.e. 2-3.5 min per epoch of 1.5 h of
  audio. Use one thread on a loaded machine: two threads ran at ~700 frames/s there.
- ``large`` (one GPU, use ``--amp``): d=256, 12 layers, FFN 1024, conv kernel 31,
  conv2d subsampling (128 channels), dropout 0.1, 6 decoder layers; 19 M parameters
  (CTC), 25 M (attention). Suggested: ``--batch-frames 60000 --lr 1e-3 --epochs 60``.
- ``tiny``: unit tests only.

What a run does: global feature mean/std of the training split go into the model;
batches of similar-length utterances up to ``batch_frames`` padded frames (seeded,
sharded over ranks); SpecAugment (2 frequency masks <= 15 bins, <= 1 time mask per
2 s of <= 40 frames, filled with the feature mean); loss per target token: CTC
(``ctc_loss``, blank 0, ``zero_infinity``), or ``ctc_weight * CTC + (1 - ctc_weight) *
label-smoothed attention CE`` for the attention model; AdamW, linear warmup then cosine
decay per step; gradient clipping; float16 autocast + GradScaler on CUDA with ``--amp``.
After every epoch rank 0 measures the dev loss and the dev CTC greedy WER/CER and
writes ``last.pt`` (weights, optimizer, schedule, scaler, sampler and RNG states,
history; everything ``--resume`` needs) and, when the dev CER improved (ties: lower dev
loss; ``--select-by wer`` / ``loss`` select by dev WER / dev loss instead; CER is the
default because letter-CTC greedy WER stays near or above 100 % long into training,
when CER already measures progress), ``best.pt``; and, selected by anything but the loss,
``best_loss.pt`` when the dev loss fell: the CTC methods' spelling scorer (``checkpoint_path(..,
"best_loss")``), calibrated where ``best.pt`` is kept long after the loss began to rise, so no
second run trains one. Writes are atomic.
One JSON line per epoch goes to ``log.jsonl``: loss, dev loss, dev WER/CER, frames/s.

Utterances longer than ``--max-frames`` (3000 = 30 s) are skipped and counted
(``--too-long error`` refuses them instead); see asr_data for the other input checks.

This module imports neither lhotse nor k2 (the GPU machine has neither).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn

from rescorer.formats.contract import FBANK, FeatureSpec, FeatureSpecError, check_spec, same_frame_shift
from rescorer.models.attention import DECODER_PRESETS, AttentionModel
from rescorer.models.checkpoint import BEST, BEST_LOSS, LAST, asr_state, load_checkpoint, read_asr_checkpoint, save_checkpoint
from rescorer.models.ctc import ENCODER_PRESETS, count_parameters, ctc_greedy_decode, ctc_loss
from rescorer.models.registry import ASR_MODELS
from rescorer.tokens import pad_token_ids, token_ids_to_words
from rescorer.training.asr_data import FrameBatchSampler, Utterances, load_utterances, spec_augment
from rescorer.training.common import (
    all_reduce_sum,
    save_epoch,
    autocast_context,
    check_resumable,
    grad_scaler,
    param_groups,
    setup_distributed,
    teardown_distributed,
    warmup_cosine,
)
from rescorer.wer import error_counts

MODEL_TYPES = tuple(ASR_MODELS.names())  # ctc, attention
_ARCH_FIELDS = (
    "d_model",
    "num_layers",
    "num_heads",
    "ffn_dim",
    "conv_kernel",
    "subsampling_channels",
    "dropout",
    "decoder_layers",
    "decoder_ffn_dim",
)


@dataclass
class AsrTrainConfig:
    """Everything that defines a training run (saved in every checkpoint)."""

    model: str = "ctc"
    train: str = ""
    dev: str = ""
    out: str = ""
    size: str = "small"
    # architecture overrides (None: from the size preset)
    d_model: Optional[int] = None
    num_layers: Optional[int] = None
    num_heads: Optional[int] = None
    ffn_dim: Optional[int] = None
    conv_kernel: Optional[int] = None
    subsampling_channels: Optional[int] = None
    dropout: Optional[float] = None
    decoder_layers: Optional[int] = None
    decoder_ffn_dim: Optional[int] = None
    # loss
    ctc_weight: float = 0.3
    label_smoothing: float = 0.1
    # data
    max_frames: int = 3000
    too_long: str = "skip"
    spec_augment: bool = True
    # optimisation
    epochs: int = 30
    batch_frames: int = 6000
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.08
    min_lr_ratio: float = 0.02
    grad_clip: float = 5.0
    amp: bool = False
    seed: int = 0
    select_by: str = "cer"  # best.pt by dev greedy CER (ties: dev loss); or "wer", "loss" (else also best_loss.pt)
    init_from: Optional[str] = None  # run dir / checkpoint: copy matching weights (e.g. CTC encoder -> attention)
    # Whisper features: fine-tune the encoder's top N blocks over the stored states of the layer
    # below them (models.whisper.WhisperTail; 0: the encoder frozen), at lr x whisper_lr_scale;
    # weights from whisper_model (a CTranslate2 Whisper directory; default: the shipped tiny.en)
    whisper_finetune_blocks: int = 0
    whisper_lr_scale: float = 0.1
    whisper_model: Optional[str] = None
    # running
    device: Optional[str] = None  # default: cuda (this rank's GPU) if available, else cpu
    resume: bool = False
    stop_after_epoch: Optional[int] = None
    eval_batch_frames: int = 20000
    num_threads: Optional[int] = None
    progress: bool = True


_RESUMABLE_CHANGES = {
    "resume", "stop_after_epoch", "progress", "device", "eval_batch_frames", "train", "dev", "num_threads", "out"
}  # fmt: skip


def model_config(config: AsrTrainConfig) -> Dict[str, Any]:
    """Constructor arguments of the model: the size preset with the config's overrides."""
    if config.model not in MODEL_TYPES:
        raise ValueError(f"--model must be one of {MODEL_TYPES}, got {config.model!r}")
    if config.size not in ENCODER_PRESETS:
        raise ValueError(f"--size must be one of {sorted(ENCODER_PRESETS)}, got {config.size!r}")
    arch: Dict[str, Any] = dict(ENCODER_PRESETS[config.size])
    if config.model == "attention":
        arch.update(DECODER_PRESETS[config.size])
    for name in _ARCH_FIELDS:
        value = getattr(config, name)
        if value is not None:
            if name.startswith("decoder") and config.model != "attention":
                continue
            arch[name] = value
    return arch


def input_arch(spec: FeatureSpec) -> Dict[str, Any]:
    """The input side of the architecture, from the training features' spec: their
    dimension, x2 subsampling for a 20 ms frontend (Whisper states) so that output frames
    are 40 ms as with x4 over 10 ms fbank, and the spec itself (decoding checks it)."""
    out: Dict[str, Any] = {"num_mel_bins": spec.dim, "feature_spec": spec.to_json()}
    if same_frame_shift(spec.frame_shift, 0.02):
        out["subsampling"] = "conv1d_x2"
    elif not same_frame_shift(spec.frame_shift, FBANK.frame_shift):
        raise ValueError(f"{spec.name} features every {spec.frame_shift} s: the ASR models take 10 ms or 20 ms frames")
    return out


def whisper_tail_arch(spec: FeatureSpec, num_blocks: int, whisper_model: Optional[str] = None):
    """(the ``whisper_tail`` architecture entry, the pretrained encoder) for fine-tuning the top
    ``num_blocks`` Whisper blocks over features of ``spec`` (stacked Whisper layers of the
    model ``whisper_model`` names: its digest must be the one in the spec's name)."""
    from rescorer.formats.contract import stacked_layers
    from rescorer.models import whisper

    stacked = stacked_layers(spec)
    if stacked is None or not stacked[0].startswith("whisper-"):
        raise ValueError(f"--whisper-finetune-blocks needs Whisper features of stacked layers, got {spec.name!r}")
    model_dir = whisper.resolve_model_dir(whisper_model)
    digest = whisper.file_sha256(model_dir / "model.bin")[:8]
    if stacked[0] != f"whisper-{digest}":
        raise whisper.WhisperModelError(
            f"the features come from {stacked[0]!r} but {model_dir} is whisper-{digest}: pass --whisper-model DIR "
            "(the model the features were computed with)")
    encoder = whisper.WhisperEncoder.from_ctranslate2(model_dir)
    tail = dict(d_model=encoder.d_model, num_heads=encoder.blocks[0].num_heads, stacked_layers=list(stacked[1]),
                num_blocks=int(num_blocks), num_layers=encoder.num_layers)
    if stacked[2] != encoder.d_model:
        raise ValueError(f"{spec.name!r}: {stacked[2]} values per layer, the Whisper model has {encoder.d_model}")
    return tail, encoder


def build_model(model_type: str, arch: Dict[str, Any]) -> nn.Module:
    """A new model of the registered type ``model_type`` with architecture ``arch``."""
    return ASR_MODELS.build(model_type, arch)


class _LossModule(nn.Module):
    """Wraps a model so that DDP sees the whole loss computation in ``forward``."""

    def __init__(self, model: nn.Module, ctc_weight: float, label_smoothing: float):
        super().__init__()
        self.model = model
        self.ctc_weight = ctc_weight
        self.label_smoothing = label_smoothing

    def forward(self, feats: torch.Tensor, lens: torch.Tensor, token_seqs: List[List[int]]) -> Dict[str, torch.Tensor]:
        if isinstance(self.model, AttentionModel):
            return self.model.joint_loss(feats, lens, token_seqs, self.ctc_weight, self.label_smoothing)
        log_probs, out_lens = self.model(feats, lens)
        targets, target_lens = pad_token_ids(token_seqs)
        loss = ctc_loss(log_probs, out_lens, targets.to(feats.device), target_lens.to(feats.device))
        return {"loss": loss, "ctc": loss}


def _normaliser(token_seqs: Sequence[Sequence[int]], attention: bool) -> int:
    """Target tokens of a batch (the attention targets also count the eos of each)."""
    return sum(len(s) for s in token_seqs) + (len(token_seqs) if attention else 0)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Utterances,
    batch_frames: int = 20000,
    ctc_weight: float = 0.3,
    label_smoothing: float = 0.1,
    device: Optional[torch.device] = None,
    return_hyps: bool = False,
) -> Dict[str, Any]:
    """Dev loss (per target token, as in training but without SpecAugment/dropout) and CTC greedy WER/CER."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    attention = isinstance(model, AttentionModel)
    sampler = FrameBatchSampler(data.lengths, batch_frames, shuffle=False, pool_size=len(data))
    sums: Dict[str, float] = {}
    tokens = 0
    refs, hyps, ref_chars, hyp_chars, order = [], [], [], [], []
    for batch in sampler:
        feats, lens, token_seqs = data.batch(batch)
        feats, lens = feats.to(device), lens.to(device)
        enc, out_lens = model.encode(feats, lens)
        log_probs = model.ctc_log_probs(enc)
        targets, target_lens = pad_token_ids(token_seqs)
        ctc = ctc_loss(log_probs, out_lens, targets.to(device), target_lens.to(device))
        parts = {"ctc": float(ctc)}
        if attention:
            att = model.attention_loss(enc, out_lens, token_seqs, label_smoothing)
            parts["attention"] = float(att)
            parts["loss"] = ctc_weight * parts["ctc"] + (1 - ctc_weight) * parts["attention"]
        else:
            parts["loss"] = parts["ctc"]
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        tokens += _normaliser(token_seqs, attention)
        for i, ids in zip(batch, ctc_greedy_decode(log_probs, out_lens)):
            words = token_ids_to_words(ids)
            refs.append(data.text(i).split())
            hyps.append(words)
            ref_chars.append(list(data.text(i)))
            hyp_chars.append(list(" ".join(words)))
            order.append(i)
    model.train(was_training)
    word_err, word_n = error_counts(refs, hyps)
    char_err, char_n = error_counts(ref_chars, hyp_chars)
    out: Dict[str, Any] = {f"dev_{k}": v / max(tokens, 1) for k, v in sums.items()}
    out["dev_wer"] = word_err / max(word_n, 1)
    out["dev_cer"] = char_err / max(char_n, 1)
    if return_hyps:
        out["hyps"] = {data.utterance_id(i): " ".join(h) for i, h in zip(order, hyps)}
    return out


def init_from_checkpoint(model: nn.Module, source) -> Tuple[int, int]:
    """Copy every tensor of ``source``'s weights whose name and shape match (e.g. a CTC run's
    encoder, CTC head and feature statistics into an attention model). Returns (copied, total).

    ``source`` must have been trained on the same frontend as ``model``: the weights that read
    the frames of another one (say 80-bin fbank against Whisper states) do not match in shape
    and would be skipped, so the start would be a partly random model, silently."""
    path, ckpt = read_asr_checkpoint(source)
    theirs = ckpt["model_config"].get("feature_spec")
    mine = getattr(getattr(model, "encoder", None), "feature_spec", None)
    src = FeatureSpec.from_json(theirs) if theirs else FBANK
    dst = FeatureSpec.from_json(mine) if mine else FBANK
    if (src.name, src.dim) != (dst.name, dst.dim) or not same_frame_shift(src.frame_shift, dst.frame_shift):
        raise FeatureSpecError(
            f"init_from {path}: trained on {src.name!r} frames ({src.dim} values every {src.frame_shift * 1000:g} ms), "
            f"but this run reads {dst.name!r} frames ({dst.dim} every {dst.frame_shift * 1000:g} ms): initialise "
            f"from a run of the same frontend")
    own = model.state_dict()
    matched = {k: v for k, v in ckpt["model"].items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matched, strict=False)
    return len(matched), len(own)


# ---------------------------------------------------------------- training


def train(config: AsrTrainConfig) -> Path:
    """Run (or resume) training; returns the output directory (``rescorer.models.checkpoint.load_asr_model`` reads it)."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    if config.select_by not in ("wer", "cer", "loss"):
        raise ValueError("select_by must be 'wer', 'cer' or 'loss'")
    rank, world, device = setup_distributed(config.device)
    out = Path(config.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    try:
        return _train(config, rank, world, device, out)
    finally:
        teardown_distributed()


def _param_groups(model: nn.Module, config: AsrTrainConfig) -> List[Dict[str, Any]]:
    """AdamW groups: the fine-tuned Whisper blocks (if any) at lr x whisper_lr_scale."""
    tail = getattr(model.encoder, "whisper_tail", None)
    if tail is None:
        return param_groups(model, config.weight_decay)
    tail_ids = {id(p) for p in tail.parameters()}
    groups = []
    for g in param_groups(model, config.weight_decay):
        own = [p for p in g["params"] if id(p) not in tail_ids]
        pre = [p for p in g["params"] if id(p) in tail_ids]
        groups.append({**g, "params": own})
        if pre:
            groups.append({**g, "params": pre, "lr": config.lr * config.whisper_lr_scale})
    return groups


def _better(record: Dict[str, Any], best: Optional[Tuple[float, float]], select_by: str) -> Tuple[bool, Tuple[float, float]]:
    first = {"wer": "dev_wer", "cer": "dev_cer", "loss": "dev_loss"}[select_by]
    key = (record[first], record["dev_loss"] if select_by != "loss" else record["dev_wer"])
    return (best is None or key < tuple(best)), key


def _log(msg: str) -> None:
    print(f"[train_asr] {msg}", file=sys.stderr, flush=True)


def _train(config: AsrTrainConfig, rank: int, world: int, device: torch.device, out: Path) -> Path:
    from tqdm import tqdm

    torch.manual_seed(config.seed)
    arch = model_config(config)
    train_data = load_utterances(config.train, max_frames=config.max_frames, too_long=config.too_long)
    dev_data = load_utterances(config.dev, max_frames=config.max_frames, too_long=config.too_long) if rank == 0 else None
    arch.update(input_arch(train_data.spec))
    if dev_data is not None:
        check_spec(dev_data.spec, train_data.spec, config.dev)
    pretrained_whisper = None
    if config.whisper_finetune_blocks:
        arch["whisper_tail"], pretrained_whisper = whisper_tail_arch(train_data.spec, config.whisper_finetune_blocks,
                                                                     config.whisper_model)
    model = build_model(config.model, arch)
    if pretrained_whisper is not None:
        model.encoder.whisper_tail.load_from(pretrained_whisper)
    mean, std = train_data.feature_stats()
    model.set_feature_stats(mean, std)
    if config.init_from and not (config.resume and (out / LAST).exists()):
        copied, total = init_from_checkpoint(model, config.init_from)
        if rank == 0:
            _log(f"initialised {copied}/{total} parameter tensors from {config.init_from}")
    model.to(device)
    attention = config.model == "attention"

    sampler = FrameBatchSampler(train_data.lengths, config.batch_frames, seed=config.seed, num_replicas=world, rank=rank)
    steps_per_epoch = len(sampler)
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(_param_groups(model, config), lr=config.lr)
    warmup = max(1, int(round(total_steps * config.warmup_fraction)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup, config.min_lr_ratio))
    use_amp = bool(config.amp and device.type == "cuda")
    if config.amp and not use_amp and rank == 0:
        _log("--amp ignored: mixed precision is used on CUDA only")
    scaler = grad_scaler(use_amp)
    autocast = autocast_context(use_amp)

    start_epoch, global_step, best = 0, 0, None
    history: List[Dict[str, Any]] = []
    last_path = out / LAST
    if config.resume and last_path.exists():
        ckpt = load_checkpoint(last_path)
        check_resumable(ckpt["config"], dataclasses.asdict(config), _RESUMABLE_CHANGES)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        sampler.load_state_dict(ckpt["sampler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        start_epoch, global_step = ckpt["epoch"], ckpt["global_step"]
        best, history = ckpt["best"], ckpt["history"]
        if rank == 0:
            _log(f"resumed from {last_path} after epoch {start_epoch}")
    elif rank == 0:
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
        _log(
            f"{config.model} model, size {config.size}: {count_parameters(model) / 1e6:.2f} M parameters; "
            f"train {len(train_data)} utterances ({train_data.hours:.2f} h, {len(train_data.skipped_too_long)} "
            f"skipped as longer than {config.max_frames} frames, {train_data.ctc_infeasible(model.subsampling_factor)} too short for "
            f"their CTC targets), dev {len(dev_data)}; {steps_per_epoch} steps/epoch x {world} ranks on {device}"
        )

    loss_module: nn.Module = _LossModule(model, config.ctc_weight, config.label_smoothing)
    train_module: nn.Module = loss_module
    if world > 1:
        train_module = torch.nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )
    fill = model.encoder.feat_mean.detach().cpu()

    for epoch in range(start_epoch, config.epochs):
        sampler.set_epoch(epoch)
        model.train()
        t0 = time.time()
        sums: Dict[str, float] = {}
        tokens, frames, steps = 0, 0, 0
        batches = tqdm(
            sampler,
            total=steps_per_epoch - sampler.position,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not (config.progress and rank == 0),
            leave=False,
        )
        for batch in batches:
            feats, lens, token_seqs = train_data.batch(batch)
            if config.spec_augment:
                g = torch.Generator().manual_seed((config.seed * 1_000_003 + global_step) * 131 + rank)
                feats = spec_augment(feats, lens, g, fill=fill)
            feats, lens = feats.to(device, non_blocking=True), lens.to(device)
            n_tokens = _normaliser(token_seqs, attention)
            with autocast():
                losses = train_module(feats, lens, token_seqs)
            loss = losses["loss"] / n_tokens
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch + 1}, step {global_step}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            global_step += 1
            steps += 1
            tokens += n_tokens
            frames += int(lens.sum())
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            batches.set_postfix(loss=f"{sums['loss'] / max(tokens, 1):.3f}")
        elapsed = time.time() - t0
        keys = sorted(sums)
        totals = all_reduce_sum([float(tokens), float(frames), float(steps)] + [sums[k] for k in keys], device)
        tokens_all, frames_all = max(totals[0], 1.0), totals[1]
        record: Dict[str, Any] = {
            "epoch": epoch + 1,
            "step": global_step,
            **{k: v / tokens_all for k, v in zip(keys, totals[3:])},
            "lr": scheduler.get_last_lr()[0],
            "frames_per_s": frames_all / max(elapsed, 1e-9),
            "train_seconds": elapsed,
            "world_size": world,
        }
        if rank == 0:
            t1 = time.time()
            record.update(
                evaluate(model, dev_data, config.eval_batch_frames, config.ctc_weight, config.label_smoothing, device)
            )
            record["eval_seconds"] = time.time() - t1
            improved, key = _better(record, best, config.select_by)
            if improved:
                best = key
            record["best_dev_wer"] = min(r["dev_wer"] for r in history + [record])
            record["best_dev_cer"] = min(r["dev_cer"] for r in history + [record])
            history.append(record)
            state = asr_state(model, dataclasses.asdict(config))
            dev = {k: v for k, v in record.items() if k.startswith("dev_")}
            if improved:
                save_checkpoint({**state, "epoch": epoch + 1, "dev": dev}, out / BEST)
            if config.select_by != "loss" and all(record["dev_loss"] < r["dev_loss"] for r in history[:-1]):
                save_checkpoint({**state, "epoch": epoch + 1, "dev": dev}, out / BEST_LOSS)
            save_epoch(out, last_path, state, record, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                       sampler=sampler, epoch=epoch + 1, global_step=global_step, best=best, history=history)
            _log(
                f"epoch {epoch + 1}/{config.epochs} loss {record['loss']:.4f} dev loss {record['dev_loss']:.4f} "
                f"dev WER {100 * record['dev_wer']:.2f}% CER {100 * record['dev_cer']:.2f}% "
                f"{record['frames_per_s']:.0f} frames/s ({elapsed:.0f} s){' *' if improved else ''}"
            )
        if dist.is_initialized():
            dist.barrier()
        if config.stop_after_epoch is not None and epoch + 1 >= config.stop_after_epoch:
            break
    return out


# ---------------------------------------------------------------- command line

_OPTIONAL_TYPES = {
    "d_model": int, "num_layers": int, "num_heads": int, "ffn_dim": int, "conv_kernel": int,
    "subsampling_channels": int, "dropout": float, "decoder_layers": int, "decoder_ffn_dim": int,
    "device": str, "stop_after_epoch": int, "num_threads": int, "init_from": str, "whisper_model": str,
}  # fmt: skip


def parse_args(argv: Optional[Sequence[str]] = None) -> AsrTrainConfig:
    p = argparse.ArgumentParser(
        prog="rescorer train asr",
        description="Train a CTC or joint CTC/attention letter ASR model on exported utterances.",
    )
    p.add_argument("--model", required=True, choices=MODEL_TYPES)
    p.add_argument("--train", required=True, help="training utterances (.pt from asr_data.export_utterances)")
    p.add_argument("--dev", required=True, help="dev utterances (.pt), for dev WER and best.pt")
    p.add_argument("--out", required=True, help="experiment directory (checkpoints, log.jsonl)")
    defaults = AsrTrainConfig()
    for field in dataclasses.fields(AsrTrainConfig):
        if field.name in ("model", "train", "dev", "out"):
            continue
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        if field.name in _OPTIONAL_TYPES:
            p.add_argument(flag, type=_OPTIONAL_TYPES[field.name], default=None, help="default: from --size")
        elif isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif field.name == "size":
            p.add_argument(flag, choices=sorted(ENCODER_PRESETS), default=default)
        elif field.name == "too_long":
            p.add_argument(flag, choices=("skip", "error"), default=default)
        elif field.name == "select_by":
            p.add_argument(flag, choices=("wer", "cer", "loss"), default=default)
        else:
            p.add_argument(flag, type=type(default), default=default, help=f"default {default}")
    return AsrTrainConfig(**vars(p.parse_args(argv)))


def main(argv: Optional[Sequence[str]] = None) -> None:
    out = train(parse_args(argv))
    if int(os.environ.get("RANK", "0")) == 0:
        print(out)


if __name__ == "__main__":
    main()
