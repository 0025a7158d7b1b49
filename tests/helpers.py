"""Helpers shared by several test files; tests import it as ``from helpers import ...`` (like ``fixtures_writers``).

Imports nothing heavy at module level (torch and the registry's components load inside the functions that need
them), so any interpreter that runs the tests can import it.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cosmos_lit.spec import DataSpec

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------------- errors


def one_line(exc: pytest.ExceptionInfo) -> str:
    """The message of a raised exception, asserted to be a single line."""
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------------- LIBERO venv

LIBERO_PYTHON = REPO / ".venv-libero" / "bin" / "python"


def libero_python_or_skip() -> str:
    """The LIBERO interpreter; CI builds it before the tests, so there its absence is a failure."""
    if LIBERO_PYTHON.exists():
        return str(LIBERO_PYTHON)
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"CI: {LIBERO_PYTHON} is missing; `bash scripts/setup_libero.sh` must run before the tests")
    pytest.skip(f"no {LIBERO_PYTHON} (build it with `bash scripts/setup_libero.sh`)")


# ---------------------------------------------------------------------------------------------------- DataModules


def make_datamodule(name: str, data_dir, image_size: int, **kw):
    """The registered DataModule ``name`` on ``data_dir``: no augmentation, batches of 2, no validation split;
    ``kw`` overrides or adds config keys."""
    from cosmos_lit.registry import build

    cfg = {"name": name, "data_dir": str(data_dir), "image_size": image_size, "augment": False, "batch_size": 2,
           "val_fraction": 0.0}
    cfg.update(kw)
    return build(cfg, "datamodule", path="data")


def setup_error(make, data_dir, **kw) -> str:
    """The message of the ValueError / FileNotFoundError that ``make(data_dir, **kw).setup("fit")`` raises."""
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        make(data_dir, **kw).setup("fit")
    return str(info.value)


def level(x) -> float:
    """Mean of a [-1, 1] channel back in 0..255."""
    return float((x.mean() + 1) * 127.5)


def sample_at(ds, episode: int, t: int):
    """The sample of episode ``episode`` at step ``t`` (the first slot that holds it)."""
    for i in range(len(ds)):
        if ds.locate(i)[:2] == (episode, t):
            return ds[i]
    raise AssertionError(f"no sample ({episode}, {t})")


# ---------------------------------------------------------------------------------------------------- tiny model

TINY_SPEC = DataSpec(cameras=("wrist", "top"), proprio_dim=4, action_dim=3, chunk_size=8, image_size=32)
TINY_NODES = {"backbone": {"name": "cosmos_predict2_tiny"},
              "image_encoder": {"name": "wan2.1_tiny", "normalization": "none"}}
TINY_STATS = {"actions_min": [-2.0, 0.0, 10.0], "actions_max": [2.0, 1.0, 30.0], "proprio_min": [0.0] * 4,
              "proprio_max": [1.0] * 4}


def tiny_task(**task_options: Any):
    """A tiny randomly initialized ``cosmos_policy`` task (seed 0) on :data:`TINY_SPEC` and :data:`TINY_STATS`,
    2 sampling steps, in eval mode; ``task_options`` go into the task's config (e.g. ``ema_decay``)."""
    import torch

    from cosmos_lit.registry import build

    torch.manual_seed(0)
    model = {**copy.deepcopy(TINY_NODES), "sampling": {"num_steps": 2}}
    return build({"name": "cosmos_policy", **task_options}, "task", model=model, spec=TINY_SPEC.to_dict(),
                 statistics=copy.deepcopy(TINY_STATS)).eval()


def tiny_obs(seed: int) -> dict[str, Any]:
    """A random raw observation for :data:`TINY_SPEC` (48x40 uint8 images, instruction "stack the blocks")."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {"images": {c: rng.integers(0, 255, (48, 40, 3), dtype=np.uint8) for c in TINY_SPEC.cameras},
            "proprio": rng.random(4).astype(np.float32), "instruction": "stack the blocks"}


# ---------------------------------------------------------------------------------------------------- serving


class EchoPolicy:
    """A stand-in policy for the server tests: its chunk repeats each observation's proprio (so every client can
    check its own answer); each forward takes ``delay_s`` so that requests pile up while it runs; an observation whose
    instruction is ``fail_on`` makes the forward raise (an inference failure)."""

    def __init__(self, delay_s: float = 0.1, fail_on: str | None = None):
        self.spec = DataSpec(cameras=("top",), proprio_dim=3, action_dim=3, chunk_size=4, image_size=16, has_value=False)
        self.seed, self.queries, self.execute_steps, self.num_steps = 0, 0, 4, None
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.calls: list[int] = []

    def __call__(self, observations):
        time.sleep(self.delay_s)
        if self.fail_on is not None and any(o["instruction"] == self.fail_on for o in observations):
            raise RuntimeError(f"cannot do '{self.fail_on}'")
        proprio = np.stack([np.asarray(o["proprio"], np.float32) for o in observations])
        self.calls.append(len(observations))
        self.queries += 1
        return {"actions": np.repeat(proprio[:, None], 4, axis=1), "latents": None}


def in_process(policy: Any, obs: dict[str, Any], seed: int) -> dict[str, Any]:
    """``policy([obs])`` drawing the noise of ``seed`` (what a server request with ``"seed": seed`` gets)."""
    saved = policy.queries
    policy.queries = seed - policy.seed
    try:
        return policy([obs])
    finally:
        policy.queries = saved


class ServeProcess:
    """``python -m cosmos_lit serve ARGS`` as a subprocess (cwd: the repository) whose stderr lines a thread reads.

    ``wait_for(pattern)``: the first stderr line's match (None when the process exits or after ``timeout_s``);
    ``stop()``: SIGINT (as Ctrl-C), then (exit code, every stderr line)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        import queue
        import subprocess
        import sys
        import threading

        self.proc = subprocess.Popen([sys.executable, "-m", "cosmos_lit", "serve", *args], cwd=REPO,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self._lines: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=lambda: [self._lines.put(x) for x in self.proc.stderr], daemon=True)
        self._reader.start()
        self.seen: list[str] = []

    def wait_for(self, pattern: str, timeout_s: float = 180.0) -> Any:
        import queue
        import re

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=1.0)
            except queue.Empty:
                if self.proc.poll() is not None:
                    return None
                continue
            self.seen.append(line)
            m = re.search(pattern, line)
            if m:
                return m
        return None

    def stop(self, timeout_s: float = 60.0) -> tuple[int, str]:
        import signal
        import subprocess

        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=10)
        while not self._lines.empty():
            self.seen.append(self._lines.get())
        return int(self.proc.returncode), "".join(self.seen)
