"""T5 instruction-embedding caches: the official pickle layout, a safer safetensors layout, and building one.

Official layout (``*_t5_embeddings.pkl`` of the released checkpoints and datasets): a pickled dict
``{instruction: tensor (1, 512, 1024) bfloat16}``, T5-11B encoder outputs with padded positions zeroed.
Reading a pickle runs code, so ``.pkl`` files load only with ``trust_pickle=True``.

Our default layout (``.safetensors``): one tensor ``embeddings`` (N, 1, 512, D) and, in the file's metadata, a JSON
list of the N instructions under ``instructions`` (one file, written atomically, no code on load) and, for caches
built here, what they were computed from under ``source`` (:func:`encoder_source`: a checksum of the encoder folder's
config, tokenizer files and weight file sizes, the token length and the stored dtype). Building into an existing cache
of the same source encodes only the new instructions; a cache of another source is rebuilt with a one-line notice.
An official ``.pkl`` cache records no source: it is verified (every instruction present, see
``cosmos_lit.text.T5CacheEmbedder.check_instructions``), never rebuilt.

Build a cache from a local T5 encoder folder (``transformers`` format, e.g. a download of ``google-t5/t5-11b``)::

    python -m cosmos_lit.weights.t5 --encoder-dir /models/t5-11b --instructions tasks.txt --out t5_cache.safetensors
"""

from __future__ import annotations

import argparse
import json
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from cosmos_lit.cache_keys import checksum, notice
from cosmos_lit.io import atomic_path
from cosmos_lit.weights.state_io import UntrustedPickleError, untrusted_message

PICKLE_SUFFIXES = (".pkl", ".pickle")
_TENSOR_KEY = "embeddings"
_INDEX_KEY = "instructions"
_SOURCE_KEY = "source"
# files of a transformers T5 folder whose bytes enter the source checksum (weights: names and sizes only)
_TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "spiece.model", "special_tokens_map.json",
                    "model.safetensors.index.json", "pytorch_model.bin.index.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _check_entry(path: Path, key: object, value: object) -> None:
    if not isinstance(key, str):
        raise ValueError(f"{path}: cache key {key!r} is not a string instruction")
    if not isinstance(value, torch.Tensor) or value.ndim not in (2, 3) or (value.ndim == 3 and value.shape[0] != 1):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{path}: embedding of '{key}' is {shape}, expected a tensor (1, L, D) or (L, D)")


def load_t5_cache(path: str | Path, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Instruction -> embedding (1, L, D) from an official ``.pkl`` (needs ``trust_pickle``) or our ``.safetensors``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"T5 embedding cache not found: {path}")
    if path.suffix in PICKLE_SUFFIXES:
        if not trust_pickle:
            raise UntrustedPickleError(untrusted_message(path, "T5 embedding cache (pickle)"))
        with open(path, "rb") as fh:
            data = pickle.load(fh)
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: expected a pickled dict {{instruction: tensor}}, got {type(data).__name__}")
        out = {}
        for key, value in data.items():
            _check_entry(path, key, value)
            out[key] = value.detach().cpu().reshape(1, *value.shape[-2:])
        return out
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: unknown T5 cache format (expected .safetensors or the official .pkl)")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        if _INDEX_KEY not in meta or _TENSOR_KEY not in fh.keys():
            raise ValueError(f"{path}: not a cosmos_lit T5 cache (needs tensor '{_TENSOR_KEY}' and metadata '{_INDEX_KEY}')")
        embeddings = fh.get_tensor(_TENSOR_KEY)
    instructions = json.loads(meta[_INDEX_KEY])
    if len(instructions) != embeddings.shape[0]:
        raise ValueError(f"{path}: {len(instructions)} instructions but {embeddings.shape[0]} embeddings")
    return {text: embeddings[i] for i, text in enumerate(instructions)}


def encoder_source(encoder_dir: str | Path, max_length: int, store_dtype: torch.dtype) -> str:
    """Checksum of what a cache built with :func:`build_t5_cache` depends on: the encoder folder's config and tokenizer
    files (their bytes), its weight files (names and sizes: hashing tens of GB would cost minutes), the token length
    and the stored dtype."""
    folder = Path(encoder_dir).expanduser()
    files = {name: (folder / name).read_bytes() for name in _TOKENIZER_FILES if (folder / name).is_file()}
    weights = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.suffix in _WEIGHT_SUFFIXES}
    return checksum("t5-cache/1", files, weights, int(max_length), str(store_dtype))


def cache_source(path: str | Path) -> str | None:
    """The ``source`` recorded in a ``.safetensors`` cache (None: an official cache, or one without it)."""
    path = Path(path).expanduser()
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return (fh.metadata() or {}).get(_SOURCE_KEY)
    except Exception:  # noqa: BLE001 - unreadable: no usable source, the cache is rebuilt
        return None


