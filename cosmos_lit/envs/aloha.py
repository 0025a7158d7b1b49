"""gym-aloha's bimanual ViperX tasks (TransferCube, Insertion) as a ``SimEnv`` (see ``cosmos_lit.envs.base``).

Dynamics, object placement and reward are gym-aloha's own: this adapter builds the same dm_control
``control.Environment`` that ``gym_aloha.env.AlohaEnv`` builds (same XML, same task class, control step 0.02 s =
10 physics steps of 2 ms) and seeds it the same way, so ``reset(seed=s)`` here and ``AlohaEnv.reset(seed=s)`` give
the same scene. Only the observation differs: gym-aloha's ``get_observation`` renders top, angle and front_close at
640×480 on every step (~120 ms on a CPU); our task subclass renders nothing there, and the adapter renders only the
requested cameras at ``image_size``² through ``CameraRenderer`` (fast mode: no shadows, reflections or MSAA).

Action (14,), absolute joint targets in ACT layout: ``[left waist, shoulder, elbow, forearm_roll, wrist_angle,
wrist_rotate, left gripper (0 = closed .. 1 = open), right ×6, right gripper]``; proprio is the joint position in
the same layout. Reward 0..4 (gym-aloha's staged contact reward); success when reward == 4.

gym_aloha / dm_control / mujoco are imported lazily (inside functions) so this module imports without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cosmos_lit.envs.render import CameraRenderer, ensure_gl_backend
from cosmos_lit.registry import register

MAX_REWARD = 4
ACTION_DIM = 14
CONTROL_DT = 0.02  # seconds per env step (50 Hz), gym_aloha.constants.DT


@dataclass(frozen=True)
class AlohaTask:
    """Static facts about one gym-aloha task."""

    name: str
    joint_xml: str  # joint-position-controlled scene (the env)
    mocap_xml: str  # same scene with the grippers welded to mocap bodies (the scripted expert)
    task_class: str  # class name in gym_aloha.tasks.sim
    object_joints: tuple[str, ...]  # free joints of the objects, in qpos order
    instruction: str


TASKS: dict[str, AlohaTask] = {
    # In TransferCubeTask the cube spawns on the right half (x in [0, 0.2]); the reward asks the right gripper to
    # lift it and the left gripper to hold it off the table.
    "transfer_cube": AlohaTask(
        name="transfer_cube",
        joint_xml="bimanual_viperx_transfer_cube.xml",
        mocap_xml="bimanual_viperx_end_effector_transfer_cube.xml",
        task_class="TransferCubeTask",
        object_joints=("red_box_joint",),
        instruction="pick up the red cube with the right arm and hand it over to the left arm",
    ),
    # The red peg spawns on the right (x in [0.1, 0.2]), the blue socket on the left (x in [-0.2, -0.1]).
    "insertion": AlohaTask(
        name="insertion",
        joint_xml="bimanual_viperx_insertion.xml",
        mocap_xml="bimanual_viperx_end_effector_insertion.xml",
        task_class="InsertionTask",
        object_joints=("red_peg_joint", "blue_socket_joint"),
        instruction="pick up the red peg with the right arm and the blue socket with the left arm, "
        "then insert the peg into the socket",
    ),
}


def get_task(task: str) -> AlohaTask:
    if task not in TASKS:
        raise ValueError(f"unknown ALOHA task '{task}'; expected one of {sorted(TASKS)}")
    return TASKS[task]


def sample_object_poses(task: str, seed: int) -> np.ndarray:
    """Object poses gym-aloha places for ``seed``: (7,) cube or (14,) peg + socket, each xyz + wxyz quaternion."""
    ensure_gl_backend()  # before anything imports mujoco: it picks its GL backend at import time
    from gym_aloha.utils import sample_box_pose, sample_insertion_pose

    if get_task(task).name == "transfer_cube":
        return np.asarray(sample_box_pose(seed), dtype=np.float64)
    return np.concatenate(sample_insertion_pose(seed)).astype(np.float64)


def _render_free_task_class(task_class: str) -> type:
    """gym-aloha's task class with a ``get_observation`` that renders nothing (cameras are rendered by us)."""
    import collections

    from gym_aloha.tasks import sim

    base = getattr(sim, task_class)

    class RenderFreeTask(base):  # type: ignore[misc, valid-type]
        def get_observation(self, physics):  # noqa: D401 - dm_control hook
            obs = collections.OrderedDict()
            obs["qpos"] = self.get_qpos(physics)
            obs["qvel"] = self.get_qvel(physics)
            obs["env_state"] = self.get_env_state(physics)
            return obs

    RenderFreeTask.__name__ = f"RenderFree{task_class}"
    return RenderFreeTask


def load_physics(xml_name: str) -> Any:
    """A dm_control ``mujoco.Physics`` for one of gym-aloha's scene files."""
    ensure_gl_backend()
    from dm_control import mujoco as dm_mujoco
    from gym_aloha.constants import ASSETS_DIR

    return dm_mujoco.Physics.from_xml_path(str(ASSETS_DIR / xml_name))


