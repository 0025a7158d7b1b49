"""Latent-frame image encoders: camera images -> one latent frame per image slot.

``encoder.encode(slots) -> (B, C, T, h, w)`` where ``slots`` is (B, T−1, 3, H, W) in [-1, 1]: one image per
non-blank latent slot, with the black placeholder image (all −1, the official all-zero uint8 image) on slots that
vectors will later overwrite. The Wan2.1 VAE is causal in time, so how the sequence is formed matters:

- ``sequence_form="faithful"`` (official): the pixel video is one blank frame followed by 4 copies of every slot's
  image, 1 + 4·(T−1) frames, encoded in one pass -> T latent frames (posterior mean, per-channel normalized).
- ``sequence_form="per_image"``: every image encoded alone as a one-frame video (faster; latents of a slot no longer
  depend on the slots before it). An ablation, not the paper's setting.

``decode(latents) -> (B, T, 3, H, W)`` returns one image per latent frame (faithful: the first pixel frame of each
slot's group of 4).

The VAE is frozen (the official recipe never trains it).
"""

from __future__ import annotations

import contextlib
from typing import Any

import lightning as L
import torch

from cosmos_lit.registry import ConfigError, register

WAN21_VAE: dict[str, Any] = dict(
    base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[], temperal_downsample=[False, True, True]
)
WAN21_VAE_TINY: dict[str, Any] = dict(WAN21_VAE, base_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1)


