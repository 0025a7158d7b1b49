"""Closed-loop smoke evaluations: one short episode each in gym-aloha, robosuite Lift and LIBERO (in .venv-libero)
with a tiny randomly initialized Cosmos Policy, the ``SimEvalCallback`` inside ``Trainer.fit`` on ALOHA-sim demos,
and a crashing env that is counted while training goes on."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_lit.eval.rollouts import run_episodes, summarize
from cosmos_lit.policy import CosmosPolicy

sys.path.insert(0, os.path.dirname(__file__))
from helpers import libero_python_or_skip  # noqa: E402

pytestmark = pytest.mark.sim

TINY_MODEL = {
    "backbone": {"name": "cosmos_predict2_tiny"},
    "image_encoder": {"name": "wan2.1_tiny", "normalization": "none"},
    "text_encoder": {"name": "hash"},
}


def range_stats(action_lo, action_hi, proprio_dim: int) -> dict[str, list[float]]:
    lo, hi = np.asarray(action_lo, float), np.asarray(action_hi, float)
    stats = {"actions_min": lo.tolist(), "actions_max": hi.tolist(), "actions_mean": ((lo + hi) / 2).tolist(),
             "actions_std": ((hi - lo) / 4).tolist(), "actions_median": ((lo + hi) / 2).tolist()}
    for name, value in (("min", -2.0), ("max", 2.0), ("mean", 0.0), ("std", 1.0), ("median", 0.0)):
        stats[f"proprio_{name}"] = [value] * proprio_dim
    return stats


def tiny_policy(spec: dict, statistics: dict, **policy_kwargs) -> CosmosPolicy:
    from cosmos_lit.model import CosmosPolicyModel

    torch.manual_seed(0)
    model = CosmosPolicyModel(dict(TINY_MODEL), spec, statistics, sampling={"num_steps": 2})
    return CosmosPolicy(model, **policy_kwargs)


def assert_valid_mp4(path: str | Path, frames: int | None = None) -> None:
    import av

    path = Path(path)
    assert path.suffix == ".mp4" and path.stat().st_size > 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name in ("h264", "libx264", "mpeg4")
        count = sum(1 for _ in container.decode(stream))
    assert count > 0 and (frames is None or count == frames)


def check_one_episode(results, horizon: int) -> None:
    (r,) = results
    assert r.error is None, r.error
    assert 1 <= r.steps <= horizon and (r.success or r.steps == horizon)
    assert r.predicted_values and all(0.0 <= v <= 1.0 for v in r.predicted_values)
    assert_valid_mp4(r.video_path, frames=r.steps + 1)  # the reset frame and one per step
    assert summarize(results)["episodes"] == 1.0


# ------------------------------------------------------------------------------------------------ one episode each


def test_gym_aloha_transfer_cube_episode(tmp_path):
    spec = dict(cameras=["top"], proprio_dim=14, action_dim=14, chunk_size=50, gamma=0.998, fps=50, image_size=64)
    # joint targets in a safe box around the home pose; grippers 0 (closed) .. 1 (open)
    lo = [-0.3, -0.6, 0.2, -0.3, -0.3, -0.3, 0.0] * 2
    hi = [0.3, 0.0, 1.0, 0.3, 0.8, 0.3, 1.0] * 2
    policy = tiny_policy(spec, range_stats(lo, hi, 14))
    env = {"name": "aloha_sim", "task": "transfer_cube", "cameras": ["top"], "image_size": 64, "max_steps": 60,
           "fast_render": True}
    results = run_episodes(policy, env, [100_000], num_workers=1, max_steps=60, num_videos=1, video_dir=tmp_path)
    check_one_episode(results, 60)
    assert results[0].steps == 60 and len(results[0].predicted_values) == 2  # 50 + 10 steps: two queries


def test_write_video_roundtrip_and_atomic(tmp_path):
    from cosmos_lit.eval.rollouts import write_video

    frames = [np.full((50, 70, 3), 5 * i, np.uint8) for i in range(12)]  # odd-sized: padded to 64 x 80
    write_video(tmp_path / "v.mp4", frames, fps=50.0)
    assert_valid_mp4(tmp_path / "v.mp4", frames=12)
    with pytest.raises(ValueError):
        write_video(tmp_path / "bad.mp4", [np.zeros((8, 8), np.uint8)], fps=50.0)  # no colour axis
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]  # no partial file left behind


def test_a_failed_video_is_a_warning_not_a_lost_episode(tmp_path, monkeypatch):
    import cosmos_lit.eval.rollouts as evaluation

    def broken_writer(path, frames, fps):
        raise RuntimeError("no encoder")

    monkeypatch.setattr(evaluation, "write_video", broken_writer)
    spec = dict(cameras=["top"], proprio_dim=14, action_dim=14, chunk_size=50, gamma=0.998, fps=50, image_size=64)
    policy = tiny_policy(spec, range_stats([-0.1] * 14, [0.1] * 14, 14))
    env = {"name": "aloha_sim", "task": "transfer_cube", "cameras": ["top"], "image_size": 64, "max_steps": 5,
           "fast_render": True}
    with pytest.warns(UserWarning, match="could not write .*RuntimeError: no encoder"):
        (r,) = run_episodes(policy, env, [100_000], num_workers=1, max_steps=5, num_videos=1, video_dir=tmp_path)
    assert r.error is None and r.steps == 5 and r.video_path is None


def test_robosuite_lift_episode(tmp_path):
    spec = dict(cameras=["robot0_eye_in_hand", "agentview"], proprio_dim=9, action_dim=7, chunk_size=16, gamma=0.99,
                fps=20, image_size=32)
    policy = tiny_policy(spec, range_stats([-1.0] * 7, [1.0] * 7, 9), execute_steps=8)
    env = {"name": "robosuite", "env_name": "Lift", "cameras": spec["cameras"], "image_size": 64, "max_steps": 20,
           "fast_render": True}
    results = run_episodes(policy, env, [100_000], num_workers=1, max_steps=20, num_videos=1, video_dir=tmp_path)
    check_one_episode(results, 20)
    assert len(results[0].predicted_values) == -(-results[0].steps // 8)


def test_libero_episode_in_its_own_interpreter(tmp_path):
    python = libero_python_or_skip()
    spec = dict(cameras=["wrist", "primary"], proprio_dim=9, action_dim=7, chunk_size=16, gamma=0.99, fps=20,
                image_size=32)
    policy = tiny_policy(spec, range_stats([-1.0] * 7, [1.0] * 7, 9), image_pipeline={"center_crop": True})
    env = {"name": "libero", "suite": "libero_spatial", "task_id": 0, "image_size": 128, "cameras": spec["cameras"],
           "max_steps": 20}
    results = run_episodes(policy, env, [0], num_workers=1, max_steps=20, num_videos=1, video_dir=tmp_path,
                           python_executable=python)
    check_one_episode(results, 20)
    assert results[0].steps == 20 and len(results[0].predicted_values) == 2


# ------------------------------------------------------------------------------------------------ inside Trainer.fit


@pytest.fixture(scope="module")
def aloha_dm(tmp_path_factory):
    from cosmos_lit.datamodules.aloha_sim import AlohaSimDataModule

    dm = AlohaSimDataModule(data_dir=str(tmp_path_factory.mktemp("aloha_sim") / "transfer_cube"), num_demos=2,
                            demo_workers=2, image_size=64, batch_size=2, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def fit_with(dm, callback, run_dir: Path, max_steps: int = 3):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from cosmos_lit.tasks.post_training import CosmosPolicyTask

    torch.manual_seed(0)
    model = dict(TINY_MODEL, image_encoder={"name": "wan2.1_tiny"})  # latent statistics calibrated at fit start
    task = CosmosPolicyTask(model={**model, "sampling": {"num_steps": 2}}, spec=dm.spec.to_dict(), statistics=dm.statistics,
                            optim={"warmup_steps": 1})
    logger = CSVLogger(str(run_dir), name="logs", version=0)
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=logger, callbacks=[callback],
                        default_root_dir=str(run_dir), enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, num_sanity_val_steps=0, enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(task, datamodule=dm)
    with open(run_dir / "logs" / "version_0" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return trainer, rows


def test_sim_eval_callback_in_fit_logs_success_video_and_episodes(aloha_dm, tmp_path):
    from cosmos_lit.callbacks.sim_eval import SimEvalCallback

    env = {"name": "aloha_sim", "task": "transfer_cube", "cameras": ["top"], "image_size": 64, "max_steps": 60,
           "fast_render": True}
    cb = SimEvalCallback(env=env, every_n_steps=0, num_episodes=1, num_workers=1, max_steps=60, num_videos=1,
                         time_budget_s=120)
    trainer, rows = fit_with(aloha_dm, cb, tmp_path / "run")
    assert trainer.global_step == 3 and len(cb.history) == 1  # evaluated once, at the last step
    (h,) = cb.history
    assert h["step"] == 3 and h["sim/episodes"] == 1 and h["sim/errors"] == 0 and h["sim/success_rate"] in (0.0, 1.0)
    logged = [r for r in rows if r.get("sim/success_rate")]
    assert len(logged) == 1 and float(logged[0]["sim/success_rate"]) == h["sim/success_rate"] and logged[0]["step"] == "3"
    out = tmp_path / "run" / "eval" / "step_0000003"
    report = json.loads((out / "episodes_rank0.json").read_text())
    (ep,) = report["episodes"]
    assert report["step"] == 3 and ep["seed"] == 100_000 and ep["steps"] == 60 and ep["error"] is None
    # sim/mean_return is the per-episode total reward (named for what it is), sim/mean_max_reward the best step's
    assert "sim/mean_reward" not in h and h["sim/mean_return"] == pytest.approx(ep["total_reward"])
    assert h["sim/mean_max_reward"] == pytest.approx(ep["max_reward"]) and h["sim/mean_return"] >= h["sim/mean_max_reward"]
    assert "sim/mean_return" in logged[0] and "sim/mean_reward" not in logged[0]
    (video,) = sorted((out / "videos").glob("*.mp4"))
    assert ep["video_path"] == str(video)
    assert_valid_mp4(video, frames=61)


def test_crashing_env_is_counted_and_training_goes_on(aloha_dm, tmp_path):
    from cosmos_lit.callbacks.sim_eval import SimEvalCallback

    # the worker process dies (os._exit) at the second step of every episode
    env = {"name": "debug", "cameras": ["top"], "image_size": 16, "action_dim": 14, "max_steps": 10, "fault": "exit",
           "fault_at_step": 1}
    cb = SimEvalCallback(env=env, every_n_steps=2, num_episodes=2, num_workers=2, max_steps=10, execute_steps=5,
                         num_videos=0, time_budget_s=60)
    trainer, rows = fit_with(aloha_dm, cb, tmp_path / "run", max_steps=4)
    assert trainer.global_step == 4  # training went on past both evaluations
    assert [h["step"] for h in cb.history] == [2.0, 4.0]
    assert all(h["sim/errors"] == 2 and h["sim/episodes"] == 0 for h in cb.history)
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert [float(r["sim/errors"]) for r in rows if r.get("sim/errors")] == [2.0, 2.0]
    first = json.loads((tmp_path / "run" / "eval" / "step_0000002" / "episodes_rank0.json").read_text())
    assert [e["steps"] for e in first["episodes"]] == [1, 1]  # one good step, then the crash
    assert all("exited (code 3)" in e["error"] for e in first["episodes"])
