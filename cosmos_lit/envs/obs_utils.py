"""Observation pieces shared by the robosuite-family adapters (robosuite 1.5, RoboCasa, LIBERO on robosuite 1.4).

NumPy only: the LIBERO adapter runs in a venv without torch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cosmos_lit.envs.image_ops import flip_upright, jpeg_roundtrip

# The 9-D ``robot_states`` of the LIBERO / RoboCasa datasets, in this order.
ROBOT_STATE_KEYS = ("gripper_qpos", "eef_pos", "eef_quat")
ROBOT_STATE_DIM = 9


def robot_state(obs: Mapping[str, np.ndarray], prefix: str = "robot0_") -> np.ndarray:
    """(9,) float32 = gripper_qpos (2) + eef_pos (3, metres, world frame) + eef_quat (4, xyzw)."""
    missing = [prefix + k for k in ROBOT_STATE_KEYS if prefix + k not in obs]
    if missing:
        raise KeyError(f"simulator observation lacks {missing}; it has {sorted(obs)}")
    state = np.concatenate([np.asarray(obs[prefix + k], dtype=np.float32).reshape(-1) for k in ROBOT_STATE_KEYS])
    if state.shape != (ROBOT_STATE_DIM,):
        raise ValueError(f"robot state should be {ROBOT_STATE_DIM}-D, got {state.shape} from {ROBOT_STATE_KEYS}")
    return state


def camera_image(raw: np.ndarray, flip: bool, jpeg: bool) -> np.ndarray:
    """One rendered frame -> (H, W, 3) uint8 as the policy sees it: upright, optionally JPEG round-tripped."""
    image = flip_upright(raw) if flip else np.ascontiguousarray(raw)
    return jpeg_roundtrip(image) if jpeg else image


def check_action(action: np.ndarray, action_dim: int, env: str) -> np.ndarray:
    """(action_dim,) finite float64, or ValueError naming the env and what was wrong."""
    a = np.asarray(action, dtype=np.float64).reshape(-1)
    if a.shape != (action_dim,):
        raise ValueError(f"{env}: action must have shape ({action_dim},), got {np.shape(action)}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{env}: action has NaN or inf: {a}")
    return a
