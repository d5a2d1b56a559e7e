"""Which inference precision runs fast here: ``compute_type`` names as CTranslate2 uses them.

Why: on CPUs with native bfloat16 matrix units (AMX, AVX512-BF16) the embedder's frame
layers run about 3x faster in bfloat16, with embedding similarities within ~2e-3 of
float32 (measured on speechocean762 dev: ``results/rescore_cost.json``); elsewhere
bfloat16 is emulated and slow, so ``auto`` only picks it where it is native.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

COMPUTE_TYPES = ("float32", "bfloat16", "auto")
_NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bfloat16(device: torch.device) -> bool:
    """Whether bfloat16 matrix products are native (not emulated) on ``device``."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return any(flag in _cpu_flags() for flag in _NATIVE_BF16_FLAGS)


def resolve_compute_type(compute_type: str, device: torch.device) -> torch.dtype:
    """``float32`` | ``bfloat16`` | ``auto`` (bfloat16 where native, else float32) -> a dtype."""
    if compute_type not in COMPUTE_TYPES:
        raise ValueError(f"compute_type must be one of {', '.join(COMPUTE_TYPES)}, not {compute_type!r}")
    if compute_type == "auto":
        return torch.bfloat16 if native_bfloat16(device) else torch.float32
    return torch.bfloat16 if compute_type == "bfloat16" else torch.float32
