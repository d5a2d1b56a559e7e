# Shared recipe plumbing, sourced by recipes/<corpus>/run.sh (logic lives in the package;
# this only parses --stage/--stop-stage, sets up the environment and logs).
set -euo pipefail
shopt -s inherit_errexit
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
stage=0
stop_stage=100
num_jobs=2
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage="$2"; shift 2 ;;
    --stop-stage) stop_stage="$2"; shift 2 ;;
    --num-jobs|-j) num_jobs="$2"; shift 2 ;;
    -h|--help) echo "usage: $0 [--stage N] [--stop-stage M] [--num-jobs J]"; exit 0 ;;
    *) echo "$0: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p exp/log
log() { echo "$(date '+%H:%M:%S') [$(basename "$(pwd)")] $*" | tee -a exp/log/run.log >&2; }
run_stage() { [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ]; }
bash "$REPO/scripts/setup.sh" >/dev/null
PY="$REPO/.envs/k2/bin/python"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
rescorer() { "$PY" -m rescorer "$@"; }
