#!/usr/bin/env bash
# Build the kernels (kernels/build/, loaded by rescorer/_kernels_loader.py through ctypes):
#   librescorer_kernels.so      the CUDA kernels, with a plain C ABI (needs nvcc)
#   librescorer_kernels_emu.so  the same sources on the CPU CUDA emulator (needs a C++17
#                               compiler): same ABI on host pointers, for tests without a GPU
#
#   kernels/build.sh                   # build what is stale (otherwise says "up to date")
#   kernels/build.sh --force           # rebuild
#   kernels/build.sh --cuda-only | --emulator-only
#
# Environment:
#   RK_BUILD_DIR     output folder (default: kernels/build)
#   RK_CUDA_ARCHS    SM architectures, space separated (default: "80 90"); PTX for the
#                    highest is embedded too, so newer GPUs JIT-compile it
#   NVCC             nvcc to use; else $CUDA_HOME/bin/nvcc when CUDA_HOME is set;
#                    else nvcc on PATH, then /usr/local/cuda/bin/nvcc
#   RK_NVCC_FLAGS    extra nvcc flags
#   CXX              C++ compiler for the emulator (default: g++, then c++)
#   RK_EMU_SANITIZE  "address" or "thread": build the emulator with that sanitizer
# Exits 0 with a message when nvcc (or a C++ compiler) is absent: rescorer then uses its
# torch reference code (and the emulator tests are skipped).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${RK_BUILD_DIR:-$HERE/build}"
ARCHS="${RK_CUDA_ARCHS:-80 90}"
FORCE=0
WANT_CUDA=1
WANT_EMU=1
for a in "$@"; do
  case "$a" in
    --force) FORCE=1 ;;
    --cuda-only) WANT_EMU=0 ;;
    --emulator-only) WANT_CUDA=0 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "kernels/build.sh: unknown option $a" >&2; exit 2 ;;
  esac
done
log() { echo "[kernels] $*" >&2; }

SOURCES=(api.cu arc_similarity.cu topk.cu)
HEADERS=(common.cuh rescorer_kernels.h)
EMU_FILES=(emulator/cuda_emulator.h emulator/emulator_api.cpp)
mkdir -p "$OUT"
OBJ="$(mktemp -d "$OUT/.obj.XXXXXX")"
trap 'rm -rf "$OBJ"' EXIT

