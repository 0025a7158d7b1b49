"""robomimic DataModule on files in robomimic's schema (robosuite collection + convert_robosuite.py +
dataset_states_to_obs.py): any camera of the file, the image orientation from the file or the explicit option, the
files' mask/train and mask/valid, configurable proprio keys, rollouts, and one-line errors for bad input."""

from __future__ import annotations

import functools
import os
import sys

import h5py
import numpy as np
import pytest
from omegaconf import OmegaConf

from cosmos_lit.registry import ConfigError

sys.path.insert(0, os.path.dirname(__file__))
import fixtures_writers as fw  # noqa: E402
from helpers import level, make_datamodule, sample_at, setup_error  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = 32
CAMS = ("agentview", "robot0_eye_in_hand")  # as written: frame channel 2 encodes the position in this list

make_dm = functools.partial(make_datamodule, "robomimic", image_size=S)
_error = functools.partial(setup_error, make_dm)


def episodes(n: int, length: int = 12) -> list[dict[str, np.ndarray]]:
    return [fw.libero_episode(length + i, 10 + i) for i in range(n)]  # 7-D Panda OSC actions, 9-D robot state


def write(folder, name="image.hdf5", n=2, **kw) -> str:
    return fw.write_robomimic_demos(str(folder / name), episodes(n), size=S, **kw)


