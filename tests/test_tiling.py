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
