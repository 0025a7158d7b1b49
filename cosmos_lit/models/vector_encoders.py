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
