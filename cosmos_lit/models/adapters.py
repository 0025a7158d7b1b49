"""Parameter-efficient post-training: LoRA adapters in the backbone through the ``peft`` package.

``model/adapter=lora`` injects peft LoRA layers into chosen ``nn.Linear`` layers of the backbone and freezes every
other weight of the model, so only the adapters train (plus what ``trainable`` names)::

    model:
      adapter: {name: lora, targets: [attention, mlp], rank: 16, alpha: null, dropout: 0.0}

Targets are named groups of the Cosmos DiT's layers (diffusers ``CosmosTransformer3DModel`` names, below the
backbone's ``net``), or raw module-name patterns in ``target_modules``:

    attention        self_attention + cross_attention
    self_attention   transformer_blocks.N.attn1.{to_q, to_k, to_v, to_out.0}
    cross_attention  transformer_blocks.N.attn2.{to_q, to_k, to_v, to_out.0}   (to_k, to_v read the text embeddings)
    mlp              transformer_blocks.N.ff.net.{0.proj, 2}
    adaln            transformer_blocks.N.norm{1,2,3}.linear_{1,2} and norm_out.linear_{1,2} (AdaLN-LoRA heads)
    io               patch_embed.proj and proj_out (the latent-frame input and output projections)
    timestep         time_embed.t_embedder.linear_{1,2}

A pattern is a regular expression matched against the whole module name or its dotted tail (``to_q`` matches every
``...attn1.to_q``; ``transformer_blocks\\.(2|3)\\.attn1\\.to_q`` two of them); one that matches no ``nn.Linear``
stops with one line naming it and module names that exist.

Latent injection needs nothing new: proprio, action chunks and values are latent frames that pass through the same
DiT layers as the images, so the adapters carry them. The other components have no trainable weights in Cosmos
Policy (frozen VAE and T5, parameter-free tiling and value frame); ``trainable`` keeps named parts fully trainable
(e.g. ``[backbone.net.learnable_pos_embed]`` for a net that has those codes).

Checkpoints hold the LoRA layers' weights under peft's names (``...to_q.base_layer.weight``,
``...to_q.lora_A.default.weight``); the model rebuilt from the checkpoint's config has the same layers, so they load
with ``torch.load(weights_only=True)``. For inference ``merge_adapters`` folds each adapter into its base weight
(peft's merge, as ``merge_and_unload``) and puts the plain ``nn.Linear`` back: ``cosmos_lit.checkpoint.load_model``
does it, so a deployed LoRA model runs at the speed of the base network.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cosmos_lit.registry import ConfigError, bind_kwargs, suggest

ADAPTERS = ("none", "lora")
_LINEARS = r"(?:to_q|to_k|to_v|to_out\.0)"
# target group -> full-match pattern over the backbone's module names (any prefix, e.g. "net.")
_SELF, _CROSS = rf"transformer_blocks\.\d+\.attn1\.{_LINEARS}", rf"transformer_blocks\.\d+\.attn2\.{_LINEARS}"
TARGETS: dict[str, tuple[str, ...]] = {
    "attention": (_SELF, _CROSS),
    "self_attention": (_SELF,),
    "cross_attention": (_CROSS,),
    "mlp": (r"transformer_blocks\.\d+\.ff\.net\.(?:0\.proj|2)",),
    "adaln": (r"transformer_blocks\.\d+\.norm[123]\.linear_[12]", r"norm_out\.linear_[12]"),
    "io": (r"patch_embed\.proj", r"proj_out"),
    "timestep": (r"time_embed\.t_embedder\.linear_[12]",),
}


@dataclass(frozen=True)
class LoraSettings:
    """``model.adapter`` with ``name: lora``.

    rank: LoRA rank r (the inner width of B·A). alpha: the update is (alpha / rank)·B·A; None = rank (scale 1, so
    changing the rank alone does not change the update's scale).
    dropout: dropout on the LoRA branch's input in training. targets: named groups (``TARGETS``).
    target_modules: more module-name patterns of the backbone. trainable: module or parameter name patterns of the
    whole model (``backbone.net.proj_out``) that train in full beside the adapters.
    """

    rank: int = 16
    alpha: float | None = None
    dropout: float = 0.0
    targets: tuple[str, ...] = ("attention", "mlp")
    target_modules: tuple[str, ...] = ()
    trainable: tuple[str, ...] = ()

    @classmethod
    def from_node(cls, node: dict[str, Any], path: str) -> "LoraSettings":
        node = dict(node)
        bind_kwargs(cls, node, path)
        for key in ("targets", "target_modules", "trainable"):
            value = node.get(key, getattr(cls, key))
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise ConfigError(f"{path}.{key}: expected a list of strings, got {value!r}")
            node[key] = tuple(str(v) for v in value)
        cfg = cls(**node)
        if not (isinstance(cfg.rank, int) and cfg.rank >= 1):
            raise ConfigError(f"{path}.rank: expected an integer >= 1, got {cfg.rank!r}")
        if cfg.alpha is not None and not (isinstance(cfg.alpha, (int, float)) and cfg.alpha > 0):
            raise ConfigError(f"{path}.alpha: expected a number > 0, got {cfg.alpha!r}")
        if not (isinstance(cfg.dropout, (int, float)) and 0.0 <= cfg.dropout < 1.0):
            raise ConfigError(f"{path}.dropout: expected a number in [0, 1), got {cfg.dropout!r}")
        for t in cfg.targets:
            if t not in TARGETS:
                raise ConfigError(f"{path}.targets: unknown target '{t}'{suggest(t, list(TARGETS))}; accepted: "
                                  f"{', '.join(TARGETS)} (or module-name patterns in {path}.target_modules)")
        if not cfg.targets and not cfg.target_modules:
            raise ConfigError(f"{path}: no layers to adapt (set targets, e.g. [attention, mlp], or target_modules)")
        return cfg


def adapter_settings(node: dict[str, Any] | None, path: str = "model.adapter") -> LoraSettings | None:
    """The settings of a ``model.adapter`` node; None for no node or ``name: none``."""
    if node is None:
        return None
    if not isinstance(node, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'name' key (model/adapter=none|lora), got {node!r}")
    node = dict(node)
    name = str(node.pop("name", "none"))
    if name not in ADAPTERS:
        raise ConfigError(f"{path}.name: unknown adapter '{name}'{suggest(name, list(ADAPTERS))}; accepted: "
                          f"{', '.join(ADAPTERS)}")
    if name == "none":  # other keys are ignored: model.adapter.name=none switches a LoRA config's adapter off
        return None
    return LoraSettings.from_node(node, path)


def _tail_pattern(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(rf"(?:.*\.)?(?:{pattern})")
    except re.error as e:
        raise ConfigError(f"{where}: '{pattern}' is not a regular expression ({e})") from None


def _examples(names: list[str], pattern: str, n: int = 6) -> str:
    """Some names to show beside a pattern that matched nothing: one per kind (the block index replaced, so 28
    copies of a block count once), those whose dotted tails look most like the pattern first."""
    import difflib

    kinds: dict[str, str] = {}
    for name in names:
        kinds.setdefault(re.sub(r"\.\d+\.", ".N.", name), name)

    def likeness(name: str) -> float:
        parts = name.split(".")
        tails = [".".join(parts[i:]) for i in range(len(parts))]
        return max(difflib.SequenceMatcher(None, pattern, tail).ratio() for tail in tails)

    picked = sorted(kinds.values(), key=lambda name: -likeness(name))[:n]
    return ", ".join(picked) + (", ..." if len(kinds) > n else "")


def target_names(backbone: nn.Module, settings: LoraSettings, path: str = "model.adapter") -> list[str]:
    """The ``nn.Linear`` module names of ``backbone`` that ``settings`` targets (a ConfigError names a pattern that
    matches none)."""
    modules = dict(backbone.named_modules())
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    chosen: set[str] = set()
    patterns = [(f"{path}.targets: '{t}'", p) for t in settings.targets for p in TARGETS[t]]
    patterns += [(f"{path}.target_modules", p) for p in settings.target_modules]
    for where, pattern in patterns:
        rx = _tail_pattern(pattern, where)
        hits = [n for n in linears if rx.fullmatch(n)]
        if not hits:
            others = [f"{n} ({type(modules[n]).__name__})" for n in modules if n and rx.fullmatch(n)]
            detail = (f"matches only modules that are not nn.Linear ({', '.join(others[:3])})" if others
                      else "matches no nn.Linear of the backbone")
            raise ConfigError(f"{where}: pattern '{pattern}' {detail}; Linear layers there include: "
                              f"{_examples(linears, pattern)}")
        chosen.update(hits)
    return sorted(chosen, key=linears.index)


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("model.adapter: lora needs the peft package (pip install 'cosmos-lit[lora]')") from None
    return peft


def _tuner_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every peft tuner layer in ``module`` (none when peft was never imported)."""
    if "peft" not in sys.modules:  # no adapter can have been injected in this process
        return []
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in module.named_modules() if isinstance(m, BaseTunerLayer)]


