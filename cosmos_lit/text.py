"""Instruction embeddings for the DiT's cross-attention.

Two text encoders share one interface, ``encoder(instructions: list[str]) -> (B, L, D) float32``:

- ``t5_cache``: a precomputed cache of T5-XXL encoder outputs in the official layout ({instruction: (1, 512, 1024)}),
  read from a local file (``cosmos_lit.weights.t5`` builds and reads those files).
- ``hash``: a small deterministic embedder for tiny configs and tests: words are hashed into a fixed random table
  (seeded, so the same instruction gives the same embedding in every process), positions past the words are zero,
  as T5's padded positions are in the official cache.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from torch import nn

from cosmos_lit.registry import ConfigError, register


@register("text_encoder", "hash")
class HashTextEmbedder(nn.Module):
    """Deterministic word-hash embeddings (B, max_length, dim); not trained, not saved (rebuilt from its seed)."""

    def __init__(self, dim: int = 32, max_length: int = 16, vocab_buckets: int = 4096, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.max_length = max_length
        self.register_buffer("table", torch.randn(vocab_buckets, dim, generator=g) / dim**0.5, persistent=False)
        self.register_buffer("positions", torch.randn(max_length, dim, generator=g) * 0.1, persistent=False)

    def _bucket(self, word: str) -> int:
        return int.from_bytes(hashlib.sha1(word.encode()).digest()[:4], "little") % self.table.shape[0]

    def forward(self, instructions: list[str]) -> torch.Tensor:
        out = torch.zeros(len(instructions), self.max_length, self.dim, device=self.table.device)
        for i, text in enumerate(instructions):
            words = re.findall(r"[a-z0-9]+", text.lower())[: self.max_length]
            for j, w in enumerate(words):
                out[i, j] = self.table[self._bucket(w)] + self.positions[j]
        return out


@register("text_encoder", "t5_cache")
class T5CacheEmbedder(nn.Module):
    """Looks instructions up in a T5 embedding cache file (official ``t5_embeddings.pkl`` or our safetensors cache).

    The file is the user's: it is verified, never rebuilt. :meth:`check_instructions` (call it with the data's
    instructions before training) and every lookup stop with one line naming the missing instruction and the file.
    """

    def __init__(self, path: str, dim: int = 1024, trust_pickle: bool = False):
        super().__init__()
        from cosmos_lit.weights.t5 import load_t5_cache

        p = Path(path).expanduser()
        if not p.exists():
            raise FileNotFoundError(
                f"T5 embedding cache not found: {p} (expected the official t5_embeddings.pkl of the dataset, or a cache "
                f"built with `python -m cosmos_lit.weights.t5`; point to it with model.text_encoder.path=...)"
            )
        self.dim = dim
        self.path = str(p)
        self.cache = {k: v.reshape(v.shape[-2], v.shape[-1]).float() for k, v in load_t5_cache(p, trust_pickle=trust_pickle).items()}
        for key, emb in self.cache.items():
            if emb.shape[-1] != dim:
                raise ConfigError(f"{p}: embedding of '{key}' has dim {emb.shape[-1]}, expected {dim}")
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

    def check_instructions(self, instructions: list[str]) -> None:
        """Raise :class:`MissingInstructionError` naming the first instruction the cache lacks and the file."""
        missing = [s for s in dict.fromkeys(instructions) if s not in self.cache]
        if missing:
            raise MissingInstructionError(missing_instruction_message(missing, self.cache, self.path))

    def forward(self, instructions: list[str]) -> torch.Tensor:
        self.check_instructions(instructions)
        return torch.stack([self.cache[s] for s in instructions]).to(self._device_probe.device)


class MissingInstructionError(KeyError):
    """An instruction is not in a T5 embedding cache (a KeyError; the CLI prints its message as one line)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def missing_instruction_message(missing: list[str], cache: dict[str, torch.Tensor], path: str) -> str:
    """One line: the first missing instruction, how many more, the closest cached one, and the file."""
    import difflib

    close = difflib.get_close_matches(missing[0], list(cache), n=1, cutoff=0.6)
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    hint = f"; closest cached: '{close[0]}'" if close else ""
    return (f"instruction '{missing[0]}'{more} is not in the T5 embedding cache {path} ({len(cache)} cached "
            f"instructions{hint}); build a cache that has it with python -m cosmos_lit.weights.t5 and point "
            f"model.text_encoder.path to it")
