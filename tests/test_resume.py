"""Exact resume: a fit killed with SIGKILL at a random step, or stopped by SIGTERM (pre-emption), continues from
``ckpt_path=last`` in the same run directory on the loss curve of the uninterrupted run; a kill during a checkpoint
write never leaves a file that the next start picks up."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_distributed import ROOT, cli, losses, tiny_fit_args, weights, write_episodes

STEPS = 10
# 4 steps per epoch (resumes cross epoch ends), EMA and the LR schedule in the restored state, a checkpoint per step
RESUME_ARGS = ["eval=none", "data.batch_size=4", "+data.samples_per_epoch=16", "task.ema_decay=0.9",
               "checkpoint.every_n_train_steps=1", "checkpoint.save_top_k=0", "task.optim.warmup_steps=3"]


def checkpoint_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return -1


def start_fit(data: Path, run_dir: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "COSMOS_LIT_RUN_DIR"}
    return subprocess.Popen([sys.executable, "-m", "cosmos_lit", *tiny_fit_args(data, run_dir, STEPS), *RESUME_ARGS],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_step(proc: subprocess.Popen, ckpt: Path, step: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while checkpoint_step(ckpt) < step:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run did not reach the step in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The data and an uninterrupted run of STEPS steps."""
    tmp = tmp_path_factory.mktemp("resume")
    data = write_episodes(tmp / "eps")
    out = cli(*tiny_fit_args(data, tmp / "ref", STEPS), *RESUME_ARGS)
    assert out.returncode == 0, out.stderr[-3000:]
    return data, tmp / "ref"


def assert_continues(run: Path, ref: Path, version: int) -> None:
    """The resumed part of ``run`` (log ``version``) has the reference's losses; both end with the same weights."""
    resumed, full = losses(run, version), losses(ref)
    assert resumed and max(resumed) == STEPS - 1
    np.testing.assert_allclose([resumed[s] for s in sorted(resumed)], [full[s] for s in sorted(resumed)], rtol=1e-6)
    w_run, w_ref = weights(run / "checkpoints" / "last.ckpt"), weights(ref / "checkpoints" / "last.ckpt")
    for k in w_ref:
        torch.testing.assert_close(w_run[k], w_ref[k], rtol=1e-6, atol=1e-7, msg=k)


@pytest.mark.slow
def test_a_run_killed_at_a_random_step_resumes_on_the_same_curve(reference, tmp_path):
    data, ref = reference
    kill_at = random.Random().randint(2, STEPS - 3)
    run = tmp_path / "run"
    proc = start_fit(data, run)
    wait_for_step(proc, run / "checkpoints" / "last.ckpt", kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_at = checkpoint_step(run / "checkpoints" / "last.ckpt")
    assert kill_at <= killed_at < STEPS, f"killed after step {kill_at}, last checkpoint at {killed_at}"

    out = cli(*tiny_fit_args(data, run, STEPS), *RESUME_ARGS, "ckpt_path=last")
    assert out.returncode == 0, out.stderr[-3000:]
    resumed = losses(run, version=1)
    assert min(resumed) == killed_at, (kill_at, killed_at, sorted(resumed))
    assert_continues(run, ref, version=1)


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_the_restarted_job_continues(reference, tmp_path):
    data, ref = reference
    run = tmp_path / "run"
    proc = start_fit(data, run)
    wait_for_step(proc, run / "checkpoints" / "last.ckpt", 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    stopped = [line for line in err.splitlines() if line.startswith("stopped:")]
    assert len(stopped) == 1 and "ckpt_path=last" in stopped[0] and f"run_dir={run}" in stopped[0], err[-3000:]
    assert "Traceback" not in err
    at = checkpoint_step(run / "checkpoints" / "last.ckpt")
    assert 3 <= at < STEPS and f"step {at}" in stopped[0]

    out = cli(*tiny_fit_args(data, run, STEPS), *RESUME_ARGS, "ckpt_path=last")  # the requeued job: same command
    assert out.returncode == 0, out.stderr[-3000:]
    assert min(losses(run, version=1)) == at
    assert_continues(run, ref, version=1)


def test_resume_needs_the_run_directory(tmp_path):
    args = [a for a in tiny_fit_args(tmp_path / "eps", tmp_path / "x") if not a.startswith("run_dir=")]
    write_episodes(tmp_path / "eps")
    out = cli(*args, "eval=none", "ckpt_path=last")
    assert out.returncode == 2
    line = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and "ckpt_path=last" in line[0] and "run_dir" in line[0], out.stderr[-2000:]


KILL_DURING_SAVE = """
import sys, torch
from cosmos_lit.callbacks.checkpointing import AtomicCheckpointIO
io, big = AtomicCheckpointIO(), torch.randn(16_000_000)
print("ready", flush=True)
for i in range(1000):
    io.save_checkpoint({"global_step": i, "w": big}, sys.argv[1])
"""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint_whole(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    target = tmp_path / "checkpoints" / "last.ckpt"
    for delay in (0.3, 0.9, 1.7):
        proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_SAVE, str(target)], cwd=ROOT, stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        if target.exists():  # a whole checkpoint of some step, never a truncated one
            assert checkpoint_step(target) >= 0
    left = [p.name for p in target.parent.iterdir() if p != target]
    assert all(name.startswith(".last.") and name.endswith(".tmp") for name in left), left
    # what ckpt_path=last picks (Lightning's own search of the checkpoint folder): the whole file, never a temp file
    found = ModelCheckpoint(dirpath=target.parent)._find_last_checkpoints(trainer=None)
    assert {Path(p).name for p in found} <= {"last.ckpt"}


def test_ckpt_path_last_takes_the_newest_of_last_and_slurm_requeue_checkpoints(tmp_path):
    from cosmos_lit.cli import last_checkpoint

    assert last_checkpoint({}, tmp_path) is None  # a first start: from step 0
    (tmp_path / "checkpoints").mkdir()
    last, hpc = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "hpc_ckpt_2.ckpt"
    (tmp_path / "checkpoints" / ".last.x1.tmp").write_bytes(b"half")  # a write that was killed: never picked
    last.write_bytes(b"1")
    assert last_checkpoint({}, tmp_path) == str(last)
    hpc.write_bytes(b"2")
    os.utime(last, (1, 1))
    assert last_checkpoint({}, tmp_path) == str(hpc)  # Lightning's SIGUSR1 requeue checkpoint is newer
    assert last_checkpoint({"checkpoint": {"dirpath": str(tmp_path / "else")}}, tmp_path) == str(hpc)
