"""The speed paths keep the un-optimized path's outputs: the attention processor, per-image encoding of only the
camera images, and bf16 on the CPU (one precision rule for training, evaluation and collection)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cosmos_lit import precision
from cosmos_lit.model import CosmosPolicyModel
from cosmos_lit.models.backbones import COSMOS_PREDICT2_TINY, BackboneAdapter
from helpers import TINY_NODES, TINY_SPEC, TINY_STATS


def test_precision_strings_and_auto():
    for p in ("32-true", "32", "fp32"):
        assert not precision.uses_bf16(p, "cpu")
    for p in ("bf16-mixed", "bf16", "bf16-true"):
        assert precision.uses_bf16(p, "cpu")
    assert not precision.uses_bf16("auto", "cpu")  # opt-in on a CPU
    assert precision.trainer_precision("auto", "cpu") == "32-true"
    assert precision.trainer_precision("32-true", "cpu") == "32-true"
    assert precision.training_device("cpu") == "cpu"
    assert precision.training_device("gpu") == "cuda"
    assert precision.training_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="precision: expected auto.*got '16-mixed'"):
        precision.uses_bf16("16-mixed", "cpu")
    with precision.autocast("cpu", "bf16-mixed"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with precision.autocast("cpu", "32-true"):
        assert not torch.is_autocast_enabled("cpu")


def test_bf16_on_a_cpu_without_bf16_instructions_warns_with_the_key(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    with pytest.warns(precision.SlowBf16Warning, match=r"trainer.precision=bf16-mixed: this CPU has no bf16.*"
                                                       r"use trainer.precision=32-true"):
        assert precision.warn_if_emulated_bf16("bf16-mixed", "cpu", "trainer.precision")
    with pytest.warns(precision.SlowBf16Warning, match=r"precision=bf16: .*use precision=fp32"):
        assert precision.warn_if_emulated_bf16("bf16", "cpu", "precision")
    assert not precision.warn_if_emulated_bf16("32-true", "cpu", "trainer.precision")
    assert not precision.warn_if_emulated_bf16("auto", "cpu", "precision")  # auto is fp32 on a CPU
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    assert not precision.warn_if_emulated_bf16("bf16-mixed", "cpu", "trainer.precision")


class _AttentionDtypes(TorchDispatchMode):
    """Records the dtype of every scaled-dot-product-attention kernel call (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "scaled_dot_product" in str(func):
            self.dtypes.append(args[0].dtype)
        return func(*args, **(kwargs or {}))


def _pair():
    from diffusers.models.attention_processor import Attention
    from diffusers.models.transformers.transformer_cosmos import CosmosAttnProcessor2_0

    torch.manual_seed(0)
    ours = BackboneAdapter(dict(COSMOS_PREDICT2_TINY, max_size=(16, 32, 32)))
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ref = copy.deepcopy(ours)
    for m in ref.net.modules():
        if isinstance(m, Attention):
            m.set_processor(CosmosAttnProcessor2_0())
    x = torch.randn(2, 16, 5, 6, 8)
    mask = torch.tensor([[1.0, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    return ours, ref, (x, torch.rand(2, 5) * (1 - mask), mask, torch.randn(2, 7, 32))


def test_attention_processor_is_diffusers_math_in_float32():
    """Same float32 output and gradients as diffusers' CosmosAttnProcessor2_0, bit for bit."""
    ours, ref, args = _pair()
    a, b = ours(*args), ref(*args)
    assert torch.equal(a, b)
    a.square().mean().backward()
    b.square().mean().backward()
    for (name, pa), pb in zip(ours.named_parameters(), ref.parameters()):
        assert torch.equal(pa.grad, pb.grad), name


def test_attention_runs_in_float32_under_cpu_bf16_autocast():
    """Under CPU bf16 autocast the attention kernels get float32 (the bf16 CPU kernel is several times slower);
    the output stays within bf16's rounding of the float32 forward, as diffusers' processor does."""
    ours, ref, args = _pair()
    full = ours(*args).detach()
    log = _AttentionDtypes()
    with log, torch.autocast("cpu", dtype=torch.bfloat16):
        out = ours(*args)
        out.float().square().mean().backward()
    assert log.dtypes and set(log.dtypes) == {torch.float32}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        theirs = ref(*args).detach()
    scale = full.abs().max()
    assert (out.float() - full).abs().max() < 0.02 * scale
    assert (theirs.float() - full).abs().max() < 0.02 * scale


def _tiny_model(image_encoder: dict) -> CosmosPolicyModel:
    torch.manual_seed(0)
    nodes = {**copy.deepcopy(TINY_NODES), "image_encoder": image_encoder}
    return CosmosPolicyModel(nodes, TINY_SPEC.to_dict(), copy.deepcopy(TINY_STATS)).eval()


@pytest.mark.parametrize("encoder", ["wan2.1_tiny", "dct"])
def test_per_image_encode_encodes_only_the_camera_images(encoder):
    """``encode`` in the per_image form: the camera images and one black image go through the encoder, and the
    latents equal the encoding of every slot image (black vector slots included)."""
    model = _tiny_model({"name": encoder, "normalization": "none", "sequence_form": "per_image"})
    enc = model.image_encoder
    calls: list[int] = []
    original = enc.encode_images
    enc.encode_images = lambda images: (calls.append(images.shape[0]), original(images))[1]  # count the images
    torch.manual_seed(1)
    current = torch.rand(3, 2, 3, 32, 32) * 2 - 1
    future = torch.rand(3, 2, 3, 32, 32) * 2 - 1
    for fut, images in ((None, 3 * 2 + 1), (future, 3 * 4 + 1)):
        calls.clear()
        fast = model.encode(current, fut)
        assert calls == [images]
        full = enc.encode(model.slot_images(current, fut))
        assert fast.shape == full.shape == (3, 16, model.layout.num_frames, 4, 4)
        assert (fast - full).abs().max() < 1e-5


def test_per_image_encode_needs_calibration():
    model = _tiny_model({"name": "wan2.1_tiny", "sequence_form": "per_image"})  # normalization: data
    with pytest.raises(RuntimeError, match="before calibrate"):
        model.encode(torch.zeros(1, 2, 3, 32, 32))


def test_policy_in_bf16_stays_near_float32():
    """A direct-policy query under the bf16 rule: same shapes, actions within bf16's rounding of float32."""
    model = _tiny_model({"name": "wan2.1_tiny", "normalization": "none", "sequence_form": "per_image"})
    torch.manual_seed(2)
    images = torch.rand(2, 2, 3, 32, 32) * 2 - 1
    proprio = torch.rand(2, 4) * 2 - 1
    with torch.no_grad():
        full = model.predict(images, proprio, ["stack the blocks"] * 2, num_steps=3, seed=0)
        with precision.autocast("cpu", "bf16-mixed"):
            half = model.predict(images, proprio, ["stack the blocks"] * 2, num_steps=3, seed=0)
    assert half["actions"].shape == full["actions"].shape
    assert (half["actions"].float() - full["actions"]).abs().max() < 0.05 * full["actions"].abs().max()
