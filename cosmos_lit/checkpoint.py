"""Reading cosmos_lit's own Lightning checkpoints: the model or the whole training task, rebuilt from the file alone.

A checkpoint holds the task's hyper-parameters (every config node of the model, the data spec and statistics) and,
written by ``python -m cosmos_lit fit``, the run's resolved config under ``"cosmos_lit"``. All of it is plain
containers and tensors, so files load with ``torch.load(weights_only=True)``; anything else needs an explicit
``trust_pickle=True`` (a pickle can run code).

Format versions: checkpoints written before the model object existed keep the components at the task's top level
(``backbone.*`` ...) and the sampler settings in the task's hyper-parameters; ``upgrade`` maps them to today's
layout (``model.backbone.*``, ``model.sampling``), so both load.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from cosmos_lit.registry import ConfigError, build

COMPONENTS = ("backbone", "image_encoder", "vector_encoder", "value_head", "text_encoder")
MOVED_TO_MODEL = ("sampling", "mask_current_state_for_value")
EMA_PREFIX = "backbone_ema.module."


def read(path: str | Path, map_location: str | torch.device = "cpu", trust_pickle: bool = False) -> dict[str, Any]:
    """``torch.load`` a checkpoint file: tensors and plain containers only unless ``trust_pickle``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if not zipfile.is_zipfile(p):  # torch.save has written zip archives since torch 1.6 (an LFS pointer is text)
        raise ConfigError(f"{p}: not a readable checkpoint (not a torch.save archive; a Git LFS pointer or a partial "
                          "download?)")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
            what = f"{unsupported.group(1)}" if unsupported else "objects beyond tensors and plain containers"
            raise ConfigError(f"{p}: holds pickled Python objects ({what}); load it with trust_pickle=True only if "
                              "you trust where it comes from") from None
    except Exception as e:  # a damaged archive: torch raises RuntimeError, EOFError, KeyError, ... depending on where
        raise ConfigError(f"{p}: not a readable checkpoint ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    try:
        return torch.load(p, map_location=map_location, weights_only=False)
    except Exception as e:
        raise ConfigError(f"{p}: not a readable checkpoint ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


def upgrade(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> dict[str, Any]:
    """Today's layout of a checkpoint's ``hyper_parameters`` and ``state_dict`` (older files are converted)."""
    if not isinstance(ckpt, dict):
        raise ConfigError(f"{path}: not a cosmos_lit task checkpoint (holds a {type(ckpt).__name__}, not a dict)")
    hp = dict(ckpt.get("hyper_parameters") or {})
    if "model" not in hp or "spec" not in hp:
        raise ConfigError(f"{path}: not a cosmos_lit task checkpoint (no model/spec hyper-parameters)")
    model = dict(hp["model"])
    for key in MOVED_TO_MODEL:
        if key in hp:
            model.setdefault(key, hp.pop(key))
    hp.pop("planner", None)  # the planner is chosen at test time (config ``planner``), not stored with the weights
    hp["model"] = model
    state = {}
    for key, value in dict(ckpt.get("state_dict") or {}).items():
        head = key.split(".", 1)[0]
        if head in COMPONENTS:
            key = f"model.{key}"
        elif head == "planner":
            continue
        state[key] = value
    return {**ckpt, "hyper_parameters": hp, "state_dict": state}


def _without_pretrained(model: dict[str, Any]) -> dict[str, Any]:
    """Component nodes without ``pretrained``: the weights come from the checkpoint, not the original files."""
    return {k: ({kk: vv for kk, vv in v.items() if kk != "pretrained"} if isinstance(v, dict) else v)
            for k, v in model.items()}


def _check(missing: list[str], unexpected: list[str], path: Any) -> None:
    # a text encoder may hold a cache that is rebuilt from its own file, not stored
    missing = [k for k in missing if ".text_encoder." not in f".{k}"]
    if missing or unexpected:
        raise ConfigError(f"{path}: state dict does not match the rebuilt model (missing {missing[:10]}, "
                          f"unexpected {unexpected[:10]})")


def load_task(path: str | Path, map_location: str | torch.device = "cpu", trust_pickle: bool = False) -> Any:
    """The training task of a checkpoint (weights loaded, eval mode): what ``validate`` and ``test`` run."""
    ckpt = upgrade(read(path, map_location, trust_pickle), path)
    hp = dict(ckpt["hyper_parameters"])
    hp["model"] = _without_pretrained(hp["model"])
    task_name = (ckpt.get("cosmos_lit") or {}).get("task", "cosmos_policy")
    task = build({"name": task_name, **hp}, "task", path="task")
    missing, unexpected = task.load_state_dict(ckpt["state_dict"], strict=False)
    _check(missing, unexpected, path)
    return task.to(map_location).eval()


def load_model(path: str | Path, map_location: str | torch.device = "cpu", trust_pickle: bool = False,
               use_ema: bool = True) -> Any:
    """The ``CosmosPolicyModel`` of a checkpoint (eval mode), with the EMA backbone when the run kept one."""
    return model_from(read(path, map_location, trust_pickle), path, map_location, use_ema)


def model_node(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> dict[str, Any]:
    """The ``model`` config node a checkpoint's model is rebuilt from (components without ``pretrained``: the weights
    come from the checkpoint), with ``sampling`` and ``mask_current_state_for_value`` when the run set them."""
    return _without_pretrained(dict(upgrade(ckpt, path)["hyper_parameters"]["model"]))


def model_from(ckpt: dict[str, Any], path: str | Path = "checkpoint", map_location: str | torch.device = "cpu",
               use_ema: bool = True) -> Any:
    """``load_model`` of a checkpoint already read (``read``): for callers that need its other entries as well."""
    from cosmos_lit.model import MODEL_OPTIONS, CosmosPolicyModel
    from cosmos_lit.models.adapters import merge_adapters

    ckpt = upgrade(ckpt, path)
    hp = ckpt["hyper_parameters"]
    node = _without_pretrained(dict(hp["model"]))
    options = {k: node.pop(k) for k in MODEL_OPTIONS if k in node}
    model = CosmosPolicyModel(node, hp["spec"], hp.get("statistics"), **options)
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    ema = {k[len(EMA_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(EMA_PREFIX)}
    if use_ema and ema:
        state.update({f"backbone.{k}": v for k, v in ema.items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    _check(missing, unexpected, path)
    merge_adapters(model)  # LoRA (model/adapter=lora) folded into the base weights: plain nn.Linear for inference
    return model.to(map_location).eval()


LAYOUT_FIELDS = ("cameras", "proprio_dim", "action_dim", "chunk_size", "image_size", "has_value")


def layout_differences(checkpoint_spec: Any, data_spec: Any) -> list[str]:
    """The ``DataSpec`` fields that fix the latent layout and differ: ``"chunk_size 50 there, 8 here"`` each."""
    old, new = checkpoint_spec.to_dict(), data_spec.to_dict()
    return [f"{k} {old.get(k)!r} there, {new.get(k)!r} here" for k in LAYOUT_FIELDS if old.get(k) != new.get(k)]


def start_from(task: Any, base: Any, path: str | Path) -> None:
    """Start a new training run ``task`` from ``base``, the model a checkpoint deploys (``load_model(path)``: its EMA
    backbone when the run kept one): every component's weights, and the task's EMA copy (if any) starts there too.
    The optimizer, schedule and step count start fresh (for the training state, resume with ``ckpt_path``).

    Raises ConfigError (one line naming ``path``) when the data's layout or the model's architecture differ."""
    diff = layout_differences(base.spec, task.model.spec)
    if diff:
        raise ConfigError(f"init_from: {path}: the checkpoint's data layout differs from this run's ({'; '.join(diff)})")
    from cosmos_lit.models.adapters import adapter_parameter_names, to_adapted_keys

    state = to_adapted_keys(task.model, base.state_dict())  # a LoRA run starts from plain (merged) weights
    try:
        missing, unexpected = task.model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a size mismatch: another architecture
        detail = " ".join(str(e).split())
        raise ConfigError(f"init_from: {path}: its model does not fit this config's model ({detail[:300]})") from None
    fresh = adapter_parameter_names(task.model)  # new adapters keep their init (B = 0: the base's function)
    _check([k for k in missing if k not in fresh], unexpected, f"init_from: {path}")
    if task.backbone_ema is not None:  # the backbone just loaded (base's weights, and fresh adapters if any)
        task.backbone_ema.module.load_state_dict(task.model.backbone.state_dict())


def embedded_config(path: str | Path, trust_pickle: bool = False) -> dict[str, Any]:
    """The ``"cosmos_lit"`` entry that ``fit`` writes (``config``, ``overrides``, ``choices``, ``task``, ``version``)."""
    meta = read(path, "cpu", trust_pickle).get("cosmos_lit")
    if not meta:
        raise ConfigError(f"{path}: no embedded cosmos_lit config; pass --config as well")
    meta = dict(meta)
    cfg = dict(meta.get("config") or {})
    task = dict(cfg.get("task") or {})
    if any(k in task for k in MOVED_TO_MODEL):  # written before the model object: as upgrade() does for the weights
        model = dict(cfg.get("model") or {})
        for key in MOVED_TO_MODEL:
            if key in task:
                model.setdefault(key, task.pop(key))
        cfg.update(task=task, model=model)
        meta["config"] = cfg
    return meta
