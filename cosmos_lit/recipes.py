"""Evaluation recipes: NVIDIA's released Cosmos Policy checkpoints under the paper's protocols (method.md §5, §9).

A recipe is data (:data:`PROTOCOLS`): the benchmark's data spec, how many actions of each chunk run open loop, the
denoising steps, the trials, seeds and horizons, the env node and the policy-side image pipeline. Around it:

- :func:`task_from_released` builds a ``CosmosPolicyTask`` from a downloaded ``nvidia/Cosmos-Policy-*-Predict2-2B``
  folder (2B DiT ``.pt``, ``*_dataset_statistics.json``, ``*_t5_embeddings.pkl``) plus a local Wan2.1 VAE file;
- :func:`plan_jobs` expands a protocol into env configs and episode seeds;
- ``python -m cosmos_lit.recipes {libero,robocasa} ...`` runs them in simulator worker processes, prints success per
  task and suite, and writes a JSON report (atomically, after every task)::

    python -m cosmos_lit.recipes libero --checkpoint-dir ckpt/Cosmos-Policy-LIBERO-Predict2-2B \\
        --vae ckpt/Cosmos-Predict2-2B-Video2World/tokenizer/tokenizer.pth --trust-pickle --device cuda \\
        --num-workers 10 --out runs/eval/libero/results.json

Episode seeds: episode k of run seed s resets its env with ``1000·s + k``. LIBERO restores initial state
``seed % 50 = k`` (1000 is a multiple of the 50 initial states of every LIBERO task) and seeds the fixture placement
with the whole number, so the three run seeds see the same 50 initial states but different noise and fixtures; the
policy's sampling noise is seeded with s (query i uses s + i). RoboCasa's 50 trials are 10 per kitchen scene.

ALOHA's protocol is a real-robot one (a FastAPI server queried by the robot at 25 Hz): it cannot run in simulation,
so the CLI covers LIBERO and RoboCasa; ``task_from_released(..., "aloha", ...)`` still builds the ALOHA policy.

``--tiny`` swaps in the toy-size DiT and VAE (CPU smoke runs, tests): random weights with the hash text embedder, or
a Lightning checkpoint of ours (``--checkpoint run.ckpt``), or tiny weights stored in the released layout
(``--checkpoint-dir``; text from its T5 cache, which then has the tiny DiT's width, 32).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cosmos_lit.registry import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
SEEDS = (195, 196, 197)
# Episode k of run seed s resets with EPISODE_SEED_STRIDE·s + k (a multiple of LIBERO's 50 initial states).
EPISODE_SEED_STRIDE = 1000

LIBERO_SUITES = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520}
ROBOCASA_TASKS = {
    **dict.fromkeys(
        ["PnPCounterToCab", "PnPCabToCounter", "PnPSinkToCounter", "PnPMicrowaveToCounter", "PnPCounterToStove",
         "PnPStoveToCounter"], 500),
    "PnPCounterToSink": 700, "PnPCounterToMicrowave": 600,
    "OpenSingleDoor": 500, "CloseSingleDoor": 500, "OpenDoubleDoor": 1000, "CloseDoubleDoor": 700,
    "OpenDrawer": 500, "CloseDrawer": 500,
    "TurnOnStove": 500, "TurnOffStove": 500, "TurnOnSinkFaucet": 500, "TurnOffSinkFaucet": 500, "TurnSinkSpout": 500,
    "CoffeeSetupMug": 600, "CoffeeServeMug": 600, "CoffeePressButton": 300,
    "TurnOnMicrowave": 500, "TurnOffMicrowave": 500,
}
ROBOCASA_SCENES = ((1, 1), (2, 2), (4, 4), (6, 9), (7, 10))  # (layout, style) kitchens, 10 trials each


@dataclass(frozen=True)
class Protocol:
    """One benchmark's evaluation protocol.

    Attributes:
        benchmark: libero / robocasa / aloha (names the released checkpoint files too).
        spec: ``DataSpec`` fields of the released model (cameras in latent-slot order, dims, chunk K, γ, fps, 224).
        execute_steps: actions run open loop per query.
        num_steps: denoising steps of the direct policy (parallel decoding).
        trials_per_task: episodes per task and run seed.
        seeds: run seeds; results are reported per seed and averaged.
        suites: suite -> {task: horizon in policy steps}; LIBERO tasks are task ids, RoboCasa tasks env names.
        env: base env node (``cosmos_lit.envs``); the task keys are added per job.
        image_pipeline: ``CosmosPolicy`` test-time image options (what the env has not done already).
        scenes: RoboCasa (layout, style) kitchens; trials are split evenly across them.
        simulated: False when the protocol needs the real robot.
        clip_actions: clamp normalized actions to [-1, 1] before un-normalizing (the official code does not).
    """

    benchmark: str
    spec: dict[str, Any]
    execute_steps: int
    num_steps: int
    trials_per_task: int
    seeds: tuple[int, ...]
    suites: dict[str, dict[Any, int]]
    env: dict[str, Any]
    image_pipeline: dict[str, Any]
    scenes: tuple[tuple[int, int], ...] = ()
    simulated: bool = True
    clip_actions: bool = False
    notes: str = ""

    def horizon(self, suite: str, task: Any) -> int:
        return int(self.suites[suite][task])


PROTOCOLS: dict[str, Protocol] = {
    # run_libero_eval.py: 10 tasks x 50 trials per suite, default initial states, 10 no-op wait steps, 256² renders.
    # The env flips the frames upright and JPEG(q95)-round-trips them (as configs/eval/libero.yaml); the policy resizes
    # to 224 and takes the 90%-area centre crop.
    "libero": Protocol(
        benchmark="libero",
        spec=dict(cameras=["wrist", "primary"], proprio_dim=9, action_dim=7, chunk_size=16, gamma=0.99, fps=20,
                  image_size=224, has_value=True, name="libero"),
        execute_steps=16,
        num_steps=5,
        trials_per_task=50,
        seeds=SEEDS,
        suites={suite: dict.fromkeys(range(10), steps) for suite, steps in LIBERO_SUITES.items()},
        env=dict(name="libero", image_size=256, cameras=["wrist", "primary"], num_wait_steps=10, flip_images=True,
                 jpeg_roundtrip=True),
        image_pipeline=dict(flip=False, jpeg_quality=None, center_crop=True),
    ),
    # run_robocasa_eval.py: 24 atomic tasks x 50 trials over 5 kitchens, held-out objects (split B), 224² renders.
    # The env returns upright frames; the policy JPEG(q95)-round-trips them and takes the centre crop.
    "robocasa": Protocol(
        benchmark="robocasa",
        spec=dict(cameras=["robot0_eye_in_hand", "robot0_agentview_left", "robot0_agentview_right"], proprio_dim=9,
                  action_dim=7, chunk_size=32, gamma=0.99, fps=20, image_size=224, has_value=True, name="robocasa"),
        execute_steps=16,
        num_steps=5,
        trials_per_task=50,
        seeds=SEEDS,
        suites={"robocasa": dict(ROBOCASA_TASKS)},
        env=dict(name="robocasa", image_size=224,
                 cameras=["robot0_eye_in_hand", "robot0_agentview_left", "robot0_agentview_right"],
                 obj_instance_split="B"),
        image_pipeline=dict(flip=False, jpeg_quality=95, center_crop=True),
        scenes=ROBOCASA_SCENES,
    ),
    # deploy.py + run_aloha_eval.py on the real bimanual robot (25 Hz, up to 1100 steps): not a simulator protocol.
    "aloha": Protocol(
        benchmark="aloha",
        spec=dict(cameras=["cam_left_wrist", "cam_right_wrist", "cam_high"], proprio_dim=14, action_dim=14,
                  chunk_size=50, gamma=0.998, fps=25, image_size=224, has_value=True, name="aloha"),
        execute_steps=50,
        num_steps=10,
        trials_per_task=0,
        seeds=(),
        suites={"aloha_real": {"deployment": 1100}},
        env={},
        image_pipeline=dict(flip=False, jpeg_quality=None, center_crop=True),
        simulated=False,
        notes="real-robot evaluation (FastAPI /act server queried by the robot); it cannot run in simulation",
    ),
}

# Toy-size components of the same architectures (the registered factories' defaults).
TINY_BACKBONE: dict[str, Any] = {"name": "cosmos_predict2_tiny"}
TINY_IMAGE_ENCODER: dict[str, Any] = {"name": "wan2.1_tiny", "normalization": "none"}


def get_protocol(benchmark: str) -> Protocol:
    if benchmark not in PROTOCOLS:
        raise ConfigError(f"benchmark: unknown '{benchmark}'; expected one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[benchmark]


# ------------------------------------------------------------------------------------------------ building the task


def _backbone_text_dim(node: dict[str, Any]) -> int:
    """Cross-attention width the backbone node will have (the T5 cache must match it)."""
    from cosmos_lit.models.backbones import COSMOS_PREDICT2_2B
    from cosmos_lit.registry import registry

    if "text_embed_dim" in node:
        return int(node["text_embed_dim"])
    factory = registry("backbone").get(str(node.get("name")), "model.backbone")
    param = inspect.signature(factory).parameters.get("text_embed_dim")
    if param is not None and param.default is not inspect.Parameter.empty:
        return int(param.default)
    return int(COSMOS_PREDICT2_2B["text_embed_dim"])


def _check_statistics(stats: Any, spec: dict[str, Any], path: Path) -> None:
    if stats.proprio_dim != int(spec["proprio_dim"]):
        raise ConfigError(f"{path}: proprio statistics have {stats.proprio_dim} dims, the {spec['name']} policy expects "
                          f"{spec['proprio_dim']}")
    if stats.action_dim < int(spec["action_dim"]):
        raise ConfigError(f"{path}: action statistics have {stats.action_dim} dims, the {spec['name']} policy needs at "
                          f"least {spec['action_dim']}")


def task_from_released(
    checkpoint_dir: str | Path,
    benchmark: str,
    vae_path: str | Path | None,
    device: str = "cpu",
    backbone_overrides: dict[str, Any] | None = None,
    trust_pickle: bool = False,
    *,
    image_encoder_overrides: dict[str, Any] | None = None,
    spec_overrides: dict[str, Any] | None = None,
) -> Any:
    """A ``CosmosPolicyTask`` (eval mode, on ``device``) for a released Cosmos Policy checkpoint.

    Args:
        checkpoint_dir: downloaded ``nvidia/Cosmos-Policy-{LIBERO,RoboCasa,ALOHA}-Predict2-2B`` folder (or its HF cache
            folder): the DiT ``.pt``, ``<benchmark>_dataset_statistics.json`` and ``<benchmark>_t5_embeddings.pkl``.
        benchmark: libero / robocasa / aloha: picks the spec (cameras, dims, chunk, γ, 224²) and denoising steps.
        vae_path: Wan2.1 VAE weights (``tokenizer/tokenizer.pth`` of Cosmos-Predict2-2B-Video2World, or a diffusers
            ``vae/`` folder); None only with an ``image_encoder_overrides`` that needs no file.
        device: where the task ends up.
        backbone_overrides: keys merged into the backbone node (default ``cosmos_predict2_2b``), e.g. a tiny
            ``{"name": "cosmos_predict2_tiny"}`` for tests; ``pretrained`` is always the released ``.pt``.
        trust_pickle: allow pickled files (the official T5 cache is a pickle; so may the ``.pt`` and VAE be).
        image_encoder_overrides: keys merged into the image-encoder node (default ``wan2.1`` with Wan's latent
            normalization); ``pretrained`` is ``vae_path`` when given.
        spec_overrides: data-spec fields to change (e.g. a smaller ``image_size`` for CPU smoke runs).

    Raises:
        FileNotFoundError: a released file or the VAE is missing (names the file and where it comes from).
        UntrustedPickleError: a pickled file and ``trust_pickle`` is False.
        ConfigError: statistics or T5 widths that do not fit the model.
    """
    from cosmos_lit.tasks.post_training import CosmosPolicyTask
    from cosmos_lit.weights.checkpoints import load_dataset_statistics, locate_released_checkpoint

    protocol = get_protocol(benchmark)
    released = locate_released_checkpoint(checkpoint_dir, benchmark)
    spec = {**protocol.spec, **(spec_overrides or {})}
    stats = load_dataset_statistics(released.dataset_statistics)
    _check_statistics(stats, spec, released.dataset_statistics)

    backbone = {"name": "cosmos_predict2_2b", "gradient_checkpointing": False, **(backbone_overrides or {}),
                "pretrained": str(released.weights), "trust_pickle": trust_pickle}
    image_encoder = {"name": "wan2.1", "sequence_form": "faithful", "normalization": "wan",
                     **(image_encoder_overrides or {})}
    if vae_path is not None:
        vae = Path(vae_path).expanduser()
        if not vae.exists():
            raise FileNotFoundError(
                f"Wan2.1 VAE weights not found: {vae} (tokenizer/tokenizer.pth of nvidia/Cosmos-Predict2-2B-Video2World, "
                f"or a diffusers vae/ folder of Wan-AI/Wan2.1-T2V-1.3B-Diffusers)"
            )
        image_encoder.update(pretrained=str(vae), trust_pickle=trust_pickle)
    elif "pretrained" not in image_encoder and image_encoder["name"] == "wan2.1":
        raise ConfigError("vae_path: the Wan2.1 VAE weights are required for a released checkpoint")
    text_encoder = {"name": "t5_cache", "path": str(released.t5_embeddings), "dim": _backbone_text_dim(backbone),
                    "trust_pickle": trust_pickle}
    statistics = {k: v.tolist() for k, v in stats.as_dict().items() if k[: k.rfind("_")] in ("actions", "proprio")}
    task = CosmosPolicyTask(
        model={"backbone": backbone, "image_encoder": image_encoder, "text_encoder": text_encoder},
        spec=spec,
        statistics=statistics,
        planner={"name": "none"},
        sampling={"num_steps": protocol.num_steps},
    )
    return task.to(device).eval()


def tiny_random_task(benchmark: str, image_size: int = 64, seed: int = 0, statistics: dict[str, Any] | None = None) -> Any:
    """A toy-size ``CosmosPolicyTask`` with random weights and the benchmark's spec (CPU smoke runs).

    Statistics default to [-1, 1] for every action and proprio dim (actions then stay in the env's valid range).
    """
    import torch

    from cosmos_lit.tasks.post_training import CosmosPolicyTask

    protocol = get_protocol(benchmark)
    spec = {**protocol.spec, "image_size": int(image_size)}
    if statistics is None:
        statistics = {}
        for group, dim in (("actions", spec["action_dim"]), ("proprio", spec["proprio_dim"])):
            for stat, value in (("min", -1.0), ("max", 1.0), ("mean", 0.0), ("std", 1.0), ("median", 0.0)):
                statistics[f"{group}_{stat}"] = [value] * int(dim)
    torch.manual_seed(seed)
    task = CosmosPolicyTask(
        model={"backbone": dict(TINY_BACKBONE), "image_encoder": dict(TINY_IMAGE_ENCODER), "text_encoder": {"name": "hash"}},
        spec=spec, statistics=statistics, planner={"name": "none"}, sampling={"num_steps": protocol.num_steps},
    )
    return task.eval()


def policy_for(task: Any, protocol: Protocol, seed: int = 0, clip_actions: bool | None = None) -> Any:
    """``CosmosPolicy`` with the protocol's denoising steps, executed steps and test-time image pipeline."""
    from cosmos_lit.policy import CosmosPolicy

    return CosmosPolicy(
        task,
        num_steps=protocol.num_steps,
        execute_steps=min(protocol.execute_steps, task.spec.chunk_size),
        image_pipeline=dict(protocol.image_pipeline),
        seed=seed,
        clip_actions=protocol.clip_actions if clip_actions is None else clip_actions,
    )


# ------------------------------------------------------------------------------------------------ planning the runs


@dataclass
class Job:
    """Episodes of one env configuration for one run seed."""

    suite: str
    task: Any
    env: dict[str, Any]
    run_seed: int
    episodes: list[int]  # episode indices k
    max_steps: int
    scene: tuple[int, int] | None = None

    @property
    def env_seeds(self) -> list[int]:
        return [episode_seed(self.run_seed, k) for k in self.episodes]


def episode_seed(run_seed: int, episode: int) -> int:
    """Env reset seed of episode ``episode`` under ``run_seed`` (LIBERO: initial state ``episode % 50``)."""
    if not 0 <= episode < EPISODE_SEED_STRIDE:
        raise ConfigError(f"trials: episode index {episode} out of range 0..{EPISODE_SEED_STRIDE - 1}")
    return EPISODE_SEED_STRIDE * int(run_seed) + int(episode)


def _pick(available: list[Any], wanted: list[Any] | None, what: str) -> list[Any]:
    if not wanted:
        return list(available)
    bad = [w for w in wanted if w not in available]
    if bad:
        raise ConfigError(f"{what}: unknown {bad[0]!r}; expected some of {', '.join(map(str, available))}")
    return list(wanted)


def plan_jobs(
    protocol: Protocol,
    suites: list[str] | None = None,
    tasks: list[Any] | None = None,
    trials: int | None = None,
    seeds: list[int] | None = None,
    max_steps: int | None = None,
    env_overrides: dict[str, Any] | None = None,
) -> list[Job]:
    """Expand a protocol into jobs (defaults: every suite and task, the protocol's trials and seeds)."""
    if not protocol.simulated:
        raise ConfigError(f"{protocol.benchmark}: {protocol.notes}")
    trials = protocol.trials_per_task if trials is None else int(trials)
    if trials < 1:
        raise ConfigError(f"trials: expected >= 1, got {trials}")
    seeds = list(protocol.seeds) if not seeds else [int(s) for s in seeds]
    jobs = []
    for suite in _pick(list(protocol.suites), suites, "suites"):
        for task in _pick(list(protocol.suites[suite]), tasks, f"tasks of {suite}"):
            horizon = int(max_steps) if max_steps else protocol.horizon(suite, task)
            key = {"libero": {"suite": suite, "task_id": task}}.get(protocol.benchmark, {"env_name": task})
            base = {**protocol.env, **key, "max_steps": horizon, **(env_overrides or {})}
            scenes = protocol.scenes or (None,)
            for i, scene in enumerate(scenes):
                episodes = [k for k in range(trials) if k * len(scenes) // trials == i]
                if not episodes:
                    continue
                env = dict(base) if scene is None else {**base, "layout_and_style_ids": [list(scene)]}
                for run_seed in seeds:
                    jobs.append(Job(suite, task, env, run_seed, episodes, horizon, scene))
    return jobs


# ------------------------------------------------------------------------------------------------ running and reporting


class _EvalPolicy:
    """A ``CosmosPolicy`` under autocast (bf16 on GPU) that remembers each env's instruction."""

    def __init__(self, policy: Any, autocast_dtype: Any = None):
        self.policy = policy
        self.autocast_dtype = autocast_dtype
        self.instructions: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.policy, name)

    def __call__(self, observations: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        self.instructions.update(str(o.get("instruction", "")) for o in observations)
        ctx = (torch.autocast(self.policy.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
               else contextlib.nullcontext())
        with ctx:
            return self.policy(observations)


def _rate(values: list[bool]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def summarize_episodes(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-task and per-suite success (errors excluded, but counted), per-seed suite rates, average over suites."""
    suites: dict[str, Any] = {}
    for ep in episodes:
        s = suites.setdefault(ep["suite"], {"tasks": {}, "_seeds": {}, "_all": []})
        t = s["tasks"].setdefault(str(ep["task"]), {"_ok": [], "errors": 0, "instruction": ep.get("instruction")})
        if ep["error"] is not None:
            t["errors"] += 1
            continue
        t["_ok"].append(bool(ep["success"]))
        s["_all"].append(bool(ep["success"]))
        s["_seeds"].setdefault(str(ep["run_seed"]), []).append(bool(ep["success"]))
    for s in suites.values():
        for t in s["tasks"].values():
            ok = t.pop("_ok")
            t.update(success_rate=_rate(ok), episodes=len(ok))
        per_seed = {k: _rate(v) for k, v in s.pop("_seeds").items()}
        ok = s.pop("_all")
        rates = [r for r in per_seed.values() if r is not None]
        mean = sum(rates) / len(rates) if rates else None
        s.update(success_rate=_rate(ok), episodes=len(ok), errors=sum(t["errors"] for t in s["tasks"].values()),
                 per_seed=per_seed,
                 std_over_seeds=math.sqrt(sum((r - mean) ** 2 for r in rates) / len(rates)) if rates else None)
    suite_rates = [s["success_rate"] for s in suites.values() if s["success_rate"] is not None]
    return {"suites": suites, "average": sum(suite_rates) / len(suite_rates) if suite_rates else None}


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=1)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def print_table(summary: dict[str, Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    table = Table(title=title)
    for col in ("suite", "task", "success", "episodes", "errors"):
        table.add_column(col, justify="left" if col in ("suite", "task") else "right")
    for name, s in summary["suites"].items():
        for task, t in s["tasks"].items():
            label = f"{task}: {t['instruction']}" if t.get("instruction") and t["instruction"] != task else task
            table.add_row(name, label, pct(t["success_rate"]), str(t["episodes"]), str(t["errors"]))
        std = f" ± {100 * s['std_over_seeds']:.1f}" if s["std_over_seeds"] is not None and len(s["per_seed"]) > 1 else ""
        table.add_row(f"[bold]{name}[/bold]", "[bold]all tasks[/bold]", f"[bold]{pct(s['success_rate'])}{std}[/bold]",
                      str(s["episodes"]), str(s["errors"]), end_section=True)
    table.add_row("[bold]average[/bold]", "over suites", f"[bold]{pct(summary['average'])}[/bold]", "", "")
    Console().print(table)


def _env_key(env: dict[str, Any]) -> str:
    return json.dumps(env, sort_keys=True)


def run_protocol(
    policy: Any,
    protocol: Protocol,
    jobs: list[Job],
    num_workers: int = 2,
    python_executable: str | None = None,
    out: Path | None = None,
    meta: dict[str, Any] | None = None,
    num_videos: int = 0,
    time_budget_s: float | None = None,
    autocast_dtype: Any = None,
    log: Any = print,
) -> dict[str, Any]:
    """Run ``jobs`` (one worker pool per env configuration, reused across run seeds); returns the report.

    The report (``out``, rewritten atomically after every env configuration) holds ``summary`` (see
    :func:`summarize_episodes`), ``protocol``, ``meta`` and one record per episode.
    """
    from cosmos_lit.envs.worker import EnvPool, WorkerError
    from cosmos_lit.evaluation import run_episodes

    wrapped = _EvalPolicy(policy, autocast_dtype)
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(_env_key(job.env), []).append(job)
    episodes: list[dict[str, Any]] = []
    report: dict[str, Any] = {}
    started = time.monotonic()
    for key, group in groups.items():
        env = group[0].env
        width = max(1, min(num_workers, max(len(j.episodes) for j in group)))
        pool = EnvPool(env, num_workers=width, python_executable=python_executable)
        try:
            if all(isinstance(s, WorkerError) for s in pool.specs):
                msg = pool.specs[0].message.strip().splitlines()
                raise RuntimeError(f"env {env.get('name')} could not be built: {msg[-1] if msg else 'unknown error'}")
            for job in group:
                for slot in range(pool.num_workers):  # a crashed worker must not fail every later episode
                    if not pool.alive(slot):
                        pool.restart(slot)
                wrapped.instructions.clear()
                wrapped.policy.seed = job.run_seed
                video_dir = None
                if out is not None and num_videos:
                    video_dir = out.parent / "videos" / f"{job.suite}_{job.task}_seed{job.run_seed}"
                budget = None if time_budget_s is None else max(0.0, time_budget_s - (time.monotonic() - started))
                results = run_episodes(wrapped, job.env, job.env_seeds, max_steps=job.max_steps, pool=pool,
                                       num_videos=num_videos, video_dir=video_dir, time_budget_s=budget)
                instruction = next(iter(wrapped.instructions), None) if len(wrapped.instructions) == 1 else None
                for k, r in zip(job.episodes, results):
                    episodes.append({**r.to_dict(), "suite": job.suite, "task": job.task, "instruction": instruction,
                                     "run_seed": job.run_seed, "episode": k, "scene": job.scene})
                done = [r for r in results if r.error is None]
                log(f"[recipes] {job.suite} task {job.task} seed {job.run_seed}"
                    f"{f' scene {job.scene}' if job.scene else ''}: {sum(r.success for r in done)}/{len(done)} "
                    f"succeeded, {len(results) - len(done)} errors, {time.monotonic() - started:.0f}s elapsed")
        finally:
            pool.close()
        report = {"benchmark": protocol.benchmark, "summary": summarize_episodes(episodes),
                  "protocol": protocol_dict(protocol), "meta": meta or {}, "episodes": episodes}
        if out is not None:
            write_json_atomic(out, report)
    return report


def protocol_dict(protocol: Protocol) -> dict[str, Any]:
    d = {k: getattr(protocol, k) for k in protocol.__dataclass_fields__}
    d["suites"] = {s: {str(t): h for t, h in tasks.items()} for s, tasks in protocol.suites.items()}
    return json.loads(json.dumps(d))


# ------------------------------------------------------------------------------------------------ command line


def _parse_task(benchmark: str, value: str) -> Any:
    if benchmark == "libero":
        try:
            return int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--tasks: LIBERO tasks are ids 0..9, got '{value}'") from None
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cosmos_lit.recipes",
        description="Evaluate a released Cosmos Policy checkpoint under the paper's protocol (LIBERO, RoboCasa).",
    )
    p.add_argument("benchmark", choices=[b for b, pr in PROTOCOLS.items() if pr.simulated])
    p.add_argument("--checkpoint-dir", help="released checkpoint folder (nvidia/Cosmos-Policy-<X>-Predict2-2B)")
    p.add_argument("--vae", help="Wan2.1 VAE: tokenizer/tokenizer.pth of Cosmos-Predict2-2B-Video2World, or a "
                                 "diffusers vae/ folder")
    p.add_argument("--suites", nargs="+", help="LIBERO suites (libero_spatial libero_object libero_goal libero_10)")
    p.add_argument("--tasks", nargs="+", help="task ids (LIBERO, 0..9) or env names (RoboCasa)")
    p.add_argument("--trials", type=int, help="episodes per task and seed (default: the protocol's 50)")
    p.add_argument("--seeds", type=int, nargs="+", help="run seeds (default: 195 196 197)")
    p.add_argument("--num-workers", type=int, default=2, help="simulator processes (episodes batched per policy query)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="auto: bf16 autocast on GPU")
    p.add_argument("--out", help="JSON report (default runs/eval/<benchmark>-<time>/results.json)")
    p.add_argument("--videos", type=int, default=0, help="episodes per job recorded as mp4 next to the report")
    p.add_argument("--trust-pickle", action="store_true", help="allow pickled files (the official T5 cache is one)")
    p.add_argument("--python-executable", help="interpreter of the env workers (LIBERO: .venv-libero/bin/python)")
    p.add_argument("--clip-actions", action="store_true", help="clamp normalized actions to [-1, 1] (not official)")
    p.add_argument("--max-steps", type=int, help="override the per-suite/task horizon (smoke runs)")
    p.add_argument("--env-image-size", type=int, help="override the render size (smoke runs; protocol: 256 / 224)")
    p.add_argument("--time-budget-s", type=float, help="stop launching episodes after this many seconds")
    tiny = p.add_argument_group("tiny models (CPU smoke runs, tests)")
    tiny.add_argument("--tiny", action="store_true", help="toy-size DiT + VAE of the same architectures")
    tiny.add_argument("--checkpoint", help="with --tiny: a Lightning .ckpt of ours (else random weights, or tiny "
                                           "weights in the released layout from --checkpoint-dir)")
    tiny.add_argument("--image-size", type=int, help="with --tiny: model image size (default 64)")
    return p


def _default_python(benchmark: str) -> str | None:
    if benchmark != "libero":
        return None
    return os.environ.get("COSMOS_LIBERO_PYTHON") or str(REPO_ROOT / ".venv-libero" / "bin" / "python")


def _build_task(args: argparse.Namespace, protocol: Protocol) -> tuple[Any, dict[str, Any]]:
    if args.tiny:
        if args.checkpoint:
            from cosmos_lit.policy import load_task

            task = load_task(args.checkpoint, map_location=args.device)
            want, have = list(protocol.spec["cameras"]), list(task.spec.cameras)
            if have != want:
                raise ConfigError(
                    f"{args.checkpoint}: the model's cameras {have} are not the {protocol.benchmark} env's {want}")
            return task, {"weights": "lightning checkpoint", "checkpoint": args.checkpoint}
        if args.checkpoint_dir:
            overrides = {"image_size": args.image_size} if args.image_size else None
            task = task_from_released(args.checkpoint_dir, protocol.benchmark, args.vae, args.device, dict(TINY_BACKBONE),
                                      args.trust_pickle, image_encoder_overrides=dict(TINY_IMAGE_ENCODER),
                                      spec_overrides=overrides)
            return task, {"weights": "released layout (tiny)", "checkpoint_dir": args.checkpoint_dir}
        return tiny_random_task(protocol.benchmark, args.image_size or 64).to(args.device), {"weights": "random (tiny)"}
    if not args.checkpoint_dir or not args.vae:
        raise ConfigError("--checkpoint-dir and --vae are required (or --tiny for a toy model)")
    task = task_from_released(args.checkpoint_dir, protocol.benchmark, args.vae, args.device, trust_pickle=args.trust_pickle)
    return task, {"weights": "released", "checkpoint_dir": args.checkpoint_dir, "vae": args.vae}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    protocol = get_protocol(args.benchmark)
    try:
        tasks = [_parse_task(args.benchmark, t) for t in args.tasks] if args.tasks else None
        env_overrides = {"image_size": args.env_image_size} if args.env_image_size else None
        jobs = plan_jobs(protocol, args.suites, tasks, args.trials, args.seeds, args.max_steps, env_overrides)
        import torch

        task, meta = _build_task(args, protocol)
        policy = policy_for(task, protocol, clip_actions=args.clip_actions or None)
        bf16 = args.precision == "bf16" or (args.precision == "auto" and torch.device(args.device).type == "cuda")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path(args.out) if args.out else REPO_ROOT / "runs" / "eval" / f"{args.benchmark}-{stamp}" / "results.json"
        meta.update(argv=list(sys.argv[1:] if argv is None else argv), device=args.device,
                    precision="bf16" if bf16 else "fp32",
                    execute_steps=policy.execute_steps, num_steps=protocol.num_steps, spec=task.spec.to_dict())
        report = run_protocol(policy, protocol, jobs, num_workers=args.num_workers,
                              python_executable=args.python_executable or _default_python(args.benchmark), out=out,
                              meta=meta, num_videos=args.videos, time_budget_s=args.time_budget_s,
                              autocast_dtype=torch.bfloat16 if bf16 else None)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError, ImportError) as e:
        hint = " (command line: --trust-pickle)" if "trust_pickle" in str(e) else ""
        print(f"error: {e}{hint}", file=sys.stderr)
        return 2
    print_table(report["summary"], f"Cosmos Policy on {args.benchmark} ({meta['weights']})")
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
