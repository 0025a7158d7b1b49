"""Policy exports: a folder that rebuilds a checkpoint's deployed model from safetensors, YAML and JSON alone.

A ``.ckpt`` resumes training; an export is what a policy is shipped as. Nothing in it is a pickle, so loading it runs
no code from the file::

    python -m cosmos_lit export ckpt_path=runs/<run>/checkpoints/last.ckpt out=exports/my_policy
    policy = CosmosPolicy.from_pretrained("exports/my_policy")        # cosmos_lit.policy
    model = load_pretrained("exports/my_policy")                        # the CosmosPolicyModel alone

The folder (``FORMAT_VERSION`` 1):

=============================  ===========================================================================================
``model.safetensors``          every tensor of the deployed ``CosmosPolicyModel.state_dict()`` (the EMA backbone where
                               the run kept one, as ``cosmos_lit.checkpoint.load_model`` chooses), in the model's dtypes
``config.yaml``                ``format_version``; ``model`` (the component nodes, ``sampling``,
                               ``mask_current_state_for_value``), ``spec`` (the ``DataSpec``), ``policy`` (the
                               deployment defaults of ``from_pretrained``: ``planner``, ``num_steps``, ``execute_steps``,
                               ``image_pipeline``, from the run's config) and ``source`` (checkpoint, step, metrics)
``dataset_statistics.json``    the statistics the model normalizes with (official keys ``actions_min`` ...)
``README.md``                  the model card: data spec, training data, metrics, source checkpoint and step
``t5_embeddings.safetensors``  only with a ``t5_cache`` text encoder: its instruction embeddings (cosmos_lit's T5
                               cache layout, ``cosmos_lit.weights.t5``), so the export does not need the original
                               (pickled) cache file
=============================  ===========================================================================================

An export is written into a hidden temp folder beside ``out`` and renamed when complete (``cosmos_lit.io.atomic_dir``):
a failed export leaves nothing. An existing ``out`` must be empty, or a previous export replaced with
``overwrite=True``; any other folder is refused.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from cosmos_lit.checkpoint import EMA_PREFIX, model_from, model_node, read, upgrade
from cosmos_lit.io import atomic_dir, atomic_path, write_json_atomic, write_text_atomic
from cosmos_lit.model import MODEL_OPTIONS, CosmosPolicyModel
from cosmos_lit.registry import ConfigError

FORMAT_VERSION = 1
CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
STATISTICS_FILE = "dataset_statistics.json"
README_FILE = "README.md"
TEXT_FILE = "t5_embeddings.safetensors"
POLICY_KEYS = ("planner", "num_steps", "execute_steps", "image_pipeline")
EXPECTED = f"a policy folder of `python -m cosmos_lit export` ({CONFIG_FILE}, {WEIGHTS_FILE}, {STATISTICS_FILE})"


# ---------------------------------------------------------------------------------------------------- writing


def export_policy(ckpt_path: str | os.PathLike[str], out: str | os.PathLike[str], overwrite: bool = False,
                  trust_pickle: bool = False) -> Path:
    """Write the deployed model of the checkpoint ``ckpt_path`` as a policy folder ``out``; returns ``out``.

    Args:
        ckpt_path: a cosmos_lit checkpoint (``python -m cosmos_lit fit``; older formats are upgraded).
        out: the folder to write. It must not exist, be empty, or (with ``overwrite``) be a previous export.
        overwrite: replace a previous export at ``out`` (only once the new one is complete).
        trust_pickle: read a checkpoint that holds pickled Python objects (the export itself holds none).

    Raises ConfigError (one line) for a refused ``out`` (before the checkpoint is read) or a bad checkpoint."""
    src = Path(ckpt_path).expanduser().resolve()
    dest = Path(out).expanduser().resolve()
    _check_out(dest, overwrite, src)
    ckpt = upgrade(read(src, "cpu", trust_pickle), src)
    model = model_from(ckpt, src, "cpu")
    node = model_node(ckpt, src)
    if model.adapter is None:  # LoRA already merged by load_model (or none): plain weights
        node.pop("adapter", None)
    node["sampling"] = asdict(model.sampling)
    node["mask_current_state_for_value"] = model.mask_current_state_for_value
    node["mask_future_state_for_value"] = model.mask_future_state_for_value
    meta = dict(ckpt.get("cosmos_lit") or {})
    run_cfg = dict(meta.get("config") or {})
    try:
        with atomic_dir(dest, replace=overwrite) as tmp:
            text = node.get("text_encoder")
            if isinstance(text, dict) and text.get("name") == "t5_cache":  # the cache goes with the export
                from cosmos_lit.weights.t5 import save_t5_cache

                save_t5_cache(model.text_encoder.cache, tmp / TEXT_FILE)
                node["text_encoder"] = {k: v for k, v in text.items() if k != "trust_pickle"} | {"path": TEXT_FILE}
            config = {
                "format_version": FORMAT_VERSION,
                "model": node,
                "spec": model.spec.to_dict(),
                "policy": _policy_defaults(run_cfg),
                "source": _source(ckpt, src, meta),
            }
            with atomic_path(tmp / WEIGHTS_FILE) as weights:  # (with the usual file permissions)
                save_weights(model.state_dict(), weights)
            write_json_atomic(tmp / STATISTICS_FILE, _plain(model.statistics, "statistics"), indent=2)
            write_text_atomic(tmp / CONFIG_FILE, _yaml(config))
            write_text_atomic(tmp / README_FILE, model_card(config, model, run_cfg, dest.name))
    except FileExistsError as e:  # out appeared meanwhile
        raise ConfigError(f"out: {e}") from None
    return dest


def _check_out(dest: Path, overwrite: bool, src: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"out: {dest} exists and is not a folder")
    if src == dest or dest in src.parents:
        raise ConfigError(f"out: {dest} holds the checkpoint {src}; export to another folder")
    if not dest.is_dir() or not any(dest.iterdir()):
        return
    if not (dest / CONFIG_FILE).is_file() or not _is_export(dest / CONFIG_FILE):
        raise ConfigError(f"out: {dest} exists, is not empty and is not a policy export; choose another folder")
    if not overwrite:
        raise ConfigError(f"out: {dest} already holds a policy export; pass overwrite=true to replace it")


def _is_export(path: Path) -> bool:
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(cfg, dict) and "format_version" in cfg


def save_weights(state: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """``state`` as a safetensors file. safetensors refuses tensors that share memory (tied weights, views of one
    buffer) and non-contiguous ones: those are written as contiguous copies, so every key is in the file."""
    from safetensors.torch import save_file

    seen: set[int] = set()
    tensors = {}
    for key, value in state.items():
        t = value.detach().cpu()
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        own = t.is_contiguous() and storage.nbytes() == t.numel() * t.element_size() and t.storage_offset() == 0
        if not own or (ptr in seen and t.numel()):
            t = t.clone(memory_format=torch.contiguous_format)
        seen.add(ptr)
        tensors[key] = t
    save_file(tensors, str(path), metadata={"format": "pt", "cosmos_lit_export": str(FORMAT_VERSION)})


def _policy_defaults(run_cfg: dict[str, Any]) -> dict[str, Any]:
    """The run's test-time settings (what ``serve`` takes from a checkpoint): planner and eval.{num_steps, ...}."""
    ev = run_cfg.get("eval") if isinstance(run_cfg.get("eval"), dict) else {}
    out: dict[str, Any] = {"planner": run_cfg["planner"] if isinstance(run_cfg.get("planner"), dict) else None}
    out.update({k: ev.get(k) for k in POLICY_KEYS[1:]})
    return _plain(out, "policy")


