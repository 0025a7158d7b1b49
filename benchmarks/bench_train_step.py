"""Training steps/s of the real ``fit`` path, today's settings against each speed lever, in the same run.

Each row composes the config exactly as ``python -m cosmos_lit fit --config CONFIG [OVERRIDES]`` would, builds the
DataModule, the task and Lightning's Trainer with the CLI's own functions (real batches from the real loader, the
task's optimizer, EMA and latent cache), and times ``--steps`` optimizer steps after ``--warmup`` (no validation,
checkpoints, logger or closed-loop evaluation). The baseline row is the path as it was before the levers
(``previous_path.py``: float32, diffusers' attention processor, every slot image encoded); every row's ratio is
against it. The floor is the counted FLOPs of one step
(forward + backward of the training loss, ``hardware_floor.count_flops``) over the matrix-product rate measured here
in the row's number format, at the backbone's token-by-width shape.

    python benchmarks/bench_train_step.py                                   # the README's default run (64 px)
    python benchmarks/bench_train_step.py --overrides experiment=aloha_sim_transfer   # its longer run (112 px)

Run it alone on the machine: a second torch process on the same cores slows both by an order of magnitude.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from cosmos_lit.cli import build_datamodule, build_task, build_trainer, load_run_config
from cosmos_lit.precision import uses_bf16

from hardware_floor import count_flops, device_name, matmul_rate, table
from previous_path import use_previous_path

ROOT = Path(__file__).resolve().parents[1]
GEMM_ROWS = 4096  # tokens of the rate's matrix product: a training batch has more, so the rate is its best case
BASELINE = ("previous path, fp32 (baseline)", ["trainer.precision=32-true"], True)
LEVERS = {
    "fp32": ("fp32, camera images only encoded", ["trainer.precision=32-true"], False),
    "bf16": ("bf16-mixed, fp32 attention", ["trainer.precision=bf16-mixed"], False),
    "previous_bf16": ("previous path in bf16-mixed", ["trainer.precision=bf16-mixed"], True),
}


class StepTimer(L.Callback):
    """Wall time of the optimizer steps after the first ``warmup``."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end, self.steps = warmup, None, None, 0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.start is not None:
            self.end, self.steps = time.perf_counter(), trainer.global_step - self.warmup


def run_fit(config: str, overrides: list[str], steps: int, warmup: int, previous: bool = False,
            ) -> tuple[float, str, Any, Any]:
    """(seconds per step, Lightning precision, task, one training batch) of ``steps`` timed steps of ``fit``."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg, _ = load_run_config("fit", config, [
            *overrides, "eval=none", "logger=none", f"trainer.max_steps={warmup + steps}",
            f"trainer.val_check_interval={warmup + steps + 1}", "trainer.limit_val_batches=0",
            "+trainer.enable_checkpointing=false", "+trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false"])
        L.seed_everything(int(cfg.get("seed", 0)), workers=True, verbose=False)
        dm = build_datamodule(cfg)
        dm.prepare_data()
        dm.setup("fit")
        task = build_task(cfg, dm)
        if previous:
            use_previous_path(task.model, [task.backbone_ema.module] if task.backbone_ema is not None else [])
        timer = StepTimer(warmup)
        trainer = build_trainer(cfg, Path(tmp), [timer], "fit")
        trainer.fit(task, datamodule=dm)
        batch = next(iter(dm.train_dataloader()))
        return (timer.end - timer.start) / max(timer.steps, 1), str(trainer.precision), task, batch


def step_flops(task: Any, batch: dict[str, Any]) -> int:
    task.train()

    def step() -> None:
        loss, _ = task._loss(batch)
        loss.backward()

    flops = count_flops(step)
    task.zero_grad(set_to_none=True)
    return flops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "aloha_sim.yaml"))
    p.add_argument("--overrides", nargs="*", default=[], help="config overrides of every row (e.g. experiment=...)")
    p.add_argument("--levers", nargs="*", default=["fp32", "bf16"], choices=list(LEVERS))
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=15)
    a = p.parse_args()
    rows_in = [BASELINE, *(LEVERS[k] for k in a.levers)]
    measured = []
    for name, extra, previous in rows_in:
        sec, precision, task, batch = run_fit(a.config, [*a.overrides, *extra], a.steps, a.warmup, previous)
        measured.append((name, extra, sec, task, batch, precision))
        print(f"[{name}] {sec:.4f} s/step ({precision})", flush=True)
    _, _, base_sec, task, batch, _ = measured[0]
    flops = step_flops(task, batch)
    width = task.model.backbone.width
    rates = {dt: matmul_rate(GEMM_ROWS, width, 4 * width, dt, "cpu") for dt in (torch.float32, torch.bfloat16)}
    print(f"\ndevice: {device_name('cpu')}; {a.config} {' '.join(a.overrides)}; batch {batch['proprio'].shape[0]}; "
          f"{flops / 1e9:.1f} GFLOP per step (counted); matmul {rates[torch.float32] / 1e9:.0f} GFLOP/s fp32, "
          f"{rates[torch.bfloat16] / 1e9:.0f} GFLOP/s bf16 (measured, {GEMM_ROWS}x{width}x{4 * width})")
    rows = []
    for name, extra, sec, _, _, precision in measured:
        rate = rates[torch.bfloat16 if uses_bf16(precision, "cpu") else torch.float32]
        floor = flops / rate
        rows.append([name, sec, 1.0 / sec, f"{base_sec / sec:.2f}x", floor, f"{sec / floor:.1f}x"])
    print(table(["path", "s/step", "steps/s", "vs baseline", "floor s/step", "ours / floor"], rows))


if __name__ == "__main__":
    main()
