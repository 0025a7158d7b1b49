"""RoboCasa DataModule: robomimic-format HDF5 demonstrations (human v0.1 and Cosmos regenerated) and rollouts.

Demonstrations (many ``data/demo_<n>`` per file; docs/method.md#demonstration-file-schemas)::

    demo_<n>/actions (T, 12)   PandaOmron: arm Δpos 3, Δrot 3, gripper 1, base/torso 4, base mode 1; the first
                               ``arm_action_dims`` (7) are the model's action
    demo_<n>/robot_states (T, 9)           gripper_qpos (2) + eef_pos (3) + eef_quat (4)   -> proprio; when absent,
        built from obs/robot0_gripper_qpos + obs/robot0_eef_pos + obs/robot0_eef_quat (human v0.1 files)
    cameras (slot order wrist, primary = left, secondary = right -> 11 latent frames):
        obs/robot0_eye_in_hand_rgb[_jpeg], obs/robot0_agentview_left_rgb[_jpeg], obs/robot0_agentview_right_rgb[_jpeg]
            Cosmos regenerated, 224², upright, raw or JPEG
        obs/robot0_eye_in_hand_image, obs/robot0_agentview_left_image, obs/robot0_agentview_right_image
            human v0.1 (``demo_gentex_im128_randcams.hdf5``), 128², upside down (OpenGL)
    instruction: demo attribute ``task_description``, else ``ep_meta`` JSON ``lang``

Rollouts (``rollout_dir``, e.g. ``RoboCasa-Cosmos-Policy/all_episodes``; one episode per file, upright)::

    wrist_images[_jpeg], primary_images[_jpeg] (left), secondary_images[_jpeg] (right), proprio (T, 9),
    actions (T, >= 7); attrs success, task_description
"""

from __future__ import annotations

from collections.abc import Sequence

from typing import Any

import numpy as np

from cosmos_lit.datamodules.base import EpisodeDataModule, EpisodeRef
from cosmos_lit.datamodules.hdf5_episodes import (
    CameraSource,
    Hdf5EpisodeReader,
    find_robomimic_episodes,
    flag,
    json_attr,
    text,
)
from cosmos_lit.rollout_files import rollout_image_key
from cosmos_lit.registry import ConfigError, register

CAMERAS = ("robot0_eye_in_hand", "robot0_agentview_left", "robot0_agentview_right")
# wrist_images, primary_images (left), secondary_images (right)
ROLLOUT_IMAGE_KEYS = {cam: rollout_image_key(cam, jpeg=False) for cam in CAMERAS}
PROPRIO_PARTS = ("obs/robot0_gripper_qpos", "obs/robot0_eef_pos", "obs/robot0_eef_quat")
ARM_ACTION_DIMS, PROPRIO_DIM = 7, 9


class RoboCasaEpisodeReader(Hdf5EpisodeReader):
    """One RoboCasa demo (``ref.key = data/demo_<n>``) or one rollout file (``ref.rollout``)."""

    def length(self) -> int:
        return len(self._all_actions())

    def _all_actions(self) -> np.ndarray:
        if "_actions_cache" not in self.__dict__:
            self._actions_cache = self.vector("actions", "a (T, 12) PandaOmron action array")
        return self._actions_cache

    def actions(self) -> np.ndarray:
        a = self._all_actions()
        n = int(self.options.get("arm_action_dims", ARM_ACTION_DIMS))
        if a.shape[1] < n:
            raise self.fail(
                f"key 'actions' has {a.shape[1]} dims; expected at least {n} (the 12-D PandaOmron action, of which "
                f"the first {n} are used)"
            )
        return a[:, :n]

    def proprio(self) -> np.ndarray:
        group = self.h5
        if self.ref.rollout:
            return self.vector("proprio", "a (T, 9) array: gripper_qpos (2) + eef_pos (3) + eef_quat (4)")
        if "robot_states" in group:
            return self.vector("robot_states", "a (T, 9) array")
        missing = [k for k in PROPRIO_PARTS if k not in group]
        if missing:
            raise self.fail(
                f"missing key 'robot_states' and '{missing[0]}' (expected robot_states (T, 9), or "
                f"{' + '.join(PROPRIO_PARTS)} to build it)"
            )
        return np.concatenate([self.vector(k, "a (T, D) array") for k in PROPRIO_PARTS], axis=1)

    def instruction(self) -> str | None:
        attrs = self.handles.h5(self.ref.path).attrs if self.ref.rollout else self.h5.attrs
        if "task_description" in attrs:
            value = text(attrs["task_description"]).strip()
            if value:
                return value
        meta = json_attr(attrs, "ep_meta", self.ref.describe())
        if meta and str(meta.get("lang", "")).strip():
            return str(meta["lang"]).strip()
        return None

    def success(self) -> float | None:
        attrs = self.handles.h5(self.ref.path).attrs
        return flag(attrs["success"]) if "success" in attrs else None

    def camera_sources(self, camera: str) -> list[CameraSource]:
        if camera not in CAMERAS:
            raise ConfigError(f"data.cameras: unknown RoboCasa camera '{camera}'; expected some of {list(CAMERAS)}")
        if self.ref.rollout:
            key = ROLLOUT_IMAGE_KEYS[camera]
            return [CameraSource(key + "_jpeg"), CameraSource(key)]
        return [
            CameraSource(f"obs/{camera}_rgb_jpeg"),
            CameraSource(f"obs/{camera}_rgb"),
            CameraSource(f"obs/{camera}_image", upside_down=True),
        ]


