"""``python -m cosmos_lit eval --config configs/protocol/<benchmark>.yaml [KEY=VALUE ...]``: run a protocol.

The jobs of the plan (:func:`~cosmos_lit.eval.protocols.plan_jobs`) run in simulator worker processes, one pool per
env configuration reused across run seeds; the policy answers the live envs of a wave in one batched query, with the
protocol's denoising steps passed per call. Success per task and suite is printed and the JSON report
(:mod:`cosmos_lit.eval.report`) is rewritten atomically after every env configuration::

    python -m cosmos_lit eval --config configs/protocol/libero.yaml checkpoint_dir=ckpt/Cosmos-Policy-LIBERO-Predict2-2B \\
        vae=ckpt/Cosmos-Predict2-2B-Video2World/tokenizer/tokenizer.pth trust_pickle=true device=cuda num_workers=10

Weights: a released folder (``checkpoint_dir`` + ``vae``), a Lightning checkpoint of ours (``checkpoint=run.ckpt``),
or ``tiny=true``: the toy-size DiT and VAE, with random weights (and the hash text embedder) or with tiny weights
stored in the released layout (``checkpoint_dir``; text from its T5 cache, which then has the tiny DiT's width, 32).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from cosmos_lit.eval.protocols import Job, Protocol, RunOptions, load, plan_jobs
from cosmos_lit.eval.released import TINY_BACKBONE, TINY_IMAGE_ENCODER, model_from_released, tiny_random_model
from cosmos_lit.eval.report import build_report, print_table, write_report
from cosmos_lit.registry import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
USAGE = ("python -m cosmos_lit eval --config configs/protocol/<benchmark>.yaml checkpoint_dir=DIR vae=PATH "
         "[trust_pickle=true] [device=cuda] [suites=[...]] [tasks=[...]] [trials=N] [seeds=[...]] [max_steps=N] "
         "[num_workers=N] [out=PATH] [videos=N] [tiny=true] [checkpoint=run.ckpt]")


class _EvalPolicy:
    """A ``CosmosPolicy`` under autocast (bf16 on GPU) that remembers each env's instruction."""

    def __init__(self, policy: Any, autocast_dtype: Any = None):
        self.policy = policy
        self.autocast_dtype = autocast_dtype
        self.instructions: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.policy, name)

    def __call__(self, observations: list[dict[str, Any]], seeds: list[int] | None = None) -> dict[str, Any]:
        import torch

        self.instructions.update(str(o.get("instruction", "")) for o in observations)
        ctx = (torch.autocast(self.policy.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
               else contextlib.nullcontext())
        with ctx:
            return self.policy(observations, seeds=seeds)


def _env_key(env: dict[str, Any]) -> str:
    import json

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

    The report (``out``, rewritten atomically after every env configuration) holds ``summary``, ``protocol``,
    ``meta`` and one record per episode (:mod:`cosmos_lit.eval.report`).
    """
    from cosmos_lit.envs.worker import EnvPool, WorkerError
    from cosmos_lit.eval.rollouts import run_episodes

    wrapped = _EvalPolicy(policy, autocast_dtype)
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(_env_key(job.env), []).append(job)
    episodes: list[dict[str, Any]] = []
    report: dict[str, Any] = {}
    started = time.monotonic()
    for group in groups.values():
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
                                     "run_seed": job.run_seed, "episode": k,
                                     "scene": list(job.scene) if isinstance(job.scene, tuple) else job.scene})
                done = [r for r in results if r.error is None]
                log(f"[eval] {job.suite} task {job.task} seed {job.run_seed}"
                    f"{f' scene {job.scene}' if job.scene else ''}: {sum(r.success for r in done)}/{len(done)} "
                    f"succeeded, {len(results) - len(done)} errors, {time.monotonic() - started:.0f}s elapsed")
        finally:
            pool.close()
        report = build_report(protocol.benchmark, episodes, protocol.to_dict(), meta)
        if out is not None:
            write_report(out, report)
    return report


def _check_model_fits(model: Any, protocol: Protocol, where: str) -> None:
    spec = model.spec
    for key, have in (("cameras", list(spec.cameras)), ("proprio_dim", spec.proprio_dim),
                      ("action_dim", spec.action_dim)):
        want = list(protocol.spec[key]) if key == "cameras" else int(protocol.spec[key])
        if have != want:
            raise ConfigError(f"{where}: the model's {key} {have} are not the {protocol.benchmark} env's {want}")


def build_model(opts: RunOptions, protocol: Protocol) -> tuple[Any, dict[str, Any]]:
    """The model the options ask for, and what to record about its weights."""
    if opts.checkpoint:
        from cosmos_lit.checkpoint import load_model

        model = load_model(opts.checkpoint, map_location=opts.device, trust_pickle=opts.trust_pickle)
        _check_model_fits(model, protocol, opts.checkpoint)
        return model, {"weights": "lightning checkpoint", "checkpoint": opts.checkpoint}
    if opts.tiny:
        if opts.checkpoint_dir:
            model = model_from_released(opts.checkpoint_dir, protocol, opts.vae, opts.device, dict(TINY_BACKBONE),
                                        opts.trust_pickle, image_encoder_overrides=dict(TINY_IMAGE_ENCODER))
            return model, {"weights": "released layout (tiny)", "checkpoint_dir": opts.checkpoint_dir}
        return tiny_random_model(protocol).to(opts.device), {"weights": "random (tiny)"}
    if not opts.checkpoint_dir or not opts.vae:
        raise ConfigError("checkpoint_dir and vae are required (a released checkpoint), or checkpoint=<run.ckpt>, "
                          "or tiny=true for a toy model")
    model = model_from_released(opts.checkpoint_dir, protocol, opts.vae, opts.device, trust_pickle=opts.trust_pickle)
    return model, {"weights": "released", "checkpoint_dir": opts.checkpoint_dir, "vae": opts.vae}


def policy_for(model: Any, protocol: Protocol, seed: int = 0, clip_actions: bool = False) -> Any:
    """``CosmosPolicy`` with the protocol's denoising steps (per call), executed steps and image steps."""
    from cosmos_lit.policy import CosmosPolicy

    return CosmosPolicy(
        model,
        num_steps=protocol.num_steps,
        execute_steps=min(protocol.execute_steps, model.spec.chunk_size),
        image_pipeline=dict(protocol.image_pipeline),
        seed=seed,
        clip_actions=clip_actions,
    )


def _python(opts: RunOptions, protocol: Protocol) -> str | None:
    python = opts.python_executable or protocol.python_executable
    if python and not os.path.isabs(python) and not Path(python).exists() and (REPO_ROOT / python).exists():
        python = str(REPO_ROOT / python)  # .venv-libero/bin/python from outside the repository root
    return python


def evaluate(config: str | Path, overrides: list[str], argv: list[str] | None = None) -> tuple[dict[str, Any], Path]:
    """Compose, plan, build and run; returns (report, report path). Raises ConfigError & co. on bad input."""
    import torch

    from cosmos_lit.precision import uses_bf16, warn_if_emulated_bf16

    protocol, opts = load(config, overrides)
    jobs = plan_jobs(protocol, opts.suites, opts.tasks)
    model, meta = build_model(opts, protocol)
    policy = policy_for(model, protocol, clip_actions=opts.clip_actions)
    bf16 = uses_bf16(opts.precision, opts.device)
    warn_if_emulated_bf16(opts.precision, opts.device, "precision")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(opts.out) if opts.out else Path("runs") / "eval" / f"{protocol.benchmark}-{stamp}" / "results.json"
    meta.update(argv=list(argv if argv is not None else sys.argv[1:]), device=opts.device,
                precision="bf16" if bf16 else "fp32", execute_steps=policy.execute_steps,
                num_steps=protocol.num_steps if protocol.num_steps is not None else model.sampling.num_steps,
                clip_actions=opts.clip_actions, spec=model.spec.to_dict())
    report = run_protocol(policy, protocol, jobs, num_workers=opts.num_workers, python_executable=_python(opts, protocol),
                          out=out, meta=meta, num_videos=opts.videos, time_budget_s=opts.time_budget_s,
                          autocast_dtype=torch.bfloat16 if bf16 else None)
    return report, out


def main(config: str | None, overrides: list[str], print_only: bool = False) -> int:
    """The ``eval`` verb: 0 on success, 2 with one ``error:`` line on bad input (``COSMOS_LIT_DEBUG=1``: traceback)."""
    try:
        if not config:
            raise ConfigError(f"--config is required: {USAGE}")
        if print_only:
            from omegaconf import OmegaConf

            from cosmos_lit.eval.protocols import compose_protocol

            print(OmegaConf.to_yaml(compose_protocol(config, overrides)), end="")
            return 0
        report, out = evaluate(config, overrides)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError, ImportError, KeyError) as e:
        if os.environ.get("COSMOS_LIT_DEBUG"):
            raise
        msg = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
        hint = " (command line: trust_pickle=true)" if "trust_pickle=True" in msg else ""
        print(f"error: {' '.join(msg.split())}{hint}", file=sys.stderr)
        return 2
    print_table(report["summary"], f"Cosmos Policy on {report['benchmark']} ({report['meta']['weights']})")
    print(f"report: {out}")
    return 0
