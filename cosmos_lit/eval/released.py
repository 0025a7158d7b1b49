"""NVIDIA's released Cosmos Policy checkpoints as ``CosmosPolicyModel``s (and toy-size stand-ins for CPU runs).

:func:`model_from_released` builds the model from a downloaded ``nvidia/Cosmos-Policy-{LIBERO,RoboCasa,ALOHA}-
Predict2-2B`` folder (2B DiT ``.pt``, ``<benchmark>_dataset_statistics.json``, ``<benchmark>_t5_embeddings.pkl``) plus
a local Wan2.1 VAE file, with the spec of the benchmark's protocol (``configs/protocol/<benchmark>.yaml``).
:func:`released_model_config` is the same without building (the component nodes, spec and statistics).
:func:`tiny_random_model` is a toy-size model of the same architectures with random weights.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from cosmos_lit.eval.protocols import Protocol, load_protocol
from cosmos_lit.registry import ConfigError

# Toy-size components of the same architectures (the registered factories' defaults).
TINY_BACKBONE: dict[str, Any] = {"name": "cosmos_predict2_tiny"}
TINY_IMAGE_ENCODER: dict[str, Any] = {"name": "wan2.1_tiny", "normalization": "none"}


def _protocol(protocol: Protocol | str) -> Protocol:
    return protocol if isinstance(protocol, Protocol) else load_protocol(protocol)


def _backbone_text_dim(node: dict[str, Any]) -> int:
    """Cross-attention width the backbone node will have (the T5 cache must match it)."""
    from cosmos_lit.models.backbones import COSMOS_PREDICT2_2B
    from cosmos_lit.registry import registry

    if "text_embed_dim" in node:
        return int(node["text_embed_dim"])
    factory = registry("backbone").get(str(node.get("name")), "model.backbone")
    param = inspect.signature(factory).parameters.get("text_embed_dim")
    if param is not None and param.default is not inspect.Parameter.empty:
        return int(param.default)
    return int(COSMOS_PREDICT2_2B["text_embed_dim"])


def _check_statistics(stats: Any, spec: dict[str, Any], path: Path) -> None:
    if stats.proprio_dim != int(spec["proprio_dim"]):
        raise ConfigError(f"{path}: proprio statistics have {stats.proprio_dim} dims, the {spec['name']} policy expects "
                          f"{spec['proprio_dim']}")
    if stats.action_dim < int(spec["action_dim"]):
        raise ConfigError(f"{path}: action statistics have {stats.action_dim} dims, the {spec['name']} policy needs at "
                          f"least {spec['action_dim']}")


def released_model_config(
    checkpoint_dir: str | Path,
    protocol: Protocol | str,
    vae_path: str | Path | None,
    backbone_overrides: dict[str, Any] | None = None,
    trust_pickle: bool = False,
    *,
    image_encoder_overrides: dict[str, Any] | None = None,
    spec_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``CosmosPolicyModel`` keyword arguments (``components``, ``spec``, ``statistics``) of a released checkpoint.

    See :func:`model_from_released` for the arguments; nothing is built or read but the statistics.
    """
    from cosmos_lit.weights.checkpoints import load_dataset_statistics, locate_released_checkpoint

    protocol = _protocol(protocol)
    released = locate_released_checkpoint(checkpoint_dir, protocol.benchmark)
    spec = {**protocol.spec, **(spec_overrides or {})}
    stats = load_dataset_statistics(released.dataset_statistics)
    _check_statistics(stats, spec, released.dataset_statistics)

    backbone = {"name": "cosmos_predict2_2b", "gradient_checkpointing": False, **(backbone_overrides or {}),
                "pretrained": str(released.weights), "trust_pickle": trust_pickle}
    image_encoder = {"name": "wan2.1", "sequence_form": "faithful", "normalization": "wan",
                     **(image_encoder_overrides or {})}
    if vae_path is not None:
        vae = Path(vae_path).expanduser()
        if not vae.exists():
            raise FileNotFoundError(
                f"Wan2.1 VAE weights not found: {vae} (tokenizer/tokenizer.pth of nvidia/Cosmos-Predict2-2B-Video2World, "
                f"or a diffusers vae/ folder of Wan-AI/Wan2.1-T2V-1.3B-Diffusers)"
            )
        image_encoder.update(pretrained=str(vae), trust_pickle=trust_pickle)
    elif "pretrained" not in image_encoder and image_encoder["name"] == "wan2.1":
        raise ConfigError("vae: the Wan2.1 VAE weights are required for a released checkpoint")
    text_encoder = {"name": "t5_cache", "path": str(released.t5_embeddings), "dim": _backbone_text_dim(backbone),
                    "trust_pickle": trust_pickle}
    statistics = {k: v.tolist() for k, v in stats.as_dict().items() if k[: k.rfind("_")] in ("actions", "proprio")}
    return {"components": {"backbone": backbone, "image_encoder": image_encoder, "text_encoder": text_encoder},
            "spec": spec, "statistics": statistics}


