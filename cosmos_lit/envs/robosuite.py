"""robosuite 1.5 tasks (Lift, Stack with a Panda) and RoboCasa kitchens on top of it, as ``SimEnv``s.

``robosuite`` (and ``robocasa``) are imported when an env is built, so this module imports without them.

robosuite (``name: robosuite``): ``robosuite.make(env_name, robots="Panda", BASIC composite controller = OSC pose
for the arm)``, control at 20 Hz. Action (7,) in [-1, 1]: delta eef position (3), delta axis-angle (3),
gripper (-1 open .. +1 close). proprio (9,) = gripper_qpos (2) + eef_pos (3) + eef_quat (4), the ``robot_states``
layout of the LIBERO / RoboCasa datasets. ``info["success"]`` is the task's ``_check_success()``.

RoboCasa (``name: robocasa``): a kitchen task registered by ``import robocasa`` (PnPCounterToCab, OpenDrawer,
...), robot PandaOmron, cameras left/right agentview + eye in hand at 224², as Cosmos Policy evaluates it. The
policy's 7-D arm action is padded with ``[0, 0, 0, 0, -1]`` (no base or torso motion, arm mode) to the robot's
12-D action. RoboCasa is not on PyPI and needs ~5 GB of kitchen assets: without it, building this env stops with
one line saying so.

Images are returned upright (robosuite renders in the OpenGL convention, bottom row first, unless
``robosuite.macros.IMAGE_CONVENTION == "opencv"``). ``fast_render=True`` switches shadows, reflections and
multisampling off (about 3× faster on a CPU); it changes the image statistics, so use it only with a policy
trained on frames rendered the same way.

Seeding: robosuite draws object sizes, placements and the robot's initial joint noise from one generator
(``env.rng``) that its samplers share; ``reset(seed)`` re-seeds that generator in place before the (hard) reset,
so the same seed gives the same scene.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from cosmos_lit.envs.image_ops import hstack_frames
from cosmos_lit.envs.obs_utils import camera_image, check_action, robot_state
from cosmos_lit.envs.render import ensure_gl_backend
from cosmos_lit.registry import ConfigError, register

ARM_ACTION_DIM = 7
INSTRUCTIONS = {
    "Lift": "lift the red cube",
    "Stack": "stack the red cube on top of the green cube",
}
DEFAULT_MAX_STEPS = {"Lift": 300, "Stack": 400}
ROBOSUITE_CAMERAS = ("agentview", "robot0_eye_in_hand", "frontview", "birdview", "sideview", "robot0_robotview")
# RoboCasa: 7-D policy action + (base x, y, yaw, torso, base mode = -1 arm) -> PandaOmron's 12-D action.
ROBOCASA_ACTION_PAD = (0.0, 0.0, 0.0, 0.0, -1.0)
ROBOCASA_CAMERAS = ("robot0_agentview_left", "robot0_agentview_right", "robot0_eye_in_hand")
ROBOCASA_LAYOUT_AND_STYLE_IDS = ((1, 1), (2, 2), (4, 4), (6, 9), (7, 10))
# Horizons of the 24 atomic RoboCasa tasks in Cosmos Policy's evaluation.
ROBOCASA_MAX_STEPS = {
    **dict.fromkeys(
        ["PnPCounterToCab", "PnPCabToCounter", "PnPSinkToCounter", "PnPMicrowaveToCounter", "PnPCounterToStove",
         "PnPStoveToCounter", "OpenSingleDoor", "CloseSingleDoor", "OpenDrawer", "CloseDrawer", "TurnOnStove",
         "TurnOffStove", "TurnOnSinkFaucet", "TurnOffSinkFaucet", "TurnSinkSpout", "TurnOnMicrowave",
         "TurnOffMicrowave"],
        500,
    ),
    "PnPCounterToSink": 700, "PnPCounterToMicrowave": 600, "OpenDoubleDoor": 1000, "CloseDoubleDoor": 700,
    "CoffeeSetupMug": 600, "CoffeeServeMug": 600, "CoffeePressButton": 300,
}


class _DropControllerNotes(logging.Filter):
    """robosuite logs ~6 lines per env build about controller parts a one-arm Panda lacks; they are expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "but the robot does not have this component" not in msg and "Loading controller configuration" not in msg


def _quiet_robosuite_logger() -> None:
    from robosuite.utils.log_utils import ROBOSUITE_DEFAULT_LOGGER

    if not any(isinstance(f, _DropControllerNotes) for f in ROBOSUITE_DEFAULT_LOGGER.filters):
        ROBOSUITE_DEFAULT_LOGGER.addFilter(_DropControllerNotes())


