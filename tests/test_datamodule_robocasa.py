"""RoboCasa DataModule on files in the real schemas: human v0.1 robomimic (128², upside down, no robot_states) and
Cosmos regenerated (224², upright, raw and JPEG), rollouts with three cameras, bad input; and the primary configs
(composition, missing-data error, a tiny CPU run)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from cosmos_lit.datamodules.base import STATISTICS_FILE
from cosmos_lit.layout import POLICY, LatentLayout
from cosmos_lit.registry import ConfigError

sys.path.insert(0, os.path.dirname(__file__))
import fixtures_writers as fw  # noqa: E402
from helpers import level, make_datamodule, sample_at, setup_error  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = 32
LANG = "pick the apple from the counter and place it in the cabinet"

make_dm = functools.partial(make_datamodule, "robocasa", image_size=S)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("robocasa")
    eps = [fw.robocasa_episode(20, 1), fw.robocasa_episode(24, 2)]
    out = {}
    for name, layout, jpeg in (("human", "human", False), ("cosmos_raw", "cosmos", False),
                               ("cosmos_jpeg", "cosmos", True)):
        fw.write_robocasa_demos(str(root / name / "PnPCounterToCab" / "demo.hdf5"), eps, layout=layout, jpeg=jpeg)
        out[name] = root / name
    return out, eps


@pytest.mark.parametrize("name", ["human", "cosmos_raw", "cosmos_jpeg"])
def test_batch_contract_and_eleven_latent_frames(layouts, name):
    dirs, _ = layouts
    dm = make_dm(dirs[name], augment=True)
    dm.setup("fit")
    assert dm.spec.cameras == ("robot0_eye_in_hand", "robot0_agentview_left", "robot0_agentview_right")
    assert (dm.spec.proprio_dim, dm.spec.action_dim, dm.spec.chunk_size, dm.spec.gamma) == (9, 7, 32, 0.99)
    assert LatentLayout.from_spec(dm.spec).num_frames == 11
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (2, 6, 3, S, S)
    assert batch["actions"].shape == (2, 32, 7) and batch["proprio"].shape == (2, 9)
    assert batch["value"].shape == (2,) and batch["sample_type"].tolist() == [POLICY, POLICY]
    assert batch["instruction"] == [LANG, LANG]
    assert len(json.loads((dirs[name] / STATISTICS_FILE).read_text())["actions_max"]) == 7


@pytest.mark.parametrize("name", ["human", "cosmos_raw", "cosmos_jpeg"])
def test_frames_vectors_and_orientation(layouts, name):
    dirs, eps = layouts
    dm = make_dm(dirs[name])
    dm.setup("fit")
    t = 5
    s = sample_at(dm.train_dataset(), 1, t)
    future = min(t + 32, 24 - 1)
    tol = 4.0 if name == "cosmos_jpeg" else 1.5
    steps = [t] * 3 + [future] * 3
    for k in range(6):
        assert abs(level(s["images"][k, 0]) - fw.t_level(steps[k])) < tol
        assert abs(level(s["images"][k, 2]) - fw.cam_level(k % 3)) < tol  # wrist, left, right
        assert level(s["images"][k, 1, : S // 4]) > 180 and level(s["images"][k, 1, -S // 4 :]) < 70
    # the model's action is the first 7 of the 12 dims; proprio = robot_states (or built from robot0_* obs)
    stats = dm.statistics
    lo, hi = np.array(stats["actions_min"]), np.array(stats["actions_max"])
    both = np.concatenate([e["actions"][:, :7] for e in eps])
    np.testing.assert_allclose(lo, both.min(0), atol=1e-6)
    span = np.where(hi - lo < 1e-8, 1.0, hi - lo)
    expect = np.where(hi - lo < 1e-8, 0.0, 2 * (eps[1]["actions"][t : t + 32, :7] - lo) / span - 1)
    expect = np.concatenate([expect, np.repeat(expect[-1:], 32 - len(expect), 0)])
    np.testing.assert_allclose(s["actions"].numpy(), expect, atol=1e-5)
    states = np.concatenate([e["robot_states"] for e in eps])
    np.testing.assert_allclose(stats["proprio_max"], states.max(0), atol=1e-6)


def test_rollouts_with_three_cameras(tmp_path):
    fw.write_robocasa_demos(str(tmp_path / "demos" / "a.hdf5"), [fw.robocasa_episode(12, 0)], jpeg=True)
    for i, ok in enumerate((True, False)):
        ep = fw.robocasa_episode(10, 5 + i)
        fw.write_cosmos_rollout(str(tmp_path / "roll" / fw.robocasa_rollout_name("PnPCounterToCab", i, ok)),
                                ep["actions"], ep["robot_states"], ok, LANG,
                                cameras=("wrist", "primary", "secondary"), size=224)
    dm = make_dm(tmp_path / "demos", rollout_dir=str(tmp_path / "roll"))
    dm.setup("fit")
    ds = dm.train_dataset()
    assert ds.counts == (20, 10, 10)  # 12 demo steps oversampled to 50 %
    e = next(i for i, r in enumerate(dm.episodes) if r.rollout and "success=False" in r.path)
    s = sample_at(ds, e, 3)
    assert int(s["sample_type"]) in (1, 2) and s["value"].item() == pytest.approx(-1.0)
    for k in range(3):  # wrist_images, primary_images (left), secondary_images (right)
        assert abs(level(s["images"][k, 2]) - fw.cam_level(k)) < 4
    assert s["actions"].shape == (32, 7)


def test_instruction_from_ep_meta_when_no_task_description(tmp_path):
    path = fw.write_robocasa_demos(str(tmp_path / "d" / "a.hdf5"), [fw.robocasa_episode(8, 0)], language="open the drawer")
    with h5py.File(path, "r+") as f:
        del f["data/demo_0"].attrs["task_description"]
        f["data/demo_0"].attrs["ep_meta"] = json.dumps({"lang": "close the drawer", "layout_id": 2})
    dm = make_dm(tmp_path / "d")
    dm.setup("fit")
    assert dm.instructions == ["close the drawer"]


def test_human_files_masks_and_orientation_option(tmp_path):
    """The robomimic machinery RoboCasa shares: the files' mask/train / mask/valid are the split, and
    data.image_orientation overrides the assumed upside-down *_image frames (here stored upright)."""
    path = fw.write_robocasa_demos(str(tmp_path / "d" / "x.hdf5"), [fw.robocasa_episode(10, s) for s in range(3)],
                                   layout="human")
    with h5py.File(path, "r+") as f:
        del f["mask/train"]
        f.create_dataset("mask/train", data=np.array([b"demo_0", b"demo_2"]))
        f.create_dataset("mask/valid", data=np.array([b"demo_1"]))
        for cam in fw.ROBOCASA_CAMS:
            ds = f[f"data/demo_0/obs/{cam}_image"]
            ds[...] = ds[()][:, ::-1]  # now upright
    dm = make_dm(tmp_path / "d", val_fraction=0.5)
    dm.setup("fit")
    keys = [r.key for r in dm.episodes]
    assert [keys[i] for i in dm.val_episodes] == ["data/demo_1"]
    assert [keys[i] for i in dm.train_episodes] == ["data/demo_0", "data/demo_2"]
    s = sample_at(dm.train_dataset(), 0, 2)
    assert level(s["images"][0, 1, : S // 4]) < 70  # upright frames taken as upside down: flipped
    dm = make_dm(tmp_path / "d", image_orientation="upright", statistics_path=str(tmp_path / "s.json"))
    dm.setup("fit")
    s = sample_at(dm.train_dataset(), 0, 2)
    assert level(s["images"][0, 1, : S // 4]) > 180


_error = functools.partial(setup_error, make_dm)


def test_bad_input_errors(tmp_path):
    ep = fw.robocasa_episode(8, 0)
    ep["actions"] = ep["actions"][:, :5]
    path = fw.write_robocasa_demos(str(tmp_path / "a" / "x.hdf5"), [fw.robocasa_episode(8, 1), ep])
    msg = _error(tmp_path / "a")
    assert path in msg and "data/demo_1" in msg and "'actions'" in msg and "5 dims" in msg and "12-D" in msg

    path = fw.write_robocasa_demos(str(tmp_path / "b" / "x.hdf5"), [fw.robocasa_episode(8, 1)], layout="human",
                                   skip=["obs/robot0_eef_quat"])
    msg = _error(tmp_path / "b")
    assert path in msg and "data/demo_0" in msg and "robot_states" in msg and "obs/robot0_eef_quat" in msg

    path = fw.write_robocasa_demos(str(tmp_path / "c" / "x.hdf5"), [fw.robocasa_episode(8, 1)],
                                   skip=["obs/robot0_agentview_right_rgb"])
    msg = _error(tmp_path / "c")
    assert path in msg and "obs/robot0_agentview_right_rgb" in msg and "robot0_agentview_right" in msg

    path = fw.write_robocasa_demos(str(tmp_path / "d" / "x.hdf5"), [fw.robocasa_episode(1, 1)])
    msg = _error(tmp_path / "d")
    assert path in msg and "data/demo_0" in msg and "1 step" in msg

    with h5py.File(tmp_path / "e.hdf5", "w") as f:
        f.create_dataset("primary_images", data=np.zeros((2, 4, 4, 3), np.uint8))
    os.makedirs(tmp_path / "e")
    os.replace(tmp_path / "e.hdf5", tmp_path / "e" / "e.hdf5")
    msg = _error(tmp_path / "e")
    assert "e.hdf5" in msg and "'data'" in msg

    fw.write_robocasa_demos(str(tmp_path / "f" / "x.hdf5"), [fw.robocasa_episode(8, 1)])
    (tmp_path / "f" / STATISTICS_FILE).write_text(json.dumps(
        {f"{g}_{s}": [0.0] * (12 if g == "actions" else 9) for g in ("actions", "proprio")
         for s in ("min", "max", "mean", "std", "median")}))
    msg = _error(tmp_path / "f", statistics_path=str(tmp_path / "f" / STATISTICS_FILE))  # named: checked, not rewritten
    assert str(tmp_path / "f" / STATISTICS_FILE) in msg and "actions_min" in msg and "12 values" in msg

    with pytest.raises(ConfigError, match="unknown RoboCasa camera"):
        make_dm(tmp_path / "f", cameras=["robot0_eye_in_hand", "robot0_agentview_center"])


def test_corrupt_jpeg(tmp_path):
    path = fw.write_robocasa_demos(str(tmp_path / "a" / "x.hdf5"), [fw.robocasa_episode(8, 0)], jpeg=True)
    with h5py.File(path, "r+") as f:
        f["data/demo_0/obs/robot0_eye_in_hand_rgb_jpeg"][2] = np.frombuffer(b"garbage", np.uint8)
    dm = make_dm(tmp_path / "a")
    dm.setup("fit")
    with pytest.raises(ValueError) as info:
        sample_at(dm.train_dataset(), 0, 2)
    msg = str(info.value)
    assert path in msg and "data/demo_0" in msg and "robot0_eye_in_hand_rgb_jpeg" in msg and "frame 2" in msg


# ------------------------------------------------------------------------------------------------ primary configs


def _cli(args, cwd, env_extra=None, timeout=180):
    env = {k: v for k, v in os.environ.items() if k not in ("COSMOS_DATA", "COSMOS_LIT_RUN_DIR", "COSMOS_LIT_DEBUG")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "cosmos_lit", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def test_fit_without_data_exits_2_with_one_clear_line(tmp_path):
    out = _cli(["fit", "--config", os.path.join(REPO, "configs", "robocasa.yaml")], cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr
    line = errors[0]
    assert "RoboCasa-Cosmos-Policy/success_only" in line and "data.data_dir=" in line and "COSMOS_DATA" in line
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("config", ["libero", "robocasa", "aloha"])
def test_primary_configs_compose(config):
    out = _cli(["fit", "--config", os.path.join(REPO, "configs", f"{config}.yaml"), "--print-config"], cwd=REPO)
    assert out.returncode == 0, out.stderr
    for text in ("cosmos_predict2_2b", "wan2.1", "t5_cache", "bf16-mixed", "task=cosmos_policy"):
        assert text in out.stdout, (config, text)
    batch = {"libero": 30, "robocasa": 25, "aloha": 25}[config]
    assert f"batch_size: {batch}" in out.stdout


@pytest.mark.parametrize("config", ["libero", "robocasa", "aloha"])
def test_paper_configs_train_with_the_official_optimizer(config):
    """The official recipe (AdamW 1e-4, wd 0.1, betas 0.9/0.99; warm-up 1000 and decay at 30K, ALOHA 2000 / 20K)."""
    from cosmos_lit.config import compose, resolve
    from cosmos_lit.tasks.post_training import OptimConfig

    cfg, _ = compose(os.path.join(REPO, "configs", f"{config}.yaml"), [])
    optim = OptimConfig(**resolve(cfg)["task"].get("optim", {}))
    schedule = (2000, 20000) if config == "aloha" else (1000, 30000)
    assert (optim.lr, optim.weight_decay, tuple(optim.betas), optim.eps) == (1e-4, 0.1, (0.9, 0.99), 1e-8)
    assert (optim.warmup_steps, optim.decay_steps, optim.decay_to, optim.tail) == (*schedule, 0.3, 0.06)


def _tiny_overrides(config: str) -> list[str]:
    """The override line documented in the config's header comment."""
    with open(os.path.join(REPO, "configs", f"{config}.yaml")) as fh:
        header = [line.lstrip("#").strip() for line in fh if line.startswith("#")]
    start = next(i for i, line in enumerate(header) if "model/backbone=cosmos_predict2_tiny" in line)
    words = " ".join(line.rstrip("\\").strip() for line in header[start : start + 3]).split()
    return [w.strip("'") for w in words[words.index("fit") + 1 :]]


@pytest.mark.slow
def test_robocasa_tiny_override_line_trains_on_cpu(tmp_path):
    data = tmp_path / "data" / "RoboCasa-Cosmos-Policy"
    fw.write_robocasa_demos(str(data / "success_only" / "a.hdf5"), [fw.robocasa_episode(16, s) for s in range(3)],
                            jpeg=True, size=64)
    for i, ok in enumerate((True, False)):
        ep = fw.robocasa_episode(12, 7 + i)
        fw.write_cosmos_rollout(str(data / "all_episodes" / fw.robocasa_rollout_name("x", i, ok)), ep["actions"],
                                ep["robot_states"], ok, LANG, cameras=("wrist", "primary", "secondary"), size=64)
    overrides = _tiny_overrides("robocasa")
    assert "trainer=cpu" in overrides and "model/text_encoder=hash" in overrides
    overrides = [o for o in overrides if not o.startswith(("trainer.max_steps", "trainer.val_check_interval"))]
    out = _cli(["--config", os.path.join(REPO, "configs", "robocasa.yaml"), "fit", *overrides,
                "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
                f"run_dir={tmp_path / 'run'}"], cwd=tmp_path, env_extra={"COSMOS_DATA": str(tmp_path / "data")},
               timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
