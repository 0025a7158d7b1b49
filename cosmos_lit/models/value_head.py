"""Value head-as-frame: the value is one more latent frame, written by broadcast and read back as its mean.

Targets are in [-1, 1] (docs/method.md#value-targets); predictions are reported on [0, 1] as clamp((v + 1)/2, 0, 1).
``value_head: none`` removes the value slot from the layout (the "no value" ablation).
"""

from __future__ import annotations

import lightning as L
import torch

from cosmos_lit.registry import register
from cosmos_lit.tiling import broadcast_scalar, read_scalar


@register("value_head", "frame")
class ValueFrameHead(L.LightningModule):
    """``write(value (B,) in [-1,1], frame_shape) -> (B, C, H, W)``; ``read(frame) -> (B,) in [0, 1]``."""

    enabled = True

    def write(self, value: torch.Tensor, frame_shape: tuple[int, int, int]) -> torch.Tensor:
        return broadcast_scalar(value, frame_shape)

    def read_raw(self, frame: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B,) value on the [-1, 1] training scale."""
        return read_scalar(frame)

    def read(self, frame: torch.Tensor) -> torch.Tensor:
        return ((self.read_raw(frame) + 1.0) / 2.0).clamp(0.0, 1.0)


@register("value_head", "none")
class NoValueHead(L.LightningModule):
    """No value frame in the layout."""

    enabled = False
