"""Rollout files in the Cosmos Policy layout: one HDF5 per episode, plus an ``index.json`` per rollout folder.

What ``python -m cosmos_lit collect`` and ``eval.record_rollouts=true`` write, and what the DataModules read back
with ``data.rollout_dir=DIR`` (docs/method.md#rollout-collection)::

    DIR/index.json                                  {"format", "episodes": [{file, seed, success, steps,
                                                    total_reward, max_reward, env, task}, ...]}
    DIR/episode_00000--seed=100000--success=False.hdf5     (LIBERO adds --suite=<suite>: its DataModule selects on it)
        <key>_jpeg   (T,) variable-length uint8 JPEG (quality 95) per camera, key from ROLLOUT_IMAGE_KEYS:
                     primary_images_jpeg, wrist_images_jpeg, wrist_left_images_jpeg, ...
        proprio      (T, P) float32    the observation at step t
        actions      (T, A) float32    the action executed at step t (env units)
        rewards      (T,)   float32    the env's reward for that step
        attrs        success (bool), task_description (str), format, seed, env, task, steps, total_reward,
                     max_reward, checkpoint, planner, cameras (JSON {camera: key}), env_config / planner_config
                     (JSON), created

Row t pairs the observation the policy saw with the action sent to the env; the observation after the last action
is not stored. Frames are JPEG-encoded as they arrive (:class:`EpisodeRecorder` holds bytes, never raw frames).
Every file and every index rewrite is atomic (``cosmos_lit.io``): a crash leaves the previous index and at most a
hidden temp file, never a truncated episode or index.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cosmos_lit.io import atomic_path, write_json_atomic

FORMAT = "cosmos_lit rollouts v1"
INDEX_FILE = "index.json"
JPEG_QUALITY = 95
# The one camera -> top-level key mapping of rollout files (the "_jpeg" suffix marks JPEG bytes); the ALOHA, LIBERO
# and RoboCasa DataModules read their rollout cameras through it. A camera not listed is stored as "<camera>_images".
ROLLOUT_IMAGE_KEYS = {
    # ALOHA: the real robot's cam_high and the ACT simulation's top camera are the primary view
    "cam_high": "primary_images",
    "top": "primary_images",
    "cam_left_wrist": "wrist_left_images",
    "cam_right_wrist": "wrist_right_images",
    # LIBERO (env and DataModule camera names)
    "primary": "primary_images",
    "wrist": "wrist_images",
    # RoboCasa: left agent view = primary, right = secondary
    "robot0_agentview_left": "primary_images",
    "robot0_agentview_right": "secondary_images",
    "robot0_eye_in_hand": "wrist_images",
    # robosuite single-arm tasks (Lift, ...)
    "agentview": "primary_images",
}
EPISODE_NAME = re.compile(r"^episode_(\d+)")


def rollout_image_key(camera: str, jpeg: bool = True) -> str:
    """Top-level dataset of ``camera`` in a rollout file (``primary_images_jpeg`` for ``top``)."""
    key = ROLLOUT_IMAGE_KEYS.get(camera, f"{camera}_images")
    return key + "_jpeg" if jpeg else key


def _attr(value: Any) -> Any:
    """A value h5py stores as an attribute: None -> "", mappings and lists -> JSON text."""
    if value is None:
        return ""
    if isinstance(value, Mapping) or (isinstance(value, (list, tuple)) and not all(isinstance(v, (int, float)) for v in value)):
        return json.dumps(value, default=str)
    if isinstance(value, Path):
        return str(value)
    return value


# ---------------------------------------------------------------------------------------------------- one episode


class EpisodeRecorder:
    """Accumulates one episode as it runs: JPEG bytes per camera, proprio, executed actions, rewards.

    ``add(obs, action, reward)`` once per env step, with the observation the action was chosen from; then
    :meth:`write` (or :meth:`RolloutFolder.add`). Cameras are fixed by the first observation.
    """

    def __init__(self, quality: int = JPEG_QUALITY):
        self.quality = int(quality)
        self.cameras: tuple[str, ...] | None = None
        self.jpegs: dict[str, list[bytes]] = {}
        self.proprio: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []
        self.instruction = ""

    @property
    def steps(self) -> int:
        return len(self.actions)

    def add(self, obs: Mapping[str, Any], action: Any, reward: float) -> None:
        from cosmos_lit.images import encode_jpeg

        images = obs.get("images") or {}
        if self.cameras is None:
            self.cameras = tuple(images)
            keys = [rollout_image_key(c) for c in self.cameras]
            clash = sorted({k for k in keys if keys.count(k) > 1})
            if clash:
                raise ValueError(f"rollout: cameras {list(self.cameras)} share the rollout key '{clash[0]}' "
                                 "(cosmos_lit.rollout_files.ROLLOUT_IMAGE_KEYS)")
            self.jpegs = {c: [] for c in self.cameras}
            self.instruction = str(obs.get("instruction") or "")
        for cam in self.cameras:
            if cam not in images:
                raise ValueError(f"rollout: step {self.steps} has no image of camera '{cam}' (has: {', '.join(images)})")
            self.jpegs[cam].append(encode_jpeg(np.ascontiguousarray(images[cam]), self.quality))
        self.proprio.append(np.asarray(obs["proprio"], np.float32).reshape(-1))
        self.actions.append(np.asarray(action, np.float32).reshape(-1))
        self.rewards.append(float(reward))

    def write(self, path: str | os.PathLike[str], success: bool, attrs: Mapping[str, Any] | None = None) -> Path:
        if not self.steps:
            raise ValueError(f"rollout: {path}: the episode has no steps to write")
        return write_rollout(path, self.jpegs, np.stack(self.proprio), np.stack(self.actions),
                             np.asarray(self.rewards, np.float32), success=success,
                             task_description=self.instruction, attrs=attrs)


def write_rollout(
    path: str | os.PathLike[str],
    images: Mapping[str, Sequence[Any]],
    proprio: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    success: bool,
    task_description: str = "",
    attrs: Mapping[str, Any] | None = None,
    quality: int = JPEG_QUALITY,
) -> Path:
    """One rollout episode file, written atomically.

    Args:
        images: per camera, T frames: JPEG bytes, or (H, W, 3) uint8 arrays (encoded here at ``quality``).
        proprio, actions, rewards: (T, P), (T, A), (T,); stored as float32.
        attrs: provenance attributes (None becomes "", mappings JSON text).
    """
    import h5py

    from cosmos_lit.images import encode_jpeg

    proprio = np.asarray(proprio, np.float32)
    actions = np.asarray(actions, np.float32)
    rewards = np.asarray(rewards, np.float32).reshape(-1)
    t = len(actions)
    if proprio.ndim != 2 or actions.ndim != 2 or len(proprio) != t or len(rewards) != t:
        raise ValueError(f"rollout: {path}: proprio {proprio.shape}, actions {actions.shape} and rewards "
                         f"{rewards.shape} must be (T, P), (T, A) and (T,) with the same T")
    path = Path(path)
    with atomic_path(path, keep_suffix=False) as tmp:
        with h5py.File(tmp, "w") as f:
            keys = {}
            for cam, frames in images.items():
                if len(frames) != t:
                    raise ValueError(f"rollout: {path}: camera '{cam}' has {len(frames)} frames; expected {t}")
                key = rollout_image_key(cam)
                keys[cam] = key
                ds = f.create_dataset(key, shape=(t,), dtype=h5py.vlen_dtype(np.uint8))
                for i, frame in enumerate(frames):
                    data = frame if isinstance(frame, (bytes, bytearray)) else encode_jpeg(np.asarray(frame), quality)
                    ds[i] = np.frombuffer(data, np.uint8)
            f.create_dataset("proprio", data=proprio)
            f.create_dataset("actions", data=actions)
            f.create_dataset("rewards", data=rewards)
            meta = {"format": FORMAT, "steps": t, "total_reward": float(rewards.sum()),
                    "max_reward": float(rewards.max()) if t else 0.0, "cameras": keys,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **dict(attrs or {})}
            for name, value in meta.items():
                f.attrs[name] = _attr(value)
            f.attrs["success"] = bool(success)
            f.attrs["task_description"] = str(task_description or "")
    return path


def read_rollout(path: str | os.PathLike[str], decode: bool = True) -> dict[str, Any]:
    """``{images: {camera: frames}, proprio, actions, rewards, attrs}`` of a rollout file (frames decoded to
    uint8 (H, W, 3) unless ``decode=False``). A file that is not one gives one ValueError naming it."""
    import h5py

    from cosmos_lit.images import decode_image

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            for k in ("cameras", "env_config", "planner_config"):
                if isinstance(attrs.get(k), str) and attrs[k]:
                    attrs[k] = json.loads(attrs[k])
            cameras = attrs.get("cameras") or {k[: -len("_jpeg")]: k for k in f if k.endswith("_jpeg")}
            images = {}
            for cam, key in cameras.items():
                raw = [bytes(np.asarray(b, np.uint8)) for b in f[key][()]]
                images[cam] = [decode_image(b) for b in raw] if decode else raw
            out = {"images": images, "attrs": attrs}
            for key in ("proprio", "actions", "rewards"):
                if key not in f:
                    raise ValueError(f"{path}: missing key '{key}' (not a rollout file)")
                out[key] = np.asarray(f[key][()])
    except (OSError, KeyError, RuntimeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable rollout file ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    return out


# ---------------------------------------------------------------------------------------------------- a folder


class RolloutFolder:
    """A folder of rollout files and its ``index.json`` (created if missing; an earlier folder is added to).

    A folder that exists, is not empty and has no index is refused (it is someone else's data), as is an index
    that cannot be read. Each :meth:`add` writes the episode file, then rewrites the index atomically.
    """

    def __init__(self, path: str | os.PathLike[str], create: bool = True):
        self.path = Path(path).expanduser().resolve()
        self.index_path = self.path / INDEX_FILE
        self.episodes: list[dict[str, Any]] = check_folder(self.path)
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
            if not self.index_path.exists():
                self._write_index()

    def _write_index(self) -> None:
        write_json_atomic(self.index_path, {
            "format": FORMAT,
            "episodes_total": len(self.episodes),
            "successes": sum(bool(e.get("success")) for e in self.episodes),
            "episodes": self.episodes,
        })

    def _next_number(self) -> int:
        taken = {int(m.group(1)) for p in self.path.iterdir() if (m := EPISODE_NAME.match(p.name))}
        taken |= {int(m.group(1)) for e in self.episodes if (m := EPISODE_NAME.match(str(e.get("file", ""))))}
        return max(taken) + 1 if taken else 0

    def episode_name(self, number: int, seed: int, success: bool, suite: str | None = None) -> str:
        tag = f"--suite={suite}" if suite else ""
        return f"episode_{number:05d}--seed={seed}--success={bool(success)}{tag}.hdf5"

    def add(self, recorder: EpisodeRecorder, seed: int, success: bool, total_reward: float, max_reward: float,
            attrs: Mapping[str, Any] | None = None, suite: str | None = None) -> Path:
        """Write one recorded episode and its index entry; returns the file."""
        path = self.path / self.episode_name(self._next_number(), seed, success, suite)
        meta = {**dict(attrs or {}), "seed": int(seed)}
        recorder.write(path, success, meta)
        self.episodes.append({
            "file": path.name, "seed": int(seed), "success": bool(success), "steps": recorder.steps,
            "total_reward": float(total_reward), "max_reward": float(max_reward),
            "env": str(meta.get("env", "")), "task": str(meta.get("task", "")),
        })
        self._write_index()
        return path


def check_folder(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The index entries of rollout folder ``path`` ([] for a new or empty folder); one ValueError naming the
    folder or file otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: is a file; expected a rollout folder")
    index = path / INDEX_FILE
    if not index.is_file():
        if path.is_dir() and any(path.iterdir()):
            raise ValueError(f"{path}: folder is not empty and is not a rollout folder (no {INDEX_FILE}); "
                             "pick a new or empty folder, or one an earlier collection wrote")
        return []
    try:
        payload = json.loads(index.read_text())
        episodes = payload["episodes"]
        if payload.get("format") != FORMAT or not isinstance(episodes, list):
            raise ValueError(f"format {payload.get('format')!r}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{index}: not a rollout index ({type(e).__name__}: {e}; expected {FORMAT!r})") from None
    return [dict(e) for e in episodes]


def read_index(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``index.json`` of a rollout folder as a dict."""
    episodes = check_folder(path)
    if not (Path(path) / INDEX_FILE).is_file():
        raise FileNotFoundError(f"{Path(path) / INDEX_FILE}: not found (not a rollout folder)")
    return json.loads((Path(path) / INDEX_FILE).read_text()) | {"episodes": episodes}
