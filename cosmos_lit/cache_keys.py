"""Checksums of what a cache was computed from, and the one-line notice printed when a cache is rebuilt.

Every cache of the project records a checksum of its inputs and is rebuilt when they change:

- the dataset statistics (``dataset_statistics.json``): the demonstrations' proprio and action values
  (``cosmos_lit.normalization.statistics_source``), stored in the file under ``"_source"``;
- the in-memory latent cache (``cosmos_lit.tasks.latent_cache``): the image encoder's weights and buffers (a fresh
  cache per fit, so the data cannot change under it);
- T5 embedding caches we build (``cosmos_lit.weights.t5``): the encoder folder and the length; official caches are
  verified (every instruction present), never rebuilt.

    checksum("v1", np.zeros(3), {"a": 1})   # -> 32 hex digits; same inputs, same digest, in every process

Arrays and tensors hash their dtype, shape and bytes; mappings hash their items in sorted key order; strings, numbers,
None and booleans their type and value. numpy and torch are imported only when such a value is passed.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from collections.abc import Iterable, Mapping
from typing import Any

DIGEST_SIZE = 16  # bytes: 32 hex digits


class Checksum:
    """An incremental checksum (BLAKE2b, 128 bits) of plain values, arrays and tensors."""

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=DIGEST_SIZE)

    def _tag(self, tag: bytes, payload: bytes = b"") -> None:
        self._h.update(tag + struct.pack("<Q", len(payload)) + payload)

    def update(self, value: Any) -> Checksum:
        """Add ``value`` (str, bytes, int, float, bool, None, list / tuple, mapping, numpy array, torch tensor)."""
        if value is None or isinstance(value, bool):
            self._tag(b"c", repr(value).encode())
        elif isinstance(value, str):
            self._tag(b"s", value.encode("utf-8"))
        elif isinstance(value, (bytes, bytearray, memoryview)):
            self._tag(b"b", bytes(value))
        elif isinstance(value, int):
            self._tag(b"i", str(value).encode())
        elif isinstance(value, float):
            self._tag(b"f", struct.pack("<d", value))
        elif isinstance(value, Mapping):
            items = sorted(value.items(), key=lambda kv: repr(kv[0]))
            self._tag(b"m", struct.pack("<Q", len(items)))
            for k, v in items:
                self.update(k)
                self.update(v)
        elif isinstance(value, (list, tuple)):
            self._tag(b"l", struct.pack("<Q", len(value)))
            for v in value:
                self.update(v)
        elif _is_tensor(value):
            import torch

            t = value.detach().cpu().contiguous()
            self._tag(b"t", f"{t.dtype}{tuple(t.shape)}".encode())
            self._h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif hasattr(value, "dtype") and hasattr(value, "shape") and hasattr(value, "tobytes"):  # numpy array / scalar
            import numpy as np

            a = np.ascontiguousarray(value)
            self._tag(b"a", f"{a.dtype.str}{a.shape}".encode())
            self._h.update(a.tobytes())
        else:
            raise TypeError(f"checksum: cannot hash a {type(value).__name__} ({value!r:.80})")
        return self

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only if torch was imported
    return torch is not None and isinstance(value, torch.Tensor)


def checksum(*parts: Any) -> str:
    """The checksum (32 hex digits) of ``parts`` in order; see :class:`Checksum` for the values accepted."""
    c = Checksum()
    for p in parts:
        c.update(p)
    return c.hexdigest()


def unordered_checksum(digests: Iterable[str]) -> str:
    """One checksum of a collection of digests whatever their order (e.g. one per episode file)."""
    return checksum(sorted(digests))


def notice(message: str, tag: str = "cache") -> None:
    """Print ``[tag] message`` as one line on stderr, on the global rank 0 only (every rank rebuilds its caches)."""
    try:
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        rank = int(getattr(rank_zero_only, "rank", 0) or 0)
    except ImportError:  # pragma: no cover - lightning is a dependency
        rank = 0
    if rank == 0:
        print(f"[{tag}] {' '.join(str(message).split())}", file=sys.stderr, flush=True)


__all__ = ["Checksum", "checksum", "notice", "unordered_checksum"]