@register("env", "aloha_sim")
class AlohaSimEnv:
    """gym-aloha TransferCube / Insertion with only the requested cameras rendered.

    Args:
        task: ``"transfer_cube"`` or ``"insertion"``.
        cameras: camera names of the scene (``top``, ``angle``, ``front_close``, ``left_pillar``, ``right_pillar``,
            ``left_wrist``, ``right_wrist``).
        image_size: side of every (square) camera image, pixels.
        max_steps: episode horizon in env steps (0.02 s each); ``done`` turns True at success or at this step.
        fast_render: shadows, reflections and MSAA off (how our own demos are rendered).

    Observations: ``images`` {camera: (S, S, 3) uint8}, ``proprio`` (14,) float32 joint positions (grippers
    normalized 0 = closed .. 1 = open), ``instruction`` str. ``info``: ``success`` (reward == 4), ``reward``,
    ``max_reward``, ``step``.
    """

    action_dim = ACTION_DIM
    proprio_dim = ACTION_DIM
    max_reward = MAX_REWARD

    def __init__(
        self,
        task: str = "transfer_cube",
        cameras: tuple[str, ...] | list[str] = ("top",),
        image_size: int = 224,
        max_steps: int = 400,
        fast_render: bool = True,
    ):
        ensure_gl_backend()  # before anything imports mujoco: it picks its GL backend at import time
        self.task = get_task(task)
        if isinstance(cameras, str):
            cameras = (cameras,)
        self.cameras = tuple(cameras)
        if not self.cameras:
            raise ValueError("AlohaSimEnv needs at least one camera, got cameras=()")
        if int(max_steps) < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.image_size = int(image_size)
        self.max_steps = int(max_steps)
        self.fast_render = bool(fast_render)
        self.instruction = self.task.instruction

        from dm_control.rl import control

        self.physics = load_physics(self.task.joint_xml)
        self._task = _render_free_task_class(self.task.task_class)()
        # Same construction as gym_aloha.env.AlohaEnv._make_env_task (the time limit is ours, not dm_control's).
        self._env = control.Environment(
            self.physics, self._task, time_limit=float("inf"), control_timestep=CONTROL_DT, n_sub_steps=None,
            flat_observation=False,
        )
        self._renderer = CameraRenderer(
            self.physics.model.ptr, self.physics.data.ptr, self.image_size, self.fast_render
        )
        self._renderer.check_cameras(self.cameras)
        self._steps = 0
        self._last_images: dict[str, np.ndarray] | None = None

    # -- SimEnv -----------------------------------------------------------------------------------------------
    def reset(self, seed: int) -> dict[str, Any]:
        """Place the objects as ``gym_aloha``'s ``AlohaEnv.reset(seed=seed)`` does and return the first obs."""
        self.reset_scene(seed)
        return self._observation()

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
        reward = self.step_physics(action)
        success = reward >= MAX_REWARD
        done = success or self._steps >= self.max_steps
        info = {"success": success, "reward": reward, "max_reward": float(MAX_REWARD), "step": self._steps}
        return self._observation(), reward, done, info

    def render(self) -> np.ndarray:
        """The latest observation's frames of all cameras side by side: (S, S * num_cameras, 3) uint8."""
        if self._last_images is None:  # after reset_scene / step_physics
            self._last_images = self.render_cameras()
        return np.concatenate([self._last_images[c] for c in self.cameras], axis=1)

    def close(self) -> None:
        if getattr(self, "_renderer", None) is not None:
            self._renderer.close()
            self._renderer = None
        if getattr(self, "physics", None) is not None:
            self.physics.free()
            self.physics = None

    # -- extras used by the demo writer -------------------------------------------------------------------------
    def reset_scene(self, seed: int) -> None:
        """``reset`` without rendering: seed the task and place the objects exactly as gym-aloha does."""
        from gym_aloha.tasks import sim

        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"reset(seed) needs an int seed, got {seed!r}")
        seed = int(seed)
        self._task.random.seed(seed)
        self._task._random = np.random.RandomState(seed)
        sim.BOX_POSE[0] = sample_object_poses(self.task.name, seed)  # read by the task's initialize_episode
        self._env.reset()
        self._steps = 0
        self._last_images = None

    def step_physics(self, action: np.ndarray) -> float:
        """``step`` without rendering; returns gym-aloha's reward (0..4)."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"AlohaSimEnv.step: action must have shape ({ACTION_DIM},), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"AlohaSimEnv.step: action has NaN/inf: {action}")
        ts = self._env.step(action)
        self._steps += 1
        self._last_images = None
        return float(ts.reward)

    def joint_positions(self) -> np.ndarray:
        """(14,) float32 joint positions in ACT layout (grippers normalized)."""
        return self._task.get_qpos(self.physics).astype(np.float32)

    def joint_velocities(self) -> np.ndarray:
        """(14,) float32 joint velocities in ACT layout (gripper velocities normalized)."""
        return self._task.get_qvel(self.physics).astype(np.float32)

    def object_state(self) -> np.ndarray:
        """qpos of the free objects: (7,) or (14,) float64, xyz + wxyz each."""
        return self._task.get_env_state(self.physics)

    def render_cameras(self) -> dict[str, np.ndarray]:
        return {c: self._renderer.render(c) for c in self.cameras}

    def _observation(self) -> dict[str, Any]:
        self._last_images = self.render_cameras()
        return {"images": self._last_images, "proprio": self.joint_positions(), "instruction": self.instruction}
