"""Pieces shared by the training entry points (plain torch; no lhotse, no k2).

The end-of-epoch checkpoint, the AdamW parameter groups, the warmup + cosine LR factor,
``torchrun`` / DDP set-up, cross-rank sums, mixed-precision helpers across torch
1.13-2.x, gradient clipping that accepts sparse gradients, the resume-compatibility check, the
running mean of a model's weights over epochs, and the seeded length-bucketed batch sampler
sharded over ranks (base of the word-segment and utterance samplers). Feature statistics and padded batch gathering live in
``rescorer.formats.frames`` (evaluation uses them too and must not import training).
Checkpoint files themselves are written and read by ``rescorer.models.checkpoint``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from rescorer.models.checkpoint import save_checkpoint


def save_epoch(out: Path, last_path: Path, state: Dict[str, Any], record: Dict[str, Any], **training: Any) -> None:
    """End of an epoch: ``state`` (the weights) plus everything resuming needs (``training``:
    optimizers, schedulers, scaler and sampler as their state dicts, counters as they are,
    and the torch RNG) to ``last_path``, and the epoch's ``record`` appended to ``log.jsonl``."""
    state.update({k: v.state_dict() if hasattr(v, "state_dict") else v for k, v in training.items()})
    state["rng"] = {"torch": torch.get_rng_state()}
    save_checkpoint(state, last_path)
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


class EpochAverage:
    """The running mean of a module's floating-point weights over the epochs ``add``-ed
    (icefall's model averaging, taken once per epoch). ``swapped_in()`` puts the mean in the
    module's place, to evaluate and save it, and restores the weights training goes on from;
    ``state_dict`` / ``load_state_dict`` carry it through ``last.pt`` so a resumed run averages
    the same epochs. Why: on a small corpus dev accuracy peaks early while the training loss
    falls toward zero, and the mean of the epochs so far generalises better than any one."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.count = 0
        self.mean: Optional[Dict[str, torch.Tensor]] = None

    @torch.no_grad()
    def add(self) -> None:
        """Fold the module's current weights into the mean."""
        weights = self.module.state_dict()
        self.count += 1
        if self.mean is None:
            self.mean = {k: v.detach().clone() for k, v in weights.items() if v.is_floating_point()}
            return
        for k, m in self.mean.items():
            m.add_(weights[k].detach().to(m.dtype) - m, alpha=1.0 / self.count)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        if self.mean is None:
            raise RuntimeError("EpochAverage.swapped_in before any epoch was added")
        weights = self.module.state_dict()
        kept = {k: weights[k].detach().clone() for k in self.mean}
        self.module.load_state_dict(self.mean, strict=False)
        try:
            yield
        finally:
            self.module.load_state_dict(kept, strict=False)

    def state_dict(self) -> Dict[str, Any]:
        return {"count": self.count, "mean": self.mean}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        mean = state["mean"]
        device = next(iter(self.module.state_dict().values())).device
        self.count = int(state["count"])
        self.mean = None if mean is None else {k: v.to(device) for k, v in mean.items()}


def grad_scaler(enabled: bool):
    """GradScaler for CUDA float16 training, across torch 1.13 (torch.cuda.amp) and 2.x (torch.amp)."""
    amp_scaler = getattr(getattr(torch, "amp", None), "GradScaler", None)
    if amp_scaler is not None:
        return amp_scaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


