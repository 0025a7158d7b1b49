"""Bad input, in one place: every kind of broken data, stale cache, foreign checkpoint or unknown name ends in ONE line
that names the file / key / value and what was expected, without a traceback, and leaves nothing half-written.

Most cases run the CLI in this process (``cosmos_lit.cli.main``, as ``python -m cosmos_lit ...`` would, with a tiny
ALOHA or LeRobot dataset written here); the DataModule-level cases check the exact message of each reader error.
Also elsewhere: the CLI's one-line errors for config typos, YAML key typos and demo-generation options
(tests/test_cli.py, as subprocesses), LIBERO / RoboCasa files (tests/test_datamodule_libero.py,
tests/test_datamodule_robocasa.py), unreadable checkpoints (tests/test_checkpoint.py), rollout folders
(tests/test_rollout_files.py) and T5 caches (tests/test_t5_cache.py).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cosmos_lit.cli import main
from cosmos_lit.datamodules.act_format import write_aloha_episode
from cosmos_lit.datamodules.aloha import AlohaDataModule
from cosmos_lit.datamodules.base import STATISTICS_FILE
from cosmos_lit.normalization import read_statistics, save_statistics
from cosmos_lit.video import DECORD_AVAILABLE

sys.path.insert(0, os.path.dirname(__file__))
import fixtures_writers as fw  # noqa: E402
from helpers import make_datamodule, sample_at, setup_error, tiny_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "aloha_sim.yaml")
S = 32  # image side of the written episodes and of the model input
T = 12  # steps per written episode


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    """No traceback switch, no run directory left over from another in-process run (nor handed on to the next test:
    ``main`` sets ``COSMOS_LIT_RUN_DIR``), relative paths in tmp_path."""
    for name in ("COSMOS_LIT_DEBUG", "COSMOS_LIT_RUN_DIR", "PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.setenv(name, "")  # recorded, so that the teardown restores the value from before the test
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


# ---------------------------------------------------------------------------------------------------- writers


def frames(length: int, seed: int = 0, size: int = S) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (length, size, size, 3), dtype=np.uint8)


def write_demos(folder: Path, n: int = 2, length: int = T, storage: str = "raw", scale: float = 1.0,
                seed: int = 0, size: int = S) -> Path:
    """``n`` ACT episodes (14-D qpos and actions, camera 'top') in ``folder``."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        write_aloha_episode(folder / f"episode_{i}.hdf5", scale * rng.normal(size=(length, 14)),
                            scale * rng.normal(size=(length, 14)), {"top": frames(length, seed + i, size)}, storage,
                            {"instruction": "transfer the cube"})
    return folder


def edit(path: Path, fn) -> None:
    with h5py.File(path, "a") as f:
        fn(f)


def aloha_dm(data_dir: Path, **kw) -> AlohaDataModule:
    args = dict(data_dir=str(data_dir), cameras=["top"], image_size=S, chunk_size=4, batch_size=2, val_fraction=0.0,
                augment=False)
    args.update(kw)
    return AlohaDataModule(**args)


def write_lerobot(root: Path, **kw) -> Path:
    eps = [fw.lerobot_episode(n, i) for i, n in enumerate((8, 9))]
    fw.write_lerobot_dataset(str(root), eps, ["pick up the cube", "put the cube in the box"], size=S, **kw)
    return root


# ---------------------------------------------------------------------------------------------------- the CLI

