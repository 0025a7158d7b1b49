"""Closed-loop rollouts of a policy in simulator worker processes (one env per process).

``run_episodes`` runs episodes in waves of ``num_workers`` envs; in each wave the policy is queried once per chunk
for all live envs together (one batched forward), then each env executes ``policy.execute_steps`` actions open loop.
An env whose worker crashes is recorded with its error and the others go on. A time budget stops launching waves
(and ends the running wave at the next chunk boundary); unfinished episodes are reported, not counted as failures.

With ``rollout_dir`` every finished episode is also recorded as a rollout file in the Cosmos Policy layout
(:mod:`cosmos_lit.rollout_files`: JPEG frames, proprio, executed actions, rewards, success) and listed in the
folder's ``index.json``; a crashed or cut-off episode is reported in the results and not written.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cosmos_lit.envs.base import EpisodeResult
from cosmos_lit.io import atomic_path, write_json_atomic


def _frame(obs: dict[str, Any], cameras: tuple[str, ...]) -> np.ndarray:
    imgs = [np.asarray(obs["images"][c]) for c in cameras if c in obs.get("images", {})]
    return np.concatenate(imgs, axis=1) if imgs else np.zeros((64, 64, 3), np.uint8)


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> None:
    """mp4 (H.264 through PyAV, MPEG-4 part 2 where the FFmpeg build lacks an H.264 encoder), written atomically.

    ``frames``: (H, W, 3) uint8 RGB each; padded at the bottom/right to multiples of 16 (yuv420p needs even sides).
    """
    from fractions import Fraction

    import av

    h, w = frames[0].shape[:2]
    pad = [(0, (-h) % 16), (0, (-w) % 16), (0, 0)]
    codec = next((c for c in ("h264", "mpeg4") if c in av.codecs_available), "mpeg4")
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w + pad[1][1], h + pad[0][1], "yuv420p"
        for f in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.pad(f, pad)), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush


def run_episodes(
    policy: Any,
    env_cfg: dict[str, Any],
    seeds: list[int],
    num_workers: int = 2,
    max_steps: int | None = None,
    num_videos: int = 0,
    video_dir: str | Path | None = None,
    video_fps: float = 25.0,
    time_budget_s: float | None = None,
    pool: Any = None,
    python_executable: str | None = None,
    on_episode: Callable[[EpisodeResult], None] | None = None,
    rollout_dir: str | Path | None = None,
    rollout_attrs: dict[str, Any] | None = None,
) -> list[EpisodeResult]:
    """Run one episode per seed; returns results in seed order (errors and budget cut-offs included).

    ``policy``: a ``CosmosPolicy`` (or a wrapper with its ``spec``, ``seed``, ``execute_steps``, ``reset()`` and
    ``__call__(observations, seeds)``); the k-th query of the episode with env seed s draws the noise of
    ``cosmos_lit.seeding.episode_seed(policy.seed, s, k)``, so results do not depend on ``num_workers`` or ranks.

    ``rollout_dir``: record each finished episode there as a rollout file (``EpisodeResult.rollout_path``);
    ``rollout_attrs``: provenance attributes added to every file (checkpoint, planner, ...).
    """
    from cosmos_lit.envs.worker import EnvPool
    from cosmos_lit.rollout_files import RolloutFolder

    folder = RolloutFolder(rollout_dir) if rollout_dir is not None else None  # a refused folder fails before any env

    own_pool = pool is None
    if own_pool:
        pool = EnvPool(env_cfg, num_workers=min(num_workers, max(1, len(seeds))), python_executable=python_executable)
    env_name = str(env_cfg.get("name", "env"))
    task_name = str(env_cfg.get("task", env_cfg.get("env_name", env_cfg.get("suite", ""))))
    cameras = tuple(policy.spec.cameras)
    recording = None
    if folder is not None:
        recording = {"env": env_name, "task": task_name, "env_config": env_cfg, **dict(rollout_attrs or {})}
        recording["_suite"] = env_cfg.get("suite") if env_cfg.get("name") == "libero" else None
    start = time.monotonic()
    results: list[EpisodeResult] = []
    try:
        width = pool.num_workers
        for w0 in range(0, len(seeds), width):
            wave = seeds[w0 : w0 + width]
            if time_budget_s is not None and time.monotonic() - start > time_budget_s:
                results += [EpisodeResult(env_name, task_name, s, False, 0.0, 0.0, 0, 0.0, error="time budget") for s in wave]
                continue
            results += _run_wave(policy, pool, env_name, task_name, wave, w0, max_steps, num_videos, video_dir,
                                 video_fps, cameras, start, time_budget_s, folder, recording)
            if on_episode:
                for r in results[-len(wave):]:
                    on_episode(r)
    finally:
        if own_pool:
            pool.close()
    return results


def _run_wave(policy: Any, pool: Any, env_name: str, task_name: str, wave: list[int], first_index: int,
              max_steps: int | None, num_videos: int, video_dir: str | Path | None, video_fps: float,
              cameras: tuple[str, ...], start: float, time_budget_s: float | None, folder: Any = None,
              recording: dict[str, Any] | None = None) -> list[EpisodeResult]:
    from cosmos_lit.envs.worker import WorkerError
    from cosmos_lit.rollout_files import EpisodeRecorder
    from cosmos_lit.seeding import episode_seed

    n = len(wave)
    t0 = time.monotonic()
    obs: list[Any] = list(pool.reset(list(wave) + [None] * (pool.num_workers - n)))[:n]
    errors: list[str | None] = [o.message if isinstance(o, WorkerError) else None for o in obs]
    spec_steps = [s.get("max_steps", 0) if isinstance(s, dict) else 0 for s in pool.specs]
    horizon = max_steps or max(spec_steps + [1])
    steps = [0] * n
    queries = [0] * n  # action chunks asked for, per episode: with the env seed, the seed of the next one
    total = [0.0] * n
    best = [0.0] * n
    success = [False] * n
    done = [e is not None for e in errors]
    values: list[list[float]] = [[] for _ in range(n)]
    record = [video_dir is not None and first_index + i < num_videos for i in range(n)]
    frames: list[list[np.ndarray]] = [[_frame(o, cameras)] if record[i] and errors[i] is None else [] for i, o in enumerate(obs)]
    # rollout files: JPEG bytes as the steps arrive (obs[i] is the observation the executed action was chosen from)
    recorders = [EpisodeRecorder() if folder is not None and errors[i] is None else None for i in range(n)]
    policy.reset()
    while not all(done):
        if time_budget_s is not None and time.monotonic() - start > time_budget_s:
            for i in range(n):
                if not done[i]:
                    errors[i] = errors[i] or "time budget"
                    done[i] = True
            break
        live = [i for i in range(n) if not done[i]]
        out = policy([obs[i] for i in live], seeds=[episode_seed(policy.seed, wave[i], queries[i]) for i in live])
        for i in live:
            queries[i] += 1
        for j, i in enumerate(live):
            if "value" in out:
                values[i].append(float(out["value"][j]))
        for k in range(policy.execute_steps):
            live_now = [i for i in live if not done[i]]
            if not live_now:
                break
            acts: list[Any] = [None] * pool.num_workers
            for i in live_now:
                acts[i] = out["actions"][live.index(i), k]
            step_out = pool.step(acts)
            for i in live_now:
                res = step_out[i]
                if isinstance(res, WorkerError):
                    errors[i], done[i] = res.message.strip().splitlines()[-1] if res.message.strip() else "worker error", True
                    continue
                o, r, d, info = res
                if recorders[i] is not None:
                    try:
                        recorders[i].add(obs[i], acts[i], float(r))
                    except Exception as e:  # an unrecordable observation: the episode runs on, unrecorded
                        warnings.warn(f"run_episodes: seed {wave[i]} is not recorded: {type(e).__name__}: {e}", stacklevel=2)
                        recorders[i] = None
                obs[i] = o
                steps[i] += 1
                total[i] += float(r)
                best[i] = max(best[i], float(r))
                success[i] = success[i] or bool(info.get("success", False))
                if record[i]:
                    frames[i].append(_frame(o, cameras))
                if d or success[i] or steps[i] >= horizon:
                    done[i] = True
    seconds = time.monotonic() - t0
    results = []
    for i, seed in enumerate(wave):
        path = None
        if record[i] and frames[i]:
            path = Path(video_dir) / f"episode_{first_index + i:03d}_seed{seed}_{'success' if success[i] else 'fail'}.mp4"
            try:
                write_video(path, frames[i], video_fps)
            except Exception as e:  # a video is a by-product: the episode's result stands without it
                warnings.warn(f"run_episodes: could not write {path}: {type(e).__name__}: {e}", stacklevel=2)
                path = None
        rollout = _write_rollout(folder, recorders[i], recording or {}, seed, success[i], total[i], best[i], errors[i])
        results.append(EpisodeResult(env_name, task_name, seed, success[i], total[i], best[i], steps[i], seconds,
                                     error=errors[i], video_path=str(path) if path else None, predicted_values=values[i],
                                     rollout_path=rollout))
    return results


def _write_rollout(folder: Any, recorder: Any, recording: dict[str, Any], seed: int, success: bool, total: float,
                   best: float, error: str | None) -> str | None:
    """Write one finished episode to the rollout folder; a crashed or cut-off one (``error``) is not written."""
    if folder is None or recorder is None or error is not None:
        return None
    if recorder.steps < 2:  # the DataModules need a current and a future observation
        warnings.warn(f"run_episodes: seed {seed} ended after {recorder.steps} step(s); not recorded", stacklevel=3)
        return None
    attrs = {k: v for k, v in recording.items() if not k.startswith("_")}
    try:
        return str(folder.add(recorder, seed, success, total, best, attrs=attrs, suite=recording.get("_suite")))
    except Exception as e:  # e.g. a full disk: the episode's result stands, reported without its file
        warnings.warn(f"run_episodes: could not write the rollout of seed {seed}: {type(e).__name__}: {e}", stacklevel=3)
        return None


def summarize(results: list[EpisodeResult]) -> dict[str, float]:
    """Success rate and rewards over finished episodes (errors and budget cut-offs excluded, but counted).

    ``mean_return`` is the mean over episodes of the total (undiscounted) reward, ``mean_max_reward`` the mean of
    each episode's best single-step reward (ALOHA's staged reward: how far the task got).
    """
    finished = [r for r in results if r.error is None]
    out = {
        "episodes": float(len(finished)),
        "errors": float(sum(r.error not in (None, "time budget") for r in results)),
        "unfinished": float(sum(r.error == "time budget" for r in results)),
    }
    if finished:
        out["success_rate"] = float(np.mean([r.success for r in finished]))
        out["mean_return"] = float(np.mean([r.total_reward for r in finished]))
        out["mean_max_reward"] = float(np.mean([r.max_reward for r in finished]))
    return out


def save_results(path: str | Path, results: list[EpisodeResult], extra: dict[str, Any] | None = None) -> None:
    """JSON ``{summary, **extra, episodes}`` at ``path``, written atomically."""
    write_json_atomic(path, {"summary": summarize(results), **(extra or {}), "episodes": [r.to_dict() for r in results]})
