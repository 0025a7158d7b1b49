"""Reading state dicts from local files and assigning them strictly to a module.

Shared by the DiT and VAE loaders. Two rules hold everywhere:

* Pickle is code. ``torch.load`` runs with ``weights_only=True`` (and ``mmap=True``, so the weights stay in the page
  cache instead of being copied); a file that needs the full unpickler loads only when the caller passes
  ``trust_pickle=True``, otherwise :class:`UntrustedPickleError` says so and names the flag.
* Loading is strict. Every model tensor must be in the file and every file tensor must be used, with the same shape;
  one error line lists the first ten missing / unexpected keys (and their counts) or the mismatched shapes.

A module built on the ``meta`` device receives the file's tensors by assignment (``load_state_dict(assign=True)``),
so host memory holds one copy of the weights; a materialised module gets a plain copy into its existing parameters.
"""

from __future__ import annotations

import ctypes
import json
import logging
import mmap
import pickle
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

TRUST_FLAG = "trust_pickle"
_WRAPPER_KEYS = ("model", "state_dict")
_SAFETENSORS_INDEX_SUFFIX = ".safetensors.index.json"


class UntrustedPickleError(ValueError):
    """A checkpoint needs the full (code-executing) unpickler and the caller did not allow it."""


def untrusted_message(path: Path, what: str = "pickled checkpoint") -> str:
    return (
        f"{path}: this {what} needs torch.load(weights_only=False), which can run arbitrary code; load it only if "
        f"you trust its source by passing {TRUST_FLAG}=True (in a config: `{TRUST_FLAG}: true` on the model.backbone / "
        f"model.image_encoder / model.text_encoder node that names this file)"
    )


def _torch_load_cpu(path: Path, weights_only: bool) -> tuple[Any, bool]:
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=weights_only), True
    except RuntimeError as err:
        if "mmap can only be used" not in str(err):
            raise
        return torch.load(path, map_location="cpu", mmap=False, weights_only=weights_only), False


def torch_load_mapped(path: str | Path, *, trust_pickle: bool = False) -> tuple[Any, bool]:
    """``torch.load`` on CPU: memory-mapped and weights-only first, full unpickler only with ``trust_pickle``.

    Returns (object, whether its tensors are backed by a private mapping of the file). Files written without the
    zip container (pre-1.6 ``torch.save``) cannot be memory-mapped and are read whole.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        return _torch_load_cpu(path, weights_only=True)
    except pickle.UnpicklingError:
        if not trust_pickle:
            raise UntrustedPickleError(untrusted_message(path)) from None
    return _torch_load_cpu(path, weights_only=False)


def torch_load(path: str | Path, *, trust_pickle: bool = False) -> Any:
    """:func:`torch_load_mapped` without the mapping flag."""
    return torch_load_mapped(path, trust_pickle=trust_pickle)[0]


def file_mappings(path: str | Path) -> list[tuple[int, int]]:
    """Address ranges [start, end) where ``path`` is mapped into this process (Linux ``/proc/self/maps``; else [])."""
    target = str(Path(path).resolve())
    ranges = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].strip() == target:
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    ranges.append((start, end))
    except OSError:
        return []
    return ranges


def release_file_pages(tensor: torch.Tensor, mappings: list[tuple[int, int]]) -> None:
    """Drop the resident pages of a tensor stored in a private read-only-so-far mapping of a checkpoint file.

    After a cast, the source pages would otherwise stay in this process's RSS until the whole file is unmapped.
    ``madvise(MADV_DONTNEED)`` on an unmodified private file mapping only forgets pages (the kernel re-reads them
    from the file if touched again, also neighbours sharing a page); it is skipped unless the tensor's bytes lie
    inside one of ``mappings`` (see :func:`file_mappings`), since on anonymous memory it would zero them.
    """
    storage = tensor.untyped_storage()
    start, size = storage.data_ptr(), storage.nbytes()
    page = mmap.PAGESIZE
    first, end = start // page * page, -(-(start + size) // page) * page
    if size == 0 or not any(lo <= first and end <= hi for lo, hi in mappings):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(end - first), 4)  # 4 = MADV_DONTNEED; failure is harmless


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of one ``.safetensors`` file, or of every shard named by a ``*.safetensors.index.json``."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"safetensors file not found: {path}")
    if path.name.endswith(_SAFETENSORS_INDEX_SUFFIX):
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise ValueError(f"{path}: expected a safetensors index with a 'weight_map' object ({err})") from None
        out: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            out.update(load_safetensors(path.parent / shard))
        return out
    return load_file(str(path), device="cpu")


def load_dcp(directory: str | Path, *, trust_pickle: bool = False) -> dict[str, Any]:
    """A torch.distributed checkpoint directory (``.metadata`` + ``*.distcp``), read in one process.

    Its ``.metadata`` is a pickle, so this needs ``trust_pickle`` as well.
    """
    directory = Path(directory)
    if not trust_pickle:
        raise UntrustedPickleError(untrusted_message(directory / ".metadata", "distributed checkpoint (pickled .metadata)"))
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    with warnings.catch_warnings():  # "torch.distributed is unavailable ... load in a single process": intended
        warnings.simplefilter("ignore", UserWarning)
        return dict(_load_state_dict_from_keys(checkpoint_id=str(directory)))


def unwrap(obj: Any, source: Path | str) -> dict[str, Any]:
    """The flat name -> value mapping inside a loaded checkpoint (``{"model": ...}`` / ``{"state_dict": ...}`` wrappers)."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is not None:
            obj = inner
            continue
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        break
    kind = type(obj).__name__
    keys = list(obj.keys())[:10] if isinstance(obj, Mapping) else []
    raise ValueError(
        f"{source}: expected a state dict (name -> tensor), possibly under 'model' or 'state_dict'; got {kind}"
        + (f" with keys {keys}" if keys else "")
    )


