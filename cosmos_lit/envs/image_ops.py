"""Image helpers shared by the simulator adapters: NumPy + Pillow only (no torch), so LIBERO's venv can use them.

Renderers that follow the OpenGL convention (robosuite, LIBERO, RoboCasa) return frames whose first row is the
bottom of the picture. The Cosmos Policy datasets store upright frames as JPEG (quality 95), so at evaluation time
the same flip and the same JPEG round trip are applied to what the simulator renders.
"""

from __future__ import annotations

import io

import numpy as np

JPEG_QUALITY = 95


def _check_rgb(image: np.ndarray, what: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{what}: expected an (H, W, 3) uint8 image, got shape {image.shape} dtype {image.dtype}")
    return image


def flip_upright(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 rendered bottom-up (OpenGL) -> the same frame top-down, as a contiguous copy."""
    return np.ascontiguousarray(_check_rgb(image, "flip_upright")[::-1])


def jpeg_encode(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """(H, W, 3) uint8 -> JPEG bytes (Pillow, 4:2:0 subsampling as Pillow does by default)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_check_rgb(image, "jpeg_encode")).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def jpeg_decode(data: bytes) -> np.ndarray:
    """JPEG bytes -> (H, W, 3) uint8."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def jpeg_roundtrip(image: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """Encode and decode once, so eval frames carry the same compression artefacts as JPEG-stored training data."""
    return jpeg_decode(jpeg_encode(image, quality))


def hstack_frames(frames: list[np.ndarray]) -> np.ndarray:
    """Cameras side by side for a video frame; frames of different heights are padded at the bottom with black."""
    if not frames:
        raise ValueError("hstack_frames: no frames given")
    height = max(f.shape[0] for f in frames)
    padded = [np.pad(f, ((0, height - f.shape[0]), (0, 0), (0, 0))) if f.shape[0] < height else f for f in frames]
    return np.concatenate(padded, axis=1)