def apply_fast_render(sim: Any) -> None:
    """Shadows, reflections and MSAA off for robosuite's offscreen context of ``sim`` (a no-op if already done)."""
    import mujoco

    ctx = sim._render_context_offscreen
    if ctx is None or getattr(ctx, "_cosmos_lit_fast", False):
        return
    ctx.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    # The sample count is read when the GL buffers are made: set it, then rebuild them.
    sim.model._model.vis.quality.offsamples = 0
    ctx.gl_ctx.make_current()
    ctx.con.free()
    ctx._set_mujoco_context_and_buffers()
    ctx._cosmos_lit_fast = True


@register("env", "robosuite")
class RobosuiteEnv:
    """A robosuite 1.5 manipulation task with one Panda arm.

    Args:
        env_name: robosuite environment, e.g. ``Lift`` or ``Stack``.
        robot: robot name (``Panda``).
        cameras: camera names, in the order the model uses.
        image_size: square render side in pixels.
        max_steps: steps per episode; ``None`` takes 300 (Lift) / 400 (Stack, others).
        fast_render: shadows, reflections and MSAA off (see module docstring).
        control_freq: control rate in Hz.
        instruction: task text; ``None`` takes the built-in one for Lift / Stack.
    """

    def __init__(
        self,
        env_name: str = "Lift",
        robot: str = "Panda",
        cameras: tuple[str, ...] | list[str] = ("robot0_eye_in_hand", "agentview"),
        image_size: int = 224,
        max_steps: int | None = None,
        fast_render: bool = False,
        control_freq: int = 20,
        instruction: str | None = None,
    ):
        if not cameras:
            raise ConfigError("env.cameras: at least one camera is required")
        if int(image_size) < 8:
            raise ConfigError(f"env.image_size: expected a side of at least 8 pixels, got {image_size}")
        self.env_name = env_name
        self.robot = robot
        self.cameras = tuple(cameras)
        self.image_size = int(image_size)
        self.fast_render = bool(fast_render)
        self.action_dim = ARM_ACTION_DIM
        self.max_steps = int(max_steps) if max_steps is not None else self.default_max_steps(self.env_name)
        self._instruction = instruction
        self._steps = 0
        self._last: dict[str, Any] | None = None
        ensure_gl_backend()
        try:
            import robosuite
        except ImportError as e:
            raise ImportError(f"robosuite is not installed ({e}); run `bash scripts/setup.sh` (extra [sim])") from None
        self._robosuite = robosuite
        _quiet_robosuite_logger()
        self._env = self._make(robosuite, int(control_freq))

    # -- what subclasses change ------------------------------------------------------------------------------
    @classmethod
    def default_max_steps(cls, env_name: str) -> int:
        """The episode horizon of task ``env_name`` when ``max_steps`` is not given, in env steps."""
        return DEFAULT_MAX_STEPS.get(env_name, 400)

    def _make(self, robosuite: Any, control_freq: int) -> Any:
        if self.env_name not in robosuite.ALL_ENVIRONMENTS:
            raise ConfigError(
                f"env.env_name: '{self.env_name}' is not a robosuite task (e.g. Lift, Stack); "
                "RoboCasa kitchen tasks use `name: robocasa`"
            )
        from robosuite.controllers import load_composite_controller_config

        try:
            return robosuite.make(
                self.env_name,
                robots=self.robot,
                controller_configs=load_composite_controller_config(controller="BASIC"),
                has_renderer=False,
                has_offscreen_renderer=True,
                use_camera_obs=True,
                camera_names=list(self.cameras),
                camera_heights=self.image_size,
                camera_widths=self.image_size,
                control_freq=control_freq,
                horizon=self.max_steps,
                ignore_done=True,  # the episode length is ours; robosuite must not refuse steps past its horizon
            )
        except ValueError as e:  # robosuite's message for an unknown camera names only the observable
            if "_image is invalid" not in str(e):
                raise
            raise ConfigError(
                f"env.cameras: {list(self.cameras)} names a camera that {self.env_name} does not have ({e}); "
                f"robosuite scenes have e.g. {', '.join(ROBOSUITE_CAMERAS)}"
            ) from None

    def _env_action(self, action: np.ndarray) -> np.ndarray:
        return action

    @property
    def instruction(self) -> str:
        return self._instruction or INSTRUCTIONS.get(self.env_name, self.env_name)

    # -- SimEnv ----------------------------------------------------------------------------------------------
    def _observation(self, raw: dict[str, np.ndarray]) -> dict[str, Any]:
        flip = self._robosuite.macros.IMAGE_CONVENTION == "opengl"
        images = {c: camera_image(raw[f"{c}_image"], flip=flip, jpeg=False) for c in self.cameras}
        obs = {"images": images, "proprio": robot_state(raw), "instruction": self.instruction}
        self._last = obs
        return obs

    def reset(self, seed: int) -> dict[str, Any]:
        """New episode; the same ``seed`` gives the same object sizes, placements and initial arm pose."""
        # Re-seed in place: the placement sampler and the objects hold references to this same generator.
        self._env.rng.bit_generator.state = np.random.default_rng(int(seed)).bit_generator.state
        raw = self._env.reset()
        if self.fast_render:
            # A hard reset builds a new sim and render context, so the settings are applied after every reset.
            apply_fast_render(self._env.sim)
            raw = self._env._get_observations(force_update=True)
        self._steps = 0
        return self._observation(raw)

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
        """Apply one (7,) action; done when the task succeeds or ``max_steps`` steps have run."""
        if self._last is None:
            raise RuntimeError(f"{type(self).__name__}.step called before reset")
        a = check_action(action, self.action_dim, f"{type(self).__name__} {self.env_name}")
        raw, reward, _, _ = self._env.step(self._env_action(a))
        self._steps += 1
        success = bool(self._env._check_success())
        done = success or self._steps >= self.max_steps
        return self._observation(raw), float(reward), done, {"success": success, "steps": self._steps}

    def render(self) -> np.ndarray:
        """The cameras of the latest observation side by side: (H, W * n_cameras, 3) uint8."""
        if self._last is None:
            raise RuntimeError(f"{type(self).__name__}.render called before reset")
        return hstack_frames([self._last["images"][c] for c in self.cameras])

    def close(self) -> None:
        env, self._env = getattr(self, "_env", None), None
        if env is not None:
            env.close()


