"""Train the acoustic and letter-n-gram word encoders jointly with a ranking loss.

    rescorer train embeddings --train train.pt --dev dev.pt --out exp/emb \
        [--dim 256 --epochs 20 --batch-size 128 --lr 2e-3 --seed 0 --amp \
         --hard-negatives 8 --aux-weight 0.1 --resume \
         --spelling-views letters|phones|letters+phones --near-negatives 4]
    torchrun --nproc_per_node=4 -m rescorer train embeddings ...   # DDP

(torch 1.13's torchrun fails on Python 3.11 with "'NoneType' object has no attribute
'get'" unless given ``--redirects 2 --tee 2``: it cannot parse its own default "0".)

Python API: ``train(TrainConfig(...)) -> out dir``; ``rescorer.models.checkpoint.load_embedder(out_dir)``
loads the result. The encoders are built by registry name (``--acoustic-encoder conv``,
``--spelling-encoder letter_ngram``; ``rescorer.models.registry``), recorded in the checkpoint,
and so is the spelling encoder's view (``--spelling-views``, with the pronunciation source
when phones are in it). ``--near-negatives N`` adds near-spelling / near-pronunciation
negatives to the ranking loss (``rescorer.training.ranking``).

What a run does: global feature mean/std from the training split go into the acoustic
model; batches of similar-length segments (seeded, sharded over ranks); AdamW with
linear warmup then cosine decay, stepped per batch; mixed precision on CUDA with
``--amp`` (float16 autocast + GradScaler); gradient clipping. With ``--sparse-ngrams``
the n-gram table gets sparse gradients and SparseAdam (same schedule; on CPU the dense
AdamW update of its 33.5M entries otherwise costs about as much as the acoustic
backward pass of a small encoder). After every epoch rank 0
measures dev P@1/P@10 (each dev segment against the dev vocabulary's spellings) and
writes ``last.pt`` (everything needed to resume: weights, optimizer, LR schedule,
scaler, sampler and RNG states, history) and, when dev P@1 improved, ``best.pt``
(weights and configs only). With ``--average-weights`` the dev P@1 and ``best.pt`` are those
of the running mean of the weights over the epochs so far (``training.common.EpochAverage``,
kept in ``last.pt``); training itself goes on from each epoch's own weights. Writes are atomic
(temporary file, then ``os.replace``), so an interruption leaves the previous checkpoint
intact and ``--resume`` loses at most the epoch in progress. One JSON line per epoch goes to
``log.jsonl``.

Determinism: the model has no dropout; batch order and negative mining are seeded from
(seed, epoch, step), so on CPU a resumed run ends with the same weights as an
uninterrupted one. CUDA kernels (embedding-bag backward) are not bitwise deterministic.

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

from rescorer.metrics import precision_at_k
from rescorer.models.checkpoint import (
    BEST,
    LAST,
    embedder_state,
    init_embedder_from,
    initial_feature_spec,
    load_checkpoint,
    save_checkpoint,
    trained_spellings,
)
from rescorer.models.interfaces import AcousticEncoder, SpellingEncoder
from rescorer.models.letters import DEFAULT_NUM_BUCKETS, SPELLING_VIEWS
from rescorer.models.state_pooling import PARTS
from rescorer.formats.contract import FBANK, FeatureSpec, layer_subset
from rescorer.formats.word_segments import WordSegments, load_word_segments, record_view, word_segments_from_dict
from rescorer.models.registry import ACOUSTIC_ENCODERS, SPELLING_ENCODERS
from rescorer.pronunciation import get_pronouncer
from rescorer.training.common import (
    EpochAverage,
    all_reduce_sum,
    save_epoch,
    autocast_context,
    check_resumable,
    clip_grad_norm,
    grad_scaler,
    lr_lambda,
    param_groups,
    setup_distributed,
    teardown_distributed,
)
from rescorer.training.ranking import JointEmbeddingModel
from rescorer.training.word_data import LengthBucketBatchSampler

@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in every checkpoint)."""

    train: str
    dev: str
    out: str
    # model: registry names of the two encoders, then their sizes
    acoustic_encoder: str = "conv"
    spelling_encoder: str = "letter_ngram"
    dim: int = 256
    channels: int = 384
    num_blocks: int = 4
    kernel_size: int = 5
    max_frames: int = 200
    num_buckets: int = DEFAULT_NUM_BUCKETS
    ngram_dim: int = 128
    letter_hidden: int = 512
    # what the spelling encoder sees of a word: letters, phones (CMUdict, else espeak-ng G2P)
    # or letters+phones (rescorer.models.letters); recorded in the checkpoint
    spelling_views: str = "letters"
    lexicon: str = ""  # CMUdict-format file for the phone view and near negatives ("": CMUdict found offline)
    # loss
    margin: float = 0.4
    hard_negatives: int = 8
    mining_pool: int = 8192
    aux_weight: float = 0.0  # word-classification auxiliary loss; off: it hurt dev P@1 on small data
    aux_scale: float = 16.0
    # per batch word, up to this many vocabulary words 1-2 letter or phone edits away join the
    # ranking candidates ("cat" / "cap"; rescorer.training.near_negatives); 0 = off
    near_negatives: int = 0
    # optimisation
    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.02
    grad_clip: float = 5.0
    # best.pt from the running mean of the weights over the epochs so far (icefall's model
    # averaging), not from any one epoch: each epoch's dev P@1 is the mean's, and the mean of
    # the best such epoch is kept. Why: on speechocean762 dev P@1 peaks by epoch ~10 while the
    # training loss falls toward zero; the mean generalises better (README, "Averaged weights")
    average_weights: bool = False
    # sparse gradients for the n-gram table, updated by SparseAdam (only the rows a batch
    # touches); the rest stays on AdamW. Several times fewer optimizer FLOPs on CPU with the
    # 2^18 x 128 table. Single process, or gloo DDP (NCCL has no sparse all-reduce).
    sparse_ngrams: bool = False
    # zero the n-gram rows that no training spelling uses, after every epoch (before dev P@1
    # and checkpoints); they would otherwise stay random and blur unseen words' spellings
    zero_untrained_ngrams: bool = True
    amp: bool = False
    seed: int = 0
    # fine-tuning: start from another embedder run's (or checkpoint's) best weights, both
    # encoders; they must be the same classes and sizes for the same frontend and feature spec
    init_from: Optional[str] = None
    # segments of stacked frontend layers (e.g. Whisper layers 3-4): train on these layers only,
    # comma-separated ("3"; "" = all the file holds). Fine-tuning takes its initial model's layers.
    input_layers: str = ""
    # state_pooling: the equal parts of a word's span pooled beside its whole (3: thirds)
    pooling_parts: int = PARTS
    # state_pooling: dropout inside its frame and head layers (the encoder's default, 0.1)
    acoustic_dropout: float = 0.1
    # fine-tuning: the spelling encoder's learning rate relative to the acoustic side's. Below 1
    # its space stays near the one learnt from many word types (unseen words keep their places)
    # while the acoustic side adapts; 0 freezes it (needs --init-from)
    spelling_lr_scale: float = 1.0
    # running
    device: Optional[str] = None  # default: cuda (this rank's GPU) if available, else cpu
    resume: bool = False
    stop_after_epoch: Optional[int] = None  # exit cleanly after this epoch (job slots, tests)
    eval_batch_size: int = 256
    progress: bool = True