def _source(ckpt: dict[str, Any], src: Path, meta: dict[str, Any]) -> dict[str, Any]:
    metrics = dict(meta.get("metrics") or {})
    for state in (ckpt.get("callbacks") or {}).values():  # ModelCheckpoint's monitored score, when it had one
        if isinstance(state, dict) and state.get("monitor") and state.get("current_score") is not None:
            metrics.setdefault(str(state["monitor"]), state["current_score"])
    ema = any(k.startswith(EMA_PREFIX) for k in ckpt.get("state_dict") or {})
    return _plain({"checkpoint": str(src), "global_step": ckpt.get("global_step"), "epoch": ckpt.get("epoch"),
                   "backbone_weights": "ema" if ema else "trained",
                   "cosmos_lit_version": meta.get("version"), "task": meta.get("task"),
                   "metrics": {k: float(v) for k, v in sorted(metrics.items())},
                   "data": dict(meta.get("data") or {})}, "source")


def _plain(value: Any, where: str) -> Any:
    """Plain YAML/JSON containers: tuples -> lists, 0-d tensors and numpy scalars -> numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalar or array
        return value.tolist()
    raise ConfigError(f"export: {where}: {type(value).__name__} is not a plain value (numbers, strings, lists, dicts)")


def _yaml(config: dict[str, Any]) -> str:
    import yaml

    head = "# cosmos_lit policy export: load with cosmos_lit.policy.CosmosPolicy.from_pretrained(<this folder>)\n"
    return head + yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=120)


def model_card(config: dict[str, Any], model: CosmosPolicyModel, run_cfg: dict[str, Any], name: str) -> str:
    """The README of an export: what the policy expects and acts, what it was trained on, and from where."""
    spec, src, policy = config["spec"], config["source"], config["policy"]
    data = dict(run_cfg.get("data") or {})
    title = run_cfg.get("run_name") or data.get("name") or spec.get("name") or name
    step = src.get("global_step")
    epoch = "" if src.get("epoch") is None else f" (epoch {src['epoch']})"
    lines = [f"# {title}", "",
             f"A Cosmos Policy (cosmos_lit) exported from `{src['checkpoint']}` at step {step}{epoch}. "
             f"Files: `{WEIGHTS_FILE}` (weights), "
             f"`{CONFIG_FILE}` (architecture, data spec, sampling and deployment defaults), `{STATISTICS_FILE}` "
             "(normalization statistics); no pickle.", "",
             "```python", "from cosmos_lit.policy import CosmosPolicy", "",
             f'policy = CosmosPolicy.from_pretrained("{name}")   # device="cuda", planner=..., num_steps=...',
             'out = policy([{"images": {camera: image_hwc_uint8, ...}, "proprio": proprio, "instruction": text}])',
             'out["actions"]   # (1, chunk size, action dim), env units', "```", "",
             "## Data spec", "", "| | |", "|---|---|",
             f"| cameras (latent-slot order) | {', '.join(spec['cameras'])} |",
             f"| proprio dim | {spec['proprio_dim']} |", f"| action dim | {spec['action_dim']} |",
             f"| chunk size | {spec['chunk_size']} |", f"| image size | {spec['image_size']} px |",
             f"| value frame | {'yes' if model.layout.has_value else 'no'} |",
             f"| gamma, fps | {spec['gamma']}, {spec['fps']} |", "",
             "## Model", "", "| | |", "|---|---|"]
    node = config["model"]
    for key in ("backbone", "image_encoder", "vector_encoder", "value_head", "text_encoder", "adapter"):
        if isinstance(node.get(key), dict):
            lines.append(f"| {key.replace('_', ' ')} | {node[key].get('name')} |")
    n_params = sum(p.numel() for p in model.parameters())
    lines += [f"| parameters | {n_params:,} |",
              f"| backbone weights | {'the EMA copy (task.ema_decay)' if src.get('backbone_weights') == 'ema' else 'as trained'} |",
              f"| sampling | {node['sampling']['num_steps']} steps, σ {node['sampling']['sigma_max']} → "
              f"{node['sampling']['sigma_min']}, {node['sampling']['solver']} |"]
    planner = (policy.get("planner") or {}).get("name", "none")
    deploy = [f"planner {planner}"] + [f"{k} {policy[k]}" for k in POLICY_KEYS[1:] if policy.get(k) is not None]
    lines += [f"| deployment defaults | {', '.join(deploy)} |", "", "## Training data", ""]
    if data:
        lines.append(f"- data config: `{data.get('name', '?')}`" + (f", data_dir `{data['data_dir']}`" if data.get("data_dir") else ""))
        if data.get("rollout_dir"):
            lines.append(f"- rollouts: `{data['rollout_dir']}`")
    else:
        lines.append("- data config: not recorded in the checkpoint")
    counts = src.get("data") or {}
    if counts.get("episodes") is not None:
        split = [f"{counts[k]} {k.split('_')[0]}" for k in ("train_episodes", "val_episodes") if counts.get(k) is not None]
        lines.append(f"- episodes: {counts['episodes']}" + (f" ({', '.join(split)})" if split else ""))
    elif data.get("num_demos") is not None:
        lines.append(f"- episodes: {data['num_demos']} demonstrations (data.num_demos)")
    else:
        lines.append("- episodes: not recorded in the checkpoint")
    lines += ["", "## Metrics", ""]
    metrics = src.get("metrics") or {}
    if metrics:
        lines += [f"At step {step}, as recorded in the checkpoint:", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    else:
        lines.append("No metrics recorded in the checkpoint.")
    version = src.get("cosmos_lit_version")
    lines += ["", "## Source", "", f"- checkpoint: `{src['checkpoint']}`", f"- step: {step}",
              f"- cosmos_lit version: {version or 'unknown'}", ""]
    return "\n".join(lines)


def _fmt(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else str(v)


# ---------------------------------------------------------------------------------------------------- reading


def read_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked ``config.yaml`` of an export; ConfigError (one line naming the file) when it is no export."""
    import yaml

    root = Path(folder).expanduser()
    if not root.exists():
        raise ConfigError(f"{root}: not found; expected {EXPECTED}")
    if not root.is_dir():
        hint = "; a checkpoint file loads with CosmosPolicy.from_checkpoint" if root.suffix == ".ckpt" else ""
        raise ConfigError(f"{root}: not a folder; expected {EXPECTED}{hint}")
    path = root / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: missing; expected {EXPECTED}")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        detail = " ".join(str(e).split())[:200]
        raise ConfigError(f"{path}: not readable YAML ({type(e).__name__}: {detail})") from None
    if not isinstance(cfg, dict) or "format_version" not in cfg:
        raise ConfigError(f"{path}: not a policy export config (no format_version: a run's config.yaml?); expected "
                          f"{EXPECTED}")
    version = cfg["format_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"{path}: format_version: expected a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ConfigError(f"{path}: format_version {version} is newer than this cosmos_lit reads ({FORMAT_VERSION}); "
                          "upgrade cosmos_lit")
    for key in ("model", "spec"):
        if not isinstance(cfg.get(key), dict):
            raise ConfigError(f"{path}: {key}: expected a mapping, got {cfg.get(key)!r}")
    policy = cfg.get("policy") or {}
    if not isinstance(policy, dict):
        raise ConfigError(f"{path}: policy: expected a mapping, got {policy!r}")
    unknown = [k for k in policy if k not in POLICY_KEYS]
    if unknown:
        raise ConfigError(f"{path}: policy.{unknown[0]}: unknown key; accepted: {', '.join(POLICY_KEYS)}")
    cfg["policy"] = policy
    return cfg


def _statistics(root: Path) -> dict[str, Any]:
    path = root / STATISTICS_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: missing (the dataset statistics JSON); expected {EXPECTED}")
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path}: not readable JSON ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    if not isinstance(stats, dict):
        raise ConfigError(f"{path}: expected a JSON object {{\"actions_min\": [...], ...}}, got {type(stats).__name__}")
    return stats


