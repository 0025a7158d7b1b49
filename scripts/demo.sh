#!/usr/bin/env bash
# The README's main command: set up (idempotent), then post-train a tiny Cosmos Policy on scripted ALOHA-sim
# TransferCube demos with closed-loop evaluation in gym-aloha. Extra arguments are config overrides, e.g.
#   bash scripts/demo.sh trainer.max_steps=200
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh
export MUJOCO_GL=${MUJOCO_GL:-egl}
exec "${VENV:-.venv}/bin/python" -m cosmos_lit fit --config configs/aloha_sim.yaml "$@"
