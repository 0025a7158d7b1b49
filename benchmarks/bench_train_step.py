"""Training steps/s of the real ``fit`` path, today's settings against each speed lever, in the same run.

Each row composes the config exactly as ``python -m cosmos_lit fit --config CONFIG [OVERRIDES]`` would, builds the
DataModule, the task and Lightning's Trainer with the CLI's own functions (real batches from the real loader, the
task's optimizer, EMA and latent cache), and times ``--steps`` optimizer steps after ``--warmup`` (no validation,
checkpoints, logger or closed-loop evaluation). The latent cache is filled before the first step, so the rows are a
run's steady state (``--no-fill-cache``: the steps while it fills). The baseline row is the path as it was before the
levers (``previous_path.py``: float32, diffusers' attention processor, every slot image encoded; torch's default
AdamW, ``task.optim.fused=false``); every row's ratio is against it. A bf16 row on a CPU without bf16 instructions
is not run (emulated bf16 is many times slower). The floor is the counted FLOPs of one step (forward + backward of
the training loss, ``hardware_floor.flops_by_kind``) over the matrix-product rate measured here, at the backbone's
token-by-width shape: attention at the float32 rate (the DiT keeps it in float32 on a CPU), the rest at the rate of
the row's number format.

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
from cosmos_lit.precision import native_bf16, uses_bf16

from hardware_floor import device_name, flops_by_kind, matmul_rate, table
from previous_path import use_previous_path

ROOT = Path(__file__).resolve().parents[1]
GEMM_ROWS = 4096  # tokens of the rate's matrix product: a training batch has more, so the rate is its best case
BASELINE = ("previous path, fp32 (baseline)", ["trainer.precision=32-true", "++task.optim.fused=false"], True)
LEVERS = {
    "fp32": ("fp32, camera images only encoded, fused AdamW", ["trainer.precision=32-true"], False),
    "bf16": ("bf16-mixed, fp32 attention", ["trainer.precision=bf16-mixed"], False),
    "compile": ("fp32, torch.compile of the DiT", ["trainer.precision=32-true", "model.backbone.compile=true"], False),
    "bf16_compile": ("bf16-mixed, fp32 attention, torch.compile of the DiT",
                     ["trainer.precision=bf16-mixed", "model.backbone.compile=true"], False),
    "previous_bf16": ("previous path in bf16-mixed", ["trainer.precision=bf16-mixed", "++task.optim.fused=false"], True),
}


class FillLatentCache(L.Callback):
    """Encode every training image into the task's latent cache before the first step, so the timed steps are the
    steady state of a run (in the README's default run of 3,000 steps the cache is nearly full after its first epoch
    of about 450 steps; until then a step also encodes the images it has not seen)."""

    def on_train_start(self, trainer: L.Trainer, task: Any) -> None:
        if task.latent_cache is None:
            return
        with torch.no_grad():
            for batch in trainer.datamodule.train_dataloader():
                task.latent_cache.latents(batch)


class StepTimer(L.Callback):
    """Wall time of the optimizer steps after the first ``warmup``, and of the first step (where compiling happens)."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end, self.steps = warmup, None, None, 0
        self.first_start, self.first_step = None, None

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == 0:
            self.first_start = time.perf_counter()
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.first_step is None:
            self.first_step = time.perf_counter() - self.first_start
        if self.start is not None:
            self.end, self.steps = time.perf_counter(), trainer.global_step - self.warmup


def run_fit(config: str, overrides: list[str], steps: int, warmup: int, previous: bool = False,
            fill_cache: bool = True) -> tuple[float, float, str, Any, Any]:
    """(seconds per step, seconds of the first step, Lightning precision, task, one training batch) of ``steps``
    timed steps of ``fit``."""
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
        callbacks = [FillLatentCache(), timer] if fill_cache else [timer]
        trainer = build_trainer(cfg, Path(tmp), callbacks, "fit")
        trainer.fit(task, datamodule=dm)
        batch = next(iter(dm.train_dataloader()))
        sec = (timer.end - timer.start) / max(timer.steps, 1)
        return sec, timer.first_step, str(trainer.precision), task, batch


def step_flops(task: Any, batch: dict[str, Any]) -> dict[str, int]:
    """FLOPs of one training step's forward + backward, split into attention and the rest (``flops_by_kind``)."""
    task.train()

    def step() -> None:
        loss, _ = task._loss(batch)
        loss.backward()

    flops = flops_by_kind(step)
    task.zero_grad(set_to_none=True)
    return flops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "aloha_sim.yaml"))
    p.add_argument("--overrides", nargs="*", default=[], help="config overrides of every row (e.g. experiment=...)")
    p.add_argument("--levers", nargs="*", default=["fp32", "compile", "bf16", "bf16_compile"], choices=list(LEVERS))
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--no-fill-cache", dest="fill_cache", action="store_false",
                   help="time the steps while the latent cache still fills (each step encodes its new images)")
    a = p.parse_args()
    rows_in = [BASELINE, *(LEVERS[k] for k in a.levers)]
    measured = []
    for name, extra, previous in rows_in:
        if any(e.startswith("trainer.precision=bf16") for e in extra) and not native_bf16("cpu"):
            measured.append((f"{name} (not run: this CPU emulates bf16)", float("nan"), float("nan"), None, None,
                             "bf16-mixed"))
            continue
        sec, first, precision, task, batch = run_fit(a.config, [*a.overrides, *extra], a.steps, a.warmup, previous,
                                                     a.fill_cache)
        measured.append((name, sec, first, task, batch, precision))
        print(f"[{name}] {sec:.4f} s/step, first step {first:.1f} s ({precision})", flush=True)
    _, base_sec, _, task, batch, _ = measured[0]
    flops = step_flops(task, batch)
    width = task.model.backbone.width
    rates = {dt: matmul_rate(GEMM_ROWS, width, 4 * width, dt, "cpu") for dt in (torch.float32, torch.bfloat16)}
    print(f"\ndevice: {device_name('cpu')}; {a.config} {' '.join(a.overrides)}; batch {batch['proprio'].shape[0]}; "
          f"{sum(flops.values()) / 1e9:.1f} GFLOP per step (counted; attention {flops['attention'] / 1e9:.1f}); "
          f"matmul {rates[torch.float32] / 1e9:.0f} GFLOP/s fp32, "
          f"{rates[torch.bfloat16] / 1e9:.0f} GFLOP/s bf16 (measured, {GEMM_ROWS}x{width}x{4 * width})")
    rows = []
    for name, sec, first, _, _, precision in measured:
        rate = rates[torch.bfloat16 if uses_bf16(precision, "cpu") else torch.float32]
        floor = flops["other"] / rate + flops["attention"] / rates[torch.float32]  # attention stays fp32 on a CPU
        ran = sec == sec  # NaN: not run
        rows.append([name, sec, 1.0 / sec, f"{base_sec / sec:.2f}x" if ran else sec, floor,
                     f"{sec / floor:.1f}x" if ran else sec, first])
    print(table(["path", "s/step", "steps/s", "vs baseline", "floor s/step", "ours / floor", "first step s"], rows))


if __name__ == "__main__":
    main()
