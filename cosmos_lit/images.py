"""Image pipeline: stored frame (uint8 HWC, raw or encoded) -> model input (float32 CHW in [-1, 1], S×S).

One :class:`ImagePipeline` serves training, validation and deployment; per sample it runs, in order:

1. decode (JPEG/PNG bytes -> uint8 RGB) when the frame is stored encoded;
2. orientation: ``flip=True`` flips rows (``np.flipud``) for sources stored or rendered upside-down (LIBERO,
   robosuite and RoboCasa envs render upside-down; the Cosmos datasets store upright frames);
3. optional JPEG round trip at ``jpeg_quality`` (deployment on benchmarks whose training data is JPEG);
4. geometry, one resampling: resize to S×S (JPEGs at least 2S on a side decode at 1/2–1/8 size; raw frames are
   halved by 2×2 area averaging while at least 2S), then either
   - training augmentation (docs/method.md#image-pipelines): a random square crop of 90% of the area
     (side ``round(S·√0.9)``, as torchvision's RandomResizedCrop(scale=(0.9, 0.9), ratio=(1, 1))) resized back to
     S, then a rotation by U(−5°, 5°) about the centre with black corners; or
   - the test-time centre crop (``center_crop=True``): side ``int(S·√0.9)`` (212 for S=224), resized back to S;
   sources still more than 1.5× larger than S are first area-resized to S so the warp does not alias;
5. colour jitter in the official order, brightness U(0.7, 1.3), contrast U(0.6, 1.4), saturation U(0.5, 1.5),
   hue U(−0.05, 0.05) (fraction of a full turn), composed into one affine colour matrix (:func:`colour_matrix`)
   applied to uint8 in one saturating pass;
6. to float32 CHW, ``x/127.5 − 1``.

The same :class:`AugmentParams` are applied to every image of a sample (all cameras, current and future).
OpenCV does the pixel work (about 0.5 ms per 224² image here); it is imported on first use.

At test time (docs/method.md#image-pipelines, ``cosmos_utils.py::prepare_images_for_model``) the official code flips
LIBERO and RoboCasa renders upright, JPEG(q95)-round-trips them and takes the centre crop; ALOHA frames get the crop
only. Here each benchmark's deployment node (``configs/eval/<benchmark>.yaml``, which its protocol file
``configs/protocol/<benchmark>.yaml`` composes) says, once, which of these steps its env does (LIBERO's flips and
JPEGs its renders; robosuite and RoboCasa return upright frames) and which the policy's ``ImagePipeline`` does
(``image_pipeline``: LIBERO resize + crop, RoboCasa JPEG + resize + crop, ALOHA resize + crop).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

CROP_AREA = 0.9
ROTATION_DEG = 5.0
BRIGHTNESS = (0.7, 1.3)
CONTRAST = (0.6, 1.4)
SATURATION = (0.5, 1.5)
HUE = (-0.05, 0.05)

_cv2: Any = None
_RGB_FLAG = False


def cv2() -> Any:
    """The OpenCV module, imported once; a clear error when it is not installed."""
    global _cv2, _RGB_FLAG
    if _cv2 is None:
        try:
            import cv2 as module
        except ImportError:
            raise ImportError(
                "cosmos_lit.images needs OpenCV: pip install opencv-python-headless (or opencv-python)"
            ) from None
        module.setNumThreads(1)  # loader workers are the parallelism; OpenCV threads would oversubscribe
        _RGB_FLAG = hasattr(module, "IMREAD_COLOR_RGB")
        _cv2 = module
    return _cv2


def is_encoded(frame: Any) -> bool:
    """True for a stored compressed image: ``bytes`` or a 1-D uint8 array (h5py vlen / padded JPEG row)."""
    return isinstance(frame, (bytes, bytearray, memoryview)) or (
        isinstance(frame, np.ndarray) and frame.ndim == 1 and frame.dtype == np.uint8
    )


def decode_image(data: bytes | np.ndarray, reduce: int = 1) -> np.ndarray:
    """Decode JPEG/PNG bytes to uint8 RGB (H, W, 3).

    Args:
        data: encoded bytes; trailing zero padding (ALOHA's padded JPEG rows) is fine.
        reduce: 1, 2, 4 or 8: decode at 1/reduce size (JPEG DCT scaling; much faster for large frames).

    Raises:
        ValueError: the bytes are not a decodable image.
    """
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    cv = cv2()
    flags = {1: cv.IMREAD_COLOR, 2: cv.IMREAD_REDUCED_COLOR_2, 4: cv.IMREAD_REDUCED_COLOR_4, 8: cv.IMREAD_REDUCED_COLOR_8}
    if reduce == 1 and _RGB_FLAG:
        flags[1] = cv.IMREAD_COLOR_RGB  # OpenCV >= 4.10 decodes straight to RGB
    if reduce not in flags:
        raise ValueError(f"decode_image: reduce must be 1, 2, 4 or 8, got {reduce}")
    img = cv2().imdecode(buf, flags[reduce]) if buf.size else None
    if img is None or img.ndim != 3:
        head = bytes(buf[:4]).hex() if buf.size else "empty"
        raise ValueError(f"corrupt or unsupported image bytes ({buf.size} bytes, starting {head}); expected JPEG or PNG")
    return img if reduce == 1 and _RGB_FLAG else cv.cvtColor(img, cv.COLOR_BGR2RGB)


_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header without decoding, or None when it is not a parsable JPEG."""
    buf = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    if buf[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 9 <= len(buf):
        if buf[pos] != 0xFF:
            return None
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _SOF_MARKERS:
            return int.from_bytes(buf[pos + 5 : pos + 7], "big"), int.from_bytes(buf[pos + 7 : pos + 9], "big")
        if marker == 0xDA:  # start of scan before any frame header
            return None
        pos += 2 + int.from_bytes(buf[pos + 2 : pos + 4], "big")
    return None


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """Encode uint8 RGB (H, W, 3) as JPEG bytes."""
    ok, buf = cv2().imencode(".jpg", cv2().cvtColor(_check_rgb(image), cv2().COLOR_RGB2BGR),
                             [cv2().IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}")
    return buf.tobytes()


def jpeg_round_trip(image: np.ndarray, quality: int = 95) -> np.ndarray:
    """Encode and decode once, reproducing the artefacts of JPEG-stored training data."""
    return decode_image(encode_jpeg(image, quality))


def _check_rgb(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{type(image).__name__} {getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}".strip()
        raise ValueError(f"expected a uint8 RGB image of shape (H, W, 3), got {desc}")
    return image


@dataclass(frozen=True)
class AugmentParams:
    """Training augmentation parameters shared by all images of one sample.

    Attributes:
        crop_x, crop_y: top-left corner of the square crop, as fractions of the free range [0, S − side].
        angle: rotation about the image centre, in degrees.
        brightness, contrast, saturation: multiplicative factors (1 = unchanged).
        hue: hue shift as a fraction of a full turn.
    """

    crop_x: float = 0.5
    crop_y: float = 0.5
    angle: float = 0.0
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "AugmentParams":
        """Draw the ranges of docs/method.md#image-pipelines (``use_stronger_image_aug=True``)."""
        u = rng.random(7)
        lerp = lambda lo_hi, x: lo_hi[0] + (lo_hi[1] - lo_hi[0]) * float(x)  # noqa: E731
        return cls(
            crop_x=float(u[0]),
            crop_y=float(u[1]),
            angle=lerp((-ROTATION_DEG, ROTATION_DEG), u[2]),
            brightness=lerp(BRIGHTNESS, u[3]),
            contrast=lerp(CONTRAST, u[4]),
            saturation=lerp(SATURATION, u[5]),
            hue=lerp(HUE, u[6]),
        )


def train_crop_side(size: int) -> int:
    """Side of the 90%-area training crop (torchvision RandomResizedCrop rounding): 213 for 224."""
    return int(round(math.sqrt(CROP_AREA * size * size)))


def eval_crop_side(size: int) -> int:
    """Side of the test-time centre crop, ``int(S·√0.9)``: 212 for 224."""
    return int(size * math.sqrt(CROP_AREA))


def _warp_matrix(src_w: int, src_h: int, size: int, box: tuple[float, float, float], angle: float) -> np.ndarray:
    """2×3 matrix mapping output pixels to source pixels (pixel centres at integer + 0.5 convention).

    The source is (conceptually) resized to ``size``², cropped to ``box`` = (x0, y0, side) in that resized frame,
    resized back to ``size``², then rotated by ``angle`` degrees about the centre.
    """
    x0, y0, side = box
    c = (size - 1) / 2.0
    a = math.radians(angle)
    cos, sin = math.cos(a), math.sin(a)
    # output -> un-rotated output (inverse rotation about the centre)
    rot = np.array([[cos, -sin, c - cos * c + sin * c], [sin, cos, c - sin * c - cos * c], [0, 0, 1]])
    k = side / size  # un-rotated output -> crop frame -> resized frame
    crop = np.array([[k, 0, (k - 1) * 0.5 + x0], [0, k, (k - 1) * 0.5 + y0], [0, 0, 1]])
    sx, sy = src_w / size, src_h / size  # resized frame -> source
    resize = np.array([[sx, 0, (sx - 1) * 0.5], [0, sy, (sy - 1) * 0.5], [0, 0, 1]])
    return (resize @ crop @ rot)[:2].astype(np.float32)


_GRAY = np.array([0.2989, 0.587, 0.114])  # torchvision's rgb_to_grayscale weights
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = np.linalg.inv(_YIQ)


def colour_matrix(p: AugmentParams, mean_rgb: Sequence[float]) -> np.ndarray:
    """3×4 affine colour map of brightness, contrast, saturation and hue (applied in that order).

    brightness: x·b; contrast: blend with the mean grey level (torchvision: mean of the greyscale image);
    saturation: blend with the greyscale image; hue: rotation by 2π·hue of the chroma plane of YIQ, the linear
    counterpart of torchvision's HSV hue shift (grey stays grey; at the largest shift, 0.05 turn, the two differ by
    3.5–5.5/255 on average on saturated test images, against ~0.5 for an exact HSV round trip that costs 10× more).
    All four are affine and keep grey grey, so they compose into one matrix; the result is clipped once, at the
    end, where torchvision clips after each step (differences only on pixels pushed past 0/255 mid-way).
    """
    linear, offset_dir = _colour_linear(p)
    mean_grey = float(_GRAY @ np.asarray(mean_rgb[:3], np.float64))
    return np.concatenate([linear, (mean_grey * offset_dir)[:, None]], axis=1).astype(np.float32)


@functools.lru_cache(maxsize=16)  # the same params serve every image of a sample
def _colour_linear(p: AugmentParams) -> tuple[np.ndarray, np.ndarray]:
    b, c, sat = p.brightness, p.contrast, p.saturation
    s_mat = sat * np.eye(3) + (1.0 - sat) * np.outer(np.ones(3), _GRAY)
    a = 2.0 * math.pi * p.hue
    rot = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(a), math.sin(a)], [0.0, -math.sin(a), math.cos(a)]])
    h_mat = _YIQ_INV @ rot @ _YIQ
    return c * b * (h_mat @ s_mat), (1.0 - c) * b * (h_mat @ np.ones(3))


def _jitter(img: np.ndarray, p: AugmentParams) -> np.ndarray:
    """Colour jitter of one uint8 RGB image with :func:`colour_matrix` (one saturating pass)."""
    if (p.brightness, p.contrast, p.saturation, p.hue) == (1.0, 1.0, 1.0, 0.0):
        return img
    return cv2().transform(img, colour_matrix(p, cv2().mean(img)))


def to_tensor(images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """uint8 (n, H, W, 3) or a list of (H, W, 3) -> float32 (n, 3, H, W) in [-1, 1]."""
    stack = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
    if stack.ndim == 3:
        stack = stack[None]
    chw = np.ascontiguousarray(stack.transpose(0, 3, 1, 2))  # transpose the 1-byte array, not the float one
    return torch.from_numpy(chw).to(torch.float32).mul_(1.0 / 127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`to_tensor` for viewing: float (n, 3, H, W) in [-1, 1] -> uint8 (n, H, W, 3)."""
    x = ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


@dataclass(frozen=True)
class ImagePipeline:
    """Stored frames -> model images; see the module docstring for the steps.

    Attributes:
        image_size: S, output side in pixels.
        flip: flip rows (source stored/rendered upside-down).
        jpeg_quality: JPEG round-trip quality, or None for no round trip.
        center_crop: apply the test-time 90%-area centre crop when no augmentation is given.
    """

    image_size: int = 224
    flip: bool = False
    jpeg_quality: int | None = None
    center_crop: bool = False

    def __post_init__(self) -> None:
        if int(self.image_size) <= 0:
            raise ValueError(f"ImagePipeline: image_size must be positive, got {self.image_size}")

    def frame(self, frame: Any, params: AugmentParams | None = None, flip: bool | None = None) -> np.ndarray:
        """One stored frame (uint8 HWC, or encoded bytes) -> uint8 (S, S, 3).

        Args:
            params: training augmentation, or None (then ``center_crop`` decides the geometry).
            flip: overrides ``self.flip`` for this frame (per-episode orientation).
        """
        cv = cv2()
        s = int(self.image_size)
        if is_encoded(frame):
            # large JPEGs decode at 1/2, 1/4 or 1/8 size straight away when that still covers S×S (the round trip
            # of deployment needs the full image, so not then)
            size = jpeg_size(frame) if self.jpeg_quality is None else None
            reduce = 1
            while size is not None and reduce < 8 and min(size) // (2 * reduce) >= s:
                reduce *= 2
            img = decode_image(frame, reduce)
        else:
            img = _check_rgb(frame)
        if self.flip if flip is None else flip:
            img = img[::-1]
        if self.jpeg_quality is not None:
            img = jpeg_round_trip(np.ascontiguousarray(img), self.jpeg_quality)
        h, w = img.shape[:2]
        while h >= 2 * s and w >= 2 * s:  # exact 2× area halving is OpenCV's fast path
            img = cv.resize(np.ascontiguousarray(img), (w // 2, h // 2), interpolation=cv.INTER_AREA)
            h, w = img.shape[:2]
        if h > 1.5 * s or w > 1.5 * s:  # area-resize first: a bilinear warp would alias strong downscales
            img = cv.resize(np.ascontiguousarray(img), (s, s), interpolation=cv.INTER_AREA)
            h, w = s, s
        if params is not None:
            side = train_crop_side(s)
            box = (round(params.crop_x * (s - side)), round(params.crop_y * (s - side)), side)
            angle = params.angle
        elif self.center_crop:
            side = eval_crop_side(s)
            box, angle = ((s - side) / 2.0, (s - side) / 2.0, side), 0.0
        else:
            box, angle = (0.0, 0.0, s), 0.0
        if box == (0.0, 0.0, s) and angle == 0.0 and (h, w) == (s, s):
            out = np.ascontiguousarray(img)
        elif box == (0.0, 0.0, s) and angle == 0.0:
            interp = cv.INTER_AREA if h >= s and w >= s else cv.INTER_LINEAR
            out = cv.resize(np.ascontiguousarray(img), (s, s), interpolation=interp)
        else:
            m = _warp_matrix(w, h, s, box, angle)
            out = cv.warpAffine(np.ascontiguousarray(img), m, (s, s), flags=cv.INTER_LINEAR | cv.WARP_INVERSE_MAP,
                                borderMode=cv.BORDER_CONSTANT, borderValue=(0, 0, 0))
        return _jitter(out, params) if params is not None else out

    def __call__(
        self, frames: Sequence[Any], params: AugmentParams | None = None, flip: bool | Sequence[bool] | None = None
    ) -> torch.Tensor:
        """Frames of one sample -> float32 (n, 3, S, S) in [-1, 1], the same ``params`` for every frame."""
        flips = list(flip) if isinstance(flip, Sequence) else [flip] * len(frames)
        return to_tensor([self.frame(f, params, fl) for f, fl in zip(frames, flips)])

