#!/usr/bin/env bash
# Build kernels/build/librescorer_kernels.so (CUDA kernels with a plain C ABI, loaded by
# rescorer/_kernels_loader.py through ctypes).
#
#   kernels/build.sh            # build if any source changed (otherwise says "up to date")
#   kernels/build.sh --force    # rebuild
#
# Environment:
#   RK_BUILD_DIR     output folder (default: kernels/build)
#   RK_CUDA_ARCHS    SM architectures, space separated (default: "80 90"); PTX for the
#                    highest is embedded too, so newer GPUs JIT-compile it
#   NVCC             nvcc to use; else $CUDA_HOME/bin/nvcc when CUDA_HOME is set;
#                    else nvcc on PATH, then /usr/local/cuda/bin/nvcc
#   RK_NVCC_FLAGS    extra nvcc flags
# Exits 0 with a message when nvcc is absent: rescorer then uses its torch reference code.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${RK_BUILD_DIR:-$HERE/build}"
ARCHS="${RK_CUDA_ARCHS:-80 90}"
FORCE=0
for a in "$@"; do
  case "$a" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "kernels/build.sh: unknown option $a" >&2; exit 2 ;;
  esac
done
log() { echo "[kernels] $*" >&2; }

NVCC_BIN="${NVCC:-}"
if [ -z "$NVCC_BIN" ]; then
  if [ -n "${CUDA_HOME:-}" ]; then
    [ -x "$CUDA_HOME/bin/nvcc" ] && NVCC_BIN="$CUDA_HOME/bin/nvcc"
  elif command -v nvcc >/dev/null 2>&1; then NVCC_BIN="$(command -v nvcc)"
  elif [ -x /usr/local/cuda/bin/nvcc ]; then NVCC_BIN=/usr/local/cuda/bin/nvcc
  fi
fi
if [ -z "$NVCC_BIN" ] || ! [ -x "$NVCC_BIN" ]; then
  log "nvcc not found: skipping the CUDA kernel build (rescorer falls back to its torch reference implementations)"
  exit 0
fi

SOURCES=(api.cu arc_similarity.cu topk.cu)
HEADERS=(common.cuh rescorer_kernels.h)
LIB="$OUT/librescorer_kernels.so"

GENCODE=()
last=""
for a in $ARCHS; do GENCODE+=("-gencode" "arch=compute_$a,code=sm_$a"); last="$a"; done
[ -n "$last" ] || { echo "kernels/build.sh: RK_CUDA_ARCHS is empty" >&2; exit 2; }
GENCODE+=("-gencode" "arch=compute_$last,code=compute_$last")
FLAGS=(-std=c++17 -O3 -lineinfo -Xcompiler -fPIC,-fvisibility=hidden,-Wall ${RK_NVCC_FLAGS:-})

# Up to date when the library is newer than every input and was built with the same
# compiler, architectures and flags.
STAMP="$OUT/.build-config"
CONFIG="$("$NVCC_BIN" --version | tail -n 1) | ${GENCODE[*]} | ${FLAGS[*]}"
if [ "$FORCE" = 0 ] && [ -f "$LIB" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$CONFIG" ]; then
  stale=0
  for f in "${SOURCES[@]}" "${HEADERS[@]}" build.sh; do
    [ "$HERE/$f" -nt "$LIB" ] && stale=1
  done
  if [ "$stale" = 0 ]; then
    log "up to date: $LIB"
    exit 0
  fi
fi

mkdir -p "$OUT"
OBJ="$(mktemp -d "$OUT/.obj.XXXXXX")"
trap 'rm -rf "$OBJ"' EXIT
log "building $LIB with $NVCC_BIN for sm_${ARCHS// /, sm_}"
start=$SECONDS
pids=()
for src in "${SOURCES[@]}"; do
  "$NVCC_BIN" "${FLAGS[@]}" "${GENCODE[@]}" -I"$HERE" -c "$HERE/$src" -o "$OBJ/${src%.cu}.o" &
  pids+=($!)
done
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
[ "$fail" = 0 ] || { echo "kernels/build.sh: compilation failed" >&2; exit 1; }
# Static cudart, its symbols kept private (--exclude-libs) so they never clash with torch's.
"$NVCC_BIN" -shared "${GENCODE[@]}" -cudart static -o "$OBJ/lib.so" "$OBJ"/*.o \
  -Xlinker --exclude-libs,ALL -Xlinker -soname,librescorer_kernels.so
mv -f "$OBJ/lib.so" "$LIB"
echo "$CONFIG" > "$STAMP"
log "built $LIB in $((SECONDS - start)) s"
