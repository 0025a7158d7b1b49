"""robosuite 1.5 adapter: shapes, upright images, seeded resets, a short Lift episode (runs robosuite for real)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from cosmos_lit.registry import build

pytestmark = pytest.mark.sim

if not os.environ.get("CI"):
    pytest.importorskip("robosuite", reason="robosuite not installed (bash scripts/setup.sh installs the [sim] extra)")

SIZE = 96


@pytest.fixture(scope="module")
def lift():
    env = build({"name": "robosuite", "env_name": "Lift", "image_size": SIZE, "max_steps": 12}, "env")
    yield env
    env.close()


def test_module_imports_without_simulators():
    code = "import sys, cosmos_lit.envs.robosuite; assert 'robosuite' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reset_and_step_shapes(lift):
    obs = lift.reset(seed=0)
    assert lift.cameras == ("robot0_eye_in_hand", "agentview") and lift.action_dim == 7
    assert set(obs["images"]) == set(lift.cameras)
    for image in obs["images"].values():
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    assert obs["proprio"].shape == (9,) and obs["proprio"].dtype == np.float32
    assert obs["instruction"] == "lift the red cube"
    obs, reward, done, info = lift.step(np.zeros(7))
    assert isinstance(reward, float) and done is False and info["success"] is False
    assert lift.render().shape == (SIZE, 2 * SIZE, 3)


def _red_centroid_row(image: np.ndarray) -> float:
    """Mean row of the red cube's pixels, as a fraction of the height (0 = top)."""
    r, g, b = (image[..., i].astype(int) for i in range(3))
    rows, _ = np.nonzero((r > 100) & (r > 2 * g) & (r > 2 * b))
    assert rows.size >= 4, "the red cube is not visible"
    return rows.mean() / image.shape[0]


def test_images_are_upright(lift):
    """Row 0 is the top of the picture: the cube sits where the camera model projects it (OpenCV convention)."""
    from robosuite.utils.camera_utils import get_camera_transform_matrix, project_points_from_world_to_camera

    obs = lift.reset(seed=3)  # the cube is well above the middle of the wrist view for this seed
    sim = lift._env.sim
    cube = sim.data.body_xpos[sim.model.body_name2id(lift._env.cube.root_body)]
    world_to_pixel = get_camera_transform_matrix(sim, "robot0_eye_in_hand", SIZE, SIZE)
    row = project_points_from_world_to_camera(cube[None], world_to_pixel, SIZE, SIZE)[0, 0] / SIZE
    assert abs(row - 0.5) > 0.08  # a flipped image would put the cube on the other side of the middle
    assert abs(_red_centroid_row(obs["images"]["robot0_eye_in_hand"]) - row) < 0.05
    # agentview: the white table fills the bottom of the picture, the robot and the floor the top
    gray = obs["images"]["agentview"].mean(axis=2)
    assert gray[-SIZE // 4 :].mean() > gray[: SIZE // 4].mean() + 30
    # and the adapter's frame is exactly robosuite's raw (OpenGL) frame flipped
    raw = lift._env._get_observations(force_update=True)
    np.testing.assert_array_equal(obs["images"]["agentview"], raw["agentview_image"][::-1])


def test_reset_is_reproducible(lift):
    a = lift.reset(seed=7)
    b = lift.reset(seed=7)
    c = lift.reset(seed=8)
    np.testing.assert_array_equal(a["proprio"], b["proprio"])
    for cam in lift.cameras:
        np.testing.assert_array_equal(a["images"][cam], b["images"][cam])
    assert not np.array_equal(a["images"]["agentview"], c["images"]["agentview"])


def test_short_episode_ends_at_max_steps(lift):
    start = lift.reset(seed=1)["proprio"]
    up = np.array([0, 0, 1.0, 0, 0, 0, -1])  # move the gripper up, open
    dones = []
    for _ in range(lift.max_steps):
        obs, _, done, info = lift.step(up)
        dones.append(done)
        assert info["success"] is False
    assert dones == [False] * (lift.max_steps - 1) + [True]
    assert obs["proprio"][4] > start[4] + 0.02, "eef z should rise under a +z delta action"


def test_bad_action_is_one_clear_error(lift):
    lift.reset(seed=0)
    with pytest.raises(ValueError, match=r"action must have shape \(7,\)"):
        lift.step(np.zeros(6))


def test_fast_render_switches_off_shadows_reflections_msaa():
    import mujoco

    env = build({"name": "robosuite", "env_name": "Lift", "image_size": SIZE, "fast_render": True}, "env")
    try:
        obs = env.reset(seed=0)
        ctx = env._env.sim._render_context_offscreen
        assert env._env.sim.model._model.vis.quality.offsamples == 0
        assert ctx.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] == 0 and ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] == 0
        # the same scene is still there: the cube is visible, near the middle of the agentview frame
        assert abs(_red_centroid_row(obs["images"]["agentview"]) - 0.5) < 0.3
    finally:
        env.close()


def test_unknown_task_and_missing_robocasa_are_clear():
    from cosmos_lit.registry import ConfigError

    with pytest.raises(ConfigError, match="not a robosuite task"):
        build({"name": "robosuite", "env_name": "PnPCounterToCab"}, "env")
    with pytest.raises(ConfigError, match="env.cameras: .*agentvew"):
        build({"name": "robosuite", "cameras": ["agentvew"], "image_size": 32}, "env")
    try:
        import robocasa  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="RoboCasa is not installed"):
            build({"name": "robocasa", "env_name": "PnPCounterToCab"}, "env")