def adapter_parameter_names(module: nn.Module) -> set[str]:
    """Names (in ``module.state_dict()``) of the adapter weights of ``module``'s tuner layers (not their base)."""
    return {f"{name}.{p}" for name, layer in _tuner_layers(module) for p, _ in layer.named_parameters()
            if not p.startswith("base_layer.")}


def apply_adapter(model: nn.Module, node: dict[str, Any] | None, path: str = "model.adapter") -> LoraSettings | None:
    """Inject the adapter of ``node`` into ``model.backbone`` (in place) and leave only the adapter weights and the
    ``trainable`` parts requiring grad. Returns the settings (None: no adapter, nothing changes)."""
    settings = adapter_settings(node, path)
    if settings is None:
        return None
    backbone = model.backbone
    names = target_names(backbone, settings, path)
    peft = _peft()
    alpha = float(settings.rank if settings.alpha is None else settings.alpha)
    config = peft.LoraConfig(r=settings.rank, lora_alpha=alpha, lora_dropout=float(settings.dropout),
                             target_modules=names, bias="none")
    peft.inject_adapter_in_model(config, backbone)
    adapter_params = {f"backbone.{n}" for n in adapter_parameter_names(backbone)}
    extra = _trainable_parameters(model, settings.trainable, path)
    for name, p in model.named_parameters():
        p.requires_grad_(name in adapter_params or name in extra)
    return settings


