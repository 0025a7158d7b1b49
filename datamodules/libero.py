"""LIBERO DataModule: original LIBERO HDF5, the Cosmos Policy regenerated variant, and rollout files.

Demonstrations (one ``<TASK>_demo.hdf5`` per task, many episodes each; docs/method.md#demonstration-file-schemas)::

    data                  attrs (original only): problem_info (JSON, language_instruction), macros_image_convention
      demo_<n>/actions       (T, 7)   OSC Δpos (3), Δaxis-angle (3), gripper (-1 open .. +1 close)
      demo_<n>/robot_states  (T, 9)   gripper_qpos (2) + eef_pos (3) + eef_quat (4)  -> proprio
      demo_<n>/obs/agentview_rgb | agentview_rgb_jpeg        camera "primary"
      demo_<n>/obs/eye_in_hand_rgb | eye_in_hand_rgb_jpeg    camera "wrist"

- original LIBERO: 128², raw frames rendered upside down (``macros_image_convention="opengl"``);
- Cosmos regenerated (``LIBERO-Cosmos-Policy/success_only/<suite>_no_noops...``): 256², upright, raw or JPEG.

Orientation is decided per file (``data.flip_images`` forces it) by the robomimic rule
(``datamodules/robomimic.py``): the ``macros_image_convention`` attribute when present ("opengl" = upside down),
else upside down when the file carries the original ``problem_info`` attribute, else upright (the regenerated
files have neither).

Instruction: one rule with the LIBERO env (``cosmos_lit.instructions``): the benchmark's ``task.language``, which
LIBERO derives from the task name, not from the BDDL's ``(:language ...)`` line. The task name is read from the
original files' ``bddl_file_name`` attribute (else ``env_args["bddl_file"]``), else from the file name
``<task>_demo.hdf5`` (the regenerated files); so the original ``pick_up_the_black_bowl_between_the_plate_..._demo.hdf5``
trains with "pick up the black bowl between the plate and ...", the env's text and the key of the official T5
cache, not with its ``problem_info`` text "Pick the akita black bowl between the plate and ...".
``instruction_source: file_name`` reads the task name from the file name only; ``problem_info`` uses the BDDL's
line stored in ``problem_info["language_instruction"]`` (``auto``, the earlier default, is the same), which no LIBERO
env gives: embed those texts yourself.

Rollouts (``rollout_dir``, e.g. ``LIBERO-Cosmos-Policy/all_episodes``; one episode per file, upright)::

    primary_images[_jpeg], wrist_images[_jpeg], proprio (T, 9), actions (T, 7); attrs success, task_description

their suite is read from ``suite=<name>`` in the file name.

Suites (``suites: [libero_spatial, ...]``) select demo files whose folder, relative to ``data_dir`` (or
``data_dir`` itself), is the suite name or starts with ``<suite>_`` (``libero_spatial_no_noops_rerendered``), and
rollout files with ``suite=<name>`` in their name.

No-op filtering (``filter_noops``, for the original files; the regenerated ones are already filtered) drops the
steps whose action moves less than ``noop_threshold`` (‖a[:6]‖) while keeping the gripper command of the previous
kept step, as Cosmos Policy's ``regenerate_libero_dataset.py``. Unlike the regeneration, which re-simulates, the
observations of the kept steps are the stored ones.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from typing import Any

import numpy as np

from cosmos_lit.datamodules.base import EpisodeDataModule, EpisodeRef
from cosmos_lit.datamodules.hdf5_episodes import CameraSource, find_robomimic_episodes, json_attr, text
from cosmos_lit.datamodules.robomimic import RobomimicEpisodeReader
from cosmos_lit.instructions import libero_language, libero_task_name
from cosmos_lit.registry import ConfigError, register
from cosmos_lit.rollout_files import rollout_image_key

CAMERAS = ("wrist", "primary")  # latent-slot order of the official layout (docs/method.md#latent-layout)
DEMO_IMAGE_KEYS = {"wrist": "obs/eye_in_hand_rgb", "primary": "obs/agentview_rgb"}
ROLLOUT_IMAGE_KEYS = {cam: rollout_image_key(cam, jpeg=False) for cam in CAMERAS}  # wrist_images, primary_images
SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
ACTION_DIM, PROPRIO_DIM = 7, 9
ROLLOUT_SUITE = re.compile(r"suite=([A-Za-z0-9_]+)")
INSTRUCTION_SOURCES = ("task_name", "file_name", "problem_info", "auto")


def instruction_from_file_name(path: str) -> str:
    """The env's instruction for a demo file name: ``KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5`` -> "turn on the
    stove" (``cosmos_lit.instructions``)."""
    return libero_language(libero_task_name(path))


