#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite in both environments:
#   1. the reference env (torch 1.13.1 + k2 + lhotse): every test;
#   2. the modern env (torch 2.x, no k2): every test that does not handle lattices,
#      because training and kernels also run on the GPU machine's torch 2.x (tests marked
#      `native`, pure C++, and `pipeline`, whole recipes through the CLI, run once, in the first).
# Extra arguments go to pytest (both runs), e.g. scripts/test.sh -k synthetic
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
bash scripts/setup.sh --modern >/dev/null
export PYTHONDONTWRITEBYTECODE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

echo "=== reference environment: torch 1.13.1 + k2 ==="
.envs/k2/bin/python -m pytest -q -p no:cacheprovider "$@"
echo "=== modern environment: torch 2.x, no k2 (lattice tests excluded) ==="
.envs/modern/bin/python -m pytest -q -p no:cacheprovider -m "not lattice and not native and not pipeline" "$@"
