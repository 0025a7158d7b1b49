"""One interface for every simulator the evaluation callback drives.

An env adapter is a plain class (no torch import at module level: LIBERO's adapter runs in its own interpreter,
which may have no torch) registered in the ``env`` registry. The evaluation callback builds it inside a worker
process (one env per process, started with ``spawn``/``forkserver`` so no OpenGL context crosses a fork), and talks to
it only through numpy observations:

    obs = env.reset(seed)              # dict: "images": {camera: (H, W, 3) uint8 upright}, "proprio": (P,) float32,
                                       #       "instruction": str
    obs, reward, done, info = env.step(action)   # action: (action_dim,) float, un-normalized env units
    frame = env.render()               # (H, W, 3) uint8 for videos
    env.close()

``info`` carries ``"success": bool`` on every step. ``max_steps`` is the episode horizon used by the evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class SimEnv(Protocol):
    """What the evaluator needs from a simulator."""

    cameras: tuple[str, ...]
    action_dim: int
    max_steps: int

    def reset(self, seed: int) -> dict[str, Any]: ...

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, dict[str, Any]]: ...

    def render(self) -> np.ndarray: ...

    def close(self) -> None: ...


@dataclass
class EpisodeResult:
    """Outcome of one closed-loop episode."""

    env: str
    task: str
    seed: int
    success: bool
    total_reward: float
    max_reward: float
    steps: int
    seconds: float
    error: str | None = None
    video_path: str | None = None
    predicted_values: list[float] = field(default_factory=list)
    rollout_path: str | None = None  # the episode's rollout file, when recorded (cosmos_lit.rollout_files)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