class WanVAEFrameEncoder(L.LightningModule):
    """Wan2.1 VAE (diffusers ``AutoencoderKLWan``) as a latent-frame encoder.

    Args:
        config: ``AutoencoderKLWan`` keyword arguments.
        pretrained: local ``tokenizer.pth``, diffusers ``vae/`` folder or ``.safetensors``.
        trust_pickle: allow pickled checkpoints that need ``weights_only=False``.
        sequence_form: "faithful" or "per_image" (see module docstring).
        normalization: "wan" (the 16 published per-channel mean/std of Wan2.1), or "data": per-channel statistics
            measured on training images by ``calibrate()`` (for randomly initialized tiny VAEs, whose latents have
            arbitrary scale), or "none".
    """

    spatial_factor = 8

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        pretrained: str | None = None,
        trust_pickle: bool = False,
        sequence_form: str = "faithful",
        normalization: str = "wan",
        meta_init: bool = False,
    ):
        super().__init__()
        from diffusers import AutoencoderKLWan

        if sequence_form not in ("faithful", "per_image"):
            raise ConfigError(f"model.image_encoder.sequence_form: expected 'faithful' or 'per_image', got '{sequence_form}'")
        if normalization not in ("wan", "data", "none"):
            raise ConfigError(f"model.image_encoder.normalization: expected 'wan', 'data' or 'none', got '{normalization}'")
        self.sequence_form = sequence_form
        self.normalization = normalization
        ctx = torch.device("meta") if (meta_init or pretrained) else contextlib.nullcontext()
        with ctx:
            self.vae = AutoencoderKLWan(**(config or WAN21_VAE))
        if pretrained:
            from cosmos_lit.weights.wan_vae import load_vae_weights

            load_vae_weights(self.vae, pretrained, trust_pickle=trust_pickle)
        self.vae.requires_grad_(False)
        self.vae.eval()
        z = self.vae.config.z_dim
        if normalization == "wan":
            mean = torch.tensor(self.vae.config.latents_mean, dtype=torch.float32)
            std = torch.tensor(self.vae.config.latents_std, dtype=torch.float32)
        else:
            mean, std = torch.zeros(z), torch.ones(z)
        self.register_buffer("latents_mean", mean.view(1, z, 1, 1, 1))
        self.register_buffer("latents_std", std.view(1, z, 1, 1, 1))
        self.register_buffer("calibrated", torch.tensor(normalization != "data"))

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.z_dim)

    def latent_hw(self, image_size: int) -> tuple[int, int]:
        if image_size % 16:
            raise ConfigError(f"data.image_size: expected a multiple of 16 (8x VAE x 2x patch), got {image_size}")
        return image_size // self.spatial_factor, image_size // self.spatial_factor

    def train(self, mode: bool = True) -> "WanVAEFrameEncoder":
        super().train(mode)
        self.vae.eval()  # frozen: never in training mode
        return self

    def _encode_video(self, video: torch.Tensor) -> torch.Tensor:
        mu = self.vae.encode(video.to(self.vae.dtype)).latent_dist.mode().float()
        return (mu - self.latents_mean) / self.latents_std

    @torch.no_grad()
    def encode(self, slots: torch.Tensor) -> torch.Tensor:
        """(B, T−1, 3, H, W) in [-1, 1] -> (B, C, T, h, w) normalized latents (frame 0 = blank)."""
        if not bool(self.calibrated):
            raise RuntimeError("image encoder with normalization='data' used before calibrate(images)")
        if self.sequence_form == "faithful":
            blank = slots.new_full((slots.shape[0], 1, *slots.shape[2:]), -1.0)
            frames = torch.cat([blank, slots.repeat_interleave(4, dim=1)], dim=1)  # (B, 1+4n, 3, H, W)
            return self._encode_video(frames.permute(0, 2, 1, 3, 4))
        return encode_slots_per_image(self, slots)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) in [-1, 1] -> (n, C, h, w): each image encoded alone (the ``per_image`` form's latents)."""
        return self._encode_video(images[:, :, None])[:, :, 0]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, T, h, w) -> (B, T, 3, H, W) in [-1, 1], one image per latent frame."""
        z = latents.float() * self.latents_std + self.latents_mean
        b, c, t, h, w = z.shape
        if self.sequence_form == "faithful":
            video = self.vae.decode(z.to(self.vae.dtype)).sample.float()  # (B, 3, 1+4(T−1), H, W)
            idx = torch.tensor([0] + [1 + 4 * i for i in range(t - 1)], device=video.device)
            return video.index_select(2, idx).permute(0, 2, 1, 3, 4)
        per = z.permute(0, 2, 1, 3, 4).reshape(b * t, c, 1, h, w)
        img = self.vae.decode(per.to(self.vae.dtype)).sample.float()
        return img.reshape(b, t, *img.shape[1:]).squeeze(3)

    def calibrate(self, slots: torch.Tensor) -> None:
        """Measure per-channel latent mean/std on a batch of training slots (normalization='data')."""
        calibrate_channel_stats(self, slots)


def encode_slots_per_image(encoder: torch.nn.Module, slots: torch.Tensor) -> torch.Tensor:
    """The ``per_image`` form: the blank image and every slot (B, T−1, 3, H, W) through ``encoder.encode_images``
    one by one -> (B, C, T, h, w)."""
    b, n, c, h, w = slots.shape
    blank = slots.new_full((b, 1, c, h, w), -1.0)
    lat = encoder.encode_images(torch.cat([blank, slots], dim=1).reshape(b * (n + 1), c, h, w))
    return lat.reshape(b, n + 1, *lat.shape[1:]).permute(0, 2, 1, 3, 4)


@torch.no_grad()
def calibrate_channel_stats(encoder: torch.nn.Module, slots: torch.Tensor) -> None:
    """Set ``encoder``'s ``latents_mean``/``latents_std`` buffers (1, C, 1, 1, 1) to the per-channel statistics of its
    latents of ``slots`` (B, T−1, 3, H, W), the blank frame left out; no-op unless ``normalization == "data"``."""
    if encoder.normalization != "data":
        return
    encoder.latents_mean.zero_()
    encoder.latents_std.fill_(1.0)
    encoder.calibrated.fill_(True)
    lat = encoder.encode(slots)[:, :, 1:]
    encoder.latents_mean.copy_(lat.mean(dim=(0, 2, 3, 4)).view_as(encoder.latents_mean))
    encoder.latents_std.copy_(lat.std(dim=(0, 2, 3, 4)).clamp_min(1e-4).view_as(encoder.latents_std))


@register("image_encoder", "wan2.1")
def wan21(pretrained: str | None = None, trust_pickle: bool = False, sequence_form: str = "faithful",
          normalization: str = "wan", meta_init: bool = False) -> WanVAEFrameEncoder:
    """Wan2.1 VAE (126.9 M params; 16 channels, 8x spatial, 4x causal temporal); weights from ``pretrained=``."""
    return WanVAEFrameEncoder(config=dict(WAN21_VAE), pretrained=pretrained, trust_pickle=trust_pickle,
                              sequence_form=sequence_form, normalization=normalization, meta_init=meta_init)


@register("image_encoder", "wan2.1_tiny")
def wan21_tiny(base_dim: int = 8, num_res_blocks: int = 1, pretrained: str | None = None, trust_pickle: bool = False,
               sequence_form: str = "faithful", normalization: str = "data") -> WanVAEFrameEncoder:
    """The Wan2.1 VAE architecture at toy size (same 8x/4x compression); random init unless ``pretrained=``."""
    return WanVAEFrameEncoder(config=dict(WAN21_VAE_TINY, base_dim=base_dim, num_res_blocks=num_res_blocks),
                              pretrained=pretrained, trust_pickle=trust_pickle, sequence_form=sequence_form,
                              normalization=normalization)
