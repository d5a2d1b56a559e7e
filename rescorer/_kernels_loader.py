"""Locate and load ``librescorer_kernels.so`` (built by ``kernels/build.sh``) with ctypes.

The library has a plain C ABI (``kernels/rescorer_kernels.h``), so it does not depend on
torch's C++ ABI. Search order: ``$RESCORER_KERNELS_LIB``, then ``kernels/build/`` of this
checkout. ``load()`` returns the configured ``ctypes.CDLL`` or ``None`` (and remembers why
in ``load_error()``); it never raises.

``load_emulator()`` does the same for ``librescorer_kernels_emu.so``: the same kernel
sources built for the CPU CUDA emulator (``kernels/emulator/``), same ABI on host pointers.
Only tests use it, to run the kernels where there is no GPU; it is never dispatched to.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

ABI_VERSION = 3
LIB_NAME = "librescorer_kernels.so"
EMU_LIB_NAME = "librescorer_kernels_emu.so"
#: Schedules of the emulator (rk_emu_set_schedule): order in which a block's threads resume.
EMU_FORWARD, EMU_REVERSE, EMU_SHUFFLED = 0, 1, 2

DTYPE_F32, DTYPE_F16, DTYPE_BF16 = 0, 1, 2
METRIC_COSINE, METRIC_SQEUCLIDEAN = 0, 1
STATUS_NAMES = {0: "ok", 1: "invalid argument", 2: "unsupported k", 3: "workspace too small", 4: "CUDA error"}

# kind ("cuda" / "emulator") -> (library or None, why not); filled on first use.
_loaded: dict = {}


def _build_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "kernels" / "build"


def _paths(env_var: str, name: str) -> list[Path]:
    env = os.environ.get(env_var)
    return ([Path(env)] if env else []) + [_build_dir() / name]


def candidate_paths() -> list[Path]:
    return _paths("RESCORER_KERNELS_LIB", LIB_NAME)


def emulator_candidate_paths() -> list[Path]:
    return _paths("RESCORER_KERNELS_EMU_LIB", EMU_LIB_NAME)


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
    lib.rk_row_factors.argtypes = [c_vp, c_i64, c_i64, c_int, c_int, c_vp, c_vp]
    lib.rk_row_factors.restype = c_int
    lib.rk_topk.argtypes = [c_vp, c_vp, c_vp, c_i64, c_i64, c_i64, c_int, c_int, c_int, c_i64,
                            c_vp, c_size, c_vp, c_vp, c_vp]
    lib.rk_topk.restype = c_int
    lib.rk_topk_select.argtypes = [c_vp, c_i64, c_i64, c_i64, c_i64, c_vp, c_vp, c_int, c_int, c_int, c_vp, c_vp]
    lib.rk_topk_select.restype = c_int
    lib.rk_topk_finish.argtypes = [c_vp, c_i64, c_int, c_int, c_vp, c_vp, c_vp]
    lib.rk_topk_finish.restype = c_int


def _configure_emulator(lib: ctypes.CDLL) -> None:
    _configure(lib)
    lib.rk_emu_is_emulator.argtypes = []
    lib.rk_emu_is_emulator.restype = ctypes.c_int
    lib.rk_emu_set_schedule.argtypes = [ctypes.c_int, ctypes.c_uint64]
    lib.rk_emu_set_schedule.restype = ctypes.c_int


def open_library(path: Path, emulator: bool = False) -> ctypes.CDLL:
    """Load and configure one library file; raises OSError naming what is wrong with it."""
    try:
        lib = ctypes.CDLL(str(path))
        (_configure_emulator if emulator else _configure)(lib)
        version = lib.rk_abi_version()
    except AttributeError as exc:
        raise OSError(f"{path}: {exc}") from None
    if version != ABI_VERSION:
        raise OSError(f"{path}: ABI version {version}, expected {ABI_VERSION} (rebuild with kernels/build.sh --force)")
    return lib


def _first_loadable(paths: list[Path], emulator: bool) -> tuple[ctypes.CDLL | None, str | None]:
    errors = []
    for path in paths:
        if not path.is_file():
            errors.append(f"{path}: not found")
            continue
        try:
            return open_library(path, emulator), None
        except OSError as exc:
            errors.append(str(exc) if str(path) in str(exc) else f"{path}: {exc}")
    return None, "; ".join(errors) + " (build it with kernels/build.sh)"


def _load(kind: str) -> ctypes.CDLL | None:
    """Load (once) the library of this kind: "cuda" or "emulator"."""
    if kind not in _loaded:
        paths = candidate_paths() if kind == "cuda" else emulator_candidate_paths()
        _loaded[kind] = _first_loadable(paths, emulator=kind == "emulator")
    return _loaded[kind][0]


def load() -> ctypes.CDLL | None:
    """The loaded library, or None when it is not built / not loadable / the wrong version."""
    return _load("cuda")


def load_error() -> str | None:
    """Why load() returned None (None if it succeeded or was not tried)."""
    return _loaded.get("cuda", (None, None))[1]


def load_emulator() -> ctypes.CDLL | None:
    """The CPU-emulated kernel library (tests only), or None; see emulator_load_error()."""
    return _load("emulator")


def emulator_load_error() -> str | None:
    """Why load_emulator() returned None."""
    return _loaded.get("emulator", (None, None))[1]


def check(lib: ctypes.CDLL, status: int, what: str) -> None:
    """Raise RuntimeError for a non-zero status returned by the library."""
    if status != 0:
        detail = lib.rk_last_error().decode("utf-8", "replace")
        raise RuntimeError(f"{what} failed: {STATUS_NAMES.get(status, status)}: {detail}")


def _reset_for_tests() -> None:
    _loaded.clear()