# fit on the embedded default's model, with the ALOHA reader on the given folder, at toy size
FIT = ["fit", "--config", CONFIG, "data=aloha", "data.cameras=[top]", f"data.image_size={S}", "data.chunk_size=4",
       "data.batch_size=2", "data.num_workers=0", "data.val_fraction=0", "eval=none", "logger=none",
       "trainer.max_steps=2", "+trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``python -m cosmos_lit ARGS``, run in this process."""
    code = 0
    try:
        main(list(args))
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(capsys, *args: str) -> str:
    """The single ``error:`` line of a CLI run that must stop with exit status 2 and no traceback."""
    code, out, err = cli(capsys, *args)
    assert code == 2, (out + err)[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err + out, err[-3000:]
    return lines[0]


def fit_error(capsys, tmp_path: Path, data_dir: Path, *extra: str) -> str:
    """The one error line of ``fit`` on ``data_dir``; the run could not start, so it left no run directory."""
    run_dir = tmp_path / "run"
    line = one_line(capsys, *FIT, f"data.data_dir={data_dir}", f"run_dir={run_dir}", *extra)
    assert not run_dir.exists() and not (tmp_path / "runs").exists()
    return line


# ---------------------------------------------------------------------------------------------------- HDF5 episodes


def test_truncated_hdf5(capsys, tmp_path):
    d = write_demos(tmp_path / "d")
    path = d / "episode_1.hdf5"
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    line = fit_error(capsys, tmp_path, d)
    assert str(path) in line and "HDF5" in line and "truncated" in line
    assert not (d / STATISTICS_FILE).exists()  # nothing is cached from data that could not be read


def test_missing_key(capsys, tmp_path):
    d = write_demos(tmp_path / "d")
    edit(d / "episode_1.hdf5", lambda f: f.__delitem__("action"))
    line = fit_error(capsys, tmp_path, d)
    assert "episode_1.hdf5: missing key 'action' (expected a (T, 14) array of joint targets)" in line
    assert not (d / STATISTICS_FILE).exists()


def test_wrong_shape(capsys, tmp_path):
    d = write_demos(tmp_path / "d")
    edit(d / "episode_0.hdf5", lambda f: (f.__delitem__("action"), f.create_dataset("action", data=np.zeros((T, 9)))))
    line = fit_error(capsys, tmp_path, d)
    assert "episode_0.hdf5: actions has dimension 9; expected 14 (as data.action_dim)" in line
    edit(d / "episode_0.hdf5", lambda f: (f.__delitem__("action"), f.create_dataset("action", data=np.zeros((T - 1, 14)))))
    line = fit_error(capsys, tmp_path, d)
    assert f"episode_0.hdf5: proprio has shape ({T}, 14); expected ({T - 1}, D)" in line


@pytest.mark.parametrize("group, key, value", [("actions", "action", np.nan), ("proprio", "observations/qpos", np.inf)])
def test_nan_or_inf_in_actions_or_proprio(capsys, tmp_path, group, key, value):
    d = write_demos(tmp_path / "d")

    def poison(f):
        f[key][3, 5] = value
    edit(d / "episode_1.hdf5", poison)
    line = fit_error(capsys, tmp_path, d)
    assert f"episode_1.hdf5: {group} contains NaN or inf ({value} at step 3, dimension 5" in line
    assert "expected finite numbers" in line and not (d / STATISTICS_FILE).exists()


def test_corrupt_jpeg_frame_at_set_up_in_training_and_in_check_data(capsys, tmp_path):
    d = write_demos(tmp_path / "d", storage="jpeg_vlen")

    def corrupt(index):
        def fn(f):
            f["observations/images/top"][index] = np.frombuffer(b"\xff\xd8 not a jpeg", np.uint8)
        return fn
    edit(d / "episode_1.hdf5", corrupt(0))  # the first frame: set-up decodes it
    line = fit_error(capsys, tmp_path, d)
    assert "episode_1.hdf5: key 'observations/images/top' frame 0: corrupt or unsupported image bytes" in line

    write_demos(tmp_path / "d", storage="jpeg_vlen")
    edit(d / "episode_0.hdf5", corrupt(6))  # a later frame: the sample that reads it stops training, one line
    run_dir = tmp_path / "run_started"
    line = one_line(capsys, *FIT, f"data.data_dir={d}", f"run_dir={run_dir}", "trainer.max_steps=40")
    assert "episode_0.hdf5 camera 'top' frame 6: corrupt or unsupported image bytes" in line
    assert "episode_0.hdf5 camera 'top' frame 6: corrupt or truncated JPEG" in check_data_report(capsys, d)


def test_empty_episode(capsys, tmp_path):
    d = write_demos(tmp_path / "d")
    write_aloha_episode(d / "episode_2.hdf5", np.zeros((0, 14)), np.zeros((0, 14)), {"top": frames(0)})
    line = fit_error(capsys, tmp_path, d)
    assert "episode_2.hdf5: episode has 0 step(s); expected at least 2" in line


def test_empty_or_missing_data_folder(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    line = fit_error(capsys, tmp_path, tmp_path / "empty")
    assert f"aloha: no *.hdf5 episode files under {tmp_path / 'empty'}; expected a folder of ACT/ALOHA" in line
    line = fit_error(capsys, tmp_path, tmp_path / "nowhere")
    assert "'" + str(tmp_path / "nowhere") + "' does not exist" in line and "data.data_dir=" in line


def test_aloha_sim_pointed_at_existing_act_episodes(capsys, tmp_path):
    d = write_demos(tmp_path / "act")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in d.iterdir())
    run_dir = tmp_path / "run"
    line = one_line(capsys, "fit", "--config", CONFIG, f"data.data_dir={d}", f"run_dir={run_dir}")
    assert f"data.data_dir: {d} holds 2 existing episode file(s)" in line
    assert f"use data=aloha data.data_dir={d}" in line
    assert sorted((p.name, p.stat().st_mtime_ns) for p in d.iterdir()) == before and not run_dir.exists()


# ---------------------------------------------------------------------------------------------------- LeRobot


def test_lerobot_missing_video_and_broken_info_json(capsys, tmp_path):
    root = write_lerobot(tmp_path / "lr", version="v2.1")
    video = root / "videos" / "chunk-000" / "observation.images.front" / "episode_000001.mp4"
    video.unlink()
    lerobot = [f"data.image_size={S}", "data.chunk_size=4", "eval=none", "logger=none"]
    run_dir = tmp_path / "run"
    line = one_line(capsys, "fit", "--config", CONFIG, "data=lerobot", f"data.data_dir={root}", f"run_dir={run_dir}",
                    *lerobot)
    assert "episode_index=1" in line and "observation.images.front" in line and f"not found: {video}" in line
    report = check_data_report(capsys, root, "data=lerobot")
    assert "episode 'episode_index=1' camera 'observation.images.front' frames 0-8: " in report  # one line, 9 frames

    info = root / "meta" / "info.json"
    for text, message in (('{"codebase_version": "v2.1", ', "not valid JSON"),
                          ("{}", "missing key 'codebase_version' (expected a LeRobotDataset info.json)"),
                          ('{"codebase_version": "v2.1", "fps": 10, "data_path": "x", "features": ["action"]}',
                           "key 'features' must map each feature name to {dtype, shape, ...}")):
        info.write_text(text)
        line = one_line(capsys, "fit", "--config", CONFIG, "data=lerobot", f"data.data_dir={root}",
                        f"run_dir={run_dir}", *lerobot)
        assert f"{info}: {message}" in line and not run_dir.exists()


_lerobot_error = lambda data_dir, **kw: setup_error(  # noqa: E731
    lambda d, **k: make_datamodule("lerobot", d, image_size=S, **k), data_dir, **kw)


def test_lerobot_bad_metadata_and_features(tmp_path):
    msg = _lerobot_error(tmp_path / "missing")
    assert "missing" in msg and "data.data_dir=" in msg
    os.makedirs(tmp_path / "empty")
    assert "meta/info.json" in _lerobot_error(tmp_path / "empty")

    write_lerobot(tmp_path / "a")
    info_path = tmp_path / "a" / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["codebase_version"] = "v1.6"
    info_path.write_text(json.dumps(info))
    msg = _lerobot_error(tmp_path / "a")
    assert str(info_path) in msg and "v1.6" in msg

    write_lerobot(tmp_path / "b")
    msg = _lerobot_error(tmp_path / "b", state_key="observation.qpos")
    assert "observation.qpos" in msg and "features" in msg

    write_lerobot(tmp_path / "c", version="v2.1")
    os.remove(tmp_path / "c" / "meta" / "tasks.jsonl")
    assert "meta/tasks.jsonl" in _lerobot_error(tmp_path / "c")


def test_lerobot_length_mismatch(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_lerobot(tmp_path / "a")
    ep_file = tmp_path / "a" / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(ep_file)
    lengths = table.column("length").to_pylist()
    lengths[1] += 3
    pq.write_table(table.set_column(table.schema.get_field_index("length"), "length", pa.array(lengths)), ep_file)
    msg = _lerobot_error(tmp_path / "a")
    assert "file-000.parquet" in msg and "episode_index=1" in msg and "length 12" in msg


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_lerobot_corrupt_video_names_file_episode_feature(tmp_path, backend):
    if backend == "decord" and not DECORD_AVAILABLE:
        pytest.skip("decord not installed")
    write_lerobot(tmp_path / "a", version="v2.1")
    video = tmp_path / "a" / "videos" / "chunk-000" / "observation.images.wrist" / "episode_000001.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(400))
    dm = make_datamodule("lerobot", tmp_path / "a", image_size=S, video_backend=backend)
    dm.setup("fit")
    with pytest.raises(ValueError) as info:
        sample_at(dm.train_dataset(), 1, 0)
    msg = str(info.value)
    assert "episode_index=1" in msg and "observation.images.wrist" in msg and str(video) in msg


def _corrupt_png(path: Path, feature: str, index: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    col = table.column(feature).to_pylist()
    col[index] = {"bytes": b"\x89PNG\r\n\x1a\nbroken", "path": f"frame_{index:06d}.png"}
    i = table.schema.get_field_index(feature)
    pq.write_table(table.set_column(i, table.schema.field(i), pa.array(col, table.schema.field(i).type)), path)


def test_lerobot_corrupt_png_at_set_up_and_per_sample(tmp_path):
    write_lerobot(tmp_path / "a", storage="image", version="v2.1")
    data = tmp_path / "a" / "data" / "chunk-000" / "episode_000000.parquet"
    _corrupt_png(data, "observation.images.front", 4)
    dm = make_datamodule("lerobot", tmp_path / "a", image_size=S)
    dm.setup("fit")  # frames are decoded per sample
    with pytest.raises(ValueError) as info:
        sample_at(dm.train_dataset(), 0, 4)
    msg = str(info.value)
    assert str(data) in msg and "episode_index=0" in msg and "observation.images.front" in msg and "frame 4" in msg
    _corrupt_png(data, "observation.images.wrist", 0)  # the first frame of the first episode: set-up decodes it
    msg = _lerobot_error(tmp_path / "a")
    assert str(data) in msg and "episode_index=0" in msg and "column 'observation.images.wrist' frame 0: corrupt PNG" in msg


# ---------------------------------------------------------------------------------------------------- ALOHA readers


def test_aloha_missing_folder_and_no_episodes_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"aloha: '.*nowhere' does not exist; expected .*episode_\*\.hdf5.*"
                                                r"data\.data_dir=/path/to/data"):
        AlohaDataModule(data_dir=str(tmp_path / "nowhere")).setup()
    with pytest.raises(FileNotFoundError, match="no data directory was given"):
        AlohaDataModule().setup()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"no \*\.hdf5 episode files under"):
        AlohaDataModule(data_dir=str(tmp_path)).setup()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.__delitem__("action"), r"episode_0\.hdf5: missing key 'action' \(expected a \(T, 14\) array"),
        (lambda f: f.__delitem__("observations/qpos"), r"missing key 'observations/qpos'"),
        (lambda f: f.__delitem__("observations/images/top"), r"missing key 'observations/images/top'.*data\.cameras"),
    ],
)
def test_aloha_missing_key_messages(tmp_path, change, message):
    write_demos(tmp_path, 1, length=6)
    edit(tmp_path / "episode_0.hdf5", change)
    with pytest.raises(ValueError, match=message):
        aloha_dm(tmp_path).setup()


