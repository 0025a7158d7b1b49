"""Backbone adapter: the Cosmos-Predict2 DiT (diffusers ``CosmosTransformer3DModel``) behind a velocity interface.

``adapter(net_in, timesteps, cond_mask, text) -> F`` with
    net_in    (B, 16, T, H, W)  c_in-scaled noisy latents, clean ground truth on conditioning frames
    timesteps (B, T)            t = σ/(1+σ) per latent frame (0 on conditioning frames)
    cond_mask (B, T)            1 on conditioning frames; concatenated as the 17th input channel
    text      (B, L, D)         instruction embeddings (cross-attention)
    F         (B, 16, T, H, W)  predicted velocity ε − x0

Named configurations (timm-style factory functions): ``cosmos_predict2_2b`` is the exact 2B Video2World network
(docs/method.md#backbone, 1,956,413,440 parameters); ``cosmos_predict2_tiny`` the same architecture at toy size.
The released nets have fps modulation off, so ``fps=None`` is passed; the padding mask is zeros (no padding).
The attention q/k RMSNorms get the official epsilon 1e-6 (diffusers builds them with 1e-5; ``set_qk_norm_eps``).
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from typing import Any, Callable

import lightning as L
import torch

from cosmos_lit.models.dit_attention import use_cosmos_attention
from cosmos_lit.models.dit_framewise import framewise_forward
from cosmos_lit.registry import ConfigError, register
from cosmos_lit.weights.cosmos_dit import COSMOS_PREDICT2_2B_V2W

# The exact 2B Video2World network (docs/method.md#backbone), shared with the weight loaders.
COSMOS_PREDICT2_2B: dict[str, Any] = COSMOS_PREDICT2_2B_V2W

COSMOS_PREDICT2_TINY: dict[str, Any] = dict(
    COSMOS_PREDICT2_2B, num_attention_heads=2, attention_head_dim=32, num_layers=2, text_embed_dim=32, adaln_lora_dim=16
)

# ``model.backbone.compile`` values: off, on (torch.compile's default mode), or a torch.compile mode.
COMPILE_MODES = (False, True, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# The official network's q/k RMSNorm epsilon; the released weights were trained with it. diffusers' attention
# builds its ``norm_q`` / ``norm_k`` with its default 1e-5 (its image-context q/k norms already use 1e-6).
QK_NORM_EPS = 1e-6
QK_NORM_NAMES = ("norm_q", "norm_k", "norm_added_q", "norm_added_k")


def set_qk_norm_eps(net: torch.nn.Module, eps: float = QK_NORM_EPS) -> int:
    """Set ``eps`` on every q/k RMSNorm of the attention layers of ``net``; returns how many were set."""
    from diffusers.models.normalization import RMSNorm

    count = 0
    for module in net.modules():
        for name in QK_NORM_NAMES:
            norm = getattr(module, name, None)
            if isinstance(norm, (RMSNorm, torch.nn.RMSNorm)):
                norm.eps = eps
                count += 1
    return count


class BackboneAdapter(L.LightningModule):
    """Cosmos-Predict2 DiT; usable alone (``forward``) or inside a task module.

    Args:
        config: ``CosmosTransformer3DModel`` keyword arguments.
        pretrained: local path to weights (official ``.pt``, released Cosmos Policy ``.pt``, diffusers folder or
            ``.safetensors``); loaded strictly.
        trust_pickle: allow ``torch.load(weights_only=False)`` for pickled checkpoints that need it.
        meta_init: build on the meta device (no memory; for inspection, or followed by an assign-load of weights).
        gradient_checkpointing: recompute block activations in backward (needed for useful 2B batch sizes).
        attention_backend: diffusers attention backend name (e.g. "_native_cudnn", "flash"); None keeps the default.
        framewise_adaln: compute the AdaLN modulation once per latent frame instead of once per token
            (``dit_framewise``; same result, fewer FLOPs); false calls diffusers' own forward.
        compile: run the forward through ``torch.compile`` (inductor; the same result within float rounding,
            ``tests/test_compile.py``): ``true``, or a ``torch.compile`` mode (``"reduce-overhead"``: CUDA graphs,
            ``"max-autotune"``, ``"max-autotune-no-cudagraphs"``). The first call of each shape and mode (training,
            no-grad sampling) compiles (tens of seconds on a small CPU); a second shape recompiles once with dynamic
            sizes. The weights and checkpoints are those of the eager module.
    """

    def __init__(
        self,
        config: dict[str, Any],
        pretrained: str | None = None,
        trust_pickle: bool = False,
        meta_init: bool = False,
        gradient_checkpointing: bool = False,
        attention_backend: str | None = None,
        framewise_adaln: bool = True,
        compile: bool | str = False,
    ):
        super().__init__()
        from diffusers import CosmosTransformer3DModel

        cfg = dict(config)
        for key in ("max_size", "patch_size", "rope_scale"):
            if key in cfg and cfg[key] is not None:
                cfg[key] = tuple(cfg[key])
        if cfg.get("in_channels") != 17:
            raise ConfigError(f"model.backbone.config.in_channels: expected 17 (16 latent + condition mask), got {cfg.get('in_channels')}")
        self.config = cfg
        self.framewise_adaln = framewise_adaln
        if compile not in COMPILE_MODES:
            raise ConfigError(f"model.backbone.compile: expected one of {', '.join(map(str, COMPILE_MODES))}, "
                              f"got {compile!r}")
        self.compile_mode: str | None = ("default" if compile is True else compile) or None  # torch.compile mode
        ctx = torch.device("meta") if (meta_init or pretrained) else contextlib.nullcontext()
        with ctx:
            self.net = CosmosTransformer3DModel(**cfg)
        if not set_qk_norm_eps(self.net):  # the official 1e-6, not diffusers' 1e-5
            raise RuntimeError("backbone: found no q/k RMSNorm (norm_q / norm_k) in the diffusers Cosmos transformer; "
                               "the installed diffusers version has a layout this adapter does not know")
        if self.net.learnable_pos_embed is not None and not (meta_init or pretrained):
            self._init_learnable_pos_embed()
        if pretrained:
            from cosmos_lit.weights.cosmos_dit import load_dit_weights

            # fp32 master weights (bf16 autocast happens in the Trainer); the loader casts tensor by tensor
            load_dit_weights(self.net, pretrained, trust_pickle=trust_pickle, dtype=torch.float32)
        if gradient_checkpointing:
            self.net.enable_gradient_checkpointing()
        use_cosmos_attention(self.net)  # diffusers' math; fp32 attention under CPU bf16 autocast
        if attention_backend:
            self.net.set_attention_backend(attention_backend)

    @torch.no_grad()
    def _init_learnable_pos_embed(self) -> None:
        """Random unit-scale codes for the learnable (t, h, w) position embedding of a net trained from scratch.

        diffusers initializes them to zero. The embedding is normalized before use, so it is scale-invariant: from
        zero, each early AdamW step (size ~lr) rewrites its whole direction and the positions carry no stable code
        for hundreds of steps. Starting from N(0, 1) they are distinct, stable codes that training refines.
        """
        pe = self.net.learnable_pos_embed
        for p in (pe.pos_emb_t, pe.pos_emb_h, pe.pos_emb_w):
            p.normal_(0.0, 1.0)

    @property
    def text_dim(self) -> int:
        return int(self.config["text_embed_dim"])

    @property
    def width(self) -> int:
        """The transformer's hidden size (heads x head dim)."""
        return int(self.config["num_attention_heads"]) * int(self.config["attention_head_dim"])

    @property
    def latent_channels(self) -> int:
        return int(self.config["out_channels"])

    def forward(self, net_in: torch.Tensor, timesteps: torch.Tensor, cond_mask: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b, _, t, h, w = net_in.shape
        dtype = self.net.patch_embed.proj.weight.dtype  # bf16 weights for inference, fp32 (+ autocast) to train
        mask = cond_mask[:, None, :, None, None].expand(b, 1, t, h, w)
        hidden = torch.cat([net_in, mask.to(net_in.dtype)], dim=1).to(dtype)
        forward = framewise_forward if self.framewise_adaln else diffusers_forward
        if self.compile_mode:
            forward = compiled(forward, self.compile_mode)
        return forward(self.net, hidden, timesteps.to(dtype), text.to(dtype)).to(net_in.dtype)


def diffusers_forward(net: torch.nn.Module, hidden_states: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor,
                      ) -> torch.Tensor:
    """diffusers' own ``CosmosTransformer3DModel`` forward with per-frame ``timesteps`` (B, T), the signature of
    ``framewise_forward``: no padding (zero mask), fps modulation off."""
    h, w = hidden_states.shape[-2:]
    return net(
        hidden_states=hidden_states,
        timestep=timesteps[:, None, :, None, None],
        encoder_hidden_states=text,
        padding_mask=hidden_states.new_zeros(1, 1, h, w),
        fps=None,
        return_dict=False,
    )[0]


@lru_cache(maxsize=None)
def compiled(forward: Callable[..., torch.Tensor], mode: str = "default") -> Callable[..., torch.Tensor]:
    """``forward(net, ...)`` through ``torch.compile`` in ``mode``, built once per process and mode.

    The network is an argument, not a captured object: dynamo lifts its parameters to graph inputs, so one compiled
    graph serves every network of the same architecture (the training backbone and a deep copy such as the EMA's)
    and always reads the weights of the network it is given.
    """
    return torch.compile(forward, mode=mode)


@register("backbone", "cosmos_predict2_2b")
def cosmos_predict2_2b(
    pretrained: str | None = None,
    trust_pickle: bool = False,
    meta_init: bool = False,
    gradient_checkpointing: bool = False,
    attention_backend: str | None = None,
    framewise_adaln: bool = True,
    compile: bool | str = False,
) -> BackboneAdapter:
    """Cosmos-Predict2-2B Video2World DiT (28 blocks, width 2048, 16 heads); weights from ``pretrained=``."""
    return BackboneAdapter(config=dict(COSMOS_PREDICT2_2B), pretrained=pretrained, trust_pickle=trust_pickle,
                           meta_init=meta_init, gradient_checkpointing=gradient_checkpointing,
                           attention_backend=attention_backend, framewise_adaln=framewise_adaln,
                           compile=compile)


@register("backbone", "cosmos_predict2_tiny")
def cosmos_predict2_tiny(
    num_layers: int = 2,
    num_attention_heads: int = 2,
    attention_head_dim: int = 32,
    text_embed_dim: int = 32,
    adaln_lora_dim: int = 16,
    extra_pos_embed_type: str | None = None,
    pretrained: str | None = None,
    trust_pickle: bool = False,
    meta_init: bool = False,
    gradient_checkpointing: bool = False,
    attention_backend: str | None = None,
    framewise_adaln: bool = True,
    compile: bool | str = False,
) -> BackboneAdapter:
    """The Cosmos-Predict2 DiT architecture at toy size (CPU runs and tests); random init unless ``pretrained=``.

    ``extra_pos_embed_type="learnable"`` adds the architecture's optional learnable absolute (t, h, w) position
    embedding (off in the released 2B nets, which rely on 3D RoPE alone). Tiling puts chunk step ``(W·c + h) mod K``
    at latent row h of channel c (docs/method.md#vectors-in-latent-frames); with RoPE alone every token of a tiled frame sees the same
    content and only *relative* positions, so a from-scratch net cannot tell which row, hence which chunk step, it
    writes, and its chunks come out flat. The codes give it the row; on the ALOHA-sim data they had not yet fixed the
    flat chunks after 4,000 steps, while ``model/vector_encoder=channel_time`` did (docs/aloha_sim_experiments.md).
    """
    if extra_pos_embed_type not in (None, "learnable"):
        raise ConfigError(f"model.backbone.extra_pos_embed_type: expected null or 'learnable', got {extra_pos_embed_type!r}")
    if attention_head_dim < 12 or attention_head_dim % 2:
        raise ConfigError(f"model.backbone.attention_head_dim: expected an even number >= 12 (3D RoPE split), got {attention_head_dim}")
    config = dict(
        COSMOS_PREDICT2_2B,
        num_layers=num_layers,
        num_attention_heads=num_attention_heads,
        attention_head_dim=attention_head_dim,
        text_embed_dim=text_embed_dim,
        adaln_lora_dim=adaln_lora_dim,
        extra_pos_embed_type=extra_pos_embed_type,
    )
    return BackboneAdapter(config=config, pretrained=pretrained, trust_pickle=trust_pickle, meta_init=meta_init,
                           gradient_checkpointing=gradient_checkpointing, attention_backend=attention_backend,
                           framewise_adaln=framewise_adaln, compile=compile)
