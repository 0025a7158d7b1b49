"""``python -m cosmos_lit collect ckpt_path=CKPT [OVERRIDES] [out=DIR] [device=cuda]``: record closed-loop rollouts
(the verb's config handling is ``cosmos_lit.cli.collect``; the recording run is :func:`record`).

Runs the evaluation embedded in a checkpoint (its ``eval`` config: env, seeds, horizon, denoising steps, image
pipeline; its ``planner``), as ``validate ckpt_path=...`` rebuilds a run from the checkpoint alone, with
``eval.record_rollouts`` on and no time budget (unless ``eval.time_budget_s=`` is given). Every finished episode
becomes one HDF5 rollout file in ``DIR`` (the Cosmos Policy layout, :mod:`cosmos_lit.rollout_files`) listed in
``DIR/index.json``; ``DIR/results.json`` holds the per-episode results (crashed episodes included, not written as
files). ``data.rollout_dir=DIR`` reads the folder back for learning from experience::

    python -m cosmos_lit collect ckpt_path=runs/aloha_sim/.../last.ckpt eval.num_episodes=200 eval.seed0=200000 \\
        eval.num_workers=8 out=data/rollouts/aloha_sim planner=best_of_n

``--config FILE`` composes the run config from FILE instead (for a checkpoint trained with ``eval=none``); the
weights still come from ``ckpt_path``. An existing ``out`` that holds an index is added to (episode numbers go on).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from cosmos_lit.config import CliError

USAGE = ("python -m cosmos_lit collect ckpt_path=CKPT [eval.num_episodes=N] [eval.seed0=N] [eval.num_workers=N] "
         "[eval.env.max_steps=N] [planner=best_of_n] [out=DIR] [device=cpu|cuda] [--config FILE]")
OPTIONS = ("out", "device")  # the verb's own keys; every other key=value is a config override


def split_options(overrides: list[str]) -> tuple[dict[str, str | None], list[str]]:
    opts: dict[str, str | None] = {k: None for k in OPTIONS}
    rest = []
    for o in overrides:
        key, eq, value = o.partition("=")
        if eq and key in OPTIONS:
            opts[key] = value
        else:
            rest.append(o)
    return opts, rest


def _device(requested: str | None, cfg: dict[str, Any]) -> Any:
    import torch

    if requested:
        try:
            device = torch.device(requested)
        except (RuntimeError, ValueError):
            raise CliError(f"device: expected cpu, cuda or cuda:N, got {requested!r}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise CliError(f"device: {requested} asked for, but no CUDA device is available")
        return device
    accelerator = str((cfg.get("trainer") or {}).get("accelerator", "auto"))
    return torch.device("cuda" if torch.cuda.is_available() and accelerator != "cpu" else "cpu")


def default_out(cfg: dict[str, Any]) -> Path:
    name = cfg.get("run_name") or (cfg.get("data") or {}).get("name", "run")
    return Path("runs") / str(name) / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_collect"


def record(collector: Any, ckpt: Path, out: Path, device_name: str | None, cfg: dict[str, Any],
           overrides: list[str], previous: list[dict[str, Any]], write_config: Any) -> int:
    """Run ``collector``'s episodes (a ``SimEvalCallback`` with recording on) with the model of ``ckpt`` and record
    them in ``out``; ``write_config(folder)`` writes the run config there. Prints the one-line summary; returns 0
    when episodes were recorded."""
    import torch

    from cosmos_lit.checkpoint import load_model
    from cosmos_lit.envs.worker import WorkerError
    from cosmos_lit.eval.rollouts import save_results, summarize
    from cosmos_lit.rollout_files import INDEX_FILE, RolloutFolder

    ev = cfg["eval"]
    device = _device(device_name, cfg)
    torch.manual_seed(int(cfg.get("seed", 0)))
    model = load_model(ckpt, map_location=device)
    try:
        pool = collector.pool(len(collector.seeds))
        if all(isinstance(s, WorkerError) for s in pool.specs):
            msg = pool.specs[0].message.strip().splitlines()
            raise CliError(f"eval.env: env '{ev['env'].get('name')}' could not be built: {msg[-1] if msg else 'unknown error'}")
        RolloutFolder(out)  # index.json first: the folder is a rollout folder from here on
        write_config(out)
        provenance = {"checkpoint": str(ckpt.resolve()), "collected_by": "python -m cosmos_lit collect"}
        precision = (cfg.get("trainer") or {}).get("precision", "auto")  # the run's, as validate computes
        results = collector.run_policy(model, out, rollout_dir=out, provenance=provenance, precision=precision)
    finally:
        collector.teardown(None, None, "collect")  # type: ignore[arg-type]
    results_path = out / "results.json"
    if results_path.exists():  # adding to an earlier collection: keep its results
        results_path = out / f"results_{time.strftime('%Y-%m-%d_%H-%M-%S')}.json"
    save_results(results_path, results, {"checkpoint": str(ckpt.resolve()), "planner": collector.planner_cfg,
                                         "eval": ev, "overrides": list(overrides), "rollout_dir": str(out.resolve())})
    for r in results:
        if r.error not in (None, "time budget"):
            print(f"[collect] env error (seed {r.seed}): {r.error}", file=sys.stderr)
    s = summarize(results)
    written = [r for r in results if r.rollout_path]
    successes = sum(r.success for r in written)
    print(f"collected {len(written)} episodes ({successes} successes, {len(written) - successes} failures; "
          f"{int(s['errors'])} crashed, {int(s['unfinished'])} unfinished) -> {out.resolve()} "
          f"({INDEX_FILE}: {len(previous) + len(written)} episodes; {results_path.name})", flush=True)
    return 0 if written or not results else 1
