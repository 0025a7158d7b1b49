"""Image pipeline: decode, orientation, JPEG round trip, resize, shared training augmentation, test-time presets."""

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from cosmos_lit.images import (
    AugmentParams,
    ImagePipeline,
    decode_image,
    encode_jpeg,
    eval_crop_side,
    jpeg_round_trip,
    to_tensor,
    to_uint8,
    train_crop_side,
)


def scene(h=64, w=64, seed=0):
    """Smooth colourful test image with an asymmetric marker (so flips and crops are visible)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w * 200 + 20, yy / h * 200 + 20, (xx + yy) / (h + w) * 150 + 50], -1)
    img[: h // 4, : w // 4] = (250, 30, 30)
    return img.astype(np.uint8)


def torch_chw(img):
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)


def hwc(t):
    return t.permute(1, 2, 0).numpy().astype(int)


def test_to_tensor_range_and_inverse():
    imgs = [scene(), scene()[::-1]]
    x = to_tensor(imgs)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32 and x.is_contiguous()
    assert x.min() >= -1 and x.max() <= 1
    assert to_tensor(np.zeros((8, 8, 3), np.uint8)).unique().tolist() == [-1.0]
    assert to_tensor(np.full((8, 8, 3), 255, np.uint8)).unique().tolist() == [1.0]
    np.testing.assert_array_equal(to_uint8(x)[1], np.ascontiguousarray(imgs[1]))


def test_decode_jpeg_padded_and_corrupt():
    img = scene()
    data = encode_jpeg(img, 95)
    padded = np.zeros(len(data) + 500, np.uint8)
    padded[: len(data)] = np.frombuffer(data, np.uint8)
    out = decode_image(padded)  # trailing zeros (ALOHA padded rows) are ignored by the decoder
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img).mean() < 2.0
    np.testing.assert_array_equal(out, decode_image(data))
    assert decode_image(data, reduce=2).shape == (32, 32, 3)
    with pytest.raises(ValueError, match="corrupt or unsupported image bytes"):
        decode_image(np.frombuffer(b"\x00\x01garbage" * 10, np.uint8))
    with pytest.raises(ValueError, match="corrupt"):
        decode_image(b"")


def test_jpeg_round_trip_close():
    img = scene()
    out = jpeg_round_trip(img, 95)
    assert out.shape == img.shape and 0 < np.abs(out.astype(int) - img).mean() < 2.0


@pytest.mark.parametrize("source", [(64, 64), (48, 80), (120, 160), (16, 16)])
def test_resize_any_source(source):
    img = scene(*source)
    pipe = ImagePipeline(image_size=32)
    out = pipe.frame(img)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    ref = TF.resize(torch_chw(img), [32, 32], antialias=True)
    assert np.abs(out.astype(int) - hwc(ref)).mean() < 6.0
    x = pipe([img, encode_jpeg(img)])
    assert x.shape == (2, 3, 32, 32) and x.min() >= -1 and x.max() <= 1


def test_flip_orientation():
    img = scene()
    upside_down = img[::-1]
    pipe = ImagePipeline(image_size=32)
    np.testing.assert_array_equal(ImagePipeline(image_size=32, flip=True).frame(upside_down), pipe.frame(img))
    np.testing.assert_array_equal(pipe.frame(upside_down, flip=True), pipe.frame(img))  # per-frame override
    # marker is top-left in the upright output
    out = pipe.frame(img)
    assert out[:4, :4, 0].mean() > 200 and out[-4:, :4, 0].mean() < 200


def test_train_crop_matches_torchvision_resized_crop():
    img = scene(224, 224)
    pipe = ImagePipeline(image_size=224)
    side = train_crop_side(224)
    assert side == 213  # torchvision RandomResizedCrop(scale=(0.9, 0.9), ratio=(1, 1)) rounding
    for cx, cy in ((0.0, 0.0), (1.0, 0.3)):
        p = AugmentParams(crop_x=cx, crop_y=cy)
        out = pipe.frame(img, p)
        x0, y0 = round(cx * (224 - side)), round(cy * (224 - side))
        ref = TF.resized_crop(torch_chw(img), y0, x0, side, side, [224, 224], antialias=True)
        assert np.abs(out.astype(int) - hwc(ref)).mean() < 1.5


def test_rotation_matches_torchvision_in_the_interior():
    img = scene(224, 224)
    out = ImagePipeline(image_size=224).frame(img, AugmentParams(crop_x=0.5, crop_y=0.5, angle=4.0))
    side = train_crop_side(224)
    off = round(0.5 * (224 - side))
    ref = TF.rotate(TF.resized_crop(torch_chw(img), off, off, side, side, [224, 224], antialias=True), 4.0,
                    interpolation=TF.InterpolationMode.BILINEAR)
    diff = np.abs(out.astype(int) - hwc(ref))[20:-20, 20:-20]
    assert diff.mean() < 2.0
    wrong_way = TF.rotate(TF.resized_crop(torch_chw(img), off, off, side, side, [224, 224], antialias=True), -4.0)
    assert np.abs(out.astype(int) - hwc(wrong_way))[20:-20, 20:-20].mean() > diff.mean() + 1.0
    assert (out[0, 0] == 0).all()  # rotated corners are black, as torchvision's fill=0


@pytest.mark.parametrize(
    "jitter",
    [dict(brightness=1.25), dict(contrast=0.65), dict(contrast=1.35), dict(saturation=1.4), dict(saturation=0.55),
     dict(hue=0.05), dict(hue=-0.03), dict(brightness=0.8, contrast=1.3, saturation=0.6, hue=0.04)],
)
def test_colour_jitter_matches_torchvision(jitter):
    img = scene(64, 64)
    p = AugmentParams(crop_x=0.0, crop_y=0.0, **jitter)
    pipe = ImagePipeline(image_size=64)
    geometric = pipe.frame(img, AugmentParams(crop_x=0.0, crop_y=0.0))
    out = pipe.frame(img, p)
    t = torch_chw(geometric)
    ref = TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(t, p.brightness), p.contrast),
                                             p.saturation), p.hue)
    diff = np.abs(out.astype(int) - hwc(ref))
    # brightness/contrast/saturation are exact up to rounding; hue is the YIQ rotation (3.5–5.5/255 at 0.05 turn)
    assert diff.mean() < (6.0 if p.hue else 1.0)
    assert np.abs(out.astype(int) - geometric).mean() > 2.0  # the jitter did something


def test_same_params_for_every_frame_of_a_sample():
    img = scene(48, 48)
    pipe = ImagePipeline(image_size=32)
    p = AugmentParams.sample(np.random.default_rng(3))
    x = pipe([img, encode_jpeg(img, 100), img], p)
    assert torch.equal(x[0], x[2])
    assert (x[0] - x[1]).abs().mean() < 0.03  # JPEG q100 copy: same transform up to codec noise
    other = pipe([img], AugmentParams.sample(np.random.default_rng(4)))
    assert (x[0] - other[0]).abs().mean() > 0.02


def test_augment_params_ranges():
    rng = np.random.default_rng(0)
    ps = [AugmentParams.sample(rng) for _ in range(400)]
    for name, lo, hi in (("angle", -5, 5), ("brightness", 0.7, 1.3), ("contrast", 0.6, 1.4),
                         ("saturation", 0.5, 1.5), ("hue", -0.05, 0.05), ("crop_x", 0, 1), ("crop_y", 0, 1)):
        vals = np.array([getattr(p, name) for p in ps])
        assert vals.min() >= lo and vals.max() <= hi
        assert vals.min() < lo + 0.1 * (hi - lo) and vals.max() > hi - 0.1 * (hi - lo)


def test_official_test_time_steps():
    """The official test-time steps on a raw render (flip, JPEG q95, resize, centre crop) against a torchvision
    reference. Which of them a benchmark's env does and which its policy does: tests/test_benchmark_facts.py."""
    assert eval_crop_side(224) == 212
    # reference: flip, JPEG q95, resize to S, centre crop int(S·√0.9), resize back
    img = scene(128, 128)
    out = ImagePipeline(image_size=64, flip=True, jpeg_quality=95, center_crop=True).frame(img[::-1])
    side = eval_crop_side(64)
    t = TF.resize(torch_chw(jpeg_round_trip(img, 95)), [64, 64], antialias=True)
    ref = TF.resize(TF.center_crop(t, [side, side]), [64, 64], antialias=True)
    assert out.shape == (64, 64, 3) and np.abs(out.astype(int) - hwc(ref)).mean() < 3.0
    plain = ImagePipeline(image_size=64, flip=True).frame(img[::-1])
    assert np.abs(out.astype(int) - plain.astype(int)).mean() > 1.0  # the crop zoomed in


def test_bad_input_messages():
    with pytest.raises(ValueError, match=r"expected a uint8 RGB image of shape \(H, W, 3\)"):
        ImagePipeline(image_size=8).frame(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="image_size must be positive"):
        ImagePipeline(image_size=0)


def test_large_sources_take_the_fast_paths_and_match_full_resize():
    from cosmos_lit.images import jpeg_size

    img = scene(480, 640)
    data = encode_jpeg(img, 95)
    assert jpeg_size(data) == (480, 640) and jpeg_size(np.frombuffer(data, np.uint8)) == (480, 640)
    assert jpeg_size(b"not a jpeg") is None
    pipe = ImagePipeline(image_size=112)
    ref = hwc(TF.resize(torch_chw(img), [112, 112], antialias=True))
    from_jpeg = pipe.frame(data)  # decoded at 1/2 size (240x320 still covers 112 at 2x: 1/4 -> 120x160)
    from_raw = pipe.frame(img)  # 2x2 area halving, then area resize
    assert from_jpeg.shape == from_raw.shape == (112, 112, 3)
    assert np.abs(from_raw.astype(int) - ref).mean() < 2.0
    assert np.abs(from_jpeg.astype(int) - ref).mean() < 3.0