def assert_upright_frames(sample, steps_and_cams, tol=1.5):
    for k, (step, cam) in enumerate(steps_and_cams):
        im = sample["images"][k]
        assert abs(level(im[0]) - fw.t_level(step)) < tol, (k, level(im[0]))
        assert abs(level(im[2]) - fw.cam_level(cam)) < tol, (k, level(im[2]))
        top, bottom = level(im[1, : S // 4]), level(im[1, -S // 4 :])
        assert top > 180 and bottom < 70, f"image {k} not upright: top {top:.0f} bottom {bottom:.0f}"


@pytest.mark.parametrize("stored, convention, option", [
    ("upright", None, "upright"),             # robomimic's conversion: records nothing, the option says upright
    ("upside_down", None, "upside_down"),     # records nothing, the option says upside down
    ("upside_down", "opengl", None),          # the file records robosuite's OpenGL convention
    ("upright", "opencv", None),              # ... or the OpenCV one
    ("upside_down", "opencv", "upside_down"),  # the option overrides a wrong record
])
def test_every_orientation_gives_the_same_upright_frames(tmp_path, stored, convention, option):
    write(tmp_path / "d", stored=stored, image_convention=convention)
    dm = make_dm(tmp_path / "d", cameras=list(CAMS), image_orientation=option)
    dm.setup("fit")
    assert dm.spec.cameras == CAMS and (dm.spec.proprio_dim, dm.spec.action_dim) == (9, 7)
    t, future = 3, min(3 + 16, 12 - 1)
    s = sample_at(dm.train_dataset(), 0, t)
    assert_upright_frames(s, [(t, 0), (t, 1), (future, 0), (future, 1)])


def test_upright_and_upside_down_files_feed_identical_images(tmp_path):
    write(tmp_path / "up", stored="upright")
    write(tmp_path / "down", stored="upside_down", image_convention="opengl")
    a = make_dm(tmp_path / "up", image_orientation="upright")
    b = make_dm(tmp_path / "down")
    a.setup("fit")
    b.setup("fit")
    sa, sb = sample_at(a.train_dataset(), 1, 5), sample_at(b.train_dataset(), 1, 5)
    assert sa["images"].shape == (4, 3, S, S)
    assert np.array_equal(sa["images"].numpy(), sb["images"].numpy())
    assert np.array_equal(sa["actions"].numpy(), sb["actions"].numpy())


def test_any_camera_of_the_file_in_the_configured_order(tmp_path):
    write(tmp_path / "d", cameras=("agentview", "robot0_eye_in_hand", "sideview"))
    dm = make_dm(tmp_path / "d", cameras=["sideview", "agentview"], image_orientation="upright")
    dm.setup("fit")
    assert dm.spec.cameras == ("sideview", "agentview")
    s = sample_at(dm.train_dataset(), 0, 2)
    assert_upright_frames(s, [(2, 2), (2, 0), (11, 2), (11, 0)])
    one = make_dm(tmp_path / "d", cameras=["agentview"], image_orientation="upright",
                  statistics_path=str(tmp_path / "s.json"))
    one.setup("fit")
    assert sample_at(one.train_dataset(), 0, 0)["images"].shape == (2, 3, S, S)


def test_missing_camera_is_one_line_naming_file_and_its_cameras(tmp_path):
    path = write(tmp_path / "d")
    msg = _error(tmp_path / "d", cameras=["robot0_eye_in_hand", "frontview"], image_orientation="upright")
    assert "\n" not in msg
    assert path in msg and "'frontview'" in msg and "obs/frontview_image" in msg
    assert "the file has cameras: agentview, robot0_eye_in_hand" in msg


def test_unrecorded_orientation_needs_the_option(tmp_path):
    path = write(tmp_path / "d")
    msg = _error(tmp_path / "d")
    assert "\n" not in msg
    assert path in msg and "does not record" in msg and "data.image_orientation" in msg
    with h5py.File(path, "r+") as f:
        f["data"].attrs["macros_image_convention"] = "sideways"
    msg = _error(tmp_path / "d")
    assert path in msg and "'macros_image_convention'" in msg and "sideways" in msg
    with pytest.raises(ConfigError, match="data.image_orientation: expected one of"):
        make_dm(tmp_path / "d", image_orientation="flipped")
    with pytest.raises(ConfigError, match="contradicts data.flip_images"):
        make_dm(tmp_path / "d", image_orientation="upright", flip_images=True)
    dm = make_dm(tmp_path / "d", flip_images=True)  # the base option still forces the orientation
    dm.setup("fit")
    im = dm.train_dataset()[0]["images"]
    assert level(im[0, 1, : S // 4]) < 70  # stored upright, flipped on purpose


def test_file_masks_are_the_split(tmp_path):
    write(tmp_path / "d", n=5, masks={"train": ["demo_0", "demo_2", "demo_3"], "valid": ["demo_4"]})
    dm = make_dm(tmp_path / "d", image_orientation="upright", val_fraction=0.4)
    dm.setup("fit")
    keys = [r.key for r in dm.episodes]
    assert keys == ["data/demo_0", "data/demo_2", "data/demo_3", "data/demo_4"]  # demo_1: in no mask, unused
    assert [keys[i] for i in dm.train_episodes] == ["data/demo_0", "data/demo_2", "data/demo_3"]
    assert [keys[i] for i in dm.val_episodes] == ["data/demo_4"]
    val = dm.val_dataset()
    assert {int(val[i]["episode"]) for i in range(len(val))} == {dm.val_episodes[0]}

    ignored = make_dm(tmp_path / "d", image_orientation="upright", val_fraction=0.4, use_file_masks=False,
                      statistics_path=str(tmp_path / "s.json"))
    ignored.setup("fit")
    assert len(ignored.episodes) == 5 and len(ignored.val_episodes) == 2  # the seeded split of all 5


def test_partial_masks(tmp_path):
    write(tmp_path / "t", n=5, masks={"train": ["demo_1", "demo_2", "demo_3", "demo_4"]})
    dm = make_dm(tmp_path / "t", image_orientation="upright", val_fraction=0.25)
    dm.setup("fit")
    keys = [r.key for r in dm.episodes]
    assert "data/demo_0" not in keys and len(keys) == 4
    assert len(dm.val_episodes) == 1 and len(dm.train_episodes) == 3  # the seeded split within mask/train

    write(tmp_path / "v", n=4, masks={"valid": ["demo_1"]})
    dm = make_dm(tmp_path / "v", image_orientation="upright", val_fraction=0.5)
    dm.setup("fit")
    keys = [r.key for r in dm.episodes]
    assert [keys[i] for i in dm.val_episodes] == ["data/demo_1"]
    assert [keys[i] for i in dm.train_episodes] == ["data/demo_0", "data/demo_2", "data/demo_3"]


def test_masked_and_unmasked_files_together(tmp_path):
    write(tmp_path / "d", name="a.hdf5", n=3, masks={"train": ["demo_0", "demo_1"], "valid": ["demo_2"]})
    write(tmp_path / "d", name="b.hdf5", n=4)
    dm = make_dm(tmp_path / "d", image_orientation="upright", val_fraction=0.25)
    dm.setup("fit")
    names = [(os.path.basename(r.path), r.key) for r in dm.episodes]
    val = [names[i] for i in dm.val_episodes]
    assert ("a.hdf5", "data/demo_2") in val and len(val) == 2  # a's mask/valid + one of b's four (seeded)
    assert sum(n[0] == "b.hdf5" for n in val) == 1
    assert sorted(dm.train_episodes + dm.val_episodes) == list(range(7))


def test_bad_masks_are_one_line_naming_file_and_demo(tmp_path):
    path = write(tmp_path / "a", n=3, masks={"train": ["demo_0", "demo_1"], "valid": ["demo_7"]})
    msg = _error(tmp_path / "a", image_orientation="upright")
    assert "\n" not in msg and path in msg and "mask/valid" in msg and "'demo_7'" in msg
    path = write(tmp_path / "b", n=3, masks={"train": ["demo_0", "demo_1"], "valid": ["demo_1"]})
    msg = _error(tmp_path / "b", image_orientation="upright")
    assert "\n" not in msg and path in msg and "'demo_1'" in msg and "both" in msg
    dm = make_dm(tmp_path / "a", image_orientation="upright", use_file_masks=False)
    dm.setup("fit")  # masks not read
    assert len(dm.episodes) == 3


def test_proprio_keys(tmp_path):
    write(tmp_path / "d")
    eps = episodes(2)
    dm = make_dm(tmp_path / "d", image_orientation="upright", proprio_keys=["robot0_eef_pos", "obs/robot0_eef_quat"])
    dm.setup("fit")
    assert dm.spec.proprio_dim == 7
    stats = dm.statistics
    both = np.concatenate([e["robot_states"][:, 2:9] for e in eps])
    np.testing.assert_allclose(stats["proprio_max"], both.max(0), atol=1e-6)
    msg = _error(tmp_path / "d", image_orientation="upright", proprio_keys=["robot0_eef_pos", "robot0_eef_vel_lin"],
                 statistics_path=str(tmp_path / "s.json"))
    assert "\n" not in msg and "data/demo_0" in msg and "'obs/robot0_eef_vel_lin'" in msg and "proprio_keys" in msg
    with pytest.raises(ConfigError, match="data.proprio_keys"):
        make_dm(tmp_path / "d", proprio_keys=[])


def test_rollouts_and_instruction(tmp_path):
    path = write(tmp_path / "demos", n=2)
    with h5py.File(path, "r+") as f:
        f["data/demo_1"].attrs["ep_meta"] = '{"lang": "lift the red cube"}'
    for i, ok in enumerate((True, False)):
        ep = fw.libero_episode(10, 30 + i)
        fw.write_cosmos_rollout(str(tmp_path / "roll" / f"episode_{i:05d}--success={ok}.hdf5"), ep["actions"],
                                ep["robot_states"], ok, "lift the red cube", cameras=("wrist", "primary"), size=S)
    dm = make_dm(tmp_path / "demos", rollout_dir=str(tmp_path / "roll"), image_orientation="upright",
                 instruction="lift the cube")
    dm.setup("fit")
    assert dm.instructions == ["lift the cube", "lift the red cube"]
    ds = dm.train_dataset()
    e = next(i for i, r in enumerate(dm.episodes) if r.rollout and "success=False" in r.path)
    s = sample_at(ds, e, 2)
    assert s["value"].item() == pytest.approx(-1.0)
    for k in range(2):  # robot0_eye_in_hand -> wrist_images (channel 2 = 0), agentview -> primary_images (1)
        assert abs(level(s["images"][k, 2]) - fw.cam_level(k)) < 4
        assert level(s["images"][k, 1, : S // 4]) > 180  # rollout frames are upright whatever the demo files say


def test_config_file_builds(tmp_path):
    write(tmp_path / "d", stored="upside_down", image_convention="opengl")
    cfg = OmegaConf.to_container(OmegaConf.load(os.path.join(REPO, "configs", "data", "robomimic.yaml")))
    cfg.update(data_dir=str(tmp_path / "d"), image_size=S, num_workers=0, batch_size=2, augment=False)
    from cosmos_lit.registry import build

    dm = build(cfg, "datamodule", path="data")
    dm.setup("fit")
    assert dm.spec.cameras == ("robot0_eye_in_hand", "agentview") and dm.spec.proprio_dim == 9
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (2, 4, 3, S, S)
    with pytest.raises(ConfigError, match="did you mean 'use_file_masks'"):
        build({**cfg, "use_file_mask": True}, "datamodule", path="data")
