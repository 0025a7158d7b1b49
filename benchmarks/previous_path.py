"""The policy's compute path as it was before the speed levers of issue 18, for the baselines measured in the same run.

:func:`use_previous_path` puts a ``CosmosPolicyModel`` back on that path, with the same weights:

* attention through diffusers' own ``CosmosAttnProcessor2_0`` (under CPU bf16 autocast: bf16 attention kernels);
* every slot image encoded in the ``per_image`` form (``image_encoder.encode(slot_images(...))``: the black vector
  and missing-future slots too, 7 images per single-camera ALOHA query instead of 2).

The precision (float32 on the CPU before) is chosen by each benchmark row, and the training baseline also sets
``task.optim.fused=false`` (torch's default AdamW, as before).
"""

from __future__ import annotations

import types
from typing import Any

import torch


def use_previous_path(model: Any, backbones: list[torch.nn.Module] | None = None) -> None:
    """Switch ``model`` (and any extra ``backbones``, e.g. an EMA copy) to the previous path, in place."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.transformers.transformer_cosmos import CosmosAttnProcessor2_0

    for backbone in [model.backbone, *(backbones or [])]:
        for module in backbone.modules():
            if isinstance(module, Attention):
                module.set_processor(CosmosAttnProcessor2_0())

    def encode_every_slot(self: Any, current: torch.Tensor, future: torch.Tensor | None = None) -> torch.Tensor:
        return self.image_encoder.encode(self.slot_images(current, future))

    model.encode = types.MethodType(encode_every_slot, model)
