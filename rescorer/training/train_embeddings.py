"""Train the acoustic and letter-n-gram word encoders jointly with a ranking loss.

    python -m rescorer.training.train_embeddings --train train.pt --dev dev.pt --out exp/emb \
        [--dim 256 --epochs 20 --batch-size 128 --lr 2e-3 --seed 0 --amp \
         --hard-negatives 8 --aux-weight 0.1 --resume]
    torchrun --nproc_per_node=4 -m rescorer.training.train_embeddings ...   # DDP

(torch 1.13's torchrun fails on Python 3.11 with "'NoneType' object has no attribute
'get'" unless given ``--redirects 2 --tee 2``: it cannot parse its own default "0".)

Python API: ``train(TrainConfig(...)) -> out dir`` and ``load_embedder(out_dir)``.

What a run does: global feature mean/std from the training split go into the acoustic
model; batches of similar-length segments (seeded, sharded over ranks); AdamW with
linear warmup then cosine decay, stepped per batch; mixed precision on CUDA with
``--amp`` (float16 autocast + GradScaler); gradient clipping. After every epoch rank 0
measures dev P@1/P@10 (each dev segment against the dev vocabulary's spellings) and
writes ``last.pt`` (everything needed to resume: weights, optimizer, LR schedule,
scaler, sampler and RNG states, history) and, when dev P@1 improved, ``best.pt``
(weights and configs only). Writes are atomic (temporary file, then ``os.replace``),
so an interruption leaves the previous checkpoint intact and ``--resume`` loses at most
the epoch in progress. One JSON line per epoch goes to ``log.jsonl``.

Determinism: the model has no dropout; batch order and negative mining are seeded from
(seed, epoch, step), so on CPU a resumed run ends with the same weights as an
uninterrupted one. CUDA kernels (embedding-bag backward) are not bitwise deterministic.

This module imports neither lhotse nor k2 (the GPU machine has neither).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from rescorer.metrics import precision_at_k
from rescorer.models.acoustic import AcousticWordEncoder
from rescorer.models.letters import DEFAULT_NUM_BUCKETS, LetterNgramEncoder
from rescorer.training.ranking import JointEmbeddingModel
from rescorer.training.word_data import LengthBucketBatchSampler, WordSegments, load_word_segments

CHECKPOINT_FORMAT = "rescorer.embedder/1"
LAST = "last.pt"
BEST = "best.pt"


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in every checkpoint)."""

    train: str
    dev: str
    out: str
    # model
    dim: int = 256
    channels: int = 384
    num_blocks: int = 4
    kernel_size: int = 5
    max_frames: int = 200
    num_buckets: int = DEFAULT_NUM_BUCKETS
    ngram_dim: int = 128
    letter_hidden: int = 512
    # loss
    margin: float = 0.4
    hard_negatives: int = 8
    mining_pool: int = 8192
    aux_weight: float = 0.0  # word-classification auxiliary loss; off: it hurt dev P@1 on small data
    aux_scale: float = 16.0
    # optimisation
    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.02
    grad_clip: float = 5.0
    amp: bool = False
    seed: int = 0
    # running
    device: Optional[str] = None  # default: cuda (this rank's GPU) if available, else cpu
    resume: bool = False
    stop_after_epoch: Optional[int] = None  # exit cleanly after this epoch (job slots, tests)
    eval_batch_size: int = 256
    progress: bool = True


# fields that may differ between an interrupted run and its resumption
_RESUMABLE_CHANGES = {"resume", "stop_after_epoch", "progress", "device", "eval_batch_size", "train", "dev"}


# ---------------------------------------------------------------- small helpers


def _atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same directory, fsync, then os.replace."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _grad_scaler(enabled: bool):
    """GradScaler for CUDA float16 training, across torch 1.13 (torch.cuda.amp) and 2.x (torch.amp)."""
    amp_scaler = getattr(getattr(torch, "amp", None), "GradScaler", None)
    if amp_scaler is not None:
        return amp_scaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


