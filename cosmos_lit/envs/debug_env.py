"""A tiny numpy-only env for testing evaluation plumbing (worker pools, callbacks) without a simulator.

Observations are deterministic functions of (seed, step); the episode succeeds at step ``success_at``. Faults can
be injected on purpose: ``fault="raise"`` raises RuntimeError, ``"exit"`` kills the process with ``os._exit(3)``
(a crash), ``"hang"`` sleeps forever; ``fault_in`` says where (``"init"``, ``"reset"``, ``"step"``) and
``fault_at_step`` after how many steps (for ``"step"``), ``fault_seeds`` for which episodes (default: all; reset
and step faults only).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from cosmos_lit.registry import register

FAULTS = (None, "raise", "exit", "hang")
FAULT_PLACES = ("init", "reset", "step")


@register("env", "debug")
class DebugEnv:
    """Deterministic fake env: images (S, S, 3) uint8 filled with ``(seed + step) % 256``, proprio (action_dim,)."""

    def __init__(
        self,
        cameras: tuple[str, ...] | list[str] = ("top",),
        image_size: int = 16,
        action_dim: int = 14,
        max_steps: int = 20,
        success_at: int | None = None,
        fault: str | None = None,
        fault_in: str = "step",
        fault_at_step: int = 0,
        fault_seeds: list[int] | None = None,
    ):
        if fault not in FAULTS or fault_in not in FAULT_PLACES:
            raise ValueError(
                f"DebugEnv: fault must be one of {FAULTS} and fault_in one of {FAULT_PLACES}, got {fault!r}, {fault_in!r}"
            )
        self.cameras = (cameras,) if isinstance(cameras, str) else tuple(cameras)
        self.image_size, self.action_dim, self.max_steps = int(image_size), int(action_dim), int(max_steps)
        self.success_at = success_at
        self.fault, self.fault_in, self.fault_at_step = fault, fault_in, int(fault_at_step)
        self.fault_seeds = None if fault_seeds is None else {int(s) for s in fault_seeds}
        self._seed, self._steps = 0, 0
        self._maybe_fault("init")

    def _maybe_fault(self, place: str) -> None:
        if self.fault is None or place != self.fault_in or (place == "step" and self._steps < self.fault_at_step):
            return
        if self.fault_seeds is not None and (place == "init" or self._seed not in self.fault_seeds):
            return
        if self.fault == "raise":
            raise RuntimeError(f"DebugEnv: injected fault in {place} at step {self._steps}")
        if self.fault == "exit":
            os._exit(3)
        while True:  # "hang"
            time.sleep(3600)

    def _obs(self) -> dict[str, Any]:
        value = (self._seed + self._steps) % 256
        image = np.full((self.image_size, self.image_size, 3), value, np.uint8)
        proprio = np.full(self.action_dim, self._steps, np.float32)
        return {"images": {c: image.copy() for c in self.cameras}, "proprio": proprio, "instruction": "debug task"}

    def reset(self, seed: int) -> dict[str, Any]:
        self._seed, self._steps = int(seed), 0
        self._maybe_fault("reset")
        return self._obs()

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
        action = np.asarray(action)
        if action.shape != (self.action_dim,):
            raise ValueError(f"DebugEnv.step: action must have shape ({self.action_dim},), got {action.shape}")
        self._maybe_fault("step")
        self._steps += 1
        success = self.success_at is not None and self._steps >= self.success_at
        done = success or self._steps >= self.max_steps
        return self._obs(), float(success), done, {"success": success}

    def render(self) -> np.ndarray:
        return np.concatenate([self._obs()["images"][c] for c in self.cameras], axis=1)

    def close(self) -> None:
        pass