@register("env", "robocasa")
class RoboCasaEnv(RobosuiteEnv):
    """A RoboCasa kitchen task (needs ``robocasa`` and its assets installed).

    Args:
        env_name: RoboCasa task, e.g. ``PnPCounterToCab``.
        robot: ``PandaOmron`` (alias ``PandaMobile``).
        cameras: default left / right agentview + eye in hand.
        image_size: square render side (Cosmos Policy: 224).
        max_steps: ``None`` takes the task's horizon from Cosmos Policy's evaluation (300..1000).
        layout_and_style_ids: kitchen (layout, style) pairs sampled from.
        obj_instance_split: object split ("B" = held-out instances in Cosmos' evaluation).
        controller: robosuite composite controller name or JSON path; ``None`` = the robot's default.
    """

    def __init__(
        self,
        env_name: str = "PnPCounterToCab",
        robot: str = "PandaOmron",
        cameras: tuple[str, ...] | list[str] = ROBOCASA_CAMERAS,
        image_size: int = 224,
        max_steps: int | None = None,
        fast_render: bool = False,
        control_freq: int = 20,
        instruction: str | None = None,
        layout_and_style_ids: Any = ROBOCASA_LAYOUT_AND_STYLE_IDS,
        obj_instance_split: str | None = "B",
        controller: str | None = None,
    ):
        self.layout_and_style_ids = tuple(tuple(int(v) for v in pair) for pair in layout_and_style_ids)
        self.obj_instance_split = obj_instance_split
        self.controller = controller
        super().__init__(env_name, robot, cameras, image_size, max_steps, fast_render, control_freq, instruction)

    @classmethod
    def default_max_steps(cls, env_name: str) -> int:
        return ROBOCASA_MAX_STEPS.get(env_name, 500)

    def _make(self, robosuite: Any, control_freq: int) -> Any:
        try:
            import robocasa  # noqa: F401  (registers the kitchen environments with robosuite)
        except ImportError as e:
            raise ImportError(
                f"RoboCasa is not installed ({e}): it is not on PyPI and needs ~5 GB of kitchen assets; install it "
                "from source with its assets into this venv to evaluate on RoboCasa"
            ) from None
        if self.env_name not in robosuite.ALL_ENVIRONMENTS:
            raise ConfigError(f"env.env_name: '{self.env_name}' is not a RoboCasa task (e.g. PnPCounterToCab)")
        from robosuite.controllers import load_composite_controller_config

        return robosuite.make(
            env_name=self.env_name,
            robots=self.robot,
            controller_configs=load_composite_controller_config(controller=self.controller, robot=self.robot),
            has_renderer=False,
            has_offscreen_renderer=True,
            use_camera_obs=True,
            use_object_obs=True,
            camera_depths=False,
            camera_names=list(self.cameras),
            camera_heights=self.image_size,
            camera_widths=self.image_size,
            control_freq=control_freq,
            ignore_done=True,
            obj_instance_split=self.obj_instance_split,
            generative_textures=None,
            randomize_cameras=False,
            layout_and_style_ids=self.layout_and_style_ids,
            translucent_robot=False,
        )

    def _env_action(self, action: np.ndarray) -> np.ndarray:
        full = np.concatenate([action, ROBOCASA_ACTION_PAD])
        if full.shape[0] != self._env.action_dim:
            raise ValueError(
                f"robocasa {self.env_name}: robot {self.robot} takes {self._env.action_dim}-D actions, "
                f"but 7 + {len(ROBOCASA_ACTION_PAD)} padding gives {full.shape[0]}"
            )
        return full

    @property
    def instruction(self) -> str:
        if self._instruction:
            return self._instruction
        env = getattr(self, "_env", None)
        return str(env.get_ep_meta().get("lang", self.env_name)) if env is not None else self.env_name