def test_aloha_one_step_episode(tmp_path):
    write_aloha_episode(tmp_path / "episode_0.hdf5", np.zeros((1, 14)), np.zeros((1, 14)), {"top": frames(1)})
    with pytest.raises(ValueError, match=r"episode_0\.hdf5: episode has 1 step\(s\); expected at least 2"):
        aloha_dm(tmp_path).setup()


def test_aloha_corrupt_padded_jpeg_row(tmp_path):
    write_aloha_episode(tmp_path / "episode_0.hdf5", np.zeros((6, 14)), np.zeros((6, 14)),
                        {"cam_high": frames(6)}, "jpeg")

    def corrupt(f):
        ds = f["observations/images/cam_high"]
        row = ds[2]
        row[:] = 7  # garbage where the JPEG was
        ds[2] = row
    edit(tmp_path / "episode_0.hdf5", corrupt)
    dm = aloha_dm(tmp_path, cameras=["cam_high"])
    dm.setup()  # frames are decoded per sample, not at set-up
    with pytest.raises(ValueError, match=r"episode_0\.hdf5 camera 'cam_high' frame 2: corrupt or unsupported image"):
        sample_at(dm.train_dataset(), 0, 2)


def test_aloha_corrupt_and_missing_video(tmp_path):
    write_demos(tmp_path, 1, length=6, storage="mp4")
    video = tmp_path / "episode_0_top.mp4"
    video.write_bytes(video.read_bytes()[:200])  # truncated file
    with pytest.raises(ValueError, match=r"episode_0\.hdf5: video .*episode_0_top\.mp4: cannot open"):
        aloha_dm(tmp_path, video_backend="pyav").setup()
    video.unlink()
    with pytest.raises(ValueError, match=r"points to .*episode_0_top\.mp4, which does not exist"):
        aloha_dm(tmp_path).setup()


