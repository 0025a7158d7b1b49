"""What a DataModule publishes about its data; every shape in the model is derived from it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class DataSpec:
    """Shapes and constants of one benchmark's data.

    Attributes:
        cameras: camera names in latent-slot order (e.g. wrist first, then primary, as the official layouts do).
        proprio_dim: length of the proprioceptive state vector.
        action_dim: length of one action (the model's action, e.g. 7 of RoboCasa's 12).
        chunk_size: K, actions per chunk; the "future" observation is at t+K (clipped to the episode end).
        gamma: discount of the Monte-Carlo value target.
        fps: control rate in Hz.
        image_size: side of the square images fed to the image encoder, in pixels.
        has_value: whether a value slot is in the layout.
        name: benchmark name (for logs).
    """

    cameras: tuple[str, ...]
    proprio_dim: int
    action_dim: int
    chunk_size: int
    gamma: float = 0.99
    fps: float = 50.0
    image_size: int = 224
    has_value: bool = True
    name: str = "custom"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from cosmos_lit.registry import ConfigError

        if not self.cameras:
            raise ConfigError("data spec: at least one camera is required")
        for key in ("proprio_dim", "action_dim", "chunk_size", "image_size"):
            if int(getattr(self, key)) <= 0:
                raise ConfigError(f"data spec: {key} must be positive, got {getattr(self, key)}")
        if not 0.0 < float(self.gamma) <= 1.0:
            raise ConfigError(f"data spec: gamma must be in (0, 1], got {self.gamma}")
        object.__setattr__(self, "cameras", tuple(self.cameras))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cameras"] = list(self.cameras)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataSpec":
        return cls(**{**d, "cameras": tuple(d["cameras"])})