# fields that may differ between an interrupted run and its resumption. ``epochs`` may
# change too (to shorten or extend a run): the warmup + cosine schedule is then recomputed
# for the new total and continues from the current step on it.
_RESUMABLE_CHANGES = {"resume", "stop_after_epoch", "progress", "device", "eval_batch_size", "train", "dev", "epochs"}


# ---------------------------------------------------------------- small helpers


def _param_groups(model: torch.nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """No weight decay on biases, norms and the n-gram table (sparse rows, decayed every step otherwise)."""
    return param_groups(model, weight_decay, no_decay_names=("ngrams.weight",))


def _scaled_spelling_groups(model, groups: List[Dict[str, Any]], config: "TrainConfig") -> List[Dict[str, Any]]:
    """``groups`` split so the spelling encoder's parameters learn at ``spelling_lr_scale`` x lr
    (frozen ones left out); empty groups dropped."""
    spelling = {id(p) for p in model.letters.parameters()}
    out = []
    for g in groups:
        rest = {k: v for k, v in g.items() if k != "params"}
        other = [p for p in g["params"] if id(p) not in spelling and p.requires_grad]
        mine = [p for p in g["params"] if id(p) in spelling and p.requires_grad]
        if other:
            out.append({**rest, "params": other})
        if mine:
            out.append({**rest, "params": mine, "lr": config.lr * config.spelling_lr_scale})
    return out


def acoustic_encoder_config(config: TrainConfig, spec: FeatureSpec) -> Dict[str, Any]:
    """Constructor arguments of the acoustic encoder the config names, for frames of ``spec``
    (the training segments' frontend, recorded so inference computes the same frontend)."""
    if config.acoustic_encoder == "state_pooling":
        if not 0.0 <= config.acoustic_dropout < 1.0:
            raise ValueError(f"acoustic_dropout must be in [0, 1), got {config.acoustic_dropout}")
        out = dict(feature_dim=spec.dim, frame_shift=spec.frame_shift, dim=config.dim, hidden=config.channels,
                   max_frames=config.max_frames, dropout=config.acoustic_dropout, feature_spec=spec.to_json())
        if config.pooling_parts != PARTS:  # thirds are not recorded (checkpoints before the option)
            out["parts"] = config.pooling_parts
        return out
    if config.acoustic_dropout != TrainConfig.acoustic_dropout:
        raise ValueError(f"acoustic_dropout is a state_pooling option; the {config.acoustic_encoder!r} encoder has no dropout")
    out: Dict[str, Any] = dict(num_mel_bins=spec.dim, dim=config.dim, channels=config.channels,
                               num_blocks=config.num_blocks, kernel_size=config.kernel_size, max_frames=config.max_frames)
    if spec != FBANK:
        out.update(frame_shift=spec.frame_shift, feature_spec=spec.to_json())
    return out


def build_encoders(config: TrainConfig, spec: FeatureSpec = FBANK) -> Tuple[AcousticEncoder, SpellingEncoder]:
    """The two encoders the config names (``acoustic_encoder``, ``spelling_encoder``), from its
    sizes, the acoustic one for frames of ``spec``."""
    acoustic = ACOUSTIC_ENCODERS.build(config.acoustic_encoder, acoustic_encoder_config(config, spec))
    spelling_config: Dict[str, Any] = dict(
        dim=config.dim, num_buckets=config.num_buckets, ngram_dim=config.ngram_dim, hidden=config.letter_hidden
    )
    if config.spelling_views != "letters":
        spelling_config.update(spelling_views=config.spelling_views, lexicon=config.lexicon or None)
    letters = SPELLING_ENCODERS.build(config.spelling_encoder, spelling_config)
    return acoustic, letters


@torch.no_grad()
def evaluate(
    acoustic: AcousticEncoder,
    letters: SpellingEncoder,
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


def _checkpoint_weights(model: JointEmbeddingModel, config: TrainConfig, init_vocabulary: List[str]) -> Dict[str, Any]:
    state = embedder_state(model.acoustic, model.letters, dataclasses.asdict(config))
    state["aux_classes"] = None if model.aux_classes is None else model.aux_classes.detach().cpu()
    state["train_vocabulary"] = model.vocabulary
    state["init_vocabulary"] = init_vocabulary
    return state


def _check_resumable(saved: Dict[str, Any], config: TrainConfig) -> None:
    # a field added after the checkpoint was written counts as its default
    default = dataclasses.asdict(TrainConfig(train="", dev="", out=""))
    check_resumable(saved, dataclasses.asdict(config), _RESUMABLE_CHANGES, defaults=default)


# ---------------------------------------------------------------- training


def train(config: TrainConfig) -> Path:
    """Run (or resume) training; returns the output directory (``rescorer.models.checkpoint.load_embedder`` reads it)."""
    rank, world, device = setup_distributed(config.device)
    out = Path(config.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    try:
        return _train(config, rank, world, device, out)
    finally:
        teardown_distributed()


def _train(config: TrainConfig, rank: int, world: int, device: torch.device, out: Path) -> Path:
    from tqdm import tqdm

    torch.manual_seed(config.seed)
    # fine-tuning reads the frames its initial model was trained on: a segments file of stacked
    # layers gives the initial model's layers (formats.contract.layer_view)
    expect = initial_feature_spec(config.init_from) if config.init_from else None
    train_data = load_word_segments(config.train, expect=expect)
    if expect is None and config.input_layers:
        want = layer_subset(train_data.spec, [int(k) for k in config.input_layers.split(",") if k.strip()])
        train_data = word_segments_from_dict(record_view(train_data.to_dict(), want), source=config.train)
    dev_data = load_word_segments(config.dev, expect=train_data.spec) if rank == 0 else None

    acoustic, letters = build_encoders(config, train_data.spec)
    model = JointEmbeddingModel(
        acoustic,
        letters,
        train_data.words,
        margin=config.margin,
        hard_negatives=config.hard_negatives,
        mining_pool=config.mining_pool,
        aux_weight=config.aux_weight,
        aux_scale=config.aux_scale,
        near_negatives=config.near_negatives,
        pronouncer=get_pronouncer(config.lexicon or None) if config.near_negatives > 0 else None,
    )
    last_path = out / LAST
    resuming = config.resume and last_path.exists()
    # spellings the initial weights were trained on: their n-gram rows are kept (not zeroed)
    init_vocabulary: List[str] = []
    if config.init_from and not resuming:
        init_path, init_ckpt = init_embedder_from(acoustic, letters, config.init_from)
        init_vocabulary = trained_spellings(init_ckpt)
        if rank == 0:
            print(f"[train_embeddings] initialised from {init_path} ({len(init_vocabulary)} spellings trained there)",
                  file=sys.stderr)
    # the input normalisation is always this training split's own (also when fine-tuning)
    mean, std = train_data.feature_stats()
    acoustic.set_feature_stats(mean, std)
    model.to(device)

    sampler = LengthBucketBatchSampler(
        train_data.lengths, config.batch_size, seed=config.seed, num_replicas=world, rank=rank
    )
    steps_per_epoch = len(sampler)
    total_steps = steps_per_epoch * config.epochs
    lr_factor = lr_lambda(total_steps, config.warmup_fraction, config.min_lr_ratio)
    sparse_optimizer = sparse_scheduler = None
    if not config.spelling_lr_scale >= 0:
        raise ValueError(f"--spelling-lr-scale must be >= 0, got {config.spelling_lr_scale}")
    frozen = config.spelling_lr_scale == 0
    if frozen:
        if not config.init_from:
            raise ValueError("--spelling-lr-scale 0 keeps an initialised spelling encoder: give --init-from")
        for p in model.letters.parameters():
            p.requires_grad_(False)
    if config.sparse_ngrams and not frozen:
        if world > 1 and device.type == "cuda":
            raise ValueError("--sparse-ngrams: NCCL cannot all-reduce sparse gradients; use dense ones with DDP on GPUs")
        model.letters.ngrams.sparse = True
        table = model.letters.ngrams.weight
        groups = _param_groups(model, config.weight_decay)
        for g in groups:
            g["params"] = [p for p in g["params"] if p is not table]
        optimizer = torch.optim.AdamW(_scaled_spelling_groups(model, groups, config), lr=config.lr)
        sparse_optimizer = torch.optim.SparseAdam([table], lr=config.lr * config.spelling_lr_scale)
        sparse_scheduler = torch.optim.lr_scheduler.LambdaLR(sparse_optimizer, lr_factor)
    else:
        optimizer = torch.optim.AdamW(_scaled_spelling_groups(model, _param_groups(model, config.weight_decay), config),
                                      lr=config.lr)
    optimizers = [o for o in (optimizer, sparse_optimizer) if o is not None]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    schedulers = [s for s in (scheduler, sparse_scheduler) if s is not None]
    use_amp = bool(config.amp and device.type == "cuda")
    if config.amp and not use_amp and rank == 0:
        print("[train_embeddings] --amp ignored: mixed precision is used on CUDA only", file=sys.stderr)
    scaler = grad_scaler(use_amp)

    start_epoch, global_step, best_p1 = 0, 0, -1.0
    history: List[Dict[str, Any]] = []
    average = EpochAverage(model) if config.average_weights and rank == 0 else None
    if resuming:
        ckpt = load_checkpoint(last_path)
        init_vocabulary = list(ckpt.get("init_vocabulary") or [])
        _check_resumable(ckpt["config"], config)
        model.acoustic.load_state_dict(ckpt["acoustic"])
        model.letters.load_state_dict(ckpt["letters"])
        if model.aux_classes is not None:
            with torch.no_grad():
                model.aux_classes.copy_(ckpt["aux_classes"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if sparse_optimizer is not None:
            sparse_optimizer.load_state_dict(ckpt["sparse_optimizer"])
            sparse_scheduler.load_state_dict(ckpt["sparse_scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        sampler.load_state_dict(ckpt["sampler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        start_epoch, global_step = ckpt["epoch"], ckpt["global_step"]
        best_p1, history = ckpt["best_p1"], ckpt["history"]
        if average is not None:
            average.load_state_dict(ckpt["weights_average"])
        if rank == 0:
            print(f"[train_embeddings] resumed from {last_path} after epoch {start_epoch}", file=sys.stderr)
    elif rank == 0:
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")

    train_model: torch.nn.Module = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )

    autocast = autocast_context(use_amp)

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
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            for opt in optimizers:
                scaler.unscale_(opt)
            if sparse_optimizer is None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            else:
                clip_grad_norm(list(model.parameters()), config.grad_clip)
            for opt in optimizers:
                scaler.step(opt)
            scaler.update()
            for sched in schedulers:
                sched.step()
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
        totals = all_reduce_sum([loss_sum, float(steps), float(seen)] + [parts_sum[k] for k in keys], device)
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
        # rows no training spelling uses are untrained noise for unseen words: zero them
        # (no effect on training, which never embeds other words); see zero_untrained_buckets_
        if config.zero_untrained_ngrams:
            model.letters.zero_untrained_buckets_(sorted(set(model.vocabulary) | set(init_vocabulary)))
        if rank == 0:
            p = evaluate(model.acoustic, model.letters, dev_data, config.eval_batch_size)
            averaged = ""
            if average is not None:  # the epoch's own P@1 goes on record; best.pt is chosen among the means
                record["dev_p@1_epoch"], record["dev_p@10_epoch"] = p[1], p[10]
                average.add()
                with average.swapped_in():
                    p = evaluate(model.acoustic, model.letters, dev_data, config.eval_batch_size)
                    if p[1] > best_p1:  # written before the weights are swapped back (the state holds them)
                        save_checkpoint({**_checkpoint_weights(model, config, init_vocabulary), "epoch": epoch + 1,
                                         "dev_p@1": p[1], "averaged_epochs": average.count}, out / BEST)
                record["averaged_epochs"] = average.count
                averaged = (f" (mean of epochs {epoch + 2 - average.count}-{epoch + 1}; "
                            f"this epoch's {record['dev_p@1_epoch']:.4f})")
            record["dev_p@1"], record["dev_p@10"] = p[1], p[10]
            improved = p[1] > best_p1
            best_p1 = max(best_p1, p[1])
            record["best_dev_p@1"] = best_p1
            history.append(record)
            state = _checkpoint_weights(model, config, init_vocabulary)
            if improved and average is None:
                save_checkpoint({**state, "epoch": epoch + 1, "dev_p@1": p[1]}, out / BEST)
            extra = {} if average is None else {"weights_average": average}
            save_epoch(out, last_path, state, record, optimizer=optimizer, scheduler=scheduler,
                       sparse_optimizer=sparse_optimizer, sparse_scheduler=sparse_scheduler, scaler=scaler,
                       sampler=sampler, epoch=epoch + 1, global_step=global_step, best_p1=best_p1, history=history,
                       **extra)
            print(
                f"[train_embeddings] epoch {epoch + 1}/{config.epochs} loss {record['loss']:.4f} "
                f"dev P@1 {p[1]:.4f} P@10 {p[10]:.4f}{averaged} {record['segments_per_s']:.1f} segments/s",
                file=sys.stderr,
                flush=True,
            )
        if dist.is_initialized():
            dist.barrier()
        if config.stop_after_epoch is not None and epoch + 1 >= config.stop_after_epoch:
            break
    return out


# ---------------------------------------------------------------- command line


def parse_args(argv: Optional[Sequence[str]] = None) -> TrainConfig:
    p = argparse.ArgumentParser(
        prog="rescorer train embeddings",
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
        elif field.name == "spelling_views":
            p.add_argument(flag, choices=SPELLING_VIEWS, default=default,
                           help="what the spelling encoder sees: letters, phones or letters+phones (default letters)")
        elif field.name == "init_from":
            p.add_argument(flag, default=None, metavar="DIR",
                           help="embedder run (best.pt) or checkpoint to start from (fine-tuning); same encoder "
                                "classes, sizes and frontend required")
        elif field.name == "input_layers":
            p.add_argument(flag, default="", metavar="K[,K...]",
                           help="train on these of the segments' stacked layers (e.g. 3 of Whisper layers 3-4; default all)")
        elif field.name == "stop_after_epoch":
            p.add_argument(flag, type=int, default=None, help="stop cleanly after this epoch")
        else:
            p.add_argument(flag, type=type(default), default=default, help=f"default {default}")
    args = p.parse_args(argv)
    return TrainConfig(**vars(args))


def training_command(config: Dict[str, Any], python: str = "python") -> str:
    """The ``train_embeddings`` command line that reproduces ``config`` (non-default flags only)."""
    defaults = TrainConfig(train="", dev="", out="")
    parts = [python, "-m", "rescorer.training.train_embeddings"]
    for key in ("train", "dev", "out"):
        parts += [f"--{key}", str(config.get(key, ""))]
    for key, value in config.items():
        if key in ("train", "dev", "out", "resume", "progress", "stop_after_epoch"):
            continue
        if not hasattr(defaults, key) or getattr(defaults, key) == value:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + key.replace("_", "-"))
        elif value is not None:
            parts += [flag, str(value)]
    return " ".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> None:
    config = parse_args(argv)
    out = train(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(out)


if __name__ == "__main__":
    main()