def test_aloha_rollout_without_success_attribute(tmp_path):
    write_demos(tmp_path / "demos", 1, length=6)
    write_demos(tmp_path / "rollouts", 1, length=6)
    with pytest.raises(ValueError, match=r"rollouts/episode_0\.hdf5: rollout episode has no 'success' attribute"):
        aloha_dm(tmp_path / "demos", rollout_dir=str(tmp_path / "rollouts")).setup()


# ---------------------------------------------------------------------------------------------------- statistics


def test_statistics_of_other_data_are_recomputed_with_a_notice(capsys, tmp_path):
    d = write_demos(tmp_path / "d")
    aloha_dm(d).setup()
    path = d / STATISTICS_FILE
    first, source = read_statistics(path)
    assert source["episodes"] == 2 and oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    capsys.readouterr()
    write_demos(d, scale=30.0, seed=5)  # same files, sizes and dims; other values
    dm = aloha_dm(d)
    dm.setup()
    err = capsys.readouterr().err
    notices = [line for line in err.splitlines() if line.startswith("[cache]")]
    assert len(notices) == 1 and str(path) in notices[0] and "same sizes, other values" in notices[0]
    assert "recomputing" in notices[0]
    stats, new_source = read_statistics(path)
    assert stats == dm.statistics != first and new_source["checksum"] != source["checksum"]
    normalized = np.concatenate([info.actions for info in dm._episodes])
    assert np.abs(normalized).max() <= 1.0 + 1e-6  # not the 30x-off values of the old statistics
    assert sorted(p.name for p in d.iterdir()) == [STATISTICS_FILE, "episode_0.hdf5", "episode_1.hdf5"]  # atomic
    aloha_dm(d).setup()  # now they match: read back, no notice
    assert "[cache]" not in capsys.readouterr().err


