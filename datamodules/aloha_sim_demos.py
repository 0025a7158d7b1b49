"""ALOHA-sim demonstrations: the scripted experts (``cosmos_lit.envs.aloha_expert``) run in gym-aloha worker
processes, and their successful episodes are written as ACT-format HDF5 files, atomically, with a manifest that says
how they were made (a folder whose manifest matches is reused, not regenerated).

Episode file layout (ACT, ``record_sim_episodes.py``), T = episode length, S = image size::

    attrs: sim=True, task, seed, instruction, success
    /observations/images/<cam>  (T, S, S, 3) uint8
    /observations/qpos          (T, 14) float32
    /observations/qvel          (T, 14) float32
    /action                     (T, 14) float32   (action[t] is applied after observing step t)
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any


from cosmos_lit.datamodules.act_format import write_aloha_episode
from cosmos_lit.envs.aloha import AlohaSimEnv, get_task
from cosmos_lit.envs.aloha_expert import EXPERT_VERSION, ActionNoise, ExpertEpisode, MocapScene, make_expert, run_expert
from cosmos_lit.envs.render import ensure_gl_backend
from cosmos_lit.io import write_json_atomic

MANIFEST = "manifest.json"
FORMAT = "act_sim_hdf5/1"


def write_episode(path: Path, episode: ExpertEpisode, instruction: str, compression: str | None = None) -> None:
    """Write one expert episode as an ACT demo file (layout in the module docstring), atomically.

    Beyond ACT's datasets, a noisy episode also stores ``/executed_action`` (T, 14): what the env ran (labels plus
    the ``ActionNoise`` offsets), which replays it.
    """
    attrs = dict(sim=True, task=episode.task, seed=episode.seed, instruction=instruction, success=episode.success)
    extra = {"executed_action": episode.executed} if episode.executed is not None else None
    write_aloha_episode(path, episode.qpos, episode.actions, episode.images, "raw", attrs, qvel=episode.qvel,
                        extra=extra, compression=compression)


_WORKER_STATE: dict[tuple, tuple[MocapScene, AlohaSimEnv]] = {}


def _record_seed(job: dict[str, Any]) -> dict[str, Any]:
    """Worker: run the expert for one seed with rendering; if it succeeds, write a hidden temp episode file."""
    ensure_gl_backend()
    start = time.perf_counter()
    key = (job["task"], job["image_size"], tuple(job["cameras"]), job["fast_render"], job["episode_len"])
    if key not in _WORKER_STATE:
        env = AlohaSimEnv(job["task"], tuple(job["cameras"]), job["image_size"], job["episode_len"], job["fast_render"])
        _WORKER_STATE[key] = (MocapScene(job["task"]), env)
    scene, env = _WORKER_STATE[key]
    noise = ActionNoise(job["noise_std"], job["noise_steps"]) if job.get("noise_std") else None
    expert = make_expert(job["task"], job.get("expert_options"))
    from dm_control.rl.control import PhysicsError

    try:
        episode = run_expert(job["task"], job["seed"], job["episode_len"], scene=scene, env=env, expert=expert,
                             render=True, noise=noise)
    except PhysicsError as e:  # a perturbed (ActionNoise) episode can make the mocap welds blow up: a failed seed
        return {"seed": job["seed"], "success": False, "max_reward": -1.0, "tmp_path": None,
                "seconds": time.perf_counter() - start, "error": str(e).splitlines()[0]}
    tmp_path = None
    if episode.success:
        tmp_path = Path(job["out_dir"]) / f".seed_{job['seed']}.hdf5"
        write_episode(tmp_path, episode, env.instruction, job["compression"])
    return {
        "seed": job["seed"],
        "success": episode.success,
        "max_reward": float(episode.rewards.max()),
        "tmp_path": str(tmp_path) if tmp_path else None,
        "seconds": time.perf_counter() - start,
    }


def _pool_init() -> None:
    ensure_gl_backend()


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def foreign_episodes(out_dir: str | os.PathLike) -> list[Path]:
    """HDF5 episode files in ``out_dir`` (recursively) that ``generate_demos`` did not write: the folder has no
    readable manifest. Such a folder is left alone (see ``generate_demos``)."""
    out = Path(out_dir)
    if not out.is_dir() or _read_manifest(out / MANIFEST) is not None:
        return []
    return sorted(p for p in out.rglob("*") if p.suffix in (".hdf5", ".h5") and not p.name.startswith("."))


def generate_demos(
    out_dir: str | os.PathLike,
    task: str = "transfer_cube",
    num_episodes: int = 20,
    seed0: int = 0,
    image_size: int = 224,
    cameras: tuple[str, ...] | list[str] = ("top",),
    fast_render: bool = True,
    num_workers: int = 2,
    *,
    episode_len: int = 400,
    max_attempts: int | None = None,
    compression: str | None = None,
    noise_std: float = 0.0,
    noise_steps: float = 25.0,
    expert_options: dict[str, Any] | None = None,
    verbose: bool = True,
) -> list[Path]:
    """Write ``num_episodes`` successful expert episodes ``episode_{i}.hdf5`` (ACT format) into ``out_dir``.

    Seeds ``seed0, seed0 + 1, ...`` are tried in order; failed ones are skipped, so episode ``i`` holds the
    ``i``-th successful seed (its ``seed`` attribute; ``AlohaSimEnv.reset(seed)`` rebuilds the same scene).
    A ``manifest.json`` records the parameters: when it matches and every file exists the folder is reused as is;
    otherwise the folder's episodes are regenerated (with a message saying why).

    Args:
        num_workers: processes (``spawn``) that run seeds in parallel; ``<= 1`` runs in this process.
        episode_len: steps per episode (ACT: 400 at 50 Hz).
        max_attempts: give up (ValueError) after this many seeds; default ``2 * num_episodes + 10``.
        compression: HDF5 filter for the images (``None`` = raw, as ACT; ``"lzf"`` or ``"gzip"``).
        noise_std, noise_steps: ``ActionNoise`` on the executed targets (DART-style demos; 0 = clean demos). Noisy
            episodes also store ``/executed_action``, which replays them.
        expert_options: keyword arguments of the task's expert (``make_expert``), e.g.
            ``{"left_approach": "glide"}`` for TransferCube; recorded in the manifest.
    Returns:
        the episode paths, in index order.
    """
    task_info = get_task(task)
    ActionNoise(noise_std, noise_steps)  # validates both
    expert_options = dict(expert_options or {})
    expert = make_expert(task_info.name, expert_options)  # validates the option names and values
    cameras = [cameras] if isinstance(cameras, str) else list(cameras)
    if num_episodes < 1 or image_size < 1 or episode_len < 1 or not cameras:
        raise ValueError(
            f"generate_demos: need num_episodes, image_size, episode_len >= 1 and at least one camera; got "
            f"num_episodes={num_episodes}, image_size={image_size}, episode_len={episode_len}, cameras={cameras}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = print if verbose else (lambda *a, **k: None)
    params = {
        "format": FORMAT,
        "expert_version": EXPERT_VERSION,
        "task": task_info.name,
        "num_episodes": int(num_episodes),
        "seed0": int(seed0),
        "image_size": int(image_size),
        "cameras": cameras,
        "fast_render": bool(fast_render),
        "episode_len": int(episode_len),
        "compression": compression,
    }
    if noise_std > 0:  # only then, so that clean demo folders written before these keys existed stay valid
        windows = expert.noise_windows
        params.update(noise_std=float(noise_std), noise_steps=float(noise_steps),
                      noise_windows={arm: [list(w) for w in spans] for arm, spans in windows.items()})
    if expert_options:  # likewise: only non-default experts add a key
        if "noise_arms" in expert_options:  # "right", ["right"] and ("right",) are one expert: one manifest
            expert_options["noise_arms"] = expert.noise_arms
        params.update(expert_options=expert_options)
    paths = [out / f"episode_{i}.hdf5" for i in range(num_episodes)]
    manifest_path = out / MANIFEST
    old = _read_manifest(manifest_path)
    if old is not None and old.get("params") == params and all(p.exists() for p in paths):
        say(f"[aloha demos] reusing {num_episodes} {task} episodes in {out} (manifest matches)")
        return paths
    ours = sorted(out.glob("episode_*.hdf5"))
    foreign = foreign_episodes(out)
    if old is None and foreign:
        raise FileExistsError(
            f"{out} holds {len(foreign)} HDF5 episode file(s) but no {MANIFEST}: they were not written by "
            f"generate_demos, so they are left alone; pick an empty or new folder"
        )
    if old is not None:
        old_params = old.get("params", {})
        changed = sorted(k for k in set(params) | set(old_params) if params.get(k) != old_params.get(k))
        why = f"parameters changed: {', '.join(changed)}" if changed else "episode files are missing"
        say(f"[aloha demos] regenerating {out}: {why}")
        manifest_path.unlink()
    for stale in ours + sorted(out.glob(".seed_*.hdf5")):
        stale.unlink()

    max_attempts = max_attempts or 2 * num_episodes + 10
    job = dict(params, out_dir=str(out))
    start = time.perf_counter()
    kept: dict[int, dict[str, Any]] = {}  # seed -> result
    attempted: list[dict[str, Any]] = []
    next_seed = seed0
    pool = mp.get_context("spawn").Pool(num_workers, initializer=_pool_init) if num_workers > 1 else None
    progress = _progress(verbose)
    try:
        bar = progress.add_task(f"{task} demos", total=num_episodes) if progress else None
        while len(kept) < num_episodes:
            if len(attempted) >= max_attempts:
                raise ValueError(
                    f"generate_demos: only {len(kept)}/{num_episodes} successful {task} episodes after "
                    f"{len(attempted)} seeds (from {seed0}); raise max_attempts or check the expert"
                )
            n = min(num_episodes - len(kept), max_attempts - len(attempted))
            jobs = [dict(job, seed=s) for s in range(next_seed, next_seed + n)]
            next_seed += n
            results = pool.imap(_record_seed, jobs) if pool else map(_record_seed, jobs)
            for r in results:
                attempted.append(r)
                if r["success"]:
                    kept[r["seed"]] = r
                    if progress:
                        progress.update(bar, completed=len(kept))
    finally:
        if pool:
            pool.terminate()
            pool.join()
        else:  # ran in this process: free the cached sims and GL context
            for scene, env in _WORKER_STATE.values():
                scene.close()
                env.close()
            _WORKER_STATE.clear()
        if progress:
            progress.stop()
    # Episode i = i-th successful seed; every file was written atomically, renaming is atomic too.
    for i, seed in enumerate(sorted(kept)):
        os.replace(kept[seed]["tmp_path"], paths[i])
    elapsed = time.perf_counter() - start
    successes = sum(r["success"] for r in attempted)
    manifest = {
        "params": params,
        "seeds": sorted(kept),
        "instruction": task_info.instruction,
        "attempted_seeds": len(attempted),
        "success_rate": successes / len(attempted),
        "seconds": round(elapsed, 2),
        "seconds_per_attempt": round(sum(r["seconds"] for r in attempted) / len(attempted), 3),
        "failed_seeds": [{"seed": r["seed"], "max_reward": r["max_reward"]} for r in attempted if not r["success"]],
    }
    write_json_atomic(manifest_path, manifest, indent=2)
    say(
        f"[aloha demos] wrote {num_episodes} {task} episodes to {out} in {elapsed:.1f} s "
        f"(expert success {successes}/{len(attempted)}, {manifest['seconds_per_attempt']:.2f} s per episode per worker)"
    )
    return paths


def _progress(enabled: bool):
    if not enabled:
        return None
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:  # pragma: no cover - rich is a dependency
        return None
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    progress.start()
    return progress
