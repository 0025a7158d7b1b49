"""Wan2.1 VAE weights: the official ``tokenizer.pth`` layout (``WanVAE_``) <-> diffusers ``AutoencoderKLWan``.

Official layout (flat; no prefix)::

    conv1 / conv2                                -> quant_conv / post_quant_conv
    {encoder,decoder}.conv1                      -> {encoder,decoder}.conv_in
    {encoder,decoder}.head.0 / head.2            -> {encoder,decoder}.norm_out / conv_out
    {encoder,decoder}.middle.0 / .1 / .2         -> {encoder,decoder}.mid_block.resnets.0 / attentions.0 / resnets.1
    encoder.downsamples.{j}                      -> encoder.down_blocks.{j}       (same flat order)
    decoder.upsamples.{j}                        -> decoder.up_blocks.{b}.resnets.{r} or .upsamplers.0
    residual block: residual.0 / .2 / .3 / .6    -> norm1 / conv1 / norm2 / conv2;  shortcut -> conv_shortcut
    resample: resample.1, time_conv              -> unchanged

The decoder's flat index j is laid out per level b as ``num_res_blocks + 1`` residual blocks followed by one
upsampler (none after the last level), so the mapping depends on ``num_res_blocks`` and ``len(dim_mult)``
(Wan2.1: 2 and 4). Only the Wan2.1 form is handled (``attn_scales=[]``, ``is_residual=False``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cosmos_lit.weights import state_io

log = logging.getLogger(__name__)

WAN21_DEFAULTS: dict[str, Any] = dict(num_res_blocks=2, num_levels=4)
TINY_VAE: dict[str, Any] = dict(base_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1, z_dim=16)

_RESIDUAL = {"residual.0": "norm1", "residual.2": "conv1", "residual.3": "norm2", "residual.6": "conv2", "shortcut": "conv_shortcut"}
_RESIDUAL_INV = {d: o for o, d in _RESIDUAL.items()}
_FIXED = {
    "conv1": "quant_conv",
    "conv2": "post_quant_conv",
    "encoder.conv1": "encoder.conv_in",
    "decoder.conv1": "decoder.conv_in",
    "encoder.head.0": "encoder.norm_out",
    "encoder.head.2": "encoder.conv_out",
    "decoder.head.0": "decoder.norm_out",
    "decoder.head.2": "decoder.conv_out",
}
_FIXED_INV = {d: o for o, d in _FIXED.items()}


def _decoder_slots(num_res_blocks: int, num_levels: int) -> list[tuple[int, int | None]]:
    """Flat decoder index -> (up block, resnet index or None for that block's upsampler)."""
    slots: list[tuple[int, int | None]] = []
    for level in range(num_levels):
        slots += [(level, r) for r in range(num_res_blocks + 1)]
        if level != num_levels - 1:
            slots.append((level, None))
    return slots


def _inner_residual(rest: str, table: Mapping[str, str]) -> str | None:
    module, _, param = rest.rpartition(".")
    return f"{table[module]}.{param}" if module in table else None


def _official_key(key: str, slots: list[tuple[int, int | None]]) -> str | None:
    module, _, param = key.rpartition(".")
    if module in _FIXED:
        return f"{_FIXED[module]}.{param}"
    m = re.fullmatch(r"(encoder|decoder)\.middle\.([012])\.(.+)", key)
    if m:
        side, idx, rest = m.groups()
        if idx == "1":
            return f"{side}.mid_block.attentions.0.{rest}"
        inner = _inner_residual(rest, _RESIDUAL)
        return f"{side}.mid_block.resnets.{int(idx) // 2}.{inner}" if inner else None
    m = re.fullmatch(r"encoder\.downsamples\.(\d+)\.(.+)", key)
    if m:
        idx, rest = m.groups()
        if rest.startswith(("resample.", "time_conv.")):
            return key.replace("encoder.downsamples.", "encoder.down_blocks.", 1)
        inner = _inner_residual(rest, _RESIDUAL)
        return f"encoder.down_blocks.{idx}.{inner}" if inner else None
    m = re.fullmatch(r"decoder\.upsamples\.(\d+)\.(.+)", key)
    if m:
        idx, rest = int(m.group(1)), m.group(2)
        if idx >= len(slots):
            return None
        block, resnet = slots[idx]
        if resnet is None:
            return f"decoder.up_blocks.{block}.upsamplers.0.{rest}" if rest.startswith(("resample.", "time_conv.")) else None
        inner = _inner_residual(rest, _RESIDUAL)
        return f"decoder.up_blocks.{block}.resnets.{resnet}.{inner}" if inner else None
    return None


def _diffusers_key(key: str, slots: list[tuple[int, int | None]]) -> str | None:
    module, _, param = key.rpartition(".")
    if module in _FIXED_INV:
        return f"{_FIXED_INV[module]}.{param}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d)\.(.+)", key)
    if m:
        side, kind, idx, rest = m.groups()
        if kind == "attentions":
            return f"{side}.middle.1.{rest}"
        inner = _inner_residual(rest, _RESIDUAL_INV)
        return f"{side}.middle.{2 * int(idx)}.{inner}" if inner else None
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", key)
    if m:
        idx, rest = m.groups()
        if rest.startswith(("resample.", "time_conv.")):
            return key.replace("encoder.down_blocks.", "encoder.downsamples.", 1)
        inner = _inner_residual(rest, _RESIDUAL_INV)
        return f"encoder.downsamples.{idx}.{inner}" if inner else None
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.+)", key)
    if m:
        block, resnet, rest = int(m.group(1)), m.group(3), m.group(4)
        slot = (block, None if resnet is None else int(resnet))
        if slot not in slots:
            return None
        if resnet is None:
            return f"decoder.upsamples.{slots.index(slot)}.{rest}"
        inner = _inner_residual(rest, _RESIDUAL_INV)
        return f"decoder.upsamples.{slots.index(slot)}.{inner}" if inner else None
    return None


