"""Rollout collection: the Cosmos rollout file layout and its index, recording in the evaluation loop (a crashed
episode is reported, not written), read-back through the ALOHA DataModule (damaged files are one error line), and
the ``collect`` verb end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from cosmos_lit.datamodules.act_format import write_aloha_episode
from cosmos_lit.datamodules.aloha import AlohaDataModule
from cosmos_lit.rollout_files import (
    FORMAT,
    INDEX_FILE,
    EpisodeRecorder,
    RolloutFolder,
    check_folder,
    read_index,
    read_rollout,
    rollout_image_key,
    write_rollout,
)

ROOT = Path(__file__).resolve().parent.parent
CKPT = ROOT / "tests" / "data" / "checkpoint_v0.ckpt"  # tiny ALOHA-sim policy: camera "top", 14-D, chunk 50, 64²
ALOHA_EVAL = {  # configs/eval/aloha_sim.yaml as resolved for the fixture's data config
    "name": "sim_eval",
    "env": {"name": "aloha_sim", "task": "transfer_cube", "cameras": ["top"], "image_size": 64, "max_steps": 400,
            "fast_render": True},
    "image_pipeline": {"center_crop": False}, "every_n_steps": 1000, "num_episodes": 6, "seed0": 100000,
    "num_workers": 2, "execute_steps": 50, "num_steps": None, "num_videos": 2, "video_fps": 50,
    "time_budget_s": 300, "record_rollouts": False,
}


def smooth_frames(t: int, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    """Gradients (JPEG keeps them within a few grey levels), different per step."""
    y, x = np.mgrid[0:size, 0:size]
    return [np.stack([(x * 4 + 10 * i) % 256, (y * 4 + seed) % 256, np.full_like(x, 40 * i % 256)], -1).astype(np.uint8)
            for i in range(t)]


def write_demos(folder: Path, n: int = 2, length: int = 20) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        write_aloha_episode(folder / f"episode_{i}.hdf5", rng.normal(size=(length, 14)), rng.normal(size=(length, 14)),
                            {"top": rng.integers(0, 255, (length, 32, 32, 3), dtype=np.uint8)})
    return folder


def aloha_dm(demos: Path, rollouts: Path, **kwargs) -> AlohaDataModule:
    return AlohaDataModule(data_dir=str(demos), rollout_dir=str(rollouts), image_size=16, chunk_size=5,
                           val_fraction=0, treat_demos_as_success_rollouts=False,
                           statistics_path=str(demos / "stats.json"), **kwargs)


def recorded(t: int, seed: int = 0) -> EpisodeRecorder:
    rec = EpisodeRecorder()
    for i, frame in enumerate(smooth_frames(t, seed=seed)):
        rec.add({"images": {"top": frame}, "proprio": np.full(14, i, np.float32), "instruction": "transfer the cube"},
                np.full(14, -i, np.float32), float(i % 3))
    return rec


def one_error_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in text, text[-3000:]
    return lines[0]


# ------------------------------------------------------------------------------------------------ files and index


def test_writer_round_trip(tmp_path):
    frames = smooth_frames(6)
    rng = np.random.default_rng(1)
    proprio, actions = rng.normal(size=(6, 14)), rng.normal(size=(6, 14))
    rewards = np.array([0, 1, 2, 2, 3, 4], np.float32)
    path = write_rollout(tmp_path / "ep.hdf5", {"top": frames, "cam_left_wrist": frames[::-1]}, proprio, actions,
                         rewards, success=True, task_description="transfer the cube",
                         attrs={"seed": 7, "env": "aloha_sim", "checkpoint": None, "planner": "none",
                                "env_config": {"name": "aloha_sim"}})
    with h5py.File(path) as f:
        assert set(f) == {"primary_images_jpeg", "wrist_left_images_jpeg", "proprio", "actions", "rewards"}
        assert f["primary_images_jpeg"].shape == (6,) and f["primary_images_jpeg"].dtype.kind == "O"
        assert f["proprio"].dtype == f["actions"].dtype == f["rewards"].dtype == np.float32
        assert f.attrs["success"] and f.attrs["success"].dtype == bool
    back = read_rollout(path)
    for cam, sent in (("top", frames), ("cam_left_wrist", frames[::-1])):
        got = np.stack(back["images"][cam]).astype(int)
        assert got.shape == (6, 32, 32, 3) and np.abs(got - np.stack(sent)).mean() < 2.0  # JPEG quality 95
    np.testing.assert_array_equal(back["proprio"], proprio.astype(np.float32))
    np.testing.assert_array_equal(back["actions"], actions.astype(np.float32))
    np.testing.assert_array_equal(back["rewards"], rewards)
    a = back["attrs"]
    assert a["success"] and a["task_description"] == "transfer the cube" and a["format"] == FORMAT
    assert a["seed"] == 7 and a["env"] == "aloha_sim" and a["steps"] == 6 and a["checkpoint"] == ""
    assert a["total_reward"] == 12.0 and a["max_reward"] == 4.0 and a["env_config"] == {"name": "aloha_sim"}
    assert a["cameras"] == {"top": "primary_images_jpeg", "cam_left_wrist": "wrist_left_images_jpeg"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ep.hdf5"]  # written atomically: no temp file left
    with pytest.raises(ValueError, match="camera 'top' has 5 frames; expected 6"):
        write_rollout(tmp_path / "bad.hdf5", {"top": frames[:5]}, proprio, actions, rewards, success=False)
    assert not (tmp_path / "bad.hdf5").exists()


def test_one_camera_mapping_for_every_benchmark():
    from cosmos_lit.datamodules import libero, robocasa
    from cosmos_lit.datamodules.aloha import ROLLOUT_JPEG_KEYS

    assert ROLLOUT_JPEG_KEYS == {"cam_high": "primary_images_jpeg", "top": "primary_images_jpeg",
                                 "cam_left_wrist": "wrist_left_images_jpeg", "cam_right_wrist": "wrist_right_images_jpeg"}
    assert libero.ROLLOUT_IMAGE_KEYS == {"wrist": "wrist_images", "primary": "primary_images"}
    assert robocasa.ROLLOUT_IMAGE_KEYS["robot0_agentview_right"] == "secondary_images"
    assert rollout_image_key("robot0_eye_in_hand") == "wrist_images_jpeg" and rollout_image_key("side") == "side_images_jpeg"


def test_index_is_rewritten_after_each_episode_and_a_folder_is_added_to(tmp_path):
    folder = RolloutFolder(tmp_path / "ro")
    assert read_index(tmp_path / "ro")["episodes"] == []
    p0 = folder.add(recorded(5), seed=100, success=False, total_reward=3.0, max_reward=2.0, attrs={"env": "aloha_sim"})
    assert [e["file"] for e in read_index(folder.path)["episodes"]] == [p0.name]
    p1 = folder.add(recorded(4, seed=1), seed=101, success=True, total_reward=4.0, max_reward=4.0)
    index = read_index(folder.path)
    assert index["format"] == FORMAT and index["episodes_total"] == 2 and index["successes"] == 1
    assert index["episodes"][1] == {"file": p1.name, "seed": 101, "success": True, "steps": 4, "total_reward": 4.0,
                                    "max_reward": 4.0, "env": "", "task": ""}
    assert p0.name == "episode_00000--seed=100--success=False.hdf5" and p1.name.startswith("episode_00001--seed=101")
    # a crash while writing an episode leaves the index and the folder as they were
    broken = recorded(3)
    broken.proprio[1] = np.zeros(3, np.float32)  # wrong width: np.stack fails inside the write
    with pytest.raises(ValueError):
        folder.add(broken, seed=102, success=False, total_reward=0.0, max_reward=0.0)
    assert len(read_index(folder.path)["episodes"]) == 2
    assert sorted(p.name for p in folder.path.iterdir()) == sorted([INDEX_FILE, p0.name, p1.name])
    # reopened: numbering goes on; the files keep their content
    again = RolloutFolder(folder.path)
    p2 = again.add(recorded(3), seed=100, success=False, total_reward=0.0, max_reward=0.0, suite="libero_goal")
    assert p2.name == "episode_00002--seed=100--success=False--suite=libero_goal.hdf5"
    assert len(read_index(folder.path)["episodes"]) == 3 and read_rollout(p0)["attrs"]["seed"] == 100


def test_a_folder_that_is_not_a_rollout_folder_is_refused(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"mine: folder is not empty and is not a rollout folder \(no index.json\)"):
        RolloutFolder(tmp_path / "mine")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / INDEX_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=r"bad/index.json: not a rollout index"):
        check_folder(tmp_path / "bad")
    assert check_folder(tmp_path / "new") == [] and not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------------------------ read-back


def test_rollouts_load_back_as_rollouts_with_their_success_flags(tmp_path):
    demos = write_demos(tmp_path / "demos")
    folder = RolloutFolder(tmp_path / "ro")
    folder.add(recorded(12), seed=1, success=True, total_reward=1.0, max_reward=1.0)
    folder.add(recorded(10, seed=5), seed=2, success=False, total_reward=0.0, max_reward=0.0)
    dm = aloha_dm(demos, folder.path)
    dm.setup("fit")
    assert [r.rollout for r in dm.episodes] == [False, False, True, True]
    assert [dm._episodes[e].reward for e in dm._rollout_ids] == [1.0, 0.0]
    assert [dm._episodes[e].length for e in dm._rollout_ids] == [12, 10]
    assert dm._episodes[2].instruction == "transfer the cube"
    sample = dm.train_dataset()[len(dm.train_dataset()) - 1]  # the last slots are the failure rollout's
    assert int(sample["episode"]) == 3 and sample["images"].shape == (2, 3, 16, 16)


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        data = data[: len(data) // 2]
    else:  # corrupt metadata inside a file that still opens: the root group's local heap
        assert b"HEAP" in data
        data = data.replace(b"HEAP", b"JUNK", 1)
    path.write_bytes(data)


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_a_damaged_rollout_file_is_one_error_naming_it(tmp_path, how):
    demos = write_demos(tmp_path / "demos")
    folder = RolloutFolder(tmp_path / "ro")
    folder.add(recorded(8), seed=1, success=True, total_reward=1.0, max_reward=1.0)
    bad = folder.add(recorded(8), seed=2, success=False, total_reward=0.0, max_reward=0.0)
    _damage(bad, how)
    with pytest.raises(ValueError) as info:
        aloha_dm(demos, folder.path).setup("fit")
    msg = str(info.value)
    assert str(bad) in msg and "\n" not in msg, msg
    if how == "truncated":  # and on the command line: one line, no traceback, before any model is built
        proc = subprocess.run([sys.executable, "-m", "cosmos_lit", "fit", "--config", str(ROOT / "configs" / "aloha.yaml"),
                               f"data.data_dir={demos}", f"+data.rollout_dir={folder.path}", "data.cameras=[top]"],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert proc.returncode == 2 and bad.name in one_error_line(proc.stderr)


# ------------------------------------------------------------------------------------------------ recording


@pytest.fixture(scope="module")
def fixture_policy():
    from cosmos_lit.policy import CosmosPolicy

    torch.manual_seed(0)
    return CosmosPolicy.from_checkpoint(CKPT, execute_steps=5)


def test_a_crashed_episode_is_reported_and_not_written(tmp_path, fixture_policy):
    from cosmos_lit.eval.rollouts import run_episodes

    env = {"name": "debug", "cameras": ["top"], "image_size": 64, "action_dim": 14, "max_steps": 6,
           "fault": "raise", "fault_at_step": 2, "fault_seeds": [2]}
    results = run_episodes(fixture_policy, env, [1, 2, 3], num_workers=3, rollout_dir=tmp_path / "ro",
                           rollout_attrs={"checkpoint": str(CKPT), "planner": "none"})
    assert [r.seed for r in results] == [1, 2, 3]
    assert results[1].error and "injected fault" in results[1].error and results[1].rollout_path is None
    assert all(r.error is None and r.steps == 6 and r.rollout_path for r in (results[0], results[2]))
    index = read_index(tmp_path / "ro")
    assert [e["seed"] for e in index["episodes"]] == [1, 3]
    assert sorted(p.name for p in (tmp_path / "ro").glob("*.hdf5")) == sorted(Path(r.rollout_path).name for r in (results[0], results[2]))
    back = read_rollout(results[2].rollout_path)
    assert back["proprio"].shape == (6, 14) and back["actions"].shape == (6, 14) and len(back["images"]["top"]) == 6
    np.testing.assert_array_equal(back["proprio"][:, 0], np.arange(6))  # row t: the observation before action t
    a = back["attrs"]
    assert a["seed"] == 3 and a["env"] == "debug" and a["checkpoint"] == str(CKPT) and a["planner"] == "none"
    assert a["steps"] == 6 and a["task_description"] == "debug task" and not a["success"]


def test_sim_eval_records_under_the_step_folder(tmp_path):
    from cosmos_lit.callbacks.sim_eval import SimEvalCallback

    from cosmos_lit.checkpoint import load_task

    env = {"name": "debug", "cameras": ["top"], "image_size": 64, "action_dim": 14, "max_steps": 4, "success_at": 3}
    cb = SimEvalCallback(env, num_episodes=2, num_workers=2, execute_steps=4, num_videos=0, record_rollouts=True,
                         planner="none")
    trainer = SimpleNamespace(global_step=7, global_rank=0, world_size=1, default_root_dir=str(tmp_path), loggers=[],
                              callback_metrics={}, ckpt_path=None, precision="32-true")
    try:
        metrics = cb._evaluate(trainer, load_task(CKPT))
    finally:
        cb.teardown(None, None, "test")
    assert metrics["sim/success_rate"] == 1.0
    index = read_index(tmp_path / "eval" / "step_0000007" / "rollouts")
    assert [(e["seed"], e["success"], e["steps"]) for e in index["episodes"]] == [(100000, True, 3), (100001, True, 3)]
    attrs = read_rollout(tmp_path / "eval" / "step_0000007" / "rollouts" / index["episodes"][0]["file"])["attrs"]
    assert attrs["global_step"] == 7 and attrs["run_dir"] == str(tmp_path) and attrs["planner"] == "none"


# ------------------------------------------------------------------------------------------------ simulator


@pytest.mark.sim
def test_gym_aloha_rollouts_load_back_through_the_datamodule(tmp_path, fixture_policy):
    pytest.importorskip("gym_aloha")
    from cosmos_lit.eval.rollouts import run_episodes

    env = dict(ALOHA_EVAL["env"], max_steps=20)
    results = run_episodes(fixture_policy, env, [100_000, 100_001], num_workers=2, max_steps=20,
                           rollout_dir=tmp_path / "ro")
    assert all(r.error is None and r.steps == 20 and r.rollout_path for r in results), [r.error for r in results]
    back = read_rollout(results[0].rollout_path)
    assert np.stack(back["images"]["top"]).shape == (20, 64, 64, 3) and back["attrs"]["env"] == "aloha_sim"
    assert back["attrs"]["task"] == "transfer_cube" and back["rewards"].shape == (20,)
    dm = aloha_dm(write_demos(tmp_path / "demos"), tmp_path / "ro")
    dm.setup("fit")
    assert [dm._episodes[e].length for e in dm._rollout_ids] == [20, 20]
    assert [dm._episodes[e].reward for e in dm._rollout_ids] == [float(r.success) for r in results]
    assert len(dm.train_dataset()) > 0 and dm.train_dataset()[len(dm.train_dataset()) - 1]["images"].shape == (2, 3, 16, 16)


def _checkpoint_with_eval(tmp_path: Path) -> Path:
    ckpt = torch.load(CKPT, map_location="cpu", weights_only=True)
    ckpt["cosmos_lit"]["config"]["eval"] = dict(ALOHA_EVAL)
    path = tmp_path / "with_eval.ckpt"
    torch.save(ckpt, path)
    return path


def collect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cosmos_lit", "collect", *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def test_collect_without_an_eval_config_or_into_a_foreign_folder_is_one_line(tmp_path):
    line = one_error_line(collect(f"ckpt_path={CKPT}").stderr)
    assert line.startswith("error: eval:") and str(CKPT) in line
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.csv").write_text("1,2\n")
    line = one_error_line(collect(f"ckpt_path={_checkpoint_with_eval(tmp_path)}", f"out={tmp_path / 'mine'}").stderr)
    assert line.startswith("error: out:") and "mine" in line and "not a rollout folder" in line
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["data.csv"]


@pytest.mark.sim
def test_collect_verb_end_to_end(tmp_path):
    pytest.importorskip("gym_aloha")
    ckpt = _checkpoint_with_eval(tmp_path)
    out = tmp_path / "rollouts"
    proc = collect(f"ckpt_path={ckpt}", "eval.num_episodes=1", "eval.seed0=200000", "eval.env.max_steps=20",
                   "eval.num_workers=1", "eval.num_videos=0", "planner=best_of_n", "+planner.num_candidates=2",
                   "+planner.num_futures=1", "+planner.num_values=1", f"out={out}", "device=cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = [line for line in proc.stdout.splitlines() if line.startswith("collected ")]
    assert len(summary) == 1 and "collected 1 episodes" in summary[0] and str(out) in summary[0], proc.stdout[-2000:]
    (entry,) = read_index(out)["episodes"]
    assert entry["seed"] == 200000 and entry["steps"] == 20
    attrs = read_rollout(out / entry["file"])["attrs"]
    assert attrs["checkpoint"] == str(ckpt) and attrs["planner"] == "best_of_n" and attrs["env"] == "aloha_sim"
    results = json.loads((out / "results.json").read_text())
    assert results["summary"]["episodes"] == 1.0 and results["episodes"][0]["rollout_path"] == str(out / entry["file"])
    assert (out / "config.yaml").is_file()
