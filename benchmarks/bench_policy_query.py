"""Policy query latency (observation dicts in, action chunk out) of a config's model: the previous path vs today's.

The model is the one ``python -m cosmos_lit fit --config CONFIG [OVERRIDES]`` trains (built from the composed config
and its data's spec and statistics; initial weights: the time does not depend on them), wrapped as the
``CosmosPolicy`` that the closed-loop evaluation calls, with the evaluation's denoising steps. One query is what an
evaluation does per chunk: image resize and normalization, encoding, ``num_steps`` DiT evaluations, read-out and
un-normalization, for a batch of ``B`` envs (2 env workers: B = 2). Rows, all in this run:

* the previous path (``previous_path.py``: every slot image encoded, diffusers' attention processor), float32;
* today's path in float32 (only the camera images encoded) and under the precision rule's bf16
  (``cosmos_lit.precision``; fp32 attention on the CPU), each eager and with ``model.backbone.compile=true``.

The rows take turns query by query (``--reps`` rounds after each row's first query); each row's figure is its median
query. The floor is the counted FLOPs of one query over the matrix-product rate measured here: attention at the float32
rate (the DiT keeps it in float32 on a CPU), the rest at the rate of the row's number format.

    python benchmarks/bench_policy_query.py                                        # the README's default run
    python benchmarks/bench_policy_query.py --overrides experiment=aloha_sim_transfer   # its longer run
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cosmos_lit.cli import build_datamodule, build_task, load_run_config
from cosmos_lit.policy import CosmosPolicy
from cosmos_lit.precision import autocast, native_bf16, uses_bf16

from hardware_floor import device_name, flops_by_kind, matmul_rate, table
from previous_path import use_previous_path

ROOT = Path(__file__).resolve().parents[1]
GEMM_ROWS = 1024


def build_policy(config: str, overrides: list[str]) -> tuple[CosmosPolicy, dict[str, Any]]:
    cfg, _ = load_run_config("fit", config, list(overrides))
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    torch.manual_seed(0)
    task = build_task(cfg, dm)
    task.calibrate_from(dm.train_dataloader())  # as the fit's start does
    ev = cfg.get("eval") or {}
    policy = CosmosPolicy(task.inference_model, num_steps=ev.get("num_steps"), execute_steps=ev.get("execute_steps"))
    return policy, cfg


def observations(policy: CosmosPolicy, batch: int, env_size: int = 480) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    spec = policy.spec
    return [{"images": {c: rng.integers(0, 255, (env_size, 640, 3), dtype=np.uint8) for c in spec.cameras},
             "proprio": rng.random(spec.proprio_dim).astype(np.float32), "instruction": "transfer the cube"}
            for _ in range(batch)]


def seconds_per_query(paths: dict[str, tuple[CosmosPolicy, str]], obs: list[dict[str, Any]], reps: int,
                      ) -> dict[str, tuple[float, float]]:
    """{path name: (median seconds of ``reps`` queries, seconds of its first query, where compiling happens)} of
    ``paths`` ({name: (policy, Lightning precision)}), the paths taking turns query by query, so that a slow phase
    of a shared machine falls on every path alike."""
    first, times = {}, {name: [] for name in paths}
    for name, (policy, precision) in paths.items():
        with autocast(policy.device, precision):
            t0 = time.perf_counter()
            policy(obs)
            first[name] = time.perf_counter() - t0
    for _ in range(reps):
        for name, (policy, precision) in paths.items():
            with autocast(policy.device, precision):
                t0 = time.perf_counter()
                policy(obs)
                times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(times[name]), first[name]) for name in paths}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "aloha_sim.yaml"))
    p.add_argument("--overrides", nargs="*", default=[])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    p.add_argument("--reps", type=int, default=15)
    a = p.parse_args()
    policy, _ = build_policy(a.config, a.overrides)
    previous = CosmosPolicy(copy.deepcopy(policy.model), num_steps=policy.num_steps, execute_steps=policy.execute_steps)
    use_previous_path(previous.model)
    compiled = CosmosPolicy(copy.deepcopy(policy.model), num_steps=policy.num_steps, execute_steps=policy.execute_steps)
    compiled.model.backbone.compile_mode = "default"  # model.backbone.compile=true
    width = policy.model.backbone.width
    rates = {"32-true": matmul_rate(GEMM_ROWS, width, 4 * width, torch.float32, "cpu"),
             "bf16-mixed": matmul_rate(GEMM_ROWS, width, 4 * width, torch.bfloat16, "cpu")}
    steps = policy.num_steps or policy.model.sampling.num_steps
    print(f"device: {device_name(policy.device)}; {a.config} {' '.join(a.overrides)}; {steps} denoising steps; "
          f"matmul {rates['32-true'] / 1e9:.0f} GFLOP/s fp32, {rates['bf16-mixed'] / 1e9:.0f} GFLOP/s bf16 "
          f"(measured, {GEMM_ROWS}x{width}x{4 * width})")
    rows = []
    for b in a.batch:
        obs = observations(policy, b)
        with torch.no_grad():
            flops = flops_by_kind(lambda: policy(obs))
        paths = {"previous path, fp32 (baseline)": (previous, "32-true"),
                 "today, fp32": (policy, "32-true"),
                 "today, fp32, torch.compile of the DiT": (compiled, "32-true"),
                 "today, bf16 autocast": (policy, "bf16-mixed"),
                 "today, bf16 autocast, torch.compile of the DiT": (compiled, "bf16-mixed")}
        emulated = {name for name, (pol, prec) in paths.items()
                    if uses_bf16(prec, pol.device) and not native_bf16(pol.device)}
        timed = seconds_per_query({n: p for n, p in paths.items() if n not in emulated}, obs, a.reps)
        base = timed["previous path, fp32 (baseline)"][0]
        for name, (pol, prec) in paths.items():
            floor = flops["other"] / rates[prec] + flops["attention"] / rates["32-true"]  # fp32 attention on a CPU
            if name in emulated:
                rows.append([b, f"{name} (not run: this CPU emulates bf16)", *[float("nan")] * 3, floor * 1e3,
                             float("nan"), float("nan")])
                continue
            sec, first = timed[name]
            rows.append([b, name, sec * 1e3, b / sec, f"{base / sec:.2f}x", floor * 1e3, f"{sec / floor:.0f}x",
                         first])
    print(table(["B", "path", "ms/query", "chunks/s", "vs baseline", "floor ms", "ours / floor", "first query s"],
                rows))


if __name__ == "__main__":
    main()