def _first(keys: list[str], origin: Mapping[str, str], n: int = 10, word: str = "from") -> str:
    shown = [f"{k} ({word} {origin[k]})" if origin.get(k, k) != k else k for k in keys[:n]]
    return ", ".join(shown)


def assign_strict(
    module: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
    origin: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
    file_name: Callable[[str], str | None] | None = None,
    mapped_file: str | Path | None = None,
) -> torch.nn.Module:
    """Load ``state_dict`` into ``module`` strictly; assign when the module is on ``meta``, copy otherwise.

    Args:
        module: the target (its ``state_dict()`` keys and shapes are the contract; meta tensors are fine).
        state_dict: converted name -> tensor mapping.
        source: what to name in errors (file path).
        origin: converted name -> name in the file, so errors name both.
        file_name: module key -> the name the file would use for it (shown next to missing keys).
        mapped_file: the checkpoint the tensors are mmap-ed from (:func:`torch_load_mapped`); the pages of each
            tensor that is cast are released right after its cast, so a bf16 -> fp32 load peaks near the fp32 size.
    """
    origin = origin or {}
    expected = module.state_dict()
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected)
    cls = type(module).__name__
    if missing or unexpected:
        parts = []
        if missing:
            hints = {k: file_name(k) for k in missing[:10]} if file_name else {}
            shown = _first(missing, {k: v for k, v in hints.items() if v}, word="file name")
            parts.append(f"{len(missing)} missing keys (first 10: {shown})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first 10: {_first(unexpected, origin)})")
        raise ValueError(f"{source}: checkpoint does not match {cls}: " + "; ".join(parts))
    bad = [
        f"{_first([k], origin)}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if bad:
        raise ValueError(f"{source}: {len(bad)} shape mismatches for {cls} (first 10: " + "; ".join(bad[:10]) + ")")
    if dtype is not None:
        mappings = file_mappings(mapped_file) if mapped_file is not None else []
        cast = {}
        for key, value in state_dict.items():
            if value.is_floating_point() and value.dtype != dtype:
                cast[key] = value.to(dtype)
                if mappings:
                    release_file_pages(value, mappings)
            else:
                cast[key] = value
        state_dict = cast
    on_meta = any(t.is_meta for t in expected.values())
    module.load_state_dict(state_dict, strict=True, assign=on_meta)
    still_meta = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if still_meta:
        raise ValueError(
            f"{source}: {len(still_meta)} tensors of {cls} are not in its state dict and stayed on the meta device "
            f"(first 10: {', '.join(still_meta[:10])}); build this module normally instead of on meta"
        )
    return module
