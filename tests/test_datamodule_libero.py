"""LIBERO DataModule on files in the real schemas: original LIBERO (128², upside down, raw) and Cosmos regenerated
(256², upright, raw and JPEG), rollout files, suites, no-op filtering, instructions, and bad input."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from cosmos_lit.datamodules.base import STATISTICS_FILE
from cosmos_lit.datamodules.libero import instruction_from_file_name, noop_mask
from cosmos_lit.layout import POLICY, VALUE, WORLD_MODEL, LatentLayout
from cosmos_lit.registry import ConfigError

sys.path.insert(0, os.path.dirname(__file__))
import fixtures_writers as fw  # noqa: E402
from helpers import level, make_datamodule, sample_at, setup_error  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPATIAL = "pick_up_the_black_bowl_between_the_plate_and_the_ramekin_and_place_it_on_the_plate_demo.hdf5"
LONG = "KITCHEN_SCENE3_turn_on_the_stove_and_put_the_moka_pot_on_it_demo.hdf5"
S = 32  # model image side in these tests (the pipeline is size-agnostic)

make_dm = functools.partial(make_datamodule, "libero", image_size=S, batch_size=4)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """Three datasets of the same 2 episodes (T = 20, 23): original raw, cosmos raw, cosmos JPEG."""
    root = tmp_path_factory.mktemp("libero")
    eps = [fw.libero_episode(20, 1), fw.libero_episode(23, 2)]
    out = {}
    for name, layout, jpeg in (("original", "original", False), ("cosmos_raw", "cosmos", False),
                               ("cosmos_jpeg", "cosmos", True)):
        fw.write_libero_demos(str(root / name / "libero_spatial" / SPATIAL), eps, layout=layout, jpeg=jpeg)
        out[name] = root / name
    return out, eps


@pytest.mark.parametrize("name", ["original", "cosmos_raw", "cosmos_jpeg"])
def test_batch_contract_and_spec(layouts, name):
    dirs, _ = layouts
    dm = make_dm(dirs[name], image_size=S, augment=True)
    dm.setup("fit")
    assert dm.spec.cameras == ("wrist", "primary")
    assert (dm.spec.proprio_dim, dm.spec.action_dim, dm.spec.chunk_size, dm.spec.gamma) == (9, 7, 16, 0.99)
    assert LatentLayout.from_spec(dm.spec).num_frames == 9
    batch = next(iter(dm.train_dataloader()))
    b = 4
    assert batch["images"].shape == (b, 4, 3, S, S) and batch["images"].dtype == torch.float32
    assert batch["images"].min() >= -1 and batch["images"].max() <= 1
    assert batch["proprio"].shape == (b, 9) and batch["future_proprio"].shape == (b, 9)
    assert batch["actions"].shape == (b, 16, 7) and batch["actions"].dtype == torch.float32
    assert batch["value"].shape == (b,) and batch["sample_type"].dtype == torch.int64
    assert batch["episode"].shape == (b,) and batch["t"].shape == (b,)
    assert isinstance(batch["instruction"][0], str)
    assert float(batch["actions"].abs().max()) <= 1.0 + 1e-5
    stats = json.loads((dirs[name] / STATISTICS_FILE).read_text())
    assert len(stats["actions_min"]) == 7 and len(stats["proprio_median"]) == 9


@pytest.mark.parametrize("name", ["original", "cosmos_raw", "cosmos_jpeg"])
def test_frames_upright_in_slot_order_with_future_index(layouts, name):
    dirs, eps = layouts
    dm = make_dm(dirs[name])
    dm.setup("fit")
    ds = dm.train_dataset()
    t = 10
    s = sample_at(ds, 0, t)
    future = min(t + 16, 20 - 1)
    im = s["images"]  # wrist(t), primary(t), wrist(future), primary(future)
    tol = 4.0 if name == "cosmos_jpeg" else 1.5
    for k, (step, cam) in enumerate([(t, 0), (t, 1), (future, 0), (future, 1)]):
        assert abs(level(im[k, 0]) - fw.t_level(step)) < tol, (k, level(im[k, 0]))
        assert abs(level(im[k, 2]) - fw.cam_level(cam)) < tol
        top, bottom = level(im[k, 1, : S // 4]), level(im[k, 1, -S // 4 :])
        assert top > 180 and bottom < 70, f"image {k} not upright: top {top:.0f} bottom {bottom:.0f}"
    # vectors: the stored ones, normalized with the statistics
    stats = dm.statistics
    lo, hi = np.array(stats["actions_min"]), np.array(stats["actions_max"])
    expect = 2 * (eps[0]["actions"][t : t + 16] - lo) / (hi - lo) - 1
    expect = np.concatenate([expect, np.repeat(expect[-1:], 16 - len(expect), 0)])
    np.testing.assert_allclose(s["actions"].numpy(), expect, atol=1e-5)
    plo, phi = np.array(stats["proprio_min"]), np.array(stats["proprio_max"])
    np.testing.assert_allclose(s["future_proprio"].numpy(), 2 * (eps[0]["robot_states"][future] - plo) / (phi - plo) - 1,
                               atol=1e-5)
    assert s["value"].item() == pytest.approx(2 * 0.99 ** (20 - 1 - future) - 1, abs=1e-6)


def test_flip_images_forces_orientation(layouts):
    dirs, _ = layouts
    dm = make_dm(dirs["cosmos_raw"], flip_images=True)
    dm.setup("fit")
    im = dm.train_dataset()[0]["images"]
    assert level(im[0, 1, : S // 4]) < 70 and level(im[0, 1, -S // 4 :]) > 180


def test_original_orientation_from_attrs(tmp_path):
    """macros_image_convention wins; without it an original file (problem_info) is upside down, a regenerated one
    (no attrs) upright."""
    path = fw.write_libero_demos(str(tmp_path / "a" / SPATIAL), [fw.libero_episode(6, 0)], layout="original")
    with h5py.File(path, "r+") as f:  # frames stored upright but declared opencv
        f["data/demo_0/obs/agentview_rgb"][...] = fw.frames(6, 1, 128)
        f["data/demo_0/obs/eye_in_hand_rgb"][...] = fw.frames(6, 0, 128)
        f["data"].attrs["macros_image_convention"] = "opencv"
    dm = make_dm(tmp_path / "a")
    dm.setup("fit")
    im = dm.train_dataset()[0]["images"]
    assert level(im[0, 1, : S // 4]) > 180


def test_instruction_parsing(tmp_path):
    assert instruction_from_file_name(LONG) == "turn on the stove and put the moka pot on it"
    assert instruction_from_file_name("/x/y/" + SPATIAL).startswith("pick up the black bowl between")
    assert instruction_from_file_name("LIVING_ROOM_SCENE2_put_both_the_alphabet_soup_in_the_basket_demo.hdf5") == \
        "put both the alphabet soup in the basket"
    fw.write_libero_demos(str(tmp_path / "d" / "libero_10" / LONG), [fw.libero_episode(6, 0)], layout="cosmos")
    fw.write_libero_demos(str(tmp_path / "d" / "libero_spatial" / SPATIAL), [fw.libero_episode(6, 0)],
                          layout="original", language="Pick up the black bowl.")
    dm = make_dm(tmp_path / "d")
    dm.setup("fit")
    assert dm.instructions == ["pick up the black bowl between the plate and the ramekin and place it on the plate",
                               "turn on the stove and put the moka pot on it"]
    for source in ("problem_info", "auto"):  # the BDDL's line the original file stores (the earlier default)
        dm = make_dm(tmp_path / "d", instruction_source=source, statistics_path=str(tmp_path / f"{source}.json"))
        dm.setup("fit")
        assert dm.instructions == ["Pick up the black bowl.", "turn on the stove and put the moka pot on it"]
    with pytest.raises(ConfigError, match="data.instruction_source: expected one of"):
        make_dm(tmp_path / "d", instruction_source="bddl")


# The LIBERO registry's task.language for these task names (libero.libero.benchmark, for every suite's tasks), and
# the (:language ...) line of their BDDL files, which the original demo files store in problem_info.
ENV_LANGUAGE = {
    "pick_up_the_black_bowl_between_the_plate_and_the_ramekin_and_place_it_on_the_plate":
        "pick up the black bowl between the plate and the ramekin and place it on the plate",
    "KITCHEN_SCENE3_turn_on_the_stove_and_put_the_moka_pot_on_it": "turn on the stove and put the moka pot on it",
    "KITCHEN_SCENE10_close_the_top_drawer_of_the_cabinet": "close the top drawer of the cabinet",
    "LIVING_ROOM_SCENE2_put_both_the_alphabet_soup_and_the_tomato_sauce_in_the_basket":
        "put both the alphabet soup and the tomato sauce in the basket",
}
BDDL_LANGUAGE = {
    "pick_up_the_black_bowl_between_the_plate_and_the_ramekin_and_place_it_on_the_plate":
        "Pick the akita black bowl between the plate and the ramekin and place it on the plate",
    "KITCHEN_SCENE3_turn_on_the_stove_and_put_the_moka_pot_on_it": "Turn on the stove and put the moka pot on it",
    "KITCHEN_SCENE10_close_the_top_drawer_of_the_cabinet": "Close the top drawer of the cabinet",
    "LIVING_ROOM_SCENE2_put_both_the_alphabet_soup_and_the_tomato_sauce_in_the_basket":
        "Put both the alphabet soup and the tomato sauce in the basket",
}


def fake_libero(monkeypatch, tasks: dict[str, str]) -> None:
    """A stand-in for the ``libero`` package with one suite whose registry holds ``tasks`` {name: language}: enough
    for ``LiberoEnv.__init__`` (no simulator is built)."""
    import types

    class Suite:
        def __init__(self):
            self.tasks = [types.SimpleNamespace(name=n, language=lang, problem_folder="libero_spatial",
                                                bddl_file=f"{n}.bddl") for n, lang in tasks.items()]

        def get_num_tasks(self):
            return len(self.tasks)

        def get_task(self, i):
            return self.tasks[i]

        def get_task_init_states(self, i):
            return np.zeros((2, 8))

    class OffScreenRenderEnv:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

        def close(self):
            pass

    root, pkg = types.ModuleType("libero"), types.ModuleType("libero.libero")
    envs = types.ModuleType("libero.libero.envs")
    pkg.benchmark = types.SimpleNamespace(get_benchmark_dict=lambda: {"libero_spatial": Suite})
    pkg.get_libero_path = lambda what: f"/nowhere/{what}"
    envs.OffScreenRenderEnv = OffScreenRenderEnv
    root.libero = pkg
    for name, module in (("libero", root), ("libero.libero", pkg), ("libero.libero.envs", envs)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setenv("MUJOCO_GL", os.environ.get("MUJOCO_GL", "egl"))
    monkeypatch.setenv("LIBERO_CONFIG_PATH", "/nowhere")


def test_training_instruction_is_the_envs(tmp_path, monkeypatch):
    """Original LIBERO files (problem_info with the BDDL's line, bddl_file_name, env_args) and the regenerated
    ones train with the instruction the LIBERO env gives for the task: the T5 cache's key on both sides."""
    from cosmos_lit.envs.libero import LiberoEnv
    from cosmos_lit.instructions import libero_language

    for i, task in enumerate(ENV_LANGUAGE):
        layout = "original" if i % 2 == 0 else "cosmos"
        fw.write_libero_demos(str(tmp_path / "orig" / f"{task}_demo.hdf5"), [fw.libero_episode(6, i)],
                              layout="original", language=BDDL_LANGUAGE[task])
        fw.write_libero_demos(str(tmp_path / "mixed" / f"{task}_demo.hdf5"), [fw.libero_episode(6, i)],
                              layout=layout, language=BDDL_LANGUAGE[task])
    path = str(tmp_path / "orig" / f"{next(iter(ENV_LANGUAGE))}_demo.hdf5")
    with h5py.File(path, "r") as f:  # the original schema: the BDDL's own line is what problem_info holds
        assert json.loads(f["data"].attrs["problem_info"])["language_instruction"].startswith("Pick the akita")
        assert json.loads(f["data"].attrs["env_args"])["bddl_file"].endswith(next(iter(ENV_LANGUAGE)) + ".bddl")
    for folder in ("orig", "mixed"):
        dm = make_dm(tmp_path / folder)
        dm.setup("fit")
        assert dm.instructions == sorted(ENV_LANGUAGE.values()), folder

    fake_libero(monkeypatch, ENV_LANGUAGE)
    for task_id, (task, language) in enumerate(ENV_LANGUAGE.items()):
        env = LiberoEnv(suite="libero_spatial", task_id=task_id, image_size=32)
        assert env.instruction == language == libero_language(task)
        assert env.instruction in dm.instructions


def test_task_name_comes_from_the_recorded_bddl_file(tmp_path, monkeypatch):
    """A renamed original file still trains with its task's instruction (bddl_file_name, else env_args); the
    file_name source reads the name only; a registry language that differs from the rule is a warning."""
    task = next(iter(ENV_LANGUAGE))
    path = fw.write_libero_demos(str(tmp_path / "d" / "my_copy_demo.hdf5"), [fw.libero_episode(6, 0)],
                                 layout="original", language=BDDL_LANGUAGE[task],
                                 bddl_file_name=f"chiliocosm/bddl_files/libero_spatial/{task}.bddl")
    dm = make_dm(tmp_path / "d")
    dm.setup("fit")
    assert dm.instructions == [ENV_LANGUAGE[task]]
    with h5py.File(path, "r+") as f:
        del f["data"].attrs["bddl_file_name"]
    dm = make_dm(tmp_path / "d", statistics_path=str(tmp_path / "s1.json"))
    dm.setup("fit")
    assert dm.instructions == [ENV_LANGUAGE[task]]  # from env_args["bddl_file"]
    dm = make_dm(tmp_path / "d", instruction_source="file_name", statistics_path=str(tmp_path / "s2.json"))
    dm.setup("fit")
    assert dm.instructions == ["my copy"]

    from cosmos_lit.envs.libero import LiberoEnv

    fake_libero(monkeypatch, {task: "a different sentence"})
    with pytest.warns(UserWarning, match="differs from the instruction derived from the task name"):
        env = LiberoEnv(suite="libero_spatial", task_id=0, image_size=32)
    assert env.instruction == ENV_LANGUAGE[task]


def test_noop_mask_matches_cosmos_rule():
    a = np.zeros((7, 7))
    a[:, 6] = -1
    a[2, :3] = 0.5  # moves
    a[4, 6] = 1.0  # gripper closes while still: kept
    a[5, 6] = 1.0  # still, same gripper as the previous kept step: no-op
    a[6, 0], a[6, 6] = 5e-5, 1.0  # below threshold, same gripper: no-op
    assert noop_mask(a).tolist() == [True, True, False, True, False, True, True]
    a[6, 6] = -1.0  # gripper opens again while still: kept
    assert not noop_mask(a)[6]
    b = np.zeros((3, 7))
    b[:, 6] = [1, -1, -1]  # first step still: no-op regardless of gripper; step 1 differs from no kept step
    assert noop_mask(b).tolist() == [True, True, True]


def test_noop_filtering_drops_steps_and_their_frames(tmp_path):
    ep = fw.libero_episode(14, 3)
    ep["actions"][[0, 1, 6, 7]] = 0.0
    ep["actions"][[0, 1, 6, 7], 6] = ep["actions"][[0, 0, 5, 5], 6]  # gripper unchanged -> no-ops (0: first step)
    fw.write_libero_demos(str(tmp_path / "d" / SPATIAL), [ep], layout="original")
    kept = [i for i in range(14) if i not in (0, 1, 6, 7)]
    dm = make_dm(tmp_path / "d", filter_noops=True)
    dm.setup("fit")
    info = dm._episodes[0]
    assert info.length == len(kept)
    np.testing.assert_allclose(
        dm.statistics["actions_max"], ep["actions"][kept].max(0), atol=1e-6
    )
    s = sample_at(dm.train_dataset(), 0, 4)  # step 4 = stored row kept[4] = 8; future step 9 -> row 13
    assert abs(level(s["images"][0, 0]) - fw.t_level(kept[4])) < 1.5
    assert abs(level(s["images"][2, 0]) - fw.t_level(kept[-1])) < 1.5
    unfiltered = make_dm(tmp_path / "d", statistics_path=str(tmp_path / "s2.json"))
    unfiltered.setup("fit")
    assert unfiltered._episodes[0].length == 14


def test_suites_select_folders_and_rollouts(tmp_path):
    for suite, name in (("libero_spatial_no_noops", SPATIAL), ("libero_10_no_noops", LONG)):
        fw.write_libero_demos(str(tmp_path / "demos" / suite / name), [fw.libero_episode(8, 0)], layout="cosmos",
                              jpeg=True)
    for i, suite in enumerate(("libero_10", "libero_spatial", "libero_10")):
        ep = fw.libero_episode(9, 10 + i)
        fw.write_cosmos_rollout(str(tmp_path / "roll" / fw.libero_rollout_name(suite, 0, i, True)), ep["actions"],
                                ep["robot_states"], True, "turn on the stove and put the moka pot on it")
    dm = make_dm(tmp_path / "demos", suites=["libero_10"], rollout_dir=str(tmp_path / "roll"))
    dm.setup("fit")
    refs = dm.episodes
    assert [os.path.basename(os.path.dirname(r.path)) for r in refs if not r.rollout] == ["libero_10_no_noops"]
    assert sum(r.rollout for r in refs) == 2 and all("suite=libero_10" in r.path for r in refs if r.rollout)
    with pytest.raises(FileNotFoundError, match="suite 'libero_goal'.*folders found"):
        make_dm(tmp_path / "demos", suites=["libero_goal"]).setup("fit")


def test_rollouts_feed_world_model_and_value_samples(tmp_path):
    fw.write_libero_demos(str(tmp_path / "demos" / SPATIAL), [fw.libero_episode(12, s) for s in range(3)],
                          layout="cosmos", jpeg=True)
    for i, ok in enumerate((True, False)):
        ep = fw.libero_episode(10, 20 + i)
        fw.write_cosmos_rollout(str(tmp_path / "roll" / fw.libero_rollout_name("libero_spatial", 0, i, ok)),
                                ep["actions"], ep["robot_states"], ok, "pick up the black bowl")
    dm = make_dm(tmp_path / "demos", rollout_dir=str(tmp_path / "roll"), val_fraction=0.34)
    dm.setup("fit")
    assert len(dm.val_episodes) == 1 and len(dm.train_episodes) == 2
    ds = dm.train_dataset()
    demo, succ, fail = ds.counts
    assert demo == 24 and succ == fail == 12  # 50 / 25 / 25
    types = {POLICY: 0, WORLD_MODEL: 0, VALUE: 0}
    for i in range(len(ds)):
        e, t, group = ds.locate(i)
        s = ds[i]
        types[int(s["sample_type"])] += 1
        assert (int(s["sample_type"]) == POLICY) == (group == 0)
        if group == 2:  # failure rollout: value -1 everywhere
            assert s["value"].item() == pytest.approx(-1.0)
        if group == 1:
            assert s["value"].item() == pytest.approx(2 * 0.99 ** (10 - 1 - min(t + 16, 9)) - 1)
    assert types[POLICY] == 24 and types[WORLD_MODEL] > 0 and types[VALUE] > 0
    val = dm.val_dataset()
    assert all(int(val[i]["sample_type"]) == POLICY for i in range(len(val)))
    assert "pick up the black bowl" in dm.instructions


_error = functools.partial(setup_error, make_dm)


def test_missing_key_errors_name_file_episode_key(tmp_path):
    path = fw.write_libero_demos(str(tmp_path / "a" / SPATIAL), [fw.libero_episode(8, 0), fw.libero_episode(8, 1)],
                                 layout="cosmos")
    with h5py.File(path, "r+") as f:
        del f["data/demo_1/robot_states"]
    msg = _error(tmp_path / "a")
    assert path in msg and "data/demo_1" in msg and "'robot_states'" in msg
    path = fw.write_libero_demos(str(tmp_path / "b" / SPATIAL), [fw.libero_episode(8, 0)], layout="cosmos",
                                 skip=["obs/agentview_rgb"])
    msg = _error(tmp_path / "b")
    assert path in msg and "data/demo_0" in msg and "obs/agentview_rgb_jpeg" in msg and "'primary'" in msg


def test_wrong_action_dim_and_short_episodes(tmp_path):
    ep = fw.libero_episode(8, 0)
    ep["actions"] = ep["actions"][:, :6]
    path = fw.write_libero_demos(str(tmp_path / "a" / SPATIAL), [ep], layout="cosmos")
    msg = _error(tmp_path / "a")
    assert path in msg and "data/demo_0" in msg and "'actions'" in msg and "6 dims" in msg
    for length in (1, 0):
        folder = tmp_path / f"len{length}"
        ep = fw.libero_episode(max(length, 1), 0)
        ep = {k: v[:length] for k, v in ep.items()}
        path = fw.write_libero_demos(str(folder / SPATIAL), [fw.libero_episode(8, 1), ep], layout="cosmos", jpeg=True)
        msg = _error(folder)
        assert path in msg and "data/demo_1" in msg and f"{length} step" in msg


def test_corrupt_jpeg_error_names_file_episode_key_frame(tmp_path):
    path = fw.write_libero_demos(str(tmp_path / "a" / SPATIAL), [fw.libero_episode(10, 0)], layout="cosmos", jpeg=True)
    with h5py.File(path, "r+") as f:
        f["data/demo_0/obs/agentview_rgb_jpeg"][5] = np.frombuffer(b"\xff\xd8not a jpeg at all", np.uint8)
    dm = make_dm(tmp_path / "a")
    dm.setup("fit")
    with pytest.raises(ValueError) as info:
        sample_at(dm.train_dataset(), 0, 5)
    msg = str(info.value)
    assert path in msg and "data/demo_0" in msg and "obs/agentview_rgb_jpeg" in msg and "frame 5" in msg


def test_mismatched_statistics_file(tmp_path):
    fw.write_libero_demos(str(tmp_path / "a" / SPATIAL), [fw.libero_episode(8, 0)], layout="cosmos")
    stats_path = tmp_path / "a" / STATISTICS_FILE
    bad = {f"{g}_{s}": [0.0] * (6 if g == "actions" else 9) for g in ("actions", "proprio")
           for s in ("min", "max", "mean", "std", "median")}
    stats_path.write_text(json.dumps(bad))
    msg = _error(tmp_path / "a", statistics_path=str(stats_path))  # a file the user names: checked, not rewritten
    assert str(stats_path) in msg and "actions_min" in msg


def test_rollout_without_success_and_missing_dirs(tmp_path):
    fw.write_libero_demos(str(tmp_path / "demos" / SPATIAL), [fw.libero_episode(8, 0)], layout="cosmos")
    ep = fw.libero_episode(8, 1)
    path = fw.write_cosmos_rollout(str(tmp_path / "roll" / "ep.hdf5"), ep["actions"], ep["robot_states"], True, "x")
    with h5py.File(path, "r+") as f:
        del f.attrs["success"]
    msg = _error(tmp_path / "demos", rollout_dir=str(tmp_path / "roll"))
    assert path in msg and "success" in msg
    msg = _error(tmp_path / "nowhere")
    assert "nowhere" in msg and "data.data_dir=" in msg
    msg = _error(tmp_path / "demos", rollout_dir=str(tmp_path / "no_rollouts"))
    assert "no_rollouts" in msg and "data.rollout_dir" in msg
    with pytest.raises(ConfigError, match="unknown LIBERO camera"):
        make_dm(tmp_path / "demos", cameras=["wrist", "agentview"])


def test_primary_config_composes():
    out = subprocess.run(
        [sys.executable, "-m", "cosmos_lit", "fit", "--config", os.path.join(REPO, "configs", "libero.yaml"),
         "--print-config"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    for text in ("cosmos_predict2_2b", "wan2.1", "t5_cache", "LIBERO-Cosmos-Policy/success_only", "batch_size: 30",
                 "task=cosmos_policy", "max_steps: 40000", ".venv-libero/bin/python"):
        assert text in out.stdout, text
