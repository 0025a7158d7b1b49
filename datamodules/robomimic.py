"""robomimic DataModule: robosuite demonstrations in robomimic's HDF5 format, plus optional rollout files.

The format (robosuite's collection, converted by robomimic's ``convert_robosuite.py`` and given observations by
``dataset_states_to_obs.py``; RoboCasa and MimicGen write the same layout)::

    data                  attrs: env_args (JSON: env_name, type, env_kwargs{camera_names, camera_heights, ...}), total
      demo_<n>            attrs: num_samples, model_file (, ep_meta JSON with ``lang`` in RoboCasa files)
        actions           (T, A)
        obs/<camera>_image   (T, H, W, 3) uint8, one per camera of env_kwargs.camera_names (agentview,
                             robot0_eye_in_hand, sideview, ...)
        obs/robot0_eef_pos (T, 3), obs/robot0_eef_quat (T, 4), obs/robot0_gripper_qpos (T, 2), ... (low-dim keys)
        states, rewards, dones
    mask/train, mask/valid    arrays of demo names (bytes, b"demo_3"): robomimic's train / validation split

Cameras: any ``obs/<camera>_image`` of the file (``data.cameras`` lists them in latent-slot order; the exact key
``obs/<camera>`` also works); a camera the file lacks is one error naming the file and the cameras it has.

Proprio: the ``data.proprio_keys`` low-dim keys concatenated (default gripper_qpos 2 + eef_pos 3 + eef_quat 4: the
9-D layout of the LIBERO and RoboCasa ``robot_states``); a key is looked up under ``obs/`` first, then in the demo
group. Actions: ``actions``, all dims.

Image orientation. robosuite renders bottom row first (OpenGL convention) unless ``robosuite.macros.IMAGE_CONVENTION``
is ``"opencv"``; robomimic's ``dataset_states_to_obs.py`` (and RoboCasa's copy) flips every frame once
(``EnvRobosuite.get_observation``: ``[::-1]``) before storing it, so a converted file is upright exactly when the
conversion ran with the default convention. The macro is module state, not an env keyword: ``env_args`` never
records it. The rule, per file:

1. ``data.image_orientation: upright | upside_down`` when given (it overrides the file);
2. else the ``data`` attribute ``macros_image_convention`` when the file has it (LIBERO's writer records
   robosuite's convention next to the frames it stores as rendered: ``opengl`` = upside down, ``opencv`` = upright);
3. else an error: the file does not say, so ``data.image_orientation`` is required.

Frames stored upside down are flipped on load: the model always sees them upright, as the envs' observations.

Split: with ``data.use_file_masks`` (default) a file's ``mask/valid`` demos are the validation set and its
``mask/train`` demos the training set; demos a file's masks leave out are not used. A file with only ``mask/train``
splits those demos by the seeded ``val_fraction``; a file with only ``mask/valid`` trains on the others; files
without masks (or ``use_file_masks: false``) split all their demos by ``val_fraction``. A mask naming a demo the
file lacks is an error naming it.

Instruction: the demo attribute ``task_description``, else ``ep_meta["lang"]``, else ``data.instruction``, else
the folder name.

Rollouts (``rollout_dir``; one episode per file, the Cosmos Policy layout of ``cosmos_lit.rollout_files``, upright):
``<camera key>_images[_jpeg]`` (agentview -> primary_images, robot0_eye_in_hand -> wrist_images), proprio, actions;
attrs success, task_description.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cosmos_lit.datamodules.base import EpisodeDataModule, EpisodeRef, MissingKeyError
from cosmos_lit.datamodules.hdf5_episodes import (
    CameraSource,
    Hdf5EpisodeReader,
    file_masks,
    find_robomimic_episodes,
    flag,
    json_attr,
    parse_orientation,
    recorded_upside_down,
    text,
)
from cosmos_lit.registry import ConfigError, register
from cosmos_lit.rollout_files import rollout_image_key

CAMERAS = ("robot0_eye_in_hand", "agentview")  # wrist, primary: the slot order of the official layouts
PROPRIO_KEYS = ("robot0_gripper_qpos", "robot0_eef_pos", "robot0_eef_quat")  # 2 + 3 + 4 = 9
IMAGE_SUFFIX = "_image"
# roles of a demonstration in the split
TRAIN, VALID, POOL = "train", "valid", "pool"


class RobomimicEpisodeReader(Hdf5EpisodeReader):
    """One robomimic demo (``ref.key = data/demo_<n>``) or one rollout file (``ref.rollout``).

    Options (``RobomimicDataModule.reader_options``): ``upside_down`` (True / False from ``data.image_orientation``,
    None: as the file records), ``proprio_keys``.
    """

    # --- metadata ---
    def data_attrs(self) -> Any:
        """Attributes of the file's ``data`` group (a rollout file: its root attributes)."""
        f = self.handles.h5(self.ref.path)
        if self.ref.rollout:
            return f.attrs
        return f["data"].attrs if "data" in f else {}

    def file_upside_down(self) -> bool:
        """Whether this demo file stores its frames upside down: ``data.image_orientation``, else the file's
        ``macros_image_convention``, else :meth:`unrecorded_upside_down`."""
        if "_file_upside_down" not in self.__dict__:
            forced = self.options.get("upside_down")
            if self.ref.rollout:
                value = False
            elif forced is not None:
                value = bool(forced)
            else:
                value = recorded_upside_down(self.data_attrs(), f"{self.ref.path} group 'data'")
                if value is None:
                    value = self.unrecorded_upside_down()
            self._file_upside_down = value
        return self._file_upside_down

    def unrecorded_upside_down(self) -> bool:
        """Orientation of a file that records none: robomimic cannot tell (see the module docstring)."""
        raise ValueError(
            f"{self.ref.path}: the file does not record how its images are stored (no 'macros_image_convention' "
            "attribute on group 'data'); set data.image_orientation: upright (robomimic's dataset_states_to_obs.py "
            "with robosuite's default OpenGL convention flips the frames upright) or upside_down (frames stored as "
            "robosuite renders them)"
        )

    # --- vectors ---
    def length(self) -> int:
        return len(self._all_actions())

    def _all_actions(self) -> np.ndarray:
        if "_actions_cache" not in self.__dict__:
            self._actions_cache = self.vector("actions", "a (T, A) action array")
        return self._actions_cache

    def actions(self) -> np.ndarray:
        return self._all_actions()

    def low_dim_key(self, key: str) -> str | None:
        """Where low-dim ``key`` is in the demo: ``obs/<key>``, else ``<key>``; None when neither exists."""
        group = self.h5
        for candidate in ((key,) if key.startswith("obs/") else (f"obs/{key}", key)):
            if candidate in group:
                return candidate
        return None

    def proprio(self) -> np.ndarray:
        if self.ref.rollout:
            return self.vector("proprio", "a (T, P) proprio array")
        keys = list(self.options.get("proprio_keys") or PROPRIO_KEYS)
        parts = []
        for key in keys:
            found = self.low_dim_key(key)
            if found is None:
                where = key if key.startswith("obs/") else f"obs/{key}"
                raise MissingKeyError(
                    f"{self.ref.describe()}: missing key '{where}' (a proprio part of data.proprio_keys {keys})"
                )
            parts.append(self.vector(found, "a (T, D) low-dim array"))
        lengths = {len(p) for p in parts}
        if len(lengths) > 1:
            raise self.fail(f"proprio keys {keys} have different lengths {[len(p) for p in parts]}")
        return np.concatenate(parts, axis=1)

    # --- text and outcome ---
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

    # --- cameras ---
    def camera_sources(self, camera: str) -> list[CameraSource]:
        if self.ref.rollout:
            return self.rollout_camera_sources(camera)
        return [CameraSource(f"obs/{camera}{IMAGE_SUFFIX}", None), CameraSource(f"obs/{camera}", None)]

    def rollout_camera_sources(self, camera: str) -> list[CameraSource]:
        """A rollout file's keys of ``camera`` (``cosmos_lit.rollout_files``): JPEG, then raw; upright."""
        key = rollout_image_key(camera, jpeg=False)
        return [CameraSource(key + "_jpeg"), CameraSource(key)]

    def camera_inventory(self) -> str:
        """The cameras of the demo (its ``obs/*_image`` keys, and any other image dataset under ``obs/``)."""
        group = self.h5
        if self.ref.rollout or "obs" not in group:
            return ""
        names = []
        for key, ds in group["obs"].items():
            if not hasattr(ds, "shape"):
                continue
            image = (len(ds.shape) == 4 and ds.shape[3] == 3) or (len(ds.shape) == 1 and ds.dtype.kind == "O")
            if image:
                names.append(key[: -len(IMAGE_SUFFIX)] if key.endswith(IMAGE_SUFFIX) else key)
        return f"the file has cameras: {', '.join(sorted(names)) or 'none'}"