def test_statistics_keyed_by_the_episode_list(capsys, tmp_path):
    d = write_demos(tmp_path / "d", n=3)
    aloha_dm(d).setup()
    (d / "episode_2.hdf5").unlink()  # one episode fewer
    capsys.readouterr()
    aloha_dm(d).setup()
    assert "episodes 3 -> 2; steps 36 -> 24" in capsys.readouterr().err


def test_old_statistics_file_without_a_source_is_recomputed(capsys, tmp_path):
    d = write_demos(tmp_path / "d")
    dims = {"actions": 14, "proprio": 14}
    save_statistics(d / STATISTICS_FILE, {f"{g}_{s}": [0.0] * n for g, n in dims.items()
                                          for s in ("min", "max", "mean", "std", "median")})
    capsys.readouterr()
    dm = aloha_dm(d)
    dm.setup()
    assert "it records no source" in capsys.readouterr().err
    stats, source = read_statistics(d / STATISTICS_FILE)
    assert source is not None and stats == dm.statistics
    save_statistics(d / STATISTICS_FILE, dict(stats, proprio_min=stats["proprio_min"][:7]))  # wrong dims, no source
    aloha_dm(d).setup()
    assert "it records no source" in capsys.readouterr().err
    (d / STATISTICS_FILE).write_text("{ not json")  # unreadable cache
    aloha_dm(d).setup()
    assert "not valid JSON" in capsys.readouterr().err and read_statistics(d / STATISTICS_FILE)[1] is not None


