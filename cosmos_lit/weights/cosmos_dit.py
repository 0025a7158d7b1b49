"""Cosmos-Predict2 DiT weights: the official checkpoint layout <-> diffusers ``CosmosTransformer3DModel``, strict loading.

Official layout (``MinimalV1LVGDiT`` state dict, prefix ``net.`` and, where EMA was kept, ``net_ema.``)::

    x_embedder.proj.1.weight                      -> patch_embed.proj.weight
    t_embedder.1.linear_{1,2}.weight              -> time_embed.t_embedder.linear_{1,2}.weight
    t_embedding_norm.weight                       -> time_embed.norm.weight
    blocks.{i}.self_attn.{q,k,v}_proj.weight      -> transformer_blocks.{i}.attn1.to_{q,k,v}.weight
    blocks.{i}.self_attn.output_proj.weight       -> transformer_blocks.{i}.attn1.to_out.0.weight
    blocks.{i}.self_attn.{q,k}_norm.weight        -> transformer_blocks.{i}.attn1.norm_{q,k}.weight
    blocks.{i}.cross_attn.*                       -> transformer_blocks.{i}.attn2.*   (same renames)
    blocks.{i}.mlp.layer{1,2}.weight              -> transformer_blocks.{i}.ff.net.{0.proj,2}.weight
    blocks.{i}.adaln_modulation_self_attn.{1,2}   -> transformer_blocks.{i}.norm1.linear_{1,2}
    blocks.{i}.adaln_modulation_cross_attn.{1,2}  -> transformer_blocks.{i}.norm2.linear_{1,2}
    blocks.{i}.adaln_modulation_mlp.{1,2}         -> transformer_blocks.{i}.norm3.linear_{1,2}
    final_layer.adaln_modulation.{1,2}.weight     -> norm_out.linear_{1,2}.weight
    final_layer.linear.weight                     -> proj_out.weight

Entries that are not weights are dropped: non-tensors, TransformerEngine ``_extra_state``, ``accum_*`` training
counters and the RoPE buffers ``pos_embedder.*`` (recomputed by the model).

Sources accepted by :func:`load_dit_weights`: the official ``model-480p-16fps.pt``; a released Cosmos Policy
``Cosmos-Policy-*-Predict2-2B.pt`` (flat ``net.*`` dict; that policy training ran without EMA); any of those wrapped in
``{"model": ...}`` / ``{"state_dict": ...}``; a diffusers folder (``transformer/`` or the folder itself with
``config.json`` + safetensors); a ``.safetensors`` file in either key layout; a directory holding one ``.pt``; an
official distributed-checkpoint ``model/`` directory (pickled metadata, so only with ``trust_pickle``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cosmos_lit.weights import state_io

log = logging.getLogger(__name__)

# diffusers kwargs of Cosmos-Predict2-2B Video2World (docs/method.md#backbone).
COSMOS_PREDICT2_2B_V2W: dict[str, Any] = dict(
    in_channels=17,
    out_channels=16,
    num_attention_heads=16,
    attention_head_dim=128,
    num_layers=28,
    mlp_ratio=4.0,
    text_embed_dim=1024,
    adaln_lora_dim=256,
    max_size=(128, 240, 240),
    patch_size=(1, 2, 2),
    rope_scale=(1.0, 3.0, 3.0),
    concat_padding_mask=True,
    extra_pos_embed_type=None,
)
# Same architecture at toy size (docs/method.md#tiny-configuration): width 64, 175,936 parameters.
TINY_DIT: dict[str, Any] = dict(
    COSMOS_PREDICT2_2B_V2W, num_attention_heads=2, attention_head_dim=32, num_layers=2, text_embed_dim=32, adaln_lora_dim=16
)

OFFICIAL_PREFIXES = ("net_ema.", "net.")

# official module path -> diffusers module path (parameter names after the last dot are kept).
_TOP_MODULES = {
    "x_embedder.proj.1": "patch_embed.proj",
    "t_embedder.1.linear_1": "time_embed.t_embedder.linear_1",
    "t_embedder.1.linear_2": "time_embed.t_embedder.linear_2",
    "t_embedding_norm": "time_embed.norm",
    "final_layer.adaln_modulation.1": "norm_out.linear_1",
    "final_layer.adaln_modulation.2": "norm_out.linear_2",
    "final_layer.linear": "proj_out",
}
_ATTN = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "output_proj": "to_out.0", "q_norm": "norm_q", "k_norm": "norm_k"}
_BLOCK_MODULES = {
    **{f"self_attn.{o}": f"attn1.{d}" for o, d in _ATTN.items()},
    **{f"cross_attn.{o}": f"attn2.{d}" for o, d in _ATTN.items()},
    "mlp.layer1": "ff.net.0.proj",
    "mlp.layer2": "ff.net.2",
    **{
        f"adaln_modulation_{o}.{j}": f"norm{n}.linear_{j}"
        for n, o in ((1, "self_attn"), (2, "cross_attn"), (3, "mlp"))
        for j in (1, 2)
    },
}
_TOP_INV = {d: o for o, d in _TOP_MODULES.items()}
_BLOCK_INV = {d: o for o, d in _BLOCK_MODULES.items()}
_OFFICIAL_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
_DIFFUSERS_BLOCK = re.compile(r"transformer_blocks\.(\d+)\.(.+)")


def is_non_weight_key(key: str) -> bool:
    """True for official entries that are not network weights (TE extra state, counters, RoPE buffers)."""
    return key.endswith("_extra_state") or key.startswith("accum_") or key.startswith("pos_embedder.")


def _rename(key: str, top: Mapping[str, str], block: Mapping[str, str], block_re: re.Pattern, block_out: str) -> str | None:
    module, _, param = key.rpartition(".")
    if module in top:
        return f"{top[module]}.{param}"
    m = block_re.fullmatch(module)
    if m and m.group(2) in block:
        return f"{block_out}.{m.group(1)}.{block[m.group(2)]}.{param}"
    return None


def official_key_to_diffusers(key: str) -> str | None:
    """diffusers name of one official key (prefix already stripped); None if it is not an official weight name."""
    return _rename(key, _TOP_MODULES, _BLOCK_MODULES, _OFFICIAL_BLOCK, "transformer_blocks")


def diffusers_key_to_official(key: str) -> str | None:
    """Official name (no prefix) of one diffusers key; None if it has no official counterpart."""
    return _rename(key, _TOP_INV, _BLOCK_INV, _DIFFUSERS_BLOCK, "blocks")


def select_net(state_dict: Mapping[str, Any], prefer_ema: bool = True) -> tuple[dict[str, Any], str]:
    """The network's entries with their prefix stripped, and that prefix.

    With ``prefer_ema`` the EMA copy (``net_ema.``) is used when present (official ``load_ema_to_reg``), else ``net.``;
    keys outside the chosen prefix (the other copy, anything that is not the network) are left out.
    A dict without either prefix is returned whole with prefix "".
    """
    order = OFFICIAL_PREFIXES if prefer_ema else OFFICIAL_PREFIXES[::-1]
    for prefix in order:
        if any(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}, prefix
    return dict(state_dict), ""


def _convert(state_dict: Mapping[str, Any], prefer_ema: bool) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, Any]]:
    """(diffusers-named tensors, diffusers name -> file name, report). Unknown names pass through unchanged."""
    net, prefix = select_net(state_dict, prefer_ema)
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    dropped: list[str] = []
    for key, value in net.items():
        if not isinstance(value, torch.Tensor) or is_non_weight_key(key):
            dropped.append(prefix + key)
            continue
        new = official_key_to_diffusers(key) or key
        if new in out:
            raise ValueError(f"two checkpoint entries map to {new}: {origin[new]} and {prefix + key}")
        out[new] = value
        origin[new] = prefix + key
    report = {"prefix": prefix, "dropped": dropped, "ignored": len(state_dict) - len(net)}
    return out, origin, report


def official_to_diffusers(state_dict: Mapping[str, Any], *, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """Official Cosmos-Predict2 DiT state dict (``net.``/``net_ema.`` prefixed or bare) -> diffusers names.

    EMA weights are preferred (see :func:`select_net`); non-weight entries are dropped; names that are neither
    official nor known are kept as they are, so a strict load reports them as unexpected.
    """
    return _convert(state_dict, prefer_ema)[0]


def diffusers_to_official(state_dict: Mapping[str, torch.Tensor], prefix: str = "net.") -> dict[str, torch.Tensor]:
    """diffusers ``CosmosTransformer3DModel`` state dict -> official names with ``prefix`` (inverse of the above)."""
    out = {}
    for key, value in state_dict.items():
        official = diffusers_key_to_official(key)
        if official is None:
            raise ValueError(f"diffusers key {key} has no official Cosmos-Predict2 counterpart")
        out[prefix + official] = value
    return out


def build_dit_on_meta(config: Mapping[str, Any]):
    """``CosmosTransformer3DModel(**config)`` on the meta device: no memory until weights are assigned."""
    from diffusers import CosmosTransformer3DModel

    cfg = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    for key in ("max_size", "patch_size", "rope_scale"):
        if isinstance(cfg.get(key), list):
            cfg[key] = tuple(cfg[key])
    with torch.device("meta"):
        return CosmosTransformer3DModel(**cfg)


def _diffusers_folder(path: Path) -> Path | None:
    for folder in (path / "transformer", path):
        if (folder / "config.json").is_file():
            return folder
    return None


def _folder_weights(folder: Path) -> Path:
    for name in ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    files = sorted(folder.glob("*.safetensors"))
    if len(files) == 1:
        return files[0]
    if (folder / "diffusion_pytorch_model.bin").is_file():
        return folder / "diffusion_pytorch_model.bin"
    raise FileNotFoundError(
        f"{folder}: diffusers folder without weights (expected diffusion_pytorch_model.safetensors, its .index.json "
        f"shards, or one *.safetensors file next to config.json)"
    )


def _check_folder_config(folder: Path, model: torch.nn.Module) -> None:
    try:
        file_cfg = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{folder / 'config.json'}: not valid JSON ({err})") from None
    model_cfg = getattr(model, "config", {}) or {}
    for key, value in file_cfg.items():
        if key.startswith("_") or key not in model_cfg:
            continue
        mine = json.loads(json.dumps(model_cfg[key]))
        if mine != value:
            raise ValueError(
                f"{folder / 'config.json'}: {key}={value!r} but the model was built with {key}={mine!r}; "
                f"build it from this config (cosmos_lit.weights.build_dit_on_meta(json.load(...)))"
            )


def resolve_dit_source(path_or_dir: str | Path) -> tuple[Path, str]:
    """(file or folder to read, kind) with kind one of 'diffusers', 'safetensors', 'torch', 'dcp'."""
    path = Path(path_or_dir).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"DiT weights not found: {path} (expected model-480p-16fps.pt from nvidia/Cosmos-Predict2-2B-Video2World, "
            f"Cosmos-Policy-*-Predict2-2B.pt from nvidia/Cosmos-Policy-*-Predict2-2B, or a diffusers transformer folder)"
        )
    if path.is_file():
        kind = "safetensors" if path.name.endswith((".safetensors", state_io._SAFETENSORS_INDEX_SUFFIX)) else "torch"
        return path, kind
    folder = _diffusers_folder(path)
    if folder is not None:
        return folder, "diffusers"
    if (path / ".metadata").is_file():
        return path, "dcp"
    if (path / "model" / ".metadata").is_file():
        return path / "model", "dcp"
    pts = sorted(path.glob("*.pt"))
    if len(pts) == 1:
        return pts[0], "torch"
    raise FileNotFoundError(
        f"{path}: no DiT weights found (expected a diffusers folder with config.json, transformer/config.json, "
        f"exactly one *.pt, or a distributed-checkpoint model/ folder); found {len(pts)} .pt files"
        + (f": {', '.join(p.name for p in pts)} - pass the file itself" if pts else "")
    )


def read_dit_state_dict(
    path_or_dir: str | Path, *, trust_pickle: bool = False, prefer_ema: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, str], Path, dict[str, Any]]:
    """Read and convert DiT weights from any accepted source.

    Returns (diffusers-named tensors, diffusers name -> name in the file, the file or folder read, report).
    """
    source, kind = resolve_dit_source(path_or_dir)
    if kind == "diffusers":
        weights = _folder_weights(source)
        if weights.suffix == ".bin":
            raw = state_io.torch_load(weights, trust_pickle=trust_pickle)
        else:
            raw = state_io.load_safetensors(weights)
    elif kind == "safetensors":
        raw = state_io.load_safetensors(source)
    elif kind == "dcp":
        raw = state_io.load_dcp(source, trust_pickle=trust_pickle)
    else:
        raw, mapped = state_io.torch_load_mapped(source, trust_pickle=trust_pickle)
    converted, origin, report = _convert(state_io.unwrap(raw, source), prefer_ema)
    report["kind"] = kind
    report["file_backed"] = kind == "torch" and mapped
    return converted, origin, source, report


def load_dit_weights(
    model: torch.nn.Module,
    path_or_dir: str | Path,
    *,
    trust_pickle: bool = False,
    dtype: torch.dtype | None = None,
    prefer_ema: bool = True,
) -> torch.nn.Module:
    """Load Cosmos-Predict2 DiT weights from a local file or folder into a ``CosmosTransformer3DModel``, strictly.

    Args:
        model: built from the matching config; on the meta device (see :func:`build_dit_on_meta`) the file's tensors
            are assigned without a copy (an mmap-ed ``.pt`` stays in the page cache), otherwise copied in.
        path_or_dir: any source listed in the module docstring.
        trust_pickle: allow ``torch.load(weights_only=False)`` for checkpoints with pickled non-tensor entries.
        dtype: cast weights to this dtype (None: the file's dtype on meta assignment, the model's otherwise).
        prefer_ema: use ``net_ema.`` weights when the file has them (official ``load_ema_to_reg``).

    Raises:
        ValueError: missing / unexpected keys (first ten of each and counts), shape mismatch (key and both shapes),
            folder config that differs from the model's.
        UntrustedPickleError: the file needs the full unpickler and ``trust_pickle`` is False.
        FileNotFoundError: nothing loadable at the path.
    """
    state_dict, origin, source, report = read_dit_state_dict(path_or_dir, trust_pickle=trust_pickle, prefer_ema=prefer_ema)
    if report["kind"] == "diffusers":
        _check_folder_config(source, model)
    prefix = report["prefix"]
    official = bool(prefix) or any(k != origin[k] for k in state_dict)

    def file_name(key: str) -> str | None:
        name = diffusers_key_to_official(key) if official else None
        return prefix + name if name else None

    state_io.assign_strict(
        model, state_dict, source=str(source), origin=origin, dtype=dtype, file_name=file_name,
        mapped_file=source if report["file_backed"] else None,
    )
    log.info(
        "loaded %d DiT tensors from %s (%s%s; dropped %d non-weight entries, ignored %d outside the prefix)",
        len(state_dict), source, report["kind"], f", prefix {report['prefix']}" if report["prefix"] else "",
        len(report["dropped"]), report["ignored"],
    )
    return model
