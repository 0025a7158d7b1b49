"""Small files in the real schemas of LIBERO, RoboCasa and LeRobotDataset, for the DataModule tests and benchmarks.

The benchmarks' own writers do not install here (LIBERO and RoboCasa need their simulators and assets to record;
``lerobot`` pulls CUDA torch), so these follow the schemas exactly with h5py / pyarrow / PyAV:

- LIBERO original: ``scripts/create_dataset.py`` of Lifelong-Robot-Learning/LIBERO (data attrs env_name,
  problem_info, macros_image_convention, bddl_file_name, bddl_file_content, env_args, num_demos, total; demo attrs
  num_samples, model_file, init_state; obs/{gripper_states, joint_states, ee_states, ee_pos, ee_ori,
  agentview_rgb, eye_in_hand_rgb}; actions, states, robot_states, rewards, dones), frames upside down;
- LIBERO / RoboCasa Cosmos regenerated and rollout files: ``regenerate_{libero,robocasa}_dataset.py`` of
  NVlabs/cosmos-policy (upright frames, ``*_jpeg`` as variable-length uint8 JPEG q95);
- robomimic: ``convert_robosuite.py`` + ``dataset_states_to_obs.py`` of ARISE-Initiative/robomimic (data attrs
  env_args, total; demo attrs num_samples, model_file; obs/<camera>_image, obs/robot0_* low-dim keys; actions,
  states, rewards, dones; mask/train and mask/valid byte arrays of demo names);
- RoboCasa human v0.1: the robomimic layout of docs/method.md#demonstration-file-schemas (``*_image`` frames
  upside down, 12-D actions, ep_meta JSON with ``lang``);
- LeRobotDataset v3.0 and v2.1: ``src/lerobot/datasets/{utils,dataset_metadata,dataset_writer}.py`` of
  huggingface/lerobot (info.json, stats.json, tasks, episodes metadata, data parquet, mp4 per camera).

Frames are synthetic and readable back (:func:`make_frame`): channel 0 encodes the step index t, channel 1 is
bright on the upper half of the *upright* image and dark below, channel 2 encodes the camera index.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import h5py
import numpy as np

from cosmos_lit.images import encode_jpeg
from cosmos_lit.io import atomic_path

TOP, BOTTOM = 220, 30


def t_level(t: int) -> int:
    """Channel-0 value of step t (distinct for t < 27)."""
    return min(255, 10 + 9 * int(t))


def cam_level(cam: int) -> int:
    return 40 + 60 * int(cam)


def make_frame(t: int, cam: int, size: int, upside_down: bool = False) -> np.ndarray:
    """uint8 (size, size, 3): ch0 = t_level(t), ch1 = TOP above the middle / BOTTOM below (upright), ch2 =
    cam_level(cam). ``upside_down`` stores it flipped, as OpenGL renders."""
    img = np.empty((size, size, 3), np.uint8)
    img[..., 0] = t_level(t)
    img[: size // 2, :, 1] = TOP
    img[size // 2 :, :, 1] = BOTTOM
    img[..., 2] = cam_level(cam)
    return np.ascontiguousarray(img[::-1]) if upside_down else img


def frames(length: int, cam: int, size: int, upside_down: bool = False) -> np.ndarray:
    if length == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([make_frame(t, cam, size, upside_down) for t in range(length)])


def make_vectors(length: int, dim: int, seed: int, scale: float = 1.0) -> np.ndarray:
    """(T, dim) float64 smooth random walk."""
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(0.0, 0.1 * scale, size=(length, dim)), axis=0)


@contextmanager
def _atomic_h5(path: str) -> Iterator[h5py.File]:
    """An h5py.File written to a temp file beside ``path`` and renamed over it when the block finishes."""
    with atomic_path(path, keep_suffix=False) as tmp, h5py.File(tmp, "w") as f:
        yield f


def _images(group: h5py.Group, key: str, images: np.ndarray, jpeg: bool) -> None:
    if jpeg:
        ds = group.create_dataset(key + "_jpeg", shape=(len(images),), dtype=h5py.vlen_dtype(np.uint8))
        for i, img in enumerate(images):
            ds[i] = np.frombuffer(encode_jpeg(img, 95), np.uint8)
    else:
        group.create_dataset(key, data=images, chunks=(1, *images.shape[1:]) if len(images) else None)


def _axis_angle(quat: np.ndarray) -> np.ndarray:
    """(T, 4) xyzw quaternions -> (T, 3) axis-angle (for the ee_ori / ee_states fields)."""
    q = quat / np.linalg.norm(quat, axis=1, keepdims=True)
    angle = 2 * np.arccos(np.clip(q[:, 3], -1, 1))
    s = np.sqrt(np.maximum(1 - q[:, 3] ** 2, 1e-12))
    return q[:, :3] / s[:, None] * angle[:, None]


def robot_states(length: int, seed: int) -> np.ndarray:
    """(T, 9) gripper_qpos (2) + eef_pos (3) + eef_quat (4, unit xyzw)."""
    v = make_vectors(length, 9, seed)
    quat = v[:, 5:9] + np.array([0.0, 0.0, 0.0, 1.0])
    v[:, 5:9] = quat / np.linalg.norm(quat, axis=1, keepdims=True)
    return v


# ---------------------------------------------------------------------------------------------------------- LIBERO


def libero_episode(length: int, seed: int) -> dict[str, np.ndarray]:
    """Vectors of one LIBERO demo: actions (T, 7) in [-1, 1] with a ±1 gripper, robot_states (T, 9)."""
    rng = np.random.default_rng(seed)
    actions = np.clip(rng.normal(0, 0.3, size=(length, 7)), -1, 1)
    actions[:, 6] = np.where(np.arange(length) < length // 2, -1.0, 1.0)
    return {"actions": actions, "robot_states": robot_states(length, seed + 1000)}


def write_libero_demos(
    path: str,
    episodes: Sequence[dict[str, np.ndarray]],
    layout: str = "original",
    jpeg: bool = False,
    size: int | None = None,
    language: str | None = None,
    skip: Sequence[str] = (),
    bddl_file_name: str | None = None,
) -> str:
    """One LIBERO task file with ``data/demo_<i>`` per episode.

    Args:
        episodes: dicts with ``actions`` (T, 7) and ``robot_states`` (T, 9) (see :func:`libero_episode`).
        layout: ``original`` (128², upside down, full data attrs) or ``cosmos`` (256², upright, no data attrs).
        jpeg: store ``*_rgb_jpeg`` instead of raw ``*_rgb``.
        language: the BDDL's ``(:language ...)`` line, stored in problem_info (original layout); default: the
            file name's words, capitalized (the real lines differ from the task name: "Pick the akita black bowl
            ..." for ``pick_up_the_black_bowl_...``).
        skip: dataset keys (relative to the demo) to leave out, to make broken files.
        bddl_file_name: the recorded BDDL path (original layout); default
            ``libero/libero/bddl_files/<suite folder>/<task>.bddl`` for the file's ``<task>_demo.hdf5`` name.
    """
    if layout not in ("original", "cosmos"):
        raise ValueError(f"layout must be original or cosmos, got {layout}")
    original = layout == "original"
    size = size or (128 if original else 256)
    task = os.path.basename(path).removesuffix(".hdf5").removesuffix("_demo")

    with _atomic_h5(path) as f:
        grp = f.create_group("data")
        total = 0
        if original:
            problem = "LIBERO_Tabletop_Manipulation"
            lang = language or task.replace("_", " ").capitalize()
            folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
            suite = folder if folder.startswith("libero_") else "libero_spatial"
            bddl = bddl_file_name or f"libero/libero/bddl_files/{suite}/{task}.bddl"
            grp.attrs["env_name"] = "Libero_Tabletop_Manipulation"
            grp.attrs["problem_info"] = json.dumps(
                {"problem_name": problem.lower(), "domain_name": "robosuite", "language_instruction": lang}
            )
            grp.attrs["macros_image_convention"] = "opengl"
            grp.attrs["bddl_file_name"] = bddl
            grp.attrs["bddl_file_content"] = (
                f"(define (problem {problem})\n  (:domain robosuite)\n  (:language {lang})\n)\n"
            )
            grp.attrs["env_args"] = json.dumps(
                {"type": 1, "env_name": "Libero_Tabletop_Manipulation", "problem_name": problem.lower(),
                 "bddl_file": bddl, "env_kwargs": {"bddl_file_name": bddl, "camera_heights": size,
                                                   "camera_widths": size, "control_freq": 20,
                                                   "camera_names": ["robot0_eye_in_hand", "agentview"]}}
            )
        for i, ep in enumerate(episodes):
            actions, states9 = np.asarray(ep["actions"], np.float64), np.asarray(ep["robot_states"], np.float64)
            t = len(actions)
            demo = grp.create_group(f"demo_{i}")
            obs = demo.create_group("obs")
            data = {
                "obs/gripper_states": states9[:, :2],
                "obs/joint_states": make_vectors(t, 7, i + 7),
                "obs/ee_states": np.concatenate([states9[:, 2:5], _axis_angle(states9[:, 5:9])], axis=1),
                "obs/ee_pos": states9[:, 2:5],
                "obs/ee_ori": _axis_angle(states9[:, 5:9]),
                "actions": actions,
                "states": make_vectors(t, 47, i + 11),
                "robot_states": states9,
                "rewards": (np.arange(t) == t - 1).astype(np.uint8),
                "dones": (np.arange(t) == t - 1).astype(np.uint8),
            }
            for key, value in data.items():
                if key not in skip:
                    demo.create_dataset(key, data=value)
            for cam, key in ((0, "eye_in_hand_rgb"), (1, "agentview_rgb")):
                if f"obs/{key}" not in skip and f"obs/{key}_jpeg" not in skip:
                    _images(obs, key, frames(t, cam, size, upside_down=original), jpeg)
            if original:
                demo.attrs["num_samples"] = t
                demo.attrs["model_file"] = "<mujoco model='libero'/>"
                demo.attrs["init_state"] = data["states"][0]
            total += t
        if original:
            grp.attrs["num_demos"] = len(episodes)
            grp.attrs["total"] = total
    return path


def write_cosmos_rollout(
    path: str,
    actions: np.ndarray,
    proprio: np.ndarray,
    success: bool,
    task_description: str,
    cameras: Sequence[str] = ("wrist", "primary"),
    size: int = 256,
    jpeg: bool = True,
) -> str:
    """One Cosmos Policy rollout episode file: ``<cam>_images[_jpeg]``, proprio, actions; attrs success,
    task_description. ``cameras`` are the top-level prefixes in slot order (LIBERO: wrist, primary; RoboCasa:
    wrist, primary, secondary); frame channel 2 encodes the position in that list."""
    with _atomic_h5(path) as f:
        t = len(actions)
        for cam_index, cam in enumerate(cameras):
            _images(f, f"{cam}_images", frames(t, cam_index, size), jpeg)
        f.create_dataset("proprio", data=np.asarray(proprio, np.float64))
        f.create_dataset("actions", data=np.asarray(actions, np.float64))
        f.attrs["success"] = bool(success)
        f.attrs["task_description"] = task_description
    return path


def libero_rollout_name(suite: str, task: int, ep: int, success: bool) -> str:
    """File name pattern of ``regenerate_libero_dataset.py`` (the suite is read back from it)."""
    return f"episode_data--suite={suite}--2026_01_22-12_00_00--task={task}--ep={ep}--success={success}--regen_demo.hdf5"


# ------------------------------------------------------------------------------------------------------- robomimic


def write_robomimic_demos(
    path: str,
    episodes: Sequence[dict[str, np.ndarray]],
    cameras: Sequence[str] = ("agentview", "robot0_eye_in_hand"),
    size: int = 32,
    stored: str = "upright",
    image_convention: str | None = None,
    masks: dict[str, Sequence[str]] | None = None,
    env_name: str = "Lift",
    skip: Sequence[str] = (),
) -> str:
    """One robomimic image dataset: robosuite's collection converted by robomimic (``convert_robosuite.py`` +
    ``dataset_states_to_obs.py``), with ``data/demo_<i>`` per episode.

    Args:
        episodes: dicts with ``actions`` (T, 7) and ``robot_states`` (T, 9) (:func:`libero_episode`), written as
            ``obs/robot0_gripper_qpos`` (2), ``obs/robot0_eef_pos`` (3), ``obs/robot0_eef_quat`` (4).
        cameras: ``obs/<camera>_image`` datasets; frame channel 2 encodes the position in this list.
        stored: ``upright`` (robomimic's conversion under robosuite's default convention) or ``upside_down``.
        image_convention: written as the ``data`` attribute ``macros_image_convention`` when given (robomimic
            itself writes none).
        masks: ``{"train": [demo names], "valid": [...]}`` written as ``mask/<name>`` byte arrays, as robomimic's
            ``split_train_val_from_hdf5``.
        skip: dataset keys (relative to the demo) to leave out.
    """
    if stored not in ("upright", "upside_down"):
        raise ValueError(f"stored must be upright or upside_down, got {stored}")
    with _atomic_h5(path) as f:
        grp = f.create_group("data")
        grp.attrs["env_args"] = json.dumps({
            "env_name": env_name, "env_version": "1.5.2", "type": 1,
            "env_kwargs": {"robots": ["Panda"], "controller_configs": {"type": "BASIC"}, "has_renderer": False,
                           "has_offscreen_renderer": True, "ignore_done": True, "use_object_obs": True,
                           "use_camera_obs": True, "camera_depths": False, "control_freq": 20,
                           "camera_names": list(cameras), "camera_heights": size, "camera_widths": size,
                           "reward_shaping": False},
        })
        if image_convention is not None:
            grp.attrs["macros_image_convention"] = image_convention
        total = 0
        for i, ep in enumerate(episodes):
            actions, states9 = np.asarray(ep["actions"], np.float64), np.asarray(ep["robot_states"], np.float64)
            t = len(actions)
            demo = grp.create_group(f"demo_{i}")
            obs = demo.create_group("obs")
            data = {
                "obs/robot0_gripper_qpos": states9[:, :2],
                "obs/robot0_eef_pos": states9[:, 2:5],
                "obs/robot0_eef_quat": states9[:, 5:9],
                "obs/robot0_gripper_qvel": make_vectors(t, 2, i + 3),
                "obs/robot0_joint_pos": make_vectors(t, 7, i + 4),
                "obs/robot0_joint_pos_cos": np.cos(make_vectors(t, 7, i + 4)),
                "obs/robot0_joint_pos_sin": np.sin(make_vectors(t, 7, i + 4)),
                "obs/robot0_joint_vel": make_vectors(t, 7, i + 5),
                "obs/object": make_vectors(t, 10, i + 6),
                "actions": actions,
                "states": make_vectors(t, 32, i + 9),
                "rewards": (np.arange(t) == t - 1).astype(np.float64),
                "dones": (np.arange(t) == t - 1).astype(np.int64),
            }
            for key, value in data.items():
                if key not in skip:
                    demo.create_dataset(key, data=value)
            for cam_index, cam in enumerate(cameras):
                if f"obs/{cam}_image" not in skip:
                    _images(obs, f"{cam}_image", frames(t, cam_index, size, upside_down=stored == "upside_down"), False)
            demo.attrs["num_samples"] = t
            demo.attrs["model_file"] = f"<mujoco model='{env_name.lower()}'/>"
            total += t
        grp.attrs["total"] = total
        for name, demos in (masks or {}).items():
            f.create_dataset(f"mask/{name}", data=np.array([str(d).encode() for d in demos], dtype="S"))
    return path


# -------------------------------------------------------------------------------------------------------- RoboCasa


def robocasa_episode(length: int, seed: int) -> dict[str, np.ndarray]:
    """Vectors of one RoboCasa demo: actions (T, 12) (arm 6, gripper, base 4, base mode -1), robot_states (T, 9)."""
    rng = np.random.default_rng(seed)
    actions = np.zeros((length, 12))
    actions[:, :6] = np.clip(rng.normal(0, 0.3, size=(length, 6)), -1, 1)
    actions[:, 6] = np.where(np.arange(length) < length // 2, -1.0, 1.0)
    actions[:, 7:11] = rng.normal(0, 0.01, size=(length, 4))
    actions[:, 11] = -1.0
    return {"actions": actions, "robot_states": robot_states(length, seed + 1000)}


ROBOCASA_CAMS = ("robot0_eye_in_hand", "robot0_agentview_left", "robot0_agentview_right")


def write_robocasa_demos(
    path: str,
    episodes: Sequence[dict[str, np.ndarray]],
    layout: str = "cosmos",
    jpeg: bool = False,
    size: int | None = None,
    language: str = "pick the apple from the counter and place it in the cabinet",
    skip: Sequence[str] = (),
) -> str:
    """One RoboCasa robomimic file with ``data/demo_<i>`` per episode.

    Args:
        layout: ``human`` (v0.1 ``demo_gentex_im128_randcams.hdf5``: 128², ``*_image`` upside down, low-dim
            robot0_* obs, no robot_states, ``ep_meta`` JSON with ``lang``) or ``cosmos`` (224², upright
            ``*_rgb[_jpeg]``, robot_states, attr task_description).
        jpeg: ``cosmos`` only: store ``*_rgb_jpeg``.
        skip: dataset keys (relative to the demo) to leave out.
    """
    if layout not in ("human", "cosmos"):
        raise ValueError(f"layout must be human or cosmos, got {layout}")
    human = layout == "human"
    size = size or (128 if human else 224)
    with _atomic_h5(path) as f:
        grp = f.create_group("data")
        if human:
            grp.attrs["env_args"] = json.dumps({
                "env_name": "PnPCounterToCab", "type": 1,
                "env_kwargs": {"robots": ["PandaOmron"], "camera_names": list(ROBOCASA_CAMS),
                               "camera_heights": size, "camera_widths": size, "layout_ids": 1, "style_ids": 1,
                               "obj_instance_split": "A", "generative_textures": None},
            })
        total = 0
        for i, ep in enumerate(episodes):
            actions, states9 = np.asarray(ep["actions"], np.float64), np.asarray(ep["robot_states"], np.float64)
            t = len(actions)
            demo = grp.create_group(f"demo_{i}")
            obs = demo.create_group("obs")
            if human:
                data = {
                    "obs/robot0_gripper_qpos": states9[:, :2],
                    "obs/robot0_eef_pos": states9[:, 2:5],
                    "obs/robot0_eef_quat": states9[:, 5:9],
                    "obs/robot0_gripper_qvel": make_vectors(t, 2, i + 3),
                    "obs/robot0_base_pos": make_vectors(t, 3, i + 4),
                    "obs/robot0_base_quat": make_vectors(t, 4, i + 5),
                    "obs/robot0_base_to_eef_pos": make_vectors(t, 3, i + 6),
                    "obs/robot0_base_to_eef_quat": make_vectors(t, 4, i + 7),
                    "obs/robot0_joint_pos": make_vectors(t, 7, i + 8),
                    "actions": actions,
                    "action_dict/rel_pos": actions[:, 0:3],
                    "action_dict/rel_rot_axis_angle": actions[:, 3:6],
                    "action_dict/gripper": actions[:, 6:7],
                    "action_dict/base_mode": actions[:, 11:12],
                    "states": make_vectors(t, 60, i + 9),
                }
                demo.attrs["model_file"] = "<mujoco model='robocasa'/>"
                demo.attrs["ep_meta"] = json.dumps({"lang": language, "layout_id": 1, "style_id": 1, "object_cfgs": []})
                demo.attrs["num_samples"] = t
            else:
                data = {
                    "obs/gripper_states": states9[:, :2],
                    "obs/joint_states": make_vectors(t, 7, i + 8),
                    "obs/ee_states": np.concatenate([states9[:, 2:5], _axis_angle(states9[:, 5:9])], axis=1),
                    "obs/ee_pos": states9[:, 2:5],
                    "obs/ee_ori": _axis_angle(states9[:, 5:9]),
                    "actions": actions,
                    "states": make_vectors(t, 60, i + 9),
                    "robot_states": states9,
                    "rewards": (np.arange(t) == t - 1).astype(np.uint8),
                    "dones": (np.arange(t) == t - 1).astype(np.uint8),
                }
                demo.attrs["task_description"] = language
            for key, value in data.items():
                if key not in skip:
                    demo.create_dataset(key, data=value)
            for cam_index, cam in enumerate(ROBOCASA_CAMS):
                key = f"{cam}_image" if human else f"{cam}_rgb"
                if f"obs/{key}" not in skip and f"obs/{key}_jpeg" not in skip:
                    _images(obs, key, frames(t, cam_index, size, upside_down=human), jpeg and not human)
            total += t
        if human:
            grp.attrs["total"] = total
            f.create_dataset("mask/train", data=np.array([f"demo_{i}".encode() for i in range(len(episodes))]))
    return path


def robocasa_rollout_name(task: str, ep: int, success: bool) -> str:
    return f"episode_data--task={task}--2026_01_22-12_00_00--ep={ep}--success={success}--regen_demo.hdf5"


# -------------------------------------------------------------------------------------------------------- LeRobot


def _write_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=4)


def _write_jsonl(path: str, rows: Sequence[dict[str, Any]]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def write_mp4(path: str, images: np.ndarray, fps: int, codec: str = "libx264", gop: int = 2) -> float:
    """Encode (T, H, W, 3) uint8 as yuv420p MP4; returns the duration in seconds (T / fps)."""
    import av

    os.makedirs(os.path.dirname(path), exist_ok=True)
    h, w = images.shape[1:3]
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"g": str(gop), "crf": "18"} if codec == "libx264" else {"g": str(gop), "crf": "30", "preset": "12"}
        for img in images:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return len(images) / fps


def _feature_stats(values: np.ndarray) -> dict[str, list[float]]:
    v = np.asarray(values, np.float64).reshape(len(values), -1)
    return {"min": v.min(0).tolist(), "max": v.max(0).tolist(), "mean": v.mean(0).tolist(),
            "std": v.std(0).tolist(), "count": [len(v)]}


def lerobot_episode(length: int, seed: int, state_dim: int = 6, action_dim: int = 6) -> dict[str, np.ndarray]:
    return {"observation.state": make_vectors(length, state_dim, seed).astype(np.float32),
            "action": make_vectors(length, action_dim, seed + 500).astype(np.float32)}


def write_lerobot_dataset(
    root: str,
    episodes: Sequence[dict[str, np.ndarray]],
    tasks: Sequence[str],
    cameras: Sequence[str] = ("observation.images.wrist", "observation.images.front"),
    version: str = "v3.0",
    fps: int = 10,
    size: int = 64,
    storage: str = "video",
    codec: str = "libx264",
    episode_success: Sequence[bool] | None = None,
) -> str:
    """A LeRobotDataset at ``root`` as LeRobot writes it.

    Args:
        episodes: per episode ``observation.state`` (T, P) and ``action`` (T, A) float32 (:func:`lerobot_episode`).
        tasks: one task string per episode.
        cameras: feature keys of the cameras; frame channel 2 encodes the position in this list.
        version: ``v3.0`` (chunked files, many episodes per file) or ``v2.1`` (one file per episode, jsonl meta).
        storage: ``video`` (mp4 per camera) or ``image`` (PNG bytes embedded in the parquet, dtype "image").
        codec: ``libx264`` (H.264) or ``libsvtav1`` (AV1, LeRobot's default encoder).
        episode_success: optional per-episode success flags, stored as the ``next.success`` frame feature
            (True on the last frame of a successful episode), as LeRobot's sim datasets do.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if version not in ("v3.0", "v2.1"):
        raise ValueError(f"version must be v3.0 or v2.1, got {version}")
    if storage not in ("video", "image"):
        raise ValueError(f"storage must be video or image, got {storage}")
    state_dim = episodes[0]["observation.state"].shape[1]
    action_dim = episodes[0]["action"].shape[1]
    task_list = list(dict.fromkeys(tasks))
    lengths = [len(e["action"]) for e in episodes]

    features: dict[str, Any] = {}
    for cam in cameras:
        ft: dict[str, Any] = {"dtype": storage, "shape": [size, size, 3], "names": ["height", "width", "channels"]}
        if storage == "video":
            ft["info"] = {"video.height": size, "video.width": size, "video.codec": "h264" if codec == "libx264" else "av1",
                          "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps,
                          "video.channels": 3, "has_audio": False}
        features[cam] = ft
    features["observation.state"] = {"dtype": "float32", "shape": [state_dim],
                                     "names": [f"joint_{i}" for i in range(state_dim)]}
    features["action"] = {"dtype": "float32", "shape": [action_dim], "names": [f"motor_{i}" for i in range(action_dim)]}
    if episode_success is not None:
        features["next.success"] = {"dtype": "bool", "shape": [1], "names": None}
    for key, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                       ("index", "int64"), ("task_index", "int64")):
        features[key] = {"dtype": dtype, "shape": [1], "names": None}

    def frame_table(ep: int, start: int) -> pa.Table:
        t = lengths[ep]
        cols: dict[str, Any] = {}
        if storage == "image":
            from PIL import Image
            import io

            for ci, cam in enumerate(cameras):
                cells = []
                for k in range(t):
                    buf = io.BytesIO()
                    Image.fromarray(make_frame(k, ci, size)).save(buf, format="PNG")
                    cells.append({"bytes": buf.getvalue(), "path": f"frame_{k:06d}.png"})
                cols[cam] = pa.array(cells, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        for key, dim in (("observation.state", state_dim), ("action", action_dim)):
            flat = pa.array(np.asarray(episodes[ep][key], np.float32).reshape(-1))
            cols[key] = pa.FixedSizeListArray.from_arrays(flat, dim)
        if episode_success is not None:
            cols["next.success"] = pa.array([bool(episode_success[ep]) and k == t - 1 for k in range(t)])
        cols["timestamp"] = pa.array(np.arange(t, dtype=np.float32) / fps)
        cols["frame_index"] = pa.array(np.arange(t, dtype=np.int64))
        cols["episode_index"] = pa.array(np.full(t, ep, np.int64))
        cols["index"] = pa.array(np.arange(start, start + t, dtype=np.int64))
        cols["task_index"] = pa.array(np.full(t, task_list.index(tasks[ep]), np.int64))
        return pa.table(cols)

    stats = {key: _feature_stats(np.concatenate([e[key] for e in episodes]))
             for key in ("observation.state", "action")}
    info: dict[str, Any] = {
        "codebase_version": version, "robot_type": "so100", "total_episodes": len(episodes),
        "total_frames": int(sum(lengths)), "total_tasks": len(task_list), "chunks_size": 1000, "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"}, "features": features,
    }
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
    if version == "v3.0":
        info.update({"data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
                     "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
                     "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
                     if storage == "video" else None})
        data_path = os.path.join(root, "data/chunk-000/file-000.parquet")
        os.makedirs(os.path.dirname(data_path), exist_ok=True)
        writer = None
        for ep in range(len(episodes)):  # one row group per episode, as LeRobot's writer
            table = frame_table(ep, int(starts[ep]))
            writer = writer or pq.ParquetWriter(data_path, table.schema, compression="snappy")
            writer.write_table(table)
        writer.close()
        rows: dict[str, list[Any]] = {"episode_index": [], "tasks": [], "length": [], "data/chunk_index": [],
                                      "data/file_index": [], "dataset_from_index": [], "dataset_to_index": []}
        if storage == "video":
            for ci, cam in enumerate(cameras):
                clip = np.concatenate([frames(lengths[ep], ci, size) for ep in range(len(episodes))])
                write_mp4(os.path.join(root, f"videos/{cam}/chunk-000/file-000.mp4"), clip, fps, codec)
                for col in ("chunk_index", "file_index", "from_timestamp", "to_timestamp"):
                    rows[f"videos/{cam}/{col}"] = []
        for ep, t in enumerate(lengths):
            rows["episode_index"].append(ep)
            rows["tasks"].append([tasks[ep]])
            rows["length"].append(t)
            rows["data/chunk_index"].append(0)
            rows["data/file_index"].append(0)
            rows["dataset_from_index"].append(int(starts[ep]))
            rows["dataset_to_index"].append(int(starts[ep + 1]))
            if storage == "video":
                for cam in cameras:
                    rows[f"videos/{cam}/chunk_index"].append(0)
                    rows[f"videos/{cam}/file_index"].append(0)
                    rows[f"videos/{cam}/from_timestamp"].append(float(starts[ep]) / fps)
                    rows[f"videos/{cam}/to_timestamp"].append(float(starts[ep + 1]) / fps)
        rows["meta/episodes/chunk_index"] = [0] * len(episodes)
        rows["meta/episodes/file_index"] = [0] * len(episodes)
        for key in ("observation.state", "action"):
            for stat in ("min", "max", "mean", "std"):
                rows[f"stats/{key}/{stat}"] = [
                    _feature_stats(episodes[ep][key])[stat] for ep in range(len(episodes))
                ]
        if episode_success is not None:
            rows["success"] = [bool(s) for s in episode_success]
        ep_path = os.path.join(root, "meta/episodes/chunk-000/file-000.parquet")
        os.makedirs(os.path.dirname(ep_path), exist_ok=True)
        pq.write_table(pa.table(rows), ep_path)
        # tasks.parquet as pandas writes a DataFrame indexed by "task" with a "task_index" column
        pandas_meta = {"index_columns": ["task"], "column_indexes": [], "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ], "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
        tasks_table = pa.table({"task_index": pa.array(range(len(task_list)), pa.int64()), "task": task_list})
        tasks_table = tasks_table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
        pq.write_table(tasks_table, os.path.join(root, "meta/tasks.parquet"))
        _write_json(os.path.join(root, "meta/stats.json"), stats)
    else:
        info.update({"total_videos": len(episodes) * len(cameras) if storage == "video" else 0, "total_chunks": 1,
                     "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
                     "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
                     if storage == "video" else None})
        for ep, t in enumerate(lengths):
            path = os.path.join(root, f"data/chunk-000/episode_{ep:06d}.parquet")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            pq.write_table(frame_table(ep, int(starts[ep])), path)
            if storage == "video":
                for ci, cam in enumerate(cameras):
                    write_mp4(os.path.join(root, f"videos/chunk-000/{cam}/episode_{ep:06d}.mp4"),
                              frames(t, ci, size), fps, codec)
        _write_jsonl(os.path.join(root, "meta/episodes.jsonl"),
                     [{"episode_index": ep, "tasks": [tasks[ep]], "length": t} for ep, t in enumerate(lengths)])
        _write_jsonl(os.path.join(root, "meta/tasks.jsonl"),
                     [{"task_index": i, "task": task} for i, task in enumerate(task_list)])
        _write_jsonl(os.path.join(root, "meta/episodes_stats.jsonl"),
                     [{"episode_index": ep, "stats": {k: _feature_stats(episodes[ep][k])
                                                      for k in ("observation.state", "action")}}
                      for ep in range(len(episodes))])
    _write_json(os.path.join(root, "meta/info.json"), info)
    return root