def model_from_released(
    checkpoint_dir: str | Path,
    protocol: Protocol | str,
    vae_path: str | Path | None,
    device: str = "cpu",
    backbone_overrides: dict[str, Any] | None = None,
    trust_pickle: bool = False,
    *,
    image_encoder_overrides: dict[str, Any] | None = None,
    spec_overrides: dict[str, Any] | None = None,
) -> Any:
    """A ``CosmosPolicyModel`` (eval mode, on ``device``) for a released Cosmos Policy checkpoint.

    Args:
        checkpoint_dir: downloaded ``nvidia/Cosmos-Policy-{LIBERO,RoboCasa,ALOHA}-Predict2-2B`` folder (or its HF cache
            folder): the DiT ``.pt``, ``<benchmark>_dataset_statistics.json`` and ``<benchmark>_t5_embeddings.pkl``.
        protocol: a loaded :class:`Protocol` or a benchmark name (libero / robocasa / aloha): gives the spec (cameras,
            dims, chunk, γ, 224²) and the file names. The denoising steps are not the model's: the policy passes
            the protocol's per call.
        vae_path: Wan2.1 VAE weights (``tokenizer/tokenizer.pth`` of Cosmos-Predict2-2B-Video2World, or a diffusers
            ``vae/`` folder); None only with an ``image_encoder_overrides`` that needs no file.
        device: where the model ends up.
        backbone_overrides: keys merged into the backbone node (default ``cosmos_predict2_2b``), e.g. a tiny
            ``{"name": "cosmos_predict2_tiny"}`` for tests; ``pretrained`` is always the released ``.pt``.
        trust_pickle: allow pickled files (the official T5 cache is a pickle; so may the ``.pt`` and VAE be).
        image_encoder_overrides: keys merged into the image-encoder node (default ``wan2.1`` with Wan's latent
            normalization); ``pretrained`` is ``vae_path`` when given.
        spec_overrides: data-spec fields to change (e.g. a smaller ``image_size`` for CPU smoke runs).

    Raises:
        FileNotFoundError: a released file or the VAE is missing (names the file and where it comes from).
        UntrustedPickleError: a pickled file and ``trust_pickle`` is False.
        ConfigError: statistics or T5 widths that do not fit the model.
    """
    from cosmos_lit.model import CosmosPolicyModel

    config = released_model_config(checkpoint_dir, protocol, vae_path, backbone_overrides, trust_pickle,
                                   image_encoder_overrides=image_encoder_overrides, spec_overrides=spec_overrides)
    return CosmosPolicyModel(**config).to(device).eval()


def unit_statistics(spec: dict[str, Any]) -> dict[str, list[float]]:
    """[-1, 1] ranges (mean 0, std 1) for every action and proprio dim: actions stay in an env's valid range."""
    statistics: dict[str, list[float]] = {}
    for group, dim in (("actions", spec["action_dim"]), ("proprio", spec["proprio_dim"])):
        for stat, value in (("min", -1.0), ("max", 1.0), ("mean", 0.0), ("std", 1.0), ("median", 0.0)):
            statistics[f"{group}_{stat}"] = [value] * int(dim)
    return statistics


def tiny_random_model(protocol: Protocol | str, image_size: int | None = None, seed: int = 0,
                      statistics: dict[str, Any] | None = None) -> Any:
    """A toy-size ``CosmosPolicyModel`` with random weights and the protocol's spec (CPU smoke runs).

    ``image_size``: the model's (default: the protocol's spec). Statistics default to :func:`unit_statistics`.
    """
    import torch

    from cosmos_lit.model import CosmosPolicyModel

    protocol = _protocol(protocol)
    spec = {**protocol.spec, **({"image_size": int(image_size)} if image_size else {})}
    torch.manual_seed(seed)
    model = CosmosPolicyModel({"backbone": dict(TINY_BACKBONE), "image_encoder": dict(TINY_IMAGE_ENCODER),
                               "text_encoder": {"name": "hash"}},
                              spec=spec, statistics=statistics if statistics is not None else unit_statistics(spec))
    return model.eval()
