"""Latent-frame layout derived from a DataSpec, and the conditioning masks of the three sample types.

Slot order (docs/method.md#latent-layout), one latent frame per slot::

    blank | current proprio | current cameras... | action chunk | future proprio | future cameras... | value

so LIBERO (2 cameras) has 9 latent frames, RoboCasa and ALOHA (3 cameras) 11, a one-camera robot 7.
The policy conditions on the prefix up to (not including) the action frame.

Sample types and their clean (conditioning) frames (docs/method.md#sample-types-and-masks):
    policy       (0): blank, s
    world model  (1): blank, s, a
    value        (2): everything but the value frame
With ``mask_current_state_for_value`` (V(s') planning model) the value sample's current-state and action frames are
not conditioning but noisy, and only the value frame is supervised; with ``mask_future_state_for_value`` (Q(s, a),
the official ``mask_future_state_for_qvalue_prediction``) the future-state frames are, instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cosmos_lit.spec import DataSpec

POLICY, WORLD_MODEL, VALUE = 0, 1, 2
SAMPLE_TYPES = {"policy": POLICY, "world_model": WORLD_MODEL, "value": VALUE}


@dataclass(frozen=True)
class LatentLayout:
    """Indices of every slot in the latent sequence."""

    cameras: tuple[str, ...]
    has_value: bool

    @classmethod
    def from_spec(cls, spec: DataSpec) -> "LatentLayout":
        return cls(cameras=tuple(spec.cameras), has_value=spec.has_value)

    @property
    def num_cameras(self) -> int:
        return len(self.cameras)

    @property
    def blank(self) -> int:
        return 0

    @property
    def current_proprio(self) -> int:
        return 1

    def current_camera(self, i: int) -> int:
        return 2 + i

    @property
    def action(self) -> int:
        return 2 + self.num_cameras

    @property
    def future_proprio(self) -> int:
        return self.action + 1

    def future_camera(self, i: int) -> int:
        return self.future_proprio + 1 + i

    @property
    def value(self) -> int:
        if not self.has_value:
            raise AttributeError("this layout has no value frame")
        return self.future_proprio + 1 + self.num_cameras

    @property
    def num_frames(self) -> int:
        """Latent frames T; the pixel sequence has 1 + 4·(T−1) frames."""
        return self.future_proprio + 1 + self.num_cameras + (1 if self.has_value else 0)

    @property
    def num_pixel_frames(self) -> int:
        return 1 + 4 * (self.num_frames - 1)

    @property
    def num_condition_frames(self) -> int:
        """K: clean prefix of a policy sample (4 for LIBERO, 5 for RoboCasa/ALOHA)."""
        return self.action

    @property
    def current_state(self) -> tuple[int, int]:
        """(start, end) inclusive indices of the current-state block (1,3 LIBERO; 1,4 RoboCasa/ALOHA)."""
        return self.current_proprio, self.current_camera(self.num_cameras - 1)

    @property
    def future_state(self) -> tuple[int, int]:
        return self.future_proprio, self.future_camera(self.num_cameras - 1)

    @property
    def image_frames(self) -> list[int]:
        return [self.current_camera(i) for i in range(self.num_cameras)] + [
            self.future_camera(i) for i in range(self.num_cameras)
        ]

    @property
    def vector_frames(self) -> list[int]:
        frames = [self.current_proprio, self.action, self.future_proprio]
        return frames + ([self.value] if self.has_value else [])

    def slot_names(self) -> list[str]:
        names = ["blank", "proprio"] + [f"{c}" for c in self.cameras] + ["action", "future_proprio"]
        names += [f"future_{c}" for c in self.cameras]
        return names + (["value"] if self.has_value else [])

    def condition_mask(
        self, sample_type: torch.Tensor, mask_current_state_for_value: bool = False,
        mask_future_state_for_value: bool = False,
    ) -> torch.Tensor:
        """Per-frame conditioning mask (B, T) of 0/1 floats; 1 = clean ground truth.

        Args:
            sample_type: (B,) long tensor of POLICY / WORLD_MODEL / VALUE.
            mask_current_state_for_value: value samples see only s' (learn V(s')), not (s, a, s').
            mask_future_state_for_value: value samples see only (s, a) (learn Q(s, a)), not s'.
        """
        b = sample_type.shape[0]
        t = self.num_frames
        mask = torch.zeros(b, t, device=sample_type.device)
        mask[:, : self.num_condition_frames] = 1.0
        wm = sample_type == WORLD_MODEL
        mask[wm, self.action] = 1.0
        if self.has_value:
            val = sample_type == VALUE
            mask[val, :] = 1.0
            mask[val, self.value] = 0.0
            if mask_current_state_for_value:
                lo, hi = self.current_state
                mask[val, lo : hi + 1] = 0.0
                mask[val, self.action] = 0.0
            if mask_future_state_for_value:
                lo, hi = self.future_state
                mask[val, lo : hi + 1] = 0.0
        return mask

    def loss_mask(self, sample_type: torch.Tensor, mask_current_state_for_value: bool = False,
                  mask_future_state_for_value: bool = False) -> torch.Tensor:
        """Per-frame loss weights (B, T): 1 on supervised frames.

        Equals ``1 - condition_mask`` except for V(s') and Q(s, a) value samples, whose noisy masked frames are inputs
        only (the official code masks the loss to the value frame there).
        """
        loss = 1.0 - self.condition_mask(sample_type, mask_current_state_for_value, mask_future_state_for_value)
        if self.has_value and (mask_current_state_for_value or mask_future_state_for_value):
            val = sample_type == VALUE
            loss[val, :] = 0.0
            loss[val, self.value] = 1.0
        return loss
