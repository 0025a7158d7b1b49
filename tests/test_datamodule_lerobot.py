"""LeRobotDataset DataModule on datasets in the layouts lerobot writes (v3.0 and v2.1; H.264 and AV1 videos,
embedded PNG image features) and rollouts from ``next.success``; bad input: tests/test_bad_inputs.py."""

from __future__ import annotations

import functools
import os
import sys

import numpy as np
import pytest
import torch

from cosmos_lit.layout import LatentLayout
from cosmos_lit.registry import ConfigError
from cosmos_lit.video import DECORD_AVAILABLE

sys.path.insert(0, os.path.dirname(__file__))
import fixtures_writers as fw  # noqa: E402
from helpers import level, make_datamodule, sample_at  # noqa: E402

S = 32
TASKS = ["pick up the cube", "pick up the cube", "put the cube in the box"]
LENGTHS = (12, 15, 13)

make_dm = functools.partial(make_datamodule, "lerobot", image_size=S)


def write(root, **kw):
    eps = [fw.lerobot_episode(n, i) for i, n in enumerate(LENGTHS)]
    fw.write_lerobot_dataset(str(root), eps, TASKS, **kw)
    return eps


VARIANTS = {
    "v3.0-h264": dict(version="v3.0"),
    "v3.0-av1": dict(version="v3.0", codec="libsvtav1"),
    "v3.0-image": dict(version="v3.0", storage="image"),
    "v2.1-h264": dict(version="v2.1"),
    "v2.1-image": dict(version="v2.1", storage="image"),
}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot")
    out = {}
    for name, kw in VARIANTS.items():
        eps = write(root / name, **kw)
        out[name] = root / name
    return out, eps


@pytest.mark.parametrize("name", list(VARIANTS))
def test_features_to_spec_and_frames(datasets, name):
    dirs, eps = datasets
    dm = make_dm(dirs[name])
    dm.setup("fit")
    spec = dm.spec
    assert spec.cameras == ("observation.images.wrist", "observation.images.front")  # info.json order
    assert (spec.proprio_dim, spec.action_dim, spec.fps, spec.chunk_size) == (6, 6, 10.0, 16)
    assert LatentLayout.from_spec(spec).num_frames == 9
    assert dm.instructions == ["pick up the cube", "put the cube in the box"]
    assert [dm.episodes[i].key for i in range(3)] == ["episode_index=0", "episode_index=1", "episode_index=2"]
    if "av1" in name:
        assert dm.video_backend == "pyav"
    t = 3
    s = sample_at(dm.train_dataset(), 1, t)  # episode 1: frames after episode 0's in a v3 video file
    future = min(t + 16, LENGTHS[1] - 1)
    tol = 2.0 if "image" in name else 5.0
    for k, (step, cam) in enumerate([(t, 0), (t, 1), (future, 0), (future, 1)]):
        assert abs(level(s["images"][k, 0]) - fw.t_level(step)) < tol, (k, level(s["images"][k, 0]))
        assert abs(level(s["images"][k, 2]) - fw.cam_level(cam)) < tol
        assert level(s["images"][k, 1, : S // 4]) > 180
    stats = dm.statistics
    lo, hi = np.array(stats["actions_min"]), np.array(stats["actions_max"])
    np.testing.assert_allclose(lo, np.concatenate([e["action"] for e in eps]).min(0), atol=1e-6)
    expect = 2 * (eps[1]["action"][t : t + 16] - lo) / (hi - lo) - 1
    np.testing.assert_allclose(s["actions"][: len(expect)].numpy(), expect, atol=1e-5)
    assert s["instruction"] == "pick up the cube"
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (2, 4, 3, S, S) and batch["proprio"].shape == (2, 6)
    assert batch["actions"].shape == (2, 16, 6)


def test_camera_selection_subset_and_order(datasets):
    dirs, _ = datasets
    dm = make_dm(dirs["v3.0-h264"], cameras=["front", "observation.images.wrist"], episodes=[0, 2],
                 statistics_path=str(dirs["v3.0-h264"] / "sub_stats.json"))
    dm.setup("fit")
    assert dm.spec.cameras == ("front", "observation.images.wrist")
    assert len(dm.episodes) == 2 and dm.episodes[1].key == "episode_index=2"
    s = sample_at(dm.train_dataset(), 1, 2)
    assert abs(level(s["images"][0, 2]) - fw.cam_level(1)) < 5 and abs(level(s["images"][1, 2]) - fw.cam_level(0)) < 5
    assert s["instruction"] == "put the cube in the box"
    with pytest.raises(ConfigError, match="'top' is not an image/video feature.*observation.images.wrist"):
        make_dm(dirs["v3.0-h264"], cameras=["top"]).setup("fit")
    with pytest.raises(ConfigError, match="episode 7"):
        make_dm(dirs["v3.0-h264"], episodes=[0, 7]).setup("fit")


@pytest.mark.skipif(not DECORD_AVAILABLE, reason="decord not installed")
def test_decord_and_pyav_give_the_same_frames(datasets):
    dirs, _ = datasets
    images = []
    for backend in ("decord", "pyav"):
        dm = make_dm(dirs["v3.0-h264"], video_backend=backend)
        dm.setup("fit")
        images.append(sample_at(dm.train_dataset(), 2, 5)["images"])
    assert torch.allclose(images[0], images[1], atol=2 / 255)


def test_rollouts_from_next_success(tmp_path):
    write(tmp_path / "demos")
    eps = [fw.lerobot_episode(10, 20 + i) for i in range(2)]
    fw.write_lerobot_dataset(str(tmp_path / "roll"), eps, ["pick up the cube"] * 2, episode_success=[True, False])
    dm = make_dm(tmp_path / "demos", rollout_dir=str(tmp_path / "roll"))
    dm.setup("fit")
    rewards = [info.reward for info in dm._episodes]
    assert rewards == [1.0, 1.0, 1.0, 1.0, 0.0]
    ds = dm.train_dataset()
    assert ds.counts[1] > 0 and ds.counts[2] > 0
    s = sample_at(ds, 4, 0)
    assert int(s["sample_type"]) in (1, 2) and s["value"].item() == pytest.approx(-1.0)
    # without any success information a rollout dataset is an error naming the episode
    fw.write_lerobot_dataset(str(tmp_path / "roll2"), eps, ["pick up the cube"] * 2)
    with pytest.raises(ValueError, match="episode_index=0.*success"):
        make_dm(tmp_path / "demos", rollout_dir=str(tmp_path / "roll2")).setup("fit")


# Bad input (missing folder or info.json, broken metadata, unknown features, length mismatch, missing / corrupt video,
# corrupt PNG): tests/test_bad_inputs.py