@register("datamodule", "robomimic")
class RobomimicDataModule(EpisodeDataModule):
    """robosuite demonstrations in robomimic's HDF5 format (any camera of the file), plus optional rollout files.

    See the module docstring for the layout, the orientation rule, the split and the instruction.

    Args:
        cameras: camera names of the file (``obs/<camera>_image``) in latent-slot order.
        image_orientation: how the files store their frames, ``upright`` or ``upside_down``; overrides what a file
            records; required for files that record nothing (robomimic's conversions).
        proprio_keys: low-dim keys concatenated into the proprio vector.
        use_file_masks: honour the files' ``mask/train`` / ``mask/valid`` (else the seeded ``val_fraction`` split).
        Other keys: see ``EpisodeDataModule``.
    """

    reader_cls = RobomimicEpisodeReader
    benchmark_name = "robomimic"

    def __init__(
        self,
        data_dir: str | None = None,
        cameras: Sequence[str] = CAMERAS,
        image_orientation: str | None = None,
        proprio_keys: Sequence[str] = PROPRIO_KEYS,
        use_file_masks: bool = True,
        **kwargs: Any,
    ):
        super().__init__(data_dir=data_dir, cameras=cameras, **kwargs)
        self.image_orientation = image_orientation
        self.forced_upside_down = parse_orientation(image_orientation)
        if self.flip_images is not None and self.forced_upside_down is not None:
            if bool(self.flip_images) != self.forced_upside_down:
                raise ConfigError(
                    f"data.image_orientation: '{image_orientation}' contradicts data.flip_images: {self.flip_images}; "
                    "set only one of them"
                )
        if isinstance(proprio_keys, str) or not proprio_keys:
            raise ConfigError(f"data.proprio_keys: expected a non-empty list of low-dim keys, got {proprio_keys!r}")
        self.proprio_keys = [str(k) for k in proprio_keys]
        self.use_file_masks = bool(use_file_masks)
        self._demo_roles: list[str] = []

    def reader_options(self) -> dict:
        forced = self.forced_upside_down
        if forced is None and self.flip_images is not None:  # data.flip_images forces every frame anyway
            forced = bool(self.flip_images)
        return {"upside_down": forced, "proprio_keys": list(self.proprio_keys)}

    # --- discovery and split ---
    def expected_files(self) -> tuple[str, str]:
        """What ``data_dir`` and ``rollout_dir`` should hold, for the missing-folder errors."""
        return (
            "robomimic HDF5 files (data/demo_<n>/{actions, obs/<camera>_image, obs/robot0_eef_pos, ...}, "
            "optional mask/train and mask/valid), e.g. robomimic's image datasets or dataset_states_to_obs.py output",
            "rollout episode files (<camera>_images[_jpeg], proprio, actions; attrs success, task_description), e.g. "
            "from `python -m cosmos_lit collect`; data.rollout_dir=null trains without them",
        )

    def find_episodes(self) -> tuple[list[EpisodeRef], list[EpisodeRef]]:
        roles: dict[tuple[str, str], str] = {}

        def inspect(f: Any, path: str, keys: list[str]) -> list[str]:
            masks = file_masks(f, path, keys) if self.use_file_masks else {}
            train = set(masks["train"]) if "train" in masks else None
            valid = set(masks["valid"]) if "valid" in masks else None
            if train is not None and valid is not None:
                kept = [(k, TRAIN if k in train else VALID) for k in keys if k in train or k in valid]
            elif train is not None:
                kept = [(k, POOL) for k in keys if k in train]
            elif valid is not None:
                kept = [(k, VALID if k in valid else TRAIN) for k in keys]
            else:
                kept = [(k, POOL) for k in keys]
            if not kept:
                raise ValueError(f"{path}: its masks list no demos; set data.use_file_masks: false to use them all")
            for key, role in kept:
                roles[(path, key)] = role
            return [key for key, _ in kept]

        expected, rollout_expected = self.expected_files()
        demos, rollouts = find_robomimic_episodes(
            self.benchmark_name, self.data_dir, self.rollout_dir, expected, rollout_expected, inspect_file=inspect,
        )
        self._demo_roles = [roles[(ref.path, ref.key)] for ref in demos]
        return demos, rollouts

    def _split(self, n_demo: int) -> tuple[list[int], list[int]]:
        """The files' masks where they have them (see the module docstring), the seeded split elsewhere."""
        roles = self._demo_roles
        if len(roles) != n_demo or all(role == POOL for role in roles):
            return super()._split(n_demo)
        train = [i for i, role in enumerate(roles) if role == TRAIN]
        val = [i for i, role in enumerate(roles) if role == VALID]
        pool = [i for i, role in enumerate(roles) if role == POOL]
        if pool:
            pool_train, pool_val = super()._split(len(pool))
            train += [pool[j] for j in pool_train]
            val += [pool[j] for j in pool_val]
        return sorted(train), sorted(val)


__all__ = ["CAMERAS", "PROPRIO_KEYS", "RobomimicDataModule", "RobomimicEpisodeReader"]
