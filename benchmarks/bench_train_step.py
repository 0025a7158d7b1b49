"""Training steps/s of the real ``fit`` path, today's settings against each speed lever, in the same run.

Each row composes the config exactly as ``python -m cosmos_lit fit --config CONFIG [OVERRIDES]`` would, builds the
DataModule, the task and Lightning's Trainer with the CLI's own functions (real batches from the real loader, the
task's optimizer, EMA and latent cache), and times ``--steps`` optimizer steps after ``--warmup`` (no validation,
checkpoints, logger or closed-loop evaluation); a row's figure is the median step. The latent cache is filled before
the first step, so the rows are a run's steady state (``--no-fill-cache``: the steps while it fills). ``--rounds N``
fits every row N times, interleaved, for machines whose speed drifts (shared cores). The baseline row is the path
as it was before the levers (``previous_path.py``: float32, diffusers' attention processor, every slot image
encoded; torch's default AdamW, ``task.optim.fused=false``); every row's ratio is against it. A bf16 row on a CPU without bf16 instructions
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
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from cosmos_lit.cli import build_datamodule, build_task, build_trainer, load_run_config
from cosmos_lit.precision import native_bf16, uses_bf16
from cosmos_lit.tasks.latent_cache import LatentCache

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
    of about 450 steps; until then a step also encodes the images it has not seen).

    One instance serves every row of a run: the rows train on the same data with the same image encoder (the same
    seed), so after the first fill each row takes the filled latents (``LatentCache.share_from``, which checks the
    encoder's weights) instead of encoding the dataset again (minutes for run R).
    """

    def __init__(self) -> None:
        self.filled: LatentCache | None = None

    def on_train_start(self, trainer: L.Trainer, task: Any) -> None:
        if task.latent_cache is None:
            return
        if self.filled is not None and task.latent_cache.share_from(self.filled):
            return
        with torch.no_grad():
            for batch in trainer.datamodule.train_dataloader():
                task.latent_cache.latents(batch)
        self.filled = task.latent_cache


class StepTimer(L.Callback):
    """Wall time of every optimizer step after the first ``warmup``, and of the first step (where compiling happens).

    A step's time runs from its batch-start hook to the next one (the loader's fetch of the next batch included); the
    last step ends at its batch-end hook. The figure of a run is the median step (``seconds``): on a shared machine a
    neighbour's burst slows a few steps by tens of percent, which a mean carries into the row and a median does not.
    """

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.durations: list[float] = []  # seconds of each timed step, in order
        self._step_start: float | None = None
        self.first_start, self.first_step = None, None

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        now = time.perf_counter()
        if trainer.global_step == 0:
            self.first_start = now
        if self._step_start is not None:
            self.durations.append(now - self._step_start)
        self._step_start = now if trainer.global_step >= self.warmup else None

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        now = time.perf_counter()
        if self.first_step is None:
            self.first_step = now - self.first_start
        if trainer.global_step >= trainer.max_steps and self._step_start is not None:  # the fit's last step
            self.durations.append(now - self._step_start)
            self._step_start = None

    @property
    def seconds(self) -> float:
        """Median seconds per timed step (NaN before any)."""
        return statistics.median(self.durations) if self.durations else float("nan")


def run_fit(config: str, overrides: list[str], steps: int, warmup: int, previous: bool = False,
            fill: FillLatentCache | None = None) -> tuple[list[float], float, str, Any, Any]:
    """(seconds of each timed step, seconds of the first step, Lightning precision, task, one training batch) of
    ``steps`` timed steps of ``fit``."""
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
        callbacks = [timer] if fill is None else [fill, timer]
        trainer = build_trainer(cfg, Path(tmp), callbacks, "fit")
        trainer.fit(task, datamodule=dm)
        batch = next(iter(dm.train_dataloader()))
        return timer.durations, timer.first_step, str(trainer.precision), task, batch


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
    p.add_argument("--rounds", type=int, default=1,
                   help="fit every row this many times, the rows interleaved (baseline, levers, baseline, ...), so "
                        "that a slow phase of a shared machine falls on every row alike; a row's figure is the median "
                        "of all its timed steps")
    a = p.parse_args()
    if a.rounds < 1:
        p.error(f"--rounds: expected a number >= 1, got {a.rounds}")
    rows_in = [BASELINE, *(LEVERS[k] for k in a.levers)]
    runs: dict[str, dict[str, Any]] = {}
    fill = FillLatentCache() if a.fill_cache else None
    for round_ in range(a.rounds):
        for name, extra, previous in rows_in:
            if any(e.startswith("trainer.precision=bf16") for e in extra) and not native_bf16("cpu"):
                runs[name] = {"durations": [], "first": float("nan"), "task": None, "batch": None,
                              "precision": "bf16-mixed", "name": f"{name} (not run: this CPU emulates bf16)"}
                continue
            durations, first, precision, task, batch = run_fit(a.config, [*a.overrides, *extra], a.steps, a.warmup,
                                                               previous, fill)
            run = runs.setdefault(name, {"durations": [], "first": first, "task": task, "batch": batch,
                                         "precision": precision, "name": name})
            run["durations"] += durations
            print(f"[round {round_ + 1}/{a.rounds}: {name}] median {statistics.median(durations):.4f} s/step, "
                  f"first step {first:.1f} s ({precision})", flush=True)
    measured = [(r["name"], statistics.median(r["durations"]) if r["durations"] else float("nan"), r["first"],
                 r["task"], r["batch"], r["precision"]) for r in runs.values()]
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
    print(f"{a.rounds} round(s) of {a.steps} timed steps after {a.warmup} per row; s/step is the median step")
    print(table(["path", "s/step", "steps/s", "vs baseline", "floor s/step", "ours / floor", "first step s"], rows))


if __name__ == "__main__":
    main()
