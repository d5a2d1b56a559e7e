"""The CPU CUDA emulator (kernels/emulator/) must catch the bugs it exists to catch: each test
builds the kernel sources with one deliberate defect and checks that the emulated kernels
then give wrong results or fail with a message naming the problem; the unmodified kernels
run clean under AddressSanitizer (out-of-bounds accesses) and ThreadSanitizer (races
between CUDA threads). (That they agree with the references under every schedule is
tested in test_ops.py.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rescorer import _kernels_loader as kl
from rescorer import ops

REPO = Path(__file__).resolve().parents[1]
KERNELS = REPO / "kernels"
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
# Everything here builds and checks C++ (the emulator, the kernels): run once per test run.
pytestmark = [pytest.mark.skipif(CXX is None, reason="no C++ compiler"), pytest.mark.native]

TILE_BARRIER = "    __syncthreads();  // C, wf (and on the first tile lists, qf) visible to all warps\n"


def build_variant(tmp_path: Path, file: str, old: str, new: str):
    """Copy kernels/, replace `old` (which must occur once) by `new` in `file`, build the
    emulator library and load it."""
    src = tmp_path / "kernels"
    shutil.copytree(KERNELS, src, ignore=shutil.ignore_patterns("build"))
    text = (src / file).read_text()
    assert text.count(old) == 1, f"{file}: the text to mutate is not there once; update this test"
    (src / file).write_text(text.replace(old, new))
    out = tmp_path / "build"
    res = subprocess.run(["bash", str(src / "build.sh"), "--emulator-only"], capture_output=True, text=True,
                         env=dict(os.environ, RK_BUILD_DIR=str(out)), timeout=600)
    assert res.returncode == 0, res.stderr
    return kl.open_library(out / kl.EMU_LIB_NAME, emulator=True)


def agreement(lib, schedule: int, dtype=torch.float32) -> float:
    """Share of top-k indices equal to the reference's on random data."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(70, 96, generator=g).to(dtype)
    w = torch.randn(1500, 96, generator=g).to(dtype)
    assert lib.rk_emu_set_schedule(schedule, 3) == 0
    _, got = ops._topk_kernel(lib, q, w, 40, "cosine")
    _, want = ops.topk_nearest_reference(q, w, 40, "cosine")
    return (got == want).float().mean().item()


def test_setup_built_the_emulator():
    """Where a C++ compiler exists, set-up builds the emulator, so the emulator half of the
    kernel tests in test_ops.py runs instead of being skipped."""
    kl._reset_for_tests()
    try:
        assert kl.load_emulator() is not None, kl.emulator_load_error()
    finally:
        kl._reset_for_tests()


def test_unmodified_copy_builds_exports_the_abi_and_agrees(tmp_path):
    lib = build_variant(tmp_path, "topk.cu", TILE_BARRIER, TILE_BARRIER)
    assert lib.rk_emu_is_emulator() == 1 and lib.rk_abi_version() == kl.ABI_VERSION
    assert lib.rk_emu_set_schedule(7, 0) == 1  # unknown schedule rejected
    for schedule in (kl.EMU_FORWARD, kl.EMU_REVERSE, kl.EMU_SHUFFLED):
        assert agreement(lib, schedule) == 1.0


def test_missing_barrier_gives_wrong_results(tmp_path):
    lib = build_variant(tmp_path, "topk.cu", TILE_BARRIER, "")
    worst = min(agreement(lib, s) for s in (kl.EMU_FORWARD, kl.EMU_REVERSE, kl.EMU_SHUFFLED))
    assert worst < 0.95, worst


def test_missing_warp_sync_on_the_tensor_core_path_gives_wrong_results(tmp_path):
    old = "    __syncthreads();  // operand tiles are overwritten next (by the next chunk or by C)\n"
    lib = build_variant(tmp_path, "topk.cu", old, "")
    assert agreement(lib, kl.EMU_FORWARD, torch.float16) < 0.5


def test_divergent_barrier_is_reported(tmp_path):
    lib = build_variant(tmp_path, "topk.cu", TILE_BARRIER, "    if (threadIdx.x < 128) __syncthreads();\n")
    with pytest.raises(RuntimeError, match=r"CUDA error.*different __syncthreads: .*topk\.cu:\d+"):
        agreement(lib, kl.EMU_FORWARD)
    # the library stays usable after a failed launch (the error is reported once)
    lib.rk_abi_version()


def test_divergent_warp_collective_is_reported(tmp_path):
    old = "      __syncwarp();\n      warp_merge<KCAP, BN>"
    lib = build_variant(tmp_path, "topk.cu", old, "      if (lane < 16) __syncwarp();\n      warp_merge<KCAP, BN>")
    with pytest.raises(RuntimeError, match="different collectives|deadlock"):
        agreement(lib, kl.EMU_FORWARD)


def test_shared_memory_overrun_is_reported(tmp_path):
    old = "         + (size_t)(BM + BN) * 4;   // query and vocabulary row factors"
    lib = build_variant(tmp_path, "topk.cu", old, "         + (size_t)(BM + BN) * 4 - 16;")
    with pytest.raises(RuntimeError, match="wrote past its .* bytes of dynamic shared memory"):
        agreement(lib, kl.EMU_FORWARD)


