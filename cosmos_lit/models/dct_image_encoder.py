"""A plain, weight-free image encoder: JPEG-style block DCT coefficients as latent channels.

An ablation of the Wan2.1 VAE for small CPU runs without pretrained weights. A randomly initialized tiny VAE keeps
little of a 3-pixel cube's position (a linear probe from first-frame latents to the grasp pose does ~3x worse than
from 8x8 average-pooled pixels, ``research/aloha_sim/probe_image_latents.py``); this encoder keeps exactly the low spatial
frequencies of every 8x8 patch:

    RGB in [-1, 1] -> YCbCr (JPEG matrix) -> per 8x8 patch, the first ``luma_coefficients`` 2-D DCT-II coefficients of
    Y and the first ``chroma_coefficients`` of Cb and Cr in JPEG zig-zag order -> (C, H/8, W/8) with
    C = luma + 2·chroma (16 by default, the Wan latent width) -> per-channel data normalization.

Same interface as :class:`~cosmos_lit.models.image_encoders.WanVAEFrameEncoder` with ``sequence_form="per_image"``
(no temporal compression: one latent frame per image). ``decode`` is the exact least-squares inverse (the DCT basis
is orthonormal): blurred images, exact when all 64 coefficients of every component are kept.
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F

from cosmos_lit.models.image_encoders import calibrate_channel_stats, encode_slots_per_image
from cosmos_lit.registry import ConfigError, register

PATCH = 8
RGB_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def zigzag(n: int = PATCH) -> list[tuple[int, int]]:
    """(row, col) frequency pairs of an n×n block in JPEG zig-zag order."""
    return sorted(((u, v) for u in range(n) for v in range(n)),
                  key=lambda uv: (uv[0] + uv[1], uv[0] if (uv[0] + uv[1]) % 2 else uv[1]))


def dct_matrix(n: int = PATCH) -> torch.Tensor:
    """Orthonormal DCT-II matrix (n, n): row k is the k-th cosine basis vector."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    x = torch.arange(n, dtype=torch.float64)[None]
    m = torch.cos(math.pi * (2 * x + 1) * k / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m


class DCTFrameEncoder(L.LightningModule):
    """Block-DCT latent-frame encoder (no learned weights).

    Args:
        luma_coefficients: DCT coefficients kept per 8x8 patch for Y (1..64).
        chroma_coefficients: coefficients kept for each of Cb and Cr (0..64).
        sequence_form: only "per_image" (one latent frame per image; accepted so configs can set it).
        normalization: "data" (per-channel mean/std measured by ``calibrate()``) or "none".
    """

    spatial_factor = PATCH

    def __init__(self, luma_coefficients: int = 8, chroma_coefficients: int = 4, sequence_form: str = "per_image",
                 normalization: str = "data"):
        super().__init__()
        if not 1 <= luma_coefficients <= PATCH * PATCH or not 0 <= chroma_coefficients <= PATCH * PATCH:
            raise ConfigError(f"model.image_encoder: luma_coefficients in 1..64 and chroma_coefficients in 0..64, got "
                              f"{luma_coefficients} and {chroma_coefficients}")
        if sequence_form != "per_image":
            raise ConfigError(f"model.image_encoder.sequence_form: the dct encoder has no temporal compression, expected "
                              f"'per_image', got '{sequence_form}'")
        if normalization not in ("data", "none"):
            raise ConfigError(f"model.image_encoder.normalization: expected 'data' or 'none', got '{normalization}'")
        self.sequence_form = sequence_form
        self.normalization = normalization
        d = dct_matrix()
        freqs = zigzag()
        color = RGB_TO_YCBCR.double()
        enc, dec = [], []
        for comp, count in ((0, luma_coefficients), (1, chroma_coefficients), (2, chroma_coefficients)):
            for u, v in freqs[:count]:
                basis = torch.outer(d[u], d[v])  # (8, 8), unit norm
                enc.append(color[comp][:, None, None] * basis)  # (3, 8, 8): RGB -> this coefficient
                dec.append(torch.linalg.inv(color)[:, comp][:, None, None] * basis)  # coefficient -> RGB
        z = len(enc)
        self.register_buffer("enc_weight", torch.stack(enc).float(), persistent=False)  # (C, 3, 8, 8)
        self.register_buffer("dec_weight", torch.stack(dec).float(), persistent=False)
        self.register_buffer("latents_mean", torch.zeros(1, z, 1, 1, 1))
        self.register_buffer("latents_std", torch.ones(1, z, 1, 1, 1))
        self.register_buffer("calibrated", torch.tensor(normalization != "data"))

    @property
    def latent_channels(self) -> int:
        return int(self.enc_weight.shape[0])

    def latent_hw(self, image_size: int) -> tuple[int, int]:
        if image_size % 16:
            raise ConfigError(f"data.image_size: expected a multiple of 16 (8x patch x 2x DiT patch), got {image_size}")
        return image_size // PATCH, image_size // PATCH

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) in [-1, 1] -> (n, C, H/8, W/8) normalized coefficients."""
        coeffs = F.conv2d(images.float(), self.enc_weight, stride=PATCH)
        return (coeffs - self.latents_mean[:, :, 0]) / self.latents_std[:, :, 0]

    @torch.no_grad()
    def encode(self, slots: torch.Tensor) -> torch.Tensor:
        """(B, T−1, 3, H, W) in [-1, 1] -> (B, C, T, h, w), frame 0 = the black blank image."""
        if not bool(self.calibrated):
            raise RuntimeError("image encoder with normalization='data' used before calibrate(images)")
        return encode_slots_per_image(self, slots)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, T, h, w) -> (B, T, 3, H, W): least-squares reconstruction from the kept coefficients."""
        z = latents.float() * self.latents_std + self.latents_mean
        b, c, t, h, w = z.shape
        img = F.conv_transpose2d(z.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), self.dec_weight, stride=PATCH)
        return img.reshape(b, t, *img.shape[1:])

    def calibrate(self, slots: torch.Tensor) -> None:
        """Measure per-channel coefficient mean/std on a batch of training slots (normalization='data')."""
        calibrate_channel_stats(self, slots)


@register("image_encoder", "dct")
def dct(luma_coefficients: int = 8, chroma_coefficients: int = 4, sequence_form: str = "per_image",
        normalization: str = "data") -> DCTFrameEncoder:
    """Weight-free JPEG-style encoder: low-frequency 8x8 block-DCT coefficients of Y, Cb, Cr as latent channels."""
    return DCTFrameEncoder(luma_coefficients=luma_coefficients, chroma_coefficients=chroma_coefficients,
                           sequence_form=sequence_form, normalization=normalization)
