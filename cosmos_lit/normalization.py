"""Dataset statistics and the min-max normalization of actions and proprio (docs/method.md#vectors-in-latent-frames).

Statistics use the official layout: a flat dict of per-dimension lists ::

    {"actions_min": [...], "actions_max": [...], "actions_mean": [...], "actions_std": [...], "actions_median": [...],
     "proprio_min": [...], ..., "proprio_median": [...]}

computed over the demonstrations only and cached as ``dataset_statistics.json`` next to the data. The cache also
records what it was computed from, under ``"_source"`` (:func:`statistics_source`: a checksum of every
demonstration's proprio and action values, the number of episodes, steps and dimensions), so that statistics of
other data are never used silently; files without it (the official ones, older caches) load the same.

Normalization maps each dimension to [-1, 1]::

    x' = 2·(x − min)/(max − min) − 1          x = 0.5·(x' + 1)·(max − min) + min

or, with the official ``rescale_data`` options carried under ``"_rescale"`` (:func:`with_rescale`;
``data.scale_multiplier`` / ``data.non_negative_only``), to [-m, m] (``x' = m·(2u − 1)``) or [0, m] (``x' = m·u``),
u = (x − min)/(max − min). The statistics dict carries the options, so the model, the policy and an exported folder
un-normalize with the same rule the data were normalized with.

Constant dimensions (max − min < ``EPS``) have no scale to learn: they normalize to 0 and un-normalize to their
constant value (``min``), so a stuck gripper or an unused joint never produces inf/NaN. Values outside the
demonstration range (rollouts normalized with demo statistics) are not clipped.

Every function accepts numpy arrays or torch tensors of shape (..., D) and returns the same kind.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cosmos_lit.cache_keys import Checksum, checksum, unordered_checksum
from cosmos_lit.io import write_json_atomic

STAT_NAMES = ("min", "max", "mean", "std", "median")
GROUPS = ("actions", "proprio")
EPS = 1e-8
SOURCE_KEY = "_source"  # what a cached statistics file was computed from (statistics_source)
RESCALE_KEY = "_rescale"  # the official rescale_data options: {"scale_multiplier": m, "non_negative_only": bool}
# bump when compute_statistics changes what it writes: caches of the old computation are then recomputed
STATISTICS_VERSION = 1


def _bounds_like(x: Any, stats: Mapping[str, Sequence[float]], group: str) -> tuple[Any, Any]:
    for name in ("min", "max"):
        if f"{group}_{name}" not in stats:
            raise KeyError(f"statistics: missing key '{group}_{name}' (expected keys {group}_min/{group}_max)")
    lo = np.asarray(stats[f"{group}_min"], dtype=np.float64)
    hi = np.asarray(stats[f"{group}_max"], dtype=np.float64)
    if x.shape[-1] != lo.shape[-1]:
        raise ValueError(
            f"statistics: '{group}' has {lo.shape[-1]} dimensions but the data has {x.shape[-1]} (last axis)"
        )
    try:
        import torch

        if isinstance(x, torch.Tensor):
            dt = x.dtype if x.is_floating_point() else torch.float32
            return torch.as_tensor(lo, dtype=dt, device=x.device), torch.as_tensor(hi, dtype=dt, device=x.device)
    except ImportError:  # pragma: no cover
        pass
    dt = x.dtype if np.issubdtype(np.asarray(x).dtype, np.floating) else np.float32
    return lo.astype(dt), hi.astype(dt)


def rescale_options(stats: Mapping[str, Any]) -> tuple[float, bool]:
    """(scale_multiplier, non_negative_only) of ``stats`` (defaults 1.0 and False: the [-1, 1] range)."""
    opts = stats.get(RESCALE_KEY) or {}
    if not isinstance(opts, Mapping) or set(opts) - {"scale_multiplier", "non_negative_only"}:
        raise ValueError(f"statistics: '{RESCALE_KEY}' must map scale_multiplier / non_negative_only, got {opts!r}")
    multiplier, non_negative = opts.get("scale_multiplier", 1.0), opts.get("non_negative_only", False)
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or not (
            math.isfinite(multiplier) and multiplier > 0):
        raise ValueError(f"statistics: scale_multiplier must be a positive number, got {multiplier!r}")
    if not isinstance(non_negative, bool):
        raise ValueError(f"statistics: non_negative_only must be true or false, got {non_negative!r}")
    return float(multiplier), non_negative


def with_rescale(stats: Mapping[str, Any], scale_multiplier: float = 1.0, non_negative_only: bool = False,
                 ) -> dict[str, Any]:
    """``stats`` carrying the official rescale options; the defaults leave the dict as it was (no key added).

    Statistics that already carry other options (a checkpoint's) are an error naming both settings.
    """
    wanted = {"scale_multiplier": float(scale_multiplier), "non_negative_only": bool(non_negative_only)}
    rescale_options({RESCALE_KEY: wanted})  # validates
    out = dict(stats)
    if RESCALE_KEY in stats:
        have = rescale_options(stats)
        if have != (wanted["scale_multiplier"], wanted["non_negative_only"]):
            raise ValueError(f"statistics: normalized with scale_multiplier={have[0]}, non_negative_only={have[1]}, "
                             f"but the data asks for scale_multiplier={wanted['scale_multiplier']}, "
                             f"non_negative_only={wanted['non_negative_only']} (data.scale_multiplier / "
                             f"data.non_negative_only must match the statistics the model was trained with)")
        return out
    if wanted != {"scale_multiplier": 1.0, "non_negative_only": False}:
        out[RESCALE_KEY] = wanted
    return out


def normalized_range(stats: Mapping[str, Any]) -> tuple[float, float]:
    """(low, high) that the demonstrations' values normalize to: (-1, 1), (-m, m) or (0, m)."""
    multiplier, non_negative = rescale_options(stats)
    return (0.0 if non_negative else -multiplier), multiplier


def normalize(x: Any, stats: Mapping[str, Any], group: str) -> Any:
    """Min-max normalize ``x`` (..., D) to [-1, 1] (or the range of the stats' rescale options) with
    ``stats[group_min/max]``; constant dims map to 0."""
    multiplier, non_negative = rescale_options(stats)
    lo, hi = _bounds_like(x, stats, group)
    span = hi - lo
    constant = span < EPS
    safe = span + constant  # 1 where constant: avoids 0/0, result is masked below
    out = (x - lo) / safe if non_negative else 2.0 * (x - lo) / safe - 1.0
    if multiplier != 1.0:
        out = out * multiplier
    if isinstance(out, np.ndarray):
        return np.where(constant, 0.0, out).astype(out.dtype)
    return out.masked_fill(constant, 0.0)


def unnormalize(x: Any, stats: Mapping[str, Any], group: str) -> Any:
    """Inverse of :func:`normalize`: x = 0.5·(x' + 1)·(max − min) + min (constant dims give ``min``)."""
    multiplier, non_negative = rescale_options(stats)
    lo, hi = _bounds_like(x, stats, group)
    if multiplier != 1.0:
        x = x / multiplier
    unit = x if non_negative else 0.5 * (x + 1.0)
    return unit * (hi - lo) + lo


def compute_statistics(arrays: Mapping[str, Sequence[np.ndarray] | np.ndarray]) -> dict[str, list[float]]:
    """Per-dimension min/max/mean/std/median of each group.

    Args:
        arrays: group name (``"actions"``, ``"proprio"``) -> one (T, D) array or a list of (T_i, D) arrays
            (one per episode); all rows are pooled.

    Returns:
        ``{f"{group}_{stat}": list of D floats}`` for every group and every stat in :data:`STAT_NAMES`.
    """
    stats: dict[str, list[float]] = {}
    for group, value in arrays.items():
        parts = [value] if isinstance(value, np.ndarray) else list(value)
        if not parts:
            raise ValueError(f"statistics: no '{group}' arrays to compute statistics from")
        rows = np.concatenate([np.asarray(p, dtype=np.float64).reshape(len(p), -1) for p in parts], axis=0)
        if rows.shape[0] == 0:
            raise ValueError(f"statistics: '{group}' has no rows")
        if not np.isfinite(rows).all():
            raise ValueError(f"statistics: '{group}' contains NaN or inf values")
        stats[f"{group}_min"] = rows.min(0).tolist()
        stats[f"{group}_max"] = rows.max(0).tolist()
        # as the official datasets: mean / std / median of the float32 arrays (min / max are exact either way)
        rows32 = rows.astype(np.float32)
        stats[f"{group}_mean"] = rows32.mean(0).astype(np.float64).tolist()
        stats[f"{group}_std"] = rows32.std(0).astype(np.float64).tolist()
        stats[f"{group}_median"] = np.median(rows32, axis=0).astype(np.float64).tolist()
    return stats


def check_statistics(
    stats: Mapping[str, Sequence[float]], dims: Mapping[str, int], source: str = "statistics"
) -> None:
    """Raise ValueError naming ``source`` and the key when a group's stats are missing, non-finite or of wrong length.

    Args:
        dims: group -> expected number of dimensions, e.g. ``{"actions": 14, "proprio": 14}``.
    """
    for group, dim in dims.items():
        for name in STAT_NAMES:
            key = f"{group}_{name}"
            if key not in stats:
                raise ValueError(f"{source}: missing key '{key}' (expected a list of {dim} floats)")
            value = stats[key]
            if not isinstance(value, Sequence) or len(value) != dim:
                got = len(value) if isinstance(value, Sequence) else type(value).__name__
                raise ValueError(
                    f"{source}: key '{key}' has {got} values but the data has {dim} {group} dimensions; "
                    f"delete the file to recompute it or point to statistics that match this data"
                )
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value):
                raise ValueError(f"{source}: key '{key}' contains non-finite or non-numeric values")
        lo, hi = np.asarray(stats[f"{group}_min"]), np.asarray(stats[f"{group}_max"])
        if (hi < lo).any():
            raise ValueError(f"{source}: '{group}_max' is below '{group}_min' at dims {np.nonzero(hi < lo)[0].tolist()}")