def save_t5_cache(cache: Mapping[str, torch.Tensor], path: str | Path, source: str | None = None) -> Path:
    """Write a cache atomically: ``.safetensors`` (our layout; ``source`` recorded in its metadata) or ``.pkl``
    (official layout, (1, L, D) per entry, no room for a source)."""
    path = Path(path).expanduser()
    entries = {}
    for key, value in cache.items():
        _check_entry(path, key, value)
        entries[key] = value.detach().cpu().reshape(1, *value.shape[-2:]).contiguous()
    if path.suffix in PICKLE_SUFFIXES:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                pickle.dump(entries, fh)
    elif path.suffix == ".safetensors":
        from safetensors.torch import save_file

        shapes = {tuple(v.shape) for v in entries.values()}
        if len(shapes) > 1:
            raise ValueError(f"{path}: embeddings have different shapes {sorted(shapes)}; pad them to one length")
        names = list(entries)
        stacked = torch.stack([entries[n] for n in names]) if names else torch.zeros(0, 1, 0, 0)

        metadata = {_INDEX_KEY: json.dumps(names)}
        if source is not None:
            metadata[_SOURCE_KEY] = source

        def write(tmp: Path) -> None:
            save_file({_TENSOR_KEY: stacked}, str(tmp), metadata=metadata)
    else:
        raise ValueError(f"{path}: unknown T5 cache format (expected .safetensors or .pkl)")
    with atomic_path(path, keep_suffix=False) as tmp:  # neither writer needs the extension
        write(tmp)
    return path


@torch.inference_mode()
def encode_instructions(
    instructions: list[str], tokenizer, encoder, max_length: int = 512, device: str = "cpu", batch_size: int = 8
) -> torch.Tensor:
    """T5 encoder outputs (N, max_length, D) with positions past each instruction's tokens set to zero.

    Tokenisation pads to ``max_length`` and truncates (official ``CosmosT5TextEncoder.encode_prompts``); the encoder
    sees the attention mask; the DiT later attends to all ``max_length`` rows, so the padded rows must be zero.
    """
    chunks = []
    for start in range(0, len(instructions), batch_size):
        batch = tokenizer(
            instructions[start:start + batch_size], return_tensors="pt", truncation=True, padding="max_length", max_length=max_length
        )
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden = hidden * mask[..., None].to(hidden.dtype)
        chunks.append(hidden.float().cpu())
    return torch.cat(chunks) if chunks else torch.zeros(0, max_length, 0)


def build_t5_cache(
    instructions: Iterable[str],
    encoder_dir: str | Path,
    out_path: str | Path,
    max_length: int = 512,
    device: str = "cpu",
    batch_size: int = 8,
    store_dtype: torch.dtype = torch.bfloat16,
) -> dict[str, torch.Tensor]:
    """Encode unique instructions with a local T5 encoder and write the cache (format from ``out_path``'s suffix).

    A ``.safetensors`` cache at ``out_path`` built from the same source (:func:`encoder_source`) keeps its entries and
    only the new instructions are encoded (none: the file is left as is); one of another source, or without one, is
    rebuilt with a one-line notice. A ``.pkl`` (official layout) is always written anew.

    Args:
        instructions: task instructions (duplicates are encoded once).
        encoder_dir: local ``transformers`` folder with the T5 tokenizer and weights (nothing is downloaded).
        out_path: ``.safetensors`` (default layout) or ``.pkl`` (official layout).
        max_length: padded token length (official: 512).
        device: where the encoder runs.
        store_dtype: dtype of the stored embeddings (official: bfloat16).

    Returns:
        instruction -> embedding (1, max_length, D) as written.
    """
    from transformers import AutoTokenizer, T5EncoderModel

    encoder_dir = Path(encoder_dir).expanduser()
    if not (encoder_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"T5 encoder folder not found or incomplete: {encoder_dir} (expected a transformers folder with config.json, "
            f"the weights and the tokenizer, e.g. a local copy of google-t5/t5-11b)"
        )
    unique = list(dict.fromkeys(instructions))
    out_path = Path(out_path).expanduser()
    source = encoder_source(encoder_dir, max_length, store_dtype) if out_path.suffix == ".safetensors" else None
    kept: dict[str, torch.Tensor] = {}
    if source is not None and out_path.is_file():
        recorded = cache_source(out_path)
        if recorded == source:
            kept = load_t5_cache(out_path)
            if all(text in kept for text in unique):
                return {text: kept[text] for text in unique}
        else:
            why = "it records no source" if recorded is None else "it was built from another encoder or length"
            notice(f"T5 embedding cache {out_path}: {why}; rebuilding it")
    todo = [text for text in unique if text not in kept]
    tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir), local_files_only=True)
    encoder = T5EncoderModel.from_pretrained(str(encoder_dir), local_files_only=True).to(device).eval()
    embeddings = encode_instructions(todo, tokenizer, encoder, max_length=max_length, device=device, batch_size=batch_size)
    new = {text: embeddings[i : i + 1].to(store_dtype) for i, text in enumerate(todo)}
    save_t5_cache({**kept, **new}, out_path, source=source)
    return {text: new[text] if text in new else kept[text] for text in unique}


def _read_instructions(path: Path) -> list[str]:
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
            raise ValueError(f"{path}: expected a JSON list of instruction strings")
        return data
    return [line.strip() for line in text.splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cosmos_lit.weights.t5", description="Build a T5 instruction-embedding cache.")
    parser.add_argument("--encoder-dir", required=True, help="local transformers T5 folder (no download)")
    parser.add_argument("--instructions", required=True, help="text file, one instruction per line, or a JSON list")
    parser.add_argument("--out", required=True, help="output .safetensors (default layout) or .pkl (official layout)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    instructions = _read_instructions(Path(args.instructions))
    cache = build_t5_cache(instructions, args.encoder_dir, args.out, args.max_length, args.device, args.batch_size)
    print(f"wrote {len(cache)} embeddings to {args.out}")


if __name__ == "__main__":
    main()