def _weights(root: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = root / WEIGHTS_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: missing (the model weights); expected {EXPECTED}")
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError (and OSError) on a damaged file
        raise ConfigError(f"{path}: not a readable safetensors file ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:200]})") from None


def load_pretrained(folder: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> CosmosPolicyModel:
    """The ``CosmosPolicyModel`` of an export (eval mode on ``map_location``): safetensors, YAML and JSON only.

    Raises ConfigError (one line naming the file) for a missing file, a folder that is no export, a config the
    registry refuses, or weights that do not match the config (the first missing, unexpected or mis-shaped key)."""
    root = Path(folder).expanduser()
    cfg = read_config(root)
    config_path = root / CONFIG_FILE
    node = dict(cfg["model"])
    text = node.get("text_encoder")
    if isinstance(text, dict) and text.get("path") == TEXT_FILE:  # the export's own cache
        if not (root / TEXT_FILE).is_file():
            raise ConfigError(f"{root / TEXT_FILE}: missing (the instruction embeddings {CONFIG_FILE}'s "
                              "model.text_encoder names)")
        node["text_encoder"] = {**text, "path": str(root / TEXT_FILE)}
    options = {k: node.pop(k) for k in MODEL_OPTIONS if k in node}
    stats = _statistics(root)
    try:
        model = CosmosPolicyModel(node, cfg["spec"], stats, **options)
    except (ConfigError, TypeError, ValueError, KeyError) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        raise ConfigError(f"{config_path}: {' '.join(msg.split())}") from None
    state = _weights(root)
    expected = model.state_dict()
    weights_path = root / WEIGHTS_FILE
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ConfigError(f"{weights_path}: missing key '{missing[0]}'{more} that the model of {CONFIG_FILE} has")
    if unexpected:
        more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
        raise ConfigError(f"{weights_path}: unexpected key '{unexpected[0]}'{more} (not in the model of {CONFIG_FILE})")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ConfigError(f"{weights_path}: key '{key}' has shape {tuple(state[key].shape)}, the model of "
                              f"{CONFIG_FILE} expects {tuple(value.shape)}")
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()


# ---------------------------------------------------------------------------------------------------- the verb

OPTIONS = {"ckpt_path": None, "out": None, "overwrite": False, "trust_pickle": False}
USAGE = "python -m cosmos_lit export ckpt_path=CKPT out=DIR [overwrite=true] [trust_pickle=true]"


def parse_options(overrides: list[str]) -> dict[str, Any]:
    """``key=value`` arguments of the ``export`` verb -> ``export_policy`` keyword arguments (ConfigError if bad)."""
    import difflib

    opts = dict(OPTIONS)
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq or key not in OPTIONS:
            close = difflib.get_close_matches(key, list(OPTIONS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"export: unknown argument '{item}'{hint}; usage: {USAGE}")
        if isinstance(OPTIONS[key], bool):
            flag = value.strip().lower()
            if flag not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(f"export: {key}: expected true or false, got {value!r}")
            opts[key] = flag in ("true", "1", "yes")
        else:
            opts[key] = value
    for key in ("ckpt_path", "out"):
        if not opts[key]:
            raise ConfigError(f"export: needs {key}=...; usage: {USAGE}")
    return opts