def statistics_source(arrays: Mapping[str, Sequence[np.ndarray]]) -> dict[str, Any]:
    """What :func:`compute_statistics` would be computed from, as recorded in a statistics cache.

    Args:
        arrays: group -> one (T_i, D) array per episode, as given to :func:`compute_statistics`.

    Returns:
        ``{"checksum": 32 hex digits, "episodes": n, "steps": sum of T_i, "dims": {group: D}, "version": ...}``; the
        checksum covers every value (as float32) and does not depend on the order of the episodes.
    """
    groups = sorted(arrays)
    parts = [list(arrays[g]) for g in groups]
    counts = {len(p) for p in parts}
    if len(counts) != 1:
        raise ValueError(f"statistics_source: groups have different numbers of episodes {dict(zip(groups, map(len, parts)))}")
    digests, steps = [], 0
    for per_group in zip(*parts):
        c = Checksum()
        for g, a in zip(groups, per_group):
            a32 = np.asarray(a, dtype=np.float32)
            c.update(g).update(a32.reshape(len(a32), -1))
        digests.append(c.hexdigest())
        steps += len(per_group[0])
    dims = {g: int(np.asarray(p[0]).reshape(len(p[0]), -1).shape[1]) if p else 0 for g, p in zip(groups, parts)}
    return {"checksum": checksum(STATISTICS_VERSION, unordered_checksum(digests)), "episodes": len(digests),
            "steps": int(steps), "dims": dims, "version": STATISTICS_VERSION}