@register("datamodule", "robocasa")
class RoboCasaDataModule(EpisodeDataModule):
    """RoboCasa demonstrations (human v0.1 or Cosmos-regenerated robomimic HDF5) plus optional rollout files.

    Defaults follow the official RoboCasa run: cameras [robot0_eye_in_hand, robot0_agentview_left,
    robot0_agentview_right] (11 latent frames), K = 32, γ = 0.99, 20 Hz, 224², the first 7 of 12 action dims,
    9-D proprio. See the module docstring for the layouts.

    Args:
        arm_action_dims: leading action dims used by the model (7: arm + gripper; the rest move the base).
        Other keys: see ``EpisodeDataModule``.
    """

    reader_cls = RoboCasaEpisodeReader
    benchmark_name = "robocasa"

    def __init__(
        self,
        data_dir: str | None = None,
        arm_action_dims: int = ARM_ACTION_DIMS,
        cameras: Sequence[str] = CAMERAS,
        chunk_size: int = 32,
        proprio_dim: int | None = PROPRIO_DIM,
        action_dim: int | None = None,
        **kwargs: Any,
    ):
        if int(arm_action_dims) <= 0:
            raise ConfigError(f"data.arm_action_dims: must be positive, got {arm_action_dims}")
        super().__init__(
            data_dir=data_dir, cameras=cameras, chunk_size=chunk_size, proprio_dim=proprio_dim,
            action_dim=int(arm_action_dims) if action_dim is None else action_dim, **kwargs,
        )
        unknown = [c for c in self.cameras if c not in CAMERAS]
        if unknown:
            raise ConfigError(f"data.cameras: unknown RoboCasa camera(s) {unknown}; expected some of {list(CAMERAS)}")
        self.arm_action_dims = int(arm_action_dims)

    def reader_options(self) -> dict:
        return {"arm_action_dims": self.arm_action_dims}

    def find_episodes(self) -> tuple[list[EpisodeRef], list[EpisodeRef]]:
        expected = (
            "RoboCasa robomimic HDF5 files (data/demo_<n>/{actions (T,12), robot_states or obs/robot0_eef_*, "
            "obs/robot0_{eye_in_hand,agentview_left,agentview_right}_{rgb[_jpeg]|image}}), e.g. the success_only "
            "folder of HF nvidia/RoboCasa-Cosmos-Policy (set $COSMOS_DATA to the folder holding RoboCasa-Cosmos-Policy)"
        )
        rollout_expected = (
            "rollout episode files ({wrist,primary,secondary}_images[_jpeg], proprio, actions; attrs success, "
            "task_description), e.g. RoboCasa-Cosmos-Policy/all_episodes; data.rollout_dir=null trains without them"
        )
        return find_robomimic_episodes("robocasa", self.data_dir, self.rollout_dir, expected, rollout_expected)