def test_explicit_statistics_path_of_other_data_is_an_error(capsys, tmp_path):
    a = write_demos(tmp_path / "a")
    b = write_demos(tmp_path / "b", seed=9)
    stats_file = tmp_path / "shared_stats.json"
    aloha_dm(a, statistics_path=str(stats_file)).setup()  # written there, with its source
    before = stats_file.read_bytes()
    run_dir = tmp_path / "run"
    line = one_line(capsys, *FIT, f"data.data_dir={b}", f"+data.statistics_path={stats_file}", f"run_dir={run_dir}")
    assert f"statistics file {stats_file} (data.statistics_path): it was computed from other data" in line
    assert "delete it to recompute it" in line
    assert stats_file.read_bytes() == before and not run_dir.exists() and not (b / STATISTICS_FILE).exists()


def test_explicit_statistics_without_a_source_are_used_as_given(capsys, tmp_path):
    """An official statistics file (no source record) named by data.statistics_path is the user's choice: used as
    given, never overwritten; a notice when it normalizes the demos far outside [-1, 1]."""
    d = write_demos(tmp_path / "d", scale=20.0)
    official = tmp_path / "aloha_dataset_statistics.json"
    stats = {f"{g}_{s}": [float(v)] * 14 for g in ("actions", "proprio")
             for s, v in (("min", -1), ("max", 1), ("mean", 0), ("std", 1), ("median", 0))}
    official.write_text(json.dumps(stats))
    dm = aloha_dm(d, statistics_path=str(official))
    dm.setup()
    assert dm.statistics == stats and json.loads(official.read_text()) == stats
    err = capsys.readouterr().err
    assert "[cache] statistics file" in err and "normalize to values up to" in err and "other data" in err


def test_latent_cache_is_keyed_by_the_encoder_weights_and_the_data(capsys):
    from cosmos_lit.registry import build
    from cosmos_lit.spec import DataSpec

    spec = DataSpec(cameras=("a",), proprio_dim=4, action_dim=3, chunk_size=4, image_size=S)
    model = {"backbone": {"name": "cosmos_predict2_tiny"},
             "image_encoder": {"name": "wan2.1_tiny", "normalization": "none", "sequence_form": "per_image"}}
    torch.manual_seed(0)
    task = build({"name": "cosmos_policy", "cache_latents": True}, "task", model=model, spec=spec.to_dict())
    cache, encoder = task.latent_cache, task.model.image_encoder
    batch = {"images": torch.rand(2, 2, 3, S, S) * 2 - 1, "episode": torch.tensor([0, 1]), "t": torch.tensor([0, 3]),
             "future_t": torch.tensor([4, 7])}

    def direct():
        return encoder.encode(task.model.slot_images(batch["images"][:, :1], batch["images"][:, 1:]))
    first = cache.latents(batch)
    assert len(cache) == 4 and torch.allclose(first, direct(), atol=1e-5)
    encoder.load_state_dict(encoder.state_dict())  # the same weights written again: still valid
    assert torch.equal(cache.latents(batch), first) and "[cache]" not in capsys.readouterr().err
    with torch.no_grad():
        next(encoder.parameters()).mul_(1.5)  # other weights (a checkpoint loaded, a calibration)
    changed = cache.latents(batch)
    err = capsys.readouterr().err
    assert "latent cache: the image encoder's weights changed; dropping 4 cached latents" in err
    assert torch.allclose(changed, direct(), atol=1e-5) and not torch.allclose(changed, first, atol=1e-5)