# up_to_date LIB STAMP CONFIG FILES...: the library is newer than every input and was
# built with the same compiler and flags.
up_to_date() {
  local lib="$1" stamp="$2" config="$3" f
  shift 3
  [ "$FORCE" = 0 ] && [ -f "$lib" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$config" ] || return 1
  for f in "$@" build.sh; do [ "$HERE/$f" -nt "$lib" ] && return 1; done
  return 0
}

# compile_all OUTDIR COMPILER ARGS... -- SOURCES...: one compiler process per source.
compile_all() {
  local dir="$1" cc="$2" args=() pids=() src fail=0
  shift 2
  while [ "$1" != "--" ]; do args+=("$1"); shift; done
  shift
  mkdir -p "$dir"
  for src in "$@"; do
    "$cc" "${args[@]}" -I"$HERE" -c "$HERE/$src" -o "$dir/$(basename "${src%.*}").o" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || fail=1; done
  [ "$fail" = 0 ] || { echo "kernels/build.sh: compilation failed" >&2; exit 1; }
}

build_cuda() {
  local nvcc="${NVCC:-}"
  if [ -z "$nvcc" ]; then
    if [ -n "${CUDA_HOME:-}" ]; then
      [ -x "$CUDA_HOME/bin/nvcc" ] && nvcc="$CUDA_HOME/bin/nvcc"
    elif command -v nvcc >/dev/null 2>&1; then nvcc="$(command -v nvcc)"
    elif [ -x /usr/local/cuda/bin/nvcc ]; then nvcc=/usr/local/cuda/bin/nvcc
    fi
  fi
  if [ -z "$nvcc" ] || ! [ -x "$nvcc" ]; then
    log "nvcc not found: skipping the CUDA kernel build (rescorer falls back to its torch reference implementations)"
    return 0
  fi
  local lib="$OUT/librescorer_kernels.so" gencode=() last="" a
  for a in $ARCHS; do gencode+=("-gencode" "arch=compute_$a,code=sm_$a"); last="$a"; done
  [ -n "$last" ] || { echo "kernels/build.sh: RK_CUDA_ARCHS is empty" >&2; exit 2; }
  gencode+=("-gencode" "arch=compute_$last,code=compute_$last")
  local flags=(-std=c++17 -O3 -lineinfo -Xcompiler -fPIC,-fvisibility=hidden,-Wall ${RK_NVCC_FLAGS:-})
  local config
  config="$("$nvcc" --version | tail -n 1) | ${gencode[*]} | ${flags[*]}"
  if up_to_date "$lib" "$OUT/.build-config" "$config" "${SOURCES[@]}" "${HEADERS[@]}"; then
    log "up to date: $lib"
    return 0
  fi
  log "building $lib with $nvcc for sm_${ARCHS// /, sm_}"
  local start=$SECONDS
  compile_all "$OBJ/cuda" "$nvcc" "${flags[@]}" "${gencode[@]}" -- "${SOURCES[@]}"
  # Static cudart, its symbols kept private (--exclude-libs) so they never clash with torch's.
  "$nvcc" -shared "${gencode[@]}" -cudart static -o "$OBJ/cuda/lib.so" "$OBJ"/cuda/*.o \
    -Xlinker --exclude-libs,ALL -Xlinker -soname,librescorer_kernels.so
  mv -f "$OBJ/cuda/lib.so" "$lib"
  echo "$config" > "$OUT/.build-config"
  log "built $lib in $((SECONDS - start)) s"
}

build_emulator() {
  local cxx="${CXX:-}"
  [ -n "$cxx" ] || cxx="$(command -v g++ || command -v c++ || true)"
  if [ -z "$cxx" ]; then
    log "no C++ compiler: skipping the CPU emulator build (its tests are skipped)"
    return 0
  fi
  local lib="$OUT/librescorer_kernels_emu.so"
  # -march=native: hardware FMA makes the emulated fp32 arithmetic match the GPU's fmaf and
  # is ten times faster than libm's; the library is built on the machine that runs it.
  local flags=(-x c++ -std=c++17 -O2 -march=native -DRK_EMULATE -fPIC -fvisibility=hidden
               -fno-strict-aliasing -Wall -Wno-unknown-pragmas)
  # RK_EMU_SANITIZE=address: AddressSanitizer build (load it with libasan preloaded); every
  # out-of-bounds access of a kernel to its inputs and outputs is then reported.
  # RK_EMU_SANITIZE=thread: ThreadSanitizer build (for emulator/race_check.cpp); races
  # between CUDA threads are reported (see cuda_emulator.h).
  [ -n "${RK_EMU_SANITIZE:-}" ] && flags+=(-g -fno-omit-frame-pointer "-fsanitize=$RK_EMU_SANITIZE")
  local config
  config="emulator | $("$cxx" --version | head -n 1) | $(uname -m) | ${flags[*]}"
  if up_to_date "$lib" "$OUT/.build-config-emu" "$config" "${SOURCES[@]}" "${HEADERS[@]}" "${EMU_FILES[@]}"; then
    log "up to date: $lib"
    return 0
  fi
  log "building $lib (CPU emulator) with $cxx"
  local start=$SECONDS
  compile_all "$OBJ/emu" "$cxx" "${flags[@]}" -- "${SOURCES[@]}" emulator/emulator_api.cpp
  "$cxx" -shared ${RK_EMU_SANITIZE:+"-fsanitize=$RK_EMU_SANITIZE"} -o "$OBJ/emu/lib.so" "$OBJ"/emu/*.o \
    -Wl,-soname,librescorer_kernels_emu.so
  mv -f "$OBJ/emu/lib.so" "$lib"
  echo "$config" > "$OUT/.build-config-emu"
  log "built $lib in $((SECONDS - start)) s"
}

if [ "$WANT_CUDA" = 1 ]; then build_cuda; fi
if [ "$WANT_EMU" = 1 ]; then build_emulator; fi