def _trainable_parameters(model: nn.Module, patterns: tuple[str, ...], path: str) -> set[str]:
    """Parameter names of ``model`` whose name, or the name of a module holding them, matches a pattern."""
    names = [n for n, _ in model.named_parameters()]
    chosen: set[str] = set()
    for pattern in patterns:
        rx = _tail_pattern(pattern, f"{path}.trainable")
        hits = [n for n in names if any(rx.fullmatch(".".join(n.split(".")[:i])) for i in range(1, n.count(".") + 2))]
        if not hits:
            holders = [m for m, module in model.named_modules() if m and next(module.parameters(), None) is not None
                       and not re.search(r"\.(base_layer|lora_\w+)(\.|$)", m)]  # not peft's own parts
            raise ConfigError(f"{path}.trainable: pattern '{pattern}' matches no parameter of the model (nor a module "
                              f"that holds one); modules with parameters include: {_examples(holders, pattern)}")
        chosen.update(hits)
    return chosen


@torch.no_grad()
def merge_adapters(model: nn.Module) -> int:
    """Fold every peft adapter of ``model`` into its base layer and put the plain base layer back in its place (what
    peft's ``merge_and_unload`` does, on a model that is no ``PeftModel``). In place; returns how many layers were
    merged. A ``CosmosPolicyModel``'s ``adapter`` becomes None: its backbone is the plain network again."""
    layers = _tuner_layers(model)
    for name, layer in layers:
        layer.merge(safe_merge=True)  # safe: a NaN in an adapter is an error, not a silently broken weight
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.get_base_layer())
    if layers and getattr(model, "adapter", None) is not None:
        model.adapter = None
    return len(layers)


def to_adapted_keys(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` of a plain (or merged) model with the keys of ``model``'s LoRA layers renamed to their base layer
    (``...to_q.weight`` -> ``...to_q.base_layer.weight``), so plain weights load into a model with adapters."""
    wrapped = {name for name, _ in _tuner_layers(model)}
    if not wrapped:
        return state
    out = {}
    for key, value in state.items():
        owner, _, leaf = key.rpartition(".")
        out[f"{owner}.base_layer.{leaf}" if owner in wrapped else key] = value
    return out
