"""``model.backbone.compile=true``: the torch.compile'd DiT forward keeps the eager path's outputs and gradients, and
a deep copy (the EMA's backbone) computes with its own weights through the same compiled function."""

from __future__ import annotations

import copy

import pytest
import torch

from cosmos_lit.models.backbones import COSMOS_PREDICT2_TINY, BackboneAdapter
from cosmos_lit.registry import ConfigError

TOL = 1e-5


def _inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 3, 4, 4, generator=g)
    timesteps = torch.rand(2, 3, generator=g)
    cond = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    text = torch.randn(2, 5, COSMOS_PREDICT2_TINY["text_embed_dim"], generator=g)
    return x, timesteps, cond, text


def test_compiled_backbone_matches_eager_and_reads_each_copys_weights():
    torch.manual_seed(0)
    eager = BackboneAdapter(dict(COSMOS_PREDICT2_TINY, num_layers=1, max_size=(8, 16, 16)))
    with torch.no_grad():
        for p in eager.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    fast = copy.deepcopy(eager)
    fast.compile_mode = "default"
    assert fast.state_dict().keys() == eager.state_dict().keys()  # checkpoints are the eager module's

    x, timesteps, cond, text = _inputs()
    ref = eager(x, timesteps, cond, text)
    out = fast(x, timesteps, cond, text)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=TOL)
    ref.square().mean().backward()
    out.square().mean().backward()
    for (name, p), q in zip(eager.named_parameters(), fast.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, atol=TOL, rtol=1e-4, msg=name)

    other = copy.deepcopy(fast)  # as the EMA copies the training backbone
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
        torch.testing.assert_close(other(x, timesteps, cond, text), _eager_copy(other)(x, timesteps, cond, text),
                                   atol=TOL, rtol=TOL)
        assert not torch.allclose(other(x, timesteps, cond, text), fast(x, timesteps, cond, text), atol=1e-3)


def _eager_copy(backbone: BackboneAdapter) -> BackboneAdapter:
    plain = copy.deepcopy(backbone)
    plain.compile_mode = None
    return plain


def test_compile_value_is_checked():
    with pytest.raises(ConfigError, match=r"model.backbone.compile: expected one of False, True, default, "
                                          r"reduce-overhead.*got 'fast'"):
        BackboneAdapter(dict(COSMOS_PREDICT2_TINY, num_layers=1), compile="fast")
