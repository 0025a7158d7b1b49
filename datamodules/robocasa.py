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
            human v0.1 (``demo_gentex_im128_randcams.hdf5``), 128², taken as upside down (see Orientation)
    instruction: demo attribute ``task_description``, else ``ep_meta`` JSON ``lang``

Orientation: the Cosmos ``*_rgb[_jpeg]`` frames are upright. The human ``*_image`` frames follow the robomimic
rule (``datamodules/robomimic.py``): ``data.image_orientation`` when given, else the file's
``macros_image_convention``, else upside down, the documented RoboCasa fact (reference/simulators.md §D). Not
checked on a real file: RoboCasa's ``dataset_states_to_obs.py`` stores frames through ``EnvRobocasa.get_observation``,
which flips robosuite's render once (``[::-1]``), so files converted with robosuite's default convention may well
be upright; check one (``h5py``: does ``obs/robot0_agentview_left_image[0]`` show the floor at the bottom?) and set
``data.image_orientation`` accordingly.

Split: the files' ``mask/train`` / ``mask/valid`` when present (``data.use_file_masks``), as the robomimic
DataModule; else the seeded ``val_fraction`` split.

Rollouts (``rollout_dir``, e.g. ``RoboCasa-Cosmos-Policy/all_episodes``; one episode per file, upright)::

    wrist_images[_jpeg], primary_images[_jpeg] (left), secondary_images[_jpeg] (right), proprio (T, 9),
    actions (T, >= 7); attrs success, task_description
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cosmos_lit.datamodules.hdf5_episodes import CameraSource
from cosmos_lit.datamodules.robomimic import PROPRIO_KEYS, RobomimicDataModule, RobomimicEpisodeReader
from cosmos_lit.registry import ConfigError, register
from cosmos_lit.rollout_files import rollout_image_key

CAMERAS = ("robot0_eye_in_hand", "robot0_agentview_left", "robot0_agentview_right")
# wrist_images, primary_images (left), secondary_images (right)
ROLLOUT_IMAGE_KEYS = {cam: rollout_image_key(cam, jpeg=False) for cam in CAMERAS}
ARM_ACTION_DIMS, PROPRIO_DIM = 7, 9


class RoboCasaEpisodeReader(RobomimicEpisodeReader):
    """One RoboCasa demo (``ref.key = data/demo_<n>``) or one rollout file (``ref.rollout``)."""

    def unrecorded_upside_down(self) -> bool:
        return True  # the human *_image frames, as documented (see the module docstring)

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
        if self.ref.rollout:
            return self.vector("proprio", "a (T, 9) array: gripper_qpos (2) + eef_pos (3) + eef_quat (4)")
        if "robot_states" in self.h5:
            return self.vector("robot_states", "a (T, 9) array")
        keys = list(self.options.get("proprio_keys") or PROPRIO_KEYS)
        missing = [k for k in keys if self.low_dim_key(k) is None]
        if missing:
            parts = [k if k.startswith("obs/") else f"obs/{k}" for k in keys]
            first = missing[0] if missing[0].startswith("obs/") else f"obs/{missing[0]}"
            raise self.fail(
                f"missing key 'robot_states' and '{first}' (expected robot_states (T, 9), or "
                f"{' + '.join(parts)} to build it)"
            )
        return super().proprio()

    def camera_sources(self, camera: str) -> list[CameraSource]:
        if camera not in CAMERAS:
            raise ConfigError(f"data.cameras: unknown RoboCasa camera '{camera}'; expected some of {list(CAMERAS)}")
        if self.ref.rollout:
            return self.rollout_camera_sources(camera)
        return [
            CameraSource(f"obs/{camera}_rgb_jpeg"),
            CameraSource(f"obs/{camera}_rgb"),
            CameraSource(f"obs/{camera}_image", None),  # as the file records, else RoboCasa's upside down
        ]

    def camera_inventory(self) -> str:
        return ""


@register("datamodule", "robocasa")
class RoboCasaDataModule(RobomimicDataModule):
    """RoboCasa demonstrations (human v0.1 or Cosmos-regenerated robomimic HDF5) plus optional rollout files.

    Defaults follow the official RoboCasa run: cameras [robot0_eye_in_hand, robot0_agentview_left,
    robot0_agentview_right] (11 latent frames), K = 32, γ = 0.99, 20 Hz, 224², the first 7 of 12 action dims,
    9-D proprio. See the module docstring for the layouts.

    Args:
        arm_action_dims: leading action dims used by the model (7: arm + gripper; the rest move the base).
        Other keys: see ``RobomimicDataModule`` (``image_orientation`` applies to the human ``*_image`` frames,
        ``proprio_keys`` to files without ``robot_states``) and ``EpisodeDataModule``.
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
        return {**super().reader_options(), "arm_action_dims": self.arm_action_dims}

    def expected_files(self) -> tuple[str, str]:
        return (
            "RoboCasa robomimic HDF5 files (data/demo_<n>/{actions (T,12), robot_states or obs/robot0_eef_*, "
            "obs/robot0_{eye_in_hand,agentview_left,agentview_right}_{rgb[_jpeg]|image}}), e.g. the success_only "
            "folder of HF nvidia/RoboCasa-Cosmos-Policy (set $COSMOS_DATA to the folder holding "
            "RoboCasa-Cosmos-Policy)",
            "rollout episode files ({wrist,primary,secondary}_images[_jpeg], proprio, actions; attrs success, "
            "task_description), e.g. RoboCasa-Cosmos-Policy/all_episodes; data.rollout_dir=null trains without them",
        )


__all__ = ["CAMERAS", "RoboCasaDataModule", "RoboCasaEpisodeReader"]
