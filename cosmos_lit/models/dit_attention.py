"""The attention processor of the Cosmos DiT blocks: diffusers' ``CosmosAttnProcessor2_0`` with two changes.

1. On the CPU, attention under bf16 autocast (or of bf16 inputs) is computed in float32: PyTorch's CPU
   flash-attention kernel is 3-5x slower in bf16 than in float32 at the tiny DiT's shapes (its backward above all;
   ``benchmarks/bench_train_step.py``), while the projections around it gain from bf16 on CPUs with AVX512-BF16
   (bf16 matrix products about 4x the fp32 rate on the development machine, docs/speed.md). On a GPU nothing changes.
2. The backend chosen with ``model.backbone.attention_backend`` (``set_attention_backend``) is passed on to
   ``dispatch_attention_fn``; diffusers' processor (0.42) ignores it and always takes the global default.

The projections, q/k RMSNorm, RoPE and output projection are the same modules and the same calls as diffusers', so
weights and float32 outputs are identical (``tests/test_precision.py`` checks against diffusers' processor, gradients
too). The Cosmos-Predict2 configurations have as many key/value heads as query heads, so diffusers' grouped-query
repeat is the identity and is left out.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn


class CosmosAttention:
    """Self- or cross-attention of a diffusers ``Attention`` module (``attn``) on tokens (B, L, C)."""

    _attention_backend: Any = None  # set by diffusers' ``ModelMixin.set_attention_backend``
    _parallel_config: Any = None

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb: Any = None) -> torch.Tensor:
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb

        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        # (B, heads, L, head_dim)
        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        key = attn.to_k(context).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        value = attn.to_v(context).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        query, key = attn.norm_q(query), attn.norm_k(key)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, use_real=True, use_real_unbind_dim=-2)
            key = apply_rotary_emb(key, image_rotary_emb, use_real=True, use_real_unbind_dim=-2)
        dtype = query.dtype
        fp32_on_cpu = query.device.type == "cpu" and (
            torch.bfloat16 in (query.dtype, key.dtype, value.dtype) or torch.is_autocast_enabled("cpu"))
        if fp32_on_cpu:
            query, key, value = query.float(), key.float(), value.float()
        with torch.autocast("cpu", enabled=False) if fp32_on_cpu else contextlib.nullcontext():
            out = dispatch_attention_fn(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                        attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                        backend=self._attention_backend)
        out = out.flatten(2, 3).to(dtype)  # (B, L, heads * head_dim)
        return attn.to_out[1](attn.to_out[0](out))


def use_cosmos_attention(net: nn.Module) -> int:
    """Give every attention module of a diffusers Cosmos transformer a :class:`CosmosAttention`; returns how many."""
    from diffusers.models.attention_processor import Attention

    count = 0
    for module in net.modules():
        if isinstance(module, Attention):
            module.set_processor(CosmosAttention())
            count += 1
    if not count:
        raise RuntimeError("backbone: found no diffusers Attention module in the Cosmos transformer; the installed "
                           "diffusers version has a layout this adapter does not know")
    return count