def official_to_diffusers_with_origin(
    state_dict: Mapping[str, Any], num_res_blocks: int = 2, num_levels: int = 4
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(diffusers-named tensors, diffusers name -> official name). Non-tensors are dropped, unknown names kept."""
    slots = _decoder_slots(num_res_blocks, num_levels)
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            continue
        new = _official_key(key, slots) or key
        if new in out:
            raise ValueError(f"two checkpoint entries map to {new}: {origin[new]} and {key}")
        out[new] = value
        origin[new] = key
    return out, origin


def official_to_diffusers(state_dict: Mapping[str, Any], num_res_blocks: int = 2, num_levels: int = 4) -> dict[str, torch.Tensor]:
    """Official Wan2.1 ``tokenizer.pth`` state dict -> diffusers ``AutoencoderKLWan`` names (defaults: Wan2.1 sizes)."""
    return official_to_diffusers_with_origin(state_dict, num_res_blocks, num_levels)[0]


def diffusers_to_official(
    state_dict: Mapping[str, torch.Tensor], num_res_blocks: int = 2, num_levels: int = 4
) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKLWan`` state dict -> official ``WanVAE_`` names (inverse of the above)."""
    slots = _decoder_slots(num_res_blocks, num_levels)
    out = {}
    for key, value in state_dict.items():
        official = _diffusers_key(key, slots)
        if official is None:
            raise ValueError(f"diffusers key {key} has no official Wan2.1 VAE counterpart")
        out[official] = value
    return out


def vae_layout(vae: torch.nn.Module) -> tuple[int, int]:
    """(num_res_blocks, num_levels) of an ``AutoencoderKLWan``; rejects forms this converter does not cover."""
    cfg = vae.config
    if cfg.get("is_residual", False) or list(cfg.get("attn_scales", []) or []):
        raise ValueError(
            f"only the Wan2.1 VAE form is supported (is_residual=False, attn_scales=[]); got "
            f"is_residual={cfg.get('is_residual')}, attn_scales={cfg.get('attn_scales')}"
        )
    return int(cfg["num_res_blocks"]), len(cfg["dim_mult"])


def _looks_official(keys: list[str]) -> bool:
    return any(k.startswith(("encoder.downsamples.", "decoder.upsamples.", "encoder.conv1.", "decoder.middle.")) for k in keys)


def read_vae_state_dict(
    path_or_dir: str | Path, *, num_res_blocks: int = 2, num_levels: int = 4, trust_pickle: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, str], Path]:
    """(diffusers-named tensors, diffusers name -> name in the file, file read) from any accepted VAE source."""
    path = Path(path_or_dir).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"VAE weights not found: {path} (expected tokenizer/tokenizer.pth from nvidia/Cosmos-Predict2-2B-Video2World, "
            f"or a diffusers vae/ folder)"
        )
    if path.is_dir():
        candidates = [path / "vae", path, path / "tokenizer"]
        found = None
        for folder in candidates:
            for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json", "tokenizer.pth"):
                if (folder / name).is_file():
                    found = folder / name
                    break
            if found:
                break
        if found is None:
            raise FileNotFoundError(
                f"{path}: no VAE weights found (expected vae/diffusion_pytorch_model.safetensors, "
                f"diffusion_pytorch_model.safetensors or tokenizer/tokenizer.pth)"
            )
        path = found
    if path.name.endswith((".safetensors", ".safetensors.index.json")):
        raw = state_io.load_safetensors(path)
    else:
        raw = state_io.torch_load(path, trust_pickle=trust_pickle)
    flat = state_io.unwrap(raw, path)
    if _looks_official(list(flat)):
        converted, origin = official_to_diffusers_with_origin(flat, num_res_blocks, num_levels)
    else:
        converted = {k: v for k, v in flat.items() if isinstance(v, torch.Tensor)}
        origin = {k: k for k in converted}
    return converted, origin, path


def load_vae_weights(
    vae: torch.nn.Module, path_or_dir: str | Path, trust_pickle: bool = False, dtype: torch.dtype | None = None
) -> torch.nn.Module:
    """Load Wan2.1 VAE weights into an ``AutoencoderKLWan`` strictly (assigned when it is on the meta device).

    Accepts the official ``tokenizer.pth`` (or a folder holding ``tokenizer/tokenizer.pth``), a diffusers ``vae/``
    folder (or its parent), or a ``.safetensors`` file in either key layout. Errors as in
    :func:`cosmos_lit.weights.cosmos_dit.load_dit_weights`.
    """
    num_res_blocks, num_levels = vae_layout(vae)
    state_dict, origin, source = read_vae_state_dict(
        path_or_dir, num_res_blocks=num_res_blocks, num_levels=num_levels, trust_pickle=trust_pickle
    )
    official = any(k != origin[k] for k in state_dict)
    slots = _decoder_slots(num_res_blocks, num_levels)
    state_io.assign_strict(
        vae, state_dict, source=str(source), origin=origin, dtype=dtype,
        file_name=(lambda key: _diffusers_key(key, slots)) if official else None,
    )
    log.info("loaded %d VAE tensors from %s", len(state_dict), source)
    return vae
