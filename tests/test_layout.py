import pytest
import torch

from cosmos_lit.layout import POLICY, VALUE, WORLD_MODEL, LatentLayout
from cosmos_lit.spec import DataSpec


def layout(n_cams: int, has_value: bool = True) -> LatentLayout:
    spec = DataSpec(cameras=tuple(f"c{i}" for i in range(n_cams)), proprio_dim=9, action_dim=7, chunk_size=16, has_value=has_value)
    return LatentLayout.from_spec(spec)


def test_frame_counts_match_the_official_layouts():
    assert layout(2).num_frames == 9  # LIBERO, chunk_duration 33
    assert layout(2).num_pixel_frames == 33
    assert layout(3).num_frames == 11  # RoboCasa / ALOHA, chunk_duration 41
    assert layout(3).num_pixel_frames == 41
    assert layout(1).num_frames == 7  # one-camera robot (paper App. A.1)
    assert layout(2, has_value=False).num_frames == 8


def test_slot_indices_libero_and_aloha():
    lib = layout(2)
    assert (lib.current_proprio, lib.current_camera(0), lib.current_camera(1), lib.action) == (1, 2, 3, 4)
    assert (lib.future_proprio, lib.future_camera(0), lib.future_camera(1), lib.value) == (5, 6, 7, 8)
    assert lib.num_condition_frames == 4
    assert lib.current_state == (1, 3) and lib.future_state == (5, 7)
    alo = layout(3)
    assert alo.action == 5 and alo.future_proprio == 6 and alo.value == 10
    assert alo.num_condition_frames == 5
    assert alo.current_state == (1, 4) and alo.future_state == (6, 9)


def test_condition_masks_per_sample_type():
    lay = layout(2)
    m = lay.condition_mask(torch.tensor([POLICY, WORLD_MODEL, VALUE]))
    assert m[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert m[1].tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 0]
    assert m[2].tolist() == [1, 1, 1, 1, 1, 1, 1, 1, 0]
    loss = lay.loss_mask(torch.tensor([POLICY, WORLD_MODEL, VALUE]))
    assert torch.equal(loss, 1 - m)


def test_value_of_future_state_only_masks_current_state_and_action():
    lay = layout(3)
    m = lay.condition_mask(torch.tensor([VALUE, POLICY]), mask_current_state_for_value=True)
    # blank and s' clean; s (1..4) and a (5) noisy; value (10) generated
    assert m[0].tolist() == [1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0]
    assert m[1].tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]  # policy samples are unaffected
    loss = lay.loss_mask(torch.tensor([VALUE]), mask_current_state_for_value=True)
    assert loss[0].tolist() == [0] * 10 + [1]  # supervised on the value frame only



def test_q_value_of_state_and_action_masks_the_future_state():
    lay = layout(3)
    m = lay.condition_mask(torch.tensor([VALUE, WORLD_MODEL]), mask_future_state_for_value=True)
    # blank, s (1..4) and a (5) clean; s' (6..9) noisy; value (10) generated
    assert m[0].tolist() == [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert m[1].tolist() == [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]  # world-model samples are unaffected
    loss = lay.loss_mask(torch.tensor([VALUE, POLICY]), mask_future_state_for_value=True)
    assert loss[0].tolist() == [0] * 10 + [1]  # supervised on the value frame only
    assert loss[1].tolist() == [0] * 5 + [1] * 6


def test_no_value_layout_has_no_value_frame():
    lay = layout(2, has_value=False)
    with pytest.raises(AttributeError):
        _ = lay.value
    m = lay.condition_mask(torch.tensor([VALUE]))
    assert m.shape == (1, 8) and m[0, :4].sum() == 4
