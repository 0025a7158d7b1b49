"""Periodic closed-loop evaluation in simulation during post-training (and as ``validate`` against a checkpoint).

Every ``every_n_steps`` optimizer steps (and at the last step) the current model is wrapped as a ``CosmosPolicy``
and run for a fixed seed list in simulator worker processes. Episodes are sharded across ranks (rank r takes
seeds[r::world]); success rate and rewards are reduced with torchmetrics, so every rank logs the same numbers and
``ModelCheckpoint(monitor="sim/success_rate")`` works. Per-episode JSON and a few mp4 videos land in
``<run_dir>/eval/step_<N>/``. A crashed env is reported (``sim/errors``) and training goes on.

With ``record_rollouts`` (config ``eval.record_rollouts``) every finished episode is also written as a rollout file
in the Cosmos Policy layout under ``<run_dir>/eval/step_<N>/rollouts/`` (``rollouts/rank<r>/`` with several ranks),
which ``data.rollout_dir`` reads back (:mod:`cosmos_lit.rollout_files`); ``python -m cosmos_lit collect`` runs
the same episodes from a checkpoint (:meth:`SimEvalCallback.run_policy`).

Logged metrics (over the finished episodes of all ranks):

- ``sim/success_rate``: fraction of episodes the env reports as successful.
- ``sim/mean_return``: mean per-episode *return*, the sum of the env's rewards over the episode (gym-aloha's
  per-step reward 0-4 summed over up to 400 steps, so it reads far larger than the maximum reward).
- ``sim/mean_max_reward``: mean over episodes of the highest single-step reward reached (gym-aloha: 4 = success).
- ``sim/errors``, ``sim/episodes``, ``sim/eval_seconds``: crashed envs, finished episodes, wall time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchmetrics
from lightning.pytorch.utilities import rank_zero_info

from cosmos_lit.registry import ConfigError, register


@register("callback", "sim_eval")
class SimEvalCallback(L.Callback):
    """Closed-loop success in a simulator.

    Args:
        env: env registry node, e.g. ``{name: aloha_sim, task: transfer_cube}``.
        every_n_steps: evaluation period in optimizer steps (0: only at the end of training / in ``validate``).
        num_episodes: episodes per evaluation (seeds ``seed0 .. seed0 + num_episodes − 1`` unless ``seeds`` given).
        seeds: explicit fixed seed list.
        seed0: first seed of the default list (keep it disjoint from the demo seeds).
        num_workers: env processes per rank.
        execute_steps: actions executed open loop per policy query (default: the whole chunk).
        num_steps: denoising steps for the policy (default: the task's sampling config).
        max_steps: episode horizon (default: the env's).
        num_videos: episodes recorded as mp4 per evaluation.
        time_budget_s: wall-clock budget per evaluation.
        image_pipeline: test-time image options of ``cosmos_lit.images.ImagePipeline`` (what the env has not done).
        python_executable: interpreter for env workers (LIBERO lives in its own environment).
        at_start: also evaluate before the first optimizer step.
        planner: planner config node (or name) of the test-time planner (the run's ``planner`` config; default:
            direct policy).
        record_rollouts: also write each finished episode as a rollout file (HDF5) under ``eval/step_<N>/rollouts``.
    """

    def __init__(
        self,
        env: dict[str, Any],
        every_n_steps: int = 1000,
        num_episodes: int = 10,
        seeds: list[int] | None = None,
        seed0: int = 100_000,
        num_workers: int = 2,
        execute_steps: int | None = None,
        num_steps: int | None = None,
        max_steps: int | None = None,
        num_videos: int = 2,
        video_fps: float = 25.0,
        time_budget_s: float | None = 600.0,
        image_pipeline: dict[str, Any] | None = None,
        python_executable: str | None = None,
        at_start: bool = False,
        planner: dict[str, Any] | str | None = None,
        record_rollouts: bool = False,
    ):
        super().__init__()
        if not isinstance(env, dict) or "name" not in env:
            raise ConfigError("eval.env: expected an env node with a 'name' (e.g. {name: aloha_sim, task: transfer_cube})")
        self.env_cfg = dict(env)
        self.every_n_steps = int(every_n_steps)
        self.seeds = list(seeds) if seeds else list(range(seed0, seed0 + num_episodes))
        self.num_workers = num_workers
        self.execute_steps = execute_steps
        self.num_steps = num_steps
        self.max_steps = max_steps
        self.num_videos = num_videos
        self.video_fps = video_fps
        self.time_budget_s = time_budget_s
        self.image_pipeline = image_pipeline
        self.python_executable = python_executable
        self.at_start = at_start
        if isinstance(planner, str):  # planner=best_of_n on a checkpoint's config: the name, with its defaults
            planner = {"name": planner}
        if planner is not None and not isinstance(planner, dict):
            raise ConfigError(f"planner: expected a planner config node or name, got {planner!r}")
        if not isinstance(record_rollouts, bool):
            raise ConfigError(f"eval.record_rollouts: expected true or false, got {record_rollouts!r}")
        self.planner_cfg = dict(planner) if planner else None
        self.record_rollouts = record_rollouts
        self.checkpoint_path: str | None = None  # provenance of recorded rollouts (set by the CLI for validate)
        self._pool: Any = None
        self._last_step = -1
        self.success = torchmetrics.MeanMetric()
        self.reward = torchmetrics.MeanMetric()  # of each episode's total reward: logged as sim/mean_return
        self.max_reward = torchmetrics.MeanMetric()
        self.errors = torchmetrics.SumMetric()
        self.finished = torchmetrics.SumMetric()  # episodes that ended without an error, over all ranks
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ hooks

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_start:
            self._evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step:  # gradient accumulation repeats the same global step
            return
        last = trainer.max_steps is not None and trainer.max_steps > 0 and step >= trainer.max_steps
        if (self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0) or last:
            self._evaluate(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate" and not trainer.sanity_checking:
            metrics = self._evaluate(trainer, pl_module, log=False)
            for k, v in metrics.items():
                pl_module.log(k, v, sync_dist=False)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "exception")

    # ------------------------------------------------------------------ evaluation

    def _run_dir(self, trainer: L.Trainer) -> Path:
        return Path(trainer.default_root_dir)

    @staticmethod
    def _model(pl_module: L.LightningModule) -> Any:
        """The inference model of the module being trained (``CosmosPolicyTask.inference_model``)."""
        from cosmos_lit.components import TrainsPolicy

        if not isinstance(pl_module, TrainsPolicy):
            raise ConfigError(f"eval: {type(pl_module).__name__} has no inference_model to evaluate in simulation")
        return pl_module.inference_model

    def pool(self, num_seeds: int) -> Any:
        """The env worker pool (started on first use, kept between evaluations; crashed workers restarted)."""
        from cosmos_lit.envs.worker import EnvPool

        if self._pool is None:
            self._pool = EnvPool(self.env_cfg, num_workers=max(1, min(self.num_workers, num_seeds or 1)),
                                 python_executable=self.python_executable)
        for slot in range(self._pool.num_workers):  # a worker that crashed last time gets a fresh process
            if not self._pool.alive(slot):
                self._pool.restart(slot)
        return self._pool

    def run_policy(self, model: Any, out_dir: Path, seeds: list[int] | None = None, rollout_dir: Path | None = None,
                   provenance: dict[str, Any] | None = None, num_videos: int | None = None,
                   precision: str | int = "32-true") -> list[Any]:
        """Run this evaluation's episodes (``seeds``: default all) with ``model`` (a ``CosmosPolicyModel``).

        Videos go to ``out_dir/videos``; with ``rollout_dir`` every finished episode is recorded there as a rollout
        file carrying ``provenance`` (checkpoint, step, ...) and the env / planner settings. The policy computes in
        the run's ``precision`` (``cosmos_lit.precision``: bf16 autocast for a bf16 run, as it trains).
        """
        from cosmos_lit.eval.rollouts import run_episodes
        from cosmos_lit.policy import CosmosPolicy
        from cosmos_lit.precision import autocast

        seeds = list(self.seeds if seeds is None else seeds)
        pool = self.pool(len(seeds))
        policy = CosmosPolicy(model, planner=self.planner_cfg, num_steps=self.num_steps,
                              execute_steps=self.execute_steps, image_pipeline=self.image_pipeline, seed=0)
        attrs = None
        if rollout_dir is not None:
            planner = self.planner_cfg or {"name": "none"}
            attrs = {"planner": str(planner.get("name", "none")), "planner_config": planner,
                     "num_steps": self.num_steps, "execute_steps": policy.execute_steps,
                     "image_pipeline": self.image_pipeline, **dict(provenance or {})}
        with torch.no_grad(), autocast(policy.device, precision):
            return run_episodes(policy, self.env_cfg, seeds, max_steps=self.max_steps,
                                num_videos=self.num_videos if num_videos is None else num_videos,
                                video_dir=out_dir / "videos", video_fps=self.video_fps,
                                time_budget_s=self.time_budget_s, pool=pool, rollout_dir=rollout_dir,
                                rollout_attrs=attrs)

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, log: bool = True) -> dict[str, float]:
        from cosmos_lit.eval.rollouts import save_results

        step = trainer.global_step
        self._last_step = step
        rank, world = trainer.global_rank, trainer.world_size
        my_seeds = self.seeds[rank::world]
        out_dir = self._run_dir(trainer) / "eval" / f"step_{step:07d}"
        rollout_dir = None
        if self.record_rollouts:
            rollout_dir = out_dir / "rollouts" / (f"rank{rank}" if world > 1 else "")
        provenance = {"checkpoint": self.checkpoint_path or trainer.ckpt_path,
                      "run_dir": str(self._run_dir(trainer)), "global_step": step}
        was_training = pl_module.training
        pl_module.eval()
        t0 = time.monotonic()
        try:
            results = self.run_policy(self._model(pl_module), out_dir, my_seeds, rollout_dir=rollout_dir,
                                      provenance=provenance, num_videos=self.num_videos if rank == 0 else 0,
                                      precision=trainer.precision)
        finally:
            if was_training:
                pl_module.train()
        save_results(out_dir / f"episodes_rank{rank}.json", results, {"step": step})
        dev = pl_module.device
        for m in (self.success, self.reward, self.max_reward, self.errors, self.finished):  # metrics start on the CPU
            m.to(dev)
        means = (self.success, self.reward, self.max_reward)
        for m in means:  # every rank updates every metric (weight 0 if it has no episode): compute() syncs all ranks
            m.update(torch.zeros((), device=dev), weight=0.0)
        for r in results:
            if r.error is None:
                self.success.update(torch.tensor(float(r.success), device=dev))
                self.reward.update(torch.tensor(r.total_reward, device=dev))
                self.max_reward.update(torch.tensor(r.max_reward, device=dev))
            self.errors.update(torch.tensor(float(r.error not in (None, "time budget")), device=dev))
            self.finished.update(torch.tensor(float(r.error is None), device=dev))
        self.errors.update(torch.zeros((), device=dev))
        self.finished.update(torch.zeros((), device=dev))
        finished = float(self.finished.compute())
        success, ret, max_reward = (float(m.compute()) for m in means)
        metrics = {
            "sim/success_rate": success if finished else float("nan"),
            # the mean per-episode total reward (a return, summed over the steps): not on sim/mean_max_reward's scale
            "sim/mean_return": ret if finished else float("nan"),
            "sim/mean_max_reward": max_reward if finished else float("nan"),
            "sim/errors": float(self.errors.compute()),
            "sim/episodes": finished,
            "sim/eval_seconds": time.monotonic() - t0,
        }
        for m in (self.success, self.reward, self.max_reward, self.errors, self.finished):
            m.reset()
        self.history.append({"step": float(step), **metrics})
        for r in results:
            if r.error not in (None, "time budget"):
                rank_zero_info(f"[sim_eval] env error (seed {r.seed}): {r.error}")
        rank_zero_info(
            f"[sim_eval] step {step}: success {metrics['sim/success_rate']:.2f} over {int(metrics['sim/episodes'])} "
            f"episodes, mean max reward {metrics['sim/mean_max_reward']:.2f}, {metrics['sim/eval_seconds']:.0f}s -> {out_dir}"
            + (f" (rollouts: {sum(r.rollout_path is not None for r in results)} files)" if rollout_dir else "")
        )
        if log:
            for lg in trainer.loggers:
                lg.log_metrics(metrics, step=step)
            for k, v in metrics.items():
                trainer.callback_metrics[k] = torch.tensor(v)
        return metrics
