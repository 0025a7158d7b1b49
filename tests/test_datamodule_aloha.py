"""ALOHA DataModule on small episode files written in the real schemas (docs/method.md#demonstration-file-schemas).

Frames encode (camera, step) in their colour so the tests can check which frame landed in which slot:
camera k has channel k bright, and the brightness of every channel grows with the step t.
"""

import copy
import os

import h5py
import numpy as np
import pytest
import torch

from cosmos_lit.datamodules.act_format import write_aloha_episode
from cosmos_lit.datamodules.aloha import REAL_CAMERAS, AlohaDataModule
from cosmos_lit.datamodules.base import STATISTICS_FILE, sample_type_fractions
from cosmos_lit.layout import POLICY, VALUE, WORLD_MODEL
from cosmos_lit.normalization import load_statistics, read_statistics, save_statistics, unnormalize
from cosmos_lit.registry import ConfigError, build
from cosmos_lit.video import DECORD_AVAILABLE

H, W, S = 24, 32, 16


def coded_frames(length, cam_index, upside_down=False):
    """(T, H, W, 3): flat colour coding (camera, step), with a white marker in the top rows."""
    frames = np.zeros((length, H, W, 3), np.uint8)
    for t in range(length):
        frames[t] = 20 + (6 * t) % 180
        frames[t, :, :, cam_index % 3] = 200
        frames[t, :3] = 255  # top marker
    return frames[:, ::-1] if upside_down else frames


def vectors(length, dim=14, seed=0):
    rng = np.random.default_rng(seed)
    qpos = np.cumsum(rng.normal(0, 0.1, (length, dim)), 0)
    return qpos, qpos + rng.normal(0, 0.01, (length, dim))


def write(folder, n, length=12, cameras=REAL_CAMERAS, storage="raw", attrs=None, upside_down=False, seed=0):
    for e in range(n):
        qpos, action = vectors(length, seed=seed + e)
        images = {cam: coded_frames(length, k, upside_down) for k, cam in enumerate(cameras)}
        write_aloha_episode(os.path.join(folder, f"episode_{e}.hdf5"), qpos, action, images, storage,
                            {"sim": False, "instruction": "fold the shirt", **(attrs or {})})
    return folder


def make_dm(data_dir, **kw):
    args = dict(data_dir=str(data_dir), cameras=list(REAL_CAMERAS), image_size=S, chunk_size=5, batch_size=4,
                val_fraction=0.0, augment=False)
    args.update(kw)
    return AlohaDataModule(**args)