def test_latent_cache_shares_latents_only_between_encoders_with_the_same_weights():
    """``share_from`` hands a filled cache to another task of the same data (a benchmark's rows) and refuses one
    whose image encoder has other weights: its latents would be another encoder's."""
    from cosmos_lit.registry import build
    from cosmos_lit.spec import DataSpec

    spec = DataSpec(cameras=("a",), proprio_dim=4, action_dim=3, chunk_size=4, image_size=S)
    model = {"backbone": {"name": "cosmos_predict2_tiny"},
             "image_encoder": {"name": "wan2.1_tiny", "normalization": "none", "sequence_form": "per_image"}}

    def task(seed):
        torch.manual_seed(seed)
        return build({"name": "cosmos_policy", "cache_latents": True}, "task", model=model, spec=spec.to_dict())
    batch = {"images": torch.rand(2, 2, 3, S, S) * 2 - 1, "episode": torch.tensor([0, 1]), "t": torch.tensor([0, 3]),
             "future_t": torch.tensor([4, 7])}
    filled = task(0).latent_cache
    first = filled.latents(batch)
    same, other = task(0).latent_cache, task(1).latent_cache
    assert same.share_from(task(0).latent_cache) == 0  # an empty cache has nothing to give
    assert same.share_from(filled) == 4 and len(same) == 4
    batch_without_images = {**batch, "images": torch.zeros_like(batch["images"])}  # every latent is a shared one
    assert torch.equal(same.latents(batch_without_images), first)
    assert other.share_from(filled) == 0 and len(other) == 0
    stale_task = task(1)  # latents of its own from other weights, then the filled cache's weights loaded
    stale_task.latent_cache.latents({**batch, "episode": torch.tensor([5, 6])})
    stale_task.model.image_encoder.load_state_dict(task(0).model.image_encoder.state_dict())
    assert stale_task.latent_cache.share_from(filled) == 4 and len(stale_task.latent_cache) == 4


# ---------------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_of_another_layout_or_not_a_checkpoint(capsys, tmp_path):
    d = write_demos(tmp_path / "d")
    run_dir = tmp_path / "run"
    validate = ["validate", "--config", CONFIG, "data=aloha", f"data.data_dir={d}", "data.cameras=[top]",
                f"data.image_size={S}", "data.num_workers=0", "eval=none", "logger=none", f"run_dir={run_dir}"]
    v0 = ROOT / "tests" / "data" / "checkpoint_v0.ckpt"  # 64 px, chunk 50: another layout than this data's
    line = one_line(capsys, *validate, "data.chunk_size=4", f"ckpt_path={v0}")
    assert f"ckpt_path: {v0}: the checkpoint's data layout differs" in line
    assert "chunk_size 50 there, 4 here" in line and "image_size 64 there, 32 here" in line
    assert not run_dir.exists()

    random_file = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(3)}, random_file)
    line = one_line(capsys, *validate, f"ckpt_path={random_file}")
    assert f"{random_file}: not a cosmos_lit task checkpoint" in line and not run_dir.exists()
    text_file = tmp_path / "last.ckpt"
    text_file.write_text("version https://git-lfs.github.com/spec/v1\n")
    line = one_line(capsys, *validate, f"ckpt_path={text_file}")
    assert f"{text_file}: not a readable checkpoint" in line and not run_dir.exists()

    same = write_demos(tmp_path / "same", size=64)  # the checkpoint's own layout: it validates
    code, out, err = cli(capsys, *validate, f"data.data_dir={same}", "data.image_size=64", f"ckpt_path={v0}",
                         "data.val_fraction=0.5", "data.batch_size=4", "trainer.limit_val_batches=1")
    assert code == 0 and "val/loss" in out and (run_dir / "config.yaml").is_file(), (out + err)[-3000:]


# ---------------------------------------------------------------------------------------------------- names


def test_unknown_config_names(capsys, tmp_path):
    d = tmp_path / "demos"
    line = one_line(capsys, "fit", "--config", CONFIG, "data=alohaa")
    assert "unknown data option 'alohaa' (did you mean 'aloha'?)" in line
    line = one_line(capsys, "fit", "--config", CONFIG, "model.backbone.name=cosmos_predict3", f"data.data_dir={d}")
    assert "model.backbone.name" in line and "cosmos_predict3" in line
    assert not d.exists()  # checked before any demo is generated
    line = one_line(capsys, "fit", "--config", str(tmp_path / "nope.yaml"))
    assert "--config: file not found" in line and "nope.yaml" in line
    line = one_line(capsys, "check-data", "--config", CONFIG, "data.name=alohaa")
    assert "data.name" in line and "alohaa" in line


# ---------------------------------------------------------------------------------------------------- check-data