def noop_mask(actions: np.ndarray, threshold: float = 1e-4) -> np.ndarray:
    """True for the no-op steps of a (T, 7) action array.

    A step is a no-op when ‖a[:6]‖ < threshold and its gripper command equals the previous *kept* step's (the
    first step only needs the small motion), as ``regenerate_libero_dataset.py::is_noop``.
    """
    noop = np.zeros(len(actions), dtype=bool)
    prev = None
    for t, a in enumerate(actions):
        small = float(np.linalg.norm(a[:-1])) < threshold
        noop[t] = small if prev is None else small and a[-1] == prev[-1]
        if not noop[t]:
            prev = a
    return noop


def suite_matches(path: str, root: str, suite: str) -> bool:
    """Whether a demo file belongs to ``suite``: some folder between ``root`` (included) and the file is named
    ``suite`` or ``suite_*``."""
    folders = [os.path.basename(os.path.normpath(root))]
    rel = os.path.relpath(os.path.dirname(os.path.abspath(path)), os.path.abspath(root))
    if rel != ".":
        folders += rel.split(os.sep)
    return any(f == suite or f.startswith(suite + "_") for f in folders)


class LiberoEpisodeReader(RobomimicEpisodeReader):
    """One LIBERO demo (``ref.key = data/demo_<n>``) or one rollout file (``ref.rollout``)."""

    # --- steps (no-op filtering) ---
    def _raw_actions(self) -> np.ndarray:
        if "_actions_cache" not in self.__dict__:
            a = self.vector("actions", "a (T, 7) action array")
            if a.shape[1] < ACTION_DIM:
                raise self.fail(f"key 'actions' has {a.shape[1]} dims; expected {ACTION_DIM} (Δpos 3, Δrot 3, gripper 1)")
            self._actions_cache = a
        return self._actions_cache

    def _keep(self) -> np.ndarray:
        if "_kept" not in self.__dict__:  # row indices of the kept steps
            a = self._raw_actions()
            if self.options.get("filter_noops") and not self.ref.rollout:
                self._kept = np.flatnonzero(~noop_mask(a, float(self.options.get("noop_threshold", 1e-4))))
            else:
                self._kept = np.arange(len(a))
        return self._kept

    def stored_length(self) -> int:
        return len(self._raw_actions())

    def length(self) -> int:
        return len(self._keep())

    def frame_index(self, indices: Sequence[int]) -> list[int]:
        keep = self._keep()
        return [int(keep[int(i)]) for i in indices]

    def actions(self) -> np.ndarray:
        return self._raw_actions()[self._keep()]

    def proprio(self) -> np.ndarray:
        key = "proprio" if self.ref.rollout else "robot_states"
        p = self.vector(key, "a (T, 9) array: gripper_qpos (2) + eef_pos (3) + eef_quat (4)")
        if len(p) != self.stored_length():
            raise self.fail(f"key '{key}' has {len(p)} rows; expected {self.stored_length()} (one per action)")
        return p[self._keep()]

    # --- metadata ---
    def task_name(self) -> str:
        """The LIBERO task of this demo file: the ``bddl_file_name`` attribute, else ``env_args["bddl_file"]``,
        else the file name (``instruction_source: file_name``: the file name only)."""
        if self.options.get("instruction_source", "task_name") != "file_name":
            attrs = self.data_attrs()
            if "bddl_file_name" in attrs and text(attrs["bddl_file_name"]).strip():
                return libero_task_name(text(attrs["bddl_file_name"]).strip())
            env_args = json_attr(attrs, "env_args", f"{self.ref.path} group 'data'")
            if env_args and str(env_args.get("bddl_file", "")).strip():
                return libero_task_name(str(env_args["bddl_file"]).strip())
        return libero_task_name(self.ref.path)

    def instruction(self) -> str | None:
        attrs = self.data_attrs()
        if self.ref.rollout:
            return text(attrs["task_description"]).strip() or None if "task_description" in attrs else None
        if self.options.get("instruction_source", "task_name") in ("problem_info", "auto"):
            info = json_attr(attrs, "problem_info", f"{self.ref.path} group 'data'")
            if info and str(info.get("language_instruction", "")).strip():
                return str(info["language_instruction"]).strip()
        return libero_language(self.task_name()) or None

    def camera_sources(self, camera: str) -> list[CameraSource]:
        keys = ROLLOUT_IMAGE_KEYS if self.ref.rollout else DEMO_IMAGE_KEYS
        if camera not in keys:
            raise ConfigError(f"data.cameras: unknown LIBERO camera '{camera}'; expected some of {list(keys)}")
        if self.ref.rollout:
            return self.rollout_camera_sources(camera)
        return [CameraSource(keys[camera] + "_jpeg", None), CameraSource(keys[camera], None)]

    def unrecorded_upside_down(self) -> bool:
        return "problem_info" in self.data_attrs()  # the original files are rendered upside down

    def camera_inventory(self) -> str:
        return ""


