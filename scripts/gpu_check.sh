#!/usr/bin/env bash
# GPU smoke check and benchmark on a machine with CUDA PyTorch (no network): installs cosmos_lit and the few
# pure-Python packages a stock CUDA image lacks from pre-downloaded wheels in .wheels/, then
#   1. times the 2B policy per action chunk and one bf16-mixed training step against their FLOP floors
#      (benchmarks/bench_policy_latency.py), best-of-8 planning with 3 futures x 5 values (bench_planning.py) and
#      the DiT's forward + backward against diffusers' (bench_backbone_step.py): issue 18's GPU rows;
#   2. runs a short bf16-mixed `fit` of the tiny model on CUDA through the CLI (ALOHA-format episodes written here).
# Everything it prints goes to $OUT/*.txt (docs/speed.md takes its tables from there).
# Prepare on a machine with PyPI:  pip download --no-deps -d .wheels diffusers hydra-core omegaconf \
#   antlr4-python3-runtime==4.9.3 importlib_metadata
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
$PY -m pip install -q --no-deps --no-build-isolation --no-index .wheels/* 2>&1 | tail -2 || true
$PY -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$PY - "$OUT/episodes" <<'PY'
import sys
import numpy as np
from cosmos_lit.datamodules.aloha import write_aloha_episode
rng = np.random.default_rng(0)
for i in range(4):
    t = np.linspace(0, 1, 120)[:, None]
    qpos = (np.sin(6 * t + np.arange(14)) * 0.3).astype(np.float32)
    images = {"top": rng.integers(0, 255, (120, 64, 64, 3), dtype=np.uint8)}
    write_aloha_episode(f"{sys.argv[1]}/episode_{i}.hdf5", qpos, qpos, images, attrs={"sim": True})
PY
$PY benchmarks/bench_policy_latency.py --cameras 3 --steps 1 5 10 --batch 1 --train-batch 8 --reps 5 2>&1 | tee "$OUT/bench_policy_latency.txt"
$PY benchmarks/bench_policy_latency.py --cameras 2 --steps 5 --batch 1 --train-batch 0 --reps 5 2>&1 | tee -a "$OUT/bench_policy_latency.txt"
$PY benchmarks/bench_planning.py --model 2b --candidates 8 --futures 3 --values 5 --reps 1 2>&1 | tee "$OUT/bench_planning.txt"
$PY benchmarks/bench_backbone_step.py --backbone cosmos_predict2_2b --frames 11 --hw 28 --batch 4 --reps 3 2>&1 \
  | tee "$OUT/bench_backbone_step.txt"
$PY -m cosmos_lit fit --config configs/aloha_sim.yaml data=aloha data.data_dir="$OUT/episodes" data.cameras=[top] \
  data.image_size=64 data.batch_size=8 data.num_workers=2 data.val_fraction=0.25 model/text_encoder=hash trainer=gpu \
  trainer.max_steps=40 trainer.val_check_interval=20 trainer.limit_val_batches=2 eval=none run_dir="$OUT/run" \
  2>&1 | tail -25 | tee "$OUT/fit_gpu.txt"
ls "$OUT/run/checkpoints" && tail -3 "$OUT"/run/logs/version_0/metrics.csv
