"""Locate and load ``librescorer_kernels.so`` (built by ``kernels/build.sh``) with ctypes.

The library has a plain C ABI (``kernels/rescorer_kernels.h``), so it does not depend on
torch's C++ ABI. Search order: ``$RESCORER_KERNELS_LIB``, then ``kernels/build/`` of this
checkout. ``load()`` returns the configured ``ctypes.CDLL`` or ``None`` (and remembers why
in ``load_error()``); it never raises.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

ABI_VERSION = 1
LIB_NAME = "librescorer_kernels.so"

DTYPE_F32, DTYPE_F16, DTYPE_BF16 = 0, 1, 2
METRIC_COSINE, METRIC_SQEUCLIDEAN = 0, 1
STATUS_NAMES = {0: "ok", 1: "invalid argument", 2: "unsupported k", 3: "workspace too small", 4: "CUDA error"}

_lib: ctypes.CDLL | None = None
_tried = False
_error: str | None = None


def candidate_paths() -> list[Path]:
    paths = []
    env = os.environ.get("RESCORER_KERNELS_LIB")
    if env:
        paths.append(Path(env))
    paths.append(Path(__file__).resolve().parent.parent / "kernels" / "build" / LIB_NAME)
    return paths


def _configure(lib: ctypes.CDLL) -> None:
    c_i64, c_int, c_size, c_vp = ctypes.c_int64, ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p
    lib.rk_abi_version.argtypes = []
    lib.rk_abi_version.restype = c_int
    lib.rk_error_string.argtypes = [c_int]
    lib.rk_error_string.restype = ctypes.c_char_p
    lib.rk_last_error.argtypes = []
    lib.rk_last_error.restype = ctypes.c_char_p
    lib.rk_arc_similarity.argtypes = [c_vp, c_vp, c_vp, c_i64, c_i64, c_i64, c_i64, c_int, c_int, c_vp, c_vp]
    lib.rk_arc_similarity.restype = c_int
    lib.rk_topk_max_k.argtypes = []
    lib.rk_topk_max_k.restype = c_int
    lib.rk_topk_num_splits.argtypes = [c_i64, c_i64, c_int, c_int]
    lib.rk_topk_num_splits.restype = c_i64
    lib.rk_topk_workspace_bytes.argtypes = [c_i64, c_i64, c_int, c_i64]
    lib.rk_topk_workspace_bytes.restype = c_size
    lib.rk_topk.argtypes = [c_vp, c_vp, c_i64, c_i64, c_i64, c_int, c_int, c_int, c_i64,
                            c_vp, c_size, c_vp, c_vp, c_vp]
    lib.rk_topk.restype = c_int


def load() -> ctypes.CDLL | None:
    """The loaded library, or None when it is not built / not loadable / the wrong version."""
    global _lib, _tried, _error
    if _tried:
        return _lib
    _tried = True
    errors = []
    for path in candidate_paths():
        if not path.is_file():
            errors.append(f"{path}: not found")
            continue
        try:
            lib = ctypes.CDLL(str(path))
            _configure(lib)
            version = lib.rk_abi_version()
        except (OSError, AttributeError) as exc:
            errors.append(f"{path}: {exc}")
            continue
        if version != ABI_VERSION:
            errors.append(f"{path}: ABI version {version}, expected {ABI_VERSION} (rebuild with kernels/build.sh --force)")
            continue
        _lib = lib
        _error = None
        return _lib
    _error = "; ".join(errors) + " (build it with kernels/build.sh)"
    return None


def load_error() -> str | None:
    """Why load() returned None (None if it succeeded or was not tried)."""
    return _error


def check(lib: ctypes.CDLL, status: int, what: str) -> None:
    """Raise RuntimeError for a non-zero status returned by the library."""
    if status != 0:
        detail = lib.rk_last_error().decode("utf-8", "replace")
        raise RuntimeError(f"{what} failed: {STATUS_NAMES.get(status, status)}: {detail}")


def _reset_for_tests() -> None:
    global _lib, _tried, _error
    _lib, _tried, _error = None, False, None
