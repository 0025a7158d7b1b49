"""In-memory cache of per-image latents for small CPU runs (``task.cache_latents``).

With ``sequence_form: per_image`` each slot's latent depends on its image alone, so the latent of every
(episode, frame, camera) is computed once and reused across steps. Assembling a sample's slots from the cache gives
exactly what ``CosmosPolicyModel.encode`` would (black placeholder latents on the vector and missing slots).

The cache is keyed by what its latents were computed from (``cosmos_lit.cache_keys``): a checksum of the image
encoder's weights and buffers (recomputed only when one of its tensors was modified in place or replaced: loading a
checkpoint, ``calibrate``); when it changes the cache is emptied with a one-line notice. The data cannot change under
it: the task starts a fresh cache at every fit start.
"""

from __future__ import annotations

from typing import Any

import torch

from cosmos_lit.cache_keys import checksum, notice
from cosmos_lit.model import CosmosPolicyModel
from cosmos_lit.registry import ConfigError


def _tensor_stamp(t: torch.Tensor) -> tuple[Any, ...]:
    """What changes when a tensor is replaced or modified in place (its storage, version counter, shape)."""
    try:
        version = t._version
    except RuntimeError:  # inference tensors have no version counter; they cannot be modified in place either
        version = -1
    return t.data_ptr(), version, tuple(t.shape), t.dtype, t.device


class LatentCache:
    """``latents(batch) -> (B, C, T, h, w)`` for training batches that carry ``episode``, ``t`` and ``future_t``.

    Memory: C·h·w floats per cached image, on the CPU.
    """

    def __init__(self, model: CosmosPolicyModel):
        self.model = model
        self._latents: dict[tuple[int, int, int], torch.Tensor] = {}
        self._black: torch.Tensor | None = None
        self._stamps: tuple[Any, ...] | None = None
        self._encoder_key: str | None = None
        self._key: str | None = None  # the encoder checksum of the cached latents

    def __len__(self) -> int:
        return len(self._latents)

    def encoder_checksum(self) -> str:
        """Checksum of the image encoder's state (weights and buffers); cheap when nothing changed since last call."""
        encoder = self.model.image_encoder
        state = {**dict(encoder.named_parameters()), **dict(encoder.named_buffers())}  # non-persistent buffers too
        stamps = tuple((name, _tensor_stamp(t)) for name, t in state.items())
        if stamps != self._stamps or self._encoder_key is None:
            self._encoder_key = checksum({name: t.detach() for name, t in state.items()})
            self._stamps = stamps
        return self._encoder_key

    def _check_key(self) -> None:
        encoder_key = self.encoder_checksum()
        if self._key is not None and self._key != encoder_key and (self._latents or self._black is not None):
            notice(f"latent cache: the image encoder's weights changed; dropping {len(self._latents)} cached latents")
            self._latents.clear()
            self._black = None
        self._key = encoder_key

    def share_from(self, other: "LatentCache") -> int:
        """Take the latents ``other`` holds if they were computed by an encoder with this cache's encoder's weights
        (the same checksum), for processes that fit several tasks on the same data (a benchmark's rows); returns how
        many were taken (0 when the weights differ or ``other`` is empty). The data must be the same: the cache keys
        are (episode, frame, camera) indices, not image contents."""
        other_key = other._key if other._latents else None
        if other_key is None or other_key != self.encoder_checksum():
            return 0
        self._check_key()  # latents of this cache's own that an earlier state of its encoder computed are dropped
        self._latents.update(other._latents)
        self._black = other._black if self._black is None else self._black
        self._key = other_key
        return len(other._latents)

    def latents(self, batch: dict[str, Any]) -> torch.Tensor:
        """Encode only the images not seen before, then assemble every sample's slots from the cache."""
        if "future_t" not in batch or bool(batch.get("augmented", torch.tensor(False)).any()):
            raise ConfigError("task.cache_latents: batches must carry 'episode', 't', 'future_t' and be unaugmented "
                              "(set data.augment=false)")
        self._check_key()
        model, images = self.model, batch["images"]
        lay, encoder = model.layout, model.image_encoder
        n = len(model.spec.cameras)
        keys = [[(int(e), int(t), i) for i in range(n)] + [(int(e), int(f), i) for i in range(n)]
                for e, t, f in zip(batch["episode"], batch["t"], batch["future_t"])]
        missing = {k: (j, c) for j, row in enumerate(keys) for c, k in enumerate(row) if k not in self._latents}
        if missing:
            new = encoder.encode_images(torch.stack([images[j, c] for j, c in missing.values()]))
            for k, lat in zip(missing, new):
                self._latents[k] = lat.detach().cpu()
        if self._black is None:
            size = model.spec.image_size
            self._black = encoder.encode_images(images.new_full((1, 3, size, size), -1.0))[0].detach().cpu()
        out = []
        for row in keys:
            frames = [self._black] * lay.num_frames
            for i in range(n):
                frames[lay.current_camera(i)] = self._latents[row[i]]
                frames[lay.future_camera(i)] = self._latents[row[n + i]]
            out.append(torch.stack(frames, dim=1))
        return torch.stack(out).to(images.device)