def check_data_report(capsys, data_dir: Path, data: str = "data=aloha") -> str:
    """stdout of ``check-data`` on a folder with bad frames (exit status 1)."""
    code, out, err = cli(capsys, "check-data", "--config", CONFIG, data, f"data.data_dir={data_dir}",
                         *(["data.cameras=[top]"] if data == "data=aloha" else []))
    assert code == 1 and "Traceback" not in err, (out + err)[-3000:]
    return out


def test_check_data_reports_every_bad_frame(capsys, tmp_path):
    d = write_demos(tmp_path / "d", n=3, storage="jpeg_vlen")
    code, out, err = cli(capsys, "check-data", "--config", CONFIG, "data=aloha", f"data.data_dir={d}",
                         "data.cameras=[top]")
    assert code == 0 and "check-data: no bad frame (3 episode(s), 36 frames, cameras top)" in out, out + err

    def damage(f):
        ds = f["observations/images/top"]
        ds[2] = np.frombuffer(b"garbage bytes", np.uint8)
        ds[3] = np.frombuffer(b"more garbage", np.uint8)
        ds[9] = ds[9][: len(ds[9]) // 2]  # truncated JPEG
    edit(d / "episode_1.hdf5", damage)
    edit(d / "episode_2.hdf5", lambda f: f["observations/images/top"].__setitem__(0, np.zeros(5, np.uint8)))
    out = check_data_report(capsys, d)
    lines = out.strip().splitlines()
    assert lines[0].startswith("check-data: 4 problem(s) in 2 of 3 episode(s) (4 bad frame(s)")
    problems = lines[1:]
    assert len(problems) == 4, out
    assert f"{d / 'episode_1.hdf5'} camera 'top' frame 2: corrupt or unsupported image bytes" in problems[0]
    assert f"{d / 'episode_1.hdf5'} camera 'top' frame 3: corrupt or unsupported image bytes" in problems[1]
    assert f"{d / 'episode_1.hdf5'} camera 'top' frame 9: corrupt or truncated JPEG" in problems[2]
    assert f"{d / 'episode_2.hdf5'} camera 'top' frame 0: corrupt or unsupported image bytes" in problems[3]
    # set-up names the first bad first frame too (it decodes frame 0 of every JPEG episode)
    with pytest.raises(ValueError, match=r"episode_2\.hdf5: key 'observations/images/top' frame 0: corrupt"):
        aloha_dm(d).setup()


def test_check_data_names_bad_episodes_and_keeps_going(capsys, tmp_path):
    d = write_demos(tmp_path / "d", n=3)
    edit(d / "episode_0.hdf5", lambda f: f.__delitem__("observations/qpos"))
    edit(d / "episode_1.hdf5", lambda f: f["action"].__setitem__((2, 0), np.nan))
    out = check_data_report(capsys, d)
    assert f"{d / 'episode_0.hdf5'}: missing key 'observations/qpos'" in out
    assert f"{d / 'episode_1.hdf5'}: actions contains NaN or inf (nan at step 2, dimension 0" in out
    assert "episode_2.hdf5" not in out


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# -------------------------------------------------------------------------------------------------- training


def tiny_batch():
    """Two training samples (policy, world model) for ``helpers.tiny_task()``'s spec."""
    return {"images": torch.rand(2, 4, 3, 32, 32) * 2 - 1, "proprio": torch.rand(2, 4), "actions": torch.rand(2, 8, 3),
            "future_proprio": torch.rand(2, 4), "value": torch.rand(2), "sample_type": torch.tensor([0, 1]),
            "instruction": ["a", "b"]}


def test_a_non_finite_loss_stops_training_with_the_step_and_the_samples():
    from cosmos_lit.tasks.post_training import NonFiniteLossError

    task = tiny_task().train()
    batch = {**tiny_batch(), "episode": torch.tensor([3, 5]), "t": torch.tensor([40, 12])}
    batch["proprio"][1, 2] = float("nan")
    with pytest.raises(NonFiniteLossError) as err:
        task.training_step(batch, 0)
    msg = str(err.value)
    assert "step 0" in msg and "nan" in msg and "(3, 40), (5, 12)" in msg and "\n" not in msg
