import math

import pytest
import torch

from cosmos_lit.tiling import broadcast_scalar, copies, read_scalar, tile_vector, untile_vector

FRAME = (16, 28, 28)


@pytest.mark.parametrize("shape", [(16, 7), (32, 7), (50, 14), (9,), (14,)])
def test_round_trip_is_exact(shape):
    vec = torch.randn(3, *shape)
    frame = tile_vector(vec, FRAME)
    assert frame.shape == (3, *FRAME)
    assert torch.equal(untile_vector(frame, shape), vec) or torch.allclose(untile_vector(frame, shape), vec, atol=0, rtol=1e-6)


def test_layout_is_row_major_repeat_channel_major():
    vec = torch.arange(6.0).reshape(1, 2, 3)  # row-major flatten: 0..5
    frame = tile_vector(vec, (2, 2, 4))  # 16 elements: 0..5, 0..5, 0..3
    flat = frame.reshape(-1).tolist()
    assert flat == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3]
    assert frame[0, 0, 0, 0] == 0 and frame[0, 1, 0, 0] == 2  # channel slowest: channel 1 starts at element 8


def test_readout_averages_full_copies_only():
    frame = torch.zeros(1, 2, 2, 4)
    flat = frame.view(1, -1)
    flat[0, :6] = torch.tensor([1.0, 2, 3, 4, 5, 6])
    flat[0, 6:12] = torch.tensor([3.0, 4, 5, 6, 7, 8])
    flat[0, 12:] = 100.0  # partial copy: ignored
    out = untile_vector(frame, (6,))
    assert out.tolist() == [[2.0, 3.0, 4.0, 5.0, 6.0, 7.0]]


def test_official_copy_counts():
    assert copies(16 * 7, FRAME) == 112
    assert copies(32 * 7, FRAME) == 56
    assert math.floor(copies(50 * 14, FRAME)) == 17
    assert copies(14, FRAME) == 896


def test_value_broadcast_and_mean():
    v = torch.tensor([0.25, -1.0])
    frame = broadcast_scalar(v, FRAME)
    assert torch.equal(read_scalar(frame), v)


def test_vector_too_large_is_an_error():
    with pytest.raises(ValueError, match="does not fit"):
        tile_vector(torch.zeros(1, 2000), (16, 8, 8))


# ---------------------------------------------------------------- channel_time ablation (model/vector_encoder)


def _channel_time(**kw):
    from cosmos_lit.registry import build

    return build({"name": "channel_time", **kw}, "vector_encoder")


def test_channel_time_round_trip_is_exact_for_chunks_linear_between_knots():
    enc = _channel_time()
    k = torch.arange(50.0)[None, :, None]
    ramp = 0.02 * k * torch.linspace(-1, 1, 14)[None, None] + torch.randn(3, 1, 14)  # linear in time: exact
    assert torch.allclose(enc.read(enc.write(ramp, (16, 14, 14)), (50, 14)), ramp, atol=1e-5)
    smooth = torch.sin(k / 8 + torch.rand(3, 1, 14) * 6)  # 32 knots over 50 steps: small interpolation error
    err = (enc.read(enc.write(smooth, (16, 14, 14)), (50, 14)) - smooth).abs().max()
    assert 1e-4 < err < 0.01
    short = torch.randn(2, 16, 7)  # more knots (32) than steps (16): exact
    assert torch.allclose(enc.read(enc.write(short, (16, 8, 8)), (16, 7)), short, atol=1e-5)


def test_channel_time_frame_does_not_depend_on_token_position():
    """Every 2x2 token carries the same values at the same output index (channel, row parity, column parity)."""
    enc = _channel_time()
    chunk = torch.randn(2, 50, 14)
    frame = enc.write(chunk, (16, 14, 14))
    tokens = frame.reshape(2, 16, 7, 2, 7, 2)  # (B, C, token row, dh, token column, dw)
    assert torch.equal(tokens, tokens[:, :, :1].expand_as(tokens))  # same in every token row
    assert torch.equal(frame[..., 3], frame[..., 3 + 0])  # column w holds action dim w (w < 14)
    assert torch.equal(frame[0, 0, 0, :], chunk[0, 0, :])  # knot 0 = the first step
    assert torch.equal(frame[0, 15, 1, :], chunk[0, 49, :])  # last knot = the last step
    proprio = torch.randn(2, 14)  # one vector per frame: the official tiling
    assert torch.equal(enc.write(proprio, (16, 14, 14)), tile_vector(proprio, (16, 14, 14)))
    assert torch.equal(enc.read(tile_vector(proprio, (16, 14, 14)), (14,)), untile_vector(tile_vector(proprio, (16, 14, 14)), (14,)))


def test_channel_time_config_errors():
    from cosmos_lit.registry import ConfigError

    with pytest.raises(ConfigError, match="row_period: expected a positive integer, got 0"):
        _channel_time(row_period=0)
    with pytest.raises(ConfigError, match=r"channel_time.*width >= the action dimension 14"):
        _channel_time().write(torch.zeros(1, 50, 14), (16, 8, 8))
