#!/usr/bin/env bash
# Set up everything rescorer needs on a fresh Debian machine with Python 3.11.
#
#   scripts/setup.sh            # reference env: torch 1.13.1 + k2 1.23.4 + lhotse (+ Debian TTS engines)
#   scripts/setup.sh --modern   # also the modern env: torch 2.x, no k2
#
# Idempotent: each step checks first and does nothing when its work is done, so a
# second run takes seconds. Environments live outside the checkout (keyed by the
# hash of their requirements file) so fresh clones reuse them; override the place
# with RESCORER_ENV_HOME. Prints the path of the reference env's python last.
set -euo pipefail
shopt -s inherit_errexit  # errors inside $(...) must stop the script too

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_HOME="${RESCORER_ENV_HOME:-$HOME/.cache/rescorer/envs}"
PYTHON="${RESCORER_PYTHON:-python3.11}"
WANT_MODERN=0
for a in "$@"; do
  case "$a" in
    --modern) WANT_MODERN=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $a" >&2; exit 2 ;;
  esac
done
log() { echo "[setup] $*" >&2; }

# ---- Debian packages: speech synthesis engines, voices, text sources, sox, a C++ compiler
#      (the CPU CUDA emulator the kernel tests run on) ----
DEB_PKGS=(espeak-ng libespeak-ng1 flite festival festvox-kallpc16k festvox-kdlpc16k
          festvox-us-slt-hts fortunes wamerican sox libsndfile1 g++)
missing=()
for p in "${DEB_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

hash_of() { sha256sum "$1" | cut -c1-10; }

# make_env NAME REQUIREMENTS [k2]: a venv with the pinned requirements, the package
# installed editable from this checkout, and optionally k2.
make_env() {
  local name="$1" req="$2" with_k2="${3:-}"
  local dir="$ENV_HOME/$name-$(hash_of "$req")"
  if [ ! -f "$dir/.complete" ]; then
    log "creating $dir (first time: several minutes)"
    rm -rf "$dir"
    "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --upgrade "pip==25.0.1"
    "$dir/bin/python" -m pip install -q -r "$req"
    if [ -n "$with_k2" ]; then install_k2 "$dir"; fi
    touch "$dir/.complete"
  fi
  # The package: editable install pointing at this checkout (re-pointed when the checkout moves).
  local here
  here="$(cd / && "$dir/bin/python" -c 'import rescorer, os; print(os.path.dirname(os.path.dirname(rescorer.__file__)))' 2>/dev/null || true)"
  if [ "$here" != "$REPO" ]; then
    log "installing rescorer (editable) from $REPO into $name"
    "$dir/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$REPO"
  fi
  echo "$dir"
}

# k2 1.23.4 has one file per Python version, all tagged py3.x-none-any, and pip picks
# the py3.9 one. Ask pip's own index listing for the py3.11 file and install it by URL.
install_k2() {
  local dir="$1" url
  if "$dir/bin/python" -c 'import k2' 2>/dev/null; then return; fi
  log "selecting the k2 1.23.4 file built for Python 3.11"
  url="$("$dir/bin/python" - <<'EOF'
import re, urllib.parse, urllib.request
from pip._internal.models.index import PyPI
from pip._internal.configuration import Configuration
cfg = Configuration(isolated=False); cfg.load()
index = dict(cfg.items()).get("global.index-url", PyPI.simple_url).rstrip("/")
html = urllib.request.urlopen(index + "/k2/", timeout=120).read().decode()
links = re.findall(r'href="([^"]*k2-1\.23\.4-py3\.11-none-any\.whl[^"]*)"', html)
if not links:
    raise SystemExit("k2-1.23.4-py3.11-none-any.whl not found in the package index")
link = links[0].replace("&amp;", "&")
print(link if "://" in link else urllib.parse.urljoin(index + "/k2/", link))
EOF
)"
  "$dir/bin/python" -m pip install -q --no-deps "$url"
  "$dir/bin/python" -c 'import k2, torch; assert torch.__version__.startswith("1.13.1"), torch.__version__' \
    || { echo "setup.sh: k2 installed but does not import" >&2; exit 1; }
}

REF_ENV="$(make_env py311-k2 "$REPO/requirements/k2.txt" k2)"
mkdir -p "$REPO/.envs"; ln -sfn "$REF_ENV" "$REPO/.envs/k2"
if [ "$WANT_MODERN" = 1 ]; then
  MOD_ENV="$(make_env py311-modern "$REPO/requirements/modern.txt")"
  ln -sfn "$MOD_ENV" "$REPO/.envs/modern"
fi
# CUDA kernels: built wherever nvcc exists (compiles without a GPU; skipped without nvcc).
bash "$REPO/kernels/build.sh" >&2
log "ready: reference env $REF_ENV${MOD_ENV:+, modern env $MOD_ENV}"
echo "$REF_ENV/bin/python"
