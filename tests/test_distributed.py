"""Distributed training on Lightning's strategies, on this CPU: DDP over 2 gloo processes follows the 1-process run
(same global batch, same noise; cosmos_lit.sample_stream), sharded simulation gives the same episodes, checkpoint
selection on a simulation metric works under DDP; FSDP's sharding plan on the meta device."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ALOHA_SIM = str(ROOT / "configs" / "aloha_sim.yaml")


def write_episodes(folder: Path, n: int = 4, length: int = 40) -> Path:
    from cosmos_lit.datamodules.aloha import write_aloha_episode

    rng = np.random.default_rng(0)
    for i in range(n):
        t = np.linspace(0, 1, length)[:, None]
        qpos = (np.sin(6 * t + np.arange(14) + i) * 0.3).astype(np.float32)
        images = {"top": rng.integers(0, 255, (length, 32, 32, 3), dtype=np.uint8)}
        write_aloha_episode(str(folder / f"episode_{i}.hdf5"), qpos, qpos, images, attrs={"sim": True})
    return folder


def tiny_fit_args(data_dir: Path, run_dir: Path, max_steps: int = 6) -> list[str]:
    """A few steps of the tiny model on 32-px ALOHA-format episodes (what the DDP and resume tests train)."""
    return ["fit", "--config", ALOHA_SIM, "data=aloha", f"data.data_dir={data_dir}", "data.cameras=[top]",
            "data.image_size=32", "data.chunk_size=8", "data.augment=false", "data.val_fraction=0",
            "data.num_workers=0", f"trainer.max_steps={max_steps}", "trainer.log_every_n_steps=1",
            "trainer.val_check_interval=1000", "+trainer.enable_progress_bar=false", f"run_dir={run_dir}"]


def run_group(cmd: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """``cmd`` in its own process group, all of which is killed on a time-out (no rank outlives a hung test)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout} s: {err[-3000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def cli(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "COSMOS_LIT_RUN_DIR"}
    full_env.setdefault("MUJOCO_GL", "egl")
    full_env.update(env or {})
    return run_group([sys.executable, "-m", "cosmos_lit", *args], full_env, timeout)


def losses(run_dir: Path, version: int = 0) -> dict[int, float]:
    """step -> train/loss of a run's CSV log."""
    with open(run_dir / "logs" / f"version_{version}" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def episodes(run_dir: Path) -> list[dict]:
    import json

    out = []
    for path in sorted(run_dir.glob("eval/step_*/episodes_rank*.json")):
        out += json.loads(path.read_text())["episodes"]
    return sorted(out, key=lambda e: e["seed"])


# ------------------------------------------------------------------------------------------------- the sample stream


def test_the_global_batches_do_not_depend_on_the_number_of_ranks():
    from cosmos_lit.sample_stream import GlobalBatchStream

    def batches(world: int, per_rank: int, start: int = 0) -> list[list[tuple[int, int]]]:
        ranks = [list(GlobalBatchStream(10, per_rank, seed=3, rank=r, world_size=world, start_batch=lambda: start))
                 for r in range(world)]
        steps = len(ranks[0]) // per_rank
        return [sum((rk[s * per_rank:(s + 1) * per_rank] for rk in ranks), []) for s in range(steps)]

    one = batches(1, 4)
    assert len(one) == 3  # ceil(10 / 4) steps per epoch; the stream runs on into the next permutation
    assert batches(2, 2) == one and batches(4, 1) == one
    assert sorted(i for i, _ in sum(one, [])[:10]) == list(range(10))  # the first permutation, whole
    assert [p for _, p in sum(one, [])] == list(range(12))  # positions are the sample keys
    assert batches(1, 4, start=1) == one[1:]  # resumed at step 1: the rest of the same epoch
    nxt = GlobalBatchStream(10, 4, seed=3, start_batch=lambda: 3)
    assert [p for _, p in nxt][:4] == [12, 13, 14, 15]  # the next epoch continues the stream


def test_sample_randomness_comes_from_the_key(tmp_path):
    from tests.helpers import make_datamodule

    write_episodes(tmp_path / "eps")
    dm = make_datamodule("aloha", tmp_path / "eps", 32, cameras=["top"], chunk_size=8, augment=True,
                         treat_demos_as_success_rollouts=True)
    dm.setup("fit")
    ds = dm.train_dataset()
    a, b = ds[(3, 17)], ds[(3, 17)]
    assert int(a["sample_key"]) == 17 and int(a["sample_type"]) == int(b["sample_type"])
    torch.testing.assert_close(a["images"], b["images"])  # the same augmentation
    assert "sample_key" not in ds[3]


# ------------------------------------------------------------------------------------------------------ DDP on CPU


SIM = ["eval.every_n_steps=3", "eval.num_episodes=4", "eval.env.max_steps=20", "eval.num_videos=0", "eval.execute_steps=8",
       "+checkpoint.monitor=sim/mean_return", "+checkpoint.mode=max", "checkpoint.every_n_train_steps=3"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> tuple[Path, Path]:
    """(data, run) of 6 steps in one process at batch 4, with simulated evaluation on 2 env workers."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = write_episodes(tmp / "eps")
    out = cli(*tiny_fit_args(data, tmp / "one"), "data.batch_size=4", "eval.num_workers=2", *SIM)
    assert out.returncode == 0, out.stderr[-3000:]
    return data, tmp / "one"


@pytest.mark.slow
@pytest.mark.sim
def test_ddp_on_two_cpu_processes_follows_the_one_process_run(one_process, tmp_path):
    """1 process × batch 4 and DDP 2 × batch 2: the same loss at every step, the same weights, the same simulated
    episodes (sharded seeds), and the best checkpoint chosen on a simulation metric."""
    data, one = one_process
    two = cli(*tiny_fit_args(data, tmp_path / "two"), "data.batch_size=2", "trainer=ddp_cpu", "eval.num_workers=1", *SIM)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("done: run directory") == 1  # one report, from rank 0

    l1, l2 = losses(one), losses(tmp_path / "two")
    assert sorted(l1) == sorted(l2) == list(range(6))
    np.testing.assert_allclose([l2[s] for s in range(6)], [l1[s] for s in range(6)], rtol=1e-5)
    w1, w2 = weights(one / "checkpoints" / "last.ckpt"), weights(tmp_path / "two" / "checkpoints" / "last.ckpt")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)

    # the same 4 episodes at each evaluation, two per rank under DDP
    e1, e2 = episodes(one), episodes(tmp_path / "two")
    assert len(e1) == len(e2) == 8
    assert len(list((tmp_path / "two").glob("eval/step_0000003/episodes_rank*.json"))) == 2
    for a, b in zip(e1, e2):
        assert (a["seed"], a["success"], a["steps"]) == (b["seed"], b["success"], b["steps"])
        assert a["total_reward"] == pytest.approx(b["total_reward"]) and a["max_reward"] == pytest.approx(b["max_reward"])

    # checkpoint selection on the simulation metric: every rank agreed, rank 0 wrote the best one
    best = [p.name for p in (tmp_path / "two" / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    assert len(best) == 1 and "step=" in best[0]
    metrics = (tmp_path / "two" / "logs" / "version_0" / "metrics.csv").read_text()
    assert "sim/mean_return" in metrics and "sim/episodes" in metrics


@pytest.mark.slow
@pytest.mark.sim
def test_torchrun_launches_the_same_run(one_process, tmp_path):
    """The documented multi-process launch (docs/scale_out.md): torchrun starts every rank, Lightning reads its
    environment, one run directory, the 1-process loss curve."""
    data, one = one_process
    env = {k: v for k, v in os.environ.items() if k != "COSMOS_LIT_RUN_DIR"}
    out = run_group([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                     "-m", "cosmos_lit", *tiny_fit_args(data, tmp_path / "tr"), "data.batch_size=2",
                     "trainer=ddp_cpu", "eval.num_workers=1", *SIM], env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    l1, lt = losses(one), losses(tmp_path / "tr")
    np.testing.assert_allclose([lt[s] for s in sorted(l1)], [l1[s] for s in sorted(l1)], rtol=1e-5)
    assert len(list((tmp_path / "tr" / "eval").glob("step_0000006/episodes_rank*.json"))) == 2


def test_a_torchrun_launch_without_run_dir_is_refused(tmp_path):
    data = write_episodes(tmp_path / "eps")
    args = [a for a in tiny_fit_args(data, tmp_path / "x") if not a.startswith("run_dir=")]
    out = cli(*args, "eval=none", env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
    assert out.returncode == 2
    line = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and "run_dir" in line[0] and "torchrun" in line[0], out.stderr[-2000:]
    assert not (tmp_path / "x").exists()


# -------------------------------------------------------------------------------------------------------------- FSDP


def test_fsdp_makes_every_dit_block_one_unit_on_the_meta_device():
    """Lightning refuses FSDP on CPU, so the sharding plan is checked on the tiny DiT built on the meta device (no
    memory, no process group): each transformer block is an FSDP unit and the blocks hold most parameters."""
    from cosmos_lit.callbacks.strategies import fsdp_units
    from cosmos_lit.cli import trainer_kwargs
    from cosmos_lit.config import compose, resolve
    from cosmos_lit.registry import build

    with torch.device("meta"):
        backbone = build({"name": "cosmos_predict2_tiny"}, "backbone", path="model.backbone")
    blocks = [n for n, _ in backbone.named_modules() if n.startswith("net.transformer_blocks.") and n.count(".") == 2]
    assert blocks and fsdp_units(backbone) == sorted(blocks)
    in_blocks = sum(p.numel() for n, p in backbone.named_parameters() if n.startswith("net.transformer_blocks."))
    assert in_blocks > 0.5 * sum(p.numel() for p in backbone.parameters())

    cfg = resolve(compose(Path(ALOHA_SIM), ["trainer=fsdp", "trainer.strategy.activation_checkpointing=true"])[0])
    from lightning.pytorch.strategies import FSDPStrategy

    strategy = trainer_kwargs(cfg)["strategy"]
    assert isinstance(strategy, FSDPStrategy)
    assert "CosmosTransformerBlock" in repr(strategy.kwargs["auto_wrap_policy"])  # the same units as fsdp_units
    assert "CosmosTransformerBlock" in repr(strategy._activation_checkpointing_kwargs)
    with pytest.raises(ValueError, match="requires a GPU accelerator"):  # why CPU CI cannot step FSDP
        import lightning as L

        L.Trainer(accelerator="cpu", devices=2, strategy=strategy)