ASAN_CASES = r'''
import sys
import torch
from rescorer import _kernels_loader as kl, ops

lib = kl.load_emulator()
assert lib is not None and "asan" in lib._name, kl.emulator_load_error()
g = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    for n, v, d, k in [(1, 1, 1, 1), (3, 63, 7, 5), (65, 129, 100, 32), (2, 50, 37, 128)]:
        buf = torch.randn(v * d + 1, generator=g).to(dtype)
        for w in (buf[:-1].view(v, d), buf[1:].view(v, d)):  # aligned and unaligned rows
            q = torch.randn(n, d, generator=g).to(dtype)
            for metric in ops.METRICS:
                ops._topk_kernel(lib, q, w, k, metric, ops._factors_kernel(lib, w, metric) if k == 5 else None)
                ops._topk_gemm(lib, q, w, k, metric, tile_bytes=4 * n * 64)
                arcs = torch.stack([torch.randint(0, n, (40,), generator=g), torch.randint(0, v, (40,), generator=g)], 1)
                ops._arc_kernel(lib, q, w, arcs, metric)
if len(sys.argv) > 1:  # planted defect: an output buffer one element short
    a, arcs = torch.randn(10, 32), torch.randint(0, 10, (100, 2))
    out = torch.empty(99)
    lib.rk_arc_similarity(a.data_ptr(), a.data_ptr(), arcs.data_ptr(), 10, 10, 100, 32, 0, 0, out.data_ptr(), None)
print("clean")
'''


def test_kernels_stay_in_bounds_under_address_sanitizer(tmp_path):
    """The emulator built with AddressSanitizer sees every access of a kernel to its input
    and output tensors (torch's CPU allocations get red zones): no shape, alignment or k
    may read or write outside them. A planted one-element overrun proves it would tell."""
    libasan = subprocess.run([CXX, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(libasan) or not os.path.exists(libasan):
        pytest.skip("no libasan for this compiler")
    out = tmp_path / "asan"
    res = subprocess.run(["bash", str(KERNELS / "build.sh"), "--emulator-only"], capture_output=True, text=True,
                         env=dict(os.environ, RK_BUILD_DIR=str(out), RK_EMU_SANITIZE="address"), timeout=600)
    assert res.returncode == 0, res.stderr
    lib = out / "librescorer_kernels_emu_asan.so"
    (out / kl.EMU_LIB_NAME).rename(lib)
    script = tmp_path / "cases.py"
    script.write_text(ASAN_CASES)
    env = dict(os.environ, LD_PRELOAD=libasan, ASAN_OPTIONS="detect_leaks=0", RESCORER_KERNELS_EMU_LIB=str(lib),
               PYTHONPATH=str(REPO))
    clean = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert clean.returncode == 0 and "clean" in clean.stdout, clean.stderr[-3000:]
    assert "AddressSanitizer" not in clean.stderr
    planted = subprocess.run([sys.executable, str(script), "overrun"], capture_output=True, text=True, env=env,
                             timeout=600)
    assert planted.returncode != 0 and "heap-buffer-overflow" in planted.stderr, planted.stderr[-3000:]
    assert "arc_similarity_kernel" in planted.stderr


def build_race_check(kernels_dir: Path, out: Path) -> Path:
    """The emulator library from `kernels_dir`, built by its build.sh with ThreadSanitizer
    (every CUDA thread a TSan fiber, every barrier a release/acquire), and
    emulator/race_check.cpp linked against it."""
    lib_dir, exe = out / "lib", out / "race_check"
    res = subprocess.run(["bash", str(kernels_dir / "build.sh"), "--emulator-only"], capture_output=True, text=True,
                         env=dict(os.environ, RK_BUILD_DIR=str(lib_dir), RK_EMU_SANITIZE="thread"), timeout=600)
    if res.returncode != 0 and "sanitize" in res.stderr:
        pytest.skip(f"no ThreadSanitizer for this compiler: {res.stderr[-300:]}")
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run([CXX, "-std=c++17", "-g", "-fsanitize=thread", "-DRK_EMULATE", f"-I{kernels_dir}",
                          str(kernels_dir / "emulator" / "race_check.cpp"), f"-L{lib_dir}",
                          f"-l:{kl.EMU_LIB_NAME}", f"-Wl,-rpath,{lib_dir}", "-o", str(exe)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return exe


def test_no_data_races_under_thread_sanitizer(tmp_path):
    """Every kernel path (fp32 and tensor-core products, the three list capacities, the
    GEMM-path selection, both metrics): no access of one CUDA thread races with another's
    write, under TSan's happens-before analysis rather than one lucky schedule."""
    exe = build_race_check(KERNELS, tmp_path)
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "race_check: ok" in res.stdout, res.stderr[-5000:]
    assert "ThreadSanitizer" not in res.stderr


def test_planted_race_is_reported_by_thread_sanitizer(tmp_path):
    src = tmp_path / "kernels"
    shutil.copytree(KERNELS, src, ignore=shutil.ignore_patterns("build"))
    text = (src / "topk.cu").read_text()
    assert text.count(TILE_BARRIER) == 1
    (src / "topk.cu").write_text(text.replace(TILE_BARRIER, ""))
    res = subprocess.run([str(build_race_check(src, tmp_path / "out"))], capture_output=True, text=True, timeout=600)
    assert res.returncode != 0
    assert "WARNING: ThreadSanitizer: data race" in res.stderr and "topk_tile_kernel" in res.stderr
