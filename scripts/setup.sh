#!/usr/bin/env bash
# Set up everything the main venv needs: Debian GL libraries for headless MuJoCo, .venv with torch + cosmos_lit
# and its extras, mujoco pinned to 3.8.1. Idempotent: a second run checks and returns in about a second.
#
#   bash scripts/setup.sh                 # uses .venv in the repository
#   VENV=/tmp/venv bash scripts/setup.sh  # another venv (e.g. to test a clean install)
#
# Why each piece:
# - libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0: MUJOCO_GL=egl offscreen rendering on Mesa llvmpipe (no GPU).
#   libosmesa6: the MUJOCO_GL=osmesa fallback. libgl1 libglib2.0-0: opencv-python (pulled by robosuite).
#   No Debian ffmpeg: videos are written by PyAV, whose wheels ship their own FFmpeg.
# - torch 2.14.1 / torchvision 0.29.1 first, from this machine's local wheels, so nothing resolves a newer torch.
# - mujoco 3.8.1: the one release that runs gym-aloha 0.1.5, dm-control 1.0.41 and robosuite 1.5.2 together.
# - openpi-client 0.1.2 (the serving tests' reference client) with --no-deps: it declares numpy<2, which must not
#   decide the venv's numpy; its own imports are checked against the numpy the rest chose (a msgpack round trip).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
APT_PACKAGES=(libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0 libosmesa6 libgl1 libglib2.0-0)
TORCH=("torch==2.14.1" "torchvision==0.29.1")
EXTRAS="sim,video,text,lerobot,serve,lora,dev"
MUJOCO="3.8.1"
OPENPI_CLIENT="openpi-client==0.1.2"
LOG=${SETUP_LOG:-${TMPDIR:-/tmp}/cosmos_lit_setup.log}
STAMP="$VENV/.cosmos_lit_setup"
WANT=$(printf '%s\n' "${TORCH[@]}" "$EXTRAS" "$MUJOCO" "$OPENPI_CLIENT" "$(cat pyproject.toml)" | sha256sum | cut -c1-16)

say() { echo "setup.sh: $*"; }
fail() { echo "setup.sh: error: $*" >&2; exit 1; }
# Run a quiet step; on failure show the end of its output and stop with one line.
step() {
  local what=$1; shift
  if ! "$@" >>"$LOG" 2>&1; then
    tail -n 15 "$LOG" >&2
    fail "$what failed (full log: $LOG)"
  fi
}

# --- Debian packages --------------------------------------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  command -v apt-get >/dev/null || fail "missing Debian packages ${missing[*]} and no apt-get to install them"
  say "installing Debian packages: ${missing[*]}"
  step "apt-get update" $SUDO apt-get update -q
  step "apt-get install ${missing[*]}" env DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  say "Debian packages present (${APT_PACKAGES[*]})"
fi

# --- venv -------------------------------------------------------------------------------------------------
venv_ok() {
  # The stamp says the last install finished for these pins; the metadata check catches later hand edits.
  [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] || return 1
  "$VENV/bin/python" - "$MUJOCO" "$ROOT" <<'PY' 2>/dev/null
import sys
from importlib.metadata import PackageNotFoundError, version
want = {"torch": "2.14.1", "torchvision": "0.29.1", "mujoco": sys.argv[1]}
assert all(version(k) == v for k, v in want.items())
for leftover in ("mujoco-core", "mujoco-studio"):
    try:
        version(leftover)
    except PackageNotFoundError:
        continue
    raise SystemExit(1)
import cosmos_lit  # the editable install must point at this checkout, not at another clone
assert cosmos_lit.__file__.startswith(sys.argv[2] + "/")
PY
}

if venv_ok; then
  say "$VENV up to date (torch 2.14.1, cosmos_lit[$EXTRAS], mujoco $MUJOCO)"
  exit 0
fi

: >"$LOG"
start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  command -v "$PY" >/dev/null || fail "$PY not found (set PYTHON=/path/to/python3.11)"
  step "creating $VENV with $PY" "$PY" -m venv "$VENV"
  say "created $VENV ($("$VENV/bin/python" --version))"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

say "installing ${TORCH[*]} (local wheels)"
step "pip install ${TORCH[*]}" "${PIP[@]}" install "${TORCH[@]}"
say "installing cosmos_lit[$EXTRAS] (editable)"
step "pip install -e .[$EXTRAS]" "${PIP[@]}" install -e ".[$EXTRAS]" "${TORCH[@]}"

# robosuite asks for the newest mujoco, which is split into mujoco + mujoco-core + mujoco-studio from 4.0 on;
# a downgrade leaves the two others behind with overlapping files, so remove all three and reinstall the pin.
leftovers=$("${PIP[@]}" list --format=freeze 2>/dev/null | grep -Ei '^mujoco-(core|studio)==' || true)
have=$("$VENV/bin/python" -c "from importlib.metadata import version; print(version('mujoco'))" 2>/dev/null || echo none)
if [ -n "$leftovers" ] || [ "$have" != "$MUJOCO" ]; then
  say "pinning mujoco==$MUJOCO (had mujoco $have${leftovers:+, $(echo $leftovers)})"
  step "pip uninstall mujoco" "${PIP[@]}" uninstall -y mujoco mujoco-core mujoco-studio
  step "pip install mujoco==$MUJOCO" "${PIP[@]}" install "mujoco==$MUJOCO"
fi

say "installing $OPENPI_CLIENT (--no-deps: it declares numpy<2)"
step "pip install --no-deps $OPENPI_CLIENT" "${PIP[@]}" install --no-deps "$OPENPI_CLIENT"
step "openpi-client round trip with this numpy" "$VENV/bin/python" -c "
import numpy as np
from openpi_client import msgpack_numpy
x = {'a': np.arange(6, dtype=np.float32).reshape(2, 3), 's': np.float64(2.5)}
y = msgpack_numpy.unpackb(msgpack_numpy.packb(x))
assert np.array_equal(y['a'], x['a']) and y['a'].dtype == np.float32 and y['s'] == 2.5
import openpi_client.websocket_client_policy, openpi_client.action_chunk_broker
print('openpi-client ok with numpy', np.__version__)"

echo "$WANT" >"$STAMP"
venv_ok || fail "$VENV is still not as expected after installing (see $LOG)"
say "done in $(( $(date +%s) - start )) s: $VENV has torch 2.14.1, cosmos_lit[$EXTRAS], mujoco $MUJOCO"
