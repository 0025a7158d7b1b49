"""Contracts of the registered components, as ``typing.Protocol`` classes.

``CosmosPolicyModel`` composes one of each; a new component satisfies its protocol (structurally: no base class
needed) and registers under its kind (``@register("backbone", "my_dit")``). Shapes: B batch, T latent frames, C latent
channels, h×w latent grid, S image side in pixels, L text tokens, D text width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from cosmos_lit.model import CosmosPolicyModel


@runtime_checkable
class Backbone(Protocol):
    """Velocity network: ``(net_in (B, C, T, h, w), timesteps (B, T), cond_mask (B, T), text (B, L, D)) -> (B, C, T, h, w)``."""

    @property
    def text_dim(self) -> int:
        """D, the width of the text embeddings it cross-attends to."""

    @property
    def latent_channels(self) -> int:
        """C."""

    def __call__(self, net_in: torch.Tensor, timesteps: torch.Tensor, cond_mask: torch.Tensor,
                 text: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class FrameEncoder(Protocol):
    """Latent-frame image encoder: one latent frame per image slot, and back.

    ``sequence_form`` is ``"faithful"`` (the slots form one video, each latent depends on the slots before it) or
    ``"per_image"`` (each image alone; a latent can then be cached per image). ``normalization == "data"`` encoders
    need ``calibrate`` on training slots before the first step (``calibrated`` tells whether that happened).
    """

    sequence_form: str
    normalization: str
    calibrated: torch.Tensor  # bool scalar buffer

    @property
    def latent_channels(self) -> int:
        """C."""

    def latent_hw(self, image_size: int) -> tuple[int, int]:
        """(h, w) of the latent grid for S×S images."""

    def encode(self, slots: torch.Tensor) -> torch.Tensor:
        """(B, T−1, 3, S, S) images in [-1, 1] -> (B, C, T, h, w) latents (frame 0 is the blank frame)."""

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, C, h, w), each image alone (the ``per_image`` latent of one slot)."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, T, h, w) -> (B, T, 3, S, S) images in about [-1, 1], one per latent frame."""

    def calibrate(self, slots: torch.Tensor) -> None:
        """Fit per-channel latent statistics on (B, T−1, 3, S, S) training slots."""


@runtime_checkable
class VectorEncoder(Protocol):
    """Writes a vector (proprio, action chunk) into one latent frame and reads it back."""

    def write(self, vec: torch.Tensor, frame_shape: tuple[int, int, int]) -> torch.Tensor:
        """(B, *dims) on [-1, 1] -> (B, C, h, w)."""

    def read(self, frame: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        """(B, C, h, w) -> (B, *dims)."""


@runtime_checkable
class ValueHead(Protocol):
    """The value as one latent frame (``enabled``), or no value slot in the layout at all (``enabled = False``)."""

    enabled: bool

    def write(self, value: torch.Tensor, frame_shape: tuple[int, int, int]) -> torch.Tensor:
        """(B,) on [-1, 1] -> (B, C, h, w)."""

    def read_raw(self, frame: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B,) on the [-1, 1] training scale."""

    def read(self, frame: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B,) value in [0, 1]."""


@runtime_checkable
class TextEncoder(Protocol):
    """Instructions -> (B, L, D) embeddings; ``dim`` is D."""

    dim: int

    def __call__(self, instructions: list[str]) -> torch.Tensor: ...


@runtime_checkable
class Planner(Protocol):
    """Turns the model's samples into the action chunk to execute.

    ``plan`` takes normalized inputs (current images (B, N, 3, S, S) in [-1, 1], proprio (B, P) on [-1, 1]) and returns
    at least ``actions`` (B, K, A) normalized and ``latents`` (B, C, T, h, w) of the chosen sample; ``num_steps``
    is the denoising step count of the direct policy sample (None: the model's default), passed per call; ``seed``
    is one base seed for the batch or one per observation.
    """

    def plan(self, model: "CosmosPolicyModel", current_images: torch.Tensor, proprio: torch.Tensor,
             instructions: list[str], seed: int | Sequence[int] = 0, num_steps: int | None = None) -> dict[str, Any]: ...


@runtime_checkable
class TrainsPolicy(Protocol):
    """A training task whose model can be evaluated while it trains (``callbacks.sim_eval``): ``inference_model`` is
    the model that samples (with the EMA backbone where the task keeps one)."""

    @property
    def inference_model(self) -> "CosmosPolicyModel": ...


def check_component(obj: Any, contract: type, path: str) -> None:
    """Raise one ConfigError when ``obj`` (built from config node ``path``) lacks a member of ``contract``."""
    from cosmos_lit.registry import ConfigError

    if not isinstance(obj, contract):
        wanted = {*getattr(contract, "__annotations__", {}), *(k for k in vars(contract) if not k.startswith("_"))}
        members = [m for m in wanted if not hasattr(obj, m)]
        raise ConfigError(f"{path}: {type(obj).__name__} is not a {contract.__name__} (missing: {', '.join(sorted(members)) or '?'})")