def autocast_context(enabled: bool) -> Callable[[], Any]:
    """Factory of the CUDA float16 autocast context (or a null context)."""
    if enabled:
        return lambda: torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR factor: linear warmup over ``warmup_steps``, then cosine decay to ``min_ratio``."""
    warmup = max(1, int(warmup_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def lr_lambda(total_steps: int, warmup_fraction: float, min_ratio: float) -> Callable[[int], float]:
    """Warmup over ``warmup_fraction`` of the steps, then cosine (train_embeddings' schedule)."""
    return warmup_cosine(total_steps, max(1, int(round(total_steps * warmup_fraction))), min_ratio)


def param_groups(
    model: torch.nn.Module, weight_decay: float, no_decay_names: Iterable[str] = ()
) -> List[Dict[str, Any]]:
    """No weight decay on biases, norms (1-D parameters) and parameters named in ``no_decay_names``."""
    decay, no_decay = [], []
    suffixes = tuple(no_decay_names)
    for name, p in model.named_parameters():
        if p.ndim < 2 or (suffixes and name.endswith(suffixes)):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def setup_distributed(device_pref: Optional[str]) -> Tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group under torchrun.

    ``device_pref``: None (this rank's GPU if CUDA is available, else CPU), "cpu",
    "cuda" or "cuda:N". Backend: nccl on CUDA, gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_pref != "cpu"
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if device_pref is not None:
        device = torch.device(device_pref)
    elif torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return rank, world, device


def teardown_distributed() -> None:
    if dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.destroy_process_group()


def all_reduce_sum(values: List[float], device: torch.device) -> List[float]:
    """Element-wise sum over ranks (identity without a process group)."""
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def check_resumable(
    saved: Dict[str, Any],
    now: Dict[str, Any],
    may_change: Iterable[str],
    defaults: Optional[Dict[str, Any]] = None,
) -> None:
    """Refuse to resume when a field outside ``may_change`` differs from the checkpoint's config.

    ``defaults``: values for fields missing from ``saved`` (a field added after the
    checkpoint was written counts as its default); without it a missing field is None.
    """
    allowed = set(may_change)
    defaults = defaults or {}
    diff = {
        k: (saved.get(k, defaults.get(k)), v)
        for k, v in now.items()
        if k not in allowed and saved.get(k, defaults.get(k)) != v
    }
    if diff:
        raise ValueError(f"--resume: configuration differs from the checkpoint's: {diff}")


def clip_grad_norm(params: Sequence[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` (L2) that also accepts sparse gradients (torch 2.x's does not)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norms = []
    for g in grads:
        if g.is_sparse:
            g = g.coalesce()._values()
        norms.append(torch.linalg.vector_norm(g.float(), 2))
    total = torch.linalg.vector_norm(torch.stack(norms), 2)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce() * coef.to(p.grad.dtype)
        else:
            p.grad.mul_(coef.to(p.grad.device, p.grad.dtype))
    return total


# ---------------------------------------------------------------- features and batch sampling


class ShardedBucketSampler:
    """Base of the seeded, length-bucketed batch samplers, sharded over distributed ranks.

    Each epoch: a seeded permutation of all items (``torch.Generator`` seeded with
    ``seed * 1_000_003 + epoch``; identity order without ``shuffle``) is cut into pools
    of ``_pool_len()`` items; each pool is sorted by length (stable) and cut into batches by
    the subclass's ``_cut_pool``; the batch order is shuffled with the same generator.
    Every rank computes the same list and takes every ``num_replicas``-th batch; the list
    is padded by repeating batches from its start so all ranks run the same number of
    steps (DDP requires it). ``state_dict`` (epoch, position, seed) makes iteration
    resumable mid-epoch.
    """

    def __init__(self, lengths: torch.Tensor, seed: int, num_replicas: int, rank: int, shuffle: bool):
        if not 0 <= rank < num_replicas:
            raise ValueError("rank must be in [0, num_replicas)")
        self.lengths = torch.as_tensor(lengths, dtype=torch.long)
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0  # batches of this epoch already consumed on this rank

    def _pool_len(self) -> int:
        """Items per pool."""
        raise NotImplementedError

    def _cut_pool(self, chunk: torch.Tensor) -> List[List[int]]:
        """Batches from one pool's indices, sorted by length."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.position = 0
        self.epoch = epoch

    def _all_batches(self) -> List[List[int]]:
        n = len(self.lengths)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        pool = self._pool_len()
        batches: List[List[int]] = []
        for start in range(0, n, pool):
            chunk = order[start : start + pool]
            batches.extend(self._cut_pool(chunk[torch.sort(self.lengths[chunk], stable=True).indices]))
        if self.shuffle:
            perm = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[i] for i in perm]
        short = (-len(batches)) % self.num_replicas
        batches.extend(batches[:short])
        return batches

    def batches(self) -> List[List[int]]:
        """This rank's batches of the current epoch (all of them, ignoring position)."""
        return self._all_batches()[self.rank :: self.num_replicas]

    def __len__(self) -> int:
        return len(self.batches())

    def __iter__(self) -> Iterator[List[int]]:
        mine = self.batches()
        while self.position < len(mine):
            batch = mine[self.position]
            self.position += 1
            yield batch

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError("sampler state was saved with a different seed")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
