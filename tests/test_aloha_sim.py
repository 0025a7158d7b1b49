"""ALOHA sim: env adapter vs gym-aloha, scripted expert, demo files (schema, cache, open-loop replay)."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

pytest.importorskip("gym_aloha")
pytest.importorskip("dm_control")

from cosmos_lit.envs.aloha import AlohaSimEnv, sample_object_poses  # noqa: E402
from cosmos_lit.datamodules.aloha_sim_demos import generate_demos  # noqa: E402
from cosmos_lit.envs.aloha_expert import replay, run_expert  # noqa: E402

pytestmark = pytest.mark.sim
SIZE = 64


@pytest.mark.parametrize("task", ["transfer_cube", "insertion"])
def test_reset_and_steps_match_gym_aloha(task):
    import gymnasium as gym
    import gym_aloha  # noqa: F401 - registers the gym ids

    gym_id = {"transfer_cube": "gym_aloha/AlohaTransferCube-v0", "insertion": "gym_aloha/AlohaInsertion-v0"}[task]
    ref = gym.make(gym_id, obs_type="pixels_agent_pos")
    env = AlohaSimEnv(task=task, cameras=("top", "angle"), image_size=SIZE)
    try:
        for seed in (3, 11):
            obs = env.reset(seed)
            ref_obs, _ = ref.reset(seed=seed)
            ref_physics = ref.unwrapped._env.physics
            np.testing.assert_array_equal(env.physics.data.qpos, ref_physics.data.qpos)
            np.testing.assert_allclose(env.object_state(), sample_object_poses(task, seed))
            assert set(obs["images"]) == {"top", "angle"}
            for image in obs["images"].values():
                assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8 and image.std() > 0
            assert obs["proprio"].shape == (14,) and obs["proprio"].dtype == np.float32
            np.testing.assert_allclose(obs["proprio"], ref_obs["agent_pos"], atol=1e-6)
            assert isinstance(obs["instruction"], str) and obs["instruction"]
            rng = np.random.default_rng(seed)
            for _ in range(3):
                action = obs["proprio"] + rng.normal(0, 0.05, 14)
                obs, reward, done, info = env.step(action)
                _, ref_reward, _, _, _ = ref.step(action)
                np.testing.assert_array_equal(env.physics.data.qpos, ref_physics.data.qpos)
                assert reward == ref_reward and info["success"] == (reward == 4) and not done
            assert env.render().shape == (SIZE, 2 * SIZE, 3)
    finally:
        env.close()
        ref.close()


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="unknown ALOHA task 'transfer'"):
        AlohaSimEnv(task="transfer")
    with pytest.raises(ValueError, match="unknown camera"):
        AlohaSimEnv(cameras=("wrist_cam",), image_size=SIZE)
    env = AlohaSimEnv(image_size=SIZE)
    try:
        env.reset(0)
        with pytest.raises(ValueError, match=r"shape \(14,\)"):
            env.step(np.zeros(7))
        with pytest.raises(ValueError, match="NaN"):
            env.step(np.full(14, np.nan))
        with pytest.raises(ValueError, match="int seed"):
            env.reset(None)
    finally:
        env.close()


@pytest.mark.parametrize("task,seeds", [("transfer_cube", (0, 17)), ("insertion", (5,))])
def test_expert_solves_task_and_actions_replay(task, seeds):
    env = AlohaSimEnv(task=task, image_size=SIZE)
    try:
        for seed in seeds:
            episode = run_expert(task, seed, env=env)
            assert episode.success, f"{task} seed {seed}: max reward {episode.rewards.max()}"
            assert episode.actions.shape == (400, 14) and episode.actions.dtype == np.float32
            assert set(np.unique(episode.actions[:, [6, 13]])) >= {0.0, 1.0}  # grippers close and open
        # open-loop replay of the recorded actions (with rendering) gives exactly the same rewards
        np.testing.assert_array_equal(replay(env, seeds[-1], episode.actions), episode.rewards)
    finally:
        env.close()


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("aloha_demos")
    paths = generate_demos(out, "transfer_cube", 2, seed0=4, image_size=SIZE, cameras=("top",), num_workers=2)
    return out, paths


def test_demo_files_have_the_act_schema(demo_dir):
    import h5py

    out, paths = demo_dir
    assert [p.name for p in paths] == ["episode_0.hdf5", "episode_1.hdf5"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seeds"] == [4, 5] and manifest["success_rate"] == 1.0
    for path, seed in zip(paths, manifest["seeds"]):
        with h5py.File(path, "r") as f:
            assert dict(f.attrs) == {
                "sim": True,
                "task": "transfer_cube",
                "seed": seed,
                "instruction": "pick up the red cube with the right arm and hand it over to the left arm",
                "success": True,
            }
            names = []
            f.visit(names.append)
            assert sorted(names) == sorted(
                ["action", "observations", "observations/images", "observations/images/top", "observations/qpos",
                 "observations/qvel"]
            )
            assert f["observations/images/top"].shape == (400, SIZE, SIZE, 3)
            assert f["observations/images/top"].dtype == np.uint8
            for key in ("observations/qpos", "observations/qvel", "action"):
                assert f[key].shape == (400, 14) and f[key].dtype == np.float32, key
    assert not list(out.glob(".*")), "temporary files left behind"


def test_demo_actions_replay_to_success_with_the_same_pixels(demo_dir):
    import h5py

    _, paths = demo_dir
    with h5py.File(paths[1], "r") as f:
        seed, actions = int(f.attrs["seed"]), f["action"][:]
        images, qpos = f["observations/images/top"][:], f["observations/qpos"][:]
    env = AlohaSimEnv(task="transfer_cube", image_size=SIZE)
    try:
        obs, success = env.reset(seed), False
        for t, action in enumerate(actions):
            np.testing.assert_array_equal(obs["images"]["top"], images[t])
            np.testing.assert_array_equal(obs["proprio"], qpos[t])
            obs, _, done, info = env.step(action)
            success |= info["success"]
            if done:
                break
        assert success and done and t < 399
    finally:
        env.close()


def test_demo_cache_is_reused_then_regenerated_on_change(demo_dir, capsys):
    out, paths = demo_dir
    stamps = {p: os.stat(p).st_mtime_ns for p in [*paths, out / "manifest.json"]}
    start = time.perf_counter()
    again = generate_demos(out, "transfer_cube", 2, seed0=4, image_size=SIZE, cameras=["top"], num_workers=2)
    assert time.perf_counter() - start < 2.0
    assert again == paths
    assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps
    assert "reusing" in capsys.readouterr().out

    fewer = generate_demos(out, "transfer_cube", 1, seed0=4, image_size=SIZE, cameras=["top"], num_workers=1)
    message = capsys.readouterr().out
    assert "regenerating" in message and "parameters changed: num_episodes" in message
    assert [p.name for p in fewer] == ["episode_0.hdf5"]
    assert sorted(p.name for p in out.glob("episode_*.hdf5")) == ["episode_0.hdf5"]
    assert json.loads((out / "manifest.json").read_text())["params"]["num_episodes"] == 1


def test_demo_writer_leaves_foreign_episode_folders_alone(tmp_path):
    (tmp_path / "episode_0.hdf5").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="not written by generate_demos"):
        generate_demos(tmp_path, "transfer_cube", 1, image_size=SIZE, num_workers=1)
    assert (tmp_path / "episode_0.hdf5").read_bytes() == b"not ours"


def test_action_noise_stays_in_the_free_space_windows_and_is_seeded():
    from cosmos_lit.envs.aloha_expert import ActionNoise, TransferCubeExpert

    noise = ActionNoise(std=0.08, steps=40)
    windows = TransferCubeExpert.noise_windows
    offsets = noise.sample(3, 400, windows)
    np.testing.assert_array_equal(offsets, noise.sample(3, 400, windows))
    assert not np.array_equal(offsets, noise.sample(4, 400, windows))
    assert offsets.shape == (400, 14)
    assert not offsets[:, [6, 13]].any()  # grippers are never perturbed
    left, right = offsets[:, 0:6], offsets[:, 7:13]
    assert not left[280:].any() and left[:280].all()  # left window (0, 280)
    unmasked = noise.sample(3, 400, {"left": [(0, 400)]})[:, 0:6]  # same process, window never ends
    np.testing.assert_allclose(left[260:280] / unmasked[260:280], np.repeat(
        np.clip((280 - np.arange(260, 280)) / 10, 0, 1)[:, None], 6, 1))  # tapers to zero over the last 10 steps
    assert not right[80:].any() and right[:80].all()  # right window (0, 80): reach above the cube
    assert 0.03 < offsets[:260, 0:6].std() < 0.15  # about the requested 0.08 rad
    for bad in ({"std": -0.1}, {"std": float("nan")}, {"steps": 0.5}):
        with pytest.raises(ValueError, match="ActionNoise"):
            ActionNoise(**bad)


def test_noisy_expert_perturbs_the_states_and_keeps_clean_labels():
    from cosmos_lit.envs.aloha_expert import ActionNoise

    env = AlohaSimEnv(task="transfer_cube", image_size=SIZE)
    try:
        clean = run_expert("transfer_cube", 2, env=env)
        noisy = run_expert("transfer_cube", 2, env=env, noise=ActionNoise(0.08, 40))
        assert clean.executed is None and noisy.success
        # the env ran label + offset; the label itself is the expert's command from the perturbed state
        offsets = noisy.executed - noisy.actions
        assert np.abs(offsets[:260, 0:6]).max() > 0.05 and np.abs(offsets[300:]).max() < 1e-6
        assert np.abs(noisy.qpos[:280, 0:6] - clean.qpos[:280, 0:6]).max() > 0.05  # the states really drift
        np.testing.assert_array_equal(replay(env, 2, noisy.executed), noisy.rewards)
        # labels stay near the clean ones (no wild joint targets from a scene that disagrees with the env)
        assert np.abs(noisy.actions - clean.actions).max() < 0.3
    finally:
        env.close()


def test_noisy_demos_are_recorded_with_their_executed_actions(tmp_path):
    import h5py

    (path,) = generate_demos(tmp_path, "transfer_cube", 1, seed0=2, image_size=SIZE, num_workers=2,
                             noise_std=0.08, noise_steps=40)
    params = json.loads((tmp_path / "manifest.json").read_text())["params"]
    assert params["noise_std"] == 0.08 and params["noise_steps"] == 40.0
    assert params["noise_windows"] == {"right": [[0, 80]], "left": [[0, 280]]}
    with h5py.File(path, "r") as f:
        assert f["executed_action"].shape == f["action"].shape == (400, 14)
        assert not np.array_equal(f["executed_action"][:], f["action"][:])


def test_gliding_left_arm_never_stands_still_before_the_take():
    from cosmos_lit.envs.aloha_expert import TransferCubeExpert, make_expert

    env = AlohaSimEnv(task="transfer_cube", image_size=SIZE)
    try:
        wait = run_expert("transfer_cube", 3, env=env)
        glide = run_expert("transfer_cube", 3, env=env, expert=make_expert("transfer_cube", {"left_approach": "glide"}))
        assert wait.success and glide.success
        # left-arm joint motion per step (rad, summed over joints), steps 150-230: "wait" holds its pose (only the
        # position servo's slow settling moves it: ~0.002), "glide" keeps travelling (~0.009)
        speed = lambda ep: np.abs(np.diff(ep.qpos[150:230, 0:6], axis=0)).sum(1)  # noqa: E731
        assert speed(glide).min() > 0.005 > speed(wait).max()
        np.testing.assert_array_equal(replay(env, 3, glide.actions), glide.rewards)
    finally:
        env.close()
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['left_aproach'\]; it accepts"):
        make_expert("transfer_cube", {"left_aproach": "glide"})
    with pytest.raises(ValueError, match="left_approach: expected one of"):
        TransferCubeExpert(left_approach="slide")


def test_expert_options_are_recorded_in_the_manifest(tmp_path):
    generate_demos(tmp_path, "transfer_cube", 1, seed0=2, image_size=SIZE, num_workers=2,  # GL stays in workers
                   expert_options={"left_approach": "glide"})
    assert json.loads((tmp_path / "manifest.json").read_text())["params"]["expert_options"] == {"left_approach": "glide"}
    options = {"left_approach": "glide", "noise_arms": ["right"]}
    generate_demos(tmp_path / "dart", "transfer_cube", 1, seed0=2, image_size=SIZE, num_workers=2, noise_std=0.08,
                   expert_options=options)
    params = json.loads((tmp_path / "dart" / "manifest.json").read_text())["params"]
    assert params["expert_options"] == options and params["noise_windows"] == {"right": [[0, 80]]}
    # the command line spells the arm list as a string: same expert, so the folder is reused, not regenerated
    before = (tmp_path / "dart" / "episode_0.hdf5").stat().st_mtime_ns
    generate_demos(tmp_path / "dart", "transfer_cube", 1, seed0=2, image_size=SIZE, num_workers=2, noise_std=0.08,
                   expert_options={"left_approach": "glide", "noise_arms": "right"})
    assert (tmp_path / "dart" / "episode_0.hdf5").stat().st_mtime_ns == before


def test_noise_can_be_limited_to_one_arm():
    from cosmos_lit.envs.aloha_expert import ActionNoise, make_expert

    expert = make_expert("transfer_cube", {"left_approach": "glide", "noise_arms": ["right"]})
    assert expert.noise_windows == {"right": [(0, 80)]}
    ep = run_expert("transfer_cube", 2, expert=expert, noise=ActionNoise(0.08, 40))
    offsets = ep.executed - ep.actions
    assert ep.success and np.abs(offsets[:, 7:13]).max() > 0.05 and np.abs(offsets[:, 0:6]).max() == 0.0
    assert make_expert("insertion", {"noise_arms": "left"}).noise_windows == {"left": [(0, 90)]}
    with pytest.raises(ValueError, match=r"noise_arms: expected arms among \('left', 'right'\), got \['rigth'\]"):
        make_expert("transfer_cube", {"noise_arms": ["rigth"]})
