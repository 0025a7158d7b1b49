"""Lightning strategies set up for the Cosmos DiT (used by ``configs/trainer/fsdp.yaml``).

``dit_fsdp`` is Lightning's own ``FSDPStrategy`` with the sharding plan of the official recipe: every DiT
transformer block is one FSDP unit (its parameters are gathered for its forward and freed after), optionally with
activation checkpointing per block. Lightning runs FSDP on CUDA only (``accelerator=cpu`` is refused by Lightning
itself), so on CPU the plan is what the tests check, on the meta device (``fsdp_units``).
"""

from __future__ import annotations

from typing import Any

import torch


def dit_block_types() -> set[type[torch.nn.Module]]:
    """The module classes that are FSDP units (and activation-checkpointing units): the DiT's transformer blocks."""
    from diffusers.models.transformers.transformer_cosmos import CosmosTransformerBlock

    return {CosmosTransformerBlock}


def dit_fsdp(sharding_strategy: str = "FULL_SHARD", activation_checkpointing: bool = False,
             cpu_offload: bool = False, state_dict_type: str = "full", **kwargs: Any) -> Any:
    """``FSDPStrategy`` wrapping each DiT block; ``state_dict_type="full"`` writes one ``.ckpt`` file (through
    the atomic checkpoint writer) that ``load_model`` and ``export`` read; ``"sharded"`` writes a folder per
    checkpoint (faster for the 2B on many GPUs; resume only). Other keys go to ``FSDPStrategy``."""
    from lightning.pytorch.strategies import FSDPStrategy

    blocks = dit_block_types()
    return FSDPStrategy(auto_wrap_policy=blocks, activation_checkpointing_policy=blocks if activation_checkpointing else None,
                        sharding_strategy=sharding_strategy, cpu_offload=cpu_offload, state_dict_type=state_dict_type,
                        **kwargs)


def fsdp_units(module: torch.nn.Module) -> list[str]:
    """Names of the submodules ``dit_fsdp`` makes FSDP units of (the root is one too), from the same wrap policy
    FSDP applies; runs on a model built on the meta device."""
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    policy = ModuleWrapPolicy(dit_block_types())
    names = {m: n for n, m in module.named_modules()}
    wrapped = policy._run_policy(module, ignored_modules=set(), root_kwargs={})
    return sorted(names[m] for m in wrapped if m is not module)