def _lr_lambda(total_steps: int, warmup_fraction: float, min_ratio: float):
    warmup = max(1, int(round(total_steps * warmup_fraction)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _param_groups(model: torch.nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """No weight decay on biases, norms and the n-gram table (sparse rows, decayed every step otherwise)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or name.endswith("ngrams.weight"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_encoders(config: TrainConfig) -> Tuple[AcousticWordEncoder, LetterNgramEncoder]:
    acoustic = AcousticWordEncoder(
        num_mel_bins=80,
        dim=config.dim,
        channels=config.channels,
        num_blocks=config.num_blocks,
        kernel_size=config.kernel_size,
        max_frames=config.max_frames,
    )
    letters = LetterNgramEncoder(
        dim=config.dim, num_buckets=config.num_buckets, ngram_dim=config.ngram_dim, hidden=config.letter_hidden
    )
    return acoustic, letters


@torch.no_grad()
def evaluate(
    acoustic: AcousticWordEncoder,
    letters: LetterNgramEncoder,
    data: WordSegments,
    batch_size: int = 256,
    ks: Sequence[int] = (1, 10),
) -> Dict[int, float]:
    """P@k of every segment against the split's own vocabulary (spellings embedded)."""
    was_training = (acoustic.training, letters.training)
    acoustic.eval()
    letters.eval()
    device = next(acoustic.parameters()).device
    order = torch.argsort(data.lengths)
    audio = torch.empty(len(data), acoustic.dim, device=device)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        feats, lengths, _ = data.batch(idx, acoustic.max_frames)
        audio[idx.to(device)] = acoustic(feats.to(device), lengths.to(device)).float()
    vocab = letters.encode_words(data.words)
    acoustic.train(was_training[0])
    letters.train(was_training[1])
    return precision_at_k(audio, data.word_ids.to(device), vocab, ks=ks)


def embedder_state(
    acoustic: AcousticWordEncoder, letters: LetterNgramEncoder, config: Dict[str, Any]
) -> Dict[str, Any]:
    """The part of a checkpoint that ``load_embedder`` reads: configs and weights."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": dict(config),
        "acoustic_config": dict(acoustic.config),
        "letters_config": dict(letters.config),
        "acoustic": acoustic.state_dict(),
        "letters": letters.state_dict(),
    }


def save_embedder(
    path: str, acoustic: AcousticWordEncoder, letters: LetterNgramEncoder, config: Optional[Dict[str, Any]] = None
) -> Path:
    """Write both encoders to one checkpoint file (atomically) for ``load_embedder``."""
    path = Path(path)
    _atomic_save(embedder_state(acoustic, letters, config or {}), path)
    return path


def _checkpoint_weights(model: JointEmbeddingModel, config: TrainConfig) -> Dict[str, Any]:
    state = embedder_state(model.acoustic, model.letters, dataclasses.asdict(config))
    state["aux_classes"] = None if model.aux_classes is None else model.aux_classes.detach().cpu()
    state["train_vocabulary"] = model.vocabulary
    return state


def _setup_distributed(config: TrainConfig) -> Tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and config.device != "cpu"
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if config.device is not None:
        device = torch.device(config.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return rank, world, device


def _all_reduce_sum(values: List[float], device: torch.device) -> List[float]:
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _check_resumable(saved: Dict[str, Any], config: TrainConfig) -> None:
    now = dataclasses.asdict(config)
    diff = {k: (saved.get(k), v) for k, v in now.items() if k not in _RESUMABLE_CHANGES and saved.get(k) != v}
    if diff:
        raise ValueError(f"--resume: configuration differs from the checkpoint's: {diff}")


# ---------------------------------------------------------------- training


def train(config: TrainConfig) -> Path:
    """Run (or resume) training; returns the output directory (see ``load_embedder``)."""
    rank, world, device = _setup_distributed(config)
    out = Path(config.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    try:
        return _train(config, rank, world, device, out)
    finally:
        if dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.destroy_process_group()


def _train(config: TrainConfig, rank: int, world: int, device: torch.device, out: Path) -> Path:
    from tqdm import tqdm

    torch.manual_seed(config.seed)
    train_data = load_word_segments(config.train)
    dev_data = load_word_segments(config.dev) if rank == 0 else None

    acoustic, letters = build_encoders(config)
    model = JointEmbeddingModel(
        acoustic,
        letters,
        train_data.words,
        margin=config.margin,
        hard_negatives=config.hard_negatives,
        mining_pool=config.mining_pool,
        aux_weight=config.aux_weight,
        aux_scale=config.aux_scale,
    )
    mean, std = train_data.feature_stats()
    acoustic.set_feature_stats(mean, std)
    model.to(device)

    sampler = LengthBucketBatchSampler(
        train_data.lengths, config.batch_size, seed=config.seed, num_replicas=world, rank=rank
    )
    steps_per_epoch = len(sampler)
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total_steps, config.warmup_fraction, config.min_lr_ratio)
    )
    use_amp = bool(config.amp and device.type == "cuda")
    if config.amp and not use_amp and rank == 0:
        print("[train_embeddings] --amp ignored: mixed precision is used on CUDA only", file=sys.stderr)
    scaler = _grad_scaler(use_amp)

    start_epoch, global_step, best_p1 = 0, 0, -1.0
    history: List[Dict[str, Any]] = []
    last_path = out / LAST
    if config.resume and last_path.exists():
        ckpt = torch.load(last_path, map_location="cpu")
        _check_resumable(ckpt["config"], config)
        model.acoustic.load_state_dict(ckpt["acoustic"])
        model.letters.load_state_dict(ckpt["letters"])
        if model.aux_classes is not None:
            with torch.no_grad():
                model.aux_classes.copy_(ckpt["aux_classes"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        sampler.load_state_dict(ckpt["sampler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        start_epoch, global_step = ckpt["epoch"], ckpt["global_step"]
        best_p1, history = ckpt["best_p1"], ckpt["history"]
        if rank == 0:
            print(f"[train_embeddings] resumed from {last_path} after epoch {start_epoch}", file=sys.stderr)
    elif rank == 0:
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")

    train_model: torch.nn.Module = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )

    autocast = (
        (lambda: torch.autocast(device_type="cuda", dtype=torch.float16))
        if use_amp
        else contextlib.nullcontext
    )

    for epoch in range(start_epoch, config.epochs):
        sampler.set_epoch(epoch)
        model.train()
        t0 = time.time()
        loss_sum, parts_sum, seen, steps = 0.0, {}, 0, 0
        batches = tqdm(
            sampler,
            total=steps_per_epoch - sampler.position,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not (config.progress and rank == 0),
            leave=False,
        )
        for batch in batches:
            feats, lengths, word_ids = train_data.batch(batch, config.max_frames)
            feats = feats.to(device, non_blocking=True)
            with autocast():
                mining_seed = config.seed * 1_000_003 + global_step
                losses = train_model(feats, lengths.to(device), word_ids.to(device), mining_seed=mining_seed)
            loss = losses["loss"]
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
            seen += len(batch)
            loss_sum += float(loss.detach())
            for k, v in losses.items():
                if k != "loss":
                    parts_sum[k] = parts_sum.get(k, 0.0) + float(v.detach())
            batches.set_postfix(loss=f"{loss_sum / steps:.4f}")
        elapsed = time.time() - t0
        keys = sorted(parts_sum)
        totals = _all_reduce_sum([loss_sum, float(steps), float(seen)] + [parts_sum[k] for k in keys], device)
        loss_sum, steps_all, seen_all = totals[0], max(totals[1], 1.0), totals[2]
        record: Dict[str, Any] = {
            "epoch": epoch + 1,
            "step": global_step,
            "loss": loss_sum / steps_all,
            **{k: v / steps_all for k, v in zip(keys, totals[3:])},
            "lr": scheduler.get_last_lr()[0],
            "segments_per_s": seen_all / max(elapsed, 1e-9),
            "train_seconds": elapsed,
            "world_size": world,
        }
        if rank == 0:
            p = evaluate(model.acoustic, model.letters, dev_data, config.eval_batch_size)
            record["dev_p@1"], record["dev_p@10"] = p[1], p[10]
            improved = p[1] > best_p1
            best_p1 = max(best_p1, p[1])
            record["best_dev_p@1"] = best_p1
            history.append(record)
            state = _checkpoint_weights(model, config)
            if improved:
                _atomic_save({**state, "epoch": epoch + 1, "dev_p@1": p[1]}, out / BEST)
            state.update(
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict(),
                sampler=sampler.state_dict(),
                rng={"torch": torch.get_rng_state()},
                epoch=epoch + 1,
                global_step=global_step,
                best_p1=best_p1,
                history=history,
            )
            _atomic_save(state, last_path)
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            print(
                f"[train_embeddings] epoch {epoch + 1}/{config.epochs} loss {record['loss']:.4f} "
                f"dev P@1 {p[1]:.4f} P@10 {p[10]:.4f} {record['segments_per_s']:.1f} segments/s",
                file=sys.stderr,
                flush=True,
            )
        if dist.is_initialized():
            dist.barrier()
        if config.stop_after_epoch is not None and epoch + 1 >= config.stop_after_epoch:
            break
    return out


# ---------------------------------------------------------------- loading


def load_embedder(
    directory: str, which: str = "best", map_location: str = "cpu"
) -> Tuple[AcousticWordEncoder, LetterNgramEncoder, Dict[str, Any]]:
    """(acoustic encoder, letter encoder, training config) from a run's directory, in eval mode.

    ``which`` is "best" (best dev P@1; falls back to last.pt if no best.pt yet) or
    "last". ``directory`` may also be a checkpoint file.
    """
    path = Path(directory)
    if path.is_dir():
        path = path / (BEST if which == "best" else LAST)
        if which == "best" and not path.exists():
            path = path.with_name(LAST)
    ckpt = torch.load(path, map_location=map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an embedder checkpoint ({CHECKPOINT_FORMAT})")
    acoustic = AcousticWordEncoder.from_config(ckpt["acoustic_config"])
    acoustic.load_state_dict(ckpt["acoustic"])
    letters = LetterNgramEncoder.from_config(ckpt["letters_config"])
    letters.load_state_dict(ckpt["letters"])
    return acoustic.eval(), letters.eval(), ckpt["config"]


# ---------------------------------------------------------------- command line


def parse_args(argv: Optional[Sequence[str]] = None) -> TrainConfig:
    p = argparse.ArgumentParser(
        prog="python -m rescorer.training.train_embeddings",
        description="Train acoustic and letter-n-gram word embeddings with a joint ranking loss.",
    )
    defaults = TrainConfig(train="", dev="", out="")
    p.add_argument("--train", required=True, help="training word segments (.pt)")
    p.add_argument("--dev", required=True, help="dev word segments (.pt), for P@1 and best.pt")
    p.add_argument("--out", required=True, help="experiment directory (checkpoints, log.jsonl)")
    for field in dataclasses.fields(TrainConfig):
        if field.name in ("train", "dev", "out"):
            continue
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif field.name == "device":
            p.add_argument(flag, default=None, help="cpu, cuda or cuda:N (default: GPU if available)")
        elif field.name == "stop_after_epoch":
            p.add_argument(flag, type=int, default=None, help="stop cleanly after this epoch")
        else:
            p.add_argument(flag, type=type(default), default=default, help=f"default {default}")
    args = p.parse_args(argv)
    return TrainConfig(**vars(args))


def main(argv: Optional[Sequence[str]] = None) -> None:
    config = parse_args(argv)
    out = train(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(out)


if __name__ == "__main__":
    main()
