"""Writing vectors into latent frames and reading them back, exactly as the official code does.

Write (``replace_latent_with_action_chunk`` / ``replace_latent_with_proprio``): flatten row-major to n values, repeat
the whole vector ceil(C·H·W / n) times, truncate to C·H·W, reshape channel-major to (C, H, W).
Read (``extract_action_chunk_from_latent_sequence``): flatten the frame, keep the first floor(C·H·W / n)·n values,
reshape to (copies, n) and average over the full copies.
The value is a scalar broadcast to the whole frame and read back as the mean of all elements.
"""

from __future__ import annotations

import math

import torch


def tile_vector(vec: torch.Tensor, frame_shape: tuple[int, int, int]) -> torch.Tensor:
    """(B, *dims) -> (B, C, H, W) repeated copies of the row-major flattened vector."""
    c, h, w = frame_shape
    numel = c * h * w
    flat = vec.reshape(vec.shape[0], -1)
    n = flat.shape[1]
    if n > numel:
        raise ValueError(f"a vector of {n} values does not fit a latent frame of {numel} elements {frame_shape}")
    reps = math.ceil(numel / n)
    return flat.repeat(1, reps)[:, :numel].reshape(vec.shape[0], c, h, w)


def untile_vector(frame: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(B, C, H, W) -> (B, *shape): mean over the full copies of the tiled vector."""
    b = frame.shape[0]
    flat = frame.reshape(b, -1)
    n = math.prod(shape)
    copies = flat.shape[1] // n
    if copies < 1:
        raise ValueError(f"a latent frame of {flat.shape[1]} elements holds no full copy of {n} values")
    return flat[:, : copies * n].reshape(b, copies, n).mean(dim=1).reshape(b, *shape)


def broadcast_scalar(value: torch.Tensor, frame_shape: tuple[int, int, int]) -> torch.Tensor:
    """(B,) -> (B, C, H, W) filled with each sample's value."""
    return value.reshape(-1, 1, 1, 1).expand(-1, *frame_shape).clone()


def read_scalar(frame: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B,) mean of all elements."""
    return frame.reshape(frame.shape[0], -1).mean(dim=1)


def copies(n: int, frame_shape: tuple[int, int, int]) -> float:
    """How many copies of an n-value vector a frame holds (fractional when the last one is partial)."""
    return math.prod(frame_shape) / n