def source_difference(recorded: Mapping[str, Any] | None, current: Mapping[str, Any]) -> str | None:
    """None when a cache recorded ``current``; else what differs, in words (for the notice or the error)."""
    if not isinstance(recorded, Mapping) or "checksum" not in recorded:
        return "it records no source (written by an older version, or by hand)"
    if recorded.get("checksum") == current.get("checksum"):
        return None
    if recorded.get("version") != current.get("version"):
        return f"it was computed by statistics version {recorded.get('version')}, now {current.get('version')}"
    changes = [f"{k} {recorded.get(k)} -> {current.get(k)}" for k in ("episodes", "steps", "dims")
               if recorded.get(k) != current.get(k)]
    return "it was computed from other data (" + ("; ".join(changes) if changes else "same sizes, other values") + ")"


def read_statistics(path: str | os.PathLike) -> tuple[dict[str, list[float]], dict[str, Any] | None]:
    """(statistics, the ``"_source"`` record or None) of a statistics JSON file; see :func:`load_statistics`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"statistics file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            stats = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"statistics file {path}: not valid JSON ({e})") from None
    if not isinstance(stats, dict):
        raise ValueError(f"statistics file {path}: expected a JSON object of lists, got {type(stats).__name__}")
    source = stats.pop(SOURCE_KEY, None)
    return ({k: [float(x) for x in v] if isinstance(v, list) else v for k, v in stats.items()},
            source if isinstance(source, dict) else None)


def load_statistics(path: str | os.PathLike) -> dict[str, list[float]]:
    """Read a statistics JSON file (official layout; a ``"_source"`` record is left out); a missing or unreadable
    file is a clear error."""
    return read_statistics(path)[0]


def save_statistics(path: str | os.PathLike, stats: Mapping[str, Sequence[float]],
                    source: Mapping[str, Any] | None = None) -> None:
    """Write statistics (name -> list of floats) as JSON atomically (temp file in the same folder, then rename),
    with ``source`` (:func:`statistics_source`) under ``"_source"`` when given."""
    payload: dict[str, Any] = {k: [float(x) for x in v] for k, v in stats.items() if k != SOURCE_KEY}
    if source is not None:
        payload[SOURCE_KEY] = dict(source)
    write_json_atomic(path, payload, indent=2)
