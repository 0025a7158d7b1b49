"""ALOHA DataModule: ACT / ALOHA HDF5 episodes, simulated and real (docs/method.md#demonstration-file-schemas).

One episode per HDF5 file (``episode_*.hdf5`` or any ``*.hdf5`` under ``data_dir``, recursively)::

    /observations/qpos (T, 14)     proprio: [left 6 joints, left gripper, right 6 joints, right gripper]
    /action            (T, 14)     absolute joint targets, same layout
    cameras, per camera one of
      /observations/images/<cam>       (T, H, W, 3) uint8 raw frames (ACT sim: 'top'; real: cam_high, cam_left_wrist,
                                       cam_right_wrist, cam_low), or
                                       (T, padded) uint8 JPEG bytes padded with zeros, with /compress_len
                                       (n_cams, T) and file attr compress=True (ALOHA 2 / mobile ALOHA recorders), or
                                       (T,) variable-length uint8 JPEG bytes
      /observations/video_paths/<cam>  MP4 path relative to the HDF5's folder (Cosmos ALOHA; decord or PyAV)
      /<primary|wrist_left|wrist_right>_images_jpeg  (T,) vlen JPEG (Cosmos Policy rollout files)
    file attrs (optional): instruction / task_description / language_instruction; success, success_score (rollouts)

Cosmos Policy rollout files (``python -m cosmos_lit collect``, ``cosmos_lit.rollout_files``) store the vectors at
the top level instead, ``/proprio`` (T, 14) and ``/actions`` (T, 14), with ``primary_images_jpeg`` for cam_high or top.

Camera order is the latent-slot order: the Cosmos ALOHA layout is [cam_left_wrist, cam_right_wrist, cam_high]
(docs/method.md#latent-layout); the ACT simulation has only 'top'. ``cameras`` picks them; every file must have them.
``cosmos_lit.datamodules.act_format.write_aloha_episode`` writes this layout.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from cosmos_lit.datamodules.act_format import compress_len_order
from cosmos_lit.datamodules.act_format import write_aloha_episode  # noqa: F401 - its former home; scripts import it here
from cosmos_lit.datamodules.base import EpisodeDataModule, EpisodeReader, EpisodeRef, missing_data_dir
from cosmos_lit.rollout_files import rollout_image_key
from cosmos_lit.images import decode_image
from cosmos_lit.registry import register

REAL_CAMERAS = ("cam_left_wrist", "cam_right_wrist", "cam_high")
SIM_CAMERAS = ("top",)
# Cosmos Policy rollout files store JPEG frames at the top level under these names (primary_images_jpeg, ...).
ROLLOUT_JPEG_KEYS = {cam: rollout_image_key(cam) for cam in ("cam_high", "top", "cam_left_wrist", "cam_right_wrist")}
# (ACT layout key, Cosmos rollout key) of the vectors
ACTION_KEYS = ("action", "actions")
PROPRIO_KEYS = ("observations/qpos", "proprio")
INSTRUCTION_ATTRS = ("instruction", "task_description", "language_instruction")
JPEG_EOI = b"\xff\xd9"


def _text(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else ""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    return str(value)


def find_hdf5(folder: str) -> list[str]:
    """``episode_*.hdf5`` files under ``folder`` (recursively), or every ``*.hdf5`` when there are none; sorted."""
    found: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, f) for f in files if f.endswith((".hdf5", ".h5"))]
    episodes = [p for p in found if os.path.basename(p).startswith("episode_")]
    return sorted(episodes or found)


class AlohaEpisodeReader(EpisodeReader):
    """One ACT/ALOHA episode file; the storage of each camera is detected from the keys present."""

    def _attr(self, names: Sequence[str]) -> Any:
        attrs = self.handles.h5(self.ref.path).attrs
        for name in names:
            if name in attrs:
                return attrs[name]
        return None

    def _vector(self, keys: Sequence[str], expected: str) -> Any:
        """The first of ``keys`` present (ACT layout, then rollout file); the error names the ACT key."""
        group = self.h5
        for key in keys[1:]:
            if keys[0] not in group and key in group:
                return group[key]
        return self.require(keys[0], expected)

    def length(self) -> int:
        return int(self._vector(ACTION_KEYS, "a (T, 14) array of joint targets").shape[0])

    def proprio(self) -> np.ndarray:
        return np.asarray(self._vector(PROPRIO_KEYS, "a (T, 14) array of joint positions")[()])

    def actions(self) -> np.ndarray:
        return np.asarray(self._vector(ACTION_KEYS, "a (T, 14) array of joint targets")[()])

    def instruction(self) -> str | None:
        value = self._attr(INSTRUCTION_ATTRS)
        return _text(value).strip() or None if value is not None else None

    def success(self) -> float | None:
        score = self._attr(("success_score",))
        if score is not None:
            return float(np.asarray(score).reshape(-1)[0])
        flag = self._attr(("success",))
        return None if flag is None else float(bool(np.asarray(flag).reshape(-1)[0]))

    # --- cameras ---
    def storage(self, camera: str) -> tuple[str, str]:
        """(kind, key) of a camera: kind in raw | jpeg_padded | jpeg_vlen | video."""
        cache = self.__dict__.setdefault("_storage", {})
        if camera in cache:
            return cache[camera]
        f = self.handles.h5(self.ref.path)
        key = f"observations/images/{camera}"
        if key in f:
            ds = f[key]
            if ds.ndim == 4:
                kind = "raw"
            elif ds.ndim == 2 and ds.dtype == np.uint8:
                kind = "jpeg_padded"
            elif ds.ndim == 1 and ds.dtype.kind == "O":
                kind = "jpeg_vlen"
            else:
                raise self.fail(
                    f"key '{key}' has shape {ds.shape} dtype {ds.dtype}; expected (T, H, W, 3) uint8 frames, "
                    f"(T, padded) uint8 JPEG bytes or (T,) variable-length JPEG bytes"
                )
        elif f"observations/video_paths/{camera}" in f:
            kind, key = "video", f"observations/video_paths/{camera}"
        elif camera in ROLLOUT_JPEG_KEYS and ROLLOUT_JPEG_KEYS[camera] in f:
            kind, key = "jpeg_vlen", ROLLOUT_JPEG_KEYS[camera]
        else:
            have = sorted(f["observations/images"].keys()) if "observations/images" in f else []
            have += [f"video:{k}" for k in sorted(f["observations/video_paths"].keys())] if "observations/video_paths" in f else []
            raise self.fail(
                f"missing key 'observations/images/{camera}' (or 'observations/video_paths/{camera}'); "
                f"cameras in this file: {', '.join(have) or 'none'}; set data.cameras to match"
            )
        cache[camera] = (kind, key)
        return kind, key

    def video_path(self, camera: str) -> str:
        """Absolute path of a camera's MP4 (stored relative to the HDF5's folder); read once per reader."""
        cache = self.__dict__.setdefault("_video_paths", {})
        if camera not in cache:
            _, key = self.storage(camera)
            rel = _text(self.handles.h5(self.ref.path)[key][()])
            cache[camera] = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(self.ref.path)), rel))
        return cache[camera]

    def _compress_len_row(self, camera: str) -> int | None:
        """Row of /compress_len for ``camera``: attr ``camera_names`` if present, else the recorder order."""
        f = self.handles.h5(self.ref.path)
        if "compress_len" not in f:
            return None
        names = self._attr(("camera_names",))
        if names is not None:
            order = [_text(n) for n in np.asarray(names).reshape(-1)]
        else:
            order = compress_len_order(f["observations/images"].keys())
        return order.index(camera) if camera in order else None

    def _compress_lens(self, camera: str) -> np.ndarray | None:
        """Stored JPEG byte counts (T,) of ``camera`` (read once per reader), or None without /compress_len."""
        cache = self.__dict__.setdefault("_lens", {})
        if camera not in cache:
            row = self._compress_len_row(camera)
            lens = self.handles.h5(self.ref.path)["compress_len"] if row is not None else None
            cache[camera] = None if lens is None or row >= lens.shape[0] else np.asarray(lens[row])
        return cache[camera]

    def check(self, cameras: Sequence[str]) -> None:
        t = self.length()
        f = self.handles.h5(self.ref.path)
        for cam in cameras:
            kind, key = self.storage(cam)
            if kind == "video":
                path = self.video_path(cam)
                if not os.path.isfile(path):
                    raise self.fail(f"key '{key}' points to {path}, which does not exist (expected an MP4 file)")
                try:
                    n = len(self.handles.video(path))
                except ValueError as e:
                    raise self.fail(str(e)) from None
                if n < t:
                    raise self.fail(f"video {path} of camera '{cam}' has {n} frames; expected {t} (one per step)")
                continue
            ds = f[key]
            if ds.shape[0] != t:
                raise self.fail(f"key '{key}' has {ds.shape[0]} frames; expected {t} (the length of 'action')")
            if kind == "raw" and (ds.shape[3] != 3 or ds.dtype != np.uint8):
                raise self.fail(f"key '{key}' has shape {ds.shape} dtype {ds.dtype}; expected (T, H, W, 3) uint8")
            if kind in ("jpeg_padded", "jpeg_vlen"):  # decode the first frame: catches non-JPEG payloads early
                try:
                    decode_image(self.frames(cam, [0])[0])
                except ValueError as e:
                    raise self.fail(f"key '{key}' frame 0: {e}") from None
            if kind == "jpeg_padded":
                row = self._compress_len_row(cam)
                if row is not None:
                    lens = f["compress_len"]
                    if lens.ndim != 2 or lens.shape[1] != t or row >= lens.shape[0]:
                        raise self.fail(
                            f"key 'compress_len' has shape {lens.shape}; expected (n_cams, {t}) with a row for '{cam}'"
                        )

    def frames(self, camera: str, indices: Sequence[int]) -> list[Any]:
        kind, key = self.storage(camera)
        if kind == "video":
            return self.handles.video(self.video_path(camera)).frames(indices)
        ds = self.handles.h5_dataset(self.ref.path, key)
        out = [ds[int(i)] for i in indices]
        if kind == "jpeg_padded":
            lens = self._compress_lens(camera)
            if lens is not None:
                trimmed = []
                for i, buf in zip(indices, out):
                    n = int(lens[int(i)])
                    # trim to the stored length when it marks the JPEG end; otherwise the decoder stops at EOI itself
                    trimmed.append(buf[:n] if 2 <= n <= len(buf) and bytes(buf[n - 2 : n]) == JPEG_EOI else buf)
                out = trimmed
        return out


@register("datamodule", "aloha")
class AlohaDataModule(EpisodeDataModule):
    """ALOHA (ACT simulation and real robot) HDF5 episodes; see the module docstring for the accepted layouts.

    Defaults follow the official ALOHA run: K = 50, γ = 0.998, 50 Hz, 224², rollouts = the demos
    (``treat_demos_as_success_rollouts=True``). ``cameras`` defaults to the simulation's ``["top"]``; for the real
    robot use ``[cam_left_wrist, cam_right_wrist, cam_high]`` (the Cosmos slot order).
    """

    reader_cls = AlohaEpisodeReader
    benchmark_name = "aloha"

    def __init__(
        self,
        data_dir: str | None = None,
        cameras: Sequence[str] = SIM_CAMERAS,
        chunk_size: int = 50,
        gamma: float = 0.998,
        fps: float = 50.0,
        treat_demos_as_success_rollouts: bool = True,
        proprio_dim: int | None = 14,
        action_dim: int | None = 14,
        **kwargs: Any,
    ):
        """ALOHA defaults (chunk 50, γ 0.998, 14-D qpos and actions); every other key as in ``EpisodeDataModule``."""
        super().__init__(
            data_dir=data_dir, cameras=cameras, chunk_size=chunk_size, gamma=gamma, fps=fps,
            treat_demos_as_success_rollouts=treat_demos_as_success_rollouts, proprio_dim=proprio_dim,
            action_dim=action_dim, **kwargs,
        )

    def find_episodes(self) -> tuple[list[EpisodeRef], list[EpisodeRef]]:
        expected = (
            "a folder of ACT/ALOHA episode files (episode_*.hdf5 with /observations/qpos, /action and "
            "/observations/images/<cam> or /observations/video_paths/<cam>)"
        )
        if not self.data_dir or not os.path.isdir(self.data_dir):
            raise missing_data_dir("aloha", self.data_dir, expected)
        rollout_root = os.path.abspath(self.rollout_dir) + os.sep if self.rollout_dir else None
        demos = [
            EpisodeRef(p) for p in find_hdf5(self.data_dir)
            if rollout_root is None or not os.path.abspath(p).startswith(rollout_root)
        ]
        if not demos:
            raise FileNotFoundError(f"aloha: no *.hdf5 episode files under {self.data_dir}; expected {expected}")
        rollouts: list[EpisodeRef] = []
        if self.rollout_dir is not None:
            if not os.path.isdir(self.rollout_dir):
                raise missing_data_dir("aloha rollouts", self.rollout_dir, "a folder of rollout episode files with a "
                                       "'success' attribute", override="data.rollout_dir")
            rollouts = [EpisodeRef(p, rollout=True) for p in find_hdf5(self.rollout_dir)]
            if not rollouts:
                raise FileNotFoundError(f"aloha: no *.hdf5 rollout files under {self.rollout_dir} (data.rollout_dir)")
        return demos, rollouts
