"""Latent-frame vector encoders: proprio and action chunks written into latent frames and read back."""

from __future__ import annotations

import lightning as L
import torch

from cosmos_lit.registry import ConfigError, register
from cosmos_lit.tiling import tile_vector, untile_vector


@register("vector_encoder", "tiled")
class TiledVectorEncoder(L.LightningModule):
    """Official latent injection: row-major flatten, repeat to fill C×H×W channel-major; read back as the mean of the
    full copies (``readout="mean"``) or the first copy only (``readout="first"``, NVIDIA's cosmos-rl port).

    ``write(vec (B, *dims), frame_shape) -> (B, C, H, W)``; ``read(frame (B, C, H, W), dims) -> (B, *dims)``.
    No parameters.
    """

    def __init__(self, readout: str = "mean"):
        super().__init__()
        if readout not in ("mean", "first"):
            raise ConfigError(f"model.vector_encoder.readout: expected 'mean' or 'first', got '{readout}'")
        self.readout = readout

    def write(self, vec: torch.Tensor, frame_shape: tuple[int, int, int]) -> torch.Tensor:
        return tile_vector(vec, frame_shape)

    def read(self, frame: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        if self.readout == "first":
            n = 1
            for d in dims:
                n *= d
            return frame.reshape(frame.shape[0], -1)[:, :n].reshape(frame.shape[0], *dims)
        return untile_vector(frame, dims)


def _interpolation(src: int, dst: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(dst, src) weights of linear interpolation between two uniform grids over the same interval."""
    pos = torch.linspace(0, src - 1, dst, dtype=torch.float64) if src > 1 else torch.zeros(dst, dtype=torch.float64)
    lo = pos.floor().long().clamp(max=src - 1)
    hi = (lo + 1).clamp(max=src - 1)
    frac = pos - lo
    w = torch.zeros(dst, src, dtype=torch.float64)
    w[torch.arange(dst), lo] += 1 - frac
    w[torch.arange(dst), hi] += frac
    return w.to(device=device, dtype=dtype)


@register("vector_encoder", "channel_time")
class ChannelTimeVectorEncoder(TiledVectorEncoder):
    """An ablation of the official tiling for action chunks (K, A): time along channels, not along rows.

    The official layout puts chunk step ``(W·c + h) mod K`` at latent row h of channel c, so the network must know
    which row each token sits at. A from-scratch tiny DiT does not learn that within CPU budgets (its chunks come out
    flat: docs/aloha_sim_experiments.md). Here the chunk is resampled at ``C·row_period`` knots (linear interpolation,
    knot i at step i·(K−1)/(C·row_period − 1)); knot ``c·row_period + (h mod row_period)`` is written at channel c,
    row h, and column w holds action dimension ``w mod A``. With ``row_period`` = the DiT's spatial patch size (2),
    a token's knots depend only on its output index, never on where the token is. Read back: the mean of each knot's
    copies, then linear interpolation to K steps (exact for chunks linear between knots; with more knots than steps,
    e.g. LIBERO's K = 16, the exact inverse of the resampling).

    Proprio (one vector per frame) uses the official tiling, which already repeats the same vector on every row when
    W is a multiple of its length.
    """

    def __init__(self, row_period: int = 2, readout: str = "mean"):
        super().__init__(readout=readout)
        if int(row_period) < 1:
            raise ConfigError(f"model.vector_encoder.row_period: expected a positive integer, got {row_period}")
        self.row_period = int(row_period)

    def _check(self, dims: tuple[int, ...], frame_shape: tuple[int, int, int]) -> None:
        c, h, w = frame_shape
        if dims[-1] > w or h % self.row_period:
            raise ConfigError(
                f"model.vector_encoder (channel_time): a latent frame {frame_shape} needs width >= the action "
                f"dimension {dims[-1]} and height divisible by row_period {self.row_period}"
            )

    def write(self, vec: torch.Tensor, frame_shape: tuple[int, int, int]) -> torch.Tensor:
        if vec.dim() != 3:
            return tile_vector(vec, frame_shape)
        self._check(tuple(vec.shape[1:]), frame_shape)
        c, h, w = frame_shape
        b, steps, dim = vec.shape
        knots = torch.einsum("ms,bsa->bma", _interpolation(steps, c * self.row_period, vec.dtype, vec.device), vec)
        knots = knots.reshape(b, c, self.row_period, dim)  # (B, C, r, A)
        rows = knots.repeat(1, 1, h // self.row_period, 1)  # row h holds knot h mod r
        return rows[..., torch.arange(w, device=vec.device) % dim]

    def read(self, frame: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        if len(dims) != 2:
            return super().read(frame, dims)
        self._check(dims, tuple(frame.shape[1:]))
        steps, dim = dims
        b, c, h, w = frame.shape
        full = (w // dim) * dim  # columns of complete copies of the action vector
        x = frame[..., :full].reshape(b, c, h // self.row_period, self.row_period, w // dim, dim)
        knots = x.mean(dim=(2, 4)).reshape(b, c * self.row_period, dim)
        m = c * self.row_period
        if m >= steps:  # more knots than steps: the resampling has a left inverse, the round trip is exact
            back = torch.linalg.pinv(_interpolation(steps, m, torch.float64, frame.device)).to(frame.dtype)
        else:  # fewer knots: interpolate between them (exact for chunks linear between knots)
            back = _interpolation(m, steps, frame.dtype, frame.device)  # (K, M)
        return torch.einsum("sm,bma->bsa", back, knots)