def slot_colours(images):
    """Per image (2N, 3, S, S) in [-1, 1]: mean colour of the lower half (below the marker), in 0..255."""
    x = (images[:, :, S // 2 :, :].mean(dim=(2, 3)) + 1) * 127.5
    return x.numpy()


STORAGES = ["raw", "jpeg", "jpeg_vlen", "mp4"]


@pytest.mark.parametrize("storage", STORAGES)
def test_batch_contract_and_frame_order(tmp_path, storage):
    write(tmp_path / storage, 3, storage=storage)
    dm = make_dm(tmp_path / storage)
    dm.setup("fit")
    spec = dm.spec
    assert spec.cameras == REAL_CAMERAS and (spec.proprio_dim, spec.action_dim, spec.chunk_size) == (14, 14, 5)
    assert spec.gamma == 0.998 and spec.fps == 50 and spec.image_size == S and spec.name == "aloha"
    batch = next(iter(dm.train_dataloader()))
    b = 4
    assert batch["images"].shape == (b, 6, 3, S, S) and batch["images"].dtype == torch.float32
    assert batch["images"].min() >= -1 and batch["images"].max() <= 1
    assert batch["proprio"].shape == (b, 14) and batch["future_proprio"].shape == (b, 14)
    assert batch["actions"].shape == (b, 5, 14) and batch["actions"].dtype == torch.float32
    assert batch["value"].shape == (b,) and batch["value"].dtype == torch.float32
    assert batch["sample_type"].dtype == torch.int64 and batch["episode"].dtype == torch.int64
    assert batch["t"].dtype == torch.int64 and batch["instruction"] == ["fold the shirt"] * b
    ds = dm.train_dataset()
    tol = 6.0 if storage != "raw" else 1.0
    for i in (0, 7, 11, 30):
        s = ds[i]
        t, fut = int(s["t"]), min(int(s["t"]) + 5, 11)
        colours = slot_colours(s["images"])
        for slot in range(6):
            cam, step = slot % 3, (t if slot < 3 else fut)
            expected = np.full(3, 20 + 6 * step, float)
            expected[cam] = 200
            np.testing.assert_allclose(colours[slot], expected, atol=tol)


def test_next_chunk_and_next_value_as_the_official_datasets(tmp_path):
    """next_actions: the chunk from the future step; next_value: the value at min(future + K, last), both repeating
    the episode's end (the official next_action_chunk / next_value_function_return)."""
    write(tmp_path, 2, storage="raw")
    dm = make_dm(tmp_path)
    dm.setup("fit")
    ds = dm.train_dataset()
    for i in range(len(ds)):
        s = ds[i]
        e, t = int(s["episode"]), int(s["t"])
        info, last = ds.episodes[e], ds.episodes[e].length - 1
        fut = min(t + 5, last)
        rows = [min(fut + k, last) for k in range(5)]
        np.testing.assert_array_equal(s["next_actions"].numpy(), info.actions[rows])
        assert float(s["next_value"]) == pytest.approx(float(info.values[min(fut + 5, last)]))
        assert s["next_actions"].shape == s["actions"].shape


def test_writer_extras_and_compress_len_rows_of_cameras_outside_the_recorder_order(tmp_path):
    qpos, action = vectors(6)
    images = {"top": coded_frames(6, 0), "angle": coded_frames(6, 1)}  # neither is a recorder camera
    executed = action + 0.5
    jpeg, raw = tmp_path / "jpeg" / "episode_0.hdf5", tmp_path / "raw" / "episode_0.hdf5"
    write_aloha_episode(jpeg, qpos, action, images, "jpeg", {"sim": True}, qvel=qpos * 2,
                        extra={"executed_action": executed})
    write_aloha_episode(raw, qpos, action, images, compression="gzip")
    with h5py.File(jpeg, "r") as f:
        np.testing.assert_allclose(f["observations/qvel"][()], qpos * 2, rtol=1e-6)
        np.testing.assert_array_equal(f["executed_action"][()], executed)
        assert f["observations/qvel"].dtype == np.float32
        lens = f["compress_len"][()]
    with h5py.File(raw, "r") as f:
        assert f["observations/images/top"].compression == "gzip"
        np.testing.assert_array_equal(f["observations/images/angle"][()], images["angle"])
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "jpeg", "jpeg/episode_0.hdf5", "raw", "raw/episode_0.hdf5"
    ]
    dm = make_dm(jpeg.parent, cameras=["top", "angle"])
    dm.setup()
    reader = dm.train_dataset().reader(0)
    for row, cam in enumerate(["angle", "top"]):  # reader and writer agree: the others sorted by name
        assert [len(fr) for fr in reader.frames(cam, [0, 5])] == [lens[row, 0], lens[row, 5]]


def test_jpeg_compress_len_schema_and_trimming(tmp_path):
    write(tmp_path, 1, storage="jpeg")
    path = tmp_path / "episode_0.hdf5"
    with h5py.File(path, "r") as f:
        assert f.attrs["compress"] and f["compress_len"].shape == (3, 12)
        padded = f["observations/images/cam_left_wrist"].shape[1]
        lens = f["compress_len"][()]
        order_row = 1  # recorder order: cam_high, cam_left_wrist, cam_right_wrist
    dm = make_dm(tmp_path)
    dm.setup()
    reader = dm.train_dataset().reader(0)
    frames = reader.frames("cam_left_wrist", [0, 3])
    assert [len(fr) for fr in frames] == [lens[order_row, 0], lens[order_row, 3]]
    assert all(len(fr) < padded for fr in frames) or lens.max() == padded


@pytest.mark.parametrize("backend", ["pyav"] + (["decord"] if DECORD_AVAILABLE else []))
def test_mp4_backends_agree(tmp_path, backend):
    write(tmp_path, 1, storage="mp4")
    with h5py.File(tmp_path / "episode_0.hdf5", "r") as f:
        assert f["observations/video_paths/cam_high"][()].decode() == "episode_0_cam_high.mp4"  # relative path
    dm = make_dm(tmp_path, video_backend=backend)
    dm.setup()
    s = dm.train_dataset()[4]
    raw_dir = write(tmp_path / "raw", 1, storage="raw")
    dm_raw = make_dm(raw_dir)
    dm_raw.setup()
    assert (s["images"] - dm_raw.train_dataset()[4]["images"]).abs().mean() < 0.05


def test_sim_layout_and_orientation(tmp_path):
    up = write(tmp_path / "up", 2, cameras=("top",), attrs={"sim": True})
    down = write(tmp_path / "down", 2, cameras=("top",), attrs={"sim": True}, upside_down=True)
    dm_up = AlohaDataModule(data_dir=str(up), image_size=S, val_fraction=0.0, augment=False)
    dm_down = AlohaDataModule(data_dir=str(down), image_size=S, val_fraction=0.0, augment=False, flip_images=True)
    dm_plain = AlohaDataModule(data_dir=str(down), image_size=S, val_fraction=0.0, augment=False)
    for dm in (dm_up, dm_down, dm_plain):
        dm.setup()
    assert dm_up.spec.cameras == ("top",)
    a, b, c = (dm.train_dataset()[3]["images"] for dm in (dm_up, dm_down, dm_plain))
    assert a.shape == (2, 3, S, S)
    assert torch.equal(a, b)  # flipped upside-down storage == upright storage
    assert (a[0, :, 0, :] > 0.9).all() and not (c[0, :, 0, :] > 0.9).all()  # marker on top only when upright


def test_actions_padding_and_normalization(tmp_path):
    write(tmp_path, 2, length=12)
    dm = make_dm(tmp_path, chunk_size=8)
    dm.setup()
    ds = dm.train_dataset()
    idx = next(i for i in range(len(ds)) if ds.locate(i)[:2] == (0, 9))
    s = ds[idx]
    with h5py.File(tmp_path / "episode_0.hdf5", "r") as f:
        action, qpos = f["action"][()], f["observations/qpos"][()]
    expected = np.concatenate([action[9:12], np.repeat(action[-1:], 5, 0)])  # 3 real rows, then the last repeated
    np.testing.assert_allclose(unnormalize(s["actions"].numpy(), dm.statistics, "actions"), expected, atol=1e-5)
    np.testing.assert_allclose(unnormalize(s["proprio"].numpy(), dm.statistics, "proprio"), qpos[9], atol=1e-5)
    np.testing.assert_allclose(unnormalize(s["future_proprio"].numpy(), dm.statistics, "proprio"), qpos[11], atol=1e-5)
    everything = torch.stack([ds[i]["proprio"] for i in range(0, len(ds), 3)])
    assert everything.min() >= -1 - 1e-6 and everything.max() <= 1 + 1e-6


def test_sample_type_fractions_default_50_25_25(tmp_path):
    write(tmp_path, 4, length=50, cameras=("top",))
    dm = AlohaDataModule(data_dir=str(tmp_path), image_size=8, chunk_size=5, val_fraction=0.0, augment=False)
    dm.setup()
    ds = dm.train_dataset()
    assert len(ds) == 400 and sample_type_fractions(ds) == {POLICY: 0.5, WORLD_MODEL: 0.25, VALUE: 0.25}
    types = np.array([int(ds[i]["sample_type"]) for i in range(len(ds))])
    frac = np.bincount(types, minlength=3) / len(types)
    assert frac[POLICY] == 0.5
    assert abs(frac[WORLD_MODEL] - 0.25) < 0.07 and abs(frac[VALUE] - 0.25) < 0.07


def test_episode_starts_can_be_oversampled(tmp_path):
    write(tmp_path, 3, length=20, cameras=("top",))
    plain = make_dm(tmp_path, cameras=["top"], demonstration_sampling_prob=1.0)
    plain.setup()
    dm = make_dm(tmp_path, cameras=["top"], demonstration_sampling_prob=1.0, start_steps=4, start_repeat=3)
    dm.setup()
    ds = dm.train_dataset()
    assert len(plain.train_dataset()) == 60 and len(ds) == 60 + 2 * 3 * 4
    ts = np.array([ds.locate(i)[1] for i in range(len(ds))])
    assert np.bincount(ts).tolist() == [9] * 4 + [3] * 16  # t < 4: 3 episodes x 3 copies; later: 3 episodes
    assert len(dm.val_dataset()) == 0  # validation stays uniform (here: no held-out episodes)
    with pytest.raises(ConfigError, match="data.start_repeat: must be a positive integer, got 0"):
        make_dm(tmp_path, start_repeat=0)
    with pytest.raises(ConfigError, match="data.start_steps: must be >= 0, got -1"):
        make_dm(tmp_path, start_steps=-1)


def test_rollouts_planning_mix_and_failure_values(tmp_path):
    demos = write(tmp_path / "demos", 2, length=20, cameras=("top",))
    write(tmp_path / "rollouts" / "ok", 2, length=20, cameras=("top",), attrs={"success": True}, seed=10)
    write(tmp_path / "rollouts" / "bad", 2, length=20, cameras=("top",), attrs={"success": False}, seed=20)
    dm = AlohaDataModule(data_dir=str(demos), rollout_dir=str(tmp_path / "rollouts"), image_size=8, chunk_size=5,
                         val_fraction=0.0, augment=False, demonstration_sampling_prob=0.1,
                         treat_demos_as_success_rollouts=False)
    dm.setup()
    ds = dm.train_dataset()
    assert ds.counts == (40, 180, 180)
    fr = sample_type_fractions(ds)
    assert fr[POLICY] == pytest.approx(0.1) and fr[WORLD_MODEL] == pytest.approx(0.45)
    failure_ids = {i for i, ref in enumerate(dm.episodes) if "bad" in ref.path}
    for i in range(40, 400, 7):
        s = ds[i]
        assert int(s["sample_type"]) in (WORLD_MODEL, VALUE)
        if int(s["episode"]) in failure_ids:
            assert float(s["value"]) == -1.0
        else:
            assert float(s["value"]) > -1.0


def test_split_by_episode(tmp_path):
    write(tmp_path, 10, length=6, cameras=("top",))
    dm = AlohaDataModule(data_dir=str(tmp_path), image_size=8, chunk_size=3, val_fraction=0.3, seed=1, augment=False)
    dm.setup()
    train, val = set(dm.train_episodes), set(dm.val_episodes)
    assert len(val) == 3 and not train & val and train | val == set(range(10))
    again = AlohaDataModule(data_dir=str(tmp_path), image_size=8, chunk_size=3, val_fraction=0.3, seed=1)
    again.setup()
    assert again.val_episodes == dm.val_episodes
    other = AlohaDataModule(data_dir=str(tmp_path), image_size=8, chunk_size=3, val_fraction=0.3, seed=2)
    other.setup()
    assert other.val_episodes != dm.val_episodes
    train_eps = {int(e) for b in dm.train_dataloader() for e in b["episode"]}
    val_batches = list(dm.val_dataloader())
    val_eps = {int(e) for b in val_batches for e in b["episode"]}
    assert train_eps <= train and val_eps == val
    assert all((b["sample_type"] == POLICY).all() for b in val_batches)  # validation: policy samples only


def test_statistics_cache_is_reused_when_it_matches_the_data(tmp_path, capsys):
    """A cache computed from these demos is read back as is (stale caches: tests/test_bad_inputs.py)."""
    write(tmp_path, 2, length=8, cameras=("top",))
    dm = AlohaDataModule(data_dir=str(tmp_path), image_size=8, val_fraction=0.0)
    dm.setup()
    path = tmp_path / STATISTICS_FILE
    stats, source = read_statistics(path)
    assert stats == dm.statistics and len(stats["actions_min"]) == 14
    assert source["episodes"] == 2 and source["steps"] == 16 and source["dims"] == {"actions": 14, "proprio": 14}
    assert dm.state_dict()["statistics"] == dm.statistics  # stored with every checkpoint
    marked = dict(stats, actions_max=[m + 1.0 for m in stats["actions_max"]])
    save_statistics(path, marked, source=source)
    reused = AlohaDataModule(data_dir=str(tmp_path), image_size=8, val_fraction=0.0)
    reused.setup()
    assert reused.statistics["actions_max"] == marked["actions_max"]  # the cached file is used, not recomputed
    assert "[cache]" not in capsys.readouterr().err


def test_registry_and_workers(tmp_path):
    write(tmp_path, 2, length=8, cameras=("top",))
    dm = build({"name": "aloha", "data_dir": str(tmp_path), "image_size": 8, "batch_size": 4, "num_workers": 1,
                "val_fraction": 0.0, "samples_per_epoch": 6}, "datamodule")
    assert isinstance(dm, AlohaDataModule)
    dm.setup()
    batches = list(dm.train_dataloader())  # one worker process opens its own file handles
    assert sum(len(b["t"]) for b in batches) == 8  # an epoch: ceil(6 / 4) whole batches of the sample stream
    assert dm.instructions == ["fold the shirt"]


def test_augmentation_shared_across_current_and_future(tmp_path):
    folder = tmp_path / "static"
    qpos, action = vectors(12)
    still = np.repeat(coded_frames(1, 0), 12, axis=0)  # the same frame at every step
    still[:, 10:14, 5:20] = (0, 0, 255)  # texture so crops and rotations show
    write_aloha_episode(str(folder / "episode_0.hdf5"), qpos, action, {"top": still}, "raw")
    dm = AlohaDataModule(data_dir=str(folder), image_size=S, val_fraction=0.0, augment=True, chunk_size=4)
    dm.setup()
    ds = dm.train_dataset()
    a, b = ds[2]["images"], ds[2]["images"]
    assert torch.equal(a[0], a[1])  # current and future frames got the same augmentation
    assert not torch.equal(a, b)  # a new draw per sample


# --- bad input: one clear line naming file, episode, key and what was expected ---


# Bad input (missing folder or keys, wrong shapes, NaN, empty episodes, corrupt JPEG / MP4, rollouts without success):
# tests/test_bad_inputs.py


def test_rollout_dir_inside_data_dir_is_not_counted_as_demos(tmp_path):
    write(tmp_path, 2, length=6, cameras=("top",))
    write(tmp_path / "rollouts", 1, length=6, cameras=("top",), attrs={"success_score": 0.0})
    dm = AlohaDataModule(data_dir=str(tmp_path), rollout_dir=str(tmp_path / "rollouts"), image_size=8, val_fraction=0)
    dm.setup()
    assert [r.rollout for r in dm.episodes] == [False, False, True]


def test_checkpoint_statistics_win_on_resume(tmp_path):
    write(tmp_path, 2, length=8, cameras=("top",))
    dm = AlohaDataModule(data_dir=str(tmp_path), image_size=8, val_fraction=0.0, augment=False)
    dm.setup()
    before = dm.train_dataset()[3]
    trained = {k: list(v) for k, v in dm.statistics.items()}
    trained["actions_max"] = [v + 2.0 for v in trained["actions_max"]]
    dm.load_state_dict({"statistics": trained})  # after setup, as Trainer.fit(ckpt_path=...) does
    after = dm.train_dataset()[3]
    assert dm.statistics == trained
    np.testing.assert_allclose(unnormalize(after["actions"].numpy(), trained, "actions"),
                               unnormalize(before["actions"].numpy(), load_statistics(tmp_path / STATISTICS_FILE),
                                           "actions"), atol=1e-4)
    fresh = AlohaDataModule(data_dir=str(tmp_path), image_size=8, val_fraction=0.0)
    fresh.load_state_dict({"statistics": trained})  # before setup: used instead of the cached file
    fresh.setup()
    assert fresh.statistics == trained


def test_lightning_fit_and_checkpoint_carry_statistics(tmp_path):
    import lightning as L

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(14, 14)

        def training_step(self, batch, _):
            pred = self.head(batch["proprio"])[:, None]
            return (pred - batch["actions"]).abs().mean() + 0 * batch["images"].mean()

        def validation_step(self, batch, _):
            assert (batch["sample_type"] == POLICY).all()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = write(tmp_path / "data", 3, length=8, cameras=("top",))
    dm = AlohaDataModule(data_dir=str(data), image_size=8, chunk_size=4, batch_size=4, val_fraction=0.34)
    trainer = L.Trainer(max_steps=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        default_root_dir=str(tmp_path))
    trainer.fit(Probe(), datamodule=dm)
    trainer.save_checkpoint(tmp_path / "probe.ckpt")
    ckpt = torch.load(tmp_path / "probe.ckpt", weights_only=False)
    assert ckpt["AlohaDataModule"]["statistics"] == dm.statistics
    assert ckpt["AlohaDataModule"]["spec"]["cameras"] == ["top"]


def test_rescale_options_reach_the_model_and_the_policy(tmp_path):
    """data.scale_multiplier / data.non_negative_only: the DataModule normalizes to [0, m], the statistics carry the
    rule, and the model un-normalizes the training targets back to the recorded actions; a clash is one line."""
    from cosmos_lit.model import CosmosPolicyModel
    from helpers import TINY_NODES
    from cosmos_lit.registry import ConfigError

    write(tmp_path / "d", 2)
    dm = make_dm(tmp_path / "d", scale_multiplier=2.0, non_negative_only=True)
    dm.setup("fit")
    ds = dm.train_dataset()
    actions = torch.stack([ds[i]["actions"] for i in range(len(ds))])
    assert actions.min() >= 0.0 and actions.max() <= 2.0 + 1e-6 and actions.max() > 1.5
    spec = {**dm.spec.to_dict(), "image_size": 32}  # room for the chunk in a latent frame; images are not used
    model = CosmosPolicyModel(copy.deepcopy(TINY_NODES), spec, dm.statistics)
    s = ds[3]
    e, t = int(s["episode"]), int(s["t"])
    _, recorded = vectors(12, seed=e)
    raw = model.unnormalize(s["actions"].numpy(), "actions")
    np.testing.assert_allclose(raw, recorded[[min(t + k, 11) for k in range(5)]], atol=1e-4)
    from cosmos_lit.policy import CosmosPolicy

    policy = CosmosPolicy(model)  # clip_actions clamps to the demonstrations' normalized range, [0, 2] here
    lo, hi = np.array(dm.statistics["actions_min"]), np.array(dm.statistics["actions_max"])
    np.testing.assert_allclose(policy._env_actions(torch.full((1, 5, 14), -0.5))[0, 0], lo, atol=1e-5)
    np.testing.assert_allclose(policy._env_actions(torch.full((1, 5, 14), 3.0))[0, 0], hi, atol=1e-5)
    clash = make_dm(tmp_path / "d")
    clash.load_state_dict({"statistics": dm.statistics})
    with pytest.raises(ConfigError, match="data.scale_multiplier / data.non_negative_only: statistics: normalized "
                                          "with scale_multiplier=2.0"):
        clash.setup("fit")
    with pytest.raises(ConfigError, match="data.scale_multiplier"):
        make_dm(tmp_path / "d", scale_multiplier=0)
