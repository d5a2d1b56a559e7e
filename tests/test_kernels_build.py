"""kernels/build.sh: the CUDA sources compile (when nvcc exists) into a library exporting the
C ABI that rescorer/_kernels_loader.py expects; the ABI's host-only entry points behave."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_SH = REPO / "kernels" / "build.sh"
LIB_NAME = "librescorer_kernels.so"
EXPECTED_SYMBOLS = {
    "rk_abi_version", "rk_error_string", "rk_last_error", "rk_arc_similarity",
    "rk_topk", "rk_row_factors", "rk_topk_select", "rk_topk_finish", "rk_topk_max_k", "rk_topk_num_splits", "rk_topk_workspace_bytes",
}


def find_nvcc():
    for cand in (os.environ.get("NVCC"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


NVCC = find_nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not installed")


def run_build(out_dir: Path, *args, env_extra=None, path=None):
    env = dict(os.environ, RK_BUILD_DIR=str(out_dir), RK_CUDA_ARCHS="80")
    env.pop("NVCC", None)
    env.pop("CXX", None)
    if path is not None:
        env["PATH"] = path
        env["CUDA_HOME"] = str(out_dir / "no-cuda-here")
    env.update(env_extra or {})
    return subprocess.run(["bash", str(BUILD_SH), *args], env=env, capture_output=True, text=True, timeout=600)


def exported_symbols(lib: Path) -> set:
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_build_without_nvcc_exits_cleanly(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("bash", "dirname", "cat", "tail", "mkdir", "mktemp", "rm", "mv", "sed"):
        if shutil.which(tool):
            (bindir / tool).symlink_to(shutil.which(tool))
    res = run_build(tmp_path / "out", path=str(bindir))
    assert res.returncode == 0, res.stderr
    assert "nvcc not found" in res.stderr
    assert "no C++ compiler" in res.stderr  # the emulator is skipped too, cleanly
    assert not (tmp_path / "out" / LIB_NAME).exists()


def test_build_rejects_unknown_option(tmp_path):
    res = run_build(tmp_path, "--bogus")
    assert res.returncode == 2 and "unknown option" in res.stderr


@pytest.fixture(scope="module")
def built_lib(tmp_path_factory):
    if NVCC is None:
        pytest.skip("nvcc not installed")
    out = tmp_path_factory.mktemp("kernels_build")
    start = time.monotonic()
    res = run_build(out, "--cuda-only", env_extra={"NVCC": NVCC})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "emulator" not in res.stderr
    lib = out / LIB_NAME
    assert lib.is_file(), res.stderr
    return out, lib, time.monotonic() - start


@needs_nvcc
def test_build_exports_c_abi(built_lib):
    _, lib, seconds = built_lib
    symbols = exported_symbols(lib)
    assert EXPECTED_SYMBOLS <= symbols, EXPECTED_SYMBOLS - symbols
    # static cudart stays private: no CUDA runtime symbols leak into the dynamic table
    assert not any(s.startswith("cuda") for s in symbols), sorted(s for s in symbols if s.startswith("cuda"))
    assert seconds < 300


@needs_nvcc
def test_build_is_idempotent(built_lib):
    out, lib, _ = built_lib
    mtime = lib.stat().st_mtime_ns
    res = run_build(out, "--cuda-only", env_extra={"NVCC": NVCC})
    assert res.returncode == 0 and "up to date" in res.stderr
    assert lib.stat().st_mtime_ns == mtime
    # a different architecture list invalidates the build
    stamp = (out / ".build-config").read_text()
    assert "sm_80" in stamp


@needs_nvcc
def test_host_side_abi(built_lib):
    """Entry points that need no GPU: version, sizes, argument checking, error strings."""
    from rescorer import _kernels_loader as kl

    _, lib_path, _ = built_lib
    lib = ctypes.CDLL(str(lib_path))
    kl._configure(lib)
    assert lib.rk_abi_version() == kl.ABI_VERSION
    assert lib.rk_topk_max_k() == 128
    assert lib.rk_error_string(0) == b"ok"
    assert lib.rk_error_string(2) == b"unsupported k"
    s = lib.rk_topk_num_splits(256, 1_000_000, 10, 132)
    assert 1 <= s <= 4096
    assert lib.rk_topk_num_splits(1 << 20, 100, 10, 132) == 1
    nbytes = lib.rk_topk_workspace_bytes(256, 1_000_000, 10, s)
    assert nbytes >= 256 * 4 + 1_000_000 * 4 + 256 * s * 10 * 8
    assert lib.rk_topk_workspace_bytes(256, 1000, 0, 1) == 0
    # invalid arguments are rejected before any CUDA call
    st = lib.rk_topk(None, None, None, 4, 10, 8, 129, 0, 0, 1, None, 0, None, None, None)
    assert st == 2 and b"k=129" in lib.rk_last_error()
    st = lib.rk_topk(None, None, None, 4, 10, 8, 5, 0, 7, 1, None, 0, None, None, None)
    assert st == 1 and b"metric=7" in lib.rk_last_error()
    st = lib.rk_topk(None, None, None, 4, 10, 8, 5, 0, 0, 1, None, 0, None, None, None)
    assert st == 3  # workspace too small
    st = lib.rk_arc_similarity(None, None, None, 1, 1, 0, 8, 0, 0, None, None)
    assert st == 0  # nothing to do for zero arcs
    st = lib.rk_arc_similarity(None, None, None, 1, 1, 3, 8, 9, 0, None, None)
    assert st == 1
    assert lib.rk_row_factors(None, 0, 8, 0, 0, None, None) == 0  # no rows: nothing to do
    st = lib.rk_topk_select(None, 10, 4, 20, 0, None, None, 5, 0, 1, None, None)
    assert st == 1 and b"ld=10" in lib.rk_last_error()  # row stride below the tile width
    assert lib.rk_topk_select(None, 20, 4, 20, 0, None, None, 0, 0, 1, None, None) == 2
    assert lib.rk_topk_finish(None, 4, 5, 0, None, None, None) == 1  # null pointers
    assert lib.rk_topk_finish(None, 0, 5, 0, None, None, None) == 0  # no queries
    st = lib.rk_row_factors(None, 5, 8, 0, 3, None, None)
    assert st == 1 and b"metric=3" in lib.rk_last_error()


@needs_nvcc
def test_loader_finds_library_via_env(built_lib, monkeypatch):
    from rescorer import _kernels_loader as kl

    _, lib_path, _ = built_lib
    monkeypatch.setenv("RESCORER_KERNELS_LIB", str(lib_path))
    kl._reset_for_tests()
    try:
        lib = kl.load()
        assert lib is not None and lib.rk_abi_version() == kl.ABI_VERSION
    finally:
        kl._reset_for_tests()


def test_loader_reports_missing_library(monkeypatch, tmp_path):
    from rescorer import _kernels_loader as kl

    monkeypatch.setenv("RESCORER_KERNELS_LIB", str(tmp_path / "nope.so"))
    monkeypatch.setattr(kl, "candidate_paths", lambda: [tmp_path / "nope.so"])
    kl._reset_for_tests()
    try:
        assert kl.load() is None
        assert "not found" in kl.load_error() and "build.sh" in kl.load_error()
    finally:
        kl._reset_for_tests()


def test_kernels_command_reports_backends_and_checks_the_emulator(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from rescorer import _kernels_loader as kl
    from rescorer.cli import main

    kl._reset_for_tests()
    try:
        res = CliRunner().invoke(main, ["kernels", "--emulator-check"])
        if kl.load_emulator() is None:
            assert res.exit_code == 1 and "not built" in res.output
        else:
            assert res.exit_code == 0, res.output
            assert "top-k indices agree 100.0%" in res.output
        assert "CUDA kernel library:" in res.output and "dispatch:" in res.output
        # no emulator library anywhere: the check is refused with the way to build it
        monkeypatch.setattr(kl, "emulator_candidate_paths", lambda: [tmp_path / "none.so"])
        kl._reset_for_tests()
        res = CliRunner().invoke(main, ["kernels", "--emulator-check"])
        assert res.exit_code == 1 and "kernels/build.sh" in res.output
        assert "none.so: not found" in res.output
    finally:
        kl._reset_for_tests()


def test_backends_and_emulator_check_are_public(monkeypatch, tmp_path):
    import torch

    from rescorer import _kernels_loader as kl
    from rescorer import ops

    kl._reset_for_tests()
    try:
        found = ops.backends()
        assert (found.cuda_device is not None) == torch.cuda.is_available()
        assert (found.kernel_library is None) != (found.kernel_error is None)
        if found.kernel_library is None:
            assert found.dispatch.startswith("torch reference for every tensor")
        if found.emulator_library is not None:
            same, err = ops.emulator_check()
            assert same == 1.0 and err < 1e-5
        monkeypatch.setattr(kl, "emulator_candidate_paths", lambda: [tmp_path / "none.so"])
        kl._reset_for_tests()
        assert ops.backends().emulator_error is not None and "none.so" in ops.backends().emulator_error
        with pytest.raises(RuntimeError, match="kernels/build.sh"):
            ops.emulator_check()
    finally:
        kl._reset_for_tests()