@register("datamodule", "libero")
class LiberoDataModule(EpisodeDataModule):
    """LIBERO demonstrations (original or Cosmos-regenerated HDF5) plus optional rollout files.

    Defaults follow the official LIBERO run: cameras [wrist, primary] (9 latent frames), K = 16, γ = 0.99, 20 Hz,
    224², 7-D actions, 9-D proprio. See the module docstring for layouts, orientation, suites and no-op filtering.

    Args:
        suites: suite names to keep (``libero_spatial``, ``libero_object``, ``libero_goal``, ``libero_10``,
            ``libero_90``); None keeps every file under ``data_dir``.
        filter_noops: drop no-op steps of the demonstrations (use for the original LIBERO files).
        noop_threshold: motion norm below which a step is a no-op.
        instruction_source: ``task_name`` (the env's instruction: the task named by ``bddl_file_name``, else by the
            file name), ``file_name`` (from the file name only) or ``problem_info`` (the BDDL's own line that the
            original files store; ``auto`` is the same).
        Other keys: see ``EpisodeDataModule``.
    """

    reader_cls = LiberoEpisodeReader
    benchmark_name = "libero"

    def __init__(
        self,
        data_dir: str | None = None,
        suites: Sequence[str] | None = None,
        filter_noops: bool = False,
        noop_threshold: float = 1e-4,
        instruction_source: str = "task_name",
        cameras: Sequence[str] = CAMERAS,
        proprio_dim: int | None = PROPRIO_DIM,
        action_dim: int | None = ACTION_DIM,
        **kwargs: Any,
    ):
        super().__init__(
            data_dir=data_dir, cameras=cameras, proprio_dim=proprio_dim, action_dim=action_dim, **kwargs,
        )
        unknown = [c for c in self.cameras if c not in CAMERAS]
        if unknown:
            raise ConfigError(f"data.cameras: unknown LIBERO camera(s) {unknown}; expected some of {list(CAMERAS)}")
        if instruction_source not in INSTRUCTION_SOURCES:
            raise ConfigError(
                f"data.instruction_source: expected one of {list(INSTRUCTION_SOURCES)}, got '{instruction_source}'"
            )
        if float(noop_threshold) < 0:
            raise ConfigError(f"data.noop_threshold: must be >= 0, got {noop_threshold}")
        self.suites = None if suites is None else [str(s) for s in ([suites] if isinstance(suites, str) else suites)]
        if self.suites is not None and not self.suites:
            raise ConfigError("data.suites: empty list; give suite names or null for every file")
        self.filter_noops = bool(filter_noops)
        self.noop_threshold = float(noop_threshold)
        self.instruction_source = instruction_source

    def reader_options(self) -> dict:
        return {
            "filter_noops": self.filter_noops,
            "noop_threshold": self.noop_threshold,
            "instruction_source": self.instruction_source,
        }

    def find_episodes(self) -> tuple[list[EpisodeRef], list[EpisodeRef]]:
        expected = (
            "LIBERO demonstration files (<TASK>_demo.hdf5 with data/demo_<n>/{actions, robot_states, "
            "obs/agentview_rgb[_jpeg], obs/eye_in_hand_rgb[_jpeg]}), e.g. the success_only folder of HF "
            "nvidia/LIBERO-Cosmos-Policy (set $COSMOS_DATA to the folder holding LIBERO-Cosmos-Policy)"
        )
        rollout_expected = (
            "rollout episode files (primary_images[_jpeg], wrist_images[_jpeg], proprio, actions; attrs success, "
            "task_description), e.g. LIBERO-Cosmos-Policy/all_episodes; data.rollout_dir=null trains without them"
        )
        if self.suites is None:
            return find_robomimic_episodes("libero", self.data_dir, self.rollout_dir, expected, rollout_expected)
        return find_robomimic_episodes(
            "libero", self.data_dir, self.rollout_dir, expected, rollout_expected,
            select_demo_files=self._suite_demo_files, select_rollout_files=self._suite_rollout_files,
            rollout_selection=f" of suites {self.suites}",
        )

    def _suite_demo_files(self, files: list[str]) -> list[str]:
        """The demo files of ``self.suites`` (by folder name); one error naming the folders for a suite with none."""
        picked: list[str] = []
        for suite in self.suites or ():
            mine = [p for p in files if suite_matches(p, self.data_dir, suite)]
            if not mine:
                folders = sorted({os.path.relpath(os.path.dirname(p), self.data_dir) for p in files})
                raise FileNotFoundError(
                    f"libero: data.suites: no files of suite '{suite}' under {self.data_dir} (expected a folder "
                    f"named '{suite}' or '{suite}_*'); folders found: {', '.join(folders)}"
                )
            picked += [p for p in mine if p not in picked]
        return sorted(picked)

    def _suite_rollout_files(self, files: list[str]) -> list[str]:
        """The rollout files whose name carries ``suite=<one of self.suites>``."""
        def suite_of(p: str) -> str | None:
            m = ROLLOUT_SUITE.search(os.path.basename(p))
            return m.group(1) if m else None

        return [p for p in files if suite_of(p) in (self.suites or ())]
