"""Learning from experience: the settings ``python -m cosmos_lit refine ckpt_path=BASE data.rollout_dir=DIR`` adds.

A refine run is a ``fit`` that starts from a policy checkpoint: the base run's own config (embedded in the
checkpoint), then ``configs/experience/<data.name>.yaml`` (the settings of the official rollout fine-tune: mostly
world-model and value samples from the rollouts, successes and failures balanced, V(s') from s' alone), then the
command line's overrides; ``init_from`` = the checkpoint (its deployed weights and its data statistics, so the
refined model normalizes as the base does; ``cosmos_lit.checkpoint.start_from``). The optimizer, schedule and step
count start fresh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cosmos_lit.config import BUILTIN_CONFIGS, CliError


def experience_file(data_name: str) -> Path:
    return BUILTIN_CONFIGS / "experience" / f"{data_name}.yaml"


def _flatten(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict) and node:
        return [kv for k, v in node.items() for kv in _flatten(v, f"{prefix}{k}.")]
    return [(prefix[:-1], node)]


def _present(cfg: dict[str, Any], key: str) -> bool:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def experience_overrides(embedded: dict[str, Any], path: Path) -> list[str]:
    """``configs/experience/<name>.yaml`` as ``key=value`` overrides of the base config (``+key=value`` for keys
    the base config does not have, e.g. a DataModule option it left at its default). Keys under a part the base run
    does not have (``eval: null``: no simulator evaluation) are left out."""
    import yaml

    try:
        node = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise CliError(f"{path}: not a readable YAML mapping ({' '.join(str(e).split())[:160]})") from None
    if not isinstance(node, dict):
        raise CliError(f"{path}: expected a mapping of config keys, got {type(node).__name__}")
    out = []
    for key, value in _flatten(node):
        if embedded.get(key.split(".")[0]) is None:
            continue
        text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        out.append(f"{'' if _present(embedded, key) else '+'}{key}={text}")
    return out
